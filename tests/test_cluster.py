"""Workers that refuse a wrong set-up, and runs no message loses.

A real `darkroom worker` (and `celery -A worker.app worker`) against a producer's cluster: with the
default SQLite, another cluster's database, a blob store that is not the producer's or cannot be
reached, it exits non-zero with one line naming the setting to fix; with the right set-up it starts,
and a message whose run its database does not know is logged and kept, never acknowledged as done.
A batch's extra runs whose original cannot be read are given back, not failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import ROOT, FakeTask, base_env, free_port, stop

PREFIX = "darkroom: refusing to start: "


@pytest.fixture()
def cluster(tmp_path, redis_url, photos):
    """A producer's cluster: its SQLite ledger, its data folder (a file blob store holding one photo
    and the cluster's mark), its identity mirrored in the broker."""
    from darkroom.settings import Settings
    from producer.registrar import Registrar
    from storage.db import make_engine, migrate
    from worker.app import create_app

    data = tmp_path / "producer"
    db_url = f"sqlite:///{tmp_path / 'producer.db'}"
    settings = Settings(data_dir=data, database_url=db_url, broker_url=redis_url, tasks=["normalize"],
                        preload_models=False)
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[tmp_path])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "coffee.jpg").write_bytes(photos["coffee"].read_bytes())
    registrar.register(inbox / "coffee.jpg", send=False)
    registrar.close()
    return {"settings": settings, "identity": registrar.identity, "data": data, "db_url": db_url,
            "redis_url": redis_url}


