"""The model catalogue: manifests from the shipped ``models/`` dir and user catalogue dirs.

Manifests are read from, in order (a later one overrides an earlier one by name): the shipped
``models/`` dir, the package's ``edged/data/models`` (manifests of project-own files),
``catalog_dirs`` from the settings and ``{state_dir}/catalog`` (written by ``edged models add``).
Files are looked up in the model search path, then in ``edged/data/models`` so the project's
own shipped weights are always found.

``verify_file`` and ``check_licence`` are what the loader calls before every load.
"""

from __future__ import annotations

import hashlib
import threading
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edged.errors import ConfigError, LicenceNotAllowed, ModelNotFound, ModelVerificationError
from edged.models.schema import ModelEntry, ModelFile
from edged.schema import validation_problems
from edged.util.digest import file_sha256
from edged.util.toml_text import toml_table

if TYPE_CHECKING:
    from edged.config import Settings


_PACKAGE = Path(__file__).resolve().parents[1]
"""The ``edged`` package directory (this module lives in ``edged/models/``)."""


def package_data_models_dir() -> Path:
    """``edged/data/models``: the project's own model files (and their manifests)."""
    return _PACKAGE / "data" / "models"


def shipped_catalog_dir() -> Path:
    """``models/`` beside the package (source checkout or installed data)."""
    for candidate in (_PACKAGE.parent / "models", _PACKAGE / "data" / "models"):
        if candidate.is_dir():
            return candidate
    return _PACKAGE.parent / "models"


def shipped_catalog_dirs() -> list[Path]:
    """Every existing shipped manifest dir, without duplicates."""
    dirs: list[Path] = []
    for candidate in (shipped_catalog_dir(), package_data_models_dir()):
        if candidate.is_dir() and candidate not in dirs:
            dirs.append(candidate)
    return dirs


def user_catalog_dir(state_dir: Path) -> Path:
    """Where ``edged models add`` writes manifests."""
    return state_dir / "catalog"


def load_entry(path: Path) -> ModelEntry:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return ModelEntry.model_validate(data)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"catalogue {path}: {exc}") from exc
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"catalogue {path}: {problems}") from exc


@dataclass
class Catalog:
    """Entries by name; later directories override earlier ones by name."""

    entries: dict[str, ModelEntry]
    search_path: list[Path]

    @classmethod
    def load(
        cls,
        catalog_dirs: Iterable[Path],
        search_path: Iterable[Path],
        *,
        user_dir: Path | None = None,
    ) -> Catalog:
        entries: dict[str, ModelEntry] = {}
        extra = [user_dir] if user_dir is not None and user_dir.is_dir() else []
        for directory in [*shipped_catalog_dirs(), *catalog_dirs, *extra]:
            for manifest in sorted(directory.glob("*.toml")):
                entry = load_entry(manifest)
                entries[entry.name] = entry
        with _verified_lock:
            _owners.update(
                {f.sha256: e.name for e in entries.values() for f in e.files if f.sha256}
            )
        path = list(search_path)
        own = package_data_models_dir()
        if own not in path:
            path.append(own)
        return cls(entries, path)

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """The catalogue a daemon or CLI with ``settings`` sees (including user manifests)."""
        return cls.load(
            settings.catalog_dirs,
            settings.model_search_path,
            user_dir=user_catalog_dir(settings.state_dir),
        )

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries.values())

    def get(self, name: str) -> ModelEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise ModelNotFound(
                f"no model named {name!r} in the catalogue; `edged models list` shows them"
            ) from None

    def locate(self, file: ModelFile) -> Path | None:
        """First existing copy of ``file`` in the model search path."""
        for directory in self.search_path:
            candidate = directory / file.path
            if candidate.exists():
                return candidate
        return None

    def installed(self, entry: ModelEntry) -> dict[str, Path]:
        """``file.path -> where found`` for the files of ``entry`` present in the search path."""
        found = {}
        for file in entry.files:
            where = self.locate(file)
            if where is not None:
                found[file.path] = where
        return found


# ---------------------------------------------------------------- verification

_verified: dict[tuple[str, int, int, int, int], str] = {}
_owners: dict[str, str] = {}
"""sha256 -> model name of every loaded entry's files, so errors can name the fetch command."""
_verified_lock = threading.Lock()


