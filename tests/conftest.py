"""Shared fixtures: the ../shared data (skip with a reason where absent) and isolated settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.testing import SHARED_DIR


@pytest.fixture(scope="session")
def shared_models() -> Path:
    path = SHARED_DIR / "models"
    if not path.is_dir():
        pytest.skip(f"needs {path} (real models; set EDGED_SHARED_DIR to a checkout of shared/)")
    return path


@pytest.fixture(scope="session")
def shared_images() -> Path:
    path = SHARED_DIR / "images"
    if not path.is_dir():
        pytest.skip(f"needs {path} (real images; set EDGED_SHARED_DIR to a checkout of shared/)")
    return path


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state/cache/runtime dirs and no /etc/edged config."""
    home = tmp_path / "home"
    monkeypatch.setenv("EDGED_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("EDGED_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("EDGED_RUNTIME_DIR", str(home / "run"))
    for var in (
        "EDGED_CONFIG",
        "STATE_DIRECTORY",
        "CACHE_DIRECTORY",
        "RUNTIME_DIRECTORY",
        "NOTIFY_SOCKET",
    ):
        monkeypatch.delenv(var, raising=False)
    return home
