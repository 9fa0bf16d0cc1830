"""Protocol v1 codec: request frames -> ``Request``, ``Reply``/``TaskResult`` -> frames.

Pure functions and dataclasses, no sockets: the server, the publisher, the client and the
fuzz tests all share this module. The shapes are specified in docs/protocol.md. Validation
happens once here, at the boundary (pydantic, strict JSON types); every failure is an
``EdgedError`` whose ``wire_code`` becomes ``error.code``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import ConfigDict, Field, ValidationError

from edged.config import ZmqSettings
from edged.errors import BadRequest, EdgedError, TooLarge
from edged.schema import StrictModel
from edged.tasks.base import TaskRequest, TaskResult
from edged.wire.payloads import Encoding, decode_array, decode_image, encode_outputs

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 65_536
"""A header is a small JSON object; anything bigger is refused before parsing."""
MAX_PROMPT_CHARS = 4096
MAX_POINTS = 256
BUILTIN_TASKS = ("ping", "stats", "models")
WIRE_CODES = ("bad_request", "unknown_model", "too_large", "busy", "licence", "internal")

TaskName = Literal[
    "segmentation",
    "superres",
    "inpainting",
    "generation",
    "text_encode",
    "stats",
    "models",
    "ping",
]
TASKS: tuple[str, ...] = get_args(TaskName)


class _WireModel(StrictModel):
    # Strict types: "1" is not 1 and 1.0 is not a label; the client must send the right JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Dim = Annotated[int, Field(ge=0, le=1 << 31)]


class PayloadSpec(_WireModel):
    """One payload frame: what it is and how its bytes are coded."""

    name: Literal["image", "mask"]
    encoding: Literal["png", "jpeg", "npy", "raw"]
    shape: list[Dim] | None = Field(default=None, max_length=4)
    dtype: str | None = Field(default=None, max_length=16)


class RequestHeader(_WireModel):
    """Frame 0 of a request (JSON object)."""

    v: Literal[1]
    id: str = Field(min_length=1, max_length=128)
    task: TaskName
    model: str | None = Field(default=None, min_length=1, max_length=128)
    backend: str | None = Field(default=None, min_length=1, max_length=32)
    params: dict[str, Any] = Field(default_factory=dict)
    payloads: list[PayloadSpec] = Field(default_factory=list, max_length=2)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    points: list[tuple[float, float, int]] = Field(default_factory=list, max_length=MAX_POINTS)
    box: tuple[float, float, float, float] | None = None
    encoding: Literal["png", "jpeg", "npy", "raw"] | None = None
    """How image outputs of the reply are coded (default png; non-images are always npy)."""


@dataclass
class Request:
    """A validated request, ready for the handler. ``identity`` routes the reply back."""

    id: str
    task: str
    model: str | None
    params: dict[str, Any]
    task_request: TaskRequest
    encoding: Encoding = "png"
    identity: tuple[bytes, ...] = ()
    received_at: float = field(default_factory=time.time)


@dataclass
class Reply:
    """One reply: ``ok`` with header fields and payload frames, or an error code/message."""

    ok: bool
    fields: dict[str, Any] = field(default_factory=dict)
    frames: list[bytes] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def success(cls, frames: list[bytes] | None = None, **fields: Any) -> Reply:
        return cls(ok=True, fields=fields, frames=list(frames or []))

    @classmethod
    def failure(cls, code: str, message: str) -> Reply:
        if code not in WIRE_CODES:
            code = "internal"
        return cls(ok=False, error_code=code, error_message=message)

    @classmethod
    def from_error(cls, exc: BaseException) -> Reply:
        """EdgedError -> its wire_code; anything else is ``internal`` (the bug is logged)."""
        if isinstance(exc, EdgedError):
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return cls.failure(exc.wire_code, message)
        return cls.failure("internal", f"internal error: {type(exc).__name__}")

    @classmethod
    def from_result(cls, result: TaskResult, *, encoding: Encoding = "png") -> Reply:
        specs, frames = encode_outputs(result.outputs, encoding)
        return cls.success(
            frames,
            task=result.task,
            model=result.model,
            backend=result.backend,
            latency_ms=result.latency_ms,
            meta=result.meta,
            payloads=specs,
        )

    def to_frames(self, request_id: str | None) -> list[bytes]:
        header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "ok": self.ok}
        if self.ok:
            header.update(self.fields)
            header.setdefault("payloads", [])
            return [dumps(header), *self.frames]
        header["error"] = {"code": self.error_code, "message": self.error_message}
        return [dumps(header)]


# ---------------------------------------------------------------- JSON


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; numpy values converted, never NaN (not JSON)."""
    try:
        text = json.dumps(obj, default=_json_default, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_scrub(obj), default=_json_default, separators=(",", ":"))
    return text.encode("utf-8")


