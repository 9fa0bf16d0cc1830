"""Calibration data: real images fed through the model's OWN task preprocessing.

A calibration set is a directory of images (``set5/HR``, a folder of portraits, ...). It is
split deterministically: sorted by name, every second image (odd index) is *held out* for
the accuracy gate and the rest calibrate, so the gate never scores the images the
quantizer saw. Its ``digest`` (sha256 over names and file hashes) goes into the catalogue
entry of a variant so "calibrated on what?" has an answer.

Feeds are produced by the task code itself, not by a copy of it:

* ``sr-y`` / ``sr-rgb`` -- the HR image is degraded as the model was trained
  (``entry.params.degradation``, default ``cv2.INTER_CUBIC``) and the LR image is run through
  ``edged.tasks.superres_window`` (Y/255 or RGB at the model's layout and range) with a
  session wrapper that records every feed;
* ``mediapipe-selfie`` / ``deeplabv3`` -- ``edged.tasks.segmentation_feed`` (the family's
  stretch, range and layout);
* ``lama`` / ``migan`` -- image + hole through ``edged.tasks.inpaint_window`` (recorded); the
  directory then holds ``images/`` and ``masks/`` (same names, white = hole).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edged import imaging
from edged.errors import BadRequest
from edged.models.schema import ModelEntry
from edged.runtime.base import Array, Session
from edged.runtime.recording import RecordingSession
from edged.tasks import inpaint_window, segmentation_feed, superres_window
from edged.tasks.preprocess import SEGMENTATION_FEED_FAMILIES
from edged.util.digest import file_sha256

Image = npt.NDArray[np.uint8]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SR_FAMILIES = ("sr-y", "sr-rgb")
SEG_FAMILIES = ("mediapipe-selfie", "deeplabv3")
INPAINT_FAMILIES = ("lama", "migan")
DEFAULT_CROP = 96
"""LR side of the calibration crops of SR models: enough context, small enough to be fast,
and one shape for all feeds (histogram calibrators stack them)."""


@dataclass(frozen=True)
class CalibrationSet:
    """The images of a calibration directory, their split and digest."""

    directory: Path
    images: tuple[Path, ...]
    digest: str
    masks_dir: Path | None = None

    @classmethod
    def from_dir(cls, directory: Path) -> CalibrationSet:
        """``directory`` holds images, or (inpainting) ``images/`` and ``masks/`` (white = hole)."""
        if not directory.is_dir():
            raise BadRequest(f"--calibration {directory}: not a directory of images")
        masks = directory / "masks" if (directory / "masks").is_dir() else None
        if (directory / "images").is_dir():
            directory = directory / "images"
        images = tuple(sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        if not images:
            raise BadRequest(
                f"--calibration {directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in it"
            )
        digest = hashlib.sha256()
        for path in images:
            digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
            if masks is not None and (masks / path.name).is_file():
                digest.update(f"mask:{file_sha256(masks / path.name)}\n".encode())
        return cls(directory, images, digest.hexdigest(), masks)

    def holes(self, paths: Sequence[Path]) -> list[npt.NDArray[np.bool_]]:
        """The hole masks (same file name under ``masks/``) of ``paths``."""
        if self.masks_dir is None:
            raise BadRequest(
                f"--calibration {self.directory}: inpainting needs DIR/images and DIR/masks "
                "(same file names, white = hole)"
            )
        return [imaging.read_mask(self.masks_dir / p.name) > 127 for p in paths]

    @property
    def calibration(self) -> tuple[Path, ...]:
        """Images the quantizer sees (all of them when there is only one)."""
        chosen = self.images[0::2]
        return chosen or self.images

    @property
    def held_out(self) -> tuple[Path, ...]:
        """Images only the accuracy gate sees (falls back to all with a single image)."""
        return self.images[1::2] or self.images

    def describe(self) -> dict[str, Any]:
        return {
            "dir": str(self.directory),
            "sha256": self.digest,
            "calibration": [p.name for p in self.calibration],
            "held_out": [p.name for p in self.held_out],
        }


def load_images(paths: Sequence[Path]) -> list[Image]:
    return [imaging.read_image(p, what="calibration image") for p in paths]


# ---------------------------------------------------------------- SR


def degradation(entry: ModelEntry) -> int:
    """The cv2 interpolation the SR model was trained on (``params.degradation``)."""
    name = str(entry.params.get("degradation", "cv2.INTER_CUBIC")).removeprefix("cv2.")
    flag = getattr(cv2, name, None)
    if not isinstance(flag, int):
        raise BadRequest(f"model {entry.name}: unknown params.degradation {name!r}")
    return flag


def sr_pair(entry: ModelEntry, hr: Image, crop: int | None = None) -> tuple[Image, Image]:
    """(LR, HR) with HR cropped to a multiple of the scale; ``crop`` = LR side of a centre crop."""
    scale = int(entry.params.get("scale", 1))
    h, w = hr.shape[:2]
    if crop is not None:
        side = crop * scale
        top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
        hr = hr[top : top + side, left : left + side]
        h, w = hr.shape[:2]
    h, w = h - h % scale, w - w % scale
    hr = np.ascontiguousarray(hr[:h, :w])
    lr = cv2.resize(hr, (w // scale, h // scale), interpolation=degradation(entry))
    return np.ascontiguousarray(lr), hr


def sr_model_input(entry: ModelEntry, lr: Image) -> npt.NDArray[np.float32]:
    """The H x W x C float 0..1 window ``superres`` hands to ``tile_fn`` (Y, or RGB)."""
    if entry.family == "sr-y":
        y = cv2.cvtColor(lr, cv2.COLOR_RGB2YCrCb)[..., :1]
        return np.ascontiguousarray(y.astype(np.float32) / np.float32(255.0))
    return np.ascontiguousarray(lr.astype(np.float32) / np.float32(255.0))


def sr_upscale_y(entry: ModelEntry, session: Session, lr: Image) -> npt.NDArray[np.float32]:
    """The model's output for ``lr`` as H x W x C float 0..1, via ``superres.tile_fn``."""
    return superres_window(entry, session)(sr_model_input(entry, lr))


