"""Registering a file: hash it into the blob store, record it in SQL, and only then enqueue its runs.

The order is what makes crashes harmless: a run exists in SQL before its message exists in Redis,
and a run whose message was never sent (``enqueued_at`` is NULL) is sent by the next
:meth:`Registrar.send_pending`, whoever calls it.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery

from darkroom.settings import Settings
from darkroom.work import planned_work
from storage import repo
from storage.blobs import BlobStore, OversizeFile
from storage.db import session_factory, transaction
from storage.db import make_engine
from producer.files import inside
from worker.queues import queue_depths, send_run

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
        self.work = planned_work(self.settings)
        self._sent_since_check = 0

    # --- registering ---------------------------------------------------------------------------

    def register(self, path: Path, *, send: bool = True) -> Outcome:
        """Take one file. ``path`` is kept as given (made absolute), so it is the name a person knows."""
        path = Path(os.path.abspath(path))
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
        with self.sessions() as s:
            if repo.is_known(s, str(path), st.st_size, st.st_mtime_ns):
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

        from tasks.imaging import BadImage, probe

        fmt = width = height = reason = None
        try:
            info = probe(self.blobs.path_for(sha), max_pixels=self.settings.max_image_pixels,
                         max_bytes=self.settings.max_image_bytes)
            fmt, width, height = info.format, info.width, info.height
        except BadImage as exc:
            reason = f"{path}: {exc}"
        with transaction(self.sessions) as s:
            reg = repo.register_file(
                s, path=str(path), size_bytes=size, mtime_ns=st.st_mtime_ns, sha256=sha, fmt=fmt,
                width=width, height=height, rejected_reason=reason, work=self.work,
            )
        if reason:
            log.warning("rejected %s", reason)
            outcome = Outcome.REJECTED
        elif reg.new_image:
            log.info("registered %s (%s)", path, sha[:12])
            outcome = Outcome.NEW
        else:
            log.info("duplicate %s of %s", path, sha[:12])
            outcome = Outcome.DUPLICATE
        if send and reg.run_ids:
            self.send_pending()
        return outcome

    def _refuse(self, path: Path, reason: str, st: os.stat_result | None = None) -> Outcome:
        log.warning("refused %s: %s", path, reason)
        with transaction(self.sessions) as s:
            repo.refuse_file(s, path=str(path), reason=f"{path}: {reason}",
                             size_bytes=st.st_size if st else None, mtime_ns=st.st_mtime_ns if st else None)
        return Outcome.REFUSED

    # --- sending -------------------------------------------------------------------------------

    def send_pending(self, *, wait: bool = True) -> int:
        """Send every run whose message is not in the broker yet; waits while the queues are full."""
        sent = 0
        while True:
            with self.sessions() as s:
                batch = repo.unsent_runs(s, limit=200)
            if not batch:
                return sent
            for run in batch:
                if not self._room(wait):
                    return sent
                send_run(self.app, run)
                with transaction(self.sessions) as s:
                    repo.mark_enqueued(s, [run.id])
                sent += 1

    def _room(self, wait: bool) -> bool:
        """Backpressure: False (or a wait) while any queue is deeper than the bound."""
        bound = self.settings.max_queue_depth
        # Asking Redis for every message would double its load; ask every few dozen sends.
        self._sent_since_check += 1
        if self._sent_since_check < max(1, min(50, bound // 10)):
            return True
        self._sent_since_check = 0
        while max(queue_depths(self.redis).values()) >= bound:
            if not wait:
                return False
            time.sleep(0.5)
        return True

    def pending_runs(self) -> int:
        with self.sessions() as s:
            return repo.pending_count(s)
