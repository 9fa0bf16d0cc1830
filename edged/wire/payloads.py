"""Payload frames <-> numpy arrays, with limits checked before any pixel is decoded.

Images travel as PNG or JPEG bytes (or ``npy``/``raw`` with shape and dtype). The image
size is read from the PNG IHDR chunk or the JPEG SOF segment (``edged.image_header``, which
also reads BMP, TIFF, WebP and PNM headers for files) and compared with ``max_pixels``
*before* ``cv2.imdecode`` runs, so a 100000 x 100000 "decompression bomb" of a
few kB is rejected without allocating anything. Arrays are RGB (H x W x 3) or single channel
(H x W) uint8 on the edged side; the BGR of OpenCV never leaks out of this module.
"""

from __future__ import annotations

import ast
import math
import struct
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, TooLarge
from edged.image_header import (
    ACCEPTED_FORMATS,
    ImageHeader,
    check_size,
    decode_checked,
    png_check_chunks,
    read_header,
)
from edged.image_header import (
    PNG_SIGNATURE as _PNG_SIGNATURE,
)
from edged.util.optional import cv2 as _cv2

Encoding = Literal["png", "jpeg", "npy", "raw"]
ENCODINGS: tuple[Encoding, ...] = ("png", "jpeg", "npy", "raw")
ImageEncoding = Literal["png", "jpeg", "any"]

PNG_SIGNATURE = _PNG_SIGNATURE
JPEG_SOI = b"\xff\xd8"
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 4096


# ---------------------------------------------------------------- image size from headers


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; BadRequest if this is not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise BadRequest("not a PNG (bad signature or IHDR)")
    header = read_header(data, "PNG", ("png",))
    return header.width, header.height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF segment; BadRequest if there is none."""
    if not data.startswith(JPEG_SOI):
        raise BadRequest("not a JPEG (no SOI marker)")
    header = read_header(data, "JPEG", ("jpeg",))
    return header.width, header.height


def check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    check_size(ImageHeader("?", width, height), max_pixels, f"payload {name!r}", "zmq.max_pixels")


# ---------------------------------------------------------------- decoding


def image_size(name: str, data: bytes, encoding: ImageEncoding, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the headers, after the pixel limit and structure checks."""
    what = f"payload {name!r}"
    header = read_header(data, what, _formats(encoding))
    check_size(header, max_pixels, what, "zmq.max_pixels")
    try:
        if header.format == "png":
            png_check_chunks(data)
        elif header.format == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise BadRequest("truncated JPEG (no EOI marker)")
    except BadRequest as exc:
        raise BadRequest(f"{what}: {exc}") from None
    return header.width, header.height


def _formats(encoding: ImageEncoding) -> tuple[str, ...]:
    return ACCEPTED_FORMATS if encoding == "any" else (encoding,)


