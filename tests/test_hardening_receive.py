"""Bounded receive and safe decoding through the real daemon (issue 15, items 2 and 3):
a subprocess ``edged run`` (its requests received by its receiver process), real ipc ZeroMQ
sockets, VmHWM read from /proc."""

from __future__ import annotations

import json
import os
import signal
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from edged.testing.daemon import Daemon, config_toml
from edged.testing.waits import wait_until
from edged.wire.client import Client, Subscriber
from edged.wire.context import get_context

FRAME = 20_000_000  # under max_frame_bytes (32 MB): each frame alone is acceptable
FRAMES = 12
BOMB_FRAMES = 40  # 800 MB: far over the receiver's memory limit (~0.4 GB at a 1G budget)
SLACK = 16 << 20


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("recv")
    config = work / "edged.toml"
    config.write_text(
        config_toml(
            {"log_format": "json", "memory_budget": "1G", "runtime_dir": str(work / "run")},
            {"zmq": {"stats_interval_s": 0.5}},
        )
    )
    with Daemon(config, work, runtime_dir=work / "run") as running:
        yield running


def _dealer(endpoint: str) -> zmq.Socket[bytes]:
    sock = get_context().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 30_000
    sock.connect(endpoint)
    return sock


def _replies(sock: zmq.Socket[bytes], wait_ms: int = 1500) -> list[dict[str, Any]]:
    """Every reply that arrives within ``wait_ms`` after the first (exactly-one checks)."""
    out = [json.loads(sock.recv_multipart()[0])]
    while sock.poll(wait_ms):
        out.append(json.loads(sock.recv_multipart()[0]))
    return out


def test_many_frame_message_gets_one_too_large_and_costs_no_copy(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    header = json.dumps({"v": 1, "id": "many", "task": "superres"}).encode()
    with Client(daemon.requests_endpoint, timeout_s=20) as client:
        stats = client.stats()["server"]
    limits = stats["limits"]
    assert limits["budget_bytes"] == 1_000_000_000  # memory_budget = "1G"
    assert limits["max_message_bytes"] == min(65_536 + 2 * 32_000_000, 1_000_000_000 // 8)
    assert limits["max_frames"] == 5
    before = _vm(pid, "VmHWM")
    sock = _dealer(daemon.requests_endpoint)
    big = b"\x00" * FRAME
    sock.send_multipart([header, *([big] * FRAMES)], copy=False)
    replies = _replies(sock)
    sock.close()
    assert len(replies) == 1, replies
    (reply,) = replies
    assert (reply["id"], reply["ok"], reply["error"]["code"]) == ("many", False, "too_large")
    message = reply["error"]["message"]
    # The whole message is counted (routing identity + header + 12 frames), then refused.
    assert f"in {FRAMES + 2} frames" in message
    assert "more than 5 frames" in message
    counted = int(message.split("(got ")[1].split(" bytes")[0])
    assert 0 < counted - (len(header) + FRAMES * FRAME) <= 256
    grew = _vm(pid, "VmHWM") - before
    # libzmq holds the message whole until its last frame arrives (see edged.wire.receive):
    # in the receiver process, never in the daemon (inline it grew by the message's size).
    assert grew < SLACK, grew
    with Client(daemon.requests_endpoint, timeout_s=20) as client:
        assert client.ping()["version"]
        after = client.stats()["server"]
    assert after["error_too_large"] >= 1
    assert after["held_bytes"] == 0
    assert after["in_flight"] == 0


def test_too_many_frames_however_small_is_one_too_large(daemon: Daemon) -> None:
    header = json.dumps({"v": 1, "id": "tiny", "task": "ping"}).encode()
    sock = _dealer(daemon.requests_endpoint)
    sock.send_multipart([header, *([b"x"] * 50)])
    replies = _replies(sock, 500)
    sock.close()
    assert [(r["id"], r["error"]["code"]) for r in replies] == [("tiny", "too_large")]
    assert "more than 5 frames" in replies[0]["error"]["message"]


def test_decode_bombs_over_the_wire(daemon: Daemon) -> None:
    """A JPEG whose SOF claims 60000 x 60000 and a BMP sent as 'png': one clear reply each."""
    jpeg = b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60000, 60000) + b"\x03"
    jpeg += b"\x00" * 9 + b"\xff\xd9"
    info = struct.pack("<IiiHHIIiiII", 40, 40000, 40000, 1, 4, 0, 0, 2835, 2835, 16, 0)
    bmp = b"BM" + struct.pack("<IHHI", 118, 0, 0, 118) + info + b"\x00" * 64
    cases = [("jpeg", jpeg, "too_large", "60000x60000"), ("png", bmp, "bad_request", "not a PNG")]
    sock = _dealer(daemon.requests_endpoint)
    for encoding, data, code, needle in cases:
        spec = {"name": "image", "encoding": encoding}
        header = {"v": 1, "id": encoding, "task": "superres", "payloads": [spec]}
        sock.send_multipart([json.dumps(header).encode(), data])
        (reply,) = _replies(sock, 300)
        assert (reply["id"], reply["error"]["code"]) == (encoding, code), reply
        assert needle in reply["error"]["message"]
    sock.close()
    assert daemon.alive()


def test_a_daemon_with_a_tiny_budget_still_answers_every_request(tmp_path: Path) -> None:
    """Limits derived from a 1000-byte budget would cap frames below a request's header (the
    transport drops such a peer unanswered); the floor keeps every request answered."""
    import numpy as np

    from edged.wire.payloads import encode_array
    from edged.wire.protocol import encode_request

    config = tmp_path / "edged.toml"
    config.write_text(config_toml({"memory_budget": 1000, "log_format": "json"}))
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    with Daemon(config, tmp_path) as running:  # its dirs come from the test's EDGED_* env
        sock = _dealer(running.requests_endpoint)
        try:
            answers = {}
            for task, arrays in (("segmentation", [image]), ("inpainting", [image, mask])):
                payloads = [
                    (name, "png", encode_array(arr, "png")[0], {})
                    for name, arr in zip(["image", "mask"], arrays, strict=False)
                ]
                sock.send_multipart(encode_request(task, task, payloads=payloads))
                (reply,) = _replies(sock)
                assert reply["id"] == task
                answers[task] = "ok" if reply["ok"] else reply["error"]["code"]
        finally:
            sock.close(0)
    # No model fits in 1000 bytes: a clear too_large. OpenCV inpainting of a 32 x 32 image with
    # nothing to fill needs no model and no working memory: it is served.
    assert answers == {"segmentation": "too_large", "inpainting": "ok"}


def _inpaint(endpoint: str) -> str:
    """A normal request (OpenCV inpainting needs no model): "ok" or its error code."""
    import numpy as np

    with Client(endpoint, timeout_s=30) as client:
        image, mask = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)
        try:
            client.request("inpainting", image, mask=mask)
        except Exception as exc:  # the test names what came back
            return repr(exc)
    return "ok"


