"""Who holds a run, and whether it is alive, across hosts: the holder names its host instance, /proc
is asked only about processes of that instance, and every other holder lives by its heartbeat in
Redis, which the reconciler reads to take over a dead process's runs — on any host.

"Hosts" here are PID and UTS namespaces of this machine (``unshare``, as root: skipped otherwise, and
a failure under CI): they share the machine id, the boot id and the hostname, which is the case that
used to release live runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import func, select

from darkroom.settings import Settings, settings_error
from producer.reconciler import Reconciler
from producer.registrar import Registrar
from storage import ledger
from storage.db import make_engine, migrate, transaction
from storage.models import Normalization, TaskRun
from tests.harness import ROOT, base_env, missing
from tests.photos import big_photos
from worker.app import create_app
from worker.runtime import Heartbeat, Holder, dead_holders, heartbeat_key, holder_alive, host_key

#: Short heartbeats, so that a death is noticed in a second or two.
BEAT, TTL = 0.25, 1.0


def _can_unshare() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        missing("root and unshare (PID and UTS namespaces for a second 'host')")


def _in_namespace(args: list[str], env: dict[str, str], log: Path, *, last_pid: int | None = None) -> subprocess.Popen:
    """``args`` on another "host": new PID, mount (its own /proc) and UTS namespaces, same hostname.
    ``last_pid``: the pid the namespace gives out before ``args`` (so ``args`` gets the next one)."""
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    script = (f"echo {last_pid} > /proc/sys/kernel/ns_last_pid; " if last_pid else "") + f"{quoted}; true"
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--uts", "sh", "-c", script], env=env,
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture()
def store(tmp_path, redis_url):
    """A SQLite store with a registrar and a reconciler on the test's Redis, short heartbeats."""
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url, tasks=["normalize"], heartbeat_seconds=BEAT,
                        heartbeat_ttl=TTL, _env_file=None)
    migrate(make_engine(settings.db_url))
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[])
    yield registrar
    registrar.close()


def _reconciler(registrar: Registrar) -> Reconciler:
    """A reconciler that has had its first turn (on a fresh broker: "lost", which resends every
    pending run and gives missing heartbeats one TTL), as a running producer has."""
    reconciler = Reconciler(registrar)
    reconciler.check()
    return reconciler


def _register(registrar: Registrar, paths: list[Path]) -> list[int]:
    registrar.register_many(paths)
    with registrar.sessions() as s:
        return list(s.scalars(select(TaskRun.id).order_by(TaskRun.id)))


def _runs(registrar: Registrar) -> list[TaskRun]:
    with registrar.sessions() as s:
        return list(s.scalars(select(TaskRun).order_by(TaskRun.id)))


def test_a_holder_names_its_host_instance_and_process():
    me = Holder.mine()
    text = str(me)
    assert text.startswith(f"{me.hostname}@{host_key()}/") and text.endswith(f":{os.getpid()}")
    assert Holder.parse(text) == me and me.local and not me.legacy and me.start
    assert int(text.rsplit(":", 1)[1]) == os.getpid()  # the pid is last, as it always was
    assert holder_alive(text)
    assert not holder_alive(text, me=text)  # a process may take back its own runs (its retry)
    # The same pid with another start time: the pid was given to another process since
    assert not holder_alive(str(Holder(me.hostname, me.pid, "1", me.host)))
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not holder_alive(str(Holder(me.hostname, dead.pid, me.start, me.host)))
    # Another host instance with this very hostname and a pid dead here: alive, for its heartbeat to tell
    other = Holder(me.hostname, dead.pid, "123", "0" * 16)
    assert not other.local and holder_alive(str(other))
    # Holders written before (hostname:pid) keep their meaning
    assert Holder.parse(f"{me.hostname}:{dead.pid}").legacy
    assert not holder_alive(f"{me.hostname}:{dead.pid}") and holder_alive(f"{me.hostname}:{os.getpid()}")
    assert holder_alive("some-other-host:1")
    assert Holder.parse("not a holder") is None and holder_alive("not a holder")


def test_a_heartbeat_ttl_under_two_beats_is_refused():
    with pytest.raises(ValidationError) as caught:
        Settings(heartbeat_seconds=10, heartbeat_ttl=15, _env_file=None)
    assert "DARKROOM_HEARTBEAT_TTL: " in settings_error(caught.value)
    assert "at least twice DARKROOM_HEARTBEAT_SECONDS" in settings_error(caught.value)


