"""Inpainting: crop/paste geometry with generated LaMa/MI-GAN models, and the OpenCV fallback."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import Settings
from edged.engine import Engine
from edged.errors import BadRequest
from edged.tasks import inpaint_windows
from edged.tasks.base import TaskRequest
from edged.testing import inpaint_pattern, make_inpaint_model, write_manifest

SENTINEL = (255, 0, 255)
"""Hole pixels of test inputs are painted this colour: a hole left unfilled would keep it."""

FAMILY_ENTRIES = {
    "lama": {
        "input": {"name": "image", "layout": "NCHW", "range": [0.0, 1.0]},
        "output": {"layout": "NCHW", "range": [0.0, 1.0]},
        "params": {"mask_input": "mask", "hole_value": 1.0},
    },
    "migan": {
        "input": {"layout": "NCHW", "range": [-1.0, 1.0]},
        "output": {"layout": "NCHW", "range": [-1.0, 1.0]},
    },
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("inpaint")
    for family, spec in FAMILY_ENTRIES.items():
        make_inpaint_model(root / "models" / f"fake_{family}.onnx", family)
        write_manifest(
            root / "catalog",
            {
                "name": f"fake_{family}",
                "task": "inpainting",
                "family": family,
                "licence": "Apache-2.0",
                "files": [{"format": "onnx", "path": f"fake_{family}.onnx"}],
                **spec,
            },
        )
    eng = Engine(Settings(model_dirs=[root / "models"], catalog_dirs=[root / "catalog"]))
    yield eng
    eng.close()


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (height, width, 3), dtype=np.uint8)


def with_holes(
    image: np.ndarray, boxes: list[tuple[int, int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Mask (255 = hole) of the (y0, x0, y1, x1) boxes, and the image with holes painted SENTINEL."""
    mask = np.zeros(image.shape[:2], np.uint8)
    for y0, x0, y1, x1 in boxes:
        mask[y0:y1, x0:x1] = 255
    painted = image.copy()
    painted[mask > 0] = SENTINEL
    return painted, mask


def assert_only_holes_changed(out: np.ndarray, image: np.ndarray, hole: np.ndarray) -> None:
    np.testing.assert_array_equal(out[~hole], image[~hole])
    assert not (out[hole] == SENTINEL).all(axis=-1).any(), "a hole pixel was left unfilled"


@pytest.mark.parametrize("family", ["lama", "migan"])
def test_native_windows_paste_the_model_output_at_the_right_place(
    engine: Engine, family: str
) -> None:
    """700x1400 image, a hole near the top right and one in the bottom-left corner.

    Windows are 512 (no resize) so every hole pixel must equal the model's pattern at
    (y - y0, x - x0) exactly. Expected windows, worked by hand: hole A centre (120, 1230)
    -> x from 974 slid back to 1400-512=888, y from -136 clipped to 0; hole B centre
    (675, 15) -> y from 419 slid to 700-512=188, x from -241 to 0.
    """
    image, mask = with_holes(scene(700, 1400), [(100, 1200, 140, 1260), (650, 0, 700, 30)])
    result = engine.run(
        TaskRequest(task="inpainting", model=f"fake_{family}", image=image, mask=mask)
    )
    out, hole = result.outputs["image"], mask > 127
    assert sorted(result.meta["windows"]) == [[0, 188, 512, 700], [888, 0, 1400, 512]]
    assert result.backend.split(":")[0] in ("onnx", "openvino", "litert")
    assert set(result.latency_ms) == {"pre", "run", "post", "total"}
    assert result.latency_ms["run"] > 0
    pattern = inpaint_pattern()
    expected = image.copy()
    for x0, y0, x1, y1 in result.meta["windows"]:
        region = hole[y0:y1, x0:x1]
        expected[y0:y1, x0:x1][region] = pattern[region]
    np.testing.assert_array_equal(out, expected)
    assert_only_holes_changed(out, scene(700, 1400), hole)


