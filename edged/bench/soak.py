"""``edged bench soak``: thousands of mixed jobs through the RUNNING daemon, memory watched.

A daemon (``python -m edged run``) is started with a small ``memory_budget`` so the pool must
keep evicting and reloading models; client threads send a seeded mix of segmentation
(selfie), super-resolution (edged_sr_x2, espcn_x2), inpainting (opencv_telea and a generated
LaMa-IO model) and tiny text-to-image jobs. Every job must come back ``ok`` with an output of
the expected shape; a timeout or an error is a lost job. Every ``--sample`` jobs the daemon's
RSS, open file descriptors and threads are read from ``/proc``. Verdicts: RSS drift (median
of the last 10 % of samples minus the median of the first 10 % after warm-up) <= 30 MB,
0 lost jobs, no growth of the fd/thread ceiling (see ``SoakReport.verdict``). ``--plot`` draws RSS over jobs (with OpenCV).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.bench.fuzz import LiveDaemon, bench_model_dirs, config_toml, work_dirs
from edged.cli.common import add_common, print_json, settings_from_args

DRIFT_LIMIT_MB = 30.0
JITTER = 1
"""fds/threads: one more than the early ceiling is a load caught mid-way, not a leak."""
LAMA_SIZE = 128
SR_MODEL = ["edged_sr_x2"]
"""The project's own SR model; ``fsrcnn_x2`` stands in when it is not in the catalogue."""
MIX = ("segmentation", "sr_edged", "sr_espcn", "inpaint_telea", "inpaint_lama", "generation")


@dataclass
class Sample:
    jobs: int
    seconds: float
    rss_mb: float
    fds: int
    threads: int


