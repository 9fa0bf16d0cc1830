"""Safe decoding (issue 15, item 3): every accepted format's size is read from its header
before any pixel is decoded; formats whose header edged does not read are refused."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged import imaging
from edged.errors import BadRequest, TooLarge
from edged.image_header import ACCEPTED_NAMES, read_header
from edged.wire import payloads


def bmp_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """118 bytes: file header, BITMAPINFOHEADER (4 bpp, 16 colours) and the palette; no
    pixels. OpenCV trusts the header and raises cv2.error (-215) validateInputImageSize."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4, 0, 0, 2835, 2835, 16, 0)
    data = b"BM" + struct.pack("<IHHI", 118, 0, 0, 118) + info + b"\x00" * 64
    assert len(data) == 118
    return data


def _rgb(h: int = 6, w: int = 9) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok, ext
    return bytes(buf)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".pgm"])
def test_every_accepted_format_decodes_and_reports_its_size(ext: str) -> None:
    image = _rgb()
    if ext == ".pgm":
        image = image[:, :, 0]
    data = _encode(ext, image)
    header = read_header(data)
    assert (header.width, header.height) == (9, 6)
    assert imaging.decode_image(data).shape == (6, 9, 3)
    decoded = payloads.decode_image("image", data, "any", channels=3, max_pixels=100)
    assert decoded.shape == (6, 9, 3)
    if ext in (".png", ".bmp", ".tiff", ".ppm"):  # lossless: the very pixels come back
        np.testing.assert_array_equal(decoded, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def test_bmp_bomb_is_too_large_with_the_numbers() -> None:
    for decode in (
        lambda d: imaging.decode_image(d, "inbox file"),
        lambda d: payloads.decode_image("cat.bmp", d, "any", channels=3, max_pixels=40_000_000),
    ):
        with pytest.raises(TooLarge, match=r"40000x40000 = 1600000000 pixels exceeds"):
            decode(bmp_bomb())


def test_cv2_error_becomes_bad_request() -> None:
    # A limit above OpenCV's own (2**30 pixels): its assertion fires and must not escape.
    with pytest.raises(BadRequest, match="cannot decode BMP") as info:
        imaging.decode_image(bmp_bomb(), max_pixels=1 << 31)
    assert not isinstance(info.value, TooLarge)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (b"P5\n# a comment\n50000 50000\n255\n" + b"\x00" * 64, "50000x50000"),
        (b"P6 9000 9000 255\n" + b"\x00" * 64, "9000x9000"),
        (  # WebP extended header: canvas 16384 x 16384 in 30 bytes
            b"RIFF"
            + struct.pack("<I", 22)
            + b"WEBPVP8X"
            + struct.pack("<I", 10)
            + b"\x00" * 4
            + (16383).to_bytes(3, "little") * 2,
            "16384x16384",
        ),
        (  # a JPEG SOF claiming 60000 x 60000
            b"\xff\xd8\xff\xc0\x00\x11\x08"
            + struct.pack(">HH", 60000, 60000)
            + b"\x03"
            + b"\x00" * 9,
            "60000x60000",
        ),
    ],
)
def test_header_bombs_of_other_formats_are_too_large(data: bytes, size: str) -> None:
    with pytest.raises(TooLarge, match=size):
        imaging.decode_image(data, max_pixels=40_000_000)


def test_a_side_over_65536_is_too_large_even_under_the_pixel_limit() -> None:
    with pytest.raises(TooLarge, match="a side of 100000 pixels"):
        imaging.decode_image(bmp_bomb(100_000, 2), max_pixels=40_000_000)


@pytest.mark.parametrize(
    ("ext", "dtype"),
    [
        (".ras", np.uint8),
        (".gif", np.uint8),
        (".hdr", np.float32),
        (".pfm", np.float32),
        (".pam", np.uint8),
    ],
)
def test_formats_without_a_checked_header_are_refused_naming_the_accepted(
    ext: str, dtype: type
) -> None:
    data = _encode(ext, np.zeros((4, 5, 3), dtype))
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None
    with pytest.raises(BadRequest, match=f"send {ACCEPTED_NAMES}") as info:
        imaging.decode_image(data)
    assert not isinstance(info.value, TooLarge)


def test_wire_payload_must_be_the_declared_encoding() -> None:
    with pytest.raises(BadRequest, match=r"not a PNG \(a BMP file\)"):
        payloads.decode_image("image", bmp_bomb(), "png", channels=3, max_pixels=10**6)


def test_lying_header_is_corrupt_not_a_crash() -> None:
    data = bytearray(_encode(".bmp", _rgb(6, 9)))
    struct.pack_into("<i", data, 18, 12)  # header says 12 wide, the pixels are 9 wide
    with pytest.raises(BadRequest):
        imaging.decode_image(bytes(data))


_MEASURE = """
import json, sys
from pathlib import Path
from edged import imaging
from edged.errors import EdgedError

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
imaging.decode_image(b"P5 1 1 255\\n\\x00")  # cv2 and its codecs loaded before measuring
before = hwm()
try:
    imaging.read_image(Path(sys.argv[1]))
    code = "ok"
except EdgedError as exc:
    code = exc.wire_code + ": " + str(exc)
print(json.dumps({"grew": hwm() - before, "code": code}))
"""


def test_deflate_tiff_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A ~1 MB deflate TIFF of 12000 x 12000: refused from its header, RSS unchanged."""
    path = tmp_path / "bomb.tiff"
    image = np.zeros((12_000, 12_000), np.uint8)
    ok, buf = cv2.imencode(".tiff", image, [cv2.IMWRITE_TIFF_COMPRESSION, 8])  # 8 = deflate
    assert ok
    del image
    path.write_bytes(bytes(buf))
    assert path.stat().st_size < 2_000_000
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result["code"].startswith("too_large: "), result
    assert "12000x12000 = 144000000 pixels" in result["code"]
    assert result["grew"] < 20_000_000, result  # decoding would cost >= 144 MB
