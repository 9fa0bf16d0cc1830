"""Whole-process memory accounting: job working memory is reserved in the model budget.

Pool reservations run against real onnxruntime sessions on generated MatMul models; the
superres cases go through a real daemon subprocess on the real ESPCN x4 model, and the
daemon's kernel-measured peak (VmHWM) is held against budget + memory_reserve.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.errors import Busy, MemoryBudgetExceeded
from edged.pool.estimates import ESTIMATES_FILE, EstimateTable
from edged.pool.jobs import measure_first
from edged.pool.model_pool import ModelPool
from edged.runtime import config_for, open_session
from edged.runtime.base import Session
from edged.testing import make_matmul_model

MB = 1_000_000


@pytest.fixture(scope="module")
def matmul(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_matmul_model(tmp_path_factory.mktemp("jobmem") / "m.onnx", 10, seed=1)
    open_session(config_for("onnx:cpu", threads=1), path).close()  # ORT's one-time setup
    return path


@pytest.fixture
def pool() -> Iterator[ModelPool[Session]]:
    made: ModelPool[Session] = ModelPool(100 * MB, wait_s=0.3, slack=0.0)
    made.estimates.observe("m", 10 * MB, 42 * MB)
    made.estimates.observe("p", 10 * MB, 42 * MB)
    yield made
    made.close()


def _loader(path: Path) -> Callable[[], Session]:
    return lambda: open_session(config_for("onnx:cpu", threads=1), path)


def test_reservation_is_charged_and_evicts_idle_models(
    pool: ModelPool[Session], matmul: Path
) -> None:
    with pool.acquire("m", _loader(matmul)):
        pass
    assert pool.resident() == ["m"]
    resident = pool.stats()["resident_bytes"]
    with pool.reserve("job A", 100 * MB - resident + 1):
        stats = pool.stats()
        # The idle model went to make room; the job's bytes are charged in the budget.
        assert pool.resident() == []
        assert stats["job_bytes"] == 100 * MB - resident + 1
        assert stats["jobs"] == [{"what": "job A", "bytes": 100 * MB - resident + 1}]
        assert stats["free_bytes"] == 100 * MB - stats["job_bytes"]
    assert pool.stats()["job_bytes"] == 0
    assert pool.stats()["job_peak_bytes"] == 100 * MB - resident + 1


def test_reservation_beside_pinned_and_own_model_is_refused_with_numbers(
    pool: ModelPool[Session], matmul: Path
) -> None:
    with pool.acquire("p", _loader(matmul), pinned=True):
        pass
    pinned = pool.stats()["resident_bytes"]
    with pool.acquire("m", _loader(matmul)):
        own = pool.stats()["resident_bytes"] - pinned
        _now, ever = pool.job_room()
        assert ever == 100 * MB - pinned - own
        with pytest.raises(MemoryBudgetExceeded) as err, pool.reserve("sr 3000x3000", ever + 1):
            pass
    message = str(err.value)
    assert message.startswith("sr 3000x3000 needs ")
    assert "of the 100.00 MB memory budget" in message
    assert pool.stats()["jobs_refused"] == 1
    # Once the job's own model is released, the same bytes fit (the idle model is evicted).
    with pool.reserve("after", ever + 1):
        assert "m" not in pool.resident()


def test_reservation_waits_bounded_then_busy_with_numbers(pool: ModelPool[Session]) -> None:
    held, done = threading.Event(), threading.Event()

    def other_job() -> None:
        with pool.reserve("other", 70 * MB):
            held.set()
            done.wait(30)

    thread = threading.Thread(target=other_job)
    thread.start()
    assert held.wait(30)
    try:
        busy = r"needs 40.00 MB of working memory; only 30.00 MB"
        with pytest.raises(Busy, match=busy), pool.reserve("mine", 40 * MB):
            pass
    finally:
        done.set()
        thread.join(30)
    assert pool.stats()["jobs_busy"] == 1
    with pool.reserve("mine", 40 * MB):  # released: it fits now
        assert pool.stats()["job_bytes"] == 40 * MB


def test_reservation_waits_for_a_release_inside_the_bound(pool: ModelPool[Session]) -> None:
    pool.wait_s = 30.0
    held = threading.Event()

    def other_job() -> None:
        with pool.reserve("other", 70 * MB):
            held.set()
            threading.Event().wait(0.2)

    thread = threading.Thread(target=other_job)
    thread.start()
    assert held.wait(30)
    with pool.reserve("mine", 40 * MB):
        assert pool.stats()["jobs"] == [{"what": "mine", "bytes": 40 * MB}]
    thread.join(30)


def test_per_pixel_cost_is_measured_and_persisted(tmp_path: Path) -> None:
    table = EstimateTable(tmp_path / ESTIMATES_FILE)
    seen: list[int] = []
    kept: list[np.ndarray] = []

    def record(per_px: int) -> None:
        seen.append(per_px)
        table.observe_activation("k", per_px)

    def run(window: np.ndarray) -> np.ndarray:
        scratch = np.ones((*window.shape[:2], 64), np.float32)  # 256 B per pixel
        kept.append(scratch)  # still resident at the sampler's last reading: no timing race
        return window + float(scratch[0, 0, 0])

    fn = measure_first(run, record)
    fn(np.zeros((64, 64, 1), np.float32))  # too small to measure
    assert seen == []
    fn(np.zeros((512, 512, 1), np.float32))
    fn(np.zeros((512, 512, 1), np.float32))  # measured once
    assert len(seen) == 1
    kept.clear()
    assert 250 <= seen[0] <= 400  # 256 B/px of scratch + 4 of output + page rounding
    reread = EstimateTable(tmp_path / ESTIMATES_FILE)
    assert reread.activation("k") == seen[0]
    reread.observe_activation("k", seen[0] * 2)
    assert reread.activation("k") == seen[0] * 2  # up at once
    reread.observe_activation("k", 0)
    assert seen[0] < (reread.activation("k") or 0) < seen[0] * 2  # down slowly
