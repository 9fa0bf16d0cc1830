"""`edged models convert OWNER/REPO@REV` through huggingface_hub's snapshot_download against a
fake Hub on loopback (edged.testing.hub, via HF_ENDPOINT): a tiny SD-Turbo-shaped diffusers
pipeline saved with save_pretrained is served as stabilityai/sd-turbo, the repo edged's
catalogue converts, so the converted dir carries SD-Turbo's licence (refused until allowed)
and then gives diffusers' own image. A gated repo without HF_TOKEN and HF_HUB_OFFLINE with a
cold cache are one-line errors naming the variable. huggingface_hub reads its environment at
import: every conversion is a real `edged` subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if not all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers")):
    pytest.skip(
        "convert tests need torch, diffusers and transformers: pip install -e '.[convert]'",
        allow_module_level=True,
    )

from edged.config import DEFAULT_ALLOWED_LICENCES
from edged.convert.manifest import MANIFEST
from edged.errors import FetchError, LicenceNotAllowed
from edged.testing.hub import HubServer

REPO = "stabilityai/sd-turbo"
COMMIT = "6320d118440daa531996d634045c9f0643b44822"  # the catalogue recipe's pin
NC = "LicenseRef-stabilityai-nc-community"
PROMPT = "a photo of a red house"
CASE = {"steps": 1, "guidance_scale": 0.0, "height": 64, "width": 64}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny SD-Turbo-shaped diffusers dir (save_pretrained) and its pipeline."""
    from edged.convert.parity import tiny_pipeline

    root = tmp_path_factory.mktemp("diffusers")
    pipe = tiny_pipeline("sd", root / "tok")
    pipe.save_pretrained(root / "sd-turbo")
    return root / "sd-turbo", pipe


@pytest.fixture
def hub(pipeline: tuple[Path, Any]) -> Iterator[HubServer]:
    with HubServer() as srv:
        srv.add_repo(REPO, COMMIT, pipeline[0])
        yield srv


def edged(
    hub: HubServer, hf_home: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    clean |= {"HF_ENDPOINT": hub.base_url, "HF_HOME": str(hf_home)}
    clean |= {"HF_HUB_DISABLE_TELEMETRY": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean,
        check=False,
    )


@pytest.mark.slow
def test_convert_from_the_hub_then_infer_matches_diffusers(
    hub: HubServer, pipeline: tuple[Path, Any], tmp_path: Path
) -> None:
    from edged.convert.parity import diffusers_image

    out = tmp_path / "made" / "turbo"
    # @main: the model-info endpoint resolves the branch to its commit, then the tree listing.
    run = edged(hub, tmp_path / "hf", "models", "convert", f"{REPO}@main", "--to", str(out),
                "--preset", "fp32")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert hub.requests(f"/api/models/{REPO}/revision/main")
    made = json.loads((out / MANIFEST).read_text())
    assert made["licence"] == NC  # the catalogue's entry for this repo
    assert made["source"]["commit"] == COMMIT
    moved = tmp_path / "board" / "turbo"
    moved.parent.mkdir()
    shutil.move(out, moved)
    png = tmp_path / "edged.png"
    params = [f"--param={k}={v}" for k, v in {**CASE, "seed": 5}.items()]
    infer = ["infer", "generation", "--model", str(moved), "--prompt", PROMPT, "--output", str(png)]
    refused = edged(hub, tmp_path / "hf", *infer, *params)
    assert refused.returncode == LicenceNotAllowed.exit_code, refused.stderr
    assert "allowed_licences" in refused.stderr
    allow = json.dumps([*DEFAULT_ALLOWED_LICENCES, NC])
    ran = edged(hub, tmp_path / "hf", *infer, *params, EDGED_ALLOWED_LICENCES=allow)
    assert ran.returncode == 0, ran.stderr
    import cv2

    got = cv2.imread(str(png), cv2.IMREAD_COLOR)[:, :, ::-1]
    ref = diffusers_image(pipeline[1], PROMPT, CASE, 5)
    assert got.shape == ref.shape
    assert int(ref.max()) - int(ref.min()) > 20  # a real picture, not a flat field
    assert int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max()) <= 1


def test_gated_repo_without_hf_token_names_it(hub: HubServer, tmp_path: Path) -> None:
    hub.gate(REPO, "hf_secret")
    out = tmp_path / "turbo"
    run = edged(hub, tmp_path / "hf", "models", "convert", f"{REPO}@{COMMIT}", "--to", str(out))
    assert run.returncode == FetchError.exit_code, run.stderr
    error = run.stderr.strip().splitlines()[-1]  # after huggingface_hub's own progress bar
    assert error.startswith("edged: error:"), run.stderr
    assert "gated" in error
    assert "HF_TOKEN" in error
    assert not out.exists()


def test_offline_with_a_cold_cache_names_hf_hub_offline(hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "turbo"
    run = edged(hub, tmp_path / "hf", "models", "convert", f"{REPO}@{COMMIT}", "--to", str(out),
                HF_HUB_OFFLINE="1")  # fmt: skip
    assert run.returncode == FetchError.exit_code, run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert "HF_HUB_OFFLINE" in error, run.stderr
    assert "not in the Hugging Face cache" in error
    assert not out.exists()
    assert not hub.log  # offline: nothing asked of the Hub
