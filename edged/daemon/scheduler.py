"""Bounded job queues and the worker threads that run them through the engine.

One queue per stream plus one for requests. Workers pick requests first (configurable),
then streams round-robin, and run at most ``parallel`` jobs of one stream at once (1 unless
the stream asks for more): a slow stream or a slow model holds at most that many workers, so
the others keep serving. Each running job of a stream holds a replica index (the lowest free
one), set around the job with ``edged.engine.replica`` so that jobs running side by side use
their own copies of the model. Live streams drop their oldest queued frame when full
(counted); files and inboxes wait for room instead.

Every job is a ``concurrent.futures.Future``: the caller attaches done-callbacks; a job
that is dropped or handed back (shutdown, stream removed) ends *cancelled*, never lost.
The scheduler's ``last_progress`` is what the service's watchdog trusts.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from edged.engine import replica
from edged.errors import Busy, Cancelled
from edged.log import get_logger
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult

log = get_logger("scheduler")

RunFn = Callable[[TaskRequest, ProgressFn, threading.Event], TaskResult]
"""``(request, progress, cancel) -> result``; normally ``Engine.run``."""
OnProgress = Callable[["Job", int, int, str], None]
"""``(job, step, total, message)``: a running job reported a step (e.g. generation)."""

CANCEL_GRACE_S = 2.0
"""After the drain time, how long cancelled jobs get to notice their cancel event."""
REQUESTS = ""
"""Queue name of requests (stream names are never empty)."""


@dataclass(eq=False)
class Job:
    """One unit of work; ``future`` resolves to the ``TaskResult`` or the error."""

    request: TaskRequest
    stream: str = REQUESTS
    seq: int = 0
    captured_at: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)
    future: Future[TaskResult] = field(default_factory=Future)
    cancel: threading.Event = field(default_factory=threading.Event)
    started_at: float = 0.0
    """``time.monotonic()`` when a worker took it (0 while queued)."""


@dataclass
class _Queue:
    name: str
    maxsize: int
    drop_oldest: bool
    jobs: deque[Job] = field(default_factory=deque)
    running: int = 0
    done: int = 0
    failed: int = 0
    dropped: int = 0
    closed: bool = False
    parallel: int = 1
    replicas: set[int] = field(default_factory=set)

    def may_start(self) -> bool:
        """A job is queued and (streams) fewer than ``parallel`` of ours are running."""
        return bool(self.jobs) and (self.name == REQUESTS or self.running < self.parallel)

    def claim_replica(self) -> tuple[int, int]:
        """``(index, count)`` for a job starting now; under the scheduler's lock.

        Requests share the one default copy (the pool serialises its users); a stream's jobs
        take the lowest index none of its running jobs holds.
        """
        if self.name == REQUESTS:
            return 0, 1
        index = min(set(range(self.parallel)) - self.replicas)
        self.replicas.add(index)
        return index, self.parallel

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self.jobs),
            "running": self.running,
            "done": self.done,
            "failed": self.failed,
            "dropped": self.dropped,
        }


class Scheduler:
    """Worker pool over bounded per-stream queues and one request queue."""

    def __init__(
        self,
        run: RunFn,
        *,
        workers: int = 2,
        request_queue: int = 64,
        requests_first: bool = True,
        on_progress: OnProgress | None = None,
    ) -> None:
        self._run = run
        self._on_progress = on_progress
        self._requests_first = requests_first
        self._cond = threading.Condition()
        self._queues: dict[str, _Queue] = {REQUESTS: _Queue(REQUESTS, request_queue, False)}
        # Rotation of queues served after (or, when requests are not first, with) requests.
        self._rr: deque[str] = deque() if requests_first else deque([REQUESTS])
        self._threads = [
            threading.Thread(target=self._worker, name=f"edged-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        self._running_jobs: set[Job] = set()
        self._stopping = False
        self.last_progress = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> bool:
        """Hand back every queued job, let running ones finish for ``timeout`` s, then cancel.

        Returns True when every running job finished in time.
        """
        with self._cond:
            self._stopping = True
            for queue in self._queues.values():
                self._hand_back(queue)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            stuck = list(self._running_jobs)
        for job in stuck:
            job.cancel.set()  # tasks that check it (generation) stop at the next step
            # Answer now (a request's client gets its one reply before the socket closes);
            # the worker's late result, if any, is discarded.
            with contextlib.suppress(InvalidStateError):
                job.future.set_exception(
                    Cancelled(f"shutting down: the job did not finish within {timeout:g} s")
                )
        still = stuck
        if stuck:
            # Cooperative tasks (generation) raise Cancelled at their next step: a short grace
            # lets them end so the engine closes normally instead of the process leaving
            # through os._exit under native code.
            with self._cond:
                self._cond.wait_for(lambda: not self._running_jobs, CANCEL_GRACE_S)
                still = list(self._running_jobs)
            log.warning("jobs still running at shutdown", count=len(still), cancelled=len(stuck))
        return not still

    # ------------------------------------------------------------------ queues

    def add_stream(self, name: str, *, maxsize: int, drop_oldest: bool, parallel: int = 1) -> None:
        """``parallel``: how many of this stream's jobs may run at once (each on its replica)."""
        if parallel < 1:
            raise ValueError(f"stream {name!r}: parallel must be >= 1 (got {parallel})")
        with self._cond:
            if name in self._queues:
                raise ValueError(f"stream {name!r} already scheduled")
            self._queues[name] = _Queue(name, maxsize, drop_oldest, parallel=parallel)
            self._rr.append(name)

    def remove_stream(self, name: str) -> None:
        """Forget a stream; its queued jobs are handed back (cancelled)."""
        with self._cond:
            queue = self._queues.pop(name, None)
            if queue is None:
                return
            queue.closed = True
            self._rr.remove(name)
            self._hand_back(queue)
            self._cond.notify_all()

    def submit(self, job: Job, *, timeout: float | None = None) -> bool:
        """Queue a job. Requests: ``Busy`` when full. Live streams: drop the oldest queued
        frame. File streams: wait up to ``timeout`` for room; False if none came (or stopping).
        """
        with self._cond:
            queue = self._queues.get(job.stream)
            if queue is None or queue.closed or self._stopping:
                if job.stream == REQUESTS:
                    raise Busy("the daemon is shutting down; retry after it restarts")
                return False
            if len(queue.jobs) >= queue.maxsize:
                if job.stream == REQUESTS:
                    raise Busy(
                        f"request queue full ({queue.maxsize}); retry later or raise zmq.max_queue"
                    )
                if queue.drop_oldest:
                    queue.jobs.popleft().future.cancel()
                    queue.dropped += 1
                else:
                    self._cond.wait_for(
                        lambda: len(queue.jobs) < queue.maxsize or queue.closed or self._stopping,
                        timeout,
                    )
                    if len(queue.jobs) >= queue.maxsize or queue.closed or self._stopping:
                        return False
            queue.jobs.append(job)
            # Workers and blocked submitters share one condition: wake all, let each re-check.
            self._cond.notify_all()
            return True

    def dead_workers(self) -> int:
        """Workers that ended while the scheduler runs (the watchdog is withheld then)."""
        if self._stopping:
            return 0
        return sum(1 for t in self._threads if t.ident is not None and not t.is_alive())

    def has_room(self, stream: str) -> bool:
        with self._cond:
            queue = self._queues.get(stream)
            return queue is not None and len(queue.jobs) < queue.maxsize

    def stats(self) -> dict[str, Any]:
        with self._cond:
            streams = {n: q.stats() for n, q in self._queues.items() if n != REQUESTS}
            return {
                "requests": self._queues[REQUESTS].stats(),
                "streams": streams,
                "workers": len(self._threads),
                "busy_workers": len(self._running_jobs),
                "last_progress_age_s": round(time.monotonic() - self.last_progress, 3),
            }

    # ------------------------------------------------------------------ workers

    def _hand_back(self, queue: _Queue) -> None:
        while queue.jobs:
            queue.jobs.popleft().future.cancel()

    def _pick(self) -> tuple[_Queue, Job] | None:
        requests = self._queues[REQUESTS]
        if self._requests_first and requests.jobs:
            return requests, requests.jobs.popleft()
        # Round-robin; a stream with `parallel` jobs already running waits, so one stream
        # never holds more workers than that (requests may use them all).
        for name in list(self._rr):
            queue = self._queues[name]
            if queue.may_start():
                self._rr.remove(name)
                self._rr.append(name)
                return queue, queue.jobs.popleft()
        return None

    def _worker(self) -> None:
        while True:
            with self._cond:
                picked = self._pick()
                while picked is None:
                    if self._stopping:
                        return
                    # The timeout doubles as the idle heartbeat the watchdog relies on.
                    self._cond.wait(0.5)
                    self.last_progress = time.monotonic()
                    picked = self._pick()
                queue, job = picked
                self._cond.notify_all()  # room in the queue: wake a file source waiting on it
                if not job.future.set_running_or_notify_cancel():
                    continue
                queue.running += 1
                job.started_at = time.monotonic()
                index, count = queue.claim_replica()
                self._running_jobs.add(job)
            with replica(index, count):
                ok = self._execute(job)
            with self._cond:
                queue.running -= 1
                queue.replicas.discard(index)
                self._running_jobs.discard(job)
                queue.done += ok
                queue.failed += not ok
                self.last_progress = time.monotonic()
                self._cond.notify_all()

    def _execute(self, job: Job) -> bool:
        def progress(step: int, total: int, message: str) -> None:
            self.last_progress = time.monotonic()  # long jobs prove liveness step by step
            if self._on_progress is not None:
                self._on_progress(job, step, total, message)

        try:
            result = self._run(job.request, progress, job.cancel)
        except Exception as exc:  # every failure belongs to the job's future
            with contextlib.suppress(InvalidStateError):  # already answered by stop()
                job.future.set_exception(exc)
            return False
        with contextlib.suppress(InvalidStateError):
            job.future.set_result(result)
        return True
