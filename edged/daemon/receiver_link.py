"""The daemon's side of its receiver process (edged.daemon.receiver): spawn, supervise, talk.

The request server binds an internal ipc ROUTER (0600, in the runtime dir) instead of the
public endpoint; the receiver process binds the public endpoint and forwards accepted
requests to it. Everything here runs on the request server's thread (the only one that
touches its sockets), except ``start`` and ``reap`` (the caller's, before the thread runs
and after it ended).

Supervision: the server loop polls ``tick`` at least every ``TICK_MS``. A receiver that
exits is logged, published (``events.receiver``: ``failed`` then ``restarting``, ``up``
once the new one is bound) and started again after a capped exponential backoff, bound to
the endpoint that was really bound (a ``tcp://*:*`` port stays the same). The requests it
had forwarded still run; their replies are dropped with its client connections (a client
sees a timeout and retries). A receiver that cannot even start ``MAX_RESTARTS`` times in a
row is ``dead``: the service then stops petting the systemd watchdog.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from edged.daemon.receiver import (
    BIND,
    COUNT,
    HELLO,
    REQUEST,
    STOP,
    UNBIND,
    ReceiverConfig,
    memory_headroom,
)
from edged.daemon.receiver import REPLY as REPLY_KIND
from edged.daemon.supervise import MAX_RESTARTS, RESTART_WINDOW_S
from edged.errors import ConfigError, TooLarge
from edged.log import get_logger
from edged.wire.protocol import Reply
from edged.wire.receive import Received, ReceiveLimits
from edged.wire.security import prepare_ipc

if TYPE_CHECKING:
    from edged.config import Settings, ZmqSettings
    from edged.daemon.server import RequestServer

__all__ = ["EventFn", "ReceiverLink"]

log = get_logger("zmq.server")

EventFn = Callable[[str, dict[str, Any]], None]
TICK_MS = 250
START_TIMEOUT_S = 60.0
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0
INTERNAL_HWM = 2
"""Accepted requests queued towards the daemon: past it the receiver stops reading clients
(each may be ``max_message_bytes``: this bounds what the daemon's libzmq buffers)."""
_MALLOC_ENV = {
    # Large frames straight from mmap and back to the OS when freed: a bomb's memory does not
    # stay in the receiver's heap under its RLIMIT_DATA.
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_ARENA_MAX": "2",
}


class ReceiverLink:
    """One request server's receiver process (see the module docstring)."""

    def __init__(self, server: RequestServer, on_event: EventFn | None) -> None:
        self._server = server
        self._on_event = on_event
        settings = server.settings
        self.internal_path = Path(settings.runtime_dir) / "receiver.sock"
        self.internal = f"ipc://{self.internal_path}"
        self._log = (settings.log_level, settings.log_format)
        self._proc: subprocess.Popen[bytes] | None = None
        self._peer: bytes | None = None
        self._hello = threading.Event()
        self._start_error: str | None = None
        self._crashes: deque[float] = deque()
        self._failed_starts = 0
        self._restart_at: float | None = None
        self._bind_wanted: Settings | None = None
        self.state = "starting"
        self.restarts = 0
        self.memory_limit: int | None = None
        self.last_exit: int | None = None
        self.dead = False

    def stats(self) -> dict[str, Any]:
        return {
            "mode": "process",
            "state": self.state,
            "pid": self._proc.pid if self._proc is not None else None,
            "restarts": self.restarts,
            "memory_limit_bytes": self.memory_limit,
            "last_exit": self.last_exit,
            **({"dead": True} if self.dead else {}),
        }

    # ------------------------------------------------------------ caller's thread

    def prepare(self, router: zmq.Socket[Any]) -> None:
        """Bind the internal endpoint: owner-only, and one more guard on frame size."""
        limits = self._server.receive_limits
        router.maxmsgsize = limits.max_message_bytes
        router.rcvhwm = INTERNAL_HWM
        router.sndhwm = 0  # replies: bounded by the requests in flight
        prepare_ipc(self.internal_path)
        try:
            router.bind(self.internal)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot bind {self.internal}: {exc}") from exc
        os.chmod(self.internal_path, 0o600)  # only the daemon's own user: no limits behind it

    def start(self, endpoint: str, zmq_settings: ZmqSettings, thread: threading.Thread) -> None:
        """Spawn the receiver, start the server ``thread`` (it receives the hello) and wait
        until the receiver is bound. Raises ConfigError when it cannot bind."""
        self._spawn(endpoint, zmq_settings)
        thread.start()
        if not self._hello.wait(START_TIMEOUT_S) or self._start_error is not None:
            raise ConfigError(
                self._start_error or f"the receiver process did not start in {START_TIMEOUT_S} s"
            )

    def reap(self, timeout_s: float) -> None:
        """After the server thread ended: the receiver has been told to stop; make sure."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("receiver_killed", pid=proc.pid, reason="did not stop in time")
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.internal_path.unlink()

    def _spawn(self, endpoint: str, zmq_settings: ZmqSettings) -> None:
        limits = self._server.receive_limits
        config = ReceiverConfig(
            internal=self.internal,
            endpoint=endpoint,
            zmq=zmq_settings,
            limits=limits.fields(),
            headroom_bytes=memory_headroom(limits),
            parent_pid=os.getpid(),
            log_level=self._log[0],
            log_format=self._log[1],
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "edged.daemon.receiver"],
            stdin=subprocess.PIPE,
            env={**os.environ, **_MALLOC_ENV},
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write(config.model_dump_json().encode())
            proc.stdin.close()
        except OSError as exc:  # it died at once: tick() sees the exit
            log.error("receiver_config_not_sent", error=str(exc))
        self._proc, self._peer, self.state = proc, None, "starting"

    # ------------------------------------------------------------ server thread

    def poll_ms(self) -> int:
        return TICK_MS

    def limits_in(self) -> ReceiveLimits:
        """The server's limits on the internal socket: two frames (route, kind) more."""
        limits = self._server.receive_limits
        return dataclasses.replace(
            limits,
            max_frames=limits.max_frames + 2,
            max_message_bytes=limits.max_message_bytes + 64,
        )

    def bounded(
        self, reply: Reply, body: list[bytes], rid: str | None
    ) -> tuple[Reply, list[bytes]]:
        """A reply is at most ``max_reply_bytes`` (the receiver's memory limit holds one):
        a bigger one would fail the receiver's allocation, so it is ``too_large`` instead."""
        size = sum(len(f) for f in body)
        limit = self._server.receive_limits.max_reply_bytes
        if size <= limit:
            return reply, body
        reply = Reply.from_error(
            TooLarge(
                f"result is {size} bytes, over the {limit}-byte reply limit (1/8 of the memory "
                "budget); ask for a png/jpeg result or a smaller output"
            )
        )
        return reply, reply.to_frames(rid)

    def accept(self, got: Received) -> Received | None:
        """A request becomes ``[child, REPLY, client envelope, body]`` for the server (its
        reply then goes back the same way); control messages are handled here (None)."""
        frames = got.frames
        kind = frames[1] if len(frames) > 1 else b""
        if kind == REQUEST:
            got.frames = [frames[0], REPLY_KIND, *frames[2:]]
            return got
        if kind == HELLO and len(frames) == 3:
            self._hello_from(frames[0], json.loads(frames[2]))
        elif kind == COUNT and len(frames) == 3 and frames[0] == self._peer:
            name = frames[2].decode("ascii", "replace")
            self._server._counts[name] += 1
            if name.startswith("error_"):  # a request the daemon never saw, answered there
                self._server._counts["requests"] += 1
        elif kind == BIND and len(frames) == 3 and frames[0] == self._peer:
            self._bound(json.loads(frames[2]))
        else:
            log.warning("receiver_bad_message", kind=kind[:8].hex(), frames=got.frame_count)
        return None

    def send_stop(self) -> None:
        if self._peer is None and self._proc is not None:
            self._proc.terminate()  # still starting: it has nothing to flush
        self._send(STOP)

    def bind(self, settings: Settings) -> bool:
        """Ask the receiver to bind ``settings.requests_endpoint`` too (SIGHUP); the answer
        comes back through ``Rebinder.bound``. False when no receiver is up to ask."""
        if self._peer is None:
            return False
        self._bind_wanted = settings
        payload = {
            "endpoint": settings.requests_endpoint,
            "zmq": settings.zmq.model_dump(mode="json"),
        }
        self._send(BIND, json.dumps(payload).encode())
        return True

    def unbind(self, endpoint: str) -> None:
        self._send(UNBIND, endpoint.encode())

    def tick(self) -> None:
        """Notice a receiver that exited; start the next one when its backoff is over."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._exited(proc)
        if self._restart_at is not None and time.monotonic() >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self._spawn(self._server.endpoint, self._server._rebinder.zmq_settings)

    def _send(self, kind: bytes, payload: bytes | None = None) -> None:
        if self._peer is None:
            return
        frames = [self._peer, kind, *([payload] if payload is not None else [])]
        try:
            self._server._router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("receiver_message_dropped", error=str(exc))

    def _hello_from(self, peer: bytes, hello: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or hello.get("pid") != proc.pid:
            return  # a receiver that has been replaced already
        if "error" in hello:
            self._start_error = str(hello["error"])
            log.error("receiver_not_bound", error=self._start_error)
            if not self._hello.is_set():  # the first start: the daemon refuses to start
                self._hello.set()
            return
        self._peer, self.state, self._failed_starts = peer, "up", 0
        self.memory_limit = int(hello.get("memory_limit_bytes") or 0) or None
        self._server._endpoint = str(hello["endpoint"])
        if self._hello.is_set():
            self._event("up", {"pid": proc.pid, "endpoint": self._server._endpoint})
        self._hello.set()

    def _bound(self, answer: dict[str, Any]) -> None:
        settings, self._bind_wanted = self._bind_wanted, None
        if settings is not None:
            self._server._rebinder.bound(settings, answer.get("endpoint"), answer.get("error"))

    def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.returncode
        self.last_exit, self._proc = code, None
        was_up = self._peer is not None
        self._peer, self.state = None, "restarting"
        if not self._hello.is_set():  # the first start failed: start() reports it
            self._start_error = self._start_error or (
                f"the receiver process exited with {code} before binding (see the log)"
            )
            self._hello.set()
            return
        if self._bind_wanted is not None:
            self._bound({"error": "the receiver process exited during the move"})
        delay = self._backoff(was_up)
        log.error("receiver_died", pid=proc.pid, exit=code, restart_in_s=delay, dead=self.dead)
        self._event("failed", {"pid": proc.pid, "exit": code, "restarts": self.restarts})
        self._event("restarting", {"delay_s": round(delay, 3), "dead": self.dead})
        self._restart_at = time.monotonic() + delay

    def _backoff(self, was_up: bool) -> float:
        """Crashes of a receiver that was serving back off in a window; one that cannot even
        start ``MAX_RESTARTS`` times in a row is dead (the watchdog then lets systemd act)."""
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > RESTART_WINDOW_S:
            self._crashes.popleft()
        if not was_up:
            self._failed_starts += 1
            self.dead = self._failed_starts > MAX_RESTARTS
        else:
            self.dead = False
        return min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2.0 ** (len(self._crashes) - 1))

    def _event(self, state: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event("receiver", {"state": state, **data})
            except Exception as exc:  # publishing must never stop the server thread
                log.warning("receiver_event_not_published", error=repr(exc))
