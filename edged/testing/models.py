"""Test helpers: models: tiny ONNX builders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def make_conv_model(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A 3x3 Conv whose weights are ``megabytes`` MB of float32 (memory tests and benches).

    x [1, c, 1, 1] padded to 3x3 -> y [1, c, 1, 1]: the weights are big, the compute tiny,
    and onnxruntime repacks Conv weights differently from MatMul ones.
    """
    onnx = _onnx()
    h = onnx.helper
    tp = onnx.TensorProto
    c = max(1, int((megabytes * 1e6 / 36) ** 0.5))
    weights = np.random.default_rng(seed).standard_normal((c, c, 3, 3), dtype=np.float32)
    graph = h.make_graph(
        [h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [h.make_tensor_value_info("x", tp.FLOAT, [1, c, 1, 1])],
        [h.make_tensor_value_info("y", tp.FLOAT, [1, c, 1, 1])],
        initializer=[onnx.numpy_helper.from_array(weights, "W")],
    )
    return save_model(graph, path)


def make_scale_tflite(
    path: Path,
    scale: float = 2.0,
    shape: Sequence[int] = (1, -1, -1, 3),
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """The TFLite twin of ``make_scale_model``: ``output = input * scale``, -1 dims dynamic.

    Written with the flatbuffer schema ai-edge-litert ships (no TensorFlow needed), so LiteRT
    gets a generated model with a real dynamic signature just like the ONNX backends do.
    """
    import flatbuffers  # type: ignore[import-untyped]  # ships no type information
    from ai_edge_litert import schema_py_generated as tfl

    def tensor(name: str, buffer: int, dims: Sequence[int]) -> Any:
        t = tfl.TensorT()
        t.name, t.type, t.buffer = name, tfl.TensorType.FLOAT32, buffer
        t.shape = [d if d >= 0 else 1 for d in dims]
        t.shapeSignature = list(dims)
        return t

    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 2], [1]
    op.builtinOptionsType, op.builtinOptions = tfl.BuiltinOptions.MulOptions, tfl.MulOptionsT()
    sub = tfl.SubGraphT()
    sub.tensors = [tensor(input_name, 0, shape), tensor(output_name, 0, shape), tensor("k", 1, [])]
    sub.inputs, sub.outputs, sub.operators, sub.name = [0], [1], [op], "main"
    code = tfl.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = tfl.BuiltinOperator.MUL
    code.version = 1
    const = tfl.BufferT()
    const.data = list(np.float32(scale).tobytes())
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sub]
    model.buffers = [tfl.BufferT(), const]  # buffer 0 is the schema's mandatory empty sentinel
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(builder.Output()))
    return path
