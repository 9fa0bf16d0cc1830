"""Test helpers: cameras and videos for the daemon's sources: a real RTSP server (GStreamer, run by
the system python3), a loopback HTTP MJPEG camera, a recording ``deliver``/``on_state`` sink and
small generated videos. Nothing here mocks edged: the servers are real servers.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edged.daemon.sources import Frame
from edged.testing.waits import wait_until
from edged.testing.zmq import free_port

SYSTEM_PYTHON = "/usr/bin/python3"

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
