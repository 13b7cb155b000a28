"""Reading, writing and resizing photographs as numpy arrays.

Everything here works on ``HxWx3`` (RGB) or ``HxW`` (grayscale) ``uint8`` arrays. The content
decides the format, never the name, and each decoder sees only the bytes of its own format:

- camera RAW (CR2, CR3, NEF, ARW, DNG, RAF, ORF, RW2, PEF, SRW, KDC, ...): a file whose first bytes
  are a TIFF header or another camera RAW signature (:data:`_RAW_SIGNATURES`) is offered to LibRaw
  (``rawpy``) first; what LibRaw identifies as a camera's raw data is a RAW, a TIFF it refuses goes on
  to Pillow. Decoded from its embedded preview when that is large enough, else demosaiced (see
  :func:`decode`'s ``raw``);
- everything else through Pillow, restricted to :data:`SUPPORTED_FORMATS`: JPEG, PNG, GIF, WebP,
  TIFF, BMP, MPO, AVIF (Pillow's own libavif), HEIC/HEIF (``pillow-heif``'s opener).

The pixel and byte limits are checked from the header of every format before any pixel is decoded.
An embedded ICC profile (Display P3, Adobe RGB, a CMYK press profile...) is converted to sRGB with
Pillow's ImageCms, so every task sees sRGB pixels; :func:`probe` says which profile the photo had.

Errors that no retry can fix (the bytes are not a usable image) raise :class:`BadImage`, whose
message says what is wrong and what to do; callers prefix the file name. Problems of the file
system (missing file, no permission) are left as the ordinary ``OSError`` they are.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from tasks import metadata

try:  # HEIC/HEIF: pillow-heif's Pillow opener (thumbnails, depth and auxiliary images are not needed)
    import pillow_heif

    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    HEIF_AVAILABLE = True
except ImportError:  # a dependency; without it a HEIC is rejected saying what to install
    HEIF_AVAILABLE = False

try:  # camera RAW: LibRaw
    import rawpy
except ImportError:  # a dependency; without it a RAW is rejected saying what to install
    rawpy = None

#: Pillow decodes AVIF itself when built with libavif (its wheels are, from 11.3 on).
AVIF_AVAILABLE = bool(features.check("avif"))

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

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "MPO", "HEIF", "AVIF", "RAW"})

# The Pillow openers to try, common ones first. Pillow has no separate MPO opener: its JPEG opener
# returns an MPO image when the file carries several pictures. AVIF comes before HEIF: both are
# ISO media files, and each opener accepts only its own brands.
_OPEN_ORDER = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", *(("AVIF",) if AVIF_AVAILABLE else ()),
               *(("HEIF",) if HEIF_AVAILABLE else ()))

#: ``decode``'s ``raw`` choices: the embedded preview when large enough, or always a full demosaic.
RAW_MODES = ("preview", "full")

#: A preview stands in for every pixel of a RAW when each side is at least this share of the RAW's
#: (cameras' full-size previews leave out a few border pixels that LibRaw keeps).
FULL_PREVIEW_SHARE = 0.95

_SUPPORTED_TEXT = ", ".join(sorted(SUPPORTED_FORMATS - {"RAW"})) + (
    ", camera RAW (CR2, CR3, NEF, ARW, DNG, RAF, ORF, RW2, PEF, SRW, KDC, ...)")

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
        mode: Pillow's mode of the stored data ("RGB", "L", "P", "I;16", ...); "RGB" for a RAW.
        frames: Number of frames (1 unless animated or multi-page).
        decoder: How :func:`decode` reads it: ``pillow``, ``pillow-heif`` (HEIC/HEIF), ``raw:preview``
            (a camera RAW's embedded preview) or ``raw:full`` (LibRaw's demosaic). The sizes above
            are those of what it decodes.
        color_profile: The embedded ICC profile's description ("Display P3", "Adobe RGB (1998)"),
            converted to sRGB on decoding; None without one (the pixels are taken as sRGB).
        capture: What its metadata says of how it was taken (:class:`tasks.metadata.Capture`: time,
            camera, lens, GPS, orientation), read from the header; None when it says nothing.
    """

    format: str
    width: int
    height: int
    mode: str
    frames: int
    decoder: str = field(default="pillow", compare=False)
    color_profile: str | None = field(default=None, compare=False)
    capture: metadata.Capture | None = field(default=None, compare=False)


