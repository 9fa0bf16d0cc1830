"""Speed-gate records and the load-time rule "may this precision load here?".

``edged bench quantization`` times fp32 against int8 per (board, model, backend) and writes
the winner to ``{state_dir}/quantization.json`` (``record_speed``); ``precision_allowed``
combines it with the accuracy gate stored on each catalogue file (``edged.quantization.accuracy_gate``).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.config import Settings
from edged.log import get_logger
from edged.models.schema import ModelEntry, ModelFile
from edged.runtime import split_backend

log = get_logger("precision_gate")

RECORDS_FILE = "quantization.json"
QUANTIZED = ("int8", "int4")


# ---------------------------------------------------------------- speed records


def records_path(settings: Settings) -> Path:
    return settings.state_dir / RECORDS_FILE


def read_records(settings: Settings) -> dict[str, Any]:
    path = records_path(settings)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {"version": 1, "speed": {}, "accuracy": {}}
    except (OSError, ValueError) as exc:
        log.warning("quantization_records_unreadable", path=str(path), error=str(exc))
        return {"version": 1, "speed": {}, "accuracy": {}}
    return data if isinstance(data, dict) else {"version": 1, "speed": {}, "accuracy": {}}


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with (settings.state_dir / f".{RECORDS_FILE}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def update_records(settings: Settings, change: Callable[[dict[str, Any]], None]) -> None:
    """Read-modify-write ``quantization.json`` under a lock, atomically replaced."""
    with _locked(settings):
        data = read_records(settings)
        data.setdefault("speed", {})
        data.setdefault("accuracy", {})
        change(data)
        path = records_path(settings)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", "utf-8")
        os.replace(tmp, path)


def record_speed(
    settings: Settings, board: str, model: str, backend: str, result: dict[str, Any]
) -> None:
    def change(data: dict[str, Any]) -> None:
        data["speed"].setdefault(board, {}).setdefault(model, {})[backend] = result

    update_records(settings, change)


_board_cache: dict[tuple[str | None, tuple[str, ...]], str] = {}


def board_key(settings: Settings) -> str:
    """The speed-gate key of this board: the profile in force (forced or auto-selected)."""
    key = (settings.profile, tuple(str(p) for p in settings.profile_dirs))
    if key not in _board_cache:
        if settings.profile:
            _board_cache[key] = settings.profile
        else:
            from edged.profiles import choose

            _board_cache[key] = choose(settings).profile.name
    return _board_cache[key]


# ---------------------------------------------------------------- the load-time decision


@dataclass(frozen=True)
class PrecisionDecision:
    """What precision to ask the loader for on one backend, files never to load, and why."""

    precision: str | None
    reason: str | None = None
    blocked: frozenset[str] = frozenset()


def failed_gate(file: ModelFile) -> bool:
    return file.gate is not None and file.gate.get("passed") is False


def precision_allowed(
    entry: ModelEntry,
    backend: str,
    precision: str | None,
    *,
    settings: Settings,
    board: str | None = None,
) -> PrecisionDecision:
    """The profile's ``precision`` on ``backend`` only where both gates passed on this board.

    Variants whose accuracy gate failed are blocked outright. A quantized precision is kept
    only when its file passed the accuracy gate *and* ``quantization.json`` records it as
    the faster one for (board, model, backend); otherwise fp32 is requested and the reason
    says which gate is missing or failed.
    """
    from edged.runtime import FORMAT_OF_RUNTIME

    runtime, _ = split_backend(backend)
    formats = FORMAT_OF_RUNTIME.get(runtime, ())
    mine = [f for f in entry.files if f.format in formats]
    blocked = frozenset(f.path for f in mine if failed_gate(f))
    if precision not in QUANTIZED:
        return PrecisionDecision(precision, None, blocked)
    wanted = [f for f in mine if f.precision == precision]
    if not wanted:
        return PrecisionDecision(precision, None, blocked)
    passed = [f for f in wanted if f.gate is not None and f.gate.get("passed") is True]
    if not passed:
        failed = [f.gate for f in wanted if f.gate is not None and failed_gate(f)]
        why = (
            f"accuracy gate failed ({failed[0].get('reasons', 'see edged models list')})"
            if failed
            else "accuracy gate not measured (run `edged bench quantization`)"
        )
        return _fallback(precision, why, blocked)
    board = board or board_key(settings)
    speed = read_records(settings).get("speed", {}).get(board, {}).get(entry.name, {})
    timing = speed.get(backend)
    if not isinstance(timing, dict):
        why = f"no speed measurement for board {board} (run `edged bench quantization`)"
        return _fallback(precision, why, blocked)
    if timing.get("winner") != precision:
        why = (
            f"{precision} is not faster on board {board} "
            f"({timing.get(f'{precision}_ms')} ms vs fp32 {timing.get('fp32_ms')} ms)"
        )
        return _fallback(precision, why, blocked)
    return PrecisionDecision(precision, None, blocked)


def _fallback(precision: str, why: str, blocked: frozenset[str]) -> PrecisionDecision:
    return PrecisionDecision("fp32", f"{precision} not used, loading fp32: {why}", blocked)
