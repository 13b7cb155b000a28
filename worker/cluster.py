"""A worker's check as it starts: are its database, its broker and its blob store the producer's?

:func:`refusal` gives the one line a worker refuses to start with (``darkroom: refusing to start:
SETTING: ...``), naming the setting to fix, or None when all is well:

- the broker serves a cluster that the worker's database has never seen (the common case: a worker
  on the default SQLite with a remote broker) -> ``DARKROOM_DATABASE_URL``;
- the database and the broker belong to different clusters -> ``DARKROOM_DATABASE_URL`` (or the broker);
- the blob store cannot be reached, or does not hold the cluster's blobs -> ``DARKROOM_BLOB_URL``.

Nothing to compare is no refusal: before any producer ran there is no identity anywhere, and a
broker that lost its copy (a restart without persistence) gets it again from the producer. In-place
originals are also looked at: when the newest one cannot be read on this host the worker says so,
loudly, in its log (a file may be gone for good, so it does not refuse).
"""

from __future__ import annotations

import logging
import os
import socket

import redis
from sqlalchemy import select

from darkroom.settings import Settings, mask_url
from storage import cluster
from storage.blobs import BlobStore, BlobStoreDenied, BlobStoreUnavailable
from storage.db import make_engine, read_only, session_factory
from storage.files import readable_path
from storage.models import ORIGINAL_REFERENCE, Image, SourceFile
from storage.stores import open_store
from worker.broker import for_settings

log = logging.getLogger(__name__)

PREFIX = "darkroom: refusing to start: "


class UnknownRuns(Exception):
    """A message names runs this worker's database has no row for: it was sent by a producer with
    another database. Never acknowledged as done (see ``worker.pipeline.execute``)."""

    def __init__(self, run_ids: list[int], settings: Settings) -> None:
        self.run_ids = run_ids
        ids = ", ".join(map(str, run_ids[:10])) + (", ..." if len(run_ids) > 10 else "")
        super().__init__(f"run {ids} is unknown to this worker's database ({mask_url(settings.db_url)}): "
                         "DARKROOM_DATABASE_URL is not the producer's database")


def refusal(settings: Settings) -> str | None:
    """The line to refuse to start with, or None (see the module's doc)."""
    engine = make_engine(settings.db_url)
    try:
        sessions = session_factory(engine)
        with read_only(sessions) as s:
            mine = cluster.read(s)
            reference = _newest_reference(s)
    finally:
        engine.dispose()
    db = mask_url(settings.db_url)
    broker = mask_url(settings.redis_url)
    client = for_settings(settings, socket_connect_timeout=3, socket_timeout=3)
    try:
        theirs = cluster.mirrored(client)
    except redis.RedisError as exc:  # the broker away: Celery waits for it; nothing to compare now
        log.warning("could not read the cluster identity from the broker at %s (%s); not compared", broker,
                    type(exc).__name__)
        theirs = None
    finally:
        client.close()
    if theirs is not None and mine is None:
        return (f"{PREFIX}DARKROOM_DATABASE_URL: this worker's database ({db}) is not the producer's: the broker "
                f"({broker}) serves cluster {theirs.short}, recorded by {theirs.host}, and this database has never "
                f"seen it; set DARKROOM_DATABASE_URL to the producer's database")
    if theirs is not None and mine is not None and theirs.uuid != mine.uuid:
        return (f"{PREFIX}DARKROOM_DATABASE_URL: this worker's database ({db}) is cluster {mine.short}, but the "
                f"broker ({broker}) serves cluster {theirs.short}, recorded by {theirs.host}; set "
                f"DARKROOM_DATABASE_URL to that producer's database (or DARKROOM_BROKER_URL to this database's broker)")
    known = mine or theirs
    store = open_store(settings.blob_location)
    problem = _store_problem(store, known)
    if problem:
        return f"{PREFIX}DARKROOM_BLOB_URL: {problem}"
    if reference:
        _check_reference(reference)
    return None


def _store_problem(store: BlobStore, known: cluster.Identity | None) -> str | None:
    where = f"the producer's is {known.blob_url}" if known else "no producer has recorded one yet"
    try:
        if known is not None and known.blobs_at is not None:
            if not store.has_cluster(known.uuid):
                return (f"the blob store {store.url} holds none of cluster {known.short}'s originals; set "
                        f"DARKROOM_BLOB_URL to the producer's blob store ({where})")
        else:  # no blob stored yet: the store need only answer
            store.answers()
    except (BlobStoreUnavailable, BlobStoreDenied) as exc:
        return f"{exc}; set DARKROOM_BLOB_URL to a blob store this host can reach ({where})"
    return None


def _newest_reference(session) -> str | None:
    """The newest file held in place among the newest 100 files (a bounded read), or None."""
    newest = select(SourceFile.id, SourceFile.path, SourceFile.image_id).order_by(SourceFile.id.desc()).limit(100)
    recent = newest.subquery()
    path = session.scalar(select(recent.c.path).join(Image, Image.id == recent.c.image_id)
                          .where(Image.original == ORIGINAL_REFERENCE).order_by(recent.c.id.desc()).limit(1))
    return readable_path(path) if path is not None else None


def _check_reference(path: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        log.error("in-place originals cannot be read on this host (%s): %s (%s); every worker host needs them at "
                  "the same path as the producer's (mount the archive there), or their runs fail",
                  socket.gethostname(), path, exc.strerror or type(exc).__name__)


def check_or_exit(settings: Settings) -> None:
    """Exit the process with :func:`refusal`'s line on stderr (status 1) when there is one."""
    try:
        line = refusal(settings)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run must not stop a worker that may be fine
        log.warning("could not check this worker's set-up against the producer's: %s: %s", type(exc).__name__, exc)
        return
    if line:
        log.debug("refusing to start in process %s", os.getpid())
        raise SystemExit(line)


__all__ = ["PREFIX", "UnknownRuns", "check_or_exit", "refusal"]
