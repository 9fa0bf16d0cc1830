"""The segmentation task: pick the family module by ``entry.family``, then compose the output.

Families: ``mediapipe-selfie`` (person probability), ``deeplabv3`` (21 VOC classes),
``mobilesam`` (point/box prompts), ``yolov8-seg`` (instances). Each returns a combined mask;
this module turns it into what ``params["output"]`` asks for:

* ``mask``    -- H x W uint8 0..255 (always in ``outputs["mask"]``)
* ``cutout``  -- RGBA, the mask as alpha
* ``overlay`` -- the mask tinted over the image (``params["color"]``, ``params["opacity"]``)
* ``blur``    -- background blurred (``params["radius"]``)
* ``replace`` -- background replaced by ``params["background"]`` (colour)

``meta["primary"]`` names the output a caller should save (``edged infer`` writes it).
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

import numpy as np

from edged import imaging
from edged.errors import BadRequest, ConfigError
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult
from edged.tasks.params import SegmentationParams, params_of
from edged.tasks.seg_common import Image, SegOutput, Timer

if TYPE_CHECKING:
    from edged.engine import Engine

FAMILIES = {
    "mediapipe-selfie": "edged.tasks.seg_selfie",
    "deeplabv3": "edged.tasks.seg_deeplab",
    "mobilesam": "edged.tasks.seg_sam",
    "yolov8-seg": "edged.tasks.seg_yolo",
}
OUTPUTS = ("mask", "cutout", "overlay", "blur", "replace")
GREEN = (0, 255, 0)


def run(
    engine: Engine,
    request: TaskRequest,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TaskResult:
    """Segment ``request.image`` with ``request.model`` (default: the selfie model)."""
    timer = Timer(cancel)
    name = request.model or engine.default_model("segmentation")
    entry = engine.catalog.get(name)
    if entry.task != "segmentation":
        raise BadRequest(f"model {name!r} is a {entry.task} model, not a segmentation one")
    module_name = FAMILIES.get(entry.family)
    if entry.family in ("mobilesam-encoder", "mobilesam-decoder"):
        raise BadRequest(f"{name} is one half of a MobileSAM pair; ask for the pair (mobilesam)")
    if module_name is None:
        raise ConfigError(
            f"model {name!r} has family {entry.family!r}; segmentation knows {', '.join(FAMILIES)}"
        )
    if request.image is None:
        raise BadRequest("segmentation needs an image")
    params = params_of(request, SegmentationParams)
    kind = params.output
    image = imaging.as_rgb(request.image)
    if progress is not None:
        progress(0, 1, f"segmenting with {name}")
    result: SegOutput = importlib.import_module(module_name).segment(
        engine, entry, request, image, timer
    )
    with timer("post"):
        outputs = {"mask": result.mask, **result.outputs}
        if kind != "mask":
            outputs[kind] = compose(kind, image, result.mask, params)
    if progress is not None:
        progress(1, 1, "done")
    return TaskResult(
        task="segmentation",
        model=name,
        backend=result.backend,
        outputs=outputs,
        meta={
            "primary": kind,
            # count_nonzero: a seventh of the time of a boolean mean on a 640x360 mask.
            "coverage": round(np.count_nonzero(result.mask >= 128) / result.mask.size, 4),
            **result.meta,
        },
        latency_ms=timer.latency(),
    )


def compose(kind: str, image: Image, mask: Image, params: SegmentationParams) -> Image:
    """The composite ``kind`` of ``image`` and ``mask`` (see the module docstring)."""
    if kind == "cutout":
        return imaging.cutout(image, mask)
    if kind == "overlay":
        return imaging.overlay(image, mask, params.color or GREEN, params.opacity)
    if kind == "blur":
        radius = params.radius if params.radius is not None else max(image.shape[:2]) / 40
        return imaging.blur_background(image, mask, int(min(max(radius, 3), 201)))
    if kind == "replace":
        return imaging.replace_background(image, mask, params.background or GREEN)
    return np.asarray(mask)
