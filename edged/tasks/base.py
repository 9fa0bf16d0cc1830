"""What a task receives and returns, independent of where the job came from.

The daemon (ZeroMQ requests, streams, inbox), ``edged infer`` and the benchmarks all build a
``TaskRequest`` and get a ``TaskResult``; nothing in a task knows about sockets or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""H x W x 3 RGB uint8 (or H x W for masks)."""


@dataclass
class TaskRequest:
    """One job for one task. Images are RGB uint8 H x W x 3; masks are H x W uint8 (255 = hole)."""

    task: str
    model: str | None = None
    image: Image | None = None
    mask: Image | None = None
    points: list[tuple[float, float, int]] = field(default_factory=list)
    """(x, y, label) in image pixels; label 1 = foreground, 0 = background."""
    box: tuple[float, float, float, float] | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    """Force one backend (``onnx:cpu``) instead of the profile's chain."""
    typed_params: Any = field(default=None, repr=False, compare=False)
    """``params`` as the task's ``edged.tasks.params`` model, set by ``run_task``."""


@dataclass
class TaskResult:
    """Named output arrays plus JSON-able metadata and the latency breakdown in ms."""

    task: str
    model: str
    backend: str
    outputs: dict[str, npt.NDArray[Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Keys: pre, run, post, total."""


class ProgressFn(Protocol):
    def __call__(self, step: int, total: int, message: str) -> None: ...
