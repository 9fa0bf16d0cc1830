"""SDXL-class model dirs: two text encoders, pooled text_embeds and time_ids reach the UNet.

Tiny graphs with SDXL's real IO (edged.testing.sdxl), real onnxruntime sessions, the real
pool, and a real request server for the remote text encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.config import load_settings
from edged.daemon.server import RequestServer
from edged.engine import Engine
from edged.errors import BadRequest, ModelLoadError
from edged.runtime import config_for, open_session
from edged.tasks.base import TaskRequest, TaskResult
from edged.tasks.generation import encode_text, sdxl
from edged.tasks.generation.pipeline import ModelDir
from edged.tasks.generation.remote import request_embeddings
from edged.tasks.generation.staged import clear_embedding_cache
from edged.tasks.generation.tokenizer import ClipTokenizer
from edged.testing import zmq_settings
from edged.testing.sdxl import DIMS, POOLED, make_tiny_sdxl_dir
from edged.wire.protocol import Request


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sdxl_dir(tmp_path_factory.mktemp("gen") / "tiny-sdxl-turbo")


@pytest.fixture
def engine() -> Iterator[Engine]:
    clear_embedding_cache()
    eng = Engine(load_settings())
    yield eng
    eng.close()


def _generate(engine: Engine, root: Path, prompt: str = "a photo of a cat", **params: Any) -> Any:
    params = {"width": 64, "height": 64, **params}
    return engine.run(TaskRequest(task="generation", model=str(root), prompt=prompt, params=params))


def test_model_dir_is_read_as_sdxl_turbo(xl_dir: Path) -> None:
    model = ModelDir.load(xl_dir)
    assert model.sdxl
    assert model.family == "sdxl-turbo"
    assert model.defaults() == (1, 0.0)
    assert model.vae_scaling == pytest.approx(0.13025)  # from vae_decoder/config.json
    # The second tokenizer pads with "!", the first with EOS, as SDXL's do.
    first, second = ClipTokenizer(xl_dir / "tokenizer"), ClipTokenizer(xl_dir / "tokenizer_2")
    assert first.encode("a cat")[-1] == first.eos_id
    assert second.encode("a cat")[-1] == second.pad_id != second.eos_id


def test_conditioning_is_both_penultimate_states_and_the_pooled_row(xl_dir: Path) -> None:
    packed = encode_text(None, "a red house", xl_dir)
    assert packed.shape == (1, 78, sum(DIMS))
    ids = [ClipTokenizer(xl_dir / t).encode("a red house") for t in ("tokenizer", "tokenizer_2")]
    expected_hidden, pooled = [], None
    for name, tokens in zip(("text_encoder", "text_encoder_2"), ids, strict=True):
        session = open_session(config_for("onnx:cpu"), xl_dir / name / "model.onnx")
        out = session.run({"input_ids": tokens[None]})
        session.close()
        expected_hidden.append(out["hidden_states.1"])  # penultimate of .0 .. .2
        pooled = out.get("text_embeds", pooled)
    assert pooled is not None
    # Sessions opened with other options (threads, pre-packing) may differ in the last bit.
    hidden = np.concatenate(expected_hidden, axis=-1)
    np.testing.assert_allclose(packed[:, :77], hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(packed[0, 77, :POOLED], pooled[0], rtol=1e-5, atol=1e-6)
    assert not packed[0, 77, POOLED:].any()


def test_same_seed_same_image_and_staged_equals_resident(engine: Engine, xl_dir: Path) -> None:
    first = _generate(engine, xl_dir, seed=3, residency="resident")
    again = _generate(engine, xl_dir, seed=3, residency="resident")
    other = _generate(engine, xl_dir, seed=4, residency="resident")
    assert first.meta["family"] == "sdxl-turbo"
    assert first.outputs["image"].shape == (64, 64, 3)
    assert np.array_equal(first.outputs["image"], again.outputs["image"])
    assert not np.array_equal(first.outputs["image"], other.outputs["image"])
    clear_embedding_cache()
    staged = _generate(engine, xl_dir, seed=3, residency="staged")
    assert staged.meta["residency"] == "staged"
    assert np.array_equal(first.outputs["image"], staged.outputs["image"])
    # Staged: every component was evicted after its stage, both text encoders included.
    assert not any("text_encoder" in m["key"] for m in engine.pool.stats()["models"])


def test_prompt_changes_the_image_and_time_ids_follow_the_size(
    engine: Engine, xl_dir: Path
) -> None:
    """The tiny UNet requires and uses text_embeds and time_ids (onnxruntime refuses a run
    without them), so an image at all proves they are fed; a prompt changes it."""
    cat = _generate(engine, xl_dir, seed=1)
    dog = _generate(engine, xl_dir, "a photo of a dog", seed=1)
    assert not np.array_equal(cat.outputs["image"], dog.outputs["image"])
    assert sdxl.time_ids(64, 96, 2).tolist() == [[64, 96, 0, 0, 64, 96]] * 2


def test_cfg_with_an_empty_negative_prompt_uses_zero_conditioning(
    engine: Engine, xl_dir: Path
) -> None:
    zeros = _generate(engine, xl_dir, seed=2, steps=2, guidance_scale=5.0)
    negative = _generate(engine, xl_dir, seed=2, steps=2, guidance_scale=5.0, negative_prompt="sky")
    plain = _generate(engine, xl_dir, seed=2, steps=2)
    images = [r.outputs["image"] for r in (zeros, negative, plain)]
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])


def test_remote_text_encoder_gives_the_same_sdxl_image(xl_dir: Path, tmp_path: Path) -> None:
    encoder = Engine(load_settings())

    def handler(request: Request) -> TaskResult:
        return encoder.run(request.task_request)

    srv = RequestServer(zmq_settings(tmp_path / "run"), handler, workers=1)
    srv.start()
    clear_embedding_cache()
    local = Engine(load_settings())
    board = Engine(load_settings(overrides={"generation": {"text_encoder": f"zmq+{srv.endpoint}"}}))
    try:
        remote = request_embeddings(f"zmq+{srv.endpoint}", "the sky", "x", model_dir=str(xl_dir))
        assert remote.shape == (1, 78, sum(DIMS))
        expected = _generate(local, xl_dir, "the sky", seed=6)
        clear_embedding_cache()
        got = _generate(board, xl_dir, "the sky", seed=6)
        assert got.meta["text_encoder"] == "remote"
        assert np.array_equal(expected.outputs["image"], got.outputs["image"])
        assert not any("text_encoder" in m["key"] for m in board.pool.stats()["models"])
    finally:
        srv.stop()
        for eng in (encoder, local, board):
            eng.close()


def test_an_export_without_hidden_states_is_refused_with_the_fix(xl_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="hidden states"):
        sdxl.penultimate({"last_hidden_state": np.zeros((1, 77, 4), np.float32)})
    with pytest.raises(ModelLoadError, match="text_embeds"):
        sdxl.pooled({"last_hidden_state": np.zeros((1, 77, 4), np.float32)})


def test_tiny_decoders_of_sd_latents_are_refused_before_any_step(
    engine: Engine, xl_dir: Path, tmp_path: Path
) -> None:
    from edged.testing import make_tiny_vae_decoder

    vaelight = make_tiny_vae_decoder(tmp_path / "vaelight_decoder.onnx")  # family by name
    with pytest.raises(BadRequest, match="SD latents but this is an SDXL-class model"):
        _generate(engine, xl_dir, decoder=str(vaelight))
    assert engine.pool.stats()["loads"] == 0  # nothing was loaded for a doomed request
    # A TAESDXL-family decoder (named by its file) is accepted for SDXL latents.
    taesdxl = make_tiny_vae_decoder(tmp_path / "taesdxl_decoder.onnx")
    result = _generate(engine, xl_dir, decoder=str(taesdxl), seed=1)
    assert result.outputs["image"].shape == (64, 64, 3)


def test_sdxl_unet_in_parts_gets_its_extra_inputs(tmp_path: Path) -> None:
    """`edged models split` on an SDXL UNet: text_embeds and time_ids reach the part that
    reads them, and staged mode under a budget below the whole UNet gives the same image."""
    from edged.cli import main
    from edged.tasks.generation import stage_needs
    from edged.testing.generation import make_tiny_unet
    from edged.testing.sdxl import DIMS, POOLED

    root = make_tiny_sdxl_dir(tmp_path / "xl")
    # Heavy enough (2 x 4 MB of ballast) that the whole UNet can miss a budget its parts fit.
    make_tiny_unet(
        root / "unet" / "model.onnx",
        ctx_dim=sum(DIMS),
        sdxl_pooled=POOLED,
        ballast_mb=8,
        ballast_pieces=2,
    )
    assert main(["models", "split", str(root), "--parts", "2"]) == 0
    clear_embedding_cache()
    resident = Engine(load_settings())
    try:
        reference = _generate(resident, root, residency="resident", seed=5, width=128, height=128)
        budget = stage_needs(resident, root, pixels=128 * 128)["unet"] - 1
    finally:
        resident.close()
    clear_embedding_cache()
    engine = Engine(load_settings(overrides={"memory_budget": budget}))
    try:
        staged = _generate(engine, root, residency="staged", seed=5, width=128, height=128)
    finally:
        engine.close()
    assert staged.meta["unet_parts"] == 2
    diff = np.abs(staged.outputs["image"].astype(int) - reference.outputs["image"].astype(int))
    assert diff.max() <= 1  # onnxruntime may fuse differently across a cut: a level, rarely
