"""Hostile and careless inputs for ``edged bench reliability``: what the field sends.

Each request case names the reply codes it may get: a result (``ok``) where the daemon can do
the work inside its budget, else the one error code that names the problem. ``internal`` is
never allowed: it means an input reached code that did not expect it. The inbox cases are
files (and things that are not files) dropped into a watched directory.
"""

from __future__ import annotations

import json
import os
import random
import struct
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = (".png", ".jpg", ".bmp", ".tiff", ".webp")
REFUSED = frozenset({"bad_request", "too_large"})
WIRE_ENCODING = {".png": "png", ".jpg": "jpeg"}
"""What a request may declare; the inbox reads every format in FORMATS."""


@dataclass
class Case:
    """One request: its frames and the reply codes that are a correct answer to it."""

    kind: str
    frames: list[bytes]
    allowed: frozenset[str]
    notes: dict[str, Any] = field(default_factory=dict)


def bmp_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A 118-byte BMP whose header claims ``width x height`` 24-bit pixels (no pixel data)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = info + b"\0" * 64
    header = b"BM" + struct.pack("<IHHI", 14 + len(body), 0, 0, 14 + len(info))
    return header + body


def tiff_bomb(side: int = 12_000) -> bytes:
    """A deflate TIFF of ``side x side`` zero pixels (grey, one strip): ~0.1 % of its size."""
    data = zlib.compress(bytes(side) * side, 9)
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 1, 8),
        (259, 3, 1, 8),  # Adobe deflate
        (262, 3, 1, 1),  # black is zero
        (273, 4, 1, 8),  # strip data right after the 8-byte header
        (277, 3, 1, 1),
        (278, 4, 1, side),
        (279, 4, 1, len(data)),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8 + len(data)) + data + ifd


