"""Lesson 6, image augmentation: modified copies of a photograph, and a contact sheet of them.

The course uses Keras 2's ``ImageDataGenerator(horizontal_flip=True, vertical_flip=True,
rotation_range=90)``. Keras 3 has no ImageDataGenerator; its preprocessing layers do the same
transforms, applied here one after another to a batch of copies of the image:

- horizontal and vertical flips, each independently with probability 1/2, as the generator
  does them (Keras's ``RandomFlip("horizontal_and_vertical")`` flips both or neither). The
  draws come from ``keras.random`` and the flip itself is a numpy slice, far cheaper than the
  layer's broadcast select;
- a rotation uniform in [-rotation, +rotation] degrees (``RandomRotation``: its draw, and the
  affine matrix it would apply; the pixels are computed by Pillow on whole grey levels, about twice
  as fast on one core and within one grey level of the layer's own result, for the fill modes
  padding reproduces: nearest, reflect and constant. "wrap" goes through the layer);
- optionally shifts, zoom, brightness and contrast (``RandomTranslation``, ``RandomZoom``,
  ``RandomBrightness``, ``RandomContrast``), off by default;
- optionally a shear, as the generator's ``shear_range`` makes it: an angle in degrees, uniform in
  [-shear, +shear], about the image's centre (Keras 3's ``RandomShear`` shears about the top-left
  corner by a fraction of the size, which also slides the image; the generator's matrix is applied
  here with ``keras.ops.image.affine_transform``, the op behind Keras's own layers);
- optionally a channel shift, as ``channel_shift_range``: an offset uniform in
  [-channel_shift, +channel_shift] (0-255 units) added to each colour channel, drawn per channel
  (the generator draws one offset for all three, which is a brightness change; per-channel draws
  shift the colours, which is what the transform is used for), clipped to 0-255.

Empty areas are filled as the generator fills them (``fill_mode="nearest"`` by default).

Results are reproducible: each step draws its parameters from a ``keras.random.SeedGenerator``
in its initial state for the seed ``(spec.seed, step position)``, passed to the
layer's ``get_random_transformation``, so the same image and spec give byte-identical images in
any call and any process, whatever ran before. (A layer's own ``seed=`` would not do: its
generator advances on every call, so a cached layer gives new images each time.) The layers
therefore hold no state we use, and are built once per spec. TensorFlow ops run on the CPU,
where they are bit-for-bit repeatable.

TensorFlow/Keras are imported inside functions only: worker processes fork after importing this
module, and TensorFlow must not be initialised before the fork.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tasks.base import Output
from tasks.imaging import fit_within

__all__ = ["FILL_MODES", "FLIPS", "AugmentSpec", "augment", "contact_sheet", "parse_spec"]

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")

_FLIP_ALIASES = {"h": "horizontal", "v": "vertical", "hv": "horizontal_and_vertical",
                 "vh": "horizontal_and_vertical", "both": "horizontal_and_vertical", "none": "none",
                 "no": "none", "off": "none", **{f: f for f in FLIPS}}


def _check_range(name: str, value: float, low: float, high: float, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
        what = "a whole number" if integer else "a number"
        raise ValueError(f"{name} must be {what} from {low} to {high}; got {value!r}")


@dataclass(frozen=True)
class AugmentSpec:
    """What augmentations to make. New transforms are new fields with "off" defaults, so
    existing callers and stored specs keep their meaning.

    Attributes:
        flip: "horizontal", "vertical", "horizontal_and_vertical" (each direction independently,
            like ``horizontal_flip=True, vertical_flip=True``) or "none".
        rotation: Largest rotation either way, in degrees, 0-180 (``rotation_range``).
        count: Number of images to make.
        seed: Seed of the random transforms; the same seed gives the same images.
        size: Longest side of the outputs; the input is first downscaled to it, which also
            keeps the work cheap.
        width_shift: Largest horizontal shift, as a fraction of the width (0-1).
        height_shift: Largest vertical shift, as a fraction of the height (0-1).
        zoom: Largest zoom in or out, as a fraction (0.2: zoomed by 0.8-1.2).
        brightness: Largest brightness change, as a fraction of the 0-255 range (0-1).
        contrast: Largest contrast change, as a fraction (0-1).
        shear: Largest shear angle either way, in degrees (0-80), like ``shear_range``.
        channel_shift: Largest offset added to each colour channel, in 0-255 units (0-255),
            like ``channel_shift_range``.
        fill_mode: How areas uncovered by rotation, shift or zoom are filled: "nearest",
            "constant", "reflect" or "wrap".
        fill_value: The 0-255 grey level used by ``fill_mode="constant"``.
    """

    flip: str = "horizontal_and_vertical"
    rotation: float = 90.0
    count: int = 9
    seed: int = 0
    size: int = 256
    width_shift: float = 0.0
    height_shift: float = 0.0
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    fill_mode: str = "nearest"
    fill_value: float = 0.0
    shear: float = 0.0
    channel_shift: float = 0.0

    def __post_init__(self) -> None:
        if self.flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(FLIPS)}; got {self.flip!r}")
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {', '.join(FILL_MODES)}; got {self.fill_mode!r}")
        _check_range("rotation", self.rotation, 0.0, 180.0)
        _check_range("count", self.count, 1, 1024, integer=True)
        _check_range("size", self.size, 1, 1 << 16, integer=True)
        _check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        for name in ("width_shift", "height_shift", "zoom", "brightness", "contrast"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("fill_value", self.fill_value, 0.0, 255.0)
        _check_range("shear", self.shear, 0.0, 80.0)
        _check_range("channel_shift", self.channel_shift, 0.0, 255.0)

    @property
    def decode_size(self) -> tuple[int, int]:
        """``(width, height)`` an input needs to be at least (``tasks.imaging.decode``'s
        ``at_least``): the outputs are at most ``size`` on their longest side."""
        return (self.size, self.size)


def augment(image: np.ndarray, spec: AugmentSpec = AugmentSpec()) -> list[np.ndarray]:
    """Make ``spec.count`` randomly transformed copies of ``image``.

    Args:
        image: ``HxWx3`` RGB (or ``HxW`` grayscale) ``uint8`` pixels.
        spec: The transforms and their ranges.

    Returns:
        ``spec.count`` ``uint8`` RGB arrays, each the size of ``image`` downscaled so its
        longest side is at most ``spec.size``. The same image and spec always give the same
        images; with no transform enabled they are copies of the downscaled image.
    """
    small = fit_within(_rgb(image), spec.size)
    # Only the transform fields shape the layers: one cached pipeline serves every seed and count.
    pipeline = _pipeline(dataclasses.replace(spec, count=1, seed=0, size=1))
    if not pipeline:
        return [small.copy() for _ in range(spec.count)]

    import keras

    # The copies stay uint8 while every step so far gives whole grey levels (flips; rotations
    # done with Pillow), and become float32 for the first step that does not.
    pixels: np.ndarray = np.repeat(small[None], spec.count, axis=0)
    with _cpu():
        for position, step in enumerate(pipeline):
            # Fresh draws per step and call: they depend on nothing but the spec.
            layer_seed = _layer_seed(spec.seed, position)
            if isinstance(step, _Flip):
                pixels = step.apply(pixels, _flip_draws(step, position, layer_seed, len(pixels)))
                continue
            if pixels.dtype == np.uint8 and isinstance(step, keras.layers.RandomRotation):
                matrices = _rotation_draws(step, position, layer_seed, pixels.shape)
                if matrices is not None:
                    pixels = _affine_uint8(pixels, matrices, step.fill_mode, step.fill_value)
                    continue
            seed = _seed_generator(position, layer_seed)  # in its first state, whatever was drawn above
            if isinstance(step, _OWN_STEPS):
                pixels = step(pixels.astype(np.float32, copy=False), seed)
                continue
            batch = keras.ops.convert_to_tensor(pixels.astype(np.float32, copy=False))
            transformation = step.get_random_transformation(batch, training=True, seed=seed)
            pixels = keras.ops.convert_to_numpy(step.transform_images(batch, transformation, training=True))
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(p) for p in pixels]


def contact_sheet(
    images: list[np.ndarray],
    cols: int = 3,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Lay images out in a grid, like the lesson's 3x3 figure.

    Every cell has the size of the largest image; smaller images are centred in theirs. ``pad``
    pixels of ``background`` separate the cells and frame the sheet.

    Args:
        images: ``uint8`` RGB (or grayscale) arrays, possibly of different sizes.
        cols: Cells per row (fewer when there are fewer images).
        pad: Gap between and around cells, in pixels.
        background: RGB colour of the gaps and of unused cell area.

    Returns:
        A ``uint8`` RGB array of shape ``(rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3)``
        with ``rows = ceil(len(images) / cols)``.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if cols < 1 or pad < 0:
        raise ValueError(f"cols must be >= 1 and pad >= 0, got cols={cols}, pad={pad}")
    tiles = [_rgb(img) for img in images]
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.empty((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), dtype=np.uint8)
    sheet[...] = np.asarray(background, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, cols)
        top = pad + row * (cell_h + pad) + (cell_h - tile.shape[0]) // 2
        left = pad + col * (cell_w + pad) + (cell_w - tile.shape[1]) // 2
        sheet[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return sheet


def parse_spec(text: str, base: AugmentSpec = AugmentSpec()) -> AugmentSpec:
    """Read a spec from ``"key=value,key=value"`` text, e.g. ``"flip=hv,rotation=90,zoom=0.2"``.

    Keys are :class:`AugmentSpec` field names; keys not given keep ``base``'s values. ``flip``
    also takes the short forms h, v, hv and none.

    Raises:
        ValueError: Unknown key (the message lists the valid ones) or a bad value.
    """
    fields = {f.name: f for f in dataclasses.fields(AugmentSpec)}
    changes: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        key = key.lower().replace("-", "_")
        if key not in fields:
            raise ValueError(f"unknown augmentation setting {key!r}: valid settings are {', '.join(fields)}")
        if not sep or not raw:
            raise ValueError(f"augmentation setting {key!r} needs a value, as in {key}=...")
        changes[key] = _parse_value(key, raw, fields[key].type)
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise ValueError(f"bad augmentation spec {text!r}: {exc}") from None


def spec_from(*, flip: str = "horizontal_and_vertical", rotation: float = 90.0, count: int = 9, seed: int = 0,
              size: int = 256, extra: str = "") -> AugmentSpec:
    """The spec of these values with ``extra``'s ``key=value`` pairs over them (see :func:`parse_spec`)."""
    return parse_spec(extra, AugmentSpec(flip=flip, rotation=rotation, count=count, seed=seed, size=size))