@dataclass
class SoakReport:
    jobs: int = 0
    ok: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    pool: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    warmup_jobs: int = 0

    def verdict(self) -> dict[str, Any]:
        """RSS drift (medians) and fd/thread growth (ceilings) after warm-up.

        RSS: median of the last 10 % of samples minus the median of the first 10 %. fds and
        threads jump by one while a model is being loaded (the file, a loader thread), so a
        sample may or may not catch it: their ceiling over the last 10 % is compared with the
        ceiling over the first half. A leak raises the ceiling with every load; jitter does not.
        """
        after = [s for s in self.samples if s.jobs >= self.warmup_jobs] or self.samples
        window = max(3, len(after) // 10)
        head, tail, first_half = after[:window], after[-window:], after[: len(after) // 2 or 1]

        def ceiling_growth(key: str) -> int:
            top = max(int(getattr(s, key)) for s in tail)
            return top - max(int(getattr(s, key)) for s in first_half)

        warm = statistics.median(s.rss_mb for s in head)
        end = statistics.median(s.rss_mb for s in tail)
        return {
            "rss_warm_mb": round(warm, 1),
            "rss_end_mb": round(end, 1),
            "rss_max_mb": round(max(s.rss_mb for s in after), 1),
            "rss_drift_mb": round(end - warm, 1),
            "fds_growth": ceiling_growth("fds"),
            "threads_growth": ceiling_growth("threads"),
            "fds_range": [min(s.fds for s in after), max(s.fds for s in after)],
            "threads_range": [min(s.threads for s in after), max(s.threads for s in after)],
        }

    def as_dict(self) -> dict[str, Any]:
        verdict = self.verdict() if self.samples else {}
        return {
            "jobs": self.jobs,
            "ok": self.ok,
            "lost": self.lost,
            "errors": self.errors[:10],
            "by_kind": self.by_kind,
            "warmup_jobs": self.warmup_jobs,
            **verdict,
            "passed": bool(verdict)
            and self.lost == 0
            and verdict["rss_drift_mb"] <= DRIFT_LIMIT_MB
            and verdict["fds_growth"] <= JITTER
            and verdict["threads_growth"] <= JITTER,
            "pool": {
                **{k: self.pool.get(k) for k in ("budget_bytes", "loads", "evictions", "hits")},
                "resident": {m.get("key"): m.get("bytes") for m in self.pool.get("models", [])},
            },
            "seconds": round(self.seconds, 1),
            "jobs_per_s": round(self.jobs / self.seconds, 1) if self.seconds else None,
            "samples": [s.__dict__ for s in self.samples],
        }


# ---------------------------------------------------------------- setup


def prepare_models(root: Path) -> tuple[Path, Path]:
    """(model dir, catalog dir) with a generated LaMa-IO model and a tiny SD dir."""
    from edged.testing import make_inpaint_model, make_tiny_sd_dir, write_manifest

    models, catalog = root / "models", root / "catalog"
    make_inpaint_model(models / "soak_lama.onnx", "lama", size=LAMA_SIZE)
    write_manifest(
        catalog,
        {
            "name": "soak_lama",
            "task": "inpainting",
            "family": "lama",
            "licence": "Apache-2.0",
            "files": [{"format": "onnx", "path": "soak_lama.onnx"}],
            "input": {"name": "image", "layout": "NCHW", "range": [0.0, 1.0]},
            "output": {"layout": "NCHW", "range": [0.0, 1.0]},
            "params": {"mask_input": "mask", "hole_value": 1.0},
        },
    )
    make_tiny_sd_dir(models / "soak_sd")
    return models, catalog


SWAP_MARGIN = 1.06
"""Budget = the largest model's load peak measured here x this: each fits alone, the mix not."""


def swap_budget(model_dirs: list[Path], models: Path, catalog: Path, state: Path) -> int:
    """A budget that forces swapping on this machine, from costs measured here.

    A fixed figure assumed x86's costs: 24 MB was the selfie model's 22.7 MB load peak there,
    while edged_sr_x2 alone needed 44 MB on aarch64. Measured in a fresh interpreter, as the
    daemon will load them: a process that already loaded a runtime once (a test process)
    measures its libraries as free and reads less than half.
    """
    import json
    import subprocess
    import sys

    code = "import sys; from edged.bench.soak import _peak_bytes; print(_peak_bytes(sys.argv[1]))"
    args = json.dumps([[str(d) for d in model_dirs], str(models), str(catalog), str(state)])
    out = subprocess.run(
        [sys.executable, "-c", code, args], capture_output=True, text=True, check=True
    )
    return int(int(out.stdout.strip().splitlines()[-1]) * SWAP_MARGIN)


def _peak_bytes(args: str) -> int:
    """The largest load peak of the soak's models, each loaded and run once in this process."""
    import json

    from edged.config import Settings
    from edged.engine import Engine
    from edged.pool.model_pool import ModelPool
    from edged.tasks.base import TaskRequest

    model_dirs, models, catalog, state = json.loads(args)
    settings = Settings(
        model_dirs=[*model_dirs, models], catalog_dirs=[catalog], threads=1, state_dir=state
    )
    engine = Engine(settings, pool=ModelPool(1 << 32))
    try:
        rng = np.random.default_rng(0)
        for kind in MIX:
            task, kwargs, _ = _job(kind, rng)
            engine.run(TaskRequest(task, **kwargs))
        return max(int(m["peak_bytes"]) for m in engine.pool.stats()["models"])
    finally:
        engine.close()


def soak_config_toml(work: Path, model_dirs: list[Path], catalog: Path, budget: int) -> str:
    top = {
        **work_dirs(work),
        "model_dirs": [str(d) for d in model_dirs],
        "catalog_dirs": [str(catalog)],
        "memory_budget": budget,
        "threads": 1,
        "log_level": "warning",
        "log_format": "json",
    }
    return config_toml(top, {"zmq": {"stats_interval_s": 5.0}, "service": {"workers": 2}})


# ---------------------------------------------------------------- jobs


def _job(kind: str, rng: np.random.Generator) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    """(task, client.request kwargs, expected output shape) for one job of ``kind``."""
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    y, x = rng.integers(4, 40, 2)
    mask[y : y + 16, x : x + 16] = 255
    if kind == "segmentation":
        return "segmentation", {"image": image, "model": "selfie_segmentation"}, (64, 64)
    if kind == "sr_edged":
        return "superres", {"image": image[:32, :32], "model": SR_MODEL[0]}, (64, 64, 3)
    if kind == "sr_espcn":
        return "superres", {"image": image[:32, :32], "model": "espcn_x2"}, (64, 64, 3)
    if kind in ("inpaint_telea", "inpaint_lama"):
        model = "opencv_telea" if kind == "inpaint_telea" else "soak_lama"
        return "inpainting", {"image": image, "mask": mask, "model": model}, (64, 64, 3)
    params = {"width": 64, "height": 64, "steps": 1, "seed": int(rng.integers(1000))}
    prompt = str(rng.choice(["a cat", "a red house", "the dog on a hill"]))
    return "generation", {"model": "soak_sd", "prompt": prompt, "params": params}, (64, 64, 3)


class _Runner:
    def __init__(self, endpoint: str, jobs: int, seed: int, kinds: tuple[str, ...]) -> None:
        self.endpoint = endpoint
        self.jobs = jobs
        self.kinds = kinds
        self.seed = seed
        self.report = SoakReport(by_kind=dict.fromkeys(kinds, 0))
        self.lock = threading.Lock()
        self.next = 0

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.jobs:
                return None
            self.next += 1
            return self.next - 1

    def worker(self) -> None:
        from edged.errors import EdgedError
        from edged.wire.client import Client

        with Client(self.endpoint, timeout_s=60) as client:
            while (index := self.take()) is not None:
                rng = np.random.default_rng([self.seed, index])
                kind = self.kinds[index % len(self.kinds)]
                task, kwargs, shape = _job(kind, rng)
                try:
                    reply = client.request(task, **kwargs)
                    (out,) = reply.outputs.values()
                    good = tuple(out.shape) == shape
                    why = "" if good else f"{kind}: shape {out.shape} != {shape}"
                except (EdgedError, ValueError) as exc:
                    good, why = False, f"{kind}: {type(exc).__name__}: {exc}"
                self._count(kind, good, why)

    def _count(self, kind: str, good: bool, why: str) -> None:
        with self.lock:
            self.report.jobs += 1
            self.report.by_kind[kind] += 1
            if good:
                self.report.ok += 1
            else:
                self.report.lost += 1
                self.report.errors.append(why)


def proc_sample(pid: int, jobs: int, start: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return Sample(
        jobs, round(time.monotonic() - start, 2), rss_kb / 1024, fds, int(fields["Threads"])
    )


def run_soak(
    endpoint: str,
    pid: int,
    *,
    jobs: int,
    clients: int = 3,
    seed: int = 0,
    sample_every: int = 0,
    kinds: tuple[str, ...] = MIX,
) -> SoakReport:
    """Send ``jobs`` mixed jobs from ``clients`` threads; sample the daemon ``pid``."""
    from edged.wire.client import Client

    with Client(endpoint, timeout_s=30) as client:
        names = {m["name"] for m in client.models()}
    SR_MODEL[0] = "edged_sr_x2" if "edged_sr_x2" in names else "fsrcnn_x2"
    runner = _Runner(endpoint, jobs, seed, kinds)
    every = sample_every or max(5, jobs // 400)
    runner.report.warmup_jobs = max(len(kinds) * 10, jobs // 10)
    threads = [threading.Thread(target=runner.worker, daemon=True) for _ in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    last = -every
    while any(t.is_alive() for t in threads):
        time.sleep(0.05)
        done = runner.report.jobs
        if done - last >= every:
            runner.report.samples.append(proc_sample(pid, done, start))
            last = done
    runner.report.samples.append(proc_sample(pid, runner.report.jobs, start))
    runner.report.seconds = time.monotonic() - start
    with Client(endpoint, timeout_s=30) as client:
        runner.report.pool = client.stats().get("pool", {})
    return runner.report


# ---------------------------------------------------------------- plot


def plot_rss(report: SoakReport, path: Path, size: tuple[int, int] = (900, 420)) -> Path:
    """RSS (MB) over jobs as a PNG, drawn with OpenCV (matplotlib is not a dependency)."""
    import cv2

    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    canvas = np.full((h, w, 3), 255, np.uint8)
    xs = np.array([s.jobs for s in report.samples], float)
    ys = np.array([s.rss_mb for s in report.samples], float)
    y0, y1 = float(np.floor(ys.min() / 10) * 10 - 10), float(np.ceil(ys.max() / 10) * 10 + 10)
    x1 = max(1.0, float(xs.max()))

    def px(x: float, y: float) -> tuple[int, int]:
        return (
            int(left + (w - left - right) * x / x1),
            int(h - bottom - (h - top - bottom) * (y - y0) / (y1 - y0)),
        )

    font = cv2.FONT_HERSHEY_SIMPLEX
    for tick in np.linspace(y0, y1, 5):
        cv2.line(canvas, px(0, tick), px(x1, tick), (225, 225, 225), 1)
        cv2.putText(canvas, f"{tick:.0f}", (5, px(0, tick)[1] + 4), font, 0.4, (0, 0, 0), 1)
    for tick in np.linspace(0, x1, 6):
        cv2.putText(canvas, f"{tick:.0f}", (px(tick, y0)[0] - 10, h - 30), font, 0.4, (0, 0, 0), 1)
    warm = float(report.warmup_jobs)
    cv2.line(canvas, px(warm, y0), px(warm, y1), (0, 160, 255), 1)
    points = np.array([px(x, y) for x, y in zip(xs, ys, strict=True)], np.int32)
    cv2.polylines(canvas, [points], False, (200, 60, 0), 2, cv2.LINE_AA)
    cv2.rectangle(canvas, px(0, y1), px(x1, y0), (0, 0, 0), 1)
    verdict = report.verdict()
    title = (
        f"daemon RSS (MB) over {report.jobs} jobs; drift {verdict['rss_drift_mb']} MB after warm-up"
    )
    cv2.putText(canvas, title, (left, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "jobs", (w // 2, h - 10), font, 0.45, (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas)
    return path


# ---------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "soak",
        help="mixed jobs through a running daemon with model swapping; RSS/fd/thread drift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(parser)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs to run")
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="pool budget, bytes (default: the largest model's load peak measured here x "
        f"{SWAP_MARGIN}: forces swapping)",
    )
    parser.add_argument("--clients", type=int, default=3, help="concurrent client threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", type=Path, help="write the RSS curve to this PNG")
    parser.set_defaults(handler=_handler)


def soak_daemon(work: Path, model_dirs: list[Path], budget: int | None = None) -> LiveDaemon:
    """The daemon under soak; without ``budget``, one that forces swapping (``swap_budget``)."""
    models, catalog = prepare_models(work / "gen")
    if budget is None:
        budget = swap_budget(model_dirs, models, catalog, work / "measure")
    toml = soak_config_toml(work / "d", [*model_dirs, models], catalog, budget)
    return LiveDaemon(work / "d", toml)


def _handler(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with tempfile.TemporaryDirectory(prefix="edged-soak-") as tmp:
        daemon = soak_daemon(Path(tmp), bench_model_dirs(settings), args.budget)
        with daemon:
            assert daemon.proc is not None
            report = run_soak(
                daemon.requests_endpoint,
                daemon.proc.pid,
                jobs=args.jobs,
                clients=args.clients,
                seed=args.seed,
            )
    result = report.as_dict()
    if args.plot:
        plot_rss(report, args.plot)
    if args.json:
        print_json(result)
    else:
        for key, value in result.items():
            if key != "samples":
                print(f"{key:>16}: {value}")
    return 0 if result["passed"] else 1
