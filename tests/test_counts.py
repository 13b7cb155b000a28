"""The counts `status` reads (storage.ledger.run_counts / image_counts): kept by the database's
triggers and folded by storage.ledger.fold_counts, they must equal counting every row — after any
sequence of ledger changes, with writers interleaving on PostgreSQL, and for a store that existed
before the counts did (migration 0007 counts it once)."""

from __future__ import annotations

import random
from collections import Counter

from sqlalchemy import delete, func, select, text

from storage import files, ledger, results
from storage.db import alembic_config, make_engine, migrate, session_factory, transaction
from storage.models import DONE, FAILED, QUEUED, REJECTED, RUNNING, DirtyImage, Image, LedgerCount, TaskRun

WORK = [("normalize", ""), ("classify", "vgg16"), ("faces", "mtcnn")]


def _register(sessions, i: int, *, reason: str | None = None, work=WORK):
    with transaction(sessions) as s:
        return files.register_file(s, path=f"/in/{i}.jpg", size_bytes=10, mtime_ns=1, sha256=f"{i:064x}",
                                  fmt="JPEG", width=4, height=3, rejected_reason=reason, work=work)


def _exact(sessions) -> tuple[dict[tuple[str, str], int], Counter[str]]:
    """The counts made the slow way: every run grouped, every image's state derived."""
    with sessions() as s:
        runs = {(t, st): n for t, st, n in s.execute(
            select(TaskRun.task, TaskRun.status, func.count()).group_by(TaskRun.task, TaskRun.status))}
        images = Counter(ledger.image_status(image) for image in results.find_images(s))
    return runs, images


def _kept(sessions) -> tuple[dict[tuple[str, str], int], Counter[str]]:
    assert ledger.fold_pending(sessions) == 0
    with sessions() as s:
        assert ledger.uncounted(s) == 0
        return ledger.run_counts(s), ledger.image_counts(s)


def test_counts_follow_every_kind_of_change(sessions):
    """Registering, duplicates, producer rejections, claims, batches, finishing in every state,
    releases, retries, requeues, reruns of a new model and deleted images: after each step the kept
    counts are the exact ones."""
    rng = random.Random(7)
    regs = [_register(sessions, i) for i in range(40)]
    _register(sessions, 1000, reason="not an image")
    _register(sessions, 1001, work=[])  # nothing to do: done
    assert _kept(sessions) == _exact(sessions)
    assert _kept(sessions)[1] == Counter({QUEUED: 40, REJECTED: 1, DONE: 1})
    run_ids = [r for reg in regs for r in reg.run_ids]
    for step in range(12):
        with transaction(sessions) as s:
            chosen = rng.sample(run_ids, 25)
            for run_id in chosen[:15]:
                if ledger.claim_run(s, run_id, "host:1") is not None and rng.random() < 0.8:
                    status = rng.choice([DONE, DONE, DONE, FAILED, REJECTED])
                    ledger.finish_runs(s, [run_id], status=status, error=None if status == DONE else "why")
            ledger.claim_runs(s, chosen[15:20], "host:2")
            ledger.release_runs(s, chosen[15:18])
            ledger.note_retry(s, chosen[20], "timed out")
            if step % 4 == 3:
                ledger.requeue_runs(s, statuses=[FAILED, REJECTED])
            if step == 6:
                ledger.rerun(s, "classify", "mobilenet_v2")
        assert _kept(sessions) == _exact(sessions), f"step {step}"
    with transaction(sessions) as s:  # an image deleted (its runs first: SQLite may not cascade)
        victim = regs[0].image_id
        s.execute(delete(TaskRun).where(TaskRun.image_id == victim))
        s.execute(delete(Image).where(Image.id == victim))
    assert _kept(sessions) == _exact(sessions)


