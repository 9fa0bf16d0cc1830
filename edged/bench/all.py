"""``edged bench all``: every suite, sized to finish in minutes, into ``bench-results/``.

Each suite runs as its own ``edged bench SUITE --json`` child process (a fresh heap for the
memory figures, and one suite failing cannot take the others down). Results go to
``bench-results/<date>-<host>.json`` (everything, with the machine) and ``.md`` (every
suite's table plus the headline figures); ``--update-docs`` replaces the headline block of
``docs/benchmarks.md`` (between ``<!-- bench:start -->`` and ``<!-- bench:end -->``) with this
run's table, so the README itself never carries results.

The generation suite needs a diffusers ONNX model dir: ``--generation-model-dir``; without
one it runs on tiny generated graphs of the SD-Turbo layout (random weights: a smoke figure
for the staging machinery, not a text-to-image speed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edged.bench.common import add_bench_args, machine, machine_line, md_table
from edged.bench.headline import headline_rows
from edged.cli.common import print_json
from edged.errors import ConfigError

SUITE_ARGS: dict[str, list[str]] = {
    "latency": ["--rounds", "3", "--runs", "30", "--block-seconds", "1"],
    "stream": ["--seconds", "6", "--frames", "300", "--rounds", "2"],
    "superres": ["--runs", "2"],
    "swap": ["--rounds", "1", "--cycles", "20"],
    "memory": ["--budget", "600M", "--cycles", "1"],
    "generation": ["--size", "128", "--steps", "1"],
    # --no-record: a benchmark run must not change what the loader picks afterwards.
    "quantization": ["--models", "espcn_x2", "--runs", "5", "--size", "64", "--no-record"],
}
"""Reduced sizes so the whole run stays well under 10 minutes on a 2-core machine."""
QUICK_ARGS: dict[str, list[str]] = {
    "latency": ["--quick", "--rounds", "1", "--runs", "5"],
    "stream": ["--seconds", "3", "--frames", "60", "--no-mediapipe", "--rounds", "1"],
    "superres": ["--runs", "1", "--width", "320", "--height", "180", "--no-opencv"],
    "swap": ["--rounds", "1", "--cycles", "2"],
}
"""``--quick``: a smoke run of edged's own figures (tests), no baseline venvs."""
BEGIN, END = "<!-- bench:start -->", "<!-- bench:end -->"
DOCS_PAGE = Path("docs/benchmarks.md")
"""Where ``--update-docs`` writes by default (relative to the working directory: the checkout)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "all",
        help="every suite; writes bench-results/<date>-<host>.json and .md",
        description=__doc__,
    )
    add_bench_args(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="results dir (default: bench-results)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    parser.add_argument("--suites", default=None, help="comma-separated subset, in order")
    parser.add_argument("--skip", default="", help="comma-separated suites to leave out")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no baseline venvs")
    parser.add_argument("--generation-model-dir", type=Path, default=None)
    parser.add_argument(
        "--update-docs",
        type=Path,
        nargs="?",
        const=DOCS_PAGE,
        default=None,
        metavar="FILE",
        help=f"replace the headline block of FILE (default {DOCS_PAGE}) with this run's table",
    )
    parser.set_defaults(handler=_handler)


def available(name: str) -> bool:
    return importlib.util.find_spec(f"edged.bench.{name}") is not None


def plan(args: argparse.Namespace) -> list[str]:
    table = QUICK_ARGS if args.quick else SUITE_ARGS
    names = args.suites.split(",") if args.suites else list(table)
    unknown = [n for n in names if n not in SUITE_ARGS]
    if unknown:
        raise ConfigError(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITE_ARGS)}")
    skip = {s for s in args.skip.split(",") if s}
    return [n for n in names if n not in skip and available(n)]


def _common(args: argparse.Namespace) -> list[str]:
    out = [a for d in (args.model_dir or []) for a in ("--model-dir", str(d))]
    if args.config:
        out += ["--config", str(args.config)]
    return out


def _suite_argv(name: str, args: argparse.Namespace, work: Path) -> list[str]:
    extra = list((QUICK_ARGS if args.quick else SUITE_ARGS).get(name, []))
    if name in ("latency", "stream", "superres", "swap"):
        extra += _common(args)
        if args.threads:
            extra += ["--threads", str(args.threads)]
    if name == "generation":
        extra += ["--model-dir", str(args.generation_model_dir or _tiny_sd(work))]
    return [sys.executable, "-m", "edged", "bench", name, "--json", *extra]


def _tiny_sd(work: Path) -> Path:
    from edged.testing import make_tiny_sd_dir

    return make_tiny_sd_dir(work / "tiny-sd")


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of the suites: ``EDGED_MODEL_DIRS`` carries ``--model-dir`` and the
    shared models dir to suites that take no ``--model-dir`` of their own."""
    from edged.bench.common import bench_settings

    dirs = [str(d) for d in bench_settings(args).model_dirs]
    return {**os.environ, "EDGED_MODEL_DIRS": json.dumps(dirs)}


