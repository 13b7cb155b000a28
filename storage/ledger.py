"""The run ledger: one task run per (image, task, model), and every change of its state —
sent, claimed, finished, given back, retried, requeued — with the counts and problems read from it.

Functions over a session; the caller owns the transaction (see :func:`storage.db.transaction`).
Completing a run twice leaves one result; a run is claimed by one live process at a time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.db import chunks, transaction
from storage.models import (
    DONE,
    FAILED,
    PENDING_STATES,
    QUEUED,
    REJECTED,
    RUNNING,
    DirtyImage,
    Image,
    LedgerCount,
    SourceFile,
    TaskRun,
    utcnow,
)


@dataclasses.dataclass(frozen=True)
class RunRef:
    """What a message needs to be sent for a run."""

    id: int
    task: str
    model: str


#: The PostgreSQL advisory lock under which a producer reads unsent runs, sends them and records
#: them sent: two producers (a watcher and an ingest, or two hosts) would otherwise both read, and
#: send, the same unsent runs.
SEND_LOCK = 0x64726B73  # "drks"


def lock_sending(session: Session) -> None:
    """Take :data:`SEND_LOCK` for the rest of the session's transaction (PostgreSQL; on SQLite the
    producers of one store share a machine, and a run sent twice is only skipped by its worker)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(SEND_LOCK)))


def unsent_runs(session: Session, limit: int = 1000) -> list[RunRef]:
    """Queued runs whose message has not been handed to the broker yet."""
    rows = session.execute(
        select(TaskRun.id, TaskRun.task, TaskRun.model)
        .where(TaskRun.status == QUEUED, TaskRun.enqueued_at.is_(None))
        .order_by(TaskRun.id)
        .limit(limit)
    )
    return [RunRef(*row) for row in rows]


#: Rows one statement of a bulk change touches: well inside every database's limit on bound
#: parameters (PostgreSQL: 65,535; older SQLite: 999 per statement, hence chunks of 500 in IN lists).
BATCH = 5000


def mark_enqueued(session: Session, run_ids: Iterable[int]) -> None:
    now = utcnow()
    for chunk in chunks(list(run_ids)):
        session.execute(update(TaskRun).where(TaskRun.id.in_(chunk)).values(enqueued_at=now))


def requeue_runs(session: Session, *, statuses: Sequence[str], task: str | None = None,
                 model: str | None = None, older_than: dt.datetime | None = None) -> list[int]:
    """Put runs in ``statuses`` back to ``queued`` (unsent) so they are sent again; returns their ids.

    Any number of runs: they are found a :data:`BATCH` at a time in id order (keyset, not OFFSET) and
    each batch is changed with id lists of a bounded size."""
    query = select(TaskRun.id).where(TaskRun.status.in_(statuses)).order_by(TaskRun.id).limit(BATCH)
    if task:
        query = query.where(TaskRun.task == task)
    if model is not None:
        query = query.where(TaskRun.model == model)
    if older_than is not None:
        query = query.where(func.coalesce(TaskRun.started_at, TaskRun.enqueued_at, TaskRun.queued_at) < older_than)
    out: list[int] = []
    last = 0
    now = utcnow()
    while True:
        ids = list(session.scalars(query.where(TaskRun.id > last)))
        if not ids:
            return out
        for chunk in chunks(ids):
            session.execute(
                update(TaskRun).where(TaskRun.id.in_(chunk))
                .values(status=QUEUED, enqueued_at=None, queued_at=now, error=None, retry_pending=False)
            )
            # A rejected image is re-examined from scratch.
            image_ids = select(TaskRun.image_id).where(TaskRun.id.in_(chunk))
            session.execute(update(Image).where(Image.id.in_(image_ids), Image.rejected_reason.is_not(None))
                            .values(rejected_reason=None))
        out.extend(ids)
        last = ids[-1]


