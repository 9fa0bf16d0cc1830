"""The super-resolution task: family-aware pre/post around a pooled session, tiled.

Families (``ModelEntry.family``):

* ``sr-y`` -- ESPCN / FSRCNN / LapSRN / edged_sr: RGB -> full-range YCrCb (as
  ``cv2.COLOR_RGB2YCrCb``), the model upscales Y/255, chroma is upscaled bicubic, then back to
  RGB uint8.
* ``sr-rgb`` -- Real-ESRGAN (dynamic NCHW RGB 0..1) and XLSR-style fixed-size models.

Tensor layouts come from the session's static shapes where they are unambiguous, else from
the entry's ``InputSpec``/``OutputSpec``. Value ranges come from the specs.

Tiling (``edged.tasks.tiling``) runs every image; one tile when it fits. Knobs, request
``params`` (``edged.tasks.params.SuperresParams``, validated) first, then ``entry.params``:

* ``tile``  -- window side in input pixels, MIN_TILE..MAX_TILE from a request (untiled only
  from a catalogue entry's ``tile = 0``); fixed-size models always use their input size.
* ``halo`` (alias ``overlap``) -- context kept around each tile's core; must be at least the
  receptive-field radius for the tiled result to equal the untiled one.
* ``activation_bytes_per_px`` -- the model's peak activation bytes per input pixel (catalogue
  only, never a request's), used with the memory budget to size tiles of dynamic models.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edged import imaging
from edged.errors import BadRequest, ConfigError
from edged.models.schema import ModelEntry
from edged.runtime.base import Session, TensorSpec
from edged.tasks import sr_memory, tiling
from edged.tasks.base import Image, ProgressFn, TaskRequest, TaskResult
from edged.tasks.params import SuperresParams, params_of

if TYPE_CHECKING:
    from edged.engine import Engine
    from edged.models.loader import LoadedModel

FAMILIES = ("sr-y", "sr-rgb")
DEFAULT_HALO = {"sr-y": 16, "sr-rgb": 20}
"""Receptive-field radius plus margin: ESPCN/FSRCNN 4-6 px, LapSRN ~16, SRVGGNetCompact 18."""


@dataclass(frozen=True)
class Layout:
    """How one model is fed: tensor names, layouts, ranges, scale and fixed size."""

    input_name: str
    input_layout: str
    output_name: str | None
    output_layout: str
    in_range: tuple[float, float]
    out_range: tuple[float, float]
    channels: int
    scale: int
    fixed: tuple[int, int] | None
    bgr: bool


def _layout_from_shape(spec: TensorSpec | None, channels: int, declared: str) -> str:
    """NCHW/NHWC from a static channel dim when only one position matches ``channels``."""
    if spec is None or len(spec.shape) != 4:
        return declared
    c_first, c_last = spec.shape[1] == channels, spec.shape[3] == channels
    if c_first and not c_last:
        return "NCHW"
    if c_last and not c_first:
        return "NHWC"
    return declared


def _spec(specs: tuple[TensorSpec, ...], name: str | None) -> TensorSpec | None:
    if name is None:
        return specs[0] if specs else None
    return next((s for s in specs if s.name == name), None)


def _fixed_size(entry: ModelEntry, spec: TensorSpec | None, layout: str) -> tuple[int, int] | None:
    if entry.input.size != "dynamic":
        return entry.input.size
    if spec is None or len(spec.shape) != 4:
        return None
    h, w = (spec.shape[2], spec.shape[3]) if layout == "NCHW" else (spec.shape[1], spec.shape[2])
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return h, w
    return None


def model_layout(entry: ModelEntry, session: Session) -> Layout:
    """Read names, layouts, ranges, scale and fixed size from the entry and the session."""
    if entry.family not in FAMILIES:
        raise ConfigError(f"model {entry.name!r}: family {entry.family!r} is not one of {FAMILIES}")
    channels = 1 if entry.family == "sr-y" else 3
    in_spec = _spec(session.inputs, entry.input.name)
    if in_spec is None:
        names = ", ".join(s.name for s in session.inputs)
        raise ConfigError(f"model {entry.name!r}: no input {entry.input.name!r} (has {names})")
    out_spec = _spec(session.outputs, entry.output.name)
    in_layout = _layout_from_shape(in_spec, channels, entry.input.layout)
    scale = entry.params.get("scale")
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"model {entry.name!r}: params.scale must be a positive integer")
    return Layout(
        input_name=in_spec.name,
        input_layout=in_layout,
        output_name=out_spec.name if out_spec is not None and entry.output.name else None,
        output_layout=_layout_from_shape(out_spec, channels, entry.output.layout),
        in_range=entry.input.range,
        out_range=entry.output.range,
        channels=channels,
        scale=scale,
        fixed=_fixed_size(entry, in_spec, in_layout),
        bgr=entry.input.color == "BGR",
    )


def tile_fn(session: Session, layout: Layout, run_ms: list[float] | None = None) -> tiling.TileFn:
    """H x W x C float 0..1 window -> sH x sW x C float 0..1, through ``session``.

    ``run_ms`` (one element) accumulates the time spent inside ``session.run``.
    """
    lo, hi = layout.in_range
    olo, ohi = layout.out_range

    def run_one(window: tiling.FloatImage) -> tiling.FloatImage:
        x = window[..., ::-1] if layout.bgr else window
        x = (x * (hi - lo) + lo).astype(np.float32)
        tensor = x.transpose(2, 0, 1)[None] if layout.input_layout == "NCHW" else x[None]
        t0 = time.perf_counter()
        outputs = session.run({layout.input_name: np.ascontiguousarray(tensor)})
        if run_ms is not None:
            run_ms[0] += (time.perf_counter() - t0) * 1e3
        if layout.output_name is not None:
            y = outputs[layout.output_name]
        else:  # LapSRN-style graphs have several outputs: the largest is the final scale.
            y = max(outputs.values(), key=lambda a: a.size)
        y = np.asarray(y, dtype=np.float32)[0]
        y = y.transpose(1, 2, 0) if layout.output_layout == "NCHW" else y
        y = y[..., ::-1] if layout.bgr else y
        return np.ascontiguousarray((y - olo) / (ohi - olo), dtype=np.float32)

    return run_one


def choose_tiling(
    entry: ModelEntry, layout: Layout, params: SuperresParams
) -> tuple[tuple[int, int], int]:
    """(largest window height, width) and halo for this model and request.

    The window is the fixed model size, else the request's or catalogue's ``tile`` as a
    cap (0: none); ``sr_memory.plan`` then sizes it down to what the memory budget has free.

    ``params`` are already validated (bounded, tile >= MIN_TILE); the catalogue entry's own
    ``halo``/``tile``/``activation_bytes_per_px`` apply where the request gives none.
    """
    halo = params.effective_halo
    if halo is None:
        halo = entry.params.get("halo", entry.params.get("overlap", DEFAULT_HALO[entry.family]))
    if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
        raise ConfigError(f"model {entry.name!r}: params.halo must be an integer >= 0")
    if layout.fixed is not None:
        fh, fw = layout.fixed
        return (fh, fw), max(0, min(halo, (min(fh, fw) - 1) // 2))
    tile = params.tile if params.tile is not None else entry.params.get("tile")
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
            raise ConfigError(f"model {entry.name!r}: params.tile must be an integer >= 0")
        side = tile or tiling.MAX_TILE
        return (side, side), halo
    return (tiling.MAX_TILE, tiling.MAX_TILE), halo


def _upscale_y(
    image: Image, fn: tiling.TileFn, tile: tuple[int, int], halo: int, layout: Layout, **kw: Any
) -> Image:
    ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
    y = ycrcb[..., :1].astype(np.float32) / 255.0
    sr_y = tiling.run_tiled(y, fn, tile=tile, halo=halo, fixed=layout.fixed is not None, **kw)
    del y
    h, w = sr_y.shape[:2]
    out_y = _to_uint8(sr_y)[..., 0]
    del sr_y  # in place, then freed: the float plane never coexists with chroma (sr_memory)
    chroma = cv2.resize(ycrcb[..., 1:], (w, h), interpolation=cv2.INTER_CUBIC)
    merged = np.dstack([out_y, chroma])
    del out_y, chroma
    return np.ascontiguousarray(cv2.cvtColor(merged, cv2.COLOR_YCrCb2RGB))


def _to_uint8(values: tiling.FloatImage) -> Image:
    """0..1 floats -> uint8, scaling in place (no float temporaries of the output's size)."""
    values *= 255.0
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def _upscale_rgb(
    image: Image, fn: tiling.TileFn, tile: tuple[int, int], halo: int, layout: Layout, **kw: Any
) -> Image:
    rgb = image.astype(np.float32) / 255.0
    out = tiling.run_tiled(rgb, fn, tile=tile, halo=halo, fixed=layout.fixed is not None, **kw)
    del rgb
    return _to_uint8(out)


def upscale(
    loaded: LoadedModel,
    image: Image,
    params: SuperresParams,
    *,
    engine: Engine | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Image, dict[str, Any]]:
    """Upscale an RGB uint8 image with a loaded SR model; returns (image, meta).

    With ``engine`` the job's working memory is reserved in its budget first and the tiles
    are sized from what is free there (``sr_memory``); without, tiles use the defaults.
    """
    layout = model_layout(loaded.entry, loaded.session)
    cap, halo = choose_tiling(loaded.entry, layout, params)
    height, width = image.shape[:2]
    plan, what, nbytes = sr_memory.plan(
        engine, loaded, layout, size=(height, width), cap=min(cap), halo=halo
    )
    tile, count = plan.tile, plan.tiles

    def on_tile(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total, f"tile {done}/{total}")

    upscaler = _upscale_y if loaded.entry.family == "sr-y" else _upscale_rgb
    run_ms = [0.0]
    fn = sr_memory.metered(engine, loaded, tile_fn(loaded.session, layout, run_ms))
    with sr_memory.reserved(engine, what, nbytes):
        out = upscaler(image, fn, tile, halo, layout, progress=on_tile, cancel=cancel)
    meta = {
        "scale": layout.scale,
        "tile": list(tile) if count > 1 or layout.fixed else None,
        "halo": halo,
        "tiles": count,
        "family": loaded.entry.family,
        "model_ms": round(run_ms[0], 3),
    }
    return out, meta


def run(
    engine: Engine,
    request: TaskRequest,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TaskResult:
    """Upscale ``request.image`` with ``request.model`` (default: edged_sr_x2)."""
    t_start = time.perf_counter()
    if request.image is None:
        raise BadRequest("superres needs an image (--input)")
    image = imaging.as_rgb(request.image)
    name = request.model or engine.default_model("superres")
    entry = engine.catalog.get(name)
    if entry.task != "superres":
        raise BadRequest(f"model {name!r} is a {entry.task} model, not a superres one")
    with engine.acquire(name, backend=request.backend) as loaded:
        t_run = time.perf_counter()
        out, meta = upscale(
            loaded,
            image,
            params_of(request, SuperresParams),
            engine=engine,
            progress=progress,
            cancel=cancel,
        )
        backend = loaded.backend
    t_end = time.perf_counter()
    model_ms = float(meta.pop("model_ms"))
    # pre: validation + model acquire; run: inside session.run; post: colour + tiling work.
    return TaskResult(
        task="superres",
        model=name,
        backend=backend,
        outputs={"image": out},
        meta={**meta, "primary": "image"},
        latency_ms={
            "pre": round((t_run - t_start) * 1e3, 3),
            "run": round(model_ms, 3),
            "post": round(max(0.0, (t_end - t_run) * 1e3 - model_ms), 3),
            "total": round((t_end - t_start) * 1e3, 3),
        },
    )
