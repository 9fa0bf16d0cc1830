"""LoRA adapters merged at load, per request, on tiny real-IO SD dirs (real onnxruntime, pool).

The tiny UNet's to_q MatMul and conv_in Conv carry the node names torch.onnx.export gives
those layers; adapters are real .safetensors files in PEFT and kohya key styles.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edged.config import load_settings
from edged.engine import Engine
from edged.errors import BadRequest
from edged.graph.split import split_model
from edged.tasks.base import TaskRequest
from edged.tasks.generation import stage_needs
from edged.tasks.generation.lora import read_safetensors
from edged.tasks.generation.staged import clear_embedding_cache
from edged.testing import make_tiny_lora, make_tiny_sd_dir, name_like_exporter
from edged.testing.generation import make_tiny_unet


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_tiny_sd_dir(tmp_path_factory.mktemp("lora") / "tiny")
    name_like_exporter(root / "unet" / "model.onnx")
    make_tiny_lora(root / "loras" / "style.safetensors")
    make_tiny_lora(root / "loras" / "style-kohya.safetensors", style="kohya")
    return root


@pytest.fixture
def engine() -> Iterator[Engine]:
    clear_embedding_cache()
    eng = Engine(load_settings())
    yield eng
    eng.close()


def image(engine: Engine, model: Path, **params: Any) -> np.ndarray:
    params = {"width": 64, "height": 64, "seed": 3, "decoder_tile": 0, **params}
    result = engine.run(TaskRequest("generation", str(model), prompt="a red kite", params=params))
    return np.asarray(result.outputs["image"])


def test_lora_changes_the_image_and_switches_per_request(engine: Engine, sd: Path) -> None:
    base = image(engine, sd)
    styled = image(engine, sd, lora="style")
    assert not np.array_equal(base, styled)
    assert np.array_equal(image(engine, sd), base)  # the base session is untouched
    assert np.array_equal(image(engine, sd, lora="style", lora_scale=0.0), base)
    assert np.array_equal(image(engine, sd, lora=str(sd / "loras" / "style.safetensors")), styled)
    # kohya keys (lora_unet_*, alpha = rank) name the same modules with the same weights
    assert np.array_equal(image(engine, sd, lora="style-kohya"), styled)
    half = image(engine, sd, lora="style", lora_scale=0.5)
    assert not np.array_equal(half, styled)
    assert not np.array_equal(half, base)


def _merge_offline(sd: Path, dest: Path) -> Path:
    """The same model with the adapter merged into the file by plain numpy."""
    shutil.copytree(sd, dest)
    lora = read_safetensors(sd / "loras" / "style.safetensors")
    unet = dest / "unet" / "model.onnx"
    model = onnx.load(str(unet))
    q = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    for tensor in model.graph.initializer:
        base = numpy_helper.to_array(tensor)
        if tensor.name == "Wq":  # MatMul weight [in, out]
            merged = base + (lora[f"{q}.lora_B.weight"] @ lora[f"{q}.lora_A.weight"]).T
        elif tensor.name == "Win":  # conv weight [out, in, 3, 3]
            up = lora["unet.conv_in.lora_B.weight"].reshape(base.shape[0], -1)
            down = lora["unet.conv_in.lora_A.weight"].reshape(up.shape[1], -1)
            merged = base + (up @ down).reshape(base.shape)
        else:
            continue
        tensor.CopyFrom(numpy_helper.from_array(merged.astype(np.float32), tensor.name))
    onnx.save(model, str(unet))
    return dest


def test_lora_equals_the_weights_merged_offline(engine: Engine, sd: Path, tmp_path: Path) -> None:
    merged = _merge_offline(sd, tmp_path / "merged")
    a, b = image(engine, sd, lora="style").astype(int), image(engine, merged).astype(int)
    assert np.array_equal(a, b)


def test_lora_with_the_unet_in_parts(sd: Path, tmp_path: Path) -> None:
    root = tmp_path / "parted"
    shutil.copytree(sd, root)
    # 2 x 4 MB of ballast: the whole UNet can miss a budget its parts fit.
    make_tiny_unet(root / "unet" / "model.onnx", ballast_mb=8, ballast_pieces=2)
    name_like_exporter(root / "unet" / "model.onnx")
    split_model(root / "unet" / "model.onnx", root / "unet" / "parts", 2)
    clear_embedding_cache()
    whole = Engine(load_settings())
    try:
        reference = image(whole, root, lora="style", residency="resident")
        budget = stage_needs(whole, root, pixels=64 * 64)["unet"] - 1
    finally:
        whole.close()
    clear_embedding_cache()
    tight = Engine(load_settings(overrides={"memory_budget": budget}))
    try:
        result = tight.run(
            TaskRequest(
                "generation",
                str(root),
                prompt="a red kite",
                params={
                    "width": 64,
                    "height": 64,
                    "seed": 3,
                    "decoder_tile": 0,
                    "lora": "style",
                    "residency": "staged",
                },
            )
        )
    finally:
        tight.close()
    assert result.meta["unet_parts"] == 2
    assert result.meta["lora"] == "style.safetensors"
    diff = np.abs(np.asarray(result.outputs["image"], int) - reference.astype(int))
    assert diff.max() <= 1


def test_bad_adapters_are_clear_errors(engine: Engine, sd: Path, tmp_path: Path) -> None:
    from edged.quantization.onnx_quantizer import quantize_file
    from edged.testing import write_safetensors

    with pytest.raises(BadRequest, match="no such file"):
        image(engine, sd, lora="nope")
    with pytest.raises(BadRequest, match="lora_scale"):
        image(engine, sd, lora="style", lora_scale="x")
    # Adapters are confined to <model dir>/loras and model_dirs: the bad ones live there too.
    stray = write_safetensors(
        sd / "loras" / "stray.safetensors",
        {
            "unet.down_blocks.9.to_k.lora_A.weight": np.zeros((2, 64), np.float32),
            "unet.down_blocks.9.to_k.lora_B.weight": np.zeros((64, 2), np.float32),
        },
    )
    with pytest.raises(BadRequest, match="not found"):
        image(engine, sd, lora=str(stray))
    (sd / "loras" / "junk.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(BadRequest, match="safetensors"):
        image(engine, sd, lora="junk")
    quant = tmp_path / "quant"
    shutil.copytree(sd, quant)
    unet = quant / "unet" / "model.onnx"
    quantize_file(sd / "unet" / "model.onnx", unet, "dynamic-int8")
    with pytest.raises(BadRequest, match="quantized UNet"):
        image(engine, quant, lora="style")


def test_lcm_lora_request_samples_with_lcm_on_an_euler_dir(engine: Engine, sd: Path) -> None:
    """LCM-LoRA's use: an adapter plus ``scheduler=lcm`` on a dir that ships an Euler config
    (the sampler itself is checked against diffusers by tools/diffusers_parity.py)."""
    request = TaskRequest(
        "generation", str(sd), prompt="a red kite", params={"width": 64, "height": 64}
    )
    request.params.update(lora="style", scheduler="lcm", seed=3)
    lcm = engine.run(request)
    assert lcm.meta["scheduler"] == "LCMScheduler"
    assert (lcm.meta["steps"], lcm.meta["guidance_scale"]) == (4, 1.0)  # LCM-LoRA's defaults
    assert lcm.meta["lora"] == "style.safetensors"
    euler = image(engine, sd, lora="style", steps=4, guidance_scale=1.0)
    assert not np.array_equal(lcm.outputs["image"], euler)
    with pytest.raises(BadRequest, match="scheduler 'ddim'"):
        image(engine, sd, scheduler="ddim")
