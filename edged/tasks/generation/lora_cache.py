"""Merged-LoRA sidecar models under ``{cache_dir}/lora``, a bounded least-recently-used set.

Every distinct (adapter, scale, UNet file) makes one sidecar; without a bound a client
sweeping ``lora_scale`` would fill the disk. Each sidecar is a directory ``<key>/`` holding
the merged ``.onnx`` (targeted tensors inline) plus the base model's external data files.
onnxruntime refuses external data outside the model's directory (absolute paths, ``..`` and
symlinks alike), so those are hard links to the base files, or copies where a link is not
possible (another file system, ``fs.protected_hardlinks``). A directory's mtime is its last
use; on overflow the oldest go. A session already open keeps working when its sidecar is
removed (its files stay open/mapped until closed).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from edged.errors import BadRequest
from edged.log import get_logger

__all__ = ["SidecarCache"]
log = get_logger("generation.lora")
_TMP = ".tmp-"
_LOCK = threading.Lock()


class SidecarCache:
    """``root/<key>/<model name>`` files, at most ``max_entries`` of them."""

    def __init__(self, root: Path, max_entries: int) -> None:
        self.root = root
        self.max_entries = max(1, max_entries)

    def get(self, key: str) -> Path | None:
        """The sidecar of ``key`` (marked used), or None."""
        directory = self.root / key
        found = next((p for p in _models(directory)), None)
        if found is None:
            return None
        try:
            os.utime(directory)
        except OSError:  # pruned by another worker just now: build it again
            return None
        return found

    def put(
        self,
        key: str,
        name: str,
        write: Callable[[Path], None],
        base_dir: Path,
        locations: Iterable[str],
    ) -> Path:
        """Write a sidecar (``write(dest)``) with ``locations`` of ``base_dir`` beside it."""
        tmp = self.root / f"{_TMP}{key}-{uuid.uuid4().hex[:8]}"
        final = self.root / key
        try:
            tmp.mkdir(parents=True)
            for location in sorted(set(locations)):
                _link_or_copy(base_dir, location, tmp)
            write(tmp / name)
            try:
                tmp.rename(final)
            except OSError:  # another worker made the same sidecar first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BadRequest(
                f"lora: cannot write the merged UNet under {self.root} ({exc.strerror}); "
                "cache_dir must be writable for LoRA"
            ) from exc
        self.prune(keep=key)
        return final / name

    def entries(self) -> list[Path]:
        """Finished sidecar directories, least recently used first."""
        try:
            dirs = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(_TMP)]
        except OSError:
            return []
        return sorted(dirs, key=_mtime)

    def prune(self, keep: str | None = None) -> None:
        """Remove the least recently used sidecars beyond ``max_entries``."""
        with _LOCK:
            entries = [p for p in self.entries() if p.name != keep]
            extra = len(entries) + (keep is not None) - self.max_entries
            for old in entries[: max(0, extra)]:
                shutil.rmtree(old, ignore_errors=True)
                log.info("lora_sidecar_evicted", path=str(old))


def _models(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.suffix == ".onnx"]
    except OSError:
        return []


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _link_or_copy(base_dir: Path, location: str, dest_dir: Path) -> None:
    """Make ``dest_dir/location`` the same bytes as ``base_dir/location``."""
    parts = Path(location).parts
    if os.path.isabs(location) or not parts or ".." in parts:
        raise BadRequest(f"UNet external data location {location!r} leaves its directory")
    source, target = base_dir / location, dest_dir / location
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        log.info("lora_sidecar_copied", path=str(source), bytes=target.stat().st_size)
