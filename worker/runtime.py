"""What one worker process holds: its database engine, the blob store, the loaded models, and the
queues it consumes.

A :class:`Runtime` is made on first use inside the process that uses it (after Celery's fork),
never at import: :class:`PerProcess` makes one per process and forgets a parent's after a fork,
so no connection or model is shared between processes. Tasks reach it as ``self.runtime`` (see
``worker.app``); tests build their own with :meth:`Runtime.create`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from darkroom import catalog
from darkroom.settings import Settings
from storage.blobs import BlobStore
from storage.db import make_engine, session_factory
from storage.results import ArtifactData
from tasks.base import InferenceModel, Output
from tasks.imaging import encode

log = logging.getLogger(__name__)

#: How long a task waits for its process's preload before going ahead anyway.
PRELOAD_WAIT = 300.0


@dataclass(frozen=True)
class Step:
    """A catalog task's step bound to its model and options, ready to run on images."""

    task: catalog.Task
    key: str
    model: InferenceModel | None
    options: dict[str, Any]

    def __call__(self, images: list[Any]) -> list[Output]:
        outputs = self.task.step(self.model, images, **self.options)
        if len(outputs) != len(images):
            raise RuntimeError(f"the {self.task.name} step gave {len(outputs)} results for {len(images)} images")
        return outputs

    @staticmethod
    def artifacts(output: Output) -> list[ArtifactData]:
        """The pictures a step made, encoded as they are stored (JPEG, quality 90)."""
        return [ArtifactData(kind=kind, idx=idx, mime="image/jpeg", width=int(pixels.shape[1]),
                             height=int(pixels.shape[0]), data=encode(pixels, "JPEG", quality=90))
                for kind, idx, pixels in output.images]

    @property
    def decode_size(self) -> tuple[int, int] | None:
        """The smallest (width, height) its photos may be decoded at; None: every pixel."""
        return self.task.decode_size(self.model, self.options) if self.task.decode_size else None


