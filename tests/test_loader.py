"""The loader: backend fallback with reasons, file choice, verification, licence and engine use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edged.config import Settings, load_settings
from edged.engine import Engine
from edged.errors import LicenceNotAllowed, ModelLoadError, ModelNotFound, ModelVerificationError
from edged.models.catalog import Catalog
from edged.models.loader import LoadedModel, candidate_files, load_model
from edged.models.schema import ModelEntry
from edged.quantization.speed_gate import board_key, record_speed
from edged.testing import make_scale_model, make_scale_tflite


@pytest.fixture
def settings(shared_models: Path) -> Settings:
    return load_settings(overrides={"model_dirs": [str(shared_models)]})


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return Catalog.load([], settings.model_search_path)


def _load(
    entry: ModelEntry, catalog: Catalog, chain: list[str], settings: Settings, **kw: object
) -> LoadedModel:
    options: dict = {"threads": 1, "precision": "fp32", "cache_dir": settings.cache_dir}
    options.update(kw)
    return load_model(entry, catalog, chain, settings=settings, **options)


def test_selfie_falls_back_from_onnx_to_litert(catalog: Catalog, settings: Settings) -> None:
    with capture_logs() as logs:
        loaded = _load(
            catalog.get("selfie_segmentation"), catalog, ["onnx:cpu", "litert:xnnpack"], settings
        )
    assert loaded.backend == "litert:xnnpack"
    assert loaded.path.name == "selfie_segmentation.tflite"
    [reason] = loaded.reasons
    assert reason.startswith("onnx:cpu: no onnx file installed (have tflite)")
    events = {e["event"]: e for e in logs}
    assert events["backend_skipped"]["backend"] == "onnx:cpu"
    assert events["model_loaded"]["backend"] == "litert:xnnpack"
    assert events["model_loaded"]["skipped"] == [reason]
    [prob] = loaded.session.run({"input_1": np.zeros((1, 256, 256, 3), np.float32)}).values()
    assert prob.shape == (1, 256, 256, 1)


def test_unavailable_provider_is_skipped_with_its_reason(
    catalog: Catalog, settings: Settings
) -> None:
    import onnxruntime

    if "QNNExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("QNN is really available here")
    loaded = _load(catalog.get("espcn_x2"), catalog, ["onnx:qnn", "onnx:cpu"], settings)
    assert loaded.backend == "onnx:cpu"
    assert loaded.path.name == "espcn_x2.onnx"
    [reason] = loaded.reasons
    assert reason.startswith("onnx:qnn: espcn_x2.onnx: onnxruntime has no QNNExecutionProvider")
    assert "onnxruntime-qnn" in reason


def test_every_reason_is_listed_when_all_backends_fail(
    catalog: Catalog, settings: Settings
) -> None:
    with pytest.raises(ModelLoadError) as info:
        _load(
            catalog.get("selfie_segmentation"),
            catalog,
            ["openvino:cpu", "onnx:cpu", "litert:cpu"],
            settings,
        )
    message = str(info.value)
    _, _, detail = message.partition("could load it: ")
    openvino, onnx, litert = detail.split("; ")
    assert openvino.startswith("openvino:cpu: OpenVINO cannot load selfie_segmentation.tflite")
    assert onnx.startswith("onnx:cpu: no onnx file installed")
    assert litert.startswith("litert:cpu: LiteRT cannot load selfie_segmentation.tflite")
    assert "Convolution2DTransposeBias" in openvino
    assert "Convolution2DTransposeBias" in litert
    assert not isinstance(info.value, ModelVerificationError)


def test_precision_chooses_the_file(catalog: Catalog, settings: Settings) -> None:
    entry = catalog.get("espcn_x2")
    assert [f.path for f in candidate_files(entry, "litert", "int8")] == [
        "espcn_x2_int8.tflite",
        "espcn_x2_fp32.tflite",
    ]
    assert [f.path for f in candidate_files(entry, "openvino", "fp32")] == [
        "espcn_x2.onnx",
        "espcn_x2_fp32.tflite",
        "espcn_x2_int8.tflite",
    ]
    # int8 loads only where both quantization gates passed (edged.quantization.accuracy_gate): record them.
    files = [f.model_copy(update={"gate": {"passed": True}}) for f in entry.files]
    gated = entry.model_copy(update={"files": files})
    record_speed(settings, board_key(settings), entry.name, "litert:xnnpack", {"winner": "int8"})
    int8 = _load(gated, catalog, ["litert:xnnpack"], settings, precision="int8")
    assert (int8.path.name, int8.file.precision if int8.file else None) == (
        "espcn_x2_int8.tflite",
        "int8",
    )
    fp16 = _load(entry, catalog, ["litert:xnnpack"], settings, precision="fp16")
    assert fp16.path.name == "espcn_x2_fp32.tflite"  # no fp16 file: fp32 is next


def test_no_file_anywhere_is_model_not_found(settings: Settings, tmp_path: Path) -> None:
    empty = Catalog.load([], [tmp_path])
    with pytest.raises(ModelNotFound, match=r"make it with `python -m tf2onnx\.convert"):
        _load(empty.get("espcn_x2"), empty, ["onnx:cpu"], settings)
    with pytest.raises(ModelNotFound, match="no model files"):
        _load(empty.get("opencv_telea"), empty, ["onnx:cpu"], settings)


def test_licence_gate_runs_before_any_file_lookup(catalog: Catalog, settings: Settings) -> None:
    entry = catalog.get("yolov8n_seg")  # AGPL-3.0 and not installed: the licence is reported
    with pytest.raises(LicenceNotAllowed, match="allowed_licences"):
        _load(entry, catalog, ["onnx:cpu"], settings)


def _user_entry(tmp_path: Path, sha256: str) -> tuple[ModelEntry, Catalog]:
    models = tmp_path / "models"
    onnx = make_scale_model(models / "scale.onnx", 2.0)
    tfl = make_scale_tflite(models / "scale.tflite", 2.0)
    entry = ModelEntry.model_validate(
        {
            "name": "scale",
            "task": "superres",
            "family": "sr-rgb",
            "licence": "MIT",
            "files": [
                {
                    "format": "onnx",
                    "path": onnx.name,
                    "sha256": sha256,
                    "size": onnx.stat().st_size,
                },
                {
                    "format": "tflite",
                    "path": tfl.name,
                    "sha256": hashlib.sha256(tfl.read_bytes()).hexdigest(),
                },
            ],
        }
    )
    return entry, Catalog({"scale": entry}, [models])


def test_tampered_file_is_caught_before_load(tmp_path: Path) -> None:
    settings = load_settings()
    entry, catalog = _user_entry(tmp_path, "0" * 64)
    with pytest.raises(ModelVerificationError, match="has sha256"):
        _load(entry, catalog, ["onnx:cpu"], settings)
    # The good tflite variant is still usable, and the bad file is the recorded reason.
    loaded = _load(entry, catalog, ["onnx:cpu", "litert:xnnpack"], settings)
    assert loaded.backend == "litert:xnnpack"
    assert "expected 0000" in loaded.reasons[0]
    # verify_models=false trusts the file.
    trusting = load_settings(overrides={"verify_models": False})
    assert _load(entry, catalog, ["onnx:cpu"], trusting).backend == "onnx:cpu"


def test_engine_acquire_goes_through_the_loader(settings: Settings) -> None:
    engine = Engine(settings)
    try:
        with engine.acquire("espcn_x2", backend="openvino:cpu") as loaded:
            assert loaded.backend == "openvino:cpu"
            assert loaded.file is not None
            x = np.zeros((1, 10, 12, 1), np.float32)
            assert loaded.session.run({"IteratorGetNext:0": x})["NCHW_output:0"].shape == (
                1,
                1,
                20,
                24,
            )
        # The cache dir of the settings received the compiled blob.
        assert list((settings.cache_dir / "openvino").glob("*/*.blob"))
    finally:
        engine.close()


def test_unknown_backend_in_chain_is_named(catalog: Catalog, settings: Settings) -> None:
    loaded = _load(catalog.get("espcn_x2"), catalog, ["tensorrt:gpu", "onnx:cpu"], settings)
    assert loaded.backend == "onnx:cpu"
    assert loaded.reasons[0].startswith("tensorrt:gpu: unknown backend 'tensorrt:gpu'")


def test_unavailable_device_is_one_reason_not_one_per_file(
    catalog: Catalog, settings: Settings
) -> None:
    import openvino

    if any(d.startswith("NPU") for d in openvino.Core().available_devices):
        pytest.skip("an NPU is really present")
    # espcn_x2 has three files OpenVINO reads; a missing NPU is reported once.
    loaded = _load(catalog.get("espcn_x2"), catalog, ["openvino:npu", "litert:xnnpack"], settings)
    assert loaded.backend == "litert:xnnpack"
    [reason] = loaded.reasons
    assert reason.startswith("openvino:npu: espcn_x2.onnx: OpenVINO has no NPU device")
