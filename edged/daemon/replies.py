"""How a request's outcome becomes its one reply: the ROUTER envelope split off the body, a
handler's return value as a ``Reply``, and the log line of a failed request."""

from __future__ import annotations

from typing import Any

from edged.errors import EdgedError
from edged.log import get_logger
from edged.tasks.base import TaskResult
from edged.wire.protocol import Reply, Request

__all__ = ["as_reply", "log_failure", "outcome_name", "split_envelope"]

log = get_logger("zmq.server")


def split_envelope(frames: list[bytes], prefix: int = 0) -> tuple[list[bytes], list[bytes]]:
    """ROUTER frames -> (envelope, body); the first ``prefix`` frames are envelope too (the
    receiver process's route).

    A REQ peer (and a DEALER that imitates it) sends ``[identity, b"", body...]``; a plain
    DEALER sends ``[identity, body...]``. The reply mirrors the envelope, so both work.
    """
    head, rest = frames[:prefix], frames[prefix:]
    if len(rest) > 1 and rest[1] == b"":
        return head + rest[:2], rest[2:]
    return head + rest[:1], rest[1:]


def as_reply(request: Request, outcome: Any) -> Reply:
    """A handler's ``Reply`` or ``TaskResult`` as the reply; anything else is an internal error."""
    if isinstance(outcome, Reply):
        return outcome
    if isinstance(outcome, TaskResult):
        try:
            return Reply.from_result(outcome, encoding=request.encoding)
        except EdgedError as exc:
            return Reply.from_error(exc)
    log.error("handler_bad_return", id=request.id, got=type(outcome).__name__)
    return Reply.failure("internal", "handler returned no result")


def outcome_name(reply: Reply) -> str:
    """The counter a reply adds to: ``ok`` or ``error_CODE``."""
    return "ok" if reply.ok else f"error_{reply.error_code}"


def log_failure(request: Request, exc: BaseException) -> None:
    """A user error at info level (the client got it); anything else with its traceback."""
    if isinstance(exc, EdgedError):
        log.info(
            "request_failed", id=request.id, task=request.task, code=exc.wire_code, error=str(exc)
        )
    else:
        log.error(
            "request_crashed", id=request.id, task=request.task, error=repr(exc), exc_info=exc
        )
