"""tasks.augment: lesson 6's flipped, rotated, sheared and channel-shifted copies, reproducible, the
spec string that describes them, and their contact sheet."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from skimage import data

from tasks.augment import AugmentSpec, augment, contact_sheet, parse_spec
from tasks.imaging import fit_within
from tests.harness import ROOT


def digest(images: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for img in images:
        h.update(repr(img.shape).encode())
        h.update(img.tobytes())
    return h.hexdigest()


def test_shapes_dtype_count(tall):
    images = augment(tall, AugmentSpec(count=5, size=128))
    assert len(images) == 5
    for img in images:
        assert img.shape == (128, 96, 3) and img.dtype == np.uint8 and img.flags.c_contiguous


def test_default_is_the_lesson(astronaut):
    images = augment(astronaut)
    assert len(images) == 9 and all(img.shape == (256, 256, 3) for img in images)
    # Nine random flips and rotations of up to 90 degrees: no two alike, none the original.
    small = fit_within(astronaut, 256)
    assert all(not np.array_equal(img, small) for img in images)
    assert len({img.tobytes() for img in images}) == 9


def test_same_spec_same_images(astronaut):
    spec = AugmentSpec(seed=5, zoom=0.2, width_shift=0.1, height_shift=0.1, brightness=0.2, contrast=0.2)
    first, second = augment(astronaut, spec), augment(astronaut, spec)
    assert digest(first) == digest(second)
    # Another spec in between (sharing layers with nothing) changes nothing either.
    augment(astronaut, AugmentSpec(seed=6))
    assert digest(augment(astronaut, spec)) == digest(first)


def test_same_images_in_a_fresh_process(astronaut):
    code = (
        "import hashlib; from skimage import data; from tasks.augment import augment, AugmentSpec; "
        "h = hashlib.sha256(); "
        "images = augment(data.astronaut(), AugmentSpec(seed=3)); "
        "[(h.update(repr(i.shape).encode()), h.update(i.tobytes())) for i in images]; "
        "print(h.hexdigest())"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == digest(augment(astronaut, AugmentSpec(seed=3)))


def test_different_seeds_differ(astronaut):
    a, b = augment(astronaut, AugmentSpec(seed=1)), augment(astronaut, AugmentSpec(seed=2))
    assert all(not np.array_equal(x, y) for x, y in zip(a, b))


def test_nothing_enabled_gives_the_resized_input(tall):
    images = augment(tall, AugmentSpec(flip="none", rotation=0, count=4))
    expected = fit_within(tall, 256)
    assert len(images) == 4
    assert all(np.array_equal(img, expected) for img in images)
    images[0][0, 0] = 0  # copies, not one shared array
    assert not np.shares_memory(images[0], images[1])


def test_flip_only_gives_flips(tall):
    small = fit_within(tall, 256)
    images = augment(tall, AugmentSpec(flip="horizontal", rotation=0, count=12))
    mirrored = small[:, ::-1]
    kinds = ["same" if np.array_equal(i, small) else "mirror" if np.array_equal(i, mirrored) else "other"
             for i in images]
    assert "other" not in kinds and {"same", "mirror"} == set(kinds)
    both = augment(tall, AugmentSpec(flip="horizontal_and_vertical", rotation=0, count=16, seed=1))
    # Independent flips, as ImageDataGenerator(horizontal_flip=True, vertical_flip=True): all 4 kinds.
    refs = {"id": small, "h": small[:, ::-1], "v": small[::-1], "hv": small[::-1, ::-1]}
    kinds = {next(k for k, ref in refs.items() if np.array_equal(img, ref)) for img in both}
    assert kinds == {"id", "h", "v", "hv"}


def test_rotation_only_keeps_size_and_changes_pixels(tall):
    small = fit_within(tall, 256)
    images = augment(tall, AugmentSpec(flip="none", rotation=30, count=3))
    assert all(img.shape == small.shape and not np.array_equal(img, small) for img in images)
    # A rotation about the centre keeps the centre pixel's neighbourhood roughly in place.
    cy, cx = small.shape[0] // 2, small.shape[1] // 2
    for img in images:
        assert np.abs(img[cy, cx].astype(int) - small[cy, cx].astype(int)).max() < 40


def rotation_angles(degrees: float, count: int = 9) -> list[float]:
    """Angles (degrees) by which augment turned a white blob 40 px right of the centre."""
    image = np.zeros((101, 101, 3), np.uint8)
    image[48:53, 88:93] = 255
    angles = []
    for out in augment(image, AugmentSpec(flip="none", rotation=degrees, count=count)):
        ys, xs = np.nonzero(out[..., 0] > 127)
        angles.append(float(np.degrees(np.arctan2(ys.mean() - 50, xs.mean() - 50))))
    return angles


def test_rotation_range_is_degrees_either_way():
    small = rotation_angles(10)
    assert max(abs(a) for a in small) <= 10 + 1.5  # within the range (blob centroid is approximate)
    assert max(abs(a) for a in small) > 3
    assert any(a > 0 for a in small) and any(a < 0 for a in small)
    large = rotation_angles(90, count=16)
    assert max(abs(a) for a in large) <= 90 + 1.5 and max(abs(a) for a in large) > 45


def test_grayscale_input(astronaut):
    images = augment(data.camera(), AugmentSpec(count=2))
    assert all(img.shape == (256, 256, 3) for img in images)


def test_contact_sheet_geometry():
    tiles = [np.full((20, 30, 3), i * 20, np.uint8) for i in range(9)]
    sheet = contact_sheet(tiles, cols=3, pad=4)
    assert sheet.shape == (3 * 20 + 4 * 4, 3 * 30 + 4 * 4, 3) and sheet.dtype == np.uint8
    for i in range(9):
        row, col = divmod(i, 3)
        top, left = 4 + row * 24, 4 + col * 34
        assert (sheet[top : top + 20, left : left + 30] == i * 20).all()
    assert (sheet[:4] == 255).all() and (sheet[:, :4] == 255).all() and (sheet[24:28] == 255).all()


def test_contact_sheet_mixed_sizes_centred():
    big = np.zeros((40, 60, 3), np.uint8)
    small = np.full((20, 30, 3), 9, np.uint8)
    sheet = contact_sheet([big, small, small, small], cols=2, pad=2, background=(1, 2, 3))
    assert sheet.shape == (2 * 40 + 3 * 2, 2 * 60 + 3 * 2, 3)
    # The second cell starts at x = 2 + 60 + 2 = 64; the small image is centred in it.
    top, left = 2 + (40 - 20) // 2, 64 + (60 - 30) // 2
    assert (sheet[top : top + 20, left : left + 30] == 9).all()
    assert (sheet[2, 64] == (1, 2, 3)).all()  # the cell's unused corner is background


def test_contact_sheet_of_augmentations(astronaut):
    sheet = contact_sheet(augment(astronaut))
    assert sheet.shape == (3 * 256 + 16, 3 * 256 + 16, 3)


def test_parse_spec():
    spec = parse_spec("flip=hv,rotation=90,zoom=0.2,count=9,seed=3")
    assert spec == AugmentSpec(flip="horizontal_and_vertical", rotation=90.0, zoom=0.2, count=9, seed=3)
    assert parse_spec("flip=h").flip == "horizontal"
    assert parse_spec("flip=v, rotation=45").flip == "vertical"
    assert parse_spec("flip=none").flip == "none"
    assert parse_spec("fill_mode=reflect, width_shift=0.1").fill_mode == "reflect"
    assert parse_spec("") == AugmentSpec()
    base = AugmentSpec(size=128)
    assert parse_spec("seed=4", base) == AugmentSpec(size=128, seed=4)


def test_parse_spec_unknown_key():
    with pytest.raises(ValueError) as err:
        parse_spec("flip=h,spin=90")
    message = str(err.value)
    assert "'spin'" in message and "rotation" in message and "zoom" in message and "fill_mode" in message


@pytest.mark.parametrize("text, needle", [
    ("flip=sideways", "flip"),
    ("rotation=lots", "rotation"),
    ("rotation=270", "rotation"),
    ("count=0", "count"),
    ("fill_mode=mirror", "fill_mode"),
    ("zoom", "zoom"),
])
def test_parse_spec_bad_values(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_spec(text)


def test_spec_validates():
    with pytest.raises(ValueError, match="flip"):
        AugmentSpec(flip="diagonal")
    with pytest.raises(ValueError, match="zoom"):
        AugmentSpec(zoom=-0.1)
    with pytest.raises(ValueError, match="count must be a whole number"):
        AugmentSpec(count=2.5)


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_rotations_by_pillow_are_the_keras_layers_within_one_grey_level(tall, fill_mode):
    """The rotation's pixels come from Pillow (whole grey levels, faster); the layer's own
    transform of the same draws, rounded, differs by at most one level anywhere."""
    import keras

    from tasks.augment import _affine_uint8, _pillow_can_apply

    small = fit_within(tall, 200)
    batch = np.repeat(small[None], 6, axis=0)
    layer = keras.layers.RandomRotation(0.25, fill_mode=fill_mode, fill_value=7.0, interpolation="bilinear")
    floats = keras.ops.convert_to_tensor(batch.astype(np.float32))
    transformation = layer.get_random_transformation(floats, training=True, seed=keras.random.SeedGenerator(4))
    assert _pillow_can_apply(layer, transformation)
    keras_result = np.clip(np.rint(keras.ops.convert_to_numpy(layer.transform_images(floats, transformation))), 0, 255)
    ours = _affine_uint8(batch, keras.ops.convert_to_numpy(transformation["rotation_matrix"]), fill_mode, 7.0)
    assert ours.dtype == np.uint8 and ours.shape == batch.shape
    diff = np.abs(ours.astype(int) - keras_result.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.6  # mostly equal, not merely close
    # large rotations uncover corners: they were filled, as Keras fills them, not left black
    assert not np.array_equal(ours, batch)


def test_wrap_and_other_layers_stay_with_keras():
    import keras

    from tasks.augment import _pillow_can_apply

    transformation = {"rotation_matrix": np.zeros((1, 8))}
    assert not _pillow_can_apply(keras.layers.RandomRotation(0.1, fill_mode="wrap"), transformation)
    assert not _pillow_can_apply(keras.layers.RandomRotation(0.1, interpolation="nearest"), transformation)
    assert not _pillow_can_apply(keras.layers.RandomRotation(0.1, fill_mode="constant", fill_value=0.5), transformation)
    assert not _pillow_can_apply(keras.layers.RandomZoom(0.1), {"zooms": np.ones((1, 2))})


@pytest.mark.parametrize("spec, tolerance", [(AugmentSpec(seed=9), 1), (AugmentSpec(seed=9, fill_mode="wrap"), 0),
                                             (AugmentSpec(seed=2, rotation=20, zoom=0.2, brightness=0.3), 1)])
def test_augment_is_its_keras_layers_alone_within_one_grey_level(astronaut, spec, tolerance):
    """Whole augmentations against the same steps done by the Keras layers alone ("wrap" is theirs)."""
    import keras

    from tasks import augment as aug

    ours = np.stack(augment(astronaut, spec))
    pixels = np.repeat(fit_within(astronaut, spec.size)[None].astype(np.float32), spec.count, axis=0)
    for position, step in enumerate(aug._pipeline(spec)):
        seed = keras.random.SeedGenerator(aug._layer_seed(spec.seed, position))
        if isinstance(step, aug._OWN_STEPS):
            pixels = step(pixels, seed)
            continue
        batch = keras.ops.convert_to_tensor(pixels)
        pixels = keras.ops.convert_to_numpy(step.transform_images(
            batch, step.get_random_transformation(batch, training=True, seed=seed), training=True))
    keras_only = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    assert np.abs(ours.astype(int) - keras_only.astype(int)).max() <= tolerance


def test_draws_are_made_once_per_seed_and_shape(astronaut):
    """A flip's and a rotation's draws are cached per (step, seed, batch shape): the same as drawn
    fresh, for every shape in any order, and a new seed or shape draws anew."""
    from tasks import augment as aug

    spec = AugmentSpec(seed=5)
    other = np.ascontiguousarray(astronaut[:300, :420])
    aug._flip_draws.cache_clear()
    aug._rotation_draws.cache_clear()
    fresh = {"astro": augment(astronaut, spec), "other": augment(other, spec)}
    assert aug._rotation_draws.cache_info().currsize == 2  # two shapes
    assert aug._flip_draws.cache_info().currsize == 2  # two flips, one batch size
    for name, image in (("other", other), ("astro", astronaut), ("other", other)):
        again = augment(image, spec)
        assert all(np.array_equal(a, b) for a, b in zip(again, fresh[name])), name
    assert aug._rotation_draws.cache_info().hits >= 3
    reseeded = augment(astronaut, AugmentSpec(seed=6))
    assert not all(np.array_equal(a, b) for a, b in zip(reseeded, fresh["astro"]))
    assert aug._rotation_draws.cache_info().currsize == 3


# --- shear and channel shift: the transforms added to lesson 6 -------------------------------------


def horizontal_line(width: int = 201, height: int = 101) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[height // 2 - 1:height // 2 + 2] = 255
    return image


def test_shear_is_an_angle_about_the_centre():
    """ImageDataGenerator's shear_range: a horizontal line through the centre turns by at most the
    range, about the centre, each way."""
    angles = []
    for out in augment(horizontal_line(), AugmentSpec(flip="none", rotation=0, shear=20, count=16, size=256)):
        ys, xs = np.nonzero(out[..., 0] > 127)
        slope, intercept = np.polyfit(xs, ys, 1)
        angles.append(float(np.degrees(np.arcsin(slope))))
        assert abs(slope * 100 + intercept - 50) < 1.0  # still through the centre pixel
        assert out[50, 100, 0] > 200
    assert max(abs(a) for a in angles) <= 20 + 0.5
    assert max(angles) > 5 and min(angles) < -5


def test_shear_fill_modes_differ_where_the_image_is_uncovered():
    image = data.astronaut()
    outs = {mode: augment(image, AugmentSpec(flip="none", rotation=0, shear=40, count=1, size=64,
                                             fill_mode=mode, fill_value=0))[0]
            for mode in ("nearest", "constant", "reflect", "wrap")}
    assert len({o.tobytes() for o in outs.values()}) == 4
    # A constant (black) fill shows up in the corners that the shear uncovers
    assert (outs["constant"].reshape(-1, 3).sum(axis=1) == 0).sum() > 20


def test_channel_shift_moves_each_channel_by_its_own_offset():
    flat = np.full((32, 32, 3), 128, np.uint8)
    outs = augment(flat, AugmentSpec(flip="none", rotation=0, channel_shift=50, count=8))
    shifts = np.array([o.reshape(-1, 3).astype(int).mean(axis=0) - 128 for o in outs])
    for o in outs:  # one offset per channel, the same over the whole image
        assert (o == o[0, 0]).all()
    assert np.abs(shifts).max() <= 50.5 and np.abs(shifts).max() > 10
    assert any(len(set(row.round())) == 3 for row in shifts)  # channels shift differently
    # Clipped to 0..255
    bright = augment(np.full((8, 8, 3), 250, np.uint8), AugmentSpec(flip="none", rotation=0, channel_shift=100,
                                                                    count=8))
    assert max(int(o.max()) for o in bright) == 255


def test_new_transforms_are_seeded_and_leave_old_specs_alone():
    image = data.astronaut()
    spec = AugmentSpec(seed=4, shear=10, channel_shift=20, zoom=0.1, count=3, size=96)
    first, second = augment(image, spec), augment(image, spec)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    other = augment(image, dataclasses.replace(spec, seed=5))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    # A spec without the new transforms gives what it gave before they existed: the same steps,
    # seeded by the same positions.
    plain = AugmentSpec(seed=4, zoom=0.1, count=3, size=96)
    assert all(np.array_equal(a, b) for a, b in zip(augment(image, plain),
                                                    augment(image, dataclasses.replace(plain, shear=0.0))))


def test_parse_spec_knows_the_new_keys():
    spec = parse_spec("flip=hv,rotation=90,zoom=0.2,shear=12.5,channel_shift=40,fill_mode=wrap")
    assert (spec.shear, spec.channel_shift, spec.fill_mode, spec.zoom) == (12.5, 40.0, "wrap", 0.2)
    with pytest.raises(ValueError, match="channel_shift"):
        parse_spec("channel_shift=300")
