"""Darkroom as a library: one photo's results, in this process, without Redis or SQL.

    import darkroom

    result = darkroom.analyze("holiday.jpg")                      # every configured task
    result = darkroom.analyze(pixels, tasks=["faces"])           # an HxWx3 uint8 array
    result["faces"], result["labels"], result["phash"]

The result has the shape of the Results JSON (README: "Results JSON"), as ``darkroom results
--json`` prints it for a stored photo, computed the way a worker computes it: the same catalog
steps, each photo decoded at the size each task needs, the same failure policy (a photo that
cannot be decoded is ``rejected``, a model that cannot be had ``failed``, with the reason in
``errors``). Photos alone have no near-duplicates to list. A missing file raises
``FileNotFoundError``.

:class:`Analyzer` keeps its models loaded between calls (``darkroom.analyze`` keeps one per
settings and tasks) and classifies a list of photos together (:meth:`Analyzer.analyze_many`).
"""

from __future__ import annotations

import hashlib
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkroom import catalog
from darkroom.settings import Settings, get_settings
from storage import capture
from storage.models import DONE, FAILED, REJECTED
from tasks.base import Output
from tasks.imaging import BadImage, decode, probe
from worker.pipeline import outcome
from worker.runtime import ModelCache, Step

Source = str | Path | bytes | np.ndarray


class Analyzer:
    """The catalog's steps in this process, their models loaded once (see the module docstring)."""

    def __init__(self, settings: Settings | None = None, tasks: Sequence[str] | None = None) -> None:
        self.settings = settings or get_settings()
        self.tasks = [catalog.get(name) for name in (tasks if tasks is not None else self.settings.tasks)]
        self.models = ModelCache(self.settings)
        self.context = catalog.read_context(self.settings)

    def step(self, name: str) -> Step:
        """The named task's step under these settings, its model loaded (raises ModelUnavailable)."""
        task = catalog.get(name)
        return self.models.step(task, task.model_key(self.settings))

    def decode_size(self, name: str) -> tuple[int, int] | None:
        """The smallest (width, height) the task's photo may be decoded at; None: every pixel."""
        return self.step(name).decode_size if self.settings.fast_decode else None

    def analyze(self, source: Source) -> dict[str, Any]:
        """One photo's results (see the module docstring)."""
        return self.analyze_many([source])[0]

    def analyze_many(self, sources: Sequence[Source]) -> list[dict[str, Any]]:
        """Several photos' results; a batched task (classification) takes them all at once."""
        photos = [_Photo.read(source, self.settings) for source in sources]
        steps: dict[str, Step | Exception] = {}
        for task in self.tasks:
            try:
                steps[task.name] = self.step(task.name)
            except Exception as exc:  # noqa: BLE001 - the task's result says why, as a run's would
                steps[task.name] = exc
        outputs: dict[tuple[int, str], Output] = {}
        errors: dict[tuple[int, str], tuple[str, str]] = {}
        for task in self.tasks:
            step = steps[task.name]
            usable = [i for i, photo in enumerate(photos) if photo.rejected is None]
            if isinstance(step, Exception):
                for i in usable:
                    errors[i, task.name] = outcome(step, photos[i].name, task.name, self.settings.task_time_limit)
                continue
            size = step.decode_size if self.settings.fast_decode else None
            images: dict[int, np.ndarray] = {}
            for i in usable:
                try:
                    images[i] = photos[i].pixels(size, self.settings)
                except BadImage as exc:
                    photos[i].rejected = f"{photos[i].name}: {exc}"
            order = [i for i in usable if i in images]
            groups = [order] if task.batched else [[i] for i in order]
            for group in groups:
                if not group:
                    continue
                try:
                    for i, out in zip(group, step([images[i] for i in group])):
                        outputs[i, task.name] = out
                except Exception as exc:  # noqa: BLE001 - recorded as the worker records it
                    for i in group:
                        errors[i, task.name] = outcome(exc, photos[i].name, task.name, self.settings.task_time_limit)
        return [self._result(i, photo, steps, outputs, errors) for i, photo in enumerate(photos)]

    def _result(self, i: int, photo: _Photo, steps: dict[str, Step | Exception],
                outputs: dict[tuple[int, str], Output], errors: dict[tuple[int, str], tuple[str, str]]) -> dict[str, Any]:
        states, reasons, artifacts = {}, {}, []
        for task in self.tasks:
            key = task.model_key(self.settings)
            label = f"{task.name}:{key}" if key else task.name
            if photo.rejected is not None:
                states[label] = REJECTED
            elif (i, task.name) in errors:
                states[label], reasons[task.name] = errors[i, task.name]
            else:
                states[label] = DONE
                artifacts += [(kind, idx) for kind, idx, _pixels in outputs[i, task.name].images]
        if photo.rejected is not None:
            reasons = {"image": photo.rejected}
        item: dict[str, Any] = {
            "path": photo.path, "paths": [photo.path] if photo.path else [], "sha256": photo.sha256,
            "format": photo.format, "width": photo.width, "height": photo.height, "size_bytes": photo.size_bytes,
            "decoder": photo.decoder, "color_profile": photo.color_profile, "original": None,
            # As a worker stores them (storage.capture): the frames and the capture metadata.
            **capture.frames_json(photo.described), "capture": capture.capture_json(photo.described),
            "status": REJECTED if photo.rejected else (FAILED if reasons else DONE), "tasks": states,
        }
        for task in catalog.TASKS:
            out = outputs.get((i, task.name))
            if out is None:
                item.update(task.results.empty())
                continue
            step = steps[task.name]
            assert isinstance(step, Step)
            mine = [(kind, idx) for kind, idx, _pixels in out.images]
            item.update(task.results.to_json({step.key: out.data}, mine, self.context))
        counts: dict[str, int] = {}
        for kind, _idx in artifacts:
            counts[kind] = counts.get(kind, 0) + 1
        item["artifacts"] = counts
        item["errors"] = reasons
        return item


