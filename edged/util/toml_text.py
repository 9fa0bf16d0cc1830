"""Writing TOML: the one writer for manifests (``edged.models.catalog``) and daemon configs.

Python reads TOML (``tomllib``) but does not write it; edged writes only simple documents
(scalars, lists, inline tables, ``[table]`` and ``[[array]]`` sections), so this small writer
serves instead of a dependency. Values round-trip through ``tomllib``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

__all__ = ["toml_document", "toml_key", "toml_table", "toml_value"]


def toml_value(value: object) -> str:
    """One value: bool, int, float, str, path, list/tuple of values, dict (inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        # repr keeps every digit; TOML spells the non-finite ones inf, -inf and nan.
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted key."""
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def toml_table(data: Mapping[str, Any]) -> list[str]:
    """``key = value`` lines; None values are left out (TOML has no null)."""
    return [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if v is not None]


def toml_document(
    top: Mapping[str, Any],
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    arrays: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> str:
    """Top-level keys, then ``[name]`` tables, then ``[[name]]`` array-of-tables entries."""
    lines = toml_table(top)
    for name, table in (tables or {}).items():
        lines += [f"[{toml_key(name)}]", *toml_table(table)]
    for name, entries in (arrays or {}).items():
        for entry in entries:
            lines += [f"[[{toml_key(name)}]]", *toml_table(entry)]
    return "\n".join(lines) + "\n"
