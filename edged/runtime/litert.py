"""LiteRT (TensorFlow Lite) backend: ai-edge-litert, or tflite-runtime where only that exists.

``litert:xnnpack`` uses the interpreter's default delegate, XNNPACK, which also provides
custom ops some models need (MediaPipe's selfie segmenter uses Convolution2DTransposeBias).
``litert:cpu`` uses the builtin kernels only (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``): a
reference path for debugging delegate problems.

Dynamic shapes: a TFLite model has one set of tensor shapes at a time, so when a feed's
shape differs from the current one the input is resized (``strict=False`` lets ``-1`` dims
of the signature change) and ``allocate_tensors`` re-plans the arena before ``invoke``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edged.errors import BackendUnavailable, EdgedError, ModelLoadError
from edged.log import native_info_filtered
from edged.runtime.base import Array, BackendSpec, Feeds, TensorSpec, check_feeds, one_line
from edged.schema import StrictModel

_HINT = "pip install ai-edge-litert (or tflite-runtime on boards it has no wheel for)"


class LiteRTConfig(StrictModel):
    """LiteRT interpreter options."""

    kind: Literal["litert"] = "litert"
    delegate: Literal["xnnpack", "cpu"] = Field(
        default="xnnpack", description="xnnpack: default delegate; cpu: builtin kernels only."
    )
    threads: int | None = Field(default=None, ge=1, description="Interpreter num_threads.")


def _import_interpreter() -> tuple[Any, Any]:
    """(Interpreter class, OpResolverType enum or None), preferring ai-edge-litert."""
    try:
        from ai_edge_litert import interpreter as module
    except ImportError:
        try:
            from tflite_runtime import interpreter as module
        except ImportError as exc:
            raise BackendUnavailable(f"no LiteRT runtime installed: {_HINT}") from exc
    return module.Interpreter, getattr(module, "OpResolverType", None)


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return TensorSpec(
        detail["name"],
        tuple(None if int(d) < 0 else int(d) for d in dims),
        np.dtype(detail["dtype"]).name,
    )


class LiteRTSession:
    """A LiteRT Interpreter behind the edged ``Session`` interface."""

    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __init__(self, path: Path, config: LiteRTConfig) -> None:
        interpreter_cls, resolver = _import_interpreter()
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": config.threads}
        if config.delegate == "cpu":
            if resolver is None:
                raise BackendUnavailable(
                    f"this LiteRT has no OpResolverType for litert:cpu: {_HINT}"
                )
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            # The XNNPACK delegate announces itself on stderr ("INFO: Created TensorFlow Lite
            # XNNPACK delegate for CPU.") with no switch to turn it off: filtered when quiet.
            with native_info_filtered():
                self._it = interpreter_cls(**kwargs)
                # Custom ops and delegate support are checked here, not at the first invoke.
                self._it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"LiteRT cannot load {path.name}: {one_line(exc)}") from exc
        self.backend = f"litert:{config.delegate}"
        self.loaded_from, self.cache = path, "off"
        in_details = self._it.get_input_details()
        self._in_index = {d["name"]: int(d["index"]) for d in in_details}
        self._shapes = {d["name"]: tuple(int(x) for x in d["shape"]) for d in in_details}
        out_details = self._it.get_output_details()
        self._out_index = {d["name"]: int(d["index"]) for d in out_details}
        self.inputs = tuple(_spec(d) for d in in_details)
        self.outputs = tuple(_spec(d) for d in out_details)

    @classmethod
    def load(
        cls,
        path: Path,
        config: LiteRTConfig,
        *,
        cache_dir: Path | None = None,
        sha256: str | None = None,
    ) -> LiteRTSession:
        """LiteRT has no compile step worth caching: ``cache_dir``/``sha256`` are unused."""
        return cls(path, config)

    def _reshape(self, arrays: dict[str, Array]) -> None:
        changed = False
        for name, value in arrays.items():
            if value.shape != self._shapes[name]:
                self._it.resize_tensor_input(self._in_index[name], list(value.shape), strict=False)
                self._shapes[name] = value.shape
                changed = True
        if changed:
            self._it.allocate_tensors()

    def run(self, feeds: Feeds) -> dict[str, Array]:
        arrays = check_feeds(self.backend, self.inputs, feeds)
        try:
            self._reshape(arrays)
            for name, value in arrays.items():
                self._it.set_tensor(self._in_index[name], value)
            self._it.invoke()
        except (RuntimeError, ValueError) as exc:
            raise EdgedError(f"{self.backend} failed to run: {one_line(exc)}") from exc
        # get_tensor copies, so results survive the next invoke.
        return {name: self._it.get_tensor(index) for name, index in self._out_index.items()}

    def close(self) -> None:
        self._it = None

    def resident_bytes(self) -> int | None:
        """LiteRT reports no resident figure (summing tensor sizes overcounts the shared arena
        and misses XNNPACK's packed weights); the pool measures RSS around the load."""
        return None


def _config_fields(variant: str, threads: int | None, precision: str | None) -> dict[str, Any]:
    # XNNPACK picks its kernels from the model's own types; there is no precision knob.
    return {"kind": "litert", "delegate": variant, "threads": threads}


BACKEND = BackendSpec(
    kind="litert",
    variants=("xnnpack", "cpu"),
    formats=("tflite",),
    config=LiteRTConfig,
    config_fields=_config_fields,
    opener=LiteRTSession.load,
)
