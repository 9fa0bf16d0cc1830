"""Directory inbox: files dropped in ``inbox/`` come out as results in ``outbox/``.

Layout (siblings of the inbox dir ``PATH`` given as ``source = "dir:PATH"``)::

    PATH/                 drop files here (write elsewhere, then rename in: never half files)
    PATH/../processing/   claimed inputs (a rename: exactly one claimer)
    PATH/../outbox/       results: NAME.<output>.png|npy and NAME.json (written last = complete)
    PATH/../done/         inputs whose results are complete
    PATH/../failed/       inputs that failed, each with NAME.error.json beside it

Crash safety: every result file is written to a dot-temp name and ``os.replace``d; the
manifest ``NAME.json`` is written last and marks the result complete. On start, inputs left
in ``processing/`` move to ``done/`` when their manifest exists, to ``failed/`` when their
error record exists, otherwise partial outputs are removed and the input goes back to the
inbox. So after any crash (kill -9 included) every input ends in exactly one of done/failed
with one set of outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.sources import Deliver, Frame, StateFn, read_image
from edged.errors import BadRequest, EdgedError, SourceError, TooLarge
from edged.log import get_logger
from edged.tasks.base import TaskResult

log = get_logger("inbox")


class InboxDirs:
    """The five directories of one inbox, created on demand."""

    def __init__(self, inbox: Path, outbox: Path | None = None) -> None:
        self.inbox = inbox
        root = inbox.parent
        self.processing = root / "processing"
        self.outbox = outbox or root / "outbox"
        self.done = root / "done"
        self.failed = root / "failed"

    def create(self) -> None:
        for path in (self.inbox, self.processing, self.outbox, self.done, self.failed):
            path.mkdir(parents=True, exist_ok=True)

    def manifest(self, name: str) -> Path:
        return self.outbox / f"{name}.json"

    def error_record(self, name: str) -> Path:
        return self.failed / f"{name}.error.json"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _encode_output(array: np.ndarray[Any, Any]) -> tuple[str, bytes]:
    """PNG for uint8 images and masks, .npy for anything else."""
    if array.dtype == np.uint8 and (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    ):
        import cv2

        img = array
        if array.ndim == 3:
            code = cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
            img = cv2.cvtColor(array, code)
        ok, buf = cv2.imencode(".png", img)
        if ok:
            return "png", buf.tobytes()
    import io

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return "npy", out.getvalue()


class InboxTicket:
    """One claimed file; exactly one of complete/fail/hand_back runs."""

    def __init__(self, dirs: InboxDirs, name: str, stream: str) -> None:
        self.dirs = dirs
        self.name = name
        self.stream = stream
        self._ended = False
        self._lock = threading.Lock()

    @property
    def claimed(self) -> Path:
        return self.dirs.processing / self.name

    def _end(self) -> bool:
        with self._lock:
            ended, self._ended = self._ended, True
            return not ended

    def complete(self, result: TaskResult) -> None:
        if not self._end():
            return
        try:
            files = self._write_outputs(result)
        except OSError as exc:  # disk full, read-only outbox...
            self._remove_partials()
            self._ended = False
            self.fail(SourceError(f"cannot write results to {self.dirs.outbox}: {exc}"))
            return
        os.replace(self.claimed, self.dirs.done / self.name)
        log.info("inbox done", stream=self.stream, file=self.name, outputs=files)

    def _write_outputs(self, result: TaskResult) -> list[str]:
        files = []
        for key, array in result.outputs.items():
            ext, data = _encode_output(np.asarray(array))
            target = self.dirs.outbox / f"{self.name}.{key}.{ext}"
            _write_atomic(target, data)
            files.append(target.name)
        manifest = {
            "input": self.name,
            "stream": self.stream,
            "task": result.task,
            "model": result.model,
            "backend": result.backend,
            "latency_ms": result.latency_ms,
            "meta": result.meta,
            "outputs": files,
            "finished_at": time.time(),
        }
        _write_atomic(self.dirs.manifest(self.name), json.dumps(manifest, default=str).encode())
        return files

    def _remove_partials(self) -> None:
        for path in self.dirs.outbox.iterdir():
            if path.name.startswith((self.name + ".", f".{self.name}.")):
                path.unlink(missing_ok=True)

    def fail(self, error: BaseException) -> None:
        if not self._end():
            return
        code = error.wire_code if isinstance(error, EdgedError) else "internal"
        record = {
            "input": self.name,
            "stream": self.stream,
            "error": {"code": code, "type": type(error).__name__, "message": str(error)},
            "failed_at": time.time(),
        }
        with contextlib.suppress(OSError):  # a full disk must not keep the input in limbo
            _write_atomic(self.dirs.error_record(self.name), json.dumps(record).encode())
        os.replace(self.claimed, self.dirs.failed / self.name)
        log.warning("inbox failed", stream=self.stream, file=self.name, error=str(error))

    def hand_back(self) -> None:
        if not self._end():
            return
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.claimed, self.dirs.inbox / self.name)


def recover(dirs: InboxDirs, stream: str) -> dict[str, int]:
    """Settle inputs a crash left in ``processing/`` (see the module docstring)."""
    counts = {"done": 0, "failed": 0, "returned": 0}
    for tmp in dirs.outbox.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for path in sorted(dirs.processing.iterdir()):
        if not path.is_file():
            continue
        ticket = InboxTicket(dirs, path.name, stream)
        if dirs.manifest(path.name).is_file():
            os.replace(path, dirs.done / path.name)
            counts["done"] += 1
        elif dirs.error_record(path.name).is_file():
            os.replace(path, dirs.failed / path.name)
            counts["failed"] += 1
        else:
            ticket._remove_partials()
            os.replace(path, dirs.inbox / path.name)
            counts["returned"] += 1
    if any(counts.values()):
        log.info("inbox recovered", stream=stream, **counts)
    return counts


def load_image(path: Path, max_bytes: int, max_pixels: int) -> Any:
    """RGB uint8 from a dropped file, with the request limits applied before decoding.

    PNG and JPEG headers are checked for their pixel count first (a decompression bomb is
    refused without being inflated); other formats OpenCV reads are size-checked after.
    """
    from edged.wire.payloads import decode_image

    size = path.stat().st_size
    if size > max_bytes:
        raise TooLarge(f"{path.name}: {size} bytes is over zmq.max_frame_bytes ({max_bytes})")
    data = path.read_bytes()
    if data.startswith(b"\x89PNG"):
        return decode_image(path.name, data, "png", channels=3, max_pixels=max_pixels)
    if data[:2] == b"\xff\xd8":
        return decode_image(path.name, data, "jpeg", channels=3, max_pixels=max_pixels)
    image = read_image(path)
    if image is None:
        raise BadRequest(f"{path.name}: not an image OpenCV can decode (PNG, JPEG, BMP, ...)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise TooLarge(f"{path.name}: over zmq.max_pixels ({max_pixels})")
    return image


class InboxSource:
    """Polls an inbox directory and delivers every file, oldest first."""

    live = False
    kind = "inbox"

    def __init__(
        self,
        settings: StreamSettings,
        service: ServiceSettings,
        deliver: Deliver,
        on_state: StateFn,
        *,
        outbox: Path | None = None,
        has_room: Any = None,
        max_bytes: int = 32_000_000,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.name = settings.name
        self.dirs = InboxDirs(Path(settings.source.removeprefix("dir:")), outbox)
        self._poll = service.inbox_poll_s
        self._deliver = deliver
        self._on_state = on_state
        self._has_room = has_room
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"edged-inbox-{self.name}", daemon=True
        )
        self.state = "starting"
        self.claimed = 0
        self._seq = 0
        try:
            self.dirs.create()
        except OSError as exc:
            raise SourceError(f"stream {self.name}: cannot create inbox dirs: {exc}") from exc

    def start(self) -> None:
        recover(self.dirs, self.name)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {"kind": "inbox", "state": self.state, "claimed": self.claimed}

    def _pending(self) -> list[Path]:
        """Regular, non-dot files, oldest first (a file may vanish while we look: skip it)."""
        found = []
        for path in self.dirs.inbox.iterdir():
            if path.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_mtime, path.name, path))
        return [path for *_, path in sorted(found)]

    def _set_state(self, state: str, **data: Any) -> None:
        if state != self.state:
            self.state = state
            self._on_state(state, {"kind": "inbox", "path": str(self.dirs.inbox), **data})

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pending = self._pending()
                self._set_state("up")
                for path in pending:
                    if self._stop.is_set() or not self._take(path):
                        break
            except OSError as exc:
                # The inbox vanished or became unreadable (unmounted disk...): say so, retry.
                if self.state != "down":
                    log.warning("inbox unavailable", stream=self.name, error=str(exc))
                self._set_state("down", error=str(exc))
            self._stop.wait(self._poll)
        self.state = "stopped"

    def _take(self, path: Path) -> bool:
        # Claim only when the queue can take it, so shutdown rarely has anything to return.
        while self._has_room is not None and not self._has_room():
            if self._stop.wait(0.05):
                return False
        ticket = InboxTicket(self.dirs, path.name, self.name)
        try:
            os.rename(path, ticket.claimed)  # the claim: atomic, exactly one winner
        except FileNotFoundError:
            return True
        self.claimed += 1
        try:
            image = load_image(ticket.claimed, self._max_bytes, self._max_pixels)
        except EdgedError as exc:
            ticket.fail(exc)
            return True
        frame = Frame(image, self._seq, time.time(), {"file": path.name}, ticket=ticket)
        self._seq += 1
        if not self._deliver(frame):
            ticket.hand_back()
            return False
        return True
