"""The engine: settings + profile + catalogue + pool, and the one entry point for jobs.

``edged infer``, the daemon and the benchmarks all go through ``Engine.run``; tasks get
their sessions from ``Engine.acquire`` so pooling, backend choice and the licence gate are
applied the same way everywhere.

First version: a plain dict cache and a fixed backend chain. The profile, loader and pool
issues replace ``_chain`` and ``_cache`` with the real thing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edged.catalog import Catalog
from edged.catalog_schema import ModelEntry
from edged.config import Settings
from edged.errors import BackendUnavailable, ModelLoadError, ModelNotFound
from edged.runtime import config_for, open_session
from edged.runtime.base import FORMAT_OF_RUNTIME, Session, split_backend
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult

DEFAULT_CHAIN = ["litert:xnnpack", "onnx:cpu", "openvino:cpu"]


@dataclass
class LoadedModel:
    """A session plus what it is and why this backend was chosen."""

    entry: ModelEntry
    session: Session
    backend: str
    path: Path
    reasons: list[str] = field(default_factory=list)


class Engine:
    """Owns the catalogue and loaded models; safe to share between worker threads."""

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog.load(settings.catalog_dirs, settings.model_search_path)
        self._cache: dict[tuple[str, str | None], LoadedModel] = {}
        self._locks: dict[tuple[str, str | None], threading.Lock] = {}
        self._guard = threading.Lock()

    def _chain(self, entry: ModelEntry, backend: str | None) -> list[str]:
        return [backend] if backend else list(DEFAULT_CHAIN)

    def _load(self, entry: ModelEntry, backend: str | None) -> LoadedModel:
        reasons: list[str] = []
        for name in self._chain(entry, backend):
            runtime, _ = split_backend(name)
            files = [f for f in entry.files if f.format in FORMAT_OF_RUNTIME.get(runtime, ())]
            path = next((p for f in files if (p := self.catalog.locate(f)) is not None), None)
            if path is None:
                reasons.append(f"{name}: no {'/'.join(FORMAT_OF_RUNTIME.get(runtime, ()))} file")
                continue
            try:
                session = open_session(config_for(name, threads=self.settings.threads), path)
            except (BackendUnavailable, ModelLoadError, ValueError) as exc:
                reasons.append(f"{name}: {exc}")
                continue
            return LoadedModel(entry, session, name, path, reasons)
        if not entry.files or all(self.catalog.locate(f) is None for f in entry.files):
            raise ModelNotFound(
                f"{entry.name}: no file found; run `edged models fetch {entry.name}`"
            )
        raise ModelLoadError(f"{entry.name}: no backend could load it: {'; '.join(reasons)}")

    @contextmanager
    def acquire(self, model: str, *, backend: str | None = None) -> Iterator[LoadedModel]:
        """Hold a loaded model for the duration of the block (pinned against eviction)."""
        key = (model, backend)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            loaded = self._cache.get(key)
            if loaded is None:
                loaded = self._load(self.catalog.get(model), backend)
                self._cache[key] = loaded
            yield loaded

    def default_model(self, task: str) -> str:
        """The model a task uses when a request names none."""
        defaults = {
            "segmentation": "selfie_segmentation",
            "superres": "edged_sr_x2",
            "inpainting": "opencv_telea",
        }
        if task not in defaults:
            raise ModelNotFound(f"task {task!r} has no default model; pass one with --model")
        return defaults[task]

    def run(
        self,
        request: TaskRequest,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> TaskResult:
        from edged.tasks.registry import run_task

        return run_task(self, request, progress=progress, cancel=cancel)

    def close(self) -> None:
        for loaded in self._cache.values():
            loaded.session.close()
        self._cache.clear()
