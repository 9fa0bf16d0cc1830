"""Calibrated static quantization of vision models: reader, gate, registration, CLI, bench."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.cli import main
from edged.config import Settings, load_settings
from edged.errors import BadRequest
from edged.models.catalog import Catalog, file_sha256
from edged.models.loader import load_model
from edged.quantization.calibration import (
    CalibrationReader,
    CalibrationSet,
    load_images,
    model_feeds,
)
from edged.quantization.speed_gate import read_records, record_speed
from edged.quantization.vision import GateFailed, quantize_catalog_model
from edged.runtime import config_for, open_session
from edged.testing import make_conv_sr_model, write_manifest


@pytest.fixture
def calib_dir(shared_images: Path, tmp_path: Path) -> Path:
    """Small crops of Set5 (fast), written as PNGs like a user's calibration folder."""
    out = tmp_path / "calib"
    out.mkdir()
    for src in sorted((shared_images / "set5" / "HR").glob("*.png")):
        image = cv2.imread(str(src))
        h, w = image.shape[:2]
        cv2.imwrite(
            str(out / src.name), image[h // 2 - 64 : h // 2 + 64, w // 2 - 64 : w // 2 + 64]
        )
    return out


def _entry(name: str, path: Path) -> dict[str, object]:
    return {
        "name": name,
        "task": "superres",
        "family": "sr-y",
        "licence": "MIT",
        "params": {"scale": 2},
        "input": {"layout": "NHWC", "color": "Y"},
        "output": {"layout": "NCHW"},
        "files": [
            {
                "format": "onnx",
                "precision": "fp32",
                "path": path.name,
                "sha256": file_sha256(path),
                "size": path.stat().st_size,
            }
        ],
    }


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A generated ESPCN-shaped model (and a harmful twin) in their own model/catalogue dirs."""
    models, manifests = tmp_path / "models", tmp_path / "manifests"
    for name, outlier in (("tiny_sr", 0.0), ("outlier_sr", 500.0)):
        path = make_conv_sr_model(models / f"{name}.onnx", outlier=outlier)
        write_manifest(manifests, _entry(name, path))
    monkeypatch.setenv("EDGED_MODEL_DIRS", json.dumps([str(models)]))
    monkeypatch.setenv("EDGED_CATALOG_DIRS", json.dumps([str(manifests)]))
    monkeypatch.setenv("EDGED_PROFILE", "generic-x86")
    return load_settings()


def test_calibration_split_and_digest(calib_dir: Path) -> None:
    calib = CalibrationSet.from_dir(calib_dir)
    names = [p.name for p in calib.images]
    assert names == sorted(names)
    assert len(names) == 5
    assert not set(calib.calibration) & set(calib.held_out)
    assert set(calib.calibration) | set(calib.held_out) == set(calib.images)
    (calib_dir / "baby.png").write_bytes((calib_dir / "bird.png").read_bytes())
    assert CalibrationSet.from_dir(calib_dir).digest != calib.digest


def test_empty_calibration_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="not a directory"):
        CalibrationSet.from_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadRequest, match="no images"):
        CalibrationSet.from_dir(tmp_path / "empty")


def test_sr_feeds_are_the_y_channel_the_task_feeds(shared_models: Path, calib_dir: Path) -> None:
    settings = load_settings(overrides={"model_dirs": [str(shared_models)]})
    entry = Catalog.from_settings(settings).get("espcn_x2")
    session = open_session(config_for("onnx:cpu"), shared_models / "espcn_x2.onnx", warmup=False)
    [image] = load_images([calib_dir / "bird.png"])
    feeds = model_feeds(entry, session, [image], crop=32)
    assert len(feeds) == 4  # a 2 x 2 grid of 64 px HR crops of a 128 px image
    [(name, tensor)] = feeds[0].items()
    assert name == session.inputs[0].name
    assert tensor.shape == (1, 32, 32, 1)
    assert tensor.dtype == np.float32
    lr = cv2.resize(image[:64, :64], (32, 32), interpolation=cv2.INTER_CUBIC)
    y = cv2.cvtColor(lr, cv2.COLOR_RGB2YCrCb)[..., 0].astype(np.float32) / 255.0
    np.testing.assert_allclose(tensor[0, :, :, 0], y, atol=1e-6)
    reader = CalibrationReader(feeds)
    assert sum(1 for _ in iter(reader.get_next, None)) == 4
    reader.rewind()
    assert reader.get_next() is not None


def test_generated_model_is_quantized_gated_and_registered(tiny: Settings, calib_dir: Path) -> None:
    result = quantize_catalog_model(tiny, "tiny_sr", "qdq-int8", calib_dir)
    assert result.gate is not None
    assert result.gate.passed, result.gate.summary()
    assert result.dst == tiny.model_search_path[0] / "tiny_sr_qdq-int8.onnx"
    import onnx

    ops = {n.op_type for n in onnx.load(str(result.dst)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    calib = CalibrationSet.from_dir(calib_dir)
    entry = Catalog.from_settings(tiny).get("tiny_sr")
    [variant] = [f for f in entry.files if f.precision == "int8"]
    assert variant.path == "tiny_sr_qdq-int8.onnx"
    assert variant.sha256 == file_sha256(result.dst)
    assert variant.scheme is not None
    assert calib.digest[:12] in variant.scheme
    assert variant.gate is not None
    assert variant.gate["passed"] is True
    assert variant.gate["calibration_sha256"] == calib.digest
    assert variant.gate["images"] == len(calib.held_out)
    # Both gates passed on this board: a profile preferring int8 now gets the variant.
    record_speed(tiny, "generic-x86", "tiny_sr", "onnx:cpu", {"winner": "int8"})
    catalog = Catalog.from_settings(tiny)
    loaded = load_model(
        entry,
        catalog,
        ["onnx:cpu"],
        threads=1,
        precision="int8",
        cache_dir=tiny.cache_dir,
        settings=tiny,
    )
    assert loaded.path == result.dst
    assert loaded.reasons == []


def test_harmful_quantization_is_refused_with_its_numbers(tiny: Settings, calib_dir: Path) -> None:
    with pytest.raises(GateFailed, match=r"outlier_sr qdq-int8 refused .*drop_db \d+\.\d\d"):
        quantize_catalog_model(tiny, "outlier_sr", "qdq-int8", calib_dir)
    assert not (tiny.model_search_path[0] / "outlier_sr_qdq-int8.onnx").exists()
    assert not (tiny.state_dir / "catalog" / "outlier_sr.toml").exists()


def test_cli_quantize_by_name(
    tiny: Settings, calib_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "quantize", "tiny_sr", "--calibration", str(calib_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gate"]["passed"] is True
    assert Path(report["dst"]).is_file()
    code = main(["models", "quantize", "tiny_sr", "--format", "tflite"])
    assert code != 0
    assert "--format tflite" in capsys.readouterr().err
    code = main(["models", "quantize", "outlier_sr", "--calibration", str(calib_dir)])
    assert code != 0
    assert "refused by the accuracy gate" in capsys.readouterr().err


def test_bench_records_winners_and_gates(
    tiny: Settings, calib_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "quantization", "--models", "tiny_sr", "--sr-images", str(calib_dir)]
    assert main([*args, "--backends", "onnx:cpu", "--runs", "2", "--size", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [row] = report["rows"]
    assert row["backend"] == "onnx:cpu"
    assert row["fp32_file"] == "tiny_sr.onnx"
    assert row["int8_file"].endswith(".qdq-int8.onnx")
    assert row["fp32_ms"] > 0
    assert row["int8_ms"] > 0
    faster = row["int8_ms"] < row["fp32_ms"] * 0.95
    assert row["winner"] == ("int8" if faster else "fp32")
    assert row["gate"]["passed"] is True
    stored = read_records(tiny)["speed"]["generic-x86"]["tiny_sr"]["onnx:cpu"]
    assert stored["winner"] == row["winner"]
    assert read_records(tiny)["accuracy"]["tiny_sr"]


def _variant_gate(settings: Settings, name: str) -> dict[str, object]:
    [variant] = [
        f for f in Catalog.from_settings(settings).get(name).files if f.precision == "int8"
    ]
    assert variant.gate is not None
    return variant.gate


def test_cli_gate_flag_overrides_the_settings(
    tiny: Settings,
    calib_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # outlier_sr's int8 variant loses ~20 dB; its fp32 is below bicubic (nearest-neighbour
    # upscaling), so the bicubic floor does not apply and only the drop limit decides.
    monkeypatch.setenv("EDGED_QUANTIZATION__MAX_PSNR_DROP_DB", "50")
    args = ["models", "quantize", "outlier_sr", "--calibration", str(calib_dir)]
    assert main([*args, "--max-drop-db", "0.3"]) == GateFailed.exit_code
    err = capsys.readouterr().err
    assert re.search(r"loses \d+\.\d\d dB vs fp32 \(\d+\.\d\d vs \d+\.\d\d; limit 0\.3 dB\)", err)
    assert not (tiny.model_search_path[0] / "outlier_sr_qdq-int8.onnx").exists()
    assert main(args) == 0  # the env limit of 50 dB lets the same variant through
    report = json.loads(capsys.readouterr().out)
    assert report["gate"]["passed"] is True
    assert report["gate"]["max_drop_db"] == 50.0
    assert _variant_gate(tiny, "outlier_sr")["max_drop_db"] == 50.0
    monkeypatch.delenv("EDGED_QUANTIZATION__MAX_PSNR_DROP_DB")
    assert main([*args, "--max-drop-db", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["gate"]["max_drop_db"] == 40.0
    assert _variant_gate(tiny, "outlier_sr")["max_drop_db"] == 40.0  # replaced, with its limit


def test_cli_gate_flags_are_validated_and_need_a_gate(
    tiny: Settings, calib_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["models", "quantize", "tiny_sr", "--calibration", str(calib_dir)]
    assert main([*args, "--min-iou", "2"]) == 2
    assert (
        "quantization.min_iou: Input should be less than or equal to 1" in capsys.readouterr().err
    )
    assert main([*args, "--max-drop-db", "nan"]) == 2
    assert "quantization.max_psnr_drop_db: Input should be a finite number" in (
        capsys.readouterr().err
    )
    assert main(["models", "quantize", "tiny_sr", "--max-drop-db", "1"]) == 10
    assert "add --calibration DIR" in capsys.readouterr().err
    assert not (tiny.model_search_path[0] / "tiny_sr_qdq-int8.onnx").exists()


def test_cli_out_ending_onnx_is_the_file(
    tiny: Settings, calib_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "parents" / "mine.onnx"
    args = ["models", "quantize", "tiny_sr", "--calibration", str(calib_dir), "--out", str(out)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dst"] == str(out)
    assert out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["mine.onnx"]  # no temp dir left
    assert _variant_gate(tiny, "tiny_sr")["passed"] is True
    [variant] = [
        f for f in Catalog.from_settings(tiny).get("tiny_sr").files if f.precision == "int8"
    ]
    assert (variant.path, variant.sha256) == ("mine.onnx", file_sha256(out))


def test_cli_out_of_any_other_name_is_a_directory(
    tiny: Settings, calib_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "variants.v2"  # a dotted name is still a directory
    args = ["models", "quantize", "tiny_sr", "--calibration", str(calib_dir), "--out", str(out)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_dir()
    assert report["dst"] == str(out / "tiny_sr_qdq-int8.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["tiny_sr_qdq-int8.onnx"]
    # Catalogue files are found on model_dirs: a variant elsewhere is written but says so.
    assert "not on the model search path" in report["note"]
    args = ["models", "quantize", "tiny_sr", "--calibration", str(calib_dir)]
    assert main([*args, "--out", str(tiny.model_search_path[0])]) == 0
    assert "note" not in json.loads(capsys.readouterr().out)


def test_bench_gate_follows_the_limit_flag(
    tiny: Settings, calib_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "quantization", "--models", "outlier_sr", "--sr-images", str(calib_dir)]
    args += ["--backends", "onnx:cpu", "--runs", "2", "--size", "32", "--json"]
    assert main(args) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert row["gate"]["passed"] is False
    assert row["gate"]["max_drop_db"] == 0.3
    assert main([*args, "--max-drop-db", "50"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert row["gate"]["passed"] is True
    assert row["gate"]["max_drop_db"] == 50.0
    [stored] = read_records(tiny)["accuracy"]["outlier_sr"].values()
    assert (stored["passed"], stored["max_drop_db"]) == (True, 50.0)


def test_cli_keep_failed_registers_it_failed_with_the_refusal_exit_code(
    tiny: Settings, calib_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["models", "quantize", "outlier_sr", "--calibration", str(calib_dir), "--keep-failed"]
    assert main(args) == GateFailed.exit_code
    report = json.loads(capsys.readouterr().out)
    assert Path(report["dst"]).is_file()
    gate = _variant_gate(tiny, "outlier_sr")
    assert (gate["passed"], gate["max_drop_db"]) == (False, 0.3)
