"""The ROUTER request server over real ipc sockets, with a real ONNX handler."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edged.daemon.server import RequestServer
from edged.errors import Busy, ModelNotFound, ServerUnavailable, TooLarge
from edged.testing import ScaleModelHandler, make_scale_model, png_bomb, zmq_settings
from edged.wire.client import Client
from edged.wire.context import get_context
from edged.wire.payloads import encode_array
from edged.wire.protocol import Reply, Request


@pytest.fixture(scope="module")
def scale_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scale_model(tmp_path_factory.mktemp("models") / "half.onnx", scale=0.5)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RequestServer]]:
    servers: list[RequestServer] = []

    def start(
        handler: Callable[[Request], Any], *, workers: int = 2, **zmq_opts: Any
    ) -> RequestServer:
        server = RequestServer(
            zmq_settings(tmp_path / "run", **zmq_opts),
            handler,
            workers=workers,
            stats_fn=lambda: {"pool": {"models": 1}},
            models_fn=lambda: [{"name": "scale"}],
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _rgb(h: int = 10, w: int = 14, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _expected(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img.astype(np.float32) * 0.5), 0, 255).astype(np.uint8)


def _request_frames(rid: str, img: np.ndarray, **extra: Any) -> list[bytes]:
    png, _ = encode_array(img, "png")
    header = {
        "v": 1,
        "id": rid,
        "task": "superres",
        "payloads": [{"name": "image", "encoding": "png"}],
        **extra,
    }
    return [json.dumps(header).encode(), png]


def _dealer(endpoint: str) -> zmq.Socket[bytes]:
    sock = get_context().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 20_000  # a hang fails the test instead of blocking it forever
    sock.connect(endpoint)
    return sock


def _header(frames: list[bytes]) -> dict[str, Any]:
    if frames and frames[0] == b"":
        frames = frames[1:]
    header: dict[str, Any] = json.loads(frames[0])
    return header


@pytest.mark.arm64
def test_req_client_gets_the_model_output(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    server = serve(ScaleModelHandler(scale_model))
    img = _rgb()
    with Client(server.endpoint, timeout_s=20) as client:
        reply = client.request("superres", image=img)
        assert reply.header["ok"] is True
        assert (reply.model, reply.backend) == ("scale", "onnx:cpu")
        np.testing.assert_array_equal(reply.outputs["image"], _expected(img))
        # The same socket keeps working for the next request (REQ state machine intact).
        np.testing.assert_array_equal(
            client.request("superres", image=img[:4]).outputs["image"], _expected(img[:4])
        )


@pytest.mark.parametrize("delimiter", [True, False])
def test_dealer_client_with_or_without_delimiter(
    serve: Callable[..., RequestServer], scale_model: Path, delimiter: bool
) -> None:
    server = serve(ScaleModelHandler(scale_model))
    sock = _dealer(server.endpoint)
    img = _rgb(6, 9)
    prefix = [b""] if delimiter else []
    sock.send_multipart([*prefix, *_request_frames("d1", img)])
    reply = sock.recv_multipart()
    assert (reply[0] == b"") is delimiter
    body = reply[1:] if delimiter else reply
    header = json.loads(body[0])
    assert (header["id"], header["ok"], header["payloads"][0]["shape"]) == ("d1", True, [6, 9, 3])
    sock.close()


def test_builtin_tasks_never_reach_the_handler(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    handler = ScaleModelHandler(scale_model)
    server = serve(handler)
    with Client(server.endpoint, timeout_s=20) as client:
        ping = client.ping()
        assert (ping["protocol"], ping["task"]) == (1, "ping")
        stats = client.stats()
        assert stats["pool"] == {"models": 1}
        assert stats["server"]["requests"] == 2
        assert client.models() == [{"name": "scale"}]
    assert handler.calls == 0


GARBAGE: list[list[bytes]] = [
    [b"\x00\xff not json"],
    [b"[]"],
    [b"{}"],
    [b'{"v": 1, "id": "g", "task": "superres", "payloads": 5}'],
    [
        b'{"v": 1, "id": "g", "task": "superres", "payloads": [{"name": "image", "encoding": "png"}]}'
    ],
    [b'{"v": 1, "id": "g", "task": "superres"}', b"extra frame"],
    [b'{"v": 1, "id": "g", "task": "warp"}'],
    [
        b'{"v": 1, "id": "g", "task": "superres", "payloads": [{"name": "image", "encoding": "png"}]}',
        b"\x89PNG\r\n\x1a\n trunc",
    ],
    [
        b'{"v": 1, "id": "g", "task": "superres", "payloads": [{"name": "image", "encoding": "png"}]}',
        png_bomb(),
    ],
    [
        b'{"v": 1, "id": "g", "task": "superres", "payloads": [{"name": "image", "encoding": "jpeg"}]}',
        b"\xff\xd8\xff",
    ],
    [b'"just a string"'],
    [b"null", b"", b""],
]


def test_every_garbage_class_gets_exactly_one_error_reply(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    handler = ScaleModelHandler(scale_model)
    server = serve(handler)
    sock = _dealer(server.endpoint)
    for frames in GARBAGE:
        sock.send_multipart(frames)
    codes = []
    for _ in GARBAGE:
        header = _header(sock.recv_multipart())
        assert header["ok"] is False
        assert header["v"] == 1
        codes.append(header["error"]["code"])
    # A ping sent after the garbage is answered next: no extra reply was queued before it.
    sock.send_multipart([b'{"v": 1, "id": "after", "task": "ping"}'])
    assert _header(sock.recv_multipart())["id"] == "after"
    assert set(codes) == {"bad_request", "too_large"}
    assert codes.count("too_large") == 1  # the pixel bomb
    assert handler.calls == 0
    sock.close()


def test_socket_level_fuzz_500_messages(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    server = serve(ScaleModelHandler(scale_model), max_frame_bytes=50_000, max_pixels=64 * 64)
    rng = np.random.default_rng(1234)
    good_png, _ = encode_array(_rgb(8, 8), "png")
    sock = _dealer(server.endpoint)

    def message(i: int) -> list[bytes]:
        kind = i % 5
        if kind == 0:
            return [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))]
        if kind == 1:
            return [
                json.dumps(
                    {"v": int(rng.integers(0, 3)), "id": f"m{i}", "task": "superres"}
                ).encode()
            ]
        png = bytearray(good_png)
        png[int(rng.integers(8, len(png)))] ^= 0xFF if kind == 2 else 0
        frames = [*_request_frames(f"m{i}", _rgb(8, 8, seed=i))[:1], bytes(png)]
        if kind == 3:
            frames.append(rng.bytes(10))  # wrong frame count
        return frames

    replies = 0
    for batch in range(10):  # batches stay below the HWM, so nothing is dropped on purpose
        for i in range(batch * 50, batch * 50 + 50):
            sock.send_multipart(message(i))
        for _ in range(50):
            header = _header(sock.recv_multipart())
            assert header["ok"] in (True, False)
            if not header["ok"]:
                assert header["error"]["code"] in ("bad_request", "too_large")
            replies += 1
    assert replies == 500
    with Client(server.endpoint, timeout_s=20) as client:
        assert client.ping()["ok"] is True
        assert client.stats()["server"]["requests"] == 502  # 500 + ping + this stats
    sock.close()


def test_too_large_frame_is_refused_and_huge_frame_dropped(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    handler = ScaleModelHandler(scale_model)
    server = serve(handler, max_frame_bytes=100_000)
    header = b'{"v": 1, "id": "big", "task": "superres", "payloads": [{"name": "image", "encoding": "png"}]}'
    sock = _dealer(server.endpoint)
    sock.send_multipart([header, b"\x00" * 150_000])
    reply = _header(sock.recv_multipart())
    assert (reply["id"], reply["error"]["code"]) == ("big", "too_large")
    assert "max_frame_bytes" in reply["error"]["message"]
    sock.close()
    # Above 2x the limit libzmq drops the peer without buffering: no reply, server unharmed.
    with Client(server.endpoint, timeout_s=1.0) as client, pytest.raises(ServerUnavailable):
        client.exchange([header, b"\x00" * 250_000])
    with Client(server.endpoint, timeout_s=20) as client, pytest.raises(TooLarge, match="pixels"):
        client.request("superres", image=png_bomb(20_000, 20_000))
    assert handler.calls == 0


def test_busy_when_the_queue_is_full(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    gate = threading.Event()
    handler = ScaleModelHandler(scale_model, gate=gate)
    server = serve(handler, workers=4, max_queue=2)
    sock = _dealer(server.endpoint)
    img = _rgb(4, 4)
    for rid in ("a", "b", "c"):
        sock.send_multipart(_request_frames(rid, img))
    first = _header(sock.recv_multipart())
    assert (first["id"], first["error"]["code"]) == ("c", "busy")
    # Still full: built-ins are answered, everything else is busy before any decoding.
    sock.send_multipart([b'{"v": 1, "id": "p", "task": "ping"}'])
    assert _header(sock.recv_multipart())["ok"] is True
    bomb_header = {
        "v": 1,
        "id": "e",
        "task": "superres",
        "payloads": [{"name": "image", "encoding": "png"}],
    }
    sock.send_multipart([json.dumps(bomb_header).encode(), png_bomb()])
    assert _header(sock.recv_multipart())["error"]["code"] == "busy"
    gate.set()
    done = {_header(sock.recv_multipart())["id"] for _ in range(2)}
    assert done == {"a", "b"}
    # Capacity is back once the replies went out.
    sock.send_multipart(_request_frames("d", img))
    assert _header(sock.recv_multipart())["ok"] is True
    sock.close()


def test_handler_errors_become_structured_replies(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    scale = ScaleModelHandler(scale_model)

    def handler(request: Request) -> Any:
        if request.model == "missing":
            raise ModelNotFound("no model 'missing'; see `edged models list`")
        if request.model == "crash":
            raise ZeroDivisionError("bug")
        if request.model == "full":
            raise Busy("scheduler full")
        return scale(request)

    server = serve(handler)
    img = _rgb(4, 5)
    with Client(server.endpoint, timeout_s=20) as client:
        with pytest.raises(ModelNotFound, match="unknown_model"):
            client.request("superres", image=img, model="missing")
        with pytest.raises(Busy):
            client.request("superres", image=img, model="full")
        with pytest.raises(Exception, match="internal error: ZeroDivisionError"):
            client.request("superres", image=img, model="crash")
        assert client.request("superres", image=img).outputs["image"].shape == (4, 5, 3)
        stats = client.stats()["server"]
    assert stats["error_unknown_model"] == 1
    assert stats["error_internal"] == 1


def test_future_handler_on_the_callers_executor(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    """The daemon's way: workers=0, the handler submits and returns a Future at once."""
    scale = ScaleModelHandler(scale_model)
    pool = ThreadPoolExecutor(2)
    calling_threads: set[str] = set()

    def handler(request: Request) -> Future[Any]:
        calling_threads.add(threading.current_thread().name)
        return pool.submit(lambda: Reply.from_result(scale(request), encoding=request.encoding))

    server = serve(handler, workers=0)
    img = _rgb(7, 3)
    with Client(server.endpoint, timeout_s=20) as client:
        reply = client.request("superres", image=img, encoding="npy")
    assert reply.header["payloads"][0]["encoding"] == "npy"
    np.testing.assert_array_equal(reply.outputs["image"], _expected(img))
    assert calling_threads == {"edged-zmq-server"}
    pool.shutdown()


def test_stop_is_prompt_and_rebinding_works(
    serve: Callable[..., RequestServer], scale_model: Path
) -> None:
    server = serve(ScaleModelHandler(scale_model))
    endpoint = server.endpoint
    server.stop()
    with (
        Client(endpoint, timeout_s=0.5) as client,
        pytest.raises(ServerUnavailable, match="is edged running"),
    ):
        client.ping()
    again = serve(ScaleModelHandler(scale_model))  # same runtime dir: the stale socket is replaced
    assert again.endpoint == endpoint
    with Client(endpoint, timeout_s=20) as client:
        assert client.ping()["ok"] is True
