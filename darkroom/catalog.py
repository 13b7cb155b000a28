"""The catalog: every per-image task Darkroom runs, declared once.

Each :class:`Task` says what the rest of Darkroom needs to know of it — its name (the Celery task is
``darkroom.<name>``), the queue it is routed to, whether its runs are batched, its model and how
runs are keyed by it, the size its photo may be decoded at, the pure step it calls in ``tasks/``,
how its result is stored and read back into the Results JSON (``storage.results``), and whether
its model is preloaded. Settings validation, the producer's planned work, routing, the worker's
handlers and preload, ``rerun``, ``status`` and ``results`` all read :data:`TASKS`.

Adding a task is one entry here, one pure step in ``tasks/`` and its storage in ``storage/``.

Nothing here reads the environment: options come from a :class:`darkroom.settings.Settings`
handed in. Importing this module imports no TensorFlow (the steps import it when they run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from storage import results
from tasks import augment, classify, faces, imaging, normalize, phash
from tasks.base import InferenceModel, Output

if TYPE_CHECKING:  # settings import this module (for the task names): a type only, no cycle
    from darkroom.settings import Settings

#: The queues: model inference on ``gpu``, the rest on ``cpu`` (a worker may consume both).
QUEUES = ("cpu", "gpu")

#: What a classifier's errors call its two arguments, in the pipeline.
CLASSIFIER_SETTINGS = {"model": "DARKROOM_CLASSIFIER_MODEL", "weights": "DARKROOM_CLASSIFIER_WEIGHTS"}


@dataclass(frozen=True)
class Model:
    """How a task's runs are keyed by their model, and how that model is made.

    ``key(settings)``: the identity runs are created and results stored under (``vgg16``,
    ``vgg16@none``, ``mtcnn``); ``options(settings)``: the settings that shape the model (plain,
    hashable values); ``make(key, options, device)``: the model for a run's key, not yet loaded
    (:meth:`tasks.base.InferenceModel.load` loads it, once per process and key and options).
    """

    key: Callable[[Settings], str]
    make: Callable[[str, dict[str, Any], str], InferenceModel]
    options: Callable[[Settings], dict[str, Any]] = lambda _settings: {}


@dataclass(frozen=True)
class Task:
    """One per-image task. See the module docstring."""

    name: str
    queue: str
    summary: str
    #: The pure step: ``step(model, images, **options(settings)) -> list[Output]``, one per image.
    step: Callable[..., list[Output]]
    #: How results are stored and read back into the Results JSON.
    results: results.TaskResults
    #: The step's options, from the settings (plain values: the step knows no settings).
    options: Callable[[Settings], dict[str, Any]] = lambda _settings: {}
    model: Model | None = None
    #: Runs per batch (``settings -> n``): the producer sends waiting runs one message per batch and a
    #: worker claims pending runs to fill one, all through the step at once. None: one image a call.
    batch_size: Callable[[Settings], int] | None = None
    #: The smallest ``(width, height)`` the photo may be decoded at (``(model, options) -> size``),
    #: when DARKROOM_FAST_DECODE allows; None: every pixel. Tasks on every pixel of the same photo
    #: share one decode in a worker that serves them.
    decode_size: Callable[[InferenceModel | None, dict[str, Any]], tuple[int, int]] | None = None
    #: Load the model and run the step once as a worker process starts (DARKROOM_PRELOAD_MODELS).
    preload: bool = True

    @property
    def celery_name(self) -> str:
        return task_name(self.name)

    @property
    def batched(self) -> bool:
        return self.batch_size is not None

    @property
    def full_pixels(self) -> bool:
        return self.decode_size is None

    def model_key(self, settings: Settings) -> str:
        """The key the settings give this task's runs ('' for a task without a model)."""
        return self.model.key(settings) if self.model else ""


def task_name(name: str) -> str:
    """The Celery task's name: ``darkroom.<name>``."""
    return f"darkroom.{name}"


# --- classifier keys -----------------------------------------------------------------------------


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


