"""`edged models convert`: tiny random-weight diffusers pipelines (diffusers' own test-sized
configs, saved with save_pretrained like a Hub repo) -> converted dir -> moved elsewhere (it
must be self-contained) -> `edged infer generation` gives diffusers' own image (uint8, at most
1 level apart: the tools/diffusers_parity.py standard). torch is used here only to build the
pipelines and the reference images; edged runs the converted dir without it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if not all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers")):
    pytest.skip(
        "convert tests need torch, diffusers and transformers: pip install -e '.[convert]'",
        allow_module_level=True,
    )

from edged.convert.manifest import MANIFEST

EDGED = [sys.executable, "-m", "edged"]
PROMPT = "a photo of a red house"
CASES: dict[str, dict[str, Any]] = {
    # SD-Turbo-shaped: Euler, trailing timesteps, 1 step, no CFG.
    "sd-turbo": {"steps": 1, "guidance_scale": 0.0, "height": 64, "width": 64},
    # LCM-shaped (UNet with timestep_cond, LCMScheduler): 2 steps, guidance embedded.
    "lcm": {"steps": 2, "guidance_scale": 8.0, "height": 64, "width": 64},
    # SDXL-shaped: two text encoders, text_embeds + time_ids; non-square for time_ids.
    "sdxl": {"steps": 1, "guidance_scale": 0.0, "height": 64, "width": 128},
}
FAMILY = {"sd-turbo": "sd", "lcm": "lcm", "sdxl": "sdxl"}


def edged(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGED, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


def read_png(path: Path) -> np.ndarray[Any, Any]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return np.asarray(image[:, :, ::-1])


def infer(model: Path, case: dict[str, Any], seed: int, out: Path, *extra: str) -> Any:
    params = [f"--param={k}={v}" for k, v in {**case, "seed": seed}.items()]
    run = edged(
        "infer", "generation", "--model", str(model), "--prompt", PROMPT, "--output", str(out),
        *params, *extra,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return read_png(out)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """One tiny diffusers dir per shape, and its pipeline (the reference)."""
    from edged.convert.parity import tiny_pipeline

    root = tmp_path_factory.mktemp("diffusers")
    made = {}
    for name, family in FAMILY.items():
        pipe = tiny_pipeline(family, root / f"{name}-tok")
        pipe.save_pretrained(root / name)
        made[name] = (root / name, pipe)
    return made


@pytest.fixture(scope="module")
def converted(
    sources: dict[str, tuple[Path, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The SD-Turbo-shaped dir converted with --preset fp32 (shared by the verify tests)."""
    out = tmp_path_factory.mktemp("converted") / "sd"
    run = edged(
        "models", "convert", str(sources["sd-turbo"][0]), "--to", str(out), "--preset", "fp32"
    )
    assert run.returncode == 0, run.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(CASES))
