"""Scheduler: priorities, fairness, bounded queues, drop-oldest and hand-back on stop."""

from __future__ import annotations

import threading
from concurrent.futures import wait

import pytest

from edged.daemon.scheduler import Job, Scheduler
from edged.errors import Busy
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult
from edged.testing.waits import wait_until


class Recorder:
    """A run function that records the order jobs ran in; ``gate`` holds jobs named 'slow'."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.gate = threading.Event()
        self.lock = threading.Lock()

    def __call__(
        self, request: TaskRequest, progress: ProgressFn, cancel: threading.Event
    ) -> TaskResult:
        name = str(request.params["name"])
        if name.startswith("slow"):
            self.gate.wait(10)
        if name == "boom":
            raise ValueError("boom")
        with self.lock:
            self.order.append(name)
        return TaskResult(request.task, "m", "cpu", {})


def job(name: str, stream: str = "") -> Job:
    return Job(TaskRequest("segmentation", params={"name": name}), stream=stream)


def test_requests_run_before_queued_stream_frames() -> None:
    rec = Recorder()
    sched = Scheduler(rec, workers=1)
    sched.add_stream("cam", maxsize=10, drop_oldest=False)
    blocker = job("slow", "cam")
    sched.submit(blocker)
    sched.start()
    frames = [job(f"f{i}", "cam") for i in range(3)]
    for j in frames:
        assert sched.submit(j, timeout=1)
    req = job("req")
    sched.submit(req)
    rec.gate.set()
    wait([j.future for j in [*frames, req]], timeout=10)
    assert rec.order == ["slow", "req", "f0", "f1", "f2"]
    sched.stop(5)


def test_streams_first_when_configured_round_robins_requests() -> None:
    rec = Recorder()
    sched = Scheduler(rec, workers=1, requests_first=False)
    sched.add_stream("cam", maxsize=10, drop_oldest=False)
    for i in range(2):
        sched.submit(job(f"f{i}", "cam"))
        sched.submit(job(f"r{i}"))
    sched.start()
    assert wait_until(lambda: len(rec.order) == 4, 10)
    # With equal priority neither kind waits for the other to drain.
    assert rec.order == ["r0", "f0", "r1", "f1"]
    assert sched.stop(5)


def test_slow_stream_holds_one_worker_and_others_keep_flowing() -> None:
    rec = Recorder()
    sched = Scheduler(rec, workers=2)
    sched.add_stream("slowcam", maxsize=5, drop_oldest=False)
    sched.add_stream("fastcam", maxsize=5, drop_oldest=False)
    sched.start()
    slow = [job("slow0", "slowcam"), job("slow1", "slowcam")]
    for j in slow:
        sched.submit(j)
    fast = [job(f"fast{i}", "fastcam") for i in range(4)]
    for j in fast:
        assert sched.submit(j, timeout=5)
    req = job("req")
    sched.submit(req)
    done, _ = wait([j.future for j in [*fast, req]], timeout=10)
    assert len(done) == 5, rec.order
    # The second slow frame never got the other worker while the first was stuck.
    assert not slow[1].future.done()
    rec.gate.set()
    wait([j.future for j in slow], timeout=10)
    sched.stop(5)


def test_live_queue_drops_oldest_and_counts() -> None:
    rec = Recorder()
    sched = Scheduler(rec, workers=1)
    sched.add_stream("cam", maxsize=2, drop_oldest=True)
    jobs = [job(f"f{i}", "cam") for i in range(5)]
    for j in jobs:
        assert sched.submit(j, timeout=0)
    assert [j.future.cancelled() for j in jobs] == [True, True, True, False, False]
    assert sched.stats()["streams"]["cam"]["dropped"] == 3
    sched.start()
    wait([jobs[3].future, jobs[4].future], timeout=10)
    assert rec.order == ["f3", "f4"]
    sched.stop(5)


def test_full_request_queue_is_busy_and_failures_stay_in_their_future() -> None:
    rec = Recorder()
    sched = Scheduler(rec, workers=1, request_queue=2)
    sched.submit(job("boom"))
    sched.submit(job("ok"))
    with pytest.raises(Busy, match="request queue full"):
        sched.submit(job("third"))
    first = sched._queues[""].jobs[0]
    sched.start()
    with pytest.raises(ValueError, match="boom"):
        first.future.result(10)
    assert sched.stop(5)
    assert sched.stats()["requests"]["failed"] == 1


def test_stop_hands_back_queued_and_file_sources_are_released() -> None:
    rec = Recorder()
    sched = Scheduler(rec, workers=1)
    sched.add_stream("files", maxsize=1, drop_oldest=False)
    sched.start()
    running = job("slow", "files")
    sched.submit(running)
    queued = job("q", "files")
    sched.submit(queued, timeout=5)
    blocked_result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: blocked_result.append(sched.submit(job("w", "files"), timeout=None))
    )
    waiter.start()
    threading.Timer(0.3, rec.gate.set).start()
    assert sched.stop(10) is True
    waiter.join(5)
    assert queued.future.cancelled()
    assert blocked_result == [False]
    assert running.future.result(1).model == "m"
    with pytest.raises(Busy, match="shutting down"):
        sched.submit(job("late"))


def test_progress_reaches_the_listener_and_counts_as_liveness() -> None:
    seen: list[tuple[str, int, int, str]] = []

    def stepping(request: TaskRequest, progress: ProgressFn, cancel: threading.Event) -> TaskResult:
        for i in range(3):
            progress(i + 1, 3, f"step {i + 1}/3")
        return TaskResult(request.task, "m", "cpu", {})

    sched = Scheduler(
        stepping,
        workers=1,
        on_progress=lambda j, step, total, msg: seen.append((j.meta["id"], step, total, msg)),
    )
    sched.start()
    job_ = Job(TaskRequest("generation", prompt="a cat"), meta={"id": "r1"})
    sched.submit(job_)
    job_.future.result(10)
    assert seen == [("r1", 1, 3, "step 1/3"), ("r1", 2, 3, "step 2/3"), ("r1", 3, 3, "step 3/3")]
    assert sched.stop(5)
