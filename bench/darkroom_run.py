"""Darkroom end to end, as a user runs it: ``darkroom worker`` and ``darkroom ingest`` subprocesses
against a fresh data folder, SQLite store and Redis database, measured from outside.

- Warm-up: warm-up photos are ingested until every worker process has finished each task once
  (its models loaded); their runs are left out of every figure.
- Throughput: ``darkroom ingest <corpus>`` is started at t0; images/s = images / (the last run's
  ``finished_at`` - t0). Also the rate once work flows: images / (last ``finished_at`` - first
  ``started_at``), which leaves out the ingest command's start-up. The Redis queue depths are sampled
  all along (their maximum is reported
  against ``DARKROOM_MAX_QUEUE_DEPTH``), and each worker process's peak RSS is read at the end.
- Classify inside the pipeline (the runner): Darkroom with the classify task alone, measured
  from a queue the ingest filled while the worker was told not to consume (``prefill``), and
  again with the ingest beside it. Also an estimate from the full run: from the timed classify
  runs' ``started_at``/``finished_at``,
  the time each worker process spent in classify runs (overlapping runs counted once), and so the
  images/s the machine would classify if every worker process did nothing else:
  ``classify runs x worker processes / total classify busy seconds``.
- Latency (optional): ``darkroom watch <inbox>`` beside the same worker, idle; photos are renamed
  into the inbox one at a time, each time measuring from the rename to the last ``finished_at``
  of that photo's runs.

The store is read with plain ``sqlite3`` in read-only mode (no write lock taken while the system runs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procs

PENDING = ("queued", "running")


@dataclass
class DarkroomResult:
    model: str
    weights: str
    images: int
    concurrency: int
    wall_s: float
    img_s: float
    ingest_s: float
    #: images / (last run finished - first run started): the rate once work flows, without the
    #: ``darkroom ingest`` start-up (its interpreter and imports) that img_s includes.
    flowing_img_s: float | None = None
    failed: list[str] = field(default_factory=list)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)
    queue_depth_max: dict[str, int] = field(default_factory=dict)
    queue_bound: int | None = None
    task_ms: dict[str, float] = field(default_factory=dict)
    classify_runs: int = 0
    classify_busy_s: float = 0.0
    classify_workers: int = 0
    classify_pipeline_img_s: float | None = None
    warmup_rounds: int = 0
    foreign_load: float | None = None
    config: dict = field(default_factory=dict)
    latency: dict | None = None
    outputs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peak_rss_mb"] = {str(k): v for k, v in self.peak_rss_mb.items()}
        return d


def _ts(value) -> float | None:
    """A stored timestamp (naive = UTC, as SQLAlchemy writes them into SQLite) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    parsed = dt.datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


