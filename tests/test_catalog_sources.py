"""Every shipped manifest says how to get its files: a download source or a recipe.

``edged models list --json`` reports it (fetchable / convertible / source per file), and
every "not installed" hint names a command that works for that model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edged.models.catalog import load_entry, shipped_catalog_dir
from edged.models.hub import parse_hub_source
from edged.models.schema import ModelEntry, ModelFile, Recipe

SHIPPED = sorted(shipped_catalog_dir().glob("*.toml"))
ENTRIES = {p.stem: load_entry(p) for p in SHIPPED}


def test_the_shipped_catalogue_is_there() -> None:
    assert len(ENTRIES) >= 30
    assert {"espcn_x2", "sd_turbo", "lama_dilated", "xlsr_x3"} <= ENTRIES.keys()


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_manifest_has_a_source_or_a_recipe(name: str) -> None:
    entry = ENTRIES[name]
    if entry.components:
        assert all(part in ENTRIES for part in entry.components.values())
        return
    if not entry.files:
        return  # built-in (OpenCV inpainting): nothing to get
    for file in entry.files:
        assert file.sources or entry.recipe is not None, f"{name}: {file.path}"


@pytest.mark.parametrize(
    ("name", "file"),
    [
        (e.name, f)
        for e in ENTRIES.values()
        for f in e.files
        if any(s.startswith("hf://") for s in f.sources)
    ],
)
def test_hub_sources_are_pinned_hashed_and_sourced(name: str, file: ModelFile) -> None:
    assert file.sha256 is not None, f"{name}: an hf:// source without a catalogue sha256"
    assert file.provenance is not None, name
    assert "huggingface.co" in file.provenance, name
    for source in file.sources:
        hub = parse_hub_source(source)
        assert len(hub.revision) == 40
        assert hub.revision in file.provenance  # the figures were read at the pinned commit


def test_hub_sources_exist_for_the_researched_models() -> None:
    for name in ("lama_dilated", "xlsr_x3", "mobilesam_decoder"):
        assert ENTRIES[name].fetchable, name


def test_hint_names_a_command_that_works() -> None:
    assert ENTRIES["lama_dilated"].obtain_hint() == "run `edged models fetch lama_dilated`"
    espcn = ENTRIES["espcn_x2"].obtain_hint()
    assert "edged models fetch" not in espcn
    assert "tf2onnx.convert --graphdef ESPCN_x2.pb" in espcn
    assert "`edged models add espcn_x2.onnx --task superres --family sr-y`" in espcn
    turbo = ENTRIES["sd_turbo"].obtain_hint()
    assert (
        "edged models convert stabilityai/sd-turbo@6320d118440daa531996d634045c9f0643b44822"
        in turbo
    )


def test_schema_refuses_unpinned_hub_sources_and_empty_recipes() -> None:
    with pytest.raises(ValidationError, match="40-hex commit"):
        ModelFile(format="onnx", path="m.onnx", sources=["hf://qualcomm/XLSR@main/XLSR.onnx"])
    with pytest.raises(ValidationError, match="command or steps"):
        Recipe(upstream=["x"])
    ok = ModelFile(
        format="onnx", path="m.onnx", sources=[f"hf://org/repo.v2@{'a' * 40}/dir/m.onnx"]
    )
    assert ok.fetchable
    directory = ModelFile(format="dir", path="d", sources=[f"hf://org/repo@{'a' * 40}/d"])
    assert not directory.fetchable  # model dirs are converted, never fetched


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", "models", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_list_json_reports_fetchable_convertible_and_sources() -> None:
    result = _cli("list", "--json")
    assert result.returncode == 0, result.stderr
    rows: dict[str, dict[str, Any]] = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert rows.keys() >= ENTRIES.keys()
    for name, entry in ENTRIES.items():
        row = rows[name]
        if entry.files and not entry.components:
            assert row["fetchable"] == entry.fetchable, name
            assert row["convertible"] == (entry.recipe is not None), name
            assert row["fetchable"] or row["convertible"], name
        for listed, file in zip(row["files"], entry.files, strict=True):
            assert listed["source"] == (file.sources[0] if file.sources else None)
            assert listed["fetchable"] == file.fetchable
        if row["hint"] is not None and not row["fetchable"]:
            assert f"edged models fetch {name}" not in row["hint"], name
    assert rows["lama_dilated"]["files"][0]["source"].startswith("hf://qualcomm/LaMa-Dilated@")
    assert rows["sd_turbo"]["recipe"]["command"].startswith("edged models convert ")
    assert (rows["mobilesam"]["fetchable"], rows["mobilesam"]["convertible"]) == (False, True)


def test_list_table_has_the_columns() -> None:
    result = _cli("list", "--task", "superres")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert "FETCH" in header
    assert "CONV" in header
    assert "to get it: make it with `python -m tf2onnx.convert" in result.stdout
    assert (
        "xlsr_x3.onnx <- hf://qualcomm/XLSR@3e1c9840d3f40261c000708d057836f107f47aad/XLSR.onnx"
        in result.stdout
    )


def test_fetch_without_a_source_names_the_recipe(tmp_path: Path) -> None:
    result = _cli("fetch", "espcn_x2", "--dir", str(tmp_path / "models"))
    assert result.returncode != 0
    assert "no-source" in result.stdout
    assert "make it with `python -m tf2onnx.convert --graphdef ESPCN_x2.pb" in result.stderr
    assert "run `edged models fetch" not in result.stdout + result.stderr


def test_recipe_round_trips_through_a_user_manifest(tmp_path: Path) -> None:
    from edged.models.catalog import dump_entry

    entry = ENTRIES["sd_turbo"]
    path = tmp_path / "sd_turbo.toml"
    path.write_text(dump_entry(entry, explicit=True))
    again: ModelEntry = load_entry(path)
    assert again.recipe == entry.recipe


def test_infer_on_a_missing_generation_dir_names_its_convert_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "edged", "infer", "generation"),
            *("--model", "lcm_dreamshaper_v7", "--prompt", "a cat"),
            *("--output", str(tmp_path / "out.png")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "edged models convert SimianLuo/LCM_Dreamshaper_v7@" in result.stderr
    assert not (tmp_path / "out.png").exists()
