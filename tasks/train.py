"""Train your own image classifier (course lesson 5, generalised).

The lesson fits a small CNN on Fashion-MNIST: ``Conv2D(32, 3x3, relu, he_uniform)``,
``MaxPooling2D``, ``Flatten``, ``Dense(100, relu, he_uniform)``, ``Dense(10, softmax)``, Adam,
categorical cross-entropy, 10 epochs of batch 32, pixels scaled to 0..1, one-hot labels; then it
evaluates on the held-out test set. This module does exactly that, with the configuration as
arguments, over three kinds of data:

* the four standard IDX files of Fashion-MNIST (or MNIST, or anything in that layout) in a folder:
  :func:`load_idx_folder`;
* Keras's own downloader (``keras.datasets.fashion_mnist.load_data``, connected machines only):
  :func:`load_keras_fashion_mnist`;
* a labelled folder, one sub-folder per class, images of any size and format
  :mod:`tasks.imaging` reads: :func:`load_labelled_folder`.

:func:`save` writes the model as ``<name>.keras`` with the sidecar metadata ``<name>.json`` that
:class:`tasks.classify.Classifier` reads (class names, ``"preprocess": "scale"``, colour mode,
input size), so ``Classifier.create("<name>.keras")`` classifies new photos with the right names:
the lesson's bonus, and the pipeline's classifier when the settings name the file.

Pure code: no CLI, no settings. Keras is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.imaging import BadImage, decode, resize

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IDX_FILES",
    "DataError",
    "Dataset",
    "TrainResult",
    "build_model",
    "find_idx_files",
    "is_idx_folder",
    "load_idx_folder",
    "load_keras_fashion_mnist",
    "load_labelled_folder",
    "read_idx",
    "save",
    "train",
    "write_idx",
]

#: Fashion-MNIST's class names, in label order (0..9).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: The four standard IDX files (Fashion-MNIST's and MNIST's names), by role.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Optional file beside the IDX files: one class name per line, in label order.
CLASSES_FILE = "classes.txt"

FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"

# IDX type codes (the third byte of the magic number) and their big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in _IDX_DTYPES.items()}


class DataError(ValueError):
    """The training data cannot be used; the message says what is wrong and what to do."""


@dataclass
class Dataset:
    """Images and integer labels, split into training and held-out test data.

    ``x_*``: ``uint8`` arrays ``(N, H, W, C)`` (C = 1 for grayscale, 3 for RGB), pixel values
    0..255; ``y_*``: ``int64`` arrays ``(N,)`` of class indices into ``classes``.
    ``skipped``: ``(path, reason)`` of files left out (unreadable images in a labelled folder).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return int(self.x_train.shape[1]), int(self.x_train.shape[2])

    @property
    def color_mode(self) -> str:
        """``grayscale`` (one channel) or ``rgb`` (three)."""
        return "grayscale" if self.x_train.shape[3] == 1 else "rgb"


@dataclass
class TrainResult:
    """A fitted model, its Keras ``History``, and its loss and accuracy on the test data
    (``None`` when the dataset has no test images)."""

    model: Any
    history: Any
    test_loss: float | None
    test_accuracy: float | None


