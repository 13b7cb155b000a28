"""tasks.draw: lesson 7's boxes and landmark dots."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.draw import draw_boxes

RED = (255, 0, 0)
GREY = 50


def canvas(h: int = 100, w: int = 120) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=2)


def frame_mask(shape, x, y, w, h, t) -> np.ndarray:
    """Pixels of a hollow rectangle covering x..x+w-1, y..y+h-1, ``t`` pixels thick, inward."""
    mask = np.zeros(shape[:2], bool)
    mask[y : y + h, x : x + w] = True
    mask[y + t : y + h - t, x + t : x + w - t] = False
    return mask


def test_box_is_a_red_frame_and_nothing_else():
    image = canvas()
    out = draw_boxes(image, [(10, 20, 30, 40)], width=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    expected = frame_mask(image.shape, 10, 20, 30, 40, 2)
    assert np.array_equal(changed(image, out), expected)
    assert (out[expected] == RED).all()
    assert (out[35, 25] == GREY).all()  # inside
    assert (out[5, 5] == GREY).all()  # outside


def test_input_is_untouched():
    image = canvas()
    keep = image.copy()
    out = draw_boxes(image, [(10, 20, 30, 40)], [{"nose": (25, 40)}])
    assert np.array_equal(image, keep)
    assert not np.shares_memory(out, image)


def test_several_boxes_and_colour():
    image = canvas()
    out = draw_boxes(image, [(0, 0, 10, 10), (50, 50, 20, 20)], color=(0, 255, 0), width=1)
    expected = frame_mask(image.shape, 0, 0, 10, 10, 1) | frame_mask(image.shape, 50, 50, 20, 20, 1)
    assert np.array_equal(changed(image, out), expected)
    assert (out[expected] == (0, 255, 0)).all()


def test_box_partly_outside_is_clipped():
    image = canvas()
    out = draw_boxes(image, [(-10, -10, 30, 30), (110, 90, 50, 50)], width=2)
    # First box: only its right and bottom edges (x, y = 18..19) are inside the image.
    expected = frame_mask((140, 160), 0, 0, 30, 30, 2)[10:110, 10:130]
    expected |= frame_mask((200, 200), 110, 90, 50, 50, 2)[:100, :120]
    assert np.array_equal(changed(image, out), expected)
    assert (out[19, 0:20] == RED).all() and (out[0:20, 19] == RED).all()


def test_boxes_wholly_outside_or_empty_draw_nothing():
    image = canvas()
    out = draw_boxes(image, [(500, 500, 10, 10), (10, 10, 0, 5), (10, 10, 5, -3)])
    assert np.array_equal(out, image)


def test_keypoint_dot():
    image = canvas()
    out = draw_boxes(image, [], [{"nose": (60, 50), "left_eye": (30, 30)}], width=2)
    assert (out[50, 60] == RED).all() and (out[30, 30] == RED).all()
    dot = changed(image, out)
    assert dot[45:56, 55:66].sum() >= 9  # a filled dot, not a single pixel
    assert dot.sum() < 2 * 50  # small
    assert not dot[0:20].any() and not dot[:, 80:].any()


def test_default_width_grows_with_image():
    image = np.full((600, 900, 3), GREY, np.uint8)
    out = draw_boxes(image, [(100, 100, 300, 200)])
    column = changed(image, out)[:, 250]
    assert column.sum() == 2 * 3  # max(2, round(900 / 300)) = 3 on top and bottom edges
    small = canvas()
    assert changed(small, draw_boxes(small, [(10, 10, 50, 50)]))[:, 30].sum() == 2 * 2


def test_grayscale_input_gives_rgb():
    gray = np.full((50, 60), GREY, np.uint8)
    out = draw_boxes(gray, [(5, 5, 20, 20)], width=1)
    assert out.shape == (50, 60, 3)
    assert (out[5, 10] == RED).all() and (out[20, 10] == GREY).all()


def test_rejects_float_pixels():
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((5, 5, 3)), [(0, 0, 2, 2)])
