"""Workers on separate hosts, for real: several hosts on this machine (``tests/hosts.py``).

One "svc" host runs PostgreSQL, Redis and SeaweedFS (S3); a "producer" host runs `darkroom watch`
(its reconciler) and `darkroom ingest`; two worker hosts run `darkroom worker`. Each host has its
own network address, hostname, process table and private disk (``/tmp``, where its data folder
is): the only things they share are the code and the network, as separate machines do.

Each case says what it took on this machine (2 cores shared with other test runs, load 6-10);
the whole module 4.5-6.5 min, of which ~20 s to start the svc host and make the photos. The
plumbing cases run the normalize task alone (no TensorFlow); one case runs every task. The servers are shared by the
module; every case has a database, a Redis database and a prefix in the bucket of its own, and
fresh producer and worker hosts (booted again, with empty disks).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import photos as pictures
from tests.harness import base_env
from tests.hosts import DATA, Host, Network, Services, require

pytestmark = pytest.mark.e2e

#: Credentials the S3 store is given (SeaweedFS without identities accepts any).
AWS = {"AWS_ACCESS_KEY_ID": "darkroom-test", "AWS_SECRET_ACCESS_KEY": "darkroom-test-secret",
       "AWS_DEFAULT_REGION": "us-east-1"}
#: How long a dead host's runs may take to be done by another host: "within about a minute".
TAKEOVER_LIMIT = 90.0


# --- photos --------------------------------------------------------------------------------------


def _photo_bytes(i: int, size: tuple[int, int]) -> bytes:
    """A distinct JPEG: one of the shipped photos, cropped and resized by ``i``."""
    name = pictures.SHIPPED[i % len(pictures.SHIPPED)]
    base = Image.fromarray(pictures.shipped(name))
    w, h = base.size
    crop = base.crop((i % 7, (i // 7) % 7, w - (i % 5), h - (i // 5) % 5)).resize(size)
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> list[Path]:
    """24 distinct small JPEGs (640x480): the plumbing cases' work."""
    folder = tmp_path_factory.mktemp("small")
    paths = []
    for i in range(24):
        path = folder / f"photo-{i:02}.jpg"
        path.write_bytes(_photo_bytes(i, (640, 480)))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory) -> list[Path]:
    """16 distinct large JPEGs (4000x3000): a run takes long enough to be caught in flight."""
    folder = tmp_path_factory.mktemp("large")
    noise = np.tile(np.random.default_rng(0).integers(-8, 9, (500, 500, 3), dtype=np.int16), (6, 8, 1))
    paths = []
    for i in range(16):
        pixels = np.asarray(Image.open(io.BytesIO(_photo_bytes(i, (4000, 3000)))))
        noisy = np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"large-{i:02}.jpg"
        Image.fromarray(noisy).save(path, quality=85)
        paths.append(path)
    return paths


# --- the hosts -------------------------------------------------------------------------------------


