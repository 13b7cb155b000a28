"""tasks.phash: the hash equals imagehash's, near-duplicate photos hash near each other, and the
index finds exactly the pairs that comparing all pairs finds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tasks import phash as ph

imagehash = pytest.importorskip("imagehash")

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
                  "immunohistochemistry", "coins", "retina", "moon", "page", "text", "horse", "clock",
                  "cell", "brick", "grass", "gravel", "logo", "checkerboard", "binary_blobs")
#: Distinct photographs for the near-duplicate checks ("cat" is "chelsea"; textures are left out).
NEAR_DUPLICATE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
                         "immunohistochemistry", "china", "flower")


def _rgb(arr) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def _load(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return _rgb(load_sample_image(f"{name}.jpg"))
    import skimage.data

    try:
        return _rgb(getattr(skimage.data, name)())
    except Exception as exc:  # noqa: BLE001 - a photo that needs a download
        pytest.skip(f"skimage.data.{name} does not load offline: {exc}")


def _reference(image: np.ndarray) -> str:
    return str(imagehash.phash(Image.fromarray(image)))


# ------------------------------------------------------------------------------------------
# The hash
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SKIMAGE_PHOTOS)
def test_phash_equals_imagehash_on_skimage_photos(name):
    image = _load(name)
    assert ph.phash_hex(ph.phash(image)) == _reference(image)


def test_phash_equals_imagehash_on_sklearn_sample_images():
    from sklearn.datasets import load_sample_images

    for image in load_sample_images().images:
        assert ph.phash_hex(ph.phash(image)) == _reference(image)


def test_phash_equals_imagehash_on_degenerate_images():
    """Flat, gradient, mirrored and tiny images, where many DCT coefficients are exactly zero or
    exactly equal: only pocketfft's own arithmetic gives imagehash's bits there."""
    rng = np.random.default_rng(7)
    ramp = np.tile((np.arange(64) * 4).astype(np.uint8), (64, 1))
    noise = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    images = {
        "black": np.zeros((50, 50, 3), np.uint8),
        "grey": np.full((50, 70, 3), 128, np.uint8),
        "white": np.full((64, 48, 3), 255, np.uint8),
        "one pixel": np.full((1, 1, 3), 200, np.uint8),
        "one row": rng.integers(0, 256, (1, 97, 3), dtype=np.uint8),
        "horizontal ramp": _rgb(ramp),
        "vertical ramp": _rgb(ramp.T),
        "checkerboard": _rgb(((np.indices((64, 64)).sum(0) // 8) % 2 * 255).astype(np.uint8)),
        "transpose-symmetric": np.minimum(noise, noise.transpose(1, 0, 2)),
        "mirrored": np.concatenate([noise, noise[:, ::-1]], axis=1),
    }
    for size in range(60):  # random sizes, some flat
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if size % 3 == 0:
            image[:] = image[0, 0]
        images[f"random {h}x{w}"] = image
    for name, image in images.items():
        assert ph.phash_hex(ph.phash(image)) == _reference(image), name
    assert ph.phash(images["grey"]) == 1 << 63  # the DC bit alone, as imagehash gives


def test_dct_equals_scipy_bit_for_bit():
    fftpack = pytest.importorskip("scipy.fftpack")
    rng = np.random.default_rng(3)
    for _ in range(200):
        x = rng.integers(0, 256, (32, 32)).astype(np.float64)
        expected = fftpack.dct(fftpack.dct(x, axis=0), axis=1)
        assert np.array_equal(ph._dct2(ph._dct2(x, axis=0), axis=1), expected)


def test_phash_accepts_grey_rgba_and_pillow_images():
    image = _load("astronaut")
    expected = ph.phash(image)
    assert ph.phash(Image.fromarray(image)) == expected
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert ph.phash(rgba) == expected
    grey = np.asarray(Image.fromarray(image).convert("L"))
    assert ph.phash_hex(ph.phash(grey)) == _reference(grey)
    with pytest.raises(ValueError):
        ph.phash(image.astype(np.float32))
    with pytest.raises(ValueError):
        ph.phash(np.zeros((0, 5, 3), np.uint8))


def test_hex_distance_and_int64_helpers():
    h = ph.phash(_load("coffee"))
    text = ph.phash_hex(h)
    assert len(text) == 16 and text == text.lower()
    assert ph.from_hex(text) == h and ph.from_hex(text.upper()) == h and ph.from_hex("0x" + text) == h
    assert ph.phash_hex(1) == "0000000000000001" and ph.from_hex("1") == 1
    assert ph.distance(0, (1 << 64) - 1) == 64 and ph.distance(h, h) == 0
    assert ph.distance(0b1011, 0b0001) == 2
    for value in (0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, h):
        signed = ph.to_int64(value)
        assert -(1 << 63) <= signed < 1 << 63 and ph.from_int64(signed) == value
    for bad in ("", "g" * 16, "1" * 17):
        with pytest.raises(ValueError):
            ph.from_hex(bad)
    with pytest.raises(ValueError):
        ph.distance(-1, 0)
    with pytest.raises(ValueError):
        ph.phash_hex(1 << 64)


# ------------------------------------------------------------------------------------------
# Near-duplicate photos
# ------------------------------------------------------------------------------------------


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    im = Image.fromarray(image)
    size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
    return np.asarray(im.resize(size, Image.Resampling.LANCZOS))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"))


def _crop(image: np.ndarray, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    dy, dx = round(h * fraction), round(w * fraction)
    return image[dy:h - dy, dx:w - dx]


def _messenger(image: np.ndarray, long_side: int) -> np.ndarray:
    """What a messenger app sends: at most ``long_side`` pixels on the long side, JPEG q=70."""
    scale = min(1.0, long_side / max(image.shape[:2]))
    return _jpeg(_resize(image, scale) if scale < 1 else image, 70)


TRANSFORMS = {
    "half size": lambda a: _resize(a, 0.5),
    "quarter size": lambda a: _resize(a, 0.25),
    "jpeg q60": lambda a: _jpeg(a, 60),
    "crop 2% per border": lambda a: _crop(a, 0.02),
    "messenger 1280px": lambda a: _messenger(a, 1280),
    "messenger 640px": lambda a: _messenger(a, 640),
}


def test_near_duplicate_photos_group_with_their_original_and_apart_from_others():
    hashes, owner = [], []
    for name in NEAR_DUPLICATE_PHOTOS:
        original = _load(name)
        hashes.append(ph.phash(original))
        owner.append(name)
        for label, transform in TRANSFORMS.items():
            h = ph.phash(transform(original))
            assert ph.distance(h, hashes[owner.index(name)]) <= 8, (name, label)
            hashes.append(h)
            owner.append(name)
    groups = ph.group_near_duplicates(hashes, distance=8)
    assert sorted(tuple(g) for g in groups) == sorted(
        tuple(i for i, o in enumerate(owner) if o == name) for name in NEAR_DUPLICATE_PHOTOS)
    assert groups == sorted(groups, key=lambda g: g[0])
    # Distinct photos are far apart, not merely beyond 8 bits.
    originals = [hashes[owner.index(name)] for name in NEAR_DUPLICATE_PHOTOS]
    closest = min(ph.distance(a, b) for i, a in enumerate(originals) for b in originals[i + 1:])
    assert closest > 16


def test_the_bench_corpus_photos_group_with_their_resized_copies(tmp_path):
    """The benchmark's corpus (crops of the package photos at 320-960 px, flipped and brightened at
    random): each photo and its copies at 1/2 and 1/3 size and recompressed form one group, and no
    group mixes photos of different sources (skimage's "cat" is its "chelsea": one photo)."""
    from bench.corpus import build_corpus
    from tasks.imaging import decode

    corpus = build_corpus(tmp_path, n=12, sizes=(320, 960), workers=1)
    hashes, owner = [], []
    for i, image in enumerate(corpus):
        pixels = decode(image.path)
        for copy in (pixels, _resize(pixels, 0.5), _resize(pixels, 1 / 3), _jpeg(pixels, 60)):
            hashes.append(ph.phash(copy))
            owner.append(i)
    groups = ph.group_near_duplicates(hashes, distance=8)
    for i in range(len(corpus)):
        mine = {k for k, o in enumerate(owner) if o == i}
        assert any(mine <= set(g) for g in groups), corpus[i].path
    for group in groups:
        sources = {corpus[owner[k]].source.replace("cat", "chelsea") for k in group}
        assert len(sources) == 1, [corpus[owner[k]].path.name for k in group]


# ------------------------------------------------------------------------------------------
# The index
# ------------------------------------------------------------------------------------------


def _planted(n: int, d: int, seed: int, clusters: int = 600) -> np.ndarray:
    """``n`` uniform random hashes, then ``clusters`` groups of 2-6 copies of one hash with 0 to
    ``d + 1`` bits flipped (so pairs at the boundary and just past it, and chains)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    bits = np.uint64(1) << np.arange(64, dtype=np.uint64)
    for _ in range(clusters):
        members = rng.choice(n, int(rng.integers(2, 7)), replace=False)
        base = h[members[0]]
        for i in members[1:]:
            k = int(rng.integers(0, min(d + 1, 64) + 1))
            flip = np.bitwise_or.reduce(bits[rng.choice(64, k, replace=False)]) if k else np.uint64(0)
            h[i] = base ^ flip
    return h


@pytest.mark.parametrize("d", [0, 1, 2, 4, 6, 8, 10])
def test_index_equals_all_pairs_on_planted_clusters(d):
    h = _planted(20_000, d, seed=d)
    expected = ph.all_pairs_neighbours(h, d)
    got = ph.neighbours(h, d)
    assert got.dtype == np.int64 and got.shape[1] == 2
    assert np.array_equal(got, expected)
    assert len(expected) >= (300 if d else 50)  # the planted pairs are there to be found
    assert not ph.plan(h.size, d).all_pairs or d == 0


def test_index_with_partitions_and_every_search_shape():
    """Plans other than the cheapest must give the same pairs: exact band matches, radius 2,
    radius 4 (whose entries are built in 16 partitions of the key space)."""
    h = _planted(20_000, 8, seed=11)
    for d, plan in [(1, ph.Plan((32, 32), 0, 0)), (2, ph.Plan((22, 21, 21), 0, 0)),
                    (8, ph.Plan((16, 16, 16, 16), 1, 0)), (9, ph.Plan((32, 32), 2, 0)),
                    (9, ph.Plan((22, 21, 21), 2, 0))]:
        assert np.array_equal(ph.neighbours(h, d, using=plan), ph.all_pairs_neighbours(h, d)), (d, plan)
    with pytest.raises(ValueError):
        ph.neighbours(h, 9, using=ph.Plan((22, 21, 21), 1, 0))  # 3 bands of radius 2 miss 9
    # The default plan at d=4 (two 32-bit bands, 33 entries a hash): 50,000 hashes fill two
    # partitions per band.
    h = _planted(50_000, 4, seed=12, clusters=1000)
    assert np.array_equal(ph.neighbours(h, 4), ph.all_pairs_neighbours(h, 4))


def test_index_with_large_key_groups():
    """Hashes that share a band (more than fit the small-group loop) and many identical ones."""
    rng = np.random.default_rng(5)
    h = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    h[:500] = (h[:500] & np.uint64(0xFFFFFF)) | (h[0] & ~np.uint64(0xFFFFFF))  # same top 40 bits
    h[500:800] = h[500]  # 300 copies of one hash
    h[800:900] = h[1] ^ (np.uint64(1) << np.arange(100, dtype=np.uint64) % np.uint64(64))
    for d in (4, 8):
        assert np.array_equal(ph.neighbours(h, d), ph.all_pairs_neighbours(h, d))


def test_index_edge_cases():
    empty = np.empty((0, 2), dtype=np.int64)
    assert np.array_equal(ph.neighbours([], 8), empty) and ph.group_near_duplicates([], 8) == []
    assert np.array_equal(ph.neighbours([123], 8), empty) and ph.group_near_duplicates([123]) == []
    same = [0xDEADBEEF] * 40
    pairs = ph.neighbours(same, 0)
    assert len(pairs) == 40 * 39 // 2 and np.array_equal(pairs, ph.all_pairs_neighbours(same, 0))
    assert ph.group_near_duplicates(same, 0) == [list(range(40))]
    h = _planted(800, 40, seed=2, clusters=50)
    for d in (0, 32, 40, 63, 64, 100):  # large distances: all pairs, still exact
        got = ph.neighbours(h, d)
        assert np.array_equal(got, ph.all_pairs_neighbours(h, d)), d
    assert len(ph.neighbours(h[:100], 64)) == 100 * 99 // 2
    assert ph.group_near_duplicates(h[:100], 64) == [list(range(100))]
    with pytest.raises(ValueError):
        ph.neighbours([1, 2], -1)
    with pytest.raises(ValueError):
        ph.neighbours([-1, 2], 3)


def test_inputs_python_ints_uint64_and_int64_agree():
    h = _planted(5000, 8, seed=9)
    expected = ph.neighbours(h, 8)
    assert np.array_equal(ph.neighbours([int(v) for v in h], 8), expected)
    assert np.array_equal(ph.neighbours(h.view(np.int64), 8), expected)
    signed = np.array([ph.to_int64(int(v)) for v in h], dtype=np.int64)  # as SQL stores them
    assert np.array_equal(ph.neighbours(signed, 8), expected)
    assert ph.group_near_duplicates(signed, 8) == ph.group_near_duplicates(h, 8)


def test_groups_are_connected_components():
    a = 0
    b = a ^ 0xFF  # 8 bits from a
    c = b ^ 0xFF00  # 8 bits from b, 16 from a
    far = 0xFFFF_FFFF_0000_0000
    near_far = far ^ 0b101
    hashes = [far, a, 0x0F0F_0F0F_0F0F_0F0F, c, near_far, b, a]
    assert ph.group_near_duplicates(hashes, 8) == [[0, 4], [1, 3, 5, 6]]
    assert ph.group_near_duplicates(hashes, 7) == [[0, 4], [1, 6]]
    assert ph.group_near_duplicates(hashes, 0) == [[1, 6]]


def test_groups_on_planted_clusters_match_components_of_all_pairs():
    h = _planted(20_000, 8, seed=21)
    pairs = ph.all_pairs_neighbours(h, 8)
    parent = list(range(h.size))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs.tolist():
        parent[find(i)] = find(j)
    members: dict[int, list[int]] = {}
    for i in range(h.size):
        members.setdefault(find(i), []).append(i)
    expected = sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])
    assert ph.group_near_duplicates(h, 8) == expected
