"""Nothing lost: real worker and watcher processes killed, Redis restarted without persistence,
poison messages on the queue. After each fault every file ends in a terminal state with exactly
one result per (image, task, model).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from storage.models import Face, TaskRun
from tests.harness import Darkroom, LedgerReader, PrivateRedis, stop
from tests.photos import big_photos

pytestmark = pytest.mark.e2e


def _worker(dr: Darkroom, name: str, *extra: str) -> subprocess.Popen:
    return dr.start("worker", "--concurrency", "1", "--hostname", f"{name}@%h", *extra, name=name)


def _pid_of(run: TaskRun) -> int:
    return int(run.worker.rsplit(":", 1)[1])


def test_kill_9_of_a_worker_child_mid_task_redelivers_its_work(tmp_path, redis_url, photos):
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="normalize,faces")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    for src in big_photos(photos, tmp_path / "src", 3):
        shutil.copy(src, dr.inbox / src.name)
    worker = _worker(dr, "w1")
    watch = dr.start("watch", str(dr.inbox), name="watch")
    try:
        # When a faces run is in flight, its process is killed outright
        ledger.wait(lambda runs: any(r.task == "faces" and r.status == "running" for r in runs), 120,
                    "a running faces task", dr)
        victim = next(r for r in ledger.runs() if r.task == "faces" and r.status == "running")
        os.kill(_pid_of(victim), signal.SIGKILL)
        # Then the pool replaces the child and the message comes back: everything ends done
        ledger.wait(ledger.all_terminal(6), 240, "all runs terminal", dr)
    finally:
        stop(watch)
        stop(worker, signal.SIGTERM)
    runs = ledger.runs()
    assert {r.status for r in runs} == {"done"}, [(r.task, r.status, r.error) for r in runs]
    again = next(r for r in runs if r.id == victim.id)
    assert again.attempts >= 2 and _pid_of(again) != _pid_of(victim)
    ledger.check_invariants(dr.inbox, tasks=2)


def test_sigterm_mid_task_is_a_warm_shutdown_and_a_new_worker_finishes(tmp_path, redis_url, photos):
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="faces")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    for src in big_photos(photos, tmp_path / "src", 4):
        shutil.copy(src, dr.inbox / src.name)
    watch = dr.start("watch", str(dr.inbox), name="watch")
    first = _worker(dr, "first")
    try:
        ledger.wait(lambda runs: any(r.status == "running" for r in runs), 120, "a running task", dr)
        # SIGTERM: Celery's warm shutdown finishes the task in hand and gives back what it prefetched
        assert stop(first, signal.SIGTERM) == 0
        mid = ledger.runs()
        assert not any(r.status == "running" for r in mid), "warm shutdown left a task half-done"
        assert any(r.status == "done" for r in mid)
        second = _worker(dr, "second")
        try:
            ledger.wait(ledger.all_terminal(4), 240, "all runs terminal", dr)
        finally:
            stop(second, signal.SIGTERM)
    finally:
        stop(watch)
    assert {r.status for r in ledger.runs()} == {"done"}
    ledger.check_invariants(dr.inbox, tasks=1)


def test_redis_restarted_without_persistence_mid_run(tmp_path, private_redis, photos):
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    dr = Darkroom(tmp_path, private_redis.url(), db_url, tasks="normalize,faces", reconcile_seconds="1")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    for src in big_photos(photos, tmp_path / "src", 6):
        shutil.copy(src, dr.inbox / src.name)
    up = dr.start("up", str(dr.inbox), name="up")
    try:
        ledger.wait(lambda runs: len(runs) == 12 and any(r.status == "done" for r in runs), 120,
                    "some runs done", dr)
        # Redis dies and comes back empty: the queue and every unacknowledged message are gone
        private_redis.restart()
        ledger.wait(ledger.all_terminal(12), 300, "all runs terminal after the restart", dr)
        # Workers and watcher reconnected and keep consuming: a new photo is processed too
        shutil.copy(photos["coffee"], dr.inbox / "after-restart.jpg")
        ledger.wait(ledger.all_terminal(14), 180, "the photo dropped after the restart", dr)
    finally:
        code = stop(up)
    assert code == 0, dr.log_tail()
    assert {r.status for r in ledger.runs()} == {"done"}, [(r.task, r.status, r.error) for r in ledger.runs()]
    assert "lost its queue" in (dr.data / "logs" / "darkroom.log").read_text()  # up's log file
    ledger.check_invariants(dr.inbox, tasks=2)


def test_watcher_killed_while_files_arrive_catches_up_on_start(tmp_path, redis_url, photos):
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="normalize")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    watch = dr.start("watch", str(dr.inbox), name="watch1")
    shutil.copy(photos["coffee"], dr.inbox / "one.jpg")
    ledger.wait(lambda runs: len(runs) == 1, 60, "the first file registered", dr)
    os.killpg(watch.pid, signal.SIGKILL)
    watch.wait(10)
    for name in ("astronaut", "chelsea", "rocket"):  # arriving while nobody watches
        shutil.copy(photos[name], dr.inbox / f"{name}.jpg")
    watch = dr.start("watch", str(dr.inbox), name="watch2")
    worker = _worker(dr, "w")
    try:
        ledger.wait(ledger.all_terminal(4), 180, "all four processed", dr)
    finally:
        stop(watch)
        stop(worker, signal.SIGTERM)
    ledger.check_invariants(dr.inbox, tasks=1)


def _raw_message(task: str, body: bytes, content_type: str, queue: str) -> str:
    """A message in the shape Kombu's Redis transport stores, with any content type."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary" if content_type != "application/json" else "utf-8",
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": str(uuid.uuid4()), "retries": 0, "root_id": None,
                    "parent_id": None, "group": None, "argsrepr": "", "kwargsrepr": "", "origin": "test"},
        "properties": {"correlation_id": str(uuid.uuid4()), "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    })


def test_poison_messages_are_refused_and_the_worker_goes_on(tmp_path, redis_url, photos):
    import pickle

    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="normalize")
    ledger = LedgerReader(db_url)
    client = redis.Redis.from_url(redis_url)
    pickled = pickle.dumps(((1,), {}, {}))
    client.lpush("cpu", _raw_message("darkroom.normalize", pickled, "application/x-python-serialize", "cpu"))
    client.lpush("cpu", _raw_message("darkroom.normalize", b"{not json", "application/json", "cpu"))
    client.lpush("cpu", _raw_message("no.such.task", b'[[], {}, {}]', "application/json", "cpu"))
    client.lpush("cpu", _raw_message("darkroom.normalize", b'[[], {"run_id": "DROP TABLE"}, {}]',
                                     "application/json", "cpu"))
    dr.inbox.mkdir()
    shutil.copy(photos["chelsea"], dr.inbox / "cat.jpg")
    worker = _worker(dr, "w")
    watch = dr.start("watch", str(dr.inbox), name="watch")
    try:
        ledger.wait(ledger.all_terminal(1), 120, "the real photo processed", dr)
        assert worker.poll() is None, "the worker died on a poison message"
    finally:
        stop(watch)
        stop(worker, signal.SIGTERM)
    assert [r.status for r in ledger.runs()] == ["done"]
    log = (dr.logs / "w.log").read_text()
    assert "pickle" in log.lower() or "x-python-serialize" in log
    assert client.llen("cpu") == 0  # nothing left to loop on


