"""What one worker process holds: its database engine, the blob store, the loaded models, and the
queues it consumes.

A :class:`Runtime` is made on first use inside the process that uses it (after Celery's fork),
never at import: :class:`PerProcess` makes one per process and forgets a parent's after a fork,
so no connection or model is shared between processes. Tasks reach it as ``self.runtime`` (see
``worker.app``); tests build their own with :meth:`Runtime.create`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
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
from storage.stores import open_store
from tasks.base import InferenceModel, Output
from tasks.imaging import encode
from worker.broker import for_settings

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
    #: This process's heartbeat, once started (:meth:`start_heartbeat`).
    heartbeat: Heartbeat | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.models = ModelCache(self.settings)
        self._ready.set()

    @classmethod
    def create(cls, settings: Settings, queues: Sequence[str] | None = None) -> Runtime:
        """This process's runtime: a new engine (its own pool), the blob store, no model loaded yet."""
        identity = str(Holder.mine())
        engine = make_engine(settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                             application_name=f"darkroom-worker {identity}")
        return cls(settings=settings, sessions=session_factory(engine), blobs=open_store(settings.blob_location),
                   identity=identity, queues=sorted(queues) if queues else None)

    # --- the heartbeat -------------------------------------------------------------------------------

    def start_heartbeat(self) -> Heartbeat:
        """Keep this process's heartbeat key in Redis (see :class:`Heartbeat`) until it exits; the
        first beat is written before this returns (or logged as failed), so before any claim."""
        if self.heartbeat is None:
            client = for_settings(self.settings, socket_timeout=5, socket_connect_timeout=5)
            self.heartbeat = Heartbeat(client, self.identity, every=self.settings.heartbeat_seconds,
                                       ttl=self.settings.heartbeat_ttl)
            self.heartbeat.start()
        return self.heartbeat

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

    def made(self) -> Runtime | None:
        """This process's runtime if it has been made (none is made here)."""
        with self._lock:
            return self._runtime if self._pid == os.getpid() else None

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


# --- who holds a run, and whether it is alive ---------------------------------------------------------
#
# A run being worked on names its holder: ``hostname@host/start:pid`` — the process's hostname (for
# people), ``host``, a key of the host *instance* the pid belongs to, the process's start time (clock
# ticks after boot, from /proc/self/stat: a pid used again by another process is another holder), and
# its pid (last, as in the old format, so ``worker.rsplit(":", 1)`` still gives it). ``host`` is a
# hash of /etc/machine-id, the kernel's boot id and the process's PID namespace: containers (and the
# tests' namespaced "hosts") on one machine share the machine id, the boot id and often the hostname,
# but each has a PID namespace of its own; a reboot changes the boot id. So two processes have the
# same ``host`` exactly when each sees the other in /proc (hosts that share a PID namespace, say
# network namespaces alone, do), and only then is /proc asked.
#
# Every other holder is alive while its heartbeat is: a key in Redis (:func:`heartbeat_key`) that the
# process refreshes every DARKROOM_HEARTBEAT_SECONDS with a time to live of DARKROOM_HEARTBEAT_TTL
# (:class:`Heartbeat`). The producer's reconciler takes over the runs of holders whose key is gone.
#
# Holders written before this (``hostname:pid``) keep their old meaning: /proc decides when the
# hostname is this one, and elsewhere the reconciler's lease.

#: The prefix of each worker process's heartbeat key (the holder follows it).
HEARTBEAT_PREFIX = "darkroom:alive:"


def heartbeat_key(holder: str) -> str:
    return HEARTBEAT_PREFIX + holder


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int | str) -> str | None:
    """The process's start time in clock ticks after boot (field 22 of /proc/PID/stat), or None when
    there is no such process (or it is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else ""


def _proc_is_mine() -> bool:
    """Whether /proc shows this process's PID namespace (a container that kept its parent's /proc
    would otherwise have other processes' pids read as its own)."""
    try:
        return int(os.readlink("/proc/self")) == os.getpid()
    except (OSError, ValueError):
        return False


_host_key: tuple[int, str] | None = None


def host_key() -> str:
    """This host instance's key (see above): 16 hex digits. Where /proc cannot be trusted (no /proc,
    or not this PID namespace's), a random key per process, so that no other process is ever taken
    for one of ours. Computed once per process (the pid is checked: a fork keeps the namespace)."""
    global _host_key
    if _host_key is None:
        if _proc_is_mine():
            pid_ns = ""
            try:
                pid_ns = os.readlink("/proc/self/ns/pid")
            except OSError:
                pass
            seed = "\0".join(("darkroom-host", _read("/etc/machine-id"), _read("/proc/sys/kernel/random/boot_id"),
                              pid_ns))
            key = hashlib.sha256(seed.encode()).hexdigest()[:16] if pid_ns else uuid.uuid4().hex[:16]
        else:
            key = uuid.uuid4().hex[:16]
        _host_key = (os.getpid(), key)
    return _host_key[1]


