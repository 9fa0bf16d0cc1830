"""Text-to-image: SD-Turbo / LCM / small SD from a diffusers-layout ONNX directory.

Request: ``prompt`` plus params ``steps``, ``guidance_scale``, ``seed``, ``width``,
``height``, ``negative_prompt``, ``decoder`` (auto | vae | tiny | vaelight | taesd | taesdxl |
taef2 | path.onnx),
``residency`` (auto | resident | staged), ``model_dir``, ``lora`` (+ ``lora_scale``),
``scheduler`` (auto | euler | lcm). Output ``image`` (H x W x 3 RGB).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, ModelNotFound
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult
from edged.tasks.generation import sdxl
from edged.tasks.generation.licence import check_dir_licence, check_name_licence
from edged.tasks.generation.lora import choose as lora_choice
from edged.tasks.generation.parts import component_parts, component_session
from edged.tasks.generation.pipeline import (
    EmbedFn,
    GenParams,
    ModelDir,
    generate,
    run_encoder,
    run_text_encoder,
    scheduler_config,
    settle_decoder,
)
from edged.tasks.generation.staged import Residency, embedding_cache
from edged.tasks.generation.tokenizer import ClipTokenizer
from edged.tasks.params import GenerationParams, params_of

if TYPE_CHECKING:
    from edged.engine import Engine
    from edged.models.schema import ModelEntry

__all__ = ["encode_text", "resolve_model_dir", "run", "stage_needs"]


def resolve_model_dir(engine: Engine | None, name: str | None) -> Path:
    """A model dir path, a catalogue entry with a ``dir`` file, or a dir on the search path,
    behind the licence gate (``edged.tasks.generation.licence``): the named entry's licence
    before the search, then every licence known for the dir found."""
    if engine is None:
        return _find_model_dir(None, name)
    allowed = engine.settings.allowed_licences
    check_name_licence(engine.catalog, allowed, name)
    root = _find_model_dir(engine, name)
    check_dir_licence(engine.catalog, allowed, root)
    return root


def _find_model_dir(engine: Engine | None, name: str | None) -> Path:
    if not name:
        raise BadRequest("generation needs a model: a diffusers ONNX dir (model or model_dir)")
    path = Path(name)
    if path.is_dir():
        return path
    entry: ModelEntry | None = None
    if engine is not None:
        try:
            entry = engine.catalog.get(name)
        except ModelNotFound:  # not catalogued; try the search path
            entry = None
        for file in entry.files if entry is not None else []:
            located = engine.catalog.locate(file)
            if located is not None and located.is_dir():
                return located
        for directory in engine.settings.model_search_path:
            if (directory / name / "text_encoder").is_dir() or (directory / name / "unet").is_dir():
                return directory / name
    hint = f"; {entry.obtain_hint()}" if entry is not None and entry.files else ""
    raise ModelNotFound(
        f"generation model {name!r} not found: give a model dir or add it to model_dirs{hint}"
    )


def _residency(
    engine: Engine | None, model: ModelDir, strategy: str, decoder: str, pixels: int = 512 * 512
) -> Residency:
    from edged.tasks.generation import decoders

    parts = {"unet": model.component("unet")}
    for name in ("text_encoder", "text_encoder_2"):
        if (model.root / name / "model.onnx").is_file():
            parts[name] = model.component(name)
    parts[f"decoder:{decoder}"] = decoders.resolve(engine, decoder, model.root)[0]
    threads = engine.settings.threads if engine is not None else None
    return Residency(
        engine, model.root, strategy=strategy, threads=threads, components=parts, pixels=pixels
    )


def stage_needs(
    engine: Engine | None, root: Path, *, pixels: int = 512 * 512, decoder: str = "vae"
) -> dict[str, int]:
    """Each component's need loaded whole (``Residency.need``: what the plan compares with the
    budget), e.g. to pick a budget that forces parts, or to see where the bytes go."""
    from edged.tasks.generation import decoders

    model = ModelDir.load(root)
    residency = _residency(engine, model, "staged", decoder, pixels)
    out = {name: residency.need(name, path) for name, path in _encoders(root).items()}
    out["unet"] = residency.need("unet", model.component("unet"))
    path = decoders.resolve(engine, decoder, root)[0]
    out["decoder"] = residency.need(f"decoder:{decoder}", path, tile=0)
    return out


def _encoders(root: Path) -> dict[str, Path]:
    """The local text encoders a request loads (SDXL-class dirs have two)."""
    names = ("text_encoder", "text_encoder_2") if sdxl.is_sdxl(root) else ("text_encoder",)
    return {name: _text_encoder_path(root, name) for name in names}


def _text_encoder_path(root: Path, name: str = "text_encoder") -> Path:
    path = root / name / "model.onnx"
    if not path.is_file():
        raise ModelNotFound(f"{root}: missing {name}/model.onnx")
    return path


def local_embedder(root: Path, residency: Residency) -> EmbedFn:
    """prompt -> conditioning: [1, 77, D], or SDXL's packed [1, 78, W] (see ``sdxl``)."""
    if sdxl.is_sdxl(root):
        return _sdxl_embedder(root, residency)
    tokenizer = ClipTokenizer(root / "tokenizer")
    path = _text_encoder_path(root)

    def embed(prompt: str) -> npt.NDArray[np.float32]:
        manifest = component_parts(residency, "text_encoder", path)
        with component_session(residency, "text_encoder", path, manifest) as session:
            return run_text_encoder(session, tokenizer.encode(prompt))

    return embed