def test_redis_with_a_password_and_a_user_name(tmp_path, photos):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path / "redis", "--requirepass", "s3cret-pw",
                          "--user", "photos", "on", ">user-pw", "~*", "&*", "+@all")
    try:
        for i, auth in enumerate((":s3cret-pw", "photos:user-pw")):
            sub = tmp_path / f"try{i}"
            sub.mkdir()
            dr = Darkroom(sub, server.url(auth=auth), f"sqlite:///{sub / 'darkroom.db'}", tasks="normalize")
            dr.inbox.mkdir()
            shutil.copy(photos["coffee"], dr.inbox / "coffee.jpg")
            done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
            assert done.returncode == 0, done.stderr
            assert [r["status"] for r in dr.results()] == ["done"]
            assert "s3cret-pw" not in done.stdout + done.stderr and "user-pw" not in done.stdout + done.stderr
            config = dr.run("config").stdout + dr.run("status").stdout
            assert "***" in config and "user-pw" not in config and "s3cret-pw" not in config
        # A wrong password fails at once, clearly, without printing it
        (tmp_path / "wrong").mkdir()
        dr = Darkroom(tmp_path / "wrong", server.url(auth=":wrong-pw"), f"sqlite:///{tmp_path / 'wrong.db'}")
        done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=60)
        assert done.returncode == 1
        assert "refused the credentials" in done.stderr or "password" in done.stderr
        assert "wrong-pw" not in done.stderr + done.stdout
    finally:
        server.kill()


