"""The licence gate in front of generation dirs: an sd_turbo dir (SD-Turbo's non-commercial
licence) in the model dirs is refused by name and by path under the default allowed_licences,
and so is a converted dir whose edged-manifest.json carries that licence after
`edged models add DIR` under another name; with the licence allowed the same dirs run.
Real tiny SD dirs, `edged infer` subprocesses and a real daemon over ZeroMQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.config import DEFAULT_ALLOWED_LICENCES
from edged.convert.manifest import write_manifest
from edged.errors import LicenceNotAllowed
from edged.testing import make_tiny_sd_dir
from edged.testing.daemon import Daemon, config_toml
from edged.wire.client import Client

NC = "LicenseRef-stabilityai-nc-community"
ALLOW_NC = json.dumps([*DEFAULT_ALLOWED_LICENCES, NC])
SMALL = {"width": 64, "height": 64, "seed": 3, "steps": 1, "decoder_tile": 0}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A model dir with an sd_turbo dir (the catalogue's name) and a converted dir of
    SD-Turbo under a name the catalogue does not know (its manifest carries the licence)."""
    root = tmp_path / "models"
    make_tiny_sd_dir(root / "sd_turbo")
    mine = make_tiny_sd_dir(tmp_path / "made" / "my_turbo")
    meta = {"task": "generation", "family": "sd-turbo", "name": "sd_turbo", "licence": NC}
    write_manifest(mine, meta)
    return root


def infer(model: str, out: Path, models: Path, **env: str) -> subprocess.CompletedProcess[str]:
    params = [f"--param={k}={v}" for k, v in SMALL.items()]
    return subprocess.run(
        [
            *(sys.executable, "-m", "edged", "infer", "generation", "--model", model),
            *("--prompt", "a kite", "--output", str(out), *params),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "EDGED_MODEL_DIRS": json.dumps([str(models)]), **env},
    )


def assert_refused(run: subprocess.CompletedProcess[str], out: Path) -> None:
    assert run.returncode == LicenceNotAllowed.exit_code, run.stderr
    assert NC in run.stderr
    assert "allowed_licences" in run.stderr
    assert not out.exists()


def test_infer_refuses_sd_turbo_by_name_and_path_unless_allowed(
    models: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    assert_refused(infer("sd_turbo", out, models), out)
    assert_refused(infer(str(models / "sd_turbo"), out, models), out)
    allowed = infer("sd_turbo", out, models, EDGED_ALLOWED_LICENCES=ALLOW_NC)
    assert allowed.returncode == 0, allowed.stderr
    assert out.stat().st_size > 0


def test_infer_refuses_an_added_converted_dir_by_its_manifest_licence(
    models: Path, tmp_path: Path
) -> None:
    made = tmp_path / "made" / "my_turbo"
    out = tmp_path / "out.png"
    assert_refused(infer(str(made), out, models), out)  # by path, outside the model dirs
    env = {**os.environ, "EDGED_MODEL_DIRS": json.dumps([str(models)])}
    # `--licence MIT` on add does not wash the dir's own licence off.
    add = [*(sys.executable, "-m", "edged", "models", "add", str(made)), "--name", "mine"]
    add += ["--licence", "MIT"]
    added = subprocess.run(add, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert added.returncode == 0, added.stderr
    assert_refused(infer("mine", out, models), out)
    allowed = infer("mine", out, models, EDGED_ALLOWED_LICENCES=ALLOW_NC)
    assert allowed.returncode == 0, allowed.stderr


def _daemon(work: Path, models: Path, licences: list[str]) -> Daemon:
    work.mkdir()
    config = work / "edged.toml"
    top = {"model_dirs": [str(models)], "log_format": "json", "allowed_licences": licences}
    config.write_text(config_toml(top))
    return Daemon(config, work)


def test_daemon_answers_licence_for_sd_turbo_unless_allowed(models: Path, tmp_path: Path) -> None:
    default = _daemon(tmp_path / "d1", models, list(DEFAULT_ALLOWED_LICENCES))
    with default as daemon, Client(daemon.requests_endpoint, timeout_s=120) as client:
        for model in ("sd_turbo", str(models / "sd_turbo")):
            with pytest.raises(LicenceNotAllowed) as info:
                client.request("generation", model=model, prompt="a kite", params=SMALL)
            assert info.value.wire_code == "licence"
            assert "allowed_licences" in str(info.value)
            assert NC in str(info.value)
        assert daemon.alive()
    allowing = _daemon(tmp_path / "d2", models, [*DEFAULT_ALLOWED_LICENCES, NC])
    with allowing as daemon, Client(daemon.requests_endpoint, timeout_s=120) as client:
        reply = client.request("generation", model="sd_turbo", prompt="a kite", params=SMALL)
        assert reply.outputs["image"].shape == (64, 64, 3)


def test_a_catalogued_decoder_passes_the_gate_too(models: Path, tmp_path: Path) -> None:
    """decoder=NAME loads the catalogue's NAME_decoder: its licence is checked as a model's."""
    from edged.config import Settings
    from edged.engine import Engine
    from edged.tasks.base import TaskRequest

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "taesd_decoder.toml").write_text(
        'name = "taesd_decoder"\ntask = "generation"\nfamily = "taesd"\n'
        'licence = "LicenseRef-test-nc"\n'
        '[[files]]\nformat = "onnx"\npath = "taesd_decoder.onnx"\n'
    )
    make_tiny_sd_dir(models / "tiny")
    settings = Settings(model_dirs=[models], catalog_dirs=[catalog])
    request = TaskRequest(
        "generation", "tiny", prompt="a kite", params={**SMALL, "decoder": "taesd"}
    )
    engine = Engine(settings)
    try:
        with pytest.raises(LicenceNotAllowed) as info:
            engine.run(request)
    finally:
        engine.close()
    assert "taesd_decoder is licensed LicenseRef-test-nc" in str(info.value)
    assert info.value.wire_code == "licence"