class Lab:
    """The module's network: the svc host with its servers, a producer host, two worker hosts."""

    def __init__(self, net: Network, logs: Path) -> None:
        self.net = net
        self.logs = logs
        self.svc = Services(net.host("svc"), logs)
        self.producer = net.host("producer")
        self.w1 = net.host("w1", hostname="darkroom-w1")
        self.w2 = net.host("w2", hostname="darkroom-w2")
        self.cases = itertools.count(1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require()
    net = Network()
    try:
        yield Lab(net, tmp_path_factory.mktemp("hosts-logs"))
    finally:
        net.close()


class Cluster:
    """One case's Darkroom over the lab: its own database, Redis database and prefix in the bucket."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.svc = lab.svc
        self.n = next(lab.cases)
        self.name = name
        self.db = f"case{self.n}"
        self.redis_db = self.n % 16
        self.bucket = "darkroom"
        self.prefix = f"case{self.n}"
        self.svc.createdb(self.db)
        self.logs: list[Path] = []
        self.sha256: dict[str, str] = {}  # photo name -> sha256
        self.started = time.monotonic()

    # --- settings and processes -------------------------------------------------------------------

    def settings(self, **values: str) -> dict[str, str]:
        """The environment every host of the case gets; ``values`` as DARKROOM_<NAME> overrides
        (a value of None removes the setting)."""
        env = {
            "DARKROOM_DATABASE_URL": self.svc.database_url(self.db),
            "DARKROOM_BROKER_URL": self.svc.redis_url(self.redis_db),
            "DARKROOM_BLOB_URL": self.svc.s3_url(self.bucket, self.prefix),
            "DARKROOM_TASKS": "normalize",
            "DARKROOM_RECONCILE_SECONDS": "5",
            "DARKROOM_SETTLE_SECONDS": "0.2",
            **AWS,
        }
        for key, value in values.items():
            name = key if key.isupper() else f"DARKROOM_{key.upper()}"
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def log(self, what: str) -> Path:
        path = self.lab.logs / f"{self.n:02}-{self.name}-{what}.log"
        self.logs.append(path)
        return path

    def start_producer(self, **values: str) -> subprocess.Popen:
        """`darkroom watch` on the producer host: it records the cluster and runs the reconciler."""
        proc = self.lab.producer.run([sys.executable, "-m", "darkroom", "watch", f"{DATA}/inbox"],
                                     self.settings(**values), log=self.log("producer"))
        self.wait_for_log(proc, "producer", "for new files", timeout=60)
        return proc

    def start_worker(self, host: Host, concurrency: int = 2, *, name: str | None = None,
                     **values: str) -> subprocess.Popen:
        """`darkroom worker` on ``host`` (its log named ``name``, by default the host's name)."""
        return host.run([sys.executable, "-m", "darkroom", "worker", "--concurrency", str(concurrency)],
                        self.settings(**values), log=self.log(name or host.name))

    def wait_for_log(self, proc: subprocess.Popen, what: str, text: str, timeout: float = 60) -> None:
        path = self.lab.logs / f"{self.n:02}-{self.name}-{what}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            assert proc.poll() is None, f"{what} exited with {proc.returncode}\n{self.log_tail()}"
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} in the {what} log after {timeout} s\n{self.log_tail()}")

    def wait_ready(self, proc: subprocess.Popen, host: Host, timeout: float = 90) -> None:
        """Wait until the worker on ``host`` consumes (Celery's "ready" line)."""
        self.wait_for_log(proc, host.name, " ready.", timeout)

    def read_log(self, what: str) -> str:
        path = self.lab.logs / f"{self.n:02}-{self.name}-{what}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ingest(self, paths: list[Path], batch: str = "photos", **values: str) -> subprocess.CompletedProcess:
        """Put ``paths`` on the producer host's disk and `darkroom ingest` them there."""
        folder = f"{DATA}/{batch}"
        target = self.lab.producer.path(folder)
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            data = path.read_bytes()
            (target / path.name).write_bytes(data)
            self.sha256[path.name] = hashlib.sha256(data).hexdigest()
        done = self.lab.producer.darkroom("ingest", folder, env=self.settings(**values), timeout=300)
        with open(self.log("ingest"), "a") as fh:
            fh.write(done.stdout + done.stderr)
        return done

    # --- the ledger, read from the svc host ---------------------------------------------------------

    def runs(self) -> list[dict]:
        rows = self.svc.psql("SELECT id, image_id, task, status, coalesce(worker, ''), attempts, "
                             "coalesce(replace(error, E'\\n', ' '), '') FROM task_runs ORDER BY id LIMIT 10000",
                             database=self.db)
        return [{"id": int(r[0]), "image": int(r[1]), "task": r[2], "status": r[3], "worker": r[4],
                 "attempts": int(r[5]), "error": r[6]} for r in rows]

    def wait_runs(self, predicate, timeout: float, what: str) -> list[dict]:
        deadline = time.monotonic() + timeout
        runs: list[dict] = []
        while time.monotonic() < deadline:
            try:
                runs = self.runs()
            except RuntimeError:  # the schema is not there yet
                runs = []
            if predicate(runs):
                return runs
            time.sleep(0.5)
        summary = sorted({(r["status"], r["worker"], r["error"][:200]) for r in runs})
        raise AssertionError(f"timed out after {timeout} s waiting for {what}: {summary}\n{self.log_tail()}")

    def wait_all_done(self, n_runs: int, timeout: float = 120) -> list[dict]:
        return self.wait_runs(
            lambda runs: len(runs) == n_runs and all(r["status"] not in ("queued", "running") for r in runs),
            timeout, f"{n_runs} runs to finish")

    def results_per_image(self, table: str = "normalizations") -> dict[int, int]:
        rows = self.svc.psql(f"SELECT image_id, count(*) FROM {table} GROUP BY image_id", database=self.db)
        return {int(i): int(c) for i, c in rows}

    def originals_on(self, host: Host) -> list[str]:
        """Files on ``host``'s disk whose bytes are one of the photos': a blob, a cache or a leftover."""
        wanted = set(self.sha256.values())
        found = []
        root = host.path("/tmp")
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_size > 1000:
                    if hashlib.sha256(path.read_bytes()).hexdigest() in wanted:
                        found.append(str(path.relative_to(root)))
            except (FileNotFoundError, PermissionError):
                continue
        return found

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in dict.fromkeys(self.logs)
                         if p.exists())

    def close(self) -> None:
        """The case's hosts killed together and booted again (empty disks, their own hostnames);
        its database dropped and its Redis database emptied."""
        hosts = {self.lab.producer: "producer", self.lab.w1: "darkroom-w1", self.lab.w2: "darkroom-w2"}
        for host in hosts:
            host.kill_all(wait=False)
        for host in hosts:
            host.reap()
        for host, hostname in hosts.items():
            host.boot(hostname)
        try:
            self.svc.psql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)', database="postgres")
        except RuntimeError:
            pass
        self.svc.redis("-n", str(self.redis_db), "FLUSHDB")


