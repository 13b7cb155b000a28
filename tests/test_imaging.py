"""tasks.imaging: decoding real files of every supported kind, and refusing bad ones."""

from __future__ import annotations

import io
import resource
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tasks.imaging import (
    SUPPORTED_FORMATS,
    BadImage,
    ImageInfo,
    decode,
    encode,
    fit_within,
    probe,
    resize,
)
from tests.photos import png_declaring

LIMITS = {"max_pixels": 100_000_000, "max_bytes": 50 * 1024 * 1024}


@pytest.fixture(params=["path", "bytes"])
def as_source(request, tmp_path):
    """Turns file bytes into what probe/decode take: a path to a real file, or the bytes."""

    def make(raw: bytes, name: str = "image.bin"):
        if request.param == "bytes":
            return raw
        path = tmp_path / name
        path.write_bytes(raw)
        return path

    return make


def save(pil: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    pil.save(out, format=fmt, **kwargs)
    return out.getvalue()


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def check_rgb(pixels: np.ndarray, shape: tuple[int, int]) -> None:
    assert pixels.dtype == np.uint8
    assert pixels.shape == (*shape, 3)
    assert pixels.flags.c_contiguous and pixels.flags.writeable


# --- decoding the formats ----------------------------------------------------------------------


def test_jpeg(astronaut, as_source):
    pixels = decode(as_source(save(Image.fromarray(astronaut), "JPEG", quality=95), "a.jpg"))
    check_rgb(pixels, (512, 512))
    assert mean_abs(pixels, astronaut) < 3


def test_png_is_exact(tall, as_source):
    pixels = decode(as_source(save(Image.fromarray(tall), "PNG"), "a.png"))
    check_rgb(pixels, (512, 384))
    assert np.array_equal(pixels, tall)


def test_rgba_png_composited_on_white(astronaut, as_source):
    alpha = np.full(astronaut.shape[:2], 255, np.uint8)
    alpha[:100, :100] = 0  # fully transparent
    alpha[200:300, 200:300] = 128  # half
    raw = save(Image.fromarray(np.dstack([astronaut, alpha])), "PNG")
    pixels = decode(as_source(raw, "a.png"))
    check_rgb(pixels, (512, 512))
    assert (pixels[:100, :100] == 255).all()
    assert np.array_equal(pixels[300:, 300:], astronaut[300:, 300:])
    half = astronaut[200:300, 200:300].astype(np.float64) * 128 / 255 + 255 * 127 / 255
    assert np.abs(pixels[200:300, 200:300] - half).max() <= 1.0


def test_palette_png(astronaut, as_source):
    pal = Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pixels = decode(as_source(save(pal, "PNG"), "a.png"))
    check_rgb(pixels, (512, 512))
    assert np.array_equal(pixels, np.asarray(pal.convert("RGB")))
    assert mean_abs(pixels, astronaut) < 12


def test_palette_png_with_transparent_index_goes_white(as_source):
    index = np.zeros((20, 30), np.uint8)
    index[:, 15:] = 1
    pal = Image.frombytes("P", (30, 20), index.tobytes())
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    raw = save(pal, "PNG", transparency=0)
    pixels = decode(as_source(raw, "a.png"))
    assert (pixels[:, :15] == 255).all()
    assert (pixels[:, 15:] == (200, 100, 50)).all()


def test_grayscale_png(as_source):
    camera = data.camera()
    pixels = decode(as_source(save(Image.fromarray(camera), "PNG"), "a.png"))
    check_rgb(pixels, camera.shape)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], camera)


def test_16bit_png_scaled_by_full_range(as_source):
    values = np.linspace(0, 65535, 256 * 256).round().astype(np.uint16).reshape(256, 256)
    raw = save(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(raw)).mode.startswith("I")  # really a 16-bit file
    pixels = decode(as_source(raw, "a.png"))
    check_rgb(pixels, (256, 256))
    assert np.array_equal(pixels[..., 0], (values >> 8).astype(np.uint8))
    assert pixels.min() == 0 and pixels.max() == 255
    # Mid-grey stays mid-grey (clipping would make everything above 255 white).
    assert pixels[128, 0, 0] == values[128, 0] >> 8 and 120 < pixels[128, 0, 0] < 136


def test_cmyk_jpeg(astronaut, as_source):
    raw = save(Image.fromarray(astronaut).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(raw)).mode == "CMYK"
    pixels = decode(as_source(raw, "a.jpg"))
    check_rgb(pixels, (512, 512))
    assert mean_abs(pixels, astronaut) < 6


