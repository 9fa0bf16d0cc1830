"""``edged bench swap``: what swapping a big model in and out costs (realesrgan-x4plus, 67 MB).

- Load time, cold vs cached: each load is a fresh interpreter (nothing carries over but the
  files on disk; the model file itself is in the page cache both times). ``cold`` has an
  empty cache dir, so onnxruntime optimises the graph (and saves it); ``cached`` reads the
  optimised graph edged saved under ``cache_dir/onnxruntime/`` with optimisation off. The
  first run (warm-up, 64x64) is timed separately.
  A third figure, ``cache off`` (no cache dir), is what a load costs without the feature.
- RSS over ``--cycles`` load/unload cycles through the real pool + loader (the daemon's path:
  verify, cached load, one 16x16 run, evict with the pool's ``gc`` + ``malloc_trim``): RSS
  after one cycle (baseline) vs after the last one. In a fresh child process too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edged.bench.common import (
    add_bench_args,
    bench_settings,
    emit,
    fmt_ratio,
    machine,
    md_table,
    percentile,
    profile_threads,
    ratio,
)
from edged.errors import EdgedError, ModelNotFound
from edged.schema import format_bytes

MODEL = "realesrgan-x4plus"
MB = 1_000_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "swap",
        help="realesrgan-x4plus load time cold vs optimized-model cache; RSS over load cycles",
        description=__doc__,
    )
    add_bench_args(parser)
    parser.add_argument("--model", default=MODEL, help="catalogue model (an onnx file)")
    parser.add_argument("--rounds", type=int, default=2, help="cold+cached load pairs")
    parser.add_argument("--cycles", type=int, default=20, help="load/unload cycles for RSS")
    parser.add_argument("--child", choices=["load", "cycles"], help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(handler=_handler)


def _onnx_file(settings: Any, model: str) -> tuple[Path, str | None]:
    from edged.models.catalog import Catalog

    catalog = Catalog.from_settings(settings)
    for file in catalog.get(model).files:
        if file.format == "onnx" and (path := catalog.locate(file)) is not None:
            return path, file.sha256
    raise ModelNotFound(f"{model}: no .onnx file in the model dirs; add one with --model-dir")


# ---------------------------------------------------------------- children (fresh processes)


def child_load(settings: Any, model: str, threads: int, cache_dir: Path | None) -> dict[str, Any]:
    from edged.runtime import config_for, open_session
    from edged.runtime.base import warmup_feeds

    path, sha = _onnx_file(settings, model)
    config = config_for("onnx:cpu", threads=threads, precision="fp32")
    start = time.perf_counter_ns()
    session = open_session(config, path, cache_dir=cache_dir, sha256=sha, warmup=False)
    loaded = time.perf_counter_ns()
    session.run(warmup_feeds(session.inputs, (16, 16)))
    warm = time.perf_counter_ns()
    return {
        "load_s": round((loaded - start) / 1e9, 3),
        "warmup_s": round((warm - loaded) / 1e9, 3),
        "cache": getattr(session, "cache", None),
    }


def child_cycles(settings: Any, model: str, threads: int, cycles: int) -> dict[str, Any]:
    """Load (cached graph), run once on 16x16, evict; ``cycles`` times through the pool."""
    from edged.memory import release_memory, snapshot, wait_settled
    from edged.models.catalog import Catalog
    from edged.models.loader import LoadedModel, load_model
    from edged.pool.model_pool import ModelPool
    from edged.runtime.base import warmup_feeds

    catalog = Catalog.from_settings(settings)
    entry = catalog.get(model)
    pool: ModelPool[LoadedModel] = ModelPool(1 << 40)

    def loader() -> LoadedModel:
        # The loader's own warm-up runs 64x64 (seconds for this model); 16x16 proves the
        # session works at a fraction of the cost, and the cycle is about memory.
        loaded = load_model(
            entry, catalog, ["onnx:cpu"], threads=threads, precision="fp32",
            cache_dir=settings.cache_dir, settings=settings, warmup=False,
        )  # fmt: skip
        loaded.session.run(warmup_feeds(loaded.session.inputs, (16, 16)))
        return loaded

    def cycle() -> float:
        start = time.perf_counter_ns()
        with pool.acquire(model, loader):
            pass
        pool.evict(model, force=True)
        return (time.perf_counter_ns() - start) / 1e9

    cycle()  # one-time runtime allocations (and the cache write) precede the baseline
    release_memory()
    before = wait_settled(timeout_s=1.0)
    seconds = [cycle() for _ in range(cycles)]
    release_memory()
    after = wait_settled(timeout_s=1.0)
    pool.close()
    return {
        "cycles": cycles,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_bytes": after - before,
        "cycle_p50_s": round(statistics.median(seconds), 3),
        "cycle_p95_s": round(percentile(seconds, 95), 3),
        "vm_hwm_bytes": snapshot(with_pss=False).hwm,
    }


def _spawn(args: list[str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "edged", "bench", "swap", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EdgedError(f"edged bench swap child failed: {tail[0]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------------------------------------------------------------- parent


def run_suite(
    common: list[str], threads: int, model: str, rounds: int, cycles: int
) -> dict[str, Any]:
    base = [*common, "--threads", str(threads), "--model", model, "--json"]
    cold, cached, off = [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="edged-bench-swap-") as tmp:
            off.append(_spawn([*base, "--child", "load", "--no-cache"]))
            cold.append(_spawn([*base, "--child", "load", "--cache-dir", tmp]))
            cached.append(_spawn([*base, "--child", "load", "--cache-dir", tmp]))
    with tempfile.TemporaryDirectory(prefix="edged-bench-swap-") as tmp:
        # A cache dir of its own: the cycles measure the cached load the daemon does.
        rss = _spawn([*base, "--child", "cycles", "--cycles", str(cycles), "--cache-dir", tmp])

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(float(r[key]) for r in rows), 3)

    loads: dict[str, Any] = {
        "nocache_load_s": med(off, "load_s"),
        "nocache_warmup_s": med(off, "warmup_s"),
        "cold_load_s": med(cold, "load_s"),
        "cached_load_s": med(cached, "load_s"),
        "cold_warmup_s": med(cold, "warmup_s"),
        "cached_warmup_s": med(cached, "warmup_s"),
        "cache_states": sorted({str(r["cache"]) for r in cold + cached}),
        "samples": {"nocache": off, "cold": cold, "cached": cached},
    }
    loads["cached/cold"] = ratio(loads["cached_load_s"], loads["cold_load_s"])
    loads["cached/nocache"] = ratio(loads["cached_load_s"], loads["nocache_load_s"])
    return {
        "suite": "swap",
        "machine": machine(threads),
        "model": model,
        "load": loads,
        "rss": rss,
    }


def table(result: dict[str, Any]) -> str:
    ld, rss = result["load"], result["rss"]
    off = ld["nocache_load_s"]
    rows = [
        ["load, cache off (ORT optimises in memory)", off, "1.00x"],
        ["load, cold cache (optimises + writes the cache)", ld["cold_load_s"],
         fmt_ratio(ratio(ld["cold_load_s"], off))],
        ["load, optimized-model cache hit", ld["cached_load_s"], fmt_ratio(ld["cached/nocache"])],
        ["first run 16x16 after cache-off load", ld["nocache_warmup_s"], "-"],
        ["first run 16x16 after cached load", ld["cached_warmup_s"], "-"],
        [f"load+run+evict cycle p50 (pool+loader, {rss['cycles']} cycles)", rss["cycle_p50_s"], "-"],
    ]  # fmt: skip
    lines = [md_table([f"{result['model']} (onnx:cpu)", "seconds", "vs cache off"], rows)]
    mem = [
        ["RSS after 1 cycle (baseline)", format_bytes(rss["rss_before_bytes"])],
        [f"RSS after {rss['cycles']} more cycles", format_bytes(rss["rss_after_bytes"])],
        ["growth", f"{rss['rss_growth_bytes'] / MB:+.1f} MB"],
    ]
    lines += ["", md_table(["memory", "value"], mem)]
    return "\n".join(lines)


def _handler(args: argparse.Namespace) -> int:
    settings = bench_settings(args)
    threads = profile_threads(settings, args.threads)
    if args.child == "load":
        cache_dir = None if args.no_cache else args.cache_dir
        print(json.dumps(child_load(settings, args.model, threads, cache_dir)))
        return 0
    if args.child == "cycles":
        print(json.dumps(child_cycles(settings, args.model, threads, args.cycles)))
        return 0
    common = [a for d in (args.model_dir or []) for a in ("--model-dir", str(d))]
    if args.config:
        common += ["--config", str(args.config)]
    result = run_suite(common, threads, args.model, args.rounds, args.cycles)
    emit(result, args.json, table)
    return 0
