"""Every backend runs real models: generated scale models and the shared ESPCN/selfie files."""

from __future__ import annotations

import typing
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged import runtime
from edged.config import load_settings
from edged.engine import Engine
from edged.errors import BackendUnavailable, BadRequest, ConfigError, ModelLoadError
from edged.runtime import config_for, open_session
from edged.runtime.onnx import PROVIDERS
from edged.testing import make_scale_model, make_scale_tflite, save_model

SCALE = 2.5


@pytest.fixture(scope="module")
def scale_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    return {
        "onnx": make_scale_model(root / "scale.onnx", SCALE),
        "tflite": make_scale_tflite(root / "scale.tflite", SCALE),
    }


# (backend, model format, two feed shapes): NCHW for the ONNX model, NHWC for the TFLite one.
SCALE_CASES = [
    ("onnx:cpu", "onnx", [(1, 3, 17, 23), (2, 3, 40, 8)]),
    ("openvino:cpu", "onnx", [(1, 3, 17, 23), (2, 3, 40, 8)]),
    ("openvino:cpu", "tflite", [(1, 17, 23, 3), (1, 40, 8, 3)]),
    ("litert:xnnpack", "tflite", [(1, 17, 23, 3), (1, 40, 8, 3)]),
    ("litert:cpu", "tflite", [(1, 17, 23, 3), (1, 40, 8, 3)]),
]


