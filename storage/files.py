"""Files and registration: which paths arrived, the image (content) each one carries, and the task
runs a new image needs. Functions over a session; the caller owns the transaction (see
:func:`storage.db.transaction`). Registering a path twice leaves one row.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.capture import columns as capture_columns
from storage.db import chunks
from storage.models import (
    FAILED,
    ORIGINAL_BLOB,
    ORIGINAL_MISSING,
    ORIGINAL_REFERENCE,
    QUEUED,
    Image,
    SourceFile,
    TaskRun,
    shown,
    utcnow,
)


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
    decoder: str | None = None,
    color_profile: str | None = None,
    reference: bool = False,
    frames: int | None = None,
    capture: dict | None = None,
) -> Registration:
    """Record that ``path`` holds the content ``sha256`` and create the task runs it still needs.

    Args:
        work: (task, model) pairs to run on the image; pairs that already have a run are skipped, so a
            duplicate adds no work while a newly configured model adds only its own runs.
        reference: the original is held by reference (nothing copied into the blob store): a worker
            reads it at ``path``. See :func:`_keep_original`.
        frames, capture: how many frames the file holds and its capture metadata
            (``tasks.metadata.Capture.values()``), stored as :func:`storage.capture.columns` says.
    """
    image, new_image = _get_or_create_image(
        session,
        sha256=sha256,
        size_bytes=size_bytes,
        fmt=fmt,
        width=width,
        height=height,
        rejected_reason=rejected_reason,
        decoder=decoder,
        color_profile=color_profile,
        original=ORIGINAL_REFERENCE if reference else ORIGINAL_BLOB,
        described=capture_columns(capture, frames),
    )
    resent = {} if new_image else _keep_original(session, [image], {image.id: reference})
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
        run_ids = [run.id for run in runs] + resent.get(image.id, [])
    session.flush()
    return Registration(image_id=image.id, new_image=new_image, run_ids=run_ids)


def _keep_original(session: Session, images: Sequence[Image], reference: dict[int, bool]) -> dict[int, list[int]]:
    """A file with the content of existing ``images`` arrived (``reference[id]``: held by reference,
    else copied into the blob store). A copy in the blob store serves from now on; an image whose
    original had gone missing has one again, and its failed runs (they failed for want of it) are
    queued again, unsent. Returns those runs' ids by image."""
    missing = []
    for image in images:
        by_reference = reference[image.id]
        if image.original == ORIGINAL_MISSING:
            missing.append(image.id)
            image.original = ORIGINAL_REFERENCE if by_reference else ORIGINAL_BLOB
        elif image.original == ORIGINAL_REFERENCE and not by_reference:
            image.original = ORIGINAL_BLOB
    resent: dict[int, list[int]] = {}
    now = utcnow()
    for chunk in chunks(sorted(missing)):
        rows = session.execute(
            update(TaskRun).where(TaskRun.image_id.in_(chunk), TaskRun.status == FAILED)
            .values(status=QUEUED, enqueued_at=None, queued_at=now, error=None, retry_pending=False)
            .returning(TaskRun.image_id, TaskRun.id).execution_options(synchronize_session=False))
        for image_id, run_id in rows:
            resent.setdefault(image_id, []).append(run_id)
    return resent


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
    #: How the image is decoded and its ICC profile's description (``tasks.imaging.ImageInfo``).
    decoder: str | None = None
    color_profile: str | None = None
    #: Held by reference: nothing copied, a worker reads ``path`` (see :func:`register_file`).
    reference: bool = False
    #: Frames in the file, and its capture metadata (``tasks.metadata.Capture.values()``).
    frames: int | None = None
    capture: dict | None = None


def register_files(session: Session, files: Sequence[FileRecord], work: Sequence[tuple[str, str]]) -> list[Registration]:
    """:func:`register_file` for many files at once (a bulk ingest's chunk), in a few statements
    instead of several per file; the same outcome as registering them one after another.

    Unlike :func:`register_file`, a content another producer inserts at the same moment makes
    this fail (IntegrityError, the transaction to be rolled back): callers register such a chunk
    file by file instead.
    """
    files = list(files)
    images: dict[str, Image] = {}
    for chunk in chunks(sorted({f.sha256 for f in files})):
        images.update({img.sha256: img for img in session.scalars(select(Image).where(Image.sha256.in_(chunk)))})
    created: set[str] = set()
    for f in files:
        if f.sha256 not in images:
            images[f.sha256] = Image(sha256=f.sha256, size_bytes=f.size_bytes, format=f.fmt, width=f.width,
                                     height=f.height, rejected_reason=f.rejected_reason,
                                     decoder=f.decoder, color_profile=f.color_profile,
                                     original=ORIGINAL_REFERENCE if f.reference else ORIGINAL_BLOB,
                                     **capture_columns(f.capture, f.frames))
            created.add(f.sha256)
    # A content that came by reference and now also as a copy is served by the copy.
    for f in files:
        if f.sha256 in created and not f.reference:
            images[f.sha256].original = ORIGINAL_BLOB
    copied = {f.sha256 for f in files if not f.reference}
    known = [img for sha, img in images.items() if sha not in created]
    resent = _keep_original(session, known, {img.id: img.sha256 not in copied for img in known})
    session.add_all([images[sha] for sha in sorted(created)])
    session.flush()
    sources: dict[str, SourceFile] = {}
    for chunk in chunks(sorted({f.path for f in files})):
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
    for chunk in chunks(usable):
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
        image_id = images[f.sha256].id
        again = resent.get(image_id, []) if f.sha256 not in first_seen else []
        first_seen.add(f.sha256)
        out.append(Registration(image_id=image_id, new_image=new_image, run_ids=[r.id for r in runs] + again))
    return out