# --------------------------------------------------------------------------------------------
# IDX files (http://yann.lecun.com/exdb/mnist/, "the IDX file format").


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not; told by its first bytes, not its name).

    Returns an array of the file's shape and type in native byte order (``uint8`` for the MNIST
    files). Raises :class:`DataError` when the file is not IDX or is truncated, ``OSError`` when it
    cannot be read.
    """
    path = Path(path)
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or corrupt") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (its first bytes are {data[:4].hex()}, "
                        "expected 0000 + a type code + the number of dimensions)")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: IDX header says shape {shape} ({expected:,} bytes) but the file has "
                        f"{len(data):,} bytes; it is truncated or corrupt")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (other integer types are written
    as int32 when their values fit). Returns the path.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim > 255:
        raise ValueError(f"IDX holds at most 255 dimensions, got {array.ndim}")
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in _IDX_CODES:
        if array.dtype.kind in "iu" and (array.size == 0 or (array.min() >= -(2**31) and array.max() < 2**31)):
            array = array.astype(np.int32)
            key = ("i", 4)
        else:
            raise ValueError(f"IDX cannot store dtype {array.dtype}: use uint8, int8, int16, int32, float32 or float64")
    code = _IDX_CODES[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + body)
    return path


def _idx_candidates(folder: Path, name: str) -> list[Path]:
    # The standard name, gzipped or not; MNIST's mirrors also use a dot before "idx".
    dotted = name.replace("-idx", ".idx")
    return [folder / n for n in (name, name + ".gz", dotted, dotted + ".gz")]


def find_idx_files(folder: str | os.PathLike) -> dict[str, Path | None]:
    """The four standard IDX files in ``folder`` by role (``train_images``, ...), ``None`` for a
    missing one. Each may be gzipped (``.gz``) or not."""
    folder = Path(folder)
    found: dict[str, Path | None] = {}
    for role, name in IDX_FILES.items():
        found[role] = next((p for p in _idx_candidates(folder, name) if p.is_file()), None)
    return found


def is_idx_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds at least one of the standard IDX files (then all four are
    expected, and :func:`load_idx_folder` names any that is missing)."""
    return Path(folder).is_dir() and any(p is not None for p in find_idx_files(folder).values())


