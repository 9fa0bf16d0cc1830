"""The licence gate for generation model dirs (SD-Turbo's licence is non-commercial).

A generation dir is not loaded through ``load_model`` (whose ``check_licence`` guards every
other model): it is found by name, by path, on the search path or through a ``models add``
entry. Whichever way it was found, every licence known for it must be in
``allowed_licences``:

- the catalogue entry named in the request (checked before the dir is even looked for);
- a catalogue entry whose ``dir`` file is this dir (located in the model dirs), or has this
  dir's name (``sd_turbo`` wherever it is: that is the name edged would load it by);
- the ``licence`` in the dir's ``edged-manifest.json`` (``edged models convert`` writes the
  catalogue's licence there for a repo it knows, so a renamed or re-added dir keeps it).

A dir nothing knows a licence for (a user's own export given by path) loads as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from edged.convert.manifest import read_manifest
from edged.errors import LicenceNotAllowed
from edged.models.catalog import Catalog, check_licence, licence_allowed

__all__ = ["check_dir_licence", "check_name_licence", "dir_licences"]


def check_name_licence(catalog: Catalog, allowed: Sequence[str], name: str | None) -> None:
    """The catalogue entry ``name`` (if it is one) must be allowed, before any search."""
    entry = catalog.entries.get(name) if name else None
    if entry is not None:
        check_licence(entry, allowed)


def dir_licences(catalog: Catalog, root: Path) -> list[tuple[str, str]]:
    """(which model, licence) for everything that says what ``root`` is."""
    found: list[tuple[str, str]] = []
    real = root.resolve()
    for entry in catalog:
        for file in entry.files:
            if file.format != "dir":
                continue
            if Path(file.path).name == root.name or _same(catalog.locate(file), real):
                found.append((entry.name, entry.licence))
                break
    try:
        made = read_manifest(root)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        made = None  # unreadable: `edged models verify` reports it; nothing to gate on
    licence = made.get("licence") if isinstance(made, dict) else None
    if isinstance(licence, str) and licence:
        found.append((str(made.get("name") or root.name) if made else root.name, licence))
    return found


def _same(located: Path | None, real: Path) -> bool:
    return located is not None and located.resolve() == real


def check_dir_licence(catalog: Catalog, allowed: Sequence[str], root: Path) -> None:
    """Raise ``LicenceNotAllowed`` (wire code ``licence``) naming the first refused licence."""
    for model, licence in dir_licences(catalog, root):
        if not licence_allowed(licence, allowed):
            raise LicenceNotAllowed(
                f"model dir {root} is {model}, licensed {licence}, which is not in "
                f'allowed_licences; add "{licence}" to allowed_licences in edged.toml '
                "if you accept its terms"
            )
