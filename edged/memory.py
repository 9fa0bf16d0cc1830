"""Process memory as the kernel sees it: RSS/PSS/VmHWM, the cgroup limit, and giving memory back.

The pool measures what a model really costs (RSS delta around load + warm-up) rather than
guessing from file sizes, so these readers must be cheap: ``rss_bytes`` reads one line of
``/proc/self/statm`` (about 10 us) and is what the peak sampler polls every few ms.

Why ``malloc_trim``: glibc keeps freed heap pages for reuse, so after an onnxruntime session
is destroyed RSS stays up by the whole model (measured: +180 MB after closing
realesrgan-x4plus). ``malloc_trim(0)`` hands those pages back (measured residual < 10 MB
after 80 load/unload cycles of 100-400 MB models, see docs/memory.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_UNLIMITED = 1 << 60
"""cgroup v1 reports "no limit" as a huge page-rounded number (9223372036854771712)."""


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm`` (cheap enough to poll)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE


@dataclass(frozen=True)
class MemorySnapshot:
    """One reading of ``/proc/self/status`` (+ PSS from ``smaps_rollup`` where the kernel has it)."""

    rss: int
    hwm: int
    anon: int
    file: int
    pss: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "rss_bytes": self.rss,
            "hwm_bytes": self.hwm,
            "anon_bytes": self.anon,
            "file_bytes": self.file,
            "pss_bytes": self.pss,
        }


def kb_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """The ``kB`` fields ``names`` of a /proc status-style file, in bytes (missing ones left out)."""
    found: dict[str, int] = {}
    try:
        with path.open() as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in names:
                    found[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return found
    return found


def pss_bytes() -> int | None:
    """Proportional set size (shared pages split between sharers); None where unavailable."""
    return kb_fields(Path("/proc/self/smaps_rollup"), ("Pss",)).get("Pss")


def snapshot(*, with_pss: bool = True) -> MemorySnapshot:
    """RSS, peak RSS (VmHWM), anonymous and file-backed RSS, and optionally PSS."""
    names = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    fields = kb_fields(Path("/proc/self/status"), names)
    rss = fields.get("VmRSS") or rss_bytes()
    return MemorySnapshot(
        rss=rss,
        hwm=fields.get("VmHWM", rss),
        anon=fields.get("RssAnon", 0),
        file=fields.get("RssFile", 0),
        pss=pss_bytes() if with_pss else None,
    )


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ giving memory back

_trim_fn: Callable[[int], int] | None = None
_trim_looked_up = False
_trim_lock = threading.Lock()


def _lookup_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` or None (musl, macOS): looked up once, on first use."""
    global _trim_fn, _trim_looked_up  # noqa: PLW0603 - one lazy lookup per process
    with _trim_lock:
        if not _trim_looked_up:
            _trim_looked_up = True
            name = ctypes.util.find_library("c") or "libc.so.6"
            try:
                fn = ctypes.CDLL(name).malloc_trim
            except (OSError, AttributeError):
                fn = None
            if fn is not None:
                fn.argtypes = [ctypes.c_size_t]
                fn.restype = ctypes.c_int
            _trim_fn = fn
    return _trim_fn


def malloc_trim() -> bool:
    """Return free heap pages to the kernel; True if glibc did release something."""
    fn = _lookup_malloc_trim()
    return bool(fn(0)) if fn is not None else False


def release_memory(*, collect: bool = True) -> int:
    """gc (unless ``collect=False``) + malloc_trim after unloading a model; returns the RSS
    drop in bytes (may be 0)."""
    before = rss_bytes()
    if collect:
        gc.collect()
    malloc_trim()
    return max(0, before - rss_bytes())


# ------------------------------------------------------------------ cgroup limit


@dataclass(frozen=True)
class CgroupMemory:
    """The memory limit and usage of this process's cgroup (tightest limit up the tree)."""

    version: int
    path: Path
    max: int | None
    current: int | None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _mounts(root: Path) -> dict[str, tuple[Path, str]]:
    """Controller ("memory" or "cgroup2") -> (mount point under root, mount root)."""
    found: dict[str, tuple[Path, str]] = {}
    try:
        lines = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        pre, sep, post = line.partition(" - ")
        fields, extra = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(extra) < 3:
            continue
        point = root / fields[4].lstrip("/")
        if extra[0] == "cgroup2":
            found.setdefault("cgroup2", (point, fields[3]))
        elif extra[0] == "cgroup" and "memory" in extra[2].split(","):
            found["memory"] = (point, fields[3])
    return found


