"""Frame sources: V4L2 cameras, RTSP/HTTP streams, video files and image files.

Each source reads in its own daemon thread and hands frames to ``deliver``; a dead camera or
stream never blocks anything else. Live sources (camera, stream) deliver every frame they read
and the scheduler keeps only the latest (drop oldest); files wait for room instead. A video
file plays in real time at its own frame rate, or min(its fps, max_fps) with ``max_fps``,
waiting between frames and skipping frames with ``grab()`` (no conversion) rather than
decoding every frame at full speed and dropping it.
When a live source dies it is reopened with capped exponential backoff; a thread that dies of
an unexpected exception is restarted by ``edged.daemon.supervise``. Every state change (``up``,
``down``, ``reconnecting``, ``ended``, ``failed``, ``restarting``) goes to ``on_state`` (the
service publishes it as ``events.stream``). The directory inbox lives in ``edged.daemon.inbox``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.supervise import SupervisedSource
from edged.errors import ConfigError, SourceError
from edged.log import get_logger
from edged.util.optional import cv2 as _cv2

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
    @property
    def dead(self) -> bool:
        """Its thread died too often to be restarted (the watchdog then stops)."""
        ...


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


class _FilePacer:
    """A video file's pace: which frames to decode, and when to deliver them.

    Frames are chosen on the file's own timeline (frame index / file fps), so the choice does
    not depend on how fast the machine is: with ``max_fps`` one frame per ``1/max_fps`` s of
    video, the others skipped with ``grab()`` (never converted or copied). The file plays in
    real time (``wait_s`` says how long to wait before a frame): at its own frame rate, or
    ``max_fps`` when that is lower. A file is not live, so reading it faster than it plays
    would only burn CPU decoding frames nobody asked for yet; a container that reports no
    usable rate plays at ``max_fps`` or 30 fps.
    """

    def __init__(self, every_nth: int, max_fps: float | None, file_fps: float) -> None:
        self.every_nth = every_nth
        self.max_fps = max_fps
        valid = 0 < file_fps < 1000  # containers without a rate report 0 (or nonsense)
        self.frame_s = 1.0 / (file_fps if valid else (max_fps or 30.0))
        self.interval = 1.0 / max_fps if max_fps else 0.0
        # Behind the clock by more than this: restart the clock instead of bursting to catch up.
        self._slack = self.interval or self.frame_s
        self._index = -1
        self._next = 0.0
        self._wall0: float | None = None

    def take(self) -> bool:
        """Called once per frame in file order: deliver (decode) this one?"""
        self._index += 1
        if self._index % self.every_nth:
            return False
        t = self._index * self.frame_s
        if t < self._next - self.frame_s / 2 - 1e-9:  # half a frame of slack for rounding
            return False
        self._next = max(self._next + self.interval, t)
        return True

    def wait_s(self, now: float) -> float:
        """Seconds to wait before delivering the frame just taken (real-time playback)."""
        t = self._index * self.frame_s
        if self._wall0 is None or now - (self._wall0 + t) > self._slack:
            self._wall0 = now - t  # first frame, or behind by over a frame: no burst to catch up
        return max(0.0, self._wall0 + t - now)


class CaptureSource(SupervisedSource):
    """An OpenCV ``VideoCapture`` read in a thread: camera, stream or video file.

    Every frame is ``grab()``bed; only frames the pacer keeps are ``retrieve()``d (converted
    and copied), so skipped frames cost the least the codec allows (``frames_grabbed`` vs
    ``frames_decoded`` in stats; ``frames_read`` is their sum).
    """

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
        self._supervise(
            f"edged-src-{self.name}",
            self._loop,
            lambda state, data: self._set_state(state, **data),
            service,
        )
        self.state = "starting"
        self.frames_read = 0
        self.frames_grabbed = 0
        self.frames_decoded = 0
        self.frames_delivered = 0
        self.reconnects = 0
        self._seq = 0
        if self.kind == "video" and not Path(settings.source).is_file():
            raise SourceError(f"stream {self.name}: video file not found: {settings.source}")

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "frames_read": self.frames_read,
            "frames_grabbed": self.frames_grabbed,
            "frames_decoded": self.frames_decoded,
            "frames_delivered": self.frames_delivered,
            "reconnects": self.reconnects,
            **self._thread.stats(),
        }

    # ---------------------------------------------------------------- thread

    def _set_state(self, state: str, **data: Any) -> None:
        if state == self.state and state not in ("reconnecting", "restarting"):
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
                try:
                    reason = self._pump(cap)
                finally:  # also when the pump raises: the supervisor reopens it
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

    def _take(self, file_pacer: _FilePacer | None) -> bool:
        """Is the frame just grabbed delivered? Files wait here to play in real time."""
        if file_pacer is None:
            return self._pacer.take()
        if not file_pacer.take():
            return False
        delay = file_pacer.wait_s(time.monotonic())
        return not (delay and self._stop.wait(delay))

    def _pump(self, cap: Any) -> str:
        cv2 = _cv2()
        failed = "eof" if not self.live else "read failed (stream ended or timed out)"
        pacer = None
        if not self.live:
            pacer = _FilePacer(self._cfg.every_nth, self._cfg.max_fps, cap.get(cv2.CAP_PROP_FPS))
        while not self._stop.is_set():
            if not cap.grab():
                return failed
            self.frames_read += 1
            if not self._take(pacer):
                self.frames_grabbed += 1
                continue
            if self._stop.is_set():
                break
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                return failed
            self.frames_decoded += 1
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


class ImageSource(SupervisedSource):
    """One image file: a single frame, then ``ended``."""

    live = False

    def __init__(
        self,
        settings: StreamSettings,
        deliver: Deliver,
        on_state: StateFn,
        service: ServiceSettings | None = None,
    ) -> None:
        self.name = settings.name
        self._path = Path(settings.source)
        self._deliver = deliver
        self._on_state = on_state
        self._supervise(
            f"edged-src-{self.name}", self._run, self._report, service or ServiceSettings()
        )
        self.state = "starting"
        if not self._path.is_file():
            raise SourceError(f"stream {self.name}: image file not found: {self._path}")

    def stats(self) -> dict[str, Any]:
        return {"kind": "image", "state": self.state, **self._thread.stats()}

    def _report(self, state: str, data: dict[str, Any]) -> None:
        self.state = state
        self._on_state(state, {"kind": "image", **data})

    def _run(self) -> None:
        try:
            image = read_image(self._path)
            error = "" if image is not None else f"cannot decode {self._path.name}"
        except Exception as exc:  # a decode bomb, an unreadable file: this input's error
            image, error = None, f"cannot decode {self._path.name}: {type(exc).__name__}"
            log.warning("image source failed", stream=self.name, exc_info=exc)
        if image is None:
            self._report("down", {"error": error})
            return
        self._report("up", {})
        self._deliver(Frame(image, 0, time.time(), {"file": self._path.name}))
        self._report("ended", {"frames": 1})


def read_image(path: Path) -> npt.NDArray[np.uint8] | None:
    """RGB uint8 H x W x 3 of an image file, its header checked before decoding (a bomb is
    refused, not inflated); None for an empty file. Errors are ``EdgedError``s naming the file.
    """
    from edged.imaging import read_image as read_checked

    if path.stat().st_size == 0:
        return None
    return read_checked(path, "image source")
