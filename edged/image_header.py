"""Image size from the file header, before any pixel is decoded, and the one safe decoder.

Every image edged decodes (request payloads, inbox files, ``--input`` files) goes through
``decode_checked``: the format is sniffed from its signature and must be one of
``ACCEPTED_FORMATS`` (the ones whose header is parsed here); width and height come from that
header and are compared with the pixel limit *before* ``cv2.imdecode`` allocates anything.
A 118-byte BMP that claims 40000 x 40000, or a 800 kB deflate TIFF of 12000 x 12000, is
refused with ``too_large`` (the numbers in the message) at the cost of reading a few bytes.
Anything OpenCV would also read but whose header is not parsed here (JPEG 2000, OpenEXR,
Radiance HDR, Sun raster, PAM/PFM, GIF, BigTIFF, ...) is refused with ``bad_request`` naming
the accepted formats, and a ``cv2.error`` from the decoder is a ``bad_request`` too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, TooLarge

__all__ = [
    "ACCEPTED_FORMATS",
    "ACCEPTED_NAMES",
    "MAX_SIDE",
    "ImageHeader",
    "check_size",
    "decode_checked",
    "read_header",
    "sniff",
]

ACCEPTED_FORMATS = ("png", "jpeg", "bmp", "tiff", "webp", "pnm")
ACCEPTED_NAMES = "PNG, JPEG, BMP, TIFF, WebP or PPM/PGM/PBM"
MAX_SIDE = 1 << 16
"""Longest side accepted whatever the pixel limit (JPEG's own maximum is 65535)."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = {b"II*\x00": "<", b"MM\x00*": ">"}
_BIGTIFF_MAGIC = (b"II+\x00", b"MM\x00+")
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not SOFs.
_JPEG_SOF = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
)
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})
_PNM_HEADER_BYTES = 1024


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: format, size and the largest decoded bytes per pixel."""

    format: str
    width: int
    height: int
    bytes_per_pixel: int = 4

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Upper bound of what decoding allocates (before any colour conversion)."""
        return self.pixels * self.bytes_per_pixel


_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (PNG_SIGNATURE, 0, "png"),
    (b"\xff\xd8", 0, "jpeg"),
    (b"BM", 0, "bmp"),
    *((magic, 0, "tiff") for magic in (*_TIFF_MAGIC, *_BIGTIFF_MAGIC)),
    (b"WEBP", 8, "webp"),  # after "RIFF", checked below
)


def sniff(data: bytes) -> str | None:
    """The format by signature (the same signatures OpenCV's decoders test), else None."""
    for magic, offset, kind in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (kind != "webp" or data[:4] == b"RIFF"):
            return kind
    if len(data) >= 2 and data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return "pnm"
    return None


# ---------------------------------------------------------------- per-format headers


def _png(data: bytes) -> ImageHeader:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise BadRequest("not a PNG (bad signature or IHDR)")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 4)
    return ImageHeader("png", int(width), int(height), channels * (2 if depth == 16 else 1))


