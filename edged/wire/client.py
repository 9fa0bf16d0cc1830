"""Python client of the edged ZeroMQ protocol v1 (docs/protocol.md).

``Client`` sends requests on a REQ socket with a receive timeout; on timeout the socket is
closed and recreated (the "lazy pirate" pattern), because a REQ socket that missed its reply
is stuck forever. ``Subscriber`` reads the results/events/stats topics of the PUB socket.

    with Client("ipc:///run/edged/requests.sock", timeout_s=10) as client:
        reply = client.request("segmentation", image=rgb)
        mask = reply.outputs["mask"]
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from edged.errors import (
    BadRequest,
    Busy,
    EdgedError,
    LicenceNotAllowed,
    ModelNotFound,
    ServerUnavailable,
    TooLarge,
)
from edged.log import get_logger
from edged.wire.context import get_context
from edged.wire.payloads import JPEG_SOI, PNG_SIGNATURE, Encoding, decode_any, encode_array
from edged.wire.protocol import encode_request, loads_object
from edged.wire.security import configure_client_socket

log = get_logger("client")

ERRORS: dict[str, type[EdgedError]] = {
    "bad_request": BadRequest,
    "unknown_model": ModelNotFound,
    "too_large": TooLarge,
    "busy": Busy,
    "licence": LicenceNotAllowed,
    "internal": EdgedError,
}
"""``error.code`` of a reply -> the exception ``Client.request`` raises."""

ImageInput = npt.NDArray[np.uint8] | bytes | Path | str


@dataclass
class ClientReply:
    """A successful reply: its JSON header and the decoded payload arrays."""

    header: dict[str, Any]
    outputs: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.header.get("model")

    @property
    def backend(self) -> str | None:
        return self.header.get("backend")

    @property
    def latency_ms(self) -> dict[str, float]:
        return dict(self.header.get("latency_ms") or {})

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.header.get("meta") or {})


@dataclass
class Message:
    """One message from the PUB socket: topic, JSON header and decoded payload arrays."""

    topic: str
    header: dict[str, Any]
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


def decode_payloads(header: dict[str, Any], frames: Sequence[bytes]) -> dict[str, Any]:
    """Payload frames -> arrays, by the header's ``payloads`` list."""
    specs = header.get("payloads") or []
    if not isinstance(specs, list) or len(specs) != len(frames):
        raise BadRequest(f"header lists {len(specs)} payloads but {len(frames)} frames came")
    return {
        str(spec["name"]): decode_any(spec, data) for spec, data in zip(specs, frames, strict=True)
    }


def raise_for_error(header: dict[str, Any]) -> None:
    """``ok: false`` -> the EdgedError subclass of its ``error.code``."""
    if header.get("ok") is True:
        return
    raw = header.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code = str(error.get("code", "internal"))
    message = str(error.get("message", "request failed"))
    raise ERRORS.get(code, EdgedError)(f"server: {message} ({code})")


