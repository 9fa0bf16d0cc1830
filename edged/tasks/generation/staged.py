"""Residency of generation components under the memory budget, and the prompt-embedding cache.

``resident``: text encoder, UNet and decoder stay loaded between requests (fastest).
``staged``:   each component is loaded, used and evicted before the next one loads, so peak
              memory is the largest single component instead of their sum.
``auto``:     resident when the budget holds all components' estimates together, else staged.

Components go through the engine's memory pool (``engine.pool.acquire``) when it has one, so
generation competes fairly with the vision models; without a pool a small local store applies
the same budget rule.
"""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, MemoryBudgetExceeded
from edged.log import get_logger
from edged.memory import malloc_trim
from edged.runtime import config_for, open_session
from edged.runtime.base import Session
from edged.schema import format_bytes
from edged.util.lru import LRU

if TYPE_CHECKING:
    from edged.engine import Engine
    from edged.tasks.generation.lora import LoraChoice

log = get_logger("generation.staged")
F32 = npt.NDArray[np.float32]
STRATEGIES = ("auto", "resident", "staged")
# Working memory a component needs on top of its weights for a 512x512 image (activations,
# ORT scratch), scaled by pixel count for other sizes: from `edged bench generation` on the
# full-size SD-Turbo architecture, rounded up. The text encoder's does not depend on size.
# Working memory a component needs on top of the weights it reads, for a 512x512 image
# (activations, ORT scratch), scaled by pixel count for other sizes (not the text encoder's):
# (measured on the full-size SD-Turbo architecture and rounded up, x read weights), the
# smaller applies. Activations grow with a model's width, weights with its square, so the
# ratio keeps tiny test graphs from being charged a full-size model's activations.
ACTIVATION_BYTES: dict[str, tuple[int, float]] = {
    "text_encoder": (64 << 20, 0.25),
    "unet": (512 << 20, 0.6),
    # A part of the 64x64 levels: ~40-90 MB above its weights at 512x512 (measured per part).
    "unet_part": (96 << 20, 2.0),
    "decoder": (1 << 30, 5.5),
    # TAESD-class decoders (vaelight, taesd, taef2): ~0.9-1.1 kB per output pixel measured.
    "light_decoder": (288 << 20, 1e6),
}
REFERENCE_PIXELS = 512 * 512
_MAX_EMBEDDINGS = 64


def weights_bytes(path: Path) -> int:
    """The model file plus its external-data side files."""
    total = path.stat().st_size
    for side in path.parent.glob(f"{path.name}.data*"):
        total += side.stat().st_size
    return total


def _kind(component: str) -> str:
    if component.startswith("decoder"):
        return "decoder" if component == "decoder:vae" else "light_decoder"
    if component.startswith("unet:part"):
        return "unet_part"
    # SDXL's second CLIP, and text encoders in parts.
    return "text_encoder" if component.startswith("text_encoder") else component


def work_bytes(component: str, weights: int, pixels: int = REFERENCE_PIXELS) -> int:
    """Working memory (activations, ORT scratch) of a component reading ``weights`` bytes."""
    kind = _kind(component)
    cap, ratio = ACTIVATION_BYTES.get(kind, (64 << 20, 1.0))
    work = min(cap, int(weights * ratio))
    return work if kind == "text_encoder" else work * pixels // REFERENCE_PIXELS


def estimate_bytes(component: str, path: Path, pixels: int = REFERENCE_PIXELS) -> int:
    """Weights a run reads plus working memory of one component for an image of ``pixels``."""
    weights = read_bytes(path)
    return weights + work_bytes(component, weights, pixels)


def part_need(component: str, weights: int, pixels: int) -> int:
    """What a part of ``weights`` bytes needs: the pool's size rule or weights + work."""
    from edged.pool.budget import MIN_PEAK_FACTOR

    own = weights + work_bytes(f"{component}:part0", weights, pixels)
    return max(int(weights * MIN_PEAK_FACTOR), own)


