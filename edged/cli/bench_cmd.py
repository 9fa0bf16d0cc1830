"""``edged bench``: not built yet (see the open issues)."""

from __future__ import annotations

import argparse

from edged.cli.common import add_common
from edged.errors import EdgedError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bench", help="(not built yet)")
    add_common(parser)
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    raise EdgedError("edged bench is not built yet")
