"""The reconciler: SQL is the ledger, Redis only carries messages; when they disagree, SQL wins.

Two things can leave a run pending with no message that will ever reach a worker:

- the broker lost its data (Redis restarted without persistence, or flushed). Detected by a marker
  key written on every check: when it is gone, every pending run is sent again.
- a run was claimed by a worker that then vanished with its message: a process of this machine
  that is no longer alive, or, on another machine, one whose lease (the task time limit plus a
  grace period) ran out. Such runs go back to ``queued`` and are sent again.

Sending a run twice is harmless: a worker skips a run that is already finished, and results are
replaced, never duplicated.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from storage import ledger
from storage import results as stored
from storage.db import transaction
from storage.models import QUEUED, RUNNING, utcnow
from worker.runtime import holder_alive

log = logging.getLogger(__name__)

EPOCH_KEY = "darkroom:broker-epoch"
#: The most time a turn spends folding counts (the rest is folded on the next turn).
FOLD_SECONDS = 5.0
#: The most time a turn spends pairing near-duplicates of hashes saved before pairs were stored.
PAIR_SECONDS = 2.0


@dataclass(frozen=True)
class Reconciled:
    broker_lost: bool
    resent: int
    expired: int


class Reconciler:
    def __init__(self, registrar, *, lease_grace_seconds: float = 120.0) -> None:
        self.registrar = registrar
        self.lease = dt.timedelta(seconds=registrar.settings.task_time_limit + lease_grace_seconds)
        self._epoch: str | None = None

    def check(self) -> Reconciled:
        client = self.registrar.redis
        current = client.get(EPOCH_KEY)
        lost = current is None or (self._epoch is not None and current.decode() != self._epoch)
        resent = expired = 0
        with transaction(self.registrar.sessions) as s:
            if lost:
                resent = len(ledger.requeue_runs(s, statuses=[QUEUED, RUNNING]))
            expired = len(ledger.requeue_runs(s, statuses=[RUNNING], older_than=utcnow() - self.lease))
            # Runs held by a process of this machine that has died (e.g. killed mid-batch).
            expired += len(ledger.release_runs(s, ledger.orphaned_runs(s, holder_alive)))
        if lost:
            self._epoch = uuid.uuid4().hex
            client.set(EPOCH_KEY, self._epoch)
            if resent:
                log.warning("the broker has lost its queue (restarted without persistence?): "
                            "sending %d pending run(s) again", resent)
        elif self._epoch is None:
            self._epoch = current.decode()
        if expired:
            log.warning("%d run(s) outlived their lease (%s): sending them again", expired, self.lease)
        if resent or expired:
            self.registrar.send_pending()
        # Bring the counts `status` reads up to date with what the workers did since the last turn.
        ledger.fold_pending(self.registrar.sessions, seconds=FOLD_SECONDS)
        # Hashes saved before near-duplicate pairs were stored (migration 0012) are paired a little
        # each turn; until then their near-duplicates are looked up through the bands.
        stored.pair_pending(self.registrar.sessions, seconds=PAIR_SECONDS)
        return Reconciled(broker_lost=lost, resent=resent, expired=expired)
