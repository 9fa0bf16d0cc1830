"""Cold vs cached load time of one model per backend (a measurement, not a test).

Each load runs in a fresh interpreter, so nothing but the on-disk cache carries over; the
model file itself stays in the page cache for both, so the difference is compile work.

    .venv/bin/python tools/measure_load_cache.py [MODEL.onnx] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edged.testing import shared_models_dir
from edged.util.digest import file_sha256

_CHILD = """
import json, sys, time
from pathlib import Path
from edged.runtime import config_for, open_session
from edged.runtime.base import warmup_feeds
backend, path, cache_dir, sha, threads = sys.argv[1:6]
config = config_for(backend, threads=int(threads), precision="fp32")
t0 = time.perf_counter()
session = open_session(config, Path(path), cache_dir=Path(cache_dir), sha256=sha, warmup=False)
t1 = time.perf_counter()
session.run(warmup_feeds(session.inputs))
t2 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "warmup": t2 - t1, "cache": getattr(session, "cache", None)}))
"""


def _load_once(
    backend: str, model: Path, cache_dir: Path, sha: str, threads: int
) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, backend, str(model), str(cache_dir), sha, str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(backend: str, model: Path, rounds: int, threads: int) -> dict[str, object]:
    sha = file_sha256(model)
    cold, cached = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cold.append(_load_once(backend, model, Path(tmp), sha, threads))
            cached.append(_load_once(backend, model, Path(tmp), sha, threads))
    return {
        "backend": backend,
        "model": model.name,
        "cold_load_s": [round(float(r["load"]), 3) for r in cold],
        "cached_load_s": [round(float(r["load"]), 3) for r in cached],
        "cold_median_s": round(statistics.median(float(r["load"]) for r in cold), 3),
        "cached_median_s": round(statistics.median(float(r["load"]) for r in cached), 3),
        "warmup_median_s": round(statistics.median(float(r["warmup"]) for r in cached), 3),
        "cache_states": sorted({str(r["cache"]) for r in cached}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "model", nargs="?", type=Path, default=shared_models_dir() / "realesrgan-x4plus.onnx"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="onnx:cpu,openvino:cpu")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        print(json.dumps(measure(backend, args.model, args.rounds, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
