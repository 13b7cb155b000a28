"""Reads for watching work finish, and for summing up what went wrong: the CLI's live feed
(`darkroom up`, `darkroom retry --wait`) and `darkroom status`'s grouped problems.

Every query here is bounded, so that polling it once a second costs the same over ten photos or a
million: rows are found by primary key ranges (``images.id``, ``files.id``), by lists of at most
``limit`` ids (primary keys, or ``task_runs.image_id``, the first column of its unique index, and
likewise for files, faces and labels), or by ``task_runs.status`` (indexed) with a ``LIMIT``.
``task_runs.finished_at`` has no index, so nothing here filters or sorts on it per poll.

How the feed finds photos that finished: a :class:`Watch` remembers the images it is waiting for —
those with work pending when it started, and every image registered since (found by id range) — and
each poll looks at a bounded window of them: the oldest ``limit`` (images finish roughly in the
order they arrive: the queues are FIFO) and ``limit`` more in turn, so any image that finishes out
of order is seen within a few polls. Files refused at registration are found by id range too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import (
    DONE,
    FAILED,
    PENDING_STATES,
    REJECTED,
    Face,
    Image,
    Label,
    SourceFile,
    TaskRun,
)

#: Ids looked at per query; also the most images a poll checks in each of its two windows.
LIMIT = 500
#: How far below the last id seen each poll looks again (ids committed out of order).
OVERLAP = 100
#: The most images pending at start that a :class:`Watch` takes on (the rest still finish; they
#: are just not shown one by one).
START_LIMIT = 20_000


@dataclasses.dataclass(frozen=True)
class Finished:
    """One photo whose runs have all ended (or that was rejected before any ran)."""

    image_id: int
    sha256: str
    path: str | None
    #: ``done``, ``failed`` or ``rejected``.
    status: str
    faces: int
    #: The top label of the primary classifier (or of any, when it has none), and its score.
    label: str | None
    score: float | None
    #: (task, error) of each failed or rejected run; ``("image", reason)`` when rejected before any run.
    errors: tuple[tuple[str, str], ...]
    #: Seconds of work: the sum of its runs' durations (None when no run recorded one).
    seconds: float | None


@dataclasses.dataclass(frozen=True)
class Refused:
    """A file that was refused at registration (never became an image)."""

    file_id: int
    path: str
    reason: str


@dataclasses.dataclass
class Watch:
    """What the live feed is waiting for; made by :func:`start_watch`, advanced by :func:`poll`."""

    last_image_id: int
    last_file_id: int
    #: Image ids not finished yet, oldest first (dicts keep insertion order).
    waiting: dict[int, None] = dataclasses.field(default_factory=dict)
    turn: int = 0
    #: Ids within OVERLAP of the last ones, already taken on.
    seen_images: set[int] = dataclasses.field(default_factory=set)
    seen_files: set[int] = dataclasses.field(default_factory=set)


def start_watch(session: Session, *, limit: int = START_LIMIT) -> Watch:
    """A watch from now on: it waits for the images with work pending now (at most ``limit``,
    found through the status index) and for every image and file registered from now on."""
    last_image = session.scalar(select(func.max(Image.id))) or 0
    last_file = session.scalar(select(func.max(SourceFile.id))) or 0
    pending = session.scalars(
        select(TaskRun.image_id).where(TaskRun.status.in_(PENDING_STATES)).distinct().limit(limit)
    )
    # What is already there (within OVERLAP of the last ids) is not new.
    seen_images = set(session.scalars(select(Image.id).where(Image.id > last_image - OVERLAP)))
    seen_files = set(session.scalars(select(SourceFile.id).where(SourceFile.id > last_file - OVERLAP)))
    return Watch(last_image_id=last_image, last_file_id=last_file, waiting=dict.fromkeys(sorted(pending)),
                 seen_images=seen_images, seen_files=seen_files)


def poll(session: Session, watch: Watch, *, primary_model: str | None = None, limit: int = LIMIT,
         pages: int = 10) -> list[Finished | Refused]:
    """What finished since the last poll: photos whose runs have all ended, and refused files.
    At most ``pages`` × ``limit`` new images and files are taken on per call (the rest next time)."""
    found: list[Finished | Refused] = []
    # Ids are read from a little below the last one seen (OVERLAP): on PostgreSQL, registrations in
    # concurrent transactions may commit out of id order; ``seen`` keeps them from counting twice.
    for _ in range(pages):
        ids = list(session.scalars(
            select(Image.id).where(Image.id > watch.last_image_id - OVERLAP).order_by(Image.id).limit(limit)))
        new = [i for i in ids if i not in watch.seen_images]
        watch.waiting.update(dict.fromkeys(new))
        watch.seen_images.update(new)
        if ids:
            watch.last_image_id = max(watch.last_image_id, ids[-1])
        watch.seen_images = {i for i in watch.seen_images if i > watch.last_image_id - OVERLAP}
        if len(new) < limit - OVERLAP:
            break
    for _ in range(pages):
        rows = session.execute(
            select(SourceFile.id, SourceFile.path, SourceFile.refused_reason)
            .where(SourceFile.id > watch.last_file_id - OVERLAP).order_by(SourceFile.id).limit(limit)).all()
        rows = [r for r in rows if r[0] not in watch.seen_files]
        watch.seen_files.update(r[0] for r in rows)
        if rows:
            watch.last_file_id = max(watch.last_file_id, rows[-1][0])
        watch.seen_files = {i for i in watch.seen_files if i > watch.last_file_id - OVERLAP}
        found.extend(Refused(i, p, r) for i, p, r in rows if r is not None)
        if len(rows) < limit - OVERLAP:
            break
    if not watch.waiting:
        return found
    waiting = list(watch.waiting)
    window = waiting[:limit]
    rest = waiting[limit:]
    if rest:
        start = (watch.turn * limit) % len(rest)
        window += rest[start:start + limit]
        watch.turn += 1
    done = finished_images(session, window, primary_model=primary_model)
    for item in done:
        watch.waiting.pop(item.image_id, None)
    found.extend(done)
    return found


def finished_images(session: Session, image_ids: Sequence[int], *,
                    primary_model: str | None = None) -> list[Finished]:
    """Of ``image_ids`` (at most a few hundred), those whose runs have all ended, in id order."""
    if not image_ids:
        return []
    images = {i: (sha, reason) for i, sha, reason in session.execute(
        select(Image.id, Image.sha256, Image.rejected_reason).where(Image.id.in_(image_ids)))}
    runs: dict[int, list[tuple[str, str, str | None, float | None]]] = {}
    for image_id, task, status, error, ms in session.execute(
            select(TaskRun.image_id, TaskRun.task, TaskRun.status, TaskRun.error, TaskRun.duration_ms)
            .where(TaskRun.image_id.in_(image_ids)).order_by(TaskRun.id)):
        runs.setdefault(image_id, []).append((task, status, error, ms))
    ended = []
    for image_id in sorted(images):
        sha, rejected = images[image_id]
        mine = runs.get(image_id, [])
        if any(status in PENDING_STATES for _, status, _, _ in mine):
            continue
        if not mine and rejected is None:
            continue  # registered, its runs not written yet
        ended.append(image_id)
    if not ended:
        return []
    paths = dict(session.execute(select(SourceFile.image_id, func.min(SourceFile.path))
                                 .where(SourceFile.image_id.in_(ended)).group_by(SourceFile.image_id)).all())
    faces = dict(session.execute(select(Face.image_id, func.count()).where(Face.image_id.in_(ended))
                                 .group_by(Face.image_id)).all())
    labels: dict[int, dict[str, tuple[str, float]]] = {}
    for image_id, model, label, score in session.execute(
            select(Label.image_id, Label.model, Label.label, Label.score)
            .where(Label.image_id.in_(ended), Label.rank == 1)):
        labels.setdefault(image_id, {})[model] = (label, score)
    out = []
    for image_id in ended:
        sha, rejected = images[image_id]
        mine = runs.get(image_id, [])
        errors = tuple((task, error or "") for task, status, error, _ in mine if status in (FAILED, REJECTED))
        if rejected is not None:
            status = REJECTED
            errors = errors or (("image", rejected),)
        else:
            status = DONE if all(s == DONE for _, s, _, _ in mine) else FAILED
        by_model = labels.get(image_id, {})
        top = by_model.get(primary_model) if primary_model in by_model else next(iter(by_model.values()), None)
        durations = [ms for *_, ms in mine if ms is not None]
        out.append(Finished(
            image_id=image_id, sha256=sha, path=paths.get(image_id), status=status,
            faces=int(faces.get(image_id, 0)), label=top[0] if top else None, score=top[1] if top else None,
            errors=errors, seconds=sum(durations) / 1000.0 if durations else None,
        ))
    return out


# --- single runs (`darkroom retry --wait`) -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    run_id: int
    path: str | None
    sha256: str
    task: str
    status: str
    error: str | None
    seconds: float | None


def ended_runs(session: Session, run_ids: Iterable[int], *, limit: int = LIMIT) -> list[RunOutcome]:
    """Of ``run_ids`` (looked up by primary key, ``limit`` at a time), those that have ended."""
    ids = list(run_ids)
    out: list[RunOutcome] = []
    for start in range(0, len(ids), limit):
        chunk = ids[start:start + limit]
        rows = session.execute(
            select(TaskRun.id, TaskRun.image_id, Image.sha256, TaskRun.task, TaskRun.status, TaskRun.error,
                   TaskRun.duration_ms)
            .join(Image, Image.id == TaskRun.image_id)
            .where(TaskRun.id.in_(chunk), TaskRun.status.not_in(PENDING_STATES))).all()
        if not rows:
            continue
        paths = dict(session.execute(
            select(SourceFile.image_id, func.min(SourceFile.path))
            .where(SourceFile.image_id.in_({r[1] for r in rows})).group_by(SourceFile.image_id)).all())
        out.extend(RunOutcome(run_id, paths.get(image_id), sha, task, status, error,
                              ms / 1000.0 if ms is not None else None)
                   for run_id, image_id, sha, task, status, error, ms in rows)
    return sorted(out, key=lambda r: r.run_id)


# --- `darkroom status`: the same failure on many photos, once ----------------------------------


@dataclasses.dataclass(frozen=True)
class ProblemGroup:
    """Failed or rejected runs (or refused files) that share task, state and reason."""

    #: The task, or None for a file refused, or an image rejected, before any task ran.
    task: str | None
    status: str
    reason: str
    count: int
    #: When the newest of them ended (None for refused files and images rejected at registration).
    newest: dt.datetime | None
    #: One of their paths (the newest's), for a person to look at.
    example: str | None

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["newest"] = self.newest.isoformat() if self.newest else None
        return data


@dataclasses.dataclass(frozen=True)
class ProblemSummary:
    #: The newest groups first (runs' groups, then refused files' and rejected images').
    groups: list[ProblemGroup]
    #: How many groups there are in all, and how many problems they hold.
    kinds: int
    total: int


def problem_groups(session: Session, *, limit: int | None = 20) -> ProblemSummary:
    """Problems grouped by (task, state, reason), newest first, at most ``limit`` groups (all when
    None), with how many groups and problems there are in all. Grouped by the database, through
    the status index, in one pass per kind of problem: the number of groups comes with the first
    ``limit`` of them (a window count over the groups), so the failed runs are read once. The cost
    follows the number of problems, not of runs."""
    newest = func.max(TaskRun.finished_at)
    reason = func.coalesce(TaskRun.error, "")
    kinds_over = func.count().over()
    grouped = (
        select(TaskRun.task, TaskRun.status, reason, func.count().label("n"), newest, func.max(TaskRun.image_id),
               kinds_over, func.sum(func.count()).over())
        .where(TaskRun.status.in_((FAILED, REJECTED)))
        .group_by(TaskRun.task, TaskRun.status, reason)
    )
    refused = (select(SourceFile.refused_reason, func.count().label("n"), func.max(SourceFile.path),
                      kinds_over, func.sum(func.count()).over())
               .where(SourceFile.refused_reason.is_not(None)).group_by(SourceFile.refused_reason))
    rejected = (select(Image.rejected_reason, func.count().label("n"), func.max(Image.id),
                       kinds_over, func.sum(func.count()).over())
                .where(Image.rejected_reason.is_not(None), ~Image.runs.any()).group_by(Image.rejected_reason))
    kinds = total = 0
    groups: list[ProblemGroup] = []

    def take(query, order, room: int | None) -> list:
        """The first ``room`` groups (at least one, for the totals), and the totals."""
        nonlocal kinds, total
        rows = session.execute(query.order_by(*order).limit(max(1, room) if room is not None else None)).all()
        if rows:
            kinds, total = kinds + int(rows[0][-2]), total + int(rows[0][-1])
        return rows if room is None else rows[:room]

    for task, status, why, n, when, image_id, *_ in take(grouped, (newest.desc(), TaskRun.task), limit):
        groups.append(ProblemGroup(task, status, why, int(n), _aware(when), image_id))
    room = None if limit is None else limit - len(groups)
    for why, n, path, *_ in take(refused, (func.count().desc(),), room):
        groups.append(ProblemGroup(None, REJECTED, why, int(n), None, path))
    room = None if limit is None else limit - len(groups)
    for why, n, image_id, *_ in take(rejected, (func.count().desc(),), room):
        groups.append(ProblemGroup(None, REJECTED, why, int(n), None, image_id))
    # ``example`` holds an image id where a path is wanted: look the paths up in one query.
    ids = {g.example for g in groups if isinstance(g.example, int)}
    paths = dict(session.execute(
        select(SourceFile.image_id, func.min(SourceFile.path))
        .where(SourceFile.image_id.in_(ids)).group_by(SourceFile.image_id)).all()) if ids else {}
    groups = [dataclasses.replace(g, example=paths.get(g.example)) if isinstance(g.example, int) else g
              for g in groups]
    return ProblemSummary(groups=groups, kinds=kinds, total=total)


def _aware(when: dt.datetime | None) -> dt.datetime | None:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=dt.timezone.utc)
    return when
