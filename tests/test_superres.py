"""Super-resolution through the task: real ESPCN / Real-ESRGAN, plus generated models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.config import Settings
from edged.engine import Engine
from edged.errors import BadRequest, ConfigError
from edged.tasks import superres, tiling
from edged.tasks.base import TaskRequest
from edged.testing import make_upscale_model, set5_pairs, set5_score, write_manifest, y_psnr

README_PSNR = {2: (35.91, 34.45), 3: (30.62, 29.64), 4: (28.54, 27.69)}
"""../shared/models/README.md: Set5 Y-PSNR (ESPCN, bicubic) on cv2.INTER_CUBIC LR."""


@pytest.fixture
def shared_engine(shared_models: Path) -> Iterator[Engine]:
    engine = Engine(Settings(model_dirs=[shared_models]))
    yield engine
    engine.close()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_espcn_set5_matches_readme_at_every_tile_size(
    shared_engine: Engine, shared_images: Path, scale: int
) -> None:
    pairs = set5_pairs(shared_images, scale)
    bicubic = np.mean(
        [
            y_psnr(cv2.resize(lr, hr.shape[1::-1], interpolation=cv2.INTER_CUBIC), hr, scale)
            for lr, hr in pairs
        ]
    )
    assert bicubic == pytest.approx(README_PSNR[scale][1], abs=0.05)
    # 4096 = one window (requests cannot ask for untiled); 45 leaves odd-sized cores and edge
    # tiles. ESPCN's receptive-field radius is 4 LR pixels, so a halo of 6 keeps tiled == untiled.
    for tile in (4096, 96, 45):
        psnr = set5_score(shared_engine, f"espcn_x{scale}", pairs, scale, tile=tile, halo=6)
        assert psnr == pytest.approx(README_PSNR[scale][0], abs=0.05), f"tile {tile}"


@pytest.mark.parametrize(
    ("model", "tile", "halo"),
    [
        ("espcn_x2", 32, 6),
        ("espcn_x3", 34, 6),
        ("espcn_x4", 32, 8),
        ("realesr-animevideov3-x4", 56, 20),
    ],
)
def test_tiled_equals_untiled_on_real_models(
    shared_engine: Engine, shared_images: Path, model: str, tile: int, halo: int
) -> None:
    hr = cv2.imread(str(shared_images / "set5" / "HR" / "butterfly.png"))
    crop = cv2.cvtColor(hr[60:108, 100:170], cv2.COLOR_BGR2RGB)  # 48 x 70
    with shared_engine.acquire(model) as loaded:
        layout = superres.model_layout(loaded.entry, loaded.session)
        fn = superres.tile_fn(loaded.session, layout)
        channels = layout.channels
        planes = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb)[..., :1] if channels == 1 else crop
        x = planes.astype(np.float32) / 255.0
        full = fn(x)
        tiled = tiling.run_tiled(x, fn, tile=tile, halo=halo)
        assert len(tiling.plan_tiles(48, 70, tile=tile, halo=halo)) > 1
    assert tiled.shape == full.shape == (48 * layout.scale, 70 * layout.scale, channels)
    assert float(np.abs(tiled - full).max()) < 1e-3
    # And through the task: the uint8 images agree exactly.
    untiled = shared_engine.run(
        TaskRequest(task="superres", model=model, image=crop, params={"tile": 4096})
    )
    tiled_img = shared_engine.run(
        TaskRequest(task="superres", model=model, image=crop, params={"tile": tile, "halo": halo})
    )
    assert tiled_img.meta["tiles"] > 1
    assert untiled.meta["tiles"] == 1
    assert int(np.abs(untiled.outputs["image"].astype(int) - tiled_img.outputs["image"]).max()) <= 1


def generated_engine(tmp_path: Path, entries: list[dict[str, Any]]) -> Engine:
    catalog = tmp_path / "catalog"
    for entry in entries:
        write_manifest(catalog, entry)
    return Engine(Settings(model_dirs=[tmp_path / "models"], catalog_dirs=[catalog]))


def entry(name: str, family: str, scale: int, **spec: Any) -> dict[str, Any]:
    return {
        "name": name,
        "task": "superres",
        "family": family,
        "licence": "Apache-2.0",
        "params": {"scale": scale, **spec.pop("params", {})},
        "files": [{"format": "onnx", "path": f"{name}.onnx"}],
        **spec,
    }


def test_fixed_size_rgb_model_gets_exact_tiles(tmp_path: Path) -> None:
    """XLSR-style: fixed 32x32 NCHW input; images larger and smaller than the tile."""
    make_upscale_model(tmp_path / "models" / "fixed_x3.onnx", 3, fixed=(32, 32))
    engine = generated_engine(
        tmp_path,
        [entry("fixed_x3", "sr-rgb", 3, input={"layout": "NCHW"}, output={"layout": "NCHW"})],
    )
    rng = np.random.default_rng(0)
    for shape in [(70, 45, 3), (20, 25, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        result = engine.run(TaskRequest(task="superres", model="fixed_x3", image=image))
        expected = image.repeat(3, 0).repeat(3, 1)
        np.testing.assert_array_equal(result.outputs["image"], expected)
        assert result.meta["tile"] == [32, 32]
    engine.close()


def test_y_model_keeps_colour_and_reads_nhwc_from_the_session(tmp_path: Path) -> None:
    """An NHWC-in / NCHW-out Y model (ESPCN's IO) whose entry wrongly says NCHW input."""
    make_upscale_model(tmp_path / "models" / "y_x2.onnx", 2, channels=1, input_layout="NHWC")
    engine = generated_engine(
        tmp_path, [entry("y_x2", "sr-y", 2, input={"layout": "NCHW", "color": "Y"})]
    )
    image = np.zeros((16, 20, 3), np.uint8)
    image[:] = (200, 40, 90)
    image[4:12, 5:15] = (10, 180, 30)
    result = engine.run(TaskRequest(task="superres", model="y_x2", image=image))
    out = result.outputs["image"]
    assert out.shape == (32, 40, 3)
    # Flat regions keep their colour (YCrCb round trip: within 2 levels).
    assert np.abs(out[0:4, 0:4].astype(int) - (200, 40, 90)).max() <= 2
    assert np.abs(out[13:19, 14:26].astype(int) - (10, 180, 30)).max() <= 2
    engine.close()


def test_budget_sizes_tiles_of_dynamic_models(tmp_path: Path) -> None:
    make_upscale_model(tmp_path / "models" / "dyn_x2.onnx", 2)
    engine = generated_engine(
        tmp_path,
        [
            entry(
                "dyn_x2",
                "sr-rgb",
                2,
                input={"layout": "NCHW"},
                params={"activation_bytes_per_px": 100_000},  # 61 px tiles in 375 MB
            )
        ],
    )
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    result = engine.run(TaskRequest(task="superres", model="dyn_x2", image=image))
    assert result.meta["tiles"] > 1
    np.testing.assert_array_equal(result.outputs["image"], image.repeat(2, 0).repeat(2, 1))
    engine.close()


def test_bad_requests(tmp_path: Path) -> None:
    make_upscale_model(tmp_path / "models" / "dyn_x2.onnx", 2)
    bad = entry("noscale", "sr-rgb", 2)
    bad["params"] = {}
    bad["files"] = [{"format": "onnx", "path": "dyn_x2.onnx"}]
    engine = generated_engine(tmp_path, [entry("dyn_x2", "sr-rgb", 2), bad])
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(BadRequest, match="needs an image"):
        engine.run(TaskRequest(task="superres", model="dyn_x2"))
    with pytest.raises(BadRequest, match="tile"):
        engine.run(TaskRequest(task="superres", model="dyn_x2", image=image, params={"tile": -3}))
    with pytest.raises(ConfigError, match="scale"):
        engine.run(TaskRequest(task="superres", model="noscale", image=image))
    with pytest.raises(BadRequest, match="not a superres"):
        engine.run(TaskRequest(task="superres", model="opencv_telea", image=image))
    engine.close()


@pytest.mark.arm64
def test_edged_infer_cli_reproduces_espcn_x2(
    shared_models: Path, shared_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same Set5 number through `edged infer superres` (in-process, PNG files in and out)."""
    from edged.cli import main

    scores = []
    for index, (lr, hr) in enumerate(set5_pairs(shared_images, 2)):
        src, dst = tmp_path / f"lr{index}.png", tmp_path / f"sr{index}.png"
        cv2.imwrite(str(src), cv2.cvtColor(lr, cv2.COLOR_RGB2BGR))
        argv = ["infer", "superres", "--model", "espcn_x2", "--input", str(src)]
        argv += ["--output", str(dst), "--model-dir", str(shared_models), "--param", "tile=64"]
        assert main(argv) == 0
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert line["output_shape"] == list(hr.shape)
        out = cv2.cvtColor(cv2.imread(str(dst)), cv2.COLOR_BGR2RGB)
        scores.append(y_psnr(out, hr, 2))
    assert np.mean(scores) == pytest.approx(README_PSNR[2][0], abs=0.05)
