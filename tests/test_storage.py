"""The SQL store on SQLite and PostgreSQL: schema, the run ledger (registering, claiming, creating and
requeueing runs), idempotent results."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import pytest
from sqlalchemy import func, inspect, select

from darkroom import catalog
from storage import files, ledger, results
from storage.db import make_engine, migrate, read_only, schema_is_current, session_factory, transaction
from storage.models import DONE, FAILED, QUEUED, REJECTED, RUNNING, Face, Image, Label, TaskRun
from tests.harness import Pipeline

WORK = [("normalize", ""), ("classify", "vgg16"), ("augment", ""), ("faces", "mtcnn")]
SHA_A = "a" * 64
SHA_B = "b" * 64


def _register(sessions, path, sha=SHA_A, reason=None, work=WORK):
    with transaction(sessions) as s:
        return files.register_file(s, path=path, size_bytes=10, mtime_ns=1, sha256=sha, fmt="JPEG",
                                  width=4, height=3, rejected_reason=reason, work=work)


def test_migration_creates_every_table_and_is_repeatable(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # a second start changes nothing
    assert schema_is_current(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"images", "files", "task_runs", "normalizations", "labels", "faces", "artifacts"} <= tables


def _migrate_in_child(url: str) -> None:
    migrate(make_engine(url))


def test_concurrent_migrations_do_not_collide(db_url):
    # Given several processes starting on an empty database at once (producer and workers)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate_in_child, args=(db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    # Then every one succeeded and the schema is current
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert schema_is_current(make_engine(db_url))


def _ledger(sessions) -> dict:
    from storage.models import Image, SourceFile, TaskRun

    with sessions() as s:
        return {
            "images": sorted((i.sha256, i.rejected_reason) for i in s.scalars(select(Image))),
            "files": sorted((f.path, f.size_bytes, s.get(Image, f.image_id).sha256) for f in s.scalars(select(SourceFile))),
            "runs": sorted((s.get(Image, r.image_id).sha256, r.task, r.model, r.status) for r in s.scalars(select(TaskRun))),
        }


def test_register_files_is_registering_the_files_one_after_another(tmp_path):
    """The bulk form (a chunk of an ingest) leaves the ledger, and reports each file, as one call per file does."""
    shas = [c * 64 for c in "abcdef"]
    before = [("/in/old.jpg", shas[0], None, WORK), ("/in/renamed.jpg", shas[1], None, WORK[:2])]
    chunk = [
        ("/in/new.jpg", shas[2], None),  # new content
        ("/in/copy.jpg", shas[2], None),  # the same content again, in the same chunk
        ("/in/old-copy.jpg", shas[0], None),  # content registered before
        ("/in/renamed.jpg", shas[3], None),  # a known path, now with other content
        ("/in/more.jpg", shas[1], None),  # known content that lacks runs of the work now configured
        ("/in/junk.jpg", shas[4], "/in/junk.jpg: not an image"),
        ("/in/last.jpg", shas[5], None),
    ]
    results = {}
    for mode in ("one by one", "bulk"):
        engine = make_engine(f"sqlite:///{tmp_path / mode.replace(' ', '_')}.db")
        migrate(engine)
        sessions = session_factory(engine)
        for path, sha, reason, work in before:
            _register(sessions, path, sha=sha, reason=reason, work=work)
        with transaction(sessions) as s:
            if mode == "bulk":
                regs = files.register_files(s, [files.FileRecord(path=p, size_bytes=10, mtime_ns=1, sha256=sha, fmt="JPEG",
                                                               width=4, height=3, rejected_reason=r)
                                               for p, sha, r in chunk], WORK)
            else:
                regs = [files.register_file(s, path=p, size_bytes=10, mtime_ns=1, sha256=sha, fmt="JPEG", width=4,
                                           height=3, rejected_reason=r, work=WORK) for p, sha, r in chunk]
        results[mode] = ([(r.new_image, len(r.run_ids)) for r in regs], _ledger(sessions))
        engine.dispose()
    assert results["bulk"] == results["one by one"]
    assert results["bulk"][0] == [(True, 4), (False, 0), (False, 0), (True, 4), (False, 2), (True, 0), (True, 4)]


def test_register_creates_runs_once_and_duplicates_add_no_work(sessions):
    first = _register(sessions, "/in/a.jpg")
    assert first.new_image and len(first.run_ids) == 4
    again = _register(sessions, "/in/a.jpg")
    copy = _register(sessions, "/in/copy of a.jpg")
    assert not again.new_image and again.run_ids == []
    assert not copy.new_image and copy.run_ids == []
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 1
        assert s.scalar(select(func.count()).select_from(TaskRun)) == 4
        image = results.find_images(s)[0]
        assert [f.path for f in image.files] == ["/in/a.jpg", "/in/copy of a.jpg"]
        assert ledger.image_status(image) == QUEUED


def test_a_newly_configured_model_adds_only_its_own_run(sessions):
    _register(sessions, "/in/a.jpg")
    more = _register(sessions, "/in/a.jpg", work=WORK + [("classify", "mobilenet_v2")])
    assert len(more.run_ids) == 1


def test_rejected_content_gets_no_runs(sessions):
    reg = _register(sessions, "/in/junk.jpg", sha=SHA_B, reason="/in/junk.jpg: not an image")
    assert reg.run_ids == []
    with sessions() as s:
        image = results.find_images(s, ["/in/junk.jpg"])[0]
        assert ledger.image_status(image) == REJECTED
        problems = ledger.problems(s)
    assert [(p.path, p.status) for p in problems] == [("/in/junk.jpg", REJECTED)]


def test_unsent_runs_are_sent_once(sessions):
    reg = _register(sessions, "/in/a.jpg")
    with transaction(sessions) as s:
        unsent = ledger.unsent_runs(s)
        assert [r.id for r in unsent] == reg.run_ids
        ledger.mark_enqueued(s, [unsent[0].id])
    with sessions() as s:
        assert len(ledger.unsent_runs(s)) == 3


def test_claim_finish_and_redelivery(sessions):
    reg = _register(sessions, "/in/a.jpg")
    run_id = reg.run_ids[1]
    with transaction(sessions) as s:
        claim = ledger.claim_run(s, run_id, "host:1")
    assert claim.task == "classify" and claim.model == "vgg16" and claim.sha256 == SHA_A and claim.attempts == 1
    labels = [{"rank": 1, "class_id": 3, "label": "tiger shark", "score": 0.5}]
    for _ in range(2):  # a redelivered task writes the same result again
        with transaction(sessions) as s:
            results.LABELS.save(s, claim.model, [(claim.image_id, labels)])
            ledger.finish_run(s, run_id, status=DONE)
    with transaction(sessions) as s:
        assert ledger.claim_run(s, run_id, "host:2") is None  # finished: nothing to do
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 1
        run = s.get(TaskRun, run_id)
        assert run.status == DONE and run.duration_ms is not None and run.worker == "host:1"


def test_may_claim_reads_without_waiting_for_a_writer(sessions, db_url):
    """Messages of runs already taken into another process's batch are skipped by a read that
    neither waits for nor blocks the writer (SQLite: no BEGIN IMMEDIATE)."""
    import time

    reg = _register(sessions, "/in/a.jpg")
    queued, taken = reg.run_ids[0], reg.run_ids[1]
    with transaction(sessions) as s:
        ledger.claim_run(s, taken, "host:1")
    other = session_factory(make_engine(db_url))
    with transaction(other) as writer:  # another process mid-write, holding the write lock
        writer.get(TaskRun, queued).error = "being written"
        writer.flush()
        started = time.perf_counter()
        with read_only(sessions) as s:
            assert ledger.may_claim(s, queued)
            assert not ledger.may_claim(s, taken, holder_alive=lambda holder: holder == "host:1")
            assert ledger.may_claim(s, taken)  # its holder died: it may be taken over
            assert not ledger.may_claim(s, 10**9)
            s.get(TaskRun, queued).error = "a read-only session writes nothing"
        assert time.perf_counter() - started < 5  # did not wait for the writer (busy timeout: 60 s)
    with sessions() as s:
        assert s.get(TaskRun, queued).error == "being written"


def test_image_state_is_derived_from_its_runs(sessions):
    reg = _register(sessions, "/in/a.jpg")
    ids = reg.run_ids

    def state():
        with sessions() as s:
            return ledger.image_status(results.find_images(s)[0])

    with transaction(sessions) as s:
        ledger.claim_run(s, ids[0], "w")
    assert state() == RUNNING
    with transaction(sessions) as s:
        for run_id in ids[:3]:
            ledger.claim_run(s, run_id, "w")
            ledger.finish_run(s, run_id, status=DONE)
    assert state() == QUEUED
    with transaction(sessions) as s:
        ledger.claim_run(s, ids[3], "w")
        ledger.finish_run(s, ids[3], status=FAILED, error="boom")
    assert state() == FAILED
    with sessions() as s:
        result = catalog.results_json(s, [results.find_images(s)[0]])[0]
    assert result["errors"] == {"faces": "boom"}
    with transaction(sessions) as s:
        assert ledger.requeue_runs(s, statuses=[FAILED]) == [ids[3]]
    assert state() == QUEUED


def test_image_counts_are_the_states_of_every_image_counted_in_sql(sessions):
    """`darkroom status` reads counts the database keeps (an archive may hold millions; see
    tests/test_counts.py); folded, they must be those of image_status() over every image."""
    shas = [c * 64 for c in "0123456789"]
    regs = [_register(sessions, f"/in/{i}.jpg", sha=sha) for i, sha in enumerate(shas[:7])]
    _register(sessions, "/in/bad.jpg", sha=shas[7], reason="not an image")  # rejected by the producer
    _register(sessions, "/in/none.jpg", sha=shas[8], work=[])  # no task to do: done
    with transaction(sessions) as s:
        for run_id in regs[0].run_ids:  # 0: done
            ledger.claim_run(s, run_id, "w")
            ledger.finish_run(s, run_id, status=DONE)
        ledger.claim_run(s, regs[1].run_ids[2], "w")  # 1: running
        for run_id in regs[2].run_ids[:2]:  # 2: partly done, the rest queued
            ledger.claim_run(s, run_id, "w")
            ledger.finish_run(s, run_id, status=DONE)
        for run_id in regs[3].run_ids:  # 3: one failed, the others done
            ledger.claim_run(s, run_id, "w")
            ledger.finish_run(s, run_id, status=FAILED if run_id == regs[3].run_ids[1] else DONE)
        ledger.claim_run(s, regs[4].run_ids[0], "w")  # 4: rejected by a worker
        ledger.finish_run(s, regs[4].run_ids[0], status=REJECTED, error="truncated")
        ledger.claim_run(s, regs[5].run_ids[0], "w")  # 5: failed while another still runs
        ledger.finish_run(s, regs[5].run_ids[0], status=FAILED, error="x")
        ledger.claim_run(s, regs[5].run_ids[1], "w")
    assert ledger.fold_pending(sessions) == 0
    with sessions() as s:
        counts = ledger.image_counts(s)
        expected = Counter(ledger.image_status(image) for image in results.find_images(s))
    assert counts == expected
    assert counts == Counter({DONE: 2, RUNNING: 2, QUEUED: 2, FAILED: 1, REJECTED: 2})


def test_rejection_by_a_worker_closes_the_images_other_runs(sessions):
    reg = _register(sessions, "/in/a.jpg")
    with transaction(sessions) as s:
        ledger.claim_run(s, reg.run_ids[0], "w")
        ledger.finish_run(s, reg.run_ids[0], status=REJECTED, error="/in/a.jpg: truncated")
    with sessions() as s:
        image = results.find_images(s)[0]
        assert ledger.image_status(image) == REJECTED
        assert {r.status for r in image.runs} == {REJECTED}


def test_faces_and_artifacts_are_replaced_not_duplicated(sessions):
    reg = _register(sessions, "/in/a.jpg")
    face = {"box": [1, 2, 3, 4], "confidence": 0.99, "keypoints": {"nose": [2, 3]}}
    art = results.ArtifactData(kind="faces_boxed", idx=0, mime="image/jpeg", width=4, height=3, data=b"jpeg")
    for faces in ([face, face], [face]):
        with transaction(sessions) as s:
            results.FACES.save(s, "mtcnn", [(reg.image_id, faces)])
            results.save_artifacts(s, reg.image_id, results.FACES.artifact_kinds, [art])
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Face)) == 1
        assert len(results.artifacts_for(s, reg.image_id)) == 1
        with pytest.raises(ValueError):
            wrong = results.ArtifactData("augmented", 0, "image/jpeg", 1, 1, b"")
            results.save_artifacts(s, reg.image_id, results.FACES.artifact_kinds, [wrong])


def test_find_images_by_path_and_hash_prefix(sessions):
    _register(sessions, "/in/a.jpg")
    _register(sessions, "/in/b.jpg", sha=SHA_B)
    with sessions() as s:
        assert [i.sha256 for i in results.find_images(s, ["/in/b.jpg"])] == [SHA_B]
        assert [i.sha256 for i in results.find_images(s, [SHA_A[:10]])] == [SHA_A]
        assert len(results.find_images(s)) == 2
        assert results.find_images(s, ["/in/nothing.jpg"]) == []


def test_refused_files_are_listed_with_their_reason(sessions):
    with transaction(sessions) as s:
        files.refuse_file(s, path="/in/link.jpg", reason="/in/link.jpg: symbolic link outside")
    with sessions() as s:
        assert [(p.path, p.reason) for p in ledger.problems(s)] == [("/in/link.jpg", "/in/link.jpg: symbolic link outside")]


@pytest.mark.parametrize("model, weights", [("vgg16", "imagenet"), ("vgg16", "none"),
                                            ("mobilenet_v2", "/w/my weights@2.h5"), ("/m/x@y.keras", "imagenet")])
def test_classifier_keys_read_back(model, weights):
    from darkroom.catalog import classifier_key, parse_classifier_key

    assert parse_classifier_key(classifier_key(model, weights)) == (model, weights)


def test_batches_claim_pending_runs_of_one_model_and_respect_live_holders(sessions):
    ids = {}
    for i, sha in enumerate("abcde"):
        reg = _register(sessions, f"/in/{i}.jpg", sha=sha * 64)
        ids[sha] = reg.run_ids[1]  # the classify run of each image
    alive = {"host:1"}
    with transaction(sessions) as s:
        first = ledger.claim_run(s, ids["a"], "host:1", lambda w: w in alive)
        batch = ledger.claim_batch(s, task="classify", model="vgg16", worker="host:1", limit=2, exclude=first.run_id,
                                 holder_alive=lambda w: w in alive)
    assert [c.run_id for c in batch] == [ids["b"], ids["c"]]
    assert {c.task for c in batch} == {"classify"}
    with transaction(sessions) as s:
        # Their own messages arrive at another process: held by a live process, nothing to do
        assert ledger.claim_run(s, ids["b"], "host:2", lambda w: w in alive) is None
    alive.clear()  # the holder dies
    with transaction(sessions) as s:
        assert ledger.orphaned_runs(s, lambda w: w in alive) == [ids["a"], ids["b"], ids["c"]]
        taken = ledger.claim_batch(s, task="classify", model="vgg16", worker="host:2", limit=10, exclude=-1,
                                 holder_alive=lambda w: w in alive)
    # Orphans first, then the queued ones; nothing of another task or model
    assert [c.run_id for c in taken] == [ids["a"], ids["b"], ids["c"], ids["d"], ids["e"]]
    assert [c.attempts for c in taken] == [2, 2, 2, 1, 1]
    with transaction(sessions) as s:
        refs = ledger.release_runs(s, [ids["d"], ids["e"]])
    assert sorted(r.id for r in refs) == [ids["d"], ids["e"]]
    with sessions() as s:
        assert {r.id for r in ledger.unsent_runs(s) if r.task == "classify"} == {ids["d"], ids["e"]}


def test_holder_alive_reads_the_process_table():
    import os
    import socket
    import subprocess

    from worker.runtime import holder_alive

    host = socket.gethostname()
    me = f"{host}:{os.getpid()}"
    assert holder_alive(me)
    assert not holder_alive(me, me=me)  # a process is free to take back its own runs
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not holder_alive(f"{host}:{dead.pid}")
    assert holder_alive("some-other-host:1")  # another machine: trusted until its lease runs out


def test_a_run_awaiting_its_retry_belongs_to_its_retry_message(sessions):
    """Other processes' batches and groups leave it alone (the retry may take it over from any
    holder, so two would do it at once), and a retry noted late never reopens a finished run."""
    reg = _register(sessions, "/in/a.jpg")
    normalize, classify, _augment, faces = reg.run_ids
    other = _register(sessions, "/in/b.jpg", sha=SHA_B).run_ids[1]
    with transaction(sessions) as s:
        ledger.note_retry(s, faces, "database restarting")
        ledger.note_retry(s, classify, "database restarting")
    with transaction(sessions) as s:
        assert ledger.claim_companions(s, image_id=reg.image_id, tasks=["faces"], worker="w:1", exclude=normalize) == []
        batch = ledger.claim_batch(s, task="classify", model="vgg16", worker="w:1", limit=5, exclude=-1)
        assert [c.run_id for c in batch] == [other]
        # its own retry message takes it
        assert ledger.claim_run(s, faces, "w:2").run_id == faces
        ledger.finish_run(s, faces, status=DONE)
    with transaction(sessions) as s:
        ledger.note_retry(s, faces, "a late note")
    with sessions() as s:
        assert s.get(TaskRun, faces).status == DONE


def test_ensure_runs_and_rerun(tmp_path):
    pipe = Pipeline(tmp_path)
    work = [("classify", "mobilenet_v2@none")]
    with transaction(pipe.sessions) as s:
        a = files.register_file(s, path="/in/a.jpg", size_bytes=1, mtime_ns=1, sha256="a" * 64, fmt="JPEG",
                               width=4, height=4, rejected_reason=None, work=work)
        b = files.register_file(s, path="/in/b.jpg", size_bytes=1, mtime_ns=1, sha256="b" * 64, fmt="JPEG",
                               width=4, height=4, rejected_reason=None, work=work)
        files.register_file(s, path="/in/c.txt", size_bytes=1, mtime_ns=1, sha256="c" * 64, fmt=None,
                           width=None, height=None, rejected_reason="not an image", work=work)
        ledger.mark_enqueued(s, a.run_ids + b.run_ids)
        ledger.finish_run(s, a.run_ids[0], status=DONE)
        ledger.finish_run(s, b.run_ids[0], status=FAILED, error="boom")
    with transaction(pipe.sessions) as s:
        # A new model: one new run per usable image, none for the rejected one; a second call adds nothing
        created = ledger.ensure_runs(s, "classify", "resnet50@none")
        assert len(created) == 2
        assert ledger.ensure_runs(s, "classify", "resnet50@none") == []
        # --failed-only: the failed run only
        only_failed = ledger.rerun(s, "classify", "mobilenet_v2@none", failed_only=True)
        assert only_failed.created == [] and only_failed.requeued == b.run_ids
    with transaction(pipe.sessions) as s:
        ledger.finish_run(s, b.run_ids[0], status=FAILED, error="boom again")
        everything = ledger.rerun(s, "classify", "mobilenet_v2@none")
        assert everything.created == [] and sorted(everything.requeued) == sorted(a.run_ids + b.run_ids)
    with pipe.sessions() as s:
        runs = {r.id: r for r in s.query(TaskRun)}
        for run_id in a.run_ids + b.run_ids + created:
            assert runs[run_id].status == QUEUED and runs[run_id].enqueued_at is None and runs[run_id].error is None
        assert {r.status for r in runs.values() if r.image.sha256 == "c" * 64} <= {REJECTED}
        unsent = {r.id for r in ledger.unsent_runs(s)}
    assert unsent == set(a.run_ids + b.run_ids + created)