def test_dead_holders_reads_every_heartbeat_in_one_round_trip(redis_url):
    client = redis.Redis.from_url(redis_url)
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = Holder.mine()
    beating = [str(Holder("h", 10 + i, "5", f"{i:016x}")) for i in range(3)]
    silent = [str(Holder("h", 20 + i, "5", f"{i:016x}")) for i in range(2)]
    for holder in beating:
        client.set(heartbeat_key(holder), "1", px=5000)
    local_dead = str(Holder(me.hostname, gone.pid, me.start, me.host))
    holders = [*beating, *silent, local_dead, str(me), "elsewhere:7", "junk"]
    calls = []
    real = client.mget
    client.mget = lambda keys: calls.append(keys) or real(keys)
    assert sorted(dead_holders(client, holders)) == sorted([*silent, local_dead])
    assert len(calls) == 1 and len(calls[0]) == 5  # the remote new-format holders, in one MGET
    # Right after a failover a missing heartbeat may only be late: the local verdicts stand alone
    assert dead_holders(client, holders, trust_missing=False) == [local_dead]


def test_running_holders_come_a_page_at_a_time(store, photos):
    ids = _register(store, list(photos.values()))
    holders = [str(Holder("h", 100 + i, "5", f"{i:016x}")) for i in range(len(ids))]
    with transaction(store.sessions) as s:
        for run_id, holder in zip(ids, holders):
            ledger.claim_runs(s, [run_id], holder)
    with store.sessions() as s:
        first = ledger.running_holders(s, limit=2)
        rest = ledger.running_holders(s, after=first[-1], limit=10)
    assert first + rest == sorted(holders) and len(first) == 2
    with transaction(store.sessions) as s:
        assert ledger.release_holders(s, holders[:2]) == 2
    assert sorted(r.status for r in _runs(store)) == ["queued", "queued", "running", "running"]


def test_a_holder_whose_heartbeat_stops_is_taken_over_after_its_ttl(store, photos):
    """A worker process of another host (its holder names another host instance) dies: its heartbeat
    is no longer refreshed, and the reconciler gives its runs back once the key has expired."""
    ids = _register(store, [photos["astronaut"], photos["coffee"]])
    holder = str(Holder(Holder.mine().hostname, 4242, "77", "f" * 16))  # same hostname, another host
    beat = Heartbeat(store.redis, holder, every=BEAT, ttl=TTL)
    beat.start()
    reconciler = _reconciler(store)
    with transaction(store.sessions) as s:
        assert len(ledger.claim_runs(s, ids, holder)) == 2
    try:
        for _ in range(3):
            assert reconciler.check().taken_over == 0
            time.sleep(BEAT)
        assert {r.status for r in _runs(store)} == {"running"}
    finally:
        beat._stop.set()  # dies: no more beats, and nobody deletes the key
        beat._thread.join()
    died = time.monotonic()
    taken = 0
    while taken == 0 and time.monotonic() - died < TTL + 3:
        taken = reconciler.check().taken_over
        time.sleep(0.05)
    took = time.monotonic() - died
    assert taken == 2 and TTL * 0.8 <= took <= TTL + 1.5, took
    runs = _runs(store)
    assert {r.status for r in runs} == {"queued"} and all(r.enqueued_at is not None for r in runs)  # and sent
    assert reconciler.check().taken_over == 0


def test_after_a_failover_missing_heartbeats_are_given_one_ttl(store, photos):
    ids = _register(store, [photos["astronaut"]])
    holder = str(Holder("elsewhere", 4243, "77", "e" * 16))
    reconciler = _reconciler(store)
    time.sleep(TTL)
    with transaction(store.sessions) as s:
        ledger.claim_runs(s, ids, holder)
    store.redis.set("darkroom:broker-master", "an-older-master")  # as a promoted replica has it
    first = reconciler.check()
    assert first.failover and first.taken_over == 0  # its heartbeat may not be written again yet
    time.sleep(TTL + 0.1)
    assert reconciler.check().taken_over == 1


INNER = textwrap.dedent("""
    import sys, time, redis
    from worker.runtime import Heartbeat, Holder, holder_alive
    me = str(Holder.mine())
    Heartbeat(redis.Redis.from_url(sys.argv[1]), me, every=float(sys.argv[3]), ttl=float(sys.argv[4])).start()
    print(me, holder_alive(sys.argv[2]), flush=True)
    time.sleep(600)
""")


