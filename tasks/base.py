"""What every per-image task in ``tasks/`` shares: the output a step returns, the base of the
models a step runs, and the error that says a model cannot be had.

A *step* is a pure function ``step(model, images, **options) -> list[Output]``: one output per
image, in order. ``model`` is an :class:`InferenceModel` (or None for a task without one) and
``options`` are plain values; nothing here knows Darkroom's settings, SQL or Celery.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InferenceModel", "ModelUnavailable", "Output", "one_line"]


class ModelUnavailable(RuntimeError):
    """The model, or its weights, cannot be had; the message says what is missing and how to fix it."""


@dataclass
class Output:
    """One image's result from a step.

    ``data``: plain JSON-able values, what the task's storage writes; ``images``: pictures the step
    made, as ``(kind, idx, pixels)`` (an ``HxWx3`` uint8 array), stored as artifacts.
    """

    data: Any
    images: list[tuple[str, int, np.ndarray]] = field(default_factory=list)


class InferenceModel:
    """A model loaded lazily and once (in the manner of Immich's ``InferenceModel``).

    Subclasses implement :meth:`_load` (import the framework, build or read the weights; raise
    :class:`ModelUnavailable` with what to do when that cannot be done) and :meth:`predict`.
    :meth:`load` is idempotent and thread-safe; :attr:`identity` names the model and its weights,
    which results are keyed by.
    """

    #: A short name (``mtcnn``, ``vgg16``).
    name: str = "model"

    def __init__(self) -> None:
        self._load_lock = threading.RLock()
        self._loaded = False

    @property
    def identity(self) -> str:
        """``name`` and the weights' version: what a result came from."""
        return f"{self.name}@{self.version}"

    @property
    def version(self) -> str:
        return "1"

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> InferenceModel:
        """Load the model (first call only). Raises :class:`ModelUnavailable`."""
        if self._loaded:
            return self
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    def _load(self) -> None:
        raise NotImplementedError

    def predict(self, images: list[np.ndarray]) -> list[Any]:
        """One prediction per image, in order."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Run once on a blank image so that tracing and kernel choice are done before real work."""
        self.predict([np.full((96, 128, 3), 128, np.uint8)])


def one_line(exc: BaseException, limit: int = 500, *, with_type: bool = False) -> str:
    """The first line of an error's message, at most ``limit`` characters (``Type: message`` with
    ``with_type``): errors are stored and shown one per line."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if with_type:
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    elif not text:
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
