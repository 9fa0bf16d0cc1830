"""Image helpers every task shares: decode/encode, colour, resize, letterbox and compositing.

Conventions (see ``edged.tasks.base``): images are RGB uint8 H x W x 3, masks H x W uint8
0..255 with 255 = person / hole. Anything a user sends goes through ``decode_image`` /
``decode_mask`` (``edged.image_header.decode_checked``: size from the header before any
pixel is decoded) so a bad file becomes a one-line ``BadRequest``/``TooLarge``, never a cv2
crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest
from edged.image_header import ACCEPTED_NAMES as ACCEPTED_NAMES  # noqa: PLC0414 - re-export
from edged.image_header import decode_checked

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

ENCODINGS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg"}
MAX_PIXELS = 64_000_000
"""Refuse to decode more than this (a 64 MP image is already ~200 MB as RGB)."""


# ---------------------------------------------------------------- decode / encode


def _decode(data: bytes, what: str, max_pixels: int = MAX_PIXELS) -> npt.NDArray[np.generic]:
    # Header first (every accepted format), then OpenCV: see edged.image_header.
    array, _ = decode_checked(data, flag=cv2.IMREAD_UNCHANGED, max_pixels=max_pixels, what=what)
    return np.asarray(array)


def _to_uint8(array: npt.NDArray[np.generic]) -> Image:
    if array.dtype == np.uint8:
        return array.astype(np.uint8, copy=False)
    if array.dtype == np.uint16:  # 16-bit PNG: keep the high byte, as viewers do
        return (array.astype(np.uint16) >> 8).astype(np.uint8)
    return np.clip(array.astype(np.float32), 0, 255).astype(np.uint8)


def decode_image(data: bytes, what: str = "image", *, max_pixels: int = MAX_PIXELS) -> Image:
    """PNG/JPEG/BMP/TIFF/WebP/PNM bytes -> RGB uint8 H x W x 3 (grey replicated, alpha
    dropped); the size is checked from the header before decoding (``too_large``)."""
    return bgr_any_to_rgb(_to_uint8(_decode(data, what, max_pixels)))


def decode_mask(data: bytes, what: str = "mask", *, max_pixels: int = MAX_PIXELS) -> Image:
    """Image bytes -> H x W uint8 mask (colour masks are converted to grey)."""
    array = _to_uint8(_decode(data, what, max_pixels))
    if array.ndim == 3:
        return np.ascontiguousarray(cv2.cvtColor(array[:, :, :3], cv2.COLOR_BGR2GRAY), np.uint8)
    return np.ascontiguousarray(array)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadRequest(f"{what}: {path} does not exist") from None
    except IsADirectoryError:
        raise BadRequest(f"{what}: {path} is a directory, not an image file") from None
    except OSError as exc:
        raise BadRequest(f"{what}: cannot read {path}: {exc.strerror}") from None


def read_image(path: Path, what: str = "input", *, max_pixels: int = MAX_PIXELS) -> Image:
    return decode_image(_read(path, what), f"{what} {path}", max_pixels=max_pixels)


def read_mask(path: Path, what: str = "mask", *, max_pixels: int = MAX_PIXELS) -> Image:
    return decode_mask(_read(path, what), f"{what} {path}", max_pixels=max_pixels)


def bgr_any_to_rgb(array: Image) -> Image:
    """What cv2 decodes (grey, BGR or BGRA) -> contiguous RGB."""
    if array.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(array, cv2.COLOR_GRAY2RGB))
    if array.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(array, cv2.COLOR_BGRA2RGB))
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.ascontiguousarray(cv2.cvtColor(array, cv2.COLOR_BGR2RGB))


def as_rgb(image: npt.NDArray[np.generic]) -> Image:
    """Validate an in-memory image (from a request) as RGB uint8 H x W x 3."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise BadRequest(f"image dtype {array.dtype}; send uint8 RGB")
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise BadRequest(f"image shape {array.shape}; send H x W x 3 RGB")
    return np.ascontiguousarray(array[:, :, :3])


def encode_image(image: npt.NDArray[np.uint8], ext: str = ".png", quality: int = 92) -> bytes:
    """RGB / RGBA / grey uint8 -> PNG or JPEG bytes (JPEG drops alpha)."""
    fmt = ENCODINGS.get(ext.lower())
    if fmt is None:
        raise BadRequest(f"cannot write {ext!r}; use .png or .jpg")
    array: npt.NDArray[Any] = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2RGB if fmt == ".jpg" else cv2.COLOR_RGBA2BGRA)
    elif array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, array, params)
    if not ok:
        raise BadRequest(f"cannot encode a {array.shape} image as {fmt}")
    return bytes(buf.tobytes())


def write_image(path: Path, image: npt.NDArray[np.uint8]) -> None:
    """Write by extension (.png/.jpg/.jpeg) via a temp file, so readers never see half a file."""
    path = Path(path)
    data = encode_image(image, path.suffix)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadRequest(f"cannot write {path}: {exc.strerror}") from None


