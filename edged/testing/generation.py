"""Test helpers: generation: tiny SD model dirs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.testing.models import _onnx, save_model


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (the alphabet of CLIP's byte-level BPE)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "red", "blue", "house", "sky", "astronaut")


def write_tiny_clip_tokenizer(dest: Path, words: Sequence[str] = TINY_WORDS) -> Path:
    """A small but real CLIP-format BPE (vocab.json + merges.txt, ``</w>`` word ends)."""
    import json

    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            line = f"{merged} {piece}"
            merged += piece
            if line not in merges:
                merges.append(line)
                vocab_list.append(merged)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (dest / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return dest


def _named(nodes: list[Any], prefix: str) -> list[Any]:
    """Node names, as exporters write them (quantizers select and exclude nodes by name)."""
    for i, node in enumerate(nodes):
        node.name = f"{prefix}/{node.op_type}_{i}"
    return nodes


def _init(onnx: Any, rng: np.random.Generator, name: str, shape: Sequence[int], std: float) -> Any:
    array = (rng.standard_normal(tuple(shape)) * std).astype(np.float32)
    return onnx.numpy_helper.from_array(array, name)


def make_tiny_text_encoder(path: Path, vocab: int, dim: int = 32, seed: int = 1) -> Path:
    """CLIP text-encoder IO: input_ids [B,77] int32 -> last_hidden_state [B,77,D], pooler_output."""
    onnx = _onnx()
    h, tp, rng = onnx.helper, onnx.TensorProto, np.random.default_rng(seed)
    nodes = [
        h.make_node("Cast", ["input_ids"], ["ids"], to=tp.INT64),
        h.make_node("Gather", ["E", "ids"], ["emb"]),
        h.make_node("Add", ["emb", "P"], ["x"]),
        h.make_node("MatMul", ["x", "W"], ["y"]),
        h.make_node("Tanh", ["y"], ["last_hidden_state"]),
        h.make_node("ReduceMean", ["last_hidden_state"], ["pooler_output"], axes=[1], keepdims=0),
    ]
    inits = [
        _init(onnx, rng, "E", (vocab, dim), 1.0),
        _init(onnx, rng, "P", (77, dim), 0.1),
        _init(onnx, rng, "W", (dim, dim), dim**-0.5),
    ]
    graph = h.make_graph(
        _named(nodes, "text_encoder"),
        "text_encoder",
        [h.make_tensor_value_info("input_ids", tp.INT32, ["batch", 77])],
        [
            h.make_tensor_value_info("last_hidden_state", tp.FLOAT, ["batch", 77, dim]),
            h.make_tensor_value_info("pooler_output", tp.FLOAT, ["batch", dim]),
        ],
        initializer=inits,
    )
    return save_model(graph, path)


def _ballast_names(pieces: int) -> list[tuple[str, int]]:
    return [("Wb", 1)] if pieces <= 1 else [(f"Wb{i}", pieces) for i in range(pieces)]


def _ballast_nodes(h: Any, pieces: int) -> list[Any]:
    """ctx @ Wb -> mean -> bmean; with pieces, the sum of each piece's mean (one node each)."""
    if pieces <= 1:
        return [
            h.make_node("MatMul", ["ctx", "Wb"], ["ballast"]),
            h.make_node("ReduceMean", ["ballast"], ["bmean"], axes=[1], keepdims=1),
        ]
    nodes, total = [], ""
    for i in range(pieces):
        nodes.append(h.make_node("MatMul", ["ctx", f"Wb{i}"], [f"ballast{i}"]))
        nodes.append(h.make_node("ReduceMean", [f"ballast{i}"], [f"bm{i}"], axes=[1], keepdims=1))
        if total:
            out = "bmean" if i == pieces - 1 else f"bsum{i}"
            nodes.append(h.make_node("Add", [total, f"bm{i}"], [out]))
            total = out
        else:
            total = f"bm{i}"
    return nodes


