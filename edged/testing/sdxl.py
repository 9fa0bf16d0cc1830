"""Test helpers: a tiny SDXL-class model dir (two text encoders, pooled embedding, time_ids).

The graphs have SDXL's real IO as optimum exports it: both text encoders output every hidden
state (``hidden_states.0`` .. ``hidden_states.N``), the second also ``text_embeds``; the UNet
takes ``text_embeds`` and ``time_ids`` besides ``encoder_hidden_states`` and uses all three.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edged.testing.generation import (
    _init,
    _named,
    make_tiny_unet,
    make_tiny_vae_decoder,
    write_scheduler,
    write_tiny_clip_tokenizer,
)
from edged.testing.models import _onnx, save_model

DIMS = (16, 24)
"""Hidden widths of text_encoder and text_encoder_2 (SDXL: 768 and 1280)."""
POOLED = 20
"""text_embeds width (SDXL: 1280)."""


def make_tiny_clip_with_hidden_states(
    path: Path, vocab: int, dim: int, *, pooled: int = 0, seed: int = 1
) -> Path:
    """input_ids [B,77] -> hidden_states.0..2 [B,77,D], last_hidden_state and, with
    ``pooled``, text_embeds [B,pooled] (CLIPTextModelWithProjection)."""
    onnx = _onnx()
    h, tp, rng = onnx.helper, onnx.TensorProto, np.random.default_rng(seed)
    nodes = [
        h.make_node("Gather", ["E", "input_ids"], ["emb"]),
        h.make_node("Add", ["emb", "P"], ["hidden_states.0"]),
        h.make_node("MatMul", ["hidden_states.0", "W1"], ["y1"]),
        h.make_node("Tanh", ["y1"], ["hidden_states.1"]),
        h.make_node("MatMul", ["hidden_states.1", "W2"], ["y2"]),
        h.make_node("Tanh", ["y2"], ["hidden_states.2"]),
        h.make_node("Identity", ["hidden_states.2"], ["last_hidden_state"]),
    ]
    inits = [
        _init(onnx, rng, "E", (vocab, dim), 1.0),
        _init(onnx, rng, "P", (77, dim), 0.1),
        _init(onnx, rng, "W1", (dim, dim), dim**-0.5),
        _init(onnx, rng, "W2", (dim, dim), dim**-0.5),
    ]
    hidden = ["hidden_states.0", "hidden_states.1", "hidden_states.2", "last_hidden_state"]
    outputs = [h.make_tensor_value_info(n, tp.FLOAT, ["batch", 77, dim]) for n in hidden]
    if pooled:
        nodes += [
            h.make_node("ReduceMean", ["hidden_states.2"], ["pool"], axes=[1], keepdims=0),
            h.make_node("MatMul", ["pool", "Wp"], ["text_embeds"]),
        ]
        inits.append(_init(onnx, rng, "Wp", (dim, pooled), dim**-0.5))
        outputs.insert(0, h.make_tensor_value_info("text_embeds", tp.FLOAT, ["batch", pooled]))
    graph = h.make_graph(
        _named(nodes, path.parent.name),
        path.parent.name,
        [h.make_tensor_value_info("input_ids", tp.INT64, ["batch", 77])],
        outputs,
        initializer=inits,
    )
    return save_model(graph, path)


def make_tiny_sdxl_dir(dest: Path) -> Path:
    """An SDXL-Turbo-like optimum layout (Euler, trailing timesteps, 1 step) of tiny graphs."""
    tok = write_tiny_clip_tokenizer(dest / "tokenizer")
    tok2 = write_tiny_clip_tokenizer(dest / "tokenizer_2")
    # SDXL's second tokenizer pads with "!" (OpenCLIP), the first with EOS.
    (tok2 / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}), "utf-8")
    vocab = len(json.loads((tok / "vocab.json").read_text("utf-8")))
    make_tiny_clip_with_hidden_states(dest / "text_encoder" / "model.onnx", vocab, DIMS[0])
    make_tiny_clip_with_hidden_states(
        dest / "text_encoder_2" / "model.onnx", vocab, DIMS[1], pooled=POOLED, seed=5
    )
    make_tiny_unet(dest / "unet" / "model.onnx", ctx_dim=sum(DIMS), sdxl_pooled=POOLED)
    make_tiny_vae_decoder(dest / "vae_decoder" / "model.onnx")
    (dest / "vae_decoder" / "config.json").write_text(json.dumps({"scaling_factor": 0.13025}))
    write_scheduler(dest)
    index = {"_class_name": "ORTStableDiffusionXLPipeline"}
    (dest / "model_index.json").write_text(json.dumps(index), "utf-8")
    return dest
