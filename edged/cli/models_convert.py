"""``edged models convert SOURCE --to DIR [--preset board|int8|fp32] [--budget 1G]``.

SOURCE is a Hugging Face diffusers repo id (``OWNER/REPO[@REVISION]``, fetched with
huggingface_hub) or a local diffusers dir; the result is a self-contained, board-ready ONNX
model dir with ``edged-manifest.json`` (edged/convert/plan.py). ``lama``, ``migan`` and
``mobilesam`` as SOURCE name the upstream checkpoint and commands those models need
(edged/convert/vision.py). Runs on a workstation with the ``convert`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edged.cli.common import add_common, print_json, settings_from_args
from edged.errors import BadRequest
from edged.schema import format_bytes, parse_bytes


def register_convert(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``convert`` action to ``edged models``' sub-parsers."""
    from edged.convert.plan import PRESETS

    p = actions.add_parser(
        "convert",
        help="diffusers repo or dir -> self-contained board-ready ONNX dir (workstation)",
    )
    add_common(p, one_shot=True)
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="OWNER/REPO[@REVISION] on the Hub, a local diffusers dir, or lama|migan|mobilesam",
    )
    p.add_argument("--to", type=Path, default=None, metavar="DIR", help="output dir (new)")
    p.add_argument(
        "--preset",
        default="board",
        choices=sorted(PRESETS),
        help="; ".join(f"{k}: {v.summary}" for k, v in PRESETS.items()),
    )
    p.add_argument(
        "--budget", default="1G", help="board memory for one UNet part + its working memory"
    )
    p.add_argument(
        "--checkpoint", default=None, metavar="PATH", help="upstream torch checkpoint (migan, …)"
    )
    p.set_defaults(handler=_convert)


def _budget(text: str) -> int:
    value = parse_bytes(text)
    if not isinstance(value, int) or value <= 0:
        raise BadRequest(f"--budget {text!r}: a size such as 1G, 768M or 1500000000")
    return value


def _catalogue_match(args: argparse.Namespace, repo: str | None) -> dict[str, Any]:
    """The shipped entry whose recipe converts this repo: its name and licence go into the
    manifest, so `edged models add DIR` keeps the licence gate (SD-Turbo's is non-commercial)."""
    if repo is None:
        return {}
    from edged.models.catalog import Catalog

    for entry in Catalog.from_settings(settings_from_args(args)):
        command = entry.recipe.command if entry.recipe else None
        if command and (f"convert {repo}@" in command or f"convert {repo} " in command):
            return {"name": entry.name, "licence": entry.licence, "homepage": entry.homepage}
    return {}


def _convert(args: argparse.Namespace) -> int:
    from edged.convert.vision import FETCHED, VISION_MODELS, refuse_vision

    if args.source in VISION_MODELS or args.source in FETCHED:
        raise refuse_vision(args.source, args.checkpoint)
    if args.checkpoint is not None:
        raise BadRequest("--checkpoint applies to migan and mobilesam sources only")
    if args.to is None:
        raise BadRequest("--to DIR is required: where the converted model dir goes")
    from edged.convert.diffusers_export import require_torch
    from edged.convert.plan import PRESETS, convert_diffusers
    from edged.convert.source import resolve_source

    budget = _budget(args.budget)
    require_torch()  # before a download: say what to install first
    source = resolve_source(args.source)
    meta = _catalogue_match(args, source.repo)
    result = convert_diffusers(source, args.to, PRESETS[args.preset], budget, meta=meta)
    print_json(
        {
            "dest": str(result.dest),
            "family": result.family,
            "preset": args.preset,
            "files": result.files,
            "bytes": result.bytes,
            "size": format_bytes(result.bytes),
            "unet_parts": result.unet_parts,
            "notes": result.notes,
            "next": f"edged models verify {result.dest} && edged models add {result.dest}",
        }
    )
    return 0
