"""Reading, writing and resizing photographs as numpy arrays.

Everything here works on ``HxWx3`` (RGB) or ``HxW`` (grayscale) ``uint8`` arrays. Files are opened
with Pillow, restricted to :data:`SUPPORTED_FORMATS`, so no other decoder ever sees untrusted bytes.

Errors that no retry can fix (the bytes are not a usable image) raise :class:`BadImage`, whose
message says what is wrong and what to do; callers prefix the file name. Problems of the file
system (missing file, no permission) are left as the ordinary ``OSError`` they are.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "SUPPORTED_FORMATS",
    "BadImage",
    "ImageInfo",
    "decode",
    "encode",
    "fit_within",
    "probe",
    "resize",
]

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "MPO"})

# The openers to try, common ones first. Pillow has no separate MPO opener: its JPEG opener
# returns an MPO image when the file carries several pictures.
_OPEN_ORDER = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")

_SUPPORTED_TEXT = ", ".join(sorted(SUPPORTED_FORMATS))

# What Pillow's decoders raise on bad data. FileNotFoundError and friends are also OSError, but
# the file is already open by the time these can occur, so an OSError here is about the bytes.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

_EXIF_ORIENTATION = 0x0112


class BadImage(ValueError):
    """The input can never be processed as an image (empty, corrupt, unsupported, too large).

    The message names the problem and what to do about it; it does not name the file, which the
    caller knows and prefixes.
    """


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about an image.

    Attributes:
        format: Pillow's format name, one of :data:`SUPPORTED_FORMATS`.
        width: Width in pixels as displayed, i.e. after the EXIF orientation is applied.
        height: Height in pixels as displayed.
        mode: Pillow's mode of the stored data ("RGB", "L", "P", "I;16", ...).
        frames: Number of frames (1 unless animated or multi-page).
    """

    format: str
    width: int
    height: int
    mode: str
    frames: int


Source = str | os.PathLike | bytes


def probe(source: Source, *, max_pixels: int, max_bytes: int) -> ImageInfo:
    """Check an image cheaply, reading its header but not decoding its pixels.

    Args:
        source: A path, or the file's bytes.
        max_pixels: Largest width x height accepted (a guard against decompression bombs: a
            small file may declare a huge image).
        max_bytes: Largest file size accepted.

    Returns:
        The format, displayed size, mode and frame count.

    Raises:
        BadImage: Empty, too large, not an image in a supported format, or more pixels than
            ``max_pixels``. A file that passes may still fail :func:`decode` if its pixel data
            is truncated or corrupt.
        OSError: The path cannot be read (missing, permissions).
    """
    size = len(source) if isinstance(source, bytes) else os.stat(source).st_size
    if size > max_bytes:
        raise BadImage(
            f"file is {size:,} bytes, over the limit of {max_bytes:,} bytes: "
            "downscale or recompress it, or raise the limit"
        )
    with _open(source) as im:
        _check_pixels(im.size, max_pixels)
        try:
            frames = int(getattr(im, "n_frames", 1))
        except _DECODE_ERRORS as exc:
            raise _corrupt(im.format, exc) from None
        width, height = im.size
        if _orientation(im, allow_load=False) in (5, 6, 7, 8):
            width, height = height, width
        return ImageInfo(format=im.format, width=width, height=height, mode=im.mode, frames=frames)


