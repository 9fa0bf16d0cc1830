"""The real daemon as a subprocess: sd_notify, watchdog, requests, streams, SIGHUP, SIGTERM,
and the inbox across kill -9. Segmentation runs the real selfie model (LiteRT)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.testing.cameras import moving_frames, write_video
from edged.testing.daemon import Collector, Daemon, endpoints, toml_config
from edged.testing.waits import wait_until
from edged.wire.client import Client


def portrait(shared_images: Path, size: int = 96) -> np.ndarray:
    bgr = cv2.imread(str(shared_images / "portraits" / "astronaut.png"))
    return cv2.cvtColor(
        cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
    )


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "d"
    work.mkdir()
    return work


@pytest.mark.arm64
def test_daemon_lifecycle_requests_reload_and_sigterm(
    daemon_dir: Path, shared_models: Path, shared_images: Path
) -> None:
    image = portrait(shared_images)
    video = write_video(daemon_dir / "clip.avi", moving_frames(image, 8, (64, 64)))
    still = daemon_dir / "still.png"
    cv2.imwrite(str(still), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    inbox = daemon_dir / "box" / "inbox"
    box = {"name": "box", "source": f"dir:{inbox}", "task": "segmentation"}
    vid = {"name": "vid", "source": str(video), "task": "segmentation", "loop": True, "max_fps": 5}
    config = toml_config(daemon_dir / "edged.toml", shared_models, [box, vid])
    requests, results = endpoints()
    daemon = Daemon(config, daemon_dir, env={"WATCHDOG_USEC": "1000000"})
    collector: Collector | None = None
    try:
        daemon.start()
        collector = Collector(results)
        ready = next(m for m in daemon.notify.messages if m.get("READY") == "1")
        assert ready["STATUS"].startswith("ready: 2 stream(s) [box, vid]")
        # A looping video stream publishes masks the size of its frames.
        assert collector.until(lambda m: m.topic == "vid.segmentation"), daemon.log()
        first = collector.results("vid.segmentation")[0]
        assert first.header["stream"] == "vid"
        (mask,) = first.arrays.values()
        assert mask.shape[:2] == (64, 64)
        assert [p["encoding"] for p in first.header["payloads"]] == ["png"]
        # Requests are served while streams run; the watchdog is petted at half its period.
        with Client(requests, timeout_s=20) as client:
            reply = client.request("segmentation", image)
            assert next(iter(reply.outputs.values())).shape[:2] == image.shape[:2]
        assert daemon.notify.wait_for("WATCHDOG", "1", n=2, timeout=10)
        assert collector.until(lambda m: m.topic == "stats")
        assert wait_until(
            lambda: any("jobs done" in m.get("STATUS", "") for m in daemon.notify.messages), 10
        )

        # SIGHUP: drop "vid", add "still"; "box" keeps running untouched.
        ups_before = len(collector.events("box", "up"))
        # (published raw: no encoding cost; the stream setting reaches the PUB header)
        still_cfg = {**vid, "name": "still", "source": str(still), "encoding": "raw"}
        toml_config(config, shared_models, [box, still_cfg], top={"warmup_models": ["espcn_x2"]})
        daemon.signal(signal.SIGHUP)
        assert daemon.notify.wait_for("RELOADING", "1", timeout=20)
        reloading = next(m for m in daemon.notify.messages if "RELOADING" in m)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert daemon.notify.wait_for("READY", "1", n=2, timeout=20)
        assert collector.until(lambda m: m.topic == "still.segmentation"), daemon.log()
        still_result = collector.results("still.segmentation")[0]
        assert [p["encoding"] for p in still_result.header["payloads"]] == ["raw"]
        (still_mask,) = still_result.arrays.values()
        assert still_mask.shape[:2] == image.shape[:2]
        assert collector.events("vid", "removed")
        # Model changes apply too: the new warm-up model was loaded (and announced).
        assert collector.until(
            lambda m: (
                m.topic == "events.model"
                and m.header["data"] == {**m.header["data"], "state": "load", "key": "espcn_x2"}
            )
        )
        collector.pump()
        assert len(collector.events("box", "up")) == ups_before  # not restarted
        cv2.imwrite(str(inbox / ".tmp.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        os.rename(inbox / ".tmp.png", inbox / "after-reload.png")
        assert wait_until((inbox.parent / "done" / "after-reload.png").exists, 20)
        assert (inbox.parent / "outbox" / "after-reload.png.json").exists()

        # A broken config on SIGHUP is refused; the running streams keep going.
        config.write_text("no_such_setting = 1\n" + config.read_text())
        daemon.signal(signal.SIGHUP)
        assert daemon.notify.wait_for("READY", "1", n=3, timeout=20)
        refused = [m for m in daemon.notify.messages if m.get("READY") == "1"][-1]
        assert refused["STATUS"].startswith("reload failed: no_such_setting: unknown setting")
        assert collector.until(
            lambda m: m.topic == "events.service" and m.header["data"]["state"] == "reload_failed"
        )
        os.rename(inbox.parent / "done" / "after-reload.png", inbox / "again.png")
        assert wait_until((inbox.parent / "done" / "again.png").exists, 20)

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        assert daemon.notify.count("STOPPING", "1") == 1
    finally:
        if collector is not None:
            collector.sub.close()
        daemon.close()


def _inputs(image: np.ndarray, inbox: Path, count: int) -> set[str]:
    names = set()
    for i in range(count):
        name = f"in{i:02d}.png"
        tmp = inbox / f".{name}"
        cv2.imwrite(str(tmp), cv2.cvtColor(np.roll(image, i, axis=1), cv2.COLOR_RGB2BGR))
        tmp.rename(inbox / name)
        names.add(name)
    (inbox / "broken.png").write_bytes(b"\x89PNG not really")
    return names | {"broken.png"}


def test_inbox_kill_9_loses_and_duplicates_nothing(
    daemon_dir: Path, shared_models: Path, shared_images: Path
) -> None:
    root = daemon_dir / "box"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    names = _inputs(portrait(shared_images, 64), inbox, 16)
    box = {"name": "box", "source": f"dir:{inbox}", "task": "segmentation"}
    config = toml_config(daemon_dir / "edged.toml", shared_models, [box])
    first = Daemon(config, daemon_dir).start()
    try:
        assert wait_until(lambda: len(list((root / "done").glob("*.png"))) >= 3, 30), first.log()
        first.kill()  # SIGKILL: no handler runs, whatever was in flight stays where it was
        unsettled = [*inbox.iterdir(), *(root / "processing").iterdir()]
        assert unsettled  # the kill really interrupted the work
        print(
            f"at kill: {len(list((root / 'processing').iterdir()))} claimed, {len(unsettled)} unsettled"
        )
    finally:
        first.close()
    second = Daemon(config, daemon_dir).start()
    try:

        def settled() -> bool:
            left = [*inbox.iterdir(), *(root / "processing").iterdir()]
            return not left

        assert wait_until(settled, 60), second.log()
        assert second.stop() == 0
    finally:
        second.close()
    done = {p.name for p in (root / "done").iterdir()}
    failed = {p.name for p in (root / "failed").iterdir() if not p.name.endswith(".error.json")}
    assert done | failed == names
    assert not done & failed
    assert failed == {"broken.png"}
    assert (root / "failed" / "broken.png.error.json").exists()
    outbox = sorted(p.name for p in (root / "outbox").iterdir())
    manifests = [n for n in outbox if n.endswith(".json")]
    assert sorted(m.removesuffix(".json") for m in manifests) == sorted(done)
    for manifest in manifests:
        outputs = json.loads((root / "outbox" / manifest).read_text())["outputs"]
        assert all((root / "outbox" / o).is_file() for o in outputs)
    expected = {
        o for m in manifests for o in json.loads((root / "outbox" / m).read_text())["outputs"]
    }
    assert set(outbox) == expected | set(manifests)  # no stray, partial or temp files


def test_sigterm_hands_queued_inbox_files_back(
    daemon_dir: Path, shared_models: Path, shared_images: Path
) -> None:
    root = daemon_dir / "sr"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    big = portrait(shared_images, 640)  # a few hundred ms per job: several stay queued
    names = set()
    for i in range(5):
        cv2.imwrite(str(inbox / f".{i}.png"), cv2.cvtColor(np.roll(big, i, 0), cv2.COLOR_RGB2BGR))
        os.rename(inbox / f".{i}.png", inbox / f"big{i}.png")
        names.add(f"big{i}.png")
    sr = {"name": "sr", "source": f"dir:{inbox}", "task": "superres", "model": "espcn_x2"}
    config = toml_config(daemon_dir / "edged.toml", shared_models, [sr])
    daemon = Daemon(config, daemon_dir).start()
    try:
        claimed = root / "processing"
        assert wait_until(lambda: len(list(claimed.iterdir())) >= 2, 30), daemon.log()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.close()
    assert not list(claimed.iterdir())  # nothing left in limbo
    done = {p.name for p in (root / "done").iterdir()}
    returned = {p.name for p in inbox.iterdir() if not p.name.startswith(".")}
    assert done | returned == names
    assert not done & returned
    assert returned  # queued work was handed back, not dropped or failed
    assert not list((root / "failed").iterdir())
    outputs = {p.name.split(".png.")[0] + ".png" for p in (root / "outbox").iterdir()}
    assert outputs == done  # results only for finished inputs


def test_sigterm_answers_a_job_that_outlives_the_drain_and_exits_0(
    daemon_dir: Path, shared_models: Path, shared_images: Path
) -> None:
    import threading

    from edged.errors import EdgedError

    config = toml_config(daemon_dir / "edged.toml", shared_models, [], {"drain_timeout_s": 0.3})
    requests, _ = endpoints()
    daemon = Daemon(config, daemon_dir).start()
    outcome: list[object] = []

    # Real-ESRGAN x4 untiled on 320 px: one runtime call of tens of seconds, so the job cannot
    # notice the cancel within the drain (0.3 s) plus the scheduler's cancel grace (2 s).
    def slow_request() -> None:
        with Client(requests, timeout_s=60) as client:
            try:
                outcome.append(
                    client.request(
                        "superres",
                        portrait(shared_images, 320),
                        model="realesrgan-x4plus",
                        params={"tile": 4096},  # one window: untiled
                    )
                )
            except EdgedError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=slow_request)
    try:
        caller.start()
        with Client(requests, timeout_s=10) as client:
            assert wait_until(lambda: client.stats()["scheduler"]["busy_workers"] == 1, 30)
            # Loaded (and warmed up) means the long untiled run has started.
            assert wait_until(lambda: client.stats()["pool"]["models"], 60)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        caller.join(30)
    finally:
        daemon.close()
    assert len(outcome) == 1  # exactly one reply, even though the job never finished
    assert isinstance(outcome[0], EdgedError)
    assert "shutting down" in str(outcome[0])
    assert '"all_jobs_finished": false' in daemon.log()