@dataclass(frozen=True)
class Holder:
    """A run's holder, as written in ``task_runs.worker``."""

    hostname: str
    pid: int
    #: Start time in clock ticks after boot ('' when /proc has none); '' with ``host`` '' in a
    #: holder written before this format (``hostname:pid``).
    start: str = ""
    #: The host instance's key (:func:`host_key`); '' in a holder of the old format.
    host: str = ""

    def __str__(self) -> str:
        if not self.host:
            return f"{self.hostname}:{self.pid}"
        return f"{self.hostname}@{self.host}/{self.start}:{self.pid}"

    @classmethod
    def mine(cls) -> Holder:
        """This process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, (_start_ticks(pid) or "") if _proc_is_mine() else "", host_key())

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """A holder of either format; None for what is neither (never written by a worker)."""
        where, _, pid = text.rpartition(":")
        if not pid.isdigit():
            return None
        hostname, at, instance = where.rpartition("@")
        if not at:
            return cls(where, int(pid))
        host, _, start = instance.partition("/")
        return cls(hostname, int(pid), start, host) if host else None

    @property
    def legacy(self) -> bool:
        return not self.host

    @property
    def local(self) -> bool:
        """Whether /proc here can tell if it is alive: the same host instance (for an old-format
        holder: the same hostname, as it was then)."""
        return self.hostname == socket.gethostname() if self.legacy else self.host == host_key()

    def process_alive(self) -> bool:
        """For a :attr:`local` holder: whether its process is still there (and is the same process)."""
        ticks = _start_ticks(self.pid)
        if ticks is not None:
            return self.legacy or not self.start or ticks == self.start
        if os.path.isdir("/proc/self"):
            return False
        try:  # no /proc (not Linux): a signal probe
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def holder_alive(holder: str, *, me: str | None = None) -> bool:
    """Whether the process ``holder`` may still be working on a run, as far as this process can tell
    without asking Redis: a holder on this host instance by /proc; any other is assumed alive (the
    reconciler takes its runs over once its heartbeat is gone: :func:`dead_holders`). The asking process
    itself is not "working" on a run it is free to claim again (a retry of its own task)."""
    if me is not None and holder == me:
        return False
    parsed = Holder.parse(holder)
    if parsed is None or not parsed.local:
        return True
    return parsed.process_alive()


def dead_holders(client: Any, holders: Sequence[str], *, trust_missing: bool = True) -> list[str]:
    """Those of ``holders`` known to be dead: on this host instance, by /proc; elsewhere (new-format
    holders), by their heartbeat key, gone — every key read in one round trip (MGET). Old-format
    holders of other hosts are left to the reconciler's lease. ``trust_missing``: False right after the
    broker lost its data or failed over, when a missing key may only mean it was not written again yet."""
    dead: list[str] = []
    remote: list[str] = []
    for holder in holders:
        parsed = Holder.parse(holder)
        if parsed is None:
            continue
        if parsed.local:
            if not parsed.process_alive():
                dead.append(holder)
        elif not parsed.legacy:
            remote.append(holder)
    if remote and trust_missing:
        beats = client.mget([heartbeat_key(h) for h in remote])
        dead += [h for h, beat in zip(remote, beats) if beat is None]
    return dead


class Heartbeat:
    """A worker process's heartbeat: ``SET darkroom:alive:<holder> <time> PX ttl`` now and every
    ``every`` seconds, from a daemon thread, until :meth:`stop` (which deletes the key: a process that
    stops cleanly holds nothing). A beat that fails (Redis away) is logged and tried again at the next
    one; the key outlives ``ttl`` only through beats.

    A Redis key with a time to live rather than Celery's worker heartbeat: it is per process (a
    Celery heartbeat is per worker node, named by a hostname that two hosts may share), it needs no
    event consumer in the producer, and the reconciler reads any number of them in one MGET."""

    def __init__(self, client: Any, holder: str, *, every: float, ttl: float) -> None:
        self.client, self.holder, self.every, self.ttl = client, holder, every, ttl
        self.key = heartbeat_key(holder)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self) -> bool:
        try:
            self.client.set(self.key, f"{time.time():.3f}", px=max(1, int(self.ttl * 1000)))
        except Exception as exc:  # noqa: BLE001 - Redis away: the next beat tries again
            if not self._failing:
                log.warning("process %s: heartbeat not written (%s); trying again every %.0f s", os.getpid(),
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.every)
            self._failing = True
            return False
        if self._failing:
            log.info("process %s: heartbeat written again", os.getpid())
        self._failing = False
        return True

    def start(self) -> None:
        self.beat()

        def run() -> None:
            while not self._stop.wait(self.every):
                self.beat()

        self._thread = threading.Thread(target=run, name="darkroom-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every + 5)
        try:
            self.client.delete(self.key)
        except Exception:  # noqa: BLE001 - the key expires by itself
            pass


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
