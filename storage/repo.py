"""Everything Darkroom reads and writes in SQL, as functions over a session.

The caller owns the transaction (see :func:`storage.db.transaction`); these functions never commit.
Writes are idempotent: registering a path twice, or completing a run twice, leaves one row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import case, delete, func, insert, not_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from storage.models import (
    DONE,
    FAILED,
    PENDING_STATES,
    QUEUED,
    REJECTED,
    RUNNING,
    Artifact,
    Face,
    Image,
    Label,
    Normalization,
    SourceFile,
    TaskRun,
    utcnow,
)

#: Which result rows and artifacts each task owns (replaced as a whole when the task completes).
TASK_ARTIFACT_KINDS = {"faces": ("faces_boxed", "face_crop"), "augment": ("augmented", "contact_sheet")}


@dataclasses.dataclass(frozen=True)
class Registration:
    image_id: int | None
    new_image: bool
    run_ids: list[int]


def register_file(
    session: Session,
    *,
    path: str,
    size_bytes: int,
    mtime_ns: int,
    sha256: str,
    fmt: str | None,
    width: int | None,
    height: int | None,
    rejected_reason: str | None,
    work: Sequence[tuple[str, str]],
) -> Registration:
    """Record that ``path`` holds the content ``sha256`` and create the task runs it still needs.

    Args:
        work: (task, model) pairs to run on the image; pairs that already have a run are skipped, so a
            duplicate adds no work while a newly configured model adds only its own runs.
    """
    image, new_image = _get_or_create_image(
        session,
        sha256=sha256,
        size_bytes=size_bytes,
        fmt=fmt,
        width=width,
        height=height,
        rejected_reason=rejected_reason,
    )
    source = session.scalars(select(SourceFile).where(SourceFile.path == path)).one_or_none()
    if source is None:
        session.add(SourceFile(path=path, image_id=image.id, size_bytes=size_bytes, mtime_ns=mtime_ns))
    else:  # the same name, possibly new content
        source.image_id, source.size_bytes, source.mtime_ns, source.refused_reason = image.id, size_bytes, mtime_ns, None
    run_ids: list[int] = []
    if image.rejected_reason is None:
        have = set(session.execute(select(TaskRun.task, TaskRun.model).where(TaskRun.image_id == image.id)).all())
        now = utcnow()
        runs = [TaskRun(image_id=image.id, task=task, model=model, status=QUEUED, queued_at=now)
                for task, model in work if (task, model) not in have]
        session.add_all(runs)
        session.flush()  # one INSERT for all of them, which gives their ids
        run_ids = [run.id for run in runs]
    session.flush()
    return Registration(image_id=image.id, new_image=new_image, run_ids=run_ids)


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """One file for :func:`register_files`: the arguments of :func:`register_file`."""

    path: str
    size_bytes: int
    mtime_ns: int
    sha256: str
    fmt: str | None
    width: int | None
    height: int | None
    rejected_reason: str | None


def register_files(session: Session, files: Sequence[FileRecord], work: Sequence[tuple[str, str]]) -> list[Registration]:
    """:func:`register_file` for many files at once (a bulk ingest's chunk), in a few statements
    instead of several per file; the same outcome as registering them one after another.

    Unlike :func:`register_file`, a content another producer inserts at the same moment makes
    this fail (IntegrityError, the transaction to be rolled back): callers register such a chunk
    file by file instead.
    """
    files = list(files)
    images: dict[str, Image] = {}
    for chunk in _chunks(sorted({f.sha256 for f in files})):
        images.update({img.sha256: img for img in session.scalars(select(Image).where(Image.sha256.in_(chunk)))})
    created: set[str] = set()
    for f in files:
        if f.sha256 not in images:
            images[f.sha256] = Image(sha256=f.sha256, size_bytes=f.size_bytes, format=f.fmt, width=f.width,
                                     height=f.height, rejected_reason=f.rejected_reason)
            created.add(f.sha256)
    session.add_all([images[sha] for sha in sorted(created)])
    session.flush()
    sources: dict[str, SourceFile] = {}
    for chunk in _chunks(sorted({f.path for f in files})):
        sources.update({src.path: src for src in session.scalars(select(SourceFile).where(SourceFile.path.in_(chunk)))})
    for f in files:
        image = images[f.sha256]
        source = sources.get(f.path)
        if source is None:
            sources[f.path] = source = SourceFile(path=f.path, image_id=image.id, size_bytes=f.size_bytes,
                                                  mtime_ns=f.mtime_ns)
            session.add(source)
        else:  # the same name, possibly new content
            source.image_id, source.size_bytes, source.mtime_ns, source.refused_reason = (
                image.id, f.size_bytes, f.mtime_ns, None)
    usable = sorted({img.id for img in images.values() if img.rejected_reason is None})
    have: set[tuple[int, str, str]] = set()
    for chunk in _chunks(usable):
        have.update(session.execute(select(TaskRun.image_id, TaskRun.task, TaskRun.model)
                                    .where(TaskRun.image_id.in_(chunk))).tuples())
    now = utcnow()
    planned: list[list[TaskRun]] = []
    for f in files:
        image = images[f.sha256]
        runs = []
        if image.rejected_reason is None:
            for task, model in work:
                if (image.id, task, model) not in have:
                    have.add((image.id, task, model))
                    runs.append(TaskRun(image_id=image.id, task=task, model=model, status=QUEUED, queued_at=now))
        planned.append(runs)
    session.add_all([run for runs in planned for run in runs])
    session.flush()
    out, first_seen = [], set()
    for f, runs in zip(files, planned):
        new_image = f.sha256 in created and f.sha256 not in first_seen
        first_seen.add(f.sha256)
        out.append(Registration(image_id=images[f.sha256].id, new_image=new_image, run_ids=[r.id for r in runs]))
    return out


def _chunks(values: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    """``values`` in slices small enough for every database's limit on bound parameters."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _get_or_create_image(session: Session, *, sha256: str, **fields) -> tuple[Image, bool]:
    image = session.scalars(select(Image).where(Image.sha256 == sha256)).one_or_none()
    if image is not None:
        return image, False
    try:
        with session.begin_nested():
            image = Image(
                sha256=sha256,
                size_bytes=fields["size_bytes"],
                format=fields["fmt"],
                width=fields["width"],
                height=fields["height"],
                rejected_reason=fields["rejected_reason"],
            )
            session.add(image)
        return image, True
    except IntegrityError:  # another producer registered the same content a moment ago
        return session.scalars(select(Image).where(Image.sha256 == sha256)).one(), False


def refuse_file(session: Session, *, path: str, reason: str, size_bytes: int | None = None,
                mtime_ns: int | None = None) -> None:
    """Record a path that will never become an image (e.g. a symlink leading out of the inbox)."""
    source = session.scalars(select(SourceFile).where(SourceFile.path == path)).one_or_none()
    if source is None:
        session.add(SourceFile(path=path, refused_reason=reason, size_bytes=size_bytes, mtime_ns=mtime_ns))
    else:
        source.image_id, source.refused_reason = None, reason
        source.size_bytes, source.mtime_ns = size_bytes, mtime_ns
    session.flush()


def known_files(session: Session) -> dict[str, tuple[int | None, int | None]]:
    """path -> (size, mtime_ns) for every recorded file: the producer's start-up diff."""
    return {p: (s, m) for p, s, m in session.execute(select(SourceFile.path, SourceFile.size_bytes, SourceFile.mtime_ns))}


def file_signatures(session: Session, paths: Sequence[str]) -> dict[str, tuple[int | None, int | None]]:
    """path -> (size, mtime_ns) for those of ``paths`` that are recorded."""
    out: dict[str, tuple[int | None, int | None]] = {}
    for chunk in _chunks(list(paths)):
        rows = session.execute(select(SourceFile.path, SourceFile.size_bytes, SourceFile.mtime_ns)
                               .where(SourceFile.path.in_(chunk)))
        out.update({p: (size, mtime) for p, size, mtime in rows})
    return out


# --- the run ledger ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunRef:
    """What a message needs to be sent for a run."""

    id: int
    task: str
    model: str


def unsent_runs(session: Session, limit: int = 1000) -> list[RunRef]:
    """Queued runs whose message has not been handed to the broker yet."""
    rows = session.execute(
        select(TaskRun.id, TaskRun.task, TaskRun.model)
        .where(TaskRun.status == QUEUED, TaskRun.enqueued_at.is_(None))
        .order_by(TaskRun.id)
        .limit(limit)
    )
    return [RunRef(*row) for row in rows]


def mark_enqueued(session: Session, run_ids: Iterable[int]) -> None:
    ids = list(run_ids)
    if ids:
        session.execute(update(TaskRun).where(TaskRun.id.in_(ids)).values(enqueued_at=utcnow()))


def requeue_runs(session: Session, *, statuses: Sequence[str], task: str | None = None,
                 model: str | None = None, older_than: dt.datetime | None = None) -> list[int]:
    """Put runs in ``statuses`` back to ``queued`` (unsent) so they are sent again; returns their ids."""
    query = select(TaskRun.id).where(TaskRun.status.in_(statuses)).order_by(TaskRun.id)
    if task:
        query = query.where(TaskRun.task == task)
    if model is not None:
        query = query.where(TaskRun.model == model)
    if older_than is not None:
        query = query.where(func.coalesce(TaskRun.started_at, TaskRun.enqueued_at, TaskRun.queued_at) < older_than)
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(TaskRun).where(TaskRun.id.in_(ids))
            .values(status=QUEUED, enqueued_at=None, queued_at=utcnow(), error=None)
        )
        # A rejected image is re-examined from scratch.
        image_ids = select(TaskRun.image_id).where(TaskRun.id.in_(ids))
        session.execute(update(Image).where(Image.id.in_(image_ids)).values(rejected_reason=None))
    return ids


