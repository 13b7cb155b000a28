"""The photos people have: HEIC, AVIF, camera RAW, colour profiles — read by content, within the limits.

HEIC and AVIF are written by the libraries themselves (pillow-heif, Pillow's libavif) from the photos
scikit-image ships; the camera RAW is a real Kodak DC50 capture read from the shared data folder, and a
DNG is written by ``pidng`` from raw Bayer data; the colour profile is an Adobe RGB (1998) ICC profile
built byte by byte and read by ImageCms.
"""

from __future__ import annotations

import io
import resource
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from tasks import imaging
from tasks.imaging import BadImage, decode, probe
from tests.photos import ADOBE_RGB, bayer_dng, icc_profile

LIMITS = {"max_pixels": 100_000_000, "max_bytes": 200 * 1024 * 1024}

#: A real camera RAW: a Kodak DC50 capture (768x512 after demosaicing, a 96x64 bitmap preview), kept
#: outside the repository (see its README there).
KDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw" / "kodak_dc50.kdc"


def encoded(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **kwargs)
    return out.getvalue()


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def heic(astronaut) -> bytes:
    """The astronaut as pillow-heif writes a HEIC (HEVC in an ISO media file, as an iPhone does)."""
    return encoded(astronaut, "HEIF", quality=90)


@pytest.fixture(scope="module")
def avif(astronaut) -> bytes:
    return encoded(astronaut, "AVIF", quality=90)


@pytest.fixture(scope="module")
def kdc() -> Path:
    if not KDC.is_file():
        pytest.skip(f"the real camera RAW {KDC} is absent (the shared test data is not mounted here)")
    return KDC


@pytest.fixture(scope="module")
def dng(astronaut, tmp_path_factory) -> bytes:
    return bayer_dng(astronaut, tmp_path_factory.mktemp("dng")).read_bytes()


# --- HEIC and AVIF ---------------------------------------------------------------------------------


def test_heic_written_by_pillow_heif_is_read(heic, astronaut, tmp_path):
    assert heic[4:12] == b"ftypheic"
    info = probe(heic, **LIMITS)
    assert (info.format, info.width, info.height, info.decoder) == ("HEIF", 512, 512, "pillow-heif")
    pixels = decode(heic)
    assert pixels.shape == (512, 512, 3) and pixels.dtype == np.uint8
    assert mean_abs(pixels, astronaut) < 3  # the same photo, through a lossy codec


def test_avif_is_read_by_pillow_itself(avif, astronaut):
    assert avif[4:12] == b"ftypavif"
    info = probe(avif, **LIMITS)
    assert (info.format, info.width, info.height, info.decoder) == ("AVIF", 512, 512, "pillow")
    assert mean_abs(decode(avif), astronaut) < 3


def test_a_heic_taken_on_its_side_is_shown_upright_once(tall):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    heic = encoded(tall, "HEIF", quality=95, exif=exif.tobytes())
    info = probe(heic, **LIMITS)
    assert (info.width, info.height) == (512, 384)  # stored 384 wide, displayed 512 wide
    pixels = decode(heic)
    assert pixels.shape == (384, 512, 3)
    assert mean_abs(pixels, np.rot90(tall, k=-1)) < 3  # turned once (libheif), not again by its EXIF


def test_the_content_decides_the_format_never_the_name(heic, avif, astronaut, tmp_path):
    jpeg = encoded(astronaut, "JPEG", quality=92)
    for name, data, fmt in (("photo.jpg", heic, "HEIF"), ("photo.heic", jpeg, "JPEG"), ("photo.png", avif, "AVIF"),
                            ("photo.nef", jpeg, "JPEG"), ("photo", heic, "HEIF")):
        path = tmp_path / name
        path.write_bytes(data)
        assert probe(path, **LIMITS).format == fmt, name
        assert mean_abs(decode(path), astronaut) < 4, name


def test_each_decoder_sees_only_its_own_format(heic, avif, astronaut, monkeypatch):
    import pillow_heif.as_plugin
    import rawpy

    def refuse(*_args, **_kwargs):
        raise AssertionError("a decoder saw bytes of another format")

    monkeypatch.setattr(pillow_heif.as_plugin.HeifImageFile, "_open", refuse)
    monkeypatch.setattr(rawpy, "RawPy", refuse)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
        assert decode(encoded(astronaut, fmt)).shape == (512, 512, 3), fmt
    assert probe(avif, **LIMITS).format == "AVIF"  # an ISO media file too, but not HEIF's
    with pytest.raises(AssertionError, match="another format"):
        probe(heic, **LIMITS)  # the check itself: HEIF's opener is what reads a HEIC


