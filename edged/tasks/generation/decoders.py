"""Latent decoders: the model's own VAE or a tiny TAESD-class decoder.

Each decoder family declares which latents it understands (channels) and how UNet-space
latents map to its input, so a wrong pairing is refused instead of decoding noise:

- ``vae``      the model dir's ``vae_decoder`` (AutoencoderKL): input = latents / scaling.
- ``vaelight`` VAElight (4 ch, approximate SD-1.x VAE): same unscaled latents as the VAE;
               four outputs at 1x..8x that are summed after resizing to 8x.
- ``taesd``    TAESD (4 ch): takes UNet-space latents directly, image in 0..1.
- ``taesdxl``  TAESDXL: the same for SDXL-class latents (file ``taesdxl_decoder.onnx``).
- ``taef2``    TAEF2 (32 ch, FLUX.2 latents): only for latents of its own family.
- ``tiny``     the model dir's own ``vae_decoder_tiny/model.onnx``: TAESD for SD latents,
               TAESDXL for SDXL's, unless its ``config.json`` names a family
               (``{"edged_decoder": "vaelight"}``).
- ``auto``     (the default) chosen per request from the budget: ``edged.tasks.generation.budget``.

Channels are not enough: SD 1.x/2.x and SDXL latents both have 4, but a decoder trained on
one draws wrong colours from the other, so each family also names its latent space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, LicenceNotAllowed, ModelLoadError, ModelNotFound
from edged.models.catalog import check_licence
from edged.runtime.base import Session

if TYPE_CHECKING:
    from edged.engine import Engine
    from edged.models.schema import ModelEntry

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DecoderFamily:
    name: str
    latent_channels: int
    unscale: bool
    """True: divide UNet latents by the model's VAE scaling factor (0.18215 for SD)."""
    output_range: tuple[float, float]
    combine: Literal["first", "sum"] = "first"
    space: Literal["own", "sd", "sdxl", "flux2"] = "sd"
    """Latents it was trained on; ``own``: the model dir's VAE, right for any model."""


FAMILIES = {
    "vae": DecoderFamily("vae", 4, True, (-1.0, 1.0), space="own"),
    "vaelight": DecoderFamily("vaelight", 4, True, (-1.0, 1.0), "sum"),
    "taesd": DecoderFamily("taesd", 4, False, (0.0, 1.0)),
    "taesdxl": DecoderFamily("taesdxl", 4, False, (0.0, 1.0), space="sdxl"),
    "taef2": DecoderFamily("taef2", 32, False, (0.0, 1.0), space="flux2"),
}
# Catalogue names and families (ModelEntry.family) -> decoder family.
ALIASES = {
    "vaelight_decoder": "vaelight",
    "vae-decoder-vaelight": "vaelight",
    "taef2_decoder": "taef2",
    "taesd_decoder": "taesd",
    "vae-decoder-taesd": "taesd",
    "taesdxl_decoder": "taesdxl",
}


TINY_DIR = "vae_decoder_tiny"
TINY_BY_SPACE: dict[str, tuple[str, ...]] = {
    "sd": ("tiny", "taesd", "vaelight"),
    "sdxl": ("tiny", "taesdxl"),
}
"""Tiny decoders ``auto`` may use for a model's latents, in order of preference: the dir's
own, then shared ones (TAESD-class before the VAElight approximation)."""


def family_named(name: str) -> DecoderFamily:
    key = ALIASES.get(name, name)
    if key not in FAMILIES:
        known = ", ".join(sorted({*FAMILIES, *ALIASES}))
        raise BadRequest(f"unknown decoder {name!r}; one of {known} (or a .onnx path)")
    return FAMILIES[key]


def check_pairing(family: DecoderFamily, latent_channels: int) -> None:
    if family.latent_channels != latent_channels:
        raise BadRequest(
            f"decoder {family.name} takes {family.latent_channels}-channel latents but this "
            f"model makes {latent_channels}; pick a decoder of the model's latent family"
        )


def check_space(family: DecoderFamily, space: Literal["sd", "sdxl"]) -> None:
    """Refuse a decoder trained on other latents than the model's (before any UNet step)."""
    if family.space in ("own", space):
        return
    fix = "decoder=vae or decoder=taesdxl" if space == "sdxl" else "decoder=vae, vaelight or taesd"
    raise BadRequest(
        f"decoder {family.name} was trained on {family.space.upper()} latents but this is an "
        f"{space.upper()}-class model; use {fix}"
    )


