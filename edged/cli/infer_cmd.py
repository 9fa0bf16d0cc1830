"""``edged infer``: run one job through ``Engine.run`` (the daemon's code path) and save it.

    edged infer segmentation --model selfie_segmentation --input me.jpg --output mask.png
    edged infer segmentation --model mobilesam --input a.jpg --output m.png --points 120,80
    edged infer superres --input small.png --output big.png --param tile=256

Prints one line: on a terminal a readable summary, else (or with ``--json``) JSON with task,
model, backend, input_shape, output_shape, latency_ms (pre/run/post/total); ``--json`` adds the task's ``meta`` and every output's shape. Writes
the task's primary output (``meta["primary"]``, else ``image``, else the first) to
``--output`` as PNG or JPEG by extension.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edged.cli.common import add_common, print_json, settings_from_args
from edged.errors import BadRequest
from edged.tasks.base import TaskRequest, TaskResult
from edged.tasks.registry import TASK_MODULES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("infer", help="run one job on an image file and save the result")
    add_common(parser, one_shot=True)
    parser.add_argument("task", choices=list(TASK_MODULES), help="which task")
    parser.add_argument("--model", default=None, help="catalogue name (default: the task's)")
    parser.add_argument("--input", type=Path, default=None, help="input image (PNG/JPEG)")
    parser.add_argument("--output", type=Path, required=True, help="output image (.png/.jpg)")
    parser.add_argument("--mask", type=Path, default=None, help="mask image (inpainting)")
    parser.add_argument(
        "--points", nargs="+", default=[], metavar="X,Y[,LABEL]", help="prompt points"
    )
    parser.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1", help="prompt box")
    parser.add_argument("--prompt", default=None, help="text prompt (generation)")
    parser.add_argument("--backend", default=None, help="force a backend, e.g. onnx:cpu")
    parser.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="task parameter (repeat)"
    )
    parser.add_argument(
        "--model-dir", action="append", type=Path, default=None, help="model file dir (repeat)"
    )
    parser.add_argument(
        "--catalog-dir", action="append", type=Path, default=None, help="manifest dir (repeat)"
    )
    parser.add_argument("--json", action="store_true", help="also print meta and all outputs")
    parser.set_defaults(handler=_handler)


def _numbers(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in count or not all(np.isfinite(values)):
        raise BadRequest(f"{what} {text!r}: expected {' or '.join(map(str, count))} numbers")
    return values


def parse_points(items: list[str]) -> list[tuple[float, float, int]]:
    """``x,y`` or ``x,y,label`` (label 1 = foreground, default; 0 = background)."""
    points = []
    for item in items:
        values = _numbers(item, (2, 3), "point")
        label = int(values[2]) if len(values) == 3 else 1
        points.append((values[0], values[1], label))
    return points


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    x0, y0, x1, y1 = _numbers(text, (4,), "box")
    return x0, y0, x1, y1


def parse_params(items: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; values are JSON when they parse as JSON (numbers, lists), else strings."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"--param {item!r}: use key=value")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg")
"""``edged.imaging.ENCODINGS``' names, checked before the job without importing OpenCV: a
prompt-only generation loads cv2 (~30 MB) only to write its result, after its models."""


def build_request(args: argparse.Namespace) -> TaskRequest:
    """Read and validate the files and prompts into a ``TaskRequest`` (BadRequest on misuse)."""
    if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise BadRequest(f"--output {args.output}: use a .png or .jpg file name")
    image = None
    if args.input is not None:
        from edged import imaging

        image = imaging.read_image(args.input, "--input")
    elif args.task != "generation":
        raise BadRequest(f"{args.task} needs --input IMAGE")
    mask = None
    if args.mask is not None:
        from edged import imaging

        mask = imaging.read_mask(args.mask, "--mask")
        if image is not None:
            mask = imaging.check_mask(mask, image.shape, f"--mask {args.mask}")
    return TaskRequest(
        task=args.task,
        model=args.model,
        image=image,
        mask=mask,
        points=parse_points(args.points),
        box=parse_box(args.box),
        prompt=args.prompt,
        params=parse_params(args.param),
        backend=args.backend,
    )


def primary_output(result: TaskResult) -> np.ndarray[Any, Any]:
    """The output to save: the task's ``meta["primary"]``, else ``image``, else the first."""
    name = result.meta.get("primary")
    if name not in result.outputs:
        name = "image" if "image" in result.outputs else next(iter(result.outputs), None)
    if name is None:
        raise BadRequest(f"{result.task} produced no output")
    return np.asarray(result.outputs[name])


def _handler(args: argparse.Namespace) -> int:
    from edged.engine import Engine

    overrides = {"model_dirs": args.model_dir, "catalog_dirs": args.catalog_dir}
    settings = settings_from_args(args, **overrides)
    request = build_request(args)
    started = time.perf_counter()
    engine = Engine(settings)
    shown = _progress_line(request)
    try:
        result = engine.run(request, progress=shown)
    finally:
        if shown is not None:
            shown.close()
        engine.close()
    out = primary_output(result)
    if out.dtype != np.uint8:
        out = np.clip(out, 0, 255).astype(np.uint8)
    from edged import imaging

    imaging.write_image(args.output, out)
    latency = dict(result.latency_ms)
    latency.setdefault("total", round((time.perf_counter() - started) * 1e3, 3))
    line: dict[str, Any] = {
        "task": result.task,
        "model": result.model,
        "backend": result.backend,
        "input_shape": list(request.image.shape) if request.image is not None else None,
        "output_shape": list(out.shape),
        "latency_ms": {k: latency.get(k) for k in ("pre", "run", "post", "total")},
    }
    if args.json:
        line["meta"] = result.meta
        line["outputs"] = {k: list(np.shape(v)) for k, v in result.outputs.items()}
    if args.json or not sys.stdout.isatty():
        print_json(line)
    else:
        print(summary(line, args.output))
    return 0


def _progress_line(request: TaskRequest) -> Any:
    """Generation on a terminal: stage and step progress with a time estimate on stderr."""
    if request.task != "generation" or not sys.stderr.isatty():
        return None
    from edged.tasks.generation.progress import ProgressLine

    return ProgressLine(sys.stderr)


def summary(line: dict[str, Any], output: Path) -> str:
    """The human form of the result line (a terminal; pipes get the JSON line)."""

    def shape(dims: list[int] | None) -> str:
        return "x".join(map(str, dims)) if dims else "-"

    ms = line["latency_ms"]
    parts = ", ".join(f"{k} {ms[k]:.1f}" for k in ("pre", "run", "post") if ms.get(k) is not None)
    return (
        f"{line['task']}: {line['model']} on {line['backend']}, "
        f"{shape(line['input_shape'])} -> {shape(line['output_shape'])} in "
        f"{ms['total']:.1f} ms ({parts}); wrote {output}"
    )