def decode(source: Source, *, max_pixels: int = 100_000_000, at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image to an ``HxWx3`` ``uint8`` RGB array, upright as displayed.

    The EXIF orientation is applied first; animated GIF/WebP give their first frame; transparency
    is composited on white; palette, grayscale, bilevel and CMYK images are converted to RGB;
    16-bit data is scaled to 8 bits by its full range (``value >> 8``), not clipped.

    Args:
        source: A path, or the file's bytes.
        max_pixels: Largest width x height accepted; checked from the header before any pixel
            memory is allocated.
        at_least: ``(width, height)`` the caller needs at most, upright. A JPEG is then decoded at
            1/2, 1/4 or 1/8 of its size by the codec itself (libjpeg's DCT scaling, Pillow's
            ``draft``), the smallest of those still at least this size in both directions: several
            times faster than decoding every pixel and resizing them. Other formats, and JPEGs
            not twice that size, are decoded whole. None: always whole.

    Returns:
        A C-contiguous, writable ``(height, width, 3)`` ``uint8`` array.

    Raises:
        BadImage: The data is empty, truncated, corrupt, unsupported or too large.
        OSError: The path cannot be read (missing, permissions).
    """
    with _open(source) as im:
        _check_pixels(im.size, max_pixels)
        fmt = im.format
        try:
            if at_least is not None and fmt == "JPEG":
                _draft(im, at_least)
            im.load()
        except _DECODE_ERRORS as exc:
            raise _corrupt(fmt, exc) from None
        im = _upright(im)
        try:
            rgb = _to_rgb(im, fmt)
        except BadImage:
            raise
        except _DECODE_ERRORS as exc:
            raise BadImage(
                f"cannot convert {fmt} colour mode {im.mode} to RGB ({exc}): "
                "re-export the image as 8-bit RGB"
            ) from None
    if rgb.dtype != np.uint8 or not rgb.flags.c_contiguous or not rgb.flags.writeable:
        # np.asarray over a Pillow image can be a read-only view of its bytes.
        rgb = np.array(rgb, dtype=np.uint8, order="C")
    return rgb


def encode(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode an RGB (``HxWx3``) or grayscale (``HxW``) ``uint8`` array as image file bytes.

    Args:
        image: The pixels. ``HxWx4`` (RGBA) is accepted for formats with alpha (PNG, WebP).
        fmt: "JPEG" (or "JPG"), "PNG", or another format Pillow can write.
        quality: JPEG/WebP quality, 1-95; ignored for lossless formats.

    Returns:
        The encoded file.
    """
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    pil = Image.fromarray(_check_uint8(image, "encode", allow_alpha=fmt != "JPEG"))
    out = io.BytesIO()
    if fmt in ("JPEG", "WEBP"):
        pil.save(out, format=fmt, quality=int(quality))
    else:
        pil.save(out, format=fmt)
    return out.getvalue()


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so that the longest side is at most ``max_side``, keeping the aspect ratio.

    Never enlarges: an image already small enough is returned as is (the same object).

    Args:
        image: ``HxW`` or ``HxWxC`` ``uint8`` array.
        max_side: Longest side allowed, in pixels (>= 1).

    Returns:
        The downscaled ``uint8`` array (Lanczos filter, which avoids the aliasing of plain
        subsampling; ``reducing_gap`` makes large reductions fast).
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    image = _check_uint8(image, "fit_within", allow_alpha=True)
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    new_w = min(max_side, max(1, round(w * scale)))
    new_h = min(max_side, max(1, round(h * scale)))
    pil = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(pil).copy()


def resize(image: np.ndarray, size: tuple[int, int], *, interpolation: str = "bilinear") -> np.ndarray:
    """Resize to exactly ``size = (height, width)``, ignoring the aspect ratio.

    This is what ``keras.utils.load_img(path, target_size=size, interpolation="bilinear")`` does
    (a plain PIL resize), so models see the same pixels as in the course. Note that Keras's own
    default is ``interpolation="nearest"``; pass that to reproduce it exactly.

    Args:
        image: ``HxW`` or ``HxWxC`` ``uint8`` array.
        size: Target ``(height, width)``.
        interpolation: "bilinear", "nearest", "bicubic", "lanczos", "box" or "hamming".

    Returns:
        A new ``uint8`` array of shape ``(height, width[, C])``.
    """
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be (height, width) with both at least 1, got {size}")
    try:
        resample = Image.Resampling[interpolation.upper()]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {interpolation!r}: use one of "
            + ", ".join(m.name.lower() for m in Image.Resampling)
        ) from None
    image = _check_uint8(image, "resize", allow_alpha=True)
    return np.asarray(Image.fromarray(image).resize((width, height), resample)).copy()


# --- internals -----------------------------------------------------------------------------------


@contextmanager
def _open(source: Source) -> Iterator[Image.Image]:
    """Open ``source`` lazily (header only) as one of the supported formats, or raise BadImage."""
    if isinstance(source, bytes):
        fp: io.BufferedIOBase = io.BytesIO(source)
    else:
        # Opened here so that a missing or unreadable path stays an OSError, not a BadImage.
        fp = open(source, "rb")  # noqa: SIM115 - closed in the finally below
    try:
        head = fp.read(64)
        if not head:
            raise BadImage("empty file (0 bytes): the copy was probably interrupted; copy it again")
        fp.seek(0)
        # Pillow warns (and past twice its global limit, raises) about large images itself, on
        # opening and on some frame seeks; our own max_pixels is what decides, so its warning is
        # noise for the whole use of the image, and its error becomes BadImage.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(fp, formats=_OPEN_ORDER)
            except Image.DecompressionBombError as exc:
                # Reached only past Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS, about
                # 179 megapixels by default), which this module leaves as the application set it.
                raise BadImage(
                    f"image is over the pixel limit ({exc}): possible decompression bomb; "
                    "downscale it before importing"
                ) from None
            except UnidentifiedImageError:
                raise BadImage(_unsupported_message(head)) from None
            except _DECODE_ERRORS as exc:
                raise BadImage(
                    f"unreadable image header ({exc}): the file is truncated or corrupt; re-export or re-copy it"
                ) from None
            with im:
                if im.format not in SUPPORTED_FORMATS:  # defensive: an opener's odd subclass
                    raise BadImage(
                        f"{im.format} images are not supported: supported formats are "
                        f"{_SUPPORTED_TEXT}; convert it to JPEG or PNG"
                    )
                yield im
    finally:
        fp.close()


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise BadImage(
            f"image is {width}x{height} = {pixels:,} pixels, over the pixel limit of "
            f"{max_pixels:,} (possible decompression bomb): downscale it, or raise the limit "
            "if the image is genuine"
        )
    if pixels == 0:
        raise BadImage(f"image has no pixels ({width}x{height}): the file is corrupt; re-export it")


