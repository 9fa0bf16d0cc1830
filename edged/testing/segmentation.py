"""Test helpers: segmentation: generated models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.testing.models import _onnx, save_model

SAM_GRID = 256
"""SAM's low-resolution mask grid (low_res_masks / mask_input are 256 x 256)."""


def make_sam_encoder(path: Path, seed: int = 5) -> Path:
    """A MobileSAM-shaped encoder: ``image`` [1,3,1024,1024] -> ``image_embeddings`` [1,256,64,64].

    16x16 average pooling then a 1x1 convolution with random weights and no bias, so an
    embedding cell is ``W @ mean(normalised pixels of its 16x16 patch)``: the tests can check
    normalisation and zero padding from the embedding alone.
    """
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    weights = np.random.default_rng(seed).standard_normal((256, 3, 1, 1)).astype(np.float32)
    graph = h.make_graph(
        [
            h.make_node(
                "AveragePool", ["image"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]
            ),
            h.make_node("Conv", ["pooled", "W"], ["image_embeddings"]),
        ],
        "sam_encoder",
        [h.make_tensor_value_info("image", tp.FLOAT, [1, 3, 1024, 1024])],
        [h.make_tensor_value_info("image_embeddings", tp.FLOAT, [1, 256, 64, 64])],
        initializer=[onnx.numpy_helper.from_array(weights, "W")],
    )
    return save_model(graph, path)


def make_sam_decoder(
    path: Path,
    offsets: Sequence[float] = (0.0, 16.0, -16.0),
    ious: Sequence[float] = (0.5, 0.9, 0.7),
) -> Path:
    """A SAM ONNX decoder (the real six inputs / three outputs) whose masks are rectangles.

    Mask k's low-res logit at grid cell (i, j), whose centre is ((j+.5)*4, (i+.5)*4) in the
    1024 frame, is ``min(X - x0, x1 - X, Y - y0, y1 - Y) + offsets[k]`` with (x0, y0) / (x1, y1)
    the min / max of the first two prompt points: the rectangle they span grown by
    ``offsets[k]`` frame pixels. Piecewise linear, so bilinear upsampling reproduces its
    edges exactly and the tests can predict every mask pixel. ``iou_predictions`` = ``ious``.
    """
    onnx = _onnx()
    h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    m = len(offsets)
    centres = ((np.arange(SAM_GRID, dtype=np.float32) + 0.5) * 4.0).astype(np.float32)
    init = [
        nh.from_array(centres.reshape(1, 1, 1, SAM_GRID), "gx"),
        nh.from_array(centres.reshape(1, 1, SAM_GRID, 1), "gy"),
        nh.from_array(np.asarray(offsets, np.float32).reshape(1, m, 1, 1), "offsets"),
        nh.from_array(np.asarray(ious, np.float32).reshape(1, m), "ious"),
        nh.from_array(np.array([0, 0, 0], np.int64), "p0_start"),
        nh.from_array(np.array([1, 1, 2], np.int64), "p0_end"),
        nh.from_array(np.array([0, 1, 0], np.int64), "p1_start"),
        nh.from_array(np.array([1, 2, 2], np.int64), "p1_end"),
        nh.from_array(np.array([0], np.int64), "i0"),
        nh.from_array(np.array([1], np.int64), "i1"),
        nh.from_array(np.array([1, m], np.int64), "lead"),
        nh.from_array(np.array([], np.float32), "no_roi"),
        nh.from_array(np.array([], np.float32), "no_scales"),
        nh.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        h.make_node("Slice", ["point_coords", "p0_start", "p0_end"], ["p0"]),  # [1,1,2]
        h.make_node("Slice", ["point_coords", "p1_start", "p1_end"], ["p1"]),
        h.make_node("Min", ["p0", "p1"], ["lo"]),
        h.make_node("Max", ["p0", "p1"], ["hi"]),
        h.make_node("Gather", ["lo", "i0"], ["lox"], axis=2),
        h.make_node("Gather", ["lo", "i1"], ["loy"], axis=2),
        h.make_node("Gather", ["hi", "i0"], ["hix"], axis=2),
        h.make_node("Gather", ["hi", "i1"], ["hiy"], axis=2),
        h.make_node("Sub", ["gx", "lox"], ["dx0"]),
        h.make_node("Sub", ["hix", "gx"], ["dx1"]),
        h.make_node("Sub", ["gy", "loy"], ["dy0"]),
        h.make_node("Sub", ["hiy", "gy"], ["dy1"]),
        h.make_node("Min", ["dx0", "dx1", "dy0", "dy1"], ["inside"]),  # [1,1,256,256]
        h.make_node("ReduceMean", ["image_embeddings"], ["emb_mean"], keepdims=0),
        h.make_node("Mul", ["emb_mean", "zero"], ["emb_zero"]),  # consumes the embedding
        h.make_node("Add", ["inside", "offsets"], ["grown"]),
        h.make_node("Add", ["grown", "emb_zero"], ["low_res_masks"]),
        h.make_node("Identity", ["ious"], ["iou_predictions"]),
        # Like a real SAM export this fails on a 0 x 0 orig_im_size: the loader's warm-up
        # must feed size-like vectors with ones, not zeros.
        h.make_node("Cast", ["orig_im_size"], ["hw"], to=tp.INT64),
        h.make_node("Concat", ["lead", "hw"], ["sizes"], axis=0),
        h.make_node(
            "Resize", ["low_res_masks", "no_roi", "no_scales", "sizes"], ["masks"], mode="linear"
        ),
    ]
    vi = h.make_tensor_value_info
    graph = h.make_graph(
        nodes,
        "sam_decoder",
        [
            vi("image_embeddings", tp.FLOAT, [1, 256, 64, 64]),
            vi("point_coords", tp.FLOAT, [1, "num_points", 2]),
            vi("point_labels", tp.FLOAT, [1, "num_points"]),
            vi("mask_input", tp.FLOAT, [1, 1, SAM_GRID, SAM_GRID]),
            vi("has_mask_input", tp.FLOAT, [1]),
            vi("orig_im_size", tp.FLOAT, [2]),
        ],
        [
            vi("masks", tp.FLOAT, [1, m, "H", "W"]),
            vi("iou_predictions", tp.FLOAT, [1, m]),
            vi("low_res_masks", tp.FLOAT, [1, m, SAM_GRID, SAM_GRID]),
        ],
        initializer=init,
    )
    return save_model(graph, path)