@pytest.mark.parametrize(("backend", "fmt", "shapes"), SCALE_CASES)
def test_generated_scale_model_runs_at_two_sizes(
    backend: str,
    fmt: str,
    shapes: list[tuple[int, ...]],
    scale_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    session = open_session(
        config_for(backend, threads=1, precision="fp32"), scale_models[fmt], cache_dir=tmp_path
    )
    assert session.backend == backend
    [inp], [out] = session.inputs, session.outputs
    assert (inp.name, out.name, inp.dtype, out.dtype) == ("input", "output", "float32", "float32")
    assert inp.is_dynamic
    assert sum(not isinstance(d, int) for d in inp.shape) >= 2  # H and W are dynamic
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.random(shape, dtype=np.float32)
        y = session.run({"input": x})["output"]
        assert y.shape == shape
        np.testing.assert_allclose(y, x * SCALE, atol=1e-6)
    session.close()


ESPCN_CASES = [
    ("openvino:cpu", "espcn_x2.onnx"),
    ("litert:xnnpack", "espcn_x2_fp32.tflite"),
    ("litert:cpu", "espcn_x2_fp32.tflite"),
    ("openvino:cpu", "espcn_x2_fp32.tflite"),
]


@pytest.fixture(scope="module")
def espcn_reference(shared_models: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """onnxruntime CPU outputs for two real Y-channel crops of different sizes."""
    rng = np.random.default_rng(1)
    feeds = [rng.random((1, h, w, 1), dtype=np.float32) for h, w in ((24, 31), (40, 18))]
    session = open_session(config_for("onnx:cpu", threads=1), shared_models / "espcn_x2.onnx")
    outs = [session.run({session.inputs[0].name: x})[session.outputs[0].name] for x in feeds]
    assert [o.shape for o in outs] == [(1, 1, 48, 62), (1, 1, 80, 36)]
    return feeds, outs


@pytest.mark.arm64
@pytest.mark.parametrize(("backend", "file"), ESPCN_CASES)
def test_espcn_matches_onnxruntime(
    backend: str,
    file: str,
    shared_models: Path,
    espcn_reference: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    # fp32 matters for OpenVINO: this CPU would otherwise run it in bf16 (diffs ~1e-2).
    session = open_session(config_for(backend, threads=1, precision="fp32"), shared_models / file)
    feeds, expected = espcn_reference
    for x, want in zip(feeds, expected, strict=True):
        got = session.run({session.inputs[0].name: x})[session.outputs[0].name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


def _astronaut(shared_images: Path, size: tuple[int, int]) -> np.ndarray:
    bgr = cv2.imread(str(shared_images / "portraits" / "astronaut.png"))
    rgb = cv2.cvtColor(cv2.resize(bgr, (size[1], size[0])), cv2.COLOR_BGR2RGB)
    return (rgb.astype(np.float32) / 255.0)[None]


@pytest.mark.arm64
def test_selfie_runs_on_litert_xnnpack(shared_models: Path, shared_images: Path) -> None:
    session = open_session(
        config_for("litert:xnnpack"), shared_models / "selfie_segmentation.tflite"
    )
    assert session.inputs[0].shape == (1, 256, 256, 3)
    mask = session.run({"input_1": _astronaut(shared_images, (256, 256))})
    [prob] = mask.values()
    assert prob.shape == (1, 256, 256, 1)
    assert prob.min() >= 0.0
    assert prob.max() <= 1.0
    # A portrait: a real share of the frame is person and a real share is not.
    assert 0.1 < float((prob > 0.5).mean()) < 0.9


@pytest.mark.parametrize("backend", ["openvino:cpu", "litert:cpu"])
def test_selfie_custom_op_fails_cleanly(backend: str, shared_models: Path) -> None:
    with pytest.raises(ModelLoadError, match="Convolution2DTransposeBias"):
        open_session(config_for(backend), shared_models / "selfie_segmentation.tflite")


def test_feeds_are_checked_with_one_line_errors(shared_models: Path) -> None:
    session = open_session(
        config_for("litert:xnnpack"), shared_models / "selfie_segmentation.tflite"
    )
    with pytest.raises(BadRequest, match=r"inputs must be \['input_1'\]"):
        session.run({"image": np.zeros((1, 256, 256, 3), np.float32)})
    with pytest.raises(
        BadRequest, match=r"must have shape \[1, 256, 256, 3\], got \[1, 128, 128, 3\]"
    ):
        session.run({"input_1": np.zeros((1, 128, 128, 3), np.float32)})
    with pytest.raises(BadRequest, match="must be float32, got complex64"):
        session.run({"input_1": np.zeros((1, 256, 256, 3), np.complex64)})
    # A same-kind dtype is converted rather than refused.
    [prob] = session.run({"input_1": np.zeros((1, 256, 256, 3), np.float64)}).values()
    assert prob.dtype == np.float32


def _fixed_reshape_model(path: Path) -> Path:
    """Declares dynamic H/W but reshapes to 1x3x32x32: runs only when fed 32x32."""
    import onnx

    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Reshape", ["input", "shape"], ["output"])],
        "fixed",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, "H", "W"])],
        [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        initializer=[h.make_tensor("shape", onnx.TensorProto.INT64, [4], [1, 3, 32, 32])],
    )
    return save_model(graph, path)


def test_warm_up_runs_at_load_with_the_size_hint(tmp_path: Path) -> None:
    model = _fixed_reshape_model(tmp_path / "fixed.onnx")
    config = config_for("onnx:cpu", threads=1)
    # Default warm-up feeds 64x64: the run fails, so the load fails on this backend.
    with pytest.raises(ModelLoadError, match="warm-up run failed"):
        open_session(config, model)
    session = open_session(config, model, warmup_size=(32, 32))
    assert session.run({"input": np.ones((1, 3, 32, 32), np.float32)})["output"].shape == (
        1,
        3,
        32,
        32,
    )
    assert open_session(config, model, warmup=False).backend == "onnx:cpu"


@pytest.mark.parametrize("backend", ["onnx:cpu", "openvino:cpu", "litert:xnnpack"])
def test_unreadable_file_is_model_load_error(backend: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelLoadError, match=r"junk\.bin"):
        open_session(config_for(backend), junk)
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_session(config_for(backend), tmp_path / "missing.onnx")


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'tensorrt:gpu'.*onnx:qnn"):
        config_for("tensorrt:gpu")
    with pytest.raises(BackendUnavailable, match="unknown backend 'litert:gpu'"):
        config_for("litert:gpu")


def test_bad_runtime_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="precision: Input should be 'fp32'"):
        config_for("openvino:cpu", precision="fp64")
    with pytest.raises(ConfigError, match="threads"):
        config_for("litert:xnnpack", threads=0)


def test_missing_execution_provider_names_the_package(tmp_path: Path) -> None:
    import onnxruntime

    model = make_scale_model(tmp_path / "m.onnx")
    hints = {
        "qnn": "onnxruntime-qnn",
        "cuda": "onnxruntime-gpu",
        "openvino": "onnxruntime-openvino",
    }
    have = onnxruntime.get_available_providers()
    absent = {p: hint for p, hint in hints.items() if PROVIDERS[p] not in have}
    if not absent:
        pytest.skip("every optional execution provider is installed here")
    for provider, hint in absent.items():
        with pytest.raises(BackendUnavailable, match=hint):
            open_session(config_for(f"onnx:{provider}"), model)


