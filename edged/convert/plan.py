"""``edged models convert``: a diffusers pipeline -> a board-ready, self-contained model dir.

Stages (each announced with an ETA by ``Progress``): export every component to ONNX (fp32),
quantize them as the preset says (int4 text encoders, fused-attention dynamic-int8 UNet:
edged/quantization/onnx_quantizer.py), cut the UNet into parts that fit ``--budget``
(edged/graph/split.py), copy the tokenizers and write the scheduler and index, then list every
file with its sha256 in ``edged-manifest.json``. Everything is built in a staging dir beside
``--to`` and renamed into place at the end, so an interrupted conversion leaves no half dir;
the result holds regular files only (no symlinks), so it can be moved, ``rsync -a``'d or
``scp -r``'d to a board as it is.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edged.convert.manifest import write_manifest
from edged.convert.progress import Progress
from edged.convert.source import Source
from edged.errors import BadRequest, ModelLoadError

__all__ = ["PRESETS", "ConvertResult", "Preset", "convert_diffusers", "parts_for_budget"]

UNET_STEP_BYTES = 512 << 20
"""Working memory of one 512x512 UNet step beside its weights (full-size SD-Turbo, fused
attention, measured: docs/generation.md); each part's weights get the rest of the budget."""
SUPPORTED_SCHEDULERS = ("EulerDiscreteScheduler", "LCMScheduler")
_SCHEDULE_FIELDS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
    "timestep_spacing", "steps_offset",
)  # fmt: skip


@dataclass(frozen=True)
class Preset:
    name: str
    text_encoder: str | None
    """Quantization scheme of the text encoder(s), None = fp32."""
    unet: str | None
    fuse_attention: bool
    parts: bool
    """Cut the UNet into parts sized for ``--budget``."""
    summary: str


