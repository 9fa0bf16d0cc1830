"""``edged bench SUITE``: benchmarks that prove the speed and memory targets.

A thin root like ``edged.cli``: each suite is a module ``edged/bench/<suite>.py`` exposing
``register(subparsers)`` that adds its parser and sets ``handler``. To add a suite, append its
module name to ``SUITES`` (explicit, so a suite that fails to import is a visible bug).
"""

from __future__ import annotations

import argparse
import importlib

SUITES: tuple[str, ...] = (
    "memory",
    "generation",
    "latency",
    "stream",
    "fuzz",
    "soak",
    "reliability",
    "superres",
    "quantization",
    "swap",
    "all",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench", help="run a benchmark suite", description="Benchmarks; one sub-command per suite."
    )
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name in SUITES:
        importlib.import_module(f"edged.bench.{name}").register(suites)
