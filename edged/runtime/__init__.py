"""Runtime backends, one file each, registered in an explicit table.

``open_session(config, path)`` is the one factory; optional runtimes are imported only when
a config of their kind is used.
"""

from __future__ import annotations

from pathlib import Path

from edged.runtime.base import Session, TensorSpec, split_backend
from edged.runtime.onnx import OnnxConfig, OnnxSession

RuntimeConfig = OnnxConfig


def config_for(backend: str, *, threads: int | None = None) -> RuntimeConfig:
    """Backend name (``onnx:cpu``) -> that runtime's config with the given threads."""
    runtime, variant = split_backend(backend)
    if runtime == "onnx":
        return OnnxConfig.model_validate({"provider": variant, "threads": threads})
    raise ValueError(f"unknown backend {backend!r}")


def open_session(config: RuntimeConfig, path: Path) -> Session:
    """Load ``path`` with the runtime ``config`` names."""
    return OnnxSession(path, config)


__all__ = ["RuntimeConfig", "Session", "TensorSpec", "config_for", "open_session"]
