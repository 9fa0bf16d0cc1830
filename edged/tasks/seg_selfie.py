"""MediaPipe selfie segmentation (general 256x256, landscape 144x256): person probability.

Pre/post-processing replicate MediaPipe's own CPU graph (``selfie_segmentation_cpu`` in
mediapipe 0.10.14) so masks agree with it, not just "look right":

* ``ImageToTensorCalculator`` with ``keep_aspect_ratio: false``: the whole frame is
  *stretched* to the tensor by ``cv::warpPerspective(INTER_LINEAR, BORDER_ZERO)`` mapping
  pixel corners (0,0)-(W,H) onto (0,0)-(w,h) -- no half-pixel offset, no anti-aliasing. A
  plain ``cv2.resize`` samples half a pixel elsewhere and loses up to 0.1 IoU on real photos.
* the uint8 warp result is scaled to 0..1 (``output_tensor_float_range {0, 1}``).
* ``TensorsToSegmentationCalculator`` (activation NONE) upsamples the probability to the
  frame with ``cv::resize`` (bilinear). No smoothing: the solution API has no previous mask
  on a single photo.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edged.engine import Engine
from edged.imaging import prob_to_mask, resize_float
from edged.models.schema import ModelEntry
from edged.tasks.base import TaskRequest
from edged.tasks.seg_common import (
    Image,
    SegOutput,
    Timer,
    fixed_hw,
    input_spec,
    map_2d,
    output_name,
    to_layout,
)


def stretch_to_tensor(image: Image, size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """MediaPipe's ImageToTensor (full-frame ROI, no aspect keep): [1, h, w, 3] in 0..1."""
    th, tw = size
    h, w = image.shape[:2]
    warp = np.array([[tw / w, 0.0, 0.0], [0.0, th / h, 0.0]], dtype=np.float64)
    small = cv2.warpAffine(
        image, warp, (tw, th), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return (small.astype(np.float32) * np.float32(1.0 / 255.0))[None]


def segment(
    engine: Engine, entry: ModelEntry, request: TaskRequest, image: Image, timer: Timer
) -> SegOutput:
    with engine.acquire(entry.name, backend=request.backend) as loaded:
        session = loaded.session
        spec = input_spec(session, entry)
        with timer("pre"):
            size = fixed_hw(spec, entry)
            tensor = to_layout(stretch_to_tensor(image, size), entry.input.layout)
        with timer("run"):
            raw = session.run({spec.name: tensor})[output_name(session, entry)]
        backend = loaded.backend
    with timer("post"):
        small = map_2d(raw, entry.output.layout)[:, :, 0]
        prob = np.clip(resize_float(small, image.shape[:2]), 0.0, 1.0)
        mask = prob_to_mask(prob)
    return SegOutput(mask=mask, backend=backend, meta={"model_input": list(size)})
