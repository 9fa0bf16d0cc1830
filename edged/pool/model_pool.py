"""The memory-budgeted model pool: load, measure, pin, evict under a byte budget.

Rules (docs/memory.md has the measurements behind them):
- A model's cost is measured, not guessed: RSS delta around ``loader()`` (load + warm-up)
  and the peak RSS during it, sampled every 5 ms. Both go into an estimate table persisted
  in ``state_dir`` so the next load is predicted from real numbers.
- Loading needs room for the *peak* (about 2x the file for ONNX: protobuf bytes plus packed
  weights); a resident model is charged its steady cost.
- Room is made by evicting idle, unpinned models in LRU order, in one batch with a little
  slack so the next load does not evict again (Roboflow's "evict several to stop flapping").
- Models in use are pinned; configured ``pinned`` keys are never evicted by the LRU.
- A model that cannot fit even alone (or beside the pinned ones) raises
  ``MemoryBudgetExceeded`` at once; one that could fit once in-use models are released waits
  at most ``wait_s`` and then raises ``Busy``. Every wait is bounded: no deadlock.
- Evicted sessions are closed, then ``gc.collect()`` + ``malloc_trim(0)`` give the pages back.
- Jobs reserve their working memory (``reserve``) from the same budget: evicting idle
  models for it, waiting the same bounded time, refused when it cannot fit beside the pinned
  models and the models the job itself holds (``edged.pool.jobs``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from edged.config import Settings
from edged.errors import Busy, Cancelled, ConfigError, MemoryBudgetExceeded
from edged.log import get_logger
from edged.memory import read_cgroup_memory, release_memory, rss_bytes, tune_allocator
from edged.pool.budget import (
    effective_budget,
    job_busy_message,
    job_refusal,
    load_need,
    load_refusal,
    model_busy_message,
)
from edged.pool.estimates import ESTIMATES_FILE, Counters, EstimateTable
from edged.pool.jobs import Job, JobLedger
from edged.pool.measure import measure_load
from edged.pool.slots import Slot, SlotBook, slot_stats

T = TypeVar("T")
log = get_logger(__name__)

EventFn = Callable[[str, dict[str, Any]], None]


def _close_value(value: object) -> None:
    """LoadedModel -> its session's close(); anything else with close() -> close()."""
    target = getattr(value, "session", value)
    close = getattr(target, "close", None)
    if callable(close):
        close()


