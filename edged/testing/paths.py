"""Where the read-only ../shared checkout (real models and images) is."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DIR = Path(
    os.environ.get("EDGED_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared")
)
"""The read-only ../shared checkout (real models and images); tests skip where it is absent."""


def shared_models_dir() -> Path:
    return SHARED_DIR / "models"


def shared_images_dir() -> Path:
    return SHARED_DIR / "images"
