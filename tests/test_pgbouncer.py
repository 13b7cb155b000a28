"""PostgreSQL through pgbouncer in transaction mode (each transaction may run on another server
connection), and the connections Darkroom's processes use, counted where PostgreSQL and pgbouncer
count them.

One Debian pgbouncer of the module's own (``PrivatePgbouncer``) in front of the machine's PostgreSQL,
on a fresh database: the migrations (two processes at once), the ledger's operations, and real worker
processes run through it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from darkroom.settings import Settings
from producer.reconciler import Reconciler
from producer.registrar import Registrar
from storage import ledger
from storage.db import make_engine, migrate, read_only, schema_is_current, session_factory, transaction
from storage.models import DONE, Normalization, TaskRun
from tests.harness import ROOT, PrivatePgbouncer, base_env, end
from tests.photos import big_photos
from worker.app import create_app

#: Server connections pgbouncer may open to PostgreSQL for the database.
SERVER_POOL = 3
#: Worker processes in the connection-budget test.
PROCESSES = 3


@pytest.fixture(scope="module")
def bouncer(postgres_server):
    folder = Path(tempfile.mkdtemp(prefix="darkroom-pgbouncer-"))
    url = make_url(postgres_server)
    server = PrivatePgbouncer(folder, url.host or "127.0.0.1", url.port or 5432, pool_size=SERVER_POOL)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def database(postgres_server, bouncer):
    """A fresh database: (its URL through pgbouncer, its URL straight to PostgreSQL)."""
    name = f"darkroom_pgb_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    direct = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    yield bouncer.url(name), direct
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _worker_clients(bouncer: PrivatePgbouncer) -> list[dict]:
    """The worker processes' client connections to pgbouncer (SHOW CLIENTS, by application_name)."""
    return [c for c in bouncer.show("CLIENTS") if str(c.get("application_name") or "").startswith("darkroom-worker")]


def _activity(direct_url: str, like: str = "%") -> list[tuple[str, str]]:
    """(application_name, state) of the server connections to the database, but the asking one."""
    engine = create_engine(direct_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT application_name, state FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND application_name LIKE :like"), {"like": like})]
    finally:
        engine.dispose()


def test_migrations_run_through_pgbouncer_two_at_once_and_hold_no_lock(database):
    """Two processes migrate at once, each with one connection (DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0):
    the lock's transaction is the migration's."""
    through, direct = database
    engines = [make_engine(through, pool_size=1, max_overflow=0, pool_timeout=10) for _ in range(2)]
    errors: list[BaseException] = []

    def run(engine) -> None:
        try:
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(schema_is_current(e) for e in engines)
    for e in engines:
        e.dispose()
    with create_engine(direct).connect() as conn:  # the migration lock went with its transaction
        assert conn.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")) == 0


def test_the_ledger_works_through_pgbouncer(database, tmp_path, redis_url, photos):
    """Registration, claims, finishing, the counts' fold (its advisory lock), the reconciler: from
    several threads at once, so that pgbouncer hands transactions to different server connections (a
    prepared statement or a session lock would then be missing or leak)."""
    through, direct = database
    settings = Settings(data_dir=tmp_path / "data", database_url=through, broker_url=redis_url, tasks=["normalize"],
                        _env_file=None)
    migrate(make_engine(through))
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[])
    try:
        registrar.register_many(list(photos.values()))
        reconciler = Reconciler(registrar)
        reconciler.check()
        sessions = session_factory(make_engine(through, pool_size=1, max_overflow=2))
        with sessions() as s:
            ids = list(s.scalars(select(TaskRun.id).order_by(TaskRun.id)))
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(15):  # more than psycopg's prepare threshold (5) of the same statements
                    with read_only(sessions) as s:
                        ledger.claimable(s, ids, lambda _h: True)
                    with transaction(sessions) as s:
                        ledger.fold_counts(s)
                with transaction(sessions) as s:
                    for claim in ledger.claim_runs(s, [ids[i]], f"test-{i}:1"):
                        ledger.finish_run(s, claim.run_id, status=DONE)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ids))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert reconciler.check().broker_lost is False
        ledger.fold_pending(sessions)
        with sessions() as s:
            assert ledger.image_counts(s) == {"done": len(ids)}
    finally:
        registrar.close()
    with create_engine(direct).connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")) == 0


@pytest.mark.parametrize("route", ["pgbouncer", "direct"])
def test_worker_processes_stay_within_their_connection_budget(route, bouncer, database, tmp_path, redis_url, photos):
    """A real worker of PROCESSES processes does every run; its processes' connections, counted by
    application_name, never exceed PROCESSES x (DB_POOL_SIZE + DB_MAX_OVERFLOW) and are one per process
    at rest; through pgbouncer PostgreSQL sees at most its pool."""
    through, direct = database
    url = through if route == "pgbouncer" else direct
    settings = Settings(data_dir=tmp_path / "data", database_url=url, broker_url=redis_url, tasks=["normalize"],
                        _env_file=None)
    migrate(make_engine(url))
    env = base_env()
    env.update(DARKROOM_DATA_DIR=str(settings.data_dir), DARKROOM_BROKER_URL=redis_url, DARKROOM_DATABASE_URL=url,
               DARKROOM_TASKS="normalize", DARKROOM_START_LOCAL_REDIS="false", KERAS_HOME=str(tmp_path / "keras"))
    worker = subprocess.Popen([sys.executable, "-m", "darkroom", "worker", "--concurrency", str(PROCESSES)], env=env,
                              cwd=ROOT, stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[])
    budget = PROCESSES * (settings.db_pool_size + settings.db_max_overflow)
    peak_workers = peak_server = 0
    try:
        registrar.register_many(big_photos(photos, tmp_path / "big", 9))
        sessions = session_factory(make_engine(direct))
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            if route == "direct":
                peak_workers = max(peak_workers, len(_activity(direct, "darkroom-worker %")))
            else:
                peak_workers = max(peak_workers, len(_worker_clients(bouncer)))
            peak_server = max(peak_server, len(_activity(direct)))
            with sessions() as s:
                done = s.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.status == DONE))
            if done == 9:
                break
            time.sleep(0.05)
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(Normalization)) == 9
        time.sleep(1.0)
        if route == "direct":
            at_rest = len(_activity(direct, "darkroom-worker %"))
        else:
            at_rest = len(_worker_clients(bouncer))
        print(f"{route}: {PROCESSES} worker processes: {at_rest} connection(s) at rest, at most {peak_workers} "
              f"under load (budget {budget}); PostgreSQL saw at most {peak_server} for the database")
        assert 1 <= at_rest <= PROCESSES
        assert peak_workers <= budget
        if route == "pgbouncer":
            assert peak_server <= SERVER_POOL + 1  # pgbouncer's pool, and the counting connection itself
    finally:
        registrar.close()
        end(worker)

