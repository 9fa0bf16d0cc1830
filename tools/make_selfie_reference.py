"""Make the MediaPipe selfie reference masks edged's segmentation is tested against.

Runs MediaPipe's own legacy pipeline (``mp.solutions.selfie_segmentation``), so it needs a
separate, test-only environment with the pinned wheel -- never edged's venv::

    python3 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install --no-deps mediapipe==0.10.14
    /tmp/mpvenv/bin/pip install "numpy<2" "protobuf>=4.25.3,<5" absl-py attrs \
        "flatbuffers>=2.0" opencv-python-headless==4.10.0.84 matplotlib
    /tmp/mpvenv/bin/python tools/make_selfie_reference.py \
        --images ../shared/images/portraits --out tests/fixtures/selfie_ref

(``--no-deps`` because the solution API needs none of jax/jaxlib/sounddevice that the wheel
declares.) Each image gives ``<stem>_general.png`` and ``<stem>_landscape.png``: the person
probability at full image size as 8-bit PNG (0..255). A fresh graph per image, so MediaPipe's
video-mode state cannot leak between photos.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np

MODELS = {"general": 0, "landscape": 1}
SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_rgb(path: Path) -> np.ndarray:
    """Decode as edged does: 3-channel colour, BGR -> RGB (grey images become grey RGB)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot decode {path}")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def reference_mask(rgb: np.ndarray, selection: int) -> np.ndarray:
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=selection) as seg:
        prob = seg.process(rgb).segmentation_mask
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float]] = {}
    for path in sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES):
        rgb = read_rgb(path)
        for name, selection in MODELS.items():
            mask = reference_mask(rgb, selection)
            out = args.out / f"{path.stem}_{name}.png"
            cv2.imwrite(str(out), mask, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            summary.setdefault(path.name, {})[name] = round(float((mask >= 128).mean()), 4)
    meta = {"mediapipe": mp.__version__, "opencv": cv2.__version__, "coverage": summary}
    (args.out / "README.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
