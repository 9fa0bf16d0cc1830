"""The project's own embedded model edged_sr_x2: files match the manifest, and it beats bicubic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.config import Settings
from edged.engine import Engine
from edged.models.catalog import Catalog, load_entry, package_data_models_dir, shipped_catalog_dir
from edged.runtime.base import file_sha256
from edged.testing import set5_pairs, set5_score, write_manifest

BICUBIC_X2 = 34.45
MANIFEST = shipped_catalog_dir() / "edged_sr_x2.toml"


def test_files_match_the_manifest_and_the_size_limit() -> None:
    import onnx

    entry = load_entry(MANIFEST)
    assert entry.licence == "Apache-2.0"
    assert entry.family == "sr-y"
    assert {f.precision for f in entry.files} == {"fp32", "int8"}
    for file in entry.files:
        path = package_data_models_dir() / file.path
        assert path.stat().st_size == file.size
        assert file_sha256(path) == file.sha256
        assert file.size is not None
        assert file.size < 1_000_000
    fp32 = next(f for f in entry.files if f.precision == "fp32")
    proto = onnx.load(str(package_data_models_dir() / fp32.path))
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert params <= 100_000


def test_default_model_is_found_without_any_model_dir() -> None:
    catalog = Catalog.load([], [])
    entry = catalog.get("edged_sr_x2")
    assert all(catalog.locate(f) is not None for f in entry.files)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_beats_bicubic_on_set5_through_the_task(
    shared_images: Path, tmp_path: Path, precision: str
) -> None:
    """fp32 through the default model; int8 through a manifest that lists only that file."""
    entry = load_entry(MANIFEST).model_dump(mode="json", exclude_none=True)
    entry["name"] = f"edged_sr_x2_{precision}_only"
    entry["files"] = [f for f in entry["files"] if f["precision"] == precision]
    write_manifest(tmp_path / "catalog", entry)
    settings = Settings(model_dirs=[package_data_models_dir()], catalog_dirs=[tmp_path / "catalog"])
    engine = Engine(settings)
    pairs = set5_pairs(shared_images, 2)
    score = set5_score(engine, str(entry["name"]), pairs, 2, tile=4096)  # one window
    if precision == "fp32":  # The default model of the task is this one.
        assert set5_score(engine, None, pairs, 2, tile=96) == pytest.approx(score, abs=1e-6)
    engine.close()
    assert score >= BICUBIC_X2 + 0.5, f"{precision}: {score:.2f} dB"
