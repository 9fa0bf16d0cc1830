"""systemd/edged.service passes `systemd-analyze verify` and scores exposure <= 2.0, and
`make install-service` installs a unit that verifies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "edged.service"
INSTALLED_EXEC = "/opt/edged/venv/bin/edged"


def need_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this venv's edged (verify checks it exists)."""
    need_systemd_analyze()
    edged = Path(sys.executable).with_name("edged")
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    copy = tmp_path / "edged.service"
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


def install_service(root: Path, edged: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("needs make (apt-get install make)")
    argv = ["make", "-s", "-C", str(REPO), "install-service", f"DESTDIR={root}"]
    return subprocess.run(
        [*argv, f"EDGED_BIN={edged}"], capture_output=True, text=True, check=False
    )


def test_make_install_service_installs_a_unit_that_verifies(tmp_path: Path) -> None:
    need_systemd_analyze()
    root, edged = tmp_path / "root", Path(sys.executable).with_name("edged")
    done = install_service(root, edged)
    assert done.returncode == 0, done.stderr
    unit = root / "etc/systemd/system/edged.service"
    config = root / "etc/edged/edged.toml"
    assert re.search(
        rf"^ExecStart={re.escape(str(edged))} run --config /etc/edged/edged.toml$",
        unit.read_text(),
        re.M,
    )
    assert INSTALLED_EXEC not in unit.read_text()
    assert config.read_text() == UNIT.with_name("edged.toml").read_text()
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    # A second install replaces the unit but keeps the operator's edited config.
    config.write_text('log_level = "debug"\n')
    again = install_service(root, edged)
    assert again.returncode == 0, again.stderr
    assert config.read_text() == 'log_level = "debug"\n'
    assert "kept" in again.stdout


def test_make_install_service_refuses_without_an_installed_edged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = install_service(root, tmp_path / "venv" / "bin" / "edged")
    assert done.returncode != 0
    assert "no edged at" in done.stderr
    assert "EDGED_BIN=" in done.stderr
    assert not (root / "etc/systemd/system/edged.service").exists()
