"""Lesson 7's picture: boxes around detected faces, and dots on their landmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_boxes"]


def draw_boxes(
    image: np.ndarray,
    boxes: Sequence[tuple[int, int, int, int]],
    keypoints: Sequence[Mapping[str, tuple[int, int]]] | None = None,
    color: tuple[int, int, int] = (255, 0, 0),
    width: int | None = None,
) -> np.ndarray:
    """Draw a hollow rectangle around each box and a dot on each keypoint.

    This is the lesson's ``Rectangle((x, y), width, height, fill=False, color='red')`` for every
    face, plus the bonus circles on eyes, nose and mouth corners.

    Args:
        image: ``HxWx3`` RGB or ``HxW`` grayscale ``uint8`` pixels; left untouched.
        boxes: ``(x, y, w, h)`` per box, in pixels (MTCNN's ``box``). Boxes partly or wholly
            outside the image are clipped; empty ones (w or h <= 0) are skipped.
        keypoints: Optional, for any of the boxes: name -> ``(x, y)`` (MTCNN's ``keypoints``).
        color: RGB colour of lines and dots.
        width: Line width in pixels; by default it grows with the image,
            ``max(2, round(max(height, width) / 300))``, so boxes stay visible on large photos.

    Returns:
        A new ``HxWx3`` ``uint8`` RGB array.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"draw_boxes expects uint8 pixels, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 2:
        rgb = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 3:
        rgb = np.array(image, order="C")  # our own copy: the caller's array is never drawn on
    else:
        raise ValueError(f"draw_boxes expects an HxWx3 RGB or HxW grayscale image, got shape {image.shape}")
    h, w = rgb.shape[:2]
    line = int(width) if width is not None else max(2, round(max(h, w) / 300))
    if line < 1:
        raise ValueError(f"width must be at least 1 pixel, got {width}")
    fill = tuple(int(c) for c in color)

    canvas = Image.fromarray(rgb)
    pen = ImageDraw.Draw(canvas)
    for x, y, bw, bh in boxes:
        x, y, bw, bh = (int(round(v)) for v in (x, y, bw, bh))
        if bw <= 0 or bh <= 0:
            continue
        # The box covers pixels x .. x+w-1; Pillow's outline grows inward from these edges.
        pen.rectangle((x, y, x + bw - 1, y + bh - 1), outline=fill, width=line)
    radius = line + 1
    for points in keypoints or ():
        for px, py in (points or {}).values():
            px, py = int(round(px)), int(round(py))
            pen.ellipse((px - radius, py - radius, px + radius, py + radius), fill=fill)
    return np.array(canvas)
