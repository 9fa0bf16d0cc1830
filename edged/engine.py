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
from contextvars import ContextVar
from typing import Any

from edged.config import Settings
from edged.errors import BackendUnavailable, BadRequest, ModelNotFound
from edged.models.catalog import Catalog
from edged.models.loader import LoadedModel as LoadedModel  # noqa: PLC0414 - explicit re-export (mypy strict) for callers that import it from here
from edged.models.loader import load_model
from edged.models.schema import ModelEntry
from edged.pool.model_pool import ModelPool
from edged.profiles import ProfileChoice, choose
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult

# A context variable rather than a parameter: tasks reach ``Engine.acquire`` through their own
# code paths, and the scheduler's worker is the one place that knows which copy a job may use.
_REPLICA: ContextVar[tuple[int, int]] = ContextVar("edged_replica", default=(0, 1))


@contextmanager
def replica(index: int, count: int) -> Iterator[None]:
    """Jobs run in this block use copy ``index`` of ``count`` of every model they acquire.

    Sessions are not thread-safe, so frames of one stream processed at once each need their
    own copy; ``count == 1`` is the one shared copy every other job uses.
    """
    if not 0 <= index < count:
        raise ValueError(f"replica index {index} outside 0..{count - 1}")
    token = _REPLICA.set((index, count))
    try:
        yield
    finally:
        _REPLICA.reset(token)


def current_replica() -> tuple[int, int]:
    """``(index, count)`` of the model copy jobs on this thread use now; ``(0, 1)`` by default."""
    return _REPLICA.get()


def check_backend(backend: str) -> None:
    """A forced backend must be one edged knows: a typo is the client's ``bad_request``
    naming the known backends, not an ``internal`` load failure."""
    from edged.runtime import backend_spec

    try:
        backend_spec(backend)
    except BackendUnavailable as exc:
        raise BadRequest(f"{exc}; or send no backend for the profile's choice") from None


class Engine:
    """Owns the catalogue and loaded models; safe to share between worker threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog | None = None,
        profile: ProfileChoice | None = None,
        pool: ModelPool[LoadedModel] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog.from_settings(settings)
        # Probing is cheap (a few small file reads) and its result never changes while we run.
        self.profile = profile or choose(settings)
        self.pool: ModelPool[LoadedModel] = pool or ModelPool.from_settings(
            settings,
            profile_budget=self.profile.profile.memory_budget,
            cgroup_max=self.profile.hardware.cgroup_memory_max,
        )
        # Model name -> largest file size: stat-ing every file on every acquire cost a few
        # % of a 400 fps stream's time for a guess the pool only needs before a first load.
        self._sizes: dict[str, int] = {}

    def _chain(self, entry: ModelEntry, backend: str | None) -> list[str]:
        """A forced backend alone (no silent fallback), else the profile's chain for the task."""
        return [backend] if backend else self.profile.backends(entry.task)

    def _load(self, entry: ModelEntry, backend: str | None, threads: int) -> LoadedModel:
        """Licence gate, file choice, verification, load and warm-up: see edged.models.loader."""
        return load_model(
            entry,
            self.catalog,
            self._chain(entry, backend),
            threads=threads,
            precision=self.profile.profile.precision,
            cache_dir=self.settings.cache_dir,
            settings=self.settings,
            runtime_options=self.profile.profile.runtime_options,
        )

    @contextmanager
    def acquire(self, model: str, *, backend: str | None = None) -> Iterator[LoadedModel]:
        """Hold a loaded model for the duration of the block (pinned against eviction).

        Inside ``replica(i, n)`` with ``n > 1`` the job gets its own copy (pool key
        ``MODEL#rI``) running on the profile's threads divided by ``n``: copies that each
        used every core would only fight over them.
        """
        if backend is not None:
            check_backend(backend)
        entry = self.catalog.get(model)
        key = model if backend is None else f"{model}@{backend}"
        threads = self.profile.threads(self.settings.threads)
        index, count = current_replica()
        if count > 1:
            key, threads = f"{key}#r{index}", max(1, threads // count)
        with self.pool.acquire(
            key,
            lambda: self._load(entry, backend, threads),
            estimate_bytes=self._size_hint(entry),
            pinned=model in self.settings.pinned_models,
        ) as loaded:
            yield loaded

    @contextmanager
    def reserve(self, what: str, nbytes: int) -> Iterator[int]:
        """Reserve a job's working memory in the model budget for the block (see ModelPool.reserve)."""
        with self.pool.reserve(what, nbytes) as held:
            yield held

    def job_room(self) -> tuple[int, int]:
        """(bytes a job could reserve now, bytes it could ever get): tile sizes come from these."""
        return self.pool.job_room()

    def _size_hint(self, entry: ModelEntry) -> int | None:
        """Largest local file of the model: the pool's guess until it has measured it."""
        known = self._sizes.get(entry.name)
        if known is not None:
            return known
        sizes = [p.stat().st_size for f in entry.files if (p := self.catalog.locate(f)) is not None]
        if not sizes:
            return None  # not installed yet: look again next time
        self._sizes[entry.name] = max(sizes)
        return max(sizes)

    def stats(self) -> dict[str, Any]:
        """Pool figures (resident models, loads, evictions, hit rate) plus process memory."""
        from edged.pool.estimates import process_memory

        return {**self.pool.stats(), "process": process_memory()}

    def default_model(self, task: str) -> str:
        """The model a task uses when a request names none."""
        preferred = self.profile.profile.models.get(task)
        if preferred:
            return preferred
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
        self.pool.close()
