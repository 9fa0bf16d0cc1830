"""The runtime interface every backend implements, and the backend naming scheme.

A backend is named ``RUNTIME:VARIANT``: ``onnx:cpu``, ``onnx:qnn``, ``onnx:openvino``,
``onnx:cuda``, ``litert:xnnpack``, ``litert:cpu``, ``openvino:cpu``, ``openvino:gpu``,
``openvino:npu``. Profiles list these in order; the loader turns one into a runtime config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Dim = int | str | None
"""A tensor dimension: a fixed size, a symbolic name (``"height"``) or unknown (None)."""

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


def split_backend(name: str) -> tuple[str, str]:
    """``"onnx:qnn"`` -> ``("onnx", "qnn")``; a bare runtime gets its default variant."""
    runtime, _, variant = name.partition(":")
    defaults = {"onnx": "cpu", "litert": "xnnpack", "openvino": "cpu"}
    return runtime, variant or defaults.get(runtime, "")


FORMAT_OF_RUNTIME = {
    "onnx": ("onnx",),
    "litert": ("tflite",),
    "openvino": ("openvino", "onnx", "tflite"),
}
"""Which catalogue file formats each runtime can read, in order of preference."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (model files can be hundreds of MB)."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
