"""MediaPipe selfie segmentation through the real LiteRT session vs MediaPipe's own pipeline.

tests/fixtures/selfie_ref holds probability masks that mediapipe==0.10.14's legacy
``SelfieSegmentation`` produced on ../shared/images/portraits (tools/make_selfie_reference.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.config import Settings
from edged.engine import Engine
from edged.errors import BadRequest, Cancelled
from edged.imaging import read_image, read_mask
from edged.tasks.base import TaskRequest

REF_DIR = Path(__file__).parent / "fixtures" / "selfie_ref"
PORTRAITS = ["astronaut.png", "zidane.jpg", "bus.jpg", "camera.png", "coffee.png", "chelsea.png"]
MODELS = {"general": "selfie_segmentation", "landscape": "selfie_segmentation_landscape"}


@pytest.fixture(scope="module")
def engine(shared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    home = tmp_path_factory.mktemp("selfie")
    settings = Settings(
        model_dirs=[shared_models],
        state_dir=home / "state",
        cache_dir=home / "cache",
        runtime_dir=home / "run",
    )
    eng = Engine(settings)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def portrait(shared_images: Path) -> np.ndarray[Any, Any]:
    """The astronaut, shrunk to keep the compositing tests cheap."""
    image = read_image(shared_images / "portraits" / "astronaut.png")
    return np.ascontiguousarray(cv2.resize(image, (192, 160), interpolation=cv2.INTER_AREA))


def iou(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    a, b = a >= 128, b >= 128  # probability 0.5 on both
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@pytest.mark.parametrize("variant", list(MODELS))
@pytest.mark.parametrize("name", PORTRAITS)
def test_mask_agrees_with_mediapipe(
    engine: Engine, shared_images: Path, name: str, variant: str
) -> None:
    image = read_image(shared_images / "portraits" / name)
    result = engine.run(TaskRequest(task="segmentation", model=MODELS[variant], image=image))
    ref = read_mask(REF_DIR / f"{Path(name).stem}_{variant}.png")
    mask = result.outputs["mask"]
    assert result.backend.startswith("litert")
    assert mask.shape == image.shape[:2] == ref.shape
    assert iou(mask, ref) >= 0.96
    # Stricter than the IoU goal: the soft probabilities match too (0..255 units).
    assert np.abs(mask.astype(np.int16) - ref).mean() <= 1.0


@pytest.mark.parametrize("shape", [(37, 300), (300, 37), (1, 1), (257, 255)])
def test_any_frame_size_gives_a_mask_of_that_size(engine: Engine, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    result = engine.run(TaskRequest(task="segmentation", image=image))  # default model
    assert result.model == "selfie_segmentation"
    assert result.outputs["mask"].shape == shape
    assert set(result.latency_ms) == {"pre", "run", "post", "total"}


def _run(engine: Engine, image: np.ndarray[Any, Any], **params: Any) -> Any:
    return engine.run(TaskRequest(task="segmentation", image=image, params=params))


@pytest.mark.arm64
def test_cutout_is_rgba_with_the_mask_as_alpha(engine: Engine, portrait: Any) -> None:
    result = _run(engine, portrait, output="cutout")
    cut = result.outputs["cutout"]
    assert result.meta["primary"] == "cutout"
    assert cut.shape == (*portrait.shape[:2], 4)
    np.testing.assert_array_equal(cut[:, :, 3], result.outputs["mask"])
    np.testing.assert_array_equal(cut[:, :, :3], portrait)


def test_replace_puts_the_colour_behind_the_person(engine: Engine, portrait: Any) -> None:
    result = _run(engine, portrait, output="replace", background="#ff0000")
    out, mask = result.outputs["replace"], result.outputs["mask"]
    assert 0.2 < np.mean(mask >= 128) < 0.9  # the astronaut is there, and not everywhere
    np.testing.assert_array_equal(
        out[mask == 0], np.broadcast_to([255, 0, 0], out[mask == 0].shape)
    )
    np.testing.assert_array_equal(out[mask == 255], portrait[mask == 255])


def test_overlay_tints_only_the_person(engine: Engine, portrait: Any) -> None:
    result = _run(engine, portrait, output="overlay", color="0,0,255", opacity=0.5)
    out, mask = result.outputs["overlay"].astype(int), result.outputs["mask"]
    np.testing.assert_array_equal(out[mask == 0], portrait[mask == 0])
    want = (portrait[mask == 255].astype(int) + np.array([0, 0, 255])) / 2
    assert np.abs(out[mask == 255] - want).max() <= 1


def test_blur_keeps_the_person_sharp(engine: Engine, portrait: Any) -> None:
    result = _run(engine, portrait, output="blur", radius=9)
    out, mask = result.outputs["blur"], result.outputs["mask"]
    np.testing.assert_array_equal(out[mask == 255], portrait[mask == 255])
    background = mask == 0
    assert np.abs(out[background].astype(int) - portrait[background]).mean() > 2


@pytest.mark.parametrize(
    ("request_kwargs", "error", "message"),
    [
        ({"params": {"output": "sparkles"}}, BadRequest, "one of mask, cutout"),
        ({"image": None}, BadRequest, "needs an image"),
        ({"model": "espcn_x2"}, BadRequest, "not a segmentation"),
        ({"model": "mobilesam_decoder"}, BadRequest, "MobileSAM pair"),
        ({"params": {"output": "replace", "background": "red-ish"}}, BadRequest, "colour"),
        ({"image": np.zeros((4, 4, 2), np.uint8)}, BadRequest, "shape"),
    ],
)
def test_bad_requests_get_one_line_errors(
    engine: Engine, request_kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    kwargs: dict[str, Any] = {"image": np.zeros((8, 8, 3), np.uint8), **request_kwargs}
    with pytest.raises(error, match=message) as info:
        engine.run(TaskRequest(task="segmentation", **kwargs))
    assert "\n" not in str(info.value)


def test_progress_is_reported_and_cancel_stops_the_job(engine: Engine) -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    steps: list[tuple[int, int, str]] = []
    engine.run(
        TaskRequest(task="segmentation", image=image),
        progress=lambda step, total, message: steps.append((step, total, message)),
    )
    assert [s[:2] for s in steps] == [(0, 1), (1, 1)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        engine.run(TaskRequest(task="segmentation", image=image), cancel=cancel)
