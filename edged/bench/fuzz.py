"""``edged bench fuzz``: seeded garbage against the RUNNING daemon's request socket.

Every request is generated from one seed (frame counts, raw bytes, JSON of any shape, strict
headers with one field broken, truncated / bit-flipped / bomb / odd-sized PNG and JPEG, raw
and npy payloads of random shapes and dtypes, masks of the wrong size, prompts of any length
and script) and sent over many concurrent DEALER sockets, one request in flight per socket.
The verdict per request: a well-formed reply (a result, or a structured error with a known
code) within the timeout, or else a ``hang`` / ``malformed``; the daemon process dying is a
``crash``. ``internal`` errors are counted apart: they are answered, but they are bugs.

Without ``--endpoint`` the command starts its own daemon (``python -m edged run``) with
small limits so the too-large paths are cheap to reach.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.bench.daemon import BenchDaemon
from edged.bench.fuzz_cases import Case, CaseGenerator
from edged.cli.common import add_common, print_json, settings_from_args
from edged.config import Settings
from edged.testing import daemon as harness

ERROR_CODES = frozenset(
    {"bad_request", "unknown_model", "too_large", "busy", "licence", "internal"}
)
MAX_FRAME_BYTES = 262_144
MAX_PIXELS = 250_000
FUZZ_MODELS = ["selfie_segmentation", "espcn_x2"]


@dataclass
class FuzzReport:
    requests: int = 0
    replies: int = 0
    ok: int = 0
    hangs: int = 0
    malformed: int = 0
    crashes: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    ok_kinds: Counter[str] = field(default_factory=Counter)
    internal_examples: list[str] = field(default_factory=list)
    malformed_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "replies": self.replies,
            "ok": self.ok,
            "errors": dict(sorted(self.codes.items())),
            "hangs": self.hangs,
            "malformed": self.malformed,
            "crashes": self.crashes,
            "cases": dict(sorted(self.kinds.items())),
            "ok_by_case": dict(sorted(self.ok_kinds.items())),
            "internal_examples": self.internal_examples[:5],
            "malformed_examples": self.malformed_examples[:5],
            "seconds": round(self.seconds, 1),
            "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else None,
        }


# ---------------------------------------------------------------- reply checks


def check_reply(case: Case, frames: list[bytes]) -> tuple[str, str]:  # noqa: PLR0911
    """(``ok``|error code|``malformed``, why) for the reply frames of one request."""
    # A first empty frame is the REQ delimiter to the server, whether we meant it or not.
    if case.delimiter or (case.frames and case.frames[0] == b""):
        if not frames or frames[0] != b"":
            return "malformed", "reply lost the empty delimiter the request had"
        frames = frames[1:]
    if not frames:
        return "malformed", "empty reply"
    try:
        header = json.loads(frames[0])
    except ValueError:
        return "malformed", f"reply header is not JSON: {frames[0][:80]!r}"
    if (
        not isinstance(header, dict)
        or header.get("v") != 1
        or not isinstance(header.get("ok"), bool)
    ):
        return "malformed", f"reply header lacks v/ok: {str(header)[:120]}"
    if case.request_id is not None and header.get("id") != case.request_id:
        return "malformed", f"id {header.get('id')!r} != {case.request_id!r}"
    if not header["ok"]:
        error = header.get("error")
        if not isinstance(error, dict):
            return "malformed", f"error reply without an error object: {str(header)[:160]}"
        code = error.get("code")
        if code not in ERROR_CODES or not isinstance(error.get("message"), str) or len(frames) != 1:
            return "malformed", f"bad error reply: {str(header)[:160]}"
        return str(code), str(error["message"])
    payloads = header.get("payloads", [])
    if len(frames) != 1 + len(payloads):
        return "malformed", f"{len(payloads)} payloads declared, {len(frames) - 1} frames sent"
    return "ok", ""


# ---------------------------------------------------------------- driver


class _Slot:
    """One DEALER socket with at most one request in flight."""

    def __init__(self, ctx: Any, endpoint: str) -> None:
        import zmq

        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.case: Case | None = None
        self.deadline = 0.0


def run_fuzz(
    endpoint: str,
    *,
    requests: int,
    seed: int = 0,
    sockets: int = 32,
    timeout_s: float = 60.0,
    alive: Any = None,
) -> FuzzReport:
    """Send ``requests`` generated requests; ``alive()`` -> False means the daemon died."""
    import zmq

    from edged.wire.context import get_context

    ctx = get_context()
    gen = CaseGenerator(seed, max_frame_bytes=MAX_FRAME_BYTES, max_pixels=MAX_PIXELS)
    report = FuzzReport()
    slots = [_Slot(ctx, endpoint) for _ in range(sockets)]
    poller = zmq.Poller()
    for slot in slots:
        poller.register(slot.sock, zmq.POLLIN)
    start = time.monotonic()
    try:
        while True:
            for slot in slots:
                if slot.case is None and report.requests < requests:
                    _send(slot, gen.next(), report, timeout_s)
            if all(s.case is None for s in slots):
                break
            for sock, _ in poller.poll(200):
                slot = next(s for s in slots if s.sock is sock)
                _receive(slot, report)
            _expire(slots, poller, ctx, endpoint, report)
            if alive is not None and not alive():
                report.crashes += 1
                break
    finally:
        for slot in slots:
            slot.sock.close(0)
    report.seconds = time.monotonic() - start
    return report


def _send(slot: _Slot, case: Case, report: FuzzReport, timeout_s: float) -> None:
    frames = ([b""] if case.delimiter else []) + case.frames
    slot.sock.send_multipart(frames, copy=False)
    slot.case = case
    slot.deadline = time.monotonic() + timeout_s
    report.requests += 1
    report.kinds[case.kind] += 1


def _receive(slot: _Slot, report: FuzzReport) -> None:
    reply = slot.sock.recv_multipart()
    case = slot.case
    if case is None:  # a late reply to a request already counted as a hang
        return
    slot.case = None
    report.replies += 1
    verdict, why = check_reply(case, reply)
    if verdict == "ok":
        report.ok += 1
        report.ok_kinds[case.kind] += 1
    elif verdict == "malformed":
        report.malformed += 1
        report.malformed_examples.append(f"{case.kind}: {why}")
    else:
        report.codes[verdict] += 1
        if verdict == "internal":
            report.internal_examples.append(f"{case.kind}: {why[:200]} <- {case.frames[0][:300]!r}")


def _expire(slots: list[_Slot], poller: Any, ctx: Any, endpoint: str, report: FuzzReport) -> None:
    now = time.monotonic()
    for i, slot in enumerate(slots):
        if slot.case is not None and now > slot.deadline:
            report.hangs += 1
            report.malformed_examples.append(f"hang: {slot.case.kind}")
            poller.unregister(slot.sock)
            slot.sock.close(0)
            slots[i] = _Slot(ctx, endpoint)
            poller.register(slots[i].sock, 1)


# ---------------------------------------------------------------- the daemon under test


config_toml = harness.config_toml
"""The daemon config writer (``edged.testing.daemon``), here for soak, reliability and tests."""


def work_dirs(work: Path) -> dict[str, str]:
    """state/cache/runtime dirs of a daemon living in ``work``."""
    return {
        k: str(work / v)
        for k, v in (("state_dir", "state"), ("cache_dir", "cache"), ("runtime_dir", "run"))
    }


def fuzz_config_toml(work: Path, model_dirs: list[Path], *, workers: int = 2) -> str:
    """A daemon config with small limits (so too-large paths are cheap) and cheap models."""
    top = {
        **work_dirs(work),
        "model_dirs": [str(d) for d in model_dirs],
        "warmup_models": FUZZ_MODELS,
        "log_level": "warning",
        "log_format": "json",
    }
    zmq = {
        "max_frame_bytes": MAX_FRAME_BYTES,
        "max_pixels": MAX_PIXELS,
        "max_queue": 64,
        "stats_interval_s": 5.0,
    }
    return config_toml(top, {"zmq": zmq, "service": {"workers": workers}})


def bench_model_dirs(settings: Settings) -> list[Path]:
    """The configured model search path, plus the shared real models when present."""
    from edged.testing import shared_models_dir

    dirs = list(settings.model_search_path)
    shared = shared_models_dir()
    return [*dirs, shared] if shared.is_dir() and shared not in dirs else dirs


def fuzz_daemon(work: Path, model_dirs: list[Path]) -> LiveDaemon:
    """The daemon under fuzz: ``model_dirs`` plus a generated tiny SD model named ``tiny``."""
    from edged.testing import make_tiny_sd_dir

    make_tiny_sd_dir(work / "gen" / "tiny")
    return LiveDaemon(work, fuzz_config_toml(work, [*model_dirs, work / "gen"]))


class LiveDaemon(BenchDaemon):
    """A BenchDaemon whose config file is the given TOML text."""

    def __init__(self, work: Path, toml: str) -> None:
        super().__init__(work, model_dirs=[], threads=1, warmup_models=[])
        self.config.write_text(toml)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "fuzz",
        help="fuzz the request socket of a running daemon (0 crashes, 0 hangs expected)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(parser)
    parser.add_argument("--requests", type=int, default=10_000, help="requests to send")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (reproducible runs)")
    parser.add_argument("--sockets", type=int, default=32, help="concurrent DEALER sockets")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a hang")
    parser.add_argument("--endpoint", help="fuzz this running daemon instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    if args.endpoint:
        report = run_fuzz(
            args.endpoint,
            requests=args.requests,
            seed=args.seed,
            sockets=args.sockets,
            timeout_s=args.timeout,
        )
    else:
        settings = settings_from_args(args)
        with tempfile.TemporaryDirectory(prefix="edged-fuzz-") as tmp:
            work = Path(tmp)
            daemon = fuzz_daemon(work, bench_model_dirs(settings))
            with daemon:
                report = run_fuzz(
                    daemon.requests_endpoint,
                    requests=args.requests,
                    seed=args.seed,
                    sockets=args.sockets,
                    timeout_s=args.timeout,
                    alive=daemon.alive,
                )
                report.crashes += 0 if daemon.alive() else 1
    result = report.as_dict()
    if args.json:
        print_json(result)
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    bad = report.crashes or report.hangs or report.malformed
    return 1 if bad else 0
