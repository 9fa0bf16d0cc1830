"""The results publisher: one PUB socket, safe to call from any thread.

Topics (docs/protocol.md): ``{stream}.{task}`` for results, ``events.{name}`` for state
changes and progress, ``stats`` for the periodic statistics. Payloads are encoded on the
caller's thread (PNG of a large frame is the slow part); only the send is serialised by a
lock, because a zmq socket must never be used by two threads at once.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import zmq

from edged.config import Settings
from edged.errors import BadRequest
from edged.log import get_logger
from edged.tasks.base import TaskResult
from edged.wire.context import get_context
from edged.wire.payloads import Encoding
from edged.wire.protocol import PROTOCOL_VERSION, dumps, encode_result_message
from edged.wire.security import SecureBinding

log = get_logger("zmq.publisher")

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EVENT_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


class Publisher:
    """PUB socket bound at ``settings.results_endpoint`` (created, and bound, on construction)."""

    def __init__(self, settings: Settings, *, context: zmq.Context[Any] | None = None) -> None:
        limits = settings.zmq
        self._context = context or get_context()
        sock = self._context.socket(zmq.PUB)
        # SNDHWM: a slow or stalled subscriber makes PUB drop its messages once this many
        # are queued for it, instead of growing memory without bound on a 1.5 GB board.
        sock.sndhwm = limits.hwm
        # LINGER: close() may flush pending results for this long, then gives up.
        sock.linger = limits.linger_ms
        try:
            self._binding = SecureBinding(sock, settings.results_endpoint, limits)
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock
        self._lock = threading.Lock()
        self._closed = False
        self.sent = 0
        log.info("publisher_started", endpoint=self.endpoint, curve=self._binding.curve)

    @property
    def endpoint(self) -> str:
        return self._binding.endpoint

    def publish_result(
        self,
        stream: str,
        seq: int,
        result: TaskResult,
        *,
        captured_at: float,
        payload_encoding: Encoding = "png",
    ) -> None:
        """``[b"{stream}.{task}", header, payload...]`` (see docs/protocol.md)."""
        if not _NAME_RE.match(stream):
            raise BadRequest(f"stream name {stream!r} must match {_NAME_RE.pattern}")
        frames = encode_result_message(
            stream, seq, result, captured_at=captured_at, encoding=payload_encoding
        )
        self._send(frames)

    def publish_event(self, name: str, data: dict[str, Any]) -> None:
        """``events.{name}``: e.g. ``stream.up``, ``model.evicted``, ``generation.progress``."""
        if not _EVENT_RE.match(name):
            raise BadRequest(f"event name {name!r} must match {_EVENT_RE.pattern}")
        header = {"v": PROTOCOL_VERSION, "event": name, "published_at": time.time(), "data": data}
        self._send([f"events.{name}".encode(), dumps(header)])

    def publish_stats(self, data: dict[str, Any]) -> None:
        """``stats``: the daemon's periodic statistics."""
        header = {"v": PROTOCOL_VERSION, "published_at": time.time(), "data": data}
        self._send([b"stats", dumps(header)])

    def _send(self, frames: list[bytes]) -> None:
        with self._lock:
            if self._closed:
                return
            # PUB never blocks: at the HWM libzmq drops for that subscriber.
            self._sock.send_multipart(frames)
            self.sent += 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
        self._binding.close()
        log.info("publisher_stopped", endpoint=self.endpoint, sent=self.sent)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