def ensure_runs(session: Session, task: str, model: str) -> list[int]:
    """Create the (``task``, ``model``) run, queued and unsent, for every image that is not rejected
    and has none (a newly configured classifier, a task added to DARKROOM_TASKS); returns the new
    runs' ids. Images that already have the run keep it, whatever its state."""
    have = select(TaskRun.image_id).where(TaskRun.task == task, TaskRun.model == model)
    image_ids = list(session.scalars(
        select(Image.id).where(Image.rejected_reason.is_(None), Image.id.not_in(have)).order_by(Image.id)
    ))
    now = utcnow()
    runs = [TaskRun(image_id=i, task=task, model=model, status=QUEUED, queued_at=now) for i in image_ids]
    session.add_all(runs)
    session.flush()
    return [run.id for run in runs]


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
    query = (
        select(TaskRun)
        .where(*where, TaskRun.id.not_in(excluded), TaskRun.status.in_(PENDING_STATES), _not_awaiting_retry())
        .order_by(TaskRun.status.desc(), TaskRun.id)  # 'running' (orphans) before 'queued'
    )
    if limit is not None:
        query = query.limit(limit * 4)  # room for runs whose holder is alive
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    runs = [run for run in session.scalars(query) if _claimable(run, holder_alive)]
    return _take(session, runs if limit is None else runs[:limit], worker)


