"""Options every sub-command shares, and turning them into ``Settings``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edged.config import Settings, load_settings
from edged.log import configure_logging


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--log-level`` on every sub-command (CLI flags beat env and file)."""
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings with CLI overrides applied, logging configured from them."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "log_level", None):
        flags["log_level"] = args.log_level
    settings = load_settings(getattr(args, "config", None), flags)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def print_json(obj: object) -> None:
    """One JSON document on stdout, newline-terminated."""
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()
