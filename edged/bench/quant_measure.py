"""The measurements of ``edged bench quantization`` (the suite's parser is
``edged.bench.quantization``): per installed SR and segmentation model, its int8 variants'
accuracy gates against fp32 and the median latency of fp32 and int8 per backend, the winner
recorded per (profile, model, backend).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edged.bench.quant_variants import Variant, file_format, fp32_for, variants
from edged.config import Settings
from edged.errors import EdgedError
from edged.models.catalog import Catalog
from edged.models.schema import ModelEntry
from edged.quantization.accuracy_gate import GateResult, Thresholds, thresholds_from
from edged.quantization.calibration import (
    SEG_FAMILIES,
    SR_FAMILIES,
    CalibrationSet,
    load_images,
    seg_feed,
    sr_pair,
    sr_upscale_y,
)
from edged.quantization.speed_gate import board_key, record_speed, update_records
from edged.runtime import FORMAT_OF_RUNTIME, config_for, open_session, split_backend
from edged.runtime.base import Session, one_line

WIN_MARGIN = 0.05
"""int8 must be at least 5 % faster than fp32 to win: closer is noise on a loaded board."""
TIME_BUDGET_S = 5.0
MIN_RUNS = 3
"""Each measurement stops after ``--runs`` or ~5 s (at least 3 runs): Real-ESRGAN x4plus
takes seconds per call."""


def _default_images(kind: str) -> Path | None:
    from edged.testing import SHARED_DIR

    path = SHARED_DIR / "images" / ("set5/HR" if kind == "sr" else "portraits")
    return path if path.is_dir() else None


def bench_models(catalog: Catalog, names: list[str] | None) -> list[ModelEntry]:
    wanted = [catalog.get(n) for n in names] if names else list(catalog)
    return [e for e in wanted if e.family in (*SR_FAMILIES, *SEG_FAMILIES) and catalog.installed(e)]


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # first run plans memory / packs weights; not what a warm pool pays
    times: list[float] = []
    deadline = time.perf_counter() + TIME_BUDGET_S
    while len(times) < runs and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_file(
    entry: ModelEntry, backend: str, path: Path, precision: str, sample: Any, *, runs: int
) -> float:
    """Median ms of the task's model call on ``sample`` (an HR image for SR, a photo else)."""
    session = open_session(config_for(backend, precision=precision), path, warmup=False)
    try:
        if entry.family in SR_FAMILIES:
            return _median_ms(lambda: sr_upscale_y(entry, session, sample), runs)
        feed = seg_feed(entry, session, sample)
        return _median_ms(lambda: session.run(feed), runs)
    finally:
        session.close()


def _open_for_gate(path: Path, *, openvino: bool = False, precision: str = "fp32") -> Session:
    """The runtime a file is gated on: OpenVINO for OpenVINO variants (and their fp32
    reference, whatever its format), else the file's own runtime."""
    if openvino:
        from edged.quantization.openvino_quantizer import ov_session

        return ov_session(path, precision)
    backend = "litert:xnnpack" if path.suffix == ".tflite" else "onnx:cpu"
    return open_session(config_for(backend, precision="fp32"), path, warmup=False)


def gate_variant(
    entry: ModelEntry,
    fp32_path: Path,
    variant: Variant,
    calib: CalibrationSet,
    thresholds: Thresholds,
) -> GateResult:
    from edged.quantization.variants import evaluate_gate
    from edged.quantization.vision import BIG_MODEL

    crop = 64 if fp32_path.stat().st_size > BIG_MODEL else None
    ov = file_format(variant.path) == "openvino"
    fp32 = _open_for_gate(fp32_path, openvino=ov)
    quant = _open_for_gate(variant.path, openvino=ov, precision="int8" if ov else "fp32")
    try:
        return evaluate_gate(entry, fp32, quant, calib, thresholds, crop=crop)
    finally:
        fp32.close()
        quant.close()


