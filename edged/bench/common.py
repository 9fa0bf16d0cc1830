"""What every benchmark suite shares: the machine report, timing, statistics and output.

Rules the suites follow (issue 9): ``time.perf_counter_ns`` around the measured call only;
warm-up runs before any sample; the thread count the profile fixes; medians and p95 rather
than means (the machine may be shared); every figure next to a baseline from the same run
and the ratio between them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from edged.cli.common import add_common, print_json, settings_from_args
from edged.config import Settings

RUNTIMES = (
    "edged",
    "onnxruntime",
    "ai-edge-litert",
    "openvino",
    "opencv-python-headless",
    "numpy",
    "pyzmq",
)


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    """``model name`` (x86) or ``Hardware``/``Model`` (ARM) from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Hardware", "Model", "cpu model"):
        for line in text.splitlines():
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions() -> dict[str, str | None]:
    """Installed versions of edged and the runtimes it measures (None = not installed)."""
    out: dict[str, str | None] = {}
    for name in RUNTIMES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine(threads: int | None = None) -> dict[str, Any]:
    """The machine a result belongs to: host, cores, CPU, load, runtime versions."""
    return {
        "host": socket.gethostname(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "threads": threads,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions(),
    }


# ---------------------------------------------------------------- timing


def time_ns(
    fn: Callable[[], object], *, runs: int, warmup: int = 3, max_seconds: float | None = None
) -> list[int]:
    """``warmup`` untimed calls, then ``runs`` samples of one call each, in ns.

    ``max_seconds`` ends the block early (after at least 3 samples) so that slow cases do
    not dominate a suite's run time; the sample count is reported with every summary.
    """
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = None if max_seconds is None else time.perf_counter_ns() + int(max_seconds * 1e9)
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        end = time.perf_counter_ns()
        samples.append(end - start)
        if deadline is not None and end > deadline and len(samples) >= 3:
            break
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100); values need not be sorted."""
    if not values:
        raise ValueError("percentile of no samples")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(samples_ns: Sequence[int | float]) -> dict[str, float | int]:
    """p50 / p95 / min / mean in ms (3 decimals) and the sample count."""
    ms = [s / 1e6 for s in samples_ns]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "min_ms": round(min(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "n": len(ms),
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline (3 decimals); None when either is missing or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return round(value / baseline, 3)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ---------------------------------------------------------------- output


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through ``fmt``."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine under a table."""
    v = info.get("versions", {})
    return (
        f"{info.get('cpu_model')} ({info.get('arch')}, {info.get('cores')} cores, "
        f"threads {info.get('threads')}, load {info.get('load_avg_1m')}); "
        f"onnxruntime {v.get('onnxruntime')}, ai-edge-litert {v.get('ai-edge-litert')}, "
        f"opencv {v.get('opencv-python-headless')}; {info.get('date')}"
    )


def emit(result: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], str]) -> None:
    """One JSON object on stdout, or the suite's markdown table plus the machine line."""
    if as_json:
        print_json(result)
        return
    print(table(result))
    if "machine" in result:
        print()
        print(machine_line(result["machine"]))


# ---------------------------------------------------------------- arguments and settings


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """--config/--log-level, --json, --threads, --model-dir shared by the suites."""
    add_common(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--threads", type=int, default=None, help="runtime threads (default: the profile's)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        action="append",
        default=None,
        help="extra model dir (repeatable); ../shared/models is added when it exists",
    )


def bench_settings(args: argparse.Namespace) -> Settings:
    """Settings from the CLI, with ``--model-dir``s and the shared models dir appended."""
    from edged.testing import shared_models_dir

    settings = settings_from_args(args)
    extra = [*(getattr(args, "model_dir", None) or [])]
    shared = shared_models_dir()
    if shared.is_dir():
        extra.append(shared)
    dirs = [*settings.model_dirs, *(d for d in extra if d not in settings.model_dirs)]
    return settings.model_copy(update={"model_dirs": dirs})


def profile_threads(settings: Settings, override: int | None) -> int:
    """The fixed thread count: ``--threads``, else settings, else the profile's choice."""
    if override:
        return override
    from edged.profiles import choose

    threads: int = choose(settings).threads(settings.threads)
    return threads


# ---------------------------------------------------------------- inputs


def bench_image(width: int, height: int, name: str = "zidane.jpg") -> Any:
    """A real photo (../shared/images/portraits) resized to width x height, RGB uint8.

    Without the shared images a deterministic synthetic picture (gradients plus noise) is
    used, so the suites still run anywhere; ``image_source`` says which one it was.
    """
    import cv2
    import numpy as np

    from edged.testing import shared_images_dir

    path = shared_images_dir() / "portraits" / name
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if bgr is None:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack(
            [xx * 255 // max(1, width), yy * 255 // max(1, height), (xx + yy) % 256], -1
        )
        noisy = base + rng.integers(0, 32, size=base.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))


def image_source(name: str = "zidane.jpg") -> str:
    from edged.testing import shared_images_dir

    path = shared_images_dir() / "portraits" / name
    return f"shared/images/portraits/{name}" if path.is_file() else "synthetic"


def goal(text: str, value: Any, target: Any, met: bool | None) -> dict[str, Any]:
    """One stated goal with the measured value (``met`` None = could not be measured)."""
    return {"goal": text, "value": value, "target": target, "met": met}
