"""`darkroom ingest`: archives processed where they lie (`--in-place`), a walk that streams, resumed
and interrupted ingests, and the rescan modes (new files only, `--changed`, `--force`).

Real files, real SQLite and PostgreSQL, the real worker pipeline, and `darkroom` in subprocesses
(killed with SIGINT and SIGKILL) where the behaviour is the command's.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import pathlib
import shutil
import signal
import time
import tracemalloc
from pathlib import Path

import pytest
import redis
from PIL import Image
from sqlalchemy import event, func, select

from darkroom.settings import Settings
from producer import registrar as registrar_module
from producer.files import walk
from producer.registrar import Outcome, Registrar
from storage import files, ledger
from storage.db import make_engine, migrate, session_factory, transaction
from storage.models import FAILED, ORIGINAL_MISSING, ORIGINAL_REFERENCE, QUEUED, SourceFile, TaskRun
from storage.models import Image as ImageRow
from tests.harness import Darkroom, FakeTask, Pipeline, stop
from worker.app import create_app

TASKS = ["normalize", "phash"]


def _pngs(folder: Path, n: int, prefix: str = "p") -> list[Path]:
    """``n`` small PNG photos, distinct from each other and from those of another ``prefix``."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (24, 24), (40, 80, ord(prefix[0])))
    out = []
    for i in range(n):
        img.putpixel((i % 24, (i // 24) % 24), (i % 251, (i // 251) % 251, 9))
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=1)
        path = folder / f"{prefix}-{i:05d}.png"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def _edit(path: Path) -> None:
    """Other content at the same path (a photo editor saving over it): mirrored, a new mtime."""
    before = path.stat().st_mtime_ns
    with Image.open(path) as im:
        edited = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        edited.load()
    edited.save(path, format=im.format or "JPEG")
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


# --- the walk streams ------------------------------------------------------------------------------


def test_the_walk_streams_a_tree_of_20000_files_in_flat_memory(tmp_path):
    root = tmp_path / "tree"
    flat = root / "flat"
    flat.mkdir(parents=True)
    for i in range(15_000):  # one big folder: a walk that lists a folder first holds all its names
        (flat / f"IMG_{i:05d}.jpg").touch()
    for d in range(5):
        sub = root / f"20{d:02d}" / "raw"
        sub.mkdir(parents=True)
        for i in range(1_000):
            (sub / f"DSC{i:04d}.jpg").touch()
    paths = walk(root)
    assert inspect.isgenerator(paths)
    # Mid-way through the big folder (the 2000-2004 folders come first), what the walk holds: all
    # but pathlib's own allocations (the current path, and the string-intern table it grows)
    tracemalloc.start()
    try:
        for i, _path in enumerate(paths):
            if i == 10_000:
                snapshot = tracemalloc.take_snapshot()
                break
    finally:
        tracemalloc.stop()
    held_midway = sum(stat.size for stat in snapshot.filter_traces(
        [tracemalloc.Filter(False, pathlib.__file__), tracemalloc.Filter(False, tracemalloc.__file__)]
    ).statistics("filename"))
    tracemalloc.start()
    try:
        listed = list(walk(root))
        list_bytes, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listed) == len(set(listed)) == 20_000 == sum(1 for _ in walk(root))
    assert held_midway < list_bytes / 20, (held_midway, list_bytes)


# --- registration in place -------------------------------------------------------------------------


@pytest.fixture()
def in_place(tmp_path, redis_url, db_url):
    """A Registrar with DARKROOM_BLOB_MODE=reference over ``tmp_path / 'archive'``, on SQLite and PostgreSQL."""
    archive = tmp_path / "archive"
    archive.mkdir()
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, broker_url=redis_url, tasks=TASKS,
                        blob_mode="reference", _env_file=None)
    migrate(make_engine(settings.db_url))
    reg = Registrar(settings=settings, app=create_app(settings), roots=[archive])
    reg.archive = archive
    yield reg
    reg.close()