def dir_sha256(path: Path) -> str:
    """sha256 of a model directory: of the sorted ``sha256sum``-style lines of its files."""
    lines = sorted(
        f"{file_sha256(p)}  {p.relative_to(path).as_posix()}\n"
        for p in path.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory as ``dir_sha256``."""
    return dir_sha256(path) if path.is_dir() else file_sha256(path)


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    """(path, size, mtime_ns, inode, ctime_ns); for a model dir the total size, the newest
    mtime and ctime of its files and a digest of their inodes (editing a file inside does not
    touch the dir's own times).

    mtime can be set back by anyone who can write the file (``touch -d``, ``os.utime``); the
    ctime cannot, and a replacement by rename changes the inode: with both in the key, a file
    changed with the same size and mtime is hashed again."""
    if not path.is_dir():
        st = path.stat()
        return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    newest = max((st.st_mtime_ns for st in stats), default=0)
    changed = max((st.st_ctime_ns for st in stats), default=0)
    inodes = hash(tuple(sorted(st.st_ino for st in stats)))
    return (
        str(path.resolve()),
        sum(st.st_size for st in stats) + len(stats),
        newest,
        inodes,
        changed,
    )


def _fix_for(file: ModelFile, model: str | None) -> str:
    name = model or _owners.get(file.sha256 or "")
    if name is None:
        return "run `edged models fetch MODEL` for the model it belongs to"
    if not file.sources:
        return f"put the right file back or re-add it with `edged models add` ({name} has no download source)"
    return f"run `edged models fetch {name}`"


def verify_file(file: ModelFile, path: Path, *, model: str | None = None) -> None:
    """Raise ``ModelVerificationError`` unless ``path`` has ``file``'s size and sha256.

    A good result is cached by (path, size, mtime_ns, inode, ctime_ns), so loading the same
    unchanged file again does not rehash it; any write or replacement changes the ctime or the
    inode (even when the mtime is set back) and forces a new check. ``model``
    names the entry in the fix; by default it is looked up from the loaded catalogues.
    """
    try:
        key = _stat_key(path)
    except OSError as exc:
        raise ModelVerificationError(
            f"{file.path}: cannot read {path}: {exc}; {_fix_for(file, model)}"
        ) from exc
    if file.size is not None and not path.is_dir() and key[1] != file.size:
        raise ModelVerificationError(
            f"{file.path}: {path} is {key[1]} bytes, expected {file.size} "
            f"(sha256 {file.sha256}); {_fix_for(file, model)}"
        )
    if file.sha256 is None:
        return  # user-supplied entries without a hash: nothing to compare against
    with _verified_lock:
        if _verified.get(key) == file.sha256:
            return
    actual = path_sha256(path)
    if actual != file.sha256:
        raise ModelVerificationError(
            f"{file.path}: {path} has sha256 {actual}, expected {file.sha256}; "
            f"{_fix_for(file, model)}"
        )
    with _verified_lock:
        _verified[key] = actual


def clear_verify_cache() -> None:
    with _verified_lock:
        _verified.clear()


# ---------------------------------------------------------------- licence gate


def licence_allowed(licence: str, allowed: Sequence[str]) -> bool:
    """SPDX id in ``allowed``; ``A OR B`` needs one of them, ``A AND B`` needs both."""
    ok = {a.strip().lower() for a in allowed}
    expr = licence.strip().strip("()")
    if " OR " in expr:
        return any(licence_allowed(part, allowed) for part in expr.split(" OR "))
    if " AND " in expr:
        return all(licence_allowed(part, allowed) for part in expr.split(" AND "))
    return expr.lower() in ok


def check_licence(entry: ModelEntry, allowed: Sequence[str]) -> None:
    """Raise ``LicenceNotAllowed`` unless ``entry.licence`` is in ``allowed_licences``."""
    if not licence_allowed(entry.licence, allowed):
        raise LicenceNotAllowed(
            f"model {entry.name} is licensed {entry.licence}, which is not in allowed_licences; "
            f'add "{entry.licence}" to allowed_licences in edged.toml if you accept its terms'
        )


# ---------------------------------------------------------------- writing manifests


def dump_entry(entry: ModelEntry, *, explicit: bool = False) -> str:
    """A manifest for ``entry`` that ``load_entry`` reads back to an equal entry.

    ``explicit`` writes default values too (shipped manifests document every field).
    """
    if explicit:
        data = entry.model_dump(mode="json", exclude_none=True)
        data = {k: v for k, v in data.items() if v not in ({}, [], "")}
    else:
        data = entry.model_dump(mode="json", exclude_defaults=True)
    tables = {k: data.pop(k) for k in ("params", "input", "output", "components") if k in data}
    files = data.pop("files", [])
    lines = toml_table(data)
    for name, table in tables.items():
        lines += ["", f"[{name}]", *toml_table(table)]
    for file in files:
        lines += ["", "[[files]]", *toml_table(file)]
    return "\n".join(lines) + "\n"