@pytest.fixture()
def cluster(lab, request):
    case = Cluster(lab, request.node.name.removeprefix("test_")[:40])
    try:
        yield case
    finally:
        case.close()


def host_of(run: dict, *hosts: Host) -> str | None:
    """Which host's process a run's holder names (by the host's hostname in it)."""
    for host in hosts:
        if host.hostname in run["worker"]:
            return host.name
    return None


# --- the cases -------------------------------------------------------------------------------------


def test_both_worker_hosts_work_and_no_blob_lands_on_their_disks(cluster, small_photos):
    """Both worker hosts take work, every run ends done with one result, and neither worker host
    keeps an original on its disk (they read them from the S3 store). 15-20 s here."""
    lab = cluster.lab
    cluster.start_producer()
    workers = [cluster.start_worker(lab.w1), cluster.start_worker(lab.w2)]
    for proc, host in zip(workers, (lab.w1, lab.w2)):
        cluster.wait_ready(proc, host)
    done = cluster.ingest(small_photos)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = cluster.wait_all_done(len(small_photos))
    assert {r["status"] for r in runs} == {"done"}, [(r["status"], r["error"]) for r in runs if r["status"] != "done"]
    assert {host_of(r, lab.w1, lab.w2) for r in runs} == {"w1", "w2"}, [r["worker"] for r in runs]
    assert set(cluster.results_per_image().values()) == {1}
    assert len(cluster.results_per_image()) == len(small_photos)
    # The originals are on the producer's disk (it read them) and in the store, never on a worker's.
    assert cluster.originals_on(lab.w1) == [] and cluster.originals_on(lab.w2) == []
    assert len(cluster.originals_on(lab.producer)) >= len(small_photos)


