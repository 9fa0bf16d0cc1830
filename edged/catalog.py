"""The model catalogue: manifests from the shipped ``models/`` dir and user catalogue dirs.

Minimal first version: load manifests and find files in the model search path. Verification,
fetch and the licence gate are filled in by the catalogue issue.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edged.catalog_schema import ModelEntry, ModelFile
from edged.errors import ConfigError, ModelNotFound


def shipped_catalog_dir() -> Path:
    """``models/`` beside the package (source checkout or installed data)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models", here / "data" / "models"):
        if candidate.is_dir():
            return candidate
    return here.parent / "models"


def load_entry(path: Path) -> ModelEntry:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return ModelEntry.model_validate(data)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"catalogue {path}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"catalogue {path}: {problems}") from exc


@dataclass
class Catalog:
    """Entries by name; later directories override earlier ones by name."""

    entries: dict[str, ModelEntry]
    search_path: list[Path]

    @classmethod
    def load(cls, catalog_dirs: Iterable[Path], search_path: Iterable[Path]) -> Catalog:
        entries: dict[str, ModelEntry] = {}
        for directory in [shipped_catalog_dir(), *catalog_dirs]:
            for manifest in sorted(directory.glob("*.toml")):
                entry = load_entry(manifest)
                entries[entry.name] = entry
        return cls(entries, list(search_path))

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