class _Spy:
    """Counts calls of the registrar's hash functions (in place and into the blob store)."""

    def __init__(self, monkeypatch) -> None:
        self.hashed: list[Path] = []
        real_hash, real_put = registrar_module.hash_file, registrar_module.BlobStore.put_file

        def hash_file(path, **kw):
            self.hashed.append(Path(path))
            return real_hash(path, **kw)

        def put_file(store, source, **kw):
            self.hashed.append(Path(source))
            return real_put(store, source, **kw)

        monkeypatch.setattr(registrar_module, "hash_file", hash_file)
        monkeypatch.setattr(registrar_module.BlobStore, "put_file", put_file)


def _statements(reg: Registrar) -> list[str]:
    """Every SQL statement the registrar's engine runs from now on."""
    seen: list[str] = []
    event.listen(reg.sessions.kw["bind"], "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: seen.append(" ".join(statement.split())))
    return seen


def test_in_place_registration_copies_nothing_and_a_second_run_reads_nothing(in_place, monkeypatch):
    photos = _pngs(in_place.archive / "2019", 150) + _pngs(in_place.archive / "2020", 50, "q")
    spy = _Spy(monkeypatch)
    chunks = list(in_place.register_stream(walk(in_place.archive), chunk=64, send=False))
    assert [o for c in chunks for o in c.outcomes] == [Outcome.NEW] * 200
    assert sum(c.bytes_read for c in chunks) == sum(p.stat().st_size for p in photos)
    assert sorted(spy.hashed) == sorted(photos)
    assert not in_place.blobs.root.exists() or not any(in_place.blobs.root.rglob("*"))  # nothing copied
    with in_place.sessions() as s:
        rows = {f.path: f for f in s.scalars(select(SourceFile))}
        assert set(s.scalars(select(ImageRow.original))) == {ORIGINAL_REFERENCE}
    for p in photos:
        st = p.stat()
        assert (rows[str(p)].size_bytes, rows[str(p)].mtime_ns) == (st.st_size, st.st_mtime_ns)
    # When the same ingest runs again (resumed): nothing is read, one look-up per chunk, nothing written
    spy.hashed.clear()
    seen = _statements(in_place)
    again = list(in_place.register_stream(walk(in_place.archive), chunk=64, send=False))
    assert [o for c in again for o in c.outcomes] == [Outcome.KNOWN] * 200
    assert spy.hashed == []
    queries = [q for q in seen if not q.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    assert len(queries) == 4 and all(q.startswith("SELECT files.path") for q in queries), seen  # 200 / 64 chunks
    # Closed, the registrar leaves the counts `status` reads up to date with what it registered
    in_place.close()
    with in_place.sessions() as s:
        assert ledger.uncounted(s) == 0 and ledger.image_counts(s) == {QUEUED: 200}


def test_register_stream_takes_paths_as_they_come(in_place):
    photos = _pngs(in_place.archive, 300)
    pulled = []

    def paths():
        for p in photos:
            pulled.append(p)
            yield p

    stream = in_place.register_stream(paths(), chunk=32, send=False)
    first = next(stream)
    # One chunk recorded, the next one being hashed: not the whole list
    assert len(first.paths) == 32 and len(pulled) <= 64
    assert sum(len(c.paths) for c in stream) == 300 - 32


def test_rescan_modes_new_changed_and_force(in_place, monkeypatch, photos):
    a, b, c, d = (in_place.archive / f"{n}.jpg" for n in "abcd")
    for target, name in ((a, "astronaut"), (b, "coffee"), (c, "chelsea"), (d, "rocket")):
        shutil.copy(photos[name], target)
    assert in_place.register_many([a, b, c, d], send=False) == [Outcome.NEW] * 4
    _edit(a)  # new content, new mtime
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # touched: same content
    # c: new content of the same size, its mtime put back (what only a hash finds)
    data = bytearray(c.read_bytes())
    data[len(data) // 2] ^= 0xFF
    st = c.stat()
    c.write_bytes(bytes(data))
    os.utime(c, ns=(st.st_atime_ns, st.st_mtime_ns))
    spy = _Spy(monkeypatch)

    in_place.rescan = "new"
    assert in_place.register_many([a, b, c, d], send=False) == [Outcome.KNOWN] * 4
    assert spy.hashed == []  # registered paths are not looked at

    in_place.rescan = "changed"
    assert in_place.register_many([a, b, c, d], send=False) == [Outcome.CHANGED, Outcome.KNOWN, Outcome.KNOWN,
                                                                  Outcome.KNOWN]
    assert sorted(spy.hashed) == [a, b]  # those whose size or mtime differ
    assert in_place.register_many([a, b], send=False) == [Outcome.KNOWN, Outcome.KNOWN]  # recorded anew

    spy.hashed.clear()
    in_place.rescan = "force"
    assert in_place.register_many([a, b, c, d], send=False) == [Outcome.KNOWN, Outcome.KNOWN, Outcome.CHANGED,
                                                                  Outcome.KNOWN]
    assert sorted(spy.hashed) == [a, b, c, d]
    with in_place.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ImageRow)) == 6  # a's and c's new contents
        assert s.scalar(select(func.count()).select_from(SourceFile)) == 4


# --- the worker reads the original where it lies ---------------------------------------------------


@pytest.fixture()
def store(tmp_path, redis_url):
    """The real pipeline (tests.harness.Pipeline) on a store whose originals are held by reference,
    registered by the real Registrar."""
    pipe = Pipeline(tmp_path / "store")
    pipe.configure(tasks=TASKS, blob_mode="reference")
    archive = tmp_path / "archive"
    archive.mkdir()
    settings = pipe.settings(tasks=TASKS, blob_mode="reference", broker_url=redis_url)
    reg = Registrar(settings=settings, app=create_app(settings), roots=[archive])
    pipe.registrar, pipe.archive = reg, archive
    yield pipe
    reg.close()


def _runs(pipe: Pipeline, path: Path | None = None, sha: str | None = None) -> list[TaskRun]:
    with pipe.sessions() as s:
        if sha is None:
            sha = s.scalar(select(ImageRow.sha256).join(SourceFile).where(SourceFile.path == str(path)))
        return list(s.scalars(select(TaskRun).join(ImageRow).where(ImageRow.sha256 == sha).order_by(TaskRun.id)))


def _image(pipe: Pipeline, sha: str) -> ImageRow:
    with pipe.sessions() as s:
        return s.scalars(select(ImageRow).where(ImageRow.sha256 == sha)).one()


def _process(pipe: Pipeline, runs: list[TaskRun]) -> list[str]:
    task = FakeTask()
    states = [pipe.execute(r.id, task=task) for r in runs]
    assert task.retried == []  # never through the retry path
    return states


def test_a_referenced_original_is_processed_where_it_lies(store, photos):
    path = store.archive / "astronaut.jpg"
    shutil.copy(photos["astronaut"], path)
    assert store.registrar.register(path, send=False) is Outcome.NEW
    runs = _runs(store, path)
    assert not store.blobs.root.exists() or not any(store.blobs.root.rglob("*"))
    assert "done" in _process(store, runs)
    assert {r.status for r in _runs(store, path)} == {"done"}
    result = store.results(_sha(store, path))
    assert result["normalize"]["dtype"] == "uint8" and len(result["phash"]) == 16


def _sha(pipe: Pipeline, path: Path) -> str:
    with pipe.sessions() as s:
        return s.scalar(select(ImageRow.sha256).join(SourceFile).where(SourceFile.path == str(path)))


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_a_moved_or_deleted_original_fails_its_runs_once_and_ingesting_it_again_sends_them(store, photos, tmp_path,
                                                                                           how):
    path = store.archive / "coffee.jpg"
    shutil.copy(photos["coffee"], path)
    store.registrar.register(path, send=False)
    sha = _sha(store, path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if how == "moved":
        path.rename(elsewhere / "coffee.jpg")
    else:
        path.unlink()
    runs = _runs(store, sha=sha)
    assert _process(store, runs)[0] == FAILED
    after = _runs(store, sha=sha)
    message = f"original moved or deleted: {path} — ingest it again"
    assert [(r.status, r.error, r.attempts) for r in after] == [(FAILED, message, 1)] * len(TASKS)
    assert _image(store, sha).original == ORIGINAL_MISSING
    assert store.results(sha)["original"] == "missing"  # what the Results JSON says of it
    if how == "deleted":  # put back where it was, then `darkroom retry`: done
        shutil.copy(photos["coffee"], path)
        with transaction(store.sessions) as s:
            ledger.requeue_runs(s, statuses=[FAILED])
        _process(store, _runs(store, sha=sha))
        assert {r.status for r in _runs(store, sha=sha)} == {"done"}
        assert _image(store, sha).original == ORIGINAL_REFERENCE
        return
    # Ingested again from where it is now: the same content, its failed runs queued and done
    reg = store.registrar
    reg.roots = [elsewhere]
    assert reg.register(elsewhere / "coffee.jpg", send=False) is Outcome.DUPLICATE
    assert {r.status for r in _runs(store, sha=sha)} == {QUEUED}
    assert _image(store, sha).original == ORIGINAL_REFERENCE
    _process(store, _runs(store, sha=sha))
    assert {r.status for r in _runs(store, sha=sha)} == {"done"}


def test_an_edited_original_is_registered_anew_and_the_old_runs_say_so(store, photos):
    path = store.archive / "rocket.jpg"
    shutil.copy(photos["rocket"], path)
    store.registrar.register(path, send=False)
    old = _sha(store, path)
    _edit(path)
    assert _process(store, _runs(store, sha=old))[0] == FAILED
    new = _sha(store, path)
    assert new != old
    errors = {r.error for r in _runs(store, sha=old)}
    assert len(errors) == 1
    (error,) = errors
    assert error.startswith(f"{path} changed since it was registered") and new[:12] in error
    # The new content is an image of its own, with its runs (left unsent here: no broker in this
    # process; a worker sends them), processed from the edited file
    assert {r.status for r in _runs(store, sha=new)} == {QUEUED}
    _process(store, _runs(store, sha=new))
    assert {r.status for r in _runs(store, sha=new)} == {"done"}


def test_a_touched_original_with_the_same_content_is_used_and_its_new_time_recorded(store, photos):
    path = store.archive / "chelsea.jpg"
    shutil.copy(photos["chelsea"], path)
    store.registrar.register(path, send=False)
    sha = _sha(store, path)
    later = path.stat().st_mtime_ns + 60 * 10**9
    os.utime(path, ns=(later, later))
    _process(store, _runs(store, sha=sha))
    assert {r.status for r in _runs(store, sha=sha)} == {"done"}
    with store.sessions() as s:
        assert s.scalar(select(SourceFile.mtime_ns).where(SourceFile.path == str(path))) == later


def test_a_content_held_by_reference_and_then_copied_is_read_from_the_copy(store, photos, tmp_path):
    path = store.archive / "astronaut.jpg"
    shutil.copy(photos["astronaut"], path)
    store.registrar.register(path, send=False)
    sha = _sha(store, path)
    # The same photo dropped into a copying inbox: the blob store has it from now on
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(photos["astronaut"], inbox / "again.jpg")
    copying = Registrar(settings=store.registrar.settings.model_copy(update={"blob_mode": "copy"}),
                        app=store.registrar.app, roots=[inbox])
    assert copying.register(inbox / "again.jpg", send=False) is Outcome.DUPLICATE
    copying.close()
    assert _image(store, sha).original == "blob"
    path.unlink()  # the archive's file is gone, but the copy serves
    _process(store, _runs(store, sha=sha))
    assert {r.status for r in _runs(store, sha=sha)} == {"done"}


# --- darkroom ingest in subprocesses, with real workers ---------------------------------------------


def test_ingest_in_place_end_to_end_with_moved_deleted_and_edited_originals(tmp_path, redis_url, photos):
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks=",".join(TASKS))
    archive = tmp_path / "archive"
    (archive / "2019").mkdir(parents=True)
    names = {"kept": "astronaut", "moved": "coffee", "deleted": "chelsea", "edited": "rocket"}
    for name, photo in names.items():
        shutil.copy(photos[photo], archive / "2019" / f"{name}.jpg")
    done = dr.run("ingest", "--in-place", str(archive))
    assert done.returncode == 0, done.stderr
    assert "4 file(s): 4 new" in done.stdout
    assert not (dr.data / "blobs").exists() or not any((dr.data / "blobs").rglob("*"))  # nothing copied
    shas = {Path(r["path"]).stem: r["sha256"] for r in dr.results()}
    # Before any worker runs: one original moved, one deleted, one edited
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (archive / "2019" / "moved.jpg").rename(elsewhere / "moved.jpg")
    (archive / "2019" / "deleted.jpg").unlink()
    _edit(archive / "2019" / "edited.jpg")
    dr.inbox.mkdir()
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr  # photos failed
    by_sha = {r["sha256"]: r for r in dr.results()}
    assert by_sha[shas["kept"]]["status"] == "done"
    for name in ("moved", "deleted"):
        r = by_sha[shas[name]]
        assert r["status"] == "failed"
        assert set(r["errors"].values()) == {
            f"original moved or deleted: {archive / '2019' / f'{name}.jpg'} — ingest it again"}
    # The edited file is a new image, processed; the old content's runs point at it
    (new,) = [r for r in by_sha.values() if r["sha256"] not in shas.values()]
    assert new["status"] == "done" and new["path"] == str(archive / "2019" / "edited.jpg")
    old = by_sha[shas["edited"]]
    assert old["status"] == "failed" and all(new["sha256"][:12] in e for e in old["errors"].values())
    from tests.harness import LedgerReader

    runs = LedgerReader(dr.env["DARKROOM_DATABASE_URL"]).runs()
    assert all(r.attempts == 1 for r in runs if r.status == "failed")  # never retried
    status = dr.run("status")
    assert "ingest it again" in status.stdout
    # The moved photo ingested again where it is now: its runs go again and end done
    done = dr.run("ingest", "--in-place", str(elsewhere))
    assert done.returncode == 0 and "1 duplicate" in done.stdout, done.stdout + done.stderr
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert dr.results(shas["moved"])[0]["status"] == "done", done.stderr
    # Exports read the stored results, not the originals
    export = tmp_path / "export"
    assert dr.run("export", str(export)).returncode == 0
    assert json.loads((export / shas["kept"] / "result.json").read_text())["status"] == "done"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_an_ingest_stopped_midway_resumes_and_registers_every_file_once(tmp_path, redis_url, sig):
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    # A queue bound of 100 and no worker: the ingest waits after its first chunks, mid-way for sure
    dr = Darkroom(tmp_path, redis_url, db_url, tasks="normalize", max_queue_depth="100")
    archive = tmp_path / "archive"
    photos = _pngs(archive / "a", 250) + _pngs(archive / "b", 250, "q")
    proc = dr.start("ingest", "--in-place", str(archive), name="ingest")
    sessions = session_factory(make_engine(db_url))

    def registered() -> int:
        try:
            with sessions() as s:
                return s.scalar(select(func.count()).select_from(SourceFile)) or 0
        except Exception:  # noqa: BLE001 - the schema is being made
            return 0

    deadline = time.monotonic() + 120
    while (registered() < 100 or redis.Redis.from_url(redis_url).llen("cpu") < 100) and time.monotonic() < deadline:
        assert proc.poll() is None, dr.log_tail()
        time.sleep(0.1)
    time.sleep(0.5)
    code = stop(proc, sig, timeout=60)
    log = (dr.logs / "ingest.log").read_text()
    first = registered()
    assert 100 <= first < len(photos), log
    if sig == signal.SIGINT:  # the chunks in hand were finished, and it said how to go on
        assert code == 130, log
        assert f"stopped after {first} file(s)" in log and "again to go on" in log
    else:
        assert code == -signal.SIGKILL
    # Resumed: the rest registered, what was registered not read again
    dr.env["DARKROOM_MAX_QUEUE_DEPTH"] = "100000"
    done = dr.run("ingest", "--in-place", str(archive))
    assert done.returncode == 0, done.stderr
    assert f"{len(photos)} file(s): {len(photos) - first} new, {first} known" in done.stdout
    with sessions() as s:
        paths = list(s.scalars(select(SourceFile.path)))
        assert sorted(paths) == sorted(map(str, photos))  # each file exactly once
        assert s.scalar(select(func.count()).select_from(ImageRow)) == len(photos)
        runs = list(s.execute(select(TaskRun.image_id, TaskRun.task, TaskRun.enqueued_at)))
    assert len(runs) == len(photos) == len({(i, t) for i, t, _ in runs})
    assert all(sent is not None for _i, _t, sent in runs)
    assert redis.Redis.from_url(redis_url).llen("cpu") == len(photos)  # each run's message sent once


def test_ingest_modes_from_the_command_line(tmp_path, redis_url, photos):
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="normalize")
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("astronaut", "coffee"):
        shutil.copy(photos[name], archive / f"{name}.jpg")
    assert "2 file(s): 2 new" in dr.run("ingest", "--in-place", str(archive)).stdout
    _edit(archive / "coffee.jpg")
    assert "2 file(s): 2 known" in dr.run("ingest", "--in-place", str(archive)).stdout  # new files only
    assert "2 file(s): 1 changed, 1 known" in dr.run("ingest", "--in-place", "--changed", str(archive)).stdout
    assert "2 file(s): 2 known" in dr.run("ingest", "--in-place", "--force", str(archive)).stdout
    help_text = dr.run("ingest", "--help").stdout
    assert "--in-place" in help_text and "--changed" in help_text and "--force" in help_text


