"""Options every sub-command shares, and turning them into ``Settings``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edged.config import QuantizationSettings, Settings, load_settings
from edged.log import configure_logging


def add_common(parser: argparse.ArgumentParser, *, one_shot: bool = False) -> None:
    """``--config`` and ``--log-level`` on every sub-command (CLI flags beat env and file).

    ``one_shot`` commands (``infer``, ``models``, ``demo``...) print a human summary: their
    logs are warnings and errors only, as console lines, unless ``--log-level`` asks for more
    (the daemon's ``log_level`` setting is for the daemon).
    """
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="default: warning for one-shot commands, else the log_level setting"
        if one_shot
        else None,
    )
    parser.set_defaults(one_shot=one_shot)


GATE_FLAGS = {
    "max_drop_db": "max_psnr_drop_db",
    "min_iou": "min_iou",
    "max_hole_drop_db": "max_hole_drop_db",
}
"""Accuracy-gate flag (``args`` attribute) -> ``[quantization]`` setting it overrides."""


def add_gate_flags(parser: argparse.ArgumentParser) -> None:
    """The accuracy-gate limits of ``edged models quantize`` and ``edged bench quantization``."""
    group = parser.add_argument_group("accuracy gate (override the [quantization] settings)")
    helps = {
        "max_drop_db": ("DB", "super-resolution: most Y-PSNR drop vs fp32"),
        "min_iou": ("X", "segmentation: least mask IoU with fp32"),
        "max_hole_drop_db": ("DB", "inpainting: most in-hole PSNR drop vs fp32"),
    }
    for flag, (metavar, text) in helps.items():
        key = GATE_FLAGS[flag]
        default = QuantizationSettings.model_fields[key].default  # one source of defaults
        group.add_argument(
            f"--{flag.replace('_', '-')}",
            type=float,
            metavar=metavar,
            help=f"{text} (setting quantization.{key}, default {default})",
        )


def gate_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The gate flags given, as a ``quantization`` override for ``settings_from_args`` (which
    validates them like the TOML file: ``--min-iou 2`` is a config error naming the key)."""
    given = {key: getattr(args, flag) for flag, key in GATE_FLAGS.items()}
    return {"quantization": {k: v for k, v in given.items() if v is not None} or None}


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings with CLI overrides applied, logging configured from them.

    A nested dict (e.g. ``quantization={...}``) is merged key by key with the environment and
    the TOML file, so one flag does not reset the section's other keys."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "log_level", None):
        flags["log_level"] = args.log_level
    settings = load_settings(getattr(args, "config", None), flags)
    if getattr(args, "one_shot", False):
        level = getattr(args, "log_level", None) or "warning"
        configure_logging(level, settings.log_format, auto_console=True)
    else:
        configure_logging(settings.log_level, settings.log_format)
    return settings


def print_json(obj: object) -> None:
    """One JSON document on stdout, newline-terminated."""
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()
