"""``hf://OWNER/REPO@REVISION/PATH`` sources, fetched with ``huggingface_hub``.

huggingface_hub does the transfer (its cache layout, in-call resume with HTTP Range,
``HF_TOKEN`` for gated repos, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``); edged adds what it does
not: the Hub's LFS sha256 (``X-Linked-Etag``) must equal the manifest's before a byte is
downloaded, and the downloaded bytes must hash to it afterwards (huggingface_hub checks only
the size). A cached file that hashes wrong is removed from the cache, so it is never served
again. The model dir's file is a hard link to the cache blob where both are on one file
system (one copy on disk), else a copy. huggingface_hub reads its environment at import, so
it is imported here, lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.errors import FetchError
from edged.log import get_logger
from edged.models.http import Progress
from edged.models.schema import HF_SOURCE

__all__ = ["HubSource", "fetch_hub", "parse_hub_source"]

log = get_logger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HubSource:
    """A file of a Hub model repo at one commit."""

    repo_id: str
    revision: str
    filename: str

    def __str__(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}/{self.filename}"


def parse_hub_source(source: str) -> HubSource:
    match = HF_SOURCE.match(source)
    if match is None:
        raise FetchError(f"{source!r}: expected hf://OWNER/REPO@<40-hex commit>/PATH")
    return HubSource(match["repo"], match["revision"], match["path"])


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:  # pragma: no cover - a dependency; only a broken install lacks it
        raise FetchError(
            "hf:// sources need huggingface_hub: pip install 'huggingface_hub>=0.24'"
        ) from exc
    return huggingface_hub


def _progress_class(label: str) -> type:
    """A tqdm stand-in for huggingface_hub's ``tqdm_class``: edged's own bar / log lines."""

    class _Bar:
        def __init__(self, *, total: int | None = None, initial: int = 0, **_: Any) -> None:
            self.progress = Progress(label, total)
            self.progress.done = initial

        def update(self, n: int = 1) -> None:
            self.progress.update(n)  # n < 0 when the server ignored Range and it restarts

        def close(self) -> None:
            self.progress.close()

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return _Bar


def _gated(src: HubSource, endpoint: str) -> FetchError:
    who = (
        "the token in HF_TOKEN has no access"
        if os.environ.get("HF_TOKEN")
        else "set HF_TOKEN to a token of an account that accepted them"
    )
    return FetchError(
        f"{src}: {src.repo_id} is gated or private: accept its terms at "
        f"{endpoint}/{src.repo_id} and {who} (HF_TOKEN=hf_... edged models fetch ...)"
    )


def _not_cached(exc: Exception, src: HubSource, hf: Any) -> FetchError:
    if hf.constants.HF_HUB_OFFLINE:
        return FetchError(
            f"{src}: not in the Hub cache and HF_HUB_OFFLINE is set: fetch it once "
            "online (or copy the cache here), or unset HF_HUB_OFFLINE"
        )
    return FetchError(
        f"{src}: cannot reach {hf.constants.ENDPOINT} and not in the Hub cache: {exc}"
    )


def _progress_option(hf: Any, label: str) -> dict[str, Any]:
    """``tqdm_class`` where hf_hub_download takes it (recent releases); older ones (the
    ``>=0.24`` floor) show their own tqdm bar instead."""
    import inspect

    if "tqdm_class" in inspect.signature(hf.hf_hub_download).parameters:
        return {"tqdm_class": _progress_class(label)}
    return {}


def _translate(exc: Exception, src: HubSource, hf: Any) -> FetchError:
    """huggingface_hub's exceptions as one-line errors that name the fix."""
    errors = hf.errors
    endpoint = hf.constants.ENDPOINT
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError) or (
        isinstance(exc, errors.HfHubHTTPError) and status in (401, 403)
    ):
        return _gated(src, endpoint)
    if isinstance(exc, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        return _not_cached(exc, src, hf)
    if isinstance(exc, errors.RevisionNotFoundError):
        return FetchError(f"{src}: {src.repo_id} has no commit {src.revision} at {endpoint}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return FetchError(
            f"{src}: no repo {src.repo_id} at {endpoint} (private? set HF_TOKEN; "
            "another Hub? set HF_ENDPOINT)"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return FetchError(f"{src}: {src.repo_id}@{src.revision} has no file {src.filename}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FetchError(f"{src}: {first}")


def _check_metadata(hf: Any, src: HubSource, sha256: str | None, size: int | None) -> None:
    """The Hub's own figures for the file must be the manifest's: refused before downloading."""
    url = hf.hf_hub_url(src.repo_id, src.filename, revision=src.revision)
    meta = hf.get_hf_file_metadata(url)
    if meta.commit_hash != src.revision:
        raise FetchError(f"{src}: the Hub answered for commit {meta.commit_hash}")
    etag = (meta.etag or "").lower()
    if not _SHA256.match(etag):
        # A file kept in git (not LFS) has its git sha1 here: only the hash after download counts.
        log.info("fetch.hub_no_lfs_sha", source=str(src), etag=etag)
    elif sha256 is not None and etag != sha256:
        raise FetchError(
            f"{src}: the Hub's LFS sha256 is {etag}, the catalogue says {sha256}; "
            "not downloaded (fix the manifest's pin)"
        )
    if size is not None and meta.size is not None and meta.size != size:
        raise FetchError(f"{src}: the Hub says {meta.size} bytes, the catalogue {size}")


def _hash_into(cached: Path, out: Path | None, label: str) -> str:
    """sha256 of ``cached``, copying it to ``out`` on the way when given (edged's progress)."""
    digest = hashlib.sha256()
    progress = Progress(f"{label} (from the Hub cache)", cached.stat().st_size)
    with cached.open("rb") as src, out.open("wb") if out else contextlib.nullcontext() as dst:
        while block := src.read(1 << 20):
            digest.update(block)
            if dst is not None:
                dst.write(block)
            progress.update(len(block))
    progress.close()
    return digest.hexdigest()


def _link_hashing(cached: Path, part: Path, label: str) -> str:
    """Put the cached file at ``part`` (which the installer verifies and renames into the
    model dir); returns its sha256. A hard link to the cache blob when both are on one file
    system, so the Hub cache and the model dir hold one copy on disk (and the model dir's
    file outlives a cleaned cache, unlike a symlink); else a copy."""
    blob = cached.resolve()
    part.unlink(missing_ok=True)
    try:
        os.link(blob, part)
    except OSError:  # EXDEV (another file system), EPERM/ENOTSUP (no hard links), EMLINK
        return _hash_into(blob, part, label)
    return _hash_into(part, None, label)


def _evict(cached: Path) -> None:
    """Drop a wrong file from the Hub cache: its snapshot link and the blob it points to."""
    blob = cached.resolve()
    cached.unlink(missing_ok=True)
    if blob != cached:
        blob.unlink(missing_ok=True)


def _cached(hf: Any, src: HubSource, cache_dir: Path | None) -> Path | None:
    found = hf.try_to_load_from_cache(
        src.repo_id, src.filename, cache_dir=cache_dir, revision=src.revision
    )
    return Path(found) if isinstance(found, str) else None


def fetch_hub(
    source: str,
    part: Path,
    label: str,
    *,
    cache_dir: Path | None,
    sha256: str | None,
    size: int | None,
) -> None:
    """Write the file ``source`` names to ``part``, through the Hub cache at ``cache_dir``.

    ``cache_dir`` None means huggingface_hub's own (``HF_HUB_CACHE``/``HF_HOME``).
    """
    src = parse_hub_source(source)
    hf = _hub()
    cached = _cached(hf, src, cache_dir)
    try:
        if cached is None:
            if hf.constants.HF_HUB_OFFLINE:
                raise hf.errors.OfflineModeIsEnabled("offline")
            _check_metadata(hf, src, sha256, size)
            cached = Path(
                hf.hf_hub_download(
                    src.repo_id,
                    src.filename,
                    revision=src.revision,
                    cache_dir=cache_dir,
                    **_progress_option(hf, label),
                )
            )
    except FetchError:
        raise
    except (OSError, ValueError, hf.errors.HfHubHTTPError) as exc:
        raise _translate(exc, src, hf) from exc
    log.info("fetch.hub_cached", source=source, path=str(cached))
    actual = _link_hashing(cached, part, label)
    if sha256 is not None and actual != sha256:
        _evict(cached)
        part.unlink(missing_ok=True)
        raise FetchError(f"{src}: sha256 {actual}, expected {sha256}; removed from the Hub cache")
