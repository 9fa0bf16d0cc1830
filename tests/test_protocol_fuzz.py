"""Property-based fuzzing of the request decoder: any frames -> a Request or an EdgedError.

Never another exception (that would be a crash on the server thread), and every error turns
into a well-formed one-frame error reply.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.config import ZmqSettings
from edged.errors import EdgedError
from edged.wire.payloads import encode_array
from edged.wire.protocol import TASKS, WIRE_CODES, Reply, Request, decode_request

LIMITS = ZmqSettings(max_frame_bytes=300_000, max_pixels=128 * 128)
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

payload_specs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "mask", "depth", ""]) | st.integers(),
        "encoding": st.sampled_from(["png", "jpeg", "npy", "raw", "bmp"]),
    },
    optional={
        "shape": st.lists(st.integers(-2, 70_000), max_size=5) | json_values,
        "dtype": st.sampled_from(["uint8", "float32", "O", "<U3", "V0", "x"]) | json_values,
    },
)

headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, "1", None, 1.0]),
        "id": st.text(max_size=140) | st.integers(),
        "task": st.sampled_from([*TASKS, "Ping", "", "x" * 40]),
        "model": st.none() | st.text(max_size=140) | st.integers(),
        "params": st.dictionaries(st.text(max_size=10), json_values, max_size=4) | json_values,
        "payloads": st.lists(payload_specs, max_size=3) | json_values,
        "prompt": st.text(max_size=50) | st.integers(),
        "points": st.lists(
            st.lists(st.integers(-5, 5) | st.floats(allow_nan=False), max_size=4), max_size=4
        ),
        "box": st.lists(st.floats(allow_nan=False) | st.text(max_size=2), max_size=5),
        "encoding": st.sampled_from(["png", "jpeg", "npy", "raw", "gif"]),
        "junk": json_values,
    },
)


def _image_bytes(seed: int, h: int, w: int, encoding: str) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if encoding == "raw":
        return img.tobytes()
    data, _ = encode_array(img, encoding)  # type: ignore[arg-type]
    return data


@st.composite
def image_frames(draw: st.DrawFn) -> bytes:
    """Real PNG/JPEG/npy/raw bytes, then truncated, bit-flipped or padded."""
    encoding = draw(st.sampled_from(["png", "jpeg", "npy", "raw"]))
    data = bytearray(
        _image_bytes(
            draw(st.integers(0, 9)), draw(st.integers(1, 40)), draw(st.integers(1, 40)), encoding
        )
    )
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "pad", "splice"]))
    if mutation == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif mutation == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif mutation == "pad":
        data += draw(st.binary(max_size=64))
    elif mutation == "splice":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _check(frames: list[bytes]) -> None:
    try:
        request = decode_request(frames, LIMITS)
    except EdgedError as exc:
        reply = Reply.from_error(exc)
        (frame,) = reply.to_frames(None)
        header = json.loads(frame)
        assert header["ok"] is False
        assert header["error"]["code"] in WIRE_CODES
        assert isinstance(header["error"]["message"], str)
        return
    assert isinstance(request, Request)
    tr = request.task_request
    for arr in (tr.image, tr.mask):
        if arr is not None:
            assert arr.dtype == np.uint8
            assert arr.shape[0] * arr.shape[1] <= LIMITS.max_pixels


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_random_bytes(frames: list[bytes]) -> None:
    _check(frames)


@FUZZ
@given(headers, st.lists(st.binary(max_size=100), max_size=3))
def test_random_json_headers(header: dict[str, Any], payloads: list[bytes]) -> None:
    _check([json.dumps(header).encode(), *payloads])


@FUZZ
@given(
    st.sampled_from(["superres", "segmentation", "inpainting"]),
    st.lists(
        st.tuples(
            st.sampled_from(["image", "mask"]), st.sampled_from(["png", "jpeg", "npy", "raw"])
        ),
        min_size=1,
        max_size=2,
    ),
    st.data(),
)
def test_mutated_images(task: str, specs: list[tuple[str, str]], data: st.DataObject) -> None:
    payloads = []
    frames = []
    for name, encoding in specs:
        spec: dict[str, Any] = {"name": name, "encoding": encoding}
        if encoding == "raw":
            spec["shape"] = data.draw(st.lists(st.integers(0, 50), min_size=2, max_size=3))
            spec["dtype"] = "uint8"
        payloads.append(spec)
        frames.append(data.draw(image_frames()))
    header = {"v": 1, "id": "fuzz", "task": task, "payloads": payloads}
    _check([json.dumps(header).encode(), *frames])
