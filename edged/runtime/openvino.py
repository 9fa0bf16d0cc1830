"""OpenVINO backend: reads OpenVINO IR, ONNX, TFLite and TF frozen graphs on CPU, GPU or NPU.

Precision: ``INFERENCE_PRECISION_HINT`` comes from the profile precision. It matters on x86:
the CPU plugin defaults to bf16 on CPUs with AVX512-BF16/AMX (this development machine is
one), which changes outputs by ~1e-2; ``fp32`` maps to ``f32`` so results match
onnxruntime within ~1e-6. ``int8``/``int4`` models keep the device default for the float
parts that remain.

Dynamic shapes: the model is compiled with the dims it declares, so ``-1``/``?`` dims stay
dynamic and one compiled model serves every input size. NPU needs static shapes: give it
static models.

Cache: ``CACHE_DIR`` is ``cache_dir/openvino/<precision hint or default>``; the plugin stores
the compiled blob keyed by the model and imports it on the next load instead of compiling.
The precision is part of the directory because the plugin's own key leaves it out: on x86 the
hint is applied on import, but the ARM CPU plugin bakes the precision into the blob (on cores
with fp16 arithmetic, Cortex-A76 = Raspberry Pi 5, the default is f16), so an fp32 load that
imported a default-precision blob ran in f16 (outputs off by ~3e-3, measured under emulation).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edged.errors import BackendUnavailable, EdgedError, ModelLoadError
from edged.runtime.base import (
    Array,
    BackendSpec,
    Feeds,
    Precision,
    TensorSpec,
    check_feeds,
    one_line,
)
from edged.schema import StrictModel

_DEVICE_HINT = {
    "CPU": "pip install openvino",
    "GPU": "install the Intel GPU compute runtime (apt install intel-opencl-icd) and check /dev/dri/renderD*",
    "NPU": "install the Intel NPU driver (intel/linux-npu-driver) and check /dev/accel/accel*",
}
_PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
IR_XML = "model.xml"
"""An IR saved as a directory (``edged.quantization.openvino_quantizer``) holds its graph under this name."""


def model_file(path: Path) -> Path:
    """What to compile for a catalogue path: the file itself, or an IR directory's graph."""
    return path / IR_XML if path.is_dir() else path


class OpenVINOConfig(StrictModel):
    """OpenVINO compile options."""

    kind: Literal["openvino"] = "openvino"
    device: Literal["CPU", "GPU", "NPU"] = Field(default="CPU", description="Target device.")
    threads: int | None = Field(default=None, ge=1, description="INFERENCE_NUM_THREADS.")
    precision: Precision | None = Field(
        default=None,
        description="fp32/fp16/bf16 -> INFERENCE_PRECISION_HINT; None or int8 keeps the default.",
    )
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        default="LATENCY", description="One request at a time per model: latency."
    )
    properties: dict[str, str] = Field(
        default_factory=dict, description="Extra compile properties; override derived ones."
    )


