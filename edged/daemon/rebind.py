"""SIGHUP with a changed request endpoint: rebind the running ROUTER, or say why not.

The new endpoint is bound on the same ROUTER socket by the server thread (the only thread
that may touch it), so nothing queued is lost. With a receiver process (the daemon's
default, edged.daemon.receiver) that ROUTER is the receiver's: the server thread asks it to
bind (``ReceiverLink.bind``) and its answer completes the move (``bound``); a receiver
restarted later binds the endpoint bound last, with the settings it was bound with. The old endpoint stays bound until no
request is in flight (``zmq_unbind`` closes the connections accepted on it, and with them
the replies still owed) or for at most ``DRAIN_S``. When the new endpoint cannot be bound
here (a CURVE change needs new socket options; the port is taken; the policy refuses it),
the old one stays bound and ``stats`` says so: ``endpoint`` is always what is really bound
and ``restart_needed`` says why the configured one is not.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from edged.errors import EdgedError
from edged.log import get_logger
from edged.wire.security import SecureBinding, is_tcp

if TYPE_CHECKING:
    from edged.config import Settings, ZmqSettings
    from edged.daemon.server import RequestServer

log = get_logger("zmq.server")

DRAIN_S = 10.0
"""How long the old endpoint stays bound for replies still owed to its clients."""

__all__ = ["DRAIN_S", "Rebinder"]


def _curve(endpoint: str, settings: ZmqSettings) -> tuple[Any, ...] | None:
    if not is_tcp(endpoint) or settings.curve_secret_key_file is None:
        return None
    return (settings.curve_secret_key_file, settings.curve_allowed_clients_dir)


class Rebinder:
    """The rebind state of one ``RequestServer`` (see the module docstring)."""

    def __init__(self, server: RequestServer) -> None:
        self._server = server
        self._configured = server.settings.requests_endpoint
        self._zmq = server.settings.zmq
        self._pending: Settings | None = None
        self._result: str | None = None
        self._done = threading.Event()
        self._draining: str | None = None
        self._draining_binding: SecureBinding | None = None  # inline only
        self._drain_until = 0.0
        self.restart_needed: str | None = None

    @property
    def zmq_settings(self) -> ZmqSettings:
        """The zmq settings the bound endpoint was bound with."""
        return self._zmq

    def stats(self) -> dict[str, Any]:
        draining = self._draining
        return {
            "endpoint": self._server.endpoint,
            "configured_endpoint": self._configured,
            "restart_needed": self.restart_needed,
            "draining_endpoint": draining,
        }

    # ------------------------------------------------------------ caller's thread

    def request(self, settings: Settings, timeout_s: float) -> str | None:
        wanted = settings.requests_endpoint
        if wanted == self._configured:
            return None
        self._configured = wanted
        old_curve = _curve(self._server.endpoint, self._zmq)
        if old_curve != _curve(wanted, settings.zmq):
            return self._keep(wanted, "its CURVE settings differ from the bound endpoint's")
        server = self._server
        with server._send_lock:
            if server._closed:
                return self._keep(wanted, "the request server is not running")
            self._pending, self._result = settings, None
            self._done.clear()
            server._pair_out.send(b"\x00rebind")
        if not self._done.wait(timeout_s):
            return self._keep(wanted, f"the server thread did not rebind within {timeout_s} s")
        return self._result

    def _keep(self, wanted: str, why: str) -> str:
        self.restart_needed = (
            f"requests stay on {self._server.endpoint}, not {wanted}: {why}; "
            "restart edged to move them"
        )
        log.error("request_endpoint_not_moved", reason=self.restart_needed)
        return self.restart_needed

    # ------------------------------------------------------------ server thread

    def apply(self) -> None:
        server, settings = self._server, self._pending
        assert settings is not None
        wanted = settings.requests_endpoint
        link = server._link
        if link is not None:
            if not link.bind(settings):
                self.bound(settings, None, "the receiver process is restarting")
            return  # its answer calls bound()
        try:
            binding = SecureBinding(server._router, wanted, settings.zmq)
        except EdgedError as exc:
            self.bound(settings, None, str(exc).splitlines()[0])
            return
        old = server._binding
        server._binding = binding
        self.bound(settings, binding.endpoint, None)
        self._draining_binding = old

    def bound(self, settings: Settings, endpoint: str | None, error: str | None) -> None:
        """The outcome of a move: bound at ``endpoint``, or not (``error``)."""
        wanted = settings.requests_endpoint
        if endpoint is None:
            self._result = self._keep(wanted, error or "it could not be bound")
            self._done.set()
            return
        self._retire_draining()
        old = self._server._endpoint
        self._server._endpoint = endpoint
        self._zmq, self.restart_needed, self._result = settings.zmq, None, None
        self._draining, self._drain_until = old, time.monotonic() + DRAIN_S
        log.info("request_endpoint_moved", endpoint=endpoint, old=old)
        self._done.set()

    def poll_timeout_ms(self) -> int | None:
        """How long the server loop may block: short while an old endpoint drains."""
        return None if self._draining is None else 100

    def tick(self) -> None:
        """Unbind the old endpoint once nothing is owed on it (or its drain time is over)."""
        if self._draining is None:
            return
        if self._server._in_flight.count == 0 or time.monotonic() >= self._drain_until:
            self._retire_draining()

    def _retire_draining(self) -> None:
        old, self._draining = self._draining, None
        binding, self._draining_binding = self._draining_binding, None
        if old is None:
            return
        if self._server._link is not None:
            self._server._link.unbind(old)
            return
        try:
            self._server._router.unbind(old)
        except Exception as exc:  # already gone: nothing to release but the binding state
            log.warning("unbind_failed", endpoint=old, error=str(exc))
        if binding is not None:
            binding.close()

    def forget_draining(self) -> None:
        """The receiver process died: its draining endpoint died with it."""
        self._draining = None

    def close(self) -> None:
        """After the ROUTER is closed: release the old binding's ipc file and ZAP."""
        self._draining = None
        binding, self._draining_binding = self._draining_binding, None
        if binding is not None:
            binding.close()