def ensure_runs(session: Session, task: str, model: str) -> list[int]:
    """Create the (``task``, ``model``) run, queued and unsent, for every image that is not rejected
    and has none (a newly configured classifier, a task added to DARKROOM_TASKS); returns the new
    runs' ids. Images that already have the run keep it, whatever its state.

    One ``INSERT ... SELECT`` of the images without the run per :data:`BATCH` images (by id range):
    the database does the work, and no statement grows with the store."""
    top = session.scalar(select(func.max(Image.id))) or 0
    now = utcnow()
    created: list[int] = []
    for start in range(0, top, BATCH):
        in_range = (Image.id > start, Image.id <= start + BATCH)
        # The batch's images that have the run, as a set the database hashes once (an anti-join it
        # plans well even before the tables' statistics exist, e.g. right after a bulk load).
        have = select(TaskRun.image_id).where(TaskRun.task == task, TaskRun.model == model,
                                              TaskRun.image_id > start, TaskRun.image_id <= start + BATCH)
        rows = (select(Image.id, literal(task), literal(model), literal(QUEUED), literal(now), literal(0),
                       literal(False))
                .where(*in_range, Image.rejected_reason.is_(None), Image.id.not_in(have)))
        statement = insert(TaskRun).from_select(
            ["image_id", "task", "model", "status", "queued_at", "attempts", "retry_pending"], rows
        ).returning(TaskRun.id)
        created.extend(session.scalars(statement))
    return sorted(created)


@dataclasses.dataclass(frozen=True)
class Rerun:
    created: list[int]
    requeued: list[int]


def rerun(session: Session, task: str, model: str, *, failed_only: bool = False) -> Rerun:
    """Do (``task``, ``model``) again over the store: requeue its failed runs, and unless
    ``failed_only`` also its done runs and create it for every image that lacks it (see
    :func:`ensure_runs`). Runs still queued or running, and rejected images, are left alone.
    Every run touched is left unsent: send them with :func:`unsent_runs` / :func:`mark_enqueued`."""
    created = [] if failed_only else ensure_runs(session, task, model)
    statuses = (FAILED,) if failed_only else (DONE, FAILED)
    return Rerun(created=created, requeued=requeue_runs(session, statuses=statuses, task=task, model=model))


@dataclasses.dataclass(frozen=True)
class Claim:
    run_id: int
    image_id: int
    sha256: str
    task: str
    model: str
    attempts: int


def claim_run(session: Session, run_id: int, worker: str,
              holder_alive: Callable[[str], bool] = lambda _holder: False) -> Claim | None:
    """Mark a run ``running``; ``None`` when there is nothing to do.

    Nothing to do: the run is unknown, finished, or ``running`` in a process that is still alive
    (``holder_alive(run.worker)``), e.g. because another worker took it into its batch. A run whose
    holder died is taken over: that is how work comes back after a worker is killed.
    """
    claims = claim_runs(session, [run_id], worker, holder_alive)
    return claims[0] if claims else None


def claim_runs(session: Session, run_ids: Sequence[int], worker: str,
               holder_alive: Callable[[str], bool] = lambda _holder: False) -> list[Claim]:
    """:func:`claim_run` for several runs at once (one message's group): the claims of those that
    had something to do, in the order of ``run_ids``."""
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return []
    query = select(TaskRun).where(TaskRun.id.in_(ids))
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    runs = {run.id: run for run in session.scalars(query)}
    return _take(session, [runs[i] for i in ids if i in runs and _claimable(runs[i], holder_alive)], worker)


def may_claim(session: Session, run_id: int, holder_alive: Callable[[str], bool] = lambda _holder: False) -> bool:
    """Whether :func:`claim_run` could take the run now: a read without locks, so that the many
    messages of runs another process already took into its batch are skipped cheaply. (The
    claim itself checks again, under the lock.)"""
    return bool(claimable(session, [run_id], holder_alive))


def claimable(session: Session, run_ids: Sequence[int],
              holder_alive: Callable[[str], bool] = lambda _holder: False) -> list[int]:
    """Those of ``run_ids`` that :func:`claim_runs` could take now (a read without locks; see
    :func:`may_claim`), in their order."""
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return []
    rows = session.execute(select(TaskRun.id, TaskRun.status, TaskRun.worker).where(TaskRun.id.in_(ids)))
    ok = {run_id for run_id, status, holder in rows if _claimable_state(status, holder, holder_alive)}
    return [i for i in ids if i in ok]


