"""The runtime interface every backend implements and the description each one gives of itself.

A backend is named ``RUNTIME:VARIANT`` (``onnx:qnn``, ``litert:xnnpack``, ``openvino:cpu``);
each runtime module states its variants, formats, config and opener in a ``BackendSpec``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest
from edged.schema import StrictModel
from edged.util.digest import file_sha256

Dim = int | str | None
"""A tensor dimension: a fixed size, a symbolic name (``"height"``) or unknown (None)."""

Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]
"""Compute/weight precision names shared by profiles, catalogue files and runtime configs."""

Array = npt.NDArray[np.generic]
Feeds = Mapping[str, Array]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (dynamic dims as str/None) and numpy dtype name of one model input/output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)


@runtime_checkable
class Session(Protocol):
    """A loaded model. ``run`` is thread-compatible, not thread-safe: the pool serialises use."""

    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Feeds) -> dict[str, Array]:
        """Named inputs -> named outputs; shapes may differ between calls on dynamic models."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; the session is unusable afterwards."""
        ...

    def resident_bytes(self) -> int | None:
        """What the runtime itself reports as resident, if it can; None otherwise."""
        ...


@dataclass(frozen=True)
class BackendSpec:
    """What one runtime backend is, stated once in its own module (``BACKEND = BackendSpec(...)``).

    The registry in ``edged.runtime`` is built from these; nothing else lists backends.
    """

    kind: str
    """Runtime name: the part before the colon of a backend name and the config's ``kind``."""
    variants: tuple[str, ...]
    """Accepted variants (providers, delegates, devices); the first is the default."""
    formats: tuple[str, ...]
    """Catalogue file formats the runtime reads, in order of preference."""
    config: type[StrictModel]
    """The runtime's config class (a pydantic model with ``kind`` as a Literal)."""
    config_fields: Callable[[str, int | None, str | None], dict[str, Any]]
    """(variant, threads, precision) -> the config's fields."""
    opener: Callable[..., Session]
    """``load(path, config, *, cache_dir, sha256)``: the runtime is imported inside, on use."""
    options_field: str | None = None
    """Config field (a ``dict[str, str]``) that a profile's ``runtime_options`` fill; None:
    the runtime takes no free-form options."""


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def model_digest(path: Path, sha256: str | None = None) -> str:
    """sha256 of a model file: the catalogue's value when given, else hashed once per process.

    Memoised by (path, size, mtime) so a reload of a big model does not re-read every byte.
    """
    if sha256:
        return sha256
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _digests_lock:
        known = _digests.get(key)
    if known is None:
        known = file_sha256(path)
        with _digests_lock:
            _digests[key] = known
    return known


def cache_key(*parts: object) -> str:
    """A short, filesystem-safe key naming one compiled artefact (model digest + options)."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def unique_tmp(path: Path) -> Path:
    """A sibling temp name for ``path``: written first, renamed into place when complete."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def _np_dtype(name: str) -> np.dtype[np.generic] | None:
    try:
        return np.dtype(name)
    except TypeError:  # a runtime-specific type numpy has no name for (strings, sequences)
        return None


def check_feeds(backend: str, inputs: Sequence[TensorSpec], feeds: Feeds) -> dict[str, Array]:
    """Validate names, rank, fixed dims and dtype of ``feeds``; return contiguous arrays.

    Runtimes report these mistakes with long C++ traces; one line naming the expected shape
    is what a caller can act on. Values of a convertible dtype are cast (float64 -> float32).
    """
    expected = {spec.name for spec in inputs}
    if set(feeds) != expected:
        raise BadRequest(f"{backend}: inputs must be {sorted(expected)}, got {sorted(feeds)}")
    out: dict[str, Array] = {}
    for spec in inputs:
        value = np.asarray(feeds[spec.name])
        fits = value.ndim == len(spec.shape) and all(
            not isinstance(d, int) or d < 0 or d == n
            for d, n in zip(spec.shape, value.shape, strict=True)
        )
        if not fits:
            raise BadRequest(
                f"{backend}: input {spec.name!r} must have shape {format_shape(spec.shape)}, "
                f"got {list(value.shape)}"
            )
        want = _np_dtype(spec.dtype)
        if want is not None and value.dtype != want:
            if not np.can_cast(value.dtype, want, casting="same_kind"):
                raise BadRequest(
                    f"{backend}: input {spec.name!r} must be {spec.dtype}, got {value.dtype}"
                )
            value = value.astype(want)
        out[spec.name] = np.ascontiguousarray(value)
    return out


def format_shape(shape: Sequence[Dim]) -> str:
    """``(1, None, "W", 3)`` -> ``[1, ?, W, 3]`` for messages."""
    return (
        "["
        + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape)
        + "]"
    )


def warmup_feeds(
    inputs: Sequence[TensorSpec], size: tuple[int, int] | None = None
) -> dict[str, Array]:
    """Zeros for every tensor input (ones for rank <= 1): dynamic batch -> 1, other dynamic dims
    -> ``size`` (h, w) or 64.

    64 is small enough to be cheap even for a big SR model and divisible by the down-sampling
    factors image models use (8, 16, 32, 64).
    """
    feeds: dict[str, Array] = {}
    for spec in inputs:
        fill = list(size or (64, 64))
        dims: list[int] = []
        for i, d in enumerate(spec.shape):
            if isinstance(d, int) and d >= 0:
                dims.append(d)
            elif i == 0 and len(spec.shape) >= 2:
                dims.append(1)
            else:
                dims.append(fill.pop(0) if fill else 64)
        dtype = _np_dtype(spec.dtype) or np.float32
        # Rank-0/1 inputs are usually sizes or flags (SAM's orig_im_size, a UNet timestep):
        # ones keep them valid where zeros would ask for a 0x0 resize.
        fill_value = 1 if len(dims) <= 1 else 0
        feeds[spec.name] = np.full(dims, fill_value, dtype=dtype)
    return feeds


_CPP_NOISE = re.compile(r"Exception from \S+:\d+:|Check '.*?' failed at \S+:\d+:")


def one_line(exc: BaseException, limit: int = 400) -> str:
    """A runtime's (often multi-line C++) error as one bounded line for an EdgedError.

    Source locations are dropped and an over-long text keeps its head and its tail: runtimes
    put the cause (the unsupported op, the bad dim) at the end.
    """
    text = " ".join(_CPP_NOISE.sub(" ", str(exc)).split())
    if len(text) <= limit:
        return text
    head = limit // 3
    return f"{text[:head]} ... {text[-(limit - head - 5) :]}"
