"""Fuse a Stable-Diffusion UNet's attention into onnxruntime's ``MultiHeadAttention``.

Why: an exported UNet computes attention as MatMul -> Softmax -> MatMul, which materialises the
[heads, 4096, 4096] score matrix of the 64x64 level (335 MB in fp32, several copies alive).
onnxruntime's CPU ``MultiHeadAttention`` runs a flash-attention kernel instead. Measured here on
the full-size SD-Turbo UNet (int8 dynamic, 512^2, 1 step): peak RSS 1.67 GB -> 1.45 GB and the
step 29 s -> 6.6 s (docs/generation.md).

How: onnxruntime's own transformer optimizer finds the attention subgraphs. Two adjustments:
its ``get_num_heads`` calls ``int()`` on a 1-element array, which NumPy 2 refuses (patched for
the duration of the call), and for self-attention it emits ``Attention`` with packed QKV
weights, which has no flash kernel on CPU (and packed-QKV ``MultiHeadAttention`` is not
implemented on CPU), so those nodes are rewritten to MatMul + Add + Split + MultiHeadAttention.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import BackendUnavailable, ModelLoadError

# CUDA-only fusions (GroupNorm, BiasSplitGelu, NHWC conv) and packed formats CPU cannot run.
_OFF = (
    "enable_packed_qkv",
    "enable_packed_kv",
    "enable_bias_add",
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_nhwc_conv",
)


def _num_heads(original: Any) -> Any:
    def get_num_heads(self: Any, reshape_q: Any, is_torch2: bool = False) -> int:
        if is_torch2:
            parent = self.model.get_parent(reshape_q, 1)
            if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
                value = self.model.get_constant_value(parent.input[2])
                if isinstance(value, np.ndarray) and value.size == 1:
                    return int(value.reshape(-1)[0])
            return 0
        result: int = original(self, reshape_q, is_torch2)
        return result

    return get_num_heads


@contextmanager
def _numpy2_safe_fusion() -> Iterator[None]:
    """Patch every loaded copy of FusionAttentionUnet (ORT imports it under two names)."""
    classes = [
        module.FusionAttentionUnet
        for name, module in list(sys.modules.items())
        if name.endswith("fusion_attention_unet") and hasattr(module, "FusionAttentionUnet")
    ]
    saved = [(cls, cls.get_num_heads) for cls in classes]
    for cls, original in saved:
        cls.get_num_heads = _num_heads(original)
    try:
        yield
    finally:
        for cls, original in saved:
            cls.get_num_heads = original


def _unpack_self_attention(model: Any) -> int:
    """``Attention`` (packed QKV weights) -> MatMul + Add + Split + ``MultiHeadAttention``."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes: list[Any] = []
    count = 0
    for node in graph.node:
        if node.op_type != "Attention" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        x, w = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 else ""
        name = node.name or f"attention_{count}"
        qkv = f"{name}/qkv"
        nodes.append(helper.make_node("MatMul", [x, w], [f"{qkv}_mm"], name=f"{name}/MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [f"{qkv}_mm", bias], [qkv], name=f"{name}/Add"))
        else:
            qkv = f"{qkv}_mm"
        hidden = numpy_helper.to_array(weights[w]).shape[1] // 3
        split = f"{name}/split_sizes"
        graph.initializer.append(numpy_helper.from_array(np.array([hidden] * 3, np.int64), split))
        q, k, v = (f"{name}/{part}" for part in "qkv")
        nodes.append(
            helper.make_node("Split", [qkv, split], [q, k, v], axis=-1, name=f"{name}/Split")
        )
        nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [q, k, v],
                [node.output[0]],
                name=f"{name}/MultiHeadAttention",
                domain="com.microsoft",
                num_heads=heads,
            )
        )
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def fuse_unet_attention(src: Path, dst: Path) -> dict[str, int]:
    """Write ``dst`` (external data beside it) with fused attention; returns op counts."""
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise BackendUnavailable(
            f"onnxruntime.transformers is unavailable ({exc}); pip install onnxruntime onnx"
        ) from exc
    options = FusionOptions("unet")
    for flag in _OFF:
        if hasattr(options, flag):
            setattr(options, flag, False)
    try:
        with _numpy2_safe_fusion():
            optimized = optimize_model(
                str(src),
                model_type="unet",
                opt_level=0,
                optimization_options=options,
                use_gpu=False,
                only_onnxruntime=False,
            )
        rewritten = _unpack_self_attention(optimized.model)
        dst.parent.mkdir(parents=True, exist_ok=True)
        optimized.save_model_to_file(str(dst), use_external_data_format=True)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise ModelLoadError(f"cannot fuse attention in {src}: {exc}") from exc
    counts: dict[str, int] = {}
    for node in optimized.model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    counts["rewritten_self_attention"] = rewritten
    return counts
