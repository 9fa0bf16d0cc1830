"""Accuracy gate on the real shared int8 files, and the load-time precision decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.config import Settings, load_settings
from edged.models.catalog import Catalog
from edged.models.loader import load_model
from edged.models.schema import ModelEntry
from edged.quantization.accuracy_gate import (
    DEFAULTS,
    GateResult,
    Thresholds,
    iou,
    psnr,
    seg_gate,
    sr_gate,
    thresholds_from,
)
from edged.quantization.calibration import CalibrationSet, load_images
from edged.quantization.speed_gate import board_key, precision_allowed, read_records, record_speed
from edged.quantization.variants import record_gate
from edged.runtime import config_for, open_session
from edged.runtime.base import Session

CROP = 48  # LR side of the Set5 centre crops: keeps the gate runs to a few ms each


@pytest.fixture
def settings(shared_models: Path) -> Settings:
    return load_settings(overrides={"model_dirs": [str(shared_models)], "profile": "generic-x86"})


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return Catalog.from_settings(settings)


@pytest.fixture(scope="module")
def set5(shared_images: Path) -> list[np.ndarray]:
    return load_images(CalibrationSet.from_dir(shared_images / "set5" / "HR").held_out)


def _litert(path: Path) -> Session:
    return open_session(config_for("litert:xnnpack"), path, warmup=False)


def _tflite_gate(
    shared_models: Path, entry: ModelEntry, images: list[np.ndarray], th: Thresholds
) -> GateResult:
    fp32 = _litert(shared_models / f"{entry.name}_fp32.tflite")
    int8 = _litert(shared_models / f"{entry.name}_int8.tflite")
    return sr_gate(entry, fp32, int8, images, th, crop=CROP)


def test_fsrcnn_int8_fails_below_bicubic(
    shared_models: Path, catalog: Catalog, set5: list[np.ndarray]
) -> None:
    gate = _tflite_gate(shared_models, catalog.get("fsrcnn_x2"), set5, Thresholds())
    assert not gate.passed
    assert gate.values["quant_db"] < gate.values["bicubic_db"] < gate.values["fp32_db"]
    assert any("below bicubic" in r for r in gate.reasons)
    # Even a generous drop limit does not let it through: the bicubic floor holds.
    assert not _tflite_gate(
        shared_models, catalog.get("fsrcnn_x2"), set5, Thresholds(max_psnr_drop_db=10.0)
    ).passed


def test_espcn_int8_stays_above_bicubic_and_is_judged_by_its_drop(
    shared_models: Path, catalog: Catalog, set5: list[np.ndarray]
) -> None:
    entry = catalog.get("espcn_x2")
    gate = _tflite_gate(shared_models, entry, set5, Thresholds())
    assert gate.values["bicubic_db"] < gate.values["quant_db"] < gate.values["fp32_db"]
    drop = gate.values["drop_db"]
    assert 0.0 < drop < 2.0
    assert gate.passed == (drop <= 0.3)
    # The verdict follows the configured limit, not a hard-coded answer.
    assert _tflite_gate(shared_models, entry, set5, Thresholds(max_psnr_drop_db=drop + 0.1)).passed
    assert not _tflite_gate(
        shared_models, entry, set5, Thresholds(max_psnr_drop_db=drop - 0.1)
    ).passed
    stored = gate.as_dict()
    assert stored["passed"] is gate.passed
    assert stored["metric"] == "y_psnr"
    assert stored["drop_db"] == pytest.approx(drop, abs=1e-3)


def test_default_limits_are_the_settings_defaults() -> None:
    assert thresholds_from(load_settings()) == Thresholds() == DEFAULTS


def test_espcn_int8_verdict_follows_the_quantization_settings(
    shared_models: Path,
    catalog: Catalog,
    set5: list[np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = catalog.get("espcn_x2")
    default = _tflite_gate(shared_models, entry, set5, thresholds_from(load_settings()))
    assert not default.passed  # the shared int8 file loses ~1 dB: over the default 0.3
    assert 0.3 < default.values["drop_db"] < 1.2
    assert default.values["quant_db"] > default.values["bicubic_db"]  # only the drop fails it
    assert default.as_dict()["max_drop_db"] == 0.3
    cfg = tmp_path / "edged.toml"
    cfg.write_text("[quantization]\nmax_psnr_drop_db = 1.2\n")
    loose = _tflite_gate(shared_models, entry, set5, thresholds_from(load_settings(cfg)))
    assert loose.passed, loose.summary()
    assert loose.values == default.values
    assert loose.as_dict()["max_drop_db"] == 1.2  # the stored gate names the limit applied
    monkeypatch.setenv("EDGED_QUANTIZATION__MAX_PSNR_DROP_DB", "0.3")  # env beats the file
    again = _tflite_gate(shared_models, entry, set5, thresholds_from(load_settings(cfg)))
    assert not again.passed
    assert "limit 0.3 dB" in again.reasons[0]


def test_segmentation_gate_is_mask_iou(
    shared_models: Path, shared_images: Path, catalog: Catalog
) -> None:
    entry = catalog.get("selfie_segmentation")
    photo = load_images([shared_images / "portraits" / "astronaut.png"])
    model = shared_models / "selfie_segmentation.tflite"
    same = seg_gate(entry, _litert(model), _litert(model), photo)
    assert same.passed
    assert same.values["iou"] == 1.0
    assert same.metric == "mask_iou"
    strict = seg_gate(entry, _litert(model), _litert(model), photo, Thresholds(min_iou=1.01))
    assert not strict.passed
    assert strict.reasons == ["IoU 1.000 < 1.01"]


def test_iou_and_psnr() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a & False, b & False) == 1.0  # two empty masks agree
    x = np.full((8, 8), 100.0)
    assert psnr(x, x + 1.0) == pytest.approx(20 * np.log10(255.0))


# ---------------------------------------------------------------- the load-time decision


def _gated(entry: ModelEntry, passed: bool) -> ModelEntry:
    files = [
        f.model_copy(update={"gate": {"passed": passed, "reasons": "measured"}})
        if f.precision == "int8"
        else f
        for f in entry.files
    ]
    return entry.model_copy(update={"files": files})


def _load(entry: ModelEntry, catalog: Catalog, settings: Settings) -> object:
    return load_model(
        entry,
        catalog,
        ["litert:xnnpack"],
        threads=1,
        precision="int8",
        cache_dir=settings.cache_dir,
        settings=settings,
    )


def test_int8_loads_only_where_both_gates_passed(catalog: Catalog, settings: Settings) -> None:
    entry = catalog.get("espcn_x2")
    board = board_key(settings)
    assert board == "generic-x86"
    record_speed(settings, board, entry.name, "litert:xnnpack", {"winner": "int8"})
    loaded = _load(_gated(entry, True), catalog, settings)
    assert loaded.file.precision == "int8"  # type: ignore[attr-defined]
    assert loaded.reasons == []  # type: ignore[attr-defined]

    failed = _load(_gated(entry, False), catalog, settings)
    assert failed.file.path == "espcn_x2_fp32.tflite"  # type: ignore[attr-defined]
    [reason] = failed.reasons  # type: ignore[attr-defined]
    assert reason.startswith("litert:xnnpack: int8 not used, loading fp32: accuracy gate failed")


def test_speed_gate_decides_between_passing_variants(catalog: Catalog, settings: Settings) -> None:
    entry = _gated(catalog.get("espcn_x2"), True)
    unmeasured = precision_allowed(entry, "litert:xnnpack", "int8", settings=settings)
    assert unmeasured.precision == "fp32"
    assert "no speed measurement" in (unmeasured.reason or "")
    record_speed(
        settings,
        "generic-x86",
        entry.name,
        "litert:xnnpack",
        {"winner": "fp32", "fp32_ms": 1.0, "int8_ms": 1.3},
    )
    slower = _load(entry, catalog, settings)
    assert slower.file.precision == "fp32"  # type: ignore[attr-defined]
    assert "int8 is not faster on board generic-x86 (1.3 ms vs fp32 1.0 ms)" in " ".join(
        slower.reasons  # type: ignore[attr-defined]
    )
    # Records are per board: another board's winner changes nothing here.
    record_speed(settings, "raspberry-pi-5", entry.name, "litert:xnnpack", {"winner": "int8"})
    assert precision_allowed(entry, "litert:xnnpack", "int8", settings=settings).precision == "fp32"
    assert set(read_records(settings)["speed"]) == {"generic-x86", "raspberry-pi-5"}
    # fp32 profiles are untouched, and a failed variant is never a fallback candidate.
    plain = precision_allowed(_gated(entry, False), "litert:xnnpack", "fp32", settings=settings)
    assert plain.precision == "fp32"
    assert plain.reason is None
    assert plain.blocked == {"espcn_x2_int8.tflite"}


def test_gate_recorded_in_the_catalogue_drives_the_loader(
    catalog: Catalog, settings: Settings
) -> None:
    entry = catalog.get("fsrcnn_x2")
    record_speed(settings, "generic-x86", entry.name, "litert:xnnpack", {"winner": "int8"})
    gate = {"passed": False, "metric": "y_psnr", "reasons": "below bicubic (28.6 < 34.6 dB)"}
    manifest = record_gate(settings, catalog, entry, "fsrcnn_x2_int8.tflite", gate)
    assert manifest.parent == settings.state_dir / "catalog"
    reread = Catalog.from_settings(settings).get("fsrcnn_x2")
    assert {f.path: f.gate for f in reread.files}["fsrcnn_x2_int8.tflite"] == gate
    loaded = _load(reread, catalog, settings)
    assert loaded.file.path == "fsrcnn_x2_fp32.tflite"  # type: ignore[attr-defined]
    assert "below bicubic (28.6 < 34.6 dB)" in loaded.reasons[0]  # type: ignore[attr-defined]


def test_inpainting_gate_scores_inside_the_holes(shared_images: Path, tmp_path: Path) -> None:
    from edged.models.schema import ModelEntry
    from edged.quantization.accuracy_gate import inpaint_gate
    from edged.quantization.calibration import model_feeds
    from edged.testing import make_inpaint_model

    calib = CalibrationSet.from_dir(shared_images / "inpaint" / "places2_512_object")
    assert calib.directory.name == "images"
    assert calib.masks_dir is not None
    paths = calib.held_out[:2]
    images, holes = load_images(paths), calib.holes(paths)
    assert all(
        h.shape == i.shape[:2] and 0 < h.mean() < 0.5 for i, h in zip(images, holes, strict=True)
    )
    path = make_inpaint_model(tmp_path / "fake_lama.onnx", "lama")
    entry = ModelEntry(name="fake_lama", task="inpainting", family="lama", licence="MIT")
    session = open_session(config_for("onnx:cpu"), path, warmup=False)
    feeds = model_feeds(entry, session, images, holes=holes)
    assert [sorted(f) for f in feeds] == [["image", "mask"]] * 2
    assert all(0.0 < f["mask"].mean() < 0.5 for f in feeds)  # 1 = hole, as the model wants
    same = inpaint_gate(entry, session, session, images, holes=holes)
    assert same.passed
    assert same.metric == "hole_psnr"
    assert same.values["drop_db"] == 0.0
    strict = inpaint_gate(
        entry, session, session, images, Thresholds(max_hole_drop_db=-1.0), holes=holes
    )
    assert not strict.passed
