"""Request fields that can name a file or directory stay inside the configured model dirs.

Images travel inside the message, but generation and text_encode accept a model *directory*
(``model`` or ``params.model_dir``) and ``params.decoder`` may be a ``.onnx`` path: a client of
the request socket must not make the daemon open files elsewhere on the host. Plain
catalogue names pass untouched; anything that is a path (or resolves to an existing one from
the daemon's working directory) must resolve, symlinks followed, inside a ``model_dirs`` entry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from edged.errors import BadRequest
from edged.tasks.base import TaskRequest

DIR_TASKS = frozenset({"generation", "text_encode"})
PATH_PARAMS = ("model_dir", "decoder")
"""Request params that the tasks treat as file-system paths."""


def confine_paths(request: TaskRequest, roots: Sequence[Path]) -> None:
    """Raise BadRequest when a path-valued field of ``request`` leaves ``roots``."""
    fields: list[tuple[str, object]] = [("model", request.model)]
    fields += [(f"params.{k}", request.params[k]) for k in PATH_PARAMS if k in request.params]
    allowed = [Path(os.path.realpath(r)) for r in roots]
    # Only these tasks open a `model` given as a directory; elsewhere it is a catalogue key.
    opens_dirs = request.task in DIR_TASKS
    for name, value in fields:
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string, got {type(value).__name__}")
        if _is_path(value, check_cwd=opens_dirs) and not _inside(value, allowed):
            raise BadRequest(
                f"{name} {value!r} is a path outside the configured model_dirs; "
                "name a catalogued model or put it under a model_dirs entry"
            )


def _is_path(value: str, *, check_cwd: bool) -> bool:
    if value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        return True
    if not check_cwd:
        return False
    try:
        return Path(value).exists()  # relative to the daemon's working directory
    except (OSError, ValueError):
        return True


def _inside(value: str, allowed: list[Path]) -> bool:
    if "\0" in value or not os.path.isabs(value):
        return False
    real = Path(os.path.realpath(value))
    return any(real == root or root in real.parents for root in allowed)
