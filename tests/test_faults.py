"""Faults injected under the RUNNING daemon (``python -m edged run`` as a subprocess).

Also against the daemon elsewhere: RTSP reconnect and backoff (test_rtsp.py; the 5 s resume
bound is checked here), a single kill -9 during inbox processing (test_service_daemon.py;
extended here with a second kill during recovery), the inbox dir vanishing (test_inbox.py).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.bench.fuzz import config_toml
from edged.errors import EdgedError
from edged.testing import make_tiny_sd_dir, small_tmpfs
from edged.testing.cameras import (
    MjpegServer,
    RtspServer,
    moving_frames,
    rtsp_server_missing,
    write_video,
)
from edged.testing.daemon import Collector, Daemon, endpoints
from edged.testing.waits import wait_until
from edged.wire.client import Client

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edged.service"
FAST = {
    "inbox_poll_s": 0.1,
    "reconnect_initial_s": 0.2,
    "reconnect_max_s": 1.0,
    "open_timeout_s": 2.0,
    "read_timeout_s": 2.0,
}


def start(
    work: Path,
    top: dict[str, Any],
    streams: list[dict[str, Any]] | None = None,
    service: dict[str, Any] | None = None,
) -> Daemon:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "edged.toml"
    top = {"log_format": "json", **top}
    sections = {"zmq": {"stats_interval_s": 0.5}, "service": {**FAST, **(service or {})}}
    config.write_text(config_toml(top, sections, streams))
    return Daemon(config, work).start()


def noisy(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def drop(inbox: Path, name: str, image: np.ndarray) -> None:
    """Write then rename: the inbox never sees a half-written file."""
    tmp = inbox / f".{name}"
    cv2.imwrite(str(tmp) + ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    Path(str(tmp) + ".png").rename(inbox / name)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


# ---------------------------------------------------------------- model faults


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, shared_models: Path
) -> Iterator[dict[str, Any]]:
    """One daemon for both model faults: a corrupted file on disk, a backend that cannot load.

    Model dir: copies of three real models, espcn_x2.onnx with one bit flipped. Profile
    ``ov-first``: segmentation tries OpenVINO first, which has no converter for the selfie
    model's Convolution2DTransposeBias op (a real load failure, the runtime is installed).
    """
    root = tmp_path_factory.mktemp("faulty")
    models, profiles, work = root / "models", root / "profiles", root / "d"
    for path in (models, profiles, work):
        path.mkdir()
    for name in ("espcn_x2.onnx", "fsrcnn_x2.onnx", "selfie_segmentation.tflite"):
        shutil.copy(shared_models / name, models / name)
    corrupt = bytearray((models / "espcn_x2.onnx").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0x01  # one bit: same size, different sha256
    (models / "espcn_x2.onnx").write_bytes(bytes(corrupt))
    (profiles / "ov-first.toml").write_text(
        'name = "ov-first"\nprecision = "fp32"\n[backends]\n'
        'segmentation = ["openvino:cpu", "litert:xnnpack"]\ndefault = ["onnx:cpu"]\n'
    )
    top = {
        "log_format": "json",
        "model_dirs": [models],
        "profile": "ov-first",
        "profile_dirs": [profiles],
    }
    (work / "edged.toml").write_text(config_toml(top, {"service": FAST}))
    # Explicit dirs: the per-test EDGED_* variables of conftest would otherwise win.
    env = {f"EDGED_{k.upper()}": str(work / k) for k in ("runtime_dir", "state_dir", "cache_dir")}
    daemon = Daemon(work / "edged.toml", work, env=env).start()
    try:
        yield {"daemon": daemon, "requests": f"ipc://{work / 'runtime_dir'}/requests.sock"}
    finally:
        daemon.close()


def test_corrupted_model_fails_verification_and_other_models_keep_serving(
    faulty: dict[str, Any],
) -> None:
    image = noisy(24, 24)
    with Client(faulty["requests"], timeout_s=60) as client:
        for _ in range(2):  # a failed verification is not cached as a success
            with pytest.raises(EdgedError, match="sha256") as failure:
                client.request("superres", image, model="espcn_x2")
            assert "espcn_x2" in str(failure.value)
        up = client.request("superres", image, model="fsrcnn_x2")
        assert next(iter(up.outputs.values())).shape == (48, 48, 3)
        seg = client.request("segmentation", image, model="selfie_segmentation")
        assert next(iter(seg.outputs.values())).shape[:2] == (24, 24)
        assert client.stats()["pid"] == faulty["daemon"].proc.pid
    assert "sha256" in faulty["daemon"].log()


def test_backend_that_cannot_load_falls_back_to_the_next_in_the_profile(
    faulty: dict[str, Any],
) -> None:
    with Client(faulty["requests"], timeout_s=60) as client:
        reply = client.request("segmentation", noisy(32, 32), model="selfie_segmentation")
        assert reply.backend == "litert:xnnpack"
        assert next(iter(reply.outputs.values())).shape[:2] == (32, 32)
    lines = [line for line in faulty["daemon"].log().splitlines() if "openvino:cpu" in line]
    assert any("selfie_segmentation" in line and "OpenVINO" in line for line in lines), lines


# ---------------------------------------------------------------- disk full


def test_disk_full_outbox_fails_jobs_with_reason_and_recovers_when_space_returns(
    tmp_path: Path, shared_models: Path
) -> None:
    root = tmp_path / "box"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    with small_tmpfs(root / "outbox", "200k") as outbox:
        (outbox / "filler").write_bytes(b"\0" * 190_000)
        stream = {"name": "box", "source": f"dir:{inbox}", "task": "superres", "model": "espcn_x2"}
        daemon = start(tmp_path / "d", {"model_dirs": [shared_models]}, [stream])
        try:
            for i in range(3):  # noise compresses badly: each result needs ~110 kB
                drop(inbox, f"n{i}.png", noisy(96, 96, i))
            failed = root / "failed"
            assert wait_until(lambda: len(listing(failed)) == 6, 60), daemon.log()
            assert listing(outbox) == ["filler"]  # no partial result, no temp file
            assert listing(root / "done") == []
            assert listing(root / "processing") == []
            for i in range(3):
                record = json.loads((failed / f"n{i}.png.error.json").read_text())
                assert "No space left" in record["error"]["message"]
            # Space comes back: the next input succeeds without a restart.
            (outbox / "filler").unlink()
            drop(inbox, "after.png", noisy(96, 96, 9))
            assert wait_until((root / "done" / "after.png").exists, 60), daemon.log()
            manifest = json.loads((outbox / "after.png.json").read_text())
            assert all((outbox / o).is_file() for o in manifest["outputs"])
            assert daemon.proc is not None
            assert daemon.proc.poll() is None
        finally:
            daemon.close()


# ---------------------------------------------------------------- camera disappears


def test_cameras_that_disappear_go_down_and_retry_while_other_streams_flow(
    tmp_path: Path, shared_models: Path
) -> None:
    video = write_video(tmp_path / "clip.avi", moving_frames(noisy(96, 96), 6, (48, 48)))
    with MjpegServer(noisy(48, 64, 2), fps=10) as ipcam:
        streams = [
            # A V4L2 node that is not (or no longer) there, e.g. a USB camera unplugged.
            {"name": "usb", "source": "/dev/video77", "task": "segmentation"},
            {"name": "ipcam", "source": ipcam.url, "task": "segmentation", "max_fps": 4},
            {
                "name": "vid",
                "source": str(video),
                "task": "segmentation",
                "loop": True,
                "max_fps": 4,
            },
        ]
        daemon = start(tmp_path / "d", {"model_dirs": [shared_models]}, streams)
        requests, results = endpoints()
        collector = Collector(results)
        try:
            assert collector.until(lambda m: m.topic == "ipcam.segmentation", 30), daemon.log()
            # The IP camera dies: its TCP session stays open but no frame comes again.
            ipcam.stall = True
            ipcam.__exit__()
            assert collector.until(lambda m: bool(collector.events("ipcam", "down")), 30)
            vid_before = len(collector.results("vid.segmentation"))

            def retrying(name: str) -> bool:
                return len(collector.events(name, "reconnecting")) >= 2

            assert collector.until(lambda m: retrying("ipcam") and retrying("usb"), 30)
            assert collector.until(
                lambda m: len(collector.results("vid.segmentation")) > vid_before + 2, 30
            )
            with Client(requests, timeout_s=30) as client:
                reply = client.request("segmentation", noisy(32, 32))
                assert next(iter(reply.outputs.values())).shape[:2] == (32, 32)
                streams_stats = client.stats()["streams"]
        finally:
            collector.sub.close()
            daemon.close()
    # (Its first "down" went out before this subscriber joined; the retries did not.)
    assert streams_stats["usb"]["state"] in ("down", "reconnecting")
    assert streams_stats["ipcam"]["state"] in ("down", "reconnecting")
    assert streams_stats["ipcam"]["reconnects"] >= 2
    assert streams_stats["usb"]["reconnects"] >= 2
    assert streams_stats["vid"]["state"] == "up"
    delays = [m.header["data"]["delay_s"] for m in collector.events("ipcam", "reconnecting")]
    assert delays == sorted(delays)
    assert max(delays) <= 1.0  # capped backoff


# ---------------------------------------------------------------- SIGTERM during generation


def unit_stop_timeout() -> float:
    match = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.M)
    assert match, "systemd/edged.service has no TimeoutStopSec"
    return float(match.group(1))


def test_sigterm_during_generation_cancels_it_and_exits_0_within_the_stop_timeout(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    # A UNet heavy enough (milliseconds per step) that 1000 steps outlast the drain time
    # by far: the default tiny one runs them in about a second, a race with the SIGTERM.
    make_tiny_sd_dir(models / "tiny_sd", unet_channels=512)
    daemon = start(tmp_path / "d", {"model_dirs": [models]}, service={"drain_timeout_s": 0.5})
    requests, results = endpoints()
    collector = Collector(results)
    outcome: list[object] = []

    def generate() -> None:  # far more steps than can run before the SIGTERM
        params = {"width": 256, "height": 256, "steps": 1000, "seed": 1}
        with Client(requests, timeout_s=120) as client:
            try:
                outcome.append(
                    client.request("generation", model="tiny_sd", prompt="a cat", params=params)
                )
            except EdgedError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=generate)
    try:
        caller.start()
        assert collector.until(
            lambda m: m.topic == "events.generation" and m.header["data"]["step"] >= 3, 60
        ), daemon.log()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=unit_stop_timeout()) == 0
        caller.join(30)
    finally:
        collector.sub.close()
        daemon.close()
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], EdgedError), outcome
    assert "shutting down" in str(outcome[0])
    log = daemon.log()
    # Clean: the generation noticed its cancel event and ended, so the engine was closed
    # normally (no os._exit under a running job).
    assert '"all_jobs_finished": true' in log, log[-2000:]


# ---------------------------------------------------------------- RTSP killed mid-stream


def test_rtsp_killed_mid_stream_is_counted_and_resumes_within_5_s(
    tmp_path: Path, shared_models: Path
) -> None:
    """test_rtsp.py proves reconnect and backoff; this bounds the resume time (issue 10: <= 5 s
    after the server is back) and checks the outage is counted, not hidden."""
    missing = rtsp_server_missing()
    if missing:
        pytest.skip(missing)
    rtsp = RtspServer(tmp_path)
    rtsp.start()
    cam = {"name": "cam", "source": rtsp.url, "task": "segmentation", "max_fps": 5}
    daemon = start(tmp_path / "d", {"model_dirs": [shared_models]}, [cam])
    requests, results = endpoints()
    collector = Collector(results)
    try:
        assert collector.until(lambda m: m.topic == "cam.segmentation", 30), daemon.log()
        rtsp.stop()  # SIGKILL: no RTSP TEARDOWN, the session just dies
        assert collector.until(lambda m: bool(collector.events("cam", "down")), 30)
        ups = len(collector.events("cam", "up"))
        rtsp.start()  # returns once the port listens
        collector.pump()
        seen = len(collector.results("cam.segmentation"))
        # The bound of issue 10: backoff is capped at 1 s, so up + a result within 5 s.
        assert collector.until(lambda m: len(collector.events("cam", "up")) > ups, 5)
        assert collector.until(lambda m: len(collector.results("cam.segmentation")) > seen, 5)
        with Client(requests, timeout_s=20) as client:
            cam_stats = client.stats()["streams"]["cam"]
    finally:
        collector.sub.close()
        daemon.close()
        rtsp.stop()
    assert cam_stats["reconnects"] >= 1
    assert cam_stats["state"] == "up"
    down = collector.events("cam", "down")[0].header["data"]
    assert down["error"]  # the reason is published with the event
    seqs = [m.header["seq"] for m in collector.results("cam.segmentation")]
    assert seqs == sorted(seqs)  # numbering continues across the outage


# ---------------------------------------------------------------- kill -9, twice


def test_inbox_survives_kill_9_twice_including_during_recovery(
    tmp_path: Path, shared_models: Path
) -> None:
    """Extends test_service_daemon's single kill -9: a second kill lands while the restarted
    daemon is recovering the first one's claims; a third run settles everything exactly once."""
    root = tmp_path / "box"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    names = set()
    for i in range(20):
        drop(inbox, f"in{i:02d}.png", noisy(320, 320, i))  # espcn x2: ~0.1 s each
        names.add(f"in{i:02d}.png")
    (inbox / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    names.add("bad.png")
    stream = {"name": "box", "source": f"dir:{inbox}", "task": "superres", "model": "espcn_x2"}
    top = {"model_dirs": [shared_models]}
    done = root / "done"
    first = start(tmp_path / "d", top, [stream])
    try:
        assert wait_until(lambda: len(list(done.glob("*.png"))) >= 2, 60), first.log()
        first.kill()
    finally:
        first.close()

    def unsettled() -> list[Path]:
        return [*inbox.iterdir(), *(root / "processing").iterdir()]

    assert unsettled()  # the first kill really interrupted the work
    second = start(tmp_path / "d", top, [stream])
    try:
        second.kill()  # right at READY: recovery and the first new claims are interrupted
    finally:
        second.close()
    assert unsettled()
    third = start(tmp_path / "d", top, [stream])
    try:
        assert wait_until(lambda: not unsettled(), 90), third.log()
        assert third.stop() == 0
    finally:
        third.close()
    finished = {p.name for p in done.iterdir()}
    failed = {p.name for p in (root / "failed").iterdir() if not p.name.endswith(".error.json")}
    assert finished | failed == names
    assert not finished & failed
    assert failed == {"bad.png"}
    outbox = root / "outbox"
    manifests = sorted(p.name for p in outbox.glob("*.json"))
    assert [m.removesuffix(".json") for m in manifests] == sorted(finished)
    outputs = {o for m in manifests for o in json.loads((outbox / m).read_text())["outputs"]}
    assert {p.name for p in outbox.iterdir()} == outputs | set(manifests)  # no dupes, no partials
