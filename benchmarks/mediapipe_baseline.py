"""MediaPipe's own legacy SelfieSegmentation pipeline on a video: the `edged bench stream` baseline.

Runs inside the isolated venv `edged bench stream` makes (mediapipe==0.10.14, numpy<2; see
edged/bench/venvs.py), never in edged's environment. Prints one JSON line:

    python mediapipe_baseline.py --video clip.avi [--frames 300] [--warmup 20] [--model 0]

The loop is what an application using MediaPipe does: read and decode a frame (OpenCV, the
clip looping), BGR->RGB, ``SelfieSegmentation.process`` (ImageToTensor, TFLite+XNNPACK,
TensorsToSegmentation), and threshold the mask. ``fps`` counts the whole loop, decoding
included (edged's daemon decodes too); ``process_p50_ms`` is ``process`` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import cv2
import mediapipe as mp
import numpy as np


class Clip:
    """Frames of a video file, restarting it at the end (like edged's ``loop = true``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.cap = cv2.VideoCapture(path)

    def read(self) -> np.ndarray:
        ok, bgr = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = cv2.VideoCapture(self.path)
            ok, bgr = self.cap.read()
            if not ok:
                raise SystemExit(f"cannot read {self.path}")
        return bgr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", required=True)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--model", type=int, default=0, help="0 general 256x256, 1 landscape")
    args = parser.parse_args()
    clip = Clip(args.video)
    process_ns: list[int] = []
    frame_ns: list[int] = []
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=args.model) as seg:
        for _ in range(args.warmup):
            seg.process(cv2.cvtColor(clip.read(), cv2.COLOR_BGR2RGB))
        start = time.perf_counter_ns()
        for _ in range(args.frames):
            t0 = time.perf_counter_ns()
            rgb = cv2.cvtColor(clip.read(), cv2.COLOR_BGR2RGB)
            t1 = time.perf_counter_ns()
            prob = seg.process(rgb).segmentation_mask
            t2 = time.perf_counter_ns()
            mask = (prob >= 0.5).astype(np.uint8) * 255
            frame_ns.append(time.perf_counter_ns() - t0)
            process_ns.append(t2 - t1)
        total_s = (time.perf_counter_ns() - start) / 1e9
    h, w = rgb.shape[:2]
    print(
        json.dumps(
            {
                "pipeline": "mediapipe.solutions.selfie_segmentation (legacy graph)",
                "mediapipe": mp.__version__,
                "opencv": cv2.__version__,
                "numpy": np.__version__,
                "frames": len(frame_ns),
                "size": [w, h],
                "fps": round(len(frame_ns) / total_s, 2),
                "frame_p50_ms": round(statistics.median(frame_ns) / 1e6, 3),
                "process_p50_ms": round(statistics.median(process_ns) / 1e6, 3),
                "mask_mean": round(float(mask.mean()), 2),
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
