"""``edged models quantize SRC --scheme dynamic-int8|qdq-int8|int4-weights [--out DST]``.

SRC is an .onnx file (fp32/fp16) or a diffusers ONNX model dir (its UNet is quantized, the
other components are copied unchanged). Prints a JSON report: sizes, ratio, op counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edged.cli.common import (
    GATE_FLAGS,
    add_common,
    add_gate_flags,
    gate_overrides,
    print_json,
    settings_from_args,
)
from edged.errors import BadRequest
from edged.quantization.onnx_quantizer import SCHEMES, quantize


def register_quantize(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``quantize`` action to ``edged models``' sub-parsers."""
    p = actions.add_parser(
        "quantize", help="int8 / 4-bit quantize an ONNX model or a generation model dir's UNet"
    )
    add_common(p, one_shot=True)
    p.add_argument(
        "src",
        type=Path,
        metavar="SRC",
        help=".onnx file, diffusers ONNX model dir, or a catalogue model NAME (its fp32 ONNX)",
    )
    p.add_argument(
        "--scheme", default=None, choices=SCHEMES, help="default qdq-int8 for a model NAME"
    )
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR",
        help="NAME: real images; calibrates static QDQ and runs the accuracy gate on a held-out split",
    )
    p.add_argument(
        "--format",
        default="onnx",
        choices=("onnx", "tflite", "openvino"),
        help="output format (NAME only); openvino: NNCF int8 IR of a model onnxruntime cannot "
        "quantize (TFLite-only segmentation), needs --calibration",
    )
    add_gate_flags(p)
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="NAME: keep and register a variant that fails the accuracy gate (marked failed)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file or dir (default: beside SRC); for a NAME, X.onnx is the file and any "
        "other X a dir, created as needed (default: the first writable model dir)",
    )
    p.add_argument("--block-size", type=int, default=32, help="int4: weights per scale block")
    p.add_argument(
        "--components",
        default="unet",
        help="model dir: comma-separated components to quantize (unet,text_encoder)",
    )
    p.add_argument(
        "--fuse-attention",
        action="store_true",
        help="model dir: fuse the UNet's attention into flash-attention MultiHeadAttention first",
    )
    p.add_argument(
        "--fp32-convs",
        action="store_true",
        help="leave convolutions fp32 (default: 8-bit conv weights with both int schemes)",
    )
    p.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    if args.calibration is None and any(getattr(args, f) is not None for f in GATE_FLAGS):
        # Without calibration images no gate runs: a limit given would silently do nothing.
        raise BadRequest(
            "--max-drop-db, --min-iou and --max-hole-drop-db set the accuracy gate, which runs "
            "only for a catalogue model NAME with --calibration DIR; add --calibration DIR"
        )
    if not args.src.exists() and "/" not in str(args.src) and args.src.suffix != ".onnx":
        return _quantize_name(args)  # a catalogue model NAME
    if args.calibration is not None or args.format != "onnx":
        raise BadRequest("--calibration and --format apply to a catalogue model NAME as SRC")
    if args.scheme is None:
        raise BadRequest(f"--scheme is required for a file or dir SRC: {', '.join(SCHEMES)}")
    kwargs: dict[str, Any] = {"convs": not args.fp32_convs}
    if args.src.is_dir():
        kwargs["components"] = [c.strip() for c in args.components.split(",") if c.strip()]
        kwargs["fuse_attention"] = args.fuse_attention
    elif args.fuse_attention:
        raise BadRequest("--fuse-attention applies to a generation model dir (its unet/)")
    if args.scheme == "int4-weights":
        kwargs["block_size"] = args.block_size
    report = quantize(args.src, args.out, args.scheme, **kwargs)
    print_json(report.as_dict())
    return 0


def _quantize_name(args: argparse.Namespace) -> int:
    """NAME: calibrated QDQ (or NNCF for ``--format openvino``), the accuracy gate,
    registration; the gate flags override the ``[quantization]`` settings."""
    from edged.quantization.vision import (  # numpy: not for --help
        GateFailed,
        quantize_catalog_model,
    )

    if args.format == "tflite":
        raise BadRequest(
            "--format tflite: converting to TFLite needs the TensorFlow converter, which edged "
            "does not use; quantize to ONNX (--format onnx), to OpenVINO IR (--format openvino, "
            "which reads TFLite models), or add a TFLite int8 file made elsewhere with "
            "`edged models add ... --precision int8`"
        )
    settings = settings_from_args(args, **gate_overrides(args))
    kwargs: dict[str, Any] = {"keep_failed": args.keep_failed, "out_dir": args.out}
    if args.format == "openvino":
        from edged.quantization.openvino_quantizer import quantize_catalog_openvino

        if args.scheme not in (None, "qdq-int8"):
            raise BadRequest("--format openvino makes static int8 only (--scheme qdq-int8)")
        result = quantize_catalog_openvino(settings, str(args.src), args.calibration, **kwargs)
    else:
        scheme = args.scheme or "qdq-int8"
        result = quantize_catalog_model(settings, str(args.src), scheme, args.calibration, **kwargs)
    print_json(result.as_dict())
    # A variant kept with --keep-failed still failed: same exit code as the refusal.
    return 0 if result.gate is None or result.gate.passed else GateFailed.exit_code
