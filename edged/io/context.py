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
