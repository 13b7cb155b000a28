"""`darkroom bench formats`: what each format costs to decode, against a JPEG of the same photo and size.

Each photo scikit-image ships (astronaut, coffee, chelsea, rocket) is resized to each size asked for and
written as JPEG (quality 92, the suite's), WebP, HEIC (pillow-heif), AVIF (Pillow's libavif), a JPEG with
an Adobe RGB (1998) profile (converted to sRGB on decoding) and a DNG written by ``pidng`` from the
photo's raw Bayer data (LibRaw's full demosaic; half size when the tasks need at most half). Every one
is decoded by ``tasks.imaging.decode`` as the worker decodes it, ``repeat`` times after one warm-up,
and the median per photo is printed with its ratio to the JPEG's. The real camera RAW of the test data
(a Kodak DC50, 768x512), when present, is timed both ways: from its embedded preview and demosaiced.
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


def kinds() -> dict[str, tuple[Callable[[np.ndarray], bytes], dict]]:
    """Each kind of file: how it is written from the pixels, and decode's options for it."""
    out: dict[str, tuple[Callable[[np.ndarray], bytes], dict]] = {
        "JPEG": (lambda p: _encoded(p, "JPEG", quality=92), {}),
        "JPEG, Adobe RGB": (lambda p: _encoded(p, "JPEG", quality=92, icc_profile=_adobe_profile()), {}),
        "WebP": (lambda p: _encoded(p, "WEBP", quality=90), {}),
        "HEIC": (lambda p: _encoded(p, "HEIF", quality=90), {}),
        "AVIF": (lambda p: _encoded(p, "AVIF", quality=90), {}),
    }
    try:
        import pidng  # noqa: F401 - the test extra's
    except ImportError:
        return out
    out["DNG (raw:full)"] = (_dng, {})
    out["DNG (raw:full, half size)"] = (_dng, {"raw": "full", "at_least": (224, 224)})
    return out


def run(sizes: list[tuple[int, int]], repeat: int = 5, log: Callable[[str], None] = print) -> list[Row]:
    rows: list[Row] = []
    for size in sizes:
        photos = _photos(size)
        sets = {kind: ([write(p) for p in photos], options) for kind, (write, options) in kinds().items()}
        log(f"{size[0]}x{size[1]}: {len(photos)} photos in {len(sets)} kinds, {repeat} rounds")
        ms = _timed(sets, repeat)
        for kind, (sources, options) in sets.items():
            decoder = probe(sources[0], **LIMITS, **{k: v for k, v in options.items() if k == "raw"}).decoder
            rows.append(Row(kind, size, round(statistics.mean(map(len, sources))), decoder, ms[kind], ms["JPEG"]))
    if KDC.is_file():
        raw = KDC.read_bytes()
        same = [_encoded(p, "JPEG", quality=92) for p in _photos((768, 512))]
        ways = {"preview": {"preview_at_least": (64, 64)}, "full": {}}
        ms = _timed({"JPEG": (same, {}), **{way: ([raw], options) for way, options in ways.items()}}, repeat * 4)
        rows.append(Row("JPEG", (768, 512), round(statistics.mean(map(len, same))), "pillow", ms["JPEG"], ms["JPEG"]))
        for way, options in ways.items():
            info = probe(raw, **LIMITS, **options)
            rows.append(Row("Kodak DC50 KDC", (info.width, info.height), len(raw), info.decoder, ms[way], ms["JPEG"]))
    return rows


def report(rows: list[Row]) -> str:
    lines = [f"{'file':<28} {'size':>11} {'KB/photo':>9} {'decoder':<12} {'ms/photo':>9} {'x JPEG':>7}"]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        lines.append(f"{r.kind:<28} {r.size[0]:>5}x{r.size[1]:<5} {r.bytes_per_photo / 1024:>9.0f} {r.decoder:<12} "
                     f"{r.ms:>9.1f} {ratio:>7}")
    lines.append("(decode() as the worker calls it for a task on every pixel, median of the rounds; the KDC's "
                 "raw:preview is its 96x64 bitmap preview, used when the tasks need at most that)")
    return "\n".join(lines)
