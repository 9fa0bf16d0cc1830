"""Test helpers: zmq: temporary endpoints."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np


def zmq_settings(runtime_dir: Path, **zmq: Any) -> Any:
    """Settings whose default ipc endpoints live in ``runtime_dir`` (keep it short: 107 bytes)."""
    from edged.config import Settings, ZmqSettings

    return Settings(runtime_dir=runtime_dir, zmq=ZmqSettings(**zmq))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its real CRC."""
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking RGB PNG of a few hundred bytes claiming ``width`` x ``height`` pixels.

    The IDAT is a short run of zlib-compressed zero rows, as a decompression bomb would start:
    a decoder that trusts the header allocates width*height*3 bytes before noticing.
    """
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 8, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


class ScaleModelHandler:
    """A real request handler: runs the tiny ONNX ``make_scale_model`` through edged.runtime.

    RGB uint8 in, ``clip(image * scale)`` out, as task results. ``gate`` (an Event) holds
    every call until set, so tests can keep requests in flight (``busy``) without sleeping.
    """

    def __init__(self, model_path: Path, *, gate: Any = None, task_name: str = "superres") -> None:
        from edged.runtime import config_for, open_session

        self.session = open_session(config_for("onnx:cpu", threads=1), model_path, warmup=False)
        self.gate = gate
        self.task_name = task_name
        self.calls = 0

    def __call__(self, request: Any) -> Any:
        from edged.errors import BadRequest
        from edged.tasks.base import TaskResult

        self.calls += 1
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise TimeoutError("test gate never opened")
        image = request.task_request.image
        if image is None:
            raise BadRequest("this handler needs an image payload")
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        y = self.session.run({"input": x})["output"]
        out = np.clip(np.rint(y[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
        return TaskResult(
            task=request.task,
            model="scale",
            backend=self.session.backend,
            outputs={"image": out},
            meta={"calls": self.calls},
            latency_ms={"total": 0.0},
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
