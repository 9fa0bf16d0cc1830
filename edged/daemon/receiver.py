"""The receiver process: untrusted requests are received here, never in the daemon.

libzmq delivers a multipart message whole, so a message of many frames (each under the
transport's per-frame cap) is buffered completely before anyone can count it. This child of
the daemon (``python -m edged.daemon.receiver``, its ``ReceiverConfig`` as JSON on stdin)
binds the public request endpoint(s) with the daemon's security (edged.wire.security:
ipc file modes, CURVE + ZAP), reads each message with the receive limits
(edged.wire.receive) and forwards only accepted messages to the daemon over an internal ipc
socket; refused ones get their one ``too_large`` here. Replies come back from the daemon
with the client's routing envelope and are relayed as they are.

Its memory is capped (``RLIMIT_DATA`` = what it maps once bound + ``headroom_bytes``): a
message that would pass the cap fails libzmq's allocation, which drops that connection and
frees what it had buffered (measured: libzmq 4.3 answers ``ENOMEM`` in its decoder by closing
the peer); any other failed allocation ends this process, which the daemon restarts
(edged.daemon.receiver_link). Either way the daemon's memory is untouched. The child raises
its own OOM score so a cgroup-wide OOM picks it, not the daemon.

Internal messages (DEALER here, ROUTER in the daemon), first frame the kind:
child -> daemon: ``H`` hello (JSON: pid, endpoint, limit, or error), ``Q`` request (client
envelope + body), ``N`` a counter to add (name), ``B`` bind result (JSON);
daemon -> child: ``S`` reply (client envelope + body), ``B`` bind (JSON endpoint + zmq
settings), ``U`` unbind (endpoint), ``X`` stop.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

import zmq

from edged.config import ZmqSettings
from edged.errors import ConfigError, EdgedError, TooLarge
from edged.log import configure_logging, get_logger
from edged.schema import StrictModel
from edged.wire.context import get_context
from edged.wire.protocol import Reply, peek_id
from edged.wire.receive import Received, ReceiveLimits, receive
from edged.wire.security import SecureBinding

__all__ = ["ReceiverConfig", "main", "memory_headroom"]

log = get_logger("zmq.receiver")

HELLO, REQUEST, COUNT, BIND, REPLY, UNBIND, STOP = (
    b"H",
    b"Q",
    b"N",
    b"B",
    b"S",
    b"U",
    b"X",
)
SLACK_BYTES = 32 << 20
"""Headroom for the interpreter and libzmq's own small allocations (pipes, ZAP, logging)."""
MESSAGE_SLOTS = 2
"""Whole accepted messages the child may hold at once (one forwarded, one arriving)."""
FORWARD_HWM = 2
"""Accepted requests queued towards the daemon (see ``Receiver.__init__``)."""
PARENT_CHECK_MS = 1000
"""How often the child checks that the daemon still exists (it exits once it is gone)."""


class ReceiverConfig(StrictModel):
    """What the daemon hands its receiver on stdin."""

    internal: str
    endpoint: str
    zmq: ZmqSettings
    limits: dict[str, int]
    headroom_bytes: int
    parent_pid: int
    log_level: str = "info"
    log_format: str = "json"


def memory_headroom(limits: ReceiveLimits) -> int:
    """What the child may allocate over its bound baseline: ``MESSAGE_SLOTS`` whole requests,
    one reply at its largest, and slack."""
    return SLACK_BYTES + MESSAGE_SLOTS * limits.max_message_bytes + limits.max_reply_bytes


def _vm_data() -> int:
    from pathlib import Path

    from edged.memory import kb_fields

    found = kb_fields(Path("/proc/self/status"), ("VmData",))
    if "VmData" not in found:
        raise OSError("no VmData in /proc/self/status")
    return found["VmData"]


def _cap_memory(headroom: int) -> int | None:
    """RLIMIT_DATA = the private writable memory mapped now + ``headroom``; the limit set
    (None when a seccomp filter refuses it: the OOM score below is then the only guard).

    RLIMIT_DATA, not RLIMIT_AS: address space reserved but not writable (glibc's per-thread
    arenas, libzmq's I/O threads) does not count, so the limit measures real allocations.
    """
    limit = _vm_data() + headroom
    capped: int | None = limit
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except OSError as exc:  # e.g. SystemCallFilter=~@resources on a systemd that lists prlimit64
        log.error("receiver_memory_not_capped", error=str(exc), fix="allow prlimit64/setrlimit")
        capped = None
    try:  # a cgroup-wide OOM kills the receiver first, never the daemon and its models
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as adj:
            adj.write("1000")
    except OSError as exc:
        log.warning("oom_score_adj_not_set", error=str(exc))
    return capped


