"""Glue between one configured ``[[streams]]`` entry, its source and the scheduler.

A frame becomes a ``Job``; when the job ends its result is published (``{stream}.{task}``),
and a source that owns its input (the inbox) is told whether to complete, fail or take the
input back. With ``parallel > 1`` jobs of the stream end out of order; ``edged.daemon.ordering``
settles them in capture order all the same. Source state changes become ``events.stream``
events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edged.config import ServiceSettings, StreamSettings, ZmqSettings
from edged.daemon.inbox import InboxSource
from edged.daemon.ordering import InOrder
from edged.daemon.scheduler import Job, Scheduler
from edged.daemon.sources import CaptureSource, Frame, ImageSource, Source, source_kind
from edged.errors import Cancelled
from edged.log import get_logger
from edged.tasks.base import TaskRequest, TaskResult

log = get_logger("streams")

PublishResult = Callable[[str, int, TaskResult, float], None]
"""``(stream, seq, result, captured_at)``."""
PublishEvent = Callable[[str, dict[str, Any]], None]
"""``(name, data)``: published on ``events.{name}``."""


class StreamRunner:
    """One stream: builds its source, feeds the scheduler, routes results."""

    def __init__(
        self,
        cfg: StreamSettings,
        service: ServiceSettings,
        scheduler: Scheduler,
        publish_result: PublishResult,
        publish_event: PublishEvent,
        *,
        outbox_dir: Path | None = None,
        limits: ZmqSettings | None = None,
    ) -> None:
        self.cfg = cfg
        self.kind = source_kind(cfg.source)
        self.live = self.kind in ("camera", "stream")
        self._scheduler = scheduler
        self._publish_result = publish_result
        self._publish_event = publish_event
        self._errors = 0
        self._lock = threading.Lock()
        self._order = InOrder(cfg.name)
        # Dropped files obey the same size and pixel limits as requests.
        self._limits = limits or ZmqSettings()
        self.source = self._build_source(service, outbox_dir)

    def _build_source(self, service: ServiceSettings, outbox_dir: Path | None) -> Source:
        if self.kind == "inbox":
            outbox = outbox_dir / self.cfg.name if outbox_dir else None
            return InboxSource(
                self.cfg,
                service,
                self._deliver,
                self._on_state,
                outbox=outbox,
                has_room=lambda: self._scheduler.has_room(self.cfg.name),
                max_bytes=self._limits.max_frame_bytes,
                max_pixels=self._limits.max_pixels,
            )
        if self.kind == "image":
            return ImageSource(self.cfg, self._deliver, self._on_state, service)
        return CaptureSource(self.cfg, service, self._deliver, self._on_state)

    def start(self, queue_size: int) -> None:
        self._scheduler.add_stream(
            self.cfg.name, maxsize=queue_size, drop_oldest=self.live, parallel=self.cfg.parallel
        )
        self.source.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Forget the queue (queued inbox files go back to the inbox), then stop reading.

        Closing the queue first also releases a file source blocked waiting for room. Frames
        held for an earlier one are settled then; jobs still running settle when they end.
        """
        self._scheduler.remove_stream(self.cfg.name)
        self.source.stop(timeout)
        self._order.close()

    def stats(self) -> dict[str, Any]:
        return {**self.source.stats(), "task": self.cfg.task, "errors": self._errors}

    @property
    def dead(self) -> bool:
        """The source's thread failed beyond its restarts: only a process restart helps."""
        return self.source.dead

    def _deliver(self, frame: Frame) -> bool:
        request = TaskRequest(
            task=self.cfg.task,
            model=self.cfg.model,
            image=frame.image,
            params=dict(self.cfg.params),
        )
        job = Job(
            request,
            stream=self.cfg.name,
            seq=frame.seq,
            captured_at=frame.captured_at,
            meta=frame.meta,
        )
        slot = self._order.open()
        job.future.add_done_callback(
            lambda fut: self._order.settle(slot, lambda: self._done(frame, job, fut))
        )
        accepted = False
        try:
            # Live frames never wait (the queue drops its oldest); files wait for room.
            accepted = self._scheduler.submit(job, timeout=0 if self.live else None)
        finally:
            if not accepted:  # its future never resolves: free its place in the line
                self._order.settle(slot, _nothing)
        return accepted

    def _done(self, frame: Frame, job: Job, fut: Future[TaskResult]) -> None:
        # Runs inside a future callback, where an exception would vanish without a trace.
        try:
            self._settle(frame, job, fut)
        except Exception as exc:
            log.error("stream result handling failed", stream=self.cfg.name, exc_info=exc)
            self._publish_event(
                "job", {"stream": self.cfg.name, "seq": job.seq, "ok": False, "error": repr(exc)}
            )
            if frame.ticket is not None:
                frame.ticket.fail(exc)  # a no-op when the ticket already ended

    def _settle(self, frame: Frame, job: Job, fut: Future[TaskResult]) -> None:
        ticket = frame.ticket
        error = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or isinstance(error, Cancelled):
            # Dropped, handed back, or interrupted by shutdown: not the input's fault.
            if ticket is not None:
                ticket.hand_back()
            return
        if error is not None:
            with self._lock:
                self._errors += 1
                first = self._errors == 1
            log.warning("stream job failed", stream=self.cfg.name, seq=job.seq, error=str(error))
            if first or ticket is not None:
                self._publish_event(
                    "job",
                    {"stream": self.cfg.name, "seq": job.seq, "ok": False, "error": str(error)},
                )
            if ticket is not None:
                ticket.fail(error)
            return
        result = fut.result()
        if ticket is not None:
            ticket.complete(result)
        if self.cfg.publish:
            self._publish_result(self.cfg.name, job.seq, result, job.captured_at)

    def _on_state(self, state: str, data: dict[str, Any]) -> None:
        self._publish_event("stream", {"stream": self.cfg.name, "state": state, **data})


def _nothing() -> None:
    """The action of a frame the scheduler never accepted: nothing to publish or settle."""
