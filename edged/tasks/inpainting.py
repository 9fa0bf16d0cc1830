"""The inpainting task: fill the hole of ``request.mask`` (255 = hole) in ``request.image``.

Families (``ModelEntry.family``):

* ``opencv`` -- ``cv2.inpaint`` (``params.method`` telea | ns, ``params.radius``): no model
  file, always available; ``opencv_telea`` is the default model.
* ``lama`` -- LaMa-Dilated: ``image`` [1,3,S,S] RGB in ``input.range`` + mask input
  (``params.mask_input``, 1 = hole by default; ``params.hole_value`` 0 flips it) ->
  [1,3,S,S] RGB in ``output.range``.
* ``migan`` -- MI-GAN generator: one input [1,4,S,S] = [keep - 0.5, image * keep] with the
  image in ``input.range`` (-1..1) and keep = 1 outside the hole -> [1,3,S,S] in
  ``output.range``. (The MI-GAN repo's "pipeline" ONNX, uint8 in/out with its own cropping,
  is not this family.)

Learned families have a fixed S x S input (S = 512 unless the entry or session says
otherwise). For each cluster of holes the task crops a square context window around the
hole (its bounding box grown by ``params.context`` x its extent on each side, at least
``params.min_window`` = S pixels so small holes run at native resolution), slides it inside
the image and clips it where the image is smaller, resizes it to S x S, runs the model,
resizes the result back and pastes ONLY that cluster's hole pixels. Holes whose windows would
overlap are merged into one cluster with one covering window. Every pixel outside the hole
is returned bit-exactly unchanged.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from edged import imaging
from edged.errors import BadRequest, Cancelled, ConfigError, ModelNotFound
from edged.models.schema import ModelEntry
from edged.runtime.base import Array, Feeds, Session
from edged.tasks.base import Image, ProgressFn, TaskRequest, TaskResult
from edged.tasks.inpaint_windows import DEFAULT_CONTEXT, DEFAULT_SIZE, Window, plan_windows
from edged.tasks.params import InpaintingParams, params_of

if TYPE_CHECKING:
    from edged.engine import Engine

FAMILIES = ("opencv", "lama", "migan")
BoolMask = npt.NDArray[np.bool_]
FloatImage = npt.NDArray[np.float32]

BUILTIN = {
    "opencv_telea": {"method": "telea", "radius": 3},
    "opencv_ns": {"method": "ns", "radius": 3},
}
"""cv2.inpaint needs no file: these work even when no manifest names them."""


# ---------------------------------------------------------------- model adapters


@dataclass(frozen=True)
class ModelIO:
    """Names, size and conventions of one learned inpainting model."""

    family: str
    size: tuple[int, int]
    image_input: str
    mask_input: str | None
    output: str | None
    in_range: tuple[float, float]
    out_range: tuple[float, float]
    hole_value: float


def model_io(entry: ModelEntry, session: Session) -> ModelIO:
    names = [s.name for s in session.inputs]
    mask_name: str | None = None
    if entry.family == "lama":
        mask_name = str(entry.params.get("mask_input", "mask"))
        if mask_name not in names:
            raise ConfigError(f"model {entry.name!r}: no mask input {mask_name!r} (has {names})")
    image_name = entry.input.name or next(n for n in names if n != mask_name)
    if image_name not in names:
        raise ConfigError(f"model {entry.name!r}: no input {image_name!r} (has {names})")
    spec = next(s for s in session.inputs if s.name == image_name)
    if entry.input.size != "dynamic":
        size = entry.input.size
    elif len(spec.shape) == 4 and all(isinstance(d, int) and d > 0 for d in spec.shape[2:]):
        size = (int(spec.shape[2]), int(spec.shape[3]))  # type: ignore[arg-type]
    else:
        side = int(entry.params.get("size", DEFAULT_SIZE))
        size = (side, side)
    return ModelIO(
        family=entry.family,
        size=size,
        image_input=image_name,
        mask_input=mask_name,
        output=entry.output.name,
        in_range=entry.input.range,
        out_range=entry.output.range,
        hole_value=float(entry.params.get("hole_value", 1.0)),
    )


def _feeds(io: ModelIO, image: Image, hole: BoolMask) -> dict[str, npt.NDArray[np.float32]]:
    lo, hi = io.in_range
    img = (image.astype(np.float32) / 255.0 * (hi - lo) + lo).transpose(2, 0, 1)[None]
    hole_f = hole.astype(np.float32)[None, None]
    if io.family == "migan":
        keep = 1.0 - hole_f
        packed = np.concatenate([keep - 0.5, img * keep], axis=1)
        return {io.image_input: np.ascontiguousarray(packed, dtype=np.float32)}
    assert io.mask_input is not None
    mask = hole_f if io.hole_value else 1.0 - hole_f
    return {
        io.image_input: np.ascontiguousarray(img, dtype=np.float32),
        io.mask_input: np.ascontiguousarray(mask, dtype=np.float32),
    }


def run_model(session: Session, io: ModelIO, image: Image, hole: BoolMask) -> FloatImage:
    """S x S RGB uint8 + hole -> S x S x 3 float 0..255 (unclipped, unrounded)."""
    outputs = session.run(_feeds(io, image, hole))
    out = outputs[io.output] if io.output else next(iter(outputs.values()))
    olo, ohi = io.out_range
    rgb = np.asarray(out, dtype=np.float32)[0].transpose(1, 2, 0)
    return np.ascontiguousarray((rgb - olo) / (ohi - olo) * 255.0, dtype=np.float32)


def _to_model(crop: Image, hole: BoolMask, size: tuple[int, int]) -> tuple[Image, BoolMask]:
    h, w = hole.shape
    shrink = size[0] < h or size[1] < w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    img = cv2.resize(crop, (size[1], size[0]), interpolation=interp)
    # Any model pixel that touches a hole pixel is hole: never ask it to keep a hole pixel.
    soft = cv2.resize(
        hole.astype(np.float32),
        (size[1], size[0]),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )
    return np.ascontiguousarray(img), soft > 0


def fill_window(session: Session, io: ModelIO, crop: Image, hole: BoolMask) -> FloatImage:
    """Context crop (any size) -> model-filled crop of the same size, float 0..255."""
    img, model_hole = _to_model(crop, hole, io.size)
    out = run_model(session, io, img, model_hole)
    if out.shape[:2] == crop.shape[:2]:
        return out
    return np.asarray(
        cv2.resize(out, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR),
        dtype=np.float32,
    )


# ---------------------------------------------------------------- the task


class _TimedSession:
    """Forwards to a real session and adds up the time spent in ``run`` (latency_ms.run)."""

    def __init__(self, inner: Session) -> None:
        self.inner, self.ms = inner, 0.0
        self.backend, self.inputs, self.outputs = inner.backend, inner.inputs, inner.outputs

    def run(self, feeds: Feeds) -> dict[str, Array]:
        t0 = time.perf_counter()
        try:
            return self.inner.run(feeds)
        finally:
            self.ms += (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        self.inner.close()

    def resident_bytes(self) -> int | None:
        return self.inner.resident_bytes()


def _entry(engine: Engine, name: str) -> ModelEntry:
    try:
        entry = engine.catalog.get(name)
    except ModelNotFound:
        if name not in BUILTIN:
            raise
        entry = ModelEntry(
            name=name,
            task="inpainting",
            family="opencv",
            licence="Apache-2.0",
            params=BUILTIN[name],
        )
    if entry.task != "inpainting":
        raise BadRequest(f"model {name!r} is a {entry.task} model, not an inpainting one")
    if entry.family not in FAMILIES:
        raise ConfigError(f"model {name!r}: family {entry.family!r} is not one of {FAMILIES}")
    return entry


def _setting(entry: ModelEntry, requested: float | None, key: str, default: float) -> float:
    """The request's (validated) value, else the catalogue entry's, else ``default``."""
    if requested is not None:
        return requested
    value = entry.params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"model {entry.name!r}: params.{key} must be a finite number")
    return float(value)


def inpaint_opencv(
    image: Image, hole: BoolMask, params: InpaintingParams, entry: ModelEntry
) -> Image:
    method = params.method or str(entry.params.get("method", "telea")).lower()
    flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
    if method not in flags:
        raise ConfigError(f"model {entry.name!r}: method {method!r} is not one of telea, ns")
    radius = _setting(entry, params.radius, "radius", 3)
    filled = cv2.inpaint(image, hole.astype(np.uint8) * 255, radius, flags[method])
    out = image.copy()
    out[hole] = filled[hole]
    return out


def inpaint_learned(
    session: Session,
    io: ModelIO,
    image: Image,
    hole: BoolMask,
    params: InpaintingParams,
    *,
    entry: ModelEntry,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Image, list[Window]]:
    """Fill every hole cluster through its own context window; non-hole pixels untouched."""
    count, found, found_stats, _ = cv2.connectedComponentsWithStats(
        hole.astype(np.uint8), connectivity=8
    )
    labels = np.asarray(found, dtype=np.int32)
    stats = np.asarray(found_stats, dtype=np.int32)
    context = _setting(entry, params.context, "context", DEFAULT_CONTEXT)
    min_side = int(_setting(entry, params.min_window, "min_window", min(io.size)))
    if not context >= 0 or min_side < 1:
        raise ConfigError(f"model {entry.name!r}: context must be >= 0 and min_window >= 1")
    windows = plan_windows(labels, count, stats, context=context, min_side=min_side)
    out = image.copy()
    for index, win in enumerate(windows):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"inpainting cancelled after {index} of {len(windows)} windows")
        y0, x0, y1, x1 = win.box
        filled = fill_window(session, io, image[y0:y1, x0:x1], hole[y0:y1, x0:x1])
        mine = np.isin(labels[y0:y1, x0:x1], win.labels)
        region = out[y0:y1, x0:x1]
        region[mine] = np.clip(np.rint(filled[mine]), 0, 255).astype(np.uint8)
        if progress is not None:
            progress(index + 1, len(windows), f"window {index + 1}/{len(windows)}")
    return out, windows


OPENCV_BYTES_PER_PX = 3 + 1 + 3
"""cv2.inpaint: its filled copy, the uint8 mask and the result copy, per image pixel."""
LEARNED_IMAGE_BYTES_PER_PX = 3 + 4 + 1
"""Learned fill, per image pixel: the result copy, the int32 cluster labels, the bool mask."""
LEARNED_BYTES_PER_PX = 1024
"""One window run per model-input pixel until measured (feeds, activations, output)."""


def _job_name(name: str, image: Image) -> str:
    return f"inpainting {name} of {image.shape[1]}x{image.shape[0]}"


def run(
    engine: Engine,
    request: TaskRequest,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TaskResult:
    """Inpaint ``request.image`` where ``request.mask`` > 127 (default model: opencv_telea)."""
    t0 = time.perf_counter()
    if request.image is None or request.mask is None:
        raise BadRequest("inpainting needs an image and a mask (--mask, white = hole)")
    image = imaging.as_rgb(request.image)
    hole = imaging.check_mask(request.mask, image.shape) > 127
    params = params_of(request, InpaintingParams)
    name = request.model or engine.default_model("inpainting")
    entry = _entry(engine, name)
    meta: dict[str, Any] = {
        "hole_pixels": int(hole.sum()),
        "family": entry.family,
        "primary": "image",
    }
    t1 = time.perf_counter()
    backend = "opencv" if entry.family == "opencv" else "none"  # "none": no hole, no model run
    run_ms: float | None = None  # None: the whole fill counts as "run" (cv2.inpaint)
    if not hole.any():
        out = image.copy()
    elif entry.family == "opencv":
        with engine.reserve(_job_name(name, image), image[..., 0].size * OPENCV_BYTES_PER_PX):
            out = inpaint_opencv(image, hole, params, entry)
    else:
        with engine.acquire(name, backend=request.backend) as loaded:
            t1 = time.perf_counter()  # model acquire counts as "pre"
            session = _TimedSession(loaded.session)
            io = model_io(loaded.entry, session)
            per_px = engine.pool.estimates.activation(f"{name}@{loaded.backend}")
            window = io.size[0] * io.size[1] * (per_px or LEARNED_BYTES_PER_PX)
            nbytes = image[..., 0].size * LEARNED_IMAGE_BYTES_PER_PX + window
            with engine.reserve(_job_name(name, image), nbytes):
                out, windows = inpaint_learned(
                    session,
                    io,
                    image,
                    hole,
                    params,
                    entry=loaded.entry,
                    progress=progress,
                    cancel=cancel,
                )
            backend, run_ms = loaded.backend, session.ms
        meta["windows"] = [[w.box[1], w.box[0], w.box[3], w.box[2]] for w in windows]
    t2 = time.perf_counter()
    fill_ms = (t2 - t1) * 1e3
    run_ms = fill_ms if run_ms is None else run_ms
    return TaskResult(
        task="inpainting",
        model=name,
        backend=backend,
        outputs={"image": out},
        meta=meta,
        latency_ms={
            "pre": round((t1 - t0) * 1e3, 3),
            "run": round(run_ms, 3),
            "post": round(max(0.0, fill_ms - run_ms), 3),  # crop/resize/paste around the model
            "total": round((t2 - t0) * 1e3, 3),
        },
    )
