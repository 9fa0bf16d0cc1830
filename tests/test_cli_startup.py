"""The CLI starts without the heavy native libraries: building the parser (every sub-command
and every bench suite registered) imports no OpenCV and no runtime; ``--help`` of a bench suite
whose work needs them still works, and still imports none of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("cv2", "onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime")


def _imported(stderr: str) -> set[str]:
    """Top-level package names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_building_the_parser_imports_no_opencv_or_runtime() -> None:
    code = (
        "import sys\n"
        "from edged.cli import build_parser\n"
        "build_parser()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == ""


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--help"], "bench"),
        (["bench", "--help"], "quantization"),
        (["bench", "quantization", "--help"], "--sr-images"),
        (["bench", "reliability", "--help"], "usage: edged bench reliability"),
        (["infer", "--help"], "usage: edged infer"),
    ],
)
def test_help_imports_no_opencv_or_runtime(argv: list[str], expect: str) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edged", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
    imported = _imported(done.stderr)
    assert "edged" in imported  # the importtime listing was read
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
