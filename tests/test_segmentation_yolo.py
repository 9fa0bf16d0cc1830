"""YOLOv8-seg post-processing with a generated model that emits planted detections.

The model has the export's real IO; its output0 carries five planted anchors (one suppressed
by NMS, one below the confidence threshold, one of another class overlapping) and output1
prototypes that are constants or linear ramps, so every mask pixel is predictable from the
letterbox geometry alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.config import DEFAULT_ALLOWED_LICENCES, Settings
from edged.engine import Engine
from edged.errors import LicenceNotAllowed
from edged.runtime.base import file_sha256
from edged.tasks.base import TaskRequest
from edged.tasks.seg_yolo import nms
from edged.testing import make_yolo_seg_model, write_manifest

NC, NM, ANCHORS = 80, 32, 8400
# (anchor, class, score, frame box x0, y0, x1, y1, proto channel)
PLANTED = [
    (10, 0, 0.90, (40, 80, 140, 240), 2),  # A: mask = rows >= ROW_CUT
    (500, 0, 0.80, (45, 85, 145, 245), 0),  # B: same class, IoU 0.88 with A -> suppressed
    (3000, 2, 0.85, (45, 85, 145, 245), 1),  # C: other class, kept; mask = cols >= COL_CUT
    (7000, 0, 0.20, (150, 20, 250, 60), 0),  # D: below conf 0.25
    (8000, 5, 0.60, (180, 100, 280, 200), 0),  # E: whole box
]
ROW_CUT, COL_CUT = 160, 95


def _letterbox(h: int, w: int) -> tuple[float, int, int]:
    r = min(640 / h, 640 / w)
    return r, (640 - round(w * r)) // 2, (640 - round(h * r)) // 2


def planted_outputs(h: int, w: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    r, px, py = _letterbox(h, w)
    out0 = np.zeros((1, 4 + NC + NM, ANCHORS), np.float32)
    for anchor, cls, score, (x0, y0, x1, y1), channel in PLANTED:
        cx, cy = (x0 + x1) / 2 * r + px, (y0 + y1) / 2 * r + py
        out0[0, :4, anchor] = [cx, cy, (x1 - x0) * r, (y1 - y0) * r]
        out0[0, 4 + cls, anchor] = score
        out0[0, 4 + NC + channel, anchor] = 1.0
    centres = (np.arange(160, dtype=np.float32) + 0.5) * 4.0  # prototype cell centres (input px)
    out1 = np.zeros((1, NM, 160, 160), np.float32)
    out1[0, 0] = 10.0
    out1[0, 1] = (centres - (COL_CUT * r + px))[None, :]
    out1[0, 2] = (centres - (ROW_CUT * r + py))[:, None]
    return out0, out1


def expected_masks(h: int, w: int) -> list[np.ndarray[Any, Any]]:
    """A, C, E: each box cut by its prototype (pixels u with x0 <= u < x1 inside the box)."""
    masks = []
    for x0, y0, x1, y1 in [(40, ROW_CUT, 140, 240), (COL_CUT, 85, 145, 245), (180, 100, 280, 200)]:
        m = np.zeros((h, w), np.uint8)
        m[y0:y1, x0:x1] = 255
        masks.append(m)
    return masks


@pytest.fixture
def yolo_settings(tmp_path: Path) -> Any:
    def build(h: int, w: int, licences: list[str] | None = None) -> Settings:
        models, catalog = tmp_path / "models", tmp_path / "catalog"
        path = make_yolo_seg_model(models / "t_yolo.onnx", *planted_outputs(h, w))
        write_manifest(
            catalog,
            {
                "name": "t_yolo",
                "task": "segmentation",
                "family": "yolov8-seg",
                "licence": "AGPL-3.0",
                "files": [
                    {
                        "format": "onnx",
                        "path": path.name,
                        "sha256": file_sha256(path),
                        "size": path.stat().st_size,
                    }
                ],
                "input": {"name": "images", "layout": "NCHW", "size": [640, 640]},
                "params": {"classes": NC, "letterbox": 114, "outputs": ["output0", "output1"]},
            },
        )
        allowed = licences if licences is not None else [*DEFAULT_ALLOWED_LICENCES, "AGPL-3.0"]
        return Settings(model_dirs=[models], catalog_dirs=[catalog], allowed_licences=allowed)

    return build


@pytest.mark.parametrize(("h", "w"), [(320, 480), (480, 300)])  # pad in y / pad in x
def test_boxes_nms_and_masks_map_back_to_the_frame(yolo_settings: Any, h: int, w: int) -> None:
    engine = Engine(yolo_settings(h, w))
    image = np.full((h, w, 3), 90, np.uint8)
    result = engine.run(TaskRequest(task="segmentation", model="t_yolo", image=image))
    engine.close()
    out = result.outputs
    np.testing.assert_array_equal(out["class_ids"], [0, 2, 5])
    np.testing.assert_allclose(out["scores"], [0.90, 0.85, 0.60], rtol=1e-6)
    np.testing.assert_allclose(
        out["boxes"], [PLANTED[0][3], PLANTED[2][3], PLANTED[4][3]], atol=1e-3
    )
    assert out["masks"].shape == (3, h, w)
    for got, want in zip(out["masks"], expected_masks(h, w), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out["mask"], np.max(expected_masks(h, w), axis=0))
    assert [d["class_id"] for d in result.meta["detections"]] == [0, 2, 5]


def test_class_filter_and_confidence(yolo_settings: Any) -> None:
    engine = Engine(yolo_settings(320, 480))
    image = np.zeros((320, 480, 3), np.uint8)
    only = engine.run(
        TaskRequest(task="segmentation", model="t_yolo", image=image, params={"classes": [2]})
    )
    np.testing.assert_array_equal(only.outputs["class_ids"], [2])
    none = engine.run(
        TaskRequest(task="segmentation", model="t_yolo", image=image, params={"conf": 0.95})
    )
    engine.close()
    assert none.outputs["masks"].shape == (0, 320, 480)
    assert not none.outputs["mask"].any()


def test_agpl_model_is_refused_by_default(yolo_settings: Any) -> None:
    engine = Engine(yolo_settings(320, 480, licences=list(DEFAULT_ALLOWED_LICENCES)))
    image = np.zeros((320, 480, 3), np.uint8)
    with pytest.raises(LicenceNotAllowed, match=r"AGPL-3\.0"):
        engine.run(TaskRequest(task="segmentation", model="t_yolo", image=image))
    engine.close()


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.6], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, iou=0.5), [1, 2])  # 3 overlaps 1 by 0.61
    np.testing.assert_array_equal(nms(boxes, scores, iou=0.65), [1, 2, 3])
    np.testing.assert_array_equal(nms(boxes, scores, iou=0.95), [1, 2, 3, 0])
