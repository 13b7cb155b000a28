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

#: Set to use an existing Redis (e.g. the machine's at redis://127.0.0.1:6379/13); by default the
#: suite starts a redis-server of its own, so test runs side by side never flush each other's queues.
REDIS_URL = os.environ.get("DARKROOM_TEST_REDIS_URL")
POSTGRES_ADMIN_URL = os.environ.get("DARKROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI needs it")
    pytest.skip(f"{what} is not reachable")


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


class PrivateRedis:
    """A redis-server of the test's own, on a free port, without persistence: safe to kill and restart."""

    def __init__(self, folder: Path, *extra: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.extra = extra
        self.proc = None
        self.start()

    def start(self) -> None:
        import subprocess
        import time

        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.AuthenticationError:
                return
            except redis.ResponseError:  # NOAUTH: up, and wants a password
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Killed and started again on the same port: everything it held is gone."""
        self.kill()
        self.start()

    def url(self, db: int = 0, auth: str = "") -> str:
        return f"redis://{auth + '@' if auth else ''}127.0.0.1:{self.port}/{db}"


@pytest.fixture()
def private_redis(tmp_path):
    import shutil

    if not shutil.which("redis-server"):
        _missing("redis-server (to run a private instance)")
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.kill()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temp folder, a free port): safe to stop."""

    def __init__(self, folder: Path) -> None:
        import glob
        import shutil
        import socket
        import subprocess

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            _missing("PostgreSQL's server binaries (initdb)")
        self.bin = Path(bins[-1]).parent
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = folder / "pgdata"
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(folder, "postgres")
        subprocess.run([*self.prefix, str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        self.start()

    def _ctl(self, *args: str) -> None:
        import subprocess

        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "-l",
                  str(self.data / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


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