def _corrupt(fmt: str | None, exc: BaseException) -> BadImage:
    detail = str(exc) or type(exc).__name__
    return BadImage(f"truncated or corrupt {fmt or 'image'} data ({detail}): re-export or re-copy the file")


def _orientation(im: Image.Image, *, allow_load: bool) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable."""
    if not allow_load and im.format == "PNG" and "exif" not in im.info:
        # A PNG's eXIf chunk may come after the pixel data; Pillow would decode it all to look.
        return 1
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except (*_DECODE_ERRORS, TypeError, KeyError):
        return 1  # broken EXIF must not make a viewable image unusable


def _draft(im: Image.Image, at_least: tuple[int, int]) -> None:
    """Ask the JPEG decoder for the smallest DCT-scaled size that is at least ``at_least`` (upright)."""
    width, height = (max(1, int(v)) for v in at_least)
    if _orientation(im, allow_load=False) in (5, 6, 7, 8):  # stored on its side
        width, height = height, width
    if im.size[0] >= 2 * width and im.size[1] >= 2 * height:
        im.draft(im.mode, (width, height))


def _upright(im: Image.Image) -> Image.Image:
    if _orientation(im, allow_load=True) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except (*_DECODE_ERRORS, TypeError, KeyError):
        return im


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _to_rgb(im: Image.Image, fmt: str | None) -> np.ndarray:
    """Pixels of a loaded image as an ``HxWx3`` ``uint8`` array."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return np.asarray(im)
    if mode in _UINT16_MODES:
        # The high byte is the value scaled by the true 16-bit range (65535 -> 255).
        gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return _gray_to_rgb(gray)
    if mode in _ALPHA_MODES or "transparency" in im.info:  # alpha, or a palette/colour key
        return _on_white(np.asarray(im.convert("RGBA")))
    if mode == "I":
        return _gray_to_rgb(_int32_to_uint8(np.asarray(im), _bits_per_sample(im, fmt)))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(im)))
    # "1", "L", "P", "CMYK" (Pillow undoes Adobe's inverted CMYK JPEGs), "YCbCr", "RGBX", ...
    return np.asarray(im.convert("RGB"))


def _on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _bits_per_sample(im: Image.Image, fmt: str | None) -> int | None:
    if fmt == "PNG":
        return 16  # Pillow opens 16-bit grayscale PNGs as "I" in some versions
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int) and 8 <= bits <= 32:
            return bits
    return None


def _int32_to_uint8(values: np.ndarray, bits: int | None) -> np.ndarray:
    values = values.astype(np.int64)
    if bits is None:
        # Unknown source depth: 16 bits when the values fit, else the full 32-bit range.
        bits = 16 if values.size and values.min() >= 0 and values.max() <= 0xFFFF else 32
    shift = max(0, bits - 8)
    return np.right_shift(np.clip(values, 0, None), shift).clip(0, 255).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    # Float images are conventionally 0..1; anything else is taken as already 0..255.
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_uint8(image: np.ndarray, what: str, *, allow_alpha: bool) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} expects a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"{what} expects uint8 pixels, got {image.dtype}: convert with "
            "np.clip(np.rint(x), 0, 255).astype(np.uint8) (scale 0..1 floats by 255 first)"
        )
    channels = (1, 3, 4) if allow_alpha else (1, 3)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in channels)):
        raise ValueError(
            f"{what} expects HxW or HxWxC with C in {channels}, got shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} got an empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


# Formats people commonly mistake for photos we can read, by their first bytes.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF", "a PDF document"),
    (0, b"8BPS", "a Photoshop PSD file"),
    (0, b"\x00\x00\x01\x00", "an ICO icon"),
    (0, b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (0, b"qoif", "a QOI image"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x89PNG", "a damaged PNG"),
    (0, b"\xff\xd8\xff", "a damaged JPEG"),
    (0, b"GIF8", "a damaged GIF"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def _sniff(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "a HEIC/HEIF image (the iPhone default)"
        if brand in (b"avif", b"avis"):
            return "an AVIF image"
        return "an MP4/QuickTime-family file"
    for offset, magic, what in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return what
    stripped = head.lstrip()
    if stripped[:4].lower() in (b"<svg", b"<?xm"):
        return "an SVG/XML document"
    text = sum(32 <= b < 127 or b in b"\t\r\n" for b in head)
    if text == len(head):
        return "a text file"
    return None


def _unsupported_message(head: bytes) -> str:
    what = _sniff(head)
    if what and what.startswith("a damaged"):
        return (
            f"{what} (its header cannot be read): the file is truncated or corrupt; "
            "re-export or re-copy it"
        )
    return (
        f"not an image in a supported format{f' (looks like {what})' if what else ''}: "
        f"supported formats are {_SUPPORTED_TEXT}; convert it to JPEG or PNG"
    )
