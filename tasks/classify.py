"""Image classification with pre-trained Keras models (course lesson 4, generalised).

Pure vision code: RGB arrays in, :class:`Label` records (plain data) out. Keras/TensorFlow are
imported lazily (in :meth:`Classifier.load` and friends), never at module import, so worker
processes can fork after importing this module and load their model once, after the fork.

``Classifier.create(model, weights)`` takes a :data:`~tasks.keras_models.REGISTRY` name (``vgg16``,
``resnet50``, ``mobilenet_v2``, ...) or the path of a saved ``.keras`` model, and ``"imagenet"``,
``"none"`` or a weights file; :mod:`tasks.keras_models` says how each is found and loaded, and how a
saved model's metadata sidecar is read. :func:`classify` is the pipeline's step.

Results are keyed by :attr:`Classifier.name` (registry name, or ``file:<stem>``) and
:attr:`Classifier.version` (``imagenet``, ``none``, or the first 12 hex digits of the SHA-256 of
the weights / model file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.base import InferenceModel, ModelUnavailable, Output
from tasks.keras_models import (
    ARGUMENT_NAMES,
    REGISTRY,
    AppSpec,
    imagenet_classes,
    imagenet_wnids,
    load_registry_model,
    load_saved_model,
    looks_like_path,
    sha12,
)

__all__ = [
    "REGISTRY",
    "AppSpec",
    "Classifier",
    "Label",
    "ModelUnavailable",
    "classify",
    "imagenet_classes",
    "imagenet_wnids",
    "top_k",
]


@dataclass(frozen=True)
class Label:
    """One of the top-k predictions for an image. ``rank`` starts at 1 (the most likely)."""

    rank: int
    class_id: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"rank": int(self.rank), "class_id": int(self.class_id), "label": str(self.label), "score": float(self.score)}


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


def _resize_batch(images: list[np.ndarray], size: tuple[int, int], color_mode: str) -> np.ndarray:
    """Each image resized to ``size`` (h, w) as ``keras.utils.load_img(target_size=size,
    color_mode=..., interpolation="bilinear")`` would (PIL, bilinear), stacked as float32."""
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


class Classifier(InferenceModel):
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
        names: dict[str, str] | None = None,
    ):
        super().__init__()
        self._spec = spec
        self._names = {**ARGUMENT_NAMES, **(names or {})}
        self._weights = weights
        self._model_path = model_path
        self._weights_path = weights_path
        self._version: str | None = None
        self._model: Any = None
        self._forward: Any = None
        self._classes: list[str] | None = None
        self._prep: tuple[tuple[int, int], str, Callable[[np.ndarray], np.ndarray]] | None = None
        self._chunk: int | str | None = None
        self._weight_bytes = 0

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, model: str = "vgg16", weights: str = "imagenet", *, names: dict[str, str] | None = None,
               chunk: int | str | None = None) -> Classifier:
        """A classifier for ``model`` (REGISTRY name or ``.keras`` path) with ``weights``
        (``"imagenet"``, ``"none"`` or a weights-file path). Cheap: imports no Keras and loads
        nothing; checks names and that given files exist. ``names``: what errors call the
        ``model`` and ``weights`` arguments (a setting, a flag); ``chunk``: see :attr:`chunk`."""
        said = {**ARGUMENT_NAMES, **(names or {})}
        model = str(model).strip()
        spec = REGISTRY.get(model) or REGISTRY.get(model.lower())
        model_path = None
        if spec is None:
            if not looks_like_path(model):
                raise ValueError(
                    f"unknown classifier model {model!r}: use one of {', '.join(REGISTRY)} "
                    "or the path of a saved .keras model"
                )
            model_path = Path(model).expanduser()
            if not model_path.is_file():
                raise ModelUnavailable(
                    f"classifier: the saved model {model_path} does not exist (resolved: "
                    f"{model_path.absolute()}). Fix {said['model']}: the path of a saved "
                    f".keras model, or one of the registry names: {', '.join(REGISTRY)}."
                )
            if model_path.suffix.lower() != ".keras":
                raise ModelUnavailable(
                    f"classifier: {model_path} is not a .keras file. A saved model must be in Keras 3's "
                    f"format (model.save('name.keras')); a weights file (.h5) goes in {said['weights']} "
                    f"together with a registry model name ({', '.join(REGISTRY)})."
                )

        weights = "none" if weights is None else str(weights).strip()
        weights_path = None
        if weights.lower() not in ("imagenet", "none"):
            weights_path = Path(weights).expanduser()
            if not weights_path.is_file():
                raise ModelUnavailable(
                    f"classifier {model!r}: the weights file {weights_path} does not exist "
                    f"(resolved: {weights_path.absolute()}). Fix {said['weights']}: "
                    "a .h5 / .weights.h5 file for this architecture, or 'imagenet' (Keras's download "
                    "and cache) or 'none' (random weights)."
                )
        resolved = weights.lower() if weights_path is None else str(weights_path)
        classifier = cls(spec=spec, weights=resolved, model_path=model_path, weights_path=weights_path, names=said)
        if chunk is not None:
            classifier.chunk = chunk
        return classifier

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
                self._version = sha12(self._weights_path)
            elif self._model_path is not None:
                self._version = sha12(self._model_path)
            else:
                self._version = self._weights
        return self._version

    @property
    def spec(self) -> AppSpec | None:
        """The registry entry (None for a saved model)."""
        return self._spec


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

    def _load(self) -> None:
        """Import Keras and load the model (:meth:`load` calls it once); raises ModelUnavailable."""
        if self._model_path is not None:
            model, classes, prep = load_saved_model(self._model_path, self._weights_path, self._names)
        else:
            assert self._spec is not None
            model = load_registry_model(self._spec, self._weights, self._weights_path, self._names)
            classes = imagenet_classes()
            prep = self._registry_preprocessing()
        self._forward = self._make_forward(model)
        self._classes, self._prep = classes, prep
        self._weight_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
        self._model = model

    def warm_up(self) -> None:
        """As many blank images as one forward pass takes: kernels are chosen per batch shape."""
        width, height = self.decode_size
        self.predict([np.full((height, width, 3), 128, np.uint8)] * (self.chunk or 16), top=1)

    def _registry_preprocessing(self):
        spec = self._spec
        assert spec is not None
        return (spec.input_size, "rgb", spec.preprocess_function())

    def _preprocessing(self):
        if self._prep is None:
            with self._load_lock:
                if self._prep is None:
                    if self._model_path is not None:
                        self.load()
                    else:
                        self._prep = self._registry_preprocessing()
        assert self._prep is not None
        return self._prep

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


def classify(model: Classifier, images: list[np.ndarray], *, top_k: int = 5) -> list[Output]:
    """The pipeline's step: each image's ``top_k`` labels (``{rank, class_id, label, score}``),
    the whole list through the classifier together, in forward passes of its :attr:`~Classifier.chunk`."""
    return [Output([label.to_dict() for label in labels]) for labels in model.predict(images, top=top_k)]
