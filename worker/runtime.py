"""What one worker process holds: its database engine, the blob store and the loaded models.

Built on first use inside the process that uses it (after Celery's fork), never at import, and
thrown away in a child after a fork so no connection or model is shared between processes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from darkroom.settings import Settings
from storage.blobs import BlobStore
from storage.db import make_engine, session_factory

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    identity: str
    _models: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _failures: dict[tuple[Any, ...], tuple[float, Exception]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    #: A model that failed to load is not tried again for this long (each try may mean a download).
    RETRY_LOAD_AFTER = 300.0

    def model(self, key: tuple[Any, ...], build):
        """The model stored under ``key``, built (and loaded) by ``build()`` on first use."""
        with self._lock:
            if key in self._models:
                return self._models[key]
            failed = self._failures.get(key)
            if failed and time.monotonic() - failed[0] < self.RETRY_LOAD_AFTER:
                raise failed[1]
            configure_tensorflow(self.settings)
            try:
                model = build()
                model.load()
            except Exception as exc:
                self._failures[key] = (time.monotonic(), exc)
                raise
            self._models[key] = model
            self._failures.pop(key, None)
            log.info("loaded model %s in process %s", key, os.getpid())
            return model

    def holder_alive(self, holder: str) -> bool:
        return holder_alive(holder, me=self.identity)

    def classifier(self, model: str, weights: str):
        from tasks.classify import Classifier

        def make():
            classifier = Classifier.create(model, weights)
            classifier.chunk = forward_chunk(self.settings)
            return classifier

        return self.model(("classify", model, weights), make)

    def face_detector(self, min_confidence: float, min_size: int, max_side: int | None = None):
        from tasks.faces import FaceDetector

        return self.model(("faces", min_confidence, min_size, max_side),
                          lambda: FaceDetector(min_confidence, min_size, max_side=max_side, device=tf_device()))


def forward_chunk(settings: Settings) -> int | str | None:
    """``Classifier.chunk`` for this process: images per forward pass (DARKROOM_CLASSIFY_CHUNK);
    None: the whole batch (on a GPU); ``tasks.classify.CPU_CHUNK``: the model's CPU rule (a few
    images per pass, the whole batch for a model of several hundred MB of weights)."""
    if settings.classify_chunk:
        return settings.classify_chunk
    from tasks.classify import CPU_CHUNK

    return None if tf_device().startswith("GPU") else CPU_CHUNK


def tf_device() -> str:
    """Where this process runs MTCNN: its first GPU when TensorFlow sees one (mtcnn's own default
    is the CPU, where its pyramid costs most), else the CPU. Classifiers go where TensorFlow puts
    them, the GPU first. Call after :func:`configure_tensorflow`."""
    import tensorflow as tf

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


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
_tf_configured = False


def get_runtime(settings: Settings) -> Runtime:
    global _runtime
    with _runtime_lock:  # the preload thread and the first task may ask at once
        if _runtime is None:
            engine = make_engine(settings.db_url)
            _runtime = Runtime(
                settings=settings,
                sessions=session_factory(engine),
                blobs=BlobStore(settings.blob_dir),
                identity=f"{socket.gethostname()}:{os.getpid()}",
            )
        return _runtime


def preload(rt: Runtime, queues: Sequence[str] | None = None) -> list[str]:
    """Load the models of every configured task this process may be sent (those routed to
    ``queues``; None: all) and run each once on a blank image, so that loading, and TensorFlow's
    tracing, are done before the first photo. Returns what was warmed; a model that cannot be
    loaded is logged here and reported by its task's runs, as without a preload."""
    import numpy as np

    from darkroom.settings import TASK_QUEUES
    from darkroom.work import parse_classifier_key, planned_work

    cfg = rt.settings
    warmed = []
    started = time.perf_counter()
    for task, model in planned_work(cfg):
        if queues is not None and TASK_QUEUES[task] not in queues:
            continue
        try:
            if task == "classify":
                classifier = rt.classifier(*parse_classifier_key(model))
                width, height = classifier.decode_size
                # As many images as one forward pass takes: the kernels are chosen per batch shape.
                count = classifier.chunk or cfg.classify_batch_size
                classifier.predict([np.full((height, width, 3), 128, np.uint8)] * count, top=1)
            elif task == "faces":
                detector = rt.face_detector(cfg.face_min_confidence, cfg.face_min_size, cfg.face_max_side or None)
                detector.detect(np.full((96, 128, 3), 128, np.uint8))
            elif task == "augment":
                from tasks.augment import augment
                from worker.pipeline import augment_spec

                augment(np.full((48, 64, 3), 128, np.uint8), augment_spec(cfg))
            else:
                continue
        except Exception as exc:  # noqa: BLE001 - the task's own runs report it, with what to do
            log.warning("could not preload %s %s in process %s: %s", task, model or "", os.getpid(),
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        warmed.append(f"{task}:{model}" if model else task)
    log.info("process %s warm: %s in %.1f s", os.getpid(), ", ".join(warmed) or "nothing to load",
             time.perf_counter() - started)
    return warmed


#: The queues this worker process consumes (set as it starts); None: all of them.
served_queues: list[str] | None = None


def serves(task: str) -> bool:
    """Whether this process may be sent ``task``'s runs (its queue is among those it consumes)."""
    from darkroom.settings import TASK_QUEUES

    return served_queues is None or TASK_QUEUES[task] in served_queues


_preload_done = threading.Event()
_preload_done.set()

#: How long a task waits for its process's preload before going ahead anyway.
PRELOAD_WAIT = 300.0


def start_preload(settings: Settings, queues: Sequence[str] | None) -> None:
    """Run :func:`preload` in a background thread of this (new) worker process. Tasks wait for it
    (:func:`wait_for_preload`): TensorFlow's import is not safe from two threads at once."""
    _preload_done.clear()

    def run() -> None:
        try:
            preload(get_runtime(settings), queues)
        except Exception:  # noqa: BLE001 - the tasks load what they need themselves
            log.exception("preloading models failed")
        finally:
            _preload_done.set()

    threading.Thread(target=run, name="darkroom-preload", daemon=True).start()


def wait_for_preload(timeout: float = PRELOAD_WAIT) -> None:
    if not _preload_done.wait(timeout):
        log.warning("process %s: models still loading after %.0f s; going ahead", os.getpid(), timeout)


def _forget_after_fork() -> None:
    global _runtime, _runtime_lock, _tf_configured, _preload_done
    _runtime, _runtime_lock, _tf_configured = None, threading.Lock(), False
    _preload_done = threading.Event()
    _preload_done.set()


os.register_at_fork(after_in_child=_forget_after_fork)


def _tf_threads(settings: Settings) -> int:
    if settings.tf_threads:
        return settings.tf_threads
    cores = os.cpu_count() or 1
    processes = settings.concurrency or cores
    return max(1, cores // processes)


def configure_tensorflow(settings: Settings) -> None:
    """Let TensorFlow share a GPU politely (memory growth) before the first model is built."""
    global _tf_configured
    if _tf_configured:
        return
    import tensorflow as tf

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
    _tf_configured = True
