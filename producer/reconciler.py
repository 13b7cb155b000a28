"""The reconciler: SQL is the ledger, Redis only carries messages; when they disagree, SQL wins.

Three things can leave a run pending with no message that will ever reach a worker:

- the broker lost its data (Redis restarted without persistence, or flushed). Detected by a marker
  key written on every check: when it is gone, every pending run is sent again.
- the broker failed over to another Redis (Redis Sentinel promoted a replica, which may lack the
  last messages the old master took). Detected by the master's replication id (``INFO
  replication``'s ``master_replid``), kept in a key of its own: when the master answering now has
  another one than the key says, every queued run is sent again.
- a run was claimed by a worker process that then died with its message. A holder on this host
  instance is looked up in /proc; any other by its heartbeat key in Redis, which a live worker
  process refreshes every DARKROOM_HEARTBEAT_SECONDS (see :mod:`worker.runtime`): the runs of a
  holder whose heartbeat is gone go back to ``queued`` and are sent again — within about
  DARKROOM_HEARTBEAT_TTL + DARKROOM_RECONCILE_SECONDS of its death, on any host. Holders written
  before heartbeats existed (``hostname:pid`` of another host), and any run that outlives its lease
  (the task time limit plus a grace period), are sent again when the lease runs out.

Sending a run twice is harmless: a worker skips a run that is already finished, and results are
replaced, never duplicated.

Every statement is bounded: the distinct holders of running runs a page at a time, their heartbeats
in one MGET per page, the dead ones' runs released in chunks (:mod:`storage.ledger`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass

from storage import cluster, ledger
from storage import results as stored
from storage.db import read_only, transaction
from storage.models import QUEUED, RUNNING, utcnow
from worker.broker import master
from worker.runtime import dead_holders

log = logging.getLogger(__name__)

EPOCH_KEY = "darkroom:broker-epoch"
#: The replication id of the Redis master the last check saw.
MASTER_KEY = "darkroom:broker-master"
#: The most time a turn spends folding counts (the rest is folded on the next turn).
FOLD_SECONDS = 5.0
#: The most time a turn spends pairing near-duplicates of hashes saved before pairs were stored.
PAIR_SECONDS = 2.0
#: Holders read (and heartbeats asked for) per page.
HOLDER_PAGE = 1000


@dataclass(frozen=True)
class Reconciled:
    broker_lost: bool
    resent: int
    expired: int
    #: The broker's master changed since the last check (a failover): its queued runs were resent.
    failover: bool = False
    #: Runs of dead holders (heartbeat gone, or no longer in this host's /proc) given back.
    taken_over: int = 0


class Reconciler:
    def __init__(self, registrar, *, lease_grace_seconds: float = 120.0) -> None:
        self.registrar = registrar
        self.lease = dt.timedelta(seconds=registrar.settings.task_time_limit + lease_grace_seconds)
        self.heartbeat_ttl = registrar.settings.heartbeat_ttl
        self._epoch: str | None = None
        #: Until then (monotonic), a missing heartbeat is not taken for a dead process: the broker
        #: lost its data or failed over, and the live workers have not written theirs again yet.
        self._trust_heartbeats_at = 0.0

    def check(self) -> Reconciled:
        client = self.registrar.redis
        current = client.get(EPOCH_KEY)
        lost = current is None or (self._epoch is not None and current.decode() != self._epoch)
        failover = self._master_changed(client)
        if lost or failover:
            self._trust_heartbeats_at = time.monotonic() + self.heartbeat_ttl
        resent = expired = 0
        with transaction(self.registrar.sessions) as s:
            if lost:
                resent = len(ledger.requeue_runs(s, statuses=[QUEUED, RUNNING]))
            elif failover:
                # Messages the old master took may not have reached the new one; a run that is
                # running is held by a live worker (or taken over below when it dies).
                resent = len(ledger.requeue_runs(s, statuses=[QUEUED]))
            expired = len(ledger.requeue_runs(s, statuses=[RUNNING], older_than=utcnow() - self.lease))
        if lost:
            self._epoch = uuid.uuid4().hex
            client.set(EPOCH_KEY, self._epoch)
            if resent:
                log.warning("the broker has lost its queue (restarted without persistence?): "
                            "sending %d pending run(s) again", resent)
        elif self._epoch is None:
            self._epoch = current.decode()
        # The identity workers check as they start (storage.cluster), mirrored again every turn: one
        # SET, and Redis has it back soon after losing it (restarted without persistence, flushed, a
        # new master without it).
        cluster.mirror(client, self.registrar.identity)
        taken_over = self._take_over(client)
        if failover and resent:
            log.warning("sent %d queued run(s) again after the broker's failover", resent)
        if expired:
            log.warning("%d run(s) outlived their lease (%s): sending them again", expired, self.lease)
        if resent or expired or taken_over:
            self.registrar.send_pending()
        # Bring the counts `status` reads up to date with what the workers did since the last turn.
        ledger.fold_pending(self.registrar.sessions, seconds=FOLD_SECONDS)
        # Hashes saved before near-duplicate pairs were stored (migration 0012) are paired a little
        # each turn; until then their near-duplicates are looked up through the bands.
        stored.pair_pending(self.registrar.sessions, seconds=PAIR_SECONDS)
        return Reconciled(broker_lost=lost, resent=resent, expired=expired, failover=failover,
                          taken_over=taken_over)

    def _master_changed(self, client) -> bool:
        """Whether the Redis master answering now is another than at the last check (of any
        producer: the id is kept in Redis, where the new master has the old one's copy)."""
        now = master(client)
        seen = client.get(MASTER_KEY)
        if seen is not None and seen.decode() == now.replid:
            return False
        client.set(MASTER_KEY, now.replid)
        if seen is None:  # the first check, or the broker lost everything (the epoch tells)
            return False
        log.warning("the broker's Redis master changed (now %s, replication id %s, was %s): a failover",
                    now.address, now.replid[:12], seen.decode()[:12])
        return True

    def _take_over(self, client) -> int:
        """Give back the runs of holders that are dead (see :func:`worker.runtime.dead_holders`), a
        page of holders at a time; returns how many runs."""
        trust = time.monotonic() >= self._trust_heartbeats_at
        dead: list[str] = []
        after = None
        while True:
            with read_only(self.registrar.sessions) as s:
                holders = ledger.running_holders(s, after=after, limit=HOLDER_PAGE)
            if not holders:
                break
            dead += dead_holders(client, holders, trust_missing=trust)
            if len(holders) < HOLDER_PAGE:
                break
            after = holders[-1]
        if not dead:
            return 0
        with transaction(self.registrar.sessions) as s:
            taken = ledger.release_holders(s, dead)
        if taken:
            log.warning("%d run(s) of %d dead worker process(es) taken over (%s%s): sending them again", taken,
                        len(dead), ", ".join(dead[:5]), ", ..." if len(dead) > 5 else "")
        return taken
