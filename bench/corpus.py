"""The benchmark's corpus: real photos that packages ship, resized to mixed sizes and made distinct.

Sources are the photographs in ``skimage.data`` that load offline (astronaut, coffee, chelsea,
rocket, hubble_deep_field, camera, ...; grayscale ones are made RGB) and scikit-learn's two sample
images (china, flower). Image ``i`` of a corpus depends only on ``(seed, i, sizes)``: source
``i mod len(sources)``, then a deterministic variant drawn from ``numpy.random.default_rng([seed, i])``:

- a crop keeping 85-100 % of each side, and a horizontal flip half of the time;
- a brightness change of up to ±8 %;
- a resize (Lanczos) so that the longest side is a whole number in ``sizes`` (480-1600 by default);
- a few single pixels set to random colours, so that no two files share a sha256 (checked);
- JPEG, quality 90.

Files are built once into a pool per (seed, sizes) under ``folder`` (in parallel) and hard-linked
into one folder per (n, seed), which holds only images: ``darkroom ingest`` can walk it as is. A
``manifest.json`` beside the images (in the parent folder, not walked) records each file's source,
size and sha256; it is written last, so its presence means the corpus is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

__all__ = ["FACE_SOURCES", "CorpusImage", "as_dict", "available_sources", "build_corpus", "corpus_dir", "describe",
           "load_manifest"]

#: skimage.data photographs, in a fixed order (those that need a download are skipped).
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera",
    "coins", "cat", "retina", "stereo_motorcycle", "moon", "grass", "gravel", "brick", "cell", "clock",
)
#: scikit-learn's sample images.
SKLEARN_PHOTOS = ("china", "flower")
#: Sources with people's faces in them (for the "same faces" check).
FACE_SOURCES = frozenset({"astronaut", "camera"})

_VERSION = 1  # bump when the recipe changes, so cached corpora are rebuilt


@dataclass(frozen=True)
class CorpusImage:
    path: Path
    source: str
    width: int
    height: int
    sha256: str

    @property
    def has_faces(self) -> bool:
        return self.source in FACE_SOURCES


def _load_source(name: str) -> np.ndarray | None:
    """The source photo as HxWx3 uint8, or None when it cannot be had offline."""
    try:
        if name in SKLEARN_PHOTOS:
            from sklearn.datasets import load_sample_image

            arr = load_sample_image(f"{name}.jpg")
        else:
            import skimage.data

            fn = getattr(skimage.data, name, None)
            if fn is None:
                return None
            arr = fn()
            if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
                arr = arr[0]
    except Exception:  # noqa: BLE001 - a source that needs a download (or is missing) is skipped
        return None
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 64:
        return None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.shape[2] != 3:
        return None
    return np.ascontiguousarray(arr)


@cache
def _source(name: str) -> np.ndarray | None:
    return _load_source(name)


@lru_cache(maxsize=1)
def available_sources() -> tuple[str, ...]:
    """The source names that load on this machine, in their fixed order."""
    names = tuple(n for n in (*SKIMAGE_PHOTOS, *SKLEARN_PHOTOS) if _source(n) is not None)
    if not names:
        raise RuntimeError("no source photo loads: install scikit-image and scikit-learn")
    return names


def _variant(i: int, seed: int, sizes: tuple[int, int], sources: tuple[str, ...],
             extra_noise: int = 0) -> tuple[str, bytes, int, int]:
    """(source, JPEG bytes, width, height) of image ``i``."""
    from PIL import Image

    name = sources[i % len(sources)]
    src = _source(name)
    assert src is not None
    rng = np.random.default_rng([seed, i, _VERSION])
    h, w = src.shape[:2]
    ch, cw = int(h * rng.uniform(0.85, 1.0)), int(w * rng.uniform(0.85, 1.0))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = src[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    factor = rng.uniform(0.92, 1.08)
    img = np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    longest = int(rng.integers(sizes[0], sizes[1] + 1))
    scale = longest / max(ch, cw)
    new_w = max(1, min(longest, round(cw * scale)))
    new_h = max(1, min(longest, round(ch * scale)))
    if max(new_w, new_h) != longest:  # rounding: make the longest side exactly `longest`
        if new_w >= new_h:
            new_w = longest
        else:
            new_h = longest
    pixels = np.array(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.LANCZOS))
    for _ in range(6 + extra_noise):
        y, x = int(rng.integers(0, new_h)), int(rng.integers(0, new_w))
        pixels[y, x] = rng.integers(0, 256, size=3, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return name, out.getvalue(), new_w, new_h


def _pool_name(i: int, name: str) -> str:
    return f"{i:05d}_{name}.jpg"


def _build_range(args: tuple[Path, list[int], int, tuple[int, int], tuple[str, ...]]) -> list[dict]:
    pool, indices, seed, sizes, sources = args
    out = []
    for i in indices:
        name = sources[i % len(sources)]
        path = pool / _pool_name(i, name)
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file():
            out.append(json.loads(meta.read_text()))
            continue
        name, data, w, h = _variant(i, seed, sizes, sources)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        record = {"i": i, "file": path.name, "source": name, "width": w, "height": h,
                  "sha256": hashlib.sha256(data).hexdigest()}
        meta.write_text(json.dumps(record))
        out.append(record)
    return out


def corpus_dir(folder: Path, n: int, seed: int, sizes: tuple[int, int] = (480, 1600)) -> Path:
    """The folder the images of corpus (n, seed, sizes) are in."""
    return Path(folder) / f"corpus-v{_VERSION}-s{seed}-{sizes[0]}-{sizes[1]}-n{n}" / "images"


def load_manifest(images_dir: Path) -> list[CorpusImage] | None:
    manifest = Path(images_dir).parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        records = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    images = [CorpusImage(path=Path(images_dir) / r["file"], source=r["source"], width=r["width"],
                          height=r["height"], sha256=r["sha256"]) for r in records]
    if not all(img.path.is_file() for img in images):
        return None
    return images


def build_corpus(folder: str | os.PathLike, n: int = 200, seed: int = 0, sizes: tuple[int, int] = (480, 1600),
                 workers: int | None = None) -> list[CorpusImage]:
    """Build (or find, cached) ``n`` distinct JPEG photos under ``folder``; returns them in order.

    Args:
        folder: Cache folder; the corpus goes into ``corpus_dir(folder, n, seed, sizes)``.
        n: Number of images.
        seed: Different seeds give different (and mutually distinct) variants.
        sizes: Inclusive range of the longest side, in pixels.
        workers: Processes used to build (default: the usable cores).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    lo, hi = int(sizes[0]), int(sizes[1])
    if not 64 <= lo <= hi:
        raise ValueError(f"sizes must be (low, high) with 64 <= low <= high, got {sizes}")
    sizes = (lo, hi)
    folder = Path(folder)
    images_dir = corpus_dir(folder, n, seed, sizes)
    cached = load_manifest(images_dir)
    if cached is not None and len(cached) == n:
        return cached

    sources = available_sources()
    pool = folder / f"pool-v{_VERSION}-s{seed}-{lo}-{hi}-{len(sources)}src"
    pool.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not (pool / _pool_name(i, sources[i % len(sources)])).is_file()]
    workers = workers or len(os.sched_getaffinity(0))
    records: dict[int, dict] = {}
    if len(todo) >= 32 and workers > 1:
        chunks = [todo[k::workers * 4] for k in range(workers * 4)]
        # spawn, not fork: the caller may already run TensorFlow's threads.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            for part in ex.map(_build_range, [(pool, c, seed, sizes, sources) for c in chunks if c]):
                records.update({r["i"]: r for r in part})
    records.update({r["i"]: r for r in _build_range((pool, [i for i in range(n) if i not in records], seed,
                                                            sizes, sources))})
    ordered = [records[i] for i in range(n)]

    # Distinct content, guaranteed: a clash (never seen, but cheap to rule out) gets more noise.
    seen: dict[str, int] = {}
    for rec in ordered:
        extra = 0
        while rec["sha256"] in seen:
            extra += 1
            name, data, w, h = _variant(rec["i"], seed, sizes, sources, extra_noise=extra)
            (pool / rec["file"]).write_bytes(data)
            rec.update(width=w, height=h, sha256=hashlib.sha256(data).hexdigest())
            (pool / rec["file"]).with_suffix(".json").write_text(json.dumps(rec))
        seen[rec["sha256"]] = rec["i"]

    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    for rec in ordered:
        target = images_dir / rec["file"]
        try:
            os.link(pool / rec["file"], target)
        except OSError:
            shutil.copyfile(pool / rec["file"], target)
    manifest = images_dir.parent / "manifest.json"
    manifest.write_text(json.dumps([{k: v for k, v in r.items() if k != "i"} for r in ordered], indent=0))
    result = load_manifest(images_dir)
    assert result is not None
    return result


def describe(images: list[CorpusImage]) -> dict:
    """A short summary: count, sources, size range, megapixels."""
    sides = [max(img.width, img.height) for img in images]
    return {
        "images": len(images),
        "sources": sorted({img.source for img in images}),
        "longest_side_min": min(sides),
        "longest_side_max": max(sides),
        "megapixels_mean": round(float(np.mean([img.width * img.height for img in images])) / 1e6, 3),
        "with_faces": sum(img.has_faces for img in images),
    }


def as_dict(img: CorpusImage) -> dict:
    d = asdict(img)
    d["path"] = str(img.path)
    return d
