"""``edged models``: list, verify, fetch and add catalogue models.

edged models list [--json]             what the catalogue knows, what is installed where
edged models verify [NAME...]          sha256 of every installed file (exit 1 on a mismatch)
edged models fetch NAME... [--dir D]   download, verify and install atomically
edged models add PATH --task T --family F [--name N] [--licence L] [--scale S]
edged models quantize SRC --scheme ...  (edged/cli/models_quantize.py)
edged models convert SOURCE --to DIR    (edged/cli/models_convert.py)
edged models verify DIR                 a converted dir against its edged-manifest.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edged.cli.common import add_common, print_json, settings_from_args
from edged.cli.models_convert import register_convert
from edged.cli.models_quantize import register_quantize
from edged.cli.models_split import register_split
from edged.config import Settings
from edged.errors import BadRequest, FetchError, ModelVerificationError
from edged.models.catalog import Catalog, licence_allowed, verify_file
from edged.models.schema import ModelEntry
from edged.schema import format_bytes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("models", help="list, verify, fetch and add models")
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p = actions.add_parser("list", help="catalogue entries, installed or not, and where")
    add_common(p, one_shot=True)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--task", default=None, help="only models of this task")
    p.set_defaults(handler=_list)

    p = actions.add_parser("verify", help="check sha256 of installed files (exit 1 on mismatch)")
    add_common(p, one_shot=True)
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="models or converted dirs (default: all models)"
    )
    p.set_defaults(handler=_verify)

    p = actions.add_parser("fetch", help="download models into the model dir")
    add_common(p, one_shot=True)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--dir", type=Path, default=None, help="model dir to install into")
    p.add_argument("--retries", type=int, default=3, help="resume attempts per file")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout, seconds")
    p.set_defaults(handler=_fetch)

    p = actions.add_parser("add", help="add your own model file to the catalogue")
    add_common(p, one_shot=True)
    p.add_argument("path", type=Path, metavar="PATH", help="model file or ONNX directory")
    p.add_argument(
        "--task",
        default=None,
        choices=["segmentation", "superres", "inpainting", "generation"],
        help="required unless PATH is a converted dir (its edged-manifest.json says)",
    )
    p.add_argument("--family", default=None, help="pre/post-processing family, e.g. sr-rgb")
    p.add_argument("--name", default=None, help="catalogue name (default: file stem)")
    p.add_argument(
        "--licence", default=None, help="SPDX id (default: the known entry's, else LicenseRef-user)"
    )
    p.add_argument("--scale", type=int, default=None, help="super-resolution scale")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "int4"])
    p.add_argument("--like", default=None, help="copy the IO spec of this catalogue entry")
    p.set_defaults(handler=_add)

    register_quantize(actions)  # edged models quantize (edged/cli/models_quantize.py)
    register_split(actions)  # edged models split (edged/cli/models_split.py)
    register_convert(actions)  # edged models convert (edged/cli/models_convert.py)


def _catalog(settings: Settings) -> Catalog:
    return Catalog.from_settings(settings)


def _selected(catalog: Catalog, names: list[str]) -> list[ModelEntry]:
    return [catalog.get(n) for n in names] if names else list(catalog)


# ---------------------------------------------------------------- list


def _status(entry: ModelEntry, found: dict[str, Path], catalog: Catalog) -> str:
    if entry.components:
        parts = [catalog.entries.get(name) for name in entry.components.values()]
        ok = all(p is not None and catalog.installed(p) for p in parts)
        return "installed" if ok else "missing"
    if not entry.files:
        return "built-in"
    return "installed" if found else "missing"


def _obtainable(entry: ModelEntry, catalog: Catalog) -> tuple[bool, bool]:
    """(fetchable, convertible): `edged models fetch` gets it / its recipe makes it.

    A multi-model entry (MobileSAM) is fetchable when every part is, convertible when every
    part is fetchable or convertible.
    """
    if not entry.components:
        return entry.fetchable, entry.recipe is not None
    parts = [catalog.entries.get(name) for name in entry.components.values()]
    fetch = all(p is not None and p.fetchable for p in parts)
    convert = all(p is not None and (p.fetchable or p.recipe is not None) for p in parts)
    return fetch, convert and not fetch


def describe(entry: ModelEntry, catalog: Catalog, allowed: list[str]) -> dict[str, Any]:
    """One entry as `edged models list --json` prints it."""
    found = catalog.installed(entry)
    fetchable, convertible = _obtainable(entry, catalog)
    return {
        "name": entry.name,
        "task": entry.task,
        "family": entry.family,
        "licence": entry.licence,
        "allowed": licence_allowed(entry.licence, allowed),
        "status": _status(entry, found, catalog),
        "installed": bool(found),
        "size": entry.total_size(),
        "formats": sorted({f"{f.format}:{f.precision}" for f in entry.files}),
        "components": entry.components,
        "description": entry.description,
        "fetchable": fetchable,
        "convertible": convertible,
        "recipe": entry.recipe.model_dump() if entry.recipe else None,
        "hint": None if found or not entry.files else entry.obtain_hint(),
        "files": [
            {
                "path": f.path,
                "format": f.format,
                "precision": f.precision,
                "size": f.size,
                "sha256": f.sha256,
                "found": str(found[f.path]) if f.path in found else None,
                "fetchable": f.fetchable,
                "source": f.sources[0] if f.sources else None,
                "sources": f.sources,
                "provenance": f.provenance,
                "gate": f.gate,
            }
            for f in entry.files
        ],
    }


def _list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    catalog = _catalog(settings)
    rows = [
        describe(e, catalog, settings.allowed_licences)
        for e in sorted(catalog, key=lambda e: (e.task, e.name))
        if args.task is None or e.task == args.task
    ]
    if args.json:
        print_json({"search_path": [str(p) for p in catalog.search_path], "models": rows})
        return 0
    print(
        f"{'NAME':<30} {'TASK':<12} {'FAMILY':<20} {'STATUS':<9} {'SIZE':>9}  {'OK':<3} "
        f"{'FETCH':<5} {'CONV':<4} LICENCE / FORMATS"
    )
    for r in rows:
        _print_row(r)
    print(f"search path: {', '.join(str(p) for p in catalog.search_path)}")
    print("OK = licence in allowed_licences (a NO model does not load until you add it there)")
    print(
        "FETCH = `edged models fetch NAME` downloads it; CONV = no download has it: make it "
        "with its recipe (`edged models list --json` shows the command)"
    )
    return 0


def _print_row(r: dict[str, Any]) -> None:
    size = format_bytes(r["size"]) if r["size"] else "-"
    print(
        f"{r['name']:<30} {r['task']:<12} {r['family']:<20} {r['status']:<9} {size:>9}  "
        f"{'yes' if r['allowed'] else 'NO':<3} {'yes' if r['fetchable'] else '-':<5} "
        f"{'yes' if r['convertible'] else '-':<4} "
        f"{r['licence']} / {','.join(r['formats']) or '-'}"
    )
    for f in r["files"]:
        gate = f"  gate: {f['gate']}" if f["gate"] else ""
        if f["found"]:
            print(f"    {f['path']} -> {f['found']}{gate}")
        else:
            print(f"    {f['path']} <- {f['source'] or 'no source'}")
    if r["hint"] and not r["fetchable"]:
        print(f"    to get it: {r['hint']}")


# ---------------------------------------------------------------- verify


def _verify_dirs(dirs: list[Path]) -> int:
    """Converted dirs: every file against edged-manifest.json (edged/convert/manifest.py)."""
    from edged.convert.manifest import verify_dir

    ok = 0
    problems: list[str] = []
    for directory in dirs:
        good, bad = verify_dir(directory)
        ok += good
        problems += [f"MISMATCH {directory}: {line}" for line in bad]
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{ok} files ok" + (f", {len(problems)} problems" if problems else ""))
    return 1 if problems else 0


def _verify(args: argparse.Namespace) -> int:
    if args.names and all(Path(n).is_dir() for n in args.names):
        return _verify_dirs([Path(n) for n in args.names])
    settings = settings_from_args(args)
    catalog = _catalog(settings)
    ok = unverified = 0
    problems: list[str] = []
    for entry in _selected(catalog, args.names):
        found = catalog.installed(entry)
        if args.names and entry.files and not found:
            problems.append(f"{entry.name}: not installed; {entry.obtain_hint()}")
        for file in entry.files:
            if file.path not in found:
                continue
            if file.sha256 is None:
                unverified += 1
                continue
            try:
                verify_file(file, found[file.path], model=entry.name)
            except ModelVerificationError as exc:
                problems.append(f"{entry.name}: {exc}")
            else:
                ok += 1
    for line in problems:
        print(f"MISMATCH {line}" if "sha256" in line or "bytes" in line else line, file=sys.stderr)
    note = f", {unverified} without a catalogue sha256" if unverified else ""
    print(f"{ok} files ok{note}" + (f", {len(problems)} problems" if problems else ""))
    return 1 if problems else 0


# ---------------------------------------------------------------- fetch


def _fetch(args: argparse.Namespace) -> int:
    from edged.models.fetch import context_from_settings, fetch_entry, pick_model_dir

    settings = settings_from_args(args)
    catalog = _catalog(settings)
    entries = [catalog.get(n) for n in args.names]
    dest = args.dir if args.dir is not None else pick_model_dir(settings)
    ctx = context_from_settings(settings, timeout=args.timeout, retries=args.retries)
    failures: list[str] = []
    for entry in entries:
        try:
            results = fetch_entry(entry, catalog, dest, ctx)
        except FetchError as exc:
            failures.append(f"{entry.name}: {exc}")
            continue
        for r in results:
            print(
                f"{entry.name}: {r.file}: {r.status}"
                + (f" -> {r.path}" if r.path else f" ({r.detail})")
            )
        if entry.files and not any(r.path for r in results):
            failures.append(f"{entry.name}: nothing could be fetched; {results[0].detail}")
        if not licence_allowed(entry.licence, settings.allowed_licences):
            print(
                f"note: {entry.name} is licensed {entry.licence}, not in allowed_licences: "
                "it will not load until you add it there",
                file=sys.stderr,
            )
    if args.dir is not None and args.dir.resolve() not in [
        p.resolve() for p in catalog.search_path
    ]:
        print(
            f"note: {args.dir} is not in model_dirs; add it there to use these files",
            file=sys.stderr,
        )
    if failures:
        raise FetchError("; ".join(failures))
    return 0


# ---------------------------------------------------------------- add


def _add(args: argparse.Namespace) -> int:
    from edged.convert.manifest import read_manifest
    from edged.models.add import add_model

    made = read_manifest(args.path) if args.path.is_dir() else None
    made = made or {}
    task, family = args.task or made.get("task"), args.family or made.get("family")
    if task is None or family is None:
        raise BadRequest("--task and --family are required (PATH is not a converted dir)")
    settings = settings_from_args(args)
    manifest, entry = add_model(
        settings,
        _catalog(settings),
        args.path,
        task=task,
        family=family,
        name=args.name or made.get("name"),
        licence=args.licence or made.get("licence"),
        scale=args.scale,
        precision=args.precision,
        like=args.like,
    )
    print(f"added {entry.name} ({entry.task}, {entry.family}, {entry.licence}): {manifest}")
    if not licence_allowed(entry.licence, settings.allowed_licences):
        print(
            f'note: licence {entry.licence} is not in allowed_licences; add "{entry.licence}" '
            "there (edged.toml) to load it",
            file=sys.stderr,
        )
    return 0
