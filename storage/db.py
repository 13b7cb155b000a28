"""Engines, sessions and schema migrations.

Engines are made by :func:`make_engine` in the process that uses them (after a fork, never before:
a connection pool must not be shared across processes). SQLite gets WAL and a busy timeout so the
producer and several worker processes can write to it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, pool_size: int | None = None, max_overflow: int | None = None,
                application_name: str | None = None, **kwargs) -> Engine:
    """An engine for ``url``; for SQLite the file's folder is created and pragmas are set.

    PostgreSQL: ``pool_size`` and ``max_overflow`` bound the connections this process opens (a worker
    process needs one at a time: DARKROOM_DB_POOL_SIZE, DARKROOM_DB_MAX_OVERFLOW); ``application_name``
    names them in ``pg_stat_activity``. Nothing session-scoped is used, so that a pooler in transaction
    mode (pgbouncer's ``pool_mode=transaction``) may hand each transaction another server connection:
    psycopg prepares no statements (``prepare_threshold=None``: a prepared statement lives in one server
    session), and the only locks are transaction-level advisory locks."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so a write
        # transaction takes its lock up front instead of failing to upgrade one later. A
        # read_only() session takes no lock: WAL readers never wait for the writer.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if pool_size is not None:
        kwargs.setdefault("pool_size", pool_size)
    if max_overflow is not None:
        kwargs.setdefault("max_overflow", max_overflow)
    connect_args = dict(kwargs.pop("connect_args", {}))
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
        connect_args.setdefault("prepare_threshold", None)
    if application_name and parsed.get_backend_name() == "postgresql":
        connect_args.setdefault("application_name", application_name[:63])  # PostgreSQL keeps 63 bytes
    return create_engine(url, connect_args=connect_args, **kwargs)


_READ_ONLY = "darkroom_read_only"


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # let the "begin" listener issue BEGIN
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
    # SQL's hamming() on SQLite (storage.models.hamming): PostgreSQL has bit_count().
    dbapi_connection.create_function("darkroom_hamming", 2, _hamming, deterministic=True)


def _hamming(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session


@contextlib.contextmanager
def read_only(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads only: on SQLite it does not take the write lock (so it neither waits
    for a writer nor holds one up); on PostgreSQL it is an ordinary transaction. Rolled back."""
    with factory() as session:
        session.connection(execution_options={_READ_ONLY: True})
        try:
            yield session
        finally:
            session.rollback()


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision. Safe when several processes start at once.

    PostgreSQL: one connection, one transaction: a transaction-level advisory lock (a session-level
    lock would not survive a pooler in transaction mode, which may hand the unlock to another server
    session), then every migration, committed together; the lock ends with the transaction, also
    when this process dies. So migrating needs no more than DARKROOM_DB_POOL_SIZE=1."""
    from alembic import command

    config = alembic_config(engine)
    if engine.url.get_backend_name() == "postgresql":
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        return
    with _migration_lock(engine):
        command.upgrade(config, "head")


def schema_is_current(engine: Engine) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads()) == heads


#: The PostgreSQL advisory lock that makes one migration at a time.
MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"darkroom-migrate").digest()[:4], "big")


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time on SQLite (a lock file beside the database; PostgreSQL's lock
    is taken in :func:`migrate`'s transaction)."""
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock_path = Path(engine.url.database + ".migrate-lock")
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


def insert(session: Session, table: Any) -> Any:
    """An INSERT into ``table`` in the session's database's dialect (PostgreSQL's or SQLite's), so that
    ``.on_conflict_do_nothing()`` / ``.on_conflict_do_update()`` can follow it."""
    return (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert(table)


def chunks(values: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    """``values`` in slices small enough for every database's limit on bound parameters."""
    for start in range(0, len(values), size):
        yield values[start:start + size]
