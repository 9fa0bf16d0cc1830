"""``edged bench superres``: ESPCN x2 on a 1920x1080 frame (3840x2160 out), tiled vs untiled.

- ``edged``: ``Engine.run`` of the superres task (``onnx:cpu``): RGB -> YCrCb, the model on
  Y in tiles (the budget-derived default, or ``--tile``), chroma bicubic, back to RGB. The
  model-only share of that time (``latency_ms.run``, all tiles) is reported too.
- ``onnxruntime untiled`` (baseline): one ``InferenceSession.run`` on the whole Y channel,
  plain onnxruntime with the same thread count; model only.
- ``OpenCV DNN`` (baseline): the same ESPCN network in OpenCV 4.10 (opencv-contrib, isolated
  venv); ``benchmarks/opencv_dnn_sr.py`` says which API ran (dnn_superres needs the .pb
  graph, which no registry package ships, so by default the ONNX file through
  ``cv2.dnn.readNetFromONNX``).

Throughput is output megapixels per second (p50 of ``--runs`` frames).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edged.bench import venvs
from edged.bench.common import (
    add_bench_args,
    bench_image,
    bench_settings,
    emit,
    fmt_ratio,
    image_source,
    machine,
    md_table,
    profile_threads,
    ratio,
    summary_ms,
    time_ns,
)
from edged.errors import BackendUnavailable, ModelNotFound

MODEL = "espcn_x2"
SCALE = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "superres",
        help="ESPCN x2 on 1920x1080: edged tiled vs one onnxruntime call vs OpenCV DNN",
        description=__doc__,
    )
    add_bench_args(parser)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--runs", type=int, default=3, help="timed frames per pipeline")
    parser.add_argument("--tile", type=int, default=None, help="tile side (default: budget)")
    parser.add_argument("--no-opencv", action="store_true", help="skip the OpenCV venv")
    parser.add_argument("--pb", type=Path, default=None, help="ESPCN_x2.pb for dnn_superres")
    parser.set_defaults(handler=_handler)


def _model_path(settings: Any) -> Path:
    from edged.models.catalog import Catalog

    catalog = Catalog.from_settings(settings)
    entry = catalog.get(MODEL)
    for file in entry.files:
        if file.format == "onnx" and (path := catalog.locate(file)) is not None:
            return path
    raise ModelNotFound(f"{MODEL}: no .onnx file in the model dirs; add one with --model-dir")


def _mpix(pixels_out: int, p50_ms: float) -> float:
    return round(pixels_out / 1e6 / (p50_ms / 1000.0), 3)


def edged_tiled(
    settings: Any, image: np.ndarray[Any, Any], tile: int | None, runs: int
) -> dict[str, Any]:
    from edged.engine import Engine
    from edged.tasks.base import TaskRequest

    params = {"tile": tile} if tile else {}
    request = TaskRequest("superres", MODEL, image=image, params=params, backend="onnx:cpu")
    engine = Engine(settings)
    try:
        results = []

        def call() -> None:
            results.append(engine.run(request))

        samples = time_ns(call, runs=runs, warmup=1)
    finally:
        engine.close()
    timed = results[1:]
    run_ms = sorted(r.latency_ms["run"] for r in timed)[len(timed) // 2]
    return {
        **summary_ms(samples),
        "model_run_p50_ms": round(run_ms, 3),
        "tiles": timed[-1].meta.get("tiles"),
        "tile": timed[-1].meta.get("tile"),
        "output": list(timed[-1].outputs["image"].shape),
    }


def ort_untiled(path: Path, image: np.ndarray[Any, Any], threads: int, runs: int) -> dict[str, Any]:
    import cv2
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    y = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[:, :, 0].astype(np.float32) / 255.0
    feed = {sess.get_inputs()[0].name: y[None, :, :, None]}
    out = sess.run(None, feed)[0]
    samples = time_ns(lambda: sess.run(None, feed), runs=runs, warmup=0)
    return {**summary_ms(samples), "output": list(out.shape)}


def opencv_dnn(
    path: Path, image: np.ndarray[Any, Any], threads: int, runs: int, *, work: Path, pb: Path | None
) -> dict[str, Any]:
    import cv2

    frame = work / "frame.png"
    cv2.imwrite(str(frame), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    python = venvs.ensure_venv(venvs.OPENCV_CONTRIB)
    argv = ["--image", str(frame), "--onnx", str(path), "--scale", str(SCALE)]
    argv += ["--runs", str(runs), "--threads", str(threads)]
    if pb is not None:
        argv += ["--pb", str(pb)]
    return venvs.run_json(python, venvs.script("opencv_dnn_sr.py"), argv, 900)


def run_suite(
    settings: Any,
    threads: int,
    size: tuple[int, int],
    *,
    runs: int,
    tile: int | None = None,
    opencv: bool = True,
    pb: Path | None = None,
) -> dict[str, Any]:
    settings = settings.model_copy(update={"threads": threads})
    path = _model_path(settings)
    image = bench_image(*size)
    pixels_out = size[0] * size[1] * SCALE * SCALE
    result: dict[str, Any] = {
        "suite": "superres",
        "machine": machine(threads),
        "model": f"{MODEL} ({path.name})",
        "image": image_source(),
        "input": list(size),
        "output_mpix": round(pixels_out / 1e6, 3),
        "edged": edged_tiled(settings, image, tile, runs),
        "ort_untiled": ort_untiled(path, image, threads, runs),
    }
    if opencv:
        with tempfile.TemporaryDirectory(prefix="edged-bench-sr-") as tmp:
            try:
                result["opencv"] = opencv_dnn(path, image, threads, runs, work=Path(tmp), pb=pb)
            except BackendUnavailable as exc:
                result["opencv"] = {"error": str(exc)}
    else:
        result["opencv"] = {"skipped": "--no-opencv"}
    return _derive(result, pixels_out)


def _derive(result: dict[str, Any], pixels_out: int) -> dict[str, Any]:
    e, o, cv = result["edged"], result["ort_untiled"], result["opencv"]
    e["out_mpix_per_s"] = _mpix(pixels_out, e["p50_ms"])
    e["model_out_mpix_per_s"] = _mpix(pixels_out, e["model_run_p50_ms"])
    o["out_mpix_per_s"] = _mpix(pixels_out, o["p50_ms"])
    result["ratios"] = {
        "edged/ort_untiled": ratio(e["out_mpix_per_s"], o["out_mpix_per_s"]),
        "edged_model/ort_untiled": ratio(e["model_out_mpix_per_s"], o["out_mpix_per_s"]),
        "edged/opencv": ratio(e["out_mpix_per_s"], cv.get("out_mpix_per_s")),
        "ort_untiled/opencv": ratio(o["out_mpix_per_s"], cv.get("out_mpix_per_s")),
    }
    return result


def table(result: dict[str, Any]) -> str:
    e, o, cv = result["edged"], result["ort_untiled"], result["opencv"]
    tiles = f"{e['tiles']} tiles of {e['tile']}" if e.get("tile") else "1 tile"
    base = o["out_mpix_per_s"]
    rows = [
        [f"edged superres task, tiled ({tiles}), whole pipeline", e["p50_ms"] / 1000,
         e["out_mpix_per_s"], fmt_ratio(ratio(e["out_mpix_per_s"], base))],
        ["edged: model calls only (sum over tiles)", e["model_run_p50_ms"] / 1000,
         e["model_out_mpix_per_s"], fmt_ratio(ratio(e["model_out_mpix_per_s"], base))],
        ["onnxruntime, one untiled call (model only)", o["p50_ms"] / 1000, base, "1.00x"],
        [f"OpenCV {cv.get('opencv', '')} DNN (model only)",
         cv.get("p50_s"), cv.get("out_mpix_per_s"), fmt_ratio(ratio(cv.get("out_mpix_per_s"), base))],
    ]  # fmt: skip
    w, h = result["input"]
    headers = [f"ESPCN x2, {w}x{h} -> {w * 2}x{h * 2}", "p50 s", "out Mpix/s", "vs ORT untiled"]
    lines = [md_table(headers, rows)]
    note = cv.get("pipeline") or cv.get("error") or cv.get("skipped")
    if note:
        lines.append(f"\nOpenCV: {note}")
    return "\n".join(lines)


def _handler(args: argparse.Namespace) -> int:
    from edged.errors import ConfigError

    if args.runs < 1 or args.width < 16 or args.height < 16:
        raise ConfigError("--runs must be >= 1 and the frame at least 16x16")
    settings = bench_settings(args)
    threads = profile_threads(settings, args.threads)
    size = (args.width, args.height)
    result = run_suite(
        settings,
        threads,
        size,
        runs=args.runs,
        tile=args.tile,
        opencv=not args.no_opencv,
        pb=args.pb,
    )
    emit(result, args.json, table)
    return 0
