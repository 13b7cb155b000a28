"""`darkroom bench formats`: what each format costs to decode, against a JPEG of the same photo and size.

Each photo scikit-image ships (astronaut, coffee, chelsea, rocket) is resized to each size asked for and
written as JPEG (quality 92, the suite's), WebP, HEIC (pillow-heif), AVIF (Pillow's libavif), a JPEG with
an Adobe RGB (1998) profile (converted to sRGB on decoding) and a DNG written by ``pidng`` from the
photo's raw Bayer data (LibRaw's full demosaic; half size when the tasks need at most half). Every one
is decoded by ``tasks.imaging.decode`` as the worker decodes it, ``repeat`` times after one warm-up,
and the median per photo is printed with its ratio to the JPEG's. The real camera RAW of the test data
(a Kodak DC50, 768x512), when present, is timed both ways: from its embedded preview and demosaiced.

Registration's share is timed too: ``probe``, the header read the producer makes for every file
(format, size, profile, and the capture metadata: the photos carry an EXIF block with a capture
time, camera, lens and GPS position), with and without reading that metadata.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.imaging import decode, probe

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: The real camera RAW of the test data, beside the repository (see tests/test_formats.py).
KDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw" / "kodak_dc50.kdc"
LIMITS = {"max_pixels": 200_000_000, "max_bytes": 1 << 30}


@dataclass
class Row:
    kind: str
    size: tuple[int, int]
    bytes_per_photo: int
    decoder: str
    ms: float
    jpeg_ms: float | None = None
    #: probe() per photo (what registration reads), and the part of it that reads the capture metadata.
    header_ms: float | None = None
    metadata_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.ms / self.jpeg_ms if self.jpeg_ms else None


def _photos(size: tuple[int, int]) -> list[np.ndarray]:
    import skimage.data

    return [np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size, Image.LANCZOS))
            for name in PHOTOS]


def _encoded(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _adobe_profile() -> bytes:
    from tests.photos import ADOBE_RGB, icc_profile

    colours = {k: v for k, v in ADOBE_RGB.items() if k != "gamma"}
    return icc_profile("Adobe RGB (1998)", gamma=ADOBE_RGB["gamma"], **colours)


def _dng(pixels: np.ndarray) -> bytes:
    from tests.photos import bayer_dng

    with tempfile.TemporaryDirectory() as folder:
        return bayer_dng(pixels, Path(folder)).read_bytes()


def _timed(sets: dict[str, tuple[list[bytes], dict]], repeat: int) -> dict[str, float]:
    """Median milliseconds per photo of each set (its sources, decode's options), over ``repeat``
    rounds after a warm-up round; the sets take turns within each round, so a load that comes and goes
    on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in sets}
    for round_ in range(repeat + 1):
        for name, (sources, options) in sets.items():
            started = time.perf_counter()
            for source in sources:
                decode(source, **options)
            if round_:
                times[name].append((time.perf_counter() - started) / len(sources) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _exif() -> bytes:
    """A camera's EXIF block: capture time with its offset, make, model, lens, GPS position."""
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "Canon EOS R5", 1
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0x9011], sub[0xA434] = "2024:05:01 14:30:15", "+02:00", "RF24-105mm F4 L IS USM"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (IFDRational(48), IFDRational(51), IFDRational(2964, 100))
    gps[3], gps[4] = "E", (IFDRational(2), IFDRational(17), IFDRational(4034, 100))
    return exif.tobytes()


def kinds() -> dict[str, tuple[Callable[[np.ndarray], bytes], dict]]:
    """Each kind of file: how it is written from the pixels, and decode's options for it."""
    exif = _exif()
    out: dict[str, tuple[Callable[[np.ndarray], bytes], dict]] = {
        "JPEG": (lambda p: _encoded(p, "JPEG", quality=92, exif=exif), {}),
        "JPEG, Adobe RGB": (lambda p: _encoded(p, "JPEG", quality=92, icc_profile=_adobe_profile(), exif=exif), {}),
        "WebP": (lambda p: _encoded(p, "WEBP", quality=90, exif=exif), {}),
        "HEIC": (lambda p: _encoded(p, "HEIF", quality=90, exif=exif), {}),
        "AVIF": (lambda p: _encoded(p, "AVIF", quality=90, exif=exif), {}),
    }
    try:
        import pidng  # noqa: F401 - the test extra's
    except ImportError:
        return out
    out["DNG (raw:full)"] = (_dng, {})
    out["DNG (raw:full, half size)"] = (_dng, {"raw": "full", "at_least": (224, 224)})
    return out


