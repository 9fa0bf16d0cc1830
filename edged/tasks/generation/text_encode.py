"""The ``text_encode`` task: prompt -> CLIP embeddings, served to boards that run remote CLIP.

Request: ``prompt``; ``model`` (model dir name/path) or params ``model_dir``.
Output ``embeddings`` [1, 77, D] float32 (sent as an npy payload).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from edged.errors import BadRequest
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult
from edged.tasks.generation import encode_text, resolve_model_dir
from edged.tasks.params import TextEncodeParams, params_of

if TYPE_CHECKING:
    from edged.engine import Engine


def run(
    engine: Engine,
    request: TaskRequest,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TaskResult:
    if not request.prompt:
        raise BadRequest("text_encode needs a prompt")
    start = time.perf_counter()
    typed = params_of(request, TextEncodeParams)
    root = resolve_model_dir(engine, typed.model_dir or request.model)
    embeddings = encode_text(engine, request.prompt, root)
    ms = (time.perf_counter() - start) * 1000
    return TaskResult(
        "text_encode",
        request.model or root.name,
        "onnx:cpu",
        {"embeddings": embeddings},
        {"shape": list(embeddings.shape)},
        {"pre": 0.0, "run": ms, "post": 0.0, "total": ms},
    )
