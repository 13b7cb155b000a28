"""The in-process reference: Darkroom's own four stages over the corpus in one process, no queue,
no database, classification batched. It gives each stage's cost (CPU seconds and wall seconds per
image), the reference throughput, and the model's raw batched throughput.

Stages, timed separately with ``time.process_time`` (CPU of every thread of this process) and
``time.perf_counter`` (wall):

- ``decode``: ``tasks.imaging.decode(path)`` (read and decode every pixel, once per image, for
  normalize and faces);
- ``normalize``: ``tasks.normalize.normalize_stats(image, mode="scale")``, as the worker calls it;
- ``classify``: ``Classifier.predict`` on batches of ``batch_size`` images, each decoded as the
  worker decodes it for classification (``at_least`` the model's input: DARKROOM_FAST_DECODE)
  and resized;
- ``augment``: the photo decoded as the worker decodes it for augmentation, ``tasks.augment.augment``
  with Darkroom's default spec, the contact sheet and the JPEG encoding of all of them (what the
  worker stores);
- ``faces``: ``FaceDetector.detect``, and, as the worker does by default (DARKROOM_FACE_BOXED=found),
  for a photo with faces the boxes drawn and the boxed image encoded as JPEG.

Storing results is not part of any stage: that is the systems' overhead, which the reference lacks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "normalize", "classify", "augment", "faces")


@dataclass
class StageCost:
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def per_image(self, n: int) -> dict[str, float]:
        return {"cpu_s_per_image": self.cpu_s / n, "wall_s_per_image": self.wall_s / n}


@dataclass
class ReferenceResult:
    model: str
    weights: str
    images: int
    batch_size: int
    wall_s: float
    cpu_s: float
    img_s: float
    stages: dict[str, dict[str, float]]
    raw_classify_img_s: float
    raw_classify_batches: int
    same_top1: dict[str, Any] = field(default_factory=dict)
    raw_classify_single_img_s: float | None = None
    foreign_load: float | None = None
    #: Images per forward pass of the reference's (and Darkroom's) classifier; the model's raw
    #: throughput in passes of that many too, when it is not ``batch_size``.
    chunk: int | None = None
    raw_classify_chunk_img_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cpu_s_per_image(self) -> float:
        return sum(s["cpu_s_per_image"] for s in self.stages.values())


class _Timer:
    def __init__(self, cost: StageCost):
        self.cost = cost

    def __enter__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cost.cpu_s += time.process_time() - self.cpu
        self.cost.wall_s += time.perf_counter() - self.wall


class Pipeline:
    """Darkroom's stages as the reference runs them: the library API's :class:`darkroom.Analyzer`
    (the catalog's steps, their models loaded once), one stage at a time so each can be timed."""

    def __init__(self, model: str, weights: str = "none", *, top_k: int = 5, face_min_confidence: float = 0.9,
                 face_min_size: int = 20):
        from darkroom.api import Analyzer
        from darkroom.settings import Settings

        self.model, self.weights, self.top_k = model, weights, top_k
        # The environment's other settings (DARKROOM_CLASSIFY_CHUNK, DARKROOM_FACE_BOXED, ...), as
        # Darkroom's worker has them.
        self.settings = Settings(classifier_model=model, classifier_weights=weights, classifier_top_k=top_k,
                                 face_min_confidence=face_min_confidence, face_min_size=face_min_size)
        self.analyzer = Analyzer(self.settings, tasks=STAGES[1:])
        self.steps = {name: self.analyzer.step(name) for name in STAGES[1:]}
        self.classifier = self.steps["classify"].model

    # the stages
    @staticmethod
    def decode(path: Path, at_least: tuple[int, int] | None = None) -> np.ndarray:
        from tasks.imaging import decode

        return decode(str(path), at_least=at_least)

    def decode_for_classify(self, path: Path) -> np.ndarray:
        """The photo as the worker decodes it for classification (fast decode on, the default)."""
        return self.decode(path, self.steps["classify"].decode_size)

    def decode_for_augment(self, path: Path) -> np.ndarray:
        return self.decode(path, self.steps["augment"].decode_size)

    def normalize(self, image: np.ndarray) -> list:
        return self.steps["normalize"]([image])[0].data

    def classify(self, images: list[np.ndarray]) -> list:
        """Each image's labels (``{rank, class_id, label, score}``), the list in one call."""
        return [out.data for out in self.steps["classify"](images)]

    def augment(self, image: np.ndarray) -> int:
        """The augmented copies and the contact sheet, encoded as the worker stores them."""
        (out,) = self.steps["augment"]([image])
        return len(self.steps["augment"].artifacts(out))

    def faces(self, image: np.ndarray) -> list:
        """The faces, and the boxed photo and crops encoded where the settings store them."""
        step = self.steps["faces"]
        (out,) = step([image])
        step.artifacts(out)
        return out.data

    def all_stages(self, path: Path) -> float:
        """Wall seconds to compute every result of one photo, alone (classification unbatched)."""
        t = time.perf_counter()
        image = self.decode(path)
        self.normalize(image)
        self.classify([self.decode_for_classify(path)])
        self.augment(self.decode_for_augment(path))
        self.faces(image)
        return time.perf_counter() - t


def run_reference(files: list[Path], model: str, weights: str = "none", *, batch_size: int = 16,
                  pipeline: Pipeline | None = None, raw_seconds: float = 3.0, check_top1: int = 16,
                  log=print) -> tuple[ReferenceResult, Pipeline]:
    """Run the four stages over ``files`` in this process; returns the figures and the loaded pipeline."""
    if not files:
        raise ValueError("no files")
    pipe = pipeline or Pipeline(model, weights)
    # Warm-up, untimed: first calls trace TensorFlow functions and build layers.
    warm = [pipe.decode(p) for p in files[: min(2, len(files))]]
    small = [pipe.decode_for_classify(p) for p in files[: min(2, len(files))]]
    pipe.classify(small)
    pipe.classify(small[:1])
    for img in warm:
        pipe.normalize(img)
        pipe.augment(img)
        pipe.faces(img)

    from bench.procs import ForeignLoad

    costs = {stage: StageCost() for stage in STAGES}
    foreign = ForeignLoad()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    first_batch: list[np.ndarray] = []
    batched_top1: list[int] = []
    for start in range(0, len(files), batch_size):
        paths = files[start:start + batch_size]
        images = []
        for path in paths:
            with _Timer(costs["decode"]):
                images.append(pipe.decode(path))
        for img in images:
            with _Timer(costs["normalize"]):
                pipe.normalize(img)
        with _Timer(costs["classify"]):
            small = [pipe.decode_for_classify(path) for path in paths]
            labels = pipe.classify(small)
        batched_top1.extend(lab[0]["class_id"] for lab in labels)
        for path in paths:
            with _Timer(costs["augment"]):
                pipe.augment(pipe.decode_for_augment(path))
        for img in images:
            with _Timer(costs["faces"]):
                pipe.faces(img)
        if not first_batch:
            first_batch = small[:check_top1]
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    foreign_load = foreign.stop()
    n = len(files)

    # Same outputs: batched top-1 against one call per image.
    unbatched = [pipe.classify([img])[0][0]["class_id"] for img in first_batch]
    same = sum(a == b for a, b in zip(batched_top1[: len(unbatched)], unbatched))

    sample = first_batch or [pipe.decode_for_classify(files[0])]
    raw, batches = raw_classify(pipe, sample, batch_size, raw_seconds)
    single, _ = raw_classify(pipe, sample, 1, raw_seconds)
    chunk = pipe.classifier.chunk
    chunked = None
    if chunk and chunk not in (batch_size, 1):
        chunked, _ = raw_classify(pipe, sample, chunk, raw_seconds)
    result = ReferenceResult(
        model=model, weights=weights, images=n, batch_size=batch_size, wall_s=round(wall, 3), cpu_s=round(cpu, 3),
        img_s=n / wall, stages={s: c.per_image(n) for s, c in costs.items()},
        raw_classify_img_s=raw, raw_classify_batches=batches,
        same_top1={"checked": len(unbatched), "identical": same}, raw_classify_single_img_s=single,
        foreign_load=foreign_load, chunk=chunk, raw_classify_chunk_img_s=chunked,
    )
    return result, pipe


def _forward(model):
    """The model's inference call on a float32 batch, compiled once for any batch size (as Darkroom's
    classifier compiles it), returning numpy."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True,
                         input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
        return lambda x: fn(x).numpy()
    return lambda x: np.asarray(model.predict_on_batch(x))


def raw_classify(pipe: Pipeline, images: list[np.ndarray], batch_size: int, seconds: float = 3.0) -> tuple[float, int]:
    """The model's raw batched throughput (images/s): the model alone, on batches of ``batch_size``
    images already decoded, resized to its input size and preprocessed, for at least ``seconds``
    (and 3 batches)."""
    from tasks.imaging import resize

    clf = pipe.classifier
    small = [resize(img, clf.input_size) for img in images]
    batch = clf.preprocess([small[i % len(small)] for i in range(batch_size)])
    forward = _forward(clf.keras_model)
    forward(batch)  # warm (trace)
    done, t0 = 0, time.perf_counter()
    while True:
        forward(batch)
        done += 1
        elapsed = time.perf_counter() - t0
        if done >= 3 and elapsed >= seconds:
            return done * batch_size / elapsed, done


def compute_times(pipe: Pipeline, files: list[Path]) -> dict[str, float]:
    """path -> wall seconds to compute all of that photo's results alone in this process."""
    pipe.all_stages(files[0])  # warm
    return {str(p): pipe.all_stages(p) for p in files}
