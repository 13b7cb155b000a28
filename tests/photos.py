"""The pictures the suite runs on: photos that scikit-image ships, and pictures made from them.

``tests/conftest.py`` turns these into fixtures (``photos``, ``files``, ``astronaut``, ``tall``,
``collage``, ``sample_photos``); test modules use those fixtures, and the makers here for pictures a
single test builds (a big photo, a PNG that claims to be huge).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: scikit-image's photos the suite writes as JPEG files: astronaut (one face), coffee, chelsea (a
#: cat), rocket.
SHIPPED = ("astronaut", "coffee", "chelsea", "rocket")


def shipped(name: str) -> np.ndarray:
    """scikit-image's sample photo ``name`` (``skimage.data.<name>()``), as it ships."""
    import skimage.data

    return getattr(skimage.data, name)()


def read_only(pixels: np.ndarray) -> np.ndarray:
    """``pixels``, marked read-only: an array that several tests share cannot be changed by one."""
    pixels.setflags(write=False)
    return pixels


def write_jpeg(pixels: np.ndarray, path: Path) -> Path:
    """A photo saved as the suite's photo files are: JPEG, quality 92."""
    Image.fromarray(pixels).save(path, quality=92)
    return path


def face_collage(rows: int = 2, cols: int = 3) -> np.ndarray:
    """``rows`` x ``cols`` tiles of the astronaut's head, each 160x160: one face per tile."""
    head = shipped("astronaut")[30:230, 140:320]
    tile = np.asarray(Image.fromarray(head).resize((160, 160), Image.BILINEAR))
    return np.concatenate([np.concatenate([tile] * cols, axis=1)] * rows, axis=0)


def gradient() -> np.ndarray:
    """Both extremes, as in the lesson's photo: red a gradient from 0 to 255, green the reverse, blue 77."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    return np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 77)], axis=-1)


def png_declaring(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header claims ``width`` x ``height`` (CRC fixed, so it parses): a
    decompression bomb's signature."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    raw = bytearray(out.getvalue())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def big_photos(photos: dict[str, Path], folder: Path, n: int) -> list[Path]:
    """Large, distinct photos, so a face-detection task takes long enough to be caught mid-flight."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        base = Image.open(photos["astronaut"]).resize((1800 + 8 * i, 1800))
        path = folder / f"big-{i}.jpg"
        base.save(path, quality=90)
        out.append(path)
    return out
