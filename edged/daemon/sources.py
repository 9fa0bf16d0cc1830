"""Frame sources: V4L2 cameras, RTSP/HTTP streams, video files and image files.

Each source reads in its own daemon thread and hands frames to ``deliver``; a dead camera or
stream never blocks anything else. Live sources (camera, stream) deliver every frame they read
and the scheduler keeps only the latest (drop oldest); files deliver every frame and wait.
When a live source dies it is reopened with capped exponential backoff; every state change
(``up``, ``down``, ``reconnecting``, ``ended``) goes to ``on_state`` (the service publishes it
as ``events.stream``). The directory inbox lives in ``edged.daemon.inbox``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edged.config import ServiceSettings, StreamSettings
from edged.errors import ConfigError, SourceError
from edged.log import get_logger

log = get_logger("sources")

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".mjpeg", ".mjpg", ".ts"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
DEFAULT_FFMPEG_OPTIONS = "rtsp_transport;tcp"


class Ticket(Protocol):
    """What a source that owns its inputs (the inbox) does when its job ends."""

    def complete(self, result: Any) -> None: ...
    def fail(self, error: BaseException) -> None: ...
    def hand_back(self) -> None: ...


@dataclass
class Frame:
    """One RGB uint8 image and where it came from."""

    image: npt.NDArray[np.uint8]
    seq: int
    captured_at: float
    meta: dict[str, Any] = field(default_factory=dict)
    ticket: Ticket | None = None


Deliver = Callable[[Frame], bool]
"""Returns False when the frame was not accepted (stopping); files then stop reading."""
StateFn = Callable[[str, dict[str, Any]], None]


class Source(Protocol):
    name: str
    live: bool

    def start(self) -> None: ...
    def stop(self, timeout: float = 2.0) -> None: ...
    def stats(self) -> dict[str, Any]: ...


def source_kind(source: str) -> str:
    """camera | stream | video | image | inbox, from the ``source`` string alone."""
    if source.startswith("dir:"):
        return "inbox"
    if source.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return "stream"
    if source.startswith("/dev/video") or source.isdigit():
        return "camera"
    suffix = Path(source).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise ConfigError(
        f"stream source {source!r}: not a /dev/videoN, rtsp://, http(s)://, dir:PATH, "
        f"video ({', '.join(sorted(VIDEO_SUFFIXES))}) or image file"
    )


def _cv2() -> Any:
    import cv2  # heavy; imported when a source is built, never at module import

    return cv2


class _Pacer:
    """every_nth and max_fps: decides which read frames are delivered."""

    def __init__(
        self, every_nth: int, max_fps: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_nth = every_nth
        self.min_interval = 1.0 / max_fps if max_fps else 0.0
        self._clock = clock
        self._count = 0
        self._last = -1e18

    def take(self) -> bool:
        self._count += 1
        if (self._count - 1) % self.every_nth:
            return False
        now = self._clock()
        # 5 % slack: a camera at exactly max_fps jitters around the interval, and a strict
        # comparison would drop every other frame and halve the rate.
        if now - self._last < self.min_interval * 0.95:
            return False
        self._last = now
        return True


class CaptureSource:
    """An OpenCV ``VideoCapture`` read in a thread: camera, stream or video file."""

    def __init__(
        self,
        settings: StreamSettings,
        service: ServiceSettings,
        deliver: Deliver,
        on_state: StateFn,
    ) -> None:
        self.name = settings.name
        self.kind = source_kind(settings.source)
        self.live = self.kind in ("camera", "stream")
        self._cfg = settings
        self._svc = service
        self._deliver = deliver
        self._on_state = on_state
        self._pacer = _Pacer(settings.every_nth, settings.max_fps)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"edged-src-{self.name}", daemon=True
        )
        self.state = "starting"
        self.frames_read = 0
        self.frames_delivered = 0
        self.reconnects = 0
        self._seq = 0
        if self.kind == "video" and not Path(settings.source).is_file():
            raise SourceError(f"stream {self.name}: video file not found: {settings.source}")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        # A read blocked inside FFmpeg ends at its read timeout; the thread is a daemon, so a
        # wedged driver cannot hold shutdown hostage.
        self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "frames_read": self.frames_read,
            "frames_delivered": self.frames_delivered,
            "reconnects": self.reconnects,
        }

    # ---------------------------------------------------------------- thread

    def _set_state(self, state: str, **data: Any) -> None:
        if state == self.state and state != "reconnecting":
            return
        self.state = state
        log.info("stream state", stream=self.name, state=state, **data)
        self._on_state(state, {"kind": self.kind, **data})

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            cap, error = self._open()
            if cap is not None:
                self._set_state("up", source=_redact(self._cfg.source))
                failures = 0
                reason = self._pump(cap)
                cap.release()
                if reason == "stopped":
                    break
                if reason == "eof" and not self.live:
                    if self._cfg.loop:
                        continue
                    self._set_state("ended", frames=self.frames_read)
                    return
                error = reason
            if not self.live and failures == 0 and cap is None:
                self._set_state("down", error=error)
                return  # a file that cannot be opened will not get better
            if failures == 0:
                self._set_state("down", error=error)
            delay = min(self._svc.reconnect_max_s, self._svc.reconnect_initial_s * 2**failures)
            failures += 1
            self.reconnects += 1
            self._set_state("reconnecting", attempt=failures, delay_s=round(delay, 3))
            self._stop.wait(delay)
        self._set_state("stopped")

    def _open(self) -> tuple[Any, str]:
        cv2 = _cv2()
        src = self._cfg.source
        try:
            if self.kind == "camera":
                cap = _open_camera(cv2, self._cfg)
            elif self.kind == "stream":
                os.environ.setdefault(FFMPEG_OPTIONS_ENV, DEFAULT_FFMPEG_OPTIONS)
                params = [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    int(self._svc.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    int(self._svc.read_timeout_s * 1000),
                ]
                cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG, params)
            else:
                cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG)
        except cv2.error as exc:
            return None, f"open failed: {exc}"
        if not cap.isOpened():
            cap.release()
            return None, "could not open source"
        return cap, ""

    def _pump(self, cap: Any) -> str:
        cv2 = _cv2()
        while not self._stop.is_set():
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return "eof" if not self.live else "read failed (stream ended or timed out)"
            self.frames_read += 1
            if not self._pacer.take():
                continue
            frame = Frame(
                image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                seq=self._seq,
                captured_at=time.time(),
                meta={"frame": self.frames_read - 1},
            )
            self._seq += 1
            if not self._deliver(frame):
                if not self.live:
                    return "stopped"
                continue
            self.frames_delivered += 1
        return "stopped"


def _open_camera(cv2: Any, cfg: StreamSettings) -> Any:
    device: int | str = int(cfg.source) if cfg.source.isdigit() else cfg.source
    cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
    if cfg.fourcc:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
    if cfg.width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
    if cfg.height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
    if cfg.fps:
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
    # Drivers keep a few buffers; one means the frame we read is the latest one.
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


def _redact(source: str) -> str:
    """rtsp://user:pass@host -> rtsp://***@host: events and logs never carry credentials."""
    scheme, sep, rest = source.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return source


