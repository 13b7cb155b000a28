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


#: Adobe RGB (1998) as its published profile has it: the primaries adapted to the D50 of the profile
#: connection space, and one gamma of 563/256 for every channel.
ADOBE_RGB = {
    "red": (0.60974, 0.31111, 0.01947),
    "green": (0.20528, 0.62567, 0.06087),
    "blue": (0.14919, 0.06322, 0.74457),
    "gamma": 563 / 256,
}


def icc_profile(description: str, red, green, blue, gamma: float) -> bytes:
    """An ICC v2 RGB display profile (a matrix and a gamma curve per channel), byte by byte: what an
    editor embeds when it saves a photo in Adobe RGB or Display P3. ``red``, ``green``, ``blue``: each
    primary's XYZ, adapted to D50; ``gamma``: the transfer curve's exponent."""

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(s15(c) for c in v)

    text = description.encode("ascii") + b"\0"
    desc = (b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)),
            (b"bXYZ", xyz(blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text" + b"\0" * 4 + b"no copyright, test data\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def bayer_dng(pixels: np.ndarray, folder: Path, name: str = "bayer") -> Path:
    """A DNG written by ``pidng`` from raw Bayer data (RGGB, 12 bits, linear) sampled from an sRGB
    photo, as a camera's sensor would have recorded it; its colour matrix maps XYZ to linear sRGB,
    so LibRaw's demosaic gives back the photo, within a demosaic's error."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, Orientation, PhotometricInterpretation

    rgb = pixels.astype(np.float64) / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    height, width = linear.shape[:2]
    bayer = np.empty((height, width))
    bayer[0::2, 0::2] = linear[0::2, 0::2, 0]
    bayer[0::2, 1::2] = linear[0::2, 1::2, 1]
    bayer[1::2, 0::2] = linear[1::2, 0::2, 1]
    bayer[1::2, 1::2] = linear[1::2, 1::2, 2]
    bits = 12
    xyz_to_srgb = ((3.2404542, -1.5371385, -0.4985314), (-0.9692660, 1.8760108, 0.0415560),
                   (0.0556434, -0.2040259, 1.0572252))
    tags = DNGTags()
    for tag, value in (
        (Tag.ImageWidth, width), (Tag.ImageLength, height), (Tag.TileWidth, width), (Tag.TileLength, height),
        (Tag.Orientation, Orientation.Horizontal),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, bits), (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 0), (Tag.WhiteLevel, (1 << bits) - 1),
        (Tag.ColorMatrix1, [[round(v * 10000), 10000] for row in xyz_to_srgb for v in row]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.Make, "Darkroom"), (Tag.Model, "Bayer test"),
        (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2),
    ):
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path=str(folder), compress=False)
    writer.convert(np.round(bayer * ((1 << bits) - 1)).astype(np.uint16), filename=name)
    return folder / f"{name}.dng"
