"""Files the producer left alone — sidecars, catalogues, videos, system clutter, files an ignore
pattern names (``producer.files.IgnoreRules``) — recorded once per path (``ignored_files``), and
counted per kind (``ignored_counts``, one row per kind), which is all `status` reads: its cost
does not grow with the archive. Functions over a session; the caller owns the transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import chunks, insert
from storage.models import IgnoredCount, IgnoredFile, shown, utcnow


def new_paths(session: Session, paths: Iterable[str]) -> list[str]:
    """Those of ``paths`` not recorded yet (one indexed look-up per 500 paths): a caller that reads
    first writes nothing, and takes no write lock, when nothing is new."""
    wanted = list(dict.fromkeys(paths))
    known: set[str] = set()
    for chunk in chunks(wanted):
        known.update(session.scalars(select(IgnoredFile.path).where(IgnoredFile.path.in_(chunk))))
    return [p for p in wanted if shown(p) not in known]


def record(session: Session, items: Iterable[tuple[str, str]]) -> int:
    """Record each ``(path, kind)`` not recorded yet and add them to their kind's count; a path
    already recorded (by this or another producer, even at the same moment) is not counted twice.
    Returns how many were new."""
    by_path = dict(items)
    if not by_path:
        return 0
    added: Counter[str] = Counter()
    now = utcnow()
    for chunk in chunks(list(by_path)):
        rows = [{"path": p, "kind": by_path[p], "seen_at": now} for p in chunk]
        inserted = session.execute(insert(session, IgnoredFile).values(rows).on_conflict_do_nothing(
            index_elements=[IgnoredFile.path]).returning(IgnoredFile.kind))
        added.update(kind for (kind,) in inserted)
    for kind, n in sorted(added.items()):
        stmt = insert(session, IgnoredCount).values(kind=kind, n=n)
        session.execute(stmt.on_conflict_do_update(index_elements=[IgnoredCount.kind],
                                                   set_={"n": IgnoredCount.n + stmt.excluded.n}))
    return sum(added.values())


def counts(session: Session) -> dict[str, int]:
    """kind -> how many files of it were ignored (one row per kind)."""
    return {kind: int(n) for kind, n in session.execute(select(IgnoredCount.kind, IgnoredCount.n)
                                                         .order_by(IgnoredCount.kind)) if n}

