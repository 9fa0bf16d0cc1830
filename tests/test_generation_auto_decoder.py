"""decoder=auto (the default): the model's VAE when it fits the budget, else a tiny decoder of
the model's latent space, else the VAE in tiles (issue 18: "TAESD-class decoder by default
when the budget is tight"). Each decision gives the explicit choice's image.

Tiny real-IO dirs (edged.testing) whose VAE carries 10 MB of weights, so a budget can hold
every other component but not the whole VAE; real onnxruntime sessions and the real pool.
Every run gets its own state dir: the decision is made on the same (unmeasured) estimates.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.config import load_settings
from edged.engine import Engine
from edged.tasks.base import TaskResult
from edged.tasks.generation import stage_needs
from edged.tasks.generation.budget import choose_decoder
from edged.tasks.generation.pipeline import ModelDir
from edged.tasks.generation.staged import Residency
from edged.testing import make_tiny_sd_dir, make_tiny_vae_decoder
from edged.testing.generation import run_generation
from edged.testing.sdxl import make_tiny_sdxl_dir

SIZE = 256  # 32x32 latents: the VAE can be tiled
PARAMS = {"width": SIZE, "height": SIZE, "seed": 5}
BALLAST = 10 << 18  # float32 elements: 10 MB of VAE weights


def _heavy_vae(path: Path) -> None:
    """Give the VAE decoder file 10 MB of weights (an initializer no node reads, which
    onnxruntime drops at load), so its estimated need exceeds every other component's."""
    import onnx

    model = onnx.load(str(path))
    ballast = np.zeros(BALLAST, np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(ballast, "ballast"))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def sd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_tiny_sd_dir(tmp_path_factory.mktemp("auto") / "sd")
    _heavy_vae(root / "vae_decoder" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def vae_whole(sd_root: Path) -> int:
    """The VAE's need decoded whole at SIZE: a budget one byte below cannot hold it."""
    engine = Engine(load_settings())
    try:
        needs = stage_needs(engine, sd_root, pixels=SIZE * SIZE)
    finally:
        engine.close()
    assert needs["decoder"] > max(needs["unet"], needs["text_encoder"])
    return needs["decoder"]


def _run(
    tmp_path: Path, root: Path, budget: int | None, *, dirs: tuple[Path, ...] = (), **params: Any
) -> TaskResult:
    state = tmp_path / f"state{len(list(tmp_path.glob('state*')))}"
    model_dirs = [str(d) for d in dirs]
    result: TaskResult = run_generation(
        root, {**PARAMS, **params}, budget=budget, state_dir=str(state), model_dirs=model_dirs
    )
    return result


def _same_image(a: TaskResult, b: TaskResult) -> bool:
    return bool(np.array_equal(a.outputs["image"], b.outputs["image"]))


def test_auto_takes_the_vae_when_it_fits(sd_root: Path, vae_whole: int, tmp_path: Path) -> None:
    auto = _run(tmp_path, sd_root, vae_whole)
    assert auto.meta["decoder"] == "vae"
    assert auto.meta["decoder_tile"] == 0
    assert "is left" in auto.meta["decoder_choice"]
    explicit = _run(tmp_path, sd_root, vae_whole, decoder="vae")
    assert explicit.meta["decoder_choice"] == "asked"
    assert _same_image(auto, explicit)


def test_auto_takes_the_dirs_tiny_decoder_when_the_vae_does_not_fit(
    sd_root: Path, vae_whole: int, tmp_path: Path
) -> None:
    root = tmp_path / "with-tiny"
    shutil.copytree(sd_root, root)
    make_tiny_vae_decoder(root / "vae_decoder_tiny" / "model.onnx", channels=8, seed=9)
    auto = _run(tmp_path, root, vae_whole - 1)
    assert auto.meta["decoder"] == "tiny"
    assert "tiny decoder tiny (SD latents)" in auto.meta["decoder_choice"]
    explicit = _run(tmp_path, root, vae_whole - 1, decoder="tiny")
    assert _same_image(auto, explicit)
    # Unlimited: the VAE again, and its image is not the tiny decoder's.
    assert _run(tmp_path, root, None).meta["decoder"] == "vae"


def test_auto_takes_a_shared_tiny_decoder_of_the_models_latents(
    sd_root: Path, vae_whole: int, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    make_tiny_vae_decoder(shared / "taesd_decoder.onnx", channels=8, seed=11)
    auto = _run(tmp_path, sd_root, vae_whole - 1, dirs=(shared,))
    assert auto.meta["decoder"] == "taesd"
    explicit = _run(tmp_path, sd_root, vae_whole - 1, dirs=(shared,), decoder="taesd")
    assert _same_image(auto, explicit)


def test_auto_tiles_the_vae_when_no_tiny_decoder_exists(
    sd_root: Path, vae_whole: int, tmp_path: Path
) -> None:
    auto = _run(tmp_path, sd_root, vae_whole - 1)
    assert auto.meta["decoder"] == "vae"
    assert 0 < auto.meta["decoder_tile"] < SIZE // 8  # tiles sized from the budget
    assert "no tiny decoder fits" in auto.meta["decoder_choice"]
    explicit = _run(tmp_path, sd_root, vae_whole - 1, decoder="vae")  # honoured, tiled
    assert explicit.meta["decoder_tile"] == auto.meta["decoder_tile"]
    assert _same_image(auto, explicit)


def test_auto_never_takes_a_tiny_decoder_of_other_latents(tmp_path: Path) -> None:
    """An SDXL-class dir with only SD tiny decoders around keeps its own VAE (tiled)."""
    root = make_tiny_sdxl_dir(tmp_path / "xl")
    _heavy_vae(root / "vae_decoder" / "model.onnx")
    shared = tmp_path / "shared"
    for name in ("taesd_decoder.onnx", "vaelight_decoder.onnx"):
        make_tiny_vae_decoder(shared / name, channels=8)
    engine = Engine(load_settings(overrides={"model_dirs": [str(shared)]}))
    try:
        model = ModelDir.load(root)
        budget = stage_needs(engine, root, pixels=SIZE * SIZE)["decoder"] - 1
        residency = Residency(engine, root, strategy="staged", budget=budget, pixels=SIZE * SIZE)
        chosen = choose_decoder(residency, model, engine)
        assert chosen.name == "vae"
        assert "taesdxl: not found" in chosen.reason
        make_tiny_vae_decoder(shared / "taesdxl_decoder.onnx", channels=8)
        assert choose_decoder(residency, model, engine).name == "taesdxl"
    finally:
        engine.close()


def test_a_tiny_decoder_of_another_family_is_named_not_misread(
    tmp_path: Path, shared_models: Path
) -> None:
    """VAElight copied into vae_decoder_tiny/ without config.json is read as TAESD: its first
    output is 1x, so tile blending failed with a numpy broadcast error. The decode now says
    what to write; with the family named, the same dir decodes."""
    from edged.errors import ModelLoadError

    root = make_tiny_sd_dir(tmp_path / "sd")
    tiny = root / "vae_decoder_tiny"
    tiny.mkdir()
    shutil.copy(shared_models / "vaelight_decoder.onnx", tiny / "model.onnx")
    with pytest.raises(
        ModelLoadError, match=r'config\.json, e\.g\. \{"edged_decoder": "vaelight"\}'
    ):
        _run(tmp_path, root, None, decoder="tiny")
    (tiny / "config.json").write_text('{"edged_decoder": "vaelight"}')
    result = _run(tmp_path, root, None, decoder="tiny")
    assert result.outputs["image"].shape == (SIZE, SIZE, 3)
    assert result.meta["decoder"] == "tiny"
