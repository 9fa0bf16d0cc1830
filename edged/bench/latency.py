"""``edged bench latency``: where a request's time goes, per task / model / backend.

Three figures per case, each the p50/p95 of single calls on the same image:

(a) ``raw``      -- the runtime call alone: ``session.run`` on the exact tensors the task
    feeds it (recorded from a real ``Engine.run``; all of them when the task tiles);
(b) ``engine``   -- ``Engine.run`` in-process: pre-processing + run + post-processing;
(c) ``request``  -- a full ZeroMQ request -> reply through a running ``edged run`` daemon
    (a subprocess), image sent as PNG and as ``raw`` array bytes (reply coded the same way).

Samples are taken in rounds of blocks (a, b, c-png, c-raw, repeat) so that load from other
processes hits every figure alike; p50s are what to compare. Goal (issue 9): for the selfie
model, request p50 <= 1.05 x (a) + 0.5 ms.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.bench.common import (
    add_bench_args,
    bench_image,
    bench_settings,
    emit,
    fmt_ratio,
    goal,
    image_source,
    machine,
    md_table,
    percentile,
    profile_threads,
    ratio,
    summary_ms,
    time_ns,
)
from edged.bench.daemon import BenchDaemon
from edged.engine import Engine
from edged.runtime.base import Array
from edged.runtime.recording import RecordingSession
from edged.tasks.base import TaskRequest
from edged.wire.client import Client

GOAL_MODEL = "selfie_segmentation"
BLOCK_SECONDS = 2.0
"""A block ends after this long (at least 3 samples): slow cases get fewer samples."""


@dataclass(frozen=True)
class Case:
    task: str
    model: str
    backend: str
    width: int
    height: int

    @property
    def label(self) -> str:
        return f"{self.task}/{self.model}@{self.backend} {self.width}x{self.height}"


CASES = (
    Case("segmentation", "selfie_segmentation", "litert:xnnpack", 640, 360),
    Case("segmentation", "deeplabv3_mnv2_257", "litert:xnnpack", 640, 360),
    Case("superres", "espcn_x2", "onnx:cpu", 320, 180),
    Case("superres", "espcn_x2", "litert:xnnpack", 320, 180),
)
QUICK = (CASES[0], CASES[2])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "latency",
        help="p50/p95 of runtime call vs Engine.run vs ZeroMQ request through the daemon",
        description=__doc__,
    )
    add_bench_args(parser)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of blocks")
    parser.add_argument("--runs", type=int, default=40, help="timed calls per block")
    parser.add_argument("--quick", action="store_true", help="selfie + espcn onnx:cpu only")
    parser.add_argument(
        "--case",
        action="append",
        default=None,
        metavar="TASK/MODEL@BACKEND:WxH",
        help="measure this case instead of the defaults (repeatable)",
    )
    parser.add_argument("--no-daemon", action="store_true", help="skip (c)")
    parser.add_argument(
        "--block-seconds",
        type=float,
        default=BLOCK_SECONDS,
        help="a block ends after this long (>= 3 samples): slow cases get fewer samples",
    )
    parser.set_defaults(handler=_handler)


def parse_case(text: str) -> Case:
    from edged.errors import ConfigError

    try:
        head, size = text.rsplit(":", 1)
        task_model, backend = head.split("@", 1)
        task, model = task_model.split("/", 1)
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ConfigError(
            f"--case {text!r}: use TASK/MODEL@BACKEND:WxH, e.g. superres/espcn_x2@onnx:cpu:320x180"
        ) from None
    return Case(task, model, backend, width, height)


def record_feeds(engine: Engine, request: TaskRequest) -> list[dict[str, Array]]:
    """The tensors ``Engine.run(request)`` hands the runtime, in call order."""
    assert request.model is not None
    with engine.acquire(request.model, backend=request.backend) as loaded:
        recorder = RecordingSession(loaded.session)
        loaded.session = recorder
    try:
        engine.run(request)
    finally:
        with engine.acquire(request.model, backend=request.backend) as loaded:
            loaded.session = recorder.inner
    return recorder.feeds


def _raw_call(engine: Engine, request: TaskRequest, feeds: list[dict[str, Array]]) -> Any:
    assert request.model is not None
    with engine.acquire(request.model, backend=request.backend) as loaded:
        session = loaded.session

    def call() -> None:
        for feed in feeds:
            session.run(feed)

    return call


def _request_calls(
    client: Client, case: Case, image: np.ndarray[Any, Any], in_daemon: list[float]
) -> dict[str, Callable[[], Any]]:
    """(c) with PNG and with raw payloads; the raw replies' in-daemon ``Engine.run`` time
    (``latency_ms.total``) goes to ``in_daemon`` so the request can be decomposed."""
    raw = (
        "image",
        "raw",
        np.ascontiguousarray(image).tobytes(),
        {"shape": list(image.shape), "dtype": "uint8"},
    )
    common = {"model": case.model, "backend": case.backend}

    def request_raw() -> None:
        reply = client.call(case.task, payloads=[raw], encoding="raw", **common)
        in_daemon.append(float(reply.latency_ms.get("total", 0.0)))

    return {
        "request_png": lambda: client.request(case.task, image=image, **common),  # type: ignore[arg-type]
        "request_raw": request_raw,
    }


def measure_case(
    engine: Engine,
    client: Client | None,
    case: Case,
    *,
    rounds: int,
    runs: int,
    block_s: float = BLOCK_SECONDS,
) -> dict[str, Any]:
    image = bench_image(case.width, case.height)
    request = TaskRequest(case.task, case.model, image=image, backend=case.backend)
    feeds = record_feeds(engine, request)
    if not feeds:
        from edged.errors import ConfigError

        raise ConfigError(f"{case.label}: the task made no runtime call, so there is no (a)")
    calls: dict[str, Callable[[], Any]] = {
        "raw": _raw_call(engine, request, feeds),
        "engine": lambda: engine.run(request),
    }
    in_daemon: list[float] = []
    if client is not None:
        calls.update(_request_calls(client, case, image, in_daemon))
    samples: dict[str, list[int]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            samples[name] += time_ns(fn, runs=runs, warmup=2, max_seconds=block_s)
            time.sleep(0.05)  # let runtime worker threads stop spinning before the next block
    row = _case_result(client, case, samples, len(feeds), image)
    if in_daemon:
        inside = round(percentile(in_daemon, 50), 3)
        row["daemon_engine_p50_ms"] = inside
        # What the request adds around the daemon's own Engine.run: payload copies, the
        # server thread, the scheduler hand-off to a worker, the reply's way back.
        row["request_raw_outside_engine_ms"] = round(row["request_raw"]["p50_ms"] - inside, 3)
    return row


def _case_result(
    client: Client | None,
    case: Case,
    samples: dict[str, list[int]],
    calls: int,
    image: np.ndarray[Any, Any],
) -> dict[str, Any]:
    stats = {k: summary_ms(v) for k, v in samples.items()}
    raw_p50 = float(stats["raw"]["p50_ms"])
    row: dict[str, Any] = {
        "task": case.task,
        "model": case.model,
        "backend": case.backend,
        "size": [case.width, case.height],
        "runtime_calls_per_request": calls,
        **stats,
        "ratios": {
            f"{k}/raw": ratio(float(s["p50_ms"]), raw_p50) for k, s in stats.items() if k != "raw"
        },
    }
    if client is not None:
        reply = client.request(case.task, image=image, model=case.model, backend=case.backend)
        row["daemon_backend"] = reply.backend
        row["daemon_latency_ms"] = reply.latency_ms
    if case.model == GOAL_MODEL:
        target = round(1.05 * raw_p50 + 0.5, 3)
        row["goal_target_ms"] = target
        for key in ("request_raw", "request_png"):
            if key in stats:
                row[f"goal_met_{key}"] = float(stats[key]["p50_ms"]) <= target
    return row


def run_suite(
    settings: Any,
    threads: int,
    cases: tuple[Case, ...],
    *,
    rounds: int,
    runs: int,
    daemon: bool,
    block_s: float = BLOCK_SECONDS,
) -> dict[str, Any]:
    settings = settings.model_copy(update={"threads": threads})
    engine = Engine(settings)
    rows: list[dict[str, Any]] = []
    ping: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="edged-bench-latency-") as tmp:
        bench_daemon = None
        if daemon:
            bench_daemon = BenchDaemon(
                Path(tmp),
                model_dirs=list(settings.model_dirs),
                threads=threads,
                warmup_models=sorted({c.model for c in cases}),
            ).start()
        try:
            client = Client(bench_daemon.requests_endpoint, timeout_s=60) if bench_daemon else None
            for case in cases:
                rows.append(
                    measure_case(engine, client, case, rounds=rounds, runs=runs, block_s=block_s)
                )
            if client is not None:
                # The transport floor: a built-in task answered by the server thread itself.
                ping = summary_ms(time_ns(client.ping, runs=max(20, runs), warmup=3))
                client.close()
        finally:
            if bench_daemon is not None:
                bench_daemon.stop()
            engine.close()
    return {
        "suite": "latency",
        "machine": machine(threads),
        "image": image_source(),
        "daemon": "edged run (subprocess), REQ client over ipc://" if daemon else None,
        "rounds": rounds,
        "runs_per_block": runs,
        "block_seconds": block_s,
        "ping": ping,
        "rows": rows,
        "goals": _goals(rows),
    }


def _goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if "goal_target_ms" not in row:
            continue
        for key in ("request_raw", "request_png"):
            if key in row:
                out.append(
                    goal(
                        f"{row['model']}@{row['backend']} {key} p50 <= 1.05 x raw + 0.5 ms",
                        row[key]["p50_ms"],
                        row["goal_target_ms"],
                        row[f"goal_met_{key}"],
                    )
                )
    return out


def table(result: dict[str, Any]) -> str:
    headers = [
        "task / model @ backend",
        "input",
        "(a) raw p50/p95 ms",
        "(b) engine p50/p95 ms",
        "(c) request png p50/p95 ms",
        "(c) request raw p50/p95 ms",
        "(b)/(a)",
        "(c png)/(a)",
        "(c raw)/(a)",
    ]

    def cell(row: dict[str, Any], key: str) -> str:
        s = row.get(key)
        return f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f}" if s else "-"

    rows = []
    for r in result["rows"]:
        rr = r["ratios"]
        rows.append(
            [
                f"{r['task']} / {r['model']} @ {r['backend']}",
                f"{r['size'][0]}x{r['size'][1]}",
                cell(r, "raw"),
                cell(r, "engine"),
                cell(r, "request_png"),
                cell(r, "request_raw"),
                fmt_ratio(rr.get("engine/raw")),
                fmt_ratio(rr.get("request_png/raw")),
                fmt_ratio(rr.get("request_raw/raw")),
            ]
        )
    lines = [md_table(headers, rows)]
    for r in result["rows"]:
        if "daemon_engine_p50_ms" in r:
            lines.append(
                f"\n{r['model']}@{r['backend']}: raw request p50 {r['request_raw']['p50_ms']:.2f} ms "
                f"= Engine.run inside the daemon {r['daemon_engine_p50_ms']:.2f} ms + "
                f"{r['request_raw_outside_engine_ms']:.2f} ms around it (copies, threads, queue)."
            )
    ping = result.get("ping")
    if ping:
        lines.append(
            f"\nZeroMQ floor (ping, answered by the server thread): p50 {ping['p50_ms']:.2f} ms, "
            f"p95 {ping['p95_ms']:.2f} ms."
        )
    for g in result["goals"]:
        state = "met" if g["met"] else "NOT met"
        lines.append(f"\nGoal {g['goal']}: {g['value']:.2f} ms vs {g['target']:.2f} ms: {state}")
    return "\n".join(lines)


def _handler(args: argparse.Namespace) -> int:
    from edged.errors import ConfigError

    if args.rounds < 1 or args.runs < 1:
        raise ConfigError("--rounds and --runs must be >= 1")
    settings = bench_settings(args)
    threads = profile_threads(settings, args.threads)
    cases = tuple(parse_case(c) for c in args.case) if args.case else QUICK if args.quick else CASES
    if args.block_seconds <= 0:
        raise ConfigError("--block-seconds must be > 0")
    result = run_suite(
        settings,
        threads,
        cases,
        rounds=args.rounds,
        runs=args.runs,
        daemon=not args.no_daemon,
        block_s=args.block_seconds,
    )
    emit(result, args.json, table)
    return 0