class Store:
    """Read-only queries on Darkroom's SQLite store."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def query(self, sql: str, args=()) -> list[tuple]:
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        except sqlite3.OperationalError:
            con = sqlite3.connect(self.path, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def max_run_id(self) -> int:
        return self.query("SELECT coalesce(max(id), 0) FROM task_runs")[0][0]

    def pending(self, after_id: int) -> int:
        return self.query(f"SELECT count(*) FROM task_runs WHERE id > ? AND status IN {PENDING}", (after_id,))[0][0]

    def runs(self, after_id: int) -> list[dict]:
        rows = self.query("SELECT id, image_id, task, model, status, worker, started_at, finished_at, duration_ms, error "
                          "FROM task_runs WHERE id > ? ORDER BY id", (after_id,))
        keys = ("id", "image_id", "task", "model", "status", "worker", "started_at", "finished_at", "duration_ms", "error")
        return [dict(zip(keys, r)) for r in rows]

    def image_runs(self, sha256: str) -> list[tuple[str, str | None]]:
        return self.query("SELECT r.status, r.finished_at FROM task_runs r JOIN images i ON i.id = r.image_id "
                          "WHERE i.sha256 = ?", (sha256,))

    def image_created(self, sha256: str) -> float | None:
        rows = self.query("SELECT created_at FROM images WHERE sha256 = ?", (sha256,))
        return _ts(rows[0][0]) if rows else None

    def outputs(self, shas: list[str]) -> dict[str, dict]:
        """sha256 -> {"labels": {model: [[class_id, score], ...]}, "faces": [[x, y, w, h, confidence], ...]}."""
        out: dict[str, dict] = {}
        for sha in shas:
            labels: dict[str, list] = {}
            for model, class_id, score in self.query(
                    "SELECT l.model, l.class_id, l.score FROM labels l JOIN images i ON i.id = l.image_id "
                    "WHERE i.sha256 = ? ORDER BY l.model, l.rank", (sha,)):
                labels.setdefault(model, []).append([class_id, score])
            faces = [list(r) for r in self.query(
                "SELECT f.x, f.y, f.w, f.h, f.confidence FROM faces f JOIN images i ON i.id = f.image_id "
                "WHERE i.sha256 = ? ORDER BY f.idx", (sha,))]
            out[sha] = {"labels": labels, "faces": faces}
        return out


class QueueSampler(threading.Thread):
    """Samples every queue's depth in Redis until stopped; keeps the maximum per queue."""

    def __init__(self, redis_url: str, interval: float = 0.2):
        super().__init__(daemon=True)
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.interval = interval
        self.max: dict[str, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        from worker.queues import queue_depths

        while not self._stop_event.is_set():
            try:
                for queue, depth in queue_depths(self.client).items():
                    self.max[queue] = max(self.max.get(queue, 0), int(depth))
                self.samples += 1
            except Exception:  # noqa: BLE001 - a missed sample is not worth failing the run for
                pass
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self.join(10)
        return dict(self.max)


def flush_interval(config: dict) -> tuple[float, list[str]]:
    """Seconds a batch may wait before it is flushed, from the effective settings (0 when there is
    no such setting): every numeric setting whose name says flush, linger or batch wait/timeout."""
    total, keys = 0.0, []
    for key, value in config.items():
        if not re.search(r"flush|linger|batch_(wait|timeout|delay|interval)", key):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        seconds = float(value) / 1000.0 if key.endswith("_ms") else float(value)
        total = max(total, seconds)
        keys.append(key)
    return total, keys


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    start = None
    for a, b in sorted(intervals):
        if end is None or a > end:
            if end is not None:
                total += end - start
            start, end = a, b
        else:
            end = max(end, b)
    if end is not None:
        total += end - start
    return total


class DarkroomSystem:
    """One Darkroom installation in a temporary folder: its env, worker, commands and store."""

    def __init__(self, workdir: Path, redis_url: str, model: str, weights: str, concurrency: int = 2, **settings: str):
        self.workdir = Path(workdir)
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.data = self.workdir / "data"
        self.db = self.data / "darkroom.db"
        self.redis_url = redis_url
        self.model, self.weights, self.concurrency = model, weights, concurrency
        self.env = procs.base_env()
        self.env.update(
            DARKROOM_DATA_DIR=str(self.data), DARKROOM_DATABASE_URL=f"sqlite:///{self.db}",
            DARKROOM_BROKER_URL=redis_url, DARKROOM_CONCURRENCY=str(concurrency),
            DARKROOM_CLASSIFIER_MODEL=model, DARKROOM_CLASSIFIER_WEIGHTS=weights,
            DARKROOM_START_LOCAL_REDIS="false",
            # The four tasks the naive peer and the reference do too (not the perceptual hash).
            DARKROOM_TASKS="normalize,classify,augment,faces",
        )
        self.env.update({f"DARKROOM_{k.upper()}": str(v) for k, v in settings.items()})
        self.logs = self.workdir / "logs"
        self.logs.mkdir()
        self.worker: subprocess.Popen | None = None
        self.watcher: subprocess.Popen | None = None
        self.store = Store(self.db)
        self._log_files: list = []

    def command(self, *args: str, timeout: float = 3600, name: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        log = self.logs / f"{name or args[0]}.log"
        with open(log, "ab") as fh:
            done = subprocess.run([sys.executable, "-m", "darkroom", *args], env={**self.env, **(env or {})}, cwd=self.workdir,
                                  stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"`darkroom {' '.join(args)}` exited with {done.returncode}:\n{self.tail(log)}")
        return done

    def config(self) -> dict:
        done = subprocess.run([sys.executable, "-m", "darkroom", "config", "--json"], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"`darkroom config --json` failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def start(self, *args: str, name: str) -> subprocess.Popen:
        fh = open(self.logs / f"{name}.log", "ab")
        self._log_files.append(fh)
        return subprocess.Popen([sys.executable, "-m", "darkroom", *args], env=self.env, cwd=self.workdir,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def start_worker(self) -> None:
        procs.flush_redis(self.redis_url)
        self.command("migrate")
        self.worker = self.start("worker", name="worker")
        procs.wait_for(lambda: self.worker.poll() is not None or len(procs.children(self.worker.pid)) >= self.concurrency,
                       120, what="the Darkroom worker's processes")
        self.check_alive()

    def check_alive(self) -> None:
        for proc, name in ((self.worker, "worker"), (self.watcher, "watch")):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"darkroom {name} exited with {proc.returncode}:\n{self.tail(self.logs / f'{name}.log')}")

    def wait_settled(self, after_id: int, timeout: float, interval: float = 0.2) -> None:
        def settled() -> bool:
            self.check_alive()
            return self.store.pending(after_id) == 0

        procs.wait_for(settled, timeout, interval, what="Darkroom's runs to finish")

    @property
    def node(self) -> str:
        """The worker's Celery node name (``darkroom worker``'s default: darkroom-<its pid>@<host>)."""
        import socket

        return f"darkroom-{self.worker.pid}@{socket.gethostname()}"

    def worker_pids(self) -> list[int]:
        return procs.children(self.worker.pid) if self.worker else []

    def stop(self) -> None:
        if self.watcher is not None:
            procs.stop(self.watcher, sig=2)
        if self.worker is not None:
            procs.stop(self.worker)
        for fh in self._log_files:
            fh.close()
        self._log_files.clear()

    @staticmethod
    def tail(path: Path, chars: int = 3000) -> str:
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _preloaded(system: DarkroomSystem) -> set[str]:
    """Worker processes that have said their models are loaded and run (DARKROOM_PRELOAD_MODELS)."""
    return set(re.findall(r"process (\d+) warm: ", DarkroomSystem.tail(system.logs / "worker.log", 10**7)))


def _warm(system: DarkroomSystem, warmup: list[Path], log, preload: bool = True) -> int:
    """Wait for every worker process to preload its models (``preload``: DARKROOM_PRELOAD_MODELS
    is on), then ingest warm-up photos until every process has finished every task once (or the
    photos run out, if all had preloaded)."""
    pids = {str(p) for p in system.worker_pids()}
    if preload:
        procs.wait_for(lambda: system.check_alive() or pids <= _preloaded(system), 600, 0.5,
                       what="the worker processes to preload their models")
    staging = system.workdir / "warmup"
    rounds, used = 0, 0
    per_round = max(2, system.concurrency * 2)
    while used < len(warmup):
        rounds += 1
        batch = warmup[used:used + per_round]
        used += len(batch)
        folder = staging / f"round{rounds}"
        folder.mkdir(parents=True)
        for p in batch:
            shutil.copyfile(p, folder / p.name)
        # One message per classify run (the producer would send the round's runs as one batch, to
        # one process), so that every process gets some.
        system.command("ingest", str(folder), name="warmup-ingest", timeout=600,
                       env={"DARKROOM_CLASSIFY_BATCH_SIZE": "1"})
        system.wait_settled(0, 900)
        tasks = {t for (t,) in system.store.query("SELECT DISTINCT task FROM task_runs")}
        done = {(w.rsplit(":", 1)[-1], t) for w, t in
                system.store.query("SELECT DISTINCT worker, task FROM task_runs WHERE status = 'done'") if w}
        pids = {str(p) for p in system.worker_pids()}
        if all((pid, task) in done for pid in pids for task in tasks):
            break
    failed = system.store.query("SELECT task, error FROM task_runs WHERE status != 'done'")
    if failed:
        raise RuntimeError(f"Darkroom failed during warm-up: {failed[0][0]}: {failed[0][1]}")
    if not all((pid, task) in done for pid in pids for task in tasks) and not pids <= _preloaded(system):
        raise RuntimeError(f"the {len(warmup)} warm-up photos did not reach every worker process with every task "
                           f"(done: {sorted(done)}); the timed run would include model loading")
    log(f"  Darkroom warm ({rounds} warm-up round(s))")
    return rounds


def run_darkroom(images_dir: Path, n: int, model: str, weights: str, workdir: Path, redis_url: str,
                 warmup: list[Path], *, concurrency: int = 2, timeout: float = 7200.0, latency_files: list[Path] | None = None,
                 check_shas: list[str] | None = None, settings: dict[str, str] | None = None,
                 prefill: bool = False, log=print) -> DarkroomResult:
    """Darkroom over the ``n`` photos in ``images_dir``; ``redis_url``'s database is flushed first.
    ``settings`` are extra Darkroom settings (``{"tasks": "classify"}`` -> ``DARKROOM_TASKS=classify``).

    ``prefill``: measure the workers alone. The warm worker stops consuming (Celery's
    ``cancel_consumer``), the ingest fills the queues, and the clock starts when the worker is told
    to consume again (``add_consumer``): the rate of the stages behind the queue, from a full
    queue to stored results, without the producer's work on the same cores."""
    system = DarkroomSystem(Path(workdir), redis_url, model, weights, concurrency, **(settings or {}))
    config = system.config()
    try:
        system.start_worker()
        rounds = _warm(system, warmup, log, preload=bool(config.get("preload_models", True)))
        after = system.store.max_run_id()
        log(f"  timing `darkroom ingest` of {n} images")

        sampler = QueueSampler(redis_url)
        sampler.start()
        foreign = procs.ForeignLoad()
        t0 = time.time()
        try:
            if prefill:
                queues = _consume(redis_url, system.node, "cancel_consumer")
            system.command("ingest", str(images_dir), timeout=timeout, name="ingest")
            ingest_s = time.time() - t0
            if prefill:
                if system.store.query("SELECT count(*) FROM task_runs WHERE id > ? AND status != 'queued'", (after,))[0][0]:
                    raise RuntimeError("the worker took runs while it was told not to consume")
                t0 = time.time()
                _consume(redis_url, system.node, "add_consumer", queues)
            system.wait_settled(after, timeout)
        finally:
            depth_max = sampler.stop()
            foreign_load = foreign.stop()
        runs = system.store.runs(after)
        peaks = procs.worker_children_peak_rss(system.worker.pid)

        latency = None
        if latency_files:
            latency = _latency(system, latency_files, log)
        outputs = system.store.outputs(check_shas or [])
    finally:
        system.stop()

    images = len({r["image_id"] for r in runs})
    last = max(_ts(r["finished_at"]) for r in runs)
    wall = last - t0
    starts = [_ts(r["started_at"]) for r in runs if r["started_at"]]
    flowing = images / (last - min(starts)) if starts and last > min(starts) else None
    if prefill and flowing is not None:
        # From the first run the worker started on the full queue: Celery's consumer takes up to a
        # second after add_consumer to poll the queues again, which is the measurement's, not the stage's.
        wall = last - min(starts)
    failed = [f"{r['task']}: {(r['error'] or r['status']).splitlines()[0][:300]}" for r in runs if r["status"] != "done"]
    task_ms: dict[str, list[float]] = {}
    for r in runs:
        if r["status"] == "done" and r["duration_ms"] is not None:
            task_ms.setdefault(r["task"], []).append(float(r["duration_ms"]))
    workers_all = {r["worker"] for r in runs if r["worker"]}
    classify = [r for r in runs if r["task"] == "classify" and r["status"] == "done" and r["started_at"] and r["finished_at"]]
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for r in classify:
        by_worker.setdefault(r["worker"], []).append((_ts(r["started_at"]), _ts(r["finished_at"])))
    busy = sum(_union_seconds(iv) for iv in by_worker.values())
    n_workers = len(workers_all) or concurrency
    pipeline_img_s = len(classify) * n_workers / busy if busy > 0 else None
    if images != n:
        failed.append(f"{n} images ingested but {images} have runs")
    return DarkroomResult(
        model=model, weights=weights, images=images, concurrency=concurrency, wall_s=round(wall, 3),
        img_s=images / wall if wall > 0 else 0.0, ingest_s=round(ingest_s, 3), flowing_img_s=flowing,
        failed=failed, peak_rss_mb=peaks,
        queue_depth_max=depth_max, queue_bound=config.get("max_queue_depth"),
        task_ms={t: round(sum(v) / len(v), 1) for t, v in task_ms.items()},
        classify_runs=len(classify), classify_busy_s=round(busy, 3), classify_workers=n_workers,
        classify_pipeline_img_s=pipeline_img_s, warmup_rounds=rounds, foreign_load=foreign_load,
        config={k: v for k, v in config.items() if k not in ("database_url", "broker_url")},
        latency=latency, outputs=outputs,
    )


def _consume(redis_url: str, node: str, command: str, queues: list[str] | None = None) -> list[str]:
    """Tell the worker ``node`` to stop (``cancel_consumer``) or start again (``add_consumer``)
    consuming Darkroom's queues, waiting for it to confirm; returns the queues."""
    from celery import Celery

    from worker.queues import QUEUES

    queues = list(queues or QUEUES)
    app = Celery("darkroom-bench", broker=redis_url)
    app.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
    try:
        for queue in queues:
            replies = getattr(app.control, command)(queue, reply=True, timeout=10, destination=[node], limit=1)
            if not replies:
                raise RuntimeError(f"worker {node} did not confirm {command} {queue}")
    finally:
        app.close()
    return queues


def _file_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _latency(system: DarkroomSystem, files: list[Path], log) -> dict:
    """Drop photos one at a time into a watched inbox of the idle system; time each to its last result.

    The first file is a probe (it tells that the watcher is up, and is not counted)."""
    inbox = system.workdir / "inbox"
    inbox.mkdir()
    system.watcher = system.start("watch", str(inbox), name="watch")
    probe = files[0]
    log(f"  latency: {len(files) - 1} single drops into an idle, watched inbox")
    drops = []
    for path in files:
        sha = _file_sha(path)
        part = inbox / f".{path.name}.part"  # a hidden temporary name: the watcher leaves it alone
        shutil.copyfile(path, part)
        os.sync()
        t_rename = time.time()
        os.rename(part, inbox / path.name)

        def finished(sha=sha):
            system.check_alive()
            rows = system.store.image_runs(sha)
            if not rows or any(status in PENDING for status, _ in rows):
                return None
            return rows

        rows = procs.wait_for(finished, 300, 0.02, what=f"the results of {path.name}")
        if path is not probe:
            created = system.store.image_created(sha)
            drops.append({"file": str(path), "latency_s": round(max(_ts(f) for _, f in rows) - t_rename, 4),
                          "registered_after_s": round(created - t_rename, 4) if created else None,
                          "statuses": sorted({s for s, _ in rows})})
        time.sleep(0.5)
    return {"drops": drops}
