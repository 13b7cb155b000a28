"""What the pages and the API read from the ledger. Every function is a few statements, each bounded
(index look-ups, a page of ids, a LIMIT, a time window through an index), so a page costs the same at
ten photos or a million.

The gallery and the API page through ``storage.results``' filters and keyset paging
(:class:`~storage.results.ResultFilter`, :func:`~storage.results.select_page`): a page is the images
after the previous page's last one, never an OFFSET.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from darkroom import catalog
from darkroom.settings import Settings
from storage import ignored, ledger, progress, results
from storage.db import chunks
from storage.models import (
    DONE,
    FAILED,
    PENDING_STATES,
    REJECTED,
    TERMINAL_STATES,
    Artifact,
    DirtyImage,
    Face,
    Image,
    Label,
    TaskRun,
    utcnow,
)

#: The window throughput (and the ETA from it) is measured over.
THROUGHPUT_SECONDS = 300
#: Problems and problem groups the overview shows.
OVERVIEW_PROBLEMS = 10
#: Largest page the gallery and the API give.
MAX_PAGE = 500


class BadFilter(ValueError):
    """A filter a request gave that cannot hold (an unknown status, a label's score without a label)."""


def make_filter(*, status: str | None = None, label: str | None = None, min_score: float | None = None,
                model: str | None = None, faces: str | None = None, since: str | None = None,
                **more: str | None) -> results.ResultFilter:
    """A :class:`~storage.results.ResultFilter` from a request's text parameters (empty ones are
    ignored). ``faces``: ``N`` (exactly) or ``N+`` (at least); ``since``: an ISO date or time.
    ``more``: other fields the store's filter has (e.g. a capture date or a camera), passed on as
    text when it has them."""
    values: dict[str, Any] = {}
    if status:
        values["status"] = status
    if label and label.strip():
        values["label"] = label
        if min_score is not None:
            values["min_score"] = min_score
        if model:
            values["model"] = model
    elif min_score is not None or model:
        raise BadFilter("a score or a model qualifies a label: give the label too")
    if faces:
        text = faces.strip()
        or_more = text.endswith("+")
        try:
            values["faces"] = int(text.rstrip("+"))
        except ValueError:
            raise BadFilter(f"faces is a number of faces, N or N+, not {faces!r}") from None
        values["faces_or_more"] = or_more
    if since:
        values["since"] = _when(since, "since")
    known = {f.name: f for f in dataclasses.fields(results.ResultFilter)}
    for name, text in more.items():
        if text in (None, ""):
            continue
        if name not in known:
            raise BadFilter(f"unknown filter {name!r}")
        values[name] = _when(text, name) if "date" in str(known[name].type) else text
    try:
        return results.ResultFilter(**values)
    except (TypeError, ValueError) as exc:
        raise BadFilter(str(exc)) from None


def _when(text: str, name: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadFilter(f"{name} is a date (2026-12-03) or a time (2026-12-03T14:00), not {text!r}") from None


def date_filters() -> set[str]:
    """The filters of :func:`extra_filters` that take a date or a time."""
    return {f.name for f in dataclasses.fields(results.ResultFilter) if "date" in str(f.type)}


def extra_filters() -> list[str]:
    """Filters the store's ResultFilter has beyond those :func:`make_filter` names (they appear in
    the gallery's form and the API as text fields)."""
    named = {"status", "label", "min_score", "model", "faces", "faces_or_more", "since"}
    return [f.name for f in dataclasses.fields(results.ResultFilter) if f.name not in named]


def image_id(session: Session, sha256: str) -> int | None:
    """The id of the image with this sha256 (one look-up through its unique index)."""
    return session.scalar(select(Image.id).where(Image.sha256 == sha256))


def page(session: Session, flt: results.ResultFilter, after: str | None, limit: int) -> tuple[list[Image], str | None]:
    """A page of images matching ``flt`` after the image whose sha256 is ``after`` (keyset), and the
    sha256 the next page starts after (None: this was the last)."""
    after_id = None
    if after:
        after_id = image_id(session, after)
        if after_id is None:
            raise BadFilter(f"after: no image has the sha256 {after}")
    limit = max(1, min(limit, MAX_PAGE))
    images = results.select_page(session, flt, after=after_id, limit=limit + 1)  # one more: is there a next page?
    more = len(images) > limit
    images = images[:limit]
    return images, images[-1].sha256 if more else None


@dataclasses.dataclass(frozen=True)
class Cell:
    """One photo in the gallery's grid."""

    sha256: str
    name: str
    status: str
    label: str | None
    score: float | None
    faces: int | None
    width: int | None
    height: int | None


def cells(session: Session, images: Sequence[Image], primary_model: str | None) -> list[Cell]:
    """The gallery's cells of a page: each photo's name, state, top label and number of faces (two
    statements for the page)."""
    ids = [image.id for image in images]
    top: dict[int, tuple[str, float, str]] = {}
    faces: dict[int, int] = {}
    for chunk in chunks(ids):
        query = select(Label.image_id, Label.model, Label.label, Label.score).where(Label.image_id.in_(chunk))
        for image_id_, model, label, score in session.execute(query.order_by(Label.image_id, Label.rank)):
            if image_id_ not in top or (model == primary_model and top[image_id_][2] != primary_model):
                top[image_id_] = (label, score, model)
        faces.update(session.execute(select(Face.image_id, func.count()).where(Face.image_id.in_(chunk))
                                     .group_by(Face.image_id)).tuples().all())
    out = []
    for image in images:
        paths = [f.path for f in image.files]
        label = top.get(image.id)
        out.append(Cell(sha256=image.sha256, name=_name(paths[0]) if paths else image.sha256[:12],
                        status=ledger.image_status(image), label=label[0] if label else None,
                        score=label[1] if label else None, faces=faces.get(image.id), width=image.width,
                        height=image.height))
    return out


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


@dataclasses.dataclass(frozen=True)
class ArtifactKey:
    kind: str
    idx: int
    mime: str
    width: int
    height: int


@dataclasses.dataclass
class Photo:
    """One photo's page: its Results JSON, its artifacts (not their bytes), its runs."""

    image: Image
    result: dict[str, Any]
    artifacts: list[ArtifactKey]
    runs: list[TaskRun]

    def of_kind(self, kind: str) -> list[ArtifactKey]:
        return [a for a in self.artifacts if a.kind == kind]


def photo(session: Session, sha256: str, settings: Settings) -> Photo | None:
    found = results.find_images(session, [sha256])
    if not found:
        return None
    image = found[0]
    result = catalog.results_json(session, [image], settings)[0]
    arts = [ArtifactKey(*row) for row in session.execute(
        select(Artifact.kind, Artifact.idx, Artifact.mime, Artifact.width, Artifact.height)
        .where(Artifact.image_id == image.id, Artifact.kind != results.THUMB).order_by(Artifact.kind, Artifact.idx))]
    return Photo(image=image, result=result, artifacts=arts, runs=list(image.runs))


def api_images(session: Session, images: Sequence[Image], settings: Settings) -> list[dict[str, Any]]:
    """The Results JSON of a page (the same objects as `darkroom results --json`)."""
    return catalog.results_json(session, images, settings)


# --- the overview --------------------------------------------------------------------------------


@dataclasses.dataclass
class Overview:
    """What the overview shows and ``/api/status`` gives."""

    runs: dict[tuple[str, str], int]
    images: dict[str, int]
    uncounted: int
    queues: dict[str, int] | str
    #: Runs ended (done, failed or rejected) and photos registered per second over the window.
    runs_per_second: float
    registered_per_second: float
    pending_runs: int
    eta_seconds: float | None
    groups: list[progress.ProblemGroup]
    problems: list[ledger.Problem]
    #: Files left alone by the ignore patterns, per kind.
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)
    window_seconds: int = THROUGHPUT_SECONDS

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "ignored": self.ignored,
            "uncounted": self.uncounted,
            "runs": {f"{task}:{state}": n for (task, state), n in sorted(self.runs.items())},
            "tasks": self.tasks(),
            "queues": self.queues,
            "throughput": {"window_seconds": self.window_seconds, "runs_per_second": round(self.runs_per_second, 3),
                           "registered_per_second": round(self.registered_per_second, 3)},
            "pending_runs": self.pending_runs,
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
            "problem_groups": [g.to_dict() for g in self.groups],
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }

    def tasks(self) -> list[str]:
        found = {task for task, _ in self.runs}
        return sorted(found, key=lambda t: catalog.NAMES.index(t) if t in catalog.NAMES else len(catalog.NAMES))


