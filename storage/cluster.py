"""The cluster's identity: which Darkroom a database, a broker and a blob store belong to.

The first producer records it in SQL (one row of ``cluster``: a uuid, when, the blob store's URL
without secrets, its host) and mirrors it in Redis (:data:`REDIS_KEY`); when it first stores a blob
it marks the blob store (``clusters/<uuid>``) and notes the time (``blobs_at``). A worker compares
the three as it starts (``worker.cluster``) and refuses a database, broker or store of another
Darkroom, instead of acknowledging messages it cannot find or failing photos it cannot read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import uuid as uuidlib

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.db import insert
from storage.models import Cluster, TaskRun, utcnow

#: The Redis key (in the broker's database) that mirrors the identity.
REDIS_KEY = "darkroom:cluster"


@dataclasses.dataclass(frozen=True)
class Identity:
    uuid: str
    created_at: str
    blob_url: str
    host: str
    blobs_at: str | None = None

    @property
    def short(self) -> str:
        return self.uuid[:12]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Identity | None:
        """The identity a JSON mirror holds; None for anything else (not Darkroom's)."""
        try:
            data = json.loads(text)
            return cls(uuid=str(data["uuid"]), created_at=str(data["created_at"]), blob_url=str(data["blob_url"]),
                       host=str(data["host"]), blobs_at=data.get("blobs_at"))
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def of(cls, row: Cluster) -> Identity:
        return cls(uuid=row.uuid, created_at=_iso(row.created_at), blob_url=row.blob_url, host=row.host,
                   blobs_at=_iso(row.blobs_at) if row.blobs_at else None)


def _iso(value: dt.datetime) -> str:
    return value.isoformat(timespec="seconds")


def read(session: Session) -> Identity | None:
    """The database's identity; None before a producer has recorded one (one look-up by key)."""
    row = session.get(Cluster, 1)
    return Identity.of(row) if row is not None else None


def ensure(session: Session, blob_url: str) -> Identity:
    """The database's identity, recorded now (a new uuid) when it has none. Two producers starting
    at once record one: the second's insert does nothing."""
    row = session.get(Cluster, 1)
    if row is None:
        session.execute(insert(session, Cluster).values(
            id=1, uuid=uuidlib.uuid4().hex, created_at=utcnow(), blob_url=blob_url, host=socket.gethostname(),
        ).on_conflict_do_nothing())
        row = session.scalars(select(Cluster).where(Cluster.id == 1).execution_options(populate_existing=True)).one()
    return Identity.of(row)


def note_blobs(session: Session) -> None:
    """A producer stored a blob (and marked its store): from now on a worker's store must hold the mark."""
    session.execute(update(Cluster).where(Cluster.id == 1, Cluster.blobs_at.is_(None)).values(blobs_at=utcnow()))


def mirror(client, identity: Identity) -> None:
    """Put ``identity`` in Redis (``client``: a redis.Redis), where workers compare it with their database's."""
    client.set(REDIS_KEY, identity.to_json())


def mirrored(client) -> Identity | None:
    """The identity Redis holds; None when it holds none."""
    raw = client.get(REDIS_KEY)
    return Identity.from_json(raw) if raw is not None else None


def unknown_runs(session: Session, run_ids: list[int]) -> list[int]:
    """Those of a message's ``run_ids`` (a few) that this database has no row for: the message was
    sent by a producer with another database."""
    known = set(session.scalars(select(TaskRun.id).where(TaskRun.id.in_(run_ids))))
    return [i for i in run_ids if i not in known]


__all__ = ["REDIS_KEY", "Identity", "ensure", "mirror", "mirrored", "note_blobs", "read", "unknown_runs"]
