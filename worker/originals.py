"""Where a photo's bytes come from: the blob store's copy, or, for an image held by reference
(``darkroom ingest --in-place``, ``DARKROOM_BLOB_MODE=reference``), its original where it lies.

An original held by reference is checked before it is used: its size and modification time as
recorded when it was registered, and when either differs, its sha256 (a file touched or copied
back with the same content is fine, and its new size and time are recorded). When none of the
image's files still holds its content, its runs end ``failed`` — never retried, since waiting does
not bring a file back:

- a file moved or deleted: "original moved or deleted: PATH — ingest it again" (ingesting it,
  from wherever it is now, sends the image's failed runs again);
- a file edited: its new content is registered as a new image, whose runs are sent, and the old
  content's runs say so, naming the new one.

:func:`describe` is also the producer's: what a file's header says, as the ledger records it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
from pathlib import Path

from celery import Celery
from sqlalchemy import select

from darkroom import catalog
from darkroom.settings import Settings
from storage import cluster, files, ledger
from storage.blobs import BlobCorrupt, BlobMissing
from storage.db import read_only, transaction
from storage.models import FAILED, ORIGINAL_BLOB, ORIGINAL_MISSING, QUEUED, TaskRun
from tasks.imaging import BadImage, probe
from worker.queues import send_run
from worker.runtime import Runtime

log = logging.getLogger(__name__)


class OriginalGone(Exception):
    """An image held by reference has no file that still holds its content: its runs fail with
    this message (it names the file and what to do), without retries."""


class OriginalUnusable(OriginalGone):
    """The blob store answers as this cluster's (it holds the cluster's mark) and its copy of the
    original is missing, or holds other bytes: failed at once, naming DARKROOM_BLOB_URL, never retried."""


class OriginalBusy(TimeoutError):
    """An original changed while it was read (being written, or copied over): tried again later,
    as any transient trouble is (a TimeoutError: the pipeline's retry with backoff)."""


def describe(path: Path | str, source: Path | bytes, *, sha256: str, size: int, mtime_ns: int, settings: Settings,
             reference: bool) -> files.FileRecord:
    """The ledger's record of a file whose content (``source``: its bytes, or a path holding
    them) hashes to ``sha256``: its header's format and size, or why it is rejected."""
    fmt = width = height = reason = decoder = profile = frames = capture = None
    try:
        info = probe(source, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                     **catalog.raw_options(settings))
        fmt, width, height = info.format, info.width, info.height
        decoder, profile, frames = info.decoder, info.color_profile, info.frames
        capture = info.capture.values() if info.capture is not None else None  # read with the header
    except BadImage as exc:
        reason = f"{path}: {exc}"
    return files.FileRecord(path=str(path), size_bytes=size, mtime_ns=mtime_ns, sha256=sha256, fmt=fmt,
                            width=width, height=height, rejected_reason=reason, reference=reference,
                            decoder=decoder, color_profile=profile, frames=frames, capture=capture)


def read_original(rt: Runtime, app: Celery | None, image_id: int, sha256: str, *, give_up: bool = True) -> bytes:
    """The image's bytes: the blob store's copy when it has one (an S3 store's checked against its
    sha256), else (an image held by reference) the first of its files that still holds its content.

    ``give_up``: an original held by reference that is gone or edited is recorded so (the image
    marked missing and its queued runs failed, or its new content registered); False for runs a
    message only gathered, which are given back instead.

    Raises:
        OriginalGone: held by reference, and no file holds it any more (its queued runs are failed
            with the same message here; the caller records its own).
        OriginalUnusable: the store holds this cluster's mark, and its copy is missing or damaged.
        FileNotFoundError: the blob store's copy is missing from a store without this cluster's mark
            (a store away for a moment, an unmounted folder: retried).
        BlobStoreUnavailable: the store did not answer (a ConnectionError: retried).
    """
    try:
        return rt.blobs.read(sha256)
    except BlobMissing:
        pass
    except BlobCorrupt as exc:
        raise OriginalUnusable(str(exc)) from None
    with read_only(rt.sessions) as s:
        where, recorded = files.originals(s, image_id)
    if where == ORIGINAL_BLOB:
        try:
            return rt.blobs.read(sha256)
        except BlobCorrupt as exc:
            raise OriginalUnusable(str(exc)) from None
        except BlobMissing as exc:
            if _store_is_ours(rt):
                raise OriginalUnusable(str(exc)) from None
            raise
    gone: list[str] = []
    unreadable: list[str] = []
    changed: list[str] = []
    for original in recorded:
        try:
            data = _unchanged(rt, original, sha256)
        except FileNotFoundError:
            gone.append(original.path)
            continue
        except PermissionError as exc:
            unreadable.append(f"{original.path} cannot be read ({exc.strerror}): fix its permissions, then run "
                              "`darkroom retry`")
            continue
        if isinstance(data, bytes):
            if where == ORIGINAL_MISSING:  # put back where it was (and `darkroom retry` run)
                with transaction(rt.sessions) as s:
                    files.mark_found(s, image_id)
            return data
        if not give_up:
            changed.append(f"{original.path} changed since it was registered")
            continue
        changed.append(_register_anew(rt, app, original, data))
    if not give_up:
        raise OriginalGone((changed or unreadable or [f"original moved or deleted: {', '.join(gone)}"])[0])
    reason = changed[0] if changed else unreadable[0] if unreadable else _gone(rt, image_id, sha256, gone, where)
    if not unreadable:
        _give_up(rt, image_id, reason)
    raise OriginalGone(reason)


def _store_is_ours(rt: Runtime) -> bool:
    """Whether the blob store holds this cluster's mark: then a blob missing from it is missing for
    good. False when it cannot be told (no identity yet, the store not answering)."""
    try:
        with read_only(rt.sessions) as s:
            identity = cluster.read(s)
        return identity is not None and rt.blobs.has_cluster(identity.uuid)
    except Exception:  # noqa: BLE001 - not known: the missing blob is treated as trouble that passes
        log.warning("could not tell whether the blob store %s is this cluster's", rt.blobs.url, exc_info=True)
        return False


@dataclasses.dataclass(frozen=True)
class _Changed:
    """A file whose content is no longer the image's: what it holds now."""

    sha256: str
    data: bytes | None  # None: over DARKROOM_MAX_IMAGE_BYTES, not read whole
    st: os.stat_result


def _unchanged(rt: Runtime, original: files.Original, sha256: str) -> bytes | _Changed:
    """The file's bytes when it still holds ``sha256``, else what it holds now. Raises
    FileNotFoundError when there is no file (or not a regular one) at its path."""
    # A file registered under a larger DARKROOM_MAX_IMAGE_BYTES is still read whole.
    limit = max(rt.settings.max_image_bytes, original.size_bytes or 0)
    try:
        with open(original.path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(original.path)
            data = fh.read(limit + 1)
    except (NotADirectoryError, IsADirectoryError):
        raise FileNotFoundError(original.path) from None
    if len(data) > limit:
        return _Changed("", None, st)
    if (st.st_size, st.st_mtime_ns) == (original.size_bytes, original.mtime_ns) and len(data) == st.st_size:
        return data
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        try:
            after = os.stat(original.path)
        except FileNotFoundError:
            after = None
        if after is None or (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or len(data) != st.st_size:
            raise OriginalBusy(f"{original.path} changed while it was read (being written?); trying again later")
        return _Changed(digest, data, st)
    with transaction(rt.sessions) as s:
        files.note_signature(s, original.file_id, size_bytes=len(data), mtime_ns=st.st_mtime_ns)
    log.info("%s was touched but holds the same content; its new size and time are recorded", original.path)
    return data


def _register_anew(rt: Runtime, app: Celery | None, original: files.Original, now: _Changed) -> str:
    """Register what an edited file holds now as the image it is (its runs sent); returns the
    reason the old content's runs fail with."""
    path = original.path
    if now.data is None:
        reason = (f"{path} changed since it was registered and is now over the limit of "
                  f"{rt.settings.max_image_bytes} bytes (DARKROOM_MAX_IMAGE_BYTES): raise it and ingest it again")
        with transaction(rt.sessions) as s:
            files.refuse_file(s, path=path, reason=reason, size_bytes=now.st.st_size, mtime_ns=now.st.st_mtime_ns)
        return reason
    record = describe(path, now.data, sha256=now.sha256, size=len(now.data), mtime_ns=now.st.st_mtime_ns,
                      settings=rt.settings, reference=True)
    with transaction(rt.sessions) as s:
        reg = files.register_file(s, **dataclasses.asdict(record), work=catalog.planned_work(rt.settings))
        refs = [ledger.RunRef(*row) for row in s.execute(
            select(TaskRun.id, TaskRun.task, TaskRun.model).where(TaskRun.id.in_(reg.run_ids)))]
    _send(rt, app, refs)
    what = f"rejected: {record.rejected_reason}" if record.rejected_reason else "processed on its own"
    log.warning("%s changed since it was registered; its new content is image %s (%s)", path, now.sha256[:12], what)
    return (f"{path} changed since it was registered: its new content is registered as a new image "
            f"(sha256 {now.sha256[:12]}, {what}); this run was for the old content")


def _send(rt: Runtime, app: Celery | None, refs: list[ledger.RunRef]) -> None:
    """Send new runs now; when that fails (or no app is at hand) they stay unsent in the ledger,
    where the producer's next turn (or `darkroom reconcile`) sends them."""
    if app is None or not refs:
        return
    try:
        for ref in refs:
            send_run(app, ref)
        with transaction(rt.sessions) as s:
            ledger.mark_enqueued(s, [ref.id for ref in refs])
    except Exception:  # noqa: BLE001 - the runs are in the ledger; the reconciler sends them
        log.warning("could not send runs %s now; the producer sends them", [r.id for r in refs], exc_info=True)


def _gone(rt: Runtime, image_id: int, sha256: str, paths: list[str], where: str) -> str:
    if paths:
        more = f" (and {len(paths) - 1} other recorded path(s))" if len(paths) > 1 else ""
        return f"original moved or deleted: {paths[0]}{more} — ingest it again"
    if where == ORIGINAL_MISSING:  # another process gave up on it first: the same reason
        with read_only(rt.sessions) as s:
            earlier = s.scalar(select(TaskRun.error).where(TaskRun.image_id == image_id, TaskRun.status == FAILED,
                                                           TaskRun.error.is_not(None)).limit(1))
        if earlier:
            return earlier
    return f"original moved or deleted: no recorded file holds {sha256[:12]} any more — ingest it again"


def _give_up(rt: Runtime, image_id: int, reason: str) -> None:
    """The image has no original: mark it so (a file registered with its content again sends its
    runs again), and fail its queued runs at once (their messages then find nothing to do)."""
    with transaction(rt.sessions) as s:
        files.mark_missing(s, image_id)
        queued = list(s.scalars(select(TaskRun.id).where(TaskRun.image_id == image_id, TaskRun.status == QUEUED)))
        ledger.finish_runs(s, queued, status=FAILED, error=reason)


__all__ = ["OriginalBusy", "OriginalGone", "OriginalUnusable", "describe", "read_original"]
