"""What the inbox knows about one dropped file: its job id, derived names, safe read and decode.

* **Job id**: a hash of the claimed file's inode, mtime (ns) and size. A rename keeps all three,
  so the id survives the claim and a kill -9; a new file dropped under a reused name is a new
  inode and mtime, hence a new job (recovery never mistakes an old manifest for its result).
* **Derived names** (outputs, manifest, error record, their temp names) stay within NAME_MAX:
  a long input name is cut and given a hash suffix, deterministically.
* **Reading** never blocks and never follows a link: ``O_NONBLOCK | O_NOFOLLOW``, then
  ``fstat`` must say regular file (a FIFO, device, directory or symlink is refused unread).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from typing import Any

from edged.errors import BadRequest, EdgedError, SourceError, TooLarge

__all__ = [
    "NAME_MAX",
    "as_input_error",
    "decode_dropped",
    "job_id",
    "output_name",
    "output_pattern",
    "read_claimed",
    "refuse_unless_regular",
    "stem",
]

NAME_MAX = 255
"""Bytes in one path component (Linux filesystems)."""
_STEM_MAX = NAME_MAX - 80
"""Room left after the stem for ``.<job>.<key>.<ext>``, ``.error.json`` and ``.`` + ``.tmp``."""
_KEY_MAX = 48


def job_id(st: os.stat_result) -> str:
    """12 hex digits naming one claimed file (see the module docstring)."""
    key = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}".encode()
    return hashlib.blake2b(key, digest_size=6).hexdigest()


def stem(name: str) -> str:
    """``name`` itself, or (too long to take suffixes) its head plus ``~`` and a hash."""
    raw = os.fsencode(name)
    if len(raw) <= _STEM_MAX:
        return name
    digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
    head = raw[: _STEM_MAX - len(digest) - 1]
    return f"{os.fsdecode(head)}~{digest}"


def _key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)[:_KEY_MAX] or "out"


def output_name(name: str, job: str, key: str, ext: str) -> str:
    """``<stem>.<job>.<key>.<ext>``: each output names the job it belongs to."""
    return f"{stem(name)}.{job}.{_key(key)}.{ext}"


def output_pattern(name: str, job: str) -> re.Pattern[str]:
    """Matches this job's outputs and their temp files, and nothing else's."""
    return re.compile(rf"\.?{re.escape(stem(name))}\.{job}\.[A-Za-z0-9_-]+\.(png|npy)(\.tmp)?")


def read_claimed(path: str, job: str, max_bytes: int) -> bytes:
    """The bytes of a claimed regular file; refuses anything else without blocking on it."""
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: O_NOFOLLOW refused to open its target
            raise BadRequest(f"{name}: a symlink; drop the file itself, never a link") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadRequest(f"{name}: {_kind(st.st_mode)}, not a regular file; drop files only")
        if job_id(st) != job:
            raise SourceError(f"{name}: replaced while being claimed; drop it again")
        if st.st_size > max_bytes:
            raise TooLarge(f"{name}: {st.st_size} bytes is over zmq.max_frame_bytes ({max_bytes})")
        chunks, left = [], max_bytes + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:  # grew after fstat
        raise TooLarge(f"{name}: over zmq.max_frame_bytes ({max_bytes})")
    return data


def _kind(mode: int) -> str:
    for test, what in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def refuse_unless_regular(name: str, st: os.stat_result) -> None:
    """Before any open: links, FIFOs, devices and directories are refused unread."""
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(f"{name}: {_kind(st.st_mode)}, not a regular file; drop files only")


def decode_dropped(name: str, data: bytes, max_pixels: int) -> Any:
    """RGB uint8 from a dropped file's bytes, with the request limits.

    Every accepted format's header (PNG, JPEG, BMP, TIFF, WebP, PNM) is checked for its pixel
    count before anything is decoded, so a decode bomb is refused without being inflated.
    """
    from edged.wire.payloads import decode_image

    if not data:
        raise BadRequest(f"{name}: empty file")
    try:
        return decode_image(name, data, "any", channels=3, max_pixels=max_pixels)
    except EdgedError as exc:  # the wire's wording ("payload 'x': ...") named for a file
        message = str(exc).removeprefix(f"payload {name!r}").lstrip(": ")
        raise type(exc)(f"{name}: {message}") from None


def as_input_error(name: str, exc: BaseException) -> EdgedError:
    """Any failure on one input as the EdgedError its error record carries."""
    if isinstance(exc, EdgedError):
        return exc
    if isinstance(exc, MemoryError):
        return TooLarge(f"{name}: out of memory decoding it; drop a smaller image")
    if isinstance(exc, OSError):
        return SourceError(f"{name}: cannot read: {exc.strerror or exc}; check the file")
    first = str(exc).strip().splitlines()[-1:] or [""]
    return BadRequest(f"{name}: cannot decode ({type(exc).__name__}: {first[0][:200]})")
