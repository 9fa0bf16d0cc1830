"""Build SD-Turbo-architecture ONNX model directories with random weights (no downloads).

The real architectures (diffusers UNet2DConditionModel with the SD 2.1 / SD-Turbo config,
transformers CLIPTextModel with the OpenCLIP ViT-H text tower config, AutoencoderKL decoder)
are created from configs written here, initialised randomly, and exported to ONNX in the
diffusers/optimum layout that ``edged.tasks.generation`` reads:

    text_encoder/model.onnx  unet/model.onnx (+ model.onnx.data)  vae_decoder/model.onnx
    tokenizer/{vocab.json,merges.txt}  scheduler/scheduler_config.json  model_index.json

Sizes: ``tiny`` (same topology, tiny widths, seconds) and ``full`` (865 M-parameter UNet,
~3.5 GB fp32: minutes and ~12 GB of RAM for the export).

Tokenizer: CLIP's real BPE vocabulary from ``bpe_simple_vocab_16e6.txt.gz`` as shipped in the
``open_clip_torch`` wheel (``--bpe``; ``pip download --no-deps open_clip_torch`` and unzip), else
the small generated BPE of ``edged.testing`` (the text encoder vocab is then still 49408).

Needs the ``convert`` extra (torch, diffusers, transformers); the export itself is
``edged.convert.diffusers_export`` (what ``edged models convert`` uses). Usage:

    .venv/bin/python tools/make_sd_models.py --size full --out .cache/sd-turbo-full --bpe BPE_GZ
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

UNET_FULL: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "use_linear_projection": True,
}
UNET_TINY = {
    **UNET_FULL,
    "attention_head_dim": [1, 2, 2, 2],
    "block_out_channels": [32, 64, 64, 64],
    "cross_attention_dim": 32,
    "layers_per_block": 1,
    "sample_size": 8,
}
CLIP_FULL: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1024,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
CLIP_TINY = {
    **CLIP_FULL,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
}
VAE_FULL: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}
VAE_TINY = {**VAE_FULL, "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}
SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "use_karras_sigmas": False,
}


def bytes_to_unicode() -> dict[int, str]:
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def write_clip_tokenizer(bpe_gz: Path, dest: Path) -> None:
    """Convert OpenAI/OpenCLIP ``bpe_simple_vocab_16e6.txt.gz`` to vocab.json + merges.txt.

    Same construction as CLIP's SimpleTokenizer: 256 byte chars, their ``</w>`` forms, the
    first 48894 merges, then the two special tokens -> 49408 entries.
    """
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), "utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!"}
    (dest / "special_tokens_map.json").write_text(json.dumps(special), "utf-8")


def export(module: Any, args: tuple[Any, ...], path: Path, names: dict[str, Any]) -> None:
    """edged.convert's exporter (TorchScript, opset 17, >2 GB weights gathered in one file)."""
    from edged.convert.diffusers_export import export_onnx

    start = time.monotonic()
    export_onnx(
        module, args, path, inputs=names["inputs"], outputs=names["outputs"],
        dynamic=names["dynamic"],
    )  # fmt: skip
    print(f"exported {path} in {time.monotonic() - start:.0f} s", file=sys.stderr)


def build_text_encoder(cfg: dict[str, Any], out: Path) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**cfg, attn_implementation="eager")).eval()

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any) -> Any:
            o = self.m(input_ids=input_ids)
            return o.last_hidden_state, o.pooler_output

    ids = torch.full((1, 77), 49407, dtype=torch.int32)
    ids[0, 0] = 49406
    names = {
        "inputs": ["input_ids"],
        "outputs": ["last_hidden_state", "pooler_output"],
        "dynamic": {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
    }
    export(Wrap().eval(), (ids,), out / "text_encoder" / "model.onnx", names)


def build_unet(cfg: dict[str, Any], ctx_dim: int, out: Path, attention_slice: int = 0) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**cfg).eval()
    if attention_slice:
        # Sliced attention: heads are computed a few at a time, so the 4096x4096 score
        # matrices of the 64x64 level exist for one slice at once (OnnxStream's trick:
        # ~1 GB -> ~70 MB of scores at 512x512). Same weights, same maths, bigger graph.
        unet.set_attention_slice(attention_slice)

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = unet

        def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
            return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    s = cfg["sample_size"]
    args = (
        torch.randn(1, 4, s, s),
        torch.tensor([999], dtype=torch.int64),
        torch.randn(1, 77, ctx_dim),
    )
    names = {
        "inputs": ["sample", "timestep", "encoder_hidden_states"],
        "outputs": ["out_sample"],
        "dynamic": {
            "sample": {0: "batch", 2: "height", 3: "width"},
            "timestep": {0: "steps"},
            "encoder_hidden_states": {0: "batch"},
            "out_sample": {0: "batch", 2: "height", 3: "width"},
        },
    }
    export(Wrap().eval(), args, out / "unet" / "model.onnx", names)


def build_vae_decoder(cfg: dict[str, Any], latent: int, out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**cfg).eval()

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = vae

        def forward(self, latent_sample: Any) -> Any:
            return self.m.decode(latent_sample, return_dict=False)[0]

    names = {
        "inputs": ["latent_sample"],
        "outputs": ["sample"],
        "dynamic": {
            "latent_sample": {0: "batch", 2: "h", 3: "w"},
            "sample": {0: "batch", 2: "H", 3: "W"},
        },
    }
    export(
        Wrap().eval(),
        (torch.randn(1, 4, latent, latent),),
        out / "vae_decoder" / "model.onnx",
        names,
    )


def write_configs(out: Path, vae_scaling: float) -> None:
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=1))
    index = {
        "_class_name": "ORTStableDiffusionPipeline",
        "edged_family": "sd-turbo",
        "vae_scaling_factor": vae_scaling,
        "note": "random weights, real SD-Turbo architecture (tools/make_sd_models.py)",
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz (open_clip_torch)")
    parser.add_argument("--only", nargs="*", default=["text_encoder", "unet", "vae_decoder"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attention-slice",
        type=int,
        default=0,
        help=(
            "UNet attention heads computed at once (0 = all). 1 cut the 512x512 UNet peak "
            "only from 2.0 to 1.7 GB in onnxruntime and made loading 17x slower"
        ),
    )
    args = parser.parse_args()

    import torch

    torch.manual_seed(args.seed)
    full = args.size == "full"
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.bpe:
        write_clip_tokenizer(args.bpe, out / "tokenizer")
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from edged.testing import write_tiny_clip_tokenizer

        write_tiny_clip_tokenizer(out / "tokenizer")
    clip = CLIP_FULL if full else CLIP_TINY
    write_configs(out, VAE_FULL["scaling_factor"])
    if "text_encoder" in args.only:
        build_text_encoder(clip, out)
    if "vae_decoder" in args.only:
        build_vae_decoder(VAE_FULL if full else VAE_TINY, 64 if full else 8, out)
    if "unet" in args.only:
        build_unet(UNET_FULL if full else UNET_TINY, clip["hidden_size"], out, args.attention_slice)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