def test_a_many_frame_bomb_costs_the_daemon_nothing(daemon: Daemon) -> None:
    """40 frames x 20 MB, each under the per-frame cap: libzmq would buffer all 800 MB before
    edged could count them. The receiver process's memory limit stops it; the daemon (its
    models, its jobs) never sees a byte of it and keeps serving."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    with Client(daemon.requests_endpoint, timeout_s=20) as client:
        server = client.stats()["server"]
    receiver = server["receiver"]
    assert (receiver["mode"], receiver["state"]) == ("process", "up")
    limit = receiver["memory_limit_bytes"]
    assert limit < BOMB_FRAMES * FRAME  # the bomb cannot fit: this test means something
    before = _vm(pid, "VmHWM")
    sock = _dealer(daemon.requests_endpoint)
    header = json.dumps({"v": 1, "id": "bomb", "task": "superres"}).encode()
    big = b"\x00" * FRAME  # one object sent 40 times by reference: the test stays small too
    sock.send_multipart([header, *([big] * BOMB_FRAMES)], copy=False)
    # The receiver's allocation fails at its limit: libzmq drops that connection (no reply
    # can reach it) and frees what it held, or the receiver dies and is restarted.
    assert sock.poll(3000) == 0
    sock.close()
    grew = _vm(pid, "VmHWM") - before
    assert grew < server["limits"]["max_message_bytes"] + SLACK, grew
    assert daemon.alive()
    assert wait_until(lambda: _inpaint(daemon.requests_endpoint) == "ok", 30)
    with Client(daemon.requests_endpoint, timeout_s=20) as client:
        after = client.stats()
    assert after["pid"] == pid
    receiver = after["server"]["receiver"]
    assert receiver["state"] == "up"
    if receiver["pid"] == server["receiver"]["pid"]:  # it survived: bounded by its limit
        assert _vm(receiver["pid"], "VmHWM") <= limit
    else:
        assert receiver["restarts"] >= 1
    assert after["server"]["in_flight"] == 0


def test_a_dead_receiver_is_published_and_restarted(daemon: Daemon) -> None:
    assert daemon.proc is not None
    with Client(daemon.requests_endpoint, timeout_s=20) as client:
        first = client.stats()["server"]["receiver"]
    with Subscriber(daemon.results_endpoint, ["stats", "events.receiver"]) as events:
        # The periodic stats prove the subscription is live before the receiver dies.
        assert wait_until(lambda: (m := events.recv(0.2)) is not None and m.topic == "stats", 10)
        os.kill(first["pid"], signal.SIGKILL)
        states: list[str] = []
        while "up" not in states:
            message = events.recv(30)
            assert message is not None, (states, daemon.log_tail(10))
            if message.topic == "events.receiver":
                states.append(message.header["data"]["state"])
    assert states == ["failed", "restarting", "up"]
    assert daemon.alive()
    assert _inpaint(daemon.requests_endpoint) == "ok"
    with Client(daemon.requests_endpoint, timeout_s=20) as client:
        second = client.stats()["server"]["receiver"]
    assert second["pid"] != first["pid"]
    assert second["restarts"] == first["restarts"] + 1
    assert second["last_exit"] == -signal.SIGKILL
    assert "receiver_died" in daemon.log()


def test_a_reply_over_the_reply_limit_is_too_large_not_lost(tmp_path: Path) -> None:
    """The receiver process must hold a reply whole under its memory limit: a result over
    ``max_reply_bytes`` (1/8 of the budget, 1 MiB here) is one ``too_large``; the same result
    compressed fits and is served."""
    import numpy as np

    from edged.wire.payloads import encode_array
    from edged.wire.protocol import encode_request

    config = tmp_path / "edged.toml"
    config.write_text(config_toml({"memory_budget": 8_000_000, "log_format": "json"}))
    side = 700  # a 700 x 700 RGB result: 1.47 MB raw, a few kB as PNG
    arrays = (
        ("image", np.zeros((side, side, 3), np.uint8)),
        ("mask", np.zeros((side, side), np.uint8)),
    )
    payloads = [(name, "png", encode_array(arr, "png")[0], {}) for name, arr in arrays]
    with Daemon(config, tmp_path) as running:
        with Client(running.requests_endpoint, timeout_s=20) as client:
            assert client.stats()["server"]["limits"]["max_reply_bytes"] == 1 << 20
        sock = _dealer(running.requests_endpoint)
        try:
            answers = {}
            for encoding in ("raw", "png"):
                frames = encode_request(encoding, "inpainting", payloads=payloads)
                header = json.loads(frames[0])
                frames[0] = json.dumps({**header, "encoding": encoding}).encode()
                sock.send_multipart(frames)
                (reply,) = _replies(sock, 500)
                answers[reply["id"]] = reply
        finally:
            sock.close(0)
    assert answers["raw"]["error"]["code"] == "too_large"
    assert "reply limit" in answers["raw"]["error"]["message"]
    assert answers["png"]["ok"] is True


def test_the_receiver_dies_with_a_killed_daemon_so_a_restart_binds_at_once(
    tmp_path: Path,
) -> None:
    """kill -9 of the daemon must not leave its receiver holding the request socket: the
    next daemon (started right away, as the inbox recovery path and supervisors do) binds."""
    import os
    import signal

    config = tmp_path / "edged.toml"
    config.write_text(config_toml({"log_format": "json", "memory_budget": "1G"}))
    # Two work dirs (each its notify socket); one runtime dir (EDGED_RUNTIME_DIR): one endpoint.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Daemon(config, tmp_path / "a").start()
    try:
        with Client(first.requests_endpoint, timeout_s=20) as client:
            receiver_pid = client.stats()["server"]["receiver"]["pid"]
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        with (
            Daemon(config, tmp_path / "b") as second,
            Client(second.requests_endpoint, timeout_s=20) as client,
        ):
            assert second.requests_endpoint == first.requests_endpoint
            assert client.ping()["version"]
        status = Path(f"/proc/{receiver_pid}/status")  # gone, or a zombie nobody reaped yet
        assert not status.exists() or "zombie" in status.read_text()
    finally:
        first.stop()
