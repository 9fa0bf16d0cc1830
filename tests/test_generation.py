"""Text-to-image on tiny real-IO SD model dirs (built with onnx.helper, no torch).

Real onnxruntime sessions, the real memory pool, the real CLIP BPE tokenizer code (on a
generated vocabulary) and the real shared TAEF2/VAElight decoders.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.config import load_settings
from edged.engine import Engine
from edged.errors import BadRequest, Cancelled, ModelNotFound
from edged.tasks.base import TaskRequest
from edged.tasks.generation import decoders
from edged.tasks.generation.staged import clear_embedding_cache
from edged.tasks.generation.tokenizer import ClipTokenizer
from edged.testing import make_tiny_sd_dir


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd_dir(tmp_path_factory.mktemp("gen") / "tiny-turbo")


@pytest.fixture(scope="module")
def lcm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd_dir(
        tmp_path_factory.mktemp("gen") / "tiny-lcm", scheduler="LCMScheduler", timestep_int64=True
    )


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[Engine]:
    eng = Engine(load_settings())
    yield eng
    eng.close()


@pytest.fixture
def engine(shared_engine: Engine) -> Engine:
    """One engine for the module (building one probes the board); fresh embedding cache."""
    clear_embedding_cache()
    return shared_engine


@pytest.fixture
def fresh_engine() -> Iterator[Engine]:
    """An engine with an empty pool, for tests that count loads."""
    clear_embedding_cache()
    eng = Engine(load_settings())
    yield eng
    eng.close()


def generate(engine: Engine, model: Path, prompt: str = "a photo of a cat", **params: Any) -> Any:
    params = {"width": 64, "height": 64, **params}
    return engine.run(
        TaskRequest(task="generation", model=str(model), prompt=prompt, params=params)
    )


def test_tokenizer_is_clip_bpe(sd_dir: Path) -> None:
    tok = ClipTokenizer(sd_dir / "tokenizer")
    vocab = json.loads((sd_dir / "tokenizer" / "vocab.json").read_text())
    assert tok.tokens("A  Photo of the CAT!") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "the</w>",
        "cat</w>",
        "!</w>",
    ]
    ids = tok.encode("A photo of the cat")
    want = [
        vocab[t]
        for t in [
            "<|startoftext|>",
            "a</w>",
            "photo</w>",
            "of</w>",
            "the</w>",
            "cat</w>",
            "<|endoftext|>",
        ]
    ]
    assert ids.shape == (77,)
    assert ids[:7].tolist() == want
    assert set(ids[7:].tolist()) == {vocab["<|endoftext|>"]}
    # Unknown words fall back to byte-level pieces; long prompts are cut to 77 with EOS last.
    assert tok.tokens("zebra")[-1] == "a</w>"
    long = tok.encode("cat " * 200)
    assert long.shape == (77,)
    assert long[-1] == vocab["<|endoftext|>"]


@pytest.mark.arm64
def test_same_seed_same_image_other_seed_differs(engine: Engine, sd_dir: Path) -> None:
    a = generate(engine, sd_dir, seed=7)
    b = generate(engine, sd_dir, seed=7)
    c = generate(engine, sd_dir, seed=8)
    image = a.outputs["image"]
    assert image.shape == (64, 64, 3)
    assert image.dtype == np.uint8
    assert image.std() > 1.0  # a real picture of noise, not a constant
    assert np.array_equal(image, b.outputs["image"])
    assert not np.array_equal(image, c.outputs["image"])
    assert a.meta["family"] == "sd-turbo"
    assert a.meta["steps"] == 1


def test_prompt_changes_the_image(engine: Engine, sd_dir: Path) -> None:
    a = generate(engine, sd_dir, "a photo of a cat", seed=1)
    b = generate(engine, sd_dir, "a photo of a dog", seed=1)
    assert not np.array_equal(a.outputs["image"], b.outputs["image"])


def _uses(engine: Engine) -> dict[str, int]:
    """Component -> times acquired from the pool (loads + hits)."""
    return {
        m["key"].split(":")[2]: m["loads"] + m["hits"]
        for m in engine.pool.stats()["models"]
        if m["key"].startswith("generation:")
    }


def test_staged_equals_resident_and_evicts(fresh_engine: Engine, sd_dir: Path) -> None:
    engine = fresh_engine
    resident = generate(engine, sd_dir, "the sky", seed=3, steps=2, residency="resident")
    assert sorted(_uses(engine)) == ["decoder", "text_encoder", "unet"]  # all stay loaded
    for key in engine.pool.resident():
        engine.pool.evict(key)
    clear_embedding_cache()
    staged = generate(engine, sd_dir, "the sky", seed=3, steps=2, residency="staged")
    assert staged.meta["residency"] == "staged"
    assert np.array_equal(resident.outputs["image"], staged.outputs["image"])
    assert _uses(engine) == {}  # each component evicted after its stage
    assert engine.pool.stats()["loads"] == 6


def test_repeated_prompt_skips_the_text_encoder(fresh_engine: Engine, sd_dir: Path) -> None:
    engine = fresh_engine
    first = generate(engine, sd_dir, "the red house", seed=1, residency="resident")
    second = generate(engine, sd_dir, "the red house", seed=2, residency="resident")
    assert not first.meta["embedding_cache_hit"]
    assert second.meta["embedding_cache_hit"]
    assert _uses(engine) == {"text_encoder": 1, "unet": 2, "decoder": 2}
    generate(engine, sd_dir, "the blue house", seed=2, residency="resident")
    assert _uses(engine)["text_encoder"] == 2


def test_progress_per_step_and_cancel(engine: Engine, sd_dir: Path) -> None:
    events: list[tuple[int, int]] = []
    request = TaskRequest(
        task="generation",
        model=str(sd_dir),
        prompt="blue sky",
        params={"width": 64, "height": 64, "steps": 3},
    )
    messages: list[str] = []

    def record(step: int, total: int, message: str) -> None:
        events.append((step, total))
        messages.append(message)

    engine.run(request, progress=record)
    # One count over the request: text encoder, 3 UNet steps, 1 decoder run (8x8 latents).
    assert events == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert messages[0] == "text_encoder: done"
    assert messages[1].startswith("unet: step 1/3")
    assert messages[4] == "decoder: tile 1/1"

    cancel = threading.Event()

    def stop_after_first(step: int, total: int, message: str) -> None:
        if message.startswith("unet: step 1/"):
            cancel.set()

    with pytest.raises(Cancelled, match="step 2/3"):
        engine.run(request, progress=stop_after_first, cancel=cancel)


def test_cfg_and_lcm(engine: Engine, sd_dir: Path, lcm_dir: Path) -> None:
    plain = generate(engine, sd_dir, seed=5, steps=2, guidance_scale=0.0)
    guided = generate(engine, sd_dir, seed=5, steps=2, guidance_scale=5.0, negative_prompt="dog")
    assert not np.array_equal(plain.outputs["image"], guided.outputs["image"])
    a = generate(engine, lcm_dir, seed=5)
    b = generate(engine, lcm_dir, seed=5)
    assert a.meta["family"] == "lcm"
    assert a.meta["steps"] == 4
    assert np.array_equal(a.outputs["image"], b.outputs["image"])


def test_bad_requests_have_clear_errors(engine: Engine, sd_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="multiples of 8"):
        generate(engine, sd_dir, width=65)
    with pytest.raises(BadRequest, match="prompt"):
        generate(engine, sd_dir, prompt=" ")
    with pytest.raises(ModelNotFound, match="unet"):
        generate(engine, tmp_path)
    with pytest.raises(BadRequest, match="steps"):
        generate(engine, sd_dir, steps=0)
    with pytest.raises(BadRequest, match="residency"):
        generate(engine, sd_dir, residency="sometimes")


def test_vaelight_decodes_sd_latents(sd_dir: Path, shared_models: Path) -> None:
    eng = Engine(load_settings(overrides={"model_dirs": [str(shared_models)]}))
    try:
        result = generate(eng, sd_dir, seed=1, decoder="vaelight")
        assert result.outputs["image"].shape == (64, 64, 3)
        assert result.meta["decoder"] == "vaelight"
        # TAEF2 reads FLUX.2 latents: refused for an SD UNet before any step, never noise.
        with pytest.raises(BadRequest, match="FLUX2 latents but this is an SD-class model"):
            generate(eng, sd_dir, seed=1, decoder="taef2")
        # The channel check stays behind it for decoders of an unknown space.
        with pytest.raises(BadRequest, match="32-channel"):
            decoders.check_pairing(decoders.FAMILIES["taef2"], 4)
    finally:
        eng.close()


def _photo(shared_images: Path, size: int) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(shared_images / "portraits" / "astronaut.png"))
    rgb = cv2.resize(
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA
    )
    return rgb.astype(np.float32).transpose(2, 0, 1)[None] / 255.0


def test_tiny_decoders_decode_real_encoder_latents(
    shared_models: Path, shared_images: Path
) -> None:
    from edged.runtime import config_for, open_session
    from edged.tasks.generation.decoders import FAMILIES, decode, decode_tiled

    image = _photo(shared_images, 128)
    cfg = config_for("onnx:cpu")

    def psnr(out: np.ndarray) -> float:
        return float(10 * np.log10(1.0 / np.mean((out - image) ** 2)))

    enc = open_session(cfg, shared_models / "taef2_encoder.onnx", warmup=False)
    dec = open_session(cfg, shared_models / "taef2_decoder.onnx", warmup=False)
    latents = enc.run({"image": image})["latent"]
    assert latents.shape == (1, 32, 16, 16)
    assert psnr(decode(dec, FAMILIES["taef2"], latents, 0.18215)) > 24.0

    enc = open_session(cfg, shared_models / "vaelight_encoder.onnx", warmup=False)
    dec = open_session(cfg, shared_models / "vaelight_decoder.onnx", warmup=False)
    raw = enc.run({"input": image * 2 - 1})["latent"]
    # The decoder family takes UNet-space latents (raw * 0.18215) and unscales them itself.
    whole = decode(dec, FAMILIES["vaelight"], raw * 0.18215, 0.18215)
    assert psnr(whole) > 18.0
    # Tiled decoding (bounded activation memory) stays within a fraction of a dB of whole.
    tiled = decode_tiled(dec, FAMILIES["vaelight"], raw * 0.18215, 0.18215, tile=8, overlap=2)
    assert tiled.shape == whole.shape
    assert abs(psnr(tiled) - psnr(whole)) < 0.5
    assert not np.array_equal(tiled, whole)


def test_pool_budget_is_never_exceeded(tmp_path: Path) -> None:
    """A 40 MB UNet under a 100 MB budget, staged: sampled RSS stays in budget."""
    from edged.memory import PeakSampler, release_memory, rss_bytes

    heavy = make_tiny_sd_dir(tmp_path / "heavy", unet_ballast_mb=40)
    budget = 100_000_000
    clear_embedding_cache()
    eng = Engine(load_settings(overrides={"memory_budget": budget}))
    held: list[int] = []
    try:
        release_memory()
        baseline = rss_bytes()
        with PeakSampler(0.002) as sampler:
            result = eng.run(
                TaskRequest(
                    "generation",
                    str(heavy),
                    prompt="a dog",
                    params={"width": 64, "height": 64, "steps": 2, "residency": "staged"},
                ),
                progress=lambda *_: held.append(eng.pool.stats()["resident_bytes"]),
            )
        assert result.meta["residency"] == "staged"
        assert held
        assert max(held) <= budget
        assert sampler.peak - baseline <= budget
    finally:
        eng.close()


def test_residency_plan_and_refusal_without_a_pool(sd_dir: Path) -> None:
    from edged.errors import MemoryBudgetExceeded
    from edged.tasks.generation.staged import Residency, estimate_bytes

    parts = {n: sd_dir / n / "model.onnx" for n in ("text_encoder", "unet")}
    need = sum(estimate_bytes(n, p, 64 * 64) for n, p in parts.items())
    roomy = Residency(None, sd_dir, budget=need, components=parts, pixels=64 * 64)
    tight = Residency(None, sd_dir, budget=need - 1, components=parts, pixels=64 * 64)
    assert roomy.strategy == "resident"
    assert tight.strategy == "staged"
    tiny = Residency(None, sd_dir, budget=1000, strategy="staged")
    with (
        pytest.raises(MemoryBudgetExceeded, match="memory budget"),
        tiny.use("unet", parts["unet"]),
    ):
        pass
