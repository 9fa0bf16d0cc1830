"""Check edged's text-to-image pipeline against diffusers' own, image for image.

``--family sdxl``: a tiny SDXL (diffusers' test-sized configs: UNet2DConditionModel with
``addition_embed_type="text_time"``, CLIPTextModel + CLIPTextModelWithProjection, AutoencoderKL)
against ``StableDiffusionXLPipeline``; ``--family sd``: the same without the second encoder and
the added conditioning, against ``StableDiffusionPipeline``; ``--family lcm``: the SD one with
a guidance embedding input (``timestep_cond``) and ``LCMScheduler``, against
``LatentConsistencyModelPipeline`` (1, 2 and 4 steps; the re-noise between steps is fed from
edged's numpy generator so both see the same noise); ``--family lcm-lora``: the SD one sampled
with LCM (edged ``scheduler=lcm``, diffusers ``LCMScheduler.from_config`` of the Euler config),
as LCM-LoRA is used. Random weights, exported to ONNX
in the optimum layout; the same prompt, seed and initial latents go through both pipelines
(Euler, trailing timesteps: 1-step Turbo, 2 steps with CFG, a negative prompt, a non-square
size). Prints the largest pixel difference per case; exits 1 when any exceeds
``--tolerance`` (uint8 levels).

Needs the ``tools`` extra (torch, diffusers, transformers). No downloads: the tokenizers are
the small generated BPE of ``edged.testing``.

    .venv/bin/python tools/diffusers_parity.py --family sdxl --out .cache/parity-sdxl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
SIZE = 64
CASES = (
    {"steps": 1, "guidance_scale": 0.0, "negative_prompt": "", "height": 64, "width": 64},  # Turbo
    {"steps": 2, "guidance_scale": 5.0, "negative_prompt": "", "height": 64, "width": 64},  # zeros
    {"steps": 2, "guidance_scale": 5.0, "negative_prompt": "blue sky", "height": 64, "width": 64},
    {
        "steps": 1,
        "guidance_scale": 0.0,
        "negative_prompt": "",
        "height": 64,
        "width": 128,
    },  # time_ids
)
LCM_LORA_CASES = (
    {"steps": 4, "guidance_scale": 1.0, "height": 64, "width": 64, "scheduler": "lcm"},
    {"steps": 2, "guidance_scale": 1.0, "height": 64, "width": 128, "scheduler": "lcm"},
    {"steps": 4, "guidance_scale": 2.0, "height": 64, "width": 64, "scheduler": "lcm"},  # CFG
)
LCM_CASES = (
    {"steps": 1, "guidance_scale": 8.0, "height": 64, "width": 64},
    {"steps": 4, "guidance_scale": 8.0, "height": 64, "width": 64},
    {"steps": 2, "guidance_scale": 3.0, "height": 64, "width": 128},
)
SPATIAL = {"sample", "out_sample", "latent_sample"}
XL_UNET: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled + 6 time ids x 8
}


def components(vocab: int, seed: int, family: str) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    xl = family == "sdxl"
    extra = XL_UNET if xl else {"time_cond_proj_dim": 32} if family == "lcm" else {}
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=64 if xl else 32,  # SDXL: both encoders' widths
        norm_num_groups=8,
        **extra,
    )
    # eos_token_id 2: transformers then pools at the largest id, which is EOS in this vocab.
    text = {"bos_token_id": 0, "eos_token_id": 2, "hidden_size": 32, "intermediate_size": 37}
    text.update(num_attention_heads=4, num_hidden_layers=5, vocab_size=vocab, projection_dim=32)
    cfg = CLIPTextConfig(**text, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=SIZE,
        scaling_factor=0.13025 if xl else 0.18215,
        norm_num_groups=8,
    )
    encoders = (CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg))
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "te": encoders[0].eval(),
        "te2": encoders[1].eval(),
    }


def export(
    module: Any, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str]
) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs,
            # Batch: CFG doubles it; height/width: the non-square case.
            dynamic_axes={
                n: {0: "batch", 2: "h", 3: "w"} if n in SPATIAL else {0: "batch"}
                for n in [*inputs, *outputs]
            },
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )  # fmt: skip


def export_all(parts: dict[str, Any], out: Path, family: str) -> None:
    import torch

    xl = family == "sdxl"

    class Encoder(torch.nn.Module):
        def __init__(self, model: Any, pooled: bool) -> None:
            super().__init__()
            self.model, self.pooled = model, pooled

        def forward(self, input_ids: Any) -> Any:
            o = self.model(input_ids, output_hidden_states=True)
            head = (o.text_embeds,) if self.pooled else ()
            return (*head, o.last_hidden_state, *o.hidden_states)

    class Unet(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, sample: Any, timestep: Any, ehs: Any, *more: Any) -> Any:
            if len(more) == 1:  # LCM: the guidance embedding
                return self.model(sample, timestep, ehs, timestep_cond=more[0]).sample
            cond = {"text_embeds": more[0], "time_ids": more[1]} if more else None
            return self.model(sample, timestep, ehs, added_cond_kwargs=cond).sample

    class Decoder(torch.nn.Module):
        def __init__(self, vae: Any) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample: Any) -> Any:
            return self.vae.decode(latent_sample).sample

    ids = torch.zeros((1, 77), dtype=torch.int64)
    layers = parts["te"].config.num_hidden_layers
    hidden = [f"hidden_states.{i}" for i in range(layers + 1)]
    encoders = (("text_encoder", "te", False), ("text_encoder_2", "te2", True))
    for name, key, pooled in encoders if xl else encoders[:1]:
        outs = (["text_embeds"] if pooled else []) + ["last_hidden_state", *hidden]
        export(Encoder(parts[key], pooled), (ids,), out / name / "model.onnx", ["input_ids"], outs)
    lat = SIZE // 8
    args = (
        torch.randn(1, 4, lat, lat),
        torch.tensor([999.0]),
        torch.randn(1, 77, 64 if xl else 32),
    )
    names = ["sample", "timestep", "encoder_hidden_states"]
    if xl:
        args, names = (
            (*args, torch.randn(1, 32), torch.randn(1, 6)),
            [*names, "text_embeds", "time_ids"],
        )
    elif family == "lcm":
        args, names = (*args, torch.randn(1, 32)), [*names, "timestep_cond"]
    export(Unet(parts["unet"]), args, out / "unet" / "model.onnx", names, ["out_sample"])
    dec = out / "vae_decoder" / "model.onnx"
    export(
        Decoder(parts["vae"]), (torch.randn(1, 4, lat, lat),), dec, ["latent_sample"], ["sample"]
    )
    scaling = parts["vae"].config.scaling_factor
    (out / "vae_decoder" / "config.json").write_text(json.dumps({"scaling_factor": scaling}))


def scheduler_config(family: str) -> dict[str, Any]:
    if family == "lcm":  # LCM-Dreamshaper-v7's scheduler config
        return {
            "_class_name": "LCMScheduler",
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon",
            "original_inference_steps": 50,
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "set_alpha_to_one": True,
            "clip_sample": False,
            "timestep_scaling": 10.0,
        }
    from edged.testing.generation import scheduler_config as euler_trailing

    return euler_trailing()


def pipeline(parts: dict[str, Any], toks: Path, family: str) -> Any:
    import diffusers
    from transformers import CLIPTokenizer

    def tokenizer(name: str, pad: str) -> Any:
        files = (str(toks / name / "vocab.json"), str(toks / name / "merges.txt"))
        return CLIPTokenizer(*files, pad_token=pad, model_max_length=77)

    config = scheduler_config(family)
    if family == "lcm-lora":  # the dir keeps its Euler config; the sampler is LCM
        config = {**config, "_class_name": "LCMScheduler"}

    common = {
        "vae": parts["vae"], "text_encoder": parts["te"], "unet": parts["unet"],
        "tokenizer": tokenizer("tokenizer", "<|endoftext|>"),
        "scheduler": getattr(diffusers, config["_class_name"]).from_config(config),
    }  # fmt: skip
    if family == "sdxl":
        second = {"text_encoder_2": parts["te2"], "tokenizer_2": tokenizer("tokenizer_2", "!")}
        return diffusers.StableDiffusionXLPipeline(**common, **second)
    kind = "LatentConsistencyModelPipeline" if family == "lcm" else "StableDiffusionPipeline"
    no_checker = {"safety_checker": None, "feature_extractor": None}
    return getattr(diffusers, kind)(**common, **no_checker, requires_safety_checker=False)


def diffusers_image(pipe: Any, prompt: str, case: dict[str, Any], seed: int) -> Any:
    import torch
    from diffusers.schedulers import scheduling_lcm

    # edged's initial latents: default_rng(seed) normals, times init_noise_sigma (diffusers
    # applies that factor itself to latents passed in); LCM's re-noise between steps comes
    # next from the same generator in edged, so diffusers gets the same draws.
    shape = (1, 4, case["height"] // 8, case["width"] // 8)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.float32)
    scheduling_lcm.randn_tensor = lambda shape, **_: torch.from_numpy(  # type: ignore[attr-defined]
        rng.standard_normal(tuple(shape), dtype=np.float32)
    )
    kwargs = {k: case[k] for k in ("guidance_scale", "height", "width")}
    if "negative_prompt" in case:
        kwargs["negative_prompt"] = case["negative_prompt"] or None
    with torch.no_grad():
        out = pipe(
            prompt, num_inference_steps=case["steps"], latents=torch.from_numpy(noise),
            output_type="np", **kwargs,
        )  # fmt: skip
    return np.clip(np.rint(out.images[0] * 255), 0, 255).astype(np.uint8)


def edged_image(root: Path, prompt: str, case: dict[str, Any], seed: int) -> Any:
    from edged.config import load_settings
    from edged.engine import Engine
    from edged.tasks.base import TaskRequest

    params = {**case, "seed": seed, "residency": "resident"}
    engine = Engine(load_settings())
    try:
        result = engine.run(
            TaskRequest("generation", model=str(root), prompt=prompt, params=params)
        )
    finally:
        engine.close()
    return result.outputs["image"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["sd", "sdxl", "lcm", "lcm-lora"], default="sdxl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=int, default=1, help="max |diff| in uint8 levels")
    args = parser.parse_args()

    from edged.testing import write_tiny_clip_tokenizer

    out: Path = args.out
    xl = args.family == "sdxl"
    write_tiny_clip_tokenizer(out / "tokenizer")
    if xl:  # SDXL's second tokenizer pads with "!" (OpenCLIP)
        write_tiny_clip_tokenizer(out / "tokenizer_2")
        (out / "tokenizer_2" / "special_tokens_map.json").write_text('{"pad_token": "!"}')
    vocab = len(json.loads((out / "tokenizer" / "vocab.json").read_text()))
    parts = components(vocab, args.seed, args.family)
    export_all(parts, out, args.family)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(scheduler_config(args.family))
    )
    index = "ORTStableDiffusionXLPipeline" if xl else "ORTStableDiffusionPipeline"
    (out / "model_index.json").write_text(json.dumps({"_class_name": index}))
    pipe = pipeline(parts, out, args.family)
    worst = 0
    cases = {"lcm": LCM_CASES, "lcm-lora": LCM_LORA_CASES}.get(args.family, CASES)
    for i, case in enumerate(cases):
        prompt = "a photo of a red house"
        ref = diffusers_image(pipe, prompt, case, args.seed + i)
        got = edged_image(out, prompt, case, args.seed + i)
        diff = int(np.abs(ref.astype(np.int16) - got.astype(np.int16)).max())
        worst = max(worst, diff)
        spread = int(ref.max()) - int(ref.min())
        print(json.dumps({"family": args.family, **case, "max_abs_diff": diff, "range": spread}))
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
