"""``edged bench memory``: rotate models worth >= 2x the budget through the pool, watch RSS.

The process under test is this one. Models (generated MatMul/Conv ONNX files of 100-400 MB,
plus the real shared ONNX models when a model dir has them) are written by a *child*
process, so building them never shows in this process's RSS or VmHWM. After a warm-up the
baseline RSS is taken, VmHWM is reset, and a 5 ms sampler watches RSS while every model is
loaded, run and evicted for ``--cycles`` rounds. Goals (issue 5): peak RSS <= budget +
baseline, and RSS back within 30 MB of the baseline once the pool is closed.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.cli.common import add_common, print_json, settings_from_args
from edged.config import Settings
from edged.errors import BackendUnavailable, ConfigError
from edged.memory import (
    PeakSampler,
    read_cgroup_memory,
    release_memory,
    reset_hwm,
    snapshot,
    wait_settled,
)
from edged.pool.budget import effective_budget
from edged.pool.model_pool import ModelPool
from edged.runtime import config_for, open_session
from edged.runtime.base import Session, warmup_feeds
from edged.schema import format_bytes, parse_bytes

MB = 1_000_000
FINAL_TOLERANCE = 30 * MB
GENERATED_MB = (400, 100, 300, 200)
SHARED_ONNX = (
    "realesrgan-x4plus.onnx",
    "realesr-animevideov3-x4.onnx",
    "taef2_decoder.onnx",
    "taef2_encoder.onnx",
    "vaelight_decoder.onnx",
    "vaelight_encoder.onnx",
    "lapsrn_x4.onnx",
    "espcn_x4.onnx",
)
"""Real models that run on onnx:cpu with any 32x32 input (see ../shared/models/README.md)."""


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "memory",
        help="rotate models worth >= 2x the budget through the pool; report peak/final RSS",
        description=__doc__,
    )
    add_common(parser)
    parser.add_argument("--budget", default=None, help="pool budget, e.g. 1500000000 or 1.5G")
    parser.add_argument("--cycles", type=int, default=20, help="rounds over all models")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep generated models here")
    parser.add_argument("--no-shared", action="store_true", help="generated models only")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    parser.set_defaults(handler=_handler)


def _budget(args: argparse.Namespace, settings: Settings) -> int:
    if args.budget is None:
        cgroup = read_cgroup_memory()
        return effective_budget(settings, None, cgroup.max if cgroup else None)
    try:
        value = parse_bytes(args.budget)
    except ValueError as exc:
        raise ConfigError(f"--budget: {exc} (got {args.budget!r})") from exc
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"--budget must be a positive byte size (got {args.budget!r})")
    return value


def _shared_models(settings: Settings) -> list[BenchModel]:
    from edged.testing import shared_models_dir

    dirs = [*settings.model_search_path, shared_models_dir()]
    found: dict[str, BenchModel] = {}
    for name in SHARED_ONNX:
        path = next((d / name for d in dirs if (d / name).is_file()), None)
        if path is not None:
            found[name] = BenchModel(Path(name).stem, path)
    return list(found.values())


def _plan_generated(budget: int, have: int, work: Path) -> list[tuple[str, str, int]]:
    """(kind, file name, MB) until the rotation holds >= 2x the budget.

    Sizes are capped at 40% of the budget: a load peaks at about 2x the file, so each model
    must be able to load alone.
    """
    specs: list[tuple[str, str, int]] = []
    total = have
    cap = max(1, int(budget * 0.4 / MB))
    while total < 2 * budget:
        i = len(specs)
        megabytes = min(GENERATED_MB[i % len(GENERATED_MB)], cap)
        # Small Conv models peak at ~5x their file during load (2x from 100 MB up): only
        # big ones, so that every model can load alone under small test budgets.
        kind = "conv" if i % 3 == 2 and megabytes >= 100 else "matmul"
        specs.append((kind, f"gen{i:02d}_{kind}_{megabytes}mb.onnx", megabytes))
        total += int(megabytes * MB * 0.99)  # files hold n*n floats: slightly under nominal
    return specs


def generate_models_main() -> None:
    """Child-process entry: build the models named in argv[1] (JSON) into argv[2]."""
    from edged.testing import make_conv_model, make_matmul_model, make_scale_model

    specs, work = json.loads(sys.argv[1]), Path(sys.argv[2])
    make_scale_model(work / "warmup.onnx")
    for i, (kind, name, megabytes) in enumerate(specs):
        path = work / name
        if not path.exists():
            maker = make_conv_model if kind == "conv" else make_matmul_model
            maker(path.with_suffix(".tmp"), megabytes, seed=i).rename(path)


def _generate(specs: list[tuple[str, str, int]], work: Path) -> None:
    try:
        import onnx  # noqa: F401 - only checking it is there before spawning the child
    except ImportError as exc:
        raise BackendUnavailable(
            "edged bench memory builds ONNX models with the onnx package: pip install 'edged[dev]'"
        ) from exc
    code = "from edged.bench.memory import generate_models_main; generate_models_main()"
    subprocess.run([sys.executable, "-c", code, json.dumps(specs), str(work)], check=True)


def _loader(path: Path, threads: int | None) -> Session:
    return open_session(config_for("onnx:cpu", threads=threads), path, warmup_size=(32, 32))


def _rotate(
    pool: ModelPool[Session], models: list[BenchModel], cycles: int, threads: int | None
) -> None:
    for _ in range(cycles):
        for model in models:
            loader = functools.partial(_loader, model.path, threads)
            with pool.acquire(model.name, loader, estimate_bytes=model.size) as session:
                session.run(warmup_feeds(session.inputs, (32, 32)))


def run_bench(
    budget: int, models: list[BenchModel], warmup: Path, cycles: int, threads: int | None
) -> dict[str, Any]:
    """The measurement itself: baseline, rotation under the sampler, final RSS."""
    _loader(warmup, threads).close()  # onnxruntime's one-time allocations precede the baseline
    release_memory()
    baseline = wait_settled()
    hwm_reset = reset_hwm()
    pool: ModelPool[Session] = ModelPool(budget, wait_s=60.0)
    sampler = PeakSampler(0.005, limit=baseline + budget).start()
    start = time.perf_counter()
    try:
        _rotate(pool, models, cycles, threads)
        stats = pool.stats()
    finally:
        pool.close()
        peak = sampler.stop()
    seconds = time.perf_counter() - start
    release_memory()
    final = wait_settled()
    hwm = snapshot(with_pss=False).hwm
    peak = max(peak, hwm) if hwm_reset else peak
    return {
        "budget_bytes": budget,
        "peak_rss_bytes": peak,
        "final_rss_bytes": final,
        "baseline_rss_bytes": baseline,
        "loads": stats["loads"],
        "evictions": pool.stats()["evictions"],
        "violations": sampler.over_limit,
        "worst_violation_bytes": sampler.worst_over,
        "vmhwm_bytes": hwm if hwm_reset else None,
        "samples": sampler.samples,
        "peak_over_baseline_bytes": peak - baseline,
        "final_minus_baseline_bytes": final - baseline,
        "cycles": cycles,
        "models": len(models),
        "total_model_bytes": sum(m.size for m in models),
        "hit_rate": stats["hit_rate"],
        "peak_misses": stats["peak_misses"],
        "load_seconds_total": stats["load_seconds_total"],
        "seconds": round(seconds, 1),
        "peak_within_budget": peak <= baseline + budget,
        "final_within_30mb": final - baseline <= FINAL_TOLERANCE,
    }


def _table(result: dict[str, Any]) -> str:
    rows = [
        ("budget", format_bytes(result["budget_bytes"])),
        ("models x cycles", f"{result['models']} x {result['cycles']}"),
        ("model bytes (rotation)", format_bytes(result["total_model_bytes"])),
        ("baseline RSS", format_bytes(result["baseline_rss_bytes"])),
        ("peak RSS (5 ms samples / VmHWM)", format_bytes(result["peak_rss_bytes"])),
        ("peak - baseline", format_bytes(result["peak_over_baseline_bytes"])),
        ("final RSS", format_bytes(result["final_rss_bytes"])),
        ("final - baseline", format_bytes(result["final_minus_baseline_bytes"])),
        ("loads / evictions", f"{result['loads']} / {result['evictions']}"),
        ("samples over budget", str(result["violations"])),
        ("peak <= budget + baseline", "yes" if result["peak_within_budget"] else "NO"),
        ("final within 30 MB", "yes" if result["final_within_30mb"] else "NO"),
        ("seconds", str(result["seconds"])),
    ]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _handler(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    budget = _budget(args, settings)
    if args.cycles < 1:
        raise ConfigError(f"--cycles must be >= 1 (got {args.cycles})")
    threads = args.threads or settings.threads
    shared = [] if args.no_shared else _shared_models(settings)
    with tempfile.TemporaryDirectory(prefix="edged-bench-memory-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        specs = _plan_generated(budget, sum(m.size for m in shared), work)
        _generate(specs, work)
        models = shared + [BenchModel(Path(name).stem, work / name) for _, name, _ in specs]
        result = run_bench(budget, models, work / "warmup.onnx", args.cycles, threads)
    if args.json:
        print_json(result)
    else:
        print(_table(result))
    return 0 if result["peak_within_budget"] and result["final_within_30mb"] else 1