def claim_batch(session: Session, *, task: str, model: str, worker: str, limit: int, exclude: int | Iterable[int],
                holder_alive: Callable[[str], bool] = lambda _holder: False) -> list[Claim]:
    """Claim up to ``limit`` more pending runs of the same task and model, oldest first, so one
    forward pass serves them all. Their own messages, when they arrive, find them taken and skip."""
    if limit <= 0:
        return []
    return _claim_others(session, (TaskRun.task == task, TaskRun.model == model), worker=worker, exclude=exclude,
                         holder_alive=holder_alive, limit=limit)


def claim_companions(session: Session, *, image_id: int, tasks: Sequence[str], worker: str,
                     exclude: int | Iterable[int], holder_alive: Callable[[str], bool] = lambda _holder: False) -> list[Claim]:
    """Claim the image's pending runs of ``tasks`` (other than ``exclude``), so that one process
    does them with the run it holds: the photo decoded once, the results stored together. Their
    own messages, when they arrive, find them taken and skip."""
    if not tasks:
        return []
    return _claim_others(session, (TaskRun.image_id == image_id, TaskRun.task.in_(list(tasks))), worker=worker,
                         exclude=exclude, holder_alive=holder_alive)


def _claim_others(session: Session, where: tuple, *, worker: str, exclude: int | Iterable[int],
                  holder_alive: Callable[[str], bool], limit: int | None = None) -> list[Claim]:
    """Claim pending runs matching ``where`` that are not ``exclude`` (the runs a process already
    holds) and not awaiting their retry message: up to ``limit``, orphans ('running' in a dead
    process) first, then the oldest. On PostgreSQL rows another process has locked are skipped."""
    excluded = [exclude] if isinstance(exclude, int) else list(exclude)
    base = select(TaskRun).where(*where, TaskRun.id.not_in(excluded), TaskRun.retry_pending.is_(False))
    runs: list[TaskRun] = []
    # Orphans ('running' in a dead process) first, then the oldest queued: each an index range
    # (task, model, status, id) read in id order up to the limit, never a sort of every pending run.
    for status in (RUNNING, QUEUED):
        query = base.where(TaskRun.status == status).order_by(TaskRun.id)
        if limit is not None:
            room = limit - len(runs)
            if room <= 0:
                break
            query = query.limit(room * 4 if status == RUNNING else room)  # running: room for live holders
        if session.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        runs += [run for run in session.scalars(query) if _claimable(run, holder_alive)]
    return _take(session, runs if limit is None else runs[:limit], worker)


#: How a run waiting for its retry message says why in ``error`` (the flag is ``retry_pending``).
RETRYING = "retrying: "


def _claimable(run: TaskRun, holder_alive: Callable[[str], bool]) -> bool:
    return _claimable_state(run.status, run.worker, holder_alive)


def _claimable_state(status: str, holder: str | None, holder_alive: Callable[[str], bool]) -> bool:
    if status == QUEUED:
        return True
    return status == RUNNING and not (holder and holder_alive(holder))


def _take(session: Session, runs: Sequence[TaskRun], worker: str) -> list[Claim]:
    if not runs:
        return []
    shas = dict(session.execute(select(Image.id, Image.sha256).where(Image.id.in_({run.image_id for run in runs}))).all())
    now = utcnow()
    claims = []
    for run in runs:
        run.status, run.started_at, run.worker, run.attempts = RUNNING, now, worker, run.attempts + 1
        run.retry_pending = False
        claims.append(Claim(run.id, run.image_id, shas[run.image_id], run.task, run.model, run.attempts))
    return claims


def finish_run(session: Session, run_id: int, *, status: str, error: str | None = None) -> None:
    finish_runs(session, [run_id], status=status, error=error)


