"""Where edged keeps its files by default: systemd's ``*_DIRECTORY`` first (``StateDirectory=``
etc. export them), then FHS paths when running as root, then XDG directories for a user."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
)


def _must_be_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError("directory does not exist")
    return path


ExistingDir = Annotated[Path, AfterValidator(_must_be_dir)]
"""A directory that must exist when the config is loaded."""


def _systemd_or_default(env: str, root_path: str, xdg_env: str, xdg_default: str) -> Path:
    """systemd's ``*_DIRECTORY`` first, then FHS as root, then XDG for a user."""
    from_systemd = os.environ.get(env)
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if os.geteuid() == 0:
        return Path(root_path)
    base = os.environ.get(xdg_env) or os.path.expanduser(xdg_default)
    return Path(base) / "edged"


def default_state_dir() -> Path:
    return _systemd_or_default(
        "STATE_DIRECTORY", "/var/lib/edged", "XDG_STATE_HOME", "~/.local/state"
    )


def default_cache_dir() -> Path:
    return _systemd_or_default("CACHE_DIRECTORY", "/var/cache/edged", "XDG_CACHE_HOME", "~/.cache")


def default_runtime_dir() -> Path:
    from_systemd = os.environ.get("RUNTIME_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if os.geteuid() == 0:
        return Path("/run/edged")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "edged" if xdg else Path(f"/tmp/edged-{os.getuid()}")  # noqa: S108 - per-user fallback like systemd's