def _env(cluster, **settings: str) -> dict[str, str]:
    env = base_env()
    env.update(DARKROOM_BROKER_URL=cluster["redis_url"], DARKROOM_DATA_DIR=str(cluster["data"]),
               DARKROOM_DATABASE_URL=cluster["db_url"], DARKROOM_TASKS="normalize", DARKROOM_CONCURRENCY="1",
               DARKROOM_PRELOAD_MODELS="false", DARKROOM_START_LOCAL_REDIS="false")
    for key, value in settings.items():
        name = f"DARKROOM_{key.upper()}"
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _refused(env: dict[str, str], celery: bool = False) -> str:
    """Start a worker that must refuse: returns the one refusal line (it exited non-zero, in time)."""
    argv = ([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo"] if celery
            else [sys.executable, "-m", "darkroom", "worker"])
    started = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    lines = [line for line in output.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert lines[0].startswith(PREFIX) and done.stderr.strip().splitlines()[-1] == lines[0], output
    assert time.monotonic() - started < 60
    return lines[0]


def test_a_worker_on_the_default_sqlite_with_the_producers_broker_refuses_to_start(cluster, tmp_path):
    elsewhere = tmp_path / "another-host"
    line = _refused(_env(cluster, data_dir=str(elsewhere), database_url=None))
    assert line.startswith(PREFIX + "DARKROOM_DATABASE_URL: this worker's database (sqlite:///")
    assert str(elsewhere) in line and cluster["identity"].short in line
    # The same with Celery's own command line
    assert _refused(_env(cluster, data_dir=str(elsewhere), database_url=None), celery=True) == line


def test_a_database_of_another_cluster_is_refused(cluster, tmp_path):
    from storage import cluster as identity
    from storage.db import make_engine, migrate, session_factory, transaction

    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    engine = make_engine(other_db)
    migrate(engine)
    with transaction(session_factory(engine)) as s:
        other = identity.ensure(s, "file:///elsewhere")
    engine.dispose()
    line = _refused(_env(cluster, database_url=other_db))
    assert line.startswith(PREFIX + "DARKROOM_DATABASE_URL: ")
    assert f"is cluster {other.short}, but the broker" in line and cluster["identity"].short in line


@pytest.mark.parametrize("store", ["another-hosts-folder", "s3-unreachable"])
def test_a_blob_store_that_is_not_the_producers_is_refused(cluster, tmp_path, store):
    if store == "another-hosts-folder":  # the right database and broker, but this host's own empty blob folder
        line = _refused(_env(cluster, data_dir=str(tmp_path / "another-host")))
        assert f"holds none of cluster {cluster['identity'].short}'s originals" in line
    else:
        url = f"s3://photos/originals?endpoint=http://127.0.0.1:{free_port()}"
        line = _refused(_env(cluster, blob_url=url))
        assert f"the blob store {url} (DARKROOM_BLOB_URL) did not answer" in line
    assert line.startswith(PREFIX + "DARKROOM_BLOB_URL: ")
    assert f"the producer's is {cluster['identity'].blob_url}" in line


def test_the_right_set_up_starts_and_an_unknown_run_is_never_acked_as_done(cluster, tmp_path):
    import redis

    from darkroom.settings import Settings
    from storage.ledger import RunRef
    from worker.app import create_app
    from worker.queues import send_run

    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "darkroom", "worker", "--concurrency", "1"],
                                  env=_env(cluster), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_for(log_path, "ready.", worker)
        settings = Settings(broker_url=cluster["redis_url"])
        unknown = 900_000 + os.getpid() % 1000
        send_run(create_app(settings), RunRef(id=unknown, task="normalize", model=""))
        _wait_for(log_path, f"run {unknown} is unknown to this worker's database", worker)
        text = log_path.read_text(errors="replace")
        assert "DARKROOM_DATABASE_URL is not the producer's database" in text
        assert "the message is sent again in 30 s" in text
    finally:
        assert stop(worker, sig=15) == 0
    # Kept for a worker that knows the run: back in the queue (or still held), not acknowledged
    client = redis.Redis.from_url(cluster["redis_url"])
    kept = [m for m in client.lrange("cpu", 0, -1) + list(client.hvals("unacked")) if str(unknown).encode() in m]
    assert kept, "the unknown run's message was acknowledged and dropped"


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return
        assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{content[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the worker's log after {timeout} s:\n{path.read_text(errors='replace')[-3000:]}")


# --- a batch's extras whose original cannot be read ---------------------------------------------------


def test_a_batchs_extra_runs_whose_original_cannot_be_read_are_given_back(tmp_path, redis_url, photos):
    """A classify message fills its batch with other pending runs; one whose blob is missing is
    released (queued again, sent again), not failed for it; its own message then fails it, once,
    naming DARKROOM_BLOB_URL."""
    import redis
    from sqlalchemy import select

    from darkroom import catalog
    from darkroom.settings import Settings
    from producer.registrar import Registrar
    from storage.db import make_engine, migrate
    from storage.models import DONE, FAILED, QUEUED, Image, TaskRun
    from storage.stores import open_store
    from worker.app import create_app
    from worker.pipeline import execute
    from worker.runtime import Runtime

    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                        broker_url=redis_url, tasks=["classify"], classifier_model="mobilenet_v2",
                        classifier_weights="none", classify_batch_size=3, preload_models=False)
    engine = make_engine(settings.db_url)
    migrate(engine)
    engine.dispose()
    app = create_app(settings)
    registrar = Registrar(settings=settings, app=app, roots=[tmp_path])
    names = ("astronaut", "coffee", "chelsea")
    for name in names:
        (tmp_path / f"{name}.jpg").write_bytes(photos[name].read_bytes())
        registrar.register(tmp_path / f"{name}.jpg", send=False)
    registrar.close()
    rt = Runtime.create(settings)
    rt.blobs = open_store(settings.blob_location)
    with rt.sessions() as s:
        rows = s.execute(select(TaskRun.id, Image.sha256).join(Image).order_by(TaskRun.id)).all()
    (own, _), (extra, extra_sha), (third, _) = rows
    rt.blobs.path_for(extra_sha).unlink()  # this host cannot read the second photo's original

    task = FakeTask()
    task.runtime, task.app = rt, app
    assert execute(task, own) == DONE
    with rt.sessions() as s:
        states = {r.id: (r.status, r.error) for r in s.scalars(select(TaskRun))}
    assert states[own][0] == DONE and states[third][0] == DONE
    assert states[extra] == (QUEUED, None)  # given back, not failed for another message's sake
    assert task.retried == []
    client = redis.Redis.from_url(redis_url)
    queue = catalog.get("classify").queue
    assert any(f"'run_id': {extra}".encode() in m for m in client.lrange(queue, 0, -1))  # sent again

    # Its own message: the store holds the cluster's mark, so the blob is missing for good
    assert execute(task, extra) == FAILED and task.retried == []
    with rt.sessions() as s:
        error = s.get(TaskRun, extra).error
    assert f"original {extra_sha} is missing from the blob store" in error and "DARKROOM_BLOB_URL" in error


def test_a_worker_that_cannot_read_in_place_originals_says_so_as_it_starts(tmp_path, redis_url, photos, caplog):
    """Originals held in place must be at the same path on every host: a worker that cannot read the
    newest one logs it, naming the file and its host, and is not refused (a file may be gone for good)."""
    import logging
    import socket

    from darkroom.settings import Settings
    from producer.registrar import Registrar
    from storage.db import make_engine, migrate
    from worker.app import create_app
    from worker.cluster import refusal

    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                        broker_url=redis_url, tasks=["normalize"], blob_mode="reference")
    engine = make_engine(settings.db_url)
    migrate(engine)
    engine.dispose()
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "rocket.jpg").write_bytes(photos["rocket"].read_bytes())
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[archive])
    registrar.register(archive / "rocket.jpg", send=False)
    registrar.close()
    with caplog.at_level(logging.ERROR, logger="worker.cluster"):
        assert refusal(settings) is None
    assert not caplog.records  # readable here: nothing said
    (archive / "rocket.jpg").rename(tmp_path / "elsewhere.jpg")  # as if the archive were not mounted here
    with caplog.at_level(logging.ERROR, logger="worker.cluster"):
        assert refusal(settings) is None
    (record,) = caplog.records
    assert "in-place originals cannot be read on this host" in record.getMessage()
    assert str(archive / "rocket.jpg") in record.getMessage() and socket.gethostname() in record.getMessage()


def test_the_reconciler_mirrors_the_identity_again_when_redis_lost_it(tmp_path, redis_url):
    """Redis restarted without persistence (or flushed): the identity a worker checks at start is
    back on the producer's next reconciler turn, so a worker started then is still checked."""
    import redis

    from darkroom.settings import Settings
    from producer.reconciler import Reconciler
    from producer.registrar import Registrar
    from storage import cluster as identity_of
    from storage.db import make_engine, migrate
    from worker.app import create_app

    db_url = f"sqlite:///{tmp_path / 'producer.db'}"
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, broker_url=redis_url, tasks=["normalize"])
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[tmp_path])
    client = redis.Redis.from_url(redis_url)
    assert identity_of.mirrored(client) == registrar.identity
    client.flushdb()
    assert identity_of.mirrored(client) is None
    Reconciler(registrar).check()
    assert identity_of.mirrored(client) == registrar.identity
    registrar.close()
