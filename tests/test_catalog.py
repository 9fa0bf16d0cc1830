"""The catalogue: shipped manifests, verification, licence gate, `edged models` verify/list/add."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edged
from edged.config import DEFAULT_ALLOWED_LICENCES, load_settings
from edged.errors import ConfigError, LicenceNotAllowed, ModelNotFound, ModelVerificationError
from edged.models.add import add_model
from edged.models.catalog import (
    Catalog,
    check_licence,
    clear_verify_cache,
    dump_entry,
    load_entry,
    shipped_catalog_dir,
    verify_file,
)
from edged.models.schema import ModelEntry, ModelFile
from edged.runtime.base import file_sha256
from edged.testing import make_scale_model

SHIPPED = sorted(shipped_catalog_dir().glob("*.toml"))


def edged_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `edged` command in a subprocess (the conftest env isolates its state dir)."""
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.fixture(autouse=True)
def _fresh_verify_cache() -> None:
    clear_verify_cache()


# ---------------------------------------------------------------- shipped manifests


@pytest.mark.parametrize("manifest", SHIPPED, ids=lambda p: p.stem)
def test_shipped_manifest_validates_and_round_trips(manifest: Path) -> None:
    entry = load_entry(manifest)
    assert entry.name == manifest.stem
    assert load_entry_text(dump_entry(entry)) == entry
    assert load_entry_text(dump_entry(entry, explicit=True)) == entry


def load_entry_text(text: str) -> ModelEntry:
    import tomllib

    return ModelEntry.model_validate(tomllib.loads(text))


def test_every_shared_model_file_has_an_entry_with_its_sha(shared_models: Path) -> None:
    catalog = Catalog.load([], [shared_models])
    by_path = {f.path: (e, f) for e in catalog for f in e.files}
    shared = sorted(p for p in shared_models.iterdir() if p.suffix in {".onnx", ".tflite"})
    assert len(shared) >= 29
    for path in shared:
        assert path.name in by_path, f"{path.name} has no catalogue entry"
        entry, file = by_path[path.name]
        assert file.sha256 == file_sha256(path), path.name
        assert file.size == path.stat().st_size
        # One entry per model: the file stem (minus _fp32/_int8) is the entry name.
        assert path.stem.removesuffix("_fp32").removesuffix("_int8") == entry.name


def test_catalogue_constants_for_families(shared_models: Path) -> None:
    catalog = Catalog.load([], [shared_models])
    deeplab = catalog.get("deeplabv3_mnv2_257")
    labels = (shared_models / "deeplabv3_labels.txt").read_text().split("\n")
    assert deeplab.params["labels"][15] == "person" == labels[15].split()[1]
    assert deeplab.params["person"] == 15
    assert len(deeplab.params["labels"]) == 21
    for name, scale in [("espcn_x3", 3), ("lapsrn_x4", 4), ("realesrgan-x4plus", 4)]:
        assert catalog.get(name).params["scale"] == scale
    assert catalog.get("xlsr_x3").input.size == (128, 128)
    assert catalog.get("mobilesam").components == {
        "encoder": "mobilesam_encoder",
        "decoder": "mobilesam_decoder",
    }
    espcn = catalog.get("espcn_x2")
    assert {(f.format, f.precision) for f in espcn.files} == {
        ("onnx", "fp32"),
        ("tflite", "fp32"),
        ("tflite", "int8"),
    }
    selfie = catalog.get("selfie_segmentation").files[0]
    assert selfie.sources[0].startswith("pypi:mediapipe==0.10.14#")


def test_bad_manifest_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        'name = "bad"\ntask = "superres"\nfamily = "sr-y"\nlicence = "MIT"\n'
        '[[files]]\nformat = "onnx"\npath = "../escape.onnx"\n'
    )
    with pytest.raises(ConfigError, match=r"bad.toml: files\.0\.path"):
        Catalog.load([tmp_path], [])


def test_user_catalogue_overrides_shipped_and_package_dir_is_searched(tmp_path: Path) -> None:
    (tmp_path / "espcn_x2.toml").write_text(
        'name = "espcn_x2"\ntask = "superres"\nfamily = "sr-y"\nlicence = "MIT"\n'
    )
    catalog = Catalog.load([], [tmp_path / "models"], user_dir=tmp_path)
    assert catalog.get("espcn_x2").licence == "MIT"
    assert catalog.search_path[-1].parts[-3:] == ("edged", "data", "models")


# ---------------------------------------------------------------- verification


def _copy_of(shared_models: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / "models" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_models / name, dest)
    return dest


