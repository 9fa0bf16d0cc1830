"""HTTP for model downloads: resumable GET into a ``.part`` file, and a seekable remote file.

Only the standard library (urllib): a daemon for small boards should not pull an HTTP stack
for a command that runs once per model. Every failure becomes a one-line ``FetchError``.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from edged import __version__
from edged.errors import FetchError
from edged.log import get_logger
from edged.schema import format_bytes

log = get_logger(__name__)

CHUNK = 1 << 16
USER_AGENT = f"edged/{__version__} (+model fetch)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Errors that mean "the connection died mid-transfer": worth a retry with Range.
TRANSIENT = (
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    ConnectionError,
    TimeoutError,
    urllib.error.URLError,
)


class _BadResume(Exception):
    """The server answered a Range request with another range: start the file again."""


class Progress:
    """A bar on a TTY, a log line every ``interval_s`` otherwise (journald stays readable)."""

    def __init__(self, label: str, total: int | None, *, interval_s: float = 5.0) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.interval_s = interval_s
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last < (0.1 if self.tty else self.interval_s):
            return
        self._last = now
        self._emit(now)

    def _emit(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-6)
        if not self.tty:
            log.info("fetch.progress", file=self.label, done=self.done, total=self.total)
            return
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"{bar:<30} {frac:4.0%} {format_bytes(self.done)}/{format_bytes(self.total)}"
        else:
            text = format_bytes(self.done)
        sys.stderr.write(f"\r{self.label[:30]:<30} {text} {format_bytes(rate)}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            self._emit(time.monotonic())
            sys.stderr.write("\n")
        else:
            log.info("fetch.done", file=self.label, bytes=self.done)


def open_url(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> http.client.HTTPResponse:
    """GET ``url``; HTTP errors other than 206/416 and network errors become ``FetchError``."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})  # noqa: S310 - scheme checked by the caller
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc  # type: ignore[return-value]  # caller inspects status and Content-Range
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url}: cannot connect: {reason}") from exc
    return response


def get_json(url: str, *, timeout: float = 30.0) -> Any:
    with open_url(url, headers={"Accept": "application/json"}, timeout=timeout) as response:
        body = response.read()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise FetchError(f"{url}: not JSON ({exc})") from exc


def _copy_body(
    response: http.client.HTTPResponse, out: BinaryIO, expected: int | None, progress: Progress
) -> None:
    got = 0
    while block := response.read(CHUNK):
        out.write(block)
        got += len(block)
        progress.update(len(block))
    if expected is not None and got < expected:
        # A closed connection can look like a clean EOF; the length says otherwise.
        raise http.client.IncompleteRead(b"", expected - got)


def _resume_point(response: http.client.HTTPResponse, offset: int) -> int:
    """Where the body of ``response`` starts in the file: ``offset`` for 206, 0 for 200."""
    if response.status != 206:
        return 0
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    start = int(match.group(1)) if match else -1
    if start != offset:
        raise _BadResume(f"server answered Range bytes={offset}- with start {start}")
    return offset


def _one_attempt(url: str, part: Path, progress: Progress, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with open_url(url, headers=headers, timeout=timeout) as response:
        if response.status == 416:
            # Nothing left to send: the part file is already whole (the hash decides).
            return
        start = _resume_point(response, offset)
        length = response.headers.get("Content-Length")
        if progress.total is None and length is not None:
            progress.total = start + int(length)
        progress.done = start
        with part.open("r+b" if part.exists() else "wb") as out:
            out.seek(start)
            out.truncate()
            _copy_body(response, out, int(length) if length else None, progress)


def download(
    url: str,
    part: Path,
    *,
    label: str,
    total: int | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> None:
    """Append ``url`` to ``part``, resuming with HTTP Range after a cut connection.

    An existing ``part`` (from an earlier interrupted run) is resumed too. The caller checks
    the hash and removes ``part`` when it is wrong.
    """
    progress = Progress(label, total)
    for attempt in range(retries + 1):
        try:
            _one_attempt(url, part, progress, timeout)
        except TRANSIENT as exc:
            if attempt == retries:
                raise FetchError(f"{url}: connection failed {retries + 1} times: {exc!r}") from exc
            log.warning(
                "fetch.retry", url=url, have=progress.done, attempt=attempt + 1, error=repr(exc)
            )
            time.sleep(backoff_s * (attempt + 1))
        except _BadResume as exc:
            if attempt == retries:
                raise FetchError(f"{url}: {exc}") from exc
            part.unlink(missing_ok=True)
        else:
            progress.close()
            return


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file through HTTP Range requests.

    ``zipfile`` reads the end-of-central-directory, the central directory and one member's
    bytes: a few small requests instead of a whole 35 MB wheel. ``fetched`` counts bytes
    received, so callers (and tests) can see how little was transferred.
    """

    def __init__(self, url: str, size: int, *, timeout: float = 30.0, block: int = 1 << 16):
        super().__init__()
        self.url = url
        self.size = size
        self.timeout = timeout
        self.block = block
        self.fetched = 0
        self._pos = 0
        self._buf_start = 0
        self._buf = b""

    @classmethod
    def open(cls, url: str, *, timeout: float = 30.0) -> RangeFile | None:
        """A ``RangeFile`` if the server honours Range requests, else None."""
        with open_url(url, headers={"Range": "bytes=0-0"}, timeout=timeout) as response:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if response.status != 206 or match is None or match.group(3) == "*":
                return None
            response.read()
            return cls(url, int(match.group(3)), timeout=timeout)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _fill(self, start: int, length: int) -> None:
        end = min(self.size, start + max(length, self.block)) - 1
        for attempt in range(3):
            try:
                with open_url(
                    self.url, headers={"Range": f"bytes={start}-{end}"}, timeout=self.timeout
                ) as r:
                    data = r.read()
                break
            except TRANSIENT:
                if attempt == 2:
                    raise
        if len(data) != end - start + 1:
            raise FetchError(
                f"{self.url}: asked for {end - start + 1} bytes at {start}, got {len(data)}"
            )
        self.fetched += len(data)
        self._buf_start, self._buf = start, data

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self._pos)
        if want <= 0:
            return 0
        offset = self._pos - self._buf_start
        if not (offset >= 0 and offset + want <= len(self._buf)):
            self._fill(self._pos, want)
            offset = 0
        buffer[:want] = self._buf[offset : offset + want]
        self._pos += want
        return want
