"""onnxruntime backend: CPU, QNN, OpenVINO and CUDA execution providers.

Caches under ``cache_dir`` (what makes the second load of a model cheaper):

- CPU: the graph ORT optimises at load (constant folding, fusions, NCHWc layout) is saved
  with ``optimized_model_filepath`` under ``onnxruntime/<key>/model.onnx``; the key covers the
  model sha256, the ORT version, the options and the CPU, because ``ORT_ENABLE_ALL`` output is
  hardware specific. The next load reads that file with optimisations off.
- QNN: the compiled HTP context is written as an EP-context model (``ep.context_enable``)
  and loaded instead of the original next time.
- OpenVINO EP: its own ``cache_dir`` provider option.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edged.errors import BackendUnavailable, EdgedError, ModelLoadError
from edged.log import get_logger, quiet_native
from edged.runtime.base import (
    Array,
    BackendSpec,
    Feeds,
    Precision,
    TensorSpec,
    cache_key,
    check_feeds,
    model_digest,
    one_line,
    unique_tmp,
)
from edged.schema import StrictModel

log = get_logger("runtime.onnx")

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
_INSTALL_HINT = {
    "qnn": "pip install onnxruntime-qnn (or an onnxruntime built with --use_qnn) and the QNN HTP libraries",
    "openvino": "pip install onnxruntime-openvino (replaces the onnxruntime wheel)",
    "cuda": "pip install onnxruntime-gpu and the matching CUDA/cuDNN runtime",
    "cpu": "pip install onnxruntime",
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
# Above this size the optimised copy keeps big initializers in a side file: ONNX protobufs
# cannot exceed 2 GB and generation UNets come close.
_EXTERNAL_ABOVE = 512 * 1024 * 1024


class OnnxConfig(StrictModel):
    """onnxruntime session options for one execution provider."""

    kind: Literal["onnx"] = "onnx"
    provider: Literal["cpu", "qnn", "openvino", "cuda"] = Field(
        default="cpu", description="Execution provider; CPU is always appended as fallback."
    )
    threads: int | None = Field(default=None, ge=1, description="intra-op threads.")
    precision: Precision | None = Field(
        default=None, description="fp32/fp16/int8: selects EP precision options (QNN, OpenVINO)."
    )
    cpu_arena: bool = Field(
        default=False,
        description=(
            "ORT CPU arena. Off for pooled sessions: the arena keeps its peak allocation for "
            "the life of the session and never hands it back, so the pool's byte accounting "
            "would be wrong and eviction would not free memory."
        ),
    )
    optimized_cache: bool = Field(
        default=True, description="Save/load the optimised graph under the cache dir (CPU)."
    )
    prepack: bool = Field(
        default=True,
        description=(
            "Let kernels re-pack weights at load. Off for big external-data models: the weights "
            "then stay memory-mapped from the file (a 0.85 GB int8 UNet loads at +0.08 GB RSS "
            "instead of +0.38 GB) at a small speed cost."
        ),
    )
    qnn_backend_path: str = Field(default="libQnnHtp.so", description="QNN backend library.")
    qnn_performance_mode: str = Field(
        default="sustained_high_performance",
        description="htp_performance_mode: burst, high_performance, sustained_high_performance...",
    )
    qnn_context_cache: bool = Field(
        default=True, description="Write/read the compiled QNN context (ep.context_*)."
    )
    openvino_device: Literal["CPU", "GPU", "NPU"] = Field(
        default="CPU", description="device_type of the OpenVINO EP."
    )
    provider_options: dict[str, str] = Field(
        default_factory=dict, description="Extra EP options; override the ones derived here."
    )


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
    if quiet_native():  # the process-wide logger (sessions set their own severity below)
        onnxruntime.set_default_logger_severity(3)
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


@cache
def _cpu_signature() -> str:
    """What makes an ORT_ENABLE_ALL graph non-portable: the userland's arch (the one whose
    kernels run: not the host kernel's under qemu-user) and its vector extensions."""
    from edged.hardware import userland_arch

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{userland_arch()}|{flags}"