def _sdxl_embedder(root: Path, residency: Residency) -> EmbedFn:
    names = ("text_encoder", "text_encoder_2")
    paths = [_text_encoder_path(root, name) for name in names]
    tokenizers = (ClipTokenizer(root / "tokenizer"), ClipTokenizer(root / "tokenizer_2"))

    def embed(prompt: str) -> npt.NDArray[np.float32]:
        outputs = []
        for name, path, tokenizer in zip(names, paths, tokenizers, strict=True):
            manifest = component_parts(residency, name, path)
            with component_session(residency, name, path, manifest) as session:
                outputs.append(run_encoder(session, tokenizer.encode(prompt)))
            residency.release(name)  # staged: one CLIP at a time
        hidden = np.concatenate([sdxl.penultimate(o) for o in outputs], axis=-1)
        return sdxl.pack(hidden, sdxl.pooled(outputs[1]))

    return embed


def encode_text(engine: Engine | None, prompt: str, model_dir: Path) -> npt.NDArray[np.float32]:
    """Prompt -> float32 conditioning (the ``text_encode`` request handler's work): [1, 77, D],
    or for an SDXL-class dir the packed [1, 78, W] of ``edged.tasks.generation.sdxl``.

    Needs only the tokenizers and text encoders: an encoding server holds no UNet.
    """
    path = _text_encoder_path(model_dir)
    components = {"text_encoder": path}
    if sdxl.is_sdxl(model_dir):
        components["text_encoder_2"] = _text_encoder_path(model_dir, "text_encoder_2")
    threads = engine.settings.threads if engine is not None else None
    residency = Residency(engine, model_dir, threads=threads, components=components)
    return embedding_cache(str(path)).get_or_compute(prompt, local_embedder(model_dir, residency))


def _params(model: ModelDir, request: TaskRequest, typed: GenerationParams) -> GenParams:
    # LCM sampling of a non-LCM dir is LCM-LoRA's use: its usual 4 steps, no guidance.
    steps, guidance = (4, 1.0) if typed.scheduler == "lcm" else model.defaults()
    return GenParams(
        prompt=request.prompt or typed.prompt or "",
        negative_prompt=typed.negative_prompt,
        steps=typed.steps if typed.steps is not None else steps,
        guidance_scale=typed.guidance_scale if typed.guidance_scale is not None else guidance,
        seed=typed.seed,
        width=typed.width,
        height=typed.height,
        decoder=typed.decoder,
        decoder_tile=typed.decoder_tile,
        scheduler=typed.scheduler,
    )


def run(
    engine: Engine,
    request: TaskRequest,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TaskResult:
    start = time.perf_counter()
    typed = params_of(request, GenerationParams)
    root = resolve_model_dir(engine, typed.model_dir or request.model)
    model = ModelDir.load(root)
    params = _params(model, request, typed)
    settings = engine.settings.generation
    strategy = typed.residency or settings.residency
    pixels = params.width * params.height
    # decoder=auto is settled first: residency plans with the decoder that will run.
    probe = Residency(engine, root, strategy="staged", pixels=pixels)
    params, decoder_reason = settle_decoder(model, params, probe)
    residency = _residency(engine, model, strategy, params.decoder, pixels=pixels)
    residency.lora = lora_choice(engine, root, typed.lora, typed.lora_scale)
    remote = settings.text_encoder
    embed: EmbedFn
    if remote:
        from edged.tasks.generation.remote import request_embeddings

        def remote_embed(prompt: str) -> npt.NDArray[np.float32]:
            return request_embeddings(
                remote, prompt, request.model or root.name, model_dir=str(root)
            )

        embed = remote_embed
        cache = embedding_cache(f"{remote}|{root}")
    else:
        embed = local_embedder(model.root, residency)
        cache = embedding_cache(str(model.component("text_encoder")))
    timings: dict[str, float] = {}
    hits = cache.hits
    encoders = {} if remote else _encoders(model.root)
    image = generate(
        model,
        params,
        residency,
        embed,
        cache,
        progress=progress,
        cancel=cancel,
        timings=timings,
        encoders=encoders,
    )
    total = (time.perf_counter() - start) * 1000
    unet_parts = int(timings.pop("unet_parts", 0))
    decoder_tile = int(timings.pop("decoder_tile", 0))
    encoder_parts = int(timings.pop("text_encoder_parts", 0))
    meta = {
        "seed": params.seed,
        "steps": params.steps,
        "guidance_scale": params.guidance_scale,
        "family": model.family,
        "scheduler": scheduler_config(model, params).kind,
        "residency": residency.strategy,
        "unet_parts": unet_parts,
        "text_encoder_parts": encoder_parts,
        "lora": residency.lora.adapter.path.name if residency.lora else None,
        "lora_scale": residency.lora.scale if residency.lora else None,
        "decoder": params.decoder,
        "decoder_choice": decoder_reason,
        "decoder_tile": decoder_tile,
        "text_encoder": "remote" if remote else "local",
        "embedding_cache_hit": cache.hits > hits,
        "seconds_per_stage": timings,
    }
    latency = {"pre": timings["text_encoder"] * 1000, "run": timings["unet"] * 1000}
    latency.update(post=timings["decoder"] * 1000, total=total)
    return TaskResult(
        "generation", request.model or root.name, "onnx:cpu", {"image": image}, meta, latency
    )
