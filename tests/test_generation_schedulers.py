"""Scheduler math against closed-form values computed here, independently of the module."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edged.errors import BadRequest
from edged.tasks.generation.schedulers import (
    LCM,
    EulerDiscrete,
    SchedulerConfig,
    guidance_embedding,
)


def alpha_bar(t: int, start: float = 0.00085, end: float = 0.012, n: int = 1000) -> float:
    """ᾱ_t of the scaled_linear schedule, by a plain loop."""
    prod = 1.0
    for i in range(t + 1):
        beta = (math.sqrt(start) + (math.sqrt(end) - math.sqrt(start)) * i / (n - 1)) ** 2
        prod *= 1.0 - beta
    return prod


def sigma(t: int) -> float:
    a = alpha_bar(t)
    return math.sqrt((1 - a) / a)


def test_sd_turbo_single_step_is_t999_and_returns_x0() -> None:
    cfg = SchedulerConfig(timestep_spacing="trailing", steps_offset=1)
    sched = EulerDiscrete(cfg, 1)
    assert sched.timesteps.tolist() == [999.0]
    assert sched.sigmas[0] == pytest.approx(sigma(999), rel=1e-9)
    assert sched.sigmas[1] == 0.0
    assert sched.init_noise_sigma == pytest.approx(sigma(999), rel=1e-9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    eps = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    s = sigma(999)
    assert np.allclose(sched.scale_model_input(x, 0), x / math.sqrt(s * s + 1), rtol=1e-6)
    # One Euler step to sigma=0 lands exactly on the predicted clean sample x - sigma * eps.
    assert np.allclose(sched.step(eps, 0, x), x - s * eps, rtol=1e-5, atol=1e-5)


def test_euler_leading_spacing_and_multistep_update() -> None:
    cfg = SchedulerConfig(timestep_spacing="leading", steps_offset=1)
    sched = EulerDiscrete(cfg, 4)
    assert sched.timesteps.tolist() == [751.0, 501.0, 251.0, 1.0]
    assert sched.init_noise_sigma == pytest.approx(math.sqrt(sigma(751) ** 2 + 1), rel=1e-9)
    x = np.full((1, 4, 1, 1), 2.0, np.float32)
    eps = np.full((1, 4, 1, 1), 0.5, np.float32)
    s0, s1 = sigma(751), sigma(501)
    # epsilon: x0 = x - s0*eps; d = (x - x0)/s0 = eps; x' = x + eps*(s1 - s0)
    assert np.allclose(sched.step(eps, 0, x), 2.0 + 0.5 * (s1 - s0), rtol=1e-5)


def test_euler_v_prediction() -> None:
    cfg = SchedulerConfig(timestep_spacing="trailing", prediction_type="v_prediction")
    sched = EulerDiscrete(cfg, 1)
    s = sigma(999)
    x = np.full((1, 1, 1, 1), 3.0, np.float32)
    v = np.full((1, 1, 1, 1), -1.0, np.float32)
    x0 = -1.0 * (-s / math.sqrt(s * s + 1)) + 3.0 / (s * s + 1)
    assert float(sched.step(v, 0, x).ravel()[0]) == pytest.approx(x0, rel=1e-5)


def test_lcm_timesteps_and_consistency_step() -> None:
    cfg = SchedulerConfig(kind="LCMScheduler")
    assert LCM(cfg, 1).timesteps.tolist() == [999.0]
    sched = LCM(cfg, 4)
    assert sched.timesteps.tolist() == [999.0, 759.0, 499.0, 259.0]
    x = np.full((1, 1, 1, 1), 0.7, np.float32)
    eps = np.full((1, 1, 1, 1), 0.2, np.float32)
    noise = np.full((1, 1, 1, 1), -0.3, np.float32)
    a, a_next = alpha_bar(999), alpha_bar(759)
    scaled = 999 * 10.0
    c_skip = 0.25 / (scaled**2 + 0.25)
    c_out = scaled / math.sqrt(scaled**2 + 0.25)
    x0 = (0.7 - math.sqrt(1 - a) * 0.2) / math.sqrt(a)
    denoised = c_out * x0 + c_skip * 0.7
    expected = math.sqrt(a_next) * denoised + math.sqrt(1 - a_next) * -0.3
    assert float(sched.step(eps, 0, x, noise).ravel()[0]) == pytest.approx(expected, rel=1e-5)
    # The last step returns the denoised sample itself, without re-noising.
    a_last = alpha_bar(259)
    last = (0.7 - math.sqrt(1 - a_last) * 0.2) / math.sqrt(a_last)
    c_skip, c_out = 0.25 / (2590.0**2 + 0.25), 2590.0 / math.sqrt(2590.0**2 + 0.25)
    got = float(sched.step(eps, 3, x).ravel()[0])
    assert got == pytest.approx(c_out * last + c_skip * 0.7, rel=1e-5)


def test_guidance_embedding_matches_formula() -> None:
    emb = guidance_embedding(8.0, 8)
    freqs = [math.exp(-i * math.log(10000.0) / 3) for i in range(4)]
    want = [math.sin(7000.0 * f) for f in freqs] + [math.cos(7000.0 * f) for f in freqs]
    assert emb.shape == (1, 8)
    assert np.allclose(emb[0], want, atol=1e-4)


def test_bad_step_counts_are_rejected() -> None:
    with pytest.raises(BadRequest, match="steps"):
        EulerDiscrete(SchedulerConfig(), 0)
    with pytest.raises(BadRequest, match="at most 50"):
        LCM(SchedulerConfig(kind="LCMScheduler"), 51)
