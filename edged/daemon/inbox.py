"""Directory inbox: files dropped in ``inbox/`` come out as results in ``outbox/``.

Layout (siblings of the inbox dir ``PATH`` given as ``source = "dir:PATH"``)::

    PATH/                 drop files here (write elsewhere, then rename in: never half files)
    PATH/../processing/   claimed inputs (a rename: exactly one claimer)
    PATH/../outbox/       results: NAME.<job>.<output>.png|npy and NAME.json (written last)
    PATH/../done/         inputs whose results are complete
    PATH/../failed/       inputs that failed, each with NAME.error.json beside it

Every claimed file is a job with an id (``edged.daemon.inbox_files.job_id``: inode, mtime,
size). Its outputs carry that id and its manifest and error record name it, so one job's
failure only ever removes its own files, and a file dropped again under a used name is a new
job. Names too long to take these suffixes are cut and hashed (``stem``). Anything that is not
a regular file (symlink, FIFO, device, directory) is refused with an error record, unread.

Crash safety: every result file is written to a dot-temp name and ``os.replace``d; the
manifest ``NAME.json`` is written last and marks the result complete. On start, inputs left
in ``processing/`` move to ``done/`` when the manifest of *their* job exists, to ``failed/``
when their job's error record exists, otherwise their job's partial outputs are removed and
the input goes back to the inbox. So after any crash (kill -9 included) every input ends in
exactly one of done/failed with one set of outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.inbox_files import (
    as_input_error,
    decode_dropped,
    job_id,
    output_name,
    output_pattern,
    read_claimed,
    refuse_unless_regular,
    stem,
)
from edged.daemon.sources import Deliver, Frame, StateFn
from edged.daemon.supervise import SupervisedSource
from edged.errors import EdgedError, SourceError
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
        return self.outbox / f"{stem(name)}.json"

    def error_record(self, name: str) -> Path:
        return self.failed / f"{stem(name)}.error.json"


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


def _read_json(path: Path) -> dict[str, Any]:
    """A manifest or error record; {} when missing or unreadable (then it names no job)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def _remove_outputs(dirs: InboxDirs, name: str, job: str, names: list[str] | None = None) -> None:
    """Remove outputs (and temp files) of job ``job`` of ``name``, and never anyone else's.

    ``names``: the candidates when known (this job's own writes, an old manifest's list);
    otherwise (recovery) the outbox is scanned for names carrying this job's id.
    """
    pattern = output_pattern(name, job)
    if names is None:
        names = [p.name for p in dirs.outbox.iterdir()]
    else:
        names = [*names, *(f".{n}.tmp" for n in names)]
    for found in names:
        if pattern.fullmatch(found):
            (dirs.outbox / found).unlink(missing_ok=True)


class InboxTicket:
    """One claimed file (job ``job``); exactly one of complete/fail/hand_back runs.

    They run on worker threads inside future callbacks, where an exception would vanish:
    none of them raises, the input always ends in done/, failed/ or the inbox.
    """

    def __init__(self, dirs: InboxDirs, name: str, stream: str, job: str = "") -> None:
        self.dirs = dirs
        self.name = name
        self.stream = stream
        self.job = job
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
        planned: list[str] = []
        try:
            files = self._write_outputs(result, planned)
        except Exception as exc:  # disk full, read-only outbox, an unencodable output...
            with contextlib.suppress(OSError):
                _remove_outputs(self.dirs, self.name, self.job, planned)
            error = exc if isinstance(exc, EdgedError) else None
            self._fail(error or SourceError(f"cannot write results to {self.dirs.outbox}: {exc}"))
            return
        try:
            os.replace(self.claimed, self.dirs.done / self.name)
        except OSError as exc:  # the manifest is written: recovery moves it at next start
            log.error(
                "inbox cannot move to done", stream=self.stream, file=self.name, error=str(exc)
            )
            return
        log.info("inbox done", stream=self.stream, file=self.name, job=self.job, outputs=files)

    def _write_outputs(self, result: TaskResult, planned: list[str]) -> list[str]:
        previous = _read_json(self.dirs.manifest(self.name))
        for key, array in result.outputs.items():
            ext, data = _encode_output(np.asarray(array))
            target = self.dirs.outbox / output_name(self.name, self.job, key, ext)
            planned.append(target.name)
            _write_atomic(target, data)
        manifest = {
            "input": self.name,
            "job": self.job,
            "stream": self.stream,
            "task": result.task,
            "model": result.model,
            "backend": result.backend,
            "latency_ms": result.latency_ms,
            "meta": result.meta,
            "outputs": planned,
            "finished_at": time.time(),
        }
        _write_atomic(self.dirs.manifest(self.name), json.dumps(manifest, default=str).encode())
        old_job, old_outputs = previous.get("job"), previous.get("outputs")
        if isinstance(old_job, str) and old_job != self.job and isinstance(old_outputs, list):
            # A reused name: the earlier job's results are superseded by this manifest.
            with contextlib.suppress(OSError):
                _remove_outputs(self.dirs, self.name, old_job, [str(o) for o in old_outputs])
        return planned

    def fail(self, error: BaseException) -> None:
        if self._end():
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        code = error.wire_code if isinstance(error, EdgedError) else "internal"
        record = {
            "input": self.name,
            "job": self.job,
            "stream": self.stream,
            "error": {"code": code, "type": type(error).__name__, "message": str(error)},
            "failed_at": time.time(),
        }
        try:
            _write_atomic(self.dirs.error_record(self.name), json.dumps(record).encode())
        except OSError as exc:  # a full disk must not keep the input in limbo
            log.error("inbox cannot write error record", file=self.name, error=str(exc))
        try:
            os.replace(self.claimed, self.dirs.failed / self.name)
        except OSError as exc:
            log.error("inbox cannot move to failed", file=self.name, error=str(exc))
        log.warning("inbox failed", stream=self.stream, file=self.name, error=str(error))

    def hand_back(self) -> None:
        if not self._end():
            return
        try:
            os.replace(self.claimed, self.dirs.inbox / self.name)
        except FileNotFoundError:
            pass
        except OSError as exc:  # recovery returns it at next start
            log.error("inbox cannot hand back", file=self.name, error=str(exc))


