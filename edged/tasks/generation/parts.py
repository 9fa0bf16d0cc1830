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


class PartedSession:
    """Session-like: ``run`` feeds the parts in order through ``residency`` (UNet or text
    encoder: ``component`` names them ``{component}:part{i}``)."""

    def __init__(self, manifest: Manifest, residency: Residency, component: str = "unet") -> None:
        self.manifest = manifest
        self.residency = residency
        self.component = component
        self.backend = "onnx:cpu"
        self.inputs = _specs(manifest.inputs)
        self.outputs = _specs(manifest.outputs)

    def run(self, feeds: Feeds) -> dict[str, Array]:
        env: dict[str, Any] = dict(feeds)
        # Graph outputs stay even when a later part reads them too (SDXL's CLIP: every
        # hidden_states.N is an output and the next layer's input).
        keep = set(feeds) | {o["name"] for o in self.manifest.outputs}
        for index, part in enumerate(self.manifest.parts):
            component = f"{self.component}:part{index}"
            with self.residency.use(component, self.manifest.directory / part.path) as session:
                env.update(session.run({name: env[name] for name in part.inputs}))
            self.residency.release(component)
            for name in part.inputs:  # drop activations no later part reads
                if name not in keep and not _read_later(self.manifest, index, name):
                    env.pop(name, None)
        return {o["name"]: env[o["name"]] for o in self.manifest.outputs}

    def close(self) -> None:
        """Parts belong to the residency; nothing to release here."""

    def resident_bytes(self) -> int | None:
        return None


def _read_later(manifest: Manifest, index: int, name: str) -> bool:
    return any(name in part.inputs for part in manifest.parts[index + 1 :])


PartedUnet = PartedSession


def unet_parts(unet_dir: Path) -> Manifest | None:
    return read_parts(unet_dir / PARTS_DIR)


def wants_parts(model: ModelDir, residency: Residency) -> Manifest | None:
    """The UNet parts to run, or None for the whole UNet (see ``component_parts``)."""
    return component_parts(residency, "unet", model.component("unet"))


def component_parts(residency: Residency, component: str, path: Path) -> Manifest | None:
    """The parts to run, or None for the whole model: the whole model when its need (the
    pool's rule, see ``Residency.need``) fits the budget, else the dir's parts
    (``budget.plan`` refuses first when those do not fit either). With several steps the
    whole UNet loads once, parts once per step, so parts only when they are needed."""
    from edged.tasks.generation.budget import choice

    if residency.budget is None:
        return None
    return choice(residency, component, path, residency.budget)[0]


@contextmanager
def component_session(
    residency: Residency, component: str, path: Path, manifest: Manifest | None = None
) -> Iterator[Session]:
    """``component`` whole (pinned for the block) or in ``manifest``'s parts."""
    if manifest is not None:
        yield PartedSession(manifest, residency, component)
        return
    with residency.use(component, path) as session:
        yield session


def unet_session(model: ModelDir, residency: Residency, manifest: Manifest | None = None) -> Any:
    """The UNet for the denoising loop: whole or in ``manifest``'s parts."""
    return component_session(residency, "unet", model.component("unet"), manifest)
