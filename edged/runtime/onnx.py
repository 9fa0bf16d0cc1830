"""onnxruntime backend: CPU, QNN, OpenVINO and CUDA execution providers.

Minimal first version (load/run/close, CPU arena off); caches and EP options are filled in
by the runtime issue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edged.errors import BackendUnavailable, ModelLoadError
from edged.runtime.base import Array, Feeds, TensorSpec
from edged.schema import StrictModel

KIND = "onnx"
_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OnnxConfig(StrictModel):
    """onnxruntime session options."""

    kind: Literal["onnx"] = "onnx"
    provider: Literal["cpu", "qnn", "openvino", "cuda"] = Field(
        default="cpu", description="Execution provider; CPU is always appended as fallback."
    )
    threads: int | None = Field(default=None, ge=1, description="intra-op threads.")
    cpu_arena: bool = Field(
        default=False, description="ORT CPU arena; off so evicted sessions return memory."
    )
    provider_options: dict[str, str] = Field(default_factory=dict, description="EP options.")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
    return onnxruntime


def _specs(args: list[Any]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(
            a.name,
            tuple(d if isinstance(d, int | str) else None for d in a.shape),
            _DTYPES.get(a.type, a.type),
        )
        for a in args
    )


class OnnxSession:
    """An onnxruntime InferenceSession behind the edged ``Session`` interface."""

    def __init__(self, path: Path, config: OnnxConfig) -> None:
        ort = _import_ort()
        provider = _PROVIDERS[config.provider]
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime has no {provider} here (have {ort.get_available_providers()})"
            )
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = config.cpu_arena
        if config.threads:
            opts.intra_op_num_threads = config.threads
            opts.inter_op_num_threads = 1
        providers: list[Any] = [(provider, dict(config.provider_options))]
        if provider != _PROVIDERS["cpu"]:
            providers.append(_PROVIDERS["cpu"])
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self.backend = f"onnx:{config.provider}"
        self.inputs = _specs(self._sess.get_inputs())
        self.outputs = _specs(self._sess.get_outputs())

    def run(self, feeds: Feeds) -> dict[str, Array]:
        names = [o.name for o in self.outputs]
        values = self._sess.run(names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(names, values, strict=True))

    def close(self) -> None:
        self._sess = None

    def resident_bytes(self) -> int | None:
        return None
