"""What one load costs: the RSS delta and peak around ``loader()``, PSS, and its duration.

The heap is trimmed before (garbage left by earlier work must not be credited to the model)
and after (freed load buffers sit in glibc's heap until a trim; without it a 10 MB model
reads as 30 MB resident). No gc here: a full collection costs ~100 ms and a fresh load
leaves no garbage cycles behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from edged.memory import PeakSampler, malloc_trim, pss_bytes, rss_bytes
from edged.pool.budget import MIN_COST

__all__ = ["Measured", "measure_load"]

T = TypeVar("T")


@dataclass(frozen=True)
class Measured(Generic[T]):
    """A loaded value and what its load cost."""

    value: T
    cost: int
    """Resident bytes after the load (at least MIN_COST)."""
    peak: int
    """Peak RSS above the start during the load (at least ``cost``)."""
    pss: int | None
    seconds: float


def measure_load(loader: Callable[[], T], sampler_interval_s: float) -> Measured[T]:
    """Run ``loader`` with RSS sampled every ``sampler_interval_s``; its value and cost."""
    malloc_trim()
    pss_before = pss_bytes()
    before = rss_bytes()
    sampler = PeakSampler(sampler_interval_s).start()
    start = time.perf_counter()
    try:
        value = loader()
    finally:
        top = sampler.stop()
    seconds = time.perf_counter() - start
    malloc_trim()
    cost = max(rss_bytes() - before, MIN_COST)
    pss_after = pss_bytes()
    pss = pss_after - pss_before if pss_after is not None and pss_before is not None else None
    return Measured(value, cost, max(top - before, cost), pss, seconds)
