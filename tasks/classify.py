"""Image classification with pre-trained Keras models (course lesson 4, generalised).

Pure vision code: RGB arrays in, :class:`Label` records (plain data) out. Keras/TensorFlow are
imported lazily (in :meth:`Classifier.load` and friends), never at module import, so worker
processes can fork after importing this module and load their model once, after the fork.

Models
------
``Classifier.create(model, weights)``:

* ``model`` is a :data:`REGISTRY` name (``vgg16``, ``resnet50``, ``mobilenet_v2``, ...) or the
  path of a saved Keras model (``.keras`` file).
* ``weights`` (registry models only):

  - ``"imagenet"``: Keras's usual path. The ImageNet weights file is looked up in Keras's cache,
    ``$KERAS_HOME/models/`` (default ``~/.keras/models/``), and downloaded there when missing
    (with ``keras.utils.get_file``, hash-checked as Keras does). Offline and uncached, loading
    raises :class:`ModelUnavailable`, saying which file to provide and how.
  - a path to a local weights file (``.h5`` as Keras distributes them, or ``.weights.h5`` from
    ``model.save_weights``): loaded into the registry architecture built with ``weights=None``.
  - ``"none"``: random initialisation (tests, speed benchmarks). Labels are meaningless.

Saved models and their metadata (the sidecar convention)
--------------------------------------------------------
A saved model ``/models/fashion.keras`` may have ONE metadata file beside it, with the same stem
and the extension ``.json``: ``/models/fashion.json``::

    {
      "classes": ["T-shirt/top", "Trouser", ...],   # one name per output unit, in output order
      "preprocess": "scale",                        # "scale" (x / 255), "none" (raw 0..255), or a
                                                    # REGISTRY name (that model's preprocess_input)
      "color_mode": "grayscale",                    # "rgb" or "grayscale"
      "input_size": [28, 28]                        # only for models whose input shape has no size
    }

Every metadata key is optional; a bare JSON list is read as ``{"classes": [...]}``. Defaults: ``classes``:
the ImageNet names when the model has 1000 outputs, else ``class_0``, ``class_1``, ...;
``preprocess``: the registry model's own function when the saved model is a Keras application
saved whole (its ``model.name`` is e.g. ``vgg16`` or ``mobilenetv2_1.00_224``), else ``"scale"``;
``color_mode``: from the model's input channels (1: grayscale, 3: rgb); ``input_size``: from
``model.input_shape``. (The ``#`` comments above are explanations, not part of the JSON.)

For a saved model, ``weights`` ``"imagenet"``/``"none"`` mean the file's own weights; a
weights-file path is loaded into the saved model after it is read.

Results are keyed by :attr:`Classifier.name` (registry name, or ``file:<stem>``) and
:attr:`Classifier.version` (``imagenet``, ``none``, or the first 12 hex digits of the SHA-256 of
the weights / model file).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "REGISTRY",
    "AppSpec",
    "Classifier",
    "Label",
    "ModelUnavailable",
    "imagenet_classes",
    "imagenet_wnids",
    "top_k",
]

WEIGHTS_ENV = "DARKROOM_CLASSIFIER_WEIGHTS"
MODEL_ENV = "DARKROOM_CLASSIFIER_MODEL"

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


class ModelUnavailable(RuntimeError):
    """The model, or its weights, cannot be had; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class AppSpec:
    """A ``keras.applications`` model with ImageNet weights.

    ``module``: the ``keras.applications`` submodule holding the constructor and its
    ``preprocess_input``; ``weights_file``: the name Keras caches the top-included ImageNet weights
    under (``~/.keras/models/<weights_file>``); ``origin``/``file_hash``: where Keras downloads it
    from and the hash Keras checks (None: Keras checks none); ``keras_name``: ``model.name`` of the
    model Keras builds (recognises a whole saved application).
    """

    name: str
    module: str
    constructor: str
    input_size: tuple[int, int]
    weights_file: str
    origin: str = ""
    file_hash: str | None = None
    keras_name: str = ""

    def app_module(self) -> Any:
        """``keras.applications.<module>`` (imports Keras)."""
        return importlib.import_module(f"keras.applications.{self.module}")

    def preprocess_function(self) -> Callable[[np.ndarray], np.ndarray]:
        """This model's own ``preprocess_input`` (imports Keras, not the model)."""
        return self.app_module().preprocess_input

    def build(self, weights: str | None = None) -> Any:
        """Build the architecture (top included, 1000 classes); ``weights`` as Keras takes it."""
        constructor = getattr(self.app_module(), self.constructor)
        return constructor(weights=weights, include_top=True, classes=1000)


