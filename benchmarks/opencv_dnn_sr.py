"""OpenCV DNN on the same ESPCN model: the `edged bench superres` baseline.

Runs inside the isolated venv `edged bench superres` makes (opencv-contrib-python-headless;
see edged/bench/venvs.py). Prints one JSON line:

    python opencv_dnn_sr.py --image frame.png --onnx espcn_x2.onnx [--pb ESPCN_x2.pb]
        [--scale 2] [--runs 3] [--threads 2]

With ``--pb`` (the TensorFlow graph OpenCV's ``dnn_superres`` module reads) the whole
``DnnSuperResImpl.upsample`` pipeline is timed. Without it -- no registry package ships
ESPCN_x2.pb -- the same network is run from the ONNX file through ``cv2.dnn.readNetFromONNX``
(``net.forward`` on the Y channel, like dnn_superres does internally for ESPCN), and
``pipeline`` says so. OpenCV 4.10's ONNX importer cannot size ``DepthToSpace`` on dynamic
H/W, so the graph's input dims are first fixed to the frame's (``onnx`` in the venv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np


def timed(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e9)
    return out


def static_onnx(path: str, h: int, w: int) -> bytes:
    """The ONNX graph with its NHWC input fixed to 1 x h x w x 1, shapes re-inferred."""
    import onnx

    model = onnx.load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, h, w, 1), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--pb", default=None)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    if args.pb:
        sr = cv2.dnn_superres.DnnSuperResImpl_create()
        sr.readModel(args.pb)
        sr.setModel("espcn", args.scale)
        seconds = timed(lambda: sr.upsample(bgr), args.runs)
        pipeline = "cv2.dnn_superres.DnnSuperResImpl.upsample (ESPCN .pb)"
    else:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(static_onnx(args.onnx, h, w), np.uint8))
        y = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.float32) / 255.0
        blob = y[None, :, :, None]  # the graph's own NHWC input layout

        def forward() -> np.ndarray:
            net.setInput(blob)
            return net.forward()

        out = forward()
        if out.size != h * w * args.scale * args.scale:
            raise SystemExit(f"unexpected output shape {out.shape}")
        seconds = timed(forward, args.runs)
        pipeline = "cv2.dnn.readNetFromONNX + net.forward (Y channel; no ESPCN .pb available)"
    median = statistics.median(seconds)
    print(
        json.dumps(
            {
                "pipeline": pipeline,
                "opencv": cv2.__version__,
                "threads": cv2.getNumThreads(),
                "input": [w, h],
                "runs": len(seconds),
                "p50_s": round(median, 4),
                "min_s": round(min(seconds), 4),
                "out_mpix_per_s": round(w * h * args.scale**2 / 1e6 / median, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
