"""MobileSAM geometry with generated encoder/decoder models that have SAM's real IO.

The decoder's masks are rectangles spanned by the first two prompt points (see
``edged.testing.make_sam_decoder``), so every transform -- prompt coordinates into the 1024
frame, padding removal, upsampling back to the image -- is checked pixel by pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.config import Settings
from edged.errors import BadRequest
from edged.runtime.base import file_sha256
from edged.tasks.base import TaskRequest
from edged.testing import counting_engine, make_sam_decoder, make_sam_encoder, write_manifest

H, W = 333, 500
NEW_H, NEW_W = 682, 1024  # int(333 * 1024 / 500 + 0.5), 1024
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def _file(path: Path) -> dict[str, Any]:
    return {
        "format": "onnx",
        "path": path.name,
        "sha256": file_sha256(path),
        "size": path.stat().st_size,
    }


@pytest.fixture(scope="module")
def sam_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sam")
    models, catalog = root / "models", root / "catalog"
    enc = make_sam_encoder(models / "t_sam_encoder.onnx")
    dec = make_sam_decoder(models / "t_sam_decoder.onnx")
    base = {"task": "segmentation", "licence": "Apache-2.0"}
    write_manifest(
        catalog,
        {
            **base,
            "name": "t_sam_encoder",
            "family": "mobilesam-encoder",
            "files": [_file(enc)],
            "input": {"name": "image", "layout": "NCHW", "size": [1024, 1024]},
            "params": {"image_size": 1024, "mean": MEAN.tolist(), "std": STD.tolist()},
        },
    )
    write_manifest(
        catalog,
        {**base, "name": "t_sam_decoder", "family": "mobilesam-decoder", "files": [_file(dec)]},
    )
    write_manifest(
        catalog,
        {
            **base,
            "name": "t_sam",
            "family": "mobilesam",
            "components": {"encoder": "t_sam_encoder", "decoder": "t_sam_decoder"},
        },
    )
    return models, catalog


@pytest.fixture
def engine(sam_dirs: tuple[Path, Path]) -> Any:
    models, catalog = sam_dirs
    eng = counting_engine(Settings(model_dirs=[models], catalog_dirs=[catalog]))
    yield eng
    eng.close()


def _image(seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _to_frame(xy: tuple[float, float]) -> tuple[float, float]:
    return xy[0] * NEW_W / W, xy[1] * NEW_H / H


def expected_rect(
    p: tuple[float, float], q: tuple[float, float], grow: float
) -> np.ndarray[Any, Any]:
    """The analytic mask: pixel centres mapped into the 1024 frame, inside the grown rectangle."""
    (x0, y0), (x1, y1) = _to_frame(p), _to_frame(q)
    cx = (np.arange(W) + 0.5) * NEW_W / W
    cy = (np.arange(H) + 0.5) * NEW_H / H
    inside_x = np.minimum(cx - min(x0, x1), max(x0, x1) - cx) + grow > 0
    inside_y = np.minimum(cy - min(y0, y1), max(y0, y1) - cy) + grow > 0
    return (inside_y[:, None] & inside_x[None, :]).astype(np.uint8) * 255


def _check_rect(mask: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> None:
    ys, xs = np.nonzero(expected)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    # Through the middle the logit is linear, so bilinear resampling is exact there.
    np.testing.assert_array_equal(mask[cy], expected[cy])
    np.testing.assert_array_equal(mask[:, cx], expected[:, cx])
    # Only the rectangle's corners (where min() switches term) may differ by a pixel or two.
    assert np.count_nonzero(mask != expected) <= 16


def test_box_prompt_geometry_and_best_mask(engine: Any) -> None:
    box = (100.0, 80.0, 260.0, 200.0)
    result = engine.run(TaskRequest(task="segmentation", model="t_sam", image=_image(), box=box))
    mask = result.outputs["mask"]
    assert mask.shape == (H, W)
    assert mask.dtype == np.uint8
    assert result.meta["mask_index"] == 1  # the decoder's best iou prediction (0.9)
    _check_rect(mask, expected_rect(box[:2], box[2:], grow=16.0))
    feeds = engine.counters["t_sam_decoder"].last_feeds
    np.testing.assert_allclose(
        feeds["point_coords"][0], [_to_frame(box[:2]), _to_frame(box[2:])], rtol=1e-6
    )
    np.testing.assert_array_equal(feeds["point_labels"], [[2.0, 3.0]])
    np.testing.assert_array_equal(feeds["orig_im_size"], [H, W])
    assert feeds["mask_input"].shape == (1, 1, 256, 256)
    assert not feeds["mask_input"].any()
    assert not feeds["has_mask_input"].any()


def test_point_prompts_get_the_padding_point(engine: Any) -> None:
    p, q = (300.0, 250.0), (120.0, 90.0)
    request = TaskRequest(
        task="segmentation", model="t_sam", image=_image(), points=[(*p, 1), (*q, 0)]
    )
    result = engine.run(request)
    _check_rect(result.outputs["mask"], expected_rect(p, q, grow=16.0))
    feeds = engine.counters["t_sam_decoder"].last_feeds
    np.testing.assert_allclose(
        feeds["point_coords"][0], [_to_frame(p), _to_frame(q), (0.0, 0.0)], rtol=1e-6
    )
    np.testing.assert_array_equal(feeds["point_labels"], [[1.0, 0.0, -1.0]])


def test_encoder_input_is_resized_normalised_and_padded(engine: Any) -> None:
    colour = np.array([200, 100, 50], np.uint8)
    image = np.broadcast_to(colour, (H, W, 3)).copy()
    engine.run(TaskRequest(task="segmentation", model="t_sam", image=image, points=[(5, 5, 1)]))
    fed = engine.counters["t_sam_encoder"].last_feeds["image"]
    assert fed.shape == (1, 3, 1024, 1024)
    want = (colour.astype(np.float32) - MEAN) / STD
    np.testing.assert_allclose(
        fed[0, :, :NEW_H, :NEW_W].reshape(3, -1).T,
        np.broadcast_to(want, (NEW_H * NEW_W, 3)),
        atol=1e-5,
    )
    assert not fed[0, :, NEW_H:, :].any()  # padding below the image is zero after normalising


def test_embedding_is_cached_by_image_content(engine: Any) -> None:
    image = _image(1)
    prompts = [{"points": [(50, 60, 1)]}, {"box": (10, 10, 90, 70)}, {"points": [(400, 300, 1)]}]
    cached = []
    for prompt in prompts:
        result = engine.run(
            TaskRequest(task="segmentation", model="t_sam", image=image.copy(), **prompt)
        )
        cached.append(result.meta["embedding_cached"])
    assert cached == [False, True, True]
    assert engine.counters["t_sam_encoder"].calls == 1
    assert engine.counters["t_sam_decoder"].calls == 3
    engine.run(TaskRequest(task="segmentation", model="t_sam", image=_image(2), points=[(5, 5, 1)]))
    assert engine.counters["t_sam_encoder"].calls == 2


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({}, "needs a prompt"),
        ({"points": [(600, 10, 1)]}, "inside the 500x333 image"),
        ({"points": [(10, 10, 7)]}, "point label"),
        ({"box": (10, 10, 10, 50)}, "empty"),
    ],
)
def test_bad_prompts_are_refused_before_the_encoder(
    engine: Any, prompt: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        engine.run(TaskRequest(task="segmentation", model="t_sam", image=_image(), **prompt))
    assert "t_sam_encoder" not in engine.counters