def rates(session: Session, seconds: int = THROUGHPUT_SECONDS) -> tuple[float, float]:
    """(runs ended, photos registered) per second over the last ``seconds``: counts of a time range
    through ix_task_runs_status_finished and ix_images_created_at."""
    since = utcnow() - dt.timedelta(seconds=seconds)
    ended = session.scalar(select(func.count()).select_from(TaskRun)
                           .where(TaskRun.status.in_(TERMINAL_STATES), TaskRun.finished_at >= since)) or 0
    registered = session.scalar(select(func.count()).select_from(Image).where(Image.created_at >= since)) or 0
    return ended / seconds, registered / seconds


def overview(session: Session, queues: dict[str, int] | str) -> Overview:
    """The overview from the counts the database keeps (``storage.ledger``), a window of recent
    runs and the newest problems. Fold the counts first for images counted up to the moment."""
    runs = ledger.run_counts(session)
    per_second, registered = rates(session)
    pending = sum(n for (_task, state), n in runs.items() if state in PENDING_STATES)
    summary = progress.problem_groups(session, limit=OVERVIEW_PROBLEMS)
    return Overview(
        runs=runs, images=dict(ledger.image_counts(session)), uncounted=uncounted(session), queues=queues,
        runs_per_second=per_second, registered_per_second=registered, pending_runs=pending,
        eta_seconds=(pending / per_second) if pending and per_second > 0 else None,
        groups=summary.groups, problems=ledger.problems(session, limit=OVERVIEW_PROBLEMS), ignored=ignored.counts(session))


def uncounted(session: Session, most: int = 100_000) -> int:
    """How many photos changed state a moment ago and are not counted yet (at most ``most``: the
    marks are counted through their primary key, never all of a backlog)."""
    marks = select(DirtyImage.id).limit(most).subquery()
    return session.scalar(select(func.count()).select_from(marks)) or 0


#: States in the order the pages show them.
STATES = ("queued", "running", DONE, FAILED, REJECTED)
