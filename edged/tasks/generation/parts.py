"""The UNet as consecutive parts (``edged models split DIR``), loaded, run and evicted in turn.

Staged residency loads one component at a time, but a whole UNet is still the largest stage:
every weight is touched during a step, on top of the step's activations. When the model dir
has ``unet/parts/parts.json`` and the whole UNet does not fit the budget, each UNet evaluation
runs part by part, each part loaded through the memory pool and evicted before the next: the
peak is the largest part plus the tensors crossing the cuts. Measured on the full-size
SD-Turbo UNet (fused attention, int8, 512x512): peak 1.30 GB whole -> 0.55 GB in 4 parts, at
the same speed for one step (docs/generation.md). With several steps every part is loaded
once per step, which costs its load time per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.graph.split import Manifest, read_parts
from edged.runtime.base import Array, Feeds, Session, TensorSpec

if TYPE_CHECKING:
    from edged.tasks.generation.pipeline import ModelDir
    from edged.tasks.generation.staged import Residency

PARTS_DIR = "parts"


def _specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in items)


class PartedUnet:
    """Session-like: ``run`` feeds the parts in order through ``residency``."""

    def __init__(self, manifest: Manifest, residency: Residency) -> None:
        self.manifest = manifest
        self.residency = residency
        self.backend = "onnx:cpu"
        self.inputs = _specs(manifest.inputs)
        self.outputs = _specs(manifest.outputs)

    def run(self, feeds: Feeds) -> dict[str, Array]:
        env: dict[str, Any] = dict(feeds)
        for index, part in enumerate(self.manifest.parts):
            component = f"unet:part{index}"
            with self.residency.use(component, self.manifest.directory / part.path) as session:
                env.update(session.run({name: env[name] for name in part.inputs}))
            self.residency.release(component)
            for name in part.inputs:  # drop activations no later part reads
                if name not in feeds and not _read_later(self.manifest, index, name):
                    env.pop(name, None)
        return {o["name"]: env[o["name"]] for o in self.manifest.outputs}

    def close(self) -> None:
        """Parts belong to the residency; nothing to release here."""

    def resident_bytes(self) -> int | None:
        return None


def _read_later(manifest: Manifest, index: int, name: str) -> bool:
    return any(name in part.inputs for part in manifest.parts[index + 1 :])


def unet_parts(unet_dir: Path) -> Manifest | None:
    return read_parts(unet_dir / PARTS_DIR)


def wants_parts(model: ModelDir, residency: Residency) -> Manifest | None:
    """The parts to run, or None for the whole UNet.

    Parts only in staged residency, and only when the whole UNet (weights + working memory)
    would not fit the budget: with several steps the whole UNet loads once, parts once per step.
    """
    from edged.tasks.generation.staged import estimate_bytes

    if residency.strategy != "staged":
        return None
    manifest = unet_parts(model.component("unet").parent)
    if manifest is None:
        return None
    whole = estimate_bytes("unet", model.component("unet"), residency.pixels)
    if residency.budget is not None and whole <= residency.budget:
        return None
    return manifest


@contextmanager
def unet_session(model: ModelDir, residency: Residency) -> Iterator[Session]:
    """The UNet for the denoising loop: whole (pinned for all steps) or in parts."""
    manifest = wants_parts(model, residency)
    if manifest is not None:
        yield PartedUnet(manifest, residency)
        return
    with residency.use("unet", model.component("unet")) as session:
        yield session