def catch_in_flight(cluster: Cluster, host: Host, timeout: float = 90) -> list[dict]:
    """Freeze ``host`` at a moment when its processes hold runs (``running``, named by it); returns
    those runs, the host left frozen. Tries again (thawed a moment) until it catches some."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host.freeze(True)
        held = [r for r in cluster.runs() if r["status"] == "running" and host.hostname in r["worker"]]
        if held:
            return held
        host.freeze(False)
        time.sleep(0.3)
    raise AssertionError(f"{host.name} never held a run in {timeout} s: {cluster.runs()}\n{cluster.log_tail()}")


def one_result_each(cluster: Cluster, n_images: int) -> None:
    per_image = cluster.results_per_image()
    assert len(per_image) == n_images and set(per_image.values()) == {1}, per_image


def test_kill_9_of_a_worker_host_its_runs_taken_over_in_about_a_minute(cluster, large_photos):
    """Every process of a worker host killed at once (kill -9 of its PID namespace) while it holds
    runs: another host does them within about a minute (the heartbeat's TTL, 30 s, and a
    reconciler turn of DARKROOM_RECONCILE_SECONDS=5; 25-31 s measured), one result each. ~40 s here."""
    lab = cluster.lab
    cluster.start_producer()
    workers = {h.name: cluster.start_worker(h) for h in (lab.w1, lab.w2)}
    for host in (lab.w1, lab.w2):
        cluster.wait_ready(workers[host.name], host)
    assert cluster.ingest(large_photos).returncode == 0
    held = catch_in_flight(cluster, lab.w1)
    lab.w1.kill_all()
    killed = time.monotonic()
    held_ids = {r["id"] for r in held}
    runs = cluster.wait_runs(
        lambda runs: all(r["status"] == "done" for r in runs if r["id"] in held_ids),
        TAKEOVER_LIMIT, f"the dead host's runs {sorted(held_ids)} to be done elsewhere")
    takeover = time.monotonic() - killed
    print(f"\nkill -9 of {lab.w1.name} holding {len(held)} run(s): taken over and done in {takeover:.1f} s")
    assert all(host_of(r, lab.w1, lab.w2) == "w2" for r in runs if r["id"] in held_ids), runs
    runs = cluster.wait_all_done(len(large_photos), timeout=TAKEOVER_LIMIT)
    assert {r["status"] for r in runs} == {"done"}, runs
    one_result_each(cluster, len(large_photos))
    assert takeover <= TAKEOVER_LIMIT


def test_link_down_for_5_s_mid_run(cluster, large_photos, small_photos):
    """A worker host's link goes down for 5 s while it works: every run still ends done, one result
    each, and the host works again once the link is back (its worker did not die). 22-36 s here."""
    lab = cluster.lab
    cluster.start_producer()
    workers = {h.name: cluster.start_worker(h) for h in (lab.w1, lab.w2)}
    for host in (lab.w1, lab.w2):
        cluster.wait_ready(workers[host.name], host)
    assert cluster.ingest(large_photos).returncode == 0
    cluster.wait_runs(lambda runs: any(r["status"] == "running" and host_of(r, lab.w1) for r in runs),
                      60, "w1 to be working")
    lab.w1.link_down(5)
    runs = cluster.wait_all_done(len(large_photos), timeout=180)
    assert {r["status"] for r in runs} == {"done"}, [(r["status"], r["error"]) for r in runs]
    assert workers["w1"].poll() is None, cluster.log_tail()
    # The host is back: more work goes to it as well.
    assert cluster.ingest(small_photos, batch="more").returncode == 0
    runs = cluster.wait_all_done(len(large_photos) + len(small_photos), timeout=120)
    assert {r["status"] for r in runs} == {"done"}, [(r["status"], r["error"]) for r in runs]
    later = [r for r in runs if r["id"] > len(large_photos)]
    assert any(host_of(r, lab.w1) for r in later), [r["worker"] for r in later]
    one_result_each(cluster, len(large_photos) + len(small_photos))


def _holder_host(worker: str) -> str:
    """The host part of a holder (``hostname:pid:start@host``): what tells hosts apart."""
    return worker.rpartition("@")[2]


def test_two_worker_hosts_with_one_hostname_keep_each_others_runs(cluster, large_photos):
    """Two worker hosts with the same hostname (as containers often have): a run one of them holds
    while it hangs is not taken by the other, even when a second message for it reaches the other
    (as a redelivery does), and each host's runs are told apart. 25-36 s here."""
    lab = cluster.lab
    lab.w1.reboot("darkroom-worker")
    lab.w2.reboot("darkroom-worker")
    # The other host's process table has moved on: its pids are not the first host's.
    lab.w2.sh("for i in $(seq 60); do true & done; wait", check=True)
    # A long heartbeat: the first host hangs for longer than usual, and is alive all the while.
    slow = {"heartbeat_seconds": "10", "heartbeat_ttl": "120"}
    cluster.start_producer(**slow)
    first = cluster.start_worker(lab.w1, **slow)
    cluster.wait_ready(first, lab.w1)
    assert cluster.ingest(large_photos).returncode == 0
    held = catch_in_flight(cluster, lab.w1)  # hangs, holding runs
    holders = {r["id"]: r["worker"] for r in held}
    second = cluster.start_worker(lab.w2, **slow)
    cluster.wait_ready(second, lab.w2)
    # A second message for each held run reaches the other host.
    ids = sorted(holders)
    lab.producer.sh([sys.executable, "-c",
                     "import sys; from darkroom import catalog; from worker.app import app; t = catalog.get('normalize'); "
                     "[app.send_task(t.celery_name, kwargs={'run_id': int(i)}, queue=t.queue) for i in sys.argv[1:]]",
                     *map(str, ids)], cluster.settings(**slow), check=True)
    # The second host does everything the first does not hold or has not prefetched (those wait
    # for it), takes the second messages off the queue, and leaves the held runs alone.
    cluster.wait_runs(lambda runs: sum(r["status"] == "done" for r in runs) >= len(large_photos) - 4
                      and cluster.svc.redis("-n", str(cluster.redis_db), "LLEN", "cpu").strip() == "0",
                      60, "the second host to do the rest and take the second messages")
    time.sleep(3)
    runs = {r["id"]: r for r in cluster.runs()}
    assert {i: runs[i]["worker"] for i in ids} == holders, (holders, cluster.log_tail())
    assert all(runs[i]["status"] == "running" for i in ids)
    lab.w1.freeze(False)
    runs = cluster.wait_all_done(len(large_photos), timeout=120)
    assert {r["status"] for r in runs} == {"done"}, runs
    assert {r["id"]: r["worker"] for r in runs if r["id"] in holders} == holders
    one_result_each(cluster, len(large_photos))
    first_host = _holder_host(next(iter(holders.values())))
    others = {_holder_host(r["worker"]) for r in runs if r["id"] not in holders}
    assert first_host and others - {first_host}, "the second host did no work, or is not told apart"


