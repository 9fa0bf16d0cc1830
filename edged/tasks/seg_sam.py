"""MobileSAM: an image encoder run once per image, then a cheap prompt decoder per prompt.

Geometry follows SAM's own ``ResizeLongestSide`` + ``SamOnnxModel`` so user-supplied ONNX
exports behave as upstream:

* encoder: long side to 1024 (``new = int(old * 1024 / max(h, w) + 0.5)``), normalise with
  ImageNet mean/std on 0..255, pad bottom/right with zeros to 1024 x 1024 (NCHW).
* prompts: pixel coordinates scaled by ``new_w / w`` and ``new_h / h`` (no half-pixel shift);
  a box is two points labelled 2 and 3; without a box a padding point (0, 0) labelled -1.
* masks: we upsample ``low_res_masks`` ourselves exactly as ``SamOnnxModel.mask_postprocessing``
  does (bilinear to 1024, crop the padding, bilinear to the frame, logits > threshold). Doing it
  here makes exports with and without the in-graph post-processing behave the same, and only
  the chosen mask is ever upsampled to full size.

The embedding is cached per engine by image content hash: repeated prompts on one image
(clicking around in a UI) skip the encoder, which is >95 % of the cost.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.engine import Engine
from edged.errors import BadRequest, ConfigError
from edged.imaging import image_hash, resize, resize_float
from edged.models.schema import ModelEntry
from edged.tasks.base import TaskRequest
from edged.tasks.seg_common import Image, SegOutput, Timer, input_spec
from edged.util.lru import LRU

F32 = npt.NDArray[np.float32]
CACHE_ENTRIES = 4
"""Embeddings kept per engine (4 MB each for MobileSAM's [1, 256, 64, 64])."""
DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Embedding:
    array: F32
    new_h: int
    new_w: int


class EmbeddingCache(LRU[tuple[str, ...], Embedding]):
    """A small thread-safe LRU of image embeddings."""

    def __init__(self, capacity: int = CACHE_ENTRIES) -> None:
        super().__init__(capacity)


_CACHES: weakref.WeakKeyDictionary[Engine, EmbeddingCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def embedding_cache(engine: Engine) -> EmbeddingCache:
    with _CACHES_LOCK:
        cache = _CACHES.get(engine)
        if cache is None:
            cache = _CACHES[engine] = EmbeddingCache()
        return cache


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """SAM's ``ResizeLongestSide.get_preprocess_shape``."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def encoder_input(image: Image, long_side: int, mean: Any, std: Any) -> tuple[F32, int, int]:
    """Resize long side, normalise, pad bottom/right with 0 -> [1, 3, S, S]."""
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    resized = resize(image, (new_h, new_w)).astype(np.float32)
    norm = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    canvas = np.zeros((long_side, long_side, 3), np.float32)
    canvas[:new_h, :new_w] = norm
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None]), new_h, new_w


def prompt_arrays(
    request: TaskRequest, shape: tuple[int, int], new_hw: tuple[int, int]
) -> tuple[F32, F32]:
    """Points/box in image pixels -> SAM ``point_coords`` [1, N, 2] and ``point_labels`` [1, N]."""
    h, w = shape
    coords: list[tuple[float, float]] = []
    labels: list[float] = []
    for x, y, label in request.points:
        if int(label) not in (0, 1):
            raise BadRequest(f"point label {label}: use 1 (foreground) or 0 (background)")
        coords.append((float(x), float(y)))
        labels.append(float(label))
    if request.box is not None:
        x0, y0, x1, y1 = (float(v) for v in request.box)
        if x0 == x1 or y0 == y1:
            raise BadRequest(f"box {request.box} is empty; give x0,y0,x1,y1 with x0<x1, y0<y1")
        coords += [(min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))]
        labels += [2.0, 3.0]
    if not labels:
        raise BadRequest("mobilesam needs a prompt: --points x,y[,label] or --box x0,y0,x1,y1")
    xy = np.asarray(coords, np.float64)
    if not np.isfinite(xy).all() or (xy < 0).any() or (xy[:, 0] > w).any() or (xy[:, 1] > h).any():
        raise BadRequest(f"prompt coordinates must lie inside the {w}x{h} image")
    if request.box is None:  # SAM's ONNX decoder expects a padding point when there is no box
        xy = np.vstack([xy, [[0.0, 0.0]]])
        labels.append(-1.0)
    new_h, new_w = new_hw
    xy = xy * np.array([new_w / w, new_h / h])
    return xy.astype(np.float32)[None], np.asarray(labels, np.float32)[None]


def postprocess(low_res: F32, new_hw: tuple[int, int], shape: tuple[int, int], size: int) -> F32:
    """``SamOnnxModel.mask_postprocessing`` for one 256 x 256 logit map -> frame logits."""
    full = resize_float(low_res, (size, size))
    return resize_float(full[: new_hw[0], : new_hw[1]], shape)


def _components(engine: Engine, entry: ModelEntry) -> tuple[ModelEntry, ModelEntry]:
    try:
        enc, dec = entry.components["encoder"], entry.components["decoder"]
    except KeyError:
        raise ConfigError(f"{entry.name}: components must name an encoder and a decoder") from None
    return engine.catalog.get(enc), engine.catalog.get(dec)


def _encode(
    engine: Engine, enc: ModelEntry, request: TaskRequest, image: Image, timer: Timer
) -> tuple[Embedding, bool, str | None]:
    key = (enc.name, request.backend or "", image_hash(image))
    cache = embedding_cache(engine)
    cached = cache.get(key)
    if cached is not None:
        return cached, True, None
    size = int(enc.params.get("image_size", 1024))
    with engine.acquire(enc.name, backend=request.backend) as loaded:
        with timer("pre"):
            mean = enc.params.get("mean", DEFAULT_MEAN)
            std = enc.params.get("std", DEFAULT_STD)
            tensor, new_h, new_w = encoder_input(image, size, mean, std)
        with timer("run"):
            session = loaded.session
            outputs = session.run({input_spec(session, enc).name: tensor})
            name = enc.output.name or session.outputs[0].name
        backend = loaded.backend
    embedding = Embedding(np.asarray(outputs[name], np.float32), new_h, new_w)
    cache.put(key, embedding)
    return embedding, False, backend


def segment(
    engine: Engine, entry: ModelEntry, request: TaskRequest, image: Image, timer: Timer
) -> SegOutput:
    enc, dec = _components(engine, entry)
    size = int(enc.params.get("image_size", 1024))
    shape = (image.shape[0], image.shape[1])
    # Validate the prompt before the (expensive) encoder; new_hw is what the encoder uses.
    coords, labels = prompt_arrays(request, shape, preprocess_shape(*shape, size))
    embedding, cached, enc_backend = _encode(engine, enc, request, image, timer)
    new_hw = (embedding.new_h, embedding.new_w)
    with engine.acquire(dec.name, backend=request.backend) as loaded:
        with timer("pre"):
            feeds = _decoder_feeds(loaded.session.inputs, embedding.array, coords, labels, shape)
        with timer("run"):
            out = loaded.session.run(feeds)
        backend = loaded.backend
    with timer("post"):
        ious = np.asarray(out["iou_predictions"], np.float32).reshape(-1)
        best = int(np.argmax(ious))
        low_res = np.asarray(out["low_res_masks"], np.float32)[0, best]
        logits = postprocess(low_res, new_hw, shape, size)
        threshold = float(dec.params.get("mask_threshold", entry.params.get("mask_threshold", 0.0)))
        mask = np.where(logits > threshold, 255, 0).astype(np.uint8)
    meta = {
        "embedding_cached": cached,
        "iou_prediction": round(float(ious[best]), 4),
        "mask_index": best,
        "encoder_backend": enc_backend,
    }
    return SegOutput(mask=mask, backend=backend, meta=meta)


def _decoder_feeds(
    specs: Any, embedding: F32, coords: F32, labels: F32, shape: tuple[int, int]
) -> dict[str, npt.NDArray[Any]]:
    feeds: dict[str, npt.NDArray[Any]] = {
        "image_embeddings": embedding,
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros((1,), np.float32),
        "orig_im_size": np.asarray(shape, np.float32),
    }
    names = {spec.name: spec.dtype for spec in specs}
    missing = sorted(set(names) - set(feeds))
    if missing:
        raise ConfigError(
            f"mobilesam decoder has unexpected inputs {missing}; need a SAM ONNX export"
        )
    # Exports differ in the dtype of orig_im_size/has_mask_input; follow what the model declares.
    return {k: v.astype(names[k], copy=False) for k, v in feeds.items() if k in names}
