"""What fits: the one place generation decides residency, UNet parts and decoder tiles.

Every decision uses ``Residency.need`` (the larger of the memory pool's admission need —
measured load peak, else file size x MIN_PEAK_FACTOR — and weights + working memory), so
nothing is chosen that the pool would refuse. A plan is made before any component loads;
when nothing fits, the error names a setting that does: a split with a computed part count,
or ``memory_budget >=`` the real minimum (rounded up, so applying it works).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edged.errors import MemoryBudgetExceeded
from edged.schema import format_bytes

if TYPE_CHECKING:
    from edged.engine import Engine
    from edged.graph.split import Manifest
    from edged.tasks.generation.pipeline import ModelDir
    from edged.tasks.generation.staged import Residency

__all__ = [
    "DecoderChoice",
    "Plan",
    "advise_bytes",
    "choose_decoder",
    "decoder_tile",
    "parts_for",
    "parts_for_process",
    "plan",
]

PART_SKEW = 1.7
"""Largest part's weights / mean part's: cuts balance weights plus a per-node share
(``edged.graph.split``), so a part with few nodes holds more weights (1.63 measured on the
SD-Turbo UNet in 16 and 24 parts)."""
PROCESS_BYTES = 128 << 20
"""A generation process outside its models (interpreter, numpy, onnxruntime, the tensors
crossing the cuts): 120 MB measured between UNet parts at 512x512."""
TILES = (0, 64, 48, 32, 24, 16)
"""Decoder latent tiles tried, largest first (0 = the whole image)."""
MAX_PARTS = 64


@dataclass(frozen=True)
class Plan:
    """Per-stage choices for one request (all within the budget)."""

    parts: Manifest | None
    """The UNet's parts to run in sequence, or None for the whole UNet."""
    decoder_tile: int
    stage_bytes: dict[str, int]
    """Each stage's need as planned (for logs, meta and the docs' breakdown)."""
    encoder_parts: int = 0
    """Parts the text encoder(s) run in (0 = whole; SDXL: the larger count)."""


def advise_bytes(n: int) -> str:
    """A budget setting >= ``n`` that ``parse_bytes`` reads back (rounded up, never down)."""
    if n >= 1_000_000_000:
        return f"{math.ceil(n / 10_000_000) / 100:.2f}G"
    return f"{math.ceil(n / 1_000_000)}M"


def parts_for(
    residency: Residency, component: str, path: Path, budget: int, nodes: int
) -> int | None:
    """Fewest parts (>= 2) of ``path`` whose largest part would fit ``budget``; None if none."""
    from edged.tasks.generation.staged import part_need

    weights = _weights(path)
    for n in range(2, min(MAX_PARTS, max(2, nodes)) + 1):
        if part_need(component, int(weights * PART_SKEW / n), residency.pixels) <= budget:
            return n
    return None


def parts_for_process(
    component: str, path: Path, budget: int, pixels: int = 512 * 512
) -> int | None:
    """Parts of ``path`` such that a generation process of ``budget`` bytes in all (its
    own ``PROCESS_BYTES`` included) runs one part at a time: ``edged models split --budget``."""
    from edged.tasks.generation.staged import Residency

    room = budget - PROCESS_BYTES
    if room <= 0:
        return None
    residency = Residency(None, path.parent, strategy="staged", budget=room, pixels=pixels)
    return parts_for(residency, component, path, room, _node_count(path))


def _weights(path: Path) -> int:
    from edged.tasks.generation.staged import read_bytes

    return read_bytes(path)


def choice(
    residency: Residency, component: str, path: Path, budget: int
) -> tuple[Manifest | None, int]:
    """(parts or None for the whole model, the stage's need) for ``component`` at ``path``."""
    from edged.graph.split import read_parts
    from edged.tasks.generation.parts import PARTS_DIR

    whole = residency.need(component, path)
    if whole <= budget - PROCESS_BYTES or (residency.strategy == "resident" and whole <= budget):
        return None, whole
    manifest = read_parts(path.parent / PARTS_DIR)
    if manifest is None:
        return None, whole
    need = max(
        residency.need(f"{component}:part{i}", manifest.directory / p.path)
        for i, p in enumerate(manifest.parts)
    )
    # Whole when it leaves the process its own bytes; else the parts, whichever fits: the
    # budget bounds models for the pool, but a board's limit is the whole process.
    if whole <= budget and need > budget:
        return None, whole
    return manifest, need


def decoder_tile(
    residency: Residency, component: str, path: Path, room: int, asked: int | None = None
) -> int:
    """The asked tile, else the largest of ``TILES`` whose decode fits ``room`` (16 at least)."""
    if asked is not None:
        return asked
    for tile in TILES:
        if residency.need(component, path, tile=tile) <= room:
            return tile
    return TILES[-1]