def read_bytes(path: Path) -> int:
    """Bytes of ``path`` one run brings into memory: the graph, and the weights minus the
    rows of embedding tables it does not gather (onnxruntime maps external data, so a
    CLIP token table of 49408 rows costs the ~77 rows a prompt reads, not 200 MB)."""
    from edged.tasks.generation.weights import read_bytes as read

    return read(path)


class EmbeddingCache:
    """LRU of prompt embeddings keyed by (model, prompt) hash: a repeated prompt skips CLIP."""

    def __init__(self, model_key: str, store: LRU[str, F32]) -> None:
        self._model_key = model_key
        self._store = store
        self.hits = 0
        self.misses = 0

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self._model_key}\0{prompt}".encode()).hexdigest()

    def get_or_compute(self, prompt: str, compute: Callable[[str], F32]) -> F32:
        value, hit = self._store.get_or_compute(self.key(prompt), lambda: compute(prompt))
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        return value


_EMBED_STORE: LRU[str, F32] = LRU(_MAX_EMBEDDINGS)


def clear_embedding_cache() -> None:
    """Forget every cached prompt embedding (tests, and after swapping a text encoder)."""
    _EMBED_STORE.clear()


def embedding_cache(model_key: str) -> EmbeddingCache:
    """The process-wide embedding cache seen through one model's key."""
    return EmbeddingCache(model_key, _EMBED_STORE)


class _LocalStore:
    """Budgeted session store used when the engine has no memory pool."""

    def __init__(self) -> None:
        self.sessions: OrderedDict[str, tuple[Session, int]] = OrderedDict()
        self.lock = threading.RLock()

    def held_bytes(self) -> int:
        return sum(size for _, size in self.sessions.values())

    def evict(self, key: str) -> None:
        with self.lock:
            item = self.sessions.pop(key, None)
        if item is not None:
            item[0].close()


_LOCAL_STORES: weakref.WeakKeyDictionary[Any, _LocalStore] = weakref.WeakKeyDictionary()
_NO_ENGINE_STORE = _LocalStore()