def _make_classifier(key: str, options: dict[str, Any], device: str) -> InferenceModel:
    model, weights = parse_classifier_key(key)
    chunk: int | str | None = options["chunk"]
    if not chunk:  # the whole batch on a GPU; on a CPU the model's own rule (see tasks.classify.CPU_CHUNK)
        chunk = None if device.startswith("GPU") else classify.CPU_CHUNK
    return classify.Classifier.create(model, weights, names=CLASSIFIER_SETTINGS, chunk=chunk)


#: What runs of the face detector are keyed by.
FACE_MODEL = "mtcnn"


def _make_face_detector(key: str, options: dict[str, Any], device: str) -> InferenceModel:
    return faces.FaceDetector(options["min_confidence"], options["min_size"], max_side=options["max_side"],
                              device=device)


# --- the catalog ---------------------------------------------------------------------------------

TASKS: tuple[Task, ...] = (
    Task(
        name="normalize",
        queue="cpu",
        summary="lesson 2: pixel statistics before and after normalization",
        step=normalize.normalize_reports,
        results=results.NORMALIZATIONS,
        options=lambda s: {"modes": list(s.normalize_modes)},
        preload=False,
    ),
    Task(
        name="classify",
        queue="gpu",
        summary="lesson 4: the top-k ImageNet (or your model's) labels",
        step=classify.classify,
        results=results.LABELS,
        options=lambda s: {"top_k": s.classifier_top_k},
        model=Model(key=lambda s: classifier_key(s.classifier_model, s.classifier_weights), make=_make_classifier,
                    options=lambda s: {"chunk": s.classify_chunk}),
        batch_size=lambda s: s.classify_batch_size,
        decode_size=lambda model, _options: model.decode_size,
    ),
    Task(
        name="augment",
        queue="cpu",
        summary="lesson 6: randomly transformed copies and their contact sheet",
        step=augment.augment_images,
        results=results.AUGMENTATIONS,
        options=lambda s: {"flip": s.augment_flip, "rotation": s.augment_rotation, "count": s.augment_count,
                           "seed": s.augment_seed, "size": s.augment_size, "extra": s.augment},
        decode_size=lambda _model, options: augment.spec_from(**options).decode_size,
    ),
    Task(
        name="faces",
        queue="gpu",
        summary="lesson 7: every face (MTCNN), the photo boxed, a crop per face",
        step=faces.detect_faces,
        results=results.FACES,
        options=lambda s: {"crops": s.face_crops, "boxed": s.face_boxed},
        model=Model(key=lambda _s: FACE_MODEL, make=_make_face_detector,
                    options=lambda s: {"min_confidence": s.face_min_confidence, "min_size": s.face_min_size,
                                       "max_side": s.face_max_side or None}),
    ),
    Task(
        name="phash",
        queue="cpu",
        summary="a perceptual hash, to find near-duplicate photos",
        step=phash.phash_images,
        results=results.PHASHES,
        preload=False,
    ),
)

BY_NAME: dict[str, Task] = {task.name: task for task in TASKS}
#: Every task's name, in the order a person reads them.
NAMES: tuple[str, ...] = tuple(BY_NAME)
#: The tasks run on every image unless DARKROOM_TASKS says otherwise.
DEFAULT_TASKS: tuple[str, ...] = NAMES


