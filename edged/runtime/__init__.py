"""Runtime backends, one file each, registered from the description each gives of itself.

Each backend module ends with ``BACKEND = BackendSpec(...)`` (kind, variants, formats, config
class, opener, where profile options go); ``REGISTRY`` lists those descriptions and every
table here is derived from it. ``config_for(backend, ...)`` turns a backend name
(``onnx:cpu``, ``litert:xnnpack``, ``openvino:cpu``) into that runtime's validated config;
``open_session(config, path, ...)`` is the one factory. Optional runtimes are imported only when a config of their kind is
opened, so importing this package costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from edged.errors import BackendUnavailable, ConfigError, ModelLoadError
from edged.log import get_logger
from edged.runtime import litert, onnx, openvino
from edged.runtime.base import BackendSpec, Session, TensorSpec, one_line, warmup_feeds
from edged.runtime.litert import LiteRTConfig
from edged.runtime.onnx import OnnxConfig
from edged.runtime.openvino import OpenVINOConfig

log = get_logger("runtime")

REGISTRY: dict[str, BackendSpec] = {
    spec.kind: spec for spec in (onnx.BACKEND, litert.BACKEND, openvino.BACKEND)
}
"""Runtime name -> its description; adding a backend = one module + one entry here."""

RuntimeConfig = OnnxConfig | LiteRTConfig | OpenVINOConfig
"""Any backend's config, for type checking (the registry's ``config`` classes; a test keeps
the two in step)."""

BACKENDS: dict[str, tuple[str, ...]] = {kind: s.variants for kind, s in REGISTRY.items()}
"""Every backend name edged knows, runtime -> variants."""

FORMAT_OF_RUNTIME: dict[str, tuple[str, ...]] = {kind: s.formats for kind, s in REGISTRY.items()}
"""Which catalogue file formats each runtime can read, in order of preference."""


def split_backend(name: str) -> tuple[str, str]:
    """``"onnx:qnn"`` -> ``("onnx", "qnn")``; a bare runtime gets its default variant."""
    runtime, _, variant = name.partition(":")
    spec = REGISTRY.get(runtime)
    return runtime, variant or (spec.variants[0] if spec else "")


def backend_spec(backend: str) -> tuple[BackendSpec, str]:
    """``RUNTIME:VARIANT`` -> (that runtime's description, variant); unknown names are
    ``BackendUnavailable`` naming every known backend (a chain may name other builds')."""
    runtime, variant = split_backend(backend)
    spec = REGISTRY.get(runtime)
    if spec is None or variant not in spec.variants:
        known = ", ".join(f"{r}:{v}" for r, vs in BACKENDS.items() for v in vs)
        raise BackendUnavailable(f"unknown backend {backend!r}; known backends: {known}")
    return spec, variant


def config_for(
    backend: str,
    *,
    threads: int | None = None,
    precision: str | None = None,
    options: Mapping[str, str] | None = None,
) -> RuntimeConfig:
    """Backend name (+ a profile's ``runtime_options`` for it) -> that runtime's config.

    Unknown names are ``BackendUnavailable``; bad values (threads < 1, an unknown precision,
    options for a runtime that takes none) are ``ConfigError``.
    """
    spec, variant = backend_spec(backend)
    fields = spec.config_fields(variant, threads, precision)
    if options:
        if spec.options_field is None:
            raise ConfigError(
                f"{backend}: this runtime takes no runtime_options (got {dict(options)})"
            )
        fields[spec.options_field] = dict(options)
    try:
        config: RuntimeConfig = spec.config.model_validate(fields)  # type: ignore[assignment]
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{backend}: invalid runtime options: {problems}") from exc
    return config


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
    config: RuntimeConfig,
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
    session = REGISTRY[config.kind].opener(path, config, cache_dir=cache_dir, sha256=sha256)
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
    "REGISTRY",
    "BackendSpec",
    "LiteRTConfig",
    "OnnxConfig",
    "OpenVINOConfig",
    "RuntimeConfig",
    "Session",
    "TensorSpec",
    "backend_spec",
    "config_for",
    "open_session",
    "split_backend",
    "warm_up",
]