def flat_image(height: int, width: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """A smooth RGB image: compresses to a few kB as PNG even at 3000 x 3000."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(-(-height // 64), -(-width // 64), 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(base, 64, axis=0), 64, axis=1)[:height, :width])


def encode_any(image: np.ndarray[Any, Any], ext: str) -> bytes:
    """``image`` (RGB) in any format this OpenCV build writes, BMP/TIFF/WebP included."""
    import cv2

    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"OpenCV cannot write {ext}")
    return bytes(buf)


def request(
    rid: str, task: str, payloads: list[tuple[str, bytes]], encoding: str = "png", **fields: Any
) -> list[bytes]:
    """The wire frames of a v1 request with encoded image payloads."""
    header = {"v": 1, "id": rid, "task": task, **fields}
    if payloads:
        header["payloads"] = [{"name": name, "encoding": encoding} for name, _ in payloads]
    return [json.dumps(header).encode(), *(data for _, data in payloads)]


def named_cases(models: dict[str, str]) -> Iterator[Case]:
    """Every case the field hardening issue saw, one request each."""
    from edged.imaging import encode_image  # OpenCV: not at import (the CLI registers this suite)

    png300 = encode_image(flat_image(300, 300), ".png")
    png3000 = encode_image(flat_image(3000, 3000), ".png")
    sr, seg = models["sr_large"], models["segmentation"]

    def case(kind: str, allowed: Collection[str], task: str, payloads: Any, **kw: Any) -> Case:
        return Case(kind, request(kind, task, payloads, **kw), frozenset(allowed))

    yield case("sr_3000px_x4", {"ok", "too_large"}, "superres", [("image", png3000)], model=sr)
    yield case("sr_tile0", REFUSED, "superres", [("image", png300)], model=sr, params={"tile": 0})
    for value in (0, -1, "x"):
        yield case(
            f"sr_activation_{value}", REFUSED, "superres", [("image", png300)], model=sr,
            params={"activation_bytes_per_px": value},
        )  # fmt: skip
    yield case(
        "sr_tile1_halo0", REFUSED, "superres", [("image", png300)], model=sr,
        params={"tile": 1, "halo": 0},
    )  # fmt: skip
    yield case("bmp_bomb", REFUSED, "segmentation", [("image", bmp_bomb())], model=seg)
    yield case("tiff_bomb", REFUSED, "segmentation", [("image", tiff_bomb())], model=seg)
    yield case(
        "blur_nan", {"bad_request"}, "segmentation", [("image", png300)], model=seg,
        params={"output": "blur", "radius": "nan"},
    )  # fmt: skip
    yield case("unknown_backend", {"bad_request"}, "segmentation", [("image", png300)],
               model=seg, backend="nonesuch")  # fmt: skip
    yield Case(
        "many_frames",
        request("many_frames", "segmentation", [("image", png300)], model=seg)
        + [b"\0" * (8 << 20)] * 12,
        frozenset({"bad_request", "too_large"}),
    )
    if "generation" in models:
        gen = models["generation"]
        for kind, params in (
            ("gen_seed_negative", {"seed": -1, "steps": 1}),
            ("gen_lora_shadow", {"lora": "/etc/shadow", "steps": 1}),
            ("gen_lora_environ", {"lora": "/proc/self/environ", "steps": 1}),
        ):
            yield Case(
                kind,
                request(kind, "generation", [], model=gen, prompt="a cat", params=params),
                frozenset({"bad_request"}),
            )


def variant_cases(models: dict[str, str], count: int, seed: int) -> Iterator[Case]:
    """Generated variants: formats x sizes x parameters, each with its allowed answers."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    sizes = [(16, 16), (300, 200), (1500, 1100)]
    params: list[tuple[dict[str, Any], frozenset[str]]] = [
        ({}, frozenset({"ok", "too_large"})),
        ({"tile": 64}, frozenset({"ok", "too_large"})),
        ({"tile": 0}, REFUSED),
        ({"tile": "inf"}, REFUSED),
        ({"tile": -5}, REFUSED),
        ({"halo": 10**9}, REFUSED),
        ({"unknown_key": 1}, REFUSED),
    ]
    for i in range(count):
        ext = rng.choice(FORMATS)
        h, w = rng.choice(sizes)
        choice, allowed = rng.choice(params)
        data = encode_any(flat_image(h, w, seed=i), ext)
        declared = WIRE_ENCODING.get(ext)
        if declared is None:  # BMP/TIFF/WebP: requests carry PNG or JPEG only
            allowed = REFUSED
        if rng.random() < 0.2:
            data = data[: max(8, len(data) // 3)]  # truncated: a decode error, not a crash
            allowed = REFUSED
        kind = f"variant_sr{ext}_{h}x{w}_{'-'.join(choice) or 'default'}"
        frames = request(
            f"v{i}", "superres", [("image", data)], declared or "png",
            model=models["sr_small"], params=choice,
        )  # fmt: skip
        yield Case(kind, frames, allowed, {"format": ext, "size": [h, w]})


def drop_inbox_files(inbox: Path, outside: Path) -> list[str]:
    """Hostile inbox inputs; returns the names dropped (each must get one record)."""
    from edged.imaging import encode_image

    outside.mkdir(parents=True, exist_ok=True)
    good = encode_image(flat_image(96, 128), ".png")
    secret = outside / "outside.png"
    secret.write_bytes(good)
    files = {
        "good.png": good,
        "bomb.bmp": bmp_bomb(),
        "bomb.tiff": tiff_bomb(),
        "truncated.png": good[:40],
        "empty.png": b"",
        ("n" * 250) + ".png": good,
    }
    staging = inbox.parent / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (staging / name).write_bytes(data)
        os.replace(staging / name, inbox / name)
    fifo = staging / "fifo.png"
    os.mkfifo(fifo)
    os.replace(fifo, inbox / "fifo.png")
    link = staging / "link.png"
    link.symlink_to(secret)
    os.replace(link, inbox / "link.png")
    return [*files, "fifo.png", "link.png"]