def _header_ms(sources: list[bytes], options: dict, repeat: int) -> tuple[float, float]:
    """probe() per photo, with and without the capture metadata (median ms; rounds interleaved)."""
    from tasks import imaging

    options = {k: v for k, v in options.items() if k in ("raw", "preview_at_least")}
    pillow, camera = imaging._capture, imaging._Camera.capture
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(max(3, repeat) * 4 + 1):
        for with_metadata in (True, False):
            if not with_metadata:
                imaging._capture, imaging._Camera.capture = (lambda _im: None), (lambda _self, _src: None)
            try:
                started = time.perf_counter()
                for source in sources:
                    probe(source, **LIMITS, **options)
                if round_:
                    times[with_metadata].append((time.perf_counter() - started) / len(sources) * 1000)
            finally:
                imaging._capture, imaging._Camera.capture = pillow, camera
    full, bare = statistics.median(times[True]), statistics.median(times[False])
    return full, full - bare


def run(sizes: list[tuple[int, int]], repeat: int = 5, log: Callable[[str], None] = print) -> list[Row]:
    rows: list[Row] = []
    for size in sizes:
        photos = _photos(size)
        sets = {kind: ([write(p) for p in photos], options) for kind, (write, options) in kinds().items()}
        log(f"{size[0]}x{size[1]}: {len(photos)} photos in {len(sets)} kinds, {repeat} rounds")
        ms = _timed(sets, repeat)
        for kind, (sources, options) in sets.items():
            decoder = probe(sources[0], **LIMITS, **{k: v for k, v in options.items() if k == "raw"}).decoder
            header, metadata = _header_ms(sources, options, repeat)
            rows.append(Row(kind, size, round(statistics.mean(map(len, sources))), decoder, ms[kind], ms["JPEG"],
                            header, metadata))
    if KDC.is_file():
        raw = KDC.read_bytes()
        same = [_encoded(p, "JPEG", quality=92) for p in _photos((768, 512))]
        ways = {"preview": {"preview_at_least": (64, 64)}, "full": {}}
        ms = _timed({"JPEG": (same, {}), **{way: ([raw], options) for way, options in ways.items()}}, repeat * 4)
        rows.append(Row("JPEG", (768, 512), round(statistics.mean(map(len, same))), "pillow", ms["JPEG"], ms["JPEG"]))
        for way, options in ways.items():
            info = probe(raw, **LIMITS, **options)
            header, metadata = _header_ms([raw], options, repeat)
            rows.append(Row("Kodak DC50 KDC", (info.width, info.height), len(raw), info.decoder, ms[way], ms["JPEG"],
                            header, metadata))
    return rows


def report(rows: list[Row]) -> str:
    lines = [f"{'file':<28} {'size':>11} {'KB/photo':>9} {'decoder':<12} {'ms/photo':>9} {'x JPEG':>7} "
             f"{'probe ms':>9} {'EXIF ms':>8}"]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        header = f"{r.header_ms:>9.2f}" if r.header_ms is not None else f"{'-':>9}"
        meta = f"{r.metadata_ms:>8.3f}" if r.metadata_ms is not None else f"{'-':>8}"
        lines.append(f"{r.kind:<28} {r.size[0]:>5}x{r.size[1]:<5} {r.bytes_per_photo / 1024:>9.0f} {r.decoder:<12} "
                     f"{r.ms:>9.1f} {ratio:>7} {header} {meta}")
    lines.append("(decode() as the worker calls it for a task on every pixel, median of the rounds; the KDC's "
                 "raw:preview is its 96x64 bitmap preview, used when the tasks need at most that; probe: the header "
                 "read registration makes, EXIF: the part of it that reads the capture metadata)")
    return "\n".join(lines)
