"""Config: sources in order, every invalid input -> exit 2 naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edged.cli import main
from edged.config import load_settings
from edged.errors import ConfigError


def _edged(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args], capture_output=True, text=True, env=env, check=False
    )


def test_version_and_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check"]) == 0
    assert "config ok" in capsys.readouterr().out
    proc = _edged("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("edged ")


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        'threads = 1\nlog_level = "warning"\nmemory_budget = "1.2G"\n[zmq]\nmax_queue = 7\n'
    )
    s = load_settings(cfg)
    assert (s.threads, s.log_level, s.memory_budget, s.zmq.max_queue) == (
        1,
        "warning",
        1_200_000_000,
        7,
    )
    monkeypatch.setenv("EDGED_THREADS", "2")
    monkeypatch.setenv("EDGED_ZMQ__MAX_QUEUE", "9")
    s = load_settings(cfg)
    assert (s.threads, s.zmq.max_queue) == (2, 9)
    s = load_settings(cfg, {"threads": 3})
    assert s.threads == 3


@pytest.mark.parametrize(
    ("toml", "field", "got"),
    [
        ("bogus = 1\n", "bogus: unknown setting", "(got 1)"),
        ('threads = "many"\n', "threads:", "(got 'many')"),
        ('memory_budget = "lots"\n', "memory_budget:", "(got 'lots')"),
        ('profile_dirs = ["/nonexistent/dir"]\n', "profile_dirs.0", "/nonexistent/dir"),
        ("[zmq]\nmax_queue = -1\n", "zmq.max_queue:", "(got -1)"),
        ('[quantization]\nmax_psnr_drop_db = "x"\n', "quantization.max_psnr_drop_db:", "(got 'x')"),
        ("[quantization]\nmax_drop_db = 1.0\n", "quantization.max_drop_db: unknown setting", "1.0"),
        ("[quantization]\nmin_iou = 1.5\n", "quantization.min_iou:", "(got 1.5)"),
        ("[quantization]\nmax_hole_drop_db = -0.1\n", "quantization.max_hole_drop_db:", "-0.1"),
        (
            '[[streams]]\nname = "a b"\nsource = "x"\ntask = "segmentation"\n',
            "streams.0.name",
            "'a b'",
        ),
        (
            '[[streams]]\nname = "a"\nsource = "x"\ntask = "segmentation"\nparallel = 0\n',
            "streams.0.parallel: Input should be greater than or equal to 1",
            "(got 0)",
        ),
        (
            '[[streams]]\nname = "a"\nsource = "x"\ntask = "segmentation"\nparallel = 9\n',
            "streams.0.parallel: Input should be less than or equal to 4",
            "(got 9)",
        ),
        (
            '[service]\nworkers = 2\n[[streams]]\nname = "a"\nsource = "x"\n'
            'task = "segmentation"\nparallel = 3\n',
            "streams a: parallel exceeds service.workers (2)",
            "raise [service] workers or lower parallel",
        ),
    ],
)
def test_invalid_config_exit_2_names_field(tmp_path: Path, toml: str, field: str, got: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    proc = _edged("config", "check", "--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr
    assert got in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_error_listed_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("bogus = 1\nthreads = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "bogus" in str(info.value)
    assert "threads" in str(info.value)
    proc = _edged("config", "check", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2
    assert "file not found" in proc.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("threads = [\n")
    assert _edged("config", "check", "--config", str(broken)).returncode == 2


def test_show_json_is_effective_config(tmp_path: Path) -> None:
    cfg = tmp_path / "edged.toml"
    cfg.write_text("threads = 2\n")
    proc = _edged("config", "show", "--json", "--config", str(cfg), "--log-level", "debug")
    data = json.loads(proc.stdout)
    assert data["threads"] == 2
    assert data["log_level"] == "debug"
    assert data["zmq"]["max_frame_bytes"] > 0


def test_systemd_directories_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGED_STATE_DIR")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "st"))
    assert load_settings().state_dir == tmp_path / "st"


def test_quantization_limits_cli_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().quantization.model_dump() == {
        "max_psnr_drop_db": 0.3,
        "min_iou": 0.97,
        "max_hole_drop_db": 0.5,
    }
    cfg = tmp_path / "edged.toml"
    cfg.write_text("[quantization]\nmax_psnr_drop_db = 1.2\nmin_iou = 0.9\n")
    assert load_settings(cfg).quantization.max_psnr_drop_db == 1.2
    monkeypatch.setenv("EDGED_QUANTIZATION__MAX_PSNR_DROP_DB", "0.8")
    q = load_settings(cfg).quantization
    assert (q.max_psnr_drop_db, q.min_iou) == (0.8, 0.9)
    # A CLI override of one key keeps the section's others from env and file.
    q = load_settings(cfg, {"quantization": {"max_hole_drop_db": 2.0}}).quantization
    assert (q.max_psnr_drop_db, q.min_iou, q.max_hole_drop_db) == (0.8, 0.9, 2.0)
    monkeypatch.setenv("EDGED_QUANTIZATION__MIN_IOU", "x")
    with pytest.raises(ConfigError, match=r"quantization\.min_iou: .*\(got 'x'\)"):
        load_settings(cfg)


def test_schema_documents_the_quantization_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    section = schema["$defs"]["QuantizationSettings"]
    assert section["additionalProperties"] is False
    fields = section["properties"]
    assert {k: v["default"] for k, v in fields.items()} == {
        "max_psnr_drop_db": 0.3,
        "min_iou": 0.97,
        "max_hole_drop_db": 0.5,
    }
    assert all(v["description"] for v in fields.values())