def test_postgres_restarted_mid_run_tasks_retry_and_nothing_is_lost(tmp_path, redis_url, private_postgres, photos):
    db_url = private_postgres.url()
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="normalize,faces", reconcile_seconds="2")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    for src in big_photos(photos, tmp_path / "src", 5):
        shutil.copy(src, dr.inbox / src.name)
    up = dr.start("up", str(dr.inbox), name="up")
    try:
        ledger.wait(lambda runs: len(runs) == 10 and any(r.status == "done" for r in runs), 180,
                    "some runs done", dr)
        # The database goes away for a few seconds while tasks are in flight and files arrive
        private_postgres.stop()
        shutil.copy(photos["coffee"], dr.inbox / "during-outage.jpg")
        time.sleep(4)
        private_postgres.start()
        ledger.engine.dispose()
        ledger.wait(ledger.all_terminal(12), 300, "all runs terminal after the restart", dr)
    finally:
        code = stop(up)
    assert code == 0, dr.log_tail()
    runs = ledger.runs()
    assert {r.status for r in runs} == {"done"}, [(r.task, r.status, r.error) for r in runs]
    ledger.check_invariants(dr.inbox, tasks=2)


def test_celerys_retry_limit_leaves_darkrooms_to_count():
    """The worker retries a run up to DARKROOM_TASK_MAX_RETRIES times, then records it failed.
    Celery's own limit (3 by default) must not come first: past it, ``Task.retry`` raises the
    error instead of sending the retry, and the run would stay queued with no message (seen when
    PostgreSQL was away for four retries' backoff)."""
    from darkroom import catalog
    from darkroom.settings import Settings
    from worker.app import app

    limit = Settings().task_max_retries
    assert limit > 3
    for name in catalog.NAMES:
        task = app.tasks[catalog.task_name(name)]
        assert task.max_retries is None or task.max_retries >= limit, task.name


def test_a_run_delivered_twice_at_once_leaves_one_result(tmp_path, redis_url, photos):
    """What a visibility timeout shorter than a task amounts to: a second delivery while the first runs."""
    from darkroom.settings import Settings
    from storage.ledger import RunRef
    from worker.app import create_app
    from worker.queues import send_run

    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="faces")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    (src,) = big_photos(photos, tmp_path / "src", 1)
    shutil.copy(src, dr.inbox / src.name)
    assert dr.run("ingest", str(dr.inbox)).returncode == 0
    (run,) = ledger.runs()
    # The same run's message, sent again while the first is still queued: two workers take one each
    send_run(create_app(Settings(broker_url=redis_url, _env_file=None)), RunRef(run.id, run.task, run.model))
    workers = [_worker(dr, f"w{i}") for i in range(2)]
    try:
        ledger.wait(lambda runs: runs[0].status == "done", 240, "the run done", dr)
        deadline = time.monotonic() + 60
        while redis.Redis.from_url(redis_url).llen("gpu") and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # let the second delivery finish or skip
    finally:
        for w in workers:
            stop(w, signal.SIGTERM)
    (run,) = ledger.runs()
    assert run.status == "done" and run.attempts in (1, 2)
    with ledger.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Face)) == 1
    ledger.check_invariants(dr.inbox, tasks=1)


def test_kill_9_of_a_whole_worker_while_another_runs(tmp_path, redis_url, photos):
    """The killed worker's unacknowledged messages come back after the visibility timeout and the
    surviving worker finishes them."""
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="faces", visibility_timeout="60", prefetch_multiplier="2")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    for src in big_photos(photos, tmp_path / "src", 6):
        shutil.copy(src, dr.inbox / src.name)
    assert dr.run("ingest", str(dr.inbox)).returncode == 0
    doomed, survivor = _worker(dr, "doomed"), _worker(dr, "survivor")
    try:
        def doomed_is_busy(runs):
            return any(r.status == "running" and r.worker and r.worker.split(":")[0] for r in runs) and \
                any(r.status == "running" for r in runs)

        ledger.wait(doomed_is_busy, 180, "work in flight", dr)
        os.killpg(doomed.pid, signal.SIGKILL)  # the main process and its pool, at once
        doomed.wait(10)
        ledger.wait(ledger.all_terminal(6), 420, "all runs terminal", dr)
    finally:
        stop(survivor, signal.SIGTERM)
    assert {r.status for r in ledger.runs()} == {"done"}
    ledger.check_invariants(dr.inbox, tasks=1)