def resolve(engine: Engine | None, name: str, model_root: Path) -> tuple[Path, DecoderFamily]:
    """Decoder name -> (onnx path, family). ``vae`` is the model dir's own decoder."""
    if name == "vae":
        path = model_root / "vae_decoder" / "model.onnx"
        if not path.is_file():
            raise ModelNotFound(f"{model_root}: no vae_decoder/model.onnx; pass decoder=vaelight")
        return path, FAMILIES["vae"]
    if name == "tiny":
        path = model_root / TINY_DIR / "model.onnx"
        if not path.is_file():
            raise ModelNotFound(f"{model_root}: no {TINY_DIR}/model.onnx; pass decoder=vae")
        return path, _tiny_family(model_root)
    if name.endswith(".onnx"):
        path = Path(name)
        stem = path.stem
        return _existing(path), family_named(stem if stem in ALIASES else "taesd")
    family = family_named(name)
    stem = name if name in ALIASES else f"{family.name}_decoder"
    return _locate(engine, stem), family


def _tiny_family(model_root: Path) -> DecoderFamily:
    import json

    from edged.tasks.generation.sdxl import is_sdxl

    config = model_root / TINY_DIR / "config.json"
    named = json.loads(config.read_text("utf-8")).get("edged_decoder") if config.is_file() else None
    return family_named(str(named) if named else "taesdxl" if is_sdxl(model_root) else "taesd")


def tiny_decoders(
    engine: Engine | None, model_root: Path, space: Literal["sd", "sdxl"]
) -> tuple[list[tuple[str, Path]], list[str]]:
    """The tiny decoders of ``space``'s latents that are present and allowed, in order of
    preference; and the others with why each was passed over."""
    found: list[tuple[str, Path]] = []
    passed: list[str] = []
    for name in TINY_BY_SPACE[space]:
        try:
            found.append((name, resolve(engine, name, model_root)[0]))
        except ModelNotFound:
            passed.append(f"{name}: not found")
        except LicenceNotAllowed:
            passed.append(f"{name}: licence not allowed")
    return found, passed


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ModelNotFound(f"decoder file {path} does not exist")
    return path


def _locate(engine: Engine | None, stem: str) -> Path:
    """A shared decoder through the catalogue when it knows it, else on the model search path."""
    entry: ModelEntry | None = None
    if engine is not None:
        try:
            entry = engine.catalog.get(stem)
        except ModelNotFound:  # not catalogued: fall back to the search path below
            entry = None
        if entry is not None:  # a catalogued decoder passes the licence gate like any model
            check_licence(entry, engine.settings.allowed_licences)
        for file in entry.files if entry is not None else []:
            located = engine.catalog.locate(file)
            if located is not None and located.suffix == ".onnx":
                return located
        for directory in engine.settings.model_search_path:
            if (directory / f"{stem}.onnx").is_file():
                return directory / f"{stem}.onnx"
    hint = f"; {entry.obtain_hint()}" if entry is not None and entry.files else ""
    raise ModelNotFound(f"decoder {stem}: not found; add {stem}.onnx to a model_dirs entry{hint}")


def decode(session: Session, family: DecoderFamily, latents: F32, scaling: float) -> F32:
    """Latents [B,C,h,w] -> image [B,3,8h,8w] float in 0..1."""
    check_pairing(family, int(latents.shape[1]))
    x = latents / scaling if family.unscale else latents
    outputs = session.run({session.inputs[0].name: x.astype(np.float32)})
    arrays = [np.asarray(outputs[o.name], dtype=np.float32) for o in session.outputs]
    image = arrays[0] if family.combine == "first" else _sum_resized(arrays)
    _check_upscale(family, latents.shape, image.shape)
    lo, hi = family.output_range
    return np.asarray(np.clip((image - lo) / (hi - lo), 0.0, 1.0), dtype=np.float32)


