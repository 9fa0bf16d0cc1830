"""Who may talk to the RUNNING daemon, and what a request may make it touch.

test_security.py checks the RequestServer/Publisher objects in-process; here the same rules
are checked on ``python -m edged run``: tcp refused without CURVE unless allowed, ZAP denial
logged, ipc socket modes, file-path params confined to model_dirs, limits before decoding.
``systemd-analyze security`` (exposure <= 2.0) is tests/test_systemd.py.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.bench.fuzz import config_toml
from edged.errors import BadRequest, ServerUnavailable, TooLarge
from edged.testing import make_tiny_sd_dir, png_bomb
from edged.testing.daemon import Daemon
from edged.testing.zmq import free_port
from edged.wire.client import Client
from edged.wire.protocol import encode_request
from edged.wire.security import generate_keys, read_key_pair, read_public_key

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def daemon_for(work: Path, top: dict[str, Any], zmq: dict[str, Any] | None = None) -> Daemon:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "edged.toml"
    sections = {"zmq": {"stats_interval_s": 1.0, **(zmq or {})}}
    config.write_text(config_toml({"log_format": "json", **top}, sections))
    return Daemon(config, work)


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return bytes(buf.tobytes())


# ---------------------------------------------------------------- tcp and CURVE


def test_tcp_without_curve_is_refused_at_start_unless_explicitly_allowed(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    refused = daemon_for(tmp_path / "a", {}, {"requests": endpoint})
    refused.start(wait_ready=0)
    try:
        assert refused.wait(60) != 0
    finally:
        refused.close()
    assert refused.notify.count("READY", "1") == 0
    assert "allow_insecure_tcp" in refused.log()
    assert "curve_secret_key_file" in refused.log()

    allowed = daemon_for(tmp_path / "b", {}, {"requests": endpoint, "allow_insecure_tcp": True})
    allowed.start()
    try:
        with Client(endpoint, timeout_s=20) as client:
            assert client.ping()["protocol"] == 1
    finally:
        allowed.close()
    assert "insecure_tcp" in allowed.log()


def test_curve_daemon_serves_allowed_keys_and_rejects_and_logs_others(
    tmp_path: Path, shared_models: Path
) -> None:
    server_pub, server_secret = generate_keys(tmp_path / "keys" / "server", "server")
    _, alice_secret = generate_keys(tmp_path / "keys" / "alice", "alice")
    _, mallory_secret = generate_keys(tmp_path / "keys" / "mallory", "mallory")
    allowed = tmp_path / "keys" / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes((tmp_path / "keys" / "alice" / "alice.key").read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    zmq = {
        "requests": endpoint,
        "curve_secret_key_file": server_secret,
        "curve_allowed_clients_dir": allowed,
    }
    daemon = daemon_for(tmp_path / "d", {"model_dirs": [shared_models]}, zmq).start()
    server_key = read_public_key(server_pub)
    mallory = read_key_pair(mallory_secret)
    try:
        with Client(
            endpoint,
            timeout_s=30,
            curve_server_key=server_key,
            curve_client_keys=read_key_pair(alice_secret),
        ) as alice:
            image = np.zeros((24, 24, 3), np.uint8)
            assert alice.request("segmentation", image).outputs
        with (
            Client(
                endpoint, timeout_s=1.5, curve_server_key=server_key, curve_client_keys=mallory
            ) as stranger,
            pytest.raises(ServerUnavailable),
        ):
            stranger.ping()
        with Client(endpoint, timeout_s=1.5) as plain, pytest.raises(ServerUnavailable):
            plain.ping()  # no CURVE handshake at all: never reaches the request handler
    finally:
        daemon.close()
    denied = [json.loads(line) for line in daemon.log().splitlines() if '"zap_denied"' in line]
    assert denied, daemon.log()[-2000:]
    assert mallory[0].decode() in {d.get("client_key") for d in denied}


# ---------------------------------------------------------------- one daemon for the rest


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, shared_models: Path
) -> Iterator[dict[str, Any]]:
    """A daemon with small limits whose model_dirs hold tiny_sd; another SD model outside."""
    root = tmp_path_factory.mktemp("acc")
    models, outside = root / "models", root / "outside"
    make_tiny_sd_dir(models / "tiny_sd")
    make_tiny_sd_dir(outside / "evil_sd")
    work = root / "d"
    # Explicit dirs: the per-test EDGED_* variables of conftest would otherwise win.
    env = {
        "EDGED_RUNTIME_DIR": str(work / "run"),
        "EDGED_STATE_DIR": str(work / "state"),
        "EDGED_CACHE_DIR": str(work / "cache"),
    }
    work.mkdir()
    config = work / "edged.toml"
    zmq = {"max_frame_bytes": 100_000, "max_pixels": 10_000, "stats_interval_s": 1.0}
    top = {"log_format": "json", "model_dirs": [shared_models, models]}
    config.write_text(config_toml(top, {"zmq": zmq}))
    daemon = Daemon(config, work, env=env).start()
    try:
        yield {
            "daemon": daemon,
            "run": work / "run",
            "requests": f"ipc://{work / 'run'}/requests.sock",
            "models": models,
            "outside": outside,
        }
    finally:
        daemon.close()


def test_ipc_sockets_are_0660_inside_a_0750_runtime_dir(served: dict[str, Any]) -> None:
    for name in ("requests.sock", "results.sock"):
        mode = (served["run"] / name).stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660, oct(mode)
    assert stat.S_IMODE(served["run"].stat().st_mode) == 0o750


# ---------------------------------------------------------------- paths in requests


def test_path_params_cannot_leave_the_model_dirs(served: dict[str, Any]) -> None:
    models, outside = served["models"], served["outside"]
    small = {"width": 64, "height": 64, "steps": 1}
    evil = outside / "evil_sd"
    escapes: list[tuple[str | None, dict[str, Any]]] = [
        (str(evil), {}),
        (str(models / ".." / "outside" / "evil_sd"), {}),
        ("../outside/evil_sd", {}),
        ("..", {}),
        ("tiny_sd", {"model_dir": str(evil)}),
        ("tiny_sd", {"decoder": str(evil / "vae_decoder" / "model.onnx")}),
        ("tiny_sd", {"decoder": "/etc/passwd.onnx"}),
    ]
    with Client(served["requests"], timeout_s=60) as client:
        # Positive controls: a plain name and an absolute path inside model_dirs.
        for model in ("tiny_sd", str(models / "tiny_sd")):
            reply = client.request("generation", model=model, prompt="a cat", params=small)
            assert reply.outputs["image"].shape == (64, 64, 3)
        for model, params in escapes:
            with pytest.raises(BadRequest, match="outside the configured model_dirs"):
                client.request("generation", model=model, prompt="a", params={**small, **params})
        with pytest.raises(BadRequest, match="model_dirs"):
            client.request(
                "text_encode", model="tiny_sd", prompt="a", params={"model_dir": str(evil)}
            )
        # Unknown header fields (e.g. an output path) are refused, never ignored.
        header = json.loads(encode_request("x1", "segmentation")[0])
        header["output_path"] = "/etc/cron.d/x"
        reply = json.loads(client.exchange([json.dumps(header).encode()])[0])
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_request"
        assert "output_path" in reply["error"]["message"]
    loaded = [line for line in served["daemon"].log().splitlines() if "model_loaded" in line]
    assert any("tiny_sd" in line for line in loaded)
    assert not any("evil_sd" in line for line in loaded)


# ---------------------------------------------------------------- limits before decoding


def test_size_and_pixel_limits_are_enforced_before_decoding(served: dict[str, Any]) -> None:
    requests = served["requests"]
    with Client(requests, timeout_s=30) as client:
        rss_before = client.stats()["pool"]["process"]["rss_bytes"]
        # Up to (2^31-1)^2 pixels claimed by a few hundred bytes: refused from the header.
        for bomb in (png_bomb(100_000, 100_000), png_bomb(2**31 - 1, 2**31 - 1)):
            with pytest.raises(TooLarge, match="max_pixels"):
                client.request("segmentation", bomb)
        with pytest.raises(TooLarge, match="max_pixels"):
            client.request("segmentation", png(np.zeros((101, 100, 3), np.uint8)))
        noise = np.random.default_rng(0).integers(0, 256, (99, 100, 3), dtype=np.uint8)
        assert client.request("segmentation", png(noise)).outputs  # 9900 px: fine
        with pytest.raises(TooLarge, match="max_frame_bytes"):
            client.request("segmentation", PNG_MAGIC + b"\0" * 150_000)
        rss_after = client.stats()["pool"]["process"]["rss_bytes"]
    assert rss_after - rss_before < 64 * 2**20  # no decoder ever allocated the bomb
    # Above 2x the limit libzmq drops the peer mid-read (documented): no reply, no harm.
    with Client(requests, timeout_s=2) as huge, pytest.raises(ServerUnavailable):
        huge.request("segmentation", PNG_MAGIC + b"\0" * 250_000)
    with Client(requests, timeout_s=20) as client:
        assert client.ping()["protocol"] == 1


def test_confine_follows_symlinks_and_only_generation_looks_at_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edged.daemon.confine import confine_paths
    from edged.tasks.base import TaskRequest

    models, outside = tmp_path / "models", tmp_path / "outside"
    (models / "real_sd").mkdir(parents=True)
    outside.mkdir()
    (models / "link").symlink_to(outside)  # a link inside model_dirs that points out

    def check(task: str, model: str | None, **params: Any) -> None:
        confine_paths(TaskRequest(task=task, model=model, params=params), [models])

    check("generation", str(models / "real_sd"))
    check("generation", "real_sd", model_dir=str(models / "real_sd"))
    with pytest.raises(BadRequest, match="outside"):
        check("generation", str(models / "link"))
    with pytest.raises(BadRequest, match=r"params\.decoder"):
        check("generation", "real_sd", decoder=str(models / "link" / "x.onnx"))
    with pytest.raises(BadRequest, match="must be a string"):
        check("generation", "real_sd", model_dir=["/etc"])
    # A bare name that exists relative to the daemon's cwd is a path for generation only.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadRequest, match="outside"):
        check("text_encode", "outside")
    check("segmentation", "outside")  # a catalogue key there: unknown_model later, not a path
