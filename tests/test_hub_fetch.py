"""``hf://`` sources: ``edged models fetch`` through huggingface_hub against a fake Hub on loopback.

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_TOKEN at import, so every fetch runs
as a real ``edged models fetch`` subprocess with its environment set: the path a user takes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.testing.hub import HubServer

MODEL = np.random.default_rng(16).bytes(3_000_000)
SHA = hashlib.sha256(MODEL).hexdigest()
REPO = "edged-test/tiny-sr"
COMMIT = "455b79d9b74698e1ea401e92e6fb18023aabb4a3"
RESOLVE = f"/{REPO}/resolve/{COMMIT}/onnx/tiny.onnx"


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as srv:
        yield srv


def write_manifest(
    catalog_dir: Path, source: str, *, sha256: str = SHA, size: int = len(MODEL)
) -> None:
    catalog_dir.mkdir(exist_ok=True)
    (catalog_dir / "tiny_sr.toml").write_text(
        'name = "tiny_sr"\ntask = "superres"\nfamily = "sr-y"\nlicence = "Apache-2.0"\n'
        '[[files]]\nformat = "onnx"\npath = "tiny_sr.onnx"\n'
        f'sha256 = "{sha256}"\nsize = {size}\nsources = ["{source}"]\n'
    )


def fetch(
    tmp_path: Path,
    hub: HubServer,
    *,
    offline: bool = False,
    token: str | None = None,
    log_level: str = "warning",
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {
        "EDGED_CATALOG_DIRS": json.dumps([str(tmp_path / "catalog")]),
        "HF_ENDPOINT": hub.base_url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [
            *(sys.executable, "-m", "edged", "models", "fetch", "tiny_sr"),
            *("--dir", str(models_dir(tmp_path)), "--log-level", log_level),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def hub_cache(tmp_path: Path) -> Path:
    """``{cache_dir}/huggingface/hub``: EDGED_CACHE_DIR comes from the isolated_dirs fixture."""
    return Path(os.environ["EDGED_CACHE_DIR"]) / "huggingface" / "hub"


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_fetch_installs_verified_file_in_hub_cache_layout(tmp_path: Path, hub: HubServer) -> None:
    write_manifest(tmp_path / "catalog", hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", MODEL))
    done = fetch(tmp_path, hub, log_level="info")
    assert done.returncode == 0, done.stderr
    assert (models_dir(tmp_path) / "tiny_sr.onnx").read_bytes() == MODEL
    assert listing(models_dir(tmp_path)) == ["tiny_sr.onnx"]
    repo_cache = hub_cache(tmp_path) / "models--edged-test--tiny-sr"
    assert (repo_cache / "snapshots" / COMMIT / "onnx" / "tiny.onnx").read_bytes() == MODEL
    assert (repo_cache / "blobs" / SHA).is_file()  # the blob is named by the LFS sha256
    assert [r.status for r in hub.requests(RESOLVE)] == [200, 200, 200]  # HEAD, HEAD, GET
    # edged's progress reporting (log lines off a TTY), not huggingface_hub's tqdm bar.
    done_lines = [line for line in done.stderr.splitlines() if "fetch.done" in line]
    downloaded = [line for line in done_lines if "Hub cache" not in line]
    assert len(downloaded) == 1, done.stderr
    assert "bytes=3000000" in downloaded[0]


def test_installed_file_shares_the_cache_blob_and_outlives_the_cache(
    tmp_path: Path, hub: HubServer
) -> None:
    """One copy on disk: the model dir's file is a hard link to the Hub cache's blob (same
    file system here), not a second copy and not a symlink into the cache."""
    import shutil

    write_manifest(tmp_path / "catalog", hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", MODEL))
    assert fetch(tmp_path, hub).returncode == 0
    installed = models_dir(tmp_path) / "tiny_sr.onnx"
    blob = hub_cache(tmp_path) / "models--edged-test--tiny-sr" / "blobs" / SHA
    assert not installed.is_symlink()
    assert installed.stat().st_ino == blob.stat().st_ino
    assert blob.stat().st_nlink == 2  # the blob and the model file; no .part left linked
    shutil.rmtree(hub_cache(tmp_path))  # cleaning the Hub cache keeps the model
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == SHA


def test_resume_after_cut_connection(tmp_path: Path, hub: HubServer) -> None:
    # huggingface_hub writes in 10 MiB chunks and resumes from the last whole one it wrote,
    # so the cut has to come after one: 16 MiB served, cut at 12 MiB, resumed at 10 MiB.
    chunk = 10 << 20
    big = np.random.default_rng(17).bytes(16 << 20)
    source = hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", big, cut_after=12 << 20, cuts=1)
    write_manifest(
        tmp_path / "catalog", source, sha256=hashlib.sha256(big).hexdigest(), size=len(big)
    )
    done = fetch(tmp_path, hub)
    assert done.returncode == 0, done.stderr
    assert "Trying to resume download" in done.stderr
    assert (models_dir(tmp_path) / "tiny_sr.onnx").read_bytes() == big
    gets = [r for r in hub.requests(RESOLVE) if r.sent or r.range]
    assert [(r.range, r.sent) for r in gets] == [
        (None, 12 << 20),
        (f"bytes={chunk}-", len(big) - chunk),
    ]
    assert gets[1].status == 206


def test_hub_sha_differs_from_manifest_refused_before_download(
    tmp_path: Path, hub: HubServer
) -> None:
    source = hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", MODEL)
    write_manifest(tmp_path / "catalog", source, sha256="0" * 64)
    done = fetch(tmp_path, hub)
    assert done.returncode != 0
    assert f"the Hub's LFS sha256 is {SHA}" in done.stderr
    assert hub.bytes_sent(RESOLVE) == 0  # refused on the metadata alone
    assert listing(models_dir(tmp_path)) == []


def test_wrong_bytes_refused_nothing_left_behind(tmp_path: Path, hub: HubServer) -> None:
    bad = bytearray(MODEL)
    bad[12345] ^= 0xFF
    # The Hub's metadata matches the manifest; the bytes served do not (a corrupt mirror).
    source = hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", bytes(bad), announced_sha256=SHA)
    write_manifest(tmp_path / "catalog", source)
    done = fetch(tmp_path, hub)
    assert done.returncode != 0
    assert f"sha256 {hashlib.sha256(bad).hexdigest()}, expected {SHA}" in done.stderr
    assert listing(models_dir(tmp_path)) == []
    downloads = Path(os.environ["EDGED_CACHE_DIR"]) / "downloads"
    assert [n for n in listing(downloads) if n.endswith(".part")] == []
    repo_cache = hub_cache(tmp_path) / "models--edged-test--tiny-sr"
    assert not (repo_cache / "snapshots" / COMMIT / "onnx" / "tiny.onnx").exists()
    assert listing(repo_cache / "blobs") == []  # a bad blob would be served again offline


def test_gated_repo_needs_hf_token(tmp_path: Path, hub: HubServer) -> None:
    write_manifest(tmp_path / "catalog", hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", MODEL))
    hub.gate(REPO, "hf_secret")
    refused = fetch(tmp_path, hub)
    assert refused.returncode != 0
    assert "gated" in refused.stderr
    assert "set HF_TOKEN" in refused.stderr
    assert hub.requests(RESOLVE)[0].status == 401
    wrong = fetch(tmp_path, hub, token="hf_wrong")
    assert "the token in HF_TOKEN has no access" in wrong.stderr
    assert hub.requests(RESOLVE)[-1].status == 403
    assert listing(models_dir(tmp_path)) == []
    done = fetch(tmp_path, hub, token="hf_secret")
    assert done.returncode == 0, done.stderr
    assert (models_dir(tmp_path) / "tiny_sr.onnx").read_bytes() == MODEL


def test_offline_cold_cache_is_a_clear_error(tmp_path: Path, hub: HubServer) -> None:
    write_manifest(tmp_path / "catalog", hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", MODEL))
    done = fetch(tmp_path, hub, offline=True)
    assert done.returncode != 0
    assert "HF_HUB_OFFLINE" in done.stderr
    assert "not in the Hub cache" in done.stderr
    assert hub.requests(RESOLVE) == []  # offline means no request at all


def test_offline_warm_cache_installs_without_network(tmp_path: Path, hub: HubServer) -> None:
    write_manifest(tmp_path / "catalog", hub.add_file(REPO, COMMIT, "onnx/tiny.onnx", MODEL))
    assert fetch(tmp_path, hub).returncode == 0
    (models_dir(tmp_path) / "tiny_sr.onnx").unlink()
    seen = len(hub.requests(RESOLVE))
    done = fetch(tmp_path, hub, offline=True)
    assert done.returncode == 0, done.stderr
    assert (models_dir(tmp_path) / "tiny_sr.onnx").read_bytes() == MODEL
    assert len(hub.requests(RESOLVE)) == seen
