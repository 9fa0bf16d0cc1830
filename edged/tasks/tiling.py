"""Run an image-to-image model over an image of any size in overlapping tiles.

Pure numpy and independent of models: the caller passes ``fn(window) -> output`` where the
output is ``scale`` times the window in both axes (scale 1 for same-size models).

Blending is by *valid centre*: the image is cut into disjoint core rectangles; each core is
grown by ``halo`` pixels on every side (clipped at the image border) to form the window the
model sees, and only the core's part of the model output is kept. When ``halo`` is at least
the model's receptive-field radius, every kept output pixel saw exactly the input it would
have seen untiled, so the tiled result equals the untiled one (up to float rounding) and
there are no seams to blend. Image borders stay image borders inside edge tiles, so
zero/replicate padding inside the model behaves as untiled too.

Fixed-size models get windows of exactly the model's size: a window that would stick out of
the image is shifted back inside (its core is unchanged, so it only gains context); when the
image itself is smaller than the model input it is edge-padded up to that size first and the
output cropped back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, Cancelled

FloatImage = npt.NDArray[np.float32]
TileFn = Callable[[FloatImage], FloatImage]
"""H x W x C float32 window -> sH x sW x C' float32 output."""

MIN_TILE = 16
MAX_TILE = 4096
"""Largest window sized from the budget: bigger runs gain nothing and hold one core long."""


@dataclass(frozen=True)
class Tile:
    """One model call: the window fed to the model and the core it is responsible for."""

    win: tuple[int, int, int, int]
    """(y0, x0, y1, x1) of the input window, in input pixels."""
    core: tuple[int, int, int, int]
    """(y0, x0, y1, x1) of the part of the output this tile writes (input pixels)."""


def _spans(length: int, core: int) -> list[tuple[int, int]]:
    """Split 0..length into near-equal cores of at most ``core`` pixels."""
    count = max(1, math.ceil(length / core))
    edges = [round(i * length / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1]) for i in range(count)]


def _window(c0: int, c1: int, halo: int, length: int, fixed: int | None) -> tuple[int, int]:
    if fixed is None:
        return max(0, c0 - halo), min(length, c1 + halo)
    # Centre a window of exactly ``fixed`` on the core, then slide it back inside the image.
    start = (c0 + c1) // 2 - fixed // 2
    start = min(max(0, start), length - fixed)
    return start, start + fixed


