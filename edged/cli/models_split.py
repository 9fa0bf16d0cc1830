"""``edged models split SRC [--parts N | --budget BYTES] [--out DIR]``: cut a model into
consecutive parts.

SRC is an .onnx file or a diffusers ONNX model dir (its ``unet/model.onnx``). The parts go to
``<model's dir>/parts/`` unless ``--out`` says otherwise; staged generation runs a UNet part
by part when the whole UNet does not fit the memory budget (docs/generation.md). ``--budget``
sizes the parts for a whole generation process of that many bytes (at 512x512) instead of a
count: the same estimator the runtime plan uses.
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
    sizing = p.add_mutually_exclusive_group()
    sizing.add_argument("--parts", type=int, default=None, help="number of parts (default 4)")
    sizing.add_argument(
        "--budget", default=None, help="size the parts for a process of this many bytes (0.3G)"
    )
    p.add_argument("--size", type=int, default=512, help="image side --budget plans for")
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
    infos = split_model(src, out, _count(args, src))
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


def _count(args: argparse.Namespace, src: Path) -> int:
    """``--parts``, or the fewest parts whose largest fits ``--budget`` with the process."""
    if args.budget is None:
        return int(args.parts or 4)
    from edged.schema import format_bytes, parse_bytes
    from edged.tasks.generation.budget import PROCESS_BYTES, parts_for_process

    budget = parse_bytes(args.budget)
    if not isinstance(budget, int):
        raise BadRequest(f"--budget {args.budget!r}: give bytes, e.g. 0.3G or 300M")
    component = "text_encoder" if "text_encoder" in src.parent.name else "unet"
    count = parts_for_process(component, src, budget, args.size * args.size)
    if count is None:
        raise BadRequest(
            f"{src}: no split fits a {format_bytes(budget)} process (the process alone takes "
            f"~{format_bytes(PROCESS_BYTES)}): give a larger --budget or --parts N"
        )
    return count
