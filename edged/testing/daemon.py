"""Test helpers for the daemon: a real ``edged run`` subprocess (also the benchmarks'), a fake ``NOTIFY_SOCKET``,
a real RTSP server (GStreamer, run by the system python3) and small generated videos.

Like ``edged.testing``, nothing here mocks edged: the daemon under test is the real command,
the notify socket is a real AF_UNIX datagram socket, the RTSP server is a real server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edged.daemon.sources import Frame
from edged.errors import BackendUnavailable
from edged.util.toml_text import toml_document
from edged.wire.client import Message, Subscriber

SYSTEM_PYTHON = "/usr/bin/python3"

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


# ---------------------------------------------------------------- rtsp server

RTSP_SERVER_SCRIPT = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! "
    "video/x-raw,format=I420,width=160,height=120,framerate=10/1 ! "
    "jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
GLib.MainLoop().run()
"""


@functools.cache
def rtsp_server_missing() -> str | None:
    """Why a GStreamer RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); "
        "from gi.repository import GstRtspServer"
    )
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, check=False)
    if done.returncode:
        return (
            "GStreamer RTSP server missing: apt-get install gstreamer1.0-rtsp "
            "gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good"
        )
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RtspServer:
    """A real RTSP server (MJPEG over RTP) at ``url``; ``stop()``/``start()`` to cut it."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.script = workdir / "rtsp_server.py"
        self.script.write_text(RTSP_SERVER_SCRIPT)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(self.script), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(lambda: _port_open(self.port), timeout):
            self.stop()
            raise AssertionError(f"RTSP server did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class FrameSink:
    """A source's ``deliver``/``on_state`` pair that records everything it is given.

    ``accept = False`` answers like a stopping daemon (file sources then stop reading).
    """

    def __init__(self, accept: bool = True) -> None:
        self.frames: list[Frame] = []
        self.states: list[tuple[str, dict[str, Any]]] = []
        self.accept = accept
        self.lock = threading.Lock()

    def deliver(self, frame: Frame) -> bool:
        with self.lock:
            self.frames.append(frame)
        return self.accept

    def on_state(self, state: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.states.append((state, data))

    def state_names(self) -> list[str]:
        with self.lock:
            return [s for s, _ in self.states]


class MjpegServer:
    """An HTTP MJPEG camera (multipart/x-mixed-replace) on loopback, like cheap IP cameras.

    ``stall = True`` keeps connections open but stops sending: a dead camera whose TCP session
    never closes, which only a read timeout can detect.
    """

    def __init__(self, frame: np.ndarray[Any, Any], fps: float = 20.0) -> None:
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        assert ok
        self.jpeg = buf.tobytes()
        self.fps = fps
        self.stall = False
        self.connections = 0
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/video.mjpg"

    def __enter__(self) -> MjpegServer:
        import http.server

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while True:
                        if not outer.stall:
                            head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(outer.jpeg)}\r\n\r\n"
                            self.wfile.write(head.encode() + outer.jpeg + b"\r\n")
                            self.wfile.flush()
                        time.sleep(1 / outer.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------- media and waiting


def slowdown() -> float:
    """``EDGED_TEST_SLOWDOWN`` (default 1): how much slower than a native x86 machine this one
    runs; every wait bound here is multiplied by it (the arm64 job under qemu-user sets 10).
    Bounds only: a passing wait still returns as soon as its event happens."""
    try:
        return max(1.0, float(os.environ.get("EDGED_TEST_SLOWDOWN", "1")))
    except ValueError:
        return 1.0


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until truthy or ``timeout`` s (times ``slowdown()``) pass: a bound,
    not a measurement."""
    deadline = time.monotonic() + timeout * slowdown()
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def moving_frames(
    image: np.ndarray[Any, Any], count: int, size: tuple[int, int] = (96, 96)
) -> Iterator[np.ndarray[Any, Any]]:
    """``count`` RGB crops panning across ``image`` (a cheap 'moving' video)."""
    h, w = image.shape[:2]
    ch, cw = min(size[1], h), min(size[0], w)
    for i in range(count):
        x = (w - cw) * i // max(1, count - 1)
        y = (h - ch) * i // max(1, count - 1)
        yield np.ascontiguousarray(image[y : y + ch, x : x + cw])


def write_video(path: Path, frames: Iterator[np.ndarray[Any, Any]], fps: float = 10.0) -> Path:
    """RGB frames -> an MJPG .avi that OpenCV's FFmpeg backend reads back."""
    import cv2

    writer: Any = None
    for frame in frames:
        if writer is None:
            h, w = frame.shape[:2]
            fourcc = cv2.VideoWriter.fourcc(*"MJPG")
            writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if writer is None:
        raise ValueError("no frames")
    writer.release()
    return path
