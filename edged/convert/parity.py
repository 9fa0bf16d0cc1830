"""edged's text-to-image pipeline against diffusers' own, image for image.

Tiny random-weight SD, SDXL and LCM pipelines from diffusers' test-sized configs
(``tiny_pipeline``), saved with ``save_pretrained`` like any Hub repo, go through
``edged models convert``; the same prompt, seed and initial latents then run through diffusers
(``diffusers_image``) and through edged, and the uint8 images are compared. Used by
tools/diffusers_parity.py and tests/test_convert.py. Needs the ``convert`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["diffusers_image", "scheduler_config", "tiny_pipeline"]

SIZE = 64
EOS = "<|endoftext|>"
FAMILIES = ("sd", "sdxl", "lcm")
XL_UNET: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled + 6 time ids x 8
}


def components(vocab: int, seed: int, family: str) -> dict[str, Any]:
    """UNet, VAE and CLIP encoder(s) with diffusers' test-sized configs, random weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    xl = family == "sdxl"
    extra = XL_UNET if xl else {"time_cond_proj_dim": 32} if family == "lcm" else {}
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=SIZE // 8,
        in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=64 if xl else 32,  # SDXL: both encoders' widths
        norm_num_groups=8, **extra,
    )  # fmt: skip
    # eos_token_id 2: transformers then pools at the largest id, which is EOS in this vocab.
    text = {"bos_token_id": 0, "eos_token_id": 2, "hidden_size": 32, "intermediate_size": 37}
    text.update(num_attention_heads=4, num_hidden_layers=5, vocab_size=vocab, projection_dim=32)
    cfg = CLIPTextConfig(**text, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, sample_size=SIZE, scaling_factor=0.13025 if xl else 0.18215,
        norm_num_groups=8,
    )  # fmt: skip
    encoders = (CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg))
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "te": encoders[0].eval(),
        "te2": encoders[1].eval(),
    }


def scheduler_config(family: str) -> dict[str, Any]:
    """LCM-Dreamshaper-v7's LCM config, else SD's schedule with Turbo's trailing timesteps."""
    if family == "lcm":
        return {
            "_class_name": "LCMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
            "original_inference_steps": 50, "timestep_spacing": "leading", "steps_offset": 1,
            "set_alpha_to_one": True, "clip_sample": False, "timestep_scaling": 10.0,
        }  # fmt: skip
    from edged.testing.generation import scheduler_config as euler_trailing

    return euler_trailing()


def tiny_pipeline(
    family: str, tokenizers: Path, seed: int = 0, scheduler: str | None = None
) -> Any:
    """A diffusers pipeline of tiny random components; ``scheduler`` overrides the class
    (e.g. ``EulerAncestralDiscreteScheduler``). ``tokenizers`` receives the generated BPE."""
    import diffusers
    from transformers import CLIPTokenizer

    from edged.testing import write_tiny_clip_tokenizer

    write_tiny_clip_tokenizer(tokenizers / "tokenizer")
    vocab = len(json.loads((tokenizers / "tokenizer" / "vocab.json").read_text("utf-8")))
    parts = components(vocab, seed, family)
    files = (
        str(tokenizers / "tokenizer" / "vocab.json"),
        str(tokenizers / "tokenizer" / "merges.txt"),
    )
    config = scheduler_config(family)
    if scheduler is not None:
        config = {**config, "_class_name": scheduler}
    common = {
        "vae": parts["vae"], "text_encoder": parts["te"], "unet": parts["unet"],
        "tokenizer": CLIPTokenizer(*files, pad_token=EOS, model_max_length=77),
        "scheduler": getattr(diffusers, config["_class_name"]).from_config(config),
    }  # fmt: skip
    if family == "sdxl":  # SDXL's second tokenizer pads with "!" (OpenCLIP)
        second = CLIPTokenizer(*files, pad_token="!", model_max_length=77)  # noqa: S106
        return diffusers.StableDiffusionXLPipeline(
            **common, text_encoder_2=parts["te2"], tokenizer_2=second
        )
    kind = "LatentConsistencyModelPipeline" if family == "lcm" else "StableDiffusionPipeline"
    no_checker = {"safety_checker": None, "feature_extractor": None}
    return getattr(diffusers, kind)(**common, **no_checker, requires_safety_checker=False)


def diffusers_image(pipe: Any, prompt: str, case: dict[str, Any], seed: int) -> Any:
    """diffusers' uint8 image for edged's request ``case`` (steps, guidance_scale, size...)."""
    import torch
    from diffusers.schedulers import scheduling_lcm

    # edged's initial latents: default_rng(seed) normals, times init_noise_sigma (diffusers
    # applies that factor itself to latents passed in); LCM's re-noise between steps comes
    # next from the same generator in edged, so diffusers gets the same draws.
    shape = (1, 4, case["height"] // 8, case["width"] // 8)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.float32)
    scheduling_lcm.randn_tensor = lambda shape, **_: torch.from_numpy(
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