Source = str | os.PathLike | bytes


def probe(source: Source, *, max_pixels: int, max_bytes: int, raw: str = "preview",
          preview_at_least: tuple[int, int] | None = None) -> ImageInfo:
    """Check an image cheaply, reading its header but not decoding its pixels.

    Args:
        source: A path, or the file's bytes.
        max_pixels: Largest width x height accepted (a guard against decompression bombs: a
            small file may declare a huge image).
        max_bytes: Largest file size accepted.
        raw, preview_at_least: How a camera RAW would be decoded (see :func:`decode`): the info
            says which path and the size of what it gives.

    Returns:
        The format, displayed size, mode, frame count (animated and multi-page files are decoded
        as their first frame), decoder, colour profile and capture metadata (EXIF; LibRaw's for a
        camera RAW).

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
    _check_raw_mode(raw)
    with _open_raw(source, max_pixels) as camera:
        if camera is not None:
            return dataclasses.replace(camera.info(raw, preview_at_least, max_pixels), capture=camera.capture(source))
    with _open(source) as im:
        return _pillow_info(im, max_pixels)


def _pillow_info(im: Image.Image, max_pixels: int) -> ImageInfo:
    _check_not_a_raw(im)
    _check_pixels(im.size, max_pixels)
    try:
        frames = int(getattr(im, "n_frames", 1))
    except _DECODE_ERRORS as exc:
        raise _corrupt(im.format, exc) from None
    width, height = im.size
    # Pillow's TIFF opener gives the upright size already (and turns the pixels as it loads them).
    turned = getattr(im, "_tile_size", im.size) != im.size
    if _orientation(im, allow_load=False) in (5, 6, 7, 8) and not turned:
        width, height = height, width
    return ImageInfo(format=im.format, width=width, height=height, mode=im.mode, frames=frames,
                     decoder="pillow-heif" if im.format == "HEIF" else "pillow",
                     color_profile=_profile_text(im.info.get("icc_profile")), capture=_capture(im))


def _capture(im: Image.Image) -> metadata.Capture | None:
    """The capture metadata in an opened image's EXIF (parsed from the header, as the orientation
    is); None without any."""
    if im.format == "PNG" and "exif" not in im.info:
        return None  # a PNG's eXIf chunk may come after the pixel data: not decoded to look
    try:
        exif = im.getexif()
    except (*_DECODE_ERRORS, TypeError, KeyError):
        return None
    found = metadata.from_exif(exif)
    return None if found.empty() else found


def decode(source: Source, *, max_pixels: int = 100_000_000, at_least: tuple[int, int] | None = None,
           raw: str = "preview", preview_at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image to an ``HxWx3`` ``uint8`` sRGB array, upright as displayed.

    The EXIF orientation is applied first; animated GIF/WebP give their first frame; transparency
    is composited on white; palette, grayscale, bilevel and CMYK images are converted to RGB;
    16-bit data is scaled to 8 bits by its full range (``value >> 8``), not clipped; an embedded
    ICC profile is converted to sRGB (perceptual intent; an sRGB profile is left as is).

    Args:
        source: A path, or the file's bytes.
        max_pixels: Largest width x height accepted; checked from the header before any pixel
            memory is allocated.
        at_least: ``(width, height)`` the caller needs at most, upright. A JPEG is then decoded at
            1/2, 1/4 or 1/8 of its size by the codec itself (libjpeg's DCT scaling, Pillow's
            ``draft``), the smallest of those still at least this size in both directions: several
            times faster than decoding every pixel and resizing them. Other formats, and JPEGs
            not twice that size, are decoded whole. None: always whole. A RAW's JPEG preview is
            decoded the same way; a RAW demosaiced at half size when that is still this size.
        raw: How a camera RAW is decoded: ``preview`` (the default), its embedded preview when it
            is at least ``preview_at_least``, else LibRaw's demosaic (camera white balance, sRGB,
            8 bits); ``full``: always the demosaic.
        preview_at_least: ``(width, height)``, upright, that the embedded preview must have to be
            used: the largest size the caller's tasks need. None: the preview must be as large as
            the RAW itself (each side at least :data:`FULL_PREVIEW_SHARE` of it). The same for
            every decode of a photo, so all its tasks see the same rendering.

    Returns:
        A C-contiguous, writable ``(height, width, 3)`` ``uint8`` array.

    Raises:
        BadImage: The data is empty, truncated, corrupt, unsupported or too large.
        OSError: The path cannot be read (missing, permissions).
    """
    _check_raw_mode(raw)
    with _open_raw(source, max_pixels) as camera:
        if camera is not None:
            return camera.decode(raw, preview_at_least, at_least, max_pixels)
    with _open(source) as im:
        return _decode_pillow(im, max_pixels, at_least)