#: The error a run carries while its retry message is on its way (see :func:`note_retry`).
RETRYING = "retrying: "


def _not_awaiting_retry():
    """Runs another process may take into its batch or group: not those whose retry message is on
    its way, which belong to that message (it may take them over from any holder)."""
    return or_(TaskRun.error.is_(None), not_(TaskRun.error.startswith(RETRYING)))


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
        run.status, run.error, run.finished_at = status, error, now
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


def orphaned_runs(session: Session, holder_alive: Callable[[str], bool]) -> list[int]:
    """Runs marked ``running`` whose holding process is known to be dead."""
    rows = session.execute(select(TaskRun.id, TaskRun.worker).where(TaskRun.status == RUNNING))
    return [run_id for run_id, worker in rows if worker and not holder_alive(worker)]


def note_retry(session: Session, run_id: int, error: str) -> None:
    """A run will be tried again: back to ``queued`` with the reason kept for `status`."""
    session.execute(update(TaskRun).where(TaskRun.id == run_id, TaskRun.status.in_(PENDING_STATES))
                    .values(status=QUEUED, error=f"{RETRYING}{error}"))


# --- results (each replaces what the task wrote before: a redelivery leaves one result) -----------


def save_normalization(session: Session, image_id: int, reports: Sequence[dict[str, Any]]) -> None:
    session.execute(delete(Normalization).where(Normalization.image_id == image_id))
    for report in reports:
        session.add(Normalization(
            image_id=image_id, mode=report["mode"], per_channel=bool(report["per_channel"]),
            dtype=report["dtype"], report=report,
        ))


def save_labels(session: Session, image_id: int, model: str, labels: Sequence[dict[str, Any]]) -> None:
    save_many_labels(session, model, {image_id: labels})