def require_provider(ort: Any, provider: str) -> None:
    """Raise BackendUnavailable naming the package to install when ``provider`` is missing."""
    name = PROVIDERS[provider]
    have = ort.get_available_providers()
    if name not in have:
        raise BackendUnavailable(
            f"onnxruntime has no {name} here (have {', '.join(have)}): {_INSTALL_HINT[provider]}"
        )


@dataclass
class SessionPlan:
    """What one load reads and writes: decided before the session is created."""

    source: Path
    providers: list[Any]
    opts: Any
    cache_state: str  # "off" | "hit" | "miss"
    write_to: Path | None = None  # temp file ORT writes, renamed to ``final`` on success
    final: Path | None = None


def ep_options(config: OnnxConfig, cache_dir: Path | None) -> dict[str, str]:
    """The execution-provider options a session with ``config`` is created with.

    Derived from the config's fields, then ``provider_options`` (where a profile's
    ``runtime_options`` land) override them key by key.
    """
    opts: dict[str, str] = {}
    if config.provider == "qnn":
        opts = {
            "backend_path": config.qnn_backend_path,
            "htp_performance_mode": config.qnn_performance_mode,
            "htp_graph_finalization_optimization_mode": "3",
        }
        if config.precision == "fp16":
            opts["enable_htp_fp16_precision"] = "1"
    elif config.provider == "openvino":
        opts = {"device_type": config.openvino_device}
        if config.precision in ("fp32", "fp16"):
            opts["precision"] = config.precision.upper()
        if config.threads:
            opts["num_of_threads"] = str(config.threads)
        if cache_dir is not None:
            opts["cache_dir"] = str(cache_dir / "onnx-openvino")
    elif config.provider == "cuda":
        opts = {"device_id": "0", "arena_extend_strategy": "kSameAsRequested"}
    return {**opts, **config.provider_options}


def _base_options(ort: Any, config: OnnxConfig) -> Any:
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = config.cpu_arena
    # Errors only: saving an ORT_ENABLE_ALL graph warns on every cold load that it is
    # hardware specific, which is exactly why the cache key includes the CPU.
    opts.log_severity_level = 3
    if not config.prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if config.threads:
        opts.intra_op_num_threads = config.threads
        opts.inter_op_num_threads = 1
    return opts


def plan_session(
    path: Path, config: OnnxConfig, cache_dir: Path | None, sha: str | None = None
) -> SessionPlan:
    """Session options, providers and cache files for one load, decided before ORT runs.

    Nothing is loaded (on a miss only the temp dir the runtime will write into is made), so
    the QNN/OpenVINO/CUDA options can be checked on machines without those providers.
    """
    ort = _import_ort()
    opts = _base_options(ort, config)
    provider = PROVIDERS[config.provider]
    providers: list[Any] = [(provider, ep_options(config, cache_dir))]
    if provider != PROVIDERS["cpu"]:
        providers.append(PROVIDERS["cpu"])
    plan = SessionPlan(path, providers, opts, "off")
    if cache_dir is None:
        return plan
    if config.provider == "cpu" and config.optimized_cache:
        key = cache_key(model_digest(path, sha), ort.__version__, "cpu", _cpu_signature())
        plan.final = cache_dir / "onnxruntime" / key / "model.onnx"
    elif config.provider == "qnn" and config.qnn_context_cache:
        key = cache_key(model_digest(path, sha), ort.__version__, sorted(providers[0][1].items()))
        plan.final = cache_dir / "onnxruntime-qnn" / key / "model_ctx.onnx"
    else:
        return plan
    if plan.final.is_file():
        plan.source, plan.cache_state = plan.final, "hit"
        # The cached graph is already optimised; doing it again is the cost we are avoiding.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return plan
    write_to = unique_tmp(plan.final.parent) / plan.final.name
    try:
        write_to.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or full cache dir means no cache, not a failed load
        log.warning("cache_unwritable", path=str(write_to.parent), error=str(exc))
        return plan
    plan.cache_state, plan.write_to = "miss", write_to
    if config.provider == "cpu":
        opts.optimized_model_filepath = str(plan.write_to)
        if path.stat().st_size > _EXTERNAL_ABOVE:
            opts.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", "model.onnx.data"
            )
    else:
        opts.add_session_config_entry("ep.context_enable", "1")
        opts.add_session_config_entry("ep.context_embed_mode", "1")
        opts.add_session_config_entry("ep.context_file_path", str(plan.write_to))
    return plan


