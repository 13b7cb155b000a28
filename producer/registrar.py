"""Registering a file: hash it (into the blob store, or where it lies), record it in SQL, and only
then enqueue its runs.

The order is what makes crashes harmless: a run exists in SQL before its message exists in Redis,
and a run whose message was never sent (``enqueued_at`` is NULL) is sent by the next
:meth:`Registrar.send_pending`, whoever calls it.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from celery import Celery

from darkroom import catalog
from darkroom.settings import Settings
from producer.files import IgnoreRules, inside
from storage import cluster, files, ignored, ledger
from storage.blobs import BlobStore, OversizeFile, hash_file
from storage.db import make_engine, read_only, session_factory, transaction
from storage.stores import open_store
from worker.broker import for_settings
from worker.originals import describe
from worker.queues import messages, queue_depths, send_runs

log = logging.getLogger(__name__)

#: How a path already in the ledger is treated: ``new``: skipped unread (new files only);
#: ``changed``: read again when its size or modification time differ; ``force``: read again.
Rescan = Literal["new", "changed", "force"]
RESCANS: tuple[Rescan, ...] = ("new", "changed", "force")


class Outcome(enum.Enum):
    NEW = "new"  # a new image, with runs enqueued
    DUPLICATE = "duplicate"  # content already known: the path is recorded, no new work
    CHANGED = "changed"  # a known path with new content: recorded as that content's image
    REJECTED = "rejected"  # not a usable image: recorded with the reason
    REFUSED = "refused"  # not taken at all (a symlink out of the inbox, a device file...)
    KNOWN = "known"  # this path is registered already (with this size and mtime, or this content)
    VANISHED = "vanished"  # gone before it could be read
    SKIPPED = "skipped"  # a directory or other non-file
    IGNORED = "ignored"  # left alone: a sidecar, video, catalogue, system file, or an ignore pattern's


@dataclass(frozen=True)
class _Ignored:
    path: Path
    kind: str


@dataclass(frozen=True)
class _Refusal:
    path: Path
    reason: str
    st: os.stat_result | None = None


#: How often registering folds the counts `status` reads (storage.ledger.fold_pending).
FOLD_EVERY_SECONDS = 5.0
#: The most time closing a registrar spends on the counts (the producer's next turn, or `status`,
#: folds the rest).
FOLD_AT_CLOSE_SECONDS = 10.0


@dataclass(frozen=True)
class Chunk:
    """One chunk of :meth:`Registrar.register_stream`: its paths, their outcomes, and the bytes read."""

    paths: list[Path]
    outcomes: list[Outcome]
    bytes_read: int


def record_identity(sessions, client, blob_url: str) -> cluster.Identity:
    """Record the cluster's identity in SQL when it has none, and mirror it in Redis (``client``),
    where a worker compares it with its own database's as it starts (storage.cluster,
    worker.cluster). Every producer does, as its Registrar is made; `darkroom up` before it starts
    its worker."""
    with read_only(sessions) as s:
        identity = cluster.read(s)
    if identity is None:
        with transaction(sessions) as s:
            identity = cluster.ensure(s, blob_url)
    try:
        cluster.mirror(client, identity)
    except Exception as exc:  # noqa: BLE001 - the broker away: the next producer start mirrors it
        log.warning("could not mirror the cluster identity in Redis (%s); workers started now are not "
                    "checked against it", type(exc).__name__)
    return identity


@dataclass
class Registrar:
    settings: Settings
    app: Celery
    roots: list[Path]
    #: How paths already registered are treated (see :data:`Rescan`); the watcher's default.
    rescan: Rescan = "changed"
    #: Threads that hash and probe files side by side (hashlib and file reads release the GIL);
    #: 0: the cores, plus one to cover reads.
    threads: int = 0
    #: Once set, sends stop waiting for room in the queues (the runs stay unsent in the ledger).
    stop: threading.Event | None = None
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _folded_at: float = field(default=0.0, init=False, repr=False)
    _store_marked: bool = field(default=False, init=False, repr=False)
    _mark_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rescan not in RESCANS:
            raise ValueError(f"rescan must be one of {', '.join(RESCANS)}, not {self.rescan!r}")
        self.roots = [Path(r).resolve() for r in self.roots]
        # What each root leaves alone (producer.files.IgnoreRules), deepest root first.
        self.ignores = sorted((IgnoreRules(r, self.settings.ignore) for r in self.roots),
                              key=lambda rules: len(rules.real_root.parts), reverse=True)
        self.sessions = session_factory(make_engine(
            self.settings.db_url, pool_size=self.settings.db_pool_size, max_overflow=self.settings.db_max_overflow,
            application_name=f"darkroom-producer {os.getpid()}"))
        self.blobs: BlobStore = open_store(self.settings.blob_location)  # DARKROOM_BLOB_URL: a folder or a bucket
        self.redis = for_settings(self.settings)
        self.work = catalog.planned_work(self.settings)
        self._record_identity()

    def _record_identity(self) -> None:
        self.identity = record_identity(self.sessions, self.redis, self.blobs.url)

    def _mark_store(self) -> None:
        """With the first blob this process stores: mark the store as this cluster's (a worker's store
        must then hold the mark) and note it in SQL. Once per process."""
        if self._store_marked:
            return
        with self._mark_lock:
            if self._store_marked:
                return
            self.blobs.mark_cluster(self.identity.uuid)
            if self.identity.blobs_at is None:
                with transaction(self.sessions) as s:
                    cluster.note_blobs(s)
            self._store_marked = True

    def ignore_rules(self, root: Path) -> IgnoreRules:
        """The rules of ``root`` (one of :attr:`roots`): what its walk leaves alone."""
        real = Path(os.path.realpath(root))
        return next((r for r in self.ignores if r.real_root == real), IgnoreRules(root, self.settings.ignore))

    def ignored_kind(self, path: Path, *, folder: bool = False) -> str | None:
        """Why ``path`` is left alone (``producer.files.CLUTTER``'s kinds, or ``pattern``), by the
        rules of the deepest root it is in; None when it is to be registered."""
        for rules in self.ignores:
            kind = rules.kind(path, folder=folder)
            if kind is not None:
                return kind
        return None

    @property
    def by_reference(self) -> bool:
        """Originals are read where they lie, nothing copied (DARKROOM_BLOB_MODE=reference)."""
        return self.settings.blob_mode == "reference"

    def close(self) -> None:
        """Stop the hashing threads (they are made again when needed), and bring the counts
        `status` reads up to date with what was registered (for a few seconds at most)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        try:
            self._fold(every=0.0, seconds=FOLD_AT_CLOSE_SECONDS)
        except Exception:  # noqa: BLE001 - the counts are folded by the next producer turn or `status`
            log.warning("could not bring the counts up to date now; `darkroom status` does", exc_info=True)

    def _fold(self, *, every: float = FOLD_EVERY_SECONDS, seconds: float = 1.0) -> None:
        """Fold the counts (:func:`storage.ledger.fold_pending`) when ``every`` seconds have passed
        since the last fold: a long ingest keeps `status`' image counts current as it goes, at a
        cost that follows what it registered, not the store."""
        now = time.monotonic()
        if now - self._folded_at < every:
            return
        self._folded_at = now
        ledger.fold_pending(self.sessions, seconds=seconds)

    # --- registering ---------------------------------------------------------------------------

    def register(self, path: Path, *, send: bool = True) -> Outcome:
        """Take one file. ``path`` is kept as given (made absolute), so it is the name a person knows."""
        return self.register_many([path], send=send)[0]

    def register_many(self, paths: Sequence[Path], *, send: bool = True) -> list[Outcome]:
        """Take several files (a bulk ingest's chunk): each is hashed (into the blob store, or where
        it lies) and probed, side by side in a few threads, then all are recorded in one
        transaction, and their runs are sent after it. Returns each file's outcome, in order.

        Which paths are registered already is one look-up per 500 paths; what is done with them
        is :attr:`rescan`'s. If the transaction fails (say, another producer registered one of
        the contents a moment ago), each file is recorded in its own transaction, which copes
        with that; an error that remains is raised, as :meth:`register` does for a single file.
        """
        batch = [Path(os.path.abspath(p)) for p in paths]
        return self._record(batch, *self._start(batch), send=send)[0]

    def register_stream(self, paths: Iterable[Path], *, chunk: int = 64, send: bool = True,
                        stop: threading.Event | None = None) -> Iterator[Chunk]:
        """:meth:`register_many` over any number of paths, ``chunk`` at a time, as they come (a
        walk of a tree: never a list of them all). The next chunk is hashed while one is
        recorded. After ``stop`` is set, the chunks in hand are finished and no other is begun."""
        source = iter(paths)

        def begin():
            if stop is not None and stop.is_set():
                return None
            batch = [Path(os.path.abspath(p)) for p in itertools.islice(source, chunk)]
            return (batch, *self._start(batch)) if batch else None

        ahead = begin()
        try:
            while ahead is not None:
                current, ahead = ahead, begin()
                outcomes, read = self._record(*current, send=send)
                yield Chunk(current[0], outcomes, read)
        finally:
            if ahead is not None:  # the consumer stopped early: drop the chunk begun for it
                for item in ahead[1]:
                    if isinstance(item, Future):
                        item.cancel()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                n = self.threads or (os.cpu_count() or 1) + 1
                self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="darkroom-hash")
            return self._pool

    def _start(self, batch: list[Path]) -> tuple[list, dict[str, files.Known]]:
        """Look the paths up (one query per 500) and begin preparing those to be read, in the
        threads. Returns each path's outcome or future, and what the ledger knew of them."""
        with read_only(self.sessions) as s:  # on SQLite: no write lock for a look-up
            known = files.known_paths(s, [str(p) for p in batch])
        pending: list = []
        for path in batch:
            was = known.get(str(path))
            kind = self.ignored_kind(path)
            if kind is not None:
                pending.append(_Ignored(path, kind))  # left alone: never opened, counted
            elif was is not None and self.rescan == "new":
                pending.append(Outcome.KNOWN)  # new files only: not even looked at
            elif len(batch) == 1:  # one file (the watcher's): nothing to overlap, no hand-over
                pending.append(self._prepare(path, was))
            else:
                pending.append(self._executor().submit(self._prepare, path, was))
        return pending, known

    def _record(self, batch: list[Path], pending: list, known: dict[str, files.Known], *,
                send: bool) -> tuple[list[Outcome], int]:
        """Wait for the chunk's files to be prepared, record them in one transaction, send their
        runs. Returns the outcomes and the bytes read."""
        prepared = [item.result() if isinstance(item, Future) else item for item in pending]
        outcomes: list[Outcome | None] = [item if isinstance(item, Outcome) else None for item in prepared]
        ready = [(i, item) for i, item in enumerate(prepared) if isinstance(item, files.FileRecord)]
        refused = [(i, item) for i, item in enumerate(prepared) if isinstance(item, _Refusal)]
        left = [(i, item) for i, item in enumerate(prepared) if isinstance(item, _Ignored)]
        if left:
            self._record_ignored([item for _i, item in left])
            for i, _item in left:
                outcomes[i] = Outcome.IGNORED
        regs: list[files.Registration] = []
        if ready or refused:
            try:
                with transaction(self.sessions) as s:
                    for _i, r in refused:
                        self._refuse(s, r)
                    if len(ready) == 1:
                        regs = [self._record_one(s, ready[0][1])]
                    elif ready:
                        regs = files.register_files(s, [item for _i, item in ready], self.work)
            except Exception:
                if len(ready) + len(refused) == 1:
                    raise
                log.warning("recording %d files at once failed; recording them one by one",
                            len(ready) + len(refused), exc_info=True)
                regs = []
                for _i, r in refused:
                    with transaction(self.sessions) as s:
                        self._refuse(s, r)
                for _i, item in ready:
                    with transaction(self.sessions) as s:
                        regs.append(self._record_one(s, item))
            for i, r in refused:
                log.warning("refused %s: %s", r.path, r.reason)
                outcomes[i] = Outcome.REFUSED
            for (i, item), reg in zip(ready, regs):
                outcomes[i] = self._outcome(item, reg, known.get(item.path))
            if send and any(reg.run_ids for reg in regs):
                self.send_pending()
            self._fold()
        return [o for o in outcomes if o is not None], sum(item.size_bytes for _i, item in ready)

    def _prepare(self, path: Path, was: files.Known | None) -> Outcome | files.FileRecord | _Refusal:
        """Everything about ``path`` that needs no transaction: its kind, its bytes hashed (into
        the blob store, or where it lies), its header. Runs in a hashing thread: it writes nothing
        to the ledger, returning what to record (or the outcome, when the file goes no further)."""
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                kind = self.ignored_kind(path, folder=True)  # a folder the walk did not enter
                return _Ignored(path, kind) if kind is not None else Outcome.SKIPPED
            if stat.S_ISLNK(st.st_mode):
                if not any(inside(path, root) for root in self.roots):
                    return _Refusal(path, "symbolic link that leads outside the watched folder: refused "
                                          "(copy the file in instead of linking to it)")
                st = os.stat(path)
                if stat.S_ISDIR(st.st_mode):
                    return Outcome.SKIPPED
        except FileNotFoundError:
            return Outcome.VANISHED
        if not stat.S_ISREG(st.st_mode):
            return _Refusal(path, "not a regular file (device, socket or pipe): refused")
        if was is not None and self.rescan != "force" and (was.size_bytes, was.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return Outcome.KNOWN
        limit = self.settings.max_image_bytes
        if st.st_size > limit:
            return _Refusal(path, f"{st.st_size} bytes is over the limit of {limit} "
                                  "(raise DARKROOM_MAX_IMAGE_BYTES to accept it)", st)
        try:
            if self.by_reference:
                sha, size = hash_file(path, max_bytes=limit)
                source = path
            else:
                # Hashed here, stored (uploaded) under its hash before the SQL commit; probed from
                # what was stored (the file may change the next moment).
                sha, size, source = self.blobs.store_file(path, link=self.settings.blob_mode == "link",
                                                          max_bytes=limit)
                self._mark_store()
        except FileNotFoundError:
            return Outcome.VANISHED
        except OversizeFile as exc:
            return _Refusal(path, f"grew to over {exc.size} bytes, over the limit of {limit} "
                                  "(DARKROOM_MAX_IMAGE_BYTES)", st)
        except PermissionError as exc:
            return _Refusal(path, f"cannot be read ({exc.strerror}): fix its permissions and touch it", st)
        except IsADirectoryError:
            return Outcome.SKIPPED
        return describe(path, source, sha256=sha, size=size, mtime_ns=st.st_mtime_ns, settings=self.settings,
                        reference=self.by_reference)

    def _record_ignored(self, items: list[_Ignored]) -> None:
        """Record the files left alone, once per path (`status` counts them by kind): a read first,
        so that files already recorded (the watcher's every rescan) cost no write."""
        paths = {str(item.path): item.kind for item in items}
        with read_only(self.sessions) as s:
            new = ignored.new_paths(s, paths)
        if new:
            with transaction(self.sessions) as s:
                added = ignored.record(s, [(p, paths[p]) for p in new])
            if added:
                log.info("left alone %d file(s) (%s)", added, ", ".join(sorted({paths[p] for p in new})))

    def _record_one(self, session, item: files.FileRecord) -> files.Registration:
        return files.register_file(session, **dataclasses.asdict(item), work=self.work)

    @staticmethod
    def _outcome(item: files.FileRecord, reg: files.Registration, was: files.Known | None) -> Outcome:
        if was is not None and was.image_id == reg.image_id:
            return Outcome.KNOWN  # read again (--force, or touched): the same content
        if item.rejected_reason:
            log.warning("rejected %s", item.rejected_reason)
            return Outcome.REJECTED
        if was is not None and was.image_id is not None:
            log.info("changed %s, now %s", item.path, item.sha256[:12])
            return Outcome.CHANGED
        if reg.new_image:
            log.info("registered %s (%s)", item.path, item.sha256[:12])
            return Outcome.NEW
        log.info("duplicate %s of %s", item.path, item.sha256[:12])
        return Outcome.DUPLICATE

    @staticmethod
    def _refuse(session, refusal: _Refusal) -> None:
        st = refusal.st
        files.refuse_file(session, path=str(refusal.path), reason=f"{refusal.path}: {refusal.reason}",
                          size_bytes=st.st_size if st else None, mtime_ns=st.st_mtime_ns if st else None)

    # --- sending -------------------------------------------------------------------------------

    def send_pending(self, *, wait: bool = True) -> int:
        """Send every run whose message is not in the broker yet; waits while the queues are full.
        Returns how many runs were sent.

        Messages go out in groups over one broker connection, each group recorded as sent in one
        transaction; the queue depths are checked before each group (backpressure). The runs of a
        batch task (classification) that are waiting together go as one message per batch, so a
        worker takes them in one forward pass without a message for each. A crash between a send
        and its record only means the runs are sent again, which their worker then skips.
        """
        sent = 0
        group = max(1, min(50, self.settings.max_queue_depth // 10))
        per_message = {task.name: task.batch_size(self.settings) for task in catalog.TASKS if task.batched}
        while True:
            if not self._room(wait):
                return sent
            # One group at a time: its runs read, sent and recorded sent in one transaction that holds
            # the sending lock (PostgreSQL), so a second producer waits and then reads only what is
            # still unsent instead of sending the same runs again.
            with transaction(self.sessions) as s:
                ledger.lock_sending(s)
                batch = ledger.unsent_runs(s, limit=200)
                if not batch:
                    return sent
                msgs = messages(batch, per_message)[:group]
                done: list[int] = []
                failure: Exception | None = None
                try:
                    with self.app.producer_or_acquire() as producer:
                        for runs in msgs:
                            send_runs(self.app, runs, producer=producer)
                            done.extend(r.id for r in runs)
                except Exception as exc:  # noqa: BLE001 - re-raised once what was sent is recorded
                    failure = exc
                # Recorded even when a send failed midway (those sent are in the broker); on a crash
                # before the commit they are sent again, and their worker skips them.
                if done:
                    ledger.mark_enqueued(s, done)
            sent += len(done)
            if failure is not None:
                raise failure

    def _room(self, wait: bool) -> bool:
        """Backpressure: False (or a wait) while any queue is at or over the bound."""
        while max(queue_depths(self.redis).values()) >= self.settings.max_queue_depth:
            if not wait or (self.stop is not None and self.stop.is_set()):
                return False
            time.sleep(0.5)
        return True

    def pending_runs(self) -> int:
        with self.sessions() as s:
            return ledger.pending_count(s)