def decode_image(
    name: str, data: bytes, encoding: ImageEncoding, *, channels: int, max_pixels: int
) -> npt.NDArray[np.uint8]:
    """Image bytes -> RGB (channels=3) or gray (channels=1, 2-D) uint8, limits first.

    ``encoding`` is what the request declared (``png``/``jpeg``, checked against the data),
    or ``any`` for files (every format of ``edged.image_header.ACCEPTED_FORMATS``).
    """
    image_size(name, data, encoding, max_pixels)  # the structure checks of the wire formats
    cv2 = _cv2()
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    img, _ = decode_checked(
        data,
        flag=flag,
        max_pixels=max_pixels,
        what=f"payload {name!r}",
        formats=_formats(encoding),
        limit_name="zmq.max_pixels",
    )
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8)
    if channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype[Any], bool, int]:
    """(shape, dtype, fortran_order, data offset) of an .npy without reading its data.

    Parsed with ``ast.literal_eval`` on a bounded header: no pickle, no object arrays.
    """
    if len(data) < 10 or not data.startswith(_NPY_MAGIC):
        raise BadRequest("not an .npy (bad magic)")
    major = data[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", data[8:10])
        start = 10
    elif major in (2, 3):
        if len(data) < 12:
            raise BadRequest("truncated .npy header")
        (hlen,) = struct.unpack("<I", data[8:12])
        start = 12
    else:
        raise BadRequest(f"unsupported .npy version {major}")
    if hlen > _MAX_NPY_HEADER or start + hlen > len(data):
        raise BadRequest("truncated or oversized .npy header")
    try:
        header = ast.literal_eval(data[start : start + hlen].decode("latin1"))
        shape = tuple(int(d) for d in header["shape"])
        dtype = np.dtype(header["descr"])
        fortran = bool(header["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        raise BadRequest(f"corrupt .npy header: {type(exc).__name__}") from exc
    if dtype.hasobject or any(d < 0 for d in shape):
        raise BadRequest(".npy with object dtype or negative shape")
    return shape, dtype, fortran, start + hlen


def decode_array(
    name: str,
    data: bytes,
    encoding: Literal["npy", "raw"],
    *,
    shape: list[int] | None,
    dtype: str | None,
    max_elements: int,
) -> npt.NDArray[Any]:
    """``npy`` or ``raw`` bytes -> array, size checked against the header before copying."""
    if encoding == "npy":
        try:
            got_shape, got_dtype, fortran, offset = npy_header(data)
        except BadRequest as exc:
            raise BadRequest(f"payload {name!r}: {exc}") from exc
    else:
        if shape is None or dtype is None:
            raise BadRequest(f"payload {name!r}: raw encoding needs shape and dtype")
        try:
            got_dtype = np.dtype(dtype)
        except TypeError as exc:
            raise BadRequest(f"payload {name!r}: unknown dtype {dtype!r}") from exc
        got_shape, fortran, offset = tuple(shape), False, 0
    count = math.prod(got_shape)
    if count > max_elements:
        raise TooLarge(f"payload {name!r}: {count} elements exceeds the limit {max_elements}")
    if got_dtype.hasobject or got_dtype.itemsize == 0:
        raise BadRequest(f"payload {name!r}: dtype {got_dtype} is not allowed")
    if len(data) - offset != count * got_dtype.itemsize:
        raise BadRequest(
            f"payload {name!r}: {len(data) - offset} bytes do not match shape "
            f"{list(got_shape)} of {got_dtype}"
        )
    flat = np.frombuffer(data, dtype=got_dtype, count=count, offset=offset)
    arr = flat.reshape(got_shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------- encoding


def is_image(arr: npt.NDArray[Any]) -> bool:
    """uint8 H x W or H x W x {1,3,4}: something PNG can carry."""
    if arr.dtype != np.uint8 or arr.size == 0:
        return False
    return arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))


def encode_array(arr: npt.NDArray[Any], encoding: Encoding) -> tuple[bytes, Encoding]:
    """Array -> (bytes, encoding actually used). Non-images fall back to ``npy``."""
    if encoding in ("png", "jpeg") and is_image(arr):
        if encoding == "jpeg" and arr.ndim == 3 and arr.shape[2] == 4:
            encoding = "png"  # JPEG has no alpha channel
        return _encode_image(arr, encoding), encoding
    if encoding == "raw":
        return np.ascontiguousarray(arr).tobytes(), "raw"
    return _encode_npy(arr), "npy"


def _encode_image(arr: npt.NDArray[Any], encoding: Encoding) -> bytes:
    cv2 = _cv2()
    img = arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    if img.ndim == 3:
        code = cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR
        img = cv2.cvtColor(np.ascontiguousarray(img), code)
    ext = ".png" if encoding == "png" else ".jpg"
    # PNG level 1: several times faster than the default 3 for a few % more bytes.
    params = (
        [cv2.IMWRITE_PNG_COMPRESSION, 1] if encoding == "png" else [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise BadRequest(f"cannot encode an array of shape {arr.shape} as {encoding}")
    return bytes(buf)


def _encode_npy(arr: npt.NDArray[Any]) -> bytes:
    import io

    if arr.dtype.hasobject:
        raise BadRequest(f"cannot send an array of dtype {arr.dtype} (object arrays are not data)")
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(arr), allow_pickle=False)
    return out.getvalue()


def payload_spec(name: str, arr: npt.NDArray[Any], encoding: Encoding) -> dict[str, Any]:
    """The ``payloads[]`` entry describing one frame."""
    return {"name": name, "encoding": encoding, "shape": list(arr.shape), "dtype": str(arr.dtype)}


def encode_outputs(
    outputs: dict[str, npt.NDArray[Any]], encoding: Encoding
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Named arrays -> (payload specs, frames), in the dict's order."""
    specs: list[dict[str, Any]] = []
    frames: list[bytes] = []
    for name, arr in outputs.items():
        data, used = encode_array(np.asarray(arr), encoding)
        specs.append(payload_spec(name, arr, used))
        frames.append(data)
    return specs, frames


def decode_any(spec: dict[str, Any], data: bytes) -> npt.NDArray[Any]:
    """Client side: one frame back to an array (images RGB, as they were sent).

    Trusts the server for sizes (no pixel limit), but still never unpickles.
    """
    encoding = spec.get("encoding")
    name = str(spec.get("name", "?"))
    if encoding in ("png", "jpeg"):
        shape = spec.get("shape") or []
        channels = 3 if len(shape) == 3 and shape[2] >= 3 else 1
        flag_any = _decode_unchanged(data)
        if flag_any is None:
            raise BadRequest(f"payload {name!r}: cannot decode {encoding}")
        if channels == 3 and flag_any.ndim == 3:
            code = "COLOR_BGRA2RGBA" if flag_any.shape[2] == 4 else "COLOR_BGR2RGB"
            flag_any = _cv2().cvtColor(flag_any, getattr(_cv2(), code))
        return np.ascontiguousarray(flag_any)
    if encoding in ("npy", "raw"):
        return decode_array(
            name,
            data,
            encoding,
            shape=spec.get("shape"),
            dtype=spec.get("dtype"),
            max_elements=1 << 40,
        )
    raise BadRequest(f"payload {name!r}: unknown encoding {encoding!r}")


def _decode_unchanged(data: bytes) -> npt.NDArray[Any] | None:
    cv2 = _cv2()
    img: npt.NDArray[Any] | None = cv2.imdecode(
        np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED
    )
    return img
