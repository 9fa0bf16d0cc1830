"""A real ``edged run`` subprocess for the benchmarks that go through the daemon.

The daemon gets its own config file and directories under a work dir; ``EDGED_*`` variables
of the calling environment are removed from the child's so the config file is the whole
truth (the environment would otherwise override it). Readiness is the first answered
``ping``, so nothing here depends on systemd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edged.errors import BackendUnavailable, ServerUnavailable
from edged.wire.client import Client


def _toml_value(value: Any) -> str:
    """Strings, numbers, booleans and lists of them: JSON spelling is valid TOML there."""
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)


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
        "model_dirs": [str(d) for d in model_dirs],
        "threads": threads,
        "warmup_models": warmup_models,
        "log_level": "warning",
        "log_format": "json",
    }
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    lines += ["[zmq]", "stats_interval_s = 60.0"]
    lines += ["[service]", *(f"{k} = {_toml_value(v)}" for k, v in (service or {}).items())]
    for stream in streams or []:
        lines.append("[[streams]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in stream.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class BenchDaemon:
    """``python -m edged run --config CONFIG`` in ``work``; a context manager."""

    def __init__(self, work: Path, **config: Any) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.config = write_config(work / "edged.toml", work, **config)
        self.log_path = work / "daemon.log"
        self.requests_endpoint = f"ipc://{work / 'run'}/requests.sock"
        self.results_endpoint = f"ipc://{work / 'run'}/results.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> BenchDaemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        env.pop("NOTIFY_SOCKET", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edged", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.work,
            )
        deadline = time.monotonic() + timeout
        with Client(self.requests_endpoint, timeout_s=0.5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BackendUnavailable(f"edged run exited early: {self.log_tail()}")
                try:
                    client.ping()
                    return self
                except ServerUnavailable:
                    continue
        self.stop()
        raise BackendUnavailable(f"edged run did not answer ping in {timeout:g} s")

    def log_tail(self, lines: int = 3) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " / ".join(text.strip().splitlines()[-lines:]) or "no log"

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self) -> BenchDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
