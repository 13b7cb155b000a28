"""The inbox watcher: OS events in, complete files registered.

Watchdog's observer thread only records *that* a path changed (into a queue); this module's loop
decides *when* a file is complete: its size and mtime unchanged for ``settle_seconds`` and no event
for it in that time. Files present at start, and any whose events the kernel dropped, are found by
a scan (at start and every ``rescan_seconds``). The observer thread is supervised: if it dies it is
started again and the inbox rescanned. Clutter and files the ignore patterns name are handed to the
registrar like any file, which leaves them alone and counts them (``Outcome.IGNORED``); a folder
left alone is not walked; a file left alone is not looked at again by this watcher's rescans.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from producer.files import is_candidate, walk
from producer.registrar import Outcome, Registrar
from storage.files import file_signatures

log = logging.getLogger(__name__)


class _EventQueue(FileSystemEventHandler):
    """Runs on the observer thread: keep it trivial, just hand paths over."""

    def __init__(self, sink: queue.SimpleQueue[tuple[str, bool]], wake: threading.Event | None = None) -> None:
        self.sink = sink
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type != "moved":
            return
        if event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        dest = getattr(event, "dest_path", None)
        if dest:
            # A rename is atomic: the file arrived whole (rsync, browsers, `mv`), no need to wait,
            # not even for the watcher's next turn.
            self.sink.put((os.fsdecode(dest), not event.is_directory))
            if self.wake is not None:
                self.wake.set()
        if event.src_path and event.event_type != "moved":
            self.sink.put((os.fsdecode(event.src_path), False))


@dataclass
class _Candidate:
    last_event: float
    signature: tuple[int, int] | None = None  # (size, mtime_ns) at the last look
    stable_since: float | None = None
    renamed_in: bool = False  # arrived by an atomic rename: complete at once


class InboxWatcher:
    def __init__(self, root: Path, registrar: Registrar, *, settle_seconds: float, rescan_seconds: float,
                 polling: bool = False, clock: Callable[[], float] = time.monotonic,
                 reconciler=None, reconcile_seconds: float = 30.0) -> None:
        self.root = Path(os.path.abspath(root))
        self.registrar = registrar
        self.settle = settle_seconds
        self.rescan_every = rescan_seconds
        self.polling = polling
        self.clock = clock
        self.events: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._wake = threading.Event()  # set by the observer when a complete file is renamed in
        self.candidates: dict[Path, _Candidate] = {}
        self.counts: dict[Outcome, int] = {o: 0 for o in Outcome}
        self._observer = None
        self._last_scan = 0.0
        self.reconciler = reconciler
        self.reconcile_every = reconcile_seconds
        self._last_reconcile = float("-inf")
        #: Paths the registrar left alone (recorded once; not handed over again on every rescan).
        #: Each scan keeps those it still finds: the set holds what the inbox holds, no more.
        self.ignored: set[Path] = set()

    # --- life --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None, tick: float = 0.2) -> None:
        """Watch until ``stop`` is set, or until ``until()`` is true while nothing is waiting to settle."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_observer()
        try:
            self.scan()
            log.info("watching %s for new files", self.root)
            while not stop.is_set():
                self.step()
                if until is not None and not self.candidates and until():
                    return
                # Wait for the next turn, or less when a file is renamed in (a photo dropped into an
                # idle system is registered at once). stop is seen within one tick.
                if self._wake.wait(tick):
                    self._wake.clear()
        finally:
            self._stop_observer()

    def step(self) -> None:
        """One turn of the loop: take events, register settled files, rescan and supervise when due."""
        now = self.clock()
        self._drain_events(now)
        self._register_settled(now)
        if self._observer is not None and not self._observer.is_alive():
            log.error("the file observer stopped; restarting it and rescanning %s", self.root)
            self._start_observer()
            self.scan()
        elif self.rescan_every and now - self._last_scan >= self.rescan_every:
            self.scan()
        try:
            if self.reconciler is not None and now - self._last_reconcile >= self.reconcile_every:
                self._last_reconcile = now
                self.reconciler.check()
            self.registrar.send_pending()
        except Exception:  # the broker or database is away: runs stay in SQL and go out on a later turn
            log.exception("could not reconcile or send queued runs; will retry")

    def scan(self) -> int:
        """Make every unregistered file below the root a candidate; returns how many were new."""
        self._last_scan = self.clock()
        found = 0
        still_ignored: set[Path] = set()

        def unignored(path: Path) -> bool:
            if path in self.ignored:
                still_ignored.add(path)
                return False
            return True

        paths = filter(unignored, walk(self.root, self.registrar.ignore_rules(self.root)))
        # A chunk of the walk at a time, each looked up in one query: the ledger may hold far more
        # files than the inbox (a whole archive ingested in place), and none of them is read here.
        while chunk := list(itertools.islice(paths, 500)):
            with self.registrar.sessions() as s:
                known = file_signatures(s, [str(p) for p in chunk])
            for path in chunk:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if known.get(str(path)) != (st.st_size, st.st_mtime_ns) and path not in self.candidates:
                    self.candidates[path] = _Candidate(last_event=self._last_scan)
                    found += 1
        self.ignored = still_ignored  # those deleted since are forgotten
        if found:
            log.info("scan of %s found %d new file(s)", self.root, found)
        return found

    # --- internals ---------------------------------------------------------------------------

    def _start_observer(self) -> None:
        observer = PollingObserver(timeout=1.0) if self.polling else Observer()
        observer.schedule(_EventQueue(self.events, self._wake), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _drain_events(self, now: float) -> None:
        while True:
            try:
                raw, renamed_in = self.events.get_nowait()
            except queue.Empty:
                return
            path = Path(raw)
            if not is_candidate(path, self.root):
                continue
            cand = self.candidates.get(path)
            if cand is None:
                self.candidates[path] = _Candidate(last_event=now, renamed_in=renamed_in)
            else:
                cand.last_event, cand.stable_since, cand.renamed_in = now, None, renamed_in

    def _register_settled(self, now: float) -> None:
        for path, cand in list(self.candidates.items()):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                del self.candidates[path]
                continue
            signature = (st.st_size, st.st_mtime_ns)
            if signature != cand.signature or cand.stable_since is None:
                cand.signature, cand.stable_since = signature, now
            settling = now - cand.last_event < self.settle or now - cand.stable_since < self.settle
            if settling and not cand.renamed_in:
                continue
            del self.candidates[path]
            try:
                outcome = self.registrar.register(path, send=False)
            except Exception:  # a database or broker hiccup: try the file again on the next turn
                log.exception("could not register %s; will retry", path)
                self.candidates[path] = _Candidate(last_event=now)
                continue
            self.counts[outcome] += 1
            if outcome is Outcome.IGNORED:
                self.ignored.add(path)
