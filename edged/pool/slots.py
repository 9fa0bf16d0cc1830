"""The pool's books: one ``Slot`` per model (loading, resident, or being released) and what
they charge against the budget, with the LRU choice of what to evict.

``SlotBook`` holds no lock of its own: every method is called under ``ModelPool``'s condition.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edged.pool.jobs import JobLedger

__all__ = ["Slot", "SlotBook", "slot_stats"]

T = TypeVar("T")


@dataclass
class Slot(Generic[T]):
    """The pool's record of one model: loading, resident, or being released."""

    key: str
    value: T | None = None
    cost: int = 0  # charged while resident (measured)
    reserved: int = 0  # held while loading (predicted peak)
    users: int = 0
    pinned: bool = False
    loading: bool = True
    doomed: bool = False  # evict when the last user releases
    last_used: int = 0
    loads: int = 0
    hits: int = 0
    load_s: float = 0.0
    peak: int = 0
    pss: int | None = None
    use_lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def charged(self) -> int:
        return self.cost + self.reserved


def slot_stats(slot: Slot[Any], pinned: bool) -> dict[str, Any]:
    return {
        "key": slot.key,
        "bytes": slot.cost,
        "peak_bytes": slot.peak,
        "pss_bytes": slot.pss,
        "users": slot.users,
        "pinned": pinned,
        "loads": slot.loads,
        "hits": slot.hits,
        "load_seconds": round(slot.load_s, 3),
        "last_used": slot.last_used,
    }


class SlotBook(Generic[T]):
    """Slots by key and the bytes charged: models (cost or reservation), victims still being
    closed, and job reservations (``jobs``)."""

    def __init__(self, budget: int, pinned: frozenset[str], slack: int, jobs: JobLedger) -> None:
        self.budget = budget
        self.pinned = pinned
        self.slack = slack
        self.jobs = jobs
        self.slots: dict[str, Slot[T]] = {}
        self.releasing = 0  # bytes of victims being closed: not free yet

    def is_pinned(self, slot: Slot[T]) -> bool:
        return slot.pinned or slot.key in self.pinned

    def evictable(self, slot: Slot[T]) -> bool:
        return not slot.loading and slot.users == 0 and not self.is_pinned(slot)

    def used(self) -> int:
        return sum(s.charged for s in self.slots.values()) + self.releasing + self.jobs.total()

    def detach(self, slot: Slot[T]) -> None:
        """Remove from the table, keep its bytes charged until it is closed."""
        del self.slots[slot.key]
        self.releasing += slot.cost

    def idle_lru(self) -> list[Slot[T]]:
        """Evictable slots, least recently used first."""
        return sorted(
            (s for s in self.slots.values() if self.evictable(s)), key=lambda s: s.last_used
        )

    def victims(self, need: int) -> list[Slot[T]] | None:
        """Idle models to evict (LRU, with slack) so ``need`` bytes fit; None if they cannot."""
        free = self.budget - self.used()
        if free >= need:
            return []
        victims: list[Slot[T]] = []
        for slot in self.idle_lru():
            if free >= need + self.slack or (free >= need and len(victims) >= 3):
                break
            victims.append(slot)
            free += slot.cost
        return victims if free >= need else None

    def overflow(self) -> list[Slot[T]]:
        """A load that cost more than predicted: detach idle models until back under budget."""
        victims = []
        for slot in self.idle_lru():
            if self.used() <= self.budget:
                break
            self.detach(slot)
            victims.append(slot)
        return victims

    def job_ceiling(self) -> int:
        """What a job of this thread could ever hold (all else released)."""
        held = self.jobs.held_here()
        fixed = sum(s.charged for s in self.slots.values() if self.is_pinned(s) or s.key in held)
        return self.budget - fixed - self.jobs.mine()
