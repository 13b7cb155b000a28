"""tasks.normalize: lesson 2's figures, checked against plain float64 numpy, and the modes' names."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
from skimage import data

from tasks.normalize import (
    MODES,
    NormalizationReport,
    Stats,
    apply,
    normalize_many,
    normalize_stats,
    parse_mode,
    report_lines,
)


def rgb_sample() -> np.ndarray:
    """Channels with different ranges, so global and per-channel results differ; has 0 and 255."""
    rng = np.random.default_rng(7)
    image = np.empty((37, 53, 3), np.uint8)
    image[..., 0] = rng.integers(0, 51, image.shape[:2])
    image[..., 1] = rng.integers(100, 256, image.shape[:2])
    image[..., 2] = rng.integers(0, 256, image.shape[:2])
    image[0, 0, 0], image[0, 1, 1] = 0, 255
    return image


def gray_sample() -> np.ndarray:
    return np.random.default_rng(3).integers(10, 200, (41, 29)).astype(np.uint8)


def reference(image: np.ndarray, mode: str, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, normalized)`` straight from the definitions, as float64 HxWxC arrays."""
    x = image.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    axes = (0, 1) if per_channel else None
    if mode == "scale":
        y = x / 255.0
    elif mode == "center":
        y = x - x.mean(axis=axes)
    else:
        std = x.std(axis=axes)
        y = (x - x.mean(axis=axes)) / np.where(std == 0, 1.0, std)
    return x, y


def expected(image: np.ndarray, mode: str, per_channel: bool) -> tuple[dict, dict]:
    """Before/after statistics of :func:`reference`."""
    x, y = reference(image, mode, per_channel)

    def stats(a: np.ndarray) -> dict:
        return {"min": a.min(), "max": a.max(), "mean": a.mean(axis=(0, 1)), "std": a.std(axis=(0, 1)),
                "mean_all": a.mean(), "std_all": a.std()}

    return stats(x), stats(y)