# --- camera RAW ------------------------------------------------------------------------------------


def test_a_real_camera_raw_is_demosaiced_when_its_preview_is_too_small(kdc):
    import rawpy

    # Its first bytes are a TIFF header, and Pillow alone would read the 96x64 preview as the photo.
    assert kdc.read_bytes()[:4] == b"MM\x00*" and Image.open(kdc).size == (96, 64)
    info = probe(kdc, **LIMITS)  # every pixel needed: the 96x64 preview is far too small
    assert (info.format, info.width, info.height, info.decoder) == ("RAW", 768, 512, "raw:full")
    pixels = decode(kdc)
    with rawpy.imread(str(kdc)) as raw:
        expected = raw.postprocess(use_camera_wb=True, output_bps=8)
    assert pixels.shape == (512, 768, 3)
    np.testing.assert_array_equal(pixels, expected)  # LibRaw's own demosaic, camera white balance, sRGB
    np.testing.assert_array_equal(decode(kdc.read_bytes()), expected)  # bytes as a path


def test_a_raw_preview_serves_when_it_is_as_large_as_the_tasks_need(kdc):
    import rawpy

    info = probe(kdc, **LIMITS, preview_at_least=(64, 64))
    assert (info.decoder, info.width, info.height) == ("raw:preview", 96, 64)
    pixels = decode(kdc, preview_at_least=(64, 64))
    with rawpy.imread(str(kdc)) as raw:
        thumb = raw.extract_thumb()
    assert thumb.format == rawpy.ThumbFormat.BITMAP
    np.testing.assert_array_equal(pixels, thumb.data)
    # Larger than the preview, or DARKROOM_RAW=full: the demosaic
    assert probe(kdc, **LIMITS, preview_at_least=(224, 224)).decoder == "raw:full"
    full = probe(kdc, **LIMITS, raw="full", preview_at_least=(64, 64))
    assert (full.decoder, full.width) == ("raw:full", 768)
    assert decode(kdc, raw="full", preview_at_least=(64, 64)).shape == (512, 768, 3)
    # Half-size demosaic when the caller needs at most half
    assert decode(kdc, raw="full", at_least=(300, 200)).shape == (256, 384, 3)
    with pytest.raises(ValueError, match="preview, full"):
        decode(kdc, raw="fast")


def test_a_full_size_jpeg_preview_stands_in_for_the_raw_turned_as_the_camera_says(kdc, astronaut, monkeypatch):
    """A RAW whose camera embedded a JPEG as large as the RAW (as most Canon and Nikon bodies do): read from
    the JPEG, at DCT-scaled size when the tasks need less, turned by the RAW's orientation."""
    import rawpy

    preview = encoded(np.asarray(Image.fromarray(astronaut).resize((768, 512))), "JPEG", quality=95)
    monkeypatch.setattr(imaging._Camera, "thumb", lambda self: rawpy.Thumbnail(rawpy.ThumbFormat.JPEG, preview))
    info = probe(kdc, **LIMITS)
    assert (info.decoder, info.width, info.height) == ("raw:preview", 768, 512)
    np.testing.assert_array_equal(decode(kdc), decode(preview))
    assert decode(kdc, at_least=(100, 100)).shape == (128, 192, 3)  # libjpeg's 1/4, still >= 100
    assert probe(kdc, **LIMITS, raw="full").decoder == "raw:full"
    # The camera held on its side (LibRaw's flip 6, EXIF's 6): the preview is turned clockwise
    monkeypatch.setitem(imaging._LIBRAW_FLIP_TO_EXIF, 0, 6)
    info = probe(kdc, **LIMITS)
    assert (info.decoder, info.width, info.height) == ("raw:preview", 512, 768)
    np.testing.assert_array_equal(decode(kdc), np.rot90(decode(preview), k=-1))