@pytest.fixture()
def small_disk(tmp_path):
    """A 48 MiB tmpfs: a disk that can be filled up. Needs the right to mount (root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as fh:
        fh.truncate(0)
        remaining = free - leave
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            n = fh.write(chunk[: min(len(chunk), remaining)])
            remaining -= n
    return filler


def test_disk_full_for_outputs_retries_and_leaves_no_partial_files(tmp_path, redis_url, photos, small_disk):
    data = small_disk / "data"
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{data / 'darkroom.db'}", tasks="normalize,augment")
    dr.env["DARKROOM_DATA_DIR"] = str(data)
    dr.data = data  # where `up` logs
    ledger = LedgerReader(f"sqlite:///{data / 'darkroom.db'}")
    dr.inbox.mkdir()
    assert dr.run("migrate").returncode == 0
    up = dr.start("up", str(dr.inbox), name="up")
    try:
        # Up and watching before the disk fills (a loaded machine may take a while to start the worker).
        dr.wait_for_log(" ready.", proc=up)
        dr.wait_for_log("for new files", proc=up)
        filler = _fill(small_disk, leave=64 * 1024)
        for name in ("astronaut", "chelsea", "rocket"):
            shutil.copy(photos[name], dr.inbox / f"{name}.jpg")
        time.sleep(6)  # registrations and result writes hit ENOSPC and are retried
        assert not any(r.status == "done" and r.task == "augment" for r in ledger.runs())
        filler.unlink()
        ledger.wait(lambda runs: len(runs) == 6 and all(r.status == "done" for r in runs), 240,
                    "everything done once there is room", dr)
    finally:
        code = stop(up)
    assert code == 0, dr.log_tail()
    assert not list((data / "blobs").glob(".incoming-*")), "a partial blob was left behind"
    ledger.check_invariants(dr.inbox, tasks=2)
    # Export onto a full disk fails clearly and leaves no partial file
    export = small_disk / "export"
    export.mkdir()
    filler = _fill(small_disk, leave=16 * 1024)
    done = dr.run("export", str(export))
    assert done.returncode == 1 and "No space left" in done.stderr, done.stderr
    assert not [p for p in export.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
    filler.unlink()
    assert dr.run("export", str(export)).returncode == 0


def test_kill_9_of_a_worker_child_mid_batch_loses_none_of_the_batch(tmp_path, redis_url, photos):
    """A classify batch holds many runs whose own messages were skipped: when its process dies, the
    redelivered message's process takes the orphans over, and everything ends done once."""
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    # Random-weights VGG16: slow enough on a CPU that a batch is caught in flight.
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="classify", classifier_model="vgg16",
                  classifier_weights="none", classify_batch_size="8")
    ledger = LedgerReader(db_url)
    dr.inbox.mkdir()
    for i in range(12):
        src = photos[("astronaut", "coffee", "chelsea", "rocket")[i % 4]]
        img = __import__("PIL.Image", fromlist=["Image"]).open(src).rotate(i * 7)
        img.save(dr.inbox / f"p{i:02d}.jpg")
    assert dr.run("ingest", str(dr.inbox)).returncode == 0
    worker = _worker(dr, "w")
    try:
        ledger.wait(lambda runs: sum(r.status == "running" for r in runs) >= 2, 180, "a batch in flight", dr)
        holder = next(r for r in ledger.runs() if r.status == "running")
        held = [r.id for r in ledger.runs() if r.status == "running" and r.worker == holder.worker]
        os.kill(_pid_of(holder), signal.SIGKILL)
        ledger.wait(ledger.all_terminal(12), 300, "all runs terminal", dr)
    finally:
        stop(worker, signal.SIGTERM)
    runs = ledger.runs()
    assert {r.status for r in runs} == {"done"}, [(r.id, r.status, r.error) for r in runs]
    assert len(held) >= 2 and all(r.attempts >= 2 for r in runs if r.id in held)
    ledger.check_invariants(dr.inbox, tasks=1)
