"""edged.imaging: safe decoding, encoding, letterbox geometry and mask helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged import imaging
from edged.errors import BadRequest


def _png(array: np.ndarray) -> bytes:  # type: ignore[type-arg]
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"not an image at all", "not a decodable image"), (b"\x89PNG\r\n", "decod")],
)
def test_undecodable_bytes_are_bad_requests(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        imaging.decode_image(data)


def test_decode_normalises_grey_rgba_and_16_bit_to_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_array_equal(imaging.decode_image(_png(grey)), np.dstack([grey] * 3))
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 7  # blue 10, red 200, alpha 7
    np.testing.assert_array_equal(imaging.decode_image(_png(bgra))[0, 0], [200, 0, 10])
    deep = np.full((2, 3), 0x8180, np.uint16)
    np.testing.assert_array_equal(imaging.decode_image(_png(deep)), np.full((2, 3, 3), 0x81))


def test_png_round_trip_keeps_rgb_and_alpha(tmp_path: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    imaging.write_image(tmp_path / "a.png", rgba)
    back = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(back, cv2.COLOR_BGRA2RGBA), rgba)
    rgb = rgba[:, :, :3].copy()
    imaging.write_image(tmp_path / "b.png", rgb)
    np.testing.assert_array_equal(imaging.read_image(tmp_path / "b.png"), rgb)
    imaging.write_image(tmp_path / "c.jpg", rgba)  # JPEG drops alpha instead of failing
    assert imaging.read_image(tmp_path / "c.jpg").shape == (5, 7, 3)
    with pytest.raises(BadRequest, match=r"use \.png or \.jpg"):
        imaging.write_image(tmp_path / "d.gif", rgb)


def test_missing_file_and_directory_are_named(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="does not exist"):
        imaging.read_image(tmp_path / "nope.png")
    with pytest.raises(BadRequest, match="is a directory"):
        imaging.read_image(tmp_path)


@pytest.mark.parametrize(("h", "w"), [(320, 480), (480, 300), (640, 640), (100, 101)])
def test_letterbox_places_the_image_and_maps_points_back(h: int, w: int) -> None:
    image = np.full((h, w, 3), 200, np.uint8)
    canvas, lb = imaging.letterbox(image, (640, 640), pad_value=114)
    assert canvas.shape == (640, 640, 3)
    assert (lb.new_w, lb.new_h) == (round(w * lb.scale), round(h * lb.scale))
    assert max(lb.new_w, lb.new_h) == 640
    inside = canvas[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    assert (inside == 200).all()
    assert np.count_nonzero(canvas == 114) == 3 * (640 * 640 - lb.new_w * lb.new_h)
    pts = np.array([[0.0, 0.0], [w, h], [w / 3, h / 7]])
    np.testing.assert_allclose(lb.to_image(lb.to_canvas(pts)), pts)
    np.testing.assert_allclose(
        lb.to_canvas(np.array([[w, h]])), [[lb.pad_x + lb.new_w, lb.pad_y + lb.new_h]], atol=0.5
    )


def test_mask_size_mismatch_names_both_sizes() -> None:
    with pytest.raises(BadRequest, match=r"mask is 3x2 but the image is 5x4"):
        imaging.check_mask(np.zeros((2, 3), np.uint8), (4, 5, 3))
    assert imaging.check_mask(np.zeros((4, 5, 1), np.uint8), (4, 5, 3)).shape == (4, 5)


@pytest.mark.parametrize(
    ("value", "rgb"), [("#ff8000", (255, 128, 0)), ("1,2,3", (1, 2, 3)), ([9, 8, 7], (9, 8, 7))]
)
def test_colours(value: object, rgb: tuple[int, int, int]) -> None:
    assert imaging.parse_color(value) == rgb


def test_soft_mask_blends_proportionally() -> None:
    image = np.zeros((1, 3, 3), np.uint8)
    mask = np.array([[0, 128, 255]], np.uint8)
    out = imaging.replace_background(image, mask, (200, 200, 200))
    np.testing.assert_array_equal(out[0, :, 0], [200, 100, 0])


def test_prob_to_mask_matches_the_numpy_rounding_and_clipping() -> None:
    rng = np.random.default_rng(0)
    edges = np.array([-0.2, -1e-9, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.5, 1.0, 1.3, np.inf])
    prob = np.concatenate([edges, rng.uniform(-0.1, 1.1, 10_000)]).astype(np.float32)
    prob = prob.reshape(-1, 10)
    expected = np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)  # float32, as before
    got = imaging.prob_to_mask(prob)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
