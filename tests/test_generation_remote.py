"""Remote text encoder: a real edged RequestServer (ROUTER, ipc) answers ``text_encode``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.config import load_settings
from edged.daemon.server import RequestServer
from edged.engine import Engine
from edged.errors import BadRequest, ConfigError, SourceError
from edged.tasks.base import TaskRequest, TaskResult
from edged.tasks.generation import encode_text
from edged.tasks.generation.remote import endpoint_of, request_embeddings
from edged.tasks.generation.staged import clear_embedding_cache
from edged.testing import make_tiny_sd_dir, zmq_settings
from edged.wire.protocol import Request


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd_dir(tmp_path_factory.mktemp("gen") / "tiny")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A text-encoding edged: its own engine behind the real request server."""
    engine = Engine(load_settings())
    seen: list[str] = []

    def handler(request: Request) -> TaskResult:
        seen.append(request.task)
        return engine.run(request.task_request)

    srv = RequestServer(zmq_settings(tmp_path / "run"), handler, workers=1)
    srv.start()
    yield srv.endpoint, seen
    srv.stop()
    engine.close()


def test_remote_embeddings_equal_local(sd_dir: Path, server: tuple[str, list[str]]) -> None:
    endpoint, seen = server
    remote = request_embeddings(
        f"zmq+{endpoint}", "a photo of a cat", "tiny", model_dir=str(sd_dir)
    )
    local = encode_text(None, "a photo of a cat", sd_dir)
    assert seen == ["text_encode"]
    assert remote.shape == (1, 77, 32)
    assert remote.dtype == np.float32
    assert np.array_equal(remote, local)


def test_remote_text_encoder_gives_the_same_image(
    sd_dir: Path, server: tuple[str, list[str]], tmp_path: Path
) -> None:
    endpoint, seen = server
    request = TaskRequest(
        task="generation",
        model=str(sd_dir),
        prompt="the dog",
        params={"width": 64, "height": 64, "seed": 4, "steps": 2, "residency": "staged"},
    )
    clear_embedding_cache()
    local_engine = Engine(load_settings())
    board = Engine(load_settings(overrides={"generation": {"text_encoder": f"zmq+{endpoint}"}}))
    try:
        local = local_engine.run(request)
        clear_embedding_cache()
        remote = board.run(request)
        assert remote.meta["text_encoder"] == "remote"
        assert seen == ["text_encode"]
        assert np.array_equal(local.outputs["image"], remote.outputs["image"])
        # The board never loaded a text encoder of its own.
        loaded = [m["key"] for m in board.pool.stats()["models"]]
        assert not any(":text_encoder:" in k for k in loaded)
        assert board.pool.stats()["loads"] == 2
    finally:
        local_engine.close()
        board.close()


def test_remote_errors_are_clear(
    sd_dir: Path, server: tuple[str, list[str]], tmp_path: Path
) -> None:
    endpoint, _ = server
    with pytest.raises(BadRequest, match="not found"):
        request_embeddings(f"zmq+{endpoint}", "a cat", "no-such-model")
    dead = f"ipc://{tmp_path}/nobody.sock"
    with pytest.raises(SourceError, match="no reply"):
        request_embeddings(f"zmq+{dead}", "a cat", "tiny", timeout_ms=200)
    with pytest.raises(ConfigError, match="zmq://host:port"):
        endpoint_of("http://example")
    assert endpoint_of("zmq://10.0.0.2:5555") == "tcp://10.0.0.2:5555"