def make_tiny_unet(
    path: Path,
    *,
    ctx_dim: int = 32,
    channels: int = 64,
    seed: int = 2,
    timestep_int64: bool = False,
    ballast_mb: float = 0.0,
    sdxl_pooled: int = 0,
    ballast_pieces: int = 1,
) -> Path:
    """UNet IO: (sample [B,4,h,w], timestep [B], encoder_hidden_states [B,77,D]) -> out_sample.

    Conv in/out plus a token-mixing MatMul so int8/int4 quantizers have real work to do.
    ``ballast_mb`` adds a text-projection weight of that size (used, so never optimised away)
    to make the UNet heavy enough for memory-budget tests (in ``ballast_pieces`` weights of
    consecutive nodes, so a split can divide it). ``sdxl_pooled`` > 0 adds SDXL's
    ``text_embeds`` [B, P] and ``time_ids`` [B, 6] inputs, both added to the time embedding.
    """
    onnx = _onnx()
    h, tp, rng, c = onnx.helper, onnx.TensorProto, np.random.default_rng(seed), channels
    nodes = [
        h.make_node("Cast", ["timestep"], ["tf"], to=tp.FLOAT),
        h.make_node("Unsqueeze", ["tf", "ax1"], ["t2"]),
        h.make_node("MatMul", ["t2", "Wt"], ["tp"]),
        h.make_node("Sin", ["tp"], ["tsin"]),
        h.make_node("ReduceMean", ["encoder_hidden_states"], ["ctx"], axes=[1], keepdims=0),
        h.make_node("MatMul", ["ctx", "Wc"], ["cproj0"]),
        *_ballast_nodes(h, ballast_pieces),
        h.make_node("Add", ["cproj0", "bmean"], ["cproj"]),
        h.make_node("Add", ["tsin", "cproj"], ["emb"]),
        h.make_node("Unsqueeze", ["emb", "ax23"], ["emb4"]),
        h.make_node("Conv", ["sample", "Win", "bin"], ["h0"], pads=[1, 1, 1, 1]),
        h.make_node("Add", ["h0", "emb4"], ["h1"]),
        h.make_node("Shape", ["h1"], ["hshape"]),
        h.make_node("Reshape", ["h1", "flat"], ["hs"]),
        h.make_node("Transpose", ["hs"], ["ht"], perm=[0, 2, 1]),
        h.make_node("MatMul", ["ht", "Wq"], ["q"]),
        h.make_node("Tanh", ["q"], ["a"]),
        h.make_node("Transpose", ["a"], ["ab"], perm=[0, 2, 1]),
        h.make_node("Reshape", ["ab", "hshape"], ["h2"]),
        h.make_node("Add", ["h1", "h2"], ["h3"]),
        h.make_node("Conv", ["h3", "Wout"], ["out_sample"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "ax23"),
        onnx.numpy_helper.from_array(np.array([0, c, -1], np.int64), "flat"),
        _init(onnx, rng, "Wt", (1, c), 0.01),
        _init(onnx, rng, "Wc", (ctx_dim, c), ctx_dim**-0.5),
        *[
            _init(onnx, rng, name, (ctx_dim, max(1, int(ballast_mb * 1e6 / 4 / ctx_dim / n))), 0.01)
            for name, n in _ballast_names(ballast_pieces)
        ],
        _init(onnx, rng, "Win", (c, 4, 3, 3), 0.1),
        _init(onnx, rng, "bin", (c,), 0.1),
        _init(onnx, rng, "Wq", (c, c), c**-0.5),
        _init(onnx, rng, "Wout", (4, c, 3, 3), 0.05),
    ]
    t_type = tp.INT64 if timestep_int64 else tp.FLOAT
    inputs = [
        h.make_tensor_value_info("sample", tp.FLOAT, ["batch", 4, "height", "width"]),
        h.make_tensor_value_info("timestep", t_type, ["steps"]),
        h.make_tensor_value_info("encoder_hidden_states", tp.FLOAT, ["batch", 77, ctx_dim]),
    ]
    if sdxl_pooled:
        at = next(i for i, n in enumerate(nodes) if n.output[0] == "emb")
        nodes[at].output[0] = "emb0"
        nodes[at + 1 : at + 1] = [
            h.make_node("MatMul", ["text_embeds", "Wte"], ["tep"]),
            h.make_node("MatMul", ["time_ids", "Wti"], ["tip"]),
            h.make_node("Add", ["emb0", "tep"], ["emb1"]),
            h.make_node("Add", ["emb1", "tip"], ["emb"]),
        ]
        inits += [
            _init(onnx, rng, "Wte", (sdxl_pooled, c), sdxl_pooled**-0.5),
            _init(onnx, rng, "Wti", (6, c), 0.002),  # time_ids are pixel sizes (hundreds)
        ]
        inputs += [
            h.make_tensor_value_info("text_embeds", tp.FLOAT, ["batch", sdxl_pooled]),
            h.make_tensor_value_info("time_ids", tp.FLOAT, ["batch", 6]),
        ]
    graph = h.make_graph(
        _named(nodes, "unet"),
        "unet",
        inputs,
        [h.make_tensor_value_info("out_sample", tp.FLOAT, ["batch", 4, "height", "width"])],
        initializer=inits,
    )
    return save_model(graph, path)


def make_tiny_vae_decoder(path: Path, channels: int = 16, seed: int = 3) -> Path:
    """VAE decoder IO: latent_sample [B,4,h,w] -> sample [B,3,8h,8w] in -1..1."""
    onnx = _onnx()
    h, tp, rng = onnx.helper, onnx.TensorProto, np.random.default_rng(seed)
    nodes = [
        h.make_node("Conv", ["latent_sample", "W1"], ["h0"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["h0"], ["h1"]),
        h.make_node("Resize", ["h1", "", "scales"], ["h2"], mode="nearest"),
        h.make_node("Conv", ["h2", "W2"], ["h3"], pads=[1, 1, 1, 1]),
        h.make_node("Tanh", ["h3"], ["sample"]),
    ]
    inits = [
        _init(onnx, rng, "W1", (channels, 4, 3, 3), 0.3),
        onnx.numpy_helper.from_array(np.array([1, 1, 8, 8], np.float32), "scales"),
        _init(onnx, rng, "W2", (3, channels, 3, 3), 0.3),
    ]
    graph = h.make_graph(
        _named(nodes, "vae_decoder"),
        "vae_decoder",
        [h.make_tensor_value_info("latent_sample", tp.FLOAT, ["batch", 4, "h", "w"])],
        [h.make_tensor_value_info("sample", tp.FLOAT, ["batch", 3, "H", "W"])],
        initializer=inits,
    )
    return save_model(graph, path)


def scheduler_config(kind: str = "EulerDiscreteScheduler") -> dict[str, Any]:
    """SD's training schedule with Turbo's trailing timesteps (1 step lands on t = 999)."""
    return {
        "_class_name": kind,
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "timestep_spacing": "trailing",
        "steps_offset": 1,
    }


def write_scheduler(dest: Path, kind: str = "EulerDiscreteScheduler") -> Path:
    import json

    path = dest / "scheduler" / "scheduler_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scheduler_config(kind)), "utf-8")
    return path


def make_tiny_sd_dir(
    dest: Path,
    *,
    scheduler: str = "EulerDiscreteScheduler",
    timestep_int64: bool = False,
    unet_ballast_mb: float = 0.0,
    unet_channels: int = 64,
    unet_ballast_pieces: int = 1,
) -> Path:
    """A diffusers/optimum ONNX layout with tiny real-IO graphs (SD-Turbo-like by default).

    ``unet_channels`` sets the UNet's work per step (its token-mixing MatMul grows with the
    square): a few hundred makes each step take milliseconds, for tests that must catch a job
    in the middle of its steps.
    """
    import json

    tok = write_tiny_clip_tokenizer(dest / "tokenizer")
    vocab_size = len(json.loads((tok / "vocab.json").read_text("utf-8")))
    make_tiny_text_encoder(dest / "text_encoder" / "model.onnx", vocab=vocab_size)
    make_tiny_unet(
        dest / "unet" / "model.onnx",
        channels=unet_channels,
        timestep_int64=timestep_int64,
        ballast_mb=unet_ballast_mb,
        ballast_pieces=unet_ballast_pieces,
    )
    make_tiny_vae_decoder(dest / "vae_decoder" / "model.onnx")
    write_scheduler(dest, scheduler)
    index = {"_class_name": "ORTStableDiffusionPipeline", "scheduler": ["diffusers", scheduler]}
    (dest / "model_index.json").write_text(json.dumps(index), "utf-8")
    return dest


LORA_MODULES = {
    "Wq": "/m/mid_block/attentions.0/transformer_blocks.0/attn1/to_q/MatMul",
    "Win": "/m/conv_in/Conv",
}
"""Weight -> the node name a torch export gives the layer (a LoRA targets it by that path)."""


def name_like_exporter(unet: Path) -> Path:
    """Rename the tiny UNet's to_q MatMul and conv_in Conv as torch.onnx.export names them."""
    onnx = _onnx()
    model = onnx.load(str(unet))
    for node in model.graph.node:
        if len(node.input) > 1 and node.input[1] in LORA_MODULES:
            node.name = LORA_MODULES[node.input[1]]
    onnx.save(model, str(unet))
    return unet


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """The safetensors layout (8-byte header size, JSON header, raw little-endian data)."""
    import json

    kinds = {"float32": "F32", "float16": "F16"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for key, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[key] = {
            "dtype": kinds[array.dtype.name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    return path


def make_tiny_lora(
    path: Path, *, style: str = "peft", rank: int = 2, seed: int = 9, channels: int = 64
) -> Path:
    """A LoRA for the tiny UNet's to_q (c x c) and conv_in (c x 4 x 3 x 3) in one key style:
    ``peft`` (lora_A/lora_B), ``kohya`` (lora_unet_*, lora_down/lora_up + alpha = rank)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q": (
            (rank, channels),
            (channels, rank),
        ),
        "conv_in": ((rank, 4, 3, 3), (channels, rank, 1, 1)),
    }
    tensors: dict[str, np.ndarray] = {}
    for module, (down, up) in shapes.items():
        d = (rng.standard_normal(down) * 0.2).astype(np.float32)
        u = (rng.standard_normal(up) * 0.2).astype(np.float32)
        if style == "peft":
            tensors[f"unet.{module}.lora_A.weight"] = d
            tensors[f"unet.{module}.lora_B.weight"] = u
        else:
            key = "lora_unet_" + module.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = d
            tensors[f"{key}.lora_up.weight"] = u
            tensors[f"{key}.alpha"] = np.array(float(rank), np.float32)
    return write_safetensors(path, tensors)


def run_generation(
    root: Path, params: dict[str, Any], *, budget: int | None = None, **overrides: Any
) -> Any:
    """One generation of ``root`` (prompt "a kite") on a fresh Engine with these settings
    overrides (``budget`` -> memory_budget), the prompt-embedding cache cleared first so every
    run encodes its prompt; the engine is closed after. Returns the ``TaskResult``."""
    from edged.config import load_settings
    from edged.engine import Engine
    from edged.tasks.base import TaskRequest
    from edged.tasks.generation.staged import clear_embedding_cache

    clear_embedding_cache()
    if budget is not None:
        overrides["memory_budget"] = budget
    engine = Engine(load_settings(overrides=overrides))
    try:
        return engine.run(TaskRequest("generation", str(root), prompt="a kite", params=params))
    finally:
        engine.close()