def test_animated_gif_gives_first_frame(as_source):
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    blue = Image.new("RGB", (64, 48), (0, 0, 255))
    raw = save(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    source = as_source(raw, "a.gif")
    info = probe(source, **LIMITS)
    assert (info.format, info.width, info.height, info.frames) == ("GIF", 64, 48, 2)
    pixels = decode(source)
    check_rgb(pixels, (48, 64))
    assert (pixels == (255, 0, 0)).all()


def test_animated_webp_gives_first_frame(as_source):
    green = Image.new("RGB", (40, 30), (0, 255, 0))
    blue = Image.new("RGB", (40, 30), (0, 0, 255))
    raw = save(green, "WEBP", save_all=True, append_images=[blue], lossless=True, duration=100)
    source = as_source(raw, "a.webp")
    assert probe(source, **LIMITS).frames == 2
    assert (decode(source) == (0, 255, 0)).all()


def test_mpo_gives_first_picture(as_source):
    left = Image.new("RGB", (32, 24), (250, 250, 0))
    right = Image.new("RGB", (32, 24), (0, 0, 250))
    source = as_source(save(left, "MPO", save_all=True, append_images=[right], quality=95), "a.mpo")
    info = probe(source, **LIMITS)
    assert (info.format, info.frames) == ("MPO", 2)
    pixels = decode(source)
    check_rgb(pixels, (24, 32))
    assert np.abs(pixels.astype(int) - (250, 250, 0)).max() < 8


@pytest.mark.parametrize("fmt, kwargs", [("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {})])
def test_lossless_formats_are_exact(tall, as_source, fmt, kwargs):
    source = as_source(save(Image.fromarray(tall), fmt, **kwargs), f"a.{fmt.lower()}")
    assert probe(source, **LIMITS) == ImageInfo(format=fmt, width=384, height=512, mode="RGB", frames=1)
    assert np.array_equal(decode(source), tall)


def test_exif_orientation_6_is_applied(tall, as_source):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    source = as_source(save(Image.fromarray(tall), "JPEG", quality=95, exif=exif), "a.jpg")
    info = probe(source, **LIMITS)
    assert (info.width, info.height) == (512, 384)  # stored 384 wide, displayed 512 wide
    pixels = decode(source)
    check_rgb(pixels, (384, 512))
    clockwise = np.rot90(tall, k=-1)
    assert mean_abs(pixels, clockwise) < 3
    assert mean_abs(pixels, np.rot90(tall, k=1)) > 20  # the other way round is wrong


# --- decoding smaller (DARKROOM_FAST_DECODE) ---------------------------------------------------


def test_jpeg_decoded_at_the_smallest_scale_still_big_enough(astronaut, as_source):
    source = as_source(save(Image.fromarray(astronaut), "JPEG", quality=95), "a.jpg")
    whole = decode(source)
    # 512 px: 1/2 gives 256 >= 224; 1/4 (128) would be too small.
    half = decode(source, at_least=(224, 224))
    check_rgb(half, (256, 256))
    reference = np.asarray(Image.fromarray(whole).resize((256, 256), Image.BOX))
    assert mean_abs(half, reference) < 3  # the same picture, smaller
    check_rgb(decode(source, at_least=(64, 100)), (128, 128))  # both sides must be big enough
    check_rgb(decode(source, at_least=(1, 1)), (64, 64))  # the codec goes down to 1/8, no further
    check_rgb(decode(source, at_least=(300, 300)), (512, 512))  # not twice the size: decoded whole
    np.testing.assert_array_equal(decode(source, at_least=(300, 300)), whole)


def test_fast_decode_leaves_other_formats_whole(astronaut, as_source):
    source = as_source(save(Image.fromarray(astronaut), "PNG"), "a.png")
    np.testing.assert_array_equal(decode(source, at_least=(32, 32)), astronaut)


def test_fast_decode_sizes_count_upright(tall, as_source):
    """A JPEG stored on its side (EXIF 6): at_least is what the caller sees, width x height."""
    exif = Image.Exif()
    exif[0x0112] = 6
    source = as_source(save(Image.fromarray(tall), "JPEG", quality=95, exif=exif), "a.jpg")  # shows 512 x 384
    small = decode(source, at_least=(256, 96))  # 1/2: 256 x 192 upright; 1/4 would be 128 wide
    check_rgb(small, (192, 256))
    assert mean_abs(small, np.asarray(Image.fromarray(np.rot90(tall, k=-1)).resize((256, 192), Image.BOX))) < 4


# --- refusing bad input ------------------------------------------------------------------------


def test_empty_file(as_source):
    source = as_source(b"", "empty.jpg")
    for call in (lambda: probe(source, **LIMITS), lambda: decode(source)):
        with pytest.raises(BadImage, match=r"empty file \(0 bytes\)"):
            call()


def test_truncated_jpeg(astronaut, as_source):
    raw = save(Image.fromarray(astronaut), "JPEG")
    source = as_source(raw[: len(raw) // 2], "cut.jpg")
    with pytest.raises(BadImage, match="truncated or corrupt JPEG") as err:
        decode(source)
    assert "re-copy" in str(err.value)


def test_truncated_png(astronaut, as_source):
    raw = save(Image.fromarray(astronaut), "PNG")
    with pytest.raises(BadImage, match="truncated or corrupt PNG"):
        decode(as_source(raw[: len(raw) // 2], "cut.png"))


def test_random_bytes(as_source):
    raw = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(BadImage, match="not an image in a supported format"):
        probe(as_source(raw), **LIMITS)
    with pytest.raises(BadImage, match="not an image in a supported format"):
        decode(as_source(raw))


def test_text_file(as_source):
    source = as_source(b"shopping list:\n- film\n- fixer\n", "notes.txt")
    with pytest.raises(BadImage) as err:
        decode(source)
    message = str(err.value)
    assert "text file" in message
    assert all(fmt in message for fmt in SUPPORTED_FORMATS)  # says what would work


def test_formats_outside_the_list_are_not_opened(astronaut, as_source):
    raw = save(Image.fromarray(astronaut), "PPM")  # Pillow reads PPM, but we do not
    with pytest.raises(BadImage, match="supported formats are"):
        probe(as_source(raw, "a.ppm"), **LIMITS)


def test_other_decoders_are_never_tried(astronaut, as_source, monkeypatch):
    from PIL import PpmImagePlugin

    def refuse(self):
        raise AssertionError("the PPM decoder saw the bytes")

    monkeypatch.setattr(PpmImagePlugin.PpmImageFile, "_open", refuse)
    source = as_source(save(Image.fromarray(astronaut), "PPM"), "a.ppm")
    with pytest.raises(BadImage, match="supported formats are"):
        decode(source)


def test_over_max_bytes(astronaut, as_source):
    raw = save(Image.fromarray(astronaut), "PNG")
    with pytest.raises(BadImage, match=f"over the limit of {len(raw) - 1:,} bytes"):
        probe(as_source(raw, "a.png"), max_pixels=10**8, max_bytes=len(raw) - 1)
    assert probe(as_source(raw, "a.png"), max_pixels=10**8, max_bytes=len(raw)).width == 512


def test_decompression_bomb_rejected_without_allocating(as_source):
    source = as_source(png_declaring(30000, 30000), "bomb.png")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(BadImage, match="pixel limit"):
        probe(source, **LIMITS)
    with pytest.raises(BadImage, match="pixel limit"):
        decode(source, max_pixels=LIMITS["max_pixels"])
    # Decoding 900 megapixels would take gigabytes.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


def test_our_pixel_limit_not_pillows(as_source, monkeypatch):
    # Between Pillow's warning and error thresholds: our limit rejects, no warning escapes.
    source = as_source(png_declaring(12000, 10000), "big.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BadImage, match=r"12000x10000 = 120,000,000 pixels, over the pixel limit of 100,000,000"):
            probe(source, **LIMITS)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # With Pillow's global guard switched off, ours still holds.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    small_bomb = as_source(png_declaring(2000, 2000), "b2.png")
    with pytest.raises(BadImage, match="pixel limit of 1,000,000"):
        probe(small_bomb, max_pixels=1_000_000, max_bytes=10**6)
    with pytest.raises(BadImage, match="pixel limit of 1,000,000"):
        decode(small_bomb, max_pixels=1_000_000)


def test_probe_reads_header_only(tall, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(save(Image.fromarray(tall), "PNG"))
    assert probe(path, **LIMITS) == ImageInfo(format="PNG", width=384, height=512, mode="RGB", frames=1)
    assert probe(str(path), **LIMITS).format == "PNG"


def test_missing_file_is_not_bad_image(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode(tmp_path / "gone.jpg")


def test_bad_image_is_a_value_error():
    assert issubclass(BadImage, ValueError)


# --- encode / resize ---------------------------------------------------------------------------


def test_encode_round_trips(tall):
    assert np.array_equal(decode(encode(tall, "PNG")), tall)
    camera = data.camera()
    assert np.array_equal(decode(encode(camera, "png"))[..., 1], camera)
    jpeg = encode(tall, "JPEG", quality=90)
    assert jpeg[:3] == b"\xff\xd8\xff"
    assert mean_abs(decode(jpeg), tall) < 4
    assert len(encode(tall, "JPEG", quality=30)) < len(jpeg)


def test_encode_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        encode(np.zeros((4, 4, 3), np.float32))


def test_fit_within(tall):
    small = fit_within(tall, 100)
    assert small.shape == (100, 75, 3) and small.dtype == np.uint8
    assert mean_abs(small, np.asarray(Image.fromarray(tall).resize((75, 100), Image.Resampling.BOX))) < 4
    assert fit_within(tall, 512) is tall  # already small enough: untouched
    assert fit_within(data.camera(), 64).shape == (64, 64)


def test_resize_matches_keras_load_img(tmp_path, tall):
    import keras

    path = tmp_path / "a.png"
    path.write_bytes(save(Image.fromarray(tall), "PNG"))
    expected = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 200), interpolation="bilinear"))
    got = resize(decode(path), (224, 200))
    assert got.shape == (224, 200, 3) and got.dtype == np.uint8
    assert np.array_equal(got, expected.astype(np.uint8))
    with pytest.raises(ValueError, match="interpolation"):
        resize(tall, (10, 10), interpolation="magic")


def test_no_tensorflow_at_import():
    import subprocess
    import sys

    code = ("import sys, tasks.imaging, tasks.normalize, tasks.augment, tasks.draw; "
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
