"""Test helpers for the daemon: a real ``edged run`` subprocess (also the benchmarks' and
``edged demo``'s), a fake ``NOTIFY_SOCKET``, its config written as TOML and a subscriber that
collects what it publishes. Cameras and videos for its sources are ``edged.testing.cameras``.

Like ``edged.testing``, nothing here mocks edged: the daemon under test is the real command,
the notify socket is a real AF_UNIX datagram socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edged.errors import BackendUnavailable
from edged.testing.waits import slowdown, wait_until
from edged.util.toml_text import toml_document
from edged.wire.client import Message, Subscriber

# ---------------------------------------------------------------- notify socket


class NotifyRecorder:
    """Binds a datagram socket like systemd's and records every sd_notify message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append(fields)
                self._cond.notify_all()

    def count(self, key: str, value: str | None = None) -> int:
        with self._cond:
            return sum(1 for m in self.messages if key in m and value in (None, m[key]))

    def wait_for(
        self, key: str, value: str | None = None, *, n: int = 1, timeout: float = 30
    ) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count(key, value) >= n, timeout * slowdown())

    def close(self) -> None:
        self._closed = True
        self._thread.join(1)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# ---------------------------------------------------------------- daemon subprocess


class Daemon:
    """``python -m edged run --config CONFIG`` in ``workdir``: the one daemon-subprocess harness
    (tests and the daemon benchmarks). A fake notify socket records sd_notify; ``start`` waits
    for ``READY=1`` (sent once the sockets are bound and models warmed); logs go to a file.

    ``isolated`` drops the caller's ``EDGED_*`` variables so the config file is the whole
    truth (benchmarks); tests keep them (their dirs come from the environment). ``log_path``
    puts the log elsewhere than ``workdir/daemon.log`` (``edged demo``: in its output dir,
    while the sockets stay in a short temp dir).
    """

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        isolated: bool = False,
        runtime_dir: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.log_path = log_path or workdir / "daemon.log"
        self.notify = NotifyRecorder(workdir / "notify.sock")
        base = {k: v for k, v in os.environ.items() if not (isolated and k.startswith("EDGED_"))}
        self._env = {**base, **(env or {}), "NOTIFY_SOCKET": str(self.notify.path)}
        run = runtime_dir or Path(self._env.get("EDGED_RUNTIME_DIR", workdir / "run"))
        self.requests_endpoint = f"ipc://{run}/requests.sock"
        self.results_endpoint = f"ipc://{run}/results.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: float = 60) -> Daemon:
        """Start it; with ``wait_ready`` raise ``BackendUnavailable`` (naming the log's last
        lines) if it exits or sends no ``READY=1`` in time."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env=self._env,
            cwd=self.workdir,
        )
        log.close()
        if not wait_ready:
            return self
        deadline = time.monotonic() + wait_ready * slowdown()
        while not self.notify.wait_for("READY", "1", timeout=0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.stop()
                why = f"exited {code}" if code is not None else f"no READY=1 in {wait_ready:g} s"
                raise BackendUnavailable(f"edged run {why}: {self.log_tail()}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout * slowdown())

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not go; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 5) -> str:
        """The log's last lines as one line (for one-line errors)."""
        return " / ".join(self.log().strip().splitlines()[-lines:]) or "no log"

    def close(self) -> None:
        self.stop()
        self.notify.close()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- config and results


def config_toml(
    top: dict[str, Any],
    sections: dict[str, dict[str, Any]] | None = None,
    streams: list[dict[str, Any]] | None = None,
) -> str:
    """A daemon config file from plain dicts (paths as strings, None values left out)."""
    return toml_document(top, sections, {"streams": streams} if streams else None)


def toml_config(
    path: Path,
    models: Path,
    streams: list[dict[str, object]],
    service: dict[str, float] | None = None,
    *,
    top: dict[str, object] | None = None,
) -> Path:
    """A daemon config: ``models`` as the model dir, fast polling, the given streams.

    ``top`` adds top-level settings (e.g. ``warmup_models``).
    """
    svc = {"inbox_poll_s": 0.1, "drain_timeout_s": 5.0, **(service or {})}
    head = {"model_dirs": [models], "log_format": "json", **(top or {})}
    sections: dict[str, dict[str, Any]] = {"zmq": {"stats_interval_s": 0.5}, "service": svc}
    path.write_text(config_toml(head, sections, list(streams)))
    return path


def endpoints() -> tuple[str, str]:
    run = Path(os.environ["EDGED_RUNTIME_DIR"])
    return f"ipc://{run}/requests.sock", f"ipc://{run}/results.sock"


class Collector:
    """Everything the PUB socket sends, kept for assertions."""

    def __init__(self, endpoint: str) -> None:
        self.sub = Subscriber(endpoint)
        self.messages: list[Message] = []

    def pump(self, timeout: float = 0.05) -> None:
        while (msg := self.sub.recv(timeout)) is not None:
            self.messages.append(msg)
            timeout = 0

    def until(self, predicate: object, timeout: float = 30) -> bool:
        def check() -> bool:
            self.pump()
            return any(predicate(m) for m in self.messages)  # type: ignore[operator]

        return wait_until(check, timeout, interval=0.01)

    def events(self, stream: str, state: str) -> list[Message]:
        return [
            m
            for m in self.messages
            if m.topic == "events.stream"
            and m.header["data"].get("stream") == stream
            and m.header["data"].get("state") == state
        ]

    def results(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]
