"""Protocol v1 codec: request decoding, limits before decoding, reply/result encoding."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from edged.config import ZmqSettings
from edged.errors import BadRequest, Busy, EdgedError, ModelNotFound, TooLarge
from edged.tasks.base import TaskResult
from edged.testing import png_bomb
from edged.wire.payloads import decode_any, encode_array, jpeg_size, npy_header, png_size
from edged.wire.protocol import (
    WIRE_CODES,
    Reply,
    decode_request,
    encode_request,
    encode_result_message,
    peek_id,
)

LIMITS = ZmqSettings(max_frame_bytes=200_000, max_pixels=64 * 64)


def _rgb(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    data, used = encode_array(arr, "png")
    assert used == "png"
    return data


def _frames(header: dict[str, object], *payloads: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), *payloads]


def _header(**extra: object) -> dict[str, object]:
    return {"v": 1, "id": "r1", "task": "superres", **extra}


def test_png_request_decodes_to_rgb_task_request() -> None:
    img = _rgb()
    mask = (img[:, :, 0] > 128).astype(np.uint8) * 255
    frames = encode_request(
        "r1",
        "inpainting",
        payloads=[("image", "png", _png(img), {}), ("mask", "png", _png(mask), {})],
        model="opencv_telea",
        params={"radius": 3},
        points=[[1, 2, 1]],
        box=[0, 0, 5.5, 6],
        prompt="fill",
    )
    req = decode_request(frames, LIMITS, identity=(b"peer", b""))
    tr = req.task_request
    assert (req.id, req.task, req.model, req.identity) == (
        "r1",
        "inpainting",
        "opencv_telea",
        (b"peer", b""),
    )
    np.testing.assert_array_equal(tr.image, img)
    np.testing.assert_array_equal(tr.mask, mask)
    assert tr.points == [(1.0, 2.0, 1)]
    assert tr.box == (0.0, 0.0, 5.5, 6.0)
    assert (tr.prompt, tr.params) == ("fill", {"radius": 3})


def test_jpeg_and_raw_and_npy_payloads() -> None:
    # Smooth picture, distinct channels: JPEG is lossy, but R/G/B must not be swapped.
    img = np.zeros((32, 24, 3), np.uint8)
    img[..., 0] = np.linspace(150, 250, 24, dtype=np.uint8)
    img[..., 1], img[..., 2] = 40, 100
    jpeg, _ = encode_array(img, "jpeg")
    req = decode_request(
        _frames(_header(payloads=[{"name": "image", "encoding": "jpeg"}]), jpeg), LIMITS
    )
    assert req.task_request.image is not None
    assert req.task_request.image.shape == (32, 24, 3)
    assert np.abs(req.task_request.image.astype(int) - img).max() < 12
    img = _rgb(32, 24)

    raw_spec = {"name": "image", "encoding": "raw", "shape": [32, 24, 3], "dtype": "uint8"}
    req = decode_request(_frames(_header(payloads=[raw_spec]), img.tobytes()), LIMITS)
    np.testing.assert_array_equal(req.task_request.image, img)

    npy, _ = encode_array(img[:, :, 0], "npy")
    req = decode_request(
        _frames(_header(payloads=[{"name": "mask", "encoding": "npy"}]), npy), LIMITS
    )
    np.testing.assert_array_equal(req.task_request.mask, img[:, :, 0])


@pytest.mark.parametrize(
    ("frames", "error", "needle"),
    [
        ([], BadRequest, "empty request"),
        ([b"\xff\xfe"], BadRequest, "not valid UTF-8 JSON"),
        ([b"[1, 2]"], BadRequest, "JSON object"),
        ([b'{"v": 2, "id": "a", "task": "ping"}'], BadRequest, "v:"),
        ([b'{"v": 1, "id": "a", "task": "teleport"}'], BadRequest, "unknown task"),
        ([b'{"v": 1, "id": 7, "task": "ping"}'], BadRequest, "id:"),
        ([b'{"v": 1, "id": "a", "task": "ping", "extra": 1}'], BadRequest, "unknown field"),
        ([b'{"v": "1", "id": "a", "task": "ping"}'], BadRequest, "v:"),
        (
            _frames(_header(payloads=[{"name": "image", "encoding": "png"}])),
            BadRequest,
            "1 payloads but 0",
        ),
        (_frames(_header(), b"stray"), BadRequest, "0 payloads but 1"),
        ([b"{" + b" " * 70_000 + b"}"], TooLarge, "header is"),
        ([b"[" * 100_000], TooLarge, "header is"),
        ([b"[" * 60_000], BadRequest, "JSON"),
    ],
)
def test_garbage_is_a_clear_error(
    frames: list[bytes], error: type[EdgedError], needle: str
) -> None:
    with pytest.raises(error, match=None) as info:
        decode_request(frames, LIMITS)
    assert needle in str(info.value)


def test_frame_limit_is_checked_before_anything_is_parsed() -> None:
    big = b"\x00" * (LIMITS.max_frame_bytes + 1)
    with pytest.raises(TooLarge, match="max_frame_bytes"):
        decode_request([b"not even json", big], LIMITS)


def test_pixel_bomb_rejected_from_the_header() -> None:
    bomb = png_bomb(100_000, 100_000)
    assert len(bomb) < 2000
    assert png_size(bomb) == (100_000, 100_000)
    frames = _frames(_header(payloads=[{"name": "image", "encoding": "png"}]), bomb)
    with pytest.raises(TooLarge, match="100000x100000"):
        decode_request(frames, ZmqSettings())  # default max_pixels: 40 MP


def test_pixel_limit_on_small_images_and_raw_shapes() -> None:
    img = _rgb(65, 64)  # 4160 > 64*64
    with pytest.raises(TooLarge, match="max_pixels"):
        decode_request(
            _frames(_header(payloads=[{"name": "image", "encoding": "png"}]), _png(img)), LIMITS
        )
    spec = {"name": "image", "encoding": "raw", "shape": [65, 64, 3], "dtype": "uint8"}
    with pytest.raises(TooLarge):
        decode_request(_frames(_header(payloads=[spec]), img.tobytes()), LIMITS)


def test_jpeg_size_comes_from_the_sof_segment() -> None:
    jpeg, _ = encode_array(_rgb(40, 30), "jpeg")
    assert jpeg_size(jpeg) == (30, 40)
    # A JPEG claiming 60000 x 60000 in its SOF: rejected without decoding.
    sof = jpeg.index(b"\xff\xc0")
    bomb = jpeg[: sof + 5] + struct.pack(">HH", 60000, 60000) + jpeg[sof + 9 :]
    frames = _frames(_header(payloads=[{"name": "image", "encoding": "jpeg"}]), bomb)
    with pytest.raises(TooLarge, match="60000x60000"):
        decode_request(frames, ZmqSettings())


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_images_are_bad_requests(keep: float) -> None:
    img = _rgb(48, 48, seed=3)
    for encoding in ("png", "jpeg"):
        data, _ = encode_array(img, encoding)
        cut = data[: int(len(data) * keep)]
        frames = _frames(_header(payloads=[{"name": "image", "encoding": encoding}]), cut)
        with pytest.raises(BadRequest, match=r"truncated|corrupt"):
            decode_request(frames, LIMITS)


@pytest.mark.parametrize(
    ("spec", "payload", "needle"),
    [
        ({"name": "image", "encoding": "png"}, b"GIF89a....", "not a PNG"),
        ({"name": "image", "encoding": "jpeg"}, b"\x89PNG\r\n\x1a\n", "not a JPEG"),
        (
            {"name": "image", "encoding": "raw", "shape": [4, 4, 3], "dtype": "uint8"},
            b"\x00" * 47,
            "do not match",
        ),
        (
            {"name": "image", "encoding": "raw", "shape": [4, 4, 3], "dtype": "float32"},
            b"\x00" * 192,
            "uint8",
        ),
        (
            {"name": "image", "encoding": "raw", "shape": [4, 4], "dtype": "uint8"},
            b"\x00" * 16,
            "H x W x 3",
        ),
        (
            {"name": "image", "encoding": "raw", "shape": [4, 4, 3], "dtype": "O"},
            b"\x00" * 48,
            "not allowed",
        ),
        (
            {"name": "image", "encoding": "raw", "shape": [4, 4, 3], "dtype": "nope"},
            b"\x00" * 48,
            "dtype",
        ),
        ({"name": "image", "encoding": "raw"}, b"\x00" * 48, "needs shape and dtype"),
        ({"name": "mask", "encoding": "npy"}, b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O'}", "npy"),
        ({"name": "depth", "encoding": "png"}, b"", "payloads.0.name"),
    ],
)
def test_bad_payloads(spec: dict[str, object], payload: bytes, needle: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_request(_frames(_header(payloads=[spec]), payload), LIMITS)
    assert needle in str(info.value)


def test_npy_with_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest, match="object"):
        npy_header(path.read_bytes())


def test_peek_id_only_trusts_string_ids() -> None:
    assert peek_id(b'{"id": "abc"}') == "abc"
    assert peek_id(b'{"id": 5}') is None
    assert peek_id(b"garbage") is None
    assert peek_id(b'["id"]') is None


def test_error_replies_carry_wire_codes() -> None:
    cases = [
        (BadRequest("bad mask\nsecond line"), "bad_request"),
        (TooLarge("big"), "too_large"),
        (Busy("full"), "busy"),
        (ModelNotFound("no such model"), "unknown_model"),
        (RuntimeError("boom"), "internal"),
    ]
    for exc, code in cases:
        (frame,) = Reply.from_error(exc).to_frames("id-1")
        header = json.loads(frame)
        assert header == {"v": 1, "id": "id-1", "ok": False, "error": header["error"]}
        assert header["error"]["code"] == code
        assert "\n" not in header["error"]["message"]
    assert Reply.failure("made_up", "x").error_code == "internal"
    assert set(WIRE_CODES) == {
        "bad_request",
        "unknown_model",
        "too_large",
        "busy",
        "licence",
        "internal",
    }


def test_result_reply_and_message_round_trip() -> None:
    mask = (np.arange(12 * 16).reshape(12, 16) % 256).astype(np.uint8)
    logits = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    result = TaskResult(
        task="segmentation",
        model="selfie_segmentation",
        backend="onnx:cpu",
        outputs={"mask": mask, "rgb": _rgb(), "logits": logits},
        meta={"score": np.float32(0.25), "nan": float("nan")},
        latency_ms={"pre": 1.0, "run": 2.0, "post": 0.5, "total": 3.5},
    )
    frames = Reply.from_result(result, encoding="png").to_frames("q")
    header = json.loads(frames[0])
    assert header["ok"] is True
    assert header["meta"] == {"score": 0.25, "nan": None}
    assert [p["encoding"] for p in header["payloads"]] == ["png", "png", "npy"]
    decoded = {
        s["name"]: decode_any(s, f) for s, f in zip(header["payloads"], frames[1:], strict=True)
    }
    np.testing.assert_array_equal(decoded["mask"], mask)
    np.testing.assert_array_equal(decoded["rgb"], _rgb())
    np.testing.assert_array_equal(decoded["logits"], logits)

    topic, head, *payloads = encode_result_message(
        "cam0", 7, result, captured_at=10.0, published_at=11.0
    )
    assert topic == b"cam0.segmentation"
    msg = json.loads(head)
    assert {k: msg[k] for k in ("v", "stream", "seq", "task", "model", "backend")} == {
        "v": 1,
        "stream": "cam0",
        "seq": 7,
        "task": "segmentation",
        "model": "selfie_segmentation",
        "backend": "onnx:cpu",
    }
    assert (msg["captured_at"], msg["published_at"], msg["latency_ms"]["total"]) == (
        10.0,
        11.0,
        3.5,
    )
    assert len(payloads) == 3


def test_png_chunk_claiming_gigabytes_is_refused_before_decoding() -> None:
    """Found by the socket fuzz: one flipped byte in the IDAT length made OpenCV spin for
    seconds on the server thread. The chunk walk rejects it without decoding."""
    png = bytearray(_png(_rgb(8, 8)))
    idat = png.index(b"IDAT") - 4
    png[idat] = 0xFF  # length 0xFF0000xx: ~4 GB
    frames = _frames(_header(payloads=[{"name": "image", "encoding": "png"}]), bytes(png))
    with pytest.raises(BadRequest, match="chunk runs past the end"):
        decode_request(frames, LIMITS)