def _sample(entry: ModelEntry, images: list[Any], size: int) -> Any:
    if entry.family == "sr-rgb":  # 64-channel RGB nets at x4: a quarter of the side
        return sr_pair(entry, images[0], max(16, size // 4))[0]
    if entry.family in SR_FAMILIES:
        return sr_pair(entry, images[0], size)[0]
    return images[0]


def _accuracy(
    settings: Settings,
    catalog: Catalog,
    entry: ModelEntry,
    found: list[Variant],
    calib: CalibrationSet,
    *,
    record: bool,
) -> None:
    from edged.quantization.variants import record_gate

    thresholds = thresholds_from(settings)
    for v in found:
        fp32 = fp32_for(catalog, entry, file_format(v.path))
        if v.note or fp32 is None:
            v.note = v.note or f"no fp32 {file_format(v.path)} file to compare with"
            continue
        try:
            v.gate = gate_variant(entry, fp32, v, calib, thresholds)
        except EdgedError as exc:
            v.note = f"gate failed to run: {one_line(exc)}"
            continue
        if record and v.file is not None:
            current = Catalog.from_settings(settings).get(entry.name)
            record_gate(settings, catalog, current, v.file.path, v.gate.as_dict())


def _try_time(
    entry: ModelEntry, backend: str, path: Path, precision: str, sample: Any, *, runs: int
) -> tuple[float | None, str | None]:
    try:
        return time_file(entry, backend, path, precision, sample, runs=runs), None
    except EdgedError as exc:
        return None, one_line(exc, 160)


def speed_row(
    entry: ModelEntry,
    catalog: Catalog,
    backend: str,
    found: list[Variant],
    sample: Any,
    *,
    runs: int,
) -> dict[str, Any] | None:
    """fp32 vs int8 on one backend (None when the backend reads no file of the model)."""
    formats = FORMAT_OF_RUNTIME.get(split_backend(backend)[0], ())
    readable = [v for v in found if file_format(v.path) in formats and not v.note]
    int8 = min(readable, key=lambda v: formats.index(file_format(v.path)), default=None)
    fmt = (
        file_format(int8.path)
        if int8
        else next((f for f in formats if fp32_for(catalog, entry, f) is not None), None)
    )
    fp32 = fp32_for(catalog, entry, fmt) if fmt else None
    if fp32 is None:
        return None
    row: dict[str, Any] = {"model": entry.name, "task": entry.task, "backend": backend}
    row["fp32_file"], row["fp32_ms"] = fp32.name, None
    row["fp32_ms"], error = _try_time(entry, backend, fp32, "fp32", sample, runs=runs)
    row["int8_file"], row["int8_ms"] = (int8.path.name if int8 else None), None
    if int8 is not None and error is None:
        row["int8_ms"], error = _try_time(entry, backend, int8.path, "int8", sample, runs=runs)
    row["winner"] = _winner(row["fp32_ms"], row["int8_ms"])
    row["gate"] = int8.gate.as_dict() if int8 and int8.gate else None
    row["note"] = error or (None if int8 else "no int8 variant")
    return row


def _winner(fp32_ms: float | None, int8_ms: float | None) -> str | None:
    if fp32_ms is None:
        return None
    if int8_ms is not None and int8_ms < fp32_ms * (1.0 - WIN_MARGIN):
        return "int8"
    return "fp32"


def run_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    catalog = Catalog.from_settings(settings)
    names = [n.strip() for n in args.models.split(",")] if args.models else None
    sets = {
        kind: CalibrationSet.from_dir(d) if d else None
        for kind, d in (
            ("sr", args.sr_images or _default_images("sr")),
            ("seg", args.seg_images or _default_images("seg")),
        )
    }
    board = board_key(settings)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: list[dict[str, Any]] = []
    accuracy: dict[str, Any] = {}
    for entry in bench_models(catalog, names):
        calib = sets["sr" if entry.family in SR_FAMILIES else "seg"]
        if calib is None:
            continue
        openvino = "openvino:cpu" in backends
        found = variants(settings, catalog, entry, calib, not args.no_quantize, openvino=openvino)
        _accuracy(settings, catalog, entry, found, calib, record=not args.no_record)
        accuracy[entry.name] = {
            v.path.name: v.gate.as_dict() if v.gate else {"note": v.note} for v in found
        }
        sample = _sample(entry, load_images(calib.held_out), args.size)
        for backend in backends:
            row = speed_row(entry, catalog, backend, found, sample, runs=args.runs)
            if row is None:
                continue
            rows.append(row)
            if not args.no_record and row["winner"]:
                keep = {
                    k: row[k] for k in ("fp32_ms", "int8_ms", "winner", "fp32_file", "int8_file")
                }
                record_speed(settings, board, entry.name, backend, {**keep, "measured_at": _now()})
    if not args.no_record:
        update_records(settings, lambda data: data["accuracy"].update(accuracy))
    return {"board": board, "rows": rows, "accuracy": accuracy}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
