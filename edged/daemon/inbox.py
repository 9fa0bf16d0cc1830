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
What happens to a claimed file, and crash recovery: ``edged.daemon.inbox_tickets``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from edged.config import ServiceSettings, StreamSettings
from edged.daemon.inbox_files import (
    as_input_error,
    decode_dropped,
    job_id,
    read_claimed,
    refuse_unless_regular,
)
from edged.daemon.inbox_tickets import InboxDirs, InboxTicket, recover
from edged.daemon.sources import Deliver, Frame, StateFn
from edged.daemon.supervise import SupervisedSource
from edged.errors import EdgedError, SourceError
from edged.log import get_logger

log = get_logger("inbox")


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
