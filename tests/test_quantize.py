"""edged.quantization.onnx_quantizer and `edged models quantize` on the tiny UNet (real onnxruntime quantizers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edged.cli import main
from edged.config import load_settings
from edged.engine import Engine
from edged.errors import BadRequest, ModelNotFound
from edged.quantization.onnx_quantizer import op_counts, quantize, timestep_only_nodes
from edged.tasks.base import TaskRequest
from edged.testing import make_tiny_sd_dir


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd_dir(tmp_path_factory.mktemp("q") / "tiny")


def _unet_out(path: Path, t: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([t], np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32)).astype(np.float32),
    }
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, feeds)[0]
    return out


@pytest.mark.parametrize(
    ("scheme", "must_have"),
    [
        ("dynamic-int8", {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}),
        ("qdq-int8", {"QuantizeLinear", "DequantizeLinear"}),
        ("int4-weights", {"MatMulNBits", "ConvInteger"}),
    ],
)
def test_quantized_unet_is_close_to_fp32(
    sd_dir: Path, tmp_path: Path, scheme: str, must_have: set[str]
) -> None:
    src = sd_dir / "unet" / "model.onnx"
    report = quantize(src, tmp_path / f"{scheme}.onnx", scheme)
    assert must_have <= set(report.op_counts)
    assert report.dst_bytes < report.src_bytes
    for t in (999.0, 259.0):
        ref, got = _unet_out(src, t), _unet_out(report.dst, t)
        assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99
        assert np.abs(ref - got).max() < 0.15 * np.abs(ref).max()


def test_int4_without_conv_quantization_keeps_fp32_convs(sd_dir: Path, tmp_path: Path) -> None:
    report = quantize(
        sd_dir / "unet" / "model.onnx", tmp_path / "m.onnx", "int4-weights", convs=False
    )
    assert report.op_counts.get("Conv") == 2
    assert "ConvInteger" not in report.op_counts


def test_time_embedding_stays_fp32_in_qdq(sd_dir: Path, tmp_path: Path) -> None:
    src = sd_dir / "unet" / "model.onnx"
    assert timestep_only_nodes(src) == [
        "unet/Cast_0",
        "unet/Unsqueeze_1",
        "unet/MatMul_2",
        "unet/Sin_3",
    ]


@pytest.mark.parametrize("fuse", [False, True])
def test_quantized_model_dir_generates_a_close_image(
    sd_dir: Path, tmp_path: Path, fuse: bool
) -> None:
    out = tmp_path / "tiny-int8"
    flags = ["--fuse-attention"] if fuse else []
    code = main(
        ["models", "quantize", str(sd_dir), "--scheme", "dynamic-int8", "--out", str(out), *flags]
    )
    assert code == 0
    assert "MatMulInteger" in op_counts(out / "unet" / "model.onnx")
    # Copied, not linked: the output dir must work without the source (rsync to a board).
    te = out / "text_encoder" / "model.onnx"
    assert not (out / "text_encoder").is_symlink()
    assert te.read_bytes() == (sd_dir / "text_encoder" / "model.onnx").read_bytes()
    engine = Engine(load_settings())
    try:
        params = {"width": 64, "height": 64, "seed": 2}
        images = [
            engine.run(TaskRequest("generation", str(m), prompt="a cat", params=params)).outputs[
                "image"
            ]
            for m in (sd_dir, out)
        ]
    finally:
        engine.close()
    diff = np.abs(images[0].astype(int) - images[1].astype(int))
    assert diff.mean() < 8.0
    assert not np.array_equal(images[0], images[1])  # it really ran the quantized UNet


def test_cli_reports_json_and_bad_input(
    sd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = sd_dir / "unet" / "model.onnx"
    assert (
        main(
            [
                "models",
                "quantize",
                str(src),
                "--scheme",
                "dynamic-int8",
                "--out",
                str(tmp_path / "d.onnx"),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["scheme"] == "dynamic-int8"
    assert report["ratio"] < 1.0
    with pytest.raises(ModelNotFound, match="does not exist"):
        quantize(tmp_path / "missing.onnx", None, "dynamic-int8")
    with pytest.raises(BadRequest, match="unknown scheme"):
        quantize(src, tmp_path / "x.onnx", "int2")
    with pytest.raises(ModelNotFound, match="diffusers ONNX model dir"):
        quantize(tmp_path, None, "int4-weights")


@pytest.mark.parametrize("scheme", ["dynamic-int8", "qdq-int8", "int4-weights"])
def test_a_model_on_a_read_only_mount_is_quantized(
    sd_dir: Path, tmp_path: Path, scheme: str
) -> None:
    """onnxruntime writes NAME-inferred.onnx beside the model: a read-only models dir (a
    shared checkout, a board's image) must not stop quantization."""
    import shutil
    import subprocess

    from edged.testing import small_tmpfs

    with small_tmpfs(tmp_path / "ro", "64m") as ro:
        shutil.copy(sd_dir / "unet" / "model.onnx", ro / "model.onnx")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        with pytest.raises(OSError, match="Read-only file system"):
            (ro / "probe").touch()
        report = quantize(ro / "model.onnx", tmp_path / "out" / "model.onnx", scheme)
        assert sorted(p.name for p in ro.iterdir()) == ["model.onnx"]
    assert report.dst_bytes < report.src_bytes
    np.testing.assert_allclose(
        _unet_out(report.dst, 999.0), _unet_out(sd_dir / "unet" / "model.onnx", 999.0),
        atol=0.15 * float(np.abs(_unet_out(sd_dir / "unet" / "model.onnx", 999.0)).max()),
    )  # fmt: skip
