"""Issue 15, threads and file streams: a dying thread is reported and restarted (or, when it
cannot recover, the watchdog stops); a paced video file skips frames with grab(), not decode.

The failures are real: the inbox's processing/ directory is removed (recoverable: a restart
recreates it) or replaced by a regular file (not recoverable: every restart fails again).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.sources import CaptureSource, _FilePacer
from edged.daemon.supervise import Supervised
from edged.testing.cameras import FrameSink, moving_frames, write_video
from edged.testing.daemon import Collector, Daemon, endpoints, toml_config
from edged.testing.waits import wait_until
from edged.wire.client import Client

FAST = {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.3}


def drop(inbox: Path, name: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    assert ok
    tmp = inbox / f".{name}"
    tmp.write_bytes(buf.tobytes())
    os.rename(tmp, inbox / name)


def start_inbox_daemon(tmp_path: Path, models: Path) -> tuple[Daemon, Path]:
    inbox = tmp_path / "box" / "inbox"
    inbox.mkdir(parents=True)
    work = tmp_path / "d"
    work.mkdir()
    stream = {"name": "box", "source": f"dir:{inbox}", "task": "segmentation"}
    config = toml_config(work / "edged.toml", models, [stream], FAST)
    daemon = Daemon(config, work, env={"WATCHDOG_USEC": "400000"})
    return daemon.start(), inbox


def states(collector: Collector) -> list[str]:
    collector.pump()
    return [
        m.header["data"]["state"]
        for m in collector.messages
        if m.topic == "events.stream" and m.header["data"].get("stream") == "box"
    ]


def test_inbox_thread_that_dies_is_reported_and_restarted(
    tmp_path: Path, shared_models: Path
) -> None:
    daemon, inbox = start_inbox_daemon(tmp_path, shared_models)
    requests, results = endpoints()
    collector = Collector(results)
    try:
        assert wait_until(lambda: Client(requests).stats()["streams"]["box"]["state"] == "up", 20)
        (inbox.parent / "processing").rmdir()  # the claim of the next file raises in the thread
        drop(inbox, "a.png")
        assert wait_until((inbox.parent / "done" / "a.png").exists, 30), daemon.log()

        def after_failure() -> list[str]:
            seen = states(collector)
            return seen[seen.index("failed") :] if "failed" in seen else []

        assert wait_until(lambda: after_failure()[:3] == ["failed", "restarting", "up"], 10), (
            states(collector)
        )
        failed = next(
            m.header["data"]
            for m in collector.messages
            if m.topic == "events.stream" and m.header["data"].get("state") == "failed"
        )
        assert "FileNotFoundError" in failed["error"]
        stats = Client(requests).stats()
        assert stats["streams"]["box"]["state"] == "up"
        assert stats["streams"]["box"]["restarts"] == 1
        assert stats["dead_threads"] == []
        assert '"thread died"' in daemon.log()
        assert "Traceback" in daemon.log()
    finally:
        collector.sub.close()
        daemon.close()


def test_inbox_thread_that_cannot_recover_is_failed_and_the_watchdog_stops(
    tmp_path: Path, shared_models: Path
) -> None:
    daemon, inbox = start_inbox_daemon(tmp_path, shared_models)
    requests, _ = endpoints()
    try:
        assert daemon.notify.wait_for("WATCHDOG", "1", n=2, timeout=20)
        processing = inbox.parent / "processing"
        processing.rmdir()
        processing.write_text("not a directory")  # every restart fails creating it again
        drop(inbox, "a.png")
        assert wait_until(lambda: Client(requests).stats()["dead_threads"] == ["box"], 30)
        box = Client(requests).stats()["streams"]["box"]
        assert box["state"] == "failed"
        assert box["dead"] is True
        assert box["restarts"] == 5
        pings = daemon.notify.count("WATCHDOG", "1")
        withheld = '"thread dead; withholding watchdog ping"'
        assert wait_until(lambda: daemon.log().count(withheld) >= 3, 20), daemon.log()
        assert daemon.notify.count("WATCHDOG", "1") == pings  # systemd will restart the unit
        assert (inbox / "a.png").exists()  # the input was never lost
    finally:
        daemon.close()


def test_supervised_body_restarts_with_backoff_then_gives_up(tmp_path: Path) -> None:
    reports: list[tuple[str, dict[str, Any]]] = []
    missing = tmp_path / "gone.txt"

    def body() -> None:
        missing.read_text()  # a real FileNotFoundError every life

    stop = threading.Event()
    sup = Supervised(
        "t",
        body,
        lambda s, d: reports.append((s, d)),
        stop,
        backoff_initial_s=0.01,
        backoff_max_s=0.04,
        max_restarts=3,
    )
    sup.start()
    sup.join(10)
    assert not sup.is_alive()
    assert sup.dead
    assert sup.restarts == 3
    assert [s for s, _ in reports] == ["failed", "restarting"] * 3 + ["failed"]
    assert [d["delay_s"] for s, d in reports if s == "restarting"] == [0.01, 0.02, 0.04]
    assert reports[-1][1]["recoverable"] is False


# ---------------------------------------------------------------- paced file streams


def test_file_pacer_chooses_frames_on_the_file_timeline() -> None:
    pacer = _FilePacer(every_nth=1, max_fps=4, file_fps=30)
    taken = [i for i in range(60) if pacer.take()]
    assert taken == [0, 7, 15, 22, 30, 37, 45, 52]
    pacer = _FilePacer(every_nth=1, max_fps=60, file_fps=30)  # faster than the file: all
    assert all(pacer.take() for _ in range(30))


def test_file_pacer_plays_a_file_at_its_own_rate_without_max_fps() -> None:
    # The waits are computed from a given clock: every frame is taken, each due one file
    # frame (1/10 s) after the previous; a reader that fell behind restarts the clock.
    pacer = _FilePacer(every_nth=1, max_fps=None, file_fps=10)
    waits = []
    for _ in range(4):
        assert pacer.take()
        waits.append(round(pacer.wait_s(100.0), 6))
    assert waits == [0.0, 0.1, 0.2, 0.3]
    assert pacer.take()
    assert pacer.wait_s(200.0) == 0.0  # far behind (jobs were slow): no burst to catch up
    assert pacer.take()
    assert round(pacer.wait_s(200.0), 6) == 0.1
    every_third = _FilePacer(every_nth=3, max_fps=None, file_fps=30)
    assert [every_third.take() for _ in range(6)] == [True, False, False, True, False, False]
    assert round(every_third.wait_s(50.0), 6) == 0.0
    # No usable rate in the container: 30 fps.
    assert _FilePacer(every_nth=1, max_fps=None, file_fps=0).frame_s == 1 / 30


def _play(
    tmp_path: Path,
    until: Callable[[FrameSink], bool],
    *,
    seed: int,
    frames: int,
    fps: float,
    size: tuple[int, int] = (32, 24),
    **stream: Any,
) -> tuple[FrameSink, dict[str, Any]]:
    """A generated clip played by a real CaptureSource until ``until(sink)``; (sink, stats)."""
    base = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    video = write_video(tmp_path / "clip.avi", moving_frames(base, frames, size), fps=fps)
    sink = FrameSink()
    cfg = StreamSettings(name="v", source=str(video), task="segmentation", **stream)
    src = CaptureSource(cfg, ServiceSettings(), sink.deliver, sink.on_state)
    src.start()
    try:
        assert wait_until(lambda: until(sink), 30)
    finally:
        src.stop()
    return sink, src.stats()


def _ended(sink: FrameSink) -> bool:
    return "ended" in sink.state_names()


def test_video_file_without_max_fps_is_not_read_ahead(tmp_path: Path) -> None:
    sink, stats = _play(tmp_path, lambda s: len(s.frames) >= 2, seed=5, frames=40, fps=10.0)
    # Stopped a frame or two into a 4 s clip: the reader waited for each frame's time
    # instead of decoding the whole file at full speed.
    assert stats["frames_read"] < 40
    assert stats["frames_read"] <= len(sink.frames) + 1  # at most the one it was waiting for
    assert "ended" not in sink.state_names()


def test_paced_video_file_grabs_skipped_frames_and_decodes_only_delivered_ones(
    tmp_path: Path,
) -> None:
    sink, stats = _play(tmp_path, _ended, seed=3, frames=45, fps=30.0, size=(64, 48), max_fps=4)
    assert stats["frames_read"] == 45
    assert [f.meta["frame"] for f in sink.frames] == [0, 7, 15, 22, 30, 37]
    assert stats["frames_decoded"] == stats["frames_delivered"] == 6
    assert stats["frames_grabbed"] == 45 - 6


def test_video_file_without_max_fps_still_delivers_every_frame(tmp_path: Path) -> None:
    sink, stats = _play(tmp_path, _ended, seed=4, frames=12, fps=30.0, every_nth=3)
    assert [f.meta["frame"] for f in sink.frames] == [0, 3, 6, 9]
    assert stats["frames_grabbed"] == 8


def test_stats_report_per_source_state_through_the_daemon(
    tmp_path: Path, shared_models: Path
) -> None:
    base = np.random.default_rng(5).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    video = write_video(tmp_path / "clip.avi", moving_frames(base, 60, (64, 48)), fps=30.0)
    work = tmp_path / "d"
    work.mkdir()
    stream = {"name": "vid", "source": str(video), "task": "segmentation", "max_fps": 4}
    config = toml_config(work / "edged.toml", shared_models, [stream], FAST)
    daemon = Daemon(config, work).start()
    requests, _ = endpoints()
    try:
        assert wait_until(
            lambda: Client(requests).stats()["streams"]["vid"]["state"] == "ended", 30
        ), daemon.log()
        vid = Client(requests).stats()["streams"]["vid"]
    finally:
        daemon.close()
    assert vid["frames_read"] == 60
    assert vid["frames_decoded"] == vid["frames_delivered"] == 8
    assert vid["frames_grabbed"] == 52
    assert vid["restarts"] == 0
    assert json.dumps(vid)  # plain data on the wire
    shutil.rmtree(work, ignore_errors=True)
