"""Runs the naive peer (:mod:`bench.naive_app`) over a corpus and measures it.

A real ``celery -A bench.naive_app worker -c 2 --pool prefork`` subprocess on its own Redis
database; this process enqueues four tasks per image and waits until every result is in the
peer's SQLite file. Warm-up first: warm-up images are sent until every worker process has run
each of the four tasks (so each has loaded its models), none of it timed.

Throughput is images / (last result's finish time - the moment the first task was sent).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procs

TASKS = ("normalize", "classify", "augment", "faces")


@dataclass
class NaiveResult:
    model: str
    images: int
    concurrency: int
    wall_s: float
    img_s: float
    errors: list[str] = field(default_factory=list)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)
    warmup_rounds: int = 0
    task_ms: dict[str, float] = field(default_factory=dict)
    foreign_load: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peak_rss_mb"] = {str(k): v for k, v in self.peak_rss_mb.items()}
        return d


def _init_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY, image TEXT, task TEXT, tag TEXT, "
                "pid INTEGER, result TEXT, error TEXT, started REAL, finished REAL)")
    con.commit()
    con.close()


def _query(path: Path, sql: str, args=()) -> list[tuple]:
    con = sqlite3.connect(path, timeout=60)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _count(path: Path, tag: str) -> int:
    return _query(path, "SELECT count(*) FROM results WHERE tag = ?", (tag,))[0][0]


def _send(app, files: list[Path], tag: str) -> None:
    for f in files:
        for task in TASKS:
            app.send_task(f"naive.{task}", args=[str(f)], kwargs={"tag": tag})


def run_naive(files: list[Path], model: str, workdir: Path, redis_url: str, warmup: list[Path], *,
              concurrency: int = 2, timeout: float = 3600.0, log=print) -> NaiveResult:
    """Run the peer over ``files`` (warmed with ``warmup``); ``redis_url``'s database is flushed."""
    from celery import Celery

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "naive.db"
    if db.exists():
        db.unlink()
    _init_db(db)
    procs.flush_redis(redis_url)
    env = procs.base_env()
    env.update(NAIVE_BROKER_URL=redis_url, NAIVE_DB=str(db), NAIVE_MODEL=model, NAIVE_OUT=str(workdir / "out"))
    logfile = open(workdir / "naive-worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.naive_app", "worker", "-c", str(concurrency),
         "--pool", "prefork", "--loglevel", "WARNING"],
        env=env, cwd=workdir, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
    )
    sender = Celery("naive-sender", broker=redis_url)
    sender.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    try:
        procs.wait_for(lambda: worker.poll() is not None or len(procs.children(worker.pid)) >= concurrency,
                       60, what="the naive worker's processes")
        if worker.poll() is not None:
            raise RuntimeError(f"the naive worker exited with {worker.returncode}: see {workdir / 'naive-worker.log'}")

        # Warm-up: until every worker process has run every task once (models loaded).
        rounds = 0
        sent = 0
        while True:
            rounds += 1
            batch = [warmup[(sent + k) % len(warmup)] for k in range(concurrency * 2)]
            sent += len(batch)
            _send(sender, batch, "warmup")
            procs.wait_for(lambda sent=sent: _count(db, "warmup") >= sent * len(TASKS) or worker.poll() is not None,
                           900, what="the naive peer's warm-up")
            if worker.poll() is not None:
                raise RuntimeError(f"the naive worker exited with {worker.returncode}: see {workdir / 'naive-worker.log'}")
            kids = set(procs.children(worker.pid))
            done = {(pid, task) for pid, task in _query(db, "SELECT DISTINCT pid, task FROM results WHERE tag='warmup'")}
            if all((pid, task) in done for pid in kids for task in TASKS) or rounds >= 8:
                break
        errors = [e for (e,) in _query(db, "SELECT error FROM results WHERE error IS NOT NULL")]
        if errors:
            raise RuntimeError(f"the naive peer failed during warm-up: {errors[0]}")
        log(f"  naive peer warm ({rounds} warm-up round(s)); timing {len(files)} images")

        foreign = procs.ForeignLoad()
        t0 = time.time()
        _send(sender, files, "timed")
        expected = len(files) * len(TASKS)
        procs.wait_for(lambda: _count(db, "timed") >= expected or worker.poll() is not None, timeout, 0.2,
                       what=f"the naive peer's {expected} results")
        if worker.poll() is not None:
            raise RuntimeError(f"the naive worker exited with {worker.returncode}: see {workdir / 'naive-worker.log'}")
        foreign_load = foreign.stop()
        last = _query(db, "SELECT max(finished) FROM results WHERE tag='timed'")[0][0]
        wall = last - t0
        errors = [e.splitlines()[0] for (e,) in _query(db, "SELECT error FROM results WHERE tag='timed' AND error IS NOT NULL")]
        task_ms = {task: round(ms, 1) for task, ms in
                   _query(db, "SELECT task, avg(finished - started) * 1000 FROM results WHERE tag='timed' GROUP BY task")}
        peaks = procs.worker_children_peak_rss(worker.pid)
    finally:
        procs.stop(worker)
        logfile.close()
        try:
            sender.close()
        except Exception:  # noqa: BLE001
            pass
    return NaiveResult(model=model, images=len(files), concurrency=concurrency, wall_s=round(wall, 3),
                       img_s=len(files) / wall, errors=errors, peak_rss_mb=peaks, warmup_rounds=rounds,
                       task_ms=task_ms, foreign_load=foreign_load)


def stored_results(workdir: Path) -> list[dict]:
    """Every timed result row of the last run in ``workdir`` (for tests and checks)."""
    rows = _query(Path(workdir) / "naive.db",
                  "SELECT image, task, pid, result, error FROM results WHERE tag='timed' ORDER BY id")
    return [{"image": i, "task": t, "pid": p, "result": json.loads(r) if r else None, "error": e}
            for i, t, p, r, e in rows]
