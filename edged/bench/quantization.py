"""``edged bench quantization``: fp32 vs int8 per model and backend on this board.

For every installed super-resolution and segmentation model of the catalogue:

* int8 variants = the entry's int8 files (e.g. the shared ``*_int8.tflite``) plus, for a model
  with an fp32 ONNX file, a static QDQ variant made here with the calibration images
  (``edged.quantization.vision``; cached in ``{cache_dir}/quantization`` by source + images);
* accuracy: each variant's gate (``edged.quantization.accuracy_gate``; limits from ``[quantization]`` or the
  ``--max-drop-db``/``--min-iou`` flags) against the fp32 file of its own format on the
  held-out split; the result of a catalogue file is stored on its catalogue entry
  (user manifest) so ``edged models list`` shows it and the loader obeys it;
* speed: median latency of the task's own model call (``superres.tile_fn`` on a real LR crop
  of ``--size`` px; the segmentation feed of a real photo) for fp32 and int8 on each backend
  that reads the files; int8 "wins" only when at least ``WIN_MARGIN`` faster. The winner
  goes to ``{state_dir}/quantization.json`` under (profile, model, backend).

The measurements live in ``edged.bench.quant_measure``, imported by the handler: building the
CLI parser must not load OpenCV and the quantizers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edged.cli.common import (
    add_common,
    add_gate_flags,
    gate_overrides,
    print_json,
    settings_from_args,
)

BACKENDS = ("onnx:cpu", "litert:xnnpack", "openvino:cpu")


def register(suites: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = suites.add_parser(
        "quantization", help="fp32 vs int8 latency and accuracy gate per model and backend"
    )
    add_common(p)
    p.add_argument("--sr-images", type=Path, default=None, help="SR calibration set (HR images)")
    p.add_argument("--seg-images", type=Path, default=None, help="segmentation images")
    p.add_argument("--models", default=None, help="comma-separated names (default: all)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="backends to time")
    p.add_argument("--size", type=int, default=128, help="SR input side in LR pixels")
    p.add_argument("--runs", type=int, default=15, help="timed runs per measurement")
    p.add_argument("--no-quantize", action="store_true", help="only the catalogue's int8 files")
    p.add_argument(
        "--no-record", action="store_true", help="do not write gates/winners to the state dir"
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_gate_flags(p)
    p.set_defaults(handler=_handler)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _gate_text(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "-"
    verdict = "PASS" if gate.get("passed") else "FAIL"
    if gate.get("metric") == "mask_iou":
        return f"IoU {gate['iou']:.3f} {verdict}"
    return (
        f"{gate['quant_db']:.2f}/{gate['fp32_db']:.2f} dB (bicubic {gate['bicubic_db']:.2f}, "
        f"-{gate['drop_db']:.2f}) {verdict}"
    )


def table(report: dict[str, Any]) -> str:
    lines = [
        f"board/profile: {report['board']}",
        "| model | backend | fp32 ms | int8 ms | winner | int8 file | accuracy gate (int8/fp32) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['backend']} | {_ms(r['fp32_ms'])} | {_ms(r['int8_ms'])} | "
            f"{r['winner'] or '-'} | {r['int8_file'] or r['note'] or '-'} | {_gate_text(r['gate'])} |"
        )
    return "\n".join(lines)


def _handler(args: argparse.Namespace) -> int:
    from edged.bench.quant_measure import run_bench

    settings = settings_from_args(args, **gate_overrides(args))
    report = run_bench(settings, args)
    if args.json:
        print_json(report)
    else:
        print(table(report))
    return 0