def make_yolo_seg_model(
    path: Path, output0: np.ndarray[Any, Any], output1: np.ndarray[Any, Any]
) -> Path:
    """A YOLOv8-seg export's IO (``images`` [1,3,640,640] -> ``output0`` [1,116,8400],
    ``output1`` [1,32,160,160]) that emits the planted tensors whatever the image."""
    onnx = _onnx()
    h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    graph = h.make_graph(
        [
            h.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
            h.make_node("Mul", ["mean", "zero"], ["nothing"]),
            h.make_node("Add", ["planted0", "nothing"], ["output0"]),
            h.make_node("Add", ["planted1", "nothing"], ["output1"]),
        ],
        "yolo_seg",
        [h.make_tensor_value_info("images", tp.FLOAT, [1, 3, 640, 640])],
        [
            h.make_tensor_value_info("output0", tp.FLOAT, list(output0.shape)),
            h.make_tensor_value_info("output1", tp.FLOAT, list(output1.shape)),
        ],
        initializer=[
            nh.from_array(np.asarray(output0, np.float32), "planted0"),
            nh.from_array(np.asarray(output1, np.float32), "planted1"),
            nh.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return save_model(graph, path)


def write_manifest(catalog_dir: Path, entry: dict[str, Any]) -> Path:
    """Write a catalogue manifest (TOML) from a plain dict: for generated test models."""
    from edged.models.catalog import dump_entry
    from edged.models.schema import ModelEntry

    catalog_dir.mkdir(parents=True, exist_ok=True)
    path = catalog_dir / f"{entry['name']}.toml"
    path.write_text(dump_entry(ModelEntry.model_validate(entry)), encoding="utf-8")
    return path


class CountingSession:
    """Wraps a real ``Session``: counts ``run`` calls and keeps the last feeds (no mocking)."""

    def __init__(self, inner: Any) -> None:
        self.calls = 0
        self.last_feeds: dict[str, Any] = {}
        self.wrap(inner)

    def wrap(self, inner: Any) -> None:
        """Follow the real session (a new one after an eviction and reload); keep the count."""
        self.inner = inner
        self.backend: str = inner.backend
        self.inputs: tuple[Any, ...] = tuple(inner.inputs)
        self.outputs: tuple[Any, ...] = tuple(inner.outputs)

    def run(self, feeds: Any) -> Any:
        self.calls += 1
        self.last_feeds = {k: np.array(v) for k, v in feeds.items()}
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()

    def resident_bytes(self) -> int | None:
        value = self.inner.resident_bytes()
        return None if value is None else int(value)


def counting_engine(settings: Any) -> Any:
    """An ``Engine`` whose sessions are wrapped in ``CountingSession`` (one per model name)."""
    import dataclasses
    from contextlib import contextmanager

    from edged.engine import Engine

    class CountingEngine(Engine):
        counters: dict[str, CountingSession]

        @contextmanager
        def acquire(self, model: str, **kwargs: Any) -> Any:
            with super().acquire(model, **kwargs) as loaded:
                counter = self.counters.setdefault(model, CountingSession(loaded.session))
                counter.wrap(loaded.session)
                yield dataclasses.replace(loaded, session=counter)

    engine = CountingEngine(settings)
    engine.counters = {}
    return engine