def _decode_pillow(im: Image.Image, max_pixels: int, at_least: tuple[int, int] | None,
                   orientation: int | None = None) -> np.ndarray:
    """``decode`` of an opened Pillow image; ``orientation``: applied when its own EXIF has none."""
    _check_not_a_raw(im)
    _check_pixels(im.size, max_pixels)
    fmt = im.format
    try:
        if at_least is not None and fmt == "JPEG":
            _draft(im, at_least, orientation)
        im.load()
    except _DECODE_ERRORS as exc:
        raise _corrupt(fmt, exc) from None
    profile = im.info.get("icc_profile")
    if orientation is not None and _orientation(im, allow_load=True) == 1 and orientation != 1:
        im = _transposed(im, orientation)
    else:
        im = _upright(im)
    try:
        im = _to_srgb(im, profile)
        rgb = _to_rgb(im, fmt)
    except BadImage:
        raise
    except _DECODE_ERRORS as exc:
        raise BadImage(
            f"cannot convert {fmt} colour mode {im.mode} to RGB ({exc}): "
            "re-export the image as 8-bit RGB"
        ) from None
    return _writable(rgb)


def _writable(rgb: np.ndarray) -> np.ndarray:
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
def _open(source: Source, formats: tuple[str, ...] = _OPEN_ORDER) -> Iterator[Image.Image]:
    """Open ``source`` lazily (header only) as one of the supported formats (``formats``: the
    openers allowed), or raise BadImage."""
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
                im = Image.open(fp, formats=formats)
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
                    f"unreadable image header ({one_line_error(exc)}): the file is truncated or corrupt; re-export or re-copy it"
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
    detail = one_line_error(exc)
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


def _draft(im: Image.Image, at_least: tuple[int, int], orientation: int | None = None) -> None:
    """Ask the JPEG decoder for the smallest DCT-scaled size that is at least ``at_least`` (upright);
    ``orientation``: the one to assume when the JPEG's own EXIF has none (a RAW's preview)."""
    width, height = (max(1, int(v)) for v in at_least)
    own = _orientation(im, allow_load=False)
    if (own if own != 1 or orientation is None else orientation) in (5, 6, 7, 8):  # stored on its side
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


_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _transposed(im: Image.Image, orientation: int) -> Image.Image:
    """``im`` turned as the EXIF ``orientation`` (1-8) says, to be displayed upright."""
    method = _TRANSPOSES.get(orientation)
    return im.transpose(method) if method is not None else im


# --- colour: embedded ICC profiles to sRGB -------------------------------------------------------