def _read_classes_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def load_idx_folder(folder: str | os.PathLike, classes: Sequence[str] | None = None) -> Dataset:
    """The four standard IDX files in ``folder`` (gzipped or not) as a grayscale :class:`Dataset`.

    Class names: ``classes`` when given; else ``classes.txt`` in the folder (one name per line, in
    label order); else Fashion-MNIST's names when the labels are 0..9, else ``"0"``, ``"1"``, ...
    Raises :class:`DataError` naming any missing file, or describing inconsistent contents.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    found = find_idx_files(folder)
    missing = [IDX_FILES[role] for role, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"{folder} is missing {', '.join(missing)} (with or without .gz); an IDX folder needs the four "
            f"files {', '.join(IDX_FILES.values())}"
        )
    arrays = {role: read_idx(path) for role, path in found.items() if path is not None}

    def images(role: str) -> np.ndarray:
        x = arrays[role]
        if x.ndim == 4 and x.shape[3] in (1, 3):
            pass
        elif x.ndim == 3:
            x = x[..., None]
        else:
            raise DataError(f"{found[role]}: expected images N x H x W, got shape {x.shape}")
        if x.dtype != np.uint8:
            raise DataError(f"{found[role]}: expected uint8 pixels (0..255), got {x.dtype}")
        return x

    def labels(role: str, n: int) -> np.ndarray:
        y = arrays[role]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{found[role]}: expected integer labels N, got shape {y.shape} of {y.dtype}")
        if len(y) != n:
            images_role = role.replace("labels", "images")
            raise DataError(f"{found[role]} has {len(y)} labels but {found[images_role]} has {n} images")
        if len(y) and y.min() < 0:
            raise DataError(f"{found[role]}: labels must be 0 or more, found {int(y.min())}")
        return y.astype(np.int64)

    x_train, x_test = images("train_images"), images("test_images")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"training images are {x_train.shape[1:]} but test images are {x_test.shape[1:]}")
    y_train = labels("train_labels", len(x_train))
    y_test = labels("test_labels", len(x_test))
    if len(x_train) == 0:
        raise DataError(f"{found['train_images']} holds no images")
    n_classes = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1

    if classes is None and (folder / CLASSES_FILE).is_file():
        classes = _read_classes_file(folder / CLASSES_FILE)
    if classes is None:
        fashion = n_classes <= len(FASHION_MNIST_CLASSES)
        classes = list(FASHION_MNIST_CLASSES) if fashion else [str(i) for i in range(n_classes)]
    classes = [str(c) for c in classes]
    if len(classes) < n_classes:
        raise DataError(f"the labels go up to {n_classes - 1} but only {len(classes)} class names are given")
    if len(classes) < 2:
        raise DataError(f"a classifier needs at least 2 classes, got {len(classes)}")
    return Dataset(x_train, y_train, x_test, y_test, classes)


def load_keras_fashion_mnist() -> Dataset:
    """Fashion-MNIST through Keras's downloader (``keras.datasets.fashion_mnist.load_data``),
    cached in ``~/.keras/datasets/fashion-mnist/``. Raises :class:`DataError` with what to do
    instead when it cannot be downloaded."""
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception on a failed fetch
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        names = ", ".join(f"{n}.gz" for n in IDX_FILES.values())
        raise DataError(
            f"could not download Fashion-MNIST with Keras ({detail}). Offline, put the four IDX files "
            f"({names}; from {FASHION_MNIST_URL}) in a folder and pass --data FOLDER (or copy them into "
            "Keras's cache, ~/.keras/datasets/fashion-mnist/)"
        ) from None
    return Dataset(
        x_train[..., None].astype(np.uint8), y_train.astype(np.int64),
        x_test[..., None].astype(np.uint8), y_test.astype(np.int64),
        list(FASHION_MNIST_CLASSES),
    )


# --------------------------------------------------------------------------------------------
# A labelled folder: one sub-folder per class.


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _class_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder))


def load_labelled_folder(
    folder: str | os.PathLike,
    size: tuple[int, int] = (28, 28),
    color_mode: str = "grayscale",
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    max_pixels: int = 100_000_000,
) -> Dataset:
    """Images in ``folder/<class name>/...`` (any depth below the class folder, any size and
    format :func:`tasks.imaging.decode` reads) as a :class:`Dataset`.

    Classes are the sub-folders' names, sorted. Each image is decoded upright to RGB, converted to
    ``color_mode`` and resized to ``size`` = (height, width) with PIL bilinear: the very pixels
    :class:`tasks.classify.Classifier` gives a model at prediction time. Files that are not usable
    images are skipped and listed in ``Dataset.skipped``, never fatal; hidden files are ignored.
    The split is stratified: ``test_fraction`` of each class (rounded, at least one image when the
    class has two or more) is held out, chosen with ``seed``.

    Raises :class:`DataError` for a missing folder, fewer than two classes, or a class folder
    with no usable image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder" if root.exists() else f"no such folder: {root}")
    if color_mode not in ("grayscale", "rgb"):
        raise ValueError(f"color_mode must be 'grayscale' or 'rgb', got {color_mode!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be at least 0 and below 1, got {test_fraction}")
    height, width = (int(v) for v in size)
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if len(class_dirs) < 2:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise DataError(f"{root} needs at least 2 class sub-folders (one per class, holding its images); "
                        f"found {len(class_dirs)} ({found})")

    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[tuple[Path, str]] = []
    empty: list[str] = []
    for index, class_dir in enumerate(class_dirs):
        count = 0
        for path in _class_files(class_dir):
            try:
                rgb = decode(path, max_pixels=max_pixels)
            except BadImage as exc:
                skipped.append((path, str(exc)))
                continue
            except OSError as exc:
                skipped.append((path, f"cannot read it ({exc.strerror or exc})"))
                continue
            pixels = np.asarray(Image.fromarray(rgb).convert("L")) if color_mode == "grayscale" else rgb
            pixels = resize(pixels, (height, width))
            images.append(pixels[..., None] if pixels.ndim == 2 else pixels)
            labels.append(index)
            count += 1
        if count == 0:
            empty.append(class_dir.name)
    if empty:
        raise DataError(f"class folder(s) with no usable image in {root}: {', '.join(empty)}; "
                        "add images or remove the folder(s)")

    x = np.stack(images).astype(np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for c in range(len(class_dirs)):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if test_fraction > 0 and len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    # Shuffle the order within each split so classes are mixed (Keras also shuffles per epoch).
    tr = tr[rng.permutation(len(tr))]
    te = te[rng.permutation(len(te))]
    return Dataset(x[tr], y[tr], x[te], y[te], [p.name for p in class_dirs], skipped)


# --------------------------------------------------------------------------------------------
# The model.


def build_model(
    input_shape: Sequence[int],
    num_classes: int,
    filters: int = 32,
    dense: int = 100,
    kernel_size: int = 3,
    learning_rate: float = 0.001,
) -> Any:
    """The lesson's CNN, compiled: ``Conv2D(filters, kernel_size x kernel_size, relu,
    he_uniform)``, ``MaxPooling2D()``, ``Flatten()``, ``Dense(dense, relu, he_uniform)``,
    ``Dense(num_classes, softmax)``; Adam (``learning_rate``), categorical cross-entropy,
    accuracy. The defaults are the lesson's."""
    import keras
    from keras import layers

    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if min(shape[0], shape[1]) < kernel_size + 1:
        raise ValueError(f"images of {shape[0]}x{shape[1]} are too small for a {kernel_size}x{kernel_size} "
                         "convolution followed by 2x2 pooling")
    model = keras.Sequential(
        [
            keras.Input(shape=shape),
            layers.Conv2D(filters, (kernel_size, kernel_size), activation="relu", kernel_initializer="he_uniform"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(dense, activation="relu", kernel_initializer="he_uniform"),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="darkroom_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(
    dataset: Dataset,
    epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    callbacks: Iterable[Any] | None = None,
    *,
    filters: int = 32,
    dense: int = 100,
    kernel_size: int = 3,
    learning_rate: float = 0.001,
    verbose: int = 0,
) -> TrainResult:
    """Fit :func:`build_model` on ``dataset`` as the lesson does (pixels / 255, one-hot labels,
    ``model.fit(epochs, batch_size)``), then evaluate on its test data. ``seed`` goes to
    ``keras.utils.set_random_seed`` (weights, shuffling). ``callbacks``: Keras callbacks for
    ``fit`` (a progress bar, say)."""
    import keras

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    num_classes = len(dataset.classes)
    if len(dataset.x_train) == 0:
        raise DataError("no training images")
    for name, y in (("training", dataset.y_train), ("test", dataset.y_test)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name} labels must be 0..{num_classes - 1} (one per class name)")
    keras.utils.set_random_seed(seed)
    model = build_model(dataset.x_train.shape[1:], num_classes, filters=filters, dense=dense,
                        kernel_size=kernel_size, learning_rate=learning_rate)
    x_train = dataset.x_train.astype("float32") / 255.0
    y_train = keras.utils.to_categorical(dataset.y_train, num_classes)
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, shuffle=True,
                        callbacks=list(callbacks or []), verbose=verbose)
    loss = accuracy = None
    if len(dataset.x_test):
        x_test = dataset.x_test.astype("float32") / 255.0
        y_test = keras.utils.to_categorical(dataset.y_test, num_classes)
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=max(batch_size, 256), verbose=0)
        loss, accuracy = float(loss), float(accuracy)
    return TrainResult(model=model, history=history, test_loss=loss, test_accuracy=accuracy)


def save(
    model: Any,
    path: str | os.PathLike,
    classes: Sequence[str],
    input_size: Sequence[int],
    color_mode: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` as ``<path>.keras`` (``.keras`` is added when ``path`` lacks it) with the
    sidecar ``<stem>.json`` that :class:`tasks.classify.Classifier` reads: ``classes``,
    ``"preprocess": "scale"`` (pixels / 255, as trained), ``color_mode`` and ``input_size``.
    ``extra``: more keys for the sidecar (the classifier ignores them). Returns the ``.keras`` path."""
    path = Path(path)
    if path.suffix.lower() != ".keras":
        path = path.with_name(path.name + ".keras")
    classes = [str(c) for c in classes]
    outputs = int(model.output_shape[-1])
    if len(classes) != outputs:
        raise ValueError(f"the model has {outputs} outputs but {len(classes)} class names were given")
    if color_mode not in ("grayscale", "rgb"):
        raise ValueError(f"color_mode must be 'grayscale' or 'rgb', got {color_mode!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"classes": classes, "preprocess": "scale", "color_mode": color_mode,
                            "input_size": [int(input_size[0]), int(input_size[1])]}
    meta.update({k: v for k, v in (extra or {}).items() if k not in meta})
    # Model first, then its metadata, each written beside and renamed: a reader never sees half.
    tmp_model = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
    model.save(str(tmp_model))
    os.replace(tmp_model, path)
    sidecar = path.with_suffix(".json")
    tmp_meta = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_meta, sidecar)
    return path
