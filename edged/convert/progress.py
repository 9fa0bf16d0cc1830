"""Stage progress with a time estimate on stderr: ``[k/n] stage ... elapsed, ETA``.

Exports of full-size models take minutes, so a user sees which stage runs, how long the whole
conversion has taken and roughly how long is left. Each stage carries a weight (about its
share of the work: the bytes of parameters it touches); the estimate is the elapsed time per
unit of weight done so far, times the weight left. A heartbeat line repeats every
``heartbeat`` seconds while one long stage runs, so a silent terminal never means a hang.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress", "clock"]


def clock(seconds: float) -> str:
    """``75`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    s = max(0, round(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Announces stages in order; ``with progress.stage(name):`` around each."""

    def __init__(
        self,
        stages: Sequence[tuple[str, float]],
        stream: TextIO | None = None,
        heartbeat: float = 15.0,
    ) -> None:
        self.stages = list(stages)
        self.stream = stream if stream is not None else sys.stderr
        self.heartbeat = heartbeat
        self.started = time.monotonic()
        self._done_weight = 0.0
        self._total = sum(w for _, w in self.stages) or 1.0
        self._index = 0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left, or None before the first stage finished (no rate known yet)."""
        if self._done_weight <= 0:
            return None
        elapsed = (now if now is not None else time.monotonic()) - self.started
        return elapsed / self._done_weight * (self._total - self._done_weight)

    def _line(self, name: str, state: str) -> str:
        elapsed = time.monotonic() - self.started
        eta = self.eta()
        left = f"ETA {clock(eta)}" if eta is not None else "ETA unknown until a stage finishes"
        return f"[{self._index + 1}/{len(self.stages)}] {name}: {state} (elapsed {clock(elapsed)}, {left})"

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one stage; stages must be entered in the order they were declared."""
        expected, weight = self.stages[self._index]
        if expected != name:
            raise RuntimeError(f"stage {name!r} out of order; expected {expected!r}")
        self._say(self._line(name, "started"))
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(name, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
        self._done_weight += weight
        self._say(self._line(name, "done"))
        self._index += 1

    def skip(self, name: str) -> None:
        """A declared stage with nothing to do (its weight counts as done)."""
        expected, weight = self.stages[self._index]
        if expected != name:
            raise RuntimeError(f"stage {name!r} out of order; expected {expected!r}")
        self._done_weight += weight
        self._index += 1

    def _beat(self, name: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat):
            self._say(self._line(name, "working"))

    def finish(self) -> None:
        self._say(f"done in {clock(time.monotonic() - self.started)}")