def test_a_worker_with_the_wrong_database_or_no_blob_store_refuses_to_start(cluster, small_photos):
    """A worker on the default SQLite, on another database, on its own file store, or with an S3
    endpoint it cannot reach, refuses to start with one line naming the setting; nothing it would
    have taken is lost: a worker set up right then does all of it. 12-26 s here."""
    lab = cluster.lab
    cluster.start_producer()
    assert cluster.ingest(small_photos[:4]).returncode == 0
    cluster.svc.createdb(f"{cluster.db}_other")
    wrong = {
        "default SQLite": ({"database_url": None, "data_dir": f"{DATA}/a"}, "DARKROOM_DATABASE_URL"),
        "another database": ({"database_url": cluster.svc.database_url(f"{cluster.db}_other"),
                              "data_dir": f"{DATA}/b"}, "DARKROOM_DATABASE_URL"),
        "its own file store": ({"blob_url": None, "data_dir": f"{DATA}/c"}, "DARKROOM_BLOB_URL"),
        "an unreachable S3 endpoint": ({"blob_url": f"s3://{cluster.bucket}/{cluster.prefix}?endpoint=http://{lab.svc.host.address}:1",
                                        "data_dir": f"{DATA}/d"}, "DARKROOM_BLOB_URL"),
    }
    procs = {what: cluster.start_worker(lab.w1 if i % 2 else lab.w2, concurrency=1, name=f"wrong{i}", **values)
             for i, (what, (values, _setting)) in enumerate(wrong.items())}
    for i, (what, proc) in enumerate(procs.items()):
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"a worker with {what} did not refuse to start\n{cluster.log_tail()}")
        text = cluster.read_log(f"wrong{i}")
        refusals = [line for line in text.splitlines() if "refusing to start" in line]
        assert code != 0 and len(refusals) == 1 and wrong[what][1] in refusals[0], (what, code, text)
        assert "Traceback" not in text, (what, text)
        print(f"\n{what}: {refusals[0]}")
    assert {r["status"] for r in cluster.runs()} == {"queued"}
    good = cluster.start_worker(lab.w1)
    runs = cluster.wait_all_done(4, timeout=90)
    assert {r["status"] for r in runs} == {"done"}, runs
    assert good.poll() is None


