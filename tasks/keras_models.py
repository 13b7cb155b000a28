"""The Keras models Darkroom knows by name, their ImageNet class index, and saved models with their
metadata sidecar: how a classifier's Keras model is found, built and loaded.

Pure: nothing here knows Darkroom's settings. Errors name the argument to fix through ``names``
(``{"model": ..., "weights": ...}``): the caller says what a person calls them (a setting, a flag).
Keras is imported lazily, inside the functions that need it.

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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tasks.base import ModelUnavailable, one_line

#: What errors call the two arguments when the caller does not say.
ARGUMENT_NAMES = {"model": "the model argument", "weights": "the weights argument"}

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


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


# ImageNet class names (shipped: tasks/data/imagenet_class_index.json, Keras's format).


@functools.lru_cache(maxsize=1)
def _imagenet_index() -> tuple[tuple[str, str], ...]:
    try:
        text = resources.files("tasks").joinpath("data").joinpath("imagenet_class_index.json").read_text(
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


def _keras_home() -> Path:
    """Keras's cache root, read now (Keras itself reads KERAS_HOME once, at import)."""
    home = os.environ.get("KERAS_HOME")
    return Path(home).expanduser() if home else Path("~").expanduser() / ".keras"


def sha12(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _scale(x: np.ndarray) -> np.ndarray:
    return x / np.float32(255.0)


def _identity(x: np.ndarray) -> np.ndarray:
    return x



def looks_like_path(model: str) -> bool:
    return model.endswith((".keras", ".h5")) or os.sep in model or (os.altsep or os.sep) in model or Path(model).exists()


def load_registry_model(spec: AppSpec, weights: str, weights_path: Path | None, names: dict[str, str]) -> Any:
    """``spec``'s Keras model with ``weights`` (``imagenet``, ``none`` or a file, ``weights_path``)."""
    if weights == "none":
        return spec.build(weights=None)
    if weights_path is not None:
        path = weights_path
        if not path.is_file():
            raise ModelUnavailable(
                f"classifier {spec.name!r}: the weights file {path} does not exist. "
                f"Fix {names['weights']}, or use 'imagenet' or 'none'."
            )
        model = spec.build(weights=None)
        try:
            model.load_weights(str(path))
        except Exception as exc:
            raise ModelUnavailable(
                f"classifier {spec.name!r}: cannot load the weights file {path} into "
                f"{spec.constructor} ({one_line(exc, 300, with_type=True)}). It must hold weights of keras.applications."
                f"{spec.constructor}(include_top=True) with 1000 classes: Keras's own "
                f"{spec.weights_file}, or a file written by model.save_weights('x.weights.h5'). "
                f"Fix {names['weights']}, or give {names['model']} a saved .keras model for another model."
            ) from exc
        return model
    # "imagenet": Keras's usual download-and-cache path, with the cache read from KERAS_HOME now.
    path = _imagenet_weights(spec, names)
    model = spec.build(weights=None)
    try:
        model.load_weights(path)
    except Exception as exc:
        raise ModelUnavailable(
            f"classifier {spec.name!r}: the cached ImageNet weights {path} cannot be loaded "
            f"({one_line(exc, 300, with_type=True)}); the file is probably truncated. Delete it and "
            + _how_to_provide(spec, names)
        ) from exc
    return model


def _imagenet_weights(spec: AppSpec, names: dict[str, str]) -> str:
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
            f"({one_line(exc, 300, with_type=True)}). " + _how_to_provide(spec, names)
        ) from exc


def load_saved_model(path: Path, weights_path: Path | None, names: dict[str, str]):
    """A saved ``.keras`` model, its class names and its preprocessing ``(input size, colour mode,
    function)`` from the sidecar (see the module docstring); raises :class:`ModelUnavailable`."""
    import keras

    if not path.is_file():
        raise ModelUnavailable(
            f"classifier: the saved model {path} does not exist. Fix {names['model']}."
        )
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise ModelUnavailable(
            f"classifier: cannot load the saved model {path} ({one_line(exc, 300, with_type=True)}). It must be a "
            f"Keras 3 .keras file (model.save('name.keras')) using built-in layers only. "
            f"Fix {names['model']}."
        ) from exc
    if weights_path is not None:
        try:
            model.load_weights(str(weights_path))
        except Exception as exc:
            raise ModelUnavailable(
                f"classifier: cannot load the weights file {weights_path} into the saved model "
                f"{path} ({one_line(exc, 300, with_type=True)}). Fix {names['weights']}, or leave it unset to use "
                "the model's own weights."
            ) from exc

    meta_path = path.with_suffix(".json")
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"classifier: cannot read the metadata {meta_path} ({one_line(exc, 300, with_type=True)}).") from exc
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


def _how_to_provide(spec: AppSpec, names: dict[str, str]) -> str:
    home = _keras_home()
    return (
        "Provide the weights in one of three ways: "
        f"(1) run it once on a machine connected to the internet (Darkroom, or "
        f"`python -c \"import keras; keras.applications.{spec.constructor}()\"`): Keras downloads the file "
        f"and caches it as ~/.keras/models/{spec.weights_file} ($KERAS_HOME/models/ when KERAS_HOME is set); "
        f"copy that file into this machine's cache; "
        f"(2) put the weights file (from {spec.origin}) at {home / 'models' / spec.weights_file}; "
        f"(3) give {names['weights']} a local weights file (/path/to/weights.h5, weights for "
        f"{spec.constructor}), or {names['model']} a saved Keras model (/path/to/model.keras)."
    )