def plan_tiles(
    height: int,
    width: int,
    *,
    tile: int | tuple[int, int],
    halo: int,
    fixed: bool = False,
) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` image with windows of at most ``tile``.

    ``tile`` is the window size (including the halo on both sides). With ``fixed`` every
    window is exactly ``tile`` and the image must be at least that large (see ``run_tiled``).
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if halo < 0:
        raise BadRequest(f"tile overlap must be >= 0, got {halo}")
    core_h, core_w = th - 2 * halo, tw - 2 * halo
    if core_h < 1 or core_w < 1:
        raise BadRequest(
            f"tile {th}x{tw} leaves no core inside an overlap of {halo} px on each side; "
            f"use a tile of at least {2 * halo + MIN_TILE} px or a smaller overlap"
        )
    if fixed and (height < th or width < tw):
        raise BadRequest(f"image {height}x{width} is smaller than the fixed tile {th}x{tw}")
    # Whole image fits in one window: no cores to cut (a fixed model still needs its size).
    rows = [(0, height)] if height <= th else _spans(height, core_h)
    cols = [(0, width)] if width <= tw else _spans(width, core_w)
    tiles = []
    for cy0, cy1 in rows:
        wy0, wy1 = _window(cy0, cy1, halo, height, th if fixed else None)
        for cx0, cx1 in cols:
            wx0, wx1 = _window(cx0, cx1, halo, width, tw if fixed else None)
            tiles.append(Tile((wy0, wx0, wy1, wx1), (cy0, cx0, cy1, cx1)))
    return tiles


def _pad_to(image: FloatImage, th: int, tw: int) -> FloatImage:
    pad_h, pad_w = max(0, th - image.shape[0]), max(0, tw - image.shape[1])
    if not pad_h and not pad_w:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def iter_tiles(
    image: FloatImage,
    tiles: list[Tile],
    cancel: threading.Event | None = None,
) -> Iterator[tuple[int, Tile, FloatImage]]:
    for index, tile in enumerate(tiles):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled after {index} of {len(tiles)} tiles")
        y0, x0, y1, x1 = tile.win
        yield index, tile, np.ascontiguousarray(image[y0:y1, x0:x1])


def run_tiled(
    image: FloatImage,
    fn: TileFn,
    *,
    tile: int | tuple[int, int],
    halo: int,
    fixed: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> FloatImage:
    """Apply ``fn`` tile by tile to an H x W x C image and assemble the sH x sW x C' result.

    The scale is read from the first tile's output and checked on every tile.
    """
    if image.ndim != 3:
        raise BadRequest(f"run_tiled wants H x W x C, got shape {image.shape}")
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    height, width = image.shape[:2]
    padded = _pad_to(image, th, tw) if fixed else image
    tiles = plan_tiles(padded.shape[0], padded.shape[1], tile=(th, tw), halo=halo, fixed=fixed)
    out: FloatImage | None = None
    scale = 0
    for index, tile_, window in iter_tiles(padded, tiles, cancel):
        result = fn(window)
        scale = _check_scale(result, window, scale)
        if out is None:
            out = np.zeros(
                (padded.shape[0] * scale, padded.shape[1] * scale, result.shape[2]), np.float32
            )
        _paste(out, result, tile_, scale)
        if progress is not None:
            progress(index + 1, len(tiles))
    assert out is not None  # plan_tiles never returns an empty plan
    return out[: height * scale, : width * scale]


def _check_scale(result: FloatImage, window: FloatImage, expected: int) -> int:
    scale = int(result.shape[0] // window.shape[0])
    ok = (
        result.ndim == 3
        and scale >= 1
        and result.shape[0] == window.shape[0] * scale
        and result.shape[1] == window.shape[1] * scale
        and (expected in (0, scale))
    )
    if not ok:
        raise BadRequest(
            f"model output {result.shape} is not an integer multiple of its input "
            f"{window.shape[:2]}: the tile function must scale both axes equally"
        )
    return scale


def _paste(out: FloatImage, result: FloatImage, tile: Tile, scale: int) -> None:
    wy0, wx0, _, _ = tile.win
    cy0, cx0, cy1, cx1 = tile.core
    src = result[
        (cy0 - wy0) * scale : (cy1 - wy0) * scale, (cx0 - wx0) * scale : (cx1 - wx0) * scale
    ]
    out[cy0 * scale : cy1 * scale, cx0 * scale : cx1 * scale] = src


def tile_for_budget(
    budget_bytes: int,
    bytes_per_pixel: int,
    *,
    halo: int,
    scale: int = 1,
    maximum: int = MAX_TILE,
) -> int:
    """Largest square window whose activations fit ``budget_bytes``.

    ``bytes_per_pixel`` is the model's peak activation memory per *input* pixel; the output
    (scale^2 pixels per input pixel, 3 float32 channels) is added on top.
    """
    per_px = bytes_per_pixel + scale * scale * 3 * 4
    side = int(math.sqrt(max(budget_bytes, 1) / max(per_px, 1)))
    side = max(side, 2 * halo + MIN_TILE)
    return min(side, maximum)


@dataclass(frozen=True)
class JobPlan:
    """Tiles of one job and the working memory it reserves for them."""

    tile: tuple[int, int]
    tiles: int
    run_bytes: int
    """One model run's working memory: per-pixel cost x the largest window's pixels."""


def plan_job(
    height: int,
    width: int,
    *,
    halo: int,
    per_px: int,
    room: int,
    cap: int | None = None,
    fixed: tuple[int, int] | None = None,
    max_runs: int,
) -> JobPlan:
    """Window size from ``room`` (bytes one run may use), never above ``cap`` (the client's).

    A fixed-size model's window is its input size. More than ``max_runs`` windows is a
    ``BadRequest`` naming the numbers: the work of one request stays bounded.
    """
    if fixed is not None:
        th, tw = fixed
        height, width = max(height, th), max(width, tw)
    else:
        side = tile_for_budget(room, per_px, halo=halo)
        if cap:
            side = min(side, cap)
        th = tw = side  # windows are clipped to the image by plan_tiles
    tiles = plan_tiles(height, width, tile=(th, tw), halo=halo, fixed=fixed is not None)
    if len(tiles) > max_runs:
        raise BadRequest(
            f"{height}x{width} px in {th}x{tw} tiles with a halo of {halo} px takes "
            f"{len(tiles)} model runs; at most {max_runs} per job (max_model_runs): use a "
            "larger tile, a smaller halo or a smaller image"
        )
    win = max((t.win[2] - t.win[0]) * (t.win[3] - t.win[1]) for t in tiles)
    return JobPlan((th, tw), len(tiles), win * per_px)
