"""Task dispatch: task name -> module ``run(engine, request, ...)``.

Each task module picks its family-specific pre/post-processing from the catalogue entry.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

from edged.errors import BadRequest
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult
from edged.tasks.params import validate_params

if TYPE_CHECKING:
    from edged.engine import Engine

TASK_MODULES = {
    "segmentation": "edged.tasks.segmentation",
    "superres": "edged.tasks.superres",
    "inpainting": "edged.tasks.inpainting",
    "generation": "edged.tasks.generation",
    "text_encode": "edged.tasks.generation.text_encode",
}


def run_task(
    engine: Engine,
    request: TaskRequest,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TaskResult:
    module_name = TASK_MODULES.get(request.task)
    if module_name is None:
        raise BadRequest(f"unknown task {request.task!r}; one of {', '.join(TASK_MODULES)}")
    # Validated once, here, where every request enters (CLI, daemon, inbox, streams).
    request.typed_params = validate_params(request.task, request.params)
    module = importlib.import_module(module_name)
    result: TaskResult = module.run(engine, request, progress=progress, cancel=cancel)
    return result