def image_hash(image: npt.NDArray[np.generic]) -> str:
    """Content hash (shape + bytes) to key per-image caches."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((image.shape, str(image.dtype))).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


# ---------------------------------------------------------------- geometry


def resize(image: npt.NDArray[np.generic], size: tuple[int, int], *, smooth: bool = True) -> Image:
    """Resize to (height, width): area filter when shrinking (no aliasing), bilinear else."""
    h, w = size
    shrinking = h < image.shape[0] and w < image.shape[1]
    interp = cv2.INTER_AREA if smooth and shrinking else cv2.INTER_LINEAR
    src: npt.NDArray[Any] = np.asarray(image)
    return np.asarray(cv2.resize(src, (w, h), interpolation=interp), dtype=image.dtype)


def resize_float(array: FloatArray, size: tuple[int, int]) -> FloatArray:
    """Bilinear (half-pixel centres) resize of a float map to (height, width)."""
    h, w = size
    src: npt.NDArray[Any] = np.ascontiguousarray(array, dtype=np.float32)
    out = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class Letterbox:
    """How an image was scaled and padded into a fixed canvas (for mapping results back).

    A point ``(x, y)`` in the original image lands at ``(x * scale + pad_x, y * scale + pad_y)``
    in the canvas (continuous coordinates: pixel centres at +0.5).
    """

    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int
    orig_w: int
    orig_h: int

    def to_canvas(self, xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = np.asarray(xy, np.float64) * self.scale + np.array(
            [self.pad_x, self.pad_y], np.float64
        )
        return out

    def to_image(self, xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        shifted = np.asarray(xy, np.float64) - np.array([self.pad_x, self.pad_y], np.float64)
        out: npt.NDArray[np.float64] = shifted / self.scale
        return out


def letterbox(
    image: Image,
    size: tuple[int, int],
    *,
    pad_value: int = 114,
    center: bool = True,
    smooth: bool = True,
) -> tuple[Image, Letterbox]:
    """Fit into (height, width) keeping aspect; pad centred (YOLO) or bottom-right (SAM).

    ``smooth=False`` resizes bilinearly even when shrinking, as Ultralytics does.
    """
    th, tw = size
    h, w = image.shape[:2]
    scale = min(th / h, tw / w)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = resize(image, (new_h, new_w), smooth=smooth) if (new_h, new_w) != (h, w) else image
    pad_x = (tw - new_w) // 2 if center else 0
    pad_y = (th - new_h) // 2 if center else 0
    canvas = np.full((th, tw, *image.shape[2:]), pad_value, dtype=image.dtype)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Letterbox(scale, pad_x, pad_y, new_w, new_h, w, h)


# ---------------------------------------------------------------- masks and compositing


def check_mask(mask: npt.NDArray[np.generic], shape: tuple[int, ...], what: str = "mask") -> Image:
    """A request mask must be H x W uint8 of the image's size."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or array.dtype != np.uint8:
        raise BadRequest(f"{what}: shape {array.shape} {array.dtype}; send H x W uint8")
    if array.shape != tuple(shape[:2]):
        raise BadRequest(
            f"{what} is {array.shape[1]}x{array.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]}; send a mask of the image's size"
        )
    return array.astype(np.uint8, copy=False)


def prob_to_mask(prob: FloatArray) -> Image:
    """Probability 0..1 -> uint8 0..255 (rounded half to even, clipped).

    OpenCV in two passes (negatives to 0, then scale with saturation): the same bytes as
    ``np.clip(np.rint(prob * 255), 0, 255)`` in a third of the time, once per stream frame.
    """
    src = np.ascontiguousarray(prob, dtype=np.float32)
    positive = cv2.threshold(src, 0.0, 0.0, cv2.THRESH_TOZERO)[1]
    return np.asarray(cv2.convertScaleAbs(positive, alpha=255.0), dtype=np.uint8)


def parse_color(value: object, default: tuple[int, int, int] = (0, 255, 0)) -> tuple[int, int, int]:
    """``"#00ff00"``, ``"0,255,0"``, ``[0, 255, 0]`` or None -> an RGB triple."""
    if value is None:
        return default
    try:
        if isinstance(value, str):
            text = value.strip().lstrip("#")
            if "," in text:
                parts = [int(p) for p in text.split(",")]
            elif len(text) == 6:
                parts = [int(text[i : i + 2], 16) for i in (0, 2, 4)]
            else:
                raise ValueError(text)
        else:
            parts = [int(p) for p in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise BadRequest(f"colour {value!r}: use '#rrggbb' or 'r,g,b'") from None
    if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
        raise BadRequest(f"colour {value!r}: need three values 0..255")
    return parts[0], parts[1], parts[2]


def _alpha(mask: Image) -> FloatArray:
    return (mask.astype(np.float32) / 255.0)[:, :, None]


def _blend(fg: Image, bg: npt.NDArray[np.generic], mask: Image) -> Image:
    a = _alpha(mask)
    out = fg.astype(np.float32) * a + np.asarray(bg, np.float32) * (1.0 - a)
    blended: Image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return blended


def overlay(
    image: Image, mask: Image, color: tuple[int, int, int] = (0, 255, 0), opacity: float = 0.5
) -> Image:
    """Tint the masked area with ``color`` at ``opacity`` (soft masks tint proportionally)."""
    a = (mask.astype(np.float32) * np.float32(opacity / 255.0))[:, :, None]
    out = image.astype(np.float32)
    out += (np.asarray(color, np.float32) - out) * a  # one pass: image + (colour - image) * a
    tinted: Image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return tinted


def cutout(image: Image, mask: Image) -> Image:
    """RGBA with the mask as alpha: the person on a transparent background."""
    return np.ascontiguousarray(np.dstack([image, mask]))


def blur_background(image: Image, mask: Image, radius: int = 21) -> Image:
    """Keep the masked area sharp and Gaussian-blur the rest (portrait mode)."""
    k = max(3, int(radius) | 1)
    blurred = cv2.GaussianBlur(image, (k, k), 0)
    return _blend(image, blurred, mask)


def replace_background(
    image: Image, mask: Image, background: tuple[int, int, int] | Image = (0, 255, 0)
) -> Image:
    """Masked area over a flat colour or an image (resized to the frame)."""
    if isinstance(background, np.ndarray):
        bg = resize(as_rgb(background), image.shape[:2])
    else:
        bg = np.empty_like(image)
        bg[:] = background
    return _blend(image, bg, mask)
