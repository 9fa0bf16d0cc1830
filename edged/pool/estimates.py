"""What the pool learns and reports: the per-model cost table and process memory figures.

The estimate table is what lets the pool predict a model's cost before loading it: every
load records the measured resident bytes and the transient load peak; the table is saved as
JSON in ``state_dir`` so the next start predicts from real numbers instead of file sizes.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from edged.log import get_logger
from edged.memory import read_cgroup_memory, snapshot

log = get_logger(__name__)
T = TypeVar("T")

ESTIMATES_FILE = "pool-estimates.json"
_VERSION = 1


@dataclass(frozen=True)
class Estimate:
    """Measured cost of one model: resident after load + warm-up, and the load-time peak."""

    resident_bytes: int
    peak_bytes: int
    observations: int


def _blend(old: int, new: int, keep: float = 0.75) -> int:
    """Up at once (never under-budget twice), down slowly (one lucky reading is not a trend)."""
    return new if new >= old else round(keep * old + (1 - keep) * new)


class EstimateTable:
    """Per-model cost estimates, improved by every observation and persisted as JSON.

    Two kinds: a model's load cost (``models``) and its working memory per input pixel
    while it runs (``activations``: RSS peak delta of one run / pixels fed), keyed alike.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._table: dict[str, Estimate] = {}
        self._per_px: dict[str, int] = {}
        if path is not None:
            self._table, self._per_px = self._read(path)

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, Estimate], dict[str, int]]:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            ok = raw.get("version") == _VERSION
            models = raw["models"] if ok else {}
            table = {
                str(k): Estimate(
                    int(v["resident_bytes"]), int(v["peak_bytes"]), int(v["observations"])
                )
                for k, v in models.items()
            }
            per_px = {str(k): int(v) for k, v in (raw.get("activations", {}) if ok else {}).items()}
            return table, per_px
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged table only costs predictions: start afresh, say so, overwrite on save.
            log.warning("pool_estimates_unreadable", path=str(path), error=str(exc))
            return {}, {}

    def activation(self, key: str) -> int | None:
        """Measured working bytes per input pixel of one run of ``key``, or None."""
        with self._lock:
            return self._per_px.get(key)

    def observe_activation(self, key: str, bytes_per_px: int) -> int:
        """Fold one per-pixel measurement in (up at once, down slowly) and save the table."""
        with self._lock:
            old = self._per_px.get(key)
            new = max(1, bytes_per_px if old is None else _blend(old, bytes_per_px))
            self._per_px[key] = new
            self._save_locked()
            return new

    def get(self, key: str) -> Estimate | None:
        with self._lock:
            return self._table.get(key)

    def observe(self, key: str, resident_bytes: int, peak_bytes: int) -> Estimate:
        """Fold one measurement in and save the table."""
        with self._lock:
            old = self._table.get(key)
            new = (
                Estimate(resident_bytes, peak_bytes, 1)
                if old is None
                else Estimate(
                    _blend(old.resident_bytes, resident_bytes),
                    _blend(old.peak_bytes, peak_bytes, keep=0.9),  # peaks vary more
                    old.observations + 1,
                )
            )
            self._table[key] = new
            self._save_locked()
            return new

    def _save_locked(self) -> None:
        if self.path is None:
            return
        payload = {
            "version": _VERSION,
            "models": {k: asdict(v) for k, v in self._table.items()},
            "activations": dict(self._per_px),
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)  # atomic: a crash never leaves half a table
        except OSError as exc:
            log.warning("pool_estimates_not_saved", path=str(self.path), error=str(exc))

    def as_dict(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: asdict(v) for k, v in self._table.items()}


def process_memory() -> dict[str, Any]:
    """RSS/PSS/VmHWM of this process and its cgroup limit/usage: JSON-able."""
    snap = snapshot().as_dict()
    cgroup = read_cgroup_memory()
    return {
        **snap,
        "cgroup_max_bytes": cgroup.max if cgroup else None,
        "cgroup_current_bytes": cgroup.current if cgroup else None,
    }


@dataclass
class Counters:
    """Pool-wide counters since start."""

    loads: int = 0
    evictions: int = 0
    hits: int = 0
    misses: int = 0
    busy: int = 0
    refused: int = 0
    load_errors: int = 0
    load_s: float = 0.0
    peak_misses: int = 0  # load peak above its reservation: the estimate was too low

    def as_dict(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "loads": self.loads,
            "evictions": self.evictions,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
            "busy": self.busy,
            "refused": self.refused,
            "load_errors": self.load_errors,
            "peak_misses": self.peak_misses,
            "load_seconds_total": round(self.load_s, 3),
        }
