"""Thread supervision: a source thread that dies is reported, restarted, or declared dead.

Every source (inbox, camera, stream, file) runs its body under a ``Supervised`` thread. When
the body raises, the failure is logged once with its traceback and reported as ``failed``
(the service publishes it as ``events.stream``); the body is started again after a capped
exponential backoff (``restarting``). More than ``MAX_RESTARTS`` failures within
``RESTART_WINDOW_S`` means it will not recover by itself: it stays ``failed`` with
``dead = True``, and the service stops petting the systemd watchdog so that systemd restarts
the whole unit (like frigate's MAX_RESTARTS for its camera processes).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edged.log import get_logger

if TYPE_CHECKING:
    from edged.config import ServiceSettings

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "Supervised", "SupervisedSource"]

log = get_logger("supervise")

MAX_RESTARTS = 5
"""Restarts allowed within ``RESTART_WINDOW_S``; one more failure and the thread is dead."""
RESTART_WINDOW_S = 120.0

Report = Callable[[str, dict[str, Any]], None]
"""``(state, data)`` with state ``failed`` or ``restarting``."""


class Supervised:
    """Runs ``body`` in a daemon thread; restarts it with backoff when it raises.

    ``body`` returning normally (stopped, ended) ends the thread. ``stop`` is the owner's stop
    event: a failure while stopping is not restarted.
    """

    def __init__(
        self,
        name: str,
        body: Callable[[], None],
        report: Report,
        stop: threading.Event,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 5.0,
        max_restarts: int = MAX_RESTARTS,
        window_s: float = RESTART_WINDOW_S,
    ) -> None:
        self.name = name
        self._body = body
        self._report = report
        self._stop = stop
        self._initial = backoff_initial_s
        self._max = backoff_max_s
        self._max_restarts = max_restarts
        self._window = window_s
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.restarts = 0
        self.dead = False
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = {"restarts": self.restarts}
        if self.error is not None:
            data["error"] = self.error
        if self.dead:
            data["dead"] = True
        return data

    def _run(self) -> None:
        failures: deque[float] = deque()
        while True:
            try:
                self._body()
                return
            except Exception as exc:  # the one boundary where any failure is caught
                if self._stop.is_set():
                    return
                delay = self._failed(exc, failures)
            if delay is None or self._stop.wait(delay):
                return
            self.restarts += 1

    def _failed(self, exc: Exception, failures: deque[float]) -> float | None:
        """Report the failure; the backoff before the next attempt, None when it is dead."""
        now = time.monotonic()
        failures.append(now)
        while failures and now - failures[0] > self._window:
            failures.popleft()
        self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("thread died", thread=self.name, error=self.error, exc_info=exc)
        if len(failures) > self._max_restarts:
            self.dead = True
            self._report(
                "failed", {"error": self.error, "restarts": self.restarts, "recoverable": False}
            )
            log.critical("thread will not be restarted", thread=self.name, failures=len(failures))
            return None
        delay = min(self._max, self._initial * 2.0 ** (len(failures) - 1))
        self._report("failed", {"error": self.error, "restarts": self.restarts})
        self._report("restarting", {"attempt": len(failures), "delay_s": round(delay, 3)})
        return delay


class SupervisedSource:
    """What every source (camera/stream/file, image, inbox) does with its thread: a stop
    event and its body ``Supervised`` with the service's reconnect backoff; ``start``,
    ``stop`` and ``dead`` for the ``Source`` protocol."""

    def _supervise(
        self, thread: str, body: Callable[[], None], report: Report, service: ServiceSettings
    ) -> None:
        self._stop = threading.Event()
        self._thread = Supervised(
            thread,
            body,
            report,
            self._stop,
            backoff_initial_s=service.reconnect_initial_s,
            backoff_max_s=service.reconnect_max_s,
        )

    @property
    def dead(self) -> bool:
        """Its thread failed beyond its restarts (the watchdog then stops)."""
        return self._thread.dead

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        # A read blocked inside FFmpeg ends at its read timeout; the thread is a daemon, so a
        # wedged driver cannot hold shutdown hostage.
        self._stop.set()
        self._thread.join(timeout)