def test_counts_are_exact_when_writers_interleave(postgres_url):
    """Two workers finish an image's last two runs in transactions that overlap (PostgreSQL; SQLite
    has one writer at a time): neither sees the other's change, so a counter kept by either would
    say `running` for ever. The fold recounts the image after both committed."""
    engine = make_engine(postgres_url)
    migrate(engine)
    sessions = session_factory(engine)
    regs = [_register(sessions, i, work=WORK[:2]) for i in range(20)]
    with transaction(sessions) as s:
        for reg in regs:
            ledger.claim_runs(s, reg.run_ids, "host:1")
    assert ledger.fold_pending(sessions) == 0
    for n, reg in enumerate(regs):
        first, second = sessions(), sessions()
        try:
            first.begin()
            second.begin()
            ledger.finish_runs(first, [reg.run_ids[0]], status=DONE)
            first.flush()
            ledger.finish_runs(second, [reg.run_ids[1]], status=DONE)
            second.flush()
            first.commit()
            if n % 2:  # a fold between the two commits sees the image half done
                assert ledger.fold_pending(sessions) == 0
            second.commit()
        finally:
            first.close()
            second.close()
    runs, images = _kept(sessions)
    assert images == Counter({DONE: 20})
    assert (runs, images) == _exact(sessions)
    engine.dispose()


def test_the_migration_counts_a_store_that_existed_before_the_counts(db_url):
    """A store made before migration 0007 is counted once by it; the triggers count from then on."""
    from alembic import command
    from alembic.script import ScriptDirectory

    engine = make_engine(db_url)
    cfg = alembic_config(engine)
    before = ScriptDirectory.from_config(cfg).get_revision("0007").down_revision
    command.upgrade(cfg, before)
    with engine.begin() as conn:
        ids = [conn.scalar(text("INSERT INTO images (sha256, size_bytes, rejected_reason, created_at) "
                                "VALUES (:sha, 10, :why, CURRENT_TIMESTAMP) RETURNING id"),
                           {"sha": f"{i:064x}", "why": "bad" if i == 6 else None}) for i in range(1, 7)]
        states = [[DONE, DONE], [DONE, RUNNING], [QUEUED, FAILED], [DONE, FAILED], []]
        for image_id, statuses in zip(ids, states):
            for k, status in enumerate(statuses):
                conn.execute(text("INSERT INTO task_runs (image_id, task, model, status, attempts, queued_at, "
                                  "retry_pending) VALUES (:i, :t, '', :s, 0, CURRENT_TIMESTAMP, false)"),
                             {"i": image_id, "t": ("normalize", "faces")[k], "s": status})
    migrate(engine)
    factory = session_factory(engine)
    with factory() as s:
        assert ledger.uncounted(s) == 0
        assert ledger.image_counts(s) == Counter({DONE: 2, RUNNING: 1, QUEUED: 1, FAILED: 1, REJECTED: 1})
        assert ledger.run_counts(s) == {("normalize", DONE): 3, ("normalize", QUEUED): 1,
                                        ("faces", DONE): 1, ("faces", RUNNING): 1, ("faces", FAILED): 2}
    _register(factory, 7)
    assert _kept(factory) == _exact(factory)
    engine.dispose()


def test_folding_sums_the_count_rows_up(sessions):
    """Every change adds a count row; folding leaves one row per count, so reading them stays cheap."""
    regs = [_register(sessions, i) for i in range(30)]
    with transaction(sessions) as s:
        for reg in regs:
            ledger.claim_runs(s, reg.run_ids, "host:1")
            ledger.finish_runs(s, reg.run_ids, status=DONE)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(LedgerCount)) > 64
        assert s.scalar(select(func.count()).select_from(DirtyImage)) >= 30
    assert ledger.fold_pending(sessions) == 0
    with sessions() as s:
        rows = s.scalar(select(func.count()).select_from(LedgerCount))
        assert rows <= len(WORK) + 2  # one per (task, status), and the images' done (+ a few new)
        assert ledger.image_counts(s) == Counter({DONE: 30})
        assert ledger.run_counts(s) == {(task, DONE): 30 for task, _ in WORK}