def room_after_process(budget: int) -> int:
    """What a stage may use: the budget less the process's own bytes (all of a small one)."""
    return budget - PROCESS_BYTES if budget > 2 * PROCESS_BYTES else budget


@dataclass(frozen=True)
class DecoderChoice:
    name: str
    """A decoder name ``decoders.resolve`` takes: ``vae``, ``tiny``, ``taesd``, ..."""
    reason: str


def choose_decoder(residency: Residency, model: ModelDir, engine: Engine | None) -> DecoderChoice:
    """``decoder=auto``: the dir's VAE when it fits whole in what the process leaves of the
    budget, else a tiny decoder of the model's latent space (the dir's ``vae_decoder_tiny``,
    then the shared ones), else the VAE in tiles (``plan`` sizes them from the same room)."""
    from edged.tasks.generation import decoders

    vae = model.root / "vae_decoder" / "model.onnx"
    budget = residency.budget
    if budget is None:
        return DecoderChoice("vae", "no memory budget: the model's own VAE")
    room = room_after_process(budget)
    if vae.is_file():
        need = residency.need("decoder:vae", vae, tile=0)
        if need <= room:
            return DecoderChoice(
                "vae", f"the VAE whole needs {format_bytes(need)}, {format_bytes(room)} is left"
            )
        why = f"the VAE whole needs {format_bytes(need)} but {format_bytes(room)} is left"
    else:
        why = "the dir has no vae_decoder"
    space: Literal["sd", "sdxl"] = "sdxl" if model.sdxl else "sd"
    found, passed = decoders.tiny_decoders(engine, model.root, space)
    for name, path in found:
        component = f"decoder:{name}"
        need = residency.need(component, path, tile=decoder_tile(residency, component, path, room))
        if need <= room:
            return DecoderChoice(name, f"{why}: tiny decoder {name} ({space.upper()} latents)")
        passed.append(f"{name}: needs {format_bytes(need)} even in tiles")
    tried = "; ".join(passed)
    return DecoderChoice("vae", f"{why} and no tiny decoder fits ({tried}): the VAE in tiles")


def plan(
    model: ModelDir,
    residency: Residency,
    encoders: dict[str, Path],
    decoder: tuple[str, Path],
    asked_tile: int | None,
) -> Plan:
    """Choose parts and tiles under the budget, or refuse with advice that works."""
    budget = residency.budget
    if budget is None:
        tile = 0 if asked_tile is None else asked_tile
        return Plan(None, tile, {})
    needs: dict[str, int] = {}
    encoder_parts = 0
    for name, path in encoders.items():
        parted, needs[name] = choice(residency, name, path, budget)
        encoder_parts = max(encoder_parts, len(parted.parts) if parted is not None else 0)
    manifest, needs["unet"] = choice(residency, "unet", model.component("unet"), budget)
    component, path = decoder
    room = room_after_process(budget)
    tile = decoder_tile(residency, component, path, room, asked_tile)
    if asked_tile is None and residency.strategy == "resident" and tile != 0:
        tile = 0 if residency.need(component, path, tile=0) <= budget else tile
    needs["decoder"] = residency.need(component, path, tile=tile)
    over = {k: v for k, v in needs.items() if v > budget}
    if over:
        raise MemoryBudgetExceeded(_advice(model, residency, needs, over, manifest))
    return Plan(manifest, tile, needs, encoder_parts)


def _advice(
    model: ModelDir,
    residency: Residency,
    needs: dict[str, int],
    over: dict[str, int],
    manifest: Manifest | None,
) -> str:
    budget = residency.budget or 0
    what = ", ".join(f"{k} {format_bytes(v)}" for k, v in over.items())
    head = (
        f"generation with {model.root.name} at {residency.pixels} px does not fit the memory "
        f"budget of {format_bytes(budget)} (needs: {what})"
    )
    minimum = f"memory_budget >= {advise_bytes(max(needs.values()))}"
    splits = [_split_advice(model, residency, name, budget) for name in over]
    if all(splits):
        return f"{head}: {'; '.join(s for s in splits if s)}; or set {minimum}"
    return f"{head}: set {minimum}"


def _split_advice(model: ModelDir, residency: Residency, component: str, budget: int) -> str:
    """``edged models split ...`` with a part count that fits ``budget``, or "" if none does."""
    if not (component == "unet" or component.startswith("text_encoder")):
        return ""
    path = model.component(component)
    n = parts_for(residency, component, path, budget, _node_count(path))
    if n is None:
        return ""
    target = model.root if component == "unet" else path
    return f"split the {component} with `edged models split {target} --parts {n}`"


def _node_count(unet: Path) -> int:
    """Nodes of the UNet graph (a split has at most this many parts); cheap: no weights."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx ships with the quantize/convert/dev extras
        return MAX_PARTS
    return len(onnx.load(str(unet), load_external_data=False).graph.node)