def test_a_dng_written_from_bayer_data(dng, astronaut):
    assert dng[:4] == b"II*\x00"
    info = probe(dng, **LIMITS)
    assert (info.format, info.width, info.height, info.decoder) == ("RAW", 512, 512, "raw:full")
    pixels = decode(dng)
    assert pixels.shape == (512, 512, 3)
    for channel in range(3):  # the photo back, within a demosaic's error
        assert np.corrcoef(pixels[..., channel].ravel(), astronaut[..., channel].ravel())[0, 1] > 0.99
    assert mean_abs(pixels, astronaut) < 12


def test_a_tiff_that_is_no_camera_raw_stays_a_tiff(astronaut):
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"  # a camera's make and model do not make it a RAW
    tiff = encoded(astronaut, "TIFF", exif=exif)
    info = probe(tiff, **LIMITS)
    assert (info.format, info.decoder) == ("TIFF", "pillow")
    np.testing.assert_array_equal(decode(tiff), astronaut)


# --- colour profiles -------------------------------------------------------------------------------


def adobe_profile() -> bytes:
    colours = {k: v for k, v in ADOBE_RGB.items() if k != "gamma"}
    return icc_profile("Adobe RGB (1998)", gamma=ADOBE_RGB["gamma"], **colours)


def adobe_to_srgb(values: np.ndarray) -> np.ndarray:
    """Adobe RGB (1998) to sRGB by the published formulas (D65 throughout), not through LittleCMS."""
    linear = (values / 255.0) ** ADOBE_RGB["gamma"]
    adobe_to_xyz = np.array([[0.5767309, 0.1855540, 0.1881852], [0.2973769, 0.6273491, 0.0752741],
                             [0.0270343, 0.0706872, 0.9911085]])
    xyz_to_srgb = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                            [0.0556434, -0.2040259, 1.0572252]])
    srgb = np.clip(linear @ adobe_to_xyz.T @ xyz_to_srgb.T, 0, 1)
    encoded_ = np.where(srgb <= 0.0031308, 12.92 * srgb, 1.055 * srgb ** (1 / 2.4) - 0.055)
    return np.rint(encoded_ * 255)


def patches() -> tuple[np.ndarray, np.ndarray]:
    """16x16 patches of colours inside both gamuts (skin, sky, foliage, greys), and the colours."""
    colours = np.array([[200, 150, 120], [90, 140, 200], [70, 130, 60], [128, 128, 128], [230, 220, 80],
                        [150, 60, 60], [40, 40, 40], [240, 240, 240]], dtype=np.uint8)
    image = np.repeat(np.repeat(colours[None], 16, axis=0), 16, axis=1)
    return image, colours


def test_an_adobe_rgb_jpeg_comes_out_in_srgb():
    image, colours = patches()
    jpeg = encoded(image, "JPEG", quality=100, subsampling=0, icc_profile=adobe_profile())
    assert probe(jpeg, **LIMITS).color_profile == "Adobe RGB (1998)"
    pixels = decode(jpeg)
    got = pixels[8, 8::16].astype(float)  # each patch's centre
    expected = adobe_to_srgb(colours.astype(float))
    assert np.abs(got - expected).max() <= 2, (got, expected)
    # Without the conversion the foliage green would be far off: the check can tell
    assert np.abs(colours[2].astype(float) - expected[2]).max() > 15


def test_an_srgb_profile_changes_nothing(astronaut):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    with_profile = encoded(astronaut, "JPEG", quality=92, icc_profile=srgb)
    assert probe(with_profile, **LIMITS).color_profile == "sRGB built-in"
    np.testing.assert_array_equal(decode(with_profile), decode(encoded(astronaut, "JPEG", quality=92)))
    assert probe(encoded(astronaut, "JPEG"), **LIMITS).color_profile is None


def test_a_heic_with_a_wide_gamut_profile_comes_out_in_srgb():
    image, colours = patches()
    heic = encoded(image, "HEIF", quality=-1, chroma=444, icc_profile=adobe_profile())
    assert probe(heic, **LIMITS).color_profile == "Adobe RGB (1998)"
    got = decode(heic)[8, 8::16].astype(float)
    assert np.abs(got - adobe_to_srgb(colours.astype(float))).max() <= 3