def hr_crops(entry: ModelEntry, hr: Image, crop: int, per_image: int) -> list[Image]:
    """Up to ``per_image`` HR crops (LR side ``crop``) on a grid: equal shapes, so histogram
    calibrators (percentile, entropy) can stack them."""
    side = crop * int(entry.params.get("scale", 1))
    h, w = hr.shape[:2]
    if h < side or w < side:
        return [hr]
    rows = max(1, min(per_image, h // side))
    cols = max(1, min(per_image // rows, w // side))
    ys = np.linspace(0, h - side, rows).astype(int)
    xs = np.linspace(0, w - side, cols).astype(int)
    return [np.ascontiguousarray(hr[y : y + side, x : x + side]) for y in ys for x in xs]


def sr_feeds(
    entry: ModelEntry,
    fp32: Session,
    images: Sequence[Image],
    crop: int | None = DEFAULT_CROP,
    per_image: int = 4,
) -> list[dict[str, Array]]:
    recorder = RecordingSession(fp32)
    if crop is not None:  # one crop size that fits every image: feeds must share a shape
        scale = int(entry.params.get("scale", 1))
        crop = min([crop, *(min(i.shape[:2]) // scale for i in images)])
    for hr in images:
        for part in [hr] if crop is None else hr_crops(entry, hr, crop, per_image):
            lr, _ = sr_pair(entry, part)
            sr_upscale_y(entry, recorder, lr)
    return recorder.feeds


# ---------------------------------------------------------------- segmentation


def seg_feed(entry: ModelEntry, session: Session, image: Image) -> dict[str, Array]:
    """One image -> the feed the segmentation family builds for it."""
    if entry.family not in SEGMENTATION_FEED_FAMILIES:
        raise BadRequest(_unsupported(entry))
    return segmentation_feed(entry, session, image)


def _unsupported(entry: ModelEntry) -> str:
    families = ", ".join((*SR_FAMILIES, *SEG_FAMILIES, *INPAINT_FAMILIES))
    return (
        f"model {entry.name}: no calibration preprocessing for family {entry.family!r} "
        f"(supported: {families}); quantize it without --calibration (random feeds)"
    )


# ---------------------------------------------------------------- inpainting


def inpaint_fill(
    entry: ModelEntry, session: Session, image: Image, hole: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """The model's fill of ``image`` (float 0..255), as the inpainting task fills a window."""
    return inpaint_window(entry, session, image, hole)


def inpaint_feeds(
    entry: ModelEntry,
    fp32: Session,
    images: Sequence[Image],
    holes: Sequence[npt.NDArray[np.bool_]],
) -> list[dict[str, Array]]:
    recorder = RecordingSession(fp32)
    for image, hole in zip(images, holes, strict=True):
        inpaint_fill(entry, recorder, image, hole)
    return recorder.feeds


# ---------------------------------------------------------------- reader


def model_feeds(
    entry: ModelEntry,
    fp32: Session,
    images: Sequence[Image],
    *,
    crop: int | None = DEFAULT_CROP,
    holes: Sequence[npt.NDArray[np.bool_]] | None = None,
) -> list[dict[str, Array]]:
    """Calibration feeds for ``entry`` from real images, through its task preprocessing."""
    if entry.family in INPAINT_FAMILIES:
        if holes is None:
            raise BadRequest(f"model {entry.name}: inpainting calibration needs hole masks")
        return inpaint_feeds(entry, fp32, images, holes)
    if entry.family in SR_FAMILIES:
        return sr_feeds(entry, fp32, images, crop)
    if entry.family in SEG_FAMILIES:
        return [seg_feed(entry, fp32, image) for image in images]
    raise BadRequest(_unsupported(entry))


def supports(entry: ModelEntry) -> bool:
    return entry.family in (*SR_FAMILIES, *SEG_FAMILIES, *INPAINT_FAMILIES)


class CalibrationReader:
    """onnxruntime ``CalibrationDataReader`` (duck-typed get_next/rewind) over feeds."""

    def __init__(self, feeds: Sequence[dict[str, Array]]) -> None:
        if not feeds:
            raise BadRequest("calibration produced no feeds (no usable images)")
        self.feeds = list(feeds)
        self._it: Iterator[dict[str, Array]] = iter(self.feeds)

    def get_next(self) -> dict[str, Array] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)