def save_many_labels(session: Session, model: str, labels: dict[int, Sequence[dict[str, Any]]]) -> None:
    """Replace ``model``'s labels of each image (image id -> its labels), in two statements: a
    classify batch writes all its images at once."""
    if not labels:
        return
    for chunk in _chunks(sorted(labels)):
        session.execute(delete(Label).where(Label.model == model, Label.image_id.in_(chunk)))
    rows = [{"image_id": image_id, "model": model, "rank": lab["rank"], "class_id": lab["class_id"],
             "label": lab["label"], "score": float(lab["score"])}
            for image_id, labs in labels.items() for lab in labs]
    if rows:
        session.execute(insert(Label), rows)


def save_faces(session: Session, image_id: int, model: str, faces: Sequence[dict[str, Any]]) -> None:
    session.execute(delete(Face).where(Face.image_id == image_id, Face.model == model))
    for idx, face in enumerate(faces):
        x, y, w, h = face["box"]
        session.add(Face(image_id=image_id, model=model, idx=idx, x=x, y=y, w=w, h=h,
                         confidence=float(face["confidence"]), keypoints=face["keypoints"]))


@dataclasses.dataclass(frozen=True)
class ArtifactData:
    kind: str
    idx: int
    mime: str
    width: int
    height: int
    data: bytes


def save_artifacts(session: Session, image_id: int, task: str, artifacts: Sequence[ArtifactData]) -> None:
    kinds = TASK_ARTIFACT_KINDS[task]
    session.execute(delete(Artifact).where(Artifact.image_id == image_id, Artifact.kind.in_(kinds)))
    for art in artifacts:
        if art.kind not in kinds:
            raise ValueError(f"task {task} cannot write artifacts of kind {art.kind}")
        session.add(Artifact(image_id=image_id, **dataclasses.asdict(art)))


# --- reading -------------------------------------------------------------------------------------


def image_status(image: Image) -> str:
    """An image's state, derived from its task runs."""
    if image.rejected_reason is not None:
        return REJECTED
    states = {run.status for run in image.runs}
    if not states:
        return QUEUED
    if RUNNING in states:
        return RUNNING
    if QUEUED in states:
        return QUEUED
    if states == {DONE}:
        return DONE
    return FAILED


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.status.in_(PENDING_STATES))) or 0


def run_counts(session: Session) -> dict[tuple[str, str], int]:
    """(task, status) -> number of runs."""
    rows = session.execute(select(TaskRun.task, TaskRun.status, func.count()).group_by(TaskRun.task, TaskRun.status))
    return {(task, status): n for task, status, n in rows}


def image_counts(session: Session) -> Counter[str]:
    """How many images are in each state (:func:`image_status`), counted by the database: one
    aggregate query, whatever the size of the archive."""
    def has(status: str):
        return func.sum(case((TaskRun.status == status, 1), else_=0)) > 0

    state = case(
        (Image.rejected_reason.is_not(None), REJECTED),
        (func.count(TaskRun.id) == 0, QUEUED),
        (has(RUNNING), RUNNING),
        (has(QUEUED), QUEUED),
        (func.sum(case((TaskRun.status != DONE, 1), else_=0)) == 0, DONE),
        else_=FAILED,
    ).label("state")
    per_image = (select(state).select_from(Image).outerjoin(TaskRun, TaskRun.image_id == Image.id)
                 .group_by(Image.id, Image.rejected_reason).subquery())
    rows = session.execute(select(per_image.c.state, func.count()).group_by(per_image.c.state))
    return Counter({str(name): int(n) for name, n in rows})


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str | None
    sha256: str | None
    task: str | None
    status: str
    attempts: int
    reason: str


def problems(session: Session, limit: int | None = None) -> list[Problem]:
    """Every failed or rejected run and every refused file, with its reason: newest first."""
    out: list[Problem] = []
    first_path = (
        select(func.min(SourceFile.path)).where(SourceFile.image_id == Image.id).correlate(Image).scalar_subquery()
    )
    rows = session.execute(
        select(first_path, Image.sha256, TaskRun.task, TaskRun.status, TaskRun.attempts, TaskRun.error)
        .join(Image, Image.id == TaskRun.image_id)
        .where(TaskRun.status.in_((FAILED, REJECTED)))
        .order_by(TaskRun.finished_at.desc())
    )
    out.extend(Problem(p, s, t, st, a, e or "") for p, s, t, st, a, e in rows)
    refused = session.execute(select(SourceFile.path, SourceFile.refused_reason).where(SourceFile.refused_reason.is_not(None)))
    out.extend(Problem(p, None, None, REJECTED, 0, r) for p, r in refused)
    # Images rejected before any run existed (found bad by the producer).
    rejected = session.execute(
        select(first_path, Image.sha256, Image.rejected_reason)
        .where(Image.rejected_reason.is_not(None), ~Image.runs.any())
    )
    out.extend(Problem(p, s, None, REJECTED, 0, r) for p, s, r in rejected)
    return out[:limit] if limit else out