class ImageSource:
    """One image file: a single frame, then ``ended``."""

    live = False

    def __init__(self, settings: StreamSettings, deliver: Deliver, on_state: StateFn) -> None:
        self.name = settings.name
        self._path = Path(settings.source)
        self._deliver = deliver
        self._on_state = on_state
        self._thread = threading.Thread(
            target=self._run, name=f"edged-src-{self.name}", daemon=True
        )
        self.state = "starting"
        if not self._path.is_file():
            raise SourceError(f"stream {self.name}: image file not found: {self._path}")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {"kind": "image", "state": self.state}

    def _run(self) -> None:
        image = read_image(self._path)
        if image is None:
            self.state = "down"
            self._on_state("down", {"kind": "image", "error": f"cannot decode {self._path.name}"})
            return
        self.state = "up"
        self._on_state("up", {"kind": "image"})
        self._deliver(Frame(image, 0, time.time(), {"file": self._path.name}))
        self.state = "ended"
        self._on_state("ended", {"kind": "image", "frames": 1})


def read_image(path: Path) -> npt.NDArray[np.uint8] | None:
    """RGB uint8 H x W x 3 from any image OpenCV decodes; None when it cannot."""
    cv2 = _cv2()
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        return None
    rgb: npt.NDArray[np.uint8] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return rgb
