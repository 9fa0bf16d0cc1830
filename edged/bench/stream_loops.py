"""The loops ``edged bench stream`` compares the daemon with, on the same clip.

The raw LiteRT loops (one interpreter; N one-thread interpreters on alternate frames) are the
ceilings of the daemon's pipeline; MediaPipe's legacy ``SelfieSegmentation`` (in an isolated
venv) is the baseline of the goal. Every loop decodes the clip inside its timed region.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edged.bench import venvs
from edged.bench.common import percentile
from edged.errors import BackendUnavailable, EdgedError

SIZE = (640, 360)


def make_clip(path: Path, frames: int = 150, fps: float = 960.0) -> Path:
    """A 640x360 MJPG clip panning over a real photo (synthetic if the photo is absent).

    960 fps: the daemon plays a file at its own frame rate, and this clip measures throughput,
    so its rate must sit above anything the pipeline reaches (the file pacer trusts < 1000).
    """
    from edged.bench.common import bench_image
    from edged.testing.cameras import moving_frames, write_video

    photo = bench_image(1280, 720)
    return write_video(path, moving_frames(photo, frames, size=SIZE), fps=fps)


class ClipReader:
    """Decoded RGB frames of the clip, restarting it at the end; safe to share by threads.

    The loops decode inside the timed region, as edged's daemon (and any application)
    must: a baseline that skipped decoding would not be doing the same job.
    """

    def __init__(self, path: Path) -> None:
        import threading

        import cv2

        self._cv2 = cv2
        self.path = path
        self._cap = cv2.VideoCapture(str(path))
        self._lock = threading.Lock()

    def read(self) -> np.ndarray[Any, Any]:
        with self._lock:
            ok, bgr = self._cap.read()
            if not ok:
                self._cap.release()
                self._cap = self._cv2.VideoCapture(str(self.path))
                ok, bgr = self._cap.read()
                if not ok:
                    raise EdgedError(f"cannot read the benchmark clip {self.path}")
        rgb: np.ndarray[Any, Any] = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
        return rgb

    def close(self) -> None:
        self._cap.release()


def _segmenter(model_path: Path, threads: int) -> Any:
    """One interpreter and a frame -> mask function around it (the least work possible)."""
    import cv2

    from edged.runtime.litert import _import_interpreter

    interpreter_cls, _ = _import_interpreter()
    interp = interpreter_cls(model_path=str(model_path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    th, tw = int(inp["shape"][1]), int(inp["shape"][2])

    def one(rgb: Any) -> Any:
        small = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR)
        interp.set_tensor(inp["index"], (small.astype(np.float32) * (1 / 255.0))[None])
        interp.invoke()
        prob = interp.get_tensor(out["index"])[0, :, :, 0]
        big = cv2.resize(prob, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        return (big >= 0.5).astype(np.uint8) * 255

    return one


def raw_litert_loop(model_path: Path, clip: Path, frames: int, threads: int) -> dict[str, Any]:
    """The ceiling of a one-frame-at-a-time pipeline: decode + interpreter calls, no daemon."""
    one = _segmenter(model_path, threads)
    reader = ClipReader(clip)
    for _ in range(20):
        one(reader.read())
    per_frame: list[float] = []
    start = time.perf_counter_ns()
    for _ in range(frames):
        t0 = time.perf_counter_ns()
        one(reader.read())
        per_frame.append((time.perf_counter_ns() - t0) / 1e6)
    seconds = (time.perf_counter_ns() - start) / 1e9
    reader.close()
    return {
        "fps": round(frames / seconds, 2),
        "frames": frames,
        "frame_p50_ms": round(percentile(per_frame, 50), 3),
    }


def raw_litert_parallel(model_path: Path, clip: Path, frames: int, threads: int) -> dict[str, Any]:
    """``threads`` interpreters of 1 thread each, frames in parallel: the ceiling of a
    pipeline that overlaps frames instead of splitting one frame across cores."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, threads)
    segmenters = [_segmenter(model_path, 1) for _ in range(workers)]
    reader = ClipReader(clip)

    def work(i: int, count: int) -> None:
        for _ in range(count):
            segmenters[i](reader.read())

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(workers), [10] * workers))
        start = time.perf_counter_ns()
        counts = [frames // workers + (i < frames % workers) for i in range(workers)]
        list(pool.map(work, range(workers), counts))
        seconds = (time.perf_counter_ns() - start) / 1e9
    reader.close()
    return {"fps": round(frames / seconds, 2), "frames": frames, "interpreters": workers}


def mediapipe_loop(clip: Path, frames: int) -> dict[str, Any]:
    python = venvs.ensure_venv(venvs.MEDIAPIPE)
    script = venvs.script("mediapipe_baseline.py")
    return venvs.run_json(python, script, ["--video", str(clip), "--frames", str(frames)], 600)


def baseline(clip: Path, frames: int) -> dict[str, Any]:
    """MediaPipe's figures, or why it could not run (the other figures still count)."""
    try:
        return mediapipe_loop(clip, frames)
    except BackendUnavailable as exc:
        return {"error": str(exc)}
