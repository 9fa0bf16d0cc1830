"""systemd/edged.daemon.service passes `systemd-analyze verify` and scores exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edged.daemon.service"
INSTALLED_EXEC = "/opt/edged/venv/bin/edged"


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this venv's edged (verify checks it exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    edged = Path(sys.executable).with_name("edged")
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    copy = tmp_path / "edged.daemon.service"
    copy.write_text(text.replace(INSTALLED_EXEC, str(edged)))
    return copy


def test_unit_declares_the_contract() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "MemoryMax=1536M",
        "DynamicUser=yes",
        "SupplementaryGroups=video render",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "RuntimeDirectoryMode=0750",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    watchdog = int(re.search(r"^WatchdogSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert stop > 10  # room for the default 10 s drain before systemd's SIGKILL
    assert watchdog >= 10


def test_systemd_analyze_verify_passes(unit_copy: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Unknown key" not in done.stderr, done.stderr


def test_security_exposure_at_most_2(unit_copy: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


def test_example_config_is_valid_and_every_stream_source_is_understood() -> None:
    from edged.config import load_settings
    from edged.daemon.sources import source_kind

    settings = load_settings(UNIT.with_name("edged.toml"))
    kinds = {source_kind(s.source) for s in settings.streams}
    assert kinds == {"camera", "stream", "inbox"}
    assert settings.service.drain_timeout_s < 30  # below the unit's TimeoutStopSec
