"""Issue 18, part 2: text encoder and UNet in parts give the resident image exactly; parts
sized by a budget (``edged models split --budget``); the daemon at its default budget on a dir
with parts; progress with a time estimate.

Tiny real-IO model dirs (edged.testing), real onnxruntime sessions, the real memory pool, a
real daemon subprocess.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edged.config import load_settings
from edged.engine import Engine
from edged.graph.split import read_parts, split_model
from edged.pool.model_pool import ModelPool
from edged.tasks.base import TaskRequest
from edged.tasks.generation.budget import PROCESS_BYTES, parts_for_process
from edged.tasks.generation.progress import ProgressLine
from edged.tasks.generation.staged import clear_embedding_cache
from edged.testing import make_tiny_sd_dir
from edged.testing.daemon import Collector, Daemon, config_toml
from edged.testing.generation import run_generation
from edged.testing.sdxl import make_tiny_sdxl_dir
from edged.wire.client import Client

PARAMS = {"width": 64, "height": 64, "seed": 7, "decoder_tile": 0}


@pytest.fixture(scope="module")
def parted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UNet and text encoder both split in 2."""
    root = make_tiny_sd_dir(
        tmp_path_factory.mktemp("parts") / "both", unet_ballast_mb=8, unet_ballast_pieces=8
    )
    split_model(root / "unet" / "model.onnx", root / "unet" / "parts", 2)
    encoder = root / "text_encoder" / "model.onnx"
    split_model(encoder, encoder.parent / "parts", 2)
    return root


def _run(budget: int | None, root: Path, **params: object) -> object:
    return run_generation(root, {**PARAMS, **params}, budget=budget)


