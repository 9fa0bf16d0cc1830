"""``edged models quantize SRC --scheme dynamic-int8|qdq-int8|int4-weights [--out DST]``.

SRC is an .onnx file (fp32/fp16) or a diffusers ONNX model dir (its UNet is quantized, the
other components are linked unchanged). Prints a JSON report: sizes, ratio, op counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edged.cli.common import add_common, print_json
from edged.quantize import SCHEMES, quantize


def register_quantize(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``quantize`` action to ``edged models``' sub-parsers."""
    p = actions.add_parser(
        "quantize", help="int8 / 4-bit quantize an ONNX model or a generation model dir's UNet"
    )
    add_common(p)
    p.add_argument("src", type=Path, metavar="SRC", help=".onnx file or diffusers ONNX model dir")
    p.add_argument("--scheme", required=True, choices=SCHEMES)
    p.add_argument(
        "--out", type=Path, default=None, help="output file or dir (default: beside SRC)"
    )
    p.add_argument("--block-size", type=int, default=32, help="int4: weights per scale block")
    p.add_argument(
        "--components",
        default="unet",
        help="model dir: comma-separated components to quantize (unet,text_encoder)",
    )
    p.add_argument(
        "--fp32-convs",
        action="store_true",
        help="leave convolutions fp32 (default: 8-bit conv weights with both int schemes)",
    )
    p.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    kwargs: dict[str, Any] = {"convs": not args.fp32_convs}
    if args.src.is_dir():
        kwargs["components"] = [c.strip() for c in args.components.split(",") if c.strip()]
    if args.scheme == "int4-weights":
        kwargs["block_size"] = args.block_size
    report = quantize(args.src, args.out, args.scheme, **kwargs)
    print_json(report.as_dict())
    return 0