def test_two_hosts_with_one_hostname_do_not_release_each_others_runs(store, photos, tmp_path):
    _can_unshare()
    ids = _register(store, [photos["astronaut"], photos["rocket"]])
    # The other host's process gets a pid that no process has here: /proc here would call it dead
    pid = next(p for p in range(400, 30000) if not os.path.exists(f"/proc/{p}"))
    me = str(Holder.mine())
    log = tmp_path / "inner.log"
    inner = _in_namespace([sys.executable, "-c", INNER, store.settings.redis_url, me, str(BEAT), str(TTL)],
                          base_env(), log, last_pid=pid - 1)
    try:
        deadline = time.monotonic() + 30
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        theirs, says = log.read_text().split()
        assert says == "True", "the other host took this process for dead"
        other = Holder.parse(theirs)
        assert other.hostname == Holder.mine().hostname and other.pid == pid and not other.local
        assert holder_alive(theirs)
        reconciler = _reconciler(store)
        with transaction(store.sessions) as s:
            assert len(ledger.claim_runs(s, ids, theirs)) == 2
            # Another process here may not take them either (a batch, a companion)
            assert ledger.claim_batch(s, task="normalize", model="", worker=me, limit=5, exclude=-1,
                                      holder_alive=holder_alive) == []
        for _ in range(int(2 * TTL / BEAT)):
            assert reconciler.check().taken_over == 0
            time.sleep(BEAT)
        assert {r.status for r in _runs(store)} == {"running"}
    finally:
        _kill(inner)
    died = time.monotonic()
    while reconciler.check().taken_over == 0:
        assert time.monotonic() - died < TTL + 3, "the dead host's runs were not taken over"
        time.sleep(0.05)
    assert {r.status for r in _runs(store)} == {"queued"}


def _worker_env(registrar: Registrar, tmp_path: Path) -> dict[str, str]:
    s = registrar.settings
    env = base_env()
    env.update(DARKROOM_DATA_DIR=str(s.data_dir), DARKROOM_BROKER_URL=s.redis_url, DARKROOM_DATABASE_URL=s.db_url,
               DARKROOM_TASKS="normalize", DARKROOM_HEARTBEAT_SECONDS=str(BEAT), DARKROOM_HEARTBEAT_TTL=str(TTL),
               DARKROOM_CONCURRENCY="1", DARKROOM_START_LOCAL_REDIS="false", KERAS_HOME=str(tmp_path / "keras"))
    return env


def test_a_worker_host_killed_outright_has_its_runs_taken_over(store, photos, tmp_path):
    """A real worker in a "host" of its own (PID namespace) is killed with -9 mid-run — its process and
    its Celery parent at once, so no one gives its message back. The reconciler here cannot see it in
    /proc; its heartbeat expires and its runs are sent again; a worker here then does them, once."""
    _can_unshare()
    paths = big_photos(photos, tmp_path / "big", 6)
    env = _worker_env(store, tmp_path)
    host = _in_namespace([sys.executable, "-m", "darkroom", "worker", "--concurrency", "1"], env, tmp_path / "w1.log")
    local = None
    reconciler = _reconciler(store)
    try:
        ids = _register(store, paths)
        deadline = time.monotonic() + 120
        victims: list[TaskRun] = []
        while not victims:
            assert time.monotonic() < deadline and host.poll() is None, (tmp_path / "w1.log").read_text()[-3000:]
            victims = [r for r in _runs(store) if r.status == "running"]
            time.sleep(0.02)
        holder = Holder.parse(victims[0].worker)
        assert not holder.local
        _kill(host)
        died = time.monotonic()
        while not reconciler.check().taken_over:
            assert time.monotonic() - died < TTL + 5, "the killed host's runs were not taken over"
            time.sleep(0.05)
        took = time.monotonic() - died
        print(f"worker host killed -> its runs taken over in {took:.2f} s (heartbeat TTL {TTL} s)")
        assert not any(r.status == "running" and r.worker == victims[0].worker for r in _runs(store))
        local = subprocess.Popen([sys.executable, "-m", "darkroom", "worker", "--concurrency", "1"], env=env, cwd=ROOT,
                                 stdout=open(tmp_path / "w2.log", "wb"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + 180
        while not all(r.status == "done" for r in _runs(store)):
            assert time.monotonic() < deadline and local.poll() is None, (tmp_path / "w2.log").read_text()[-3000:]
            reconciler.check()
            time.sleep(0.5)
    finally:
        _kill(host)
        if local is not None:
            _kill(local)
    runs = _runs(store)
    assert len(runs) == len(ids) and {r.status for r in runs} == {"done"}
    taken = next(r for r in runs if r.id == victims[0].id)
    assert taken.attempts >= 2 and Holder.parse(taken.worker).local
    with store.sessions() as s:  # one result each
        assert s.scalar(select(func.count()).select_from(Normalization)) == len(paths)
