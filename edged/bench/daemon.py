"""A real ``edged run`` subprocess for the benchmarks that go through the daemon.

The harness is ``edged.testing.daemon.Daemon`` (the tests' own); this adds the benchmark
config: its own directories under a work dir, and ``EDGED_*`` variables of the calling
environment removed from the child's so the config file is the whole truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edged.testing.daemon import Daemon, config_toml


def write_config(
    path: Path,
    work: Path,
    *,
    model_dirs: list[Path],
    threads: int,
    warmup_models: list[str],
    streams: list[dict[str, Any]] | None = None,
    service: dict[str, Any] | None = None,
) -> Path:
    top = {
        "state_dir": work / "state",
        "cache_dir": work / "cache",
        "runtime_dir": work / "run",
        "model_dirs": model_dirs,
        "threads": threads,
        "warmup_models": warmup_models,
        "log_level": "warning",
        "log_format": "json",
    }
    sections = {"zmq": {"stats_interval_s": 60.0}, "service": service or {}}
    path.write_text(config_toml(top, sections, streams))
    return path


class BenchDaemon(Daemon):
    """A daemon whose config file is written from these arguments, isolated from ``EDGED_*``."""

    def __init__(self, work: Path, **config: Any) -> None:
        work.mkdir(parents=True, exist_ok=True)
        path = write_config(work / "edged.toml", work, **config)
        super().__init__(path, work, isolated=True, runtime_dir=work / "run")

    def start(self, *, wait_ready: float = 180.0) -> BenchDaemon:
        super().start(wait_ready=wait_ready)
        return self

    def __enter__(self) -> BenchDaemon:
        return self.start()
