"""Tiling geometry and exactness, with numpy "models" of known receptive field."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edged.errors import BadRequest, Cancelled
from edged.tasks import tiling


def blur_upscale(radius: int, scale: int = 2) -> tiling.TileFn:
    """A model with receptive-field radius ``radius``: box blur (edge padding), then nearest xs."""

    def fn(window: tiling.FloatImage) -> tiling.FloatImage:
        padded = np.pad(window, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
        acc = np.zeros_like(window)
        h, w = window.shape[:2]
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                acc += padded[dy : dy + h, dx : dx + w]
        out = acc / (2 * radius + 1) ** 2
        return np.ascontiguousarray(out.repeat(scale, 0).repeat(scale, 1), dtype=np.float32)

    return fn


@pytest.mark.parametrize(
    ("height", "width", "tile", "halo"),
    [(1, 1, 32, 4), (31, 97, 32, 4), (64, 64, 32, 8), (100, 37, 20, 0), (513, 300, 128, 16)],
)
def test_cores_partition_the_image_and_windows_stay_inside(
    height: int, width: int, tile: int, halo: int
) -> None:
    tiles = tiling.plan_tiles(height, width, tile=tile, halo=halo)
    cover = np.zeros((height, width), np.int32)
    for t in tiles:
        wy0, wx0, wy1, wx1 = t.win
        cy0, cx0, cy1, cx1 = t.core
        cover[cy0:cy1, cx0:cx1] += 1
        assert 0 <= wy0 <= cy0 < cy1 <= wy1 <= height
        assert 0 <= wx0 <= cx0 < cx1 <= wx1 <= width
        assert wy1 - wy0 <= tile
        assert wx1 - wx0 <= tile
        # Every core edge that is not an image edge has the full halo of context.
        assert cy0 == 0 or cy0 - wy0 >= halo
        assert cx1 == width or wx1 - cx1 >= halo
    assert (cover == 1).all()


def test_fixed_windows_are_exactly_the_model_size() -> None:
    tiles = tiling.plan_tiles(300, 200, tile=(128, 96), halo=8, fixed=True)
    assert {(t.win[2] - t.win[0], t.win[3] - t.win[1]) for t in tiles} == {(128, 96)}
    assert all(t.win[2] <= 300 and t.win[3] <= 200 and min(t.win) >= 0 for t in tiles)


@pytest.mark.parametrize(("tile", "halo"), [(16, 3), (24, 4), (40, 6), (1000, 3)])
def test_tiled_equals_untiled_when_halo_covers_the_receptive_field(tile: int, halo: int) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((53, 71, 2), dtype=np.float32)
    fn = blur_upscale(radius=3)
    full = fn(image)
    tiled = tiling.run_tiled(image, fn, tile=tile, halo=halo)
    assert tiled.shape == full.shape == (106, 142, 2)
    np.testing.assert_allclose(tiled, full, atol=1e-5)


def test_too_small_halo_shows_seams() -> None:
    image = np.random.default_rng(2).random((40, 40, 1), dtype=np.float32)
    fn = blur_upscale(radius=3)
    tiled = tiling.run_tiled(image, fn, tile=16, halo=1)
    assert np.abs(tiled - fn(image)).max() > 1e-2


def test_fixed_model_smaller_image_is_padded_and_cropped() -> None:
    seen: list[tuple[int, ...]] = []

    def fixed_fn(window: tiling.FloatImage) -> tiling.FloatImage:
        seen.append(window.shape)
        return np.ascontiguousarray(window.repeat(3, 0).repeat(3, 1))

    image = np.random.default_rng(3).random((20, 50, 3), dtype=np.float32)
    out = tiling.run_tiled(image, fixed_fn, tile=32, halo=4, fixed=True)
    assert out.shape == (60, 150, 3)
    assert set(seen) == {(32, 32, 3)}
    np.testing.assert_array_equal(out, image.repeat(3, 0).repeat(3, 1))


def test_progress_and_cancel() -> None:
    image = np.zeros((64, 64, 1), np.float32)
    calls: list[tuple[int, int]] = []
    tiling.run_tiled(
        image, blur_upscale(1), tile=24, halo=2, progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1][0] == calls[-1][1] == len(calls) > 1
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        tiling.run_tiled(image, blur_upscale(1), tile=24, halo=2, cancel=cancel)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(BadRequest, match="no core"):
        tiling.plan_tiles(100, 100, tile=16, halo=8)
    with pytest.raises(BadRequest, match="integer multiple"):
        tiling.run_tiled(
            np.zeros((10, 10, 1), np.float32),
            lambda w: np.zeros((w.shape[0] * 2, w.shape[1] * 3, 1), np.float32),
            tile=64,
            halo=2,
        )


def test_tile_for_budget() -> None:
    small = tiling.tile_for_budget(10_000_000, 768, halo=8, scale=2)
    big = tiling.tile_for_budget(400_000_000, 768, halo=8, scale=2)
    assert 2 * 8 + tiling.MIN_TILE <= small < big <= 1024
    assert tiling.tile_for_budget(1, 768, halo=8) == 2 * 8 + tiling.MIN_TILE