class ModelCache:
    """The models one process has loaded, by task, run key and the settings that shape the model.
    Thread-safe; a model that failed to load raises the same error for :attr:`RETRY_LOAD_AFTER`
    seconds (each try may mean a download)."""

    RETRY_LOAD_AFTER = 300.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[tuple[Any, ...], InferenceModel] = {}
        self._failures: dict[tuple[Any, ...], tuple[float, Exception]] = {}
        self._lock = threading.Lock()

    def get(self, task: catalog.Task, key: str) -> InferenceModel:
        """``task``'s model for a run's ``key``, made and loaded on first use."""
        assert task.model is not None
        options = task.model.options(self.settings)
        cache_key = (task.name, key, *sorted(options.items()))
        with self._lock:
            if cache_key in self._models:
                return self._models[cache_key]
            failed = self._failures.get(cache_key)
            if failed and time.monotonic() - failed[0] < self.RETRY_LOAD_AFTER:
                raise failed[1]
            configure_tensorflow(self.settings)
            try:
                model = task.model.make(key, options, tf_device())
                model.load()
            except Exception as exc:
                self._failures[cache_key] = (time.monotonic(), exc)
                raise
            self._models[cache_key] = model
            self._failures.pop(cache_key, None)
            log.info("loaded model %s %s in process %s", task.name, key, os.getpid())
            return model

    def step(self, task: catalog.Task, key: str) -> Step:
        """``task``'s step for runs keyed ``key``, with its model loaded (raises ModelUnavailable)."""
        return Step(task, key, self.get(task, key) if task.model else None, task.options(self.settings))

    def loaded(self) -> list[tuple[Any, ...]]:
        """The keys of the models loaded so far."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        """Forget every model (and failure): the next use loads anew."""
        with self._lock:
            self._models.clear()
            self._failures.clear()


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    identity: str
    #: The queues this process consumes; None: all of them.
    queues: list[str] | None = None
    models: ModelCache = field(init=False)
    _ready: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.models = ModelCache(self.settings)
        self._ready.set()

    @classmethod
    def create(cls, settings: Settings, queues: Sequence[str] | None = None) -> Runtime:
        """This process's runtime: a new engine (its own pool), the blob store, no model loaded yet."""
        return cls(settings=settings, sessions=session_factory(make_engine(settings.db_url)),
                   blobs=BlobStore(settings.blob_dir), identity=f"{socket.gethostname()}:{os.getpid()}",
                   queues=sorted(queues) if queues else None)

    def configure(self, settings: Settings) -> None:
        """Use other settings from now on. Loaded models stay: one is only reused where the settings
        that shape it are the same (they are part of its key)."""
        self.settings = settings
        self.models.settings = settings

    # --- what this process serves ----------------------------------------------------------------

    def serves(self, task: str) -> bool:
        """Whether this process may be sent ``task``'s runs (its queue is among those it consumes)."""
        return self.queues is None or catalog.get(task).queue in self.queues

    def holder_alive(self, holder: str) -> bool:
        return holder_alive(holder, me=self.identity)

    # --- models and steps --------------------------------------------------------------------------

    def step(self, task: catalog.Task, key: str) -> Step:
        """``task``'s step for runs keyed ``key``, with its model loaded (raises ModelUnavailable)."""
        return self.models.step(task, key)

    # --- the preload ---------------------------------------------------------------------------------

    def preload(self) -> list[str]:
        """Load the models of every configured task this process may be sent and run each step once
        on a blank image, so that loading, and TensorFlow's tracing, are done before the first photo.
        Returns what was warmed; a model that cannot be loaded is logged here and reported by its
        task's runs, as without a preload."""
        warmed = []
        started = time.perf_counter()
        served = {task.name for task in catalog.served_by(self.queues)}
        for task in catalog.configured(self.settings):
            if task.name not in served or not task.preload:
                continue
            key = task.model_key(self.settings)
            try:
                step = self.step(task, key)
                if step.model is not None:
                    step.model.warm_up()
                else:
                    step([np.full((48, 64, 3), 128, np.uint8)])
            except Exception as exc:  # noqa: BLE001 - the task's own runs report it, with what to do
                log.warning("could not preload %s %s in process %s: %s", task.name, key, os.getpid(),
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            warmed.append(f"{task.name}:{key}" if key else task.name)
        log.info("process %s warm: %s in %.1f s", os.getpid(), ", ".join(warmed) or "nothing to load",
                 time.perf_counter() - started)
        return warmed

    def start_preload(self) -> None:
        """Run :meth:`preload` in a background thread; :meth:`wait_until_ready` waits for it.
        Celery waits only seconds for a new process, and a model can take longer to load; and
        TensorFlow's import is not safe from two threads at once."""
        self._ready.clear()

        def run() -> None:
            try:
                self.preload()
            except Exception:  # noqa: BLE001 - the tasks load what they need themselves
                log.exception("preloading models failed")
            finally:
                self._ready.set()

        threading.Thread(target=run, name="darkroom-preload", daemon=True).start()

    def wait_until_ready(self, timeout: float = PRELOAD_WAIT) -> None:
        if not self._ready.wait(timeout):
            log.warning("process %s: models still loading after %.0f s; going ahead", os.getpid(), timeout)


class PerProcess:
    """One :class:`Runtime` per process, made by ``make`` on first use; a child forgets its
    parent's (the pid is checked), so a pool or a model never crosses a fork."""

    def __init__(self, make: Callable[[], Runtime]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._runtime: Runtime | None = None

    def get(self) -> Runtime:
        with self._lock:
            if self._runtime is None or self._pid != os.getpid():
                self._runtime, self._pid = self._make(), os.getpid()
            return self._runtime

    def set(self, runtime: Runtime) -> None:
        """Use ``runtime`` in this process (tests, and `darkroom.analyze`-style embedding)."""
        with self._lock:
            self._runtime, self._pid = runtime, os.getpid()


def tf_device() -> str:
    """Where this process runs its models: the first GPU when TensorFlow sees one (mtcnn's own
    default is the CPU, where its pyramid costs most), else the CPU. Call after
    :func:`configure_tensorflow`."""
    import tensorflow as tf  # heavy: imported in the worker process, after the fork

    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def holder_alive(holder: str, *, me: str | None = None) -> bool:
    """Whether the process named ``host:pid`` may still be working on a run.

    Another machine's process is assumed alive (its lease, enforced by the reconciler, covers it);
    on this machine the process table tells. The asking process itself is not "working" on a run
    it is free to claim again (a retry of its own task).
    """
    host, _, pid = holder.rpartition(":")
    if me is not None and holder == me:
        return False
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no /proc (not Linux): fall back to a signal probe
        try:
            os.kill(int(pid), 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _tf_threads(settings: Settings) -> int:
    if settings.tf_threads:
        return settings.tf_threads
    cores = os.cpu_count() or 1
    processes = settings.concurrency or cores
    return max(1, cores // processes)


_tf_configured_in: int | None = None


def configure_tensorflow(settings: Settings) -> None:
    """Size TensorFlow's thread pools and let it share a GPU politely (memory growth), once per
    process, before its first model is built."""
    global _tf_configured_in
    if _tf_configured_in == os.getpid():
        return
    import tensorflow as tf  # heavy: imported in the worker process, after the fork

    threads = _tf_threads(settings)
    try:
        # One worker process per core by default: TensorFlow's own thread pools per process would
        # otherwise oversubscribe the cores (N processes x N threads).
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:  # already initialised in this process
        pass
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
    _tf_configured_in = os.getpid()