#: Profiles whose description says sRGB are taken as sRGB as they are (a camera JPEG's usual
#: profile): converting them would cost time and change nothing.
_SRGB_NAMES = ("srgb",)
_SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
#: Modes ImageCms converts, and the mode each becomes (palettes and grey with alpha first go to RGBA).
_CMS_OUTPUT = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}


def _profile_text(profile: bytes | None) -> str | None:
    """The description of an embedded ICC profile; None without one."""
    if not profile:
        return None
    try:
        return _profile(bytes(profile))[0]
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        return f"unreadable ICC profile ({one_line_error(exc)}): pixels taken as sRGB"


@lru_cache(maxsize=32)
def _profile(profile: bytes) -> tuple[str, ImageCms.ImageCmsProfile]:
    parsed = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    text = (ImageCms.getProfileDescription(parsed) or "").strip() or "unnamed ICC profile"
    return text, parsed


@lru_cache(maxsize=32)
def _transform(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(_profile(profile)[1], _SRGB_PROFILE, mode, _CMS_OUTPUT[mode],
                                   renderingIntent=ImageCms.Intent.PERCEPTUAL)


def _to_srgb(im: Image.Image, profile: bytes | None) -> Image.Image:
    """``im`` converted from its embedded ICC ``profile`` to sRGB. An sRGB profile, a 16-bit or float
    image, or a profile LittleCMS cannot use leave the pixels as they are (taken as sRGB)."""
    if not profile:
        return im
    profile = bytes(profile)
    try:
        text = _profile(profile)[0]
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im  # unreadable: said so by probe's colour_profile
    if text.lower().startswith(_SRGB_NAMES):
        return im
    if im.mode in ("P", "PA", "LA", "La", "1") or (im.mode in ("RGB", "L") and "transparency" in im.info):
        im = im.convert("RGBA" if im.mode in ("PA", "LA", "La") or "transparency" in im.info else "RGB")
    if im.mode not in _CMS_OUTPUT:
        return im
    try:
        return ImageCms.applyTransform(im, _transform(profile, im.mode))
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im  # a profile that does not fit the data (a CMYK profile on RGB): taken as sRGB


def one_line_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --- camera RAW through LibRaw (rawpy) -----------------------------------------------------------

#: First bytes of camera RAW files at the given offsets: these, and only these, are offered to LibRaw
#: (a TIFF header too: most RAWs are TIFF-based; LibRaw refuses a plain TIFF, which goes to Pillow).
_RAW_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    # CR2, NEF, NRW, ARW, SR2, DNG, PEF, SRW, KDC, DCR, 3FR, ERF, IIQ, MOS, ...
    (0, b"II*\x00", "TIFF-based"),
    (0, b"MM\x00*", "TIFF-based"),
    (4, b"ftypcrx ", "Canon CR3"),
    (0, b"FUJIFILMCCD-RAW", "Fujifilm RAF"),
    (0, b"IIRO", "Olympus ORF"),
    (0, b"IIRS", "Olympus ORF"),
    (0, b"MMOR", "Olympus ORF"),
    (0, b"IIU\x00", "Panasonic RW2/RWL"),
    (6, b"HEAPCCDR", "Canon CRW"),
    (0, b"\x00MRM", "Minolta MRW"),
    (0, b"FOVb", "Sigma X3F"),
)

#: LibRaw's orientation (``sizes.flip``) as the EXIF orientation it stands for.
_LIBRAW_FLIP_TO_EXIF = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def _raw_kind(head: bytes) -> str | None:
    for offset, magic, what in _RAW_SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return what
    return None


def _check_raw_mode(raw: str) -> None:
    if raw not in RAW_MODES:
        raise ValueError(f"raw must be one of {', '.join(RAW_MODES)}, got {raw!r}")