def _connections(cluster: Cluster, addresses: tuple[str, ...]) -> dict[str, int]:
    """PostgreSQL connections to the case's database from ``addresses``, by application name (a
    worker process names itself ``darkroom-worker <holder>``)."""
    rows = cluster.svc.psql(
        "SELECT application_name, host(client_addr), count(*) FROM pg_stat_activity WHERE datname = "
        f"'{cluster.db}' AND host(client_addr) IN ({', '.join(repr(a) for a in addresses)}) GROUP BY 1, 2",
        database="postgres")
    return {f"{name} {address}": int(count) for name, address, count in rows}


def test_postgres_connections_stay_within_the_budget(cluster, small_photos, large_photos):
    """2 worker hosts x 3 processes with exactly one connection per process (DARKROOM_DB_POOL_SIZE=1,
    DB_MAX_OVERFLOW=0): they start (migrating on that one connection) and do all the work, no process
    ever holds more than one connection, the hosts together no more than 2 x 4 (3 pool processes
    and Celery's main process each), and at rest one per worker process. 18-25 s here."""
    lab = cluster.lab
    processes, pool, overflow = 3, 1, 0
    budget = {"db_pool_size": str(pool), "db_max_overflow": str(overflow)}
    cluster.start_producer()
    workers = {h.name: cluster.start_worker(h, concurrency=processes, **budget) for h in (lab.w1, lab.w2)}
    for host in (lab.w1, lab.w2):
        cluster.wait_ready(workers[host.name], host)
    addresses = (lab.w1.address, lab.w2.address)
    samples: list[dict[str, int]] = []
    assert cluster.ingest(large_photos[:8] + small_photos).returncode == 0
    n_runs = 8 + len(small_photos)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        samples.append(_connections(cluster, addresses))
        runs = cluster.runs()
        if len(runs) == n_runs and all(r["status"] == "done" for r in runs):
            break
        time.sleep(0.2)
    runs = cluster.wait_all_done(n_runs, timeout=10)
    assert {r["status"] for r in runs} == {"done"}
    time.sleep(2)
    rest = _connections(cluster, addresses)
    peak = max(sum(s.values()) for s in samples)
    per_process = max(max(s.values(), default=0) for s in samples)
    print(f"\n{len(samples)} samples of pg_stat_activity, 2 hosts x {processes} worker processes: at most {peak} "
          f"connection(s) at once, at most {per_process} per process; at rest {sum(rest.values())} "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(rest.items()))})")
    assert per_process <= pool + overflow, samples
    assert peak <= 2 * (processes + 1) * (pool + overflow), samples
    assert all(count <= pool for count in rest.values()) and sum(rest.values()) <= 2 * processes, rest