def _check_upscale(family: DecoderFamily, latent: tuple[int, ...], image: tuple[int, ...]) -> None:
    """A decoder of another family than assumed (a VAElight copied into ``vae_decoder_tiny/``
    read as TAESD) makes the wrong size: say so, and how to name it, instead of failing later
    in tile blending. Only SD/SDXL tiny decoders are held to 8x: a model's own VAE may scale
    otherwise (small test configs do), and TAEF2 follows FLUX.2's own layout."""
    want = (latent[-2] * 8, latent[-1] * 8)
    if family.space in ("sd", "sdxl") and tuple(image[-2:]) != want:
        raise ModelLoadError(
            f"decoder {family.name} made {image[-2]}x{image[-1]} from {latent[-2]}x{latent[-1]} "
            f"latents, not {want[0]}x{want[1]}: if it is not {family.name}, name its family in "
            f'{TINY_DIR}/config.json, e.g. {{"edged_decoder": "vaelight"}} '
            f"(one of {', '.join(sorted(FAMILIES))})"
        )


def decode_tiled(
    session: Session,
    family: DecoderFamily,
    latents: F32,
    scaling: float,
    *,
    tile: int = 32,
    overlap: int = 8,
    on_tile: Callable[[int, int], None] | None = None,
) -> F32:
    """Decode overlapping ``tile`` x ``tile`` latent tiles and feather them together.

    Activation memory of a VAE decoder grows with the output area (~1.2 GB for 512x512 on
    SD's VAE); tiles bound it by the tile's area at the cost of ~(tile/stride)^2 more work.
    Group norms see one tile at a time, so seams are possible but faint (OnnxStream and
    diffusers tile the same way).
    """
    _, _, h, w = latents.shape
    if tile <= overlap or (h <= tile and w <= tile):
        image = decode(session, family, latents, scaling)
        if on_tile is not None:
            on_tile(1, 1)
        return image
    out: F32 | None = None
    weight = np.zeros((1, 1, 8 * h, 8 * w), np.float32)
    starts = [(y, x) for y in _starts(h, tile, overlap) for x in _starts(w, tile, overlap)]
    for index, (y, x) in enumerate(starts, 1):
        th, tw = min(tile, h), min(tile, w)
        part = decode(session, family, latents[:, :, y : y + th, x : x + tw], scaling)
        if on_tile is not None:
            on_tile(index, len(starts))
        if out is None:
            out = np.zeros((part.shape[0], 3, 8 * h, 8 * w), np.float32)
        mask = np.outer(_ramp(y, th, h, overlap), _ramp(x, tw, w, overlap))[None, None]
        out[:, :, 8 * y : 8 * (y + th), 8 * x : 8 * (x + tw)] += part * mask
        weight[:, :, 8 * y : 8 * (y + th), 8 * x : 8 * (x + tw)] += mask
    assert out is not None
    return np.asarray(out / np.maximum(weight, 1e-6), dtype=np.float32)


def tile_count(params: Any, tile: int, overlap: int = 8) -> int:
    """How many decoder runs ``decode_tiled`` makes for ``params``' size at ``tile``."""
    h, w = params.height // 8, params.width // 8
    if tile <= overlap or (h <= tile and w <= tile):
        return 1
    return len(_starts(h, tile, overlap)) * len(_starts(w, tile, overlap))


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, tile - overlap))
    return [*starts, n - tile]


def _ramp(start: int, length: int, total: int, overlap: int) -> F32:
    """Per-pixel blend weight along one axis: linear ramps where a tile overlaps a neighbour."""
    ramp = np.ones(8 * length, np.float32)
    width = 8 * overlap
    edge = (np.arange(width, dtype=np.float32) + 0.5) / width
    if start > 0:
        ramp[:width] = edge
    if start + length < total:
        ramp[-width:] = edge[::-1]
    return ramp


def _sum_resized(arrays: list[F32]) -> F32:
    """VAElight: image = sum of its multi-scale outputs, each resized to the largest."""
    import cv2

    big = max(arrays, key=lambda a: a.shape[-1])
    h, w = big.shape[-2:]
    total = np.zeros_like(big)
    for arr in arrays:
        for b in range(arr.shape[0]):
            planes = arr[b].transpose(1, 2, 0)
            resized = cv2.resize(planes, (w, h), interpolation=cv2.INTER_LINEAR)
            total[b] += resized.reshape(h, w, -1).transpose(2, 0, 1)
    return total


def to_uint8(image: F32) -> npt.NDArray[np.uint8]:
    """[1,3,H,W] 0..1 -> H x W x 3 RGB uint8."""
    return np.asarray(image[0].transpose(1, 2, 0) * 255.0 + 0.5, dtype=np.uint8)
