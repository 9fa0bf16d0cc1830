"""A request from the request server as a scheduler job whose future resolves to its one
``Reply``: paths confined to the model dirs first, every outcome (result, error, cancel on
shutdown, a failed encoding, a full queue) a reply, never an exception."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edged.daemon.confine import confine_paths
from edged.daemon.scheduler import Job, Scheduler
from edged.errors import EdgedError
from edged.log import get_logger
from edged.tasks.base import TaskResult
from edged.wire.protocol import Reply

__all__ = ["submit_request"]

log = get_logger("service")


def submit_request(scheduler: Scheduler, search_path: list[Path], request: Any) -> Future[Any]:
    """Queue ``request`` (a decoded ``wire.protocol.Request``); the future's result is its Reply."""
    reply: Future[Any] = Future()
    try:
        # Generation takes model dirs and decoder files: never outside model_dirs.
        confine_paths(request.task_request, search_path)
    except EdgedError as exc:
        reply.set_result(Reply.from_error(exc))
        return reply
    job = Job(
        request.task_request,
        captured_at=request.received_at,
        meta={"id": request.id, "task": request.task},
    )

    def done(fut: Future[TaskResult]) -> None:
        if fut.cancelled():
            reply.set_result(Reply.failure("busy", "shutting down; retry after restart"))
        elif (exc := fut.exception()) is not None:
            if not isinstance(exc, EdgedError):
                log.error("request failed", id=request.id, error=repr(exc))
            reply.set_result(Reply.from_error(exc))
        else:
            try:
                reply.set_result(Reply.from_result(fut.result(), encoding=request.encoding))
            except Exception as enc_exc:  # the client always gets a reply
                reply.set_result(Reply.from_error(enc_exc))

    job.future.add_done_callback(done)
    try:
        scheduler.submit(job)
    except EdgedError as exc:
        reply.set_result(Reply.from_error(exc))
    return reply
