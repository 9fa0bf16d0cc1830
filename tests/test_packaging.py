"""Install-level promises: one headless OpenCV, no torch at run time, shipped data present."""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

import pytest

import edged

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gui_build", ["opencv-python", "opencv-contrib-python"])
def test_no_gui_opencv_next_to_the_headless_build(gui_build: str) -> None:
    assert md.distribution("opencv-python-headless")
    with pytest.raises(md.PackageNotFoundError):
        md.distribution(gui_build)


def test_runtime_dependencies_exclude_torch_and_mediapipe() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert "torch" not in runtime
    assert "mediapipe" not in runtime
    assert "torch==2.13.0" in project["optional-dependencies"]["tools"]
    for name in ("onnxruntime", "ai-edge-litert", "openvino", "pyzmq", "tokenizers"):
        assert name in runtime


def test_console_script_and_shipped_data() -> None:
    scripts = {ep.name: ep.value for ep in md.entry_points(group="console_scripts")}
    assert scripts.get("edged") == "edged.cli:main"
    data = Path(edged.__file__).parent / "data" / "models"
    assert (data / "edged_sr_x2.onnx").is_file()
    assert sorted(p.stem for p in (ROOT / "profiles").glob("*.toml")) >= [
        "generic",
        "generic-arm64",
        "generic-x86",
        "intel-igpu-npu",
        "qualcomm-qcs",
        "raspberry-pi-4",
        "raspberry-pi-5",
    ]


def test_wheel_ships_catalogue_and_profiles(tmp_path: Path) -> None:
    """A non-editable install (wheel) finds the manifests and profiles inside the package."""
    import json
    import subprocess
    import sys

    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*build, "-w", str(wheels)], check=True, timeout=300)
    [wheel] = wheels.glob("edged-*.whl")
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, timeout=300)
    env = {"PYTHONPATH": str(target), "EDGED_STATE_DIR": str(tmp_path / "state"), "PATH": ""}

    def run(*args: str) -> str:  # the installed package, from outside the source tree
        done = subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return done.stdout

    probe = (
        "import edged.profiles as p, edged.models.catalog as c; print(p.shipped_profile_dir()); "
    )
    where = run("-c", probe + "print(c.shipped_catalog_dir())").split()
    assert all(Path(p).is_relative_to(target) for p in where), where
    names = {
        m["name"] for m in json.loads(run("-m", "edged", "models", "list", "--json"))["models"]
    }
    assert names == {p.stem for p in (ROOT / "models").glob("*.toml")}
    assert json.loads(run("-m", "edged", "profile", "--json"))["profile"]