class _Photo:
    """One source: its bytes (or pixels), what its header says, and its decodes by size."""

    def __init__(self, *, name: str, path: str | None, data: bytes | None, array: np.ndarray | None) -> None:
        self.name, self.path, self._data, self._array = name, path, data, array
        self._decoded: dict[tuple[int, int] | None, np.ndarray] = {}
        self.rejected: str | None = None
        self.format: str | None = None
        self.decoder: str | None = None
        self.color_profile: str | None = None
        self.width = self.height = None
        #: The images columns a registration would store of it (frames, capture metadata).
        self.described = types.SimpleNamespace(**capture.columns(None, 1 if array is not None else None))
        if array is not None:
            self.sha256 = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
            self.size_bytes = int(array.nbytes)
            self.height, self.width = (int(v) for v in array.shape[:2])
        else:
            assert data is not None
            self.sha256 = hashlib.sha256(data).hexdigest()
            self.size_bytes = len(data)

    @classmethod
    def read(cls, source: Source, settings: Settings) -> _Photo:
        if isinstance(source, np.ndarray):
            if source.dtype != np.uint8 or source.ndim not in (2, 3):
                raise ValueError(f"expected an HxW or HxWx3 uint8 array, got {source.dtype} of shape {source.shape}")
            return cls(name="<array>", path=None, data=None, array=source)
        if isinstance(source, bytes):
            photo = cls(name="<bytes>", path=None, data=source, array=None)
        else:
            path = Path(source).expanduser().absolute()
            photo = cls(name=str(path), path=str(path), data=path.read_bytes(), array=None)
        if photo.size_bytes > settings.max_image_bytes:
            photo.rejected = (f"{photo.name}: {photo.size_bytes} bytes is over the limit of {settings.max_image_bytes} "
                              "(raise DARKROOM_MAX_IMAGE_BYTES to accept it)")
            return photo
        try:
            info = probe(photo._data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                         **catalog.raw_options(settings))
            photo.format, photo.width, photo.height = info.format, info.width, info.height
            photo.decoder, photo.color_profile = info.decoder, info.color_profile
            photo.described = types.SimpleNamespace(**capture.columns(
                info.capture.values() if info.capture is not None else None, info.frames))
        except BadImage as exc:
            photo.rejected = f"{photo.name}: {exc}"
        return photo

    def pixels(self, at_least: tuple[int, int] | None, settings: Settings) -> np.ndarray:
        """The photo decoded at least ``at_least`` big (None: every pixel), each size once."""
        if self._array is not None:
            return self._array
        if at_least not in self._decoded:
            self._decoded[at_least] = decode(self._data, max_pixels=settings.max_image_pixels, at_least=at_least,
                                             **catalog.raw_options(settings))
        return self._decoded[at_least]


_analyzers: dict[tuple[int, tuple[str, ...] | None], Analyzer] = {}
_analyzers_lock = threading.Lock()


def analyze(source: Source, tasks: Sequence[str] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """One photo's results in the Results JSON shape, computed in this process (no Redis, no SQL).

    ``source``: a path, the file's bytes, or an HxWx3 uint8 RGB array; ``tasks``: names from the
    catalog (default: DARKROOM_TASKS); ``settings``: default, the environment's. Models stay loaded
    for the next call with the same settings and tasks.
    """
    settings = settings or get_settings()
    key = (id(settings), tuple(tasks) if tasks is not None else None)
    with _analyzers_lock:
        analyzer = _analyzers.get(key)
        if analyzer is None or analyzer.settings is not settings:
            analyzer = _analyzers[key] = Analyzer(settings, tasks)
    return analyzer.analyze(source)


__all__ = ["Analyzer", "analyze"]
