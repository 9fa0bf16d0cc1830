"""``params.lora`` stays inside the model dirs, is size-limited, never echoes file content,
and its merged sidecars live in a bounded LRU under cache_dir (issue #15 item 5).

Real tiny SD dirs, real .safetensors files, real onnxruntime; one real daemon over ZeroMQ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.config import Settings
from edged.engine import Engine
from edged.errors import BadRequest, TooLarge
from edged.tasks.base import TaskRequest
from edged.tasks.generation.staged import clear_embedding_cache
from edged.testing import make_tiny_lora, make_tiny_sd_dir, name_like_exporter
from edged.testing.daemon import Daemon, config_toml
from edged.wire.client import Client

SECRET = "SECRET-7f3a9c"
SMALL = {"width": 64, "height": 64, "seed": 3, "steps": 1, "decoder_tile": 0}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    sd = make_tiny_sd_dir(root / "tiny")
    name_like_exporter(sd / "unet" / "model.onnx")
    make_tiny_lora(sd / "loras" / "style.safetensors")
    return root


def _engine(models: Path, **generation: Any) -> Engine:
    clear_embedding_cache()
    return Engine(Settings(model_dirs=[models], generation=generation))


@pytest.fixture
def engine(models: Path) -> Iterator[Engine]:
    eng = _engine(models)
    yield eng
    eng.close()


def run(engine: Engine, model: Path, **params: Any) -> Any:
    request = TaskRequest("generation", str(model), prompt="a kite", params={**SMALL, **params})
    return engine.run(request)


def _secret_safetensors(path: Path) -> Path:
    """A file that parses as far as the header and carries the secret in a bad dtype."""
    header = json.dumps({"w": {"dtype": SECRET, "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    return path


def test_paths_outside_the_model_dirs_are_refused(engine: Engine, models: Path) -> None:
    sd = models / "tiny"
    outside = sd.parent.parent / "outside.safetensors"
    make_tiny_lora(outside)
    (sd / "loras" / "escape.safetensors").symlink_to(outside)
    for name in ("/etc/shadow", "/proc/self/environ", str(outside), "escape", "../../x"):
        with pytest.raises(BadRequest) as info:
            run(engine, sd, lora=name)
        assert info.value.wire_code == "bad_request"
        assert "outside" in str(info.value) or "NAME" in str(info.value), name
    # Inside: by NAME, by absolute path in loras/, and by a path anywhere in a model_dirs entry.
    shared = models / "adapters" / "style2.safetensors"
    make_tiny_lora(shared)
    styled = run(engine, sd, lora="style").outputs["image"]
    assert np.array_equal(
        run(engine, sd, lora=str(sd / "loras" / "style.safetensors")).outputs["image"], styled
    )
    assert np.array_equal(run(engine, sd, lora=str(shared)).outputs["image"], styled)


def test_errors_name_the_file_never_its_content(engine: Engine, models: Path) -> None:
    sd = models / "tiny"
    _secret_safetensors(sd / "loras" / "dtype.safetensors")
    (sd / "loras" / "text.safetensors").write_text(f"{SECRET}\n{SECRET}\n")
    header = json.dumps({SECRET: {"dtype": "F32", "shape": [9], "data_offsets": [0, 99]}}).encode()
    (sd / "loras" / "offsets.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (models / "env.safetensors").write_text(f"PASSWORD={SECRET}")
    for name in ("dtype", "text", "offsets", str(models / "env.safetensors")):
        with pytest.raises(BadRequest) as info:
            run(engine, sd, lora=name)
        message = str(info.value)
        assert SECRET not in message, message
        assert ".safetensors" in message
        assert "\n" not in message


def test_oversized_files_are_too_large(models: Path) -> None:
    sd = models / "tiny"
    with open(sd / "loras" / "huge.safetensors", "wb") as file:
        file.truncate(1 << 30)  # sparse: 1 GB that would be read whole before the limit
    engine = _engine(models)
    try:
        with pytest.raises(TooLarge, match=r"huge\.safetensors .*lora_max_bytes"):
            run(engine, sd, lora="huge")
    finally:
        engine.close()
    small_limit = _engine(models, lora_max_bytes=1000)
    try:
        with pytest.raises(TooLarge) as info:
            run(small_limit, sd, lora="style")
        assert info.value.wire_code == "too_large"
    finally:
        small_limit.close()


def test_sidecars_live_in_cache_dir_and_stay_bounded(models: Path) -> None:
    sd = models / "tiny"
    before = sorted(p.name for p in sd.rglob("*"))
    engine = _engine(models, lora_cache_entries=2)
    try:
        cache = engine.settings.cache_dir / "lora"
        images = []
        for scale in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            images.append(run(engine, sd, lora="style", lora_scale=scale).outputs["image"])
            sidecars = [p for p in cache.iterdir() if not p.name.startswith(".")]
            assert 1 <= len(sidecars) <= 2
        assert all(any(p.suffix == ".onnx" for p in d.iterdir()) for d in sidecars)
        assert not any(name.startswith(".tmp") for name in os.listdir(cache))
        # Evicted sidecars are rebuilt on demand and give the same image.
        again = run(engine, sd, lora="style", lora_scale=0.1).outputs["image"]
        assert np.array_equal(again, images[0])
    finally:
        engine.close()
    assert sorted(p.name for p in sd.rglob("*")) == before  # nothing written to the model dir


def test_daemon_refuses_a_lora_outside_the_model_dirs(tmp_path: Path, models: Path) -> None:
    work = tmp_path / "d"
    work.mkdir()
    config = work / "edged.toml"
    config.write_text(config_toml({"model_dirs": [str(models)], "log_format": "json"}))
    with Daemon(config, work) as daemon, Client(daemon.requests_endpoint, timeout_s=60) as client:
        for name in ("/etc/shadow", "/proc/self/environ"):
            with pytest.raises(BadRequest) as info:
                client.request(
                    "generation", model="tiny", prompt="a", params={**SMALL, "lora": name}
                )
            assert info.value.wire_code == "bad_request"
            assert "outside" in str(info.value)
        styled = client.request(
            "generation", model="tiny", prompt="a", params={**SMALL, "lora": "style"}
        )
        assert styled.outputs["image"].shape == (64, 64, 3)
        assert daemon.alive()