def get(name: str) -> Task:
    """The task called ``name``; KeyError names the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; one of: {', '.join(NAMES)}") from None


def configured(settings: Settings) -> list[Task]:
    """The tasks DARKROOM_TASKS asks for, in its order."""
    return [BY_NAME[name] for name in settings.tasks]


def planned_work(settings: Settings) -> list[tuple[str, str]]:
    """The (task, model key) runs every image gets under these settings."""
    return [(task.name, task.model_key(settings)) for task in configured(settings)]


def raw_preview_size(settings: Settings) -> tuple[int, int] | None:
    """How large a camera RAW's embedded preview must be to stand in for the RAW (``tasks.imaging``'s
    ``preview_at_least``): the largest decode size the configured tasks ask for, so every task of a photo
    sees the same rendering. None (every pixel of the RAW) when one of them needs every pixel, when
    DARKROOM_FAST_DECODE is off, or when a size cannot be known without loading a model (a saved one)."""
    if not settings.fast_decode:
        return None
    sizes = []
    for task in configured(settings):
        if task.decode_size is None:
            return None
        model = None
        if task.model is not None:
            key = task.model_key(settings)
            if task.name == "classify" and is_model_path(parse_classifier_key(key)[0]):
                return None  # its input size is known only once the saved model is loaded
            try:
                model = task.model.make(key, task.model.options(settings), "CPU")
            except Exception:  # noqa: BLE001 - a model that cannot be had fails its own runs, not this
                return None
        sizes.append(task.decode_size(model, task.options(settings)))
    return (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else None


def raw_options(settings: Settings) -> dict[str, Any]:
    """``tasks.imaging``'s camera RAW arguments (``probe``, ``decode``) under these settings:
    DARKROOM_RAW, and how large an embedded preview must be (:func:`raw_preview_size`)."""
    return {"raw": settings.raw, "preview_at_least": raw_preview_size(settings)}


#: The longest side of a photo's thumbnail (``storage.results.THUMB``, the gallery's of `darkroom serve`).
THUMB_SIDE = 320


def thumbnail(original: bytes, pixels: np.ndarray | None, settings: Settings) -> results.ArtifactData:
    """A photo's thumbnail, at most :data:`THUMB_SIDE` pixels on its longest side, as a JPEG artifact.

    From a draft-mode decode of ``original`` when it is a JPEG (the codec's 1/8 scaling: about a tenth
    of a full decode of 12 MP) or when no ``pixels`` are at hand; otherwise from ``pixels``, the photo a
    worker decoded for its tasks (a HEIC or a RAW is not decoded twice). A JPEG's ``pixels`` are used
    as they are when already between one and two thumbnails' size (a small decode for classify)."""
    is_jpeg = original[:3] == b"\xff\xd8\xff"
    if pixels is None or (is_jpeg and not THUMB_SIDE <= max(pixels.shape[:2]) <= 2 * THUMB_SIDE):
        pixels = imaging.decode(original, max_pixels=settings.max_image_pixels, at_least=(THUMB_SIDE, THUMB_SIDE),
                                **raw_options(settings))
    small = imaging.fit_within(pixels, THUMB_SIDE)
    return results.ArtifactData(kind=results.THUMB, idx=0, mime="image/jpeg", width=int(small.shape[1]),
                                height=int(small.shape[0]), data=imaging.encode(small, "JPEG", quality=80))


def routes() -> dict[str, dict[str, str]]:
    """Celery's ``task_routes``: each task to its queue."""
    return {task.celery_name: {"queue": task.queue} for task in TASKS}


def served_by(queues: Sequence[str] | None) -> list[Task]:
    """The tasks a worker consuming ``queues`` may be sent (None: every queue)."""
    return [task for task in TASKS if queues is None or task.queue in queues]


def result_stores() -> list[results.TaskResults]:
    """Every task's results, in catalog order: the Results JSON has every task's fields."""
    return [task.results for task in TASKS]


def results_json(session: Any, images: Sequence[Any], settings: Settings | None = None) -> list[dict[str, Any]]:
    """The Results JSON of ``images`` (``storage.models.Image`` rows): every task's fields, read as
    ``settings`` say (None: the configured classifier is not known, the default near-duplicate distance)."""
    ctx = read_context(settings) if settings is not None else results.ReadContext()
    return results.results_json(session, images, result_stores(), ctx)


def read_context(settings: Settings) -> results.ReadContext:
    """How results are read under these settings (whose labels are ``labels``; the near-duplicate distance)."""
    return results.ReadContext(primary_model=BY_NAME["classify"].model_key(settings),
                               near_distance=settings.phash_distance)


__all__ = [
    "CLASSIFIER_SETTINGS", "DEFAULT_TASKS", "FACE_MODEL", "NAMES", "QUEUES", "TASKS", "THUMB_SIDE", "Model", "Task",
    "classifier_key", "configured", "get", "is_model_path", "parse_classifier_key",
    "planned_work", "raw_options", "raw_preview_size", "read_context", "result_stores", "results_json", "routes",
    "served_by", "task_name", "thumbnail",
]