def test_an_original_changing_while_it_is_read_is_tried_again_not_registered(store, photos, monkeypatch):
    path = store.archive / "coffee.jpg"
    shutil.copy(photos["coffee"], path)
    store.registrar.register(path, send=False)
    sha = _sha(store, path)
    _edit(path)
    import worker.originals as originals

    real_stat = os.stat

    def still_being_written(p, *a, **kw):  # the size seen after the read differs from before it
        st = real_stat(p, *a, **kw)
        return os.stat_result((*st[:6], st.st_size + 1, *st[7:])) if str(p) == str(path) else st

    monkeypatch.setattr(originals.os, "stat", still_being_written)
    task = FakeTask()
    (first, *_rest) = _runs(store, sha=sha)
    with pytest.raises(Exception, match="changed while it was read"):
        store.execute(first.id, task=task)
    assert len(task.retried) == 1  # the pipeline's retry with backoff
    assert {r.status for r in _runs(store, sha=sha)} == {QUEUED}
    assert _sha(store, path) == sha  # nothing registered anew from a half-written file


def test_registering_a_missing_originals_content_again_sends_its_failed_runs(in_place, photos):
    """On SQLite and PostgreSQL, a chunk (register_files) and a single file (register_file) alike."""
    archive = in_place.archive
    names = ("coffee", "rocket", "chelsea")
    for name in names:
        shutil.copy(photos[name], archive / f"{name}.jpg")
    assert in_place.register_many([archive / f"{n}.jpg" for n in names], send=False) == [Outcome.NEW] * 3
    with transaction(in_place.sessions) as s:  # what a worker does when the originals are gone
        for image_id in s.scalars(select(ImageRow.id)):
            files.mark_missing(s, image_id)
        ledger.finish_runs(s, list(s.scalars(select(TaskRun.id))), status=FAILED, error="original moved or deleted")
    moved = archive / "moved"
    moved.mkdir()
    for name in names:
        (archive / f"{name}.jpg").rename(moved / f"{name}.jpg")
    assert in_place.register_many([moved / "coffee.jpg", moved / "rocket.jpg"], send=False) == [Outcome.DUPLICATE] * 2
    assert in_place.register_many([moved / "chelsea.jpg"], send=False) == [Outcome.DUPLICATE]
    with in_place.sessions() as s:
        assert set(s.scalars(select(ImageRow.original))) == {ORIGINAL_REFERENCE}
        runs = list(s.scalars(select(TaskRun)))
    assert len(runs) == 3 * len(TASKS)
    assert {(r.status, r.enqueued_at, r.error) for r in runs} == {(QUEUED, None, None)}  # to be sent again
