"""Sampling schedules in numpy: Euler discrete (SD, SD-Turbo/ADD) and LCM.

The math follows diffusers' EulerDiscreteScheduler and LCMScheduler for the configuration
keys the distilled models use (scaled_linear betas, leading/trailing/linspace spacing,
epsilon / v_prediction); everything else is rejected with a clear error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, ModelLoadError

F32 = npt.NDArray[np.float32]
SUPPORTED = ("EulerDiscreteScheduler", "LCMScheduler")


def _f32(x: Any) -> F32:
    return np.asarray(x, dtype=np.float32)


@dataclass(frozen=True)
class SchedulerConfig:
    kind: str = "EulerDiscreteScheduler"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0

    @classmethod
    def load(cls, path: Path) -> SchedulerConfig:
        if not path.is_file():
            return cls()
        data: dict[str, Any] = json.loads(path.read_text("utf-8"))
        kind = data.get("_class_name", cls.kind)
        if kind not in SUPPORTED:
            raise ModelLoadError(f"{path}: scheduler {kind} unsupported; one of {SUPPORTED}")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "kind"}
        return cls(kind=kind, **fields)


def alphas_cumprod(cfg: SchedulerConfig) -> npt.NDArray[np.float64]:
    """ᾱ_t for t = 0..T-1 (computed in float64, as diffusers does in float32 after)."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "scaled_linear":
        betas = np.square(np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=np.float64))
    elif cfg.beta_schedule == "linear":
        betas = np.linspace(cfg.beta_start, cfg.beta_end, n, dtype=np.float64)
    else:
        raise ModelLoadError(
            f"beta_schedule {cfg.beta_schedule!r} unsupported (scaled_linear, linear)"
        )
    return np.asarray(np.cumprod(1.0 - betas), dtype=np.float64)


def _check_steps(steps: int, cfg: SchedulerConfig) -> None:
    if not 1 <= steps <= cfg.num_train_timesteps:
        raise BadRequest(f"steps must be 1..{cfg.num_train_timesteps}, got {steps}")


class EulerDiscrete:
    """Euler discrete sampler; with ``trailing`` spacing and 1 step this is SD-Turbo (t=999)."""

    def __init__(self, cfg: SchedulerConfig, steps: int) -> None:
        _check_steps(steps, cfg)
        self.cfg = cfg
        n = cfg.num_train_timesteps
        if cfg.timestep_spacing == "trailing":
            ts = np.round(np.arange(n, 0, -n / steps)) - 1
        elif cfg.timestep_spacing == "leading":
            ts = (np.arange(steps) * (n // steps)).round()[::-1] + cfg.steps_offset
        elif cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, n - 1, steps)[::-1]
        else:
            raise ModelLoadError(f"timestep_spacing {cfg.timestep_spacing!r} unsupported")
        ac = alphas_cumprod(cfg)
        all_sigmas = ((1 - ac) / ac) ** 0.5
        sigmas = np.interp(ts, np.arange(n), all_sigmas)
        self.timesteps = ts.astype(np.float64)
        self.sigmas = np.append(sigmas, 0.0)
        max_sigma = float(self.sigmas.max())
        linear = cfg.timestep_spacing in ("linspace", "trailing")
        self.init_noise_sigma = max_sigma if linear else (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample: F32, index: int) -> F32:
        sigma = self.sigmas[index]
        return _f32(sample / (sigma**2 + 1) ** 0.5)

    def step(self, model_output: F32, index: int, sample: F32, noise: F32 | None = None) -> F32:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        if self.cfg.prediction_type == "epsilon":
            x0 = sample - sigma * model_output
        elif self.cfg.prediction_type == "v_prediction":
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            raise ModelLoadError(f"prediction_type {self.cfg.prediction_type!r} unsupported")
        derivative = (sample - x0) / sigma
        return _f32(sample + derivative * (sigma_next - sigma))


class LCM:
    """Latent Consistency Model multistep sampler (LCMScheduler math, 1-8 steps)."""

    def __init__(self, cfg: SchedulerConfig, steps: int) -> None:
        _check_steps(steps, cfg)
        self.cfg = cfg
        n, orig = cfg.num_train_timesteps, cfg.original_inference_steps
        if steps > orig:
            raise BadRequest(f"LCM takes at most {orig} steps, got {steps}")
        skip = n // orig
        origin = (np.arange(1, orig + 1) * skip - 1)[::-1]
        idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[idx].astype(np.float64)
        self.ac = alphas_cumprod(cfg)
        self.init_noise_sigma = 1.0

    def scale_model_input(self, sample: F32, index: int) -> F32:
        return sample

    def boundary(self, t: float) -> tuple[float, float]:
        """(c_skip, c_out) of the consistency parameterisation, sigma_data = 0.5."""
        scaled = t * self.cfg.timestep_scaling
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / (scaled**2 + 0.25) ** 0.5
        return c_skip, c_out

    def step(self, model_output: F32, index: int, sample: F32, noise: F32 | None = None) -> F32:
        t = int(self.timesteps[index])
        a_t = self.ac[t]
        if self.cfg.prediction_type == "epsilon":
            x0 = (sample - (1 - a_t) ** 0.5 * model_output) / a_t**0.5
        elif self.cfg.prediction_type == "v_prediction":
            x0 = a_t**0.5 * sample - (1 - a_t) ** 0.5 * model_output
        else:
            raise ModelLoadError(f"prediction_type {self.cfg.prediction_type!r} unsupported")
        c_skip, c_out = self.boundary(t)
        denoised = c_out * x0 + c_skip * sample
        if index == len(self.timesteps) - 1:
            return _f32(denoised)
        if noise is None:
            raise ValueError("LCM needs fresh noise between steps")
        a_prev = self.ac[int(self.timesteps[index + 1])]
        return _f32(a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * noise)


Scheduler = EulerDiscrete | LCM


def make_scheduler(cfg: SchedulerConfig, steps: int) -> Scheduler:
    return LCM(cfg, steps) if cfg.kind == "LCMScheduler" else EulerDiscrete(cfg, steps)


def guidance_embedding(w: float, dim: int = 256) -> F32:
    """LCM's guidance-scale embedding (``timestep_cond``) for w, as in the LCM pipeline."""
    w_scaled = (w - 1.0) * 1000.0
    half = dim // 2
    freqs = np.exp(np.arange(half) * -(np.log(10000.0) / (half - 1)))
    emb = w_scaled * freqs
    out = np.concatenate([np.sin(emb), np.cos(emb)])
    if dim % 2:
        out = np.pad(out, (0, 1))
    return _f32(out[None])
