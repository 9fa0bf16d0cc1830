"""Issue 15, item 8: SIGHUP with a new request endpoint, a forced unknown backend, the CURVE
key as a systemd credential (real daemon subprocesses) and the sha256 cache key (loader)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from edged.config import load_settings
from edged.errors import (
    BackendUnavailable,
    BadRequest,
    ModelVerificationError,
    ServerUnavailable,
)
from edged.models.catalog import Catalog, file_sha256
from edged.models.loader import load_model
from edged.models.schema import ModelEntry
from edged.testing import make_scale_model
from edged.testing.daemon import Daemon, config_toml
from edged.testing.waits import wait_until
from edged.testing.zmq import free_port
from edged.wire.client import Client
from edged.wire.payloads import encode_array
from edged.wire.protocol import encode_request
from edged.wire.security import generate_keys, read_key_pair, read_public_key


def _write(config: Path, top: dict[str, object], zmq: dict[str, object]) -> Path:
    head = {"log_format": "json", **top}
    config.write_text(config_toml(head, {"zmq": {"stats_interval_s": 0.5, **zmq}}))
    return config


def _ready_status(daemon: Daemon) -> str:
    """STATUS of the last READY=1 (reload) message; periodic stats lines come in between."""
    return [m for m in daemon.notify.messages if m.get("READY") == "1"][-1]["STATUS"]


def test_sighup_moves_the_request_endpoint_or_says_a_restart_is_needed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old, new = f"ipc://{run}/a.sock", f"ipc://{run}/b.sock"
    config = _write(tmp_path / "edged.toml", {"runtime_dir": str(run)}, {"requests": old})
    with Daemon(config, tmp_path, runtime_dir=run) as daemon:
        _write(config, {"runtime_dir": str(run)}, {"requests": new})
        daemon.signal(signal.SIGHUP)
        assert daemon.notify.wait_for("READY", "1", n=2, timeout=30), daemon.log()
        with Client(new, timeout_s=10) as client:
            server = client.stats()["server"]
        assert server["endpoint"] == new
        assert server["restart_needed"] is None
        assert _ready_status(daemon).endswith(f"requests on {new}")
        # Nothing was in flight: the old endpoint is gone.
        assert wait_until(lambda: not (run / "a.sock").exists(), 5)
        with Client(old, timeout_s=1) as client, pytest.raises(ServerUnavailable):
            client.ping()
        # tcp without CURVE is refused by the policy: the old endpoint stays, stats say why.
        _write(config, {"runtime_dir": str(run)}, {"requests": f"tcp://127.0.0.1:{free_port()}"})
        daemon.signal(signal.SIGHUP)
        assert daemon.notify.wait_for("READY", "1", n=3, timeout=30), daemon.log()
        with Client(new, timeout_s=10) as client:
            server = client.stats()["server"]
        assert server["endpoint"] == new
        assert "restart edged" in server["restart_needed"]
        assert "without CURVE" in server["restart_needed"]
        assert f"requests on {new} (requests stay on" in _ready_status(daemon)


def test_forced_unknown_backend_is_bad_request_naming_the_known(tmp_path: Path) -> None:
    config = _write(tmp_path / "edged.toml", {}, {})
    with Daemon(config, tmp_path) as daemon:
        with Client(daemon.requests_endpoint, timeout_s=30) as client:
            png, _ = encode_array(np.zeros((8, 8, 3), np.uint8), "png")
            reply = client.exchange(
                encode_request(
                    "b",
                    "superres",
                    payloads=[("image", "png", png, {})],
                    model="espcn_x2",
                    backend="nonesuch",
                )
            )
        header = json.loads(reply[0])
        assert header["error"]["code"] == "bad_request", header
        assert "unknown backend 'nonesuch'" in header["error"]["message"]
        assert "onnx:cpu" in header["error"]["message"]
        assert daemon.alive()


def test_curve_secret_key_from_systemd_credentials(tmp_path: Path) -> None:
    creds, clients, keys = tmp_path / "creds", tmp_path / "clients", tmp_path / "keys"
    server_public, server_secret = generate_keys(keys, "server")
    _, client_secret = generate_keys(clients, "alice")
    creds.mkdir()
    (creds / "edged-curve.key_secret").write_bytes(server_secret.read_bytes())
    os.chmod(creds, 0o500)  # what systemd makes of $CREDENTIALS_DIRECTORY
    server_secret.unlink()  # only the credential copy remains
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    run = tmp_path / "run"
    zmq = {
        "requests": endpoint,
        "curve_secret_key_file": "credential:edged-curve.key_secret",
        "curve_allowed_clients_dir": str(clients),
    }
    config = _write(tmp_path / "edged.toml", {"runtime_dir": str(run)}, zmq)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    with Daemon(config, tmp_path, env=env, runtime_dir=run):
        server_key = read_public_key(server_public)
        with Client(
            endpoint,
            timeout_s=10,
            curve_server_key=server_key,
            curve_client_keys=read_key_pair(client_secret),
        ) as client:
            assert client.stats()["server"]["endpoint"] == endpoint
    # Without $CREDENTIALS_DIRECTORY the daemon refuses to start and says what is missing.
    (tmp_path / "bare").mkdir()
    bare = Daemon(config, tmp_path / "bare", runtime_dir=run)
    try:
        with pytest.raises(BackendUnavailable, match="CREDENTIALS_DIRECTORY"):
            bare.start(wait_ready=30)
    finally:
        bare.close()


def test_sha256_cache_rechecks_a_file_changed_with_the_same_size_and_mtime(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    onnx = make_scale_model(models / "scale.onnx", 2.0)
    entry = ModelEntry.model_validate(
        {
            "name": "scale",
            "task": "superres",
            "family": "sr-rgb",
            "licence": "MIT",
            "files": [
                {
                    "format": "onnx",
                    "path": onnx.name,
                    "sha256": file_sha256(onnx),
                    "size": onnx.stat().st_size,
                }
            ],
        }
    )
    catalog, settings = Catalog({"scale": entry}, [models]), load_settings()

    def load() -> None:
        load_model(
            entry,
            catalog,
            ["onnx:cpu"],
            threads=1,
            precision="fp32",
            cache_dir=settings.cache_dir,
            settings=settings,
        )

    load()  # verified and cached
    st = onnx.stat()
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    with onnx.open("r+b") as fh:  # in place: same inode, new ctime
        fh.write(bytes(data))
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (onnx.stat().st_size, onnx.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(ModelVerificationError, match="has sha256"):
        load()


def test_unknown_backend_is_bad_request_in_the_engine(tmp_path: Path) -> None:
    from edged.engine import check_backend

    with pytest.raises(BadRequest, match=r"known backends: .*onnx:cpu"):
        check_backend("nonesuch")
    check_backend("onnx:cpu")
