"""A session wrapper that keeps a copy of every feed: the exact tensors a task sends.

Used by calibration (quantization feeds through the task's own preprocessing) and by
``edged bench latency`` (timing the raw runtime call on exactly what the task ran).
"""

from __future__ import annotations

import numpy as np

from edged.runtime.base import Array, Feeds, Session, TensorSpec


class RecordingSession:
    """Passes calls through to a real session and keeps a copy of every feed it was given."""

    def __init__(self, inner: Session) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.inputs: tuple[TensorSpec, ...] = inner.inputs
        self.outputs: tuple[TensorSpec, ...] = inner.outputs
        self.feeds: list[dict[str, Array]] = []

    def run(self, feeds: Feeds) -> dict[str, Array]:
        self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()

    def resident_bytes(self) -> int | None:
        return self.inner.resident_bytes()