def finish_runs(session: Session, run_ids: Sequence[int], *, status: str, error: str | None = None) -> None:
    """Record runs' end (unknown ids are ignored). A ``rejected`` run rejects its image, and closes
    the image's other pending runs too: the content is unusable for every task."""
    ids = list(run_ids)
    if not ids:
        return
    now = utcnow()
    for run in session.scalars(select(TaskRun).where(TaskRun.id.in_(ids))).all():
        run.status, run.error, run.finished_at, run.retry_pending = status, error, now, False
        if run.started_at is not None:
            started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=dt.timezone.utc)
            run.duration_ms = (now - started).total_seconds() * 1000.0
        if status == REJECTED:
            image = session.get(Image, run.image_id)
            image.rejected_reason = error
            session.execute(
                update(TaskRun)
                .where(TaskRun.image_id == run.image_id, TaskRun.status == QUEUED, TaskRun.id.not_in(ids))
                .values(status=REJECTED, error=error, finished_at=now)
            )


def release_runs(session: Session, run_ids: Iterable[int]) -> list[RunRef]:
    """Give claimed runs back (``queued``, to be sent again); returns what must be sent."""
    ids = list(run_ids)
    if not ids:
        return []
    session.execute(update(TaskRun).where(TaskRun.id.in_(ids), TaskRun.status == RUNNING)
                    .values(status=QUEUED, enqueued_at=None))
    rows = session.execute(select(TaskRun.id, TaskRun.task, TaskRun.model)
                           .where(TaskRun.id.in_(ids), TaskRun.status == QUEUED))
    return [RunRef(*row) for row in rows]


def running_holders(session: Session, *, after: str | None = None, limit: int = 1000) -> list[str]:
    """The distinct holders of ``running`` runs, in order, up to ``limit`` after ``after`` (keyset
    pages). The running runs are found through the (status, ...) indexes: they are what live workers
    hold (processes x batch), and those of the dead until they are taken over — never the store."""
    query = (select(TaskRun.worker).where(TaskRun.status == RUNNING, TaskRun.worker.is_not(None))
             .group_by(TaskRun.worker).order_by(TaskRun.worker).limit(limit))
    if after is not None:
        query = query.where(TaskRun.worker > after)
    return list(session.scalars(query))


def release_holders(session: Session, holders: Sequence[str]) -> int:
    """Give back every ``running`` run of ``holders`` (dead processes): ``queued`` and unsent, for the
    producer to send again. A :data:`BATCH` of ids at a time (keyset), changed in bounded chunks;
    returns how many."""
    released = 0
    for some in chunks(list(holders), 100):
        query = (select(TaskRun.id).where(TaskRun.status == RUNNING, TaskRun.worker.in_(some))
                 .order_by(TaskRun.id).limit(BATCH))
        last = 0
        while True:
            ids = list(session.scalars(query.where(TaskRun.id > last)))
            if not ids:
                break
            for chunk in chunks(ids):
                session.execute(update(TaskRun).where(TaskRun.id.in_(chunk), TaskRun.status == RUNNING)
                                .values(status=QUEUED, enqueued_at=None))
            released += len(ids)
            last = ids[-1]
    return released


def orphaned_runs(session: Session, holder_alive: Callable[[str], bool]) -> list[int]:
    """Runs marked ``running`` whose holding process is known to be dead (each holder asked once)."""
    dead: list[str] = []
    after = None
    while holders := running_holders(session, after=after):
        dead += [holder for holder in holders if not holder_alive(holder)]
        after = holders[-1]
    if not dead:
        return []
    out: list[int] = []
    for some in chunks(dead, 100):
        out += session.scalars(select(TaskRun.id).where(TaskRun.status == RUNNING, TaskRun.worker.in_(some)))
    return sorted(out)


def note_retry(session: Session, run_id: int, error: str) -> None:
    """A run will be tried again: back to ``queued`` with the reason kept for `status`."""
    session.execute(update(TaskRun).where(TaskRun.id == run_id, TaskRun.status.in_(PENDING_STATES))
                    .values(status=QUEUED, error=f"{RETRYING}{error}", retry_pending=True))



def image_status(image: Image) -> str:
    """An image's state, derived from its task runs."""
    return state_of(image.rejected_reason, [run.status for run in image.runs])