def _tamper(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_file_catches_one_flipped_byte(shared_models: Path, tmp_path: Path) -> None:
    catalog = Catalog.load([], [])
    file = catalog.get("espcn_x2").files[0]
    path = _copy_of(shared_models, tmp_path, file.path)
    verify_file(file, path)  # good copy passes
    _tamper(path)
    with pytest.raises(ModelVerificationError) as err:
        verify_file(file, path)
    message = str(err.value)
    assert "espcn_x2.onnx" in message
    assert file.sha256 is not None
    assert file.sha256 in message
    assert file_sha256(path) in message
    assert "edged models add" in message or "edged models fetch espcn_x2" in message


def test_verify_file_size_mismatch_and_cache(tmp_path: Path) -> None:
    path = make_scale_model(tmp_path / "m.onnx")
    size = path.stat().st_size
    good = ModelFile(format="onnx", path="m.onnx", sha256=file_sha256(path), size=size)
    verify_file(good, path)
    with pytest.raises(ModelVerificationError, match="bytes, expected"):
        verify_file(good.model_copy(update={"size": size + 1}), path)
    verify_file(good, path)  # unchanged: the cached result stands
    # Same size and mtime_ns (set back with utime) but a new ctime: hashed again and caught
    # (issue 15: the cache is keyed on inode and ctime too) ...
    stat = path.stat()
    _tamper(path, offset=size // 2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(ModelVerificationError, match="has sha256"):
        verify_file(good, path)
    # ... and so is any write that changes mtime.
    _tamper(path, offset=size // 2 + 1)
    with pytest.raises(ModelVerificationError, match="has sha256"):
        verify_file(good, path)


def _shipped_files() -> list[Path]:
    """The project's own model files (edged/data/models), always on the search path."""
    return sorted((Path(edged.__file__).parent / "data" / "models").glob("*.onnx"))


def test_cli_verify_green_on_shared_models(shared_models: Path) -> None:
    result = edged_cli(
        "models", "verify", env={"EDGED_MODEL_DIRS": json.dumps([str(shared_models)])}
    )
    assert result.returncode == 0, result.stderr
    count = len([p for p in shared_models.iterdir() if p.suffix in {".onnx", ".tflite"}])
    assert f"{count + len(_shipped_files())} files ok" in result.stdout


def test_cli_verify_names_a_tampered_file(shared_models: Path, tmp_path: Path) -> None:
    path = _copy_of(shared_models, tmp_path, "fsrcnn_x2.onnx")
    _copy_of(shared_models, tmp_path, "espcn_x2.onnx")
    _tamper(path, offset=path.stat().st_size // 2)
    env = {"EDGED_MODEL_DIRS": json.dumps([str(tmp_path / "models")])}
    result = edged_cli("models", "verify", env=env)
    assert result.returncode == 1
    assert "fsrcnn_x2.onnx" in result.stderr
    assert "espcn_x2.onnx" not in result.stderr
    assert f"{1 + len(_shipped_files())} files ok, 1 problems" in result.stdout


def test_cli_verify_named_model_not_installed_fails() -> None:
    result = edged_cli("models", "verify", "espcn_x2")
    assert result.returncode == 1
    # espcn_x2 has no download: the hint is its recipe, not a fetch that answers "no-source".
    assert "make it with `python -m tf2onnx.convert --graphdef ESPCN_x2.pb" in result.stderr
    assert "edged models fetch espcn_x2" not in result.stderr


def test_cli_list_json(shared_models: Path) -> None:
    result = edged_cli(
        "models", "list", "--json", env={"EDGED_MODEL_DIRS": json.dumps([str(shared_models)])}
    )
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert models["espcn_x2"]["installed"] is True
    assert models["espcn_x2"]["files"][0]["found"] == str(shared_models / "espcn_x2.onnx")
    assert models["yolov8n_seg"]["installed"] is False
    assert models["yolov8n_seg"]["allowed"] is False
    assert models["sd_turbo"]["allowed"] is False
    assert models["opencv_telea"]["status"] == "built-in"
    assert "tflite:int8" in models["espcn_x2"]["formats"]


# ---------------------------------------------------------------- licence gate


def test_licence_gate() -> None:
    catalog = Catalog.load([], [])
    allowed = list(DEFAULT_ALLOWED_LICENCES)
    check_licence(catalog.get("espcn_x2"), allowed)
    with pytest.raises(LicenceNotAllowed) as err:
        check_licence(catalog.get("yolov8n_seg"), allowed)
    assert str(err.value) == (
        "model yolov8n_seg is licensed AGPL-3.0, which is not in allowed_licences; "
        'add "AGPL-3.0" to allowed_licences in edged.toml if you accept its terms'
    )
    with pytest.raises(LicenceNotAllowed, match="LicenseRef-stabilityai-nc-community"):
        check_licence(catalog.get("sd_turbo"), allowed)
    check_licence(catalog.get("yolov8n_seg"), [*allowed, "AGPL-3.0"])


@pytest.mark.parametrize(
    ("licence", "ok"),
    [("MIT OR AGPL-3.0", True), ("MIT AND AGPL-3.0", False), ("(Apache-2.0)", True)],
)
def test_licence_expressions(licence: str, ok: bool) -> None:
    entry = ModelEntry(name="x", task="superres", family="sr-y", licence=licence)
    if ok:
        check_licence(entry, ["MIT", "Apache-2.0"])
    else:
        with pytest.raises(LicenceNotAllowed):
            check_licence(entry, ["MIT", "Apache-2.0"])


# ---------------------------------------------------------------- models add


def test_add_round_trip_outside_search_path(tmp_path: Path) -> None:
    model = make_scale_model(tmp_path / "elsewhere" / "my_sr.onnx", scale=3.0)
    settings = load_settings()
    catalog = Catalog.from_settings(settings)
    manifest, entry = add_model(
        settings, catalog, model, task="superres", family="sr-rgb", scale=3, licence="MIT"
    )
    assert manifest == settings.state_dir / "catalog" / "my_sr.toml"
    reloaded = Catalog.from_settings(settings)
    got = reloaded.get("my_sr")
    assert got == entry
    assert got.params["scale"] == 3
    assert got.input.layout == "NCHW"  # IO spec copied from an sr-rgb entry
    (file,) = got.files
    assert file.sha256 == file_sha256(model)
    assert file.sources == [model.resolve().as_uri()]
    installed = reloaded.locate(file)
    assert installed == settings.state_dir / "models" / "my_sr.onnx"
    verify_file(file, installed)


def test_add_known_name_keeps_its_spec_and_licence(tmp_path: Path) -> None:
    models = tmp_path / "models"
    model = make_scale_model(models / "yolov8n_seg.onnx")
    settings = load_settings(overrides={"model_dirs": [models]})
    _, entry = add_model(
        settings, Catalog.from_settings(settings), model, task="segmentation", family="yolov8-seg"
    )
    assert entry.licence == "AGPL-3.0"
    assert entry.input.size == (640, 640)
    assert entry.files[0].sources == []  # already in a model dir: referenced, not copied
    assert Catalog.from_settings(settings).get("yolov8n_seg").files[0].sha256 == file_sha256(model)


def test_cli_add_then_verify(tmp_path: Path) -> None:
    model = make_scale_model(tmp_path / "mine.onnx")
    added = edged_cli(
        "models", "add", str(model), "--task", "superres", "--family", "sr-rgb", "--scale", "2"
    )
    assert added.returncode == 0, added.stderr
    assert "added mine" in added.stdout
    assert "LicenseRef-user" in added.stderr  # default licence is not allowed until opted in
    verified = edged_cli("models", "verify", "mine")
    assert verified.returncode == 0, verified.stderr
    assert "1 files ok" in verified.stdout


def test_add_missing_path_names_it(tmp_path: Path) -> None:
    settings = load_settings()
    with pytest.raises(ModelNotFound, match=r"nope\.onnx"):
        add_model(
            settings,
            Catalog.from_settings(settings),
            tmp_path / "nope.onnx",
            task="superres",
            family="sr-y",
        )
    with pytest.raises(ConfigError, match="unknown model format"):
        add_model(
            settings,
            Catalog.from_settings(settings),
            make_scale_model(tmp_path / "m.bin"),
            task="superres",
            family="sr-y",
        )


def test_add_model_directory_hashes_its_tree(tmp_path: Path) -> None:
    sd = tmp_path / "models" / "my_sd"
    make_scale_model(sd / "unet" / "model.onnx")
    (sd / "tokenizer").mkdir()
    (sd / "tokenizer" / "vocab.json").write_text("{}")
    settings = load_settings(overrides={"model_dirs": [tmp_path / "models"]})
    _, entry = add_model(
        settings, Catalog.from_settings(settings), sd, task="generation", family="sd-turbo"
    )
    (file,) = entry.files
    assert (file.format, file.path, file.size) == ("dir", "my_sd", None)
    assert entry.licence == "LicenseRef-user"
    verify_file(file, sd)
    (sd / "tokenizer" / "vocab.json").write_text('{"a": 1}')
    with pytest.raises(ModelVerificationError, match="my_sd"):
        verify_file(file, sd)