def recover(dirs: InboxDirs, stream: str) -> dict[str, int]:
    """Settle inputs a crash left in ``processing/`` (see the module docstring)."""
    counts = {"done": 0, "failed": 0, "returned": 0}
    for tmp in dirs.outbox.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for path in sorted(dirs.processing.iterdir()):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        ticket = InboxTicket(dirs, path.name, stream, job_id(st))
        manifest, record = dirs.manifest(path.name), dirs.error_record(path.name)
        try:
            refuse_unless_regular(path.name, st)
        except EdgedError as exc:
            ticket.fail(exc)
            counts["failed"] += 1
        else:
            if _read_json(manifest).get("job") == ticket.job:
                os.replace(path, dirs.done / path.name)
                counts["done"] += 1
            elif _read_json(record).get("job") == ticket.job:
                os.replace(path, dirs.failed / path.name)
                counts["failed"] += 1
            else:  # never finished (or an older job's files under a reused name)
                _remove_outputs(dirs, path.name, ticket.job)
                os.replace(path, dirs.inbox / path.name)
                counts["returned"] += 1
    if any(counts.values()):
        log.info("inbox recovered", stream=stream, **counts)
    return counts


def load_image(path: Path, max_bytes: int, max_pixels: int) -> Any:
    """RGB uint8 from a dropped file: regular files only, request limits before decoding."""
    st = os.lstat(path)
    refuse_unless_regular(path.name, st)
    data = read_claimed(str(path), job_id(st), max_bytes)
    return decode_dropped(path.name, data, max_pixels)


class InboxSource(SupervisedSource):
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
        self._supervise(f"edged-inbox-{self.name}", self._life, self._set_state, service)
        self._recovered = False
        self.state = "starting"
        self.claimed = 0
        self.refused = 0
        self._seq = 0
        try:
            self.dirs.create()
        except OSError as exc:
            raise SourceError(f"stream {self.name}: cannot create inbox dirs: {exc}") from exc

    def start(self) -> None:
        try:
            recover(self.dirs, self.name)
        except OSError as exc:
            raise SourceError(
                f"stream {self.name}: cannot recover {self.dirs.processing}: {exc}"
            ) from exc
        self._recovered = True
        super().start()

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "inbox",
            "state": self.state,
            "claimed": self.claimed,
            "refused": self.refused,
            **self._thread.stats(),
        }

    def _pending(self) -> list[Path]:
        """Non-dot entries of any type, oldest first (one may vanish while we look: skip it)."""
        found = []
        with os.scandir(self.dirs.inbox) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    found.append((st.st_mtime, entry.name, Path(entry.path)))
        return [path for *_, path in sorted(found)]

    def _set_state(self, state: str, data: dict[str, Any] | None = None) -> None:
        if state != self.state or state == "restarting":
            self.state = state
            self._on_state(state, {"kind": "inbox", "path": str(self.dirs.inbox), **(data or {})})

    def _life(self) -> None:
        """One life of the thread; a restart first recreates the dirs and recovers claims."""
        if not self._recovered:
            self.dirs.create()
            recover(self.dirs, self.name)
        self._recovered = False
        while not self._stop.is_set():
            try:
                pending = self._pending()
            except OSError as exc:
                # The inbox vanished or became unreadable (unmounted disk...): say so, retry.
                if self.state != "down":
                    log.warning("inbox unavailable", stream=self.name, error=str(exc))
                self._set_state("down", {"error": str(exc)})
                self._stop.wait(self._poll)
                continue
            self._set_state("up")
            for path in pending:
                if self._stop.is_set() or not self._take(path):
                    break
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
            if os.path.lexists(path):  # the input is there: processing/ is not
                raise
            return True  # someone else took it
        self.claimed += 1
        try:
            ticket.job = job_id(os.lstat(ticket.claimed))
            frame = self._frame(ticket)
        except Exception as exc:  # anything about this one input is this input's error
            self._refuse(ticket, exc)
            return True
        try:
            accepted = self._deliver(frame)
        except Exception as exc:
            self._refuse(ticket, exc)
            return True
        if not accepted:
            ticket.hand_back()
            return False
        return True

    def _frame(self, ticket: InboxTicket) -> Frame:
        name = ticket.name
        refuse_unless_regular(name, os.lstat(ticket.claimed))
        data = read_claimed(str(ticket.claimed), ticket.job, self._max_bytes)
        image = decode_dropped(name, data, self._max_pixels)
        frame = Frame(image, self._seq, time.time(), {"file": name}, ticket=ticket)
        self._seq += 1
        return frame

    def _refuse(self, ticket: InboxTicket, exc: Exception) -> None:
        self.refused += 1
        if not isinstance(exc, EdgedError):  # unexpected: its traceback, once
            log.warning("inbox input failed", stream=self.name, file=ticket.name, exc_info=exc)
        ticket.fail(as_input_error(ticket.name, exc))
