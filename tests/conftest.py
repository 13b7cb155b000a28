"""Shared fixtures: real Redis, real PostgreSQL, real SQLite; photos that packages ship.

Services: the machine's Redis (a test database, flushed around each test) and PostgreSQL (a fresh
database per test session). Locally a missing service skips its tests; under CI (CI=true) it fails.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REDIS_URL = os.environ.get("DARKROOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES_ADMIN_URL = os.environ.get("DARKROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI needs it")
    pytest.skip(f"{what} is not reachable")


@pytest.fixture()
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        _missing(f"Redis at {REDIS_URL}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001
        _missing(f"PostgreSQL at {POSTGRES_ADMIN_URL}")
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """A fresh, empty database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"darkroom_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'darkroom.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos that packages ship, as files: astronaut (one face), coffee, chelsea (a cat), rocket."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).save(path, quality=92)
        out[name] = path
    return out