def _get_or_create_image(session: Session, *, sha256: str, original: str, **fields) -> tuple[Image, bool]:
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
                decoder=fields["decoder"],
                color_profile=fields["color_profile"],
                original=original,
                **fields["described"],
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


@dataclasses.dataclass(frozen=True)
class Known:
    """What the ledger holds of a path: its size and mtime when registered, and its image (None:
    refused)."""

    size_bytes: int | None
    mtime_ns: int | None
    image_id: int | None


def known_paths(session: Session, paths: Sequence[str]) -> dict[str, Known]:
    """path -> :class:`Known` for those of ``paths`` that are recorded, keyed by the paths as given
    (also those stored :func:`~storage.models.shown`): one indexed look-up per 500 paths (the
    files' unique path index)."""
    out: dict[str, Known] = {}
    given = {shown(p): p for p in paths}
    for chunk in chunks(list(paths)):
        rows = session.execute(select(SourceFile.path, SourceFile.size_bytes, SourceFile.mtime_ns, SourceFile.image_id)
                               .where(SourceFile.path.in_(chunk)))
        out.update({given.get(p, p): Known(size, mtime, image) for p, size, mtime, image in rows})
    return out


def file_signatures(session: Session, paths: Sequence[str]) -> dict[str, tuple[int | None, int | None]]:
    """path -> (size, mtime_ns) for those of ``paths`` that are recorded (see :func:`known_paths`)."""
    return {p: (known.size_bytes, known.mtime_ns) for p, known in known_paths(session, paths).items()}


def readable_path(stored: str) -> str:
    """The name to open for a path as stored (:func:`~storage.models.shown`): with its ``\\xNN``
    escapes turned back into the bytes of a name that is not valid UTF-8, unless a file has the
    stored name itself."""
    if "\\x" not in stored or os.path.lexists(stored):
        return stored
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), stored.encode("utf-8"))
    return os.fsdecode(raw)


# --- originals held by reference (read by the worker) ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Original:
    """One file that held an image's content when it was registered, as recorded then."""

    file_id: int
    path: str
    size_bytes: int | None
    mtime_ns: int | None


def originals(session: Session, image_id: int) -> tuple[str, list[Original]]:
    """Where the image's original is (:attr:`Image.original`) and the files recorded with its
    content, oldest first (one look-up each, by primary key and by the files' image index)."""
    where = session.scalar(select(Image.original).where(Image.id == image_id))
    rows = session.execute(select(SourceFile.id, SourceFile.path, SourceFile.size_bytes, SourceFile.mtime_ns)
                           .where(SourceFile.image_id == image_id).order_by(SourceFile.id))
    return where or ORIGINAL_BLOB, [Original(file_id, readable_path(path), size, mtime)
                                    for file_id, path, size, mtime in rows]


def note_signature(session: Session, file_id: int, *, size_bytes: int, mtime_ns: int) -> None:
    """A file's size or time changed but its content did not (it was touched, or copied back):
    record them, so the next check needs no hash."""
    session.execute(update(SourceFile).where(SourceFile.id == file_id)
                    .values(size_bytes=size_bytes, mtime_ns=mtime_ns))


def mark_missing(session: Session, image_id: int) -> None:
    """None of the image's files holds its content any more (see :attr:`Image.original`)."""
    session.execute(update(Image).where(Image.id == image_id, Image.original == ORIGINAL_REFERENCE)
                    .values(original=ORIGINAL_MISSING))


def mark_found(session: Session, image_id: int) -> None:
    """One of the image's files holds its content again (put back where it was)."""
    session.execute(update(Image).where(Image.id == image_id, Image.original == ORIGINAL_MISSING)
                    .values(original=ORIGINAL_REFERENCE))
