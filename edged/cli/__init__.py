"""The ``edged`` command: a thin root that composes one module per sub-command.

Each sub-command module exposes ``register(subparsers)``; it adds its parser and sets
``handler`` to a function ``(args) -> int``. User errors become one line and a distinct exit
code (see ``edged.errors``); tracebacks are kept for real bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edged import __version__
from edged.errors import EdgedError
from edged.log import logging_scope

# Explicit list: a sub-command that fails to import is a bug we want to see, not skip.
SUBCOMMANDS = ("run", "profile", "models", "infer", "bench", "client", "config", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged",
        description="Edge-AI daemon: segmentation, super-resolution, inpainting, generation.",
    )
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"edged.cli.{name}_cmd")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # In-process callers (tests, `edged bench`) must find logging as they left it.
        with logging_scope():
            code: int = args.handler(args)
    except EdgedError as exc:
        first, *rest = str(exc).splitlines() or [type(exc).__name__]
        print(f"edged: error: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code
