"""Access control: ipc file modes, tcp needs CURVE, ZAP allow-list, stale/live sockets."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edged.daemon.publisher import Publisher
from edged.daemon.server import RequestServer
from edged.errors import ConfigError, ServerUnavailable
from edged.testing import zmq_settings
from edged.wire.client import Client, Subscriber
from edged.wire.protocol import Reply, Request
from edged.wire.security import generate_keys, read_key_pair, read_public_key


def _echo(request: Request) -> Reply:
    return Reply.success(task=request.task, echo=request.params)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    """A server key pair, an allowed client key pair and an unknown one."""
    server_pub, server_secret = generate_keys(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    client_pub, client_secret = generate_keys(tmp_path / "clients", "alice")
    allowed.mkdir()
    (allowed / "alice.key").write_bytes(client_pub.read_bytes())
    _, stranger_secret = generate_keys(tmp_path / "strangers", "mallory")
    return {
        "server_public": read_public_key(server_pub),
        "server_secret_file": server_secret,
        "allowed_dir": allowed,
        "alice": read_key_pair(client_secret),
        "mallory": read_key_pair(stranger_secret),
    }


@pytest.fixture
def started() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in things:
        thing.stop() if isinstance(thing, RequestServer) else thing.close()


def test_ipc_sockets_are_0660_in_a_0750_runtime_dir(tmp_path: Path, started: list[Any]) -> None:
    run = tmp_path / "fresh" / "run"
    settings = zmq_settings(run)
    server = RequestServer(settings, _echo, workers=1)
    server.start()
    started.append(server)
    publisher = Publisher(settings)
    started.append(publisher)
    assert _mode(run) == 0o750
    for name in ("requests.sock", "results.sock"):
        path = run / name
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert _mode(path) == 0o660


def test_tcp_without_curve_is_refused(tmp_path: Path) -> None:
    settings = zmq_settings(
        tmp_path / "run", requests="tcp://127.0.0.1:*", results="tcp://127.0.0.1:*"
    )
    with pytest.raises(ConfigError, match=r"curve_secret_key_file.*allow_insecure_tcp"):
        RequestServer(settings, _echo).start()
    with pytest.raises(ConfigError, match="tcp without CURVE"):
        Publisher(settings)


def test_insecure_tcp_only_when_allowed(tmp_path: Path, started: list[Any]) -> None:
    settings = zmq_settings(tmp_path / "run", requests="tcp://127.0.0.1:*", allow_insecure_tcp=True)
    server = RequestServer(settings, _echo, workers=1)
    with capture_logs() as logs:
        server.start()
    started.append(server)
    assert server.endpoint.startswith("tcp://127.0.0.1:")
    assert not server.endpoint.endswith("*")
    assert any(e["event"] == "insecure_tcp" for e in logs)
    with Client(server.endpoint, timeout_s=20) as client:
        assert client.request("superres", params={"k": 1}).header["echo"] == {"k": 1}


def test_curve_needs_an_allowed_clients_dir(tmp_path: Path, keys: dict[str, Any]) -> None:
    settings = zmq_settings(
        tmp_path / "run",
        requests="tcp://127.0.0.1:*",
        curve_secret_key_file=keys["server_secret_file"],
    )
    with pytest.raises(ConfigError, match="curve_allowed_clients_dir"):
        RequestServer(settings, _echo).start()


def test_curve_allowed_key_works_unknown_key_is_rejected_and_logged(
    tmp_path: Path, keys: dict[str, Any], started: list[Any]
) -> None:
    settings = zmq_settings(
        tmp_path / "run",
        requests="tcp://127.0.0.1:*",
        results="tcp://127.0.0.1:*",
        curve_secret_key_file=keys["server_secret_file"],
        curve_allowed_clients_dir=keys["allowed_dir"],
    )
    server = RequestServer(settings, _echo, workers=1)
    server.start()
    started.append(server)
    publisher = Publisher(settings)
    started.append(publisher)

    alice = Client(
        server.endpoint,
        timeout_s=20,
        curve_server_key=keys["server_public"],
        curve_client_keys=keys["alice"],
    )
    with alice:
        assert alice.ping()["ok"] is True

    with capture_logs() as logs:
        mallory = Client(
            server.endpoint,
            timeout_s=1.0,
            curve_server_key=keys["server_public"],
            curve_client_keys=keys["mallory"],
        )
        with mallory, pytest.raises(ServerUnavailable, match="allowed-clients"):
            mallory.ping()
        plain = Client(server.endpoint, timeout_s=1.0)  # no CURVE at all
        with plain, pytest.raises(ServerUnavailable):
            plain.ping()
    denied = [e for e in logs if e["event"] == "zap_denied"]
    assert denied
    assert denied[0]["client_key"] == keys["mallory"][0].decode()

    # The PUB side is behind the same allow-list: alice receives, mallory does not.
    with (
        Subscriber(
            publisher.endpoint,
            ["events."],
            curve_server_key=keys["server_public"],
            curve_client_keys=keys["alice"],
        ) as sub,
        Subscriber(
            publisher.endpoint,
            ["events."],
            curve_server_key=keys["server_public"],
            curve_client_keys=keys["mallory"],
        ) as bad,
    ):
        message = None
        for _ in range(200):  # PUB/SUB slow joiner: publish until the subscription is live
            publisher.publish_event("test.hello", {"n": 1})
            message = sub.recv(timeout_s=0.05)
            if message is not None:
                break
        assert message is not None
        assert message.topic == "events.test.hello"
        publisher.publish_event("test.hello", {"n": 2})
        assert sub.recv(timeout_s=5) is not None
        assert bad.recv(timeout_s=0.2) is None


def test_a_live_socket_is_not_stolen(tmp_path: Path, started: list[Any]) -> None:
    settings = zmq_settings(tmp_path / "run")
    first = RequestServer(settings, _echo, workers=1)
    first.start()
    started.append(first)
    with pytest.raises(ConfigError, match="already running"):
        RequestServer(settings, _echo).start()
    with Client(first.endpoint, timeout_s=20) as client:
        assert client.ping()["ok"] is True


def test_refuses_a_non_socket_and_an_overlong_path(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "requests.sock").write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        RequestServer(zmq_settings(run), _echo).start()
    assert (run / "requests.sock").read_text() == "not a socket"
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ConfigError, match="shorter runtime_dir"):
        RequestServer(zmq_settings(deep), _echo).start()


def test_keygen_writes_a_private_secret(tmp_path: Path) -> None:
    public, secret = generate_keys(tmp_path / "k", "node1")
    assert _mode(secret) == 0o600
    pub, sec = read_key_pair(secret)
    assert read_public_key(public) == pub
    assert len(sec) == 40
    assert read_public_key(pub.decode()) == pub
    with pytest.raises(ConfigError, match="no secret key"):
        read_key_pair(public)
    assert not os.access(tmp_path / "k" / "missing.key", os.F_OK)