def _scrub(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    return _finite(obj)


def loads_object(data: bytes, what: str = "header") -> dict[str, Any]:
    """Frame -> JSON object; BadRequest for anything else."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"{what} is not valid UTF-8 JSON: {type(exc).__name__}") from exc
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- requests


def peek(header: bytes) -> tuple[str | None, str | None]:
    """(id, task) of a header if readable, without validation: for error and busy replies."""
    if len(header) > MAX_HEADER_BYTES:
        return None, None
    try:
        obj = json.loads(header)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    rid, task = obj.get("id"), obj.get("task")
    return (
        rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None,
        task if isinstance(task, str) else None,
    )


def peek_id(header: bytes) -> str | None:
    """The request id, if the header is a JSON object with a string id (for error replies)."""
    return peek(header)[0]


def parse_header(data: bytes) -> RequestHeader:
    if len(data) > MAX_HEADER_BYTES:
        raise TooLarge(f"header is {len(data)} bytes; the limit is {MAX_HEADER_BYTES}")
    loads_object(data)  # a clear message for non-JSON / non-object before pydantic's
    try:
        return RequestHeader.model_validate_json(data)
    except ValidationError as exc:
        raise BadRequest(f"invalid header: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    if err["type"] == "literal_error" and where == "task":
        message = f"unknown task; one of {', '.join(TASKS)}"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"


def decode_request(
    frames: list[bytes], limits: ZmqSettings, identity: tuple[bytes, ...] = ()
) -> Request:
    """Request frames (without the routing envelope) -> ``Request``; raises EdgedError."""
    if not frames:
        raise BadRequest("empty request: expected [header, payload...]")
    for i, frame in enumerate(frames):
        if len(frame) > limits.max_frame_bytes:
            raise TooLarge(
                f"frame {i} is {len(frame)} bytes; zmq.max_frame_bytes is {limits.max_frame_bytes}"
            )
    header = parse_header(frames[0])
    payloads = frames[1:]
    if len(payloads) != len(header.payloads):
        raise BadRequest(
            f"header lists {len(header.payloads)} payloads but {len(payloads)} frames follow"
        )
    arrays: dict[str, Any] = {}
    for spec, data in zip(header.payloads, payloads, strict=True):
        if spec.name in arrays:
            raise BadRequest(f"payload {spec.name!r} given twice")
        arrays[spec.name] = _decode_payload(spec, data, limits.max_pixels)
    task_request = TaskRequest(
        task=header.task,
        model=header.model,
        image=arrays.get("image"),
        mask=arrays.get("mask"),
        points=[(float(x), float(y), int(label)) for x, y, label in header.points],
        box=header.box,
        prompt=header.prompt,
        params=dict(header.params),
        backend=header.backend,
    )
    return Request(
        id=header.id,
        task=header.task,
        model=header.model,
        params=dict(header.params),
        task_request=task_request,
        encoding=header.encoding or "png",
        identity=identity,
    )


def _decode_payload(spec: PayloadSpec, data: bytes, max_pixels: int) -> Any:
    channels = 3 if spec.name == "image" else 1
    encoding = spec.encoding
    if encoding == "png" or encoding == "jpeg":  # noqa: PLR1714 - narrows the Literal for mypy
        return decode_image(spec.name, data, encoding, channels=channels, max_pixels=max_pixels)
    arr = decode_array(
        spec.name,
        data,
        encoding,
        shape=spec.shape,
        dtype=spec.dtype,
        max_elements=max_pixels * channels,
    )
    return _check_image_array(spec.name, arr, channels)


def _check_image_array(name: str, arr: Any, channels: int) -> Any:
    if arr.dtype != np.uint8:
        raise BadRequest(f"payload {name!r}: dtype must be uint8, got {arr.dtype}")
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    want = "H x W x 3" if channels == 3 else "H x W"
    ok_shape = arr.ndim == 3 and arr.shape[2] == 3 if channels == 3 else arr.ndim == 2
    if not ok_shape or arr.size == 0:
        raise BadRequest(f"payload {name!r}: shape must be {want}, got {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def encode_request(
    request_id: str,
    task: str,
    *,
    payloads: Sequence[tuple[str, Encoding, bytes, dict[str, Any]]] = (),
    **fields: Any,
) -> list[bytes]:
    """Client side: header + payload frames. ``payloads`` = (name, encoding, bytes, extra)."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "task": task}
    header.update({k: v for k, v in fields.items() if v is not None})
    specs = [{"name": n, "encoding": e, **extra} for n, e, _, extra in payloads]
    if specs:
        header["payloads"] = specs
    return [dumps(header), *(data for _, _, data, _ in payloads)]


# ---------------------------------------------------------------- results (PUB)


def result_topic(stream: str, task: str) -> bytes:
    return f"{stream}.{task}".encode()


def encode_result_message(
    stream: str,
    seq: int,
    result: TaskResult,
    *,
    captured_at: float,
    encoding: Encoding = "png",
    published_at: float | None = None,
) -> list[bytes]:
    """``[topic, header, payload...]`` of one result on the PUB socket."""
    specs, frames = encode_outputs(result.outputs, encoding)
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "stream": stream,
        "seq": seq,
        "task": result.task,
        "model": result.model,
        "backend": result.backend,
        "captured_at": captured_at,
        "published_at": time.time() if published_at is None else published_at,
        "latency_ms": result.latency_ms,
        "payloads": specs,
        "meta": result.meta,
    }
    return [result_topic(stream, result.task), dumps(header), *frames]
