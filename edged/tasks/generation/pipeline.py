"""Text -> embeddings -> UNet steps -> decoder, for a diffusers/optimum ONNX model directory.

Seeded and deterministic on one backend: the initial latents and any per-step noise come
from ``numpy.random.default_rng(seed)``. Components are reached only through
``Residency.use`` so the same code runs all-resident or one component at a time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, Cancelled, ModelNotFound
from edged.log import get_logger
from edged.runtime.base import Session
from edged.tasks.base import ProgressFn
from edged.tasks.generation import decoders, sdxl
from edged.tasks.generation.parts import unet_session
from edged.tasks.generation.schedulers import (
    LCM,
    SchedulerConfig,
    guidance_embedding,
    make_scheduler,
)
from edged.tasks.generation.staged import EmbeddingCache, Residency

log = get_logger("generation")
F32 = npt.NDArray[np.float32]
EmbedFn = Callable[[str], F32]
"""prompt -> [1, 77, D] embeddings (local text encoder or a remote edged)."""
_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
MAX_SIDE = 2048


@dataclass(frozen=True)
class ModelDir:
    """What a model directory holds and how it wants to be sampled."""

    root: Path
    family: str
    scheduler: SchedulerConfig
    vae_scaling: float
    sdxl: bool = False
    """Two text encoders, pooled embedding and time_ids (``edged.tasks.generation.sdxl``)."""

    @classmethod
    def load(cls, root: Path) -> ModelDir:
        if not (root / "unet" / "model.onnx").is_file():
            raise ModelNotFound(
                f"{root}: not a diffusers/optimum ONNX model dir (no unet/model.onnx)"
            )
        index = _json(root / "model_index.json")
        sched = SchedulerConfig.load(root / "scheduler" / "scheduler_config.json")
        xl = sdxl.is_sdxl(root)
        family = str(index.get("edged_family") or _guess_family(sched, xl))
        # The VAE's own config first (optimum writes it), then the index; SDXL's VAE differs.
        vae = _json(root / "vae_decoder" / "config.json")
        default = 0.13025 if xl else 0.18215
        scaling = float(vae.get("scaling_factor", index.get("vae_scaling_factor", default)))
        return cls(root, family, sched, scaling, xl)

    def component(self, name: str) -> Path:
        path = self.root / name / "model.onnx"
        if not path.is_file():
            raise ModelNotFound(f"{self.root}: missing {name}/model.onnx")
        return path

    def defaults(self) -> tuple[int, float]:
        """(steps, guidance_scale) the family is distilled for."""
        known = {"sd-turbo": (1, 0.0), "sdxl-turbo": (1, 0.0), "lcm": (4, 8.0), "sdxl": (20, 5.0)}
        return known.get(self.family, (20, 7.5))


def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text("utf-8"))) if path.is_file() else {}


def _guess_family(sched: SchedulerConfig, xl: bool = False) -> str:
    if sched.kind == "LCMScheduler":
        return "lcm"
    turbo = sched.timestep_spacing == "trailing"
    return ("sdxl" if xl else "sd") + ("-turbo" if turbo else "")


@dataclass(frozen=True)
class GenParams:
    prompt: str
    negative_prompt: str = ""
    steps: int = 1
    guidance_scale: float = 0.0
    seed: int = 0
    width: int = 512
    height: int = 512
    decoder: str = "auto"
    """``auto`` (the VAE if it fits, else a tiny decoder, else VAE tiles: ``budget``), ``vae``,
    ``tiny`` (the dir's ``vae_decoder_tiny``), a shared tiny decoder's name, or a .onnx path."""
    decoder_tile: int | None = None
    """Latent tile size for decoding (0 = whole image; None = 32 when staged, else 0)."""
    scheduler: str = "auto"
    """``auto`` (the dir's), ``euler`` or ``lcm``: LCM-LoRA turns an SD model into a 2-8 step
    LCM model, which needs the LCM sampler on a dir that ships an Euler config."""

    def __post_init__(self) -> None:
        for side in (self.width, self.height):
            if side % 8 or not 64 <= side <= MAX_SIDE:
                raise BadRequest(f"width/height must be multiples of 8 in 64..{MAX_SIDE}")
        if not self.prompt.strip():
            raise BadRequest("generation needs a non-empty prompt")
        if self.scheduler != "auto" and self.scheduler not in SCHEDULERS:
            raise BadRequest(f"scheduler {self.scheduler!r}: one of auto, {', '.join(SCHEDULERS)}")


SCHEDULERS = {"euler": "EulerDiscreteScheduler", "lcm": "LCMScheduler"}


def scheduler_config(model: ModelDir, params: GenParams) -> SchedulerConfig:
    """The dir's schedule, or the same training schedule under the requested sampler (as
    diffusers' ``LCMScheduler.from_config(pipe.scheduler.config)``)."""
    if params.scheduler == "auto":
        return model.scheduler
    return replace(model.scheduler, kind=SCHEDULERS[params.scheduler])


def uses_cfg(model: ModelDir, params: GenParams) -> bool:
    """Classifier-free guidance doubles the UNet batch; LCM embeds w instead."""
    return model.family != "lcm" and params.guidance_scale > 1.0


def encode_prompts(
    model: ModelDir, params: GenParams, embed: EmbedFn, cache: EmbeddingCache
) -> F32:
    """[1 or 2, 77, D]: (uncond, cond) when CFG is on."""
    cond = cache.get_or_compute(params.prompt, embed)
    if not uses_cfg(model, params):
        return cond
    if model.sdxl and not params.negative_prompt:
        # SDXL's force_zeros_for_empty_prompt: no negative prompt means zero conditioning.
        return np.concatenate([np.zeros_like(cond), cond], axis=0)
    return np.concatenate([cache.get_or_compute(params.negative_prompt, embed), cond], axis=0)


def _spec_dtype(session: Session, name: str, default: Any) -> Any:
    for spec in session.inputs:
        if spec.name == name:
            return _NP_DTYPES.get(spec.dtype, default)
    return default


def _latent_channels(unet: Session) -> int:
    dim = unet.inputs[0].shape[1] if len(unet.inputs[0].shape) > 1 else None
    return dim if isinstance(dim, int) else 4


def denoise(
    model: ModelDir,
    params: GenParams,
    unet: Session,
    embeddings: F32,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> F32:
    """Initial noise -> final latents in ``params.steps`` UNet evaluations."""
    sched = make_scheduler(scheduler_config(model, params), params.steps)
    rng = np.random.default_rng(params.seed)
    shape = (1, _latent_channels(unet), params.height // 8, params.width // 8)
    latents = (rng.standard_normal(shape, dtype=np.float32) * sched.init_noise_sigma).astype(
        np.float32
    )
    total = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"generation cancelled before step {i + 1}/{total}")
        x = sched.scale_model_input(latents, i)
        eps = _unet_eval(unet, x, embeddings, float(t), params)
        noise = rng.standard_normal(shape, dtype=np.float32) if isinstance(sched, LCM) else None
        latents = sched.step(eps, i, latents, noise)
        if progress is not None:
            progress(i + 1, total, f"step {i + 1}/{total} t={int(t)}")
    return latents


def _unet_eval(unet: Session, x: F32, embeddings: F32, t: float, params: GenParams) -> F32:
    """One UNet evaluation at timestep ``t`` (x already scaled), with CFG when batch is 2."""
    guidance_scale = params.guidance_scale
    batch = embeddings.shape[0]
    x = np.repeat(x, batch, axis=0) if batch > 1 else x
    names = {s.name for s in unet.inputs}
    cond: dict[str, F32] = {"encoder_hidden_states": embeddings}
    if "text_embeds" in names:  # SDXL-class: unpack the pooled row, add time_ids
        cond = sdxl.unet_feeds(unet, embeddings, params.height, params.width)
    feeds: dict[str, Any] = {
        unet.inputs[0].name: x.astype(_spec_dtype(unet, unet.inputs[0].name, np.float32)),
        "timestep": np.full((batch,), t, dtype=_spec_dtype(unet, "timestep", np.float32)),
        **{k: v.astype(_spec_dtype(unet, k, np.float32)) for k, v in cond.items()},
    }
    if "timestep_cond" in names:
        spec = next(s for s in unet.inputs if s.name == "timestep_cond")
        dim = spec.shape[-1] if isinstance(spec.shape[-1], int) else 256
        feeds["timestep_cond"] = np.repeat(guidance_embedding(guidance_scale, dim), batch, 0)
    out = next(iter(unet.run(feeds).values())).astype(np.float32)
    if batch == 1:
        return out
    uncond, cond_out = out[:1], out[1:]
    return uncond + guidance_scale * (cond_out - uncond)


def run_encoder(session: Session, ids: npt.NDArray[np.int64]) -> dict[str, Any]:
    """One text encoder on one prompt's token ids [77] -> its named outputs."""
    spec = session.inputs[0]
    return session.run({spec.name: ids[None].astype(_NP_DTYPES.get(spec.dtype, np.int64))})


def run_text_encoder(session: Session, ids: npt.NDArray[np.int64]) -> F32:
    """One prompt's token ids [77] -> last_hidden_state [1, 77, D]."""
    outputs = run_encoder(session, ids)
    hidden = outputs.get("last_hidden_state", next(iter(outputs.values())))
    return np.asarray(hidden, dtype=np.float32)


def settle_decoder(
    model: ModelDir, params: GenParams, residency: Residency
) -> tuple[GenParams, str]:
    """``params`` with ``decoder=auto`` replaced by the budget's choice, and why (one log
    line); an explicit decoder is kept as asked."""
    if params.decoder != "auto":
        return params, "asked"
    from edged.tasks.generation.budget import choose_decoder

    chosen = choose_decoder(residency, model, residency.engine)
    log.info("generation_decoder", decoder=chosen.name, reason=chosen.reason)
    return replace(params, decoder=chosen.name), chosen.reason


def generate(
    model: ModelDir,
    params: GenParams,
    residency: Residency,
    embed: EmbedFn,
    cache: EmbeddingCache,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    timings: dict[str, float] | None = None,
    encoders: dict[str, Path] | None = None,
) -> npt.NDArray[np.uint8]:
    """The whole pipeline; ``timings`` (if given) receives seconds per stage (and the plan's
    ``unet_parts`` and ``decoder_tile``). ``encoders``: the local text encoders to plan for
    (none when the embeddings come from a remote edged)."""
    import time

    from edged.tasks.generation.budget import plan as make_plan

    clock = timings if timings is not None else {}
    params, _ = settle_decoder(model, params, residency)
    decoder_path, family = decoders.resolve(residency.engine, params.decoder, model.root)
    # A decoder of other latents is refused now, not after the UNet steps.
    decoders.check_space(family, "sdxl" if model.sdxl else "sd")
    component = f"decoder:{params.decoder}"
    # What fits is decided before anything loads: a refusal costs no model load.
    chosen = make_plan(
        model, residency, encoders or {}, (component, decoder_path), params.decoder_tile
    )
    units = StageProgress(progress, params.steps, decoders.tile_count(params, chosen.decoder_tile))
    start = time.perf_counter()
    embeddings = encode_prompts(model, params, embed, cache)
    residency.release("text_encoder")
    residency.release("text_encoder_2")
    clock["text_encoder"] = time.perf_counter() - start
    units.tick("text_encoder: done")
    if cancel is not None and cancel.is_set():
        raise Cancelled("generation cancelled after text encoding")
    start = time.perf_counter()
    with unet_session(model, residency, chosen.parts) as unet:
        latents = denoise(model, params, unet, embeddings, progress=units.step, cancel=cancel)
    residency.release("unet")
    clock["unet"] = time.perf_counter() - start
    start = time.perf_counter()
    decoders.check_pairing(family, int(latents.shape[1]))
    with residency.use(component, decoder_path) as dec:
        image = decoders.decode_tiled(
            dec, family, latents, model.vae_scaling, tile=chosen.decoder_tile, on_tile=units.tile
        )
    residency.release(component)
    clock["decoder"] = time.perf_counter() - start
    clock["unet_parts"] = float(len(chosen.parts.parts)) if chosen.parts is not None else 0.0
    clock["decoder_tile"] = float(chosen.decoder_tile)
    clock["text_encoder_parts"] = float(chosen.encoder_parts)
    return decoders.to_uint8(image)


class StageProgress:
    """One progress count over the whole request: the text encoder, every UNet step and
    every decoder tile is a unit, so a client can show how far along it is and estimate the
    rest (``message`` names the stage: ``text_encoder: done``, ``unet: step 2/4 t=499``,
    ``decoder: tile 3/9``)."""

    def __init__(self, progress: ProgressFn | None, steps: int, tiles: int) -> None:
        self.progress = progress
        self.total = 1 + steps + tiles
        self.done = 0

    def tick(self, message: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, message)

    def step(self, step: int, total: int, message: str) -> None:
        self.tick(f"unet: {message}")

    def tile(self, index: int, total: int) -> None:
        self.tick(f"decoder: tile {index}/{total}")
