"""What the segmentation families share: stage timing, their result type, tensor layout helpers.

Every family module exposes ``segment(engine, entry, request, image, timer) -> SegOutput``;
``edged.tasks.segmentation`` turns a ``SegOutput`` into the requested output image.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edged.errors import Cancelled, ModelLoadError
from edged.models.schema import ModelEntry
from edged.runtime.base import Session, TensorSpec

if TYPE_CHECKING:
    from edged.tasks.params import SegmentationParams

Image = npt.NDArray[np.uint8]


class Timer:
    """Accumulates wall time per stage (pre, run, post) in ms; checks for cancellation."""

    def __init__(self, cancel: threading.Event | None = None) -> None:
        self.ms: dict[str, float] = {"pre": 0.0, "run": 0.0, "post": 0.0}
        self._cancel = cancel
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.check()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - t0) * 1e3

    def check(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("segmentation job cancelled")

    def latency(self) -> dict[str, float]:
        total = (time.perf_counter() - self._start) * 1e3
        return {k: round(v, 3) for k, v in {**self.ms, "total": total}.items()}


def class_items(params: SegmentationParams) -> list[str | int] | None:
    """``params.classes`` as a list: a comma string split, one index wrapped; None if unset."""
    value = params.classes
    if value is None:
        return None
    if isinstance(value, str):
        return list(value.split(","))
    if isinstance(value, list):
        return list(value)
    return [value]  # a single index, e.g. --param classes=15


@dataclass
class SegOutput:
    """A family's answer: the combined mask (H x W uint8, 255 = selected) plus extras."""

    mask: Image
    backend: str
    outputs: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def input_spec(session: Session, entry: ModelEntry, index: int = 0) -> TensorSpec:
    """The model input the entry names (default: the ``index``-th one)."""
    if entry.input.name and index == 0:
        for spec in session.inputs:
            if spec.name == entry.input.name:
                return spec
        raise ModelLoadError(f"{entry.name}: the model has no input named {entry.input.name!r}")
    return session.inputs[index]


def output_name(session: Session, entry: ModelEntry) -> str:
    return entry.output.name or session.outputs[0].name


def fixed_hw(spec: TensorSpec, entry: ModelEntry) -> tuple[int, int]:
    """(height, width) of a fixed-size image input, from the catalogue or the model itself."""
    if entry.input.size != "dynamic":
        return entry.input.size
    shape = spec.shape
    dims = shape[1:3] if entry.input.layout == "NHWC" else shape[2:4]
    if len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims):
        return int(dims[0]), int(dims[1])  # type: ignore[arg-type]
    raise ModelLoadError(
        f"{entry.name}: input {spec.name} {shape} has no fixed size; set input.size in the catalogue"
    )


def to_layout(nhwc: npt.NDArray[np.float32], layout: str) -> npt.NDArray[np.float32]:
    """[1, H, W, C] -> the entry's layout, contiguous (runtimes want dense buffers)."""
    if layout == "NCHW":
        return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(nhwc)


def map_2d(output: npt.NDArray[Any], layout: str) -> npt.NDArray[np.float32]:
    """A [1, H, W, C] / [1, C, H, W] output -> H x W x C float32."""
    array = np.asarray(output, dtype=np.float32)
    if array.ndim == 4:
        array = array[0]
        if layout == "NCHW":
            array = array.transpose(1, 2, 0)
    elif array.ndim == 3 and layout == "NHWC":
        array = array[0][:, :, None] if array.shape[0] == 1 else array
    if array.ndim == 2:
        array = array[:, :, None]
    return array
