"""Settle a stream's frames in capture order though jobs running side by side end out of order.

Each accepted frame opens a slot, in capture order (on its source's thread). When the frame's
job ends, what must happen to it (publish the result, publish the error, fail or hand back the
inbox file) is filed under that slot as an action, and runs once every earlier slot's action
has run. A dropped or cancelled frame files its action at once like any other, so it never
holds later frames back; a frame the scheduler refused files a no-op.

Actions run outside the lock, one at a time: whichever thread files the action that makes the
head of the line ready runs it and every action ready behind it; a thread that files out of
turn returns at once. ``close()`` runs everything filed and stops holding, so a removed stream
(or a stopping daemon) never waits on a slot whose job is still running: its late action runs
as soon as it is filed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edged.log import get_logger

log = get_logger("ordering")

Action = Callable[[], None]


class InOrder:
    """Runs the actions filed under slots ``0, 1, 2, ...`` in slot order (see module doc)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._opened = 0
        self._next = 0  # the slot whose action runs next
        self._filed: dict[int, Action] = {}
        self._draining = False
        self._closed = False

    def open(self) -> int:
        """A new slot behind every slot opened so far."""
        with self._lock:
            slot = self._opened
            self._opened += 1
            return slot

    def settle(self, slot: int, action: Action) -> None:
        """File ``action`` under ``slot``; it runs once every earlier slot has run."""
        with self._lock:
            if slot in self._filed or not 0 <= slot < self._opened:
                raise ValueError(f"{self.name}: slot {slot} is not open")
            self._filed[slot] = action
            if self._draining:
                return  # the thread draining now runs it in its turn
            self._draining = True
        self._drain()

    def close(self) -> None:
        """Run whatever is filed (in slot order) and from now on run actions as they come."""
        with self._lock:
            self._closed = True
            if self._draining:
                return
            self._draining = True
        self._drain()

    def held(self) -> int:
        """Actions filed but waiting for an earlier slot."""
        with self._lock:
            return len(self._filed)

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._take_ready()
                if not batch:
                    self._draining = False
                    return
            for action in batch:
                try:
                    action()
                except Exception as exc:  # one failed publish must not stall the line
                    log.error("settling a frame failed", stream=self.name, error=repr(exc))

    def _take_ready(self) -> list[Action]:
        """Under the lock: the actions that may run now, in order."""
        if self._closed:
            ready = [self._filed.pop(slot) for slot in sorted(self._filed)]
            self._next = max(self._next, self._opened)
            return ready
        ready = []
        while self._next in self._filed:
            ready.append(self._filed.pop(self._next))
            self._next += 1
        return ready
