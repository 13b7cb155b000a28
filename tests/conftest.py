"""Shared fixtures: real Redis, real PostgreSQL, real SQLite; photos that packages ship.

Services: the machine's Redis (a test database, flushed around each test) and PostgreSQL (a fresh
database per test session). Locally a missing service skips its tests; under CI (CI=true) it fails.
The servers of a test's own and the rest of the harness are in ``tests/harness.py``.

Photos, in one place (made by ``tests/photos.py``), all session-scoped and shared, never changed:
``photos`` (JPEG files of scikit-image's astronaut, coffee, chelsea, rocket), ``files`` (those and
a few pictures the course's commands and the worker are tried on), and the arrays ``astronaut``,
``tall``, ``collage`` and ``sample_photos`` (read-only).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import photos as pictures
from tests.harness import PrivatePostgres, PrivateRedis, PrivateSeaweed
from tests.harness import missing as _missing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

#: Set to use an existing Redis (e.g. the machine's at redis://127.0.0.1:6379/13); by default the
#: suite starts a redis-server of its own, so test runs side by side never flush each other's queues.
REDIS_URL = os.environ.get("DARKROOM_TEST_REDIS_URL")
POSTGRES_ADMIN_URL = os.environ.get("DARKROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    """The Redis the suite uses: DARKROOM_TEST_REDIS_URL, or a private redis-server for this session."""
    import shutil

    if REDIS_URL:
        return REDIS_URL
    if not shutil.which("redis-server"):
        return "redis://127.0.0.1:6379/13"
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    yield server.url()
    server.kill()


@pytest.fixture()
def redis_url(redis_server) -> str:
    import redis

    client = redis.Redis.from_url(redis_server, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        _missing(f"Redis at {redis_server}")
    client.flushdb()
    yield redis_server
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


@pytest.fixture()
def sessions(db_url):
    """A session factory on a migrated store of each kind (SQLite, PostgreSQL)."""
    from storage.db import make_engine, migrate, session_factory

    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture()
def private_redis(tmp_path):
    import shutil

    if not shutil.which("redis-server"):
        _missing("redis-server (to run a private instance)")
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.kill()


@pytest.fixture()
def private_postgres():
    import shutil
    import tempfile

    # Not under pytest's temp folder: that is private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
    server = PrivatePostgres(folder)
    yield server
    try:
        server.stop()
    except Exception:  # noqa: BLE001 - already stopped
        pass
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A SeaweedFS (its S3 gateway) of this test session's own, shared by every test that needs an
    S3 blob store (each uses buckets of its own: ``seaweed.url(bucket)``); stopped and removed at the end."""
    import shutil

    folder = tmp_path_factory.mktemp("seaweed")
    server = PrivateSeaweed(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


# --- photos --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos that packages ship, as files: astronaut (one face), coffee, chelsea (a cat), rocket."""
    folder = tmp_path_factory.mktemp("photos")
    return {name: pictures.write_jpeg(pictures.shipped(name), folder / f"{name}.jpg") for name in pictures.SHIPPED}


@pytest.fixture(scope="session")
def files(photos, tmp_path_factory) -> dict[str, Path]:
    """The ``photos`` files, and: ``collage``, a 2x3 PNG collage of six copies of the astronaut's face;
    ``gradient``, a lossless PNG with both extremes (0 and 255) in every row; ``text``, a text file
    named like a photo (notes.jpg)."""
    folder = tmp_path_factory.mktemp("files")
    out = dict(photos)
    out["gradient"] = folder / "gradient.png"
    Image.fromarray(pictures.gradient()).save(out["gradient"])
    out["collage"] = folder / "collage.png"
    Image.fromarray(pictures.face_collage(rows=2, cols=3)).save(out["collage"])
    out["text"] = folder / "notes.jpg"
    out["text"].write_text("not a photo at all")
    return out


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut, 512x512x3 (one face: roughly x 170..280, y 50..190), read-only."""
    return pictures.read_only(pictures.shipped("astronaut"))


@pytest.fixture(scope="session")
def tall(astronaut) -> np.ndarray:
    """A non-square picture (512 high, 384 wide), so that rotations show in the shape; read-only."""
    return pictures.read_only(np.ascontiguousarray(astronaut[:, :384]))


@pytest.fixture(scope="session")
def collage() -> np.ndarray:
    """2x2 tiles of the astronaut's head (four faces) on a 320x320 canvas, read-only."""
    return pictures.read_only(pictures.face_collage(rows=2, cols=2))


@pytest.fixture(scope="session")
def sample_photos(astronaut) -> list[np.ndarray]:
    """Two photos to classify, read-only: the astronaut and chelsea (a cat)."""
    return [astronaut, pictures.read_only(pictures.shipped("chelsea"))]
