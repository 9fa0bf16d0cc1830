"""``edged profile``: what the probe found, which profile it chose and why."""

from __future__ import annotations

import argparse
from pathlib import Path

from edged.cli.common import add_common, print_json, settings_from_args
from edged.profiles import choose, describe


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("profile", help="probe the board and explain the chosen profile")
    add_common(parser, one_shot=True)
    parser.add_argument(
        "--sysroot", type=Path, default=Path("/"), help="probe this root instead of / (fake trees)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    from edged.pool.budget import effective_budget

    settings = settings_from_args(args)
    choice = choose(settings, args.sysroot)
    budget = effective_budget(
        settings, choice.profile.memory_budget, choice.hardware.cgroup_memory_max
    )
    if args.json:
        print_json(choice.to_json(budget))
    else:
        print("\n".join(describe(choice, budget)))
    return 0