def _jpeg(data: bytes) -> ImageHeader:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise BadRequest(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            break  # EOI or start of scan before any SOF
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                break
            height, width, comps = struct.unpack(">HHB", data[pos + 5 : pos + 10])
            return ImageHeader("jpeg", int(width), int(height), max(3, int(comps)))
        if length < 2:
            raise BadRequest(f"corrupt JPEG: segment length {length} at byte {pos}")
        pos += 2 + length
    raise BadRequest("truncated or corrupt JPEG: no frame header (SOF) found")


def _bmp(data: bytes) -> ImageHeader:
    if len(data) < 26:
        raise BadRequest("truncated BMP header")
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
        width, height = struct.unpack("<HH", data[18:22])
    elif dib >= 40 and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        height = abs(height)  # negative = top-down rows
    else:
        raise BadRequest(f"corrupt BMP: DIB header size {dib}")
    return ImageHeader("bmp", int(width), int(height), 4)


def _tiff_value(data: bytes, order: str, entry: int) -> tuple[int, int, int]:
    """(tag, count, first value) of one IFD entry, the value read inline (SHORT/LONG)."""
    tag, kind, count = struct.unpack(order + "HHI", data[entry : entry + 8])
    if kind == 3:
        (value,) = struct.unpack(order + "H", data[entry + 8 : entry + 10])
    elif kind == 4:
        (value,) = struct.unpack(order + "I", data[entry + 8 : entry + 12])
    else:
        value = -1
    return int(tag), int(count), int(value)


def _tiff(data: bytes) -> ImageHeader:
    if data[:4] in _BIGTIFF_MAGIC:
        raise BadRequest(f"BigTIFF is not accepted; send {ACCEPTED_NAMES}")
    order = _TIFF_MAGIC[data[:4]]
    if len(data) < 8:
        raise BadRequest("truncated TIFF header")
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset < 8 or offset + 2 > len(data):
        raise BadRequest("corrupt TIFF: the first IFD is outside the file")
    (entries,) = struct.unpack(order + "H", data[offset : offset + 2])
    if offset + 2 + 12 * entries > len(data):
        raise BadRequest("corrupt TIFF: the first IFD runs past the end of the file")
    tags: dict[int, tuple[int, int]] = {}
    for i in range(entries):
        tag, count, value = _tiff_value(data, order, offset + 2 + 12 * i)
        tags[tag] = (count, value)
    if 256 not in tags or 257 not in tags or min(tags[256][1], tags[257][1]) < 0:
        raise BadRequest("corrupt TIFF: no ImageWidth/ImageLength in the first IFD")
    samples = tags.get(277, (1, 1))[1]
    bits_count, bits = tags.get(258, (1, 1))
    # BitsPerSample with several values is stored out of line: assume the widest OpenCV reads.
    bits = 64 if bits_count * 2 > 4 or bits < 1 else bits
    if not 1 <= samples <= 4 or bits > 64:
        raise BadRequest(f"TIFF with {samples} samples of {bits} bits; send 1 to 4 channels")
    return ImageHeader("tiff", tags[256][1], tags[257][1], max(samples, 3) * -(-bits // 8))


def _webp(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, 4)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 4)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height, 4)
    raise BadRequest("truncated or corrupt WebP header")


def _pnm(data: bytes) -> ImageHeader:
    """``P1``..``P6``: magic, then width and height as ASCII, with ``#`` comments between."""
    head = data[2:_PNM_HEADER_BYTES]
    numbers: list[int] = []
    pos = 0
    while len(numbers) < 2 and pos < len(head):
        char = head[pos : pos + 1]
        if char == b"#":
            end = head.find(b"\n", pos)
            pos = len(head) if end < 0 else end + 1
        elif char.isspace():
            pos += 1
        elif char.isdigit():
            end = pos
            while end < len(head) and head[end : end + 1].isdigit():
                end += 1
            if end - pos > 9:
                raise BadRequest("corrupt PNM header: a size of more than 9 digits")
            numbers.append(int(head[pos:end]))
            pos = end
        else:
            break
    if len(numbers) < 2:
        raise BadRequest("truncated or corrupt PPM/PGM/PBM header")
    wide = 6 if data[1:2] in (b"3", b"6") else 2  # 16-bit samples at most
    return ImageHeader("pnm", numbers[0], numbers[1], wide)


_PARSERS = {
    "png": _png,
    "jpeg": _jpeg,
    "bmp": _bmp,
    "tiff": _tiff,
    "webp": _webp,
    "pnm": _pnm,
}


def read_header(
    data: bytes, what: str = "image", formats: tuple[str, ...] = ACCEPTED_FORMATS
) -> ImageHeader:
    """The header of ``data`` if its format is one of ``formats``; BadRequest otherwise."""
    if not data:
        raise BadRequest(f"{what}: empty data; send {ACCEPTED_NAMES}")
    kind = sniff(data)
    if kind is None or kind not in formats:
        found = f"a {kind.upper()} file" if kind else "an unrecognised signature"
        if len(formats) == 1:  # a wire payload declares its encoding: the data must match
            raise BadRequest(f"{what}: not a {formats[0].upper()} ({found})")
        raise BadRequest(f"{what}: not a decodable image ({found}); send {ACCEPTED_NAMES}")
    try:
        return _PARSERS[kind](data)
    except struct.error:
        raise BadRequest(f"{what}: truncated {kind.upper()} header") from None
    except BadRequest as exc:
        raise BadRequest(f"{what}: {exc}") from None


def check_size(
    header: ImageHeader, max_pixels: int, what: str = "image", limit_name: str = "max_pixels"
) -> None:
    """Empty -> BadRequest; over the pixel limit or MAX_SIDE -> TooLarge with the numbers."""
    width, height = header.width, header.height
    if width <= 0 or height <= 0:
        raise BadRequest(f"{what}: image size {width}x{height} is empty")
    if width * height > max_pixels:
        raise TooLarge(
            f"{what}: {width}x{height} = {width * height} pixels exceeds "
            f"{limit_name} = {max_pixels}; downscale the image"
        )
    if max(width, height) > MAX_SIDE:
        raise TooLarge(
            f"{what}: a side of {max(width, height)} pixels exceeds {MAX_SIDE}; downscale the image"
        )


def png_check_chunks(data: bytes, max_chunks: int = 100_000) -> None:
    """Every chunk must fit in the data and IEND must come: a chunk that claims 4 GB (one
    flipped byte) makes OpenCV's decoder spin for seconds, so it never gets that far."""
    pos = len(PNG_SIGNATURE)
    for _ in range(max_chunks):
        if pos + 12 > len(data):
            break
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if pos > len(data):
            break
        if kind == b"IEND":
            return
    raise BadRequest("truncated or corrupt PNG (a chunk runs past the end, or no IEND)")


def decode_checked(
    data: bytes,
    *,
    flag: int,
    max_pixels: int,
    what: str = "image",
    formats: tuple[str, ...] = ACCEPTED_FORMATS,
    limit_name: str = "max_pixels",
) -> tuple[npt.NDArray[Any], ImageHeader]:
    """Header check, then ``cv2.imdecode(data, flag)``; every failure is a one-line error."""
    import cv2  # heavy: only when an image is actually decoded

    header = read_header(data, what, formats)
    check_size(header, max_pixels, what, limit_name)
    if header.format == "png":
        try:
            png_check_chunks(data)
        except BadRequest as exc:
            raise BadRequest(f"{what}: {exc}") from None
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as exc:
        message = (exc.err or str(exc)).strip().splitlines()[0]
        raise BadRequest(f"{what}: cannot decode {header.format.upper()}: {message}") from None
    if array is None or array.size == 0:
        raise BadRequest(f"{what}: truncated or corrupt {header.format.upper()}")
    if sorted(array.shape[:2]) != sorted((header.height, header.width)):
        # EXIF orientation may swap the sides; anything else is a lying header.
        raise BadRequest(
            f"{what}: decoded {array.shape[1]}x{array.shape[0]} but the header says "
            f"{header.width}x{header.height}; the file is corrupt"
        )
    return np.asarray(array), header
