"""Redis Sentinel: ``sentinel://h1:26379;sentinel://h2:26379`` URLs for the broker and for Darkroom's
own Redis client, and a failover mid-run that loses no work.

Two private redis-servers (a master and its replica) and two redis-sentinel processes on free ports
(``PrivateSentinel``), shared by the module; a real worker process; the producer's registrar and
reconciler in this process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import func, select

from darkroom.settings import Settings, mask_url, settings_error
from producer.reconciler import Reconciler
from producer.registrar import Registrar
from storage.db import make_engine, migrate
from storage.models import DONE, Normalization, TaskRun
from tests.harness import ROOT, PrivateSentinel, base_env, end, free_port
from tests.photos import big_photos
from worker.app import create_app
from worker.broker import connect, for_settings, master, transport_options
from worker.queues import queue_depths

NAME = "darkroom-test"


@pytest.fixture(scope="module")
def sentinel():
    folder = Path(tempfile.mkdtemp(prefix="darkroom-sentinel-"))
    group = PrivateSentinel(folder, sentinels=2, name=NAME)
    yield group
    group.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _settings(sentinel: PrivateSentinel, tmp_path: Path, **more) -> Settings:
    return Settings(data_dir=tmp_path / "data", broker_url=sentinel.url(), sentinel_master=NAME, tasks=["normalize"],
                    _env_file=None, **more)


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:6379/0", "must be a Redis URL"),
    ("sentinel://:pw@h1:2x6379;sentinel://h2:26379", "port that is not a number"),
    ("sentinel://:pw@h1:26379;redis://h2:6379", "part 2 of a sentinel URL list is not sentinel://"),
    ("sentinel://:pw@h1:26379/zero", "the database after the port must be a number"),
])
def test_a_bad_broker_url_is_refused_in_one_line_without_its_password(url, says):
    with pytest.raises(ValidationError) as caught:
        Settings(broker_url=url, _env_file=None)
    line = settings_error(caught.value)
    assert line.startswith("invalid settings: DARKROOM_BROKER_URL:") and says in line and "pw" not in line


def test_sentinel_urls_are_settings_and_the_client_finds_the_master(sentinel, tmp_path):
    settings = _settings(sentinel, tmp_path)
    assert settings.redis_url.count("sentinel://") == 2
    assert transport_options(settings) == {"visibility_timeout": settings.visibility_timeout, "master_name": NAME}
    client = for_settings(settings, socket_timeout=2)
    client.set("darkroom:test-key", "1")
    assert master(client).address.endswith(f":{sentinel.master_port()}")
    # A sentinel that is down, listed first: the next one answers
    url = f"sentinel://127.0.0.1:{free_port()};" + sentinel.url()
    assert connect(url, master_name=NAME, socket_timeout=2).get("darkroom:test-key") == b"1"
    assert queue_depths(client) == {"cpu": 0, "gpu": 0}
    # A password in the first part is the master's, and is never printed
    assert mask_url("sentinel://:s3cret@127.0.0.1:1/0;sentinel://127.0.0.1:2") == \
        "sentinel://:***@127.0.0.1:1/0;sentinel://127.0.0.1:2"
    assert "s3cret" not in str(Settings(broker_url="sentinel://:s3cret@h:1;sentinel://h:2", _env_file=None).masked())
    client.delete("darkroom:test-key")


def test_a_failover_mid_run_loses_no_work(sentinel, tmp_path, photos):
    """A worker of two processes on the sentinel URL; the master killed while photos are queued and
    running, the sentinels fail over, and the messages still queued are lost on the way (as
    asynchronous replication may lose the last ones). The worker reconnects to the new master, the
    reconciler notices the new master and sends the queued runs again, and every run ends done with
    one result."""
    settings = _settings(sentinel, tmp_path)
    migrate(make_engine(settings.db_url))
    client = for_settings(settings)
    client.flushdb()
    env = base_env()
    env.update(DARKROOM_DATA_DIR=str(settings.data_dir), DARKROOM_BROKER_URL=settings.redis_url,
               DARKROOM_SENTINEL_MASTER=NAME, DARKROOM_DATABASE_URL=settings.db_url, DARKROOM_TASKS="normalize",
               DARKROOM_START_LOCAL_REDIS="false", KERAS_HOME=str(tmp_path / "keras"))
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "darkroom", "worker", "--concurrency", "2"], env=env, cwd=ROOT,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[])
    reconciler = Reconciler(registrar)
    n = 24
    try:
        reconciler.check()
        registrar.register_many(big_photos(photos, tmp_path / "big", n))
        engine = make_engine(settings.db_url)

        def states() -> dict[str, int]:
            with engine.connect() as conn:
                return dict(conn.execute(select(TaskRun.status, func.count()).group_by(TaskRun.status)).all())

        deadline = time.monotonic() + 120
        while not states().get(DONE):  # mid-run: some done, the rest queued or running
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        before = states()
        old = sentinel.master_port()
        started = time.monotonic()
        new = sentinel.failover(kill=True)
        print(f"failover {old} -> {new} in {time.monotonic() - started:.1f} s with runs {before}")
        assert new != old and before.get(DONE, 0) < n
        # Replication is asynchronous: what the old master took last may never reach the new one. Say
        # it lost every message still waiting in the queue.
        promoted = connect(f"redis://127.0.0.1:{new}/0")
        lost = promoted.llen("cpu")
        promoted.delete("cpu")
        print(f"{lost} message(s) dropped from the new master's queue")
        assert lost > 0
        noticed = False
        deadline = time.monotonic() + 120
        while states().get(DONE, 0) < n or not noticed:
            assert time.monotonic() < deadline and worker.poll() is None, f"{states()}\n{log.read_text()[-3000:]}"
            try:
                noticed |= reconciler.check().failover
            except redis.ConnectionError:  # no master named yet: the watcher tries again at its next turn
                pass
            time.sleep(0.25)
        print(f"every run done {time.monotonic() - started:.1f} s after the failover began")
        assert noticed, "the reconciler did not notice the new master"
        assert master(client).address.endswith(f":{new}")
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Normalization)) == n  # one result each
    finally:
        registrar.close()
        end(worker)