class Receiver:
    """The child's two sockets and its loop (one thread: zmq sockets are not thread-safe)."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self.limits = ReceiveLimits(**config.limits)
        context = get_context()
        settings = config.zmq
        self.link = context.socket(zmq.DEALER)
        self.link.linger = settings.linger_ms
        # Few accepted requests queued towards the daemon (each may be max_message_bytes):
        # past them the receiver stops reading clients until the daemon has taken one.
        self.link.sndhwm = FORWARD_HWM
        self.link.rcvhwm = 0  # replies: bounded by the daemon's requests in flight
        self.link.connect(config.internal)
        self.router = context.socket(zmq.ROUTER)
        self.router.linger = settings.linger_ms
        self.router.rcvhwm = self.router.sndhwm = settings.hwm
        self.router.maxmsgsize = self.limits.transport_frame_bytes
        self.bindings: dict[str, SecureBinding] = {}
        self._held: list[Any] | None = None  # an accepted request the daemon cannot take yet

    def bind(self, endpoint: str, settings: ZmqSettings) -> str:
        binding = SecureBinding(self.router, endpoint, settings)
        self.bindings[binding.endpoint] = binding
        return binding.endpoint

    def tell(self, kind: bytes, data: Any) -> None:
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.link.send_multipart([kind, payload])

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.link, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        while True:
            # Back-pressure: while a request waits for the daemon, clients are not read.
            held = self._held is not None
            poller.modify(self.link, zmq.POLLIN | (zmq.POLLOUT if held else 0))
            poller.modify(self.router, 0 if held else zmq.POLLIN)
            events = dict(poller.poll(PARENT_CHECK_MS))
            if os.getppid() != self.config.parent_pid:
                log.warning("receiver_orphaned", parent=self.config.parent_pid)
                return
            link = events.get(self.link, 0)
            if link & zmq.POLLIN and not self._from_daemon():
                return
            if link & zmq.POLLOUT and self._held is not None:
                self._forward(self._held)
            if events.get(self.router, 0) & zmq.POLLIN:
                self._from_clients()

    def close(self) -> None:
        self.router.close()  # LINGER: replies already relayed still leave
        for binding in self.bindings.values():
            binding.close()
        self.link.close()

    # ------------------------------------------------------------ daemon -> clients

    def _from_daemon(self) -> bool:
        """Relay replies, apply binds; False on ``STOP``."""
        while True:
            try:
                frames = self.link.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            kind = frames[0].bytes
            if kind == REPLY:
                self._relay(frames[1:])
            elif kind == BIND:
                self._rebind(json.loads(frames[1].bytes))
            elif kind == UNBIND:
                self._unbind(frames[1].bytes.decode())
            elif kind == STOP:
                return False

    def _relay(self, frames: list[Any]) -> None:
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # that client's HWM is reached: drop, as before
            self.tell(COUNT, b"dropped_replies")
            log.warning("reply_dropped", error=str(exc))

    def _rebind(self, wanted: dict[str, Any]) -> None:
        settings = ZmqSettings.model_validate_json(json.dumps(wanted["zmq"]))
        try:
            bound = self.bind(wanted["endpoint"], settings)
        except EdgedError as exc:
            self.tell(BIND, {"error": str(exc).splitlines()[0]})
            return
        self.tell(BIND, {"endpoint": bound})

    def _unbind(self, endpoint: str) -> None:
        binding = self.bindings.pop(endpoint, None)
        if binding is None:
            return
        try:
            self.router.unbind(endpoint)
        except zmq.ZMQError as exc:  # already gone: nothing to release but the binding state
            log.warning("unbind_failed", endpoint=endpoint, error=str(exc))
        binding.close()

    # ------------------------------------------------------------ clients -> daemon

    def _from_clients(self) -> None:
        # Drain what is queued, but give the daemon's replies a turn every few requests.
        for _ in range(16):
            got = receive(self.router, self.limits, keep_frames=True)
            if got is None:
                return
            if got.refused is not None:
                counted = f"(got {got.total_bytes} bytes in {got.frame_count} frames)"
                self._refuse(got, TooLarge(f"{got.refused} {counted}"))
                continue
            if not self._forward([REQUEST, *got.raw]):
                return

    def _forward(self, frames: list[Any]) -> bool:
        """Hand an accepted request to the daemon (its frames uncopied); False, and held,
        while the daemon's queue is full."""
        try:
            self.link.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._held = frames
            return False
        self._held = None
        return True

    def _refuse(self, got: Received, error: EdgedError) -> None:
        """The one reply of a message the daemon never sees; the daemon counts it."""
        frames = got.frames
        envelope = frames[:2] if len(frames) > 1 and frames[1] == b"" else frames[:1]
        body = frames[len(envelope) :]
        rid = peek_id(body[0]) if body else None
        log.info("request_refused", id=rid, bytes=got.total_bytes, frames=got.frame_count)
        self.tell(COUNT, f"error_{error.wire_code}".encode())
        self._relay([*envelope, *Reply.from_error(error).to_frames(rid)])


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the daemon dies, kill -9 included.

    An orphan polling ``getppid()`` keeps the public socket for up to a poll period after
    the daemon died, and a daemon restarted at once (the kill -9 recovery path, a supervisor
    without cgroup kill) then finds it "already listening" and exits. The polling stays as
    the fallback for a kernel or seccomp filter without prctl. (The signal follows the
    spawning thread: the daemon's request-server thread, which lives as long as it does.)
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        log.warning("receiver_pdeathsig_not_set", error=str(exc))
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def main() -> int:
    config = ReceiverConfig.model_validate_json(sys.stdin.buffer.read())
    _die_with_parent(config.parent_pid)
    configure_logging(config.log_level, config.log_format)  # type: ignore[arg-type]
    receiver = Receiver(config)
    try:
        endpoint = receiver.bind(config.endpoint, config.zmq)
    except ConfigError as exc:
        receiver.tell(HELLO, {"pid": os.getpid(), "error": str(exc).splitlines()[0]})
        receiver.close()
        return 2
    limit = _cap_memory(config.headroom_bytes)
    hello = {"pid": os.getpid(), "endpoint": endpoint, "memory_limit_bytes": limit}
    receiver.tell(HELLO, hello)
    log.info("receiver_started", **hello)
    try:
        receiver.run()
    finally:
        receiver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