def find_images(session: Session, selectors: Sequence[str] = ()) -> list[Image]:
    """Images by path (as recorded, or resolved), sha256 or a sha256 prefix of 8+ characters; all when empty."""
    query = select(Image).options(selectinload(Image.runs), selectinload(Image.files)).order_by(Image.id)
    if not selectors:
        return list(session.scalars(query))
    found: dict[int, Image] = {}
    for sel in selectors:
        conds = [SourceFile.path == sel]
        if len(sel) >= 8 and all(c in "0123456789abcdef" for c in sel.lower()):
            conds.append(Image.sha256.startswith(sel.lower()))
        matches = session.scalars(
            query.outerjoin(SourceFile, SourceFile.image_id == Image.id).where(conds[0] if len(conds) == 1 else conds[0] | conds[1])
        ).unique()
        for img in matches:
            found.setdefault(img.id, img)
    return sorted(found.values(), key=lambda img: img.id)


def image_results(session: Session, image: Image, *, primary_model: str | None = None) -> dict[str, Any]:
    """One image's results in the documented JSON shape (README: "Results JSON")."""
    paths = [f.path for f in image.files]
    norms = {(n.mode, n.per_channel): n.report for n in
             session.scalars(select(Normalization).where(Normalization.image_id == image.id))}
    labels_by_model: dict[str, list[dict[str, Any]]] = {}
    for lab in session.scalars(select(Label).where(Label.image_id == image.id).order_by(Label.model, Label.rank)):
        labels_by_model.setdefault(lab.model, []).append(
            {"rank": lab.rank, "class_id": lab.class_id, "label": lab.label, "score": lab.score})
    arts = session.execute(select(Artifact.kind, Artifact.idx).where(Artifact.image_id == image.id)).all()
    art_counts = Counter(kind for kind, _ in arts)
    crops = {idx for kind, idx in arts if kind == "face_crop"}
    # faces[i]["crop"]: the idx of the face's stored crop (artifact kind face_crop; the export's
    # face_crop-<idx>.jpg), or None when crops are not stored (DARKROOM_FACE_CROPS=false).
    faces = [
        {"box": [f.x, f.y, f.w, f.h], "confidence": f.confidence, "keypoints": f.keypoints, "model": f.model,
         "crop": f.idx if f.idx in crops else None}
        for f in session.scalars(select(Face).where(Face.image_id == image.id).order_by(Face.model, Face.idx))
    ]
    errors = {run.task: run.error for run in image.runs if run.status in (FAILED, REJECTED) and run.error}
    if image.rejected_reason and not errors:
        errors["image"] = image.rejected_reason
    if primary_model and primary_model in labels_by_model:
        labels = labels_by_model[primary_model]
    else:
        labels = next(iter(labels_by_model.values()), [])
    scale = norms.get(("scale", False))
    return {
        "path": paths[0] if paths else None,
        "paths": paths,
        "sha256": image.sha256,
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "size_bytes": image.size_bytes,
        "status": image_status(image),
        "tasks": {f"{r.task}:{r.model}" if r.model else r.task: r.status for r in image.runs},
        "normalize": _contract_normalize(scale) if scale else None,
        "normalizations": list(norms.values()),
        "labels": labels,
        "labels_by_model": labels_by_model,
        "faces": faces,
        "augmentations": art_counts.get("augmented", 0),
        "artifacts": dict(art_counts),
        "errors": errors,
    }


def _contract_normalize(report: dict[str, Any]) -> dict[str, Any]:
    before, after = report["before"], report["after"]
    return {
        "mode": report["mode"],
        "dtype": report["dtype"],
        "before": {"min": before["min"], "max": before["max"]},
        "after": {"min": after["min"], "max": after["max"]},
        "mean": after["mean"],
        "std": after["std"],
    }


def artifacts_for(session: Session, image_id: int) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.image_id == image_id).order_by(Artifact.kind, Artifact.idx)))
