"""Registering a file: hash it into the blob store, record it in SQL, and only then enqueue its runs.

The order is what makes crashes harmless: a run exists in SQL before its message exists in Redis,
and a run whose message was never sent (``enqueued_at`` is NULL) is sent by the next
:meth:`Registrar.send_pending`, whoever calls it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery

from darkroom import catalog
from darkroom.settings import Settings
from producer.files import inside
from storage import files, ledger
from storage.blobs import BlobStore, OversizeFile
from storage.db import make_engine, session_factory, transaction
from tasks.imaging import BadImage, probe
from worker.queues import messages, queue_depths, send_runs

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    NEW = "new"  # a new image, with runs enqueued
    DUPLICATE = "duplicate"  # content already known: the path is recorded, no new work
    REJECTED = "rejected"  # not a usable image: recorded with the reason
    REFUSED = "refused"  # not taken at all (a symlink out of the inbox, a device file...)
    KNOWN = "known"  # this path with this size and mtime is already registered
    VANISHED = "vanished"  # gone before it could be read
    SKIPPED = "skipped"  # a directory or other non-file


@dataclass
class Registrar:
    settings: Settings
    app: Celery
    roots: list[Path]

    def __post_init__(self) -> None:
        self.roots = [Path(r).resolve() for r in self.roots]
        self.sessions = session_factory(make_engine(self.settings.db_url))
        self.blobs = BlobStore(self.settings.blob_dir)
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.work = catalog.planned_work(self.settings)

    # --- registering ---------------------------------------------------------------------------

    def register(self, path: Path, *, send: bool = True) -> Outcome:
        """Take one file. ``path`` is kept as given (made absolute), so it is the name a person knows."""
        return self.register_many([path], send=send)[0]

    def register_many(self, paths: Sequence[Path], *, send: bool = True) -> list[Outcome]:
        """Take several files (a bulk ingest's chunk): each is hashed into the blob store and probed
        on its own, then all are recorded in one transaction, and their runs are sent after it.
        Returns each file's outcome, in order.

        If that transaction fails (say, another producer registered one of the contents a moment
        ago), each file is recorded in its own transaction, which copes with that; an error that
        remains is raised, as :meth:`register` does for a single file.
        """
        paths = [Path(os.path.abspath(p)) for p in paths]
        with self.sessions() as s:
            known = files.file_signatures(s, [str(p) for p in paths])
        outcomes: list[Outcome | None] = []
        ready: list[tuple[int, files.FileRecord]] = []
        for path in paths:
            item = self._prepare(path, known.get(str(path)))
            if isinstance(item, Outcome):
                outcomes.append(item)
            else:
                ready.append((len(outcomes), item))
                outcomes.append(None)
        if ready:
            try:
                with transaction(self.sessions) as s:
                    if len(ready) == 1:
                        regs = [self._record(s, ready[0][1])]
                    else:
                        regs = files.register_files(s, [item for _i, item in ready], self.work)
            except Exception:
                if len(ready) == 1:
                    raise
                log.warning("recording %d files at once failed; recording them one by one", len(ready),
                            exc_info=True)
                regs = []
                for _i, item in ready:
                    with transaction(self.sessions) as s:
                        regs.append(self._record(s, item))
            for (i, item), reg in zip(ready, regs):
                outcomes[i] = self._outcome(item, reg)
            if send and any(reg.run_ids for reg in regs):
                self.send_pending()
        return [o for o in outcomes if o is not None]

    def _prepare(self, path: Path, signature: tuple[int | None, int | None] | None) -> Outcome | files.FileRecord:
        """Everything about ``path`` that needs no transaction: its kind, its bytes into the blob
        store, its header. Returns the outcome when the file goes no further."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return Outcome.VANISHED
        if stat.S_ISDIR(st.st_mode):
            return Outcome.SKIPPED
        if stat.S_ISLNK(st.st_mode):
            if not any(inside(path, root) for root in self.roots):
                return self._refuse(path, "symbolic link that leads outside the watched folder: refused "
                                          "(copy the file in instead of linking to it)")
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                return Outcome.SKIPPED
        if not stat.S_ISREG(st.st_mode):
            return self._refuse(path, "not a regular file (device, socket or pipe): refused")
        if signature == (st.st_size, st.st_mtime_ns):
            return Outcome.KNOWN
        if st.st_size > self.settings.max_image_bytes:
            return self._refuse(path, f"{st.st_size} bytes is over the limit of {self.settings.max_image_bytes} "
                                      "(raise DARKROOM_MAX_IMAGE_BYTES to accept it)", st)
        try:
            sha, size = self.blobs.put_file(path, link=self.settings.blob_mode == "link",
                                            max_bytes=self.settings.max_image_bytes)
        except FileNotFoundError:
            return Outcome.VANISHED
        except OversizeFile as exc:
            return self._refuse(path, f"grew to over {exc.size} bytes, over the limit of "
                                      f"{self.settings.max_image_bytes} (DARKROOM_MAX_IMAGE_BYTES)", st)
        except PermissionError as exc:
            return self._refuse(path, f"cannot be read ({exc.strerror}): fix its permissions and touch it", st)

        fmt = width = height = reason = decoder = profile = None
        try:
            info = probe(self.blobs.path_for(sha), max_pixels=self.settings.max_image_pixels,
                         max_bytes=self.settings.max_image_bytes, raw=self.settings.raw,
                         preview_at_least=catalog.raw_preview_size(self.settings))
            fmt, width, height = info.format, info.width, info.height
            decoder, profile = info.decoder, info.color_profile
        except BadImage as exc:
            reason = f"{path}: {exc}"
        return files.FileRecord(path=str(path), size_bytes=size, mtime_ns=st.st_mtime_ns, sha256=sha, fmt=fmt,
                               width=width, height=height, rejected_reason=reason, decoder=decoder,
                               color_profile=profile)

    def _record(self, session, item: files.FileRecord) -> files.Registration:
        return files.register_file(session, **dataclasses.asdict(item), work=self.work)

    @staticmethod
    def _outcome(item: files.FileRecord, reg: files.Registration) -> Outcome:
        if item.rejected_reason:
            log.warning("rejected %s", item.rejected_reason)
            return Outcome.REJECTED
        if reg.new_image:
            log.info("registered %s (%s)", item.path, item.sha256[:12])
            return Outcome.NEW
        log.info("duplicate %s of %s", item.path, item.sha256[:12])
        return Outcome.DUPLICATE

    def _refuse(self, path: Path, reason: str, st: os.stat_result | None = None) -> Outcome:
        log.warning("refused %s: %s", path, reason)
        with transaction(self.sessions) as s:
            files.refuse_file(s, path=str(path), reason=f"{path}: {reason}",
                             size_bytes=st.st_size if st else None, mtime_ns=st.st_mtime_ns if st else None)
        return Outcome.REFUSED

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
            with self.sessions() as s:
                batch = ledger.unsent_runs(s, limit=200)
            if not batch:
                return sent
            msgs = messages(batch, per_message)
            for start in range(0, len(msgs), group):
                if not self._room(wait):
                    return sent
                done: list[int] = []
                try:
                    with self.app.producer_or_acquire() as producer:
                        for runs in msgs[start:start + group]:
                            send_runs(self.app, runs, producer=producer)
                            done.extend(r.id for r in runs)
                finally:
                    if done:
                        with transaction(self.sessions) as s:
                            ledger.mark_enqueued(s, done)
                sent += len(done)

    def _room(self, wait: bool) -> bool:
        """Backpressure: False (or a wait) while any queue is at or over the bound."""
        while max(queue_depths(self.redis).values()) >= self.settings.max_queue_depth:
            if not wait:
                return False
            time.sleep(0.5)
        return True

    def pending_runs(self) -> int:
        with self.sessions() as s:
            return ledger.pending_count(s)