def augment_images(model: None, images: list[np.ndarray], **spec: Any) -> list[Output]:
    """The pipeline's step (lesson 6): for each image, :func:`augment`'s copies (artifacts
    ``augmented``, idx 0, 1, ...) and their contact sheet (``contact_sheet``); ``spec`` as
    :func:`spec_from` takes it. There is no model."""
    chosen = spec_from(**spec)
    outputs = []
    for image in images:
        copies = augment(image, chosen)
        pictures = [("augmented", i, copy) for i, copy in enumerate(copies)]
        pictures.append(("contact_sheet", 0, contact_sheet(copies)))
        outputs.append(Output(None, pictures))
    return outputs


# --- internals -----------------------------------------------------------------------------------


def _parse_value(key: str, raw: str, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if key == "flip":
        try:
            return _FLIP_ALIASES[raw.lower()]
        except KeyError:
            raise ValueError(f"flip must be one of h, v, hv, none (or {', '.join(FLIPS)}); got {raw!r}") from None
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"augmentation setting {key!r} must be a number ({kind}); got {raw!r}") from None
    return raw.lower()


def _rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB or HxW grayscale image, got shape {image.shape}")
    return image


def _layer_seed(seed: int, position: int) -> int:
    # SeedSequence spreads (seed, position) over 32 bits: neighbouring seeds share no draws.
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0] & 0x7FFFFFFF)


