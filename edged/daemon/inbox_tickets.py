"""A claimed inbox file's one outcome: its results and manifest in the outbox (input to
``done/``), or an error record (input to ``failed/``), or handed back to the inbox on shutdown;
and the recovery of ``processing/`` after a crash.

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

from edged.daemon.inbox_files import (
    job_id,
    output_name,
    output_pattern,
    refuse_unless_regular,
    stem,
)
from edged.errors import EdgedError, SourceError
from edged.log import get_logger
from edged.tasks.base import TaskResult

__all__ = ["InboxDirs", "InboxTicket", "recover"]

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
