"""Client API, publisher -> subscriber round trips, and `edged client` as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.daemon.publisher import Publisher
from edged.daemon.server import RequestServer
from edged.errors import BadRequest, ServerUnavailable
from edged.tasks.base import TaskResult
from edged.testing import ScaleModelHandler, make_scale_model, zmq_settings
from edged.wire.client import Client, Message, Subscriber


@pytest.fixture(scope="module")
def scale_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scale_model(tmp_path_factory.mktemp("models") / "half.onnx", scale=0.5)


@pytest.fixture
def server(tmp_path: Path, scale_model: Path) -> Iterator[RequestServer]:
    srv = RequestServer(zmq_settings(tmp_path / "run"), ScaleModelHandler(scale_model), workers=2)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[Publisher]:
    pub = Publisher(zmq_settings(tmp_path / "run"))
    yield pub
    pub.close()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _result(seq: int) -> TaskResult:
    mask = np.full((6, 8), seq % 256, np.uint8)
    return TaskResult(
        task="segmentation",
        model="selfie_segmentation",
        backend="onnx:cpu",
        outputs={
            "mask": mask,
            "overlay": _rgb(6, 8, seed=seq),
            "scores": np.arange(4, dtype=np.float32) * seq,
        },
        meta={"people": seq},
        latency_ms={"pre": 0.1, "run": 1.0, "post": 0.2, "total": 1.3},
    )


def _first(sub: Subscriber, publish: object) -> Message:
    """PUB/SUB slow joiner: publish until the subscription is live, then return what came."""
    for _ in range(400):
        publish()  # type: ignore[operator]
        message = sub.recv(timeout_s=0.05)
        if message is not None:
            return message
    raise AssertionError("subscriber never received anything")


def test_publish_result_round_trip(publisher: Publisher) -> None:
    with Subscriber(publisher.endpoint, ["cam0."]) as sub:
        message = _first(
            sub, lambda: publisher.publish_result("cam0", 3, _result(3), captured_at=100.0)
        )
        assert message.topic == "cam0.segmentation"
        header = message.header
        assert (header["v"], header["stream"], header["seq"], header["captured_at"]) == (
            1,
            "cam0",
            3,
            100.0,
        )
        assert header["published_at"] >= header["captured_at"]
        assert header["meta"] == {"people": 3}
        assert [p["encoding"] for p in header["payloads"]] == ["png", "png", "npy"]
        np.testing.assert_array_equal(message.arrays["mask"], np.full((6, 8), 3, np.uint8))
        np.testing.assert_array_equal(message.arrays["overlay"], _rgb(6, 8, seed=3))
        np.testing.assert_array_equal(message.arrays["scores"], np.arange(4, dtype=np.float32) * 3)
        # Topic prefixes filter: an other stream's results and events do not arrive here.
        publisher.publish_result("cam1", 1, _result(1), captured_at=1.0)
        publisher.publish_event("stream.down", {"stream": "cam1"})
        publisher.publish_result("cam0", 4, _result(4), captured_at=2.0)
        nxt = sub.recv(timeout_s=10)
        assert nxt is not None
        assert nxt.header["seq"] == 4


def test_events_and_stats_topics(publisher: Publisher) -> None:
    with Subscriber(publisher.endpoint, ["events.", "stats"]) as sub:
        event = _first(
            sub, lambda: publisher.publish_event("model.evicted", {"model": "x", "bytes": 5})
        )
        assert event.topic == "events.model.evicted"
        assert event.header["data"] == {"model": "x", "bytes": 5}
        assert event.arrays == {}
        publisher.publish_stats({"jobs": 7})
        stats = sub.recv(timeout_s=10)
        while stats is not None and stats.topic != "stats":
            stats = sub.recv(timeout_s=10)
        assert stats is not None
        assert stats.header["data"] == {"jobs": 7}
    with pytest.raises(BadRequest):
        publisher.publish_event("Bad Name", {})
    with pytest.raises(BadRequest):
        publisher.publish_result("cam/0", 1, _result(1), captured_at=0.0)


def test_lazy_pirate_recovers_when_the_server_appears(tmp_path: Path, scale_model: Path) -> None:
    settings = zmq_settings(tmp_path / "run")
    client = Client(settings.requests_endpoint, timeout_s=0.3, retries=1)
    with pytest.raises(ServerUnavailable, match=r"2 attempt\(s\)"):
        client.ping()
    srv = RequestServer(settings, ScaleModelHandler(scale_model), workers=1)
    srv.start()
    try:
        client.timeout_s = 20  # the next socket picks the new timeout up
        assert client.ping()["ok"] is True  # a fresh REQ socket: the old one was stuck
    finally:
        client.close()
        srv.stop()


def test_client_inputs_from_files_and_bad_files(server: RequestServer, tmp_path: Path) -> None:
    img = _rgb(9, 11)
    path = tmp_path / "in.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    text = tmp_path / "in.txt"
    text.write_text("hello")
    with Client(server.endpoint, timeout_s=20) as client:
        out = client.request("superres", image=path).outputs["image"]
        np.testing.assert_array_equal(out, np.clip(np.rint(img * 0.5), 0, 255).astype(np.uint8))
        with pytest.raises(BadRequest, match="only PNG or JPEG"):
            client.request("superres", image=text)
        with pytest.raises(BadRequest, match="cannot read"):
            client.request("superres", image=tmp_path / "missing.png")


def _edged(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_cli_ping_request_and_errors(server: RequestServer, tmp_path: Path) -> None:
    # No --endpoint: the default ipc endpoint comes from the settings (EDGED_RUNTIME_DIR).
    ping = _edged("client", "ping", env={"EDGED_RUNTIME_DIR": str(tmp_path / "run")})
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout)["protocol"] == 1

    img = _rgb(12, 10, seed=5)
    src, out = tmp_path / "in.png", tmp_path / "out" / "result.png"
    assert cv2.imwrite(str(src), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    req = _edged("client", "request", "superres", "--input", str(src), "--output", str(out),
                 "--param", "tile=0", "--endpoint", server.endpoint)  # fmt: skip
    assert req.returncode == 0, req.stderr
    summary = json.loads(req.stdout)
    assert summary["ok"] is True
    assert summary["files"] == {"image": str(out)}
    written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, np.clip(np.rint(img * 0.5), 0, 255).astype(np.uint8))

    bad = _edged(
        "client",
        "request",
        "warp",
        "--input",
        str(src),
        "--output",
        str(out),
        "--endpoint",
        server.endpoint,
    )
    assert bad.returncode == BadRequest.exit_code
    assert "unknown task" in bad.stderr
    assert bad.stdout == ""

    down = _edged(
        "client", "ping", "--endpoint", f"ipc://{tmp_path}/nobody.sock", "--timeout", "0.3"
    )
    assert down.returncode == ServerUnavailable.exit_code
    assert "is edged running" in down.stderr


def test_cli_subscribe_saves_payloads(publisher: Publisher, tmp_path: Path) -> None:
    save = tmp_path / "saved"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edged",
            "client",
            "subscribe",
            "cam0.",
            "--count",
            "2",
            "--save",
            str(save),
            "--endpoint",
            publisher.endpoint,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seq = 0
        while proc.poll() is None and seq < 2000:  # publish until the subscriber got its 2
            publisher.publish_result("cam0", seq, _result(seq), captured_at=float(seq))
            seq += 1
            time.sleep(0.01)  # pacing only; nothing asserts on time
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert {line["topic"] for line in lines} == {"cam0.segmentation"}
    first = lines[0]
    assert set(first["files"]) == {"mask", "overlay", "scores"}
    assert first["files"]["scores"].endswith(".npy")
    mask = cv2.imread(first["files"]["mask"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (6, 8)
    assert int(mask[0, 0]) == first["seq"] % 256
    np.testing.assert_array_equal(
        np.load(first["files"]["scores"]), np.arange(4, dtype=np.float32) * first["seq"]
    )


@pytest.mark.parametrize(("encoding", "sent"), [(None, "png"), ("png", "png"), ("raw", "raw")])
def test_array_inputs_travel_raw_when_the_reply_is_raw(
    tmp_path: Path, encoding: str | None, sent: str
) -> None:
    """A raw reply means a local client: its array goes out raw too, no PNG codec either way."""
    import threading

    import zmq

    from edged.daemon.replies import split_envelope
    from edged.wire.context import get_context
    from edged.wire.protocol import Reply

    router = get_context().socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/wire.sock")
    headers: list[dict[str, Any]] = []

    def answer_one() -> None:
        envelope, body = split_envelope(router.recv_multipart())
        headers.append(json.loads(body[0]))
        reply = Reply.success(task="superres").to_frames(headers[0]["id"])
        router.send_multipart([*envelope, *reply])

    server = threading.Thread(target=answer_one)
    server.start()
    try:
        with Client(f"ipc://{tmp_path}/wire.sock", timeout_s=20) as client:
            client.request("superres", image=_rgb(9, 11), encoding=encoding)  # type: ignore[arg-type]
    finally:
        server.join(20)
        router.close(linger=0)
    payload: dict[str, Any] = headers[0]["payloads"][0]
    assert len(headers[0]["payloads"]) == 1
    assert payload["encoding"] == sent
    assert headers[0].get("encoding") == encoding
    if sent == "raw":
        assert (payload["shape"], payload["dtype"]) == ([9, 11, 3], "uint8")