def _cgroup_dir(mount: tuple[Path, str], rel: str) -> Path:
    point, mount_root = mount
    if mount_root != "/" and rel.startswith(mount_root):
        rel = rel[len(mount_root) :]
    candidate = point / rel.lstrip("/")
    # With a cgroup namespace the path may not be visible: the mount itself is our cgroup.
    return candidate if candidate.is_dir() else point


def _tightest(start: Path, stop: Path, name: str) -> int | None:
    limits = []
    path = start
    while True:
        value = _read_int(path / name)
        if value is not None:
            limits.append(value)
        if path == stop or stop not in path.parents:
            break
        path = path.parent
    return min(limits) if limits else None


def read_cgroup_memory(root: Path = Path("/")) -> CgroupMemory | None:
    """Limit/usage of this process's memory cgroup (v2 preferred, v1 fallback); None if none.

    ``root`` lets tests point at a fake ``proc/`` + ``sys/fs/cgroup`` tree on disk.
    """
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = {c: p for _, c, p in (ln.split(":", 2) for ln in lines if ln.count(":") >= 2)}
    mounts = _mounts(root)
    if "memory" in mounts and "memory" in rel:
        path = _cgroup_dir(mounts["memory"], rel["memory"])
        limit = _tightest(path, mounts["memory"][0], "memory.limit_in_bytes")
        return CgroupMemory(1, path, limit, _read_int(path / "memory.usage_in_bytes"))
    if "cgroup2" in mounts and "" in rel:
        path = _cgroup_dir(mounts["cgroup2"], rel[""])
        if (path / "memory.current").exists() or (path / "memory.max").exists():
            limit = _tightest(path, mounts["cgroup2"][0], "memory.max")
            return CgroupMemory(2, path, limit, _read_int(path / "memory.current"))
    return None


# ------------------------------------------------------------------ peak sampling


class PeakSampler:
    """A background thread polling RSS every ``interval_s``; tracks the peak and the samples over a limit.

    Transient peaks (protobuf bytes + prepacked weights during an onnxruntime load reach about
    2x the file size) last tens of ms, so the default 5 ms period catches them; VmHWM is the
    kernel's exact peak and is read as a cross-check.
    """

    def __init__(self, interval_s: float = 0.005, *, limit: int | None = None) -> None:
        self.interval_s = interval_s
        self.limit = limit
        self.peak = 0
        self.samples = 0
        self.over_limit = 0
        self.worst_over = 0  # bytes of the highest sample above the limit
        self._mark_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakSampler:
        if self._thread is None:
            self.peak = self._mark_peak = rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="edged-rss", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> int:
        """Stop the thread; returns the peak seen."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._sample()
        return self.peak

    def mark(self) -> None:
        """Start a new window for ``peak_since_mark`` (the overall peak is kept)."""
        self._mark_peak = rss_bytes()

    def peak_since_mark(self) -> int:
        self._sample()
        return self._mark_peak

    def _sample(self) -> None:
        value = rss_bytes()
        self.samples += 1
        self.peak = max(self.peak, value)
        self._mark_peak = max(self._mark_peak, value)
        if self.limit is not None and value > self.limit:
            self.over_limit += 1
            self.worst_over = max(self.worst_over, value - self.limit)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_settled(timeout_s: float = 0.2, interval_s: float = 0.02) -> int:
    """RSS once two consecutive readings agree (freed pages can take a moment to show)."""
    deadline = time.monotonic() + timeout_s
    last = rss_bytes()
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = rss_bytes()
        if abs(now - last) < _PAGE * 16:
            return now
        last = now
    return last


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_allocator(mmap_threshold: int = 4 << 20, trim_threshold: int = 16 << 20) -> bool:
    """Serve allocations >= ``mmap_threshold`` with mmap, always; True if glibc accepted.

    glibc raises its mmap threshold dynamically (up to 32 MB) each time a mmapped block is
    freed; after the first model unload, the next model's weight buffers come from the heap,
    where freed load buffers linger until a trim: measured load peaks went from 2x to 3x the
    file size. A fixed threshold keeps big buffers in mmap, returned the moment they are freed.
    Process-wide and idempotent; called by the pool, never at import.
    """
    global _tuned  # noqa: PLW0603 - once per process
    if _tuned:
        return True
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    # Fixing the mmap threshold also freezes the trim threshold at 128 KiB, so every frame's
    # temporaries went back to the kernel and were faulted in again (selfie Engine.run 8.4 ms
    # -> 3.7 ms with this). Heap tops up to 16 MiB may stay; the pool still malloc_trim()s
    # after every eviction, which is when memory must really return.
    mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return _tuned