def _spec(name, module, constructor, size, weights_file, subdir, file_hash, keras_name) -> AppSpec:
    origin = f"{_KERAS_APPS}{subdir}/{weights_file}" if subdir else f"https://storage.googleapis.com/keras-applications/{weights_file}"
    return AppSpec(name, module, constructor, size, weights_file, origin, file_hash, keras_name)


#: Known ``keras.applications`` models. URLs and hashes are those Keras 3 itself uses.
REGISTRY: dict[str, AppSpec] = {
    spec.name: spec
    for spec in (
        _spec("vgg16", "vgg16", "VGG16", (224, 224), "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
              "vgg16", "64373286793e3c8b2b4e3219cbf3544b", "vgg16"),
        _spec("vgg19", "vgg19", "VGG19", (224, 224), "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
              "vgg19", "cbe5617147190e668d6c5d5026f83318", "vgg19"),
        _spec("resnet50", "resnet50", "ResNet50", (224, 224), "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
              "resnet", "2cb95161c43110f7111970584f804107", "resnet50"),
        _spec("mobilenet_v2", "mobilenet_v2", "MobileNetV2", (224, 224),
              "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", "mobilenet_v2", None,
              "mobilenetv2_1.00_224"),
        _spec("efficientnet_b0", "efficientnet", "EfficientNetB0", (224, 224), "efficientnetb0.h5",
              None, "902e53a9f72be733fc0bcb005b3ebbac", "efficientnetb0"),
        _spec("inception_v3", "inception_v3", "InceptionV3", (299, 299),
              "inception_v3_weights_tf_dim_ordering_tf_kernels.h5", "inception_v3",
              "9a0d58056eeedaa3f26cb7ebd46da564", "inception_v3"),
        _spec("xception", "xception", "Xception", (299, 299), "xception_weights_tf_dim_ordering_tf_kernels.h5",
              "xception", "0a58e3b7378bc2990ea3b43d5981f1f6", "xception"),
    )
}


@dataclass(frozen=True)
class Label:
    """One of the top-k predictions for an image. ``rank`` starts at 1 (the most likely)."""

    rank: int
    class_id: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"rank": int(self.rank), "class_id": int(self.class_id), "label": str(self.label), "score": float(self.score)}


# --------------------------------------------------------------------------------------------
# ImageNet class names (shipped: tasks/data/imagenet_class_index.json, Keras's format).