def _image_payload(
    name: str, value: ImageInput, encoding: Encoding | None = None
) -> tuple[str, Encoding, bytes, dict[str, Any]]:
    """A request payload; arrays travel ``raw`` when the reply is asked ``raw``/``npy`` (no
    codec on either side: the fast path on ipc:// and loopback), else as lossless PNG."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value, dtype=np.uint8)
        if encoding in ("raw", "npy"):
            return name, "raw", arr.tobytes(), {"shape": list(arr.shape), "dtype": "uint8"}
        data, used = encode_array(arr, "png")
        return name, used, data, {}
    if isinstance(value, (str, Path)):
        path = Path(value)
        try:
            value = path.read_bytes()
        except OSError as exc:
            raise BadRequest(f"cannot read {name} file {path}: {exc.strerror}") from exc
    if value.startswith(PNG_SIGNATURE):
        return name, "png", value, {}
    if value.startswith(JPEG_SOI):
        return name, "jpeg", value, {}
    raise BadRequest(f"{name}: only PNG or JPEG files (or a numpy array) can be sent")


class Client:
    """Request/reply client; one outstanding request at a time (use one Client per thread)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 0,
        curve_server_key: bytes | None = None,
        curve_client_keys: tuple[bytes, bytes] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self._server_key = curve_server_key
        self._client_keys = curve_client_keys
        self._context = context or get_context()
        self._sock: zmq.Socket[Any] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            sock = self._context.socket(zmq.REQ)
            sock.linger = 0  # an unanswered request must not keep the process alive
            sock.rcvtimeo = max(1, int(self.timeout_s * 1000))
            sock.sndtimeo = max(1, int(self.timeout_s * 1000))
            configure_client_socket(
                sock, server_key=self._server_key, client_keys=self._client_keys
            )
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def exchange(self, frames: list[bytes]) -> list[bytes]:
        """Send raw frames, return the raw reply frames (lazy pirate with ``retries``)."""
        for attempt in range(self.retries + 1):
            sock = self._socket()
            try:
                sock.send_multipart(frames)
                return sock.recv_multipart()
            except zmq.Again:
                log.debug("request_timeout", endpoint=self.endpoint, attempt=attempt + 1)
                self._reset()  # a REQ socket that missed its reply cannot send again
        raise ServerUnavailable(
            f"no reply from {self.endpoint} within {self.timeout_s:g} s "
            f"({self.retries + 1} attempt(s)): is edged running, and for tcp, is this "
            "client's public key in the server's allowed-clients dir?"
        )

    def call(self, task: str, **fields: Any) -> ClientReply:
        """Send a request header (+ ``payloads=[...]``) and decode the checked reply."""
        rid = uuid.uuid4().hex
        reply = self.exchange(encode_request(rid, task, **fields))
        header = loads_object(reply[0], "reply header")
        raise_for_error(header)
        if header.get("id") != rid:
            raise EdgedError(f"reply id {header.get('id')!r} does not match request {rid!r}")
        return ClientReply(header, decode_payloads(header, reply[1:]))

    def request(
        self,
        task: str,
        image: ImageInput | None = None,
        mask: ImageInput | None = None,
        *,
        points: Sequence[tuple[float, float, int]] | None = None,
        box: tuple[float, float, float, float] | None = None,
        prompt: str | None = None,
        model: str | None = None,
        params: dict[str, Any] | None = None,
        backend: str | None = None,
        encoding: Encoding | None = None,
    ) -> ClientReply:
        """Run ``task`` on the daemon; raises the EdgedError matching a failed reply.

        ``encoding`` codes the reply's images; with ``raw`` or ``npy`` array inputs are sent
        raw too (PNG otherwise). Files are sent as they are (PNG or JPEG).
        """
        payloads = [_image_payload("image", image, encoding)] if image is not None else []
        if mask is not None:
            payloads.append(_image_payload("mask", mask, encoding))
        return self.call(
            task,
            payloads=payloads,
            model=model,
            backend=backend,
            params=params or None,
            prompt=prompt,
            points=[list(p) for p in points] if points else None,
            box=list(box) if box is not None else None,
            encoding=encoding,
        )

    def ping(self) -> dict[str, Any]:
        return self.call("ping").header

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("stats").header.get("stats", {})
        return stats

    def models(self) -> Any:
        return self.call("models").header.get("models")

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """SUB socket on the results endpoint; ``topics`` are prefixes ("" = everything)."""

    def __init__(
        self,
        endpoint: str,
        topics: Sequence[str] = ("",),
        *,
        curve_server_key: bytes | None = None,
        curve_client_keys: tuple[bytes, bytes] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        sock = (context or get_context()).socket(zmq.SUB)
        sock.linger = 0
        configure_client_socket(sock, server_key=curve_server_key, client_keys=curve_client_keys)
        for topic in topics or ("",):
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(endpoint)
        self._sock = sock

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None after ``timeout_s`` (None = wait forever)."""
        timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart()
        return decode_message(frames)

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.recv()
            if message is not None:
                yield message

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_message(frames: Sequence[bytes]) -> Message:
    """``[topic, header, payload...]`` -> Message."""
    if len(frames) < 2:
        raise BadRequest(f"expected [topic, header, payload...], got {len(frames)} frame(s)")
    header = loads_object(frames[1])
    return Message(
        frames[0].decode("utf-8", "replace"), header, decode_payloads(header, frames[2:])
    )