def assert_stats(got: Stats, want: dict, *, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    for key, value in want.items():
        np.testing.assert_allclose(np.asarray(getattr(got, key), dtype=np.float64), value, rtol=rtol, atol=atol,
                                   err_msg=key)
    assert len(got.mean) == len(got.std) == len(np.atleast_1d(want["mean"]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("make", [rgb_sample, gray_sample], ids=["rgb", "gray"])
def test_figures_match_numpy(mode, per_channel, make):
    image = make()
    report = normalize_stats(image, mode, per_channel)
    want_before, want_after = expected(image, mode, per_channel)
    assert (report.mode, report.per_channel, report.dtype) == (mode, per_channel, "uint8")
    assert_stats(report.before, want_before)
    assert_stats(report.after, want_after)
    # apply() gives the pixels the report describes (float32: allow its rounding).
    values = apply(image, mode, per_channel)
    assert values.dtype == np.float32 and values.shape == image.shape
    np.testing.assert_allclose(values, reference(image, mode, per_channel)[1].reshape(image.shape),
                               rtol=1e-6, atol=3e-5)


def test_per_channel_really_differs():
    image = rgb_sample()
    glob = normalize_stats(image, "center", per_channel=False)
    chan = normalize_stats(image, "center", per_channel=True)
    assert glob.after.mean != chan.after.mean
    assert all(abs(m) < 1e-9 for m in chan.after.mean)
    assert abs(glob.after.mean_all) < 1e-9 and abs(chan.after.mean_all) < 1e-9


@pytest.mark.parametrize("per_channel", [False, True])
def test_constant_image_standardizes_to_zero(per_channel):
    image = np.full((16, 16, 3), 77, np.uint8)
    report = normalize_stats(image, "standardize", per_channel)
    after = report.after
    assert (after.min, after.max, after.mean_all, after.std_all) == (0.0, 0.0, 0.0, 0.0)
    assert after.mean == (0.0, 0.0, 0.0) and after.std == (0.0, 0.0, 0.0)
    assert report.before.std == (0.0, 0.0, 0.0)
    values = apply(image, "standardize", per_channel)
    assert np.isfinite(values).all() and not values.any()
    json.dumps(report.to_dict(), allow_nan=False)


def test_one_flat_channel_per_channel_standardize():
    image = rgb_sample()
    image[..., 2] = 9
    report = normalize_stats(image, "standardize", per_channel=True)
    assert report.after.std[2] == 0.0 and report.after.mean[2] == 0.0
    assert report.after.std[0] == pytest.approx(1.0) and report.after.std[1] == pytest.approx(1.0)
    assert_stats(report.after, expected(image, "standardize", True)[1])


def test_lesson_printout_for_scale():
    image = rgb_sample()  # contains 0 and 255
    assert report_lines(normalize_stats(image, "scale")) == [
        "Data Type: uint8",
        "Min: 0.000, Max: 255.000",
        "Min: 0.000, Max: 1.000",
    ]


def test_printout_for_center_and_standardize():
    image = np.array([[0, 255], [255, 0]], np.uint8)  # mean 127.5, std 127.5
    assert report_lines(normalize_stats(image, "center")) == [
        "Data Type: uint8",
        "Min: 0.000, Max: 255.000",
        "Mean: 127.500",
        "Mean: 0.000",
        "Min: -127.500, Max: 127.500",
    ]
    lines = report_lines(normalize_stats(image, "standardize", per_channel=True))
    assert lines[2] == "Means: [127.500], Standard Deviations: [127.500]"
    assert lines[3] == "Means: [0.000], Standard Deviations: [1.000]"
    assert lines[4] == "Min: -1.000, Max: 1.000"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_astronaut_report_matches_apply(mode, per_channel):
    image = data.astronaut()
    report = normalize_stats(image, mode, per_channel)
    values = apply(image, mode, per_channel).astype(np.float64)
    # apply() is float32: allow its rounding, 1e-6 relative to the values' magnitude.
    tol = 1e-6 * max(1.0, float(np.abs(values).max()))
    after = report.after
    assert after.min == pytest.approx(values.min(), abs=tol)
    assert after.max == pytest.approx(values.max(), abs=tol)
    np.testing.assert_allclose(after.mean, values.mean(axis=(0, 1)), atol=tol)
    np.testing.assert_allclose(after.std, values.std(axis=(0, 1)), atol=tol)
    assert after.mean_all == pytest.approx(values.mean(), abs=tol)
    assert after.std_all == pytest.approx(values.std(), abs=tol)


def test_to_dict_is_plain_json():
    report = normalize_stats(data.astronaut(), "scale")
    doc = report.to_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert set(doc) == {"mode", "per_channel", "dtype", "before", "after"}
    assert doc["dtype"] == "uint8" and doc["before"]["max"] == 255.0 and doc["after"]["max"] == 1.0
    assert len(doc["after"]["mean"]) == len(doc["after"]["std"]) == 3
    for value in doc["after"]["mean"] + doc["after"]["std"]:
        assert type(value) is float
        assert value == float(f"{value:.6g}")  # 6 significant digits
    assert doc["after"]["mean"][0] == pytest.approx(report.after.mean[0], rel=1e-5)
    assert isinstance(report, NormalizationReport)


def test_no_float_copy_of_the_image():
    image = np.random.default_rng(0).integers(0, 256, (1000, 2000, 3), dtype=np.uint8)  # 6 MB
    tracemalloc.start()
    try:
        normalize_stats(image, "standardize", per_channel=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * image.nbytes  # a float64 copy alone would be 8x


def test_non_contiguous_input():
    image = rgb_sample()[::2, ::3]
    assert_stats(normalize_stats(image, "standardize").after, expected(image, "standardize", False)[1])


def test_bad_mode():
    with pytest.raises(ValueError, match="scale, center, standardize"):
        normalize_stats(rgb_sample(), "whiten")


def test_std_is_population():
    image = np.array([[0, 2]], np.uint8)
    assert normalize_stats(image, "center").before.std_all == 1.0  # ddof=0; ddof=1 gives sqrt(2)
    assert math.isclose(normalize_stats(image, "scale").after.std_all, 1 / 255)


def test_normalize_many_counts_once_and_matches_each_mode():
    pixels = data.astronaut()
    modes = [("scale", False), ("center", True), ("standardize", False)]
    assert [r.to_dict() for r in normalize_many(pixels, modes)] == \
        [normalize_stats(pixels, m, pc).to_dict() for m, pc in modes]


@pytest.mark.parametrize("text, expected", [
    ("scale", ("scale", False)), ("center", ("center", False)), ("Standardize:per_channel", ("standardize", True)),
    ("center:per-channel", ("center", True)),
])
def test_parse_mode(text, expected):
    assert parse_mode(text) == expected
