"""Cutting a model into parts (``edged models split``) and staged generation part by part.

Real onnxruntime sessions on generated UNet graphs (fp32 and dynamic-int8, whose
DynamicQuantizeLinear / MatMulInteger / ConvInteger outputs ONNX's own inference cannot type),
the real memory pool and the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edged.cli import main
from edged.config import load_settings
from edged.engine import Engine
from edged.errors import BadRequest, ModelLoadError
from edged.graph.split import choose_cuts, read_parts, split_model
from edged.tasks.base import TaskRequest
from edged.tasks.generation import stage_needs
from edged.tasks.generation.staged import clear_embedding_cache
from edged.testing import make_tiny_sd_dir
from edged.testing.generation import make_tiny_unet


def _feeds(timestep_int64: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "sample": rng.standard_normal((1, 4, 16, 8)).astype(np.float32),
        "timestep": np.array([999], np.int64 if timestep_int64 else np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32)).astype(np.float32),
    }


def _run_parts(directory: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    manifest = read_parts(directory)
    assert manifest is not None
    env: dict[str, Any] = dict(feeds)
    for part in manifest.parts:
        session = ort.InferenceSession(str(directory / part.path))
        names = [o.name for o in session.get_outputs()]
        env.update(zip(names, session.run(None, {n: env[n] for n in part.inputs}), strict=True))
    return np.asarray(env[manifest.outputs[0]["name"]])


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("timestep_int64", [False, True])
def test_parts_in_sequence_equal_the_whole_model(
    tmp_path: Path, parts: int, timestep_int64: bool
) -> None:
    src = make_tiny_unet(tmp_path / "unet" / "model.onnx", timestep_int64=timestep_int64)
    infos = split_model(src, tmp_path / "parts", parts)
    assert len(infos) == parts
    assert all(i.nodes > 0 for i in infos)
    feeds = _feeds(timestep_int64)
    whole = ort.InferenceSession(str(src)).run(None, feeds)[0]
    assert np.array_equal(_run_parts(tmp_path / "parts", feeds), whole)
    manifest = read_parts(tmp_path / "parts")
    assert manifest is not None
    assert [i["name"] for i in manifest.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert manifest.inputs[1]["dtype"] == ("int64" if timestep_int64 else "float32")


def test_quantized_graph_splits_with_onnxruntime_types(tmp_path: Path) -> None:
    """Contrib-op outputs crossing a cut get their type from onnxruntime, not ONNX inference."""
    from edged.quantization.onnx_quantizer import quantize_file

    src = make_tiny_unet(tmp_path / "fp32.onnx", ballast_mb=1.0)
    q = tmp_path / "unet" / "model.onnx"
    q.parent.mkdir()
    quantize_file(src, q, "dynamic-int8")
    infos = split_model(q, tmp_path / "parts", 3)
    crossing = {name for info in infos[1:] for name in info.inputs} - set(_feeds())
    assert crossing  # something really crosses the cuts
    whole = ort.InferenceSession(str(q)).run(None, _feeds())[0]
    assert np.array_equal(_run_parts(tmp_path / "parts", _feeds()), whole)


def test_cuts_balance_weights_and_avoid_busy_places() -> None:
    weights = [10] * 10
    assert choose_cuts(weights, [1] * 11, 2) == [5]
    # Within a quarter of a part's share of the target, the place with fewer crossings wins.
    crossing = [1] * 11
    crossing[6] = 0
    assert choose_cuts(weights, crossing, 2) == [6]
    crossing[9] = -5  # too far from the target to be taken
    assert choose_cuts(weights, crossing, 2) == [6]
    assert choose_cuts([0, 0, 100, 0, 0, 100, 0], [0] * 8, 2) == [3]


def test_bad_splits_are_clear_errors(tmp_path: Path) -> None:
    src = make_tiny_unet(tmp_path / "model.onnx")
    with pytest.raises(BadRequest, match="at least 2"):
        split_model(src, tmp_path / "p", 1)
    with pytest.raises(BadRequest, match="only"):
        split_model(src, tmp_path / "p", 500)
    with pytest.raises(BadRequest, match="no such model"):
        split_model(tmp_path / "missing.onnx", tmp_path / "p", 2)
    split_model(src, tmp_path / "p", 2)
    (tmp_path / "p" / "part1.onnx").unlink()
    with pytest.raises(ModelLoadError, match="edged models split"):
        read_parts(tmp_path / "p")
    (tmp_path / "p" / "parts.json").write_text("{", "utf-8")
    with pytest.raises(ModelLoadError, match="edged models split"):
        read_parts(tmp_path / "p")


def test_cli_split_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "split", str(tmp_path)]) != 0
    assert "unet/model.onnx" in capsys.readouterr().err


def _generate(engine: Engine, model: Path, **params: Any) -> Any:
    params = {"width": 64, "height": 64, "seed": 4, "decoder_tile": 0, **params}
    return engine.run(TaskRequest("generation", str(model), prompt="a red kite", params=params))


def test_staged_generation_runs_the_unet_in_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Budget below the whole UNet's estimate: staged runs it part by part, same image."""
    sd = make_tiny_sd_dir(tmp_path / "heavy", unet_ballast_mb=24, unet_ballast_pieces=3)
    assert main(["models", "split", str(sd), "--parts", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["parts"]) == 3
    clear_embedding_cache()
    resident = Engine(load_settings())
    try:
        reference = _generate(resident, sd, residency="resident", steps=2, width=256, height=256)
        assert reference.meta["unet_parts"] == 0
        # Whole UNet: 2 x 24 MB (the pool's size rule); each ~8 MB part fits, the whole not.
        budget = stage_needs(resident, sd, pixels=256 * 256)["unet"] - 1
    finally:
        resident.close()
    clear_embedding_cache()
    engine = Engine(load_settings(overrides={"memory_budget": budget}))
    try:
        staged = _generate(engine, sd, residency="staged", steps=2, width=256, height=256)
        stats = engine.pool.stats()
    finally:
        engine.close()
    assert staged.meta["unet_parts"] == 3
    # onnxruntime fuses ops differently when a cut separates them: float rounding may move a
    # pixel by one level, rarely. Anything more is a wrong split.
    diff = np.abs(staged.outputs["image"].astype(int) - reference.outputs["image"].astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3
    # text encoder + 3 parts in each of 2 steps + decoder, each evicted after use
    assert stats["loads"] == 1 + 3 * 2 + 1
    assert stats["resident_bytes"] == 0


def test_whole_unet_when_it_fits_even_if_parts_exist(tmp_path: Path) -> None:
    sd = make_tiny_sd_dir(tmp_path / "tiny")
    split_model(sd / "unet" / "model.onnx", sd / "unet" / "parts", 2)
    clear_embedding_cache()
    engine = Engine(load_settings(overrides={"memory_budget": 1_000_000_000}))
    try:
        staged = _generate(engine, sd, residency="staged")
    finally:
        engine.close()
    assert staged.meta["residency"] == "staged"
    assert staged.meta["unet_parts"] == 0
