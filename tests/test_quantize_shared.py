"""Issue #11's acceptance runs, end to end through the CLI on the real shared models.

``edged models quantize espcn_x2 --calibration set5/HR`` must produce an int8 ONNX variant
that passes the default accuracy gate and is registered with its numbers; FSRCNN x2 must be
refused with the measured numbers and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged.cli import main
from edged.config import load_settings
from edged.models.catalog import Catalog


@pytest.fixture
def with_shared(shared_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGED_MODEL_DIRS", json.dumps([str(shared_models)]))
    return shared_models


def test_espcn_x2_int8_onnx_passes_the_default_gate(
    with_shared: Path, shared_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr = shared_images / "set5" / "HR"
    assert main(["models", "quantize", "espcn_x2", "--calibration", str(hr)]) == 0
    report = json.loads(capsys.readouterr().out)
    gate = report["gate"]
    assert gate["passed"] is True
    assert gate["drop_db"] <= 0.3
    assert gate["quant_db"] > gate["bicubic_db"]
    assert report["calibration"]["held_out"] == ["bird.png", "head.png"]
    variant = Path(report["dst"])
    assert variant.is_file()
    assert variant.suffix == ".onnx"
    entry = Catalog.from_settings(load_settings()).get("espcn_x2")
    mine = [f for f in entry.files if f.path == variant.name]
    assert len(mine) == 1
    assert mine[0].precision == "int8"
    assert mine[0].gate is not None
    assert mine[0].gate["passed"] is True
    assert mine[0].gate["calibration_sha256"] == report["calibration"]["sha256"]


def test_fsrcnn_x2_int8_is_refused_with_its_numbers(
    with_shared: Path, shared_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr = shared_images / "set5" / "HR"
    state = load_settings().state_dir
    assert main(["models", "quantize", "fsrcnn_x2", "--calibration", str(hr)]) != 0
    err = capsys.readouterr().err
    assert "refused by the accuracy gate" in err
    assert "loses" in err
    assert " dB" in err
    assert not list(state.rglob("*.onnx"))  # nothing written
