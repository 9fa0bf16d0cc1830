"""The tasks' model-side steps, as a public API for code outside the tasks.

Quantization calibrates and gates a model on exactly the tensors its task feeds it; these
functions are those steps, so ``edged.quantization`` never reaches into task modules. They
take the catalogue entry and an open session (any ``Session``, e.g. a ``RecordingSession``
that keeps the feeds) and follow the task's own code path:

- ``segmentation_feed``: an RGB image -> the feed the segmentation family builds.
- ``segmentation_map``: a segmentation model's raw outputs -> H x W x C float scores.
- ``superres_window``: a function from an H x W x C float 0..1 window (Y or RGB, as the
  family takes) to the model's upscaled window, the one the tiler calls.
- ``inpaint_window``: image + hole -> the model's fill of that window, float 0..255.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from edged.models.schema import ModelEntry
    from edged.runtime.base import Array, Session

__all__ = ["inpaint_window", "segmentation_feed", "segmentation_map", "superres_window"]

SEGMENTATION_FEED_FAMILIES = ("mediapipe-selfie", "deeplabv3")
"""Families ``segmentation_feed`` builds feeds for."""


def segmentation_feed(
    entry: ModelEntry, session: Session, image: npt.NDArray[np.uint8]
) -> dict[str, Array]:
    """One RGB image -> ``{input name: tensor}`` as the segmentation family builds it.

    Raises ``ValueError`` for a family outside ``SEGMENTATION_FEED_FAMILIES``.
    """
    from edged import imaging
    from edged.tasks.seg_common import fixed_hw, input_spec, to_layout
    from edged.tasks.seg_selfie import stretch_to_tensor

    spec = input_spec(session, entry)
    size = fixed_hw(spec, entry)
    if entry.family == "mediapipe-selfie":
        tensor = to_layout(stretch_to_tensor(image, size), entry.input.layout)
    elif entry.family == "deeplabv3":
        small = imaging.resize(image, size).astype(np.float32)
        lo, hi = entry.input.range
        scaled = small * np.float32((hi - lo) / 255.0) + np.float32(lo)
        tensor = to_layout(scaled[None], entry.input.layout)
    else:
        raise ValueError(f"no segmentation feed for family {entry.family!r}")
    return {spec.name: tensor}


def segmentation_map(
    entry: ModelEntry, session: Session, outputs: Mapping[str, Any]
) -> npt.NDArray[np.float32]:
    """The entry's output among ``session.run``'s ``outputs`` as H x W x C float32."""
    from edged.tasks.seg_common import map_2d, output_name

    return map_2d(outputs[output_name(session, entry)], entry.output.layout)


def superres_window(
    entry: ModelEntry, session: Session
) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    """H x W x C float 0..1 window -> sH x sW x C float 0..1 through ``session``."""
    from edged.tasks import superres

    fn: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] = superres.tile_fn(
        session, superres.model_layout(entry, session)
    )
    return fn


def inpaint_window(
    entry: ModelEntry,
    session: Session,
    image: npt.NDArray[np.uint8],
    hole: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float32]:
    """The model's fill of ``image`` (any size) where ``hole``, float 0..255, same size."""
    from edged.tasks.inpainting import fill_window, model_io

    filled: npt.NDArray[np.float32] = fill_window(session, model_io(entry, session), image, hole)
    return filled
