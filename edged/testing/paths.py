"""Where the read-only ../shared checkout (real models and images) is."""

from __future__ import annotations

import os
from pathlib import Path


def source_checkout() -> Path | None:
    """The edged source checkout this package runs from (editable install or PYTHONPATH), or
    None for an installed wheel (site-packages has no pyproject.toml two levels up)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "edged").is_dir() else None


NO_SHARED_DIR = Path("/EDGED_SHARED_DIR-is-not-set")
"""SHARED_DIR when neither EDGED_SHARED_DIR nor a checkout's ../shared names one: a path that
never exists, so the shared-model tests skip (their one line names EDGED_SHARED_DIR)."""


def _shared_dir() -> Path:
    env = os.environ.get("EDGED_SHARED_DIR")
    if env:
        return Path(env)
    checkout = source_checkout()
    # An installed wheel sits in site-packages: ../shared next to it means nothing.
    return checkout.parent / "shared" if checkout is not None else NO_SHARED_DIR


SHARED_DIR = _shared_dir()
"""The read-only ../shared checkout (real models and images); tests skip where it is absent."""


def shared_models_dir() -> Path:
    return SHARED_DIR / "models"


def shared_images_dir() -> Path:
    return SHARED_DIR / "images"
