"""The producer against real SQLite and the real Redis: which files are taken, when, and what is sent."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import redis

from darkroom.settings import Settings
from producer.files import is_candidate_name, walk
from producer.registrar import Outcome, Registrar
from producer.watcher import InboxWatcher
from storage import files, ledger, results
from storage.db import make_engine, migrate, session_factory, transaction
from worker.app import create_app
from worker.queues import queue_depths


@pytest.mark.parametrize("name", ["photo.jpg", "IMG 0001.JPG", "été.png", "-rf.jpg", "a\nb.jpg"])
def test_ordinary_names_are_candidates(name):
    assert is_candidate_name(name)


@pytest.mark.parametrize("name", [".hidden.jpg", ".photo.jpg.Xa12bc", "photo.jpg.part", "photo.jpg.crdownload",
                                  "photo.jpg~", "photo.jpg.tmp", "#photo.jpg#", "x.swp"])
def test_temporary_and_hidden_names_are_not(name):
    assert not is_candidate_name(name)


@pytest.mark.parametrize("name", [".DS_Store", "._IMG_0001.JPG"])
def test_hidden_clutter_is_taken_to_be_ignored_and_counted(name):
    assert is_candidate_name(name)  # the registrar leaves it alone and counts it (tests/test_clutter.py)


def test_walk_skips_hidden_folders_and_temp_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / ".cache").mkdir()
    for rel in ("a/x.jpg", ".cache/y.jpg", "z.jpg.part", "b.png"):
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path)] == ["b.png", "a/x.jpg"]


@pytest.fixture()
def registrar(tmp_path, redis_url):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # The four tasks of the course: the counts below are of their runs (phash adds one more per image).
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url, max_queue_depth=10_000,
                        tasks=["normalize", "classify", "augment", "faces"], _env_file=None)
    migrate(make_engine(settings.db_url))
    reg = Registrar(settings=settings, app=create_app(settings), roots=[inbox])
    reg.inbox = inbox
    return reg


def _messages(redis_url: str) -> list[dict]:
    client = redis.Redis.from_url(redis_url)
    out = []
    for queue in ("cpu", "gpu"):
        for raw in client.lrange(queue, 0, -1):
            msg = json.loads(raw)
            assert msg["content-type"] == "application/json"
            out.append({"queue": queue, "task": msg["headers"]["task"],
                        "body": json.loads(__import__("base64").b64decode(msg["body"]))})
    return out


def _ids(message: dict) -> list[int]:
    kwargs = message["body"][1]
    return kwargs.get("run_ids", [kwargs["run_id"]])


def _run_ids(messages: list[dict]) -> list[int]:
    return [i for m in messages for i in _ids(m)]


def test_register_stores_the_original_and_sends_one_json_message_per_run(registrar, photos, redis_url):
    target = registrar.inbox / "astronaut.jpg"
    shutil.copy(photos["astronaut"], target)
    assert registrar.register(target) is Outcome.NEW
    msgs = _messages(redis_url)
    assert sorted((m["queue"], m["task"]) for m in msgs) == [
        ("cpu", "darkroom.augment"), ("cpu", "darkroom.normalize"), ("gpu", "darkroom.classify"), ("gpu", "darkroom.faces")]
    assert all(set(m["body"][1]) == {"run_id"} for m in msgs)  # ids only, never pixels
    with registrar.sessions() as s:
        (image,) = results.find_images(s)
        assert (image.width, image.height, image.format) == (512, 512, "JPEG")
        assert ledger.unsent_runs(s) == []
    assert registrar.blobs.read(image.sha256) == target.read_bytes()
    # The inbox file may go away once registered
    target.unlink()
    assert registrar.blobs.exists(image.sha256)


def test_duplicates_unchanged_files_and_bad_content(registrar, photos, redis_url):
    a = registrar.inbox / "a.jpg"
    shutil.copy(photos["coffee"], a)
    assert registrar.register(a) is Outcome.NEW
    assert registrar.register(a) is Outcome.KNOWN
    b = registrar.inbox / "b.jpg"
    shutil.copy(photos["coffee"], b)
    assert registrar.register(b) is Outcome.DUPLICATE
    assert len(_messages(redis_url)) == 4
    junk = registrar.inbox / "junk.jpg"
    junk.write_bytes(os.urandom(2048))
    assert registrar.register(junk) is Outcome.REJECTED
    empty = registrar.inbox / "empty.jpg"
    empty.write_bytes(b"")
    assert registrar.register(empty) is Outcome.REJECTED
    assert len(_messages(redis_url)) == 4  # no work for rejected content
    with registrar.sessions() as s:
        reasons = {Path(p.path).name: p.reason for p in ledger.problems(s)}
    assert set(reasons) == {"junk.jpg", "empty.jpg"}
    assert str(junk) in reasons["junk.jpg"]


def test_register_many_records_a_chunk_in_one_go_with_each_files_outcome(registrar, photos, redis_url, tmp_path):
    inbox = registrar.inbox
    for name, photo in (("a.jpg", "coffee"), ("b.jpg", "coffee"), ("c.jpg", "chelsea"), ("known.jpg", "rocket")):
        shutil.copy(photos[photo], inbox / name)
    assert registrar.register(inbox / "known.jpg") is Outcome.NEW
    (inbox / "junk.jpg").write_bytes(os.urandom(2048))
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (inbox / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (inbox / "dir.jpg").mkdir()
    names = ["a.jpg", "b.jpg", "junk.jpg", "gone.jpg", "out.jpg", "known.jpg", "dir.jpg", "c.jpg"]
    outcomes = registrar.register_many([inbox / n for n in names])
    assert outcomes == [Outcome.NEW, Outcome.DUPLICATE, Outcome.REJECTED, Outcome.VANISHED, Outcome.REFUSED,
                        Outcome.KNOWN, Outcome.SKIPPED, Outcome.NEW]
    # rocket's 4 runs, then coffee's and chelsea's, each run sent once and recorded as sent; the
    # chunk's two classify runs share one message (a worker takes them in one forward pass)
    msgs = _messages(redis_url)
    assert sorted(_run_ids(msgs)) == list(range(1, 13))
    assert sorted(len(_ids(m)) for m in msgs if m["task"] == "darkroom.classify") == [1, 2]
    with registrar.sessions() as s:
        assert ledger.unsent_runs(s) == []
        assert len(results.find_images(s)) == 4  # rocket, coffee, chelsea, and the rejected junk
        assert set(_recorded(s)) >= {str(inbox / n) for n in ("a.jpg", "b.jpg", "junk.jpg", "c.jpg")}
    assert registrar.register_many([inbox / n for n in ("a.jpg", "c.jpg")]) == [Outcome.KNOWN, Outcome.KNOWN]


def test_a_chunk_that_cannot_be_recorded_at_once_is_recorded_file_by_file(registrar, photos, redis_url, monkeypatch):
    inbox = registrar.inbox
    for name, photo in (("a.jpg", "coffee"), ("b.jpg", "chelsea"), ("c.jpg", "rocket")):
        shutil.copy(photos[photo], inbox / name)
    calls = []

    def clash(session, files, work):  # say another producer inserted one of the contents a moment ago
        calls.append(len(files))
        raise RuntimeError("UNIQUE constraint failed: images.sha256")

    monkeypatch.setattr(files, "register_files", clash)
    outcomes = registrar.register_many([inbox / n for n in ("a.jpg", "b.jpg", "c.jpg")])
    assert outcomes == [Outcome.NEW, Outcome.NEW, Outcome.NEW] and calls == [3]
    with registrar.sessions() as s:
        assert len(results.find_images(s)) == 3 and ledger.unsent_runs(s) == []
    assert sorted(_run_ids(_messages(redis_url))) == list(range(1, 13))


def test_symlink_out_of_the_inbox_is_refused_but_inside_is_taken(registrar, photos, tmp_path):
    outside = tmp_path / "secret.jpg"
    shutil.copy(photos["rocket"], outside)
    link = registrar.inbox / "link.jpg"
    link.symlink_to(outside)
    assert registrar.register(link) is Outcome.REFUSED
    inside_target = registrar.inbox / "real.jpg"
    shutil.copy(photos["rocket"], inside_target)
    inner = registrar.inbox / "inner-link.jpg"
    inner.symlink_to(inside_target)
    assert registrar.register(inner) is Outcome.NEW
    assert registrar.register(inside_target) is Outcome.DUPLICATE
    (registrar.inbox / "dir.jpg").mkdir()
    assert registrar.register(registrar.inbox / "dir.jpg") is Outcome.SKIPPED
    with registrar.sessions() as s:
        (problem,) = ledger.problems(s)
    assert problem.path == str(link) and "outside the watched folder" in problem.reason


def test_unsent_runs_go_out_on_the_next_send(registrar, photos, redis_url):
    a = registrar.inbox / "a.jpg"
    shutil.copy(photos["chelsea"], a)
    # Registered, but the process "crashed" before sending
    assert registrar.register(a, send=False) is Outcome.NEW
    assert _messages(redis_url) == []
    assert registrar.send_pending() == 4
    assert registrar.send_pending() == 0
    assert len(_messages(redis_url)) == 4


def test_backpressure_holds_sends_while_a_queue_is_full(registrar, photos, redis_url):
    registrar.settings = registrar.settings.model_copy(update={"max_queue_depth": 2})
    a = registrar.inbox / "a.jpg"
    shutil.copy(photos["chelsea"], a)
    registrar.register(a, send=False)
    sent = registrar.send_pending(wait=False)
    assert sent < 4
    assert max(queue_depths(registrar.redis).values()) <= 2
    # Once a worker drains the queues the rest goes out
    redis.Redis.from_url(redis_url).delete("cpu", "gpu")
    assert sent + registrar.send_pending(wait=False) == 4


def _watch(registrar, stop):
    watcher = InboxWatcher(registrar.inbox, registrar, settle_seconds=0.6, rescan_seconds=0)
    thread = threading.Thread(target=watcher.run, args=(stop,), kwargs={"tick": 0.05}, daemon=True)
    thread.start()
    return watcher, thread


def _recorded(session) -> dict[str, tuple[int | None, int | None]]:
    """path -> (size, mtime_ns) of every recorded file (a test's small store: read whole)."""
    from sqlalchemy import select

    from storage.models import SourceFile

    return {p: (size, m) for p, size, m in session.execute(select(SourceFile.path, SourceFile.size_bytes,
                                                                   SourceFile.mtime_ns))}


def _registered(registrar) -> dict[str, int]:
    with registrar.sessions() as s:
        return {Path(p).name: size for p, (size, _m) in _recorded(s).items()}


def _wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_watcher_takes_files_only_when_complete(registrar, photos):
    shutil.copy(photos["coffee"], registrar.inbox / "before-start.jpg")
    stop = threading.Event()
    watcher, thread = _watch(registrar, stop)
    try:
        assert _wait_for(lambda: "before-start.jpg" in _registered(registrar))
        # A slow writer: chunks with pauses shorter than the settle time
        data = photos["astronaut"].read_bytes()
        slow = registrar.inbox / "slow.jpg"
        with open(slow, "wb") as fh:
            for i in range(0, len(data), len(data) // 5 + 1):
                fh.write(data[i:i + len(data) // 5 + 1])
                fh.flush()
                assert "slow.jpg" not in _registered(registrar)  # never taken half-written
                time.sleep(0.3)
        # A browser download: temporary name, then renamed
        part = registrar.inbox / "dl.jpg.crdownload"
        shutil.copy(photos["rocket"], part)
        time.sleep(1.0)
        assert "dl.jpg.crdownload" not in _registered(registrar)
        os.rename(part, registrar.inbox / "dl.jpg")
        assert _wait_for(lambda: {"slow.jpg", "dl.jpg"} <= set(_registered(registrar)))
    finally:
        stop.set()
        thread.join(10)
    files = _registered(registrar)
    assert files["slow.jpg"] == len(data)
    assert "dl.jpg.crdownload" not in files
    assert watcher.counts[Outcome.NEW] == 3


def test_watcher_restarts_a_dead_observer_and_rescans(registrar, photos):
    stop = threading.Event()
    watcher, thread = _watch(registrar, stop)
    try:
        assert _wait_for(lambda: watcher._observer is not None and watcher._observer.is_alive())
        watcher._observer.stop()  # the observer thread dies
        watcher._observer.join(5)
        shutil.copy(photos["chelsea"], registrar.inbox / "after.jpg")
        assert _wait_for(lambda: "after.jpg" in _registered(registrar))
        assert watcher._observer.is_alive()
    finally:
        stop.set()
        thread.join(10)


def _burst(folder: Path, n: int) -> None:
    """``n`` small, distinct PNG files, written as fast as the disk takes them."""
    import io

    from PIL import Image

    img = Image.new("RGB", (16, 16))
    for i in range(n):
        img.putpixel((i % 16, (i // 16) % 16), (i % 251, (i // 251) % 251, 7))
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=0)
        (folder / f"burst-{i:05d}.png").write_bytes(buf.getvalue())


def test_a_burst_of_5000_files_is_all_registered(registrar):
    registrar.settings = registrar.settings.model_copy(update={"tasks": ["normalize"]})
    registrar.work = [("normalize", "")]
    stop = threading.Event()
    watcher = InboxWatcher(registrar.inbox, registrar, settle_seconds=0.3, rescan_seconds=0)
    thread = threading.Thread(target=watcher.run, args=(stop,), kwargs={"tick": 0.05}, daemon=True)
    thread.start()
    try:
        _burst(registrar.inbox, 5000)
        assert _wait_for(lambda: len(_registered(registrar)) == 5000, timeout=600)
    finally:
        stop.set()
        thread.join(30)
    assert watcher.counts[Outcome.NEW] == 5000
    with registrar.sessions() as s:
        assert ledger.unsent_runs(s) == []
    assert sum(queue_depths(registrar.redis).values()) == 5000


def test_the_periodic_rescan_covers_events_the_kernel_dropped(registrar, photos):
    stop = threading.Event()
    watcher = InboxWatcher(registrar.inbox, registrar, settle_seconds=0.2, rescan_seconds=1.0)
    watcher._drain_events = lambda now: None  # every OS event is lost
    thread = threading.Thread(target=watcher.run, args=(stop,), kwargs={"tick": 0.05}, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        for name in ("coffee", "rocket"):
            shutil.copy(photos[name], registrar.inbox / f"{name}.jpg")
        assert _wait_for(lambda: {"coffee.jpg", "rocket.jpg"} <= set(_registered(registrar)), timeout=20)
    finally:
        stop.set()
        thread.join(10)


def test_a_file_renamed_in_is_taken_without_waiting_to_settle(registrar, photos, tmp_path):
    stop = threading.Event()
    watcher = InboxWatcher(registrar.inbox, registrar, settle_seconds=30.0, rescan_seconds=0)
    thread = threading.Thread(target=watcher.run, args=(stop,), kwargs={"tick": 0.05}, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        staged = registrar.inbox / ".incoming.jpg"  # hidden while written, as rsync does
        shutil.copy(photos["coffee"], staged)
        os.rename(staged, registrar.inbox / "coffee.jpg")
        # Far sooner than the 30 s settle time: a rename is atomic, the file is whole
        assert _wait_for(lambda: "coffee.jpg" in _registered(registrar), timeout=10)
        shutil.copy(photos["rocket"], registrar.inbox / "copied.jpg")  # written in place: must settle
        time.sleep(2)
        assert "copied.jpg" not in _registered(registrar)
    finally:
        stop.set()
        thread.join(10)


def test_a_file_renamed_in_wakes_the_watcher_between_turns(registrar, photos):
    """A photo dropped into an idle system is registered at once, not at the watcher's next turn."""
    stop = threading.Event()
    watcher = InboxWatcher(registrar.inbox, registrar, settle_seconds=30.0, rescan_seconds=0)
    thread = threading.Thread(target=watcher.run, args=(stop,), kwargs={"tick": 20.0}, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # the first turn is done; the next is 20 s away
        staged = registrar.inbox / ".incoming.jpg"
        shutil.copy(photos["chelsea"], staged)
        started = time.monotonic()
        os.rename(staged, registrar.inbox / "chelsea.jpg")
        assert _wait_for(lambda: "chelsea.jpg" in _registered(registrar), timeout=15)
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join(30)


def test_a_file_over_the_byte_limit_is_refused_without_being_read(registrar, photos):
    registrar.settings = registrar.settings.model_copy(update={"max_image_bytes": 10_000})
    big = registrar.inbox / "big.jpg"
    shutil.copy(photos["astronaut"], big)
    assert registrar.register(big) is Outcome.REFUSED
    with registrar.sessions() as s:
        (problem,) = ledger.problems(s)
    assert problem.path == str(big) and "DARKROOM_MAX_IMAGE_BYTES" in problem.reason
    assert not registrar.blobs.root.exists() or not any(registrar.blobs.root.rglob("*"))


def test_messages_group_batch_task_runs_by_model_up_to_the_batch_size():
    from storage.ledger import RunRef
    from worker.queues import messages

    runs = [RunRef(1, "normalize", ""), RunRef(2, "classify", "a"), RunRef(3, "classify", "b"),
            RunRef(4, "faces", "mtcnn"), RunRef(5, "classify", "a"), RunRef(6, "classify", "a"),
            RunRef(7, "classify", "b")]
    grouped = [[r.id for r in m] for m in messages(runs, {"classify": 2})]
    assert grouped == [[1], [2, 5], [3, 7], [4], [6]]
    assert [[r.id for r in m] for m in messages(runs, {})] == [[r.id] for r in runs]


@pytest.mark.postgres
def test_two_producers_sending_at_once_send_each_run_once(postgres_url, redis_url, tmp_path):
    """A watcher and an ingest (or two hosts) send what is unsent at the same moment: each waits for
    the other's group (the sending lock) and reads only what is still unsent, so every run goes out
    once. Without the lock both read the same unsent runs and most go out twice."""
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url, broker_url=redis_url,
                        max_queue_depth=100_000, tasks=["normalize"], _env_file=None)
    engine = make_engine(postgres_url)
    migrate(engine)
    with transaction(session_factory(engine)) as s:
        for i in range(600):
            files.register_file(s, path=f"/archive/{i}.jpg", size_bytes=1, mtime_ns=1, sha256=f"{i:064x}",
                                fmt="JPEG", width=8, height=8, rejected_reason=None, work=[("normalize", "")])
    engine.dispose()
    producers = [Registrar(settings=settings, app=create_app(settings), roots=[]) for _ in range(2)]
    start = threading.Barrier(2)
    sent: list[int] = []

    def send(reg):
        start.wait()
        sent.append(reg.send_pending())

    threads = [threading.Thread(target=send, args=(reg,)) for reg in producers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    ids = _run_ids(_messages(redis_url))
    assert sum(sent) == 600 and len(ids) == 600 and len(set(ids)) == 600
    for reg in producers:
        reg.close()
