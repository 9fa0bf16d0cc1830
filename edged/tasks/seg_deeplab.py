"""DeepLabV3 (MobileNetV2, 257 x 257, 21 PASCAL VOC classes): class map + per-class masks.

The frame is stretched to the model input and scaled to the entry's input range
((x - 127.5) / 127.5 for the TF-hosted model). Outputs:

* ``classes`` -- H x W uint8 class index (argmax at model resolution, nearest-upsampled);
* ``masks``   -- K x H x W uint8, one per selected class (``params["classes"]``, default
  ``person``): the class's logit margin over the best other class, bilinearly upsampled and
  thresholded at 0 -- smooth edges without ever holding 21 full-size logit planes in memory;
* ``mask``    -- the union of the selected classes.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from edged.engine import Engine
from edged.errors import BadRequest
from edged.imaging import resize, resize_float
from edged.models.schema import ModelEntry
from edged.tasks.base import TaskRequest
from edged.tasks.params import SegmentationParams, params_of
from edged.tasks.seg_common import (
    Image,
    SegOutput,
    Timer,
    class_items,
    fixed_hw,
    input_spec,
    map_2d,
    output_name,
    to_layout,
)


def select_classes(params: SegmentationParams, labels: list[str], default: int) -> list[int]:
    """``params.classes`` as names or indices (list or comma string) -> class indices."""
    items = class_items(params)
    if items is None:
        return [default]
    chosen: list[int] = []
    for item in items:
        text = str(item).strip()
        if text == "all":
            return [i for i in range(len(labels)) if i != 0]
        if text.isdigit() and int(text) < len(labels):
            chosen.append(int(text))
        elif text in labels:
            chosen.append(labels.index(text))
        else:
            raise BadRequest(f"unknown class {text!r}; one of {', '.join(labels)} (or 'all')")
    return chosen


def class_masks(
    logits: npt.NDArray[np.float32], chosen: list[int], shape: tuple[int, int]
) -> Image:
    """K x H x W masks: where each chosen class beats every other class after upsampling."""
    masks = np.zeros((len(chosen), *shape), np.uint8)
    for k, c in enumerate(chosen):
        others = np.delete(logits, c, axis=2).max(axis=2)
        margin = resize_float(logits[:, :, c] - others, shape)
        masks[k] = np.where(margin > 0.0, 255, 0).astype(np.uint8)
    return masks


def segment(
    engine: Engine, entry: ModelEntry, request: TaskRequest, image: Image, timer: Timer
) -> SegOutput:
    labels = [str(x) for x in entry.params.get("labels", [str(i) for i in range(21)])]
    chosen = select_classes(
        params_of(request, SegmentationParams), labels, int(entry.params.get("person", 15))
    )
    shape = (image.shape[0], image.shape[1])
    with engine.acquire(entry.name, backend=request.backend) as loaded:
        session = loaded.session
        spec = input_spec(session, entry)
        with timer("pre"):
            small = resize(image, fixed_hw(spec, entry)).astype(np.float32)
            lo, hi = entry.input.range
            tensor = to_layout(
                (small * np.float32((hi - lo) / 255.0) + np.float32(lo))[None], entry.input.layout
            )
        with timer("run"):
            raw = session.run({spec.name: tensor})[output_name(session, entry)]
        backend = loaded.backend
    with timer("post"):
        logits = map_2d(raw, entry.output.layout)
        class_map = np.argmax(logits, axis=2).astype(np.uint8)
        full_map = cv2.resize(class_map, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        masks = class_masks(logits, chosen, shape)
        union = masks.max(axis=0)
    meta = {
        "classes": [labels[c] for c in chosen],
        "present": [labels[c] for c in np.unique(class_map).tolist() if c < len(labels)],
    }
    outputs = {"classes": np.asarray(full_map, np.uint8), "masks": masks}
    return SegOutput(mask=union, backend=backend, outputs=outputs, meta=meta)
