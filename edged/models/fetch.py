"""``edged models fetch``: download a model's files, verify them, install them atomically.

A file is downloaded to ``{cache_dir}/downloads/<sha256>.part`` (kept there after a network
failure, so the next run resumes with HTTP Range), checked against the catalogue's size and
sha256, and only then moved into the model dir: ``os.replace`` when both are on the same file
system, else a copy to a hidden temporary name in the model dir followed by ``os.replace``.
So the model dir never holds a half-written or wrong file. A wrong download is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edged.config import Settings
from edged.errors import FetchError, ModelVerificationError
from edged.log import get_logger
from edged.models.catalog import Catalog, path_sha256, verify_file
from edged.models.schema import ModelEntry, ModelFile
from edged.models.sources import FetchContext, fetch_source

log = get_logger(__name__)


@dataclass(frozen=True)
class FetchResult:
    """What happened to one file: ``fetched``, ``present`` (already verified) or ``no-source``."""

    file: str
    status: str
    path: Path | None
    detail: str = ""


def hub_cache_dir(settings: Settings) -> Path | None:
    """Where hf:// downloads are cached: the user's own Hub cache when HF_HUB_CACHE or HF_HOME
    says where it is (shared with their other tools), else ``{cache_dir}/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME"):
        return None
    return settings.cache_dir / "huggingface" / "hub"


def context_from_settings(settings: Settings, **overrides: float | int) -> FetchContext:
    download_dir = settings.cache_dir / "downloads"
    return FetchContext(
        pypi_url=settings.pypi_url,
        npm_registry=settings.npm_registry,
        download_dir=download_dir,
        hub_cache=hub_cache_dir(settings),
        **overrides,  # type: ignore[arg-type]  # timeout/retries/backoff_s only
    )


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    # root passes os.access() on any dir; a dir nobody may write (r-x, like a shared
    # read-only model store) is treated as read-only for root too.
    return os.access(directory, os.W_OK | os.X_OK) and bool(directory.stat().st_mode & 0o222)


def pick_model_dir(settings: Settings) -> Path:
    """The first writable dir of the model search path (``{state_dir}/models`` at the end)."""
    for directory in settings.model_search_path:
        if _writable(directory):
            return directory
    raise FetchError(
        "no writable model dir: add one to model_dirs in edged.toml or pass --dir "
        f"(searched {', '.join(map(str, settings.model_search_path))})"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One fetch per file at a time (two `edged models fetch` must not share a .part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(
                f"{path.stem} is being fetched by another process; wait for it"
            ) from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_part(file: ModelFile, part: Path, source: str) -> None:
    """Size and sha256 of a finished download; the caller removes a wrong one."""
    size = part.stat().st_size
    if file.size is not None and size != file.size:
        raise FetchError(f"{source}: got {size} bytes, expected {file.size}")
    if file.sha256 is not None:
        actual = path_sha256(part)
        if actual != file.sha256:
            raise FetchError(f"{source}: sha256 {actual}, expected {file.sha256}")


def _install(part: Path, dest: Path) -> None:
    """Atomically put ``part`` at ``dest``; never leaves a partial ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(part, dest)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: download dir on another file system
            raise FetchError(f"cannot install {dest}: {exc.strerror}") from exc
    tmp = dest.with_name(f".{dest.name}.installing")
    try:
        shutil.copyfile(part, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise FetchError(f"cannot install {dest}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    part.unlink(missing_ok=True)


def fetch_file(file: ModelFile, dest_dir: Path, ctx: FetchContext) -> Path:
    """Download ``file`` from its first working source into ``dest_dir``; returns the path."""
    if not file.sources:
        raise FetchError(f"{file.path}: no download source in the catalogue")
    if file.format == "dir":
        raise FetchError(f"{file.path}: model directories cannot be fetched; copy them in")
    key = file.sha256 or Path(file.path).name
    part = ctx.download_dir / f"{key}.part"
    errors: list[str] = []
    with _locked(ctx.download_dir / f"{key}.lock"):
        for source in file.sources:
            try:
                fetch_source(source, part, file.path, ctx, file.size, sha256=file.sha256)
            except FetchError as exc:
                errors.append(str(exc))
                log.warning("fetch.source_failed", file=file.path, source=source, error=str(exc))
                # A plain URL's partial is what the next run resumes from; a partially
                # extracted package member is not.
                if not (source.startswith(("https://", "http://")) and _is_prefix(file, part)):
                    part.unlink(missing_ok=True)
                continue
            try:
                _check_part(file, part, source)
            except FetchError as exc:
                errors.append(str(exc))
                log.warning("fetch.rejected", file=file.path, source=source, error=str(exc))
                part.unlink(missing_ok=True)
                continue
            dest = dest_dir / file.path
            _install(part, dest)
            log.info("fetch.installed", file=file.path, path=str(dest), source=source)
            return dest
    raise FetchError(f"{file.path}: every source failed: " + " | ".join(errors))


def _is_prefix(file: ModelFile, part: Path) -> bool:
    """A partial worth resuming: shorter than the file (a whole wrong file is not)."""
    if not part.exists():
        return False
    return file.size is None or part.stat().st_size < file.size


def _no_source_hint(entry: ModelEntry, file: ModelFile) -> str:
    if entry.recipe is not None:
        return entry.obtain_hint()
    where = f" from {entry.homepage}" if entry.homepage else ""
    if file.sha256 is None:
        return (
            f"obtain {file.path}{where}, then `edged models add {file.path} "
            f"--task {entry.task} --family {entry.family}`"
        )
    return f"obtain or convert {file.path}{where} (see its description) and put it in a model dir"


def fetch_entry(
    entry: ModelEntry, catalog: Catalog, dest_dir: Path, ctx: FetchContext
) -> list[FetchResult]:
    """Fetch every file of ``entry`` that is missing or wrong; skip verified ones."""
    results: list[FetchResult] = []
    for file in entry.files:
        where = catalog.locate(file)
        if where is not None:
            try:
                verify_file(file, where, model=entry.name)
            except ModelVerificationError as exc:
                log.warning("fetch.replacing", file=file.path, reason=str(exc))
            else:
                results.append(FetchResult(file.path, "present", where))
                continue
        if not file.sources:
            results.append(FetchResult(file.path, "no-source", None, _no_source_hint(entry, file)))
            continue
        results.append(FetchResult(file.path, "fetched", fetch_file(file, dest_dir, ctx)))
    return results
