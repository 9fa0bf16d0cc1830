"""Warm-up before ``READY=1``: each configured model loaded (and warmed) once per copy the
streams will run side by side; a model that fails is published and skipped, not fatal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edged.config import Settings
from edged.engine import Engine, replica
from edged.errors import EdgedError
from edged.log import get_logger

__all__ = ["copies", "warm_up"]

log = get_logger("service")


def copies(engine: Engine, settings: Settings, model: str) -> int:
    """How many copies of ``model`` streams run side by side (their largest ``parallel``)."""
    counts = [1]
    for stream in settings.streams:
        try:
            used = stream.model or engine.default_model(stream.task)
        except EdgedError:  # the stream reports that itself when it starts
            continue
        if used == model:
            counts.append(stream.parallel)
    return max(counts)


def warm_up(
    engine: Engine,
    settings: Settings,
    models: list[str],
    publish_event: Callable[[str, dict[str, Any]], None],
) -> None:
    """Load (and warm) each model before READY=1, every copy a parallel stream will use."""
    for name in models:
        count = copies(engine, settings, name)
        try:
            for index in range(count):
                with replica(index, count), engine.acquire(name):
                    pass
        except EdgedError as exc:
            log.error("warm-up failed", model=name, error=str(exc))
            publish_event("model", {"model": name, "state": "failed", "error": str(exc)})
            continue
        log.info("warmed up", model=name)