def test_convert_move_infer_matches_diffusers(
    shape: str, sources: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    from edged.convert.parity import diffusers_image

    src, pipe = sources[shape]
    out = tmp_path / "made" / shape
    run = edged("models", "convert", str(src), "--to", str(out), "--preset", "fp32")
    assert run.returncode == 0, run.stderr
    assert "[1/" in run.stderr
    assert "ETA" in run.stderr
    report = json.loads(run.stdout)
    assert report["family"] == {"sd-turbo": "sd-turbo", "lcm": "lcm", "sdxl": "sdxl-turbo"}[shape]
    moved = tmp_path / "board" / "models" / shape
    moved.parent.mkdir(parents=True)
    shutil.move(out, moved)  # the workstation -> board copy: nothing may point back
    shutil.rmtree(tmp_path / "made")
    case, seed = CASES[shape], 7
    got = infer(moved, case, seed, tmp_path / "edged.png")
    ref = diffusers_image(pipe, PROMPT, case, seed)
    # The tiny VAE upsamples x2 (two blocks), not x8: both sides decode the same latents.
    assert got.shape == ref.shape == (case["height"] // 4, case["width"] // 4, 3)
    assert int(ref.max()) - int(ref.min()) > 20  # a real picture, not a flat field
    diff = int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max())
    assert diff <= 1, f"{shape}: edged vs diffusers differ by {diff} levels"


def test_verify_accepts_the_dir_and_detects_a_changed_file(converted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy, symlinks=True)
    good = edged("models", "verify", str(copy))
    assert good.returncode == 0, good.stderr
    listed = json.loads((copy / MANIFEST).read_text())["files"]
    assert f"{len(listed)} files ok" in good.stdout
    assert "unet/model.onnx" in listed
    assert "tokenizer/vocab.json" in listed
    with (copy / "unet" / "model.onnx").open("r+b") as fh:  # one flipped byte near the end
        fh.seek(-10, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    (copy / "tokenizer" / "extra.txt").write_text("not converted")
    bad = edged("models", "verify", str(copy))
    assert bad.returncode == 1
    assert "unet/model.onnx: sha256 differs" in bad.stderr
    assert "tokenizer/extra.txt: not in" in bad.stderr


def test_verify_flags_a_symlink(converted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    target = copy / "vae_decoder" / "config.json"
    outside = tmp_path / "config.json"
    shutil.move(target, outside)
    target.symlink_to(outside)
    bad = edged("models", "verify", str(copy))
    assert bad.returncode == 1
    assert "vae_decoder/config.json: a symlink" in bad.stderr


@pytest.mark.slow
def test_board_preset_is_self_contained_and_runs(
    sources: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "made" / "sd-board"
    src = sources["sd-turbo"][0]
    run = edged(
        "models", "convert", str(src), "--to", str(out), "--preset", "board", "--budget", "1G"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["unet_parts"] >= 2
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    assert (out / "text_encoder" / "QUANTIZED").read_text().strip() == "int4-weights"
    assert (out / "unet" / "QUANTIZED").read_text().strip() == "dynamic-int8"
    assert (out / "unet" / "parts" / "parts.json").is_file()
    moved = tmp_path / "board" / "sd-board"
    shutil.move(out, moved)
    assert edged("models", "verify", str(moved)).returncode == 0
    # A budget below the whole UNet's estimate: staged residency runs the UNet in parts.
    params = [f"--param={k}={v}" for k, v in {**CASES["sd-turbo"], "seed": 3}.items()]
    png = tmp_path / "board.png"
    ran = edged(
        "infer", "generation", "--model", str(moved), "--prompt", PROMPT, "--output", str(png),
        "--param=residency=staged", "--json", *params, EDGED_MEMORY_BUDGET="4M",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["meta"]["unet_parts"] == 2
    image = read_png(png)
    assert image.shape == (16, 16, 3)
    assert int(image.max()) - int(image.min()) > 20


def test_torch_only_models_name_what_they_need() -> None:
    migan = edged("models", "convert", "migan", "--to", "x")
    assert migan.returncode == 4
    assert "migan_512_places2.pt" in migan.stderr
    assert "130db3ea0a04764814702bddcf2e4813654c128c" in migan.stderr
    mobilesam = edged("models", "convert", "mobilesam", "--checkpoint", "mobile_sam.pt")
    assert mobilesam.returncode == 4
    assert "weights/mobile_sam.pt" in mobilesam.stderr
    assert "edged models fetch mobilesam_decoder" in mobilesam.stderr
    lama = edged("models", "convert", "lama")
    assert lama.returncode == 10
    assert "edged models fetch lama_dilated" in lama.stderr


def test_refuses_a_non_empty_destination(converted: Path) -> None:
    again = edged("models", "convert", str(converted), "--to", str(converted))
    assert again.returncode != 0
    assert "--to" in again.stderr


def test_quantize_out_dir_is_self_contained(tmp_path: Path) -> None:
    """`edged models quantize DIR --out D` copies the components it does not quantize: D
    works after the source dir is gone (it used to be a tree of symlinks into it)."""
    from edged.testing import make_tiny_sd_dir

    src = make_tiny_sd_dir(tmp_path / "src")
    out = tmp_path / "int8"
    run = edged("models", "quantize", str(src), "--scheme", "dynamic-int8", "--out", str(out))
    assert run.returncode == 0, run.stderr
    shutil.rmtree(src)
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    assert (out / "tokenizer" / "vocab.json").is_file()
    params = [f"--param={k}={v}" for k, v in CASES["sd-turbo"].items()]
    png = tmp_path / "q.png"
    ran = edged(
        "infer", "generation", "--model", str(out), "--prompt", PROMPT, "--output", str(png),
        *params,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert read_png(png).ndim == 3


def test_add_makes_a_converted_dir_loadable_by_name(converted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "board-copy"
    shutil.copytree(converted, copy)
    added = edged("models", "add", str(copy), "--name", "tiny_turbo")
    assert added.returncode == 0, added.stderr
    assert "added tiny_turbo (generation, sd-turbo" in added.stdout
    shutil.rmtree(copy)  # add copied it into the model dir: the original may go
    params = [f"--param={k}={v}" for k, v in CASES["sd-turbo"].items()]
    png = tmp_path / "named.png"
    ran = edged(
        "infer", "generation", "--model", "tiny_turbo", "--prompt", PROMPT, "--output", str(png),
        *params, EDGED_ALLOWED_LICENCES='["LicenseRef-user"]',
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert read_png(png).shape == (16, 16, 3)


def test_daemon_serves_a_converted_dir_with_diffusers_image(
    converted: Path, sources: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    """The converted dir (fp32 preset) by name from model_dirs, over ZeroMQ from a real
    daemon: the same uint8 image as diffusers' pipeline, as `edged infer` gives."""
    from edged.convert.parity import diffusers_image
    from edged.testing.daemon import Daemon, config_toml
    from edged.wire.client import Client

    work = tmp_path / "d"
    work.mkdir()
    config = work / "edged.toml"
    config.write_text(config_toml({"model_dirs": [str(converted.parent)], "log_format": "json"}))
    case, seed = CASES["sd-turbo"], 11
    with Daemon(config, work) as daemon, Client(daemon.requests_endpoint, timeout_s=120) as client:
        reply = client.request(
            "generation", model=converted.name, prompt=PROMPT, params={**case, "seed": seed}
        )
    got = reply.outputs["image"]
    ref = diffusers_image(sources["sd-turbo"][1], PROMPT, case, seed)
    assert got.shape == ref.shape == (16, 16, 3)
    assert int(ref.max()) - int(ref.min()) > 20  # a real picture, not a flat field
    diff = int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max())
    assert diff <= 1, f"daemon vs diffusers differ by {diff} levels"