@functools.lru_cache(maxsize=1)
def _imagenet_index() -> tuple[tuple[str, str], ...]:
    try:
        text = resources.files(__package__ or "tasks").joinpath("data").joinpath("imagenet_class_index.json").read_text(
            encoding="utf-8"
        )
    except (NotADirectoryError, FileNotFoundError, TypeError):
        # An editable install can make ``tasks`` a namespace package outside the source tree, which
        # importlib.resources cannot read from; the file sits beside this module either way.
        text = (Path(__file__).resolve().parent / "data" / "imagenet_class_index.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    return tuple((str(raw[str(i)][0]), str(raw[str(i)][1])) for i in range(len(raw)))


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in Keras's index order (``[0] == "tench"``)."""
    return [label for _, label in _imagenet_index()]


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids in the same order (``[0] == "n01440764"``)."""
    return [wnid for wnid, _ in _imagenet_index()]


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[list[Label]]:
    """The ``k`` highest scores of each row of ``probs`` (N x C) as labels; rank starts at 1, ties
    go to the lower class id. ``k`` larger than C gives C labels."""
    scores = np.asarray(probs)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2:
        raise ValueError(f"probs must be N x C, got shape {scores.shape}")
    if scores.shape[1] != len(classes):
        raise ValueError(f"probs has {scores.shape[1]} classes but {len(classes)} class names were given")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), scores.shape[1])
    # A stable sort of the negated scores keeps equal scores in class-id order.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        [Label(rank=r + 1, class_id=int(c), label=classes[int(c)], score=float(row[c])) for r, c in enumerate(idx)]
        for row, idx in zip(scores, order)
    ]


# --------------------------------------------------------------------------------------------
# Helpers.


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0].strip() if text else ''}".rstrip(": ")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _keras_home() -> Path:
    """Keras's cache root, read now (Keras itself reads KERAS_HOME once, at import)."""
    home = os.environ.get("KERAS_HOME")
    return Path(home).expanduser() if home else Path("~").expanduser() / ".keras"


def _sha12(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _looks_like_path(model: str) -> bool:
    return model.endswith((".keras", ".h5")) or os.sep in model or (os.altsep or os.sep) in model or Path(model).exists()


#: Images per forward pass on a CPU. A core keeps the activations of a few images in its caches,
#: not those of 16: on the benchmark's 2-core EPYC, one thread, MobileNetV2 took 22.8 ms per image
#: in chunks of 4 against 30.1 in one batch of 16. Batches still gather 16 images (one claim, one
#: store); on a GPU the whole batch goes at once.
CPU_FORWARD_CHUNK = 4
#: Models with more weights than this (bytes) go through the whole batch at once on a CPU too:
#: each forward pass reads every weight from memory (VGG16's 528 MB, 400 of them in its first
#: dense layer), once per batch instead of once per chunk. VGG16, one thread in each of two
#: processes (Intel Xeon): 168 ms per image in passes of 16 against 185 in passes of 4; on the
#: EPYC the same within 4 %. MobileNetV2 (14 MB) and ResNet50 (100 MB) keep their chunks.
WHOLE_BATCH_WEIGHT_BYTES = 256 * 2**20
#: :attr:`Classifier.chunk`'s setting for a CPU: :data:`CPU_FORWARD_CHUNK` images per forward pass,
#: or the whole batch for a model of over :data:`WHOLE_BATCH_WEIGHT_BYTES` of weights.
CPU_CHUNK = "cpu"


def _scale(x: np.ndarray) -> np.ndarray:
    return x / np.float32(255.0)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _resize_batch(images: list[np.ndarray], size: tuple[int, int], color_mode: str) -> np.ndarray:
    """Each image resized to ``size`` (h, w) as ``keras.utils.load_img(target_size=size,
    color_mode=..., interpolation="bilinear")`` would (PIL, bilinear), stacked as float32."""
    from PIL import Image

    height, width = size
    out = np.empty((len(images), height, width, 1 if color_mode == "grayscale" else 3), dtype=np.float32)
    for i, image in enumerate(images):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise TypeError(
                f"image {i}: expected uint8 (pixel values 0..255), got dtype {arr.dtype}; "
                "convert with np.clip(x, 0, 255).astype(np.uint8) (multiply [0, 1] floats by 255 first)"
            )
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise ValueError(f"image {i}: expected HxWx3 RGB (or HxW, HxWx1, HxWx4), got shape {arr.shape}")
        pil = Image.fromarray(np.ascontiguousarray(arr))
        pil = pil.convert("L" if color_mode == "grayscale" else "RGB")
        if pil.size != (width, height):
            pil = pil.resize((width, height), Image.BILINEAR)
        pixels = np.asarray(pil, dtype=np.float32)
        out[i] = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return out


# --------------------------------------------------------------------------------------------
# The classifier.


class Classifier:
    """A Keras image classifier, loaded lazily and once (thread-safe). Build with :meth:`create`.

    ``predict`` takes a list of images and runs them through a compiled (``tf.function``) forward
    pass, as one batch or in chunks of :attr:`chunk` images; callers may gather images from
    several jobs into one call.
    """

    def __init__(
        self,
        *,
        spec: AppSpec | None,
        weights: str,
        model_path: Path | None = None,
        weights_path: Path | None = None,
    ):
        self._spec = spec
        self._weights = weights
        self._model_path = model_path
        self._weights_path = weights_path
        self._lock = threading.RLock()
        self._version: str | None = None
        self._model: Any = None
        self._forward: Any = None
        self._classes: list[str] | None = None
        self._prep: tuple[tuple[int, int], str, Callable[[np.ndarray], np.ndarray]] | None = None
        self._chunk: int | str | None = None
        self._weight_bytes = 0

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, model: str = "vgg16", weights: str = "imagenet") -> Classifier:
        """A classifier for ``model`` (REGISTRY name or ``.keras`` path) with ``weights``
        (``"imagenet"``, ``"none"`` or a weights-file path). Cheap: imports no Keras and loads
        nothing; checks names and that given files exist. See the module docstring."""
        model = str(model).strip()
        spec = REGISTRY.get(model) or REGISTRY.get(model.lower())
        model_path = None
        if spec is None:
            if not _looks_like_path(model):
                raise ValueError(
                    f"unknown classifier model {model!r}: use one of {', '.join(REGISTRY)} "
                    "or the path of a saved .keras model"
                )
            model_path = Path(model).expanduser()
            if not model_path.is_file():
                raise ModelUnavailable(
                    f"classifier: the saved model {model_path} does not exist (resolved: "
                    f"{model_path.absolute()}). Fix {MODEL_ENV} (the model argument): the path of a saved "
                    f".keras model, or one of the registry names: {', '.join(REGISTRY)}."
                )
            if model_path.suffix.lower() != ".keras":
                raise ModelUnavailable(
                    f"classifier: {model_path} is not a .keras file. A saved model must be in Keras 3's "
                    f"format (model.save('name.keras')); a weights file (.h5) goes in {WEIGHTS_ENV} "
                    f"(the weights argument) together with a registry model name ({', '.join(REGISTRY)})."
                )

        weights = "none" if weights is None else str(weights).strip()
        weights_path = None
        if weights.lower() not in ("imagenet", "none"):
            weights_path = Path(weights).expanduser()
            if not weights_path.is_file():
                raise ModelUnavailable(
                    f"classifier {model!r}: the weights file {weights_path} does not exist "
                    f"(resolved: {weights_path.absolute()}). Fix {WEIGHTS_ENV} (the weights argument): "
                    "a .h5 / .weights.h5 file for this architecture, or 'imagenet' (Keras's download "
                    "and cache) or 'none' (random weights)."
                )
        resolved = weights.lower() if weights_path is None else str(weights_path)
        return cls(spec=spec, weights=resolved, model_path=model_path, weights_path=weights_path)

    # -- identity -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The key results are stored under: the registry name, or ``file:<stem>``."""
        if self._model_path is not None:
            return f"file:{self._model_path.stem}"
        assert self._spec is not None
        return self._spec.name

    @property
    def version(self) -> str:
        """The weights' identity: ``imagenet``, ``none``, or sha256[:12] of the weights file (or of
        the saved model file)."""
        if self._version is None:
            if self._weights_path is not None:
                self._version = _sha12(self._weights_path)
            elif self._model_path is not None:
                self._version = _sha12(self._model_path)
            else:
                self._version = self._weights
        return self._version

    @property
    def spec(self) -> AppSpec | None:
        """The registry entry (None for a saved model)."""
        return self._spec

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) images are resized to. For a saved model this loads it."""
        if self._spec is not None:
            return self._spec.input_size
        return self._preprocessing()[0]

    @property
    def decode_size(self) -> tuple[int, int]:
        """``(width, height)`` an image needs to be at least before its resize to :attr:`input_size`
        (``tasks.imaging.decode``'s ``at_least``)."""
        height, width = self.input_size
        return (width, height)

    @property
    def color_mode(self) -> str:
        """``rgb`` or ``grayscale``. For a saved model this loads it."""
        if self._spec is not None:
            return "rgb"
        return self._preprocessing()[1]

    @property
    def classes(self) -> list[str]:
        """Class names, one per output (loads the model)."""
        self.load()
        assert self._classes is not None
        return list(self._classes)

    @property
    def keras_model(self) -> Any:
        """The loaded Keras model (loads it)."""
        self.load()
        return self._model

    def __repr__(self) -> str:
        weights = self._weights if self._model_path is None else str(self._model_path)
        return f"Classifier(name={self.name!r}, weights={weights!r}, loaded={self.loaded})"

    # -- loading --------------------------------------------------------------------------------

    @property
    def chunk(self) -> int | None:
        """Images per forward pass (None: the whole batch); the outputs are the same to float
        rounding. On a CPU a few at a time run faster than many (:data:`CPU_FORWARD_CHUNK`), except
        for models with more weights than any cache holds: set :data:`CPU_CHUNK` to have it
        decided by the model (reading it then loads the model)."""
        if self._chunk == CPU_CHUNK:
            self.load()
            return None if self._weight_bytes > WHOLE_BATCH_WEIGHT_BYTES else CPU_FORWARD_CHUNK
        return self._chunk  # type: ignore[return-value]

    @chunk.setter
    def chunk(self, value: int | str | None) -> None:
        if not (value is None or value == CPU_CHUNK or (isinstance(value, int) and not isinstance(value, bool)
                                                        and value > 0)):
            raise ValueError(f"chunk must be a positive number of images, None (the whole batch) or "
                             f"{CPU_CHUNK!r}; got {value!r}")
        self._chunk = value

    def load(self) -> Classifier:
        """Import Keras and load the model. Idempotent, thread-safe; raises ModelUnavailable."""
        if self._model is not None:
            return self
        with self._lock:
            if self._model is not None:
                return self
            if self._model_path is not None:
                model, classes, prep = self._load_saved()
            else:
                model = self._load_registry()
                classes = imagenet_classes()
                prep = self._registry_preprocessing()
            self._forward = self._make_forward(model)
            self._classes, self._prep = classes, prep
            self._weight_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
            self._model = model
        return self

    def _registry_preprocessing(self):
        spec = self._spec
        assert spec is not None
        return (spec.input_size, "rgb", spec.preprocess_function())

    def _preprocessing(self):
        if self._prep is None:
            with self._lock:
                if self._prep is None:
                    if self._model_path is not None:
                        self.load()
                    else:
                        self._prep = self._registry_preprocessing()
        assert self._prep is not None
        return self._prep

    def _load_registry(self) -> Any:
        spec = self._spec
        assert spec is not None
        if self._weights == "none":
            return spec.build(weights=None)
        if self._weights_path is not None:
            path = self._weights_path
            if not path.is_file():
                raise ModelUnavailable(
                    f"classifier {spec.name!r}: the weights file {path} does not exist. "
                    f"Fix {WEIGHTS_ENV} (the weights argument), or use 'imagenet' or 'none'."
                )
            model = spec.build(weights=None)
            try:
                model.load_weights(str(path))
            except Exception as exc:
                raise ModelUnavailable(
                    f"classifier {spec.name!r}: cannot load the weights file {path} into "
                    f"{spec.constructor} ({_one_line(exc)}). It must hold weights of keras.applications."
                    f"{spec.constructor}(include_top=True) with 1000 classes: Keras's own "
                    f"{spec.weights_file}, or a file written by model.save_weights('x.weights.h5'). "
                    f"Fix {WEIGHTS_ENV}, or set {MODEL_ENV}=/path/to/model.keras for another model."
                ) from exc
            return model
        # "imagenet": Keras's usual download-and-cache path, with the cache read from KERAS_HOME now.
        path = self._imagenet_weights(spec)
        model = spec.build(weights=None)
        try:
            model.load_weights(path)
        except Exception as exc:
            raise ModelUnavailable(
                f"classifier {spec.name!r}: the cached ImageNet weights {path} cannot be loaded "
                f"({_one_line(exc)}); the file is probably truncated. Delete it and "
                + _how_to_provide(spec)
            ) from exc
        return model

    @staticmethod
    def _imagenet_weights(spec: AppSpec) -> str:
        import keras

        home = _keras_home()
        cached = home / "models" / spec.weights_file
        try:
            return keras.utils.get_file(
                spec.weights_file, spec.origin, cache_subdir="models", cache_dir=str(home), file_hash=spec.file_hash
            )
        except Exception as exc:
            raise ModelUnavailable(
                f"classifier {spec.name!r}: the ImageNet weights file {spec.weights_file} is not in "
                f"Keras's cache ({cached}) and could not be downloaded from {spec.origin} "
                f"({_one_line(exc)}). " + _how_to_provide(spec)
            ) from exc

    def _load_saved(self):
        import keras

        path = self._model_path
        assert path is not None
        if not path.is_file():
            raise ModelUnavailable(
                f"classifier: the saved model {path} does not exist. Fix {MODEL_ENV} (the model argument)."
            )
        try:
            model = keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise ModelUnavailable(
                f"classifier: cannot load the saved model {path} ({_one_line(exc)}). It must be a "
                f"Keras 3 .keras file (model.save('name.keras')) using built-in layers only. "
                f"Fix {MODEL_ENV} (the model argument)."
            ) from exc
        if self._weights_path is not None:
            try:
                model.load_weights(str(self._weights_path))
            except Exception as exc:
                raise ModelUnavailable(
                    f"classifier: cannot load the weights file {self._weights_path} into the saved model "
                    f"{path} ({_one_line(exc)}). Fix {WEIGHTS_ENV}, or unset it to use the model's own weights."
                ) from exc

        meta_path = path.with_suffix(".json")
        meta: dict[str, Any] = {}
        if meta_path.is_file():
            try:
                raw = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(f"classifier: cannot read the metadata {meta_path} ({_one_line(exc)}).") from exc
            meta = {"classes": raw} if isinstance(raw, list) else raw
            if not isinstance(meta, dict):
                raise ModelUnavailable(
                    f"classifier: the metadata {meta_path} must be a JSON object "
                    '{"classes": [...], "preprocess": ..., "color_mode": ...} or a list of class names.'
                )

        def bad(what: str) -> ModelUnavailable:
            return ModelUnavailable(
                f"classifier: {what} Fix the metadata file {meta_path} "
                '({"classes": [...], "preprocess": "scale" | "none" | <registry name>, '
                '"color_mode": "rgb" | "grayscale", "input_size": [h, w]}).'
            )

        input_shape = model.input_shape
        output_shape = model.output_shape
        if isinstance(input_shape, list) or isinstance(output_shape, list) or len(input_shape) != 4 or len(output_shape) != 2:
            raise ModelUnavailable(
                f"classifier: {path} has input {input_shape} and output {output_shape}; a classifier "
                "takes one batch of images (N, H, W, C) and gives one score vector (N, classes)."
            )
        n_classes = int(output_shape[1])
        channels = int(input_shape[3]) if input_shape[3] is not None else 3

        classes = meta.get("classes")
        if classes is None:
            classes = imagenet_classes() if n_classes == 1000 else [f"class_{i}" for i in range(n_classes)]
        elif not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise bad('"classes" must be a list of strings.')
        elif len(classes) != n_classes:
            raise bad(f"the model has {n_classes} outputs but {len(classes)} class names are given.")

        color_mode = meta.get("color_mode") or ("grayscale" if channels == 1 else "rgb")
        if color_mode not in ("rgb", "grayscale"):
            raise bad(f'"color_mode" must be "rgb" or "grayscale", got {color_mode!r}.')
        if (color_mode == "grayscale") != (channels == 1):
            raise bad(f'"color_mode" is {color_mode!r} but the model takes {channels} channels.')

        size = meta.get("input_size")
        if size is None:
            if input_shape[1] is None or input_shape[2] is None:
                raise bad(f'the model\'s input shape {input_shape} has no fixed size; give "input_size": [h, w].')
            size = (int(input_shape[1]), int(input_shape[2]))
        else:
            try:
                size = (int(size[0]), int(size[1]))
            except (TypeError, ValueError, IndexError):
                raise bad(f'"input_size" must be [height, width], got {size!r}.') from None

        preprocess = meta.get("preprocess")
        if preprocess is None:
            known = {spec.keras_name: spec.name for spec in REGISTRY.values()}
            preprocess = known.get(model.name, "scale")
        if preprocess == "scale":
            fn: Callable[[np.ndarray], np.ndarray] = _scale
        elif preprocess == "none":
            fn = _identity
        elif preprocess in REGISTRY:
            fn = REGISTRY[preprocess].preprocess_function()
        else:
            raise bad(f'"preprocess" must be "scale", "none" or one of {", ".join(REGISTRY)}; got {preprocess!r}.')
        return model, list(classes), (size, color_mode, fn)

    @staticmethod
    def _make_forward(model: Any) -> Callable[[np.ndarray], Any]:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            shape = [None, *model.input_shape[1:]]
            # One trace for every batch size; inference mode (BatchNorm uses its moving statistics).
            return tf.function(
                lambda batch: model(batch, training=False),
                input_signature=[tf.TensorSpec(shape, tf.float32)],
                reduce_retracing=True,
            )
        return model.predict_on_batch

    # -- inference ------------------------------------------------------------------------------

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 RGB images -> float32 batch: resized to :attr:`input_size` (PIL bilinear,
        as ``keras.utils.load_img(target_size=..., interpolation="bilinear")``), then the model's
        ``preprocess_input``. For a registry model this imports Keras but loads no model."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise TypeError("preprocess takes a list of images; wrap a single image as [image]")
        size, color_mode, fn = self._preprocessing()
        batch = _resize_batch(list(images), size, color_mode)
        return np.asarray(fn(batch), dtype=np.float32)

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Scores (N x classes, float32) for a list of images: one forward pass, or one per
        :attr:`chunk` images."""
        self.load()
        assert self._classes is not None
        if len(images) == 0:
            return np.zeros((0, len(self._classes)), dtype=np.float32)
        batch = self.preprocess(images)
        step = self.chunk or len(batch)
        parts = [self._forward(batch[i:i + step]) for i in range(0, len(batch), step)]
        scores = np.concatenate([np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)
                                 for out in parts])
        if scores.shape != (len(images), len(self._classes)):
            raise RuntimeError(f"model {self.name} returned shape {scores.shape} for {len(images)} images")
        return scores

    def predict(self, images: list[np.ndarray], top: int = 5) -> list[list[Label]]:
        """The ``top`` labels of each image (one list per image, in input order)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise TypeError("predict takes a list of images; wrap a single image as [image]")
        scores = self.predict_proba(images)
        if len(scores) == 0:
            return []
        assert self._classes is not None
        return top_k(scores, self._classes, top)


def _how_to_provide(spec: AppSpec) -> str:
    home = _keras_home()
    return (
        "Provide the weights in one of three ways: "
        f"(1) run it once on a machine connected to the internet (Darkroom, or "
        f"`python -c \"import keras; keras.applications.{spec.constructor}()\"`): Keras downloads the file "
        f"and caches it as ~/.keras/models/{spec.weights_file} ($KERAS_HOME/models/ when KERAS_HOME is set); "
        f"copy that file into this machine's cache; "
        f"(2) put the weights file (from {spec.origin}) at {home / 'models' / spec.weights_file}; "
        f"(3) set {WEIGHTS_ENV}=/path/to/weights.h5 (weights for {spec.constructor}) or "
        f"{MODEL_ENV}=/path/to/model.keras (a saved Keras model)."
    )