@pytest.mark.parametrize("family", ["lama", "migan"])
def test_small_image_window_is_resized_and_back(engine: Engine, family: str) -> None:
    """A 300x260 image: the window is the whole image, resized to 512 and back (bilinear)."""
    base = scene(300, 260, seed=1)
    image, mask = with_holes(base, [(0, 0, 20, 40), (280, 200, 300, 260), (120, 100, 150, 130)])
    result = engine.run(
        TaskRequest(task="inpainting", model=f"fake_{family}", image=image, mask=mask)
    )
    out, hole = result.outputs["image"], mask > 127
    assert result.meta["windows"] == [[0, 0, 260, 300]]
    back = cv2.resize(
        inpaint_pattern().astype(np.float32), (260, 300), interpolation=cv2.INTER_LINEAR
    )
    assert np.abs(out[hole].astype(float) - back[hole]).max() <= 1.0
    assert_only_holes_changed(out, base, hole)


def test_windows_of_separate_and_close_holes() -> None:
    mask = np.zeros((1000, 2000), np.uint8)
    mask[10:30, 10:30] = 1  # A: top-left corner
    mask[40:50, 60:90] = 1  # B: close to A -> same window
    mask[900:990, 1900:1995] = 1  # C: far bottom-right corner
    mask[500:900, 900:1000] = 1  # D: 400 px tall -> window 400 * (1 + 2 * 0.5) = 800 > 512
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    windows = inpaint_windows.plan_windows(labels, count, stats, context=0.5, min_side=512)
    assert sorted(len(w.labels) for w in windows) == [1, 1, 2]
    covered = np.zeros(mask.shape, np.int32)
    for w in windows:
        y0, x0, y1, x1 = w.box
        assert 0 <= y0 < y1 <= 1000
        assert 0 <= x0 < x1 <= 2000
        covered[y0:y1, x0:x1] += 1
        # Each window holds all pixels of its holes.
        mine = np.isin(labels, w.labels)
        assert mine[y0:y1, x0:x1].sum() == mine.sum()
    assert covered.max() == 1, "windows overlap"
    tall = next(w for w in windows if w.box[2] - w.box[0] > 512)
    assert tall.box[2] - tall.box[0] == tall.box[3] - tall.box[1] == 800  # 400 x (1 + 2*0.5)


@pytest.mark.arm64
def test_opencv_fallback_on_real_pairs(shared_images: Path) -> None:
    folder = shared_images / "inpaint" / "places2_512_object"
    engine = Engine(Settings())
    scores: dict[str, list[float]] = {"opencv_telea": [], "opencv_ns": []}
    for path in sorted((folder / "images").glob("*.png")):
        original = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(folder / "masks" / path.name), cv2.IMREAD_GRAYSCALE)
        hole = mask > 127
        image = original.copy()
        image[hole] = SENTINEL
        for model, psnrs in scores.items():
            out = engine.run(TaskRequest(task="inpainting", model=model, image=image, mask=mask))
            filled = out.outputs["image"]
            assert_only_holes_changed(filled, original, hole)
            mse = np.mean((filled[hole].astype(float) - original[hole]) ** 2)
            psnrs.append(10 * math.log10(255.0**2 / mse))
    assert len(scores["opencv_telea"]) == 10
    for model, psnrs in scores.items():
        assert np.mean(psnrs) > 10.5, f"{model}: in-hole PSNR {np.mean(psnrs):.2f} dB"


def test_empty_mask_and_bad_requests(engine: Engine) -> None:
    image = scene(40, 50)
    mask = np.zeros((40, 50), np.uint8)
    result = engine.run(TaskRequest(task="inpainting", model="fake_lama", image=image, mask=mask))
    np.testing.assert_array_equal(result.outputs["image"], image)
    assert result.meta["hole_pixels"] == 0
    with pytest.raises(BadRequest, match="mask"):
        engine.run(TaskRequest(task="inpainting", image=image))
    with pytest.raises(BadRequest, match="size"):
        engine.run(TaskRequest(task="inpainting", image=image, mask=np.zeros((4, 5), np.uint8)))
    mask[5:9, 5:9] = 255
    with pytest.raises(BadRequest, match="method"):
        engine.run(
            TaskRequest(task="inpainting", image=image, mask=mask, params={"method": "magic"})
        )
    with pytest.raises(BadRequest, match="not an inpainting"):
        engine.run(TaskRequest(task="inpainting", model="espcn_x2", image=image, mask=mask))
