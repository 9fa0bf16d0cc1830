"""The request server's admission bound: requests handed to the handler and not yet replied,
and the bytes their decoded arrays hold. Touched by the server thread only."""

from __future__ import annotations

from edged.errors import Busy
from edged.wire.protocol import BUILTIN_TASKS, Request

__all__ = ["InFlight", "request_bytes"]


def request_bytes(request: Request) -> int:
    """What a decoded request holds until its job ends: its arrays (and a little more)."""
    task_request = request.task_request
    arrays = (task_request.image, task_request.mask)
    return 4096 + sum(int(getattr(a, "nbytes", 0)) for a in arrays if a is not None)


class InFlight:
    """At most ``max_queue`` requests in flight, holding at most ``queue_bytes`` together
    (one request alone is always let through the byte bound)."""

    def __init__(self, max_queue: int, queue_bytes: int) -> None:
        self.max_queue = max_queue
        self.queue_bytes = queue_bytes
        self.count = 0
        self.held_bytes = 0

    def busy(self, task: str | None, size: int) -> Busy | None:
        """Busy when the in-flight count or the bytes they hold would pass their bound."""
        if task in BUILTIN_TASKS:
            return None
        if self.count >= self.max_queue:
            return Busy(f"request queue full (zmq.max_queue = {self.max_queue}); retry later")
        if self.count and self.held_bytes + size > self.queue_bytes:
            return Busy(
                f"requests in flight hold {self.held_bytes} bytes; with this one "
                f"({size} bytes) that is over {self.queue_bytes} (1/8 of the "
                "memory budget); retry later"
            )
        return None

    def add(self, held: int) -> None:
        self.count += 1
        self.held_bytes += held

    def done(self, held: int) -> None:
        self.count -= 1
        self.held_bytes -= held
