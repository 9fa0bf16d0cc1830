"""Helpers the tests (and benchmarks) share: tiny real models, fake board trees, local servers.

Nothing here is a mock of edged itself: these build real inputs (ONNX files made with
``onnx.helper``, sysfs/proc trees on disk, HTTP servers on loopback, ZeroMQ endpoints in a
temp dir) for the real code to consume. ``onnx`` comes from the ``dev`` extra.

Sections (append to your own section with small edits; keep them independent):
  - models: tiny ONNX builders
  - boards: fake sysfs/proc/dev trees
  - servers: local HTTP file server
  - zmq: temporary endpoints
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHARED_DIR = Path(
    os.environ.get("EDGED_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
"""The read-only ../shared checkout (real models and images); tests skip where it is absent."""


def shared_models_dir() -> Path:
    return SHARED_DIR / "models"


def shared_images_dir() -> Path:
    return SHARED_DIR / "images"


# ---------------------------------------------------------------- models: tiny ONNX builders


def _onnx() -> Any:
    import onnx  # dev extra: building models is a test/tool concern, never a run-time one

    return onnx


def save_model(graph: Any, path: Path, opset: int = 17) -> Path:
    """Wrap ``graph`` in a model with a fixed opset/IR that every backend here accepts."""
    onnx = _onnx()
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_scale_model(
    path: Path,
    scale: float = 2.0,
    shape: Sequence[int | str] = ("N", 3, "H", "W"),
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """``output = input * scale`` with (possibly dynamic) shape: the smallest real model."""
    onnx = _onnx()
    h = onnx.helper
    tp = onnx.TensorProto
    graph = h.make_graph(
        [h.make_node("Mul", [input_name, "k"], [output_name])],
        "scale",
        [h.make_tensor_value_info(input_name, tp.FLOAT, list(shape))],
        [h.make_tensor_value_info(output_name, tp.FLOAT, list(shape))],
        initializer=[h.make_tensor("k", tp.FLOAT, [], [scale])],
    )
    return save_model(graph, path)


def make_matmul_model(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A model whose weight initializer is ``megabytes`` MB of float32: for memory tests.

    ``y = x @ W`` with x [1, n] and W [n, n]; weights are random so nothing compresses them.
    """
    onnx = _onnx()
    h = onnx.helper
    tp = onnx.TensorProto
    n = max(1, int((megabytes * 1e6 / 4) ** 0.5))
    weights = np.random.default_rng(seed).standard_normal((n, n), dtype=np.float32)
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y"])],
        "matmul",
        [h.make_tensor_value_info("x", tp.FLOAT, [1, n])],
        [h.make_tensor_value_info("y", tp.FLOAT, [1, n])],
        initializer=[onnx.numpy_helper.from_array(weights, "W")],
    )
    return save_model(graph, path)
