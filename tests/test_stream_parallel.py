"""Streams with ``parallel > 1``: jobs of one stream side by side, each on its own model copy,
results still in capture order (scheduler, ordering, runner, engine and the real daemon)."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.config import ServiceSettings, StreamSettings, load_settings
from edged.daemon.ordering import InOrder
from edged.daemon.scheduler import Job, Scheduler
from edged.daemon.streams import StreamRunner
from edged.engine import Engine, current_replica, replica
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult
from edged.testing.cameras import moving_frames, write_video
from edged.testing.daemon import Collector, Daemon, endpoints, toml_config
from edged.testing.waits import wait_until
from edged.wire.client import Client

BARRIER_S = 20.0
"""Bound of every wait below: a broken promise fails the test instead of hanging it."""


def _job(name: str, stream: str = "cam") -> Job:
    return Job(TaskRequest("segmentation", params={"name": name}), stream=stream)


def _result(request: TaskRequest) -> TaskResult:
    return TaskResult(request.task, "m", "cpu", {})


def test_two_jobs_of_a_parallel_stream_run_at_once_on_replicas_0_and_1() -> None:
    # Both jobs must be inside run() together for the barrier to let either through.
    barrier = threading.Barrier(2, timeout=BARRIER_S)
    seen: list[tuple[int, int]] = []

    def run(request: TaskRequest, progress: ProgressFn, cancel: threading.Event) -> TaskResult:
        seen.append(current_replica())
        barrier.wait()
        return _result(request)

    sched = Scheduler(run, workers=2)
    sched.add_stream("cam", maxsize=4, drop_oldest=False, parallel=2)
    jobs = [_job("a"), _job("b")]
    for j in jobs:
        assert sched.submit(j, timeout=5)
    sched.start()
    try:
        for j in jobs:
            assert j.future.result(BARRIER_S).model == "m"
    finally:
        assert sched.stop(5)
    assert sorted(seen) == [(0, 2), (1, 2)]
    assert sched.stats()["streams"]["cam"]["done"] == 2


def test_a_stream_of_parallel_1_never_overlaps_its_jobs() -> None:
    gate = threading.Event()
    started: list[str] = []
    replicas: list[tuple[int, int]] = []

    def run(request: TaskRequest, progress: ProgressFn, cancel: threading.Event) -> TaskResult:
        name = str(request.params["name"])
        started.append(name)
        replicas.append(current_replica())
        if name == "first":
            gate.wait(BARRIER_S)
        return _result(request)

    sched = Scheduler(run, workers=2)
    sched.add_stream("cam", maxsize=4, drop_oldest=False)
    first, second = _job("first"), _job("second")
    sched.start()
    try:
        assert sched.submit(first, timeout=5)
        assert wait_until(lambda: started == ["first"], BARRIER_S)
        assert sched.submit(second, timeout=5)
        # The idle worker serves a request queued after `second`: it has looked at the stream
        # and passed `second` over because `first` still runs.
        request = _job("request", stream="")
        sched.submit(request)
        assert request.future.result(BARRIER_S).model == "m"
        assert started == ["first", "request"]
        assert not second.future.done()
        gate.set()
        wait([first.future, second.future], timeout=BARRIER_S)
        assert second.future.result(0).model == "m"
    finally:
        gate.set()
        assert sched.stop(5)
    assert started == ["first", "request", "second"]
    assert replicas == [(0, 1), (0, 1), (0, 1)]


def test_in_order_runs_actions_in_slot_order_and_close_flushes() -> None:
    order = InOrder("cam")
    ran: list[int] = []
    slots = [order.open() for _ in range(5)]
    assert slots == [0, 1, 2, 3, 4]
    order.settle(2, lambda: ran.append(2))
    order.settle(1, lambda: ran.append(1))
    assert ran == []  # slot 0 still running
    assert order.held() == 2
    order.settle(0, lambda: ran.append(0))
    assert ran == [0, 1, 2]
    order.settle(4, lambda: ran.append(4))
    assert ran == [0, 1, 2]
    # Slot 3's job is still running when the stream goes: what is held runs now,
    # and slot 3 runs when it ends instead of never.
    order.close()
    assert ran == [0, 1, 2, 4]
    order.settle(3, lambda: ran.append(3))
    assert ran == [0, 1, 2, 4, 3]
    with pytest.raises(ValueError, match="not open"):
        order.settle(7, lambda: None)


def test_a_failing_action_does_not_stall_the_line() -> None:
    order = InOrder("cam")
    ran: list[int] = []
    first, second = order.open(), order.open()

    def boom() -> None:
        raise RuntimeError("publish failed")

    order.settle(second, lambda: ran.append(second))
    order.settle(first, boom)
    assert ran == [second]
    assert order.held() == 0


def _numbered_video(path: Path, count: int) -> Path:
    """Frame ``i`` is flat grey ``20 * i``: the run function reads the seq off the pixels."""
    frames = (np.full((32, 32, 3), 20 * i, np.uint8) for i in range(count))
    return write_video(path, frames)


def test_runner_publishes_in_capture_order_when_frames_end_out_of_order(tmp_path: Path) -> None:
    count = 6
    video = _numbered_video(tmp_path / "n.avi", count)
    cfg = StreamSettings(
        name="cam", source=str(video), task="segmentation", parallel=2, encoding="raw"
    )
    published: list[tuple[str, int]] = []
    runner: StreamRunner | None = None

    def run(request: TaskRequest, progress: ProgressFn, cancel: threading.Event) -> TaskResult:
        assert request.image is not None
        seq = round(float(np.mean(request.image)) / 20)
        if seq == 0:
            # Frame 0 ends only after a later frame has ended and is being held for it.
            assert runner is not None
            assert wait_until(lambda: runner._order.held() >= 1, BARRIER_S)
        if seq == 2:
            raise ValueError("frame 2 is broken")
        return _result(request)

    def on_result(stream: str, seq: int, result: TaskResult, captured_at: float) -> None:
        published.append(("result", seq))

    def on_event(name: str, data: dict[str, Any]) -> None:
        if name == "job":
            published.append(("error", int(data["seq"])))

    sched = Scheduler(run, workers=2)
    sched.start()
    runner = StreamRunner(cfg, ServiceSettings(), sched, on_result, on_event)
    runner.start(queue_size=2)
    try:
        assert wait_until(lambda: len(published) == count, BARRIER_S), published
    finally:
        runner.stop()
        assert sched.stop(5)
    expected = [("error" if i == 2 else "result", i) for i in range(count)]
    assert published == expected


def test_engine_gives_each_replica_its_own_copy(shared_models: Path) -> None:
    engine = Engine(load_settings(overrides={"model_dirs": [str(shared_models)]}))
    try:
        with engine.acquire("selfie_segmentation") as shared:
            pass
        sessions = []
        for index in range(2):
            with replica(index, 2), engine.acquire("selfie_segmentation") as copy:
                sessions.append(copy.session)
        assert len({id(s) for s in [shared.session, *sessions]}) == 3
        assert sorted(engine.pool.resident()) == [
            "selfie_segmentation",
            "selfie_segmentation#r0",
            "selfie_segmentation#r1",
        ]
        with replica(1, 2), engine.acquire("selfie_segmentation") as again:
            assert again.session is sessions[1]  # the same copy, from the pool
    finally:
        engine.close()
    with pytest.raises(ValueError, match="outside"), replica(2, 2):
        pass


def _portrait(shared_images: Path, size: int = 64) -> np.ndarray:
    bgr = cv2.imread(str(shared_images / "portraits" / "astronaut.png"))
    small = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def test_daemon_parallel_stream_publishes_every_frame_once_in_order(
    tmp_path: Path, shared_models: Path, shared_images: Path
) -> None:
    count = 40
    # 100 fps: a file plays at its own rate, and this test wants its frames to pile up.
    frames = moving_frames(_portrait(shared_images, 96), count)
    video = write_video(tmp_path / "clip.avi", frames, fps=100.0)
    # Started without the stream: the subscriber is connected (it has seen `stats`) before
    # the first frame is published, so every frame can be counted.
    config = toml_config(tmp_path / "edged.toml", shared_models, [])
    stream = {
        "name": "par",
        "source": str(video),
        "task": "segmentation",
        "parallel": 2,
        "encoding": "raw",
    }
    requests, results = endpoints()
    daemon = Daemon(config, tmp_path)
    collector: Collector | None = None
    try:
        daemon.start()
        collector = Collector(results)
        assert collector.until(lambda m: m.topic == "stats"), daemon.log()
        toml_config(config, shared_models, [stream])
        daemon.signal(signal.SIGHUP)
        assert daemon.notify.wait_for("READY", "1", n=2, timeout=30)
        assert collector.until(lambda m: len(collector.results("par.segmentation")) >= count, 60)
        with Client(requests, timeout_s=20) as client:
            assert wait_until(
                lambda: client.stats()["scheduler"]["streams"]["par"]["done"] == count, 30
            )
            stats = client.stats()
            collector.pump(0.2)
            # Frames of a few ms publish their results, not "0/1" and "1/1" progress events;
            # a request's progress is still published (a client may follow it by id).
            assert not collector.results("events.segmentation")
            image = _portrait(shared_images, 96)
            rid = client.request("segmentation", image, encoding="raw").header["id"]
            assert collector.until(
                lambda m: m.topic == "events.segmentation" and m.header["data"]["id"] == rid, 10
            )
        seqs = [int(m.header["seq"]) for m in collector.results("par.segmentation")]
        assert seqs == list(range(count)), daemon.log()
        assert stats["scheduler"]["streams"]["par"]["failed"] == 0
        keys = {m["key"] for m in stats["pool"]["models"]}
        assert {"selfie_segmentation#r0", "selfie_segmentation#r1"} <= keys
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if collector is not None:
            collector.sub.close()
        daemon.close()


def test_daemon_warms_every_copy_a_parallel_stream_will_use(
    tmp_path: Path, shared_models: Path
) -> None:
    # An empty inbox: no frame ever runs, so copies resident at READY came from the warm-up.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    stream = {"name": "par", "source": f"dir:{inbox}", "task": "segmentation", "parallel": 2}
    config = toml_config(
        tmp_path / "edged.toml",
        shared_models,
        [stream],
        top={"warmup_models": ["selfie_segmentation"]},
    )
    requests, _ = endpoints()
    daemon = Daemon(config, tmp_path)
    try:
        daemon.start()
        with Client(requests, timeout_s=20) as client:
            stats = client.stats()
        keys = sorted(m["key"] for m in stats["pool"]["models"])
        assert keys == ["selfie_segmentation#r0", "selfie_segmentation#r1"], daemon.log()
        assert stats["scheduler"]["streams"]["par"]["done"] == 0
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.close()
