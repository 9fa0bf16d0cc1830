"""Isolated virtualenvs for the baselines (MediaPipe, OpenCV contrib), made on first use.

Baselines must run the competitor's own code with its own pinned dependencies, never inside
edged's environment: mediapipe 0.10.14 needs numpy<2 and protobuf<5, and opencv-contrib would
shadow edged's OpenCV. Each venv lives under ``{cache_root}/{name}`` (default
``~/.cache/edged-bench``) and is reused while its marker file matches the install plan, so
only the first run pays for ``pip install``.

Scripts that run inside them live in the repository's ``benchmarks/`` directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.errors import BackendUnavailable

MARKER = ".edged-bench.json"


@dataclass(frozen=True)
class VenvSpec:
    """A venv: its directory name and the ``pip install`` steps, in order."""

    name: str
    steps: tuple[tuple[str, ...], ...]


MEDIAPIPE = VenvSpec(
    "mpvenv",
    (
        # --no-deps: the legacy solution API needs none of jax/jaxlib/sounddevice the wheel lists.
        ("--no-deps", "mediapipe==0.10.14"),
        (
            "numpy<2",
            "protobuf>=4.25.3,<5",
            "absl-py",
            "attrs",
            "flatbuffers>=2.0",
            "opencv-python-headless==4.10.0.84",
            "matplotlib",
        ),
    ),
)
OPENCV_CONTRIB = VenvSpec(
    # onnx: to give the ONNX graph static shapes, which OpenCV's importer needs for DepthToSpace.
    "cvvenv",
    (("numpy<2", "opencv-contrib-python-headless==4.10.0.84", "onnx>=1.16,<1.18"),),
)


def cache_root() -> Path:
    """``$EDGED_BENCH_CACHE`` or ``~/.cache/edged-bench``."""
    env = os.environ.get("EDGED_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edged-bench"


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` (scripts run inside the baseline venvs)."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def script(name: str) -> Path:
    path = benchmarks_dir() / name
    if not path.is_file():
        raise BackendUnavailable(
            f"baseline script {path} not found: run the benchmarks from an edged checkout"
        )
    return path


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(spec: VenvSpec, root: Path | None = None) -> Path:
    """The venv's python, creating/installing it first when its marker is missing or stale."""
    venv = (root or cache_root()) / spec.name
    marker = venv / MARKER
    plan = {"steps": [list(s) for s in spec.steps], "python": sys.version.split()[0]}
    if marker.is_file() and _python(venv).exists():
        try:
            if json.loads(marker.read_text()) == plan:
                return _python(venv)
        except (OSError, ValueError):
            pass
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _check([base, "-m", "venv", str(venv)], f"create venv {venv}")
    for step in spec.steps:
        pip = [str(_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _check([*pip, *step], f"pip install {' '.join(step)} into {venv}")
    marker.write_text(json.dumps(plan))
    return _python(venv)


def _check(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BackendUnavailable(f"baseline venv: cannot {what}: {' / '.join(tail)}")


def run_json(python: Path, script_path: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run a baseline script; its last stdout line is one JSON object."""
    try:
        done = subprocess.run(
            [str(python), str(script_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BackendUnavailable(f"{script_path.name} did not finish in {timeout:g} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
        raise BackendUnavailable(f"{script_path.name} failed: {' / '.join(tail) or 'no output'}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