PRESETS = {
    "board": Preset(
        "board", "int4-weights", "dynamic-int8", True, True,
        "int4 text encoder(s), fused-attention dynamic-int8 UNet in parts that fit --budget",
    ),
    "int8": Preset(
        "int8", "int4-weights", "dynamic-int8", True, False,
        "as board, whole UNet (a board with room for it: faster with several steps)",
    ),
    "fp32": Preset(
        "fp32", None, None, False, False,
        "no quantization, whole UNet: the exported graphs as they are (parity checks)",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ConvertResult:
    dest: Path
    family: str
    files: int
    bytes: int
    unet_parts: int
    notes: list[str]


def parts_for_budget(unet_bytes: int, budget: int) -> int:
    """Parts such that one part's weights plus a 512x512 step's working memory fit ``budget``
    (at least 2: the runtime uses parts only when the whole UNet does not fit)."""
    room = max(budget - UNET_STEP_BYTES, budget // 4)
    return max(2, math.ceil(unet_bytes / max(1, room)))


def _weights_bytes(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) or 1


def _scheduler(src: Path, notes: list[str]) -> dict[str, Any]:
    """The source's scheduler config, or its training schedule under Euler when edged has no
    sampler of that class (PNDM/DDIM/DPM++ of SD 1.5 dirs; Euler ancestral)."""
    path = src / "scheduler" / "scheduler_config.json"
    config: dict[str, Any] = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    kind = config.get("_class_name", "EulerDiscreteScheduler")
    if kind in SUPPORTED_SCHEDULERS:
        return config
    kept = {k: config[k] for k in _SCHEDULE_FIELDS if k in config}
    notes.append(
        f"scheduler {kind} has no edged sampler: the same training schedule is sampled with "
        "EulerDiscreteScheduler (Euler ancestral is identical at 1 step)"
    )
    return {"_class_name": "EulerDiscreteScheduler", **kept}


def _family(config: dict[str, Any], xl: bool, kind: str) -> str:
    if kind == "lcm" or config.get("_class_name") == "LCMScheduler":
        return "lcm"
    turbo = config.get("timestep_spacing") == "trailing"
    return ("sdxl" if xl else "sd") + ("-turbo" if turbo else "")


def _export(src: Path, raw: Path, name: str) -> Any:
    """Load one component, export it, free it; returns the UNet's kind for the UNet."""
    from edged.convert import diffusers_export as dx

    model = dx.load_component(src, name)
    try:
        if name.startswith("text_encoder"):
            return dx.export_text_encoder(model, name == "text_encoder_2", raw / name)
        if name == "unet":
            return dx.export_unet(model, raw / "unet")[1]
        return dx.export_vae_decoder(model, raw / "vae_decoder")
    finally:
        del model


@contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """onnxruntime's transformer optimizer logs every fusion at INFO and draws a tqdm bar on
    stderr, between the conversion's own progress lines: both off for the call."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _place(raw: Path, out: Path, name: str, scheme: str | None, fuse: bool) -> None:
    """fp32 (moved as exported) or quantized from ``raw`` into ``out``."""
    from edged.quantization.onnx_quantizer import quantize_file

    src = raw / name / "model.onnx"
    if scheme is None:
        (raw / name).rename(out / name)
        return
    (out / name).mkdir(parents=True, exist_ok=True)
    if fuse:
        from edged.graph.fuse_attention import fuse_unet_attention

        fused = raw / f"{name}-fused" / "model.onnx"
        fused.parent.mkdir()
        with _quiet_optimizer():
            fuse_unet_attention(src, fused)
        src = fused
    quantize_file(src, out / name / "model.onnx", scheme)
    (out / name / "QUANTIZED").write_text(f"{scheme}\n", "utf-8")


def _stages(src: Path, encoders: list[str], preset: Preset) -> list[tuple[str, float]]:
    sizes = {n: _weights_bytes(src / n) for n in [*encoders, "unet", "vae"]}
    stages = [(f"export {n}", float(sizes[n])) for n in encoders]
    stages += [("export unet", float(sizes["unet"])), ("export vae_decoder", sizes["vae"] / 4)]
    if preset.text_encoder:
        stages += [(f"quantize {n} ({preset.text_encoder})", sizes[n] / 2) for n in encoders]
    if preset.unet:
        stages.append((f"quantize unet ({preset.unet})", float(sizes["unet"])))
    if preset.parts:
        stages.append(("split unet", sizes["unet"] / 4))
    stages.append(("tokenizers, scheduler, manifest", sum(sizes.values()) / 20))
    return stages


def convert_diffusers(
    source: Source,
    dest: Path,
    preset: Preset,
    budget: int,
    *,
    stream: TextIO | None = None,
    meta: dict[str, Any] | None = None,
) -> ConvertResult:
    """Convert ``source`` into ``dest`` (which must not exist, or be an empty dir)."""
    src = source.path
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadRequest(f"--to {dest} exists and is not empty; remove it or choose another")
    if not (src / "unet").is_dir():
        raise ModelLoadError(f"{src}: no unet/ (a Stable Diffusion pipeline dir is needed)")
    encoders = [n for n in ("text_encoder", "text_encoder_2") if (src / n).is_dir()]
    stage_dir = dest.parent / f".{dest.name}.converting"
    shutil.rmtree(stage_dir, ignore_errors=True)  # a previous, interrupted run
    raw, out = stage_dir / "raw", stage_dir / "out"
    out.mkdir(parents=True)
    progress = Progress(_stages(src, encoders, preset), stream or sys.stderr)
    notes: list[str] = []
    try:
        kind = _run(src, raw, out, encoders=encoders, preset=preset, progress=progress, notes=notes)
        parts = _split(out, preset, budget, progress)
        with progress.stage("tokenizers, scheduler, manifest"):
            family = _write_configs(src, out, encoders, kind, notes)
            manifest_meta = {
                **(meta or {}),
                "source": source.describe(),
                "preset": preset.name,
                "budget": budget,
                "task": "generation",
                "family": family,
                "unet_parts": parts,
                "notes": notes,
            }
            write_manifest(out, manifest_meta)
        if dest.is_dir():
            dest.rmdir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        out.rename(dest)
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    progress.finish()
    files = [p for p in dest.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    return ConvertResult(dest, family, len(files), size, parts, notes)


def _run(
    src: Path,
    raw: Path,
    out: Path,
    *,
    encoders: list[str],
    preset: Preset,
    progress: Progress,
    notes: list[str],
) -> Any:
    kind = None
    for name in [*encoders, "unet", "vae_decoder"]:
        with progress.stage(f"export {name}"):
            result = _export(src, raw, "vae" if name == "vae_decoder" else name)
            kind = result if name == "unet" else kind
    steps: list[tuple[str, str, str | None, bool]] = [
        (n, f"quantize {n} ({preset.text_encoder})", preset.text_encoder, False) for n in encoders
    ]
    steps.append(("unet", f"quantize unet ({preset.unet})", preset.unet, preset.fuse_attention))
    for name, label, scheme, fuse in steps:
        if scheme is None:
            _place(raw, out, name, None, False)
            continue
        with progress.stage(label):
            _place(raw, out, name, scheme, fuse)
    _place(raw, out, "vae_decoder", None, False)
    shutil.rmtree(raw)
    if preset.unet and preset.fuse_attention:
        notes.append("UNet attention fused into onnxruntime MultiHeadAttention (flash kernel)")
    return kind


def _split(out: Path, preset: Preset, budget: int, progress: Progress) -> int:
    if not preset.parts:
        return 0
    from edged.graph.split import split_model
    from edged.quantization.onnx_quantizer import model_bytes
    from edged.tasks.generation.parts import PARTS_DIR

    unet = out / "unet" / "model.onnx"
    count = parts_for_budget(model_bytes(unet), budget)
    with progress.stage("split unet"):
        split_model(unet, unet.parent / PARTS_DIR, count)
    return count


def _write_configs(src: Path, out: Path, encoders: list[str], kind: Any, notes: list[str]) -> str:
    from edged.convert.diffusers_export import copy_tokenizer

    for position, _ in enumerate(encoders):
        name = "tokenizer" if position == 0 else "tokenizer_2"
        if not (src / name).is_dir():
            raise ModelLoadError(f"{src}: no {name}/ for {encoders[position]}")
        copy_tokenizer(src / name, out / name)
    config = _scheduler(src, notes)
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=1), "utf-8")
    xl = "text_encoder_2" in encoders
    family = _family(config, xl, kind.kind if kind is not None else "sd")
    index = {
        "_class_name": "ORTStableDiffusionXLPipeline" if xl else "ORTStableDiffusionPipeline",
        "edged_family": family,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=1), "utf-8")
    return family
