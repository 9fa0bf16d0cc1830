"""Bounded receive: what one request message, and all requests in flight, may cost.

Limits (``ReceiveLimits.derive``), from the memory budget ``B`` (the model pool's budget,
``memory_budget`` / profile / cgroup, 1.5 GB by default):

- ``share = B // 8`` is what received requests may hold in total before their jobs run
  (at B = 1 GB: 125 MB); jobs then reserve their working memory from the pool itself.
- the whole message (all frames) is at most ``min(zmq.max_message_bytes or header limit +
  2 * zmq.max_frame_bytes, share)``: a valid request is a header and at most two payloads;
- at most ``MAX_BODY_FRAMES`` = 3 body frames (header, image, mask) after the envelope
  (identity and the REQ delimiter): any more is ``too_large`` whatever their size;
- in flight (queued and running) at most ``zmq.max_queue`` requests holding at most
  ``share`` bytes together (frames and decoded arrays); past either: ``busy``;
- the transport cap (libzmq ``ZMQ_MAXMSGSIZE``, per frame) is ``min(2 * max_frame_bytes,
  max_message_bytes)``: a bigger frame makes libzmq drop the peer without buffering it, and
  gets no reply (the connection is gone; so does a message too big for the receiver process,
  below): between ``max_frame_bytes`` and the cap a frame is answered ``too_large``;
- the message and queue limits never go below ``MIN_MESSAGE_BYTES`` (1 MiB), so a daemon
  with a tiny budget still answers every request (``too_large`` for any model it cannot load);
- a reply is at most ``max_reply_bytes`` = ``max(share, max_message_bytes)`` when it goes
  through the receiver process (which must hold one whole); a bigger one is ``too_large``.

libzmq delivers a multipart message atomically: all its frames are in libzmq's memory before
the first one can be read, and no libzmq option bounds the frame count, so a message of many
frames, each under the transport cap, costs its size in the process that receives it. That
process is therefore not the daemon: the receiver process (edged.daemon.receiver) reads
here with ``keep_frames`` and forwards accepted messages uncopied; it runs under an
``RLIMIT_DATA`` of its idle size + 2 x ``max_message_bytes`` + ``max_reply_bytes`` + 32 MiB,
where a message that cannot fit fails libzmq's allocation and libzmq drops that connection
(or the receiver dies and the daemon restarts it). ``receive`` reads frame by frame without
copying, releases each frame of an oversized message as soon as it is counted, and the
caller answers ``too_large`` once: nothing holds a second copy of what it refuses. With
``zmq.receiver = "inline"`` the daemon receives itself and pays for such a message once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import zmq

from edged.config import ZmqSettings

__all__ = [
    "MAX_BODY_FRAMES",
    "MAX_ENVELOPE_FRAMES",
    "REQUEST_SHARE",
    "ReceiveLimits",
    "Received",
    "receive",
]

MAX_HEADER_BYTES = 65_536  # the same as edged.wire.protocol.MAX_HEADER_BYTES
MAX_BODY_FRAMES = 3
"""Header + image + mask: ``RequestHeader.payloads`` has at most two entries."""
MAX_ENVELOPE_FRAMES = 2
"""The ROUTER's identity frame and a REQ peer's empty delimiter."""
REQUEST_SHARE = 8
"""Received requests may hold 1/REQUEST_SHARE of the memory budget."""
DEFAULT_BUDGET = 1_500_000_000
MIN_MESSAGE_BYTES = 1 << 20
"""Floor of the message and queue limits: a header and a small image are always answered."""


@dataclass(frozen=True)
class ReceiveLimits:
    """The bounds the request server enforces; see the module docstring for the derivation."""

    max_message_bytes: int
    max_frames: int
    max_queue: int
    queue_bytes: int
    transport_frame_bytes: int
    budget: int
    max_reply_bytes: int

    @classmethod
    def derive(cls, zmq_settings: ZmqSettings, budget: int | None) -> ReceiveLimits:
        budget = budget or DEFAULT_BUDGET
        share = max(1, budget // REQUEST_SHARE)
        wanted = zmq_settings.max_message_bytes or (
            MAX_HEADER_BYTES + 2 * zmq_settings.max_frame_bytes
        )
        # Never below MIN_MESSAGE_BYTES, however small the budget: under it the transport cap
        # would drop every request (a header alone) without a reply.
        message = max(min(wanted, share), MIN_MESSAGE_BYTES)
        return cls(
            max_message_bytes=message,
            max_frames=MAX_ENVELOPE_FRAMES + MAX_BODY_FRAMES,
            max_queue=zmq_settings.max_queue,
            queue_bytes=max(share, MIN_MESSAGE_BYTES),
            transport_frame_bytes=min(2 * zmq_settings.max_frame_bytes, message),
            budget=budget,
            max_reply_bytes=max(share, message),
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_frames": self.max_frames,
            "max_queue": self.max_queue,
            "queue_bytes": self.queue_bytes,
            "transport_frame_bytes": self.transport_frame_bytes,
            "budget_bytes": self.budget,
            "max_reply_bytes": self.max_reply_bytes,
        }

    def fields(self) -> dict[str, int]:
        """The constructor's arguments (the receiver process gets its limits this way)."""
        return dataclasses.asdict(self)


@dataclass
class Received:
    """One message: its frames (all of them, or only the envelope and header when it was
    refused), its real size and frame count, and why it was refused (None if it was not).

    With ``keep_frames`` an accepted message's frames are the ``zmq.Frame`` objects libzmq
    filled (``raw``; ``frames`` stays empty): the receiver process forwards them uncopied."""

    frames: list[bytes] = field(default_factory=list)
    total_bytes: int = 0
    frame_count: int = 0
    refused: str | None = None
    raw: list[zmq.Frame] = field(default_factory=list)


def receive(
    sock: zmq.Socket[Any], limits: ReceiveLimits, *, keep_frames: bool = False
) -> Received | None:
    """The next message of ``sock`` (None if none is queued), read frame by frame.

    Past ``max_frames`` or ``max_message_bytes`` the rest is counted and released unread
    (no copy); the first frames (envelope and header, if small) are kept for the reply.
    """
    try:
        first = sock.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    got = Received()
    frame: zmq.Frame | None = first
    while frame is not None:
        size = len(frame.buffer)
        got.frame_count += 1
        got.total_bytes += size
        if got.refused is None:
            got.refused = _over(got, limits)
            if got.refused is not None:  # keep only what the reply needs (envelope, header)
                kept = [bytes(f.buffer) for f in got.raw[:3]] if keep_frames else got.frames
                got.frames = [f for f in kept[:3] if len(f) <= MAX_HEADER_BYTES]
                got.raw = []
        if got.refused is None:
            if keep_frames:
                got.raw.append(frame)
            else:
                got.frames.append(frame.bytes)
        elif len(got.frames) < MAX_ENVELOPE_FRAMES + 1 and size <= MAX_HEADER_BYTES:
            got.frames.append(frame.bytes)
        more = frame.more
        frame = None  # release libzmq's buffer before the next frame arrives in Python
        if more:
            frame = sock.recv(copy=False)
    return got


def _over(got: Received, limits: ReceiveLimits) -> str | None:
    if got.frame_count > limits.max_frames:
        return (
            f"request has more than {limits.max_frames} frames (envelope + header + 2 "
            "payloads at most); send one image and at most one mask"
        )
    if got.total_bytes > limits.max_message_bytes:
        return (
            f"request is over {limits.max_message_bytes} bytes (the whole-message limit: "
            "zmq.max_message_bytes, at most 1/8 of the memory budget); send smaller images"
        )
    return None