def _commit(plan: SessionPlan) -> None:
    """Rename the finished temp dir into place (atomic: readers never see half a file)."""
    if plan.write_to is None or plan.final is None:
        return
    tmp_dir = plan.write_to.parent
    if not plan.write_to.is_file():  # the EP did not produce one (e.g. nothing to compile)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return
    try:
        tmp_dir.rename(plan.final.parent)
    except OSError:  # another process committed the same key first: theirs is as good
        shutil.rmtree(tmp_dir, ignore_errors=True)


class OnnxSession:
    """An onnxruntime InferenceSession behind the edged ``Session`` interface.

    ``loaded_from`` is the file the runtime actually read (the cached optimised graph on a
    cache hit) and ``cache`` is ``"hit"``, ``"miss"`` or ``"off"``.
    """

    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __init__(
        self,
        path: Path,
        config: OnnxConfig,
        *,
        cache_dir: Path | None = None,
        sha256: str | None = None,
    ) -> None:
        ort = _import_ort()
        require_provider(ort, config.provider)
        self.backend = f"onnx:{config.provider}"
        plan = plan_session(path, config, cache_dir, sha256)
        try:
            self._sess = _open(ort, plan, path)
        except ModelLoadError as exc:
            if plan.cache_state != "hit" or plan.final is None:
                raise
            # A corrupt or stale cache entry must never make a good model unloadable.
            log.warning("cache_discarded", path=str(plan.final), error=str(exc))
            shutil.rmtree(plan.final.parent, ignore_errors=True)
            plan = plan_session(path, config, cache_dir, sha256)
            self._sess = _open(ort, plan, path)
        self.loaded_from, self.cache = plan.source, plan.cache_state
        self.inputs = _specs(self._sess.get_inputs())
        self.outputs = _specs(self._sess.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    @classmethod
    def load(
        cls,
        path: Path,
        config: OnnxConfig,
        *,
        cache_dir: Path | None = None,
        sha256: str | None = None,
    ) -> OnnxSession:
        return cls(path, config, cache_dir=cache_dir, sha256=sha256)

    def run(self, feeds: Feeds) -> dict[str, Array]:
        arrays = check_feeds(self.backend, self.inputs, feeds)
        try:
            values = self._sess.run(self._output_names, arrays)
        except Exception as exc:  # an ORT kernel failure: report it as ours, in one line
            raise EdgedError(f"{self.backend} failed to run: {one_line(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self._sess = None

    def resident_bytes(self) -> int | None:
        """onnxruntime exposes no memory figure; the pool measures RSS around the load."""
        return None


def _open(ort: Any, plan: SessionPlan, path: Path) -> Any:
    """Create the InferenceSession the plan describes and commit any cache file it wrote."""
    try:
        sess = ort.InferenceSession(
            str(plan.source), sess_options=plan.opts, providers=plan.providers
        )
    except Exception as exc:  # ORT raises its own untyped errors for any bad model
        if plan.write_to is not None:
            shutil.rmtree(plan.write_to.parent, ignore_errors=True)
        raise ModelLoadError(f"onnxruntime cannot load {path.name}: {one_line(exc)}") from exc
    _commit(plan)
    return sess


def _config_fields(variant: str, threads: int | None, precision: str | None) -> dict[str, Any]:
    return {"kind": "onnx", "provider": variant, "threads": threads, "precision": precision}


BACKEND = BackendSpec(
    kind="onnx",
    variants=tuple(PROVIDERS),
    formats=("onnx",),
    config=OnnxConfig,
    config_fields=_config_fields,
    opener=OnnxSession.load,
    options_field="provider_options",
)
