"""``edged models split SRC [--parts N] [--out DIR]``: cut a model into consecutive parts.

SRC is an .onnx file or a diffusers ONNX model dir (its ``unet/model.onnx``). The parts go to
``<model's dir>/parts/`` unless ``--out`` says otherwise; staged generation runs a UNet part
by part when the whole UNet does not fit the memory budget (docs/generation.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edged.cli.common import add_common, print_json
from edged.errors import BadRequest


def register_split(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``split`` action to ``edged models``' sub-parsers."""
    p = actions.add_parser(
        "split", help="cut an ONNX model (a generation dir's UNet) into parts run one at a time"
    )
    add_common(p, one_shot=True)
    p.add_argument("src", type=Path, metavar="SRC", help=".onnx file or diffusers ONNX model dir")
    p.add_argument("--parts", type=int, default=4, help="number of parts (default 4)")
    p.add_argument("--out", type=Path, default=None, help="default: parts/ beside the model")
    p.set_defaults(handler=_split)


def _split(args: argparse.Namespace) -> int:
    from edged.graph.split import split_model
    from edged.tasks.generation.parts import PARTS_DIR

    src: Path = args.src
    if src.is_dir():
        src = src / "unet" / "model.onnx"
    if not src.is_file() or src.suffix != ".onnx":
        raise BadRequest(f"{args.src}: give an .onnx file or a model dir with unet/model.onnx")
    out = args.out or src.parent / PARTS_DIR
    infos = split_model(src, out, args.parts)
    print_json(
        {
            "src": str(src),
            "out": str(out),
            "parts": [
                {
                    "path": i.path,
                    "nodes": i.nodes,
                    "weight_bytes": i.weight_bytes,
                    "inputs": len(i.inputs),
                    "outputs": len(i.outputs),
                }
                for i in infos
            ],
        }
    )
    return 0
