"""Per-image IoU of edged's selfie masks against MediaPipe's own (tests/fixtures/selfie_ref).

    .venv/bin/python tools/selfie_iou.py --models ../shared/models --images ../shared/images/portraits

Prints one JSON line per image and model variant: IoU at probability 0.5 on both masks and the
mean absolute probability difference (0..255 units).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edged.config import Settings
from edged.engine import Engine
from edged.imaging import read_image, read_mask
from edged.tasks.base import TaskRequest

REF_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "selfie_ref"
MODELS = {"general": "selfie_segmentation", "landscape": "selfie_segmentation_landscape"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()
    engine = Engine(Settings(model_dirs=[args.models]))
    try:
        for ref_path in sorted(REF_DIR.glob("*_general.png")):
            stem = ref_path.name.removesuffix("_general.png")
            image_path = next(args.images.glob(f"{stem}.*"))
            image = read_image(image_path)
            for variant, model in MODELS.items():
                request = TaskRequest(
                    task="segmentation", model=model, image=image, backend=args.backend
                )
                result = engine.run(request)
                ref = read_mask(REF_DIR / f"{stem}_{variant}.png")
                ours = result.outputs["mask"]
                a, b = ours >= 128, ref >= 128
                iou = np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)
                diff = float(np.abs(ours.astype(np.int16) - ref).mean())
                line = {"image": image_path.name, "model": variant, "backend": result.backend}
                print(json.dumps({**line, "iou": round(iou, 4), "mean_abs_diff": round(diff, 3)}))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
