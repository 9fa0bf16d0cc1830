"""Inpainting's window geometry: which square context windows the model is run on.

For each cluster of holes, a square window around the hole: its bounding box grown by
``context`` x its extent on each side, at least ``min_side`` pixels (the model's input size,
so small holes run at native resolution), slid inside the image and clipped where the image is
smaller. Holes whose windows would overlap are merged into one cluster with one covering window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_CONTEXT", "DEFAULT_SIZE", "Window", "plan_windows"]

DEFAULT_SIZE = 512
DEFAULT_CONTEXT = 0.5


@dataclass(frozen=True)
class Window:
    """One model call: the context window (y0, x0, y1, x1) and the hole labels it fills."""

    box: tuple[int, int, int, int]
    labels: tuple[int, ...]


def _square(
    bbox: tuple[int, int, int, int], shape: tuple[int, int], context: float, min_side: int
) -> tuple[int, int, int, int]:
    """Square window around ``bbox`` (y0, x0, y1, x1), slid inside the image, clipped."""
    y0, x0, y1, x1 = bbox
    extent = max(y1 - y0, x1 - x0)
    side = max(math.ceil(extent * (1 + 2 * context)), min_side)
    out = []
    for lo, hi, length in ((y0, y1, shape[0]), (x0, x1, shape[1])):
        size = min(side, length)
        start = (lo + hi) // 2 - size // 2
        start = min(max(0, start), length - size)
        out.append((start, start + size))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def plan_windows(
    labels: npt.NDArray[np.int32],
    count: int,
    stats: npt.NDArray[np.int32],
    *,
    context: float = DEFAULT_CONTEXT,
    min_side: int = DEFAULT_SIZE,
) -> list[Window]:
    """Merge hole components (cv2.connectedComponentsWithStats output) into disjoint windows."""
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    clusters: list[tuple[tuple[int, int, int, int], tuple[int, ...]]] = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        bbox = (y, x, y + h, x + w)
        members: tuple[int, ...] = (label,)
        # Absorb every existing cluster whose window meets ours, until none does.
        merged = True
        while merged:
            merged = False
            win = _square(bbox, shape, context, min_side)
            for other in clusters:
                if _overlaps(win, _square(other[0], shape, context, min_side)):
                    clusters.remove(other)
                    bbox, members = _union(bbox, other[0]), members + other[1]
                    merged = True
                    break
        clusters.append((bbox, members))
    return [Window(_square(b, shape, context, min_side), tuple(sorted(m))) for b, m in clusters]