def run_one(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s", "seconds": timeout}
    seconds = round(time.perf_counter() - start, 1)
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if not result:
        tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
        result = {"error": " / ".join(tail) or f"exit code {done.returncode}"}
    result.setdefault("exit_code", done.returncode)
    result["seconds"] = seconds
    return result


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    names = plan(args)
    started = time.perf_counter()
    suites: dict[str, Any] = {}
    env = child_env(args)
    with tempfile.TemporaryDirectory(prefix="edged-bench-all-") as tmp:
        for name in names:
            argv = _suite_argv(name, args, Path(tmp))
            print(f"edged bench {name} ...", file=sys.stderr, flush=True)
            suites[name] = run_one(argv, timeout=900, env=env)
    goals = [{"suite": name, **g} for name, r in suites.items() for g in r.get("goals", []) or []]
    return {
        "suite": "all",
        "machine": machine(_threads(args)),
        "command": "edged bench all --json" + (" --quick" if args.quick else ""),
        "seconds": round(time.perf_counter() - started, 1),
        "suites": suites,
        "goals": goals,
        "headline": headline_rows(suites),
    }


def _threads(args: argparse.Namespace) -> int:
    from edged.bench.common import bench_settings, profile_threads

    return profile_threads(bench_settings(args), args.threads)


def headline_table(result: dict[str, Any]) -> str:
    headers = ["suite", "figure", "edged", "baseline (same run)", "ratio", "goal"]
    return md_table(headers, result["headline"])


def markdown(result: dict[str, Any]) -> str:
    """The full summary: headline table, then every suite's own table."""
    parts = [
        f"# edged benchmarks, {result['machine']['date']}",
        "",
        machine_line(result["machine"]),
        "",
        f"`{result['command']}` took {result['seconds']} s.",
        "",
        headline_table(result),
    ]
    for name, suite in result["suites"].items():
        parts += ["", f"## {name} ({suite.get('seconds')} s)", "", _suite_table(name, suite)]
    return "\n".join(parts) + "\n"


def _suite_table(name: str, suite: dict[str, Any]) -> str:
    if "error" in suite and len(suite) <= 3:
        return f"error: {suite['error']}"
    module = importlib.import_module(f"edged.bench.{name}")
    table = getattr(module, "table", None)
    if callable(table):
        try:
            return str(table(suite))
        except (KeyError, TypeError, ValueError):
            pass  # the suite's table is for its own full output; fall back to the fields
    rows = [(k, v) for k, v in suite.items() if isinstance(v, str | int | float | bool | None)]
    return md_table(["field", "value"], rows)


def results_dir(out: Path | None) -> Path:
    if out is not None:
        return out
    repo = Path(__file__).resolve().parents[2]
    return (repo if (repo / "pyproject.toml").is_file() else Path.cwd()) / "bench-results"


def write_results(result: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    stem = out / f"{date}-{socket.gethostname()}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    return stem


def docs_page_text(page: Path) -> str:
    """The page ``--update-docs`` will rewrite, checked for its markers (before any suite runs)."""
    try:
        text = page.read_text()
    except OSError as exc:
        raise ConfigError(f"{page}: cannot read ({exc.strerror}); run from the checkout") from exc
    if BEGIN not in text or END not in text:
        raise ConfigError(f"{page}: no {BEGIN} ... {END} block to replace")
    return text


def update_docs(page: Path, result: dict[str, Any], stem: Path | None) -> None:
    """Replace the block between the bench markers of ``page`` with the headline table."""
    text = docs_page_text(page)
    source = f"`{stem.with_suffix('.md').name}`" if stem else "this run"
    block = "\n".join(
        [
            BEGIN,
            f"Measured with `{result['command']}` ({source}, {result['seconds']} s) on "
            + machine_line(result["machine"]),
            "",
            headline_table(result),
            END,
        ]
    )
    head, rest = text.split(BEGIN, 1)
    page.write_text(head + block + rest.split(END, 1)[1])


def _handler(args: argparse.Namespace) -> int:
    if args.update_docs:
        docs_page_text(args.update_docs)  # a missing page fails now, not after the suites
    result = run_all(args)
    stem = None if args.no_write else write_results(result, results_dir(args.out))
    if args.update_docs:
        update_docs(args.update_docs, result, stem)
    if args.json:
        print_json(result)
    else:
        print(markdown(result))
    failed = [n for n, r in result["suites"].items() if "error" in r]
    return 1 if failed else 0
