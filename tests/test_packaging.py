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
