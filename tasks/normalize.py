"""Lesson 2, preparing image data: pixel statistics before and after normalization.

The lesson names three ways to prepare pixels for a model:

- ``scale``: divide by 255, so values run 0..1;
- ``center``: subtract the mean, so values are centred on zero;
- ``standardize``: subtract the mean and divide by the standard deviation.

Centering and standardizing use one mean (and deviation) for the whole image, or one per channel
with ``per_channel=True``. They work in pixel units (0..255), as in the course.

:func:`normalize_stats` is cheap: for ``uint8`` images it counts a 256-bin histogram per channel
(in bounded chunks), which gives min, max, sum and sum of squares exactly as integers, and derives
every "after" figure algebraically, since each mode is an affine map per channel. No float copy of
the image is made. :func:`apply` makes the actual float32 array when one is wanted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.base import Output

__all__ = [
    "MODES",
    "NormalizationReport",
    "Stats",
    "apply",
    "format_mode",
    "normalize_many",
    "normalize_stats",
    "parse_mode",
    "report_lines",
]

MODES = ("scale", "center", "standardize")

# Pixels per bincount call: bincount casts to intp, so this bounds the temporary (8 MiB).
_CHUNK_PIXELS = 1 << 20


@dataclass(frozen=True)
class Stats:
    """Pixel statistics of one image (or of its normalized version).

    Attributes:
        min: Smallest value over all channels.
        max: Largest value over all channels.
        mean: Mean of each channel, one value per channel (a single value for grayscale).
        std: Population standard deviation (ddof=0) of each channel.
        mean_all: Mean over all values of all channels.
        std_all: Population standard deviation over all values of all channels.
    """

    min: float
    max: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mean_all: float
    std_all: float

    def to_dict(self) -> dict:
        """Plain JSON-serialisable figures (lists, floats rounded to 6 significant digits)."""
        return {
            "min": _round(self.min),
            "max": _round(self.max),
            "mean": [_round(v) for v in self.mean],
            "std": [_round(v) for v in self.std],
            "mean_all": _round(self.mean_all),
            "std_all": _round(self.std_all),
        }


@dataclass(frozen=True)
class NormalizationReport:
    """The figures the lesson asks for: the data type, and statistics before and after.

    Attributes:
        mode: One of :data:`MODES`.
        per_channel: Whether center/standardize used per-channel means (and deviations).
        dtype: The input's numpy dtype name, e.g. "uint8".
        before: Statistics of the input pixels.
        after: Statistics of the normalized pixels.
    """

    mode: str
    per_channel: bool
    dtype: str
    before: Stats
    after: Stats

    def to_dict(self) -> dict:
        """A JSON-serialisable dict: ``mode``, ``per_channel``, ``dtype``, ``before``, ``after``."""
        return {
            "mode": self.mode,
            "per_channel": self.per_channel,
            "dtype": self.dtype,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


@dataclass(frozen=True)
class _Channels:
    """Exact-as-possible per-channel moments: the input to every derived figure."""

    n: int  # values per channel
    min: tuple[float, ...]
    max: tuple[float, ...]
    mean: tuple[float, ...]
    var: tuple[float, ...]  # population variance


def normalize_stats(image: np.ndarray, mode: str = "scale", per_channel: bool = False) -> NormalizationReport:
    """Statistics of ``image`` before and after normalizing it with ``mode``.

    Args:
        image: ``HxW`` (grayscale) or ``HxWxC`` pixels; ``uint8`` takes the exact, cheap path.
        mode: "scale" (pixels / 255), "center" (pixels - mean) or "standardize"
            ((pixels - mean) / std).
        per_channel: For center/standardize, use each channel's own mean and std instead of
            the image's. Ignored by "scale", which is the same either way.

    Returns:
        The report. For "scale" its ``after.mean``/``after.std`` are the per-channel mean and
        std of the scaled (0..1) image.
    """
    _check_mode(mode)
    channels = _moments(image)
    return _report(image, channels, _stats(channels), mode, per_channel)


def normalize_many(image: np.ndarray, modes: Sequence[tuple[str, bool]]) -> list[NormalizationReport]:
    """One report per ``(mode, per_channel)`` pair, as :func:`normalize_stats` gives them, for the
    cost of one: the image's pixels are counted once and every mode is derived from the counts.

    Args:
        image: As for :func:`normalize_stats`.
        modes: ``(mode, per_channel)`` pairs, e.g. ``[("scale", False), ("standardize", True)]``.

    Returns:
        The reports, in the order of ``modes``.
    """
    for mode, _ in modes:
        _check_mode(mode)
    channels = _moments(image)
    before = _stats(channels)
    return [_report(image, channels, before, mode, per_channel) for mode, per_channel in modes]


def normalize_reports(model: None, images: list[np.ndarray], *, modes: Sequence[str] = ()) -> list[Output]:
    """The pipeline's step (lesson 2): for each image, the ``scale`` report (always first: the
    results' ``normalize``) and one for each of ``modes`` (as :func:`parse_mode` reads them), as
    plain data. There is no model."""
    pairs = [("scale", False)]
    for text in modes:
        pair = parse_mode(text)
        if pair not in pairs:
            pairs.append(pair)
    return [Output([report.to_dict() for report in normalize_many(image, pairs)]) for image in images]


def parse_mode(text: str) -> tuple[str, bool]:
    """Read a mode as settings and the CLI write it: ``"scale"``, ``"center"``, ``"standardize"``,
    each optionally followed by ``":per_channel"`` (``"standardize:per_channel"``).

    Raises:
        ValueError: An unknown mode or suffix, or ``scale:per_channel`` (scaling is the same for
            every channel, so it has no per-channel variant).
    """
    mode, sep, suffix = (part.strip().lower() for part in str(text).partition(":"))
    _check_mode(mode)
    if sep and suffix.replace("-", "_") not in ("per_channel", "channel", "channels"):
        raise ValueError(f"unknown normalization variant {suffix!r} in {text!r}: write {mode} or {mode}:per_channel")
    per_channel = bool(sep)
    if per_channel and mode == "scale":
        raise ValueError("'scale:per_channel' means nothing: dividing by 255 is the same for every channel; "
                         "write scale, center[:per_channel] or standardize[:per_channel]")
    return mode, per_channel


def format_mode(mode: str, per_channel: bool) -> str:
    """The inverse of :func:`parse_mode`: ``"standardize:per_channel"``, ``"scale"``."""
    return f"{mode}:per_channel" if per_channel else mode


def apply(image: np.ndarray, mode: str = "scale", per_channel: bool = False) -> np.ndarray:
    """The normalized pixels themselves, as :func:`normalize_stats` describes them.

    Args:
        image: ``HxW`` or ``HxWxC`` pixels.
        mode: One of :data:`MODES`.
        per_channel: As for :func:`normalize_stats`.

    Returns:
        A float32 array of the input's shape. Unlike :func:`normalize_stats` this allocates a
        full float copy of the image.
    """
    _check_mode(mode)
    channels = _moments(image)
    shift, divisor = _transform(channels, _stats(channels), mode, per_channel)
    values = image.astype(np.float64)
    if image.ndim == 2:
        values = (values - shift[0]) / divisor[0]
    else:
        values = (values - np.asarray(shift)) / np.asarray(divisor)
    return values.astype(np.float32)


def report_lines(report: NormalizationReport) -> list[str]:
    """The lesson's printout for ``report``.

    For "scale" these are exactly the lesson's three lines::

        Data Type: uint8
        Min: 0.000, Max: 255.000
        Min: 0.000, Max: 1.000

    For "center" the mean(s) before and after come between; for "standardize" the mean(s) and
    standard deviation(s).
    """
    before, after = report.before, report.after
    lines = [f"Data Type: {report.dtype}", _min_max(before)]
    if report.mode == "center":
        lines += [_means(before, report.per_channel), _means(after, report.per_channel)]
    elif report.mode == "standardize":
        lines += [_means_stds(before, report.per_channel), _means_stds(after, report.per_channel)]
    lines.append(_min_max(after))
    return lines


# --- internals -----------------------------------------------------------------------------------


def _report(image: np.ndarray, channels: _Channels, before: Stats, mode: str, per_channel: bool) -> NormalizationReport:
    shift, divisor = _transform(channels, before, mode, per_channel)
    after = _stats(_Channels(
        n=channels.n,
        min=tuple((lo - s) / d for lo, s, d in zip(channels.min, shift, divisor)),
        max=tuple((hi - s) / d for hi, s, d in zip(channels.max, shift, divisor)),
        mean=tuple((m - s) / d for m, s, d in zip(channels.mean, shift, divisor)),
        var=tuple(v / (d * d) for v, d in zip(channels.var, divisor)),
    ))
    return NormalizationReport(mode=mode, per_channel=bool(per_channel), dtype=image.dtype.name,
                               before=before, after=after)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown normalization mode {mode!r}: use one of {', '.join(MODES)}")


def _as_channels(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.size == 0:
        raise ValueError(f"expected a non-empty HxW or HxWxC image, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"expected integer or float pixels, got {image.dtype}")
    return image


def _moments(image: np.ndarray) -> _Channels:
    pixels = _as_channels(image)
    if pixels.dtype == np.uint8:
        return _moments_uint8(pixels)
    # Other dtypes are rare here (decode gives uint8): plain float64 arithmetic, with a copy.
    h, w, c = pixels.shape
    values = pixels.reshape(h * w, c).astype(np.float64)
    return _Channels(
        n=h * w,
        min=tuple(float(v) for v in values.min(axis=0)),
        max=tuple(float(v) for v in values.max(axis=0)),
        mean=tuple(float(v) for v in values.mean(axis=0)),
        var=tuple(float(v) for v in values.var(axis=0)),
    )


def _moments_uint8(pixels: np.ndarray) -> _Channels:
    h, w, c = pixels.shape
    counts = np.zeros((c, 256), dtype=np.int64)
    rows = max(1, _CHUNK_PIXELS // w)
    for top in range(0, h, rows):
        block = pixels[top : top + rows].reshape(-1, c)
        for ch in range(c):
            counts[ch] += np.bincount(block[:, ch], minlength=256)
    levels = np.arange(256, dtype=np.int64)
    n = h * w
    mins, maxs, means, variances = [], [], [], []
    for hist in counts:
        present = np.flatnonzero(hist)
        # Python ints: exact however large the image (255**2 * n overflows nothing).
        s1 = int(hist @ levels)
        s2 = int(hist @ (levels * levels))
        mins.append(float(present[0]))
        maxs.append(float(present[-1]))
        means.append(s1 / n)
        variances.append((n * s2 - s1 * s1) / (n * n))
    return _Channels(n=n, min=tuple(mins), max=tuple(maxs), mean=tuple(means), var=tuple(variances))


def _stats(ch: _Channels) -> Stats:
    # Every channel has the same number of values, so the global figures are plain averages:
    # total variance = mean within-channel variance + variance of the channel means.
    mean_all = math.fsum(ch.mean) / len(ch.mean)
    var_all = math.fsum(v + (m - mean_all) ** 2 for m, v in zip(ch.mean, ch.var)) / len(ch.mean)
    return Stats(
        min=min(ch.min),
        max=max(ch.max),
        mean=ch.mean,
        std=tuple(math.sqrt(max(v, 0.0)) for v in ch.var),
        mean_all=mean_all,
        std_all=math.sqrt(max(var_all, 0.0)),
    )


def _transform(
    ch: _Channels, before: Stats, mode: str, per_channel: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(shift, divisor)`` such that normalized = (pixels - shift) / divisor."""
    k = len(ch.mean)
    if mode == "scale":
        return (0.0,) * k, (255.0,) * k
    if per_channel:
        shift, std = before.mean, before.std
    else:
        shift, std = (before.mean_all,) * k, (before.std_all,) * k
    if mode == "center":
        return shift, (1.0,) * k
    # A constant image (std 0) standardizes to all zeros: dividing (pixels - mean) = 0 by 1.
    return shift, tuple(s if s > 0.0 else 1.0 for s in std)


def _round(value: float) -> float:
    return float(f"{value:.6g}") + 0.0  # + 0.0 turns -0.0 into 0.0


def _f3(value: float) -> str:
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text  # a mean of -1e-15 is printed as 0


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(_f3(v) for v in values) + "]"


def _min_max(stats: Stats) -> str:
    return f"Min: {_f3(stats.min)}, Max: {_f3(stats.max)}"


def _means(stats: Stats, per_channel: bool) -> str:
    return f"Means: {_fmt(stats.mean)}" if per_channel else f"Mean: {_f3(stats.mean_all)}"


def _means_stds(stats: Stats, per_channel: bool) -> str:
    if per_channel:
        return f"Means: {_fmt(stats.mean)}, Standard Deviations: {_fmt(stats.std)}"
    return f"Mean: {_f3(stats.mean_all)}, Standard Deviation: {_f3(stats.std_all)}"
