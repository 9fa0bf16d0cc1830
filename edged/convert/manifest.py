"""``edged-manifest.json``: every file of a converted model dir with its size and sha256.

Written last by ``edged models convert``; ``edged models verify DIR`` re-hashes every listed
file and reports missing, changed and unlisted files and any symlink (a converted dir is
self-contained: it is copied to a board with ``rsync -a`` or ``scp -r`` and must not point
back into the workstation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edged.util.digest import file_sha256

__all__ = ["MANIFEST", "read_manifest", "verify_dir", "write_manifest"]

MANIFEST = "edged-manifest.json"
FORMAT = "edged-converted-model/1"
USER_AREAS = ("loras/",)


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(regular files, symlinks) under ``root``, sorted; symlinks are never followed."""
    files: list[Path] = []
    links: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = base / name
            if path.is_symlink():
                links.append(path)
            elif name in filenames:
                files.append(path)
    return sorted(files), sorted(links)


def write_manifest(root: Path, meta: dict[str, Any]) -> Path:
    """List every file under ``root`` (except the manifest) with size and sha256."""
    files, links = _walk(root)
    if links:
        raise ValueError(f"{root}: symlinks in a converted dir: {', '.join(map(str, links))}")
    listing = {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in files
        if p.relative_to(root).as_posix() != MANIFEST
    }
    doc = {"format": FORMAT, **meta, "files": listing}
    path = root / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of a converted dir, or None when ``root`` has none."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return doc


def verify_dir(root: Path) -> tuple[int, list[str]]:
    """(files ok, problems): each problem one line naming the file and what is wrong."""
    doc = read_manifest(root)
    if doc is None:
        return 0, [f"{root}: no {MANIFEST} (not a dir made by `edged models convert`)"]
    listed: dict[str, dict[str, Any]] = doc.get("files", {})
    files, links = _walk(root)
    problems = [f"{p.relative_to(root).as_posix()}: a symlink (not self-contained)" for p in links]
    present = {p.relative_to(root).as_posix(): p for p in files}
    ok = 0
    for rel, want in sorted(listed.items()):
        path = present.get(rel)
        if path is None:
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{rel}: {path.stat().st_size} bytes, expected {want['size']}")
        elif file_sha256(path) != want["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (changed after conversion)")
        else:
            ok += 1
    # loras/ is where a user puts LoRA adapters for the dir (docs/generation.md), later.
    extra = sorted(
        r for r in set(present) - set(listed) - {MANIFEST} if not r.startswith(USER_AREAS)
    )
    problems += [f"{rel}: not in {MANIFEST} (added after conversion)" for rel in extra]
    return ok, problems