def test_an_unreadable_profile_leaves_the_pixels_and_says_so(astronaut):
    jpeg = encoded(astronaut, "JPEG", quality=92, icc_profile=b"not an ICC profile at all" * 8)
    assert probe(jpeg, **LIMITS).color_profile.startswith("unreadable ICC profile")
    np.testing.assert_array_equal(decode(jpeg), decode(encoded(astronaut, "JPEG", quality=92)))


# --- limits and honest rejections ----------------------------------------------------------------


def heic_declaring(width: int, height: int) -> bytes:
    """A real 64x64 HEIC whose image spatial extents ("ispe") claim ``width`` x ``height``."""
    raw = bytearray(encoded(np.full((64, 64, 3), 90, np.uint8), "HEIF"))
    at = raw.find(b"ispe")
    assert at > 0 and raw[at + 8 : at + 16] == struct.pack(">II", 64, 64)
    raw[at + 8 : at + 16] = struct.pack(">II", width, height)
    return bytes(raw)


def dng_declaring(dng: bytes, width: int, height: int) -> bytes:
    """The DNG with its raw image's width and length tags claiming ``width`` x ``height``."""
    raw = bytearray(dng)
    ifd = struct.unpack("<I", raw[4:8])[0]
    for k in range(struct.unpack("<H", raw[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack("<HH", raw[entry : entry + 4])
        if tag in (256, 257, 322, 323):  # ImageWidth, ImageLength, TileWidth, TileLength
            value = width if tag in (256, 322) else height
            raw[entry + 8 : entry + 12] = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    return bytes(raw)


@pytest.mark.parametrize("kind", ["heic", "dng"])
def test_bombs_are_refused_from_the_header(kind, dng):
    bomb = heic_declaring(12000, 10000) if kind == "heic" else dng_declaring(dng, 12000, 10000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    message = r"12000x10000 = 120,000,000 pixels, over the pixel limit of 100,000,000"
    with pytest.raises(BadImage, match=message):
        probe(bomb, **LIMITS)
    with pytest.raises(BadImage, match=message):
        decode(bomb, max_pixels=LIMITS["max_pixels"])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # 360 MB if decoded


def test_a_raw_over_the_limit_is_refused_before_anything_is_unpacked(kdc, monkeypatch):
    def unpacked(*_args, **_kwargs):
        raise AssertionError("the RAW's preview or data was read")

    monkeypatch.setattr(imaging._Camera, "thumb", unpacked)
    monkeypatch.setattr(imaging._Camera, "decode", unpacked)
    with pytest.raises(BadImage, match=r"768x512 = 393,216 pixels, over the pixel limit of 300,000"):
        probe(kdc, max_pixels=300_000, max_bytes=10**8)
    with pytest.raises(BadImage, match="pixel limit of 300,000"):
        decode(kdc, max_pixels=300_000)


def test_a_corrupt_heic_is_rejected_with_the_decoders_reason(heic):
    with pytest.raises(BadImage, match=r"truncated or corrupt HEIF data \(.*end of file.*\): re-export or re-copy"):
        decode(heic[: len(heic) // 2])  # its header is whole; the pixel data is cut
    with pytest.raises(BadImage, match=r"a damaged HEIC/HEIF image .*re-copy"):
        probe(heic[:300], **LIMITS)


def test_a_corrupt_camera_raw_is_rejected_with_libraws_reason(kdc):
    data = kdc.read_bytes()
    with pytest.raises(BadImage, match=r"truncated or corrupt camera RAW \(TIFF-based\) data, LibRaw says: .*re-copy"):
        decode(data[: len(data) // 2])
    with pytest.raises(BadImage, match=r"a damaged TIFF or camera RAW"):
        probe(data[:200], **LIMITS)
    with pytest.raises(BadImage, match=r"camera RAW \(Olympus ORF\) that LibRaw [\d.]+ cannot read .*DNG"):
        probe(b"IIRO" + bytes(range(256)) * 8, **LIMITS)


def test_what_to_install_when_a_decoder_is_missing(monkeypatch, astronaut):
    heic_head = b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic"
    avif_head = b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00avifmif1"
    monkeypatch.setattr(imaging, "HEIF_AVAILABLE", False)
    monkeypatch.setattr(imaging, "AVIF_AVAILABLE", False)
    assert "pip install pillow-heif" in imaging._unsupported_message(heic_head)
    assert "pip install -U 'pillow>=11.3'" in imaging._unsupported_message(avif_head)
    monkeypatch.setattr(imaging, "rawpy", None)  # rawpy not installed
    with pytest.raises(BadImage, match=r"camera RAW \(Olympus ORF\) needs rawpy .*pip install rawpy"):
        probe(b"IIRO" + bytes(64), **LIMITS)
    assert probe(encoded(astronaut, "TIFF"), **LIMITS).format == "TIFF"  # TIFFs still read without it


def test_a_tiff_based_raw_libraw_cannot_take_is_not_read_as_its_preview(kdc, monkeypatch):
    import rawpy

    def refused(*_args, **_kwargs):
        raise rawpy.LibRawFileUnsupportedError(b"Unsupported file format or not RAW file")

    monkeypatch.setattr(imaging, "_Camera", refused)  # as if LibRaw did not know this camera
    with pytest.raises(BadImage, match=r"camera RAW \(TIFF-based\) that LibRaw [\d.]+ cannot read \(its first TIFF "
                                       r"directory is only a preview\): .*DNG converter"):
        probe(kdc, **LIMITS)
    monkeypatch.setattr(imaging, "rawpy", None)
    with pytest.raises(BadImage, match=r"camera RAW \(TIFF-based\) needs rawpy .*pip install rawpy"):
        decode(kdc)


def test_jpeg_xl_is_named_in_its_rejection():
    with pytest.raises(BadImage, match=r"JPEG XL image, which Darkroom does not read: convert it"):
        probe(b"\xff\x0a" + bytes(100), **LIMITS)


# --- the setting, and the size the tasks need --------------------------------------------------------


def test_darkroom_raw_and_the_preview_size_the_tasks_need(monkeypatch):
    from pydantic import ValidationError

    from darkroom import catalog
    from darkroom.settings import Settings

    assert Settings().raw == "preview"
    monkeypatch.setenv("DARKROOM_RAW", "full")
    assert Settings().raw == "full"
    monkeypatch.setenv("DARKROOM_RAW", "fast")
    with pytest.raises(ValidationError, match="preview"):
        Settings()
    monkeypatch.delenv("DARKROOM_RAW")
    assert catalog.raw_preview_size(Settings()) is None  # faces and normalize need every pixel
    assert catalog.raw_preview_size(Settings(tasks=["classify", "augment"])) == (256, 256)  # augment's 256 > 224
    assert catalog.raw_preview_size(Settings(tasks=["classify"], classifier_model="inception_v3")) == (299, 299)
    assert catalog.raw_preview_size(Settings(tasks=["classify"], fast_decode=False)) is None


def test_analyze_says_how_a_raw_was_read(kdc, astronaut):
    from darkroom import analyze
    from darkroom.settings import Settings

    result = analyze(kdc, tasks=["phash"], settings=Settings(tasks=["phash"]))
    assert (result["status"], result["format"], result["decoder"], result["width"]) == ("done", "RAW", "raw:full", 768)
    adobe = analyze(encoded(astronaut, "JPEG", icc_profile=adobe_profile()), tasks=["phash"],
                    settings=Settings(tasks=["phash"]))
    assert (adobe["decoder"], adobe["color_profile"]) == ("pillow", "Adobe RGB (1998)")


# --- through the whole pipeline ----------------------------------------------------------------------


@pytest.mark.e2e
def test_every_format_through_the_pipeline_and_a_corrupt_heic_stalls_nothing(tmp_path, redis_url, heic, avif, dng,
                                                                            astronaut):
    """`up --exit-when-idle` on an inbox of HEIC, AVIF, camera RAWs, an Adobe RGB JPEG and a HEIC whose data
    is cut short: faces are found on the HEIC of the astronaut, every photo says how it was read, and the
    corrupt one ends rejected with the decoder's reason while the rest are done."""
    from tests.harness import Darkroom

    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="faces,phash")
    dr.inbox.mkdir()
    (dr.inbox / "astronaut.heic").write_bytes(heic)
    (dr.inbox / "astronaut.avif").write_bytes(avif)
    (dr.inbox / "bayer.dng").write_bytes(dng)
    (dr.inbox / "adobe.jpg").write_bytes(encoded(astronaut, "JPEG", quality=92, icc_profile=adobe_profile()))
    mirrored = encoded(np.ascontiguousarray(astronaut[:, ::-1]), "HEIF", quality=90)
    (dr.inbox / "cut.heic").write_bytes(mirrored[: len(mirrored) // 2])
    expected = {"astronaut.heic": ("HEIF", "pillow-heif", None), "astronaut.avif": ("AVIF", "pillow", None),
                "bayer.dng": ("RAW", "raw:full", None), "adobe.jpg": ("JPEG", "pillow", "Adobe RGB (1998)")}
    if KDC.is_file():  # the real camera RAW, copied into this test's inbox only
        (dr.inbox / "kodak.kdc").write_bytes(KDC.read_bytes())
        expected["kodak.kdc"] = ("RAW", "raw:full", None)
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr  # finished, with the corrupt file rejected
    results = {Path(r["path"]).name: r for r in dr.results()}
    assert set(results) == {*expected, "cut.heic"}
    for name, (fmt, decoder, profile) in expected.items():
        r = results[name]
        assert r["status"] == "done", (name, r["errors"])
        assert (r["format"], r["decoder"], r["color_profile"]) == (fmt, decoder, profile), name
    assert len(results["astronaut.heic"]["faces"]) == 1
    assert len(results["astronaut.avif"]["faces"]) == 1
    assert len(results["bayer.dng"]["faces"]) == 1  # the demosaiced astronaut
    assert len(results["adobe.jpg"]["faces"]) == 1  # converted to sRGB first
    cut = results["cut.heic"]
    assert cut["status"] == "rejected"
    reason = " ".join(cut["errors"].values())
    assert "cut.heic" in reason and "truncated or corrupt HEIF data" in reason and "re-copy" in reason, reason


def test_bench_formats_times_every_kind_and_says_its_decoder():
    from bench import formats

    rows = formats.run([(96, 64)], repeat=1, log=lambda _msg: None)
    decoders = {row.kind: row.decoder for row in rows if row.size == (96, 64) or row.kind.startswith("Kodak")}
    assert decoders["JPEG"] == "pillow" and decoders["HEIC"] == "pillow-heif" and decoders["AVIF"] == "pillow"
    assert decoders["DNG (raw:full)"] == "raw:full"
    assert all(row.ms > 0 and row.ratio is not None for row in rows)
    assert "x JPEG" in formats.report(rows)
    if KDC.is_file():
        assert {row.decoder for row in rows if row.kind == "Kodak DC50 KDC"} == {"raw:preview", "raw:full"}


# --- several frames, tiny and extreme images, files that change --------------------------------------


def frames_of(kind: str, pixels: np.ndarray) -> bytes:
    """``pixels`` as the first of several frames (the others darker) in a multi-frame ``kind``."""
    first = Image.fromarray(pixels)
    rest = [Image.fromarray((pixels // (i + 2)).astype(np.uint8)) for i in range(2)]
    out = io.BytesIO()
    options = {"GIF": {"duration": 100, "loop": 0}, "PNG": {"duration": 100}, "WEBP": {"duration": 100, "lossless": True},
               "TIFF": {}}[kind]
    first.save(out, format=kind, save_all=True, append_images=rest, **options)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["GIF", "PNG", "WEBP", "TIFF"])
def test_animations_and_multi_page_files_give_their_first_frame(kind, astronaut):
    pixels = np.ascontiguousarray(astronaut[100:164, 150:246])
    data = frames_of(kind, pixels)
    info = probe(data, **LIMITS)
    assert (info.format, info.frames, info.width, info.height) == (kind, 3, 96, 64)
    got = decode(data)
    assert got.shape == (64, 96, 3)
    assert mean_abs(got, pixels) < (12 if kind == "GIF" else 1)  # the first frame (a GIF's palette aside)


def test_tiny_extreme_and_multi_frame_photos_go_through_every_task(tmp_path, astronaut):
    """A 1x1 photo, 6000x200 and 200x6000 panoramas, a 1-pixel-high strip, an animated GIF and a
    multi-page TIFF, registered as the producer does and run through every task a worker runs
    (normalize, classify's resize, augment, MTCNN faces, phash): none crashes, each is done."""
    import dataclasses

    from darkroom import catalog
    from storage import files as registry
    from storage.db import transaction
    from tests.harness import Pipeline
    from worker.originals import describe

    rng = np.random.default_rng(3)
    pipe = Pipeline(tmp_path / "store")
    pipe.configure(classifier_model="mobilenet_v2", classifier_weights="none")
    work = catalog.planned_work(pipe.rt.settings)
    assert {task for task, _key in work} == set(catalog.NAMES)
    face = np.ascontiguousarray(astronaut[:256, 100:356])
    made = {
        "dot.png": encoded(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), "PNG"),
        "wide.jpg": encoded(rng.integers(0, 256, (200, 6000, 3), dtype=np.uint8), "JPEG"),
        "tall.jpg": encoded(rng.integers(0, 256, (6000, 200, 3), dtype=np.uint8), "JPEG"),
        "strip.png": encoded(rng.integers(0, 256, (1, 700, 3), dtype=np.uint8), "PNG"),
        "moving.gif": frames_of("GIF", face),
        "pages.tif": frames_of("TIFF", face[::-1]),
    }
    shas = {}
    for name, data in made.items():
        path = tmp_path / name
        path.write_bytes(data)
        sha, size = pipe.blobs.put_file(path)
        record = describe(path, pipe.blobs.path_for(sha), sha256=sha, size=size, mtime_ns=1,
                          settings=pipe.rt.settings, reference=False)
        assert record.rejected_reason is None, record.rejected_reason
        with transaction(pipe.sessions) as s:
            reg = registry.register_file(s, **dataclasses.asdict(record), work=work)
        for run_id in reg.run_ids:
            assert pipe.execute(run_id) in ("done", "skipped"), name
        shas[name] = sha
    for name, sha in shas.items():
        r = pipe.results(sha)
        assert r["status"] == "done" and r["errors"] == {}, (name, r["errors"])
        assert set(r["tasks"].values()) == {"done"} and len(r["tasks"]) == len(work), (name, r["tasks"])
        assert len(r["phash"]) == 16 and r["augmentations"] == 9 and r["labels"], name
        multi = name in ("moving.gif", "pages.tif")
        assert (r["frames"], r["first_frame"]) == ((3, True) if multi else (1, False)), name
    sizes = {name: (pipe.results(sha)["width"], pipe.results(sha)["height"]) for name, sha in shas.items()}
    assert sizes == {"dot.png": (1, 1), "wide.jpg": (6000, 200), "tall.jpg": (200, 6000), "strip.png": (700, 1),
                     "moving.gif": (256, 256), "pages.tif": (256, 256)}
    assert len(pipe.results(shas["moving.gif"])["faces"]) == 1  # the first frame's face


@pytest.mark.e2e
def test_a_photo_saved_over_itself_is_registered_anew(tmp_path, redis_url, astronaut):
    """In the inbox and in an archive ingested in place: the path then holds the new content, whose
    results are computed; the old content's results stay under its sha256."""
    import hashlib
    import json
    import os

    from tests.harness import Darkroom

    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="phash")
    archive = tmp_path / "archive"
    dr.inbox.mkdir()
    archive.mkdir()
    inbox_photo, archive_photo = dr.inbox / "edit.jpg", archive / "edit.jpg"
    Image.fromarray(astronaut).save(inbox_photo, quality=90)
    Image.fromarray(astronaut[::-1]).save(archive_photo, quality=90)
    old = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (inbox_photo, archive_photo)}
    assert dr.run("ingest", "--in-place", str(archive)).returncode == 0
    first = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr

    for path, pixels in ((inbox_photo, astronaut[:, ::-1]), (archive_photo, astronaut[::-1, ::-1])):
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, quality=90)  # edited and saved over itself
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # as an editor's save a moment later
    new = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (inbox_photo, archive_photo)}
    again = dr.run("ingest", "--in-place", "--changed", str(archive))
    assert again.returncode == 0 and "1 changed" in again.stdout, again.stdout + again.stderr
    second = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr

    everything = {r["sha256"]: r for r in json.loads(dr.run("results", "--json").stdout)}
    assert set(everything) == {*old.values(), *new.values()}
    assert all(r["status"] == "done" and r["phash"] for r in everything.values()), everything
    for path in (inbox_photo, archive_photo):
        (now,) = dr.results(str(path))
        assert now["sha256"] == new[path] and str(path) in now["paths"]  # the path holds the new content
        (before,) = dr.results(old[path])
        assert before["phash"] and before["phash"] != now["phash"] and str(path) not in before["paths"]