@pytest.mark.parametrize("steps", [1, 3])
def test_parts_give_the_resident_image(parted: Path, steps: int) -> None:
    resident = _run(None, parted, residency="resident", steps=steps)
    # Under the process's own share every component that has parts runs in them.
    staged = _run(PROCESS_BYTES // 2, parted, residency="staged", steps=steps)
    assert resident.meta["unet_parts"] == 0  # type: ignore[attr-defined]
    assert staged.meta["unet_parts"] == 2  # type: ignore[attr-defined]
    assert staged.meta["text_encoder_parts"] == 2  # type: ignore[attr-defined]
    assert np.array_equal(resident.outputs["image"], staged.outputs["image"])  # type: ignore[attr-defined]


def test_sdxl_encoders_and_unet_in_parts_give_the_resident_image(tmp_path: Path) -> None:
    """SDXL's CLIPs output every hidden state, each also the next layer's input: the parted
    run must keep those outputs although a later part reads them."""
    root = make_tiny_sdxl_dir(tmp_path / "xl")
    for component in ("unet", "text_encoder", "text_encoder_2"):
        path = root / component / "model.onnx"
        split_model(path, path.parent / "parts", 2)
    resident = _run(None, root, residency="resident")
    staged = _run(PROCESS_BYTES // 2, root, residency="staged")
    assert staged.meta["unet_parts"] == 2  # type: ignore[attr-defined]
    assert staged.meta["text_encoder_parts"] == 2  # type: ignore[attr-defined]
    assert np.array_equal(resident.outputs["image"], staged.outputs["image"])  # type: ignore[attr-defined]


def test_staged_evictions_run_no_full_gc(parted: Path) -> None:
    """Each part's eviction trims the heap but runs no gc.collect (~30 ms each, ~0.9 s a
    request on the full-size UNet in 23 parts); the pool's other evictions still collect.
    With automatic collection off, every collection seen is an explicit one."""
    import gc

    clear_embedding_cache()
    engine = Engine(load_settings(overrides={"memory_budget": PROCESS_BYTES // 2}))
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    params = {**PARAMS, "residency": "staged"}
    request = TaskRequest("generation", str(parted), prompt="a kite", params=params)
    gc.disable()
    gc.callbacks.append(seen)
    try:
        result = engine.run(request)
        during = list(collections)
        pool: ModelPool[object] = ModelPool(10_000_000)
        with pool.acquire("other", object, estimate_bytes=1000):
            pass
        pool.evict("other")
    finally:
        gc.callbacks.remove(seen)
        gc.enable()
        engine.close()
    assert result.meta["unet_parts"] == 2
    assert engine.pool.stats()["evictions"] >= 5  # both encoder parts, both UNet parts, decoder
    assert during == []
    assert collections == [2]  # a plain evict still runs its full collection


def test_whole_when_it_leaves_room_for_the_process(parted: Path) -> None:
    result = _run(None, parted)  # the default budget: everything fits
    assert result.meta["unet_parts"] == 0  # type: ignore[attr-defined]
    assert result.meta["text_encoder_parts"] == 0  # type: ignore[attr-defined]


def _split_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "edged", "models", "split", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def test_split_budget_sizes_parts_by_the_plan(tmp_path: Path) -> None:
    root = make_tiny_sd_dir(tmp_path / "d", unet_ballast_mb=8, unet_ballast_pieces=8)
    unet = root / "unet" / "model.onnx"
    budget = PROCESS_BYTES + 12_000_000
    expected = parts_for_process("unet", unet, budget, 512 * 512)
    assert expected is not None
    assert expected > 2
    done = _split_cli(str(root), "--budget", str(budget))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = read_parts(root / "unet" / "parts")
    assert manifest is not None
    assert len(manifest.parts) == expected
    assert len(json.loads(done.stdout)["parts"]) == expected
    # A larger budget needs fewer parts; --parts N still works.
    fewer = parts_for_process("unet", unet, budget + 12_000_000, 512 * 512)
    assert fewer is not None
    assert fewer < expected
    again = _split_cli(str(root), "--parts", "3", "--out", str(tmp_path / "three"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(read_parts(tmp_path / "three").parts) == 3  # type: ignore[union-attr]


def test_split_budget_below_the_process_names_what_to_do(tmp_path: Path) -> None:
    root = make_tiny_sd_dir(tmp_path / "d")
    done = _split_cli(str(root), "--budget", "50M")
    assert done.returncode != 0
    assert "--budget" in done.stderr
    assert "--parts" in done.stderr
    assert not (root / "unet" / "parts").exists()


def test_daemon_at_its_default_budget_on_a_dir_with_parts(parted: Path, tmp_path: Path) -> None:
    """The daemon's own budget (none configured) on a dir with parts: one reply with the
    resident image, and the stage progress published as events."""
    reference = _run(None, parted, residency="resident")
    work = tmp_path / "d"
    work.mkdir()
    config = work / "edged.toml"
    top = {"model_dirs": [str(parted.parent)], "log_format": "json"}
    config.write_text(config_toml(top, {"zmq": {"stats_interval_s": 0.2}}))
    with Daemon(config, work) as daemon, Client(daemon.requests_endpoint, timeout_s=120) as client:
        events = Collector(daemon.results_endpoint)
        assert events.until(lambda m: m.topic == "stats", timeout=10)  # subscribed
        reply = client.request("generation", model=parted.name, prompt="a kite", params=PARAMS)
        assert np.array_equal(reply.outputs["image"], reference.outputs["image"])  # type: ignore[attr-defined]
        assert reply.header["meta"]["residency"] in ("resident", "staged")
        assert events.until(lambda m: m.topic == "events.generation", timeout=10)
        messages = [m.header["data"]["message"] for m in events.results("events.generation")]
        assert "text_encoder: done" in messages
        assert any(m.startswith("unet: step 1/1") for m in messages)
        assert daemon.alive()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_estimates_from_each_stage_rate() -> None:
    clock, out = _Clock(), io.StringIO()
    line = ProgressLine(out, clock=clock)
    clock.now += 2.0
    line(1, 6, "text_encoder: done")
    clock.now += 4.0
    line(2, 6, "unet: step 1/2 t=999")
    # One UNet step left at its own 4 s, three decoder tiles at the overall 3 s per unit.
    assert line.estimate(2, 6, "unet: step 1/2 t=999") == pytest.approx(4.0 + 3 * 3.0)
    assert out.getvalue().endswith("[2/6] unet: step 1/2 t=999  6.0 s, ~13 s left")
    clock.now += 4.0
    line(3, 6, "unet: step 2/2 t=499")
    for tile in (1, 2, 3):
        clock.now += 0.5
        line(3 + tile, 6, f"decoder: tile {tile}/3")
    text = out.getvalue()
    # Done: no estimate, the shorter line padded over the last one, and ended.
    assert text.rstrip(" \n").endswith("\r[6/6] decoder: tile 3/3  11.5 s")
    assert text.endswith("\n")
    assert text.count("\n") == 1


def test_bench_reports_the_peak_of_each_stage(parted: Path) -> None:
    """``edged bench generation``'s child (``python -m edged.bench.generation``) splits its
    peak by stage."""
    argv = [sys.executable, "-m", "edged", "bench", "generation", "--model-dir", str(parted)]
    argv += ["--budget", str(PROCESS_BYTES // 2), "--residency", "staged", "--size", "64"]
    argv += ["--no-baseline", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    stages = report["peak_bytes_per_stage"]
    assert list(stages) == ["text_encoder", "unet", "decoder"]
    assert all(0 < peak <= report["peak_rss_bytes"] for peak in stages.values())
    assert report["unet_parts"] == 2
    assert report["text_encoder_parts"] == 2
