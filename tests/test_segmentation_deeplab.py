"""DeepLabV3 (the real 257x257 MobileNetV2 model on LiteRT) on the shared portraits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.config import Settings
from edged.engine import Engine
from edged.errors import BadRequest
from edged.imaging import read_image
from edged.tasks.base import TaskRequest, TaskResult

MODEL = "deeplabv3_mnv2_257"
PERSON = 15


@pytest.fixture(scope="module")
def engine(shared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    home = tmp_path_factory.mktemp("deeplab")
    eng = Engine(
        Settings(
            model_dirs=[shared_models],
            state_dir=home / "state",
            cache_dir=home / "cache",
            runtime_dir=home / "run",
        )
    )
    yield eng
    eng.close()


def _run(engine: Engine, images: Path, name: str, **params: object) -> TaskResult:
    image = read_image(images / "portraits" / name)
    return engine.run(TaskRequest(task="segmentation", model=MODEL, image=image, params=params))


def test_person_is_the_default_class(engine: Engine, shared_images: Path) -> None:
    result = _run(engine, shared_images, "astronaut.png")
    mask, classes = result.outputs["mask"], result.outputs["classes"]
    assert result.meta["classes"] == ["person"]
    assert mask.shape == classes.shape == (512, 512)
    assert result.outputs["masks"].shape == (1, 512, 512)
    assert 0.3 < np.mean(mask == 255) < 0.7
    # The smooth per-class mask and the nearest-upsampled class map describe the same region.
    person = classes == PERSON
    inter = np.count_nonzero(person & (mask == 255))
    assert inter / np.count_nonzero(person | (mask == 255)) > 0.95


def test_no_person_in_a_cat_photo_but_a_cat(engine: Engine, shared_images: Path) -> None:
    default = _run(engine, shared_images, "chelsea.png")
    assert np.mean(default.outputs["mask"] == 255) < 0.01
    cat = _run(engine, shared_images, "chelsea.png", classes="cat")
    assert cat.meta["classes"] == ["cat"]
    assert np.mean(cat.outputs["mask"] == 255) > 0.5


def test_several_classes_give_one_mask_each_and_their_union(
    engine: Engine, shared_images: Path
) -> None:
    result = _run(engine, shared_images, "bus.jpg", classes=["person", 6])
    masks = result.outputs["masks"]
    assert result.meta["classes"] == ["person", "bus"]
    assert masks.shape == (2, 1080, 810)
    assert all(np.mean(m == 255) > 0.05 for m in masks)
    np.testing.assert_array_equal(result.outputs["mask"], masks.max(axis=0))
    assert not np.any((masks[0] == 255) & (masks[1] == 255))  # argmax classes never overlap


def test_unknown_class_is_a_bad_request(engine: Engine) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(BadRequest, match="unknown class 'unicorn'"):
        engine.run(
            TaskRequest(
                task="segmentation", model=MODEL, image=image, params={"classes": "unicorn"}
            )
        )