def test_missing_openvino_device_names_the_driver(tmp_path: Path) -> None:
    import openvino

    model = make_scale_model(tmp_path / "m.onnx")
    devices = {d.split(".")[0] for d in openvino.Core().available_devices}
    hints = {"NPU": "linux-npu-driver", "GPU": "intel-opencl-icd"}
    absent = {d: h for d, h in hints.items() if d not in devices}
    if not absent:
        pytest.skip("this machine has both an Intel GPU and NPU")
    for device, hint in absent.items():
        with pytest.raises(BackendUnavailable, match=hint):
            open_session(config_for(f"openvino:{device.lower()}"), model)


_WITHOUT_RUNTIMES = """
import sys
from pathlib import Path
# A board without the optional runtimes: a None entry makes `import X` raise ImportError.
for name in ("ai_edge_litert", "tflite_runtime", "openvino"):
    sys.modules[name] = None
from edged.errors import BackendUnavailable
from edged.runtime import config_for, open_session
for backend in ("litert:xnnpack", "openvino:cpu"):
    try:
        open_session(config_for(backend), Path(sys.argv[1]))
    except BackendUnavailable as exc:
        print(backend, "|", exc)
"""


def test_missing_runtime_package_names_the_install(tmp_path: Path) -> None:
    import subprocess
    import sys

    model = make_scale_model(tmp_path / "m.onnx")
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_RUNTIMES, str(model)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = dict(line.split(" | ", 1) for line in out.splitlines() if " | " in line)
    assert "pip install ai-edge-litert" in lines["litert:xnnpack"]
    assert "pip install openvino" in lines["openvino:cpu"]


def test_registry_is_built_from_each_backends_own_description() -> None:
    from edged.runtime import litert, onnx, openvino

    modules = (onnx, litert, openvino)
    assert list(runtime.REGISTRY) == [m.BACKEND.kind for m in modules]
    # The type-checking union names exactly the registered config classes.
    assert set(typing.get_args(runtime.RuntimeConfig)) == {m.BACKEND.config for m in modules}
    for module in modules:
        spec = module.BACKEND
        assert runtime.BACKENDS[spec.kind] == spec.variants
        assert runtime.FORMAT_OF_RUNTIME[spec.kind] == spec.formats
        for variant in spec.variants:
            config = config_for(f"{spec.kind}:{variant}")
            assert type(config) is spec.config
            assert config.kind == spec.kind
        # A bare runtime name means its first (default) variant.
        assert runtime.split_backend(spec.kind) == (spec.kind, spec.variants[0])


def test_runtime_options_land_in_the_backends_option_field() -> None:
    onnx = config_for("onnx:qnn", options={"htp_performance_mode": "burst"})
    assert onnx.provider_options == {"htp_performance_mode": "burst"}  # type: ignore[union-attr]
    ov = config_for("openvino:cpu", options={"PERFORMANCE_HINT": "THROUGHPUT"})
    assert ov.properties == {"PERFORMANCE_HINT": "THROUGHPUT"}  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="litert:xnnpack: this runtime takes no runtime_options"):
        config_for("litert:xnnpack", options={"x": "1"})


def test_profile_runtime_options_reach_a_real_session(tmp_path: Path, shared_models: Path) -> None:
    """Engine -> loader -> config -> OpenVINO: the profile's compile property is in effect."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tuned.toml").write_text(
        'name = "tuned"\n[backends]\ndefault = ["openvino:cpu"]\n'
        '[runtime_options."openvino:cpu"]\nPERFORMANCE_HINT = "THROUGHPUT"\n'
    )
    settings = load_settings(
        overrides={
            "model_dirs": [str(shared_models)],
            "profile_dirs": [str(profiles)],
            "profile": "tuned",
        }
    )
    engine = Engine(settings)
    try:
        with engine.acquire("espcn_x2") as loaded:
            assert loaded.backend == "openvino:cpu"
            compiled = loaded.session._compiled  # type: ignore[attr-defined]
            assert str(compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    finally:
        engine.close()