def test_sentinel_failover_mid_run(cluster, large_photos):
    """The broker behind Redis Sentinel (a master, a replica, three sentinels on the svc host): the
    master killed mid-run, the replica promoted, and every run still ends done, one result each.
    35-62 s here (every run done 16-41 s after the kill)."""
    from tests.hosts import SentinelRedis

    lab = cluster.lab
    sentinel = SentinelRedis(lab.svc.host, lab.logs)
    try:
        # A short heartbeat: a worker process the failover made Celery restart mid-task is taken
        # for dead in seconds (the kill -9 case measures the default's minute).
        broker = {"broker_url": sentinel.url(), "sentinel_master": SentinelRedis.MASTER,
                  "heartbeat_seconds": "2", "heartbeat_ttl": "6"}
        cluster.start_producer(**broker)
        workers = {h.name: cluster.start_worker(h, **broker) for h in (lab.w1, lab.w2)}
        for host in (lab.w1, lab.w2):
            cluster.wait_ready(workers[host.name], host)
        assert cluster.ingest(large_photos, **broker).returncode == 0
        cluster.wait_runs(lambda runs: sum(r["status"] == "done" for r in runs) >= 2, 60, "some runs done")
        old = sentinel.kill_master()
        killed = time.monotonic()
        runs = cluster.wait_all_done(len(large_photos), timeout=150)
        print(f"\nSentinel failover (master on {old} killed): every run done {time.monotonic() - killed:.1f} s later")
        assert sentinel.master_port() != old
        assert {r["status"] for r in runs} == {"done"}, [(r["status"], r["error"]) for r in runs]
        one_result_each(cluster, len(large_photos))
        assert all(w.poll() is None for w in workers.values()), cluster.log_tail()
    finally:
        sentinel.stop()


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> tuple[Path, Path]:
    """A small saved Keras classifier (.keras and its class names), made here in a subprocess."""
    folder = tmp_path_factory.mktemp("model")
    code = (
        "import keras; keras.utils.set_random_seed(7); m = keras.Sequential([keras.Input((32, 32, 3)), "
        "keras.layers.Conv2D(4, 3, activation='relu'), keras.layers.GlobalAveragePooling2D(), "
        "keras.layers.Dense(3, activation='softmax', kernel_initializer=keras.initializers.RandomNormal(0, 3.0))]); "
        f"m.save({str(folder / 'tiny.keras')!r})")
    done = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (folder / "tiny.json").write_text(json.dumps({"classes": ["cat", "dog", "bird"], "preprocess": "scale"}))
    return folder / "tiny.keras", folder / "tiny.json"


def test_every_task_on_two_worker_hosts(cluster, photos, tiny_classifier):
    """All the tasks (classify with a small saved model on each worker host's own disk, faces with
    MTCNN, augment, phash, normalize) on two worker hosts: every photo done with every result, the
    astronaut's face found, no original on a worker's disk. 21-46 s here, and 10-18 s to make the
    model (TensorFlow starts on each host; the plumbing cases never import it)."""
    lab = cluster.lab
    model, names = tiny_classifier
    for host in (lab.w1, lab.w2):
        folder = host.path(f"{DATA}/models")
        folder.mkdir(parents=True)
        (folder / model.name).write_bytes(model.read_bytes())
        (folder / names.name).write_bytes(names.read_bytes())
    every = {"tasks": "normalize,classify,augment,faces,phash", "classifier_model": f"{DATA}/models/tiny.keras",
             "augment_count": "3"}
    cluster.start_producer(**every)
    workers = {h.name: cluster.start_worker(h, concurrency=1, **every) for h in (lab.w1, lab.w2)}
    for host in (lab.w1, lab.w2):
        cluster.wait_ready(workers[host.name], host, timeout=180)
    assert cluster.ingest(list(photos.values()), **every).returncode == 0
    runs = cluster.wait_all_done(5 * len(photos), timeout=300)
    assert {r["status"] for r in runs} == {"done"}, [(r["task"], r["status"], r["error"]) for r in runs]
    # Every run ran on a worker host. Which host ran which is a race here (the first worker whose
    # TensorFlow is up claims the other queued runs of its model into its batch, and on a loaded
    # machine one host can take them all); that both hosts take work is the plumbing case's
    # (test_both_worker_hosts_work_and_no_blob_lands_on_their_disks).
    hosts = {host_of(r, lab.w1, lab.w2) for r in runs}
    assert hosts and hosts <= {"w1", "w2"}, [r["worker"] for r in runs]
    done = lab.producer.darkroom("results", "--json", env=cluster.settings(**every))
    assert done.returncode == 0, done.stderr
    results = {Path(r["path"]).name: r for r in json.loads(done.stdout)}
    assert set(results) == {p.name for p in photos.values()}
    for r in results.values():
        assert r["status"] == "done" and r["errors"] == {}, r
        assert [label["rank"] for label in r["labels"]] == [1, 2, 3]
        assert r["augmentations"] == 3 and len(r["phash"]) == 16
    assert len(results["astronaut.jpg"]["faces"]) == 1
    assert cluster.originals_on(lab.w1) == [] and cluster.originals_on(lab.w2) == []
