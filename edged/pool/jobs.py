"""Job working memory in the model budget: the reservation ledger and the per-pixel meter.

A job (one request, one inbox file, one stream frame) allocates its decoded input, the
activations of every model run and its outputs. Those bytes are reserved with
``ModelPool.reserve(what, nbytes)`` *before* they are allocated, from the same budget as the
models, so ``models + jobs <= budget`` holds for the whole process (docs/memory.md).

``JobLedger`` is the pool's record of live reservations and of which models each thread
holds (a job cannot wait for its own model to be evicted). ``measure_first`` wraps a model
run so its first large enough call measures the RSS peak per input pixel; the pool's
estimate table keeps it, like a model's load cost.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from edged.memory import PeakSampler, malloc_trim, rss_bytes

__all__ = ["MEASURE_MIN_PIXELS", "PER_PX_MARGIN", "Job", "JobLedger", "measure_first"]

MEASURE_MIN_PIXELS = 128 * 128
"""Smallest window measured: below it a run's fixed overhead (a few MB) would read as a huge
per-pixel cost and shrink every later tile to nothing."""
PER_PX_MARGIN = 1.25
"""Reserved on top of a measured per-pixel cost: the RSS peak of runs varies run to run."""

A = TypeVar("A", bound=npt.NDArray[Any])


@dataclass(frozen=True)
class Job:
    """One live reservation."""

    ident: int
    what: str
    nbytes: int
    thread: int


class JobLedger:
    """Live reservations and per-thread model holds; guarded by the pool's condition lock."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._held: dict[int, Counter[str]] = {}
        self.peak = 0  # highest total ever reserved at once
        self.refused = 0
        self.busy = 0

    def add(self, what: str, nbytes: int) -> Job:
        job = Job(next(self._ids), what, nbytes, threading.get_ident())
        self._jobs[job.ident] = job
        self.peak = max(self.peak, self.total())
        return job

    def remove(self, job: Job) -> None:
        self._jobs.pop(job.ident, None)

    def total(self) -> int:
        return sum(j.nbytes for j in self._jobs.values())

    def mine(self) -> int:
        """Bytes reserved by the calling thread (nested reservations of one job)."""
        me = threading.get_ident()
        return sum(j.nbytes for j in self._jobs.values() if j.thread == me)

    def hold(self, key: str) -> None:
        self._held.setdefault(threading.get_ident(), Counter())[key] += 1

    def unhold(self, key: str) -> None:
        me = threading.get_ident()
        held = self._held.get(me)
        if held is not None:
            held[key] -= 1
            if held[key] <= 0:
                del held[key]
            if not held:
                del self._held[me]

    def held_here(self) -> set[str]:
        """Model keys the calling thread holds: they stay resident while its job waits."""
        return set(self._held.get(threading.get_ident(), ()))

    def stats(self) -> dict[str, Any]:
        jobs = sorted(self._jobs.values(), key=lambda j: j.ident)
        return {
            "job_bytes": self.total(),
            "job_peak_bytes": self.peak,
            "jobs": [{"what": j.what, "bytes": j.nbytes} for j in jobs],
            "jobs_refused": self.refused,
            "jobs_busy": self.busy,
        }


def measure_first(
    fn: Callable[[A], A],
    record: Callable[[int], object],
    *,
    min_pixels: int = MEASURE_MIN_PIXELS,
) -> Callable[[A], A]:
    """``fn`` whose first call on at least ``min_pixels`` input pixels reports its cost.

    ``record(bytes_per_px)`` gets the RSS peak during that call above the RSS before it,
    divided by the input's pixels (H x W of an H x W x C window). A trim first, so pages
    freed by earlier work are not reused unseen. Concurrent jobs can only inflate it.
    """
    done = threading.Event()

    def run(window: A) -> A:
        pixels = int(np.prod(window.shape[:2]))
        if done.is_set() or pixels < min_pixels:
            return fn(window)
        done.set()
        malloc_trim()
        before = rss_bytes()
        with PeakSampler(0.002) as sampler:
            out = fn(window)
        record(max(0, sampler.peak - before) // pixels)
        return out

    return run
