"""Check edged's text-to-image pipeline against diffusers' own, image for image.

A tiny random-weight pipeline (diffusers' test-sized configs, ``edged.convert.parity``) is
saved with ``save_pretrained`` like a Hub repo, converted with ``edged models convert``'s code
(``--preset fp32``), and the same prompt, seed and initial latents go through diffusers and
through edged. ``--family sdxl``: ``StableDiffusionXLPipeline`` (two text encoders, time_ids);
``sd``: ``StableDiffusionPipeline``; ``lcm``: ``LatentConsistencyModelPipeline`` (1, 2 and 4
steps; the re-noise between steps is fed from edged's numpy generator); ``lcm-lora``: the SD
model sampled with LCM (edged ``scheduler=lcm``, diffusers ``LCMScheduler.from_config``).
Prints the largest pixel difference per case; exits 1 when any exceeds ``--tolerance``.

Needs the ``convert`` extra (torch, diffusers, transformers). No downloads.

    .venv/bin/python tools/diffusers_parity.py --family sdxl --out .cache/parity-sdxl
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

CASES = (
    {"steps": 1, "guidance_scale": 0.0, "negative_prompt": "", "height": 64, "width": 64},  # Turbo
    {"steps": 2, "guidance_scale": 5.0, "negative_prompt": "", "height": 64, "width": 64},  # zeros
    {"steps": 2, "guidance_scale": 5.0, "negative_prompt": "blue sky", "height": 64, "width": 64},
    {"steps": 1, "guidance_scale": 0.0, "negative_prompt": "", "height": 64, "width": 128},
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

    import diffusers

    from edged.convert.parity import diffusers_image, tiny_pipeline
    from edged.convert.plan import PRESETS, convert_diffusers
    from edged.convert.source import Source

    out: Path = args.out
    shutil.rmtree(out / "onnx", ignore_errors=True)
    lora = args.family == "lcm-lora"
    pipe = tiny_pipeline("sd" if lora else args.family, out / "tokenizers", args.seed)
    pipe.save_pretrained(out / "diffusers")
    convert_diffusers(
        Source((out / "diffusers").resolve()), out / "onnx", PRESETS["fp32"], 1 << 30,
        stream=io.StringIO(),
    )  # fmt: skip
    if lora:  # the dir keeps its Euler config; the sampler is LCM (as LCM-LoRA is used)
        pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    worst = 0
    cases = {"lcm": LCM_CASES, "lcm-lora": LCM_LORA_CASES}.get(args.family, CASES)
    for i, case in enumerate(cases):
        prompt = "a photo of a red house"
        ref = diffusers_image(pipe, prompt, case, args.seed + i)
        got = edged_image(out / "onnx", prompt, case, args.seed + i)
        diff = int(np.abs(ref.astype(np.int16) - got.astype(np.int16)).max())
        worst = max(worst, diff)
        spread = int(ref.max()) - int(ref.min())
        print(json.dumps({"family": args.family, **case, "max_abs_diff": diff, "range": spread}))
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
