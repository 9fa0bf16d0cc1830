"""Shared pydantic building blocks: a strict base model and human-friendly byte sizes."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: object) -> object:
    """Accept ``1500000000``, ``"1.5G"``, ``"1536MiB"``; leave anything else for pydantic to reject."""
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError("expected a byte size like 1500000000, 1.5G or 1536MiB")
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    return value


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
"""Bytes as an int; strings with SI (k, M, G) or IEC (KiB, MiB, GiB) units are converted."""


def format_bytes(n: float) -> str:
    """``1500000000`` -> ``"1.50 GB"``: for messages, never for parsing."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


class StrictModel(BaseModel):
    """Base of every validated structure: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_problems(exc: ValidationError) -> str:
    """Every problem of a failed validation on one line: ``loc.path: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