class Residency:
    """Loads components through the pool (or a local store) under one strategy."""

    def __init__(
        self,
        engine: Engine | None,
        root: Path,
        *,
        strategy: str = "auto",
        budget: int | None = None,
        threads: int | None = None,
        components: dict[str, Path] | None = None,
        pixels: int = REFERENCE_PIXELS,
    ) -> None:
        if strategy not in STRATEGIES:
            raise BadRequest(f"residency {strategy!r}: one of {', '.join(STRATEGIES)}")
        self.engine = engine
        self.root = root
        self.pool: Any = getattr(engine, "pool", None) if engine is not None else None
        self.budget = budget if budget is not None else _pool_budget(self.pool, engine)
        self.threads = threads
        self.pixels = pixels
        self.lora: LoraChoice | None = None
        """The adapter and scale merged into UNet weights at load; set per request."""
        self.strategy = self._resolve(strategy, components or {})
        self._local = (
            _LOCAL_STORES.setdefault(engine, _LocalStore())
            if engine is not None
            else _NO_ENGINE_STORE
        )
        self._used: dict[str, str] = {}

    def need(self, component: str, path: Path, *, tile: int | None = None) -> int:
        """Bytes ``component`` needs loaded and running: the pool's admission need (measured
        load peak, else read bytes x MIN_PEAK_FACTOR) or weights read + working memory,
        whichever is larger. ``tile``: a decoder's latent tile (0 = the whole image).

        The one estimator behind residency, UNet parts, decoder tiles and the advice in
        budget errors (``edged.tasks.generation.budget``).
        """
        pixels = self.pixels if not tile else min(self.pixels, (8 * tile) ** 2)
        weights = read_bytes(path)
        own = weights + work_bytes(component, weights, pixels)
        if self.pool is None:
            return own
        least, _, _ = self.pool.load_need(self.key(component, path), weights)
        return max(int(least), own)

    def _resolve(self, strategy: str, components: dict[str, Path]) -> str:
        if strategy != "auto":
            return strategy
        need = sum(self.need(n, p) for n, p in components.items())
        if self.budget is None or need <= self.budget:
            return "resident"
        log.info("generation_staged", need=format_bytes(need), budget=format_bytes(self.budget))
        return "staged"

    def key(self, component: str, path: Path) -> str:
        key = f"generation:{self.root}:{component}:{path}"
        if self.lora is not None and component.startswith("unet"):
            key += f":lora={self.lora.adapter.sha256[:16]}@{self.lora.scale!r}"
        return key

    def _open(self, path: Path, component: str = "") -> Session:
        # No zero-input warm-up: a UNet warm-up costs a full step, and staged loads are used once.
        # No weight pre-packing: external-data weights then stay mapped from the file instead
        # of being copied (docs/generation.md has the measurement).
        config = config_for("onnx:cpu", threads=self.threads).model_copy(update={"prepack": False})
        if self.lora is not None and component.startswith("unet"):
            path = self.lora.sidecar(path, self.root / "unet" / "model.onnx")
        return open_session(config, path, warmup=False)

    @contextmanager
    def use(self, component: str, path: Path) -> Iterator[Session]:
        """Hold ``component`` loaded for the block (pinned against eviction while held).

        With a pool, admission is the pool's (it charges measured load costs); the local
        store refuses a component whose weights plus working memory exceed the budget.
        """
        key = self.key(component, path)
        self._used[component] = key
        if self.pool is not None:
            with self.pool.acquire(
                key, lambda: self._pool_loaded(component, path), estimate_bytes=read_bytes(path)
            ) as loaded:
                yield loaded.session
            return
        estimate = self.need(component, path)
        if self.budget is not None and estimate > self.budget:
            from edged.tasks.generation.budget import advise_bytes

            raise MemoryBudgetExceeded(
                f"{component} of {self.root.name} needs ~{format_bytes(estimate)} but the "
                f"memory budget is {format_bytes(self.budget)}: set memory_budget >= "
                f"{advise_bytes(estimate)}"
            )
        with self._local.lock:
            yield self._local_acquire(key, component, path, estimate)

    def _local_acquire(self, key: str, component: str, path: Path, estimate: int) -> Session:
        store = self._local
        if key in store.sessions:
            store.sessions.move_to_end(key)
            return store.sessions[key][0]
        while (
            store.sessions
            and self.budget is not None
            and (store.held_bytes() + estimate > self.budget)
        ):
            store.evict(next(iter(store.sessions)))
        session = self._open(path, component)
        store.sessions[key] = (session, estimate)
        return session

    def _pool_loaded(self, component: str, path: Path) -> Any:
        from edged.models.loader import LoadedModel
        from edged.models.schema import ModelEntry

        # Components can be paths (decoder=/x/taesdxl_decoder.onnx): keep to the name charset.
        name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.root.name}.{component}")
        entry = ModelEntry(
            name=name[-80:],
            task="generation",
            family=f"sd-{component.split(':', maxsplit=1)[0]}",
            licence="LicenseRef-user-supplied",
        )
        return LoadedModel(entry, self._open(path, component), "onnx:cpu", path, [])

    def release(self, component: str) -> None:
        """Staged mode: evict the component now that its stage is done."""
        if self.strategy != "staged":
            return
        key = self._used.pop(component, None)
        if key is None:
            return
        if self.pool is not None:
            # No full gc per stage or part: a closed session is freed by reference counting
            # (measured: a collection after it returned 0 bytes), and it cost ~30 ms each,
            # ~0.9 s a request over 28 evictions. The pool still trims the heap.
            self.pool.evict(key, collect=False)
        else:
            self._local.evict(key)
            # Hand the freed heap back now: without it glibc kept ~65 MB of a UNet part's
            # activations after eviction, under every later part (docs/generation.md).
            malloc_trim()

    def held(self) -> list[str]:
        """Keys of components currently loaded in the local store (for stats and tests)."""
        return list(self._local.sessions)

    def close(self) -> None:
        for key in list(self._local.sessions):
            self._local.evict(key)


def _pool_budget(pool: Any, engine: Engine | None) -> int | None:
    for attr in ("budget_bytes", "budget"):
        value = getattr(pool, attr, None)
        if isinstance(value, int):
            return value
    if engine is not None:
        budget = engine.settings.memory_budget
        return int(budget) if budget is not None else None
    return None