def state_of(rejected_reason: str | None, statuses: Iterable[str]) -> str:
    """The state of an image rejected for ``rejected_reason`` (or not: None) whose runs are in
    ``statuses``: rejected, else running, queued or failed if any run is, else done (an image
    with no run has nothing left to do: its runs are written with it, so this is one registered
    while no task was configured)."""
    if rejected_reason is not None:
        return REJECTED
    states = set(statuses)
    for state in (RUNNING, QUEUED):
        if state in states:
            return state
    return FAILED if states - {DONE} else DONE


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.status.in_(PENDING_STATES))) or 0


# --- counts: read from ledger_counts, kept by triggers and folded here ---------------------------
#
# Counting a million images' states on every `status` (and every health check) would read every
# run. Instead the database keeps counts as it goes (migration 0007): each change of a run adds a
# count row for the run's (task, model, status) and marks its image dirty, in the transaction that
# makes the change. The image counts are brought up to date by fold_counts, which recounts the
# dirty images from their runs — one process at a time, after their changes committed, so
# concurrent writers cannot make it miss a change — and sums the count rows up. The registrar folds
# every few seconds as it registers and when it is closed, the producer on every reconciler turn,
# `status` before it reads.

#: Dirty images recounted, and count rows summed, per statement of a fold.
FOLD_CHUNK = 5000
#: The PostgreSQL advisory lock that makes one fold at a time.
FOLD_LOCK = 0x6461726B  # "dark"


def fold_counts(session: Session, *, limit: int = FOLD_CHUNK) -> bool:
    """Recount the images of up to ``limit`` dirty marks (the oldest) and sum up to 4 × ``limit``
    count rows; returns whether there is more to fold. The caller commits.

    Marks are taken by a range of their primary key, never by a sort or a join that a planner
    without statistics (right after a bulk load) could turn into a scan of every mark per chunk."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(FOLD_LOCK)))
    low = session.scalar(select(func.min(DirtyImage.id)))
    marks: list[int] = []
    more = False
    if low is not None:
        in_range = (DirtyImage.id >= low, DirtyImage.id < low + limit)
        marks = list(session.scalars(delete(DirtyImage).where(*in_range).returning(DirtyImage.image_id)))
        more = session.scalar(select(DirtyImage.id).where(DirtyImage.id >= low + limit).limit(1)) is not None
    deltas: Counter[str] = Counter()
    for chunk in chunks(sorted(set(marks))):
        images = {i: (reason, counted) for i, reason, counted in session.execute(
            select(Image.id, Image.rejected_reason, Image.counted_state).where(Image.id.in_(chunk)))}
        statuses: dict[int, list[str]] = {}
        for image_id, status in session.execute(
                select(TaskRun.image_id, TaskRun.status).where(TaskRun.image_id.in_(list(images)))):
            statuses.setdefault(image_id, []).append(status)
        moved: dict[str, list[int]] = {}
        for image_id, (reason, counted) in images.items():
            state = state_of(reason, statuses.get(image_id, ()))
            if state != counted:
                moved.setdefault(state, []).append(image_id)
                deltas[state] += 1
                if counted is not None:
                    deltas[counted] -= 1
        for state, ids in moved.items():
            session.execute(update(Image).where(Image.id.in_(ids)).values(counted_state=state))
    session.add_all([LedgerCount(kind="image", task="", model="", status=state, n=n)
                     for state, n in deltas.items() if n])
    session.flush()
    return _sum_count_rows(session, limit=limit * 4) or more


def _sum_count_rows(session: Session, *, limit: int) -> bool:
    """Replace the oldest count rows (a range of ``limit`` ids) by one row per count, when there
    are enough of them to be worth it; returns whether more rows are beyond that range."""
    low = session.scalar(select(func.min(LedgerCount.id)))
    if low is None:
        return False
    in_range = (LedgerCount.id >= low, LedgerCount.id < low + limit)
    found = session.scalar(select(func.count()).select_from(LedgerCount).where(*in_range)) or 0
    more = session.scalar(select(LedgerCount.id).where(LedgerCount.id >= low + limit).limit(1)) is not None
    if found < 64 and not more:
        return False
    rows = session.execute(delete(LedgerCount).where(*in_range).returning(
        LedgerCount.kind, LedgerCount.task, LedgerCount.model, LedgerCount.status, LedgerCount.n))
    sums: Counter[tuple[str, str, str, str]] = Counter()
    for kind, task, model, status, n in rows:
        sums[(kind, task, model, status)] += n
    session.add_all([LedgerCount(kind=kind, task=task, model=model, status=status, n=n)
                     for (kind, task, model, status), n in sums.items() if n])
    session.flush()
    return more


def fold_pending(factory: sessionmaker[Session], *, seconds: float | None = None) -> int:
    """Fold until the counts are up to date (a transaction per chunk), or for about ``seconds``;
    returns how many dirty marks are left (0: up to date)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        with transaction(factory) as s:
            more = fold_counts(s)
        if not more:
            return 0
        if deadline is not None and time.monotonic() > deadline:
            with factory() as s:
                return uncounted(s)


