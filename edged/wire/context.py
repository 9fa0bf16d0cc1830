"""The one ``zmq.Context`` of the process.

Every socket in edged (server, publisher, client, subscriber, authenticator) comes from this
context: a context owns I/O threads and the single ZAP handler endpoint, so two contexts
would mean two sets of threads and a ZAP handler that only half of the sockets consult.
"""

from __future__ import annotations

import threading

import zmq

_lock = threading.Lock()


def get_context() -> zmq.Context[zmq.Socket[bytes]]:
    """The process-wide context, created on first use (and again in a forked child)."""
    with _lock:
        # Context.instance() re-creates the singleton when the pid changed (after fork).
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        return ctx


def flush_and_term(timeout_s: float) -> bool:
    """Terminate the context so replies still queued on closed sockets leave the process.

    Closing a socket with LINGER only hands its queue to the I/O thread; if the process then
    exits, a "shutting down" reply queued a moment earlier can be lost. ``term()`` waits for
    that (bounded by each socket's LINGER), but blocks while any socket is still open, so it
    runs in a helper thread joined for at most ``timeout_s``. True if the context terminated.
    """
    ctx = get_context()
    done = threading.Thread(target=ctx.term, name="edged-zmq-term", daemon=True)
    done.start()
    done.join(timeout_s)
    return not done.is_alive()
