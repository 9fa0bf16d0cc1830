"""UNet attention fusion: the Attention -> MultiHeadAttention rewrite is exact on onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edged.cli import main
from edged.graph.fuse_attention import _unpack_self_attention
from edged.quantization.onnx_quantizer import op_counts


def _attention_model(hidden: int = 16, heads: int = 2) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((hidden, 3 * hidden)).astype(np.float32) * 0.3
    b = rng.standard_normal(3 * hidden).astype(np.float32) * 0.1
    node = helper.make_node(
        "Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=heads
    )
    graph = helper.make_graph(
        [node],
        "attn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", hidden])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {"x": x})[0]
    return out


def test_self_attention_rewrite_matches_packed_attention() -> None:
    model = _attention_model()
    x = np.random.default_rng(1).standard_normal((1, 37, 16)).astype(np.float32)
    expected = _run(model, x)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert _unpack_self_attention(rewritten) == 1
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["MatMul", "Add", "Split", "MultiHeadAttention"]
    np.testing.assert_allclose(_run(rewritten, x), expected, atol=1e-5)


def test_fuse_flag_only_for_model_dirs(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_attention_model(), str(src))
    code = main(["models", "quantize", str(src), "--scheme", "dynamic-int8", "--fuse-attention"])
    assert code == 10  # BadRequest: the flag is about a generation model dir's UNet
    assert "MatMulInteger" not in op_counts(src)