@cache
def _core() -> Any:
    """One Core per process: it loads device plugins once and shares them between models."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"OpenVINO is not installed: {_DEVICE_HINT['CPU']}") from exc
    return openvino.Core()


def compile_properties(config: OpenVINOConfig, cache_dir: Path | None) -> dict[str, str]:
    """The properties passed to ``compile_model`` for ``config``."""
    props: dict[str, str] = {"PERFORMANCE_HINT": config.performance_hint}
    hint = _PRECISION_HINT.get(config.precision or "")
    if hint:
        props["INFERENCE_PRECISION_HINT"] = hint
    if config.threads and config.device == "CPU":
        props["INFERENCE_NUM_THREADS"] = str(config.threads)
    merged = {**props, **config.properties}
    if cache_dir is not None and "CACHE_DIR" not in config.properties:
        precision = merged.get("INFERENCE_PRECISION_HINT", "default")
        merged["CACHE_DIR"] = str(cache_dir / "openvino" / precision)
    return merged


def _blobs(props: dict[str, str]) -> set[str] | None:
    """Names of the blobs in the cache dir (created if needed); None without a cache dir."""
    if "CACHE_DIR" not in props:
        return None
    directory = Path(props["CACHE_DIR"])
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # OpenVINO then compiles without caching; the load itself still works
        return None
    return {p.name for p in directory.glob("*.blob")}


def _name(port: Any, fallback: str) -> str:
    try:
        return str(port.get_any_name())
    except RuntimeError:  # a tensor without names (some TFLite graphs)
        return fallback


def _spec(port: Any, fallback: str) -> TensorSpec:
    dims = tuple(None if d.is_dynamic else int(d.get_length()) for d in port.get_partial_shape())
    try:
        dtype = np.dtype(port.get_element_type().to_dtype()).name
    except (RuntimeError, TypeError):
        dtype = str(port.get_element_type())
    return TensorSpec(_name(port, fallback), dims, dtype)


class OpenVINOSession:
    """An OpenVINO CompiledModel and its one InferRequest behind the ``Session`` interface."""

    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __init__(
        self, path: Path, config: OpenVINOConfig, *, cache_dir: Path | None = None
    ) -> None:
        core = _core()
        available = [str(d) for d in core.available_devices]
        if not any(d.split(".")[0] == config.device for d in available):
            raise BackendUnavailable(
                f"OpenVINO has no {config.device} device here (have {', '.join(available)}): "
                f"{_DEVICE_HINT[config.device]}"
            )
        props = compile_properties(config, cache_dir)
        blobs = _blobs(props)
        if blobs is None:
            props.pop("CACHE_DIR", None)
        try:
            self._compiled = core.compile_model(str(model_file(path)), config.device, props)
        except RuntimeError as exc:  # frontend/plugin errors (unsupported op, bad file)
            raise ModelLoadError(f"OpenVINO cannot load {path.name}: {one_line(exc)}") from exc
        # A diagnostic label only: a load that wrote no new blob imported an existing one.
        cache = "off" if blobs is None else "miss" if _blobs(props) != blobs else "hit"
        self._request = self._compiled.create_infer_request()
        self.backend = f"openvino:{config.device.lower()}"
        self.loaded_from, self.cache = path, cache
        self.inputs = tuple(_spec(p, f"input{i}") for i, p in enumerate(self._compiled.inputs))
        self.outputs = tuple(_spec(p, f"output{i}") for i, p in enumerate(self._compiled.outputs))

    @classmethod
    def load(
        cls,
        path: Path,
        config: OpenVINOConfig,
        *,
        cache_dir: Path | None = None,
        sha256: str | None = None,
    ) -> OpenVINOSession:
        """OpenVINO keys its own cache on the model, so ``sha256`` is unused."""
        return cls(path, config, cache_dir=cache_dir)

    def run(self, feeds: Feeds) -> dict[str, Array]:
        arrays = check_feeds(self.backend, self.inputs, feeds)
        by_index = {i: arrays[spec.name] for i, spec in enumerate(self.inputs)}
        try:
            # share_outputs=False (the default) copies results out of the request's buffers.
            results = self._request.infer(by_index)
        except RuntimeError as exc:
            raise EdgedError(f"{self.backend} failed to run: {one_line(exc)}") from exc
        return {
            spec.name: np.asarray(results[port])
            for spec, port in zip(self.outputs, self._compiled.outputs, strict=True)
        }

    def close(self) -> None:
        self._request = None
        self._compiled = None

    def resident_bytes(self) -> int | None:
        """The CPU plugin reports no memory figure; the pool measures RSS around the load."""
        return None


def _config_fields(variant: str, threads: int | None, precision: str | None) -> dict[str, Any]:
    return {
        "kind": "openvino",
        "device": variant.upper(),
        "threads": threads,
        "precision": precision,
    }


BACKEND = BackendSpec(
    kind="openvino",
    variants=("cpu", "gpu", "npu"),
    # IR first (already converted); its frontends read ONNX and TFLite too.
    formats=("openvino", "onnx", "tflite"),
    config=OpenVINOConfig,
    config_fields=_config_fields,
    opener=OpenVINOSession.load,
    options_field="properties",
)