_seed_generators = threading.local()


def _seed_generator(position: int, seed: int) -> Any:
    """A ``keras.random.SeedGenerator`` in the state ``SeedGenerator(seed)`` starts in. One is kept
    per step position and thread and set back to that state on each call: making a new one makes
    a TensorFlow variable, which costs more than the draw it serves."""
    import keras

    generators = getattr(_seed_generators, "by_position", None)
    if generators is None:
        generators = _seed_generators.by_position = {}
    gen = generators.get(position)
    if gen is None:
        gen = generators[position] = keras.random.SeedGenerator(seed)
    else:
        gen.state.assign(np.array([seed, 0], dtype=gen.state.dtype))
    return gen


# A flip's and a rotation's draws depend on the spec, the seed and the batch's shape, never on
# the pixels: each is drawn once per process and shape (photos of one camera share a few shapes).
# A drawing costs ~100 small TensorFlow operations, a quarter of the augmentation's time.


@functools.lru_cache(maxsize=512)
def _flip_draws(step: _Flip, position: int, layer_seed: int, count: int) -> np.ndarray:
    """Which of ``count`` images ``step`` flips (read-only)."""
    chosen = step.draw(count, _seed_generator(position, layer_seed))
    chosen.setflags(write=False)
    return chosen


@functools.lru_cache(maxsize=512)
def _rotation_draws(layer: Any, position: int, layer_seed: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """The affine matrices ``RandomRotation`` draws for a ``uint8`` batch of ``shape``, when
    :func:`_affine_uint8` can apply them (read-only); None when the layer must transform the
    batch itself."""
    import keras

    transformation = layer.get_random_transformation(keras.ops.zeros(shape, dtype="uint8"), training=True,
                                                     seed=_seed_generator(position, layer_seed))
    if not _pillow_can_apply(layer, transformation):
        return None
    matrices = np.array(keras.ops.convert_to_numpy(transformation["rotation_matrix"]))
    matrices.setflags(write=False)
    return matrices


#: numpy's padding for each Keras fill mode that a padded Pillow transform reproduces; "wrap" is
#: left to Keras (its interpolation across the seam differs).
_PAD_MODES = {"nearest": "edge", "reflect": "symmetric", "constant": "constant"}


def _pillow_can_apply(layer: Any, transformation: Any) -> bool:
    """Whether ``layer``'s transform can be done by :func:`_affine_uint8`: a rotation (its
    transformation carries the affine matrix Keras would apply), bilinear, with a fill that
    padding reproduces in whole grey levels."""
    return (isinstance(transformation, dict) and "rotation_matrix" in transformation
            and getattr(layer, "interpolation", None) == "bilinear" and layer.fill_mode in _PAD_MODES
            and float(layer.fill_value).is_integer() and getattr(layer, "data_format", "channels_last") == "channels_last")


def _affine_uint8(pixels: np.ndarray, matrices: np.ndarray, fill_mode: str, fill_value: float) -> np.ndarray:
    """Keras's ``affine_transform`` (bilinear) of each ``uint8`` image by its ``[a0 a1 a2 b0 b1 b2
    c0 c1]`` matrix, computed by Pillow: about twice as fast on one core, and within one grey level
    of Keras's float result rounded.

    Keras maps output pixel (x, y) to input (a0 x + a1 y + a2, b0 x + b1 y + b2), pixel centres at
    whole numbers, and fills what falls outside by ``fill_mode``. The image is padded (numpy's
    matching mode) by enough that every sample lands inside, so Pillow's own edge handling never
    applies; its pixel centres are at half-integers.
    """
    n, h, w = pixels.shape[:3]
    mats = np.asarray(matrices, dtype=np.float64).reshape(n, 8)
    if np.any(mats[:, 6:] != 0):
        raise ValueError("only affine matrices (c0 = c1 = 0) are supported")
    corners = np.array([[0.0, 0.0, w - 1.0, w - 1.0], [0.0, h - 1.0, 0.0, h - 1.0]])
    out = np.empty_like(pixels)
    for i in range(n):
        a0, a1, a2, b0, b1, b2 = mats[i, :6]
        xs = a0 * corners[0] + a1 * corners[1] + a2
        ys = b0 * corners[0] + b1 * corners[1] + b2
        overshoot = max(0.0, -xs.min(), xs.max() - (w - 1), -ys.min(), ys.max() - (h - 1))
        margin = int(math.ceil(overshoot)) + 2
        widths = ((margin, margin), (margin, margin)) + (((0, 0),) if pixels.ndim == 4 else ())
        if fill_mode == "constant":
            padded = np.pad(pixels[i], widths, mode="constant", constant_values=int(fill_value))
        else:
            padded = np.pad(pixels[i], widths, mode=_PAD_MODES[fill_mode])
        coeffs = (a0, a1, a2 + margin + 0.5 - 0.5 * (a0 + a1), b0, b1, b2 + margin + 0.5 - 0.5 * (b0 + b1))
        moved = Image.fromarray(padded).transform((w, h), Image.AFFINE, coeffs, resample=Image.BILINEAR)
        out[i] = np.asarray(moved)
    return out


@dataclass(frozen=True)
class _Flip:
    """A random flip of each image with probability 1/2, along ``axis`` of an NHWC batch
    (2: left-right, 1: upside down). Keras's RandomFlip draws the same way, but applies the
    flip with a broadcast select over the whole batch, several times slower than numpy."""

    axis: int

    @staticmethod
    def draw(count: int, seed: Any) -> np.ndarray:
        """Which of ``count`` images to flip."""
        import keras

        return keras.ops.convert_to_numpy(keras.random.uniform((count,), seed=seed)) < 0.5

    def apply(self, pixels: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        pixels[chosen] = np.flip(pixels[chosen], axis=self.axis)
        return pixels

    def __call__(self, pixels: np.ndarray, seed: Any) -> np.ndarray:
        return self.apply(pixels, self.draw(len(pixels), seed))


@dataclass(frozen=True)
class _Shear:
    """ImageDataGenerator's shear: per image an angle uniform in [-degrees, +degrees], applied about
    the centre with the generator's matrix (in row, column terms ``[[1, -sin a], [0, cos a]]``:
    each column slides vertically by sin(a) times its distance from the centre column)."""

    degrees: float
    fill_mode: str
    fill_value: float

    def __call__(self, pixels: np.ndarray, seed: Any) -> np.ndarray:
        import keras

        n, _, width = pixels.shape[:3]
        draws = keras.random.uniform((n,), minval=-self.degrees, maxval=self.degrees, seed=seed)
        angles = np.radians(keras.ops.convert_to_numpy(draws).astype(np.float64))
        cos, sin = np.cos(angles), np.sin(angles)
        cx = (width - 1) / 2.0
        # Output (x, y) reads input (cos a (x - cx) + cx, y - sin a (x - cx)): [a0 a1 a2 b0 b1 b2 c0 c1].
        transform = np.zeros((n, 8), dtype=np.float32)
        transform[:, 0] = cos
        transform[:, 2] = cx - cos * cx
        transform[:, 3] = -sin
        transform[:, 4] = 1.0
        transform[:, 5] = sin * cx
        out = keras.ops.image.affine_transform(
            keras.ops.convert_to_tensor(pixels), keras.ops.convert_to_tensor(transform),
            interpolation="bilinear", fill_mode=self.fill_mode, fill_value=self.fill_value,
        )
        return keras.ops.convert_to_numpy(out)


@dataclass(frozen=True)
class _ChannelShift:
    """An offset uniform in [-intensity, +intensity] added to each channel of each image, clipped
    to 0-255 (``channel_shift_range``, with one draw per channel)."""

    intensity: float

    def __call__(self, pixels: np.ndarray, seed: Any) -> np.ndarray:
        import keras

        shape = (len(pixels), 1, 1, pixels.shape[-1])
        draws = keras.random.uniform(shape, minval=-self.intensity, maxval=self.intensity, seed=seed)
        return np.clip(pixels + keras.ops.convert_to_numpy(draws).astype(np.float32), 0.0, 255.0)


_OWN_STEPS = (_Flip, _Shear, _ChannelShift)


@functools.lru_cache(maxsize=16)
def _pipeline(spec: AugmentSpec) -> tuple[Any, ...]:
    """The steps for ``spec``, in order (flips, rotation, shifts, zoom, shear, brightness,
    contrast, channel shift); only those that change something. A step's position among the
    enabled ones seeds it, so enabling a new transform leaves every existing spec's images as
    they were."""
    layers: list[Any] = []
    fill = {"fill_mode": spec.fill_mode, "fill_value": spec.fill_value, "interpolation": "bilinear"}

    def keras_layers() -> Any:
        import keras

        return keras.layers

    if spec.flip in ("horizontal", "horizontal_and_vertical"):
        layers.append(_Flip(axis=2))
    if spec.flip in ("vertical", "horizontal_and_vertical"):
        layers.append(_Flip(axis=1))
    if spec.rotation > 0:
        # Keras's factor is a fraction of a full turn: 90 degrees = 0.25.
        layers.append(keras_layers().RandomRotation(spec.rotation / 360.0, **fill))
    if spec.width_shift > 0 or spec.height_shift > 0:
        layers.append(keras_layers().RandomTranslation(spec.height_shift, spec.width_shift, **fill))
    if spec.zoom > 0:
        # Zoom in and out alike, keeping the aspect ratio (width_factor None).
        layers.append(keras_layers().RandomZoom((-spec.zoom, spec.zoom), **fill))
    if spec.shear > 0:
        layers.append(_Shear(spec.shear, spec.fill_mode, spec.fill_value))
    if spec.brightness > 0:
        layers.append(keras_layers().RandomBrightness(spec.brightness, value_range=(0, 255)))
    if spec.contrast > 0:
        layers.append(keras_layers().RandomContrast(spec.contrast, value_range=(0, 255)))
    if spec.channel_shift > 0:
        layers.append(_ChannelShift(spec.channel_shift))
    return tuple(layers)


@contextlib.contextmanager
def _cpu() -> Iterator[None]:
    """Run TensorFlow ops on the CPU: GPU kernels may differ in the last bit between devices,
    which would break reproducibility, and these images are small. No-op on other backends."""
    import keras

    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    with tf.device("/CPU:0"):
        yield
