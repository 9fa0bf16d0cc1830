"""Remote text encoder: ask another edged for prompt embeddings over ZeroMQ.

Config ``generation.text_encoder = "zmq://host:port"`` (or ``zmq+ipc:///path/requests.sock``)
sends a protocol-v1 ``text_encode`` request; the other daemon runs CLIP and replies with the
embeddings as one ``npy`` payload. The board then never loads the text encoder.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import BadRequest, ConfigError, SourceError

F32 = npt.NDArray[np.float32]
TIMEOUT_MS = 60_000


def endpoint_of(url: str) -> str:
    """``zmq://host:port`` -> ``tcp://host:port``; ``zmq+ipc:///p`` -> ``ipc:///p``."""
    if url.startswith("zmq://"):
        rest = url.removeprefix("zmq://")
        if ":" not in rest:
            raise ConfigError(f"text_encoder {url!r}: expected zmq://host:port")
        return f"tcp://{rest}"
    if url.startswith("zmq+"):
        return url.removeprefix("zmq+")
    raise ConfigError(f"text_encoder {url!r}: expected zmq://host:port or zmq+ipc:///path")


def request_embeddings(
    url: str, prompt: str, model: str, *, model_dir: str | None = None, timeout_ms: int = TIMEOUT_MS
) -> F32:
    """One ``text_encode`` round trip; raises SourceError naming the endpoint on failure."""
    import zmq

    from edged.wire.context import get_context
    from edged.wire.protocol import encode_request

    endpoint = endpoint_of(url)
    params: dict[str, Any] = {"model_dir": model_dir} if model_dir else {}
    frames = encode_request(
        uuid.uuid4().hex, "text_encode", model=model, prompt=prompt, params=params or None
    )
    sock = get_context().socket(zmq.REQ)
    sock.linger = 0
    sock.rcvtimeo = timeout_ms
    sock.sndtimeo = timeout_ms
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        reply = sock.recv_multipart()
    except zmq.Again as exc:
        raise SourceError(f"text encoder at {endpoint}: no reply in {timeout_ms} ms") from exc
    finally:
        sock.close(linger=0)
    return _parse_reply(endpoint, reply)


def _parse_reply(endpoint: str, reply: list[bytes]) -> F32:
    header: dict[str, Any] = json.loads(reply[0])
    if not header.get("ok"):
        error = header.get("error") or {}
        raise BadRequest(f"text encoder at {endpoint}: {error.get('message', 'failed')}")
    specs = header.get("payloads") or []
    names = [s.get("name") for s in specs]
    if "embeddings" not in names or len(reply) < 1 + len(specs):
        raise SourceError(f"text encoder at {endpoint}: reply has no embeddings payload")
    data = reply[1 + names.index("embeddings")]
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim != 3:
        raise SourceError(f"text encoder at {endpoint}: embeddings shape {arr.shape}, want 3-D")
    return np.asarray(arr, dtype=np.float32)