def _read_head(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source[:64]
    with open(source, "rb") as fp:
        return fp.read(64)


@contextmanager
def _open_raw(source: Source, max_pixels: int) -> Iterator[_Camera | None]:
    """The camera RAW in ``source`` opened by LibRaw (its header identified, no pixel unpacked), its
    pixel count checked; None when the content is no camera RAW (Pillow's turn)."""
    head = _read_head(source)
    kind = _raw_kind(head)
    if kind is None:
        yield None
        return
    tiff = head[:4] in (b"II*\x00", b"MM\x00*")
    if rawpy is None:
        if tiff:  # a plain TIFF is still read by Pillow
            yield None
            return
        raise BadImage(f"a camera RAW ({kind}) needs rawpy (LibRaw), which is not installed: "
                       "pip install rawpy, or convert the file to DNG/TIFF/JPEG")
    handle = rawpy.RawPy()
    try:
        camera = None
        try:
            name = None if isinstance(source, bytes) else os.fsdecode(source)
            if name is None:
                handle.open_buffer(io.BytesIO(source))
            elif _utf8(name):
                handle.open_file(name)
            else:  # LibRaw's open_file takes UTF-8 names only: a name that is not is read here
                with open(source, "rb") as fp:
                    handle.open_buffer(fp)
            camera = _Camera(handle, kind, rawpy)
        except rawpy.LibRawFileUnsupportedError as exc:
            if not tiff:
                raise BadImage(f"camera RAW ({kind}) that LibRaw {'.'.join(map(str, rawpy.libraw_version))} cannot read "
                               f"({_libraw_text(exc)}): the camera may be newer than this LibRaw "
                               "(pip install -U rawpy), or convert the file to DNG with the camera maker's "
                               "or Adobe's DNG converter") from None
        except (rawpy.LibRawError, *_DECODE_ERRORS) as exc:
            if not tiff or isinstance(exc, rawpy.LibRawTooBigError):
                raise _raw_error(kind, exc) from None
        # camera is None: a TIFF that is no camera RAW, for Pillow
        if camera is not None:
            camera.check_pixels(max_pixels)
        yield camera
    finally:
        handle.close()


def _tiff_capture(source: Source) -> metadata.Capture:
    """The capture metadata in a TIFF-based RAW's first directory and its EXIF and GPS directories,
    read by Pillow's directory reader alone (not its TIFF opener, which checks the whole layout and
    takes far longer on a RAW): a few small reads at the offsets the directories name. A camera's
    own ``DateTime`` stands in for ``DateTimeOriginal`` when that is missing (a RAW is not edited in
    place)."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return metadata.Capture()
    try:
        exif = Image.Exif()
        exif.load_from_fp(fp)
        found = metadata.from_exif(exif)
        if found.taken_local is None:
            stamp = metadata.from_exif({0x9003: exif.get(0x0132)} if exif.get(0x0132) else None)
            found = metadata.merge(found, stamp)
        return found
    except (*_DECODE_ERRORS, TypeError, KeyError):
        return metadata.Capture()
    finally:
        fp.close()


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check_not_a_raw(im: Image.Image) -> None:
    """A TIFF that LibRaw did not take but whose first directory is a DNG's, or a reduced-size copy of
    an image kept elsewhere (a camera RAW's preview), is a camera RAW this LibRaw cannot read (or
    rawpy is missing): rejected, not read as its small preview."""
    if im.format != "TIFF":
        return
    tags = getattr(im, "tag_v2", {})
    subfile = tags.get(254, 0)
    if 50706 not in tags and not (isinstance(subfile, int) and subfile & 1):
        return
    if rawpy is None:
        raise BadImage("a camera RAW (TIFF-based) needs rawpy (LibRaw), which is not installed: pip install rawpy, "
                       "or convert the file to DNG/TIFF/JPEG")
    raise BadImage(f"a camera RAW (TIFF-based) that LibRaw {'.'.join(map(str, rawpy.libraw_version))} cannot read "
                   "(its first TIFF directory is only a preview): the camera may be newer than this LibRaw (pip "
                   "install -U rawpy), or convert the file to DNG with the camera maker's or Adobe's DNG converter")


def _libraw_text(exc: BaseException) -> str:
    text = exc.args[0] if exc.args else exc
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split()) or type(exc).__name__


def _raw_error(kind: str, exc: BaseException) -> BadImage:
    if type(exc).__name__ in ("LibRawTooBigError", "LibRawUnsufficientMemoryError", "LibRawMemPoolOverflowError"):
        return BadImage(f"camera RAW ({kind}) over LibRaw's memory limit ({_libraw_text(exc)}): possible "
                        "decompression bomb; convert it to a smaller DNG or JPEG")
    return BadImage(f"truncated or corrupt camera RAW ({kind}) data, LibRaw says: {_libraw_text(exc)}: "
                    "re-copy the file from the card, or convert it to DNG/JPEG with the camera's software")


class _Camera:
    """A camera RAW opened by LibRaw: its sizes known, nothing unpacked yet."""

    def __init__(self, handle, kind: str, rawpy) -> None:
        self.handle, self.kind, self.rawpy = handle, kind, rawpy
        sizes = handle.sizes
        self.sizes = sizes
        self.orientation = _LIBRAW_FLIP_TO_EXIF.get(int(sizes.flip), 1)
        width, height = int(sizes.width), int(sizes.height)
        if self.orientation in (5, 6, 7, 8):
            width, height = height, width
        self.upright = (width, height)  # the demosaiced image, as displayed
        self._thumb = None
        self._thumb_read = False

    def check_pixels(self, max_pixels: int) -> None:
        """The raw data's size and the output's, against the limit, before anything is unpacked."""
        sizes = self.sizes
        _check_pixels((int(sizes.width), int(sizes.height)), max_pixels)
        raw_w, raw_h = int(sizes.raw_width), int(sizes.raw_height)
        if raw_w * raw_h > max_pixels:
            _check_pixels((raw_w, raw_h), max_pixels)

    def thumb(self):
        """The embedded preview (rawpy's Thumbnail), or None when there is none LibRaw can give."""
        if not self._thumb_read:
            self._thumb_read = True
            try:
                self._thumb = self.handle.extract_thumb()
            except (self.rawpy.LibRawError, *_DECODE_ERRORS):
                self._thumb = None
        return self._thumb

    def preview_size(self, max_pixels: int) -> tuple[int, int] | None:
        """The preview's size as displayed, read from its header; None without a usable one."""
        thumb = self.thumb()
        if thumb is None:
            return None
        if thumb.format == self.rawpy.ThumbFormat.BITMAP:
            height, width = thumb.data.shape[:2]
            orientation = self.orientation
        else:
            try:
                with _open(bytes(thumb.data), formats=("JPEG",)) as im:
                    _check_pixels(im.size, max_pixels)
                    width, height = im.size
                    own = _orientation(im, allow_load=False)
            except BadImage:
                return None  # a broken preview: the RAW itself is demosaiced
            orientation = own if own != 1 else self.orientation
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return int(width), int(height)

    def choose(self, raw: str, preview_at_least: tuple[int, int] | None, max_pixels: int) -> tuple[str, tuple[int, int]]:
        """(``preview`` or ``full``, the size that gives, upright)."""
        if raw == "preview":
            size = self.preview_size(max_pixels)
            if size is not None:
                if preview_at_least is None:
                    need = tuple(FULL_PREVIEW_SHARE * v for v in self.upright)
                else:
                    need = tuple(max(1, int(v)) for v in preview_at_least)
                if size[0] >= need[0] and size[1] >= need[1]:
                    return "preview", size
        return "full", self.upright

    def info(self, raw: str, preview_at_least: tuple[int, int] | None, max_pixels: int) -> ImageInfo:
        path, (width, height) = self.choose(raw, preview_at_least, max_pixels)
        profile = None
        if path == "preview":
            thumb = self.thumb()
            if thumb.format == self.rawpy.ThumbFormat.JPEG:
                with _open(bytes(thumb.data), formats=("JPEG",)) as im:
                    profile = _profile_text(im.info.get("icc_profile"))
        return ImageInfo(format="RAW", width=width, height=height, mode="RGB", frames=1, decoder=f"raw:{path}",
                         color_profile=profile)

    def capture(self, source: Source) -> metadata.Capture | None:
        """The RAW's capture metadata: the EXIF of its TIFF directories (most RAWs are TIFF-based;
        read by Pillow's directory reader from the header), then its embedded JPEG's EXIF when a
        preview was read, then (only when neither gave a time) what LibRaw says; LibRaw's
        orientation, which is the one applied."""
        found = metadata.Capture()
        if self.kind == "TIFF-based":
            found = _tiff_capture(source)
        if self._thumb_read and self._thumb is not None and self._thumb.format == self.rawpy.ThumbFormat.JPEG:
            try:
                with _open(bytes(self._thumb.data), formats=("JPEG",)) as im:
                    found = metadata.merge(found, metadata.from_exif(im.getexif()))
            except (BadImage, *_DECODE_ERRORS, TypeError, KeyError):
                pass
        if found.taken_local is None and self.kind != "TIFF-based":
            # No EXIF read (a CR3, RAF, ORF... without a JPEG preview in hand): LibRaw's own parse,
            # which costs 15-20 ms a file, so only then.
            try:
                lens, other = self.handle.lens, self.handle.other
            except (AttributeError, self.rawpy.LibRawError):  # an older rawpy
                lens = other = None
            found = metadata.merge(found, metadata.from_raw(getattr(other, "timestamp", None),
                                                            getattr(lens, "make", None), getattr(lens, "model", None)))
        # LibRaw's orientation is the one applied when the RAW is decoded.
        found = dataclasses.replace(found, orientation=self.orientation)
        return None if found.empty() else found

    def decode(self, raw: str, preview_at_least: tuple[int, int] | None, at_least: tuple[int, int] | None,
               max_pixels: int) -> np.ndarray:
        path, _size = self.choose(raw, preview_at_least, max_pixels)
        if path == "preview":
            thumb = self.thumb()
            if thumb.format == self.rawpy.ThumbFormat.BITMAP:
                pil = Image.fromarray(np.ascontiguousarray(thumb.data, dtype=np.uint8))
                return _writable(np.asarray(_transposed(pil, self.orientation).convert("RGB")))
            with _open(bytes(thumb.data), formats=("JPEG",)) as im:
                return _decode_pillow(im, max_pixels, at_least, orientation=self.orientation)
        half = at_least is not None and all(
            v // 2 >= max(1, int(n)) for v, n in zip(sorted(self.upright), sorted(at_least)))
        try:
            rgb = self.handle.postprocess(use_camera_wb=True, output_bps=8, half_size=half)
        except (self.rawpy.LibRawError, *_DECODE_ERRORS, MemoryError) as exc:
            raise _raw_error(self.kind, exc) from None
        return _writable(rgb)


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
    (0, b"II*\x00", "a damaged TIFF or camera RAW"),
    (0, b"MM\x00*", "a damaged TIFF or camera RAW"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def _sniff(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            if HEIF_AVAILABLE:
                return "a damaged HEIC/HEIF image"
            return "a HEIC/HEIF image (the iPhone default), which needs pillow-heif: pip install pillow-heif"
        if brand in (b"avif", b"avis"):
            if AVIF_AVAILABLE:
                return "a damaged AVIF image"
            return "an AVIF image, which needs Pillow built with libavif: pip install -U 'pillow>=11.3'"
        if brand == b"crx ":
            return "a Canon CR3 raw that LibRaw did not read"
        return "an MP4/QuickTime-family file"
    if head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n" or head[:2] == b"\xff\x0a":
        return "a JPEG XL image, which Darkroom does not read: convert it to JPEG or PNG (djxl photo.jxl photo.png)"
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
