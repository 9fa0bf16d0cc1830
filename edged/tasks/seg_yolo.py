"""YOLOv8-seg: boxes + instance masks from prototypes, with class-aware NMS.

IO of the Ultralytics ONNX export: ``images`` [1, 3, 640, 640] RGB 0..1, letterboxed with
grey 114 padding centred; ``output0`` [1, 4 + C + M, A] (cx, cy, w, h in input pixels, C class
scores, M mask coefficients per anchor); ``output1`` [1, M, 160, 160] mask prototypes.

Masks are sampled straight from the prototype grid at frame resolution: one bilinear lookup
per frame pixel inside the box (``cv2.remap`` through the inverse letterbox), instead of
Ultralytics' upsample-to-640-then-resize. It is one interpolation instead of two and costs
only the box area, which matters on 1080p frames with many people. The model is AGPL-3.0:
the engine's licence gate refuses it unless ``allowed_licences`` includes it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edged.engine import Engine
from edged.errors import BadRequest, ModelLoadError
from edged.imaging import Letterbox, letterbox
from edged.models.schema import ModelEntry
from edged.tasks.base import TaskRequest
from edged.tasks.params import SegmentationParams, params_of
from edged.tasks.seg_common import Image, SegOutput, Timer, class_items, fixed_hw, input_spec

F32 = npt.NDArray[np.float32]
EDGE_EPS = 1e-3
MAX_WH = 7680.0
"""Class offset for batched NMS (boxes of different classes never overlap), as Ultralytics."""


def nms(boxes: F32, scores: F32, iou: float) -> npt.NDArray[np.intp]:
    """Greedy NMS on xyxy boxes; indices of kept boxes by descending score."""
    order = np.argsort(-scores, kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.intp)


def decode(
    pred: F32,
    num_classes: int,
    *,
    conf: float,
    iou: float,
    max_det: int,
    classes: list[int] | None = None,
) -> tuple[F32, F32, npt.NDArray[np.int32], F32]:
    """[4 + C + M, A] -> (xyxy boxes in input pixels, scores, class ids, mask coefficients)."""
    rows = pred.T
    cls_scores = rows[:, 4 : 4 + num_classes]
    class_ids = np.argmax(cls_scores, axis=1).astype(np.int32)
    scores = cls_scores[np.arange(rows.shape[0]), class_ids]
    keep = scores > conf
    if classes is not None:
        keep &= np.isin(class_ids, classes)
    rows, scores, class_ids = rows[keep], scores[keep], class_ids[keep]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    offset = (class_ids.astype(np.float32) * MAX_WH)[:, None]
    kept = nms(boxes + offset, scores, iou)[:max_det]
    return boxes[kept], scores[kept], class_ids[kept], rows[kept, 4 + num_classes :]


def instance_mask(
    proto_logits: F32, box: F32, lb: Letterbox, stride: float, shape: tuple[int, int]
) -> Image:
    """One instance's mask at frame size: prototypes sampled through the inverse letterbox.

    Frame pixel centre ``u + 0.5`` sits at ``(u + 0.5) * scale + pad`` in the model input and
    at that / ``stride`` - 0.5 in prototype index space. Pixels outside the box are 0, as in
    Ultralytics' ``crop_mask`` (``x0 <= u < x1``).
    """
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    # Box edges come back through float32 arithmetic; 1e-3 px of slack keeps an edge that is
    # "exactly" on a pixel from flipping it in or out.
    u0, v0 = (max(0, int(np.ceil(v - EDGE_EPS))) for v in box[:2])
    u1, v1 = min(w, int(np.ceil(box[2] - EDGE_EPS))), min(h, int(np.ceil(box[3] - EDGE_EPS)))
    if u1 <= u0 or v1 <= v0:
        return mask
    us = ((np.arange(u0, u1, dtype=np.float32) + 0.5) * lb.scale + lb.pad_x) / stride - 0.5
    vs = ((np.arange(v0, v1, dtype=np.float32) + 0.5) * lb.scale + lb.pad_y) / stride - 0.5
    map_x = np.ascontiguousarray(np.broadcast_to(us[None, :], (v1 - v0, u1 - u0)))
    map_y = np.ascontiguousarray(np.broadcast_to(vs[:, None], (v1 - v0, u1 - u0)))
    logits = cv2.remap(
        proto_logits, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    mask[v0:v1, u0:u1] = np.where(logits > 0.0, 255, 0).astype(np.uint8)  # sigmoid > 0.5
    return mask


def _classes(params: SegmentationParams) -> list[int] | None:
    items = class_items(params)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise BadRequest(f"classes={params.classes!r}: give class indices, e.g. 0,2") from None


def segment(
    engine: Engine, entry: ModelEntry, request: TaskRequest, image: Image, timer: Timer
) -> SegOutput:
    shape = (image.shape[0], image.shape[1])
    with engine.acquire(entry.name, backend=request.backend) as loaded:
        session = loaded.session
        spec = input_spec(session, entry)
        with timer("pre"):
            canvas, lb = letterbox(
                image,
                fixed_hw(spec, entry),
                pad_value=int(entry.params.get("letterbox", 114)),
                smooth=False,
            )
            tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        with timer("run"):
            out = session.run({spec.name: tensor})
        backend = loaded.backend
    with timer("post"):
        params = params_of(request, SegmentationParams)
        outputs = _postprocess(entry, params, out, lb, shape=shape, input_w=canvas.shape[1])
        masks = outputs["masks"]
        union = masks.max(axis=0) if len(masks) else np.zeros(shape, np.uint8)
    meta = {
        "detections": [
            {
                "class_id": int(c),
                "score": round(float(s), 4),
                "box": [round(float(v), 2) for v in b],
            }
            for b, s, c in zip(
                outputs["boxes"], outputs["scores"], outputs["class_ids"], strict=True
            )
        ]
    }
    return SegOutput(mask=union, backend=backend, outputs=outputs, meta=meta)


def _postprocess(
    entry: ModelEntry,
    params: SegmentationParams,
    out: dict[str, Any],
    lb: Letterbox,
    *,
    shape: tuple[int, int],
    input_w: int,
) -> dict[str, npt.NDArray[Any]]:
    names = list(entry.params.get("outputs", ["output0", "output1"]))
    if len(names) != 2 or any(n not in out for n in names):
        raise ModelLoadError(f"{entry.name}: expected outputs {names}, got {sorted(out)}")
    pred = np.asarray(out[names[0]], np.float32)[0]
    protos = np.asarray(out[names[1]], np.float32)[0]
    boxes, scores, class_ids, coeffs = decode(
        pred,
        int(entry.params.get("classes", 80)),
        conf=params.conf,
        iou=params.iou,
        max_det=params.max_det,
        classes=_classes(params),
    )
    frame_boxes = _to_frame(boxes, lb, shape)
    # The prototype grid's stride in model-input pixels (640 / 160 = 4 for YOLOv8).
    stride = input_w / protos.shape[2]
    masks = _masks(coeffs, protos, frame_boxes, lb, stride=stride, shape=shape)
    return {"boxes": frame_boxes, "scores": scores, "class_ids": class_ids, "masks": masks}


def _to_frame(boxes: F32, lb: Letterbox, shape: tuple[int, int]) -> F32:
    """Input-pixel xyxy -> frame xyxy, clipped to the frame."""
    out = boxes.copy()
    out[:, [0, 2]] = np.clip((out[:, [0, 2]] - lb.pad_x) / lb.scale, 0, shape[1])
    out[:, [1, 3]] = np.clip((out[:, [1, 3]] - lb.pad_y) / lb.scale, 0, shape[0])
    return out.astype(np.float32)


def _masks(
    coeffs: F32, protos: F32, boxes: F32, lb: Letterbox, *, stride: float, shape: tuple[int, int]
) -> Image:
    m, ph, pw = protos.shape
    logits = (coeffs @ protos.reshape(m, -1)).reshape(-1, ph, pw).astype(np.float32)
    stack = [instance_mask(logits[i], boxes[i], lb, stride, shape) for i in range(len(boxes))]
    return np.stack(stack) if stack else np.zeros((0, *shape), np.uint8)