def uncounted(session: Session) -> int:
    """How many dirty marks wait to be folded (images whose state may have changed)."""
    return session.scalar(select(func.count()).select_from(DirtyImage)) or 0


def run_counts(session: Session) -> dict[tuple[str, str], int]:
    """(task, status) -> number of runs, from the counts the triggers keep (exact at once)."""
    total = func.sum(LedgerCount.n)
    rows = session.execute(select(LedgerCount.task, LedgerCount.status, total).where(LedgerCount.kind == "run")
                           .group_by(LedgerCount.task, LedgerCount.status).having(total != 0))
    return {(task, status): int(n) for task, status, n in rows}


def image_counts(session: Session) -> Counter[str]:
    """How many images are in each state (:func:`image_status`), as of the last fold: fold first
    (:func:`fold_pending`) for counts that include the latest changes."""
    total = func.sum(LedgerCount.n)
    rows = session.execute(select(LedgerCount.status, total).where(LedgerCount.kind == "image")
                           .group_by(LedgerCount.status).having(total != 0))
    return Counter({str(status): int(n) for status, n in rows})


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str | None
    sha256: str | None
    task: str | None
    status: str
    attempts: int
    reason: str


def problems(session: Session, limit: int | None = None) -> list[Problem]:
    """Failed and rejected runs (newest first), then refused files, then images rejected before any
    run: at most ``limit`` of them (None: every one). Each part is read with a ``LIMIT`` through its
    index, so a few newest problems cost the same in a store of any size."""
    out: list[Problem] = []
    first_path = (
        select(func.min(SourceFile.path)).where(SourceFile.image_id == Image.id).correlate(Image).scalar_subquery()
    )
    parts = (
        select(first_path, Image.sha256, TaskRun.task, TaskRun.status, TaskRun.attempts, TaskRun.error)
        .join(Image, Image.id == TaskRun.image_id)
        .where(TaskRun.status.in_((FAILED, REJECTED)))
        .order_by(TaskRun.finished_at.desc(), TaskRun.id.desc()),
        select(SourceFile.path, literal(None), literal(None), literal(REJECTED), literal(0), SourceFile.refused_reason)
        .where(SourceFile.refused_reason.is_not(None)).order_by(SourceFile.id.desc()),
        # Images rejected before any run existed (found bad by the producer).
        select(first_path, Image.sha256, literal(None), literal(REJECTED), literal(0), Image.rejected_reason)
        .where(Image.rejected_reason.is_not(None), ~Image.runs.any()).order_by(Image.id.desc()),
    )
    for query in parts:
        room = None if limit is None else limit - len(out)
        if room is not None and room <= 0:
            break
        rows = session.execute(query if room is None else query.limit(room))
        out.extend(Problem(p, s, t, st, a or 0, e or "") for p, s, t, st, a, e in rows)
    return out




def first_path(session: Session, image_id: int) -> str | None:
    """The file a person knows the image by: the first of its paths (one indexed look-up)."""
    return session.scalar(select(func.min(SourceFile.path)).where(SourceFile.image_id == image_id))
