"""The request server: one ROUTER socket, one thread that owns it, replies from anywhere.

Thread model (zmq sockets are not thread-safe):

- the server thread owns the ROUTER and the receiving end of an inproc PAIR; it receives,
  checks limits, decodes and validates, then calls ``handler(request)``. The handler must
  return quickly: a ``Future`` (the daemon submits to its scheduler) or, for trivial work, a
  ``Reply``/``TaskResult`` directly. With ``workers=N`` the server runs the handler in its own
  thread pool instead, so a plain blocking function works too.
- when a future completes, its done-callback (on the worker's thread) encodes the reply and
  pushes it through the PAIR under a lock; only the server thread writes to the ROUTER.
- every request gets exactly one reply: errors are replies, a handler exception is a reply,
  ``busy`` is a reply when ``zmq.max_queue`` requests are already in flight.

``receiver="process"`` (the daemon's default): the ROUTER is bound on an internal ipc socket
and a receiver process (edged.daemon.receiver, edged.daemon.receiver_link) binds the public
endpoint; its ``[receiver, b"Q", envelope, body]`` is handled as ``[receiver, b"S", envelope,
body]``, so the reply (envelope + reply frames) goes back through it.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any, Literal

import zmq

from edged import __version__
from edged.config import Settings
from edged.daemon.in_flight import InFlight, request_bytes
from edged.daemon.rebind import Rebinder
from edged.daemon.receiver_link import EventFn, ReceiverLink
from edged.daemon.replies import as_reply, log_failure, outcome_name, split_envelope
from edged.errors import EdgedError, TooLarge
from edged.log import get_logger
from edged.wire.context import get_context
from edged.wire.protocol import (
    BUILTIN_TASKS,
    PROTOCOL_VERSION,
    Reply,
    Request,
    decode_request,
    peek,
    peek_id,
)
from edged.wire.receive import Received, ReceiveLimits, receive
from edged.wire.security import SecureBinding

log = get_logger("zmq.server")

Handler = Callable[[Request], Any]
"""``handler(request) -> Future[Reply | TaskResult] | Reply | TaskResult`` (see module doc)."""

_STOP = b"\x00stop"
_REBIND = b"\x00rebind"
_ids = itertools.count()


class RequestServer:
    """ROUTER request server for protocol v1 (docs/protocol.md).

    ``stats_fn`` and ``models_fn`` answer the built-in ``stats`` and ``models`` tasks (called
    on the server thread: keep them cheap); ``ping`` is always answered.
    """

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        *,
        context: zmq.Context[Any] | None = None,
        stats_fn: Callable[[], dict[str, Any]] | None = None,
        models_fn: Callable[[], Any] | None = None,
        workers: int = 0,
        memory_budget: int | None = None,
        receiver: Literal["inline", "process"] = "inline",
        on_event: EventFn | None = None,
    ) -> None:
        self.settings = settings
        self.limits = settings.zmq
        # Whole-message, frame-count and in-flight bounds from the budget (edged.wire.receive).
        self.receive_limits = ReceiveLimits.derive(settings.zmq, memory_budget)
        self.handler = handler
        self.stats_fn = stats_fn
        self.models_fn = models_fn
        self._context = context or get_context()
        self._endpoint = settings.requests_endpoint
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._closed = True
        self._in_flight = InFlight(self.limits.max_queue, self.receive_limits.queue_bytes)
        self._counts: Counter[str] = Counter()
        self._rebinder = Rebinder(self)
        self._binding: SecureBinding | None = None
        self._link = ReceiverLink(self, on_event) if receiver == "process" else None
        # Frames before the client's envelope: [receiver, b"S"] from a receiver process.
        self._prefix = 0 if self._link is None else 2
        # What the internal socket may carry: a receiver's request has two frames more.
        self._limits_in = self.receive_limits if self._link is None else self._link.limits_in()
        self._pair_name = f"inproc://edged-replies-{next(_ids)}-{id(self)}"

    @property
    def endpoint(self) -> str:
        """The bound endpoint (with the real port when ``tcp://host:*`` was configured)."""
        return self._endpoint

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind (raising ConfigError on a refused or busy endpoint) and start the thread."""
        router = self._context.socket(zmq.ROUTER)
        # LINGER: on stop, give queued replies this long to leave, never block shutdown forever.
        router.linger = self.limits.linger_ms
        # ROUTER_MANDATORY stays off: a reply to a client that vanished is silently dropped.
        try:
            if self._link is not None:
                self._link.prepare(router)
            else:
                self._bind_public(router)
        except BaseException:
            router.close(linger=0)
            raise
        self._router = router
        self._pair_in = self._context.socket(zmq.PAIR)
        # The reply pipe is unbounded on purpose: in-flight requests are already bounded by
        # max_queue, and a full pipe would block a worker thread inside send.
        self._pair_in.rcvhwm = 0
        self._pair_in.bind(self._pair_name)
        self._pair_out = self._context.socket(zmq.PAIR)
        self._pair_out.sndhwm = 0
        self._pair_out.linger = 0
        self._pair_out.connect(self._pair_name)
        if self._workers > 0:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="edged-req")
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edged-zmq-server", daemon=True)
        if self._link is not None:
            try:
                self._link.start(self._endpoint, self.limits, self._thread)
            except BaseException:
                self.stop()
                raise
        else:
            self._thread.start()
        log.info("request_server_started", endpoint=self._endpoint, receiver=self._link is not None)

    def _bind_public(self, router: zmq.Socket[Any]) -> None:
        # HWM: bound what one peer can queue in each direction; beyond it libzmq drops
        # (ROUTER never blocks), so a flood costs bounded memory, not an unbounded queue.
        router.rcvhwm = self.limits.hwm
        router.sndhwm = self.limits.hwm
        # Transport hard cap (per frame): above it libzmq drops the peer without buffering the
        # rest. Between max_frame_bytes and the cap the peer gets a `too_large` reply.
        router.maxmsgsize = self.receive_limits.transport_frame_bytes
        self._binding = SecureBinding(router, self._endpoint, self.limits)
        self._endpoint = self._binding.endpoint

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the sockets; later completions are dropped."""
        if self._thread is None:
            return
        with self._send_lock:
            if not self._closed:
                self._pair_out.send(_STOP)
            self._closed = True
        self._thread.join(timeout_s)
        self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._pair_out.close(linger=0)
        if self._binding is not None:
            self._binding.close()
        if self._link is not None:
            self._link.reap(self.limits.linger_ms / 1000 + 2.0)
        self._rebinder.close()
        log.info("request_server_stopped", **self.stats())

    def __enter__(self) -> RequestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Counters, requests in flight and the bytes they hold, the endpoint really bound."""
        return {
            "in_flight": self._in_flight.count,
            "held_bytes": self._in_flight.held_bytes,
            "limits": self.receive_limits.as_dict(),
            "receiver": {"mode": "inline"} if self._link is None else self._link.stats(),
            **self._rebinder.stats(),
            **dict(self._counts),
        }

    def rebind(self, settings: Settings, timeout_s: float = 5.0) -> str | None:
        """Move to ``settings.requests_endpoint`` (SIGHUP); None when bound there, else why
        not (the old endpoint stays bound and ``stats`` says a restart is needed)."""
        return self._rebinder.request(settings, timeout_s)

    # ------------------------------------------------------------ server thread

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._pair_in, zmq.POLLIN)
        try:
            while True:
                timeout = self._rebinder.poll_timeout_ms()
                if self._link is not None:
                    timeout = min(timeout or self._link.poll_ms(), self._link.poll_ms())
                events = dict(poller.poll(timeout))
                if self._pair_in in events and not self._forward_replies():
                    break
                if self._router in events:
                    self._receive_requests()
                self._rebinder.tick()
                if self._link is not None:
                    self._link.tick()
        finally:
            self._router.close()
            self._pair_in.close(linger=0)

    def _forward_replies(self) -> bool:
        """Send completed replies to the ROUTER; False on the stop message."""
        while True:
            try:
                msg = self._pair_in.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if msg == [_STOP]:
                if self._link is not None:
                    self._link.send_stop()
                return False
            if msg == [_REBIND]:
                self._rebinder.apply()
                continue
            outcome, _, held = msg[0].decode().partition("|")
            self._in_flight.done(int(held or 0))
            self._counts[outcome] += 1
            self._send(msg[1:])

    def _receive_requests(self) -> None:
        # Drain what is queued, but give completed replies a turn every few requests.
        for _ in range(16):
            got = receive(self._router, self._limits_in)
            if got is None:
                return
            if self._link is not None and (got := self._link.accept(got)) is None:
                continue  # a message of the receiver process itself
            frames = got.frames
            try:
                if got.refused is not None:
                    self._refuse(got)
                    continue
                self._handle(frames)
            except Exception as exc:  # a bug here must cost one request, not the server
                log.exception("request_bug", error=type(exc).__name__)
                envelope, body = split_envelope(frames, self._prefix)
                rid = peek_id(body[0]) if body else None
                self._reply_now(envelope, rid, Reply.from_error(exc))

    def _refuse(self, got: Received) -> None:
        """One ``too_large`` for a message over the frame or byte bound (already released)."""
        envelope, body = split_envelope(got.frames, self._prefix)
        self._counts["requests"] += 1
        rid = peek_id(body[0]) if body else None
        message = f"{got.refused} (got {got.total_bytes} bytes in {got.frame_count} frames)"
        log.info("request_refused", id=rid, bytes=got.total_bytes, frames=got.frame_count)
        self._reply_now(envelope, rid, Reply.from_error(TooLarge(message)))

    def _handle(self, frames: list[bytes]) -> None:
        envelope, body = split_envelope(frames, self._prefix)
        self._counts["requests"] += 1
        rid, task = peek(body[0]) if body else (None, None)
        # Before decoding: an overloaded daemon should not spend CPU on images it drops.
        busy = self._in_flight.busy(task, sum(len(f) for f in body))
        if busy is not None:
            self._reply_now(envelope, rid, Reply.from_error(busy))
            return
        try:
            request = decode_request(body, self.limits, identity=tuple(envelope))
        except EdgedError as exc:
            log.debug("request_rejected", id=rid, code=exc.wire_code, error=str(exc))
            self._reply_now(envelope, rid, Reply.from_error(exc))
            return
        if request.task in BUILTIN_TASKS:
            self._reply_now(envelope, request.id, self._builtin(request.task))
            return
        held = request_bytes(request)
        busy = self._in_flight.busy(
            request.task, held
        )  # decoded arrays may be bigger than the frames
        if busy is not None:
            self._reply_now(envelope, request.id, Reply.from_error(busy))
            return
        self._dispatch(request, held)

    def _dispatch(self, request: Request, held: int = 0) -> None:
        self._in_flight.add(held)
        release = held
        try:
            if self._executor is not None:
                outcome: Any = self._executor.submit(self.handler, request)
            else:
                outcome = self.handler(request)
        except Exception as exc:  # handler refused synchronously (e.g. Busy from a scheduler)
            self._in_flight.done(release)
            log_failure(request, exc)
            self._reply_now(list(request.identity), request.id, Reply.from_error(exc))
            return
        if isinstance(outcome, Future):
            outcome.add_done_callback(lambda fut: self._complete(request, fut, release))
            return
        self._in_flight.done(release)
        reply = as_reply(request, outcome)
        self._reply_now(list(request.identity), request.id, reply)

    def _builtin(self, task: str) -> Reply:
        if task == "ping":
            return Reply.success(task="ping", version=__version__, protocol=PROTOCOL_VERSION)
        if task == "stats":
            extra = self.stats_fn() if self.stats_fn is not None else {}
            return Reply.success(task="stats", stats={"server": self.stats(), **extra})
        if self.models_fn is None:
            return Reply.failure("bad_request", "task 'models' is not served by this endpoint")
        return Reply.success(task="models", models=self.models_fn())

    def _reply_now(self, envelope: list[bytes], rid: str | None, reply: Reply) -> None:
        reply, body = self._encoded(reply, rid)
        self._count(reply)
        self._send([*envelope, *body])

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # HWM reached for that peer: drop, as PUB would
            self._counts["dropped_replies"] += 1
            log.warning("reply_dropped", error=str(exc))

    def _count(self, reply: Reply) -> None:
        self._counts[outcome_name(reply)] += 1

    # ------------------------------------------------------------ any thread

    def _complete(self, request: Request, future: Future[Any], held: int = 0) -> None:
        """Done-callback: encode on the finishing thread, hand the frames to the server."""
        try:
            reply, body = self._encoded(as_reply(request, future.result()), request.id)
        except CancelledError:
            reply = Reply.failure("internal", "request cancelled (shutting down?)")
            body = reply.to_frames(request.id)
        except Exception as exc:  # the client gets its one reply whatever failed
            log_failure(request, exc)
            reply = Reply.from_error(exc)
            body = reply.to_frames(request.id)
        # Frame 0 is the outcome and the bytes the request held, counted by the server thread
        # (the counters are not shared).
        outcome = f"{outcome_name(reply)}|{held}".encode()
        frames = [outcome, *request.identity, *body]
        with self._send_lock:
            if not self._closed:
                self._pair_out.send_multipart(frames)

    def _encoded(self, reply: Reply, rid: str | None) -> tuple[Reply, list[bytes]]:
        body = reply.to_frames(rid)
        return (reply, body) if self._link is None else self._link.bounded(reply, body, rid)
