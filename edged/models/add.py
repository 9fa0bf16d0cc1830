"""``edged models add``: a user's own model file becomes a catalogue entry.

The manifest goes to ``{state_dir}/catalog/<name>.toml`` (``Catalog.from_settings`` reads it
last, so it overrides a shipped entry of the same name). The IO spec is copied from the
shipped entry of that name (e.g. adding ``mobilesam_encoder.onnx`` keeps its real spec), or
from ``--like``, or from the first entry of the same family. A file outside the model search
path is linked (or copied) into the first writable model dir, with a ``file://`` source
pointing back at the original so ``edged models fetch`` can restore it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import ValidationError

from edged.config import Settings
from edged.errors import ConfigError, ModelNotFound
from edged.models.catalog import Catalog, dump_entry, path_sha256, user_catalog_dir
from edged.models.schema import (
    Format,
    InputSpec,
    ModelEntry,
    ModelFile,
    OutputSpec,
    Precision,
    Task,
)
from edged.schema import validation_problems

_FORMATS: dict[str, Format] = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}


def format_of(path: Path) -> Format:
    if path.is_dir():
        return "dir"
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ConfigError(
            f"{path}: unknown model format; expected .onnx, .tflite, .xml (OpenVINO) or a directory"
        ) from None


def _template(catalog: Catalog, name: str, family: str, like: str | None) -> ModelEntry | None:
    if like is not None:
        return catalog.get(like)
    if name in catalog.entries:
        return catalog.entries[name]
    return next((e for e in catalog if e.family == family and e.files), None)


def _link_or_copy(src: Path, dest: Path) -> None:
    """Install ``src`` at ``dest`` atomically: hard link when possible, else a copy."""
    tmp = dest.with_name(f".{dest.name}.adding")
    try:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise ConfigError(f"cannot copy {src} to {dest}: {exc.strerror or exc}") from exc
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _place(settings: Settings, catalog: Catalog, path: Path) -> tuple[str, list[str]]:
    """Path of the model relative to a model dir (installing a copy if needed), and sources."""
    from edged.models.fetch import pick_model_dir

    resolved = path.resolve()
    for directory in catalog.search_path:
        if resolved.is_relative_to(directory.resolve()):
            return resolved.relative_to(directory.resolve()).as_posix(), []
    dest = pick_model_dir(settings) / path.name
    if dest.exists():
        if path_sha256(dest) != path_sha256(path):
            raise ConfigError(
                f"{dest} already exists with other content; remove it or pass another file name"
            )
    else:
        _link_or_copy(path, dest)
    return path.name, ([] if path.is_dir() else [resolved.as_uri()])


def _merge_files(template: ModelEntry | None, name: str, new: ModelFile) -> list[ModelFile]:
    """The template's other variants stay (same-name entries only); the new file replaces its slot."""
    if template is None or template.name != name:
        return [new]
    kept = [
        f
        for f in template.files
        if f.path != new.path and (f.format, f.precision) != (new.format, new.precision)
    ]
    return [new, *kept]


def add_model(
    settings: Settings,
    catalog: Catalog,
    path: Path,
    *,
    task: Task,
    family: str,
    name: str | None = None,
    licence: str | None = None,
    scale: int | None = None,
    precision: Precision = "fp32",
    like: str | None = None,
) -> tuple[Path, ModelEntry]:
    """Write a user manifest for ``path``; returns (manifest path, entry)."""
    if not path.exists():
        raise ModelNotFound(f"{path}: no such file or directory")
    fmt = format_of(path)
    name = name or (path.name if path.is_dir() else path.stem)
    template = _template(catalog, name, family, like)
    same = template is not None and template.name == name
    rel, sources = _place(settings, catalog, path)
    new = ModelFile(
        format=fmt,
        precision=precision,
        path=rel,
        sha256=path_sha256(path),
        size=None if path.is_dir() else path.stat().st_size,
        sources=sources,
    )
    params = dict(template.params) if template is not None else {}
    if scale is not None:
        params["scale"] = scale
    try:
        entry = ModelEntry(
            name=name,
            task=task,
            family=family,
            licence=licence or (template.licence if same and template else "LicenseRef-user"),
            description=(template.description if same and template else f"user model from {path}"),
            files=_merge_files(template, name, new),
            input=template.input if template is not None else InputSpec(),
            output=template.output if template is not None else OutputSpec(),
            params=params,
            components=template.components if same and template else {},
            homepage=template.homepage if same and template else None,
        )
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"models add {path}: {problems}") from exc
    return write_user_manifest(settings, entry), entry


def write_user_manifest(settings: Settings, entry: ModelEntry) -> Path:
    """Write ``entry`` to ``{state_dir}/catalog/NAME.toml`` atomically (tmp + rename)."""
    directory = user_catalog_dir(settings.state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / f"{entry.name}.toml"
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    tmp.write_text(dump_entry(entry, explicit=True), encoding="utf-8")
    os.replace(tmp, manifest)
    return manifest
