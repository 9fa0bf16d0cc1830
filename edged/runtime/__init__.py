"""Runtime backends, one file each, registered in an explicit table.

``config_for(backend, ...)`` turns a backend name (``onnx:cpu``, ``litert:xnnpack``,
``openvino:cpu``) into that runtime's validated config; ``open_session(config, path, ...)``
is the one factory. Optional runtimes are imported only when a config of their kind is
opened, so importing this package costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from edged.errors import BackendUnavailable, ConfigError, ModelLoadError
from edged.log import get_logger
from edged.runtime.base import (
    FORMAT_OF_RUNTIME,
    Session,
    TensorSpec,
    one_line,
    split_backend,
    warmup_feeds,
)
from edged.runtime.litert import LiteRTConfig, LiteRTSession
from edged.runtime.onnx import OnnxConfig, OnnxSession
from edged.runtime.openvino import OpenVINOConfig, OpenVINOSession

RuntimeConfig = Annotated[OnnxConfig | LiteRTConfig | OpenVINOConfig, Field(discriminator="kind")]
"""Any backend's config; ``kind`` selects the class (``{"kind": "onnx", "provider": "qnn"}``)."""

RUNTIME_CONFIG: TypeAdapter[OnnxConfig | LiteRTConfig | OpenVINOConfig] = TypeAdapter(RuntimeConfig)
log = get_logger("runtime")

BACKENDS: dict[str, tuple[str, ...]] = {
    "onnx": ("cpu", "qnn", "openvino", "cuda"),
    "litert": ("xnnpack", "cpu"),
    "openvino": ("cpu", "gpu", "npu"),
}
"""Every backend name edged knows, runtime -> variants."""


def _onnx(variant: str, threads: int | None, precision: str | None) -> dict[str, Any]:
    return {"kind": "onnx", "provider": variant, "threads": threads, "precision": precision}


def _litert(variant: str, threads: int | None, precision: str | None) -> dict[str, Any]:
    return {"kind": "litert", "delegate": variant, "threads": threads}


def _openvino(variant: str, threads: int | None, precision: str | None) -> dict[str, Any]:
    return {
        "kind": "openvino",
        "device": variant.upper(),
        "threads": threads,
        "precision": precision,
    }


_CONFIG_BUILDERS: dict[str, Callable[[str, int | None, str | None], dict[str, Any]]] = {
    "onnx": _onnx,
    "litert": _litert,
    "openvino": _openvino,
}


def config_for(
    backend: str, *, threads: int | None = None, precision: str | None = None
) -> OnnxConfig | LiteRTConfig | OpenVINOConfig:
    """Backend name -> that runtime's config.

    Unknown names are ``BackendUnavailable`` (a chain may name backends of other builds);
    bad values (threads < 1, an unknown precision) are ``ConfigError``.
    """
    runtime, variant = split_backend(backend)
    if variant not in BACKENDS.get(runtime, ()):
        known = ", ".join(f"{r}:{v}" for r, vs in BACKENDS.items() for v in vs)
        raise BackendUnavailable(f"unknown backend {backend!r}; known backends: {known}")
    try:
        return RUNTIME_CONFIG.validate_python(
            _CONFIG_BUILDERS[runtime](variant, threads, precision)
        )
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{backend}: invalid runtime options: {problems}") from exc


_OPENERS: dict[str, Callable[..., Session]] = {
    "onnx": OnnxSession.load,
    "litert": LiteRTSession.load,
    "openvino": OpenVINOSession.load,
}
"""config.kind -> ``load(path, config, *, cache_dir, sha256)``; the runtimes themselves are
imported inside those, on first use."""


def warm_up(session: Session, size: tuple[int, int] | None = None) -> None:
    """Run once on zeros so that "loaded" means "ready".

    The first inference is where runtimes do their lazy work: onnxruntime plans memory and
    picks kernels for the shape, XNNPACK packs weights and builds its operator plan, OpenVINO
    compiles dynamic-shape kernels. Doing it at load keeps that cost (up to seconds for big
    models) out of the first real request's latency, out of the daemon's watchdog window and
    inside the pool's measured load cost. A model that cannot even run zeros fails here, on
    this backend, so the loader can fall back to the next one.
    """
    try:
        session.run(warmup_feeds(session.inputs, size))
    except Exception as exc:  # any failure means this backend cannot serve the model
        session.close()
        raise ModelLoadError(f"{session.backend}: warm-up run failed: {one_line(exc)}") from exc


def open_session(
    config: OnnxConfig | LiteRTConfig | OpenVINOConfig,
    path: Path,
    *,
    cache_dir: Path | None = None,
    sha256: str | None = None,
    warmup: bool = True,
    warmup_size: tuple[int, int] | None = None,
) -> Session:
    """Load ``path`` with the runtime ``config`` names and (by default) warm it up.

    ``cache_dir`` enables the compile caches; ``sha256`` (the catalogue's) saves hashing the
    file for the cache key. Raises ``BackendUnavailable`` (runtime/provider/device missing)
    or ``ModelLoadError`` (this runtime cannot read or run the file).
    """
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    start = time.perf_counter()
    session = _OPENERS[config.kind](path, config, cache_dir=cache_dir, sha256=sha256)
    loaded = time.perf_counter()
    if warmup:
        warm_up(session, warmup_size)
    log.debug(
        "session_opened",
        backend=session.backend,
        path=str(path),
        cache=getattr(session, "cache", None),
        load_s=round(loaded - start, 3),
        warmup_s=round(time.perf_counter() - loaded, 3),
    )
    return session


__all__ = [
    "BACKENDS",
    "FORMAT_OF_RUNTIME",
    "LiteRTConfig",
    "OnnxConfig",
    "OpenVINOConfig",
    "RuntimeConfig",
    "Session",
    "TensorSpec",
    "config_for",
    "open_session",
    "warm_up",
]
