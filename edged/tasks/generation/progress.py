"""A one-line progress display with a time estimate for ``edged infer generation``.

Fed by the pipeline's ``StageProgress`` count (``text_encoder: done``, ``unet: step 2/4
t=499``, ``decoder: tile 3/9``). The units differ in cost (a decoder tile is far cheaper than
a UNet step), so the estimate uses each stage's own mean time per unit once one has been seen,
and the overall mean per unit before that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["ProgressLine"]


class ProgressLine:
    """``progress(done, total, message)`` -> ``\\r[3/9] unet: step 2/4 t=499  12.3 s, ~20 s left``."""

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.last = self.started
        self.spent: dict[str, tuple[float, int]] = {}
        """stage -> (seconds, units) seen so far."""
        self.width = 0

    def __call__(self, done: int, total: int, message: str) -> None:
        now = self.clock()
        stage = message.split(":", 1)[0]
        seconds, units = self.spent.get(stage, (0.0, 0))
        self.spent[stage] = (seconds + now - self.last, units + 1)
        self.last = now
        left = self.estimate(done, total, message)
        text = f"[{done}/{total}] {message}  {now - self.started:.1f} s"
        if left is not None and done < total:
            text += f", ~{left:.0f} s left"
        pad = max(0, self.width - len(text))
        self.width = len(text)
        self.stream.write("\r" + text + " " * pad)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()

    def estimate(self, done: int, total: int, message: str) -> float | None:
        """Seconds left: the remaining units of this stage at its own rate, the rest at the
        overall rate (stages not yet seen have no rate of their own)."""
        if done <= 0:
            return None
        overall = (self.last - self.started) / done
        stage = message.split(":", 1)[0]
        seconds, units = self.spent[stage]
        own = seconds / units if units else overall
        in_stage = _left_in_stage(message)
        return own * in_stage + overall * max(0, total - done - in_stage)

    def close(self) -> None:
        """End an unfinished line (an error or cancel mid-request)."""
        if self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def _left_in_stage(message: str) -> int:
    """Units of the message's stage still to come: ``step 2/4`` -> 2, ``tile 9/9`` -> 0."""
    for word in message.split():
        head, sep, tail = word.partition("/")
        if sep and head.isdigit() and tail.isdigit():
            return max(0, int(tail) - int(head))
    return 0
