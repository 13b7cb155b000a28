"""What work an image gets, as (task, model) pairs, and how a run's model key maps back to a model.

Cheap on purpose (no TensorFlow): the producer plans runs with it, and the worker reads the key back.
"""

from __future__ import annotations

from darkroom.settings import Settings

FACE_MODEL = "mtcnn"


def classifier_key(model: str, weights: str) -> str:
    """The name results are stored under: ``vgg16`` (ImageNet weights), ``vgg16@none``, ``vgg16@/w.h5``,
    or the path of a saved model."""
    if is_model_path(model) or weights == "imagenet":
        return model
    return f"{model}@{weights}"


def parse_classifier_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`classifier_key`: (model, weights)."""
    name, sep, weights = key.partition("@")
    if sep and not is_model_path(name):
        return name, weights
    return key, "imagenet"


def is_model_path(model: str) -> bool:
    return "/" in model or model.endswith(".keras") or model.endswith(".h5")


def planned_work(settings: Settings) -> list[tuple[str, str]]:
    """The (task, model) runs every image gets under these settings."""
    work = []
    for task in settings.tasks:
        if task == "classify":
            work.append((task, classifier_key(settings.classifier_model, settings.classifier_weights)))
        elif task == "faces":
            work.append((task, FACE_MODEL))
        else:
            work.append((task, ""))
    return work