class ModelPool(Generic[T]):
    """Loaded models under a byte budget; thread-safe; see the module docstring for the rules."""

    def __init__(
        self,
        budget_bytes: int,
        *,
        wait_s: float = 5.0,
        pinned: Collection[str] = (),
        estimates_path: Path | None = None,
        sampler_interval_s: float = 0.005,
        slack: float = 0.05,
        use_wait_s: float = 60.0,
        closer: Callable[[T], None] = _close_value,
        on_event: EventFn | None = None,
        tune_malloc: bool = True,
    ) -> None:
        if budget_bytes <= 0:
            raise ConfigError(f"memory budget must be positive (got {budget_bytes})")
        self.budget = budget_bytes
        self.wait_s = wait_s
        self.use_wait_s = use_wait_s
        self.sampler_interval_s = sampler_interval_s
        self.slack = int(slack * budget_bytes)
        self.estimates = EstimateTable(estimates_path)
        self._closer = closer
        self._on_event = on_event
        self.jobs = JobLedger()  # guarded by self._cond
        self._book: SlotBook[T] = SlotBook(budget_bytes, frozenset(pinned), self.slack, self.jobs)
        self._cond = threading.Condition()
        self._load_lock = threading.RLock()  # one load at a time: deltas stay attributable
        self._tick = itertools.count(1)
        self._n = Counters()
        self._loads_by_key: dict[str, int] = {}
        self._closed = False
        if tune_malloc:
            tune_allocator()
        self._baseline = rss_bytes()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        profile_budget: int | None = None,
        cgroup_max: int | None = None,
        **kwargs: Any,
    ) -> ModelPool[T]:
        """Budget from settings/profile/cgroup (read here if not given); pins, wait, estimate file."""
        if cgroup_max is None:
            cgroup = read_cgroup_memory()
            cgroup_max = cgroup.max if cgroup else None
        budget = effective_budget(settings, profile_budget, cgroup_max)
        return cls(
            budget,
            wait_s=settings.admission_wait_s,
            pinned=settings.pinned_models,
            estimates_path=settings.state_dir / ESTIMATES_FILE,
            **kwargs,
        )

    # ------------------------------------------------------------ public API

    @contextmanager
    def acquire(
        self,
        key: str,
        loader: Callable[[], T],
        *,
        estimate_bytes: int | None = None,
        pinned: bool = False,
        exclusive: bool = True,
    ) -> Iterator[T]:
        """Hold ``key`` resident (loading it with ``loader`` if needed) for the block.

        ``loader`` must return a warmed-up model: its RSS delta is the cost charged.
        ``estimate_bytes`` predicts the resident cost of a model never measured (e.g. its
        file size). ``pinned`` keeps it resident after release. ``exclusive`` serialises
        users of the same model (sessions are thread-compatible, not thread-safe).
        """
        slot = self._admit(key, loader, estimate_bytes, pinned)
        with self._cond:
            self.jobs.hold(key)
        try:
            if exclusive and not slot.use_lock.acquire(timeout=self.use_wait_s):
                raise Busy(f"{key}: in use by other jobs for {self.use_wait_s:.0f} s; retry later")
            try:
                assert slot.value is not None
                yield slot.value
            finally:
                if exclusive:
                    slot.use_lock.release()
        finally:
            with self._cond:
                self.jobs.unhold(key)
            self._release(slot)

    @contextmanager
    def reserve(self, what: str, nbytes: int) -> Iterator[int]:
        """Charge ``nbytes`` of job working memory (``what`` names it) for the block.

        Idle unpinned models are evicted (LRU) to make room; memory held by other jobs or
        models in use is waited for at most ``wait_s`` (then ``Busy``); a reservation that
        cannot fit beside the pinned models and this thread's own models and reservations
        raises ``MemoryBudgetExceeded`` at once. Both messages carry the numbers.
        """
        nbytes = max(0, int(nbytes))
        job, victims = self._admit_job(what, nbytes)
        try:
            self._close(victims, reason=f"room for {what}")
            yield nbytes
        finally:
            with self._cond:
                self.jobs.remove(job)
                self._cond.notify_all()

    def job_room(self) -> tuple[int, int]:
        """(bytes a job could reserve now, evicting idle models; bytes it could ever get)."""
        with self._cond:
            now = self.budget - self._book.used()
            now += sum(s.cost for s in self._book.slots.values() if self._book.evictable(s))
            return max(0, min(now, self._book.job_ceiling())), max(0, self._book.job_ceiling())

    def evict(self, key: str, *, force: bool = False, collect: bool = True) -> bool:
        """Unload ``key`` now if idle (configured pins only with ``force``); else at release.

        ``collect=False`` skips the full ``gc.collect`` (the heap is still trimmed): for a
        caller that evicts often and holds its sessions in no reference cycle (generation's
        staged parts: a closed onnxruntime session is freed by reference counting; measured,
        a collection after such an eviction returned 0 bytes and cost ~30 ms)."""
        with self._cond:
            slot = self._book.slots.get(key)
            if slot is None or slot.loading:
                return False
            if (slot.pinned or key in self._book.pinned) and not force:
                return False
            if slot.users:
                slot.doomed = True
                return False
            self._book.detach(slot)
        self._close([slot], reason="requested", collect=collect)
        return True

    def stats(self) -> dict[str, Any]:
        """Resident models and counters, JSON-able (the daemon's `stats` reply embeds this)."""
        with self._cond:
            ready = [s for s in self._book.slots.values() if not s.loading]
            models = [slot_stats(s, self._book.is_pinned(s)) for s in ready]
            used = self._book.used()
            counters = self._n.as_dict()
            jobs = self.jobs.stats()
        rss = rss_bytes()
        return {
            "budget_bytes": self.budget,
            "resident_bytes": used - jobs["job_bytes"],
            "free_bytes": max(0, self.budget - used),
            "rss_bytes": rss,
            "baseline_rss_bytes": self._baseline,
            "untracked_bytes": rss - self._baseline - used,
            "models": sorted(models, key=lambda m: -int(m["last_used"])),
            **jobs,
            **counters,
        }

    def close(self) -> None:
        """Unload everything idle; models still in use are unloaded when released."""
        with self._cond:
            self._closed = True
            idle = [s for s in self._book.slots.values() if not s.loading and s.users == 0]
            for slot in self._book.slots.values():
                slot.doomed = True
            for slot in idle:
                self._book.detach(slot)
        self._close(idle, reason="shutdown")

    def resident(self) -> list[str]:
        """Keys resident now, least recently used first."""
        with self._cond:
            ready = [s for s in self._book.slots.values() if not s.loading]
            return [s.key for s in sorted(ready, key=lambda s: s.last_used)]

    # ------------------------------------------------------------ admission

    def _admit(
        self, key: str, loader: Callable[[], T], estimate: int | None, pinned: bool
    ) -> Slot[T]:
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while True:
                if self._closed:
                    raise Cancelled("the model pool is closed (shutting down)")
                slot = self._book.slots.get(key)
                if slot is not None and not slot.loading:
                    return self._hit(slot, pinned)
                need, victims = (0, None) if slot is not None else self._plan(key, estimate)
                if victims is not None:
                    break
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise self._busy(key, slot)
            assert victims is not None
            slot = self._reserve(key, need, pinned, victims)
        self._close(victims, reason=f"room for {key}")
        return self._load(slot, loader)

    def _hit(self, slot: Slot[T], pinned: bool) -> Slot[T]:
        slot.users += 1
        slot.hits += 1
        slot.pinned |= pinned
        slot.last_used = next(self._tick)
        self._n.hits += 1
        return slot

    def _need(self, key: str, estimate: int | None) -> int:
        """Bytes to reserve for loading ``key``; MemoryBudgetExceeded if it can never fit.

        A measured peak is trusted. A guess reserves size x LOAD_PEAK_FACTOR capped at the
        room (load it alone) but refuses only at size x MIN_PEAK_FACTOR, so the pessimistic
        factor never refuses a model that would have fitted.
        """
        fixed = [s for s in self._book.slots.values() if not s.loading and self._book.is_pinned(s)]
        room = self.budget - sum(s.cost for s in fixed)
        least, need, how = self.load_need(key, estimate)
        if least > room:
            self._n.refused += 1
            pinned = [s.key for s in fixed]
            raise MemoryBudgetExceeded(
                load_refusal(key, least, how, budget=self.budget, pinned=pinned, room=room)
            )
        return min(need, room)

    def load_need(self, key: str, estimate: int | None) -> tuple[int, int, str]:
        """(least ``acquire`` admits, bytes it reserves, how known) for loading ``key``.

        The least is the measured load peak when ``key`` was measured, else ``estimate``
        (its size) x MIN_PEAK_FACTOR: callers that plan what fits (generation's residency
        and UNet parts) use this so they never choose what the pool would refuse.
        """
        return load_need(self.estimates.get(key), estimate)

    def _plan(self, key: str, estimate: int | None) -> tuple[int, list[Slot[T]] | None]:
        """(bytes to reserve, victims that make room); victims None if it must wait."""
        need = self._need(key, estimate)
        return need, self._book.victims(need)

    # ------------------------------------------------------------ job reservations

    def _admit_job(self, what: str, nbytes: int) -> tuple[Job, list[Slot[T]]]:
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while True:
                if self._closed:
                    raise Cancelled("the model pool is closed (shutting down)")
                ceiling = self._book.job_ceiling()
                if nbytes > ceiling:
                    self.jobs.refused += 1
                    raise MemoryBudgetExceeded(job_refusal(what, nbytes, ceiling, self.budget))
                victims = self._book.victims(nbytes)
                if victims is not None:
                    break
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise self._job_busy(what, nbytes)
            for victim in victims:
                self._book.detach(victim)
            return self.jobs.add(what, nbytes), victims

    def _job_busy(self, what: str, nbytes: int) -> Busy:
        self.jobs.busy += 1
        free, held = max(0, self.budget - self._book.used()), self.jobs.total()
        budget, wait_s = self.budget, self.wait_s
        return Busy(
            job_busy_message(what, nbytes, free=free, budget=budget, wait_s=wait_s, held=held)
        )

    def _busy(self, key: str, loading: Slot[T] | None) -> Busy:
        self._n.busy += 1
        if loading is not None:
            return Busy(f"{key}: still loading after {self.wait_s:.1f} s; retry later")
        in_use = [s.key for s in self._book.slots.values() if s.users]
        return Busy(model_busy_message(key, self.wait_s, self.budget, in_use))

    def _reserve(self, key: str, need: int, pinned: bool, victims: list[Slot[T]]) -> Slot[T]:
        for victim in victims:
            self._book.detach(victim)
        slot: Slot[T] = Slot(key, reserved=need, users=1, pinned=pinned)
        slot.last_used = next(self._tick)
        self._book.slots[key] = slot
        self._n.misses += 1
        return slot

    # ------------------------------------------------------------ load / release

    def _load(self, slot: Slot[T], loader: Callable[[], T]) -> Slot[T]:
        try:
            with self._load_lock:
                measured = measure_load(loader, self.sampler_interval_s)
        except BaseException:
            with self._cond:
                self._book.slots.pop(slot.key, None)
                self._n.load_errors += 1
                self._cond.notify_all()
            release_memory()
            raise
        value, cost, peak, seconds = measured.value, measured.cost, measured.peak, measured.seconds
        self.estimates.observe(slot.key, cost, peak)
        with self._cond:
            if peak > slot.reserved:
                self._n.peak_misses += 1
            slot.value, slot.cost, slot.reserved, slot.loading = value, cost, 0, False
            slot.peak, slot.pss, slot.load_s = peak, measured.pss, seconds
            slot.loads = self._loads_by_key[slot.key] = self._loads_by_key.get(slot.key, 0) + 1
            self._n.loads += 1
            self._n.load_s += seconds
            overflow = self._book.overflow()
            self._cond.notify_all()
        log.info(
            "model_loaded", key=slot.key, bytes=cost, peak_bytes=peak, seconds=round(seconds, 3)
        )
        self._emit("load", {"key": slot.key, "bytes": cost, "peak_bytes": peak, "seconds": seconds})
        self._close(overflow, reason="over budget after load")
        return slot

    def _release(self, slot: Slot[T]) -> None:
        with self._cond:
            slot.users -= 1
            slot.last_used = next(self._tick)
            doomed = slot.doomed and slot.users == 0 and self._book.slots.get(slot.key) is slot
            if doomed:
                self._book.detach(slot)
            self._cond.notify_all()
        if doomed:
            self._close([slot], reason="released after evict/close")

    def _close(self, victims: list[Slot[T]], *, reason: str, collect: bool = True) -> None:
        """Outside the lock: close victims, give the memory back, then free their charge."""
        if not victims:
            return
        for slot in victims:
            if slot.value is not None:
                self._closer(slot.value)
            slot.value = None
        freed = release_memory(collect=collect)
        with self._cond:
            self._book.releasing -= sum(s.cost for s in victims)
            self._n.evictions += len(victims)
            self._cond.notify_all()
        keys = [s.key for s in victims]
        log.info("models_evicted", keys=keys, reason=reason, rss_returned=freed)
        for slot in victims:
            self._emit("evict", {"key": slot.key, "bytes": slot.cost, "reason": reason})

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(event, fields)
