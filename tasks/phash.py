"""Perceptual hashes of photos ("phash") and exact, fast grouping of near-duplicates.

Pure code: numpy and Pillow, no settings, no I/O. Two parts:

- :func:`phash` gives a photo's 64-bit DCT perceptual hash, bit for bit the value of the
  ``imagehash`` package's ``imagehash.phash(PIL.Image.fromarray(image))`` (``hash_size=8``,
  ``highfreq_factor=4``): the image made grey (Pillow's ``convert("L")``), resized to 32x32 with
  Lanczos, a 2-D DCT-II (unnormalized, along axis 0 then axis 1), the top-left 8x8 coefficients
  compared with their median. Bit 63 (the most significant) is coefficient ``[0, 0]``, then row
  by row, so :func:`phash_hex` prints what ``str(imagehash.phash(...))`` prints. Two photos are
  near-duplicates when their hashes differ in few bits (:func:`distance`).
- :func:`neighbours` finds every pair of hashes within a Hamming distance without comparing all
  pairs (multi-index hashing, below), and :func:`group_near_duplicates` joins those pairs into
  groups. :func:`all_pairs_neighbours` is the plain quadratic comparison, kept as the baseline
  and as the reference the index is tested against.

Equality with ``imagehash``. ``imagehash`` takes the DCT from ``scipy.fftpack`` (pocketfft).
A textbook DCT (a matrix product) gives the same coefficients to about 1e-12, which is not
enough: on flat or symmetric images many coefficients are exactly zero in pocketfft's arithmetic
and merely tiny in a matrix product's, so bits compared with the median flip (a flat grey photo
hashes to ``8000000000000000`` in ``imagehash`` and to noise with a matrix). :func:`_dct2` therefore
repeats pocketfft's own DCT-II algorithm, operation for operation: its pre-twiddle, a
real inverse FFT of length 32 (``numpy.fft``, which is the same pocketfft code), and its
post-twiddle with pocketfft's own table of cosines (:func:`_pocketfft_cosines`). The result is
equal to scipy's to the last bit, so the hash is equal even on those images.

The whole image is needed: the hash depends on Pillow's Lanczos filter over every pixel, so a
photo decoded at reduced size (a JPEG "draft") can hash differently. The cost is the grey
conversion and the resize, a few milliseconds for a photo of one or two megapixels.

The index. Hashes within distance ``d`` over 64 bits differ, in one of ``m`` disjoint bands of
bits, by at most ``floor(d / m)`` bits (pigeonhole). Each band is searched with radius
``2 * rho`` (``m * (2 * rho + 1) > d``) by meeting in the middle: every hash is entered under
its band value and under each value ``rho`` bits away (``1 + b`` entries for ``rho == 1`` and a
``b``-bit band), the entries are sorted, and two hashes whose bands are within ``2 * rho`` bits
share an entry key. Pairs that share a key are candidates, checked with an exact popcount of
the whole 64-bit XOR, so no pair within ``d`` is missed and none beyond it is kept. The number
of bands and ``rho`` are chosen by a cost model fitted to timings of this code (:func:`plan`):
for a million hashes, ``d = 4`` or ``5`` takes two 32-bit bands and ``6 <= d <= 8`` three bands
of 21-22 bits, both with ``rho = 1`` (33 or 22 entries per hash and band); ``d <= 3`` takes
``d + 1`` bands matched exactly; small sets are compared pair by pair. Entries are built, sorted
and checked one partition of the key space at a time (about a million entries), so memory stays
at a couple of hundred MiB whatever the number of hashes, and the checks run on cache-sized
tiles. Identical hashes (the same photo stored twice) are collapsed first: the index works on
distinct values.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import combinations, pairwise

import numpy as np
from PIL import Image

from tasks.base import Output

__all__ = [
    "BITS",
    "HASH_SIZE",
    "IMG_SIZE",
    "Plan",
    "all_pairs_neighbours",
    "distance",
    "from_hex",
    "from_int64",
    "group_near_duplicates",
    "neighbours",
    "phash",
    "phash_hex",
    "plan",
    "to_int64",
]

#: Side of the low-frequency block kept (``imagehash``'s ``hash_size``): 8x8 = 64 bits.
HASH_SIZE = 8
#: Side of the grey image the DCT is taken of (``hash_size * highfreq_factor`` = 8 * 4).
IMG_SIZE = 32
#: Bits in a hash.
BITS = HASH_SIZE * HASH_SIZE

_MASK64 = (1 << 64) - 1

# --------------------------------------------------------------------------------------------
# The hash
# --------------------------------------------------------------------------------------------


def phash(image: np.ndarray | Image.Image) -> int:
    """The 64-bit perceptual hash of a photo, equal to ``imagehash.phash``'s.

    Args:
        image: ``HxWx3`` ``uint8`` RGB pixels (``HxW`` grey and ``HxWx4`` RGBA are accepted too;
            alpha is ignored, as Pillow's grey conversion ignores it), or a Pillow image.

    Returns:
        The hash as an unsigned integer in ``[0, 2**64)``; bit 63 is the DCT coefficient
        ``[0, 0]``, bit 0 is ``[7, 7]``.

    Raises:
        ValueError: Not ``uint8``, or not one of the shapes above, or empty.
    """
    if isinstance(image, Image.Image):
        img = image
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"phash needs uint8 pixels, not {arr.dtype}")
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
            raise ValueError(f"phash needs HxW, HxWx3 or HxWx4 pixels, not shape {arr.shape}")
        img = Image.fromarray(arr)
    grey = img.convert("L").resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    # The row transforms of the second pass are independent, so only the 8 rows kept are done.
    coeffs = _dct2(_dct2(pixels, axis=0)[:HASH_SIZE], axis=1)[:, :HASH_SIZE]
    bits = coeffs > np.median(coeffs)
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def phash_hex(h: int) -> str:
    """``h`` as 16 lowercase hex digits, as ``str(imagehash.phash(...))`` writes it."""
    return f"{_check_hash(h):016x}"


def from_hex(s: str) -> int:
    """The hash that :func:`phash_hex` (or ``imagehash``) wrote as ``s``.

    Raises:
        ValueError: ``s`` is not 1 to 16 hex digits (an ``0x`` prefix is allowed).
    """
    text = str(s).strip().lower()
    text = text.removeprefix("0x")
    if not 1 <= len(text) <= 16 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"not a 64-bit hash in hex: {s!r}")
    return int(text, 16)


def distance(a: int, b: int) -> int:
    """The number of bits in which hashes ``a`` and ``b`` differ (Hamming distance), 0..64."""
    return (_check_hash(a) ^ _check_hash(b)).bit_count()


def to_int64(h: int) -> int:
    """``h`` as a signed 64-bit integer (two's complement), for stores whose integers are
    signed 64-bit (SQLite, PostgreSQL ``bigint``). :func:`from_int64` undoes it."""
    h = _check_hash(h)
    return h - (1 << 64) if h >= 1 << 63 else h


def from_int64(v: int) -> int:
    """The hash stored as the signed 64-bit integer ``v`` (see :func:`to_int64`)."""
    v = operator.index(v)
    if not -(1 << 63) <= v < 1 << 63:
        raise ValueError(f"not a signed 64-bit integer: {v}")
    return v & _MASK64


def _check_hash(h: int) -> int:
    h = operator.index(h)
    if not 0 <= h <= _MASK64:
        raise ValueError(f"not a 64-bit hash: {h}")
    return h


@cache
def _pocketfft_cosines(n: int) -> np.ndarray:
    """``cos(2*pi*i / n)`` for ``i = 0 .. n/2``, exactly as pocketfft's ``sincos_2pibyn(n)``
    computes them (they differ from correctly rounded cosines by up to 2 ulp).

    pocketfft takes each root as the complex product of two entries of small tables, each entry
    from ``std::cos``/``std::sin`` of a multiple of ``pi / (4 n)`` folded into the first octant.
    Python's ``math.cos``/``math.sin`` are the same C library functions, and its float arithmetic
    is the same IEEE double arithmetic.
    """
    ang = math.pi / (4 * n)  # pocketfft: double(0.25L * pi / n); the division by 4n is exact

    def calc(x: int) -> tuple[float, float]:  # cos and sin of 2*pi*x/n, by octant
        x <<= 3
        if x < 4 * n:
            if x < 2 * n:
                if x < n:
                    return math.cos(x * ang), math.sin(x * ang)
                return math.sin((2 * n - x) * ang), math.cos((2 * n - x) * ang)
            x -= 2 * n
            if x < n:
                return -math.sin(x * ang), math.cos(x * ang)
            return -math.cos((2 * n - x) * ang), math.sin((2 * n - x) * ang)
        x = 8 * n - x
        if x < 2 * n:
            if x < n:
                return math.cos(x * ang), -math.sin(x * ang)
            return math.sin((2 * n - x) * ang), -math.cos((2 * n - x) * ang)
        x -= 2 * n
        if x < n:
            return -math.sin(x * ang), -math.cos(x * ang)
        return -math.cos((2 * n - x) * ang), -math.sin((2 * n - x) * ang)

    nval = (n + 2) // 2
    shift = 1
    while (1 << shift) * (1 << shift) < nval:
        shift += 1
    mask = (1 << shift) - 1
    v1 = [(1.0, 0.0)] + [calc(i) for i in range(1, mask + 1)]
    v2 = [(1.0, 0.0)] + [calc(i * (mask + 1)) for i in range(1, (nval + mask) // (mask + 1))]
    out = []
    for idx in range(n // 2 + 1):
        (ar, ai), (br, bi) = v1[idx & mask], v2[idx >> shift]
        out.append(ar * br - ai * bi)
    return np.array(out, dtype=np.float64)


@cache
def _dct_twiddle(n: int) -> np.ndarray:
    """pocketfft's DCT-II twiddle factors for length ``n``: ``cos(pi * (i + 1) / (2 n))``."""
    return _pocketfft_cosines(4 * n)[1:n + 1].copy()


def _dct2(x: np.ndarray, axis: int) -> np.ndarray:
    """Unnormalized DCT-II of float64 ``x`` along ``axis`` (length must be even), equal to the
    last bit to ``scipy.fftpack.dct(x, axis=axis)``: pocketfft's ``T_dcst23`` for type 2."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    n = moved.shape[0]
    if n % 2 or n < 4:
        raise ValueError("this DCT needs an even length of at least 4")
    c = moved.reshape(n, -1).copy()
    tw = _dct_twiddle(n)[:, None]
    c[0] *= 2
    c[n - 1] *= 2
    # MPINPLACE(c[k+1], c[k]) for odd k: c[k+1] <- c[k+1] - c[k], c[k] <- c[k+1] + c[k]
    a, b = c[2:n - 1:2].copy(), c[1:n - 2:2].copy()
    c[2:n - 1:2] = a - b
    c[1:n - 2:2] = a + b
    # c is now in FFTPACK's half-complex order: r0, r1, i1, r2, i2, ..., r(n/2).
    spectrum = np.empty((n // 2 + 1, c.shape[1]), dtype=np.complex128)
    spectrum[0] = c[0]
    spectrum[1:n // 2].real = c[1:n - 1:2]
    spectrum[1:n // 2].imag = c[2:n:2]
    spectrum[n // 2] = c[n - 1]
    res = np.fft.irfft(spectrum, n=n, axis=0, norm="forward")  # unscaled backward real FFT
    out = np.empty_like(c)
    out[0] = res[0]
    k = np.arange(1, n // 2)
    kc = n - k
    t1 = tw[k - 1] * res[kc] + tw[kc - 1] * res[k]
    t2 = tw[k - 1] * res[k] - tw[kc - 1] * res[kc]
    out[k] = 0.5 * (t1 + t2)
    out[kc] = 0.5 * (t1 - t2)
    out[n // 2] = res[n // 2] * tw[n // 2 - 1]
    return np.moveaxis(out.reshape(moved.shape), 0, axis)


# --------------------------------------------------------------------------------------------
# Near-duplicates
# --------------------------------------------------------------------------------------------

# Cost model of the index, in seconds, fitted to timings of this code (2-core machine, numpy 2;
# bench/near_duplicates.py): per entry built, sorted and grouped, per candidate pair checked,
# per pair of the all-pairs loop, per partition and per (partition, mask) block of Python work.
_COST_ENTRY = 1.0e-8
_COST_CANDIDATE = 4.5e-9
_COST_ALL_PAIRS = 0.8e-9
_COST_PARTITION = 5e-3
_COST_STEP = 3e-5
# Entries per partition: bounds the memory of one sort (about 40 bytes an entry at peak) and
# keeps the partition's arrays near the cache (measured: 2**20 beats 2**22 by 20 %).
_PARTITION_ENTRIES = 1 << 20
# Key groups larger than this are compared member by member (a block of all pairs) instead of
# by the offset loop, whose Python iterations grow with the largest group.
_BIG_GROUP = 48
# A tile of the all-pairs comparison: 64 x 4096 hashes XORed at once (2 MiB, in cache).
_TILE_ROWS = 64
_TILE_COLUMNS = 4096
# Hashes compared in one pass of the candidate check: 512 KiB, well inside a core's L2 cache.
_CACHE_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class Plan:
    """How :func:`neighbours` searches: ``bands`` (the bit widths of the bands, most significant
    first; empty for all pairs) and ``rho`` (each band's entries are its value and every value
    ``rho`` bits away, so bands within ``2 * rho`` bits meet). ``cost`` is the model's estimate in
    seconds."""

    bands: tuple[int, ...]
    rho: int
    cost: float

    @property
    def all_pairs(self) -> bool:
        return not self.bands

    def describe(self) -> str:
        if self.all_pairs:
            return "all pairs"
        return f"{len(self.bands)} bands of {'/'.join(map(str, self.bands))} bits, radius {2 * self.rho} each"


def _ball(bits: int, radius: int) -> int:
    """How many values lie within ``radius`` bits of a ``bits``-bit value."""
    return sum(math.comb(bits, r) for r in range(min(radius, bits) + 1))


def _split(m: int) -> tuple[int, ...]:
    base, extra = divmod(BITS, m)
    return tuple(base + 1 if i < extra else base for i in range(m))


def plan(n: int, distance: int) -> Plan:
    """The cheapest way, by the cost model, to find all pairs among ``n`` distinct hashes within
    ``distance`` bits: some bands with some ``rho`` such that ``bands * (2 * rho + 1) > distance``
    (so that any pair within ``distance`` is within ``2 * rho`` bits in some band), or all pairs.

    The model assumes hashes spread evenly over their 64 bits; clustered hashes only add
    candidates (all still checked exactly).
    """
    d = _check_distance(distance)
    best = Plan((), 0, _COST_ALL_PAIRS * n * (n - 1) / 2)
    if d >= BITS:
        return best
    for rho in (0, 1, 2):
        m = d // (2 * rho + 1) + 1  # fewest bands; more bands only shorten them
        for bands_m in range(max(m, 2), min(m + 3, BITS) + 1):
            bands = _split(bands_m)
            if max(bands) > 32:
                continue
            cost = 0.0
            for b in bands:
                per_item = _ball(b, rho)
                entries = n * per_item
                candidates = entries * entries / 2.0 ** (b + 1)
                parts = max(1, 2 ** math.ceil(math.log2(max(entries / _PARTITION_ENTRIES, 1))))
                steps = parts * _ball(min(int(math.log2(parts)), b), rho)
                cost += (_COST_ENTRY * entries + _COST_CANDIDATE * candidates + _COST_PARTITION * parts
                         + _COST_STEP * steps)
            if cost < best.cost:
                best = Plan(bands, rho, cost)
    return best


def neighbours(hashes: Sequence[int] | np.ndarray, distance: int, *, using: Plan | None = None) -> np.ndarray:
    """Every pair of hashes within ``distance`` bits of each other, found with the index.

    Args:
        hashes: 64-bit hashes: Python ints in ``[0, 2**64)``, or a ``uint64`` array (an
            ``int64`` array is read as the same bits, as :func:`to_int64` stores them).
        distance: The largest Hamming distance of a pair, ``>= 0``.
        using: The search to run, instead of :func:`plan`'s choice (for benchmarks and tests;
            any plan with ``len(bands) * (2 * rho + 1) > distance`` gives the same pairs).

    Returns:
        An ``(k, 2)`` ``int64`` array of index pairs ``i < j``, sorted by ``i`` then ``j``:
        exactly the pairs that :func:`all_pairs_neighbours` gives. Identical hashes are pairs.
    """
    h = _as_hashes(hashes)
    d = _check_distance(distance)
    if h.size < 2:
        return np.empty((0, 2), dtype=np.int64)
    values, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
    pairs = _distinct_pairs(values, d, using)
    return _expand_pairs(pairs, inverse, counts)


def group_near_duplicates(hashes: Sequence[int] | np.ndarray, distance: int = 8, *,
                          using: Plan | None = None) -> list[list[int]]:
    """Groups of near-duplicate photos: the connected components of "within ``distance`` bits"
    (single linkage: if ``a``-``b`` and ``b``-``c`` are within ``distance``, ``a``, ``b``, ``c``
    are one group even when ``a``-``c`` is not).

    Args:
        hashes: As for :func:`neighbours`.
        distance: The largest Hamming distance that joins two photos (8 of 64 bits by default).
        using: As for :func:`neighbours`.

    Returns:
        The groups of two or more photos, each a sorted list of indices into ``hashes``, in
        order of their first index. Photos with no near-duplicate are in no group.
    """
    h = _as_hashes(hashes)
    d = _check_distance(distance)
    if h.size < 2:
        return []
    if d >= BITS:
        return [list(range(h.size))]
    values, inverse = np.unique(h, return_inverse=True)
    pairs = _distinct_pairs(values, d, using)
    root = _components(values.size, pairs)[inverse]  # per photo: its component's smallest value
    order = np.lexsort((np.arange(h.size), root))
    sorted_roots = root[order]
    starts = np.flatnonzero(np.r_[True, sorted_roots[1:] != sorted_roots[:-1]])
    sizes = np.diff(np.r_[starts, h.size])
    groups = [order[s:s + z].tolist() for s, z in zip(starts.tolist(), sizes.tolist()) if z >= 2]
    groups.sort(key=lambda g: g[0])
    return groups


def all_pairs_neighbours(hashes: Sequence[int] | np.ndarray, distance: int) -> np.ndarray:
    """The pairs of :func:`neighbours`, by comparing every pair (``n * (n - 1) / 2`` popcounts,
    in blocks of rows so that memory stays bounded). The baseline and the tests' reference."""
    h = _as_hashes(hashes)
    d = _check_distance(distance)
    return _all_pairs(h, d)


def _as_hashes(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    """``hashes`` as a 1-D ``uint64`` array."""
    if isinstance(hashes, np.ndarray):
        if hashes.dtype.kind == "i":
            return hashes.astype(np.int64, copy=False).view(np.uint64).ravel()
        if hashes.dtype.kind == "u":
            return hashes.astype(np.uint64, copy=False).ravel()
        if hashes.dtype == object:
            hashes = hashes.tolist()
        else:
            raise ValueError(f"hashes must be integers, not {hashes.dtype}")
    try:
        return np.asarray(hashes, dtype=np.uint64).ravel()
    except (OverflowError, TypeError) as exc:
        raise ValueError("hashes must be integers in [0, 2**64)") from exc


def _check_distance(distance: int) -> int:
    d = operator.index(distance)
    if d < 0:
        raise ValueError(f"distance must be >= 0, not {d}")
    return d


def _all_pairs(h: np.ndarray, d: int) -> np.ndarray:
    """Pairs ``i < j`` of ``h`` within ``d`` bits, sorted, comparing tiles of rows and columns
    small enough to stay in the CPU's cache."""
    n = h.size
    found = []
    for i in range(0, n - 1, _TILE_ROWS):
        rows = h[i:i + _TILE_ROWS, None]
        for j in range(i, n, _TILE_COLUMNS):
            cols = h[None, j:j + _TILE_COLUMNS]
            close = np.bitwise_count(rows ^ cols) <= d
            if j < i + rows.shape[0]:  # the tile crosses the diagonal: j > i only
                close &= np.arange(j, j + cols.shape[1])[None, :] > np.arange(i, i + rows.shape[0])[:, None]
            if close.any():
                r, c = np.nonzero(close)
                found.append(np.stack([r + i, c + j], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    out = np.concatenate(found).astype(np.int64, copy=False)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def _distinct_pairs(values: np.ndarray, d: int, using: Plan | None = None) -> np.ndarray:
    """Pairs ``u < v`` of the sorted distinct ``values`` within ``d`` bits, sorted."""
    n = values.size
    if n < 2 or d == 0:
        return np.empty((0, 2), dtype=np.int64)
    p = plan(n, d) if using is None else using
    if not p.all_pairs and (len(p.bands) * (2 * p.rho + 1) <= d or sum(p.bands) != BITS or max(p.bands) > 32):
        raise ValueError(f"{p.describe()} cannot find every pair within {d} bits")
    if p.all_pairs:
        return _all_pairs(values, d)
    found: list[np.ndarray] = []  # pair codes u * n + v
    shift = BITS
    for b in p.bands:
        shift -= b
        keys = ((values >> np.uint64(shift)) & np.uint64((1 << b) - 1)).astype(np.uint32)
        # The band's work is done on the values sorted by the band's key: then the values an
        # entry key meets lie in a few runs of neighbouring indices, which the cache likes.
        order = None if shift + b == BITS else np.argsort(keys)
        if order is None:  # the first band: values are sorted, so its keys are too
            codes = _band_pairs(values, keys, b, p.rho, d)
        else:
            codes = _band_pairs(values[order], keys[order], b, p.rho, d)
            for i, c in enumerate(codes):  # back to indices of `values`
                u, v = order[c // np.uint64(n)], order[c % np.uint64(n)]
                codes[i] = np.minimum(u, v).astype(np.uint64) * np.uint64(n) + np.maximum(u, v).astype(np.uint64)
        found.extend(codes)
        if len(found) > 1:  # keep memory to the distinct pairs
            found = [np.unique(np.concatenate(found))]
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1).astype(np.int64)


@cache
def _masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-bit mask with at most ``radius`` ones, as ``uint32``, 0 first."""
    out = [0]
    for r in range(1, min(radius, bits) + 1):
        for ones in combinations(range(bits), r):
            out.append(sum(1 << o for o in ones))
    return np.array(out, dtype=np.uint32)


def _band_pairs(values: np.ndarray, keys: np.ndarray, b: int, rho: int, d: int) -> list[np.ndarray]:
    """Codes ``u * n + v`` of the pairs ``u < v`` within ``d`` bits among those whose ``b``-bit
    band ``keys`` (sorted) are within ``2 * rho`` bits (some pairs more than once).

    An entry is ``key << 32 | u``: value ``u``'s band key with at most ``rho`` bits flipped. The
    entries are built and sorted one partition of the key space at a time, the partition being
    the top ``t`` bits of the entry's key: an entry of ``u`` lands in partition ``P`` when the
    top bits of ``u``'s key are ``|f| <= rho`` bits from ``P`` and at most ``rho - |f|`` of its
    low bits are flipped.
    """
    n = values.size
    total = n * _ball(b, rho)
    t = min(b, max(0, math.ceil(math.log2(max(total / _PARTITION_ENTRIES, 1)))))
    low_bits = b - t
    hi = keys >> np.uint32(low_bits) if t else np.zeros(n, dtype=np.uint32)
    lo = keys & np.uint32((1 << low_bits) - 1) if low_bits < 32 else keys
    entry_base = (lo.astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    bounds = np.searchsorted(hi, np.arange((1 << t) + 1, dtype=np.uint64)).tolist()
    hi_masks = _masks(t, rho).tolist()
    hi_weights = [m.bit_count() for m in hi_masks]
    flips = [_masks(low_bits, r).astype(np.uint64) << np.uint64(32) for r in range(rho + 1)]
    found: list[np.ndarray] = []
    for part in range(1 << t):
        blocks, size = [], 0
        for f, w in zip(hi_masks, hi_weights):
            lo_i, hi_i = bounds[part ^ f], bounds[(part ^ f) + 1]
            if hi_i > lo_i:
                blocks.append((lo_i, hi_i, flips[rho - w]))
                size += (hi_i - lo_i) * flips[rho - w].size
        if size < 2:
            continue
        entries = np.empty(size, dtype=np.uint64)
        pos = 0
        for lo_i, hi_i, flip in blocks:
            block = entries[pos:pos + (hi_i - lo_i) * flip.size].reshape(hi_i - lo_i, flip.size)
            np.bitwise_xor(entry_base[lo_i:hi_i, None], flip[None, :], out=block)
            pos += block.size
        del blocks
        entries.sort()
        codes = _matching_pairs(entries, values, d)
        del entries
        if codes.size:
            found.append(codes)
    return found


def _matching_pairs(entries: np.ndarray, values: np.ndarray, d: int) -> np.ndarray:
    """Codes ``u * n + v`` (``u < v``, ``n = values.size``) of the value pairs within ``d`` bits
    that share a key in the sorted ``entries`` (``key << 32 | u``)."""
    n = np.uint64(values.size)
    low32 = np.uint64(0xFFFFFFFF)
    change = (entries[1:] ^ entries[:-1]) > low32  # the key changes after this entry
    changes = int(np.count_nonzero(change))
    if changes == change.size:
        return np.empty(0, dtype=np.uint64)
    if 2 * changes < change.size:  # mostly groups: find them by where keys change
        starts = np.r_[0, np.flatnonzero(change) + 1]
        sizes = np.diff(np.r_[starts, entries.size])
        starts, sizes = starts[sizes >= 2], sizes[sizes >= 2]
    else:  # mostly single entries: find the entries that have a same-key successor
        p = np.flatnonzero(~change)  # a run of k of them is a group of k + 1
        run = np.flatnonzero(np.r_[True, p[1:] != p[:-1] + 1])
        starts = p[run]
        sizes = np.diff(np.r_[run, p.size]) + 1
        del p, run
    del change
    # Groups by size (a radix sort of small integers); groups above _BIG_GROUP come last.
    size_class = np.minimum(sizes, _BIG_GROUP + 1).astype(np.uint8)
    by_size = np.argsort(size_class, kind="stable")
    starts, sizes, size_class = starts[by_size], sizes[by_size], size_class[by_size]
    edges = np.r_[0, np.flatnonzero(size_class[1:] != size_class[:-1]) + 1, sizes.size].tolist()
    found = []
    for lo_edge, hi_edge in pairwise(edges):
        size = int(sizes[lo_edge])
        first = starts[lo_edge:hi_edge]
        if size > _BIG_GROUP:  # few and large: all pairs of each group, in blocks
            for s, size in zip(first.tolist(), sizes[lo_edge:hi_edge].tolist()):
                ids = (entries[s:s + size] & low32).astype(np.intp)
                pairs = _all_pairs(values[ids], d)
                if pairs.size:
                    found.append(ids[pairs[:, 0]].astype(np.uint64) * n + ids[pairs[:, 1]].astype(np.uint64))
            continue
        # Groups of one size side by side: compare each member with the one `step` places on.
        # Members are sorted by value index, so the left one of a pair is the smaller.
        # Done in chunks of rows that stay in the CPU's cache: a pass over an array in memory
        # costs three times as much here.
        ids = (entries[first[:, None] + np.arange(size)] & low32).astype(np.intp)
        hashes = values[ids]
        if first.size * size * size <= _CACHE_ELEMENTS:  # few groups: every pair at once
            close = np.bitwise_count(hashes[:, :, None] ^ hashes[:, None, :]) <= d
            close &= np.arange(size)[:, None] < np.arange(size)[None, :]
            if close.any():
                g, r, c = np.nonzero(close)
                found.append(ids[g, r].astype(np.uint64) * n + ids[g, c].astype(np.uint64))
            continue
        rows = max(1, _CACHE_ELEMENTS // size)
        for r0 in range(0, first.size, rows):
            hv = hashes[r0:r0 + rows]
            for step in range(1, size):
                close = np.bitwise_count(hv[:, :-step] ^ hv[:, step:]) <= d
                if close.any():
                    r, c = np.nonzero(close)
                    r += r0
                    found.append(ids[r, c].astype(np.uint64) * n + ids[r, c + step].astype(np.uint64))
    if not found:
        return np.empty(0, dtype=np.uint64)
    return np.concatenate(found)


def _expand_pairs(pairs: np.ndarray, inverse: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pairs of input indices from pairs of distinct values: every index with a value of the
    pair, and every two indices of one value. Sorted by first index, then second."""
    inverse = inverse.ravel()
    if np.all(counts == 1):
        first = np.empty(counts.size, dtype=np.int64)
        first[inverse] = np.arange(inverse.size)
        out = first[pairs]
    else:
        members = np.argsort(inverse, kind="stable")  # indices grouped by value, ascending
        start = np.r_[0, np.cumsum(counts)[:-1]]
        chunks = []
        # Between two values: every member of one with every member of the other.
        cu, cv = counts[pairs[:, 0]], counts[pairs[:, 1]]
        total = cu * cv
        which = np.repeat(np.arange(pairs.shape[0]), total)
        rank = np.arange(total.sum()) - np.repeat(np.cumsum(total) - total, total)
        a = members[start[pairs[which, 0]] + rank // cv[which]]
        b = members[start[pairs[which, 1]] + rank % cv[which]]
        chunks.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        # Within one value (identical hashes): every two members.
        multi = np.flatnonzero(counts >= 2)
        sq = counts[multi] ** 2
        which = np.repeat(multi, sq)
        rank = np.arange(sq.sum()) - np.repeat(np.cumsum(sq) - sq, sq)
        ia, ib = rank // counts[which], rank % counts[which]
        keep = ia < ib
        a = members[start[which[keep]] + ia[keep]]
        b = members[start[which[keep]] + ib[keep]]
        chunks.append(np.stack([a, b], axis=1))  # members ascending, so a < b
        out = np.concatenate(chunks).astype(np.int64)
    if out.shape[0]:
        out = np.stack([out.min(axis=1), out.max(axis=1)], axis=1)
        out = out[np.lexsort((out[:, 1], out[:, 0]))]
    return out.reshape(-1, 2).astype(np.int64, copy=False)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by ``pairs``: per node, the smallest node of
    its component. Union-find in numpy: hook every edge's larger root to its smaller root, then
    compress paths fully; repeat with the edges still between two roots."""
    parent = np.arange(n, dtype=np.int64)
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    while a.size:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        low, high = np.minimum(ra, rb), np.maximum(ra, rb)
        np.minimum.at(parent, high, low)  # high is a root: parents only ever decrease
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def phash_images(model: None, images: list[np.ndarray]) -> list[Output]:
    """The pipeline's step: each image's :func:`phash`, as :func:`phash_hex` text. There is no model."""
    return [Output(phash_hex(phash(image))) for image in images]
