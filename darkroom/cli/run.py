"""Running Darkroom: `up` (watcher and worker in one command), `watch`, `worker` and `ingest`.

The producer, worker and storage stack (Celery, SQLAlchemy, watchdog) is imported inside each
command, so that building the app for `darkroom --help` does not load it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Annotated

import typer

from darkroom.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_PARTIAL,
    LOG_FILE,
    check_broker,
    err,
    fail,
    out,
    read_settings,
    sessions,
    setup_logging,
)
from darkroom.settings import Settings

#: Files `darkroom ingest` records per transaction (the next chunk is hashed meanwhile).
INGEST_CHUNK = 64
#: Seconds between the live feed's polls of the SQL ledger.
POLL_SECONDS = 1.0

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(watch)
    app.command()(worker)
    app.command()(ingest)


def up(
    inbox: Annotated[Path, typer.Argument(help="Folder to watch; created if missing.")] = Path("inbox"),
    exit_when_idle: Annotated[bool, typer.Option(help="Process what is there, then exit.")] = False,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", help="Worker processes.")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="The worker's and the watcher's full logs on stderr instead of the log file "
                                "(DATA_DIR/logs/darkroom.log).")] = False,
) -> None:
    """Watcher and a worker (all queues) in one foreground command; Ctrl-C stops both cleanly.

    Prints one line per photo as it finishes and a status line; with --exit-when-idle, exits 3 when
    any photo failed or was rejected (or a file was refused) during the run."""
    from darkroom.cli.services import ServiceError, ensure_redis, stop_redis

    settings = read_settings()
    log_file = None if verbose else settings.data_dir / LOG_FILE
    err.print(f"Darkroom is watching [bold]{inbox}[/]; results in {settings.data_dir}; "
              + (f"logs in {log_file} (--verbose shows them here). " if log_file else "")
              + "Ctrl-C stops.", highlight=False, soft_wrap=True)
    setup_logging(settings, log_file=log_file)
    inbox.mkdir(parents=True, exist_ok=True)
    try:
        redis_proc = ensure_redis(settings)
    except ServiceError as exc:
        raise fail(str(exc)) from None
    logs: IO[bytes] | None = None
    try:
        factory = sessions(settings, migrate=True)
        _record_identity(settings, factory)  # before the worker, which compares it with the broker's
        argv = [sys.executable, "-m", "darkroom", "worker", "--queues", ",".join(settings.queues)]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        if log_file is not None:
            logs = open(log_file, "ab")
        worker = subprocess.Popen(argv, start_new_session=True, stdout=logs,
                                  stderr=subprocess.STDOUT if logs else None)
        try:
            code = _watch(settings, inbox, exit_when_idle=exit_when_idle, worker=worker, feed_sessions=factory,
                          log_file=log_file)
        finally:
            _stop_worker(worker)
    finally:
        if logs is not None:
            logs.close()
        stop_redis(redis_proc, settings.redis_url)
    if code:
        raise typer.Exit(code)


def _record_identity(settings: Settings, factory) -> None:
    from producer.registrar import record_identity
    from storage.stores import open_store
    from worker.broker import for_settings

    client = for_settings(settings, socket_connect_timeout=3, socket_timeout=3)
    try:
        record_identity(factory, client, open_store(settings.blob_location).url)
    finally:
        client.close()


def _stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish or return in-flight work
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        log.error("worker did not stop within 120 s; killing it (its messages go back to the queue)")
        proc.kill()
        proc.wait()


def _watch(settings: Settings, inbox: Path, *, exit_when_idle: bool, worker: subprocess.Popen | None = None,
           feed_sessions=None, log_file: Path | None = None) -> int:
    """Run the watcher until stopped (or idle); with ``feed_sessions``, print the live feed.
    Returns the exit code."""
    from producer.reconciler import Reconciler
    from producer.registrar import Registrar
    from producer.watcher import InboxWatcher
    from worker.app import app as celery_app

    registrar = Registrar(settings=settings, app=celery_app, roots=[inbox])
    watcher = InboxWatcher(inbox, registrar, settle_seconds=settings.settle_seconds,
                           rescan_seconds=settings.rescan_seconds, polling=settings.watch_polling,
                           reconciler=Reconciler(registrar), reconcile_seconds=settings.reconcile_seconds)
    feed = _LiveFeed(settings, feed_sessions) if feed_sessions is not None else None
    stop = threading.Event()
    failed = {"code": 0}

    def handle(signum, _frame):
        log.info("stopping (signal %s)", signum)
        stop.set()

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def until() -> bool:
        if worker is not None and worker.poll() is not None:
            where = f"; see {log_file}" if log_file else ""
            log.error("the worker exited with code %s%s", worker.returncode, where)
            failed["code"] = EXIT_ERROR
            return True
        return exit_when_idle and registrar.pending_runs() == 0

    try:
        if feed is not None:
            feed.start()
        watcher.run(stop, until=until if (exit_when_idle or worker is not None) else None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if feed is not None:
            feed.finish(drain=exit_when_idle and not stop.is_set() and not failed["code"])
    if failed["code"]:
        return failed["code"]
    if exit_when_idle and feed is not None and feed.problems:
        return EXIT_PARTIAL
    return 0


class _LiveFeed:
    """Polls the ledger (storage.progress) about once a second in a thread of its own and prints
    what finished (darkroom.cli.feed)."""

    def __init__(self, settings: Settings, factory) -> None:
        from darkroom import catalog
        from darkroom.cli.feed import Feed
        from storage import progress
        from storage.db import read_only

        self._progress, self._read_only, self._sessions = progress, read_only, factory
        self._primary = catalog.get("classify").model_key(settings)
        self._feed = Feed(out)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="darkroom-feed", daemon=True)
        with read_only(factory) as s:
            self._watch = progress.start_watch(s)

    @property
    def problems(self) -> int:
        return self._feed.status.problems

    def start(self) -> None:
        self._feed.__enter__()
        self._thread.start()

    def _poll(self) -> int:
        with self._read_only(self._sessions) as s:
            items = self._progress.poll(s, self._watch, primary_model=self._primary)
        self._feed.show(items, pending=len(self._watch.waiting))
        return len(items)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._poll()
            except Exception as exc:  # noqa: BLE001 - a database hiccup: the feed waits for the next poll
                log.warning("progress poll failed: %s", exc)

    def finish(self, *, drain: bool) -> None:
        """Stop polling; show what finished last, then the summary line. ``drain`` (the system is
        idle): poll until every photo waited for has been shown (a few polls past a million)."""
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            misses = 0
            for _ in range(10_000 if drain else 1):
                misses = 0 if self._poll() else misses + 1
                if not self._watch.waiting or misses >= 3:
                    break
        except Exception as exc:  # noqa: BLE001 - the feed is a view: it never stops `up`
            log.warning("progress poll failed: %s", exc)
        self._feed.summary()


def watch(
    inbox: Annotated[Path, typer.Argument(help="Folder to watch; created if missing.")] = Path("inbox"),
    exit_when_idle: Annotated[bool, typer.Option(help="Register what is there, wait for its results, exit.")] = False,
) -> None:
    """The producer alone: watch INBOX, register and enqueue every complete photo."""
    settings = read_settings()
    setup_logging(settings)
    check_broker(settings)
    sessions(settings, migrate=True)
    raise typer.Exit(_watch(settings, inbox, exit_when_idle=exit_when_idle))


def worker(
    queues: Annotated[str | None, typer.Option("--queues", "-Q", help="Comma-separated: cpu,gpu.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", help="Processes (default: cores).")] = None,
    loglevel: Annotated[str | None, typer.Option("--loglevel", "-l")] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", "-n", help="Celery node name.")] = None,
) -> None:
    """A worker alone: Celery's own worker on Darkroom's app (`celery -A worker.app worker` works too)."""
    settings = read_settings()
    setup_logging(settings)
    check_broker(settings)
    sessions(settings, migrate=True)
    from worker.app import app as celery_app

    argv = [
        "worker",
        "--queues", queues or ",".join(settings.queues),
        "--concurrency", str(concurrency or settings.concurrency or os.cpu_count() or 1),
        "--loglevel", (loglevel or settings.log_level).upper(),
        "--hostname", hostname or f"darkroom-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle",
    ]
    celery_app.worker_main(argv=argv)


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to walk.")],
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="Process the files where they lie: nothing is copied into the blob store "
                           "(DARKROOM_BLOB_MODE=reference, for this ingest). Leave them there, unchanged, until "
                           "they are processed: a worker checks each one, and a moved or deleted one fails with "
                           "the way to fix it.")] = False,
    changed: Annotated[bool, typer.Option(
        "--changed", help="Also read again the registered files whose size or modification time changed "
                          "(by default a path already registered is skipped unread: new files only).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Read every file again, registered or not, and hash it (an edited file whose size "
                        "and time were kept is found too).")] = False,
) -> None:
    """Walk trees once: register and enqueue every image, with a progress bar.

    The bar appears at once and counts files as they are registered (files/s, MB/s); the ETA
    shows once a background count of the files is done. Ctrl-C finishes the files in hand and
    stops (exit 130): run the same command again to go on, nothing registered is read again.
    Exits 3 when some files were rejected or refused at registration."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from producer.registrar import Outcome, Registrar
    from worker.app import app as celery_app

    settings = read_settings()
    setup_logging(settings)
    logging.getLogger("producer").setLevel(logging.WARNING)
    logging.getLogger("worker").setLevel(logging.WARNING)
    check_broker(settings)
    sessions(settings, migrate=True)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise fail(f"no such file or folder: {', '.join(map(str, missing))}")
    if in_place:
        settings = settings.model_copy(update={"blob_mode": "reference"})
    if settings.blob_mode == "reference":
        err.print("in place: nothing is copied; leave the files where they are, unchanged, until they are "
                  "processed", highlight=False, soft_wrap=True)
    roots = [p if p.is_dir() else p.parent for p in paths]
    stop = threading.Event()
    registrar = Registrar(settings=settings, app=celery_app, roots=roots,
                          rescan="force" if force else "changed" if changed else "new", stop=stop)
    counts = {o: 0 for o in Outcome}
    try:
        for root in roots:
            registrar.ignore_rules(root).check()  # a broken .darkroomignore: said before anything is read
    except ValueError as exc:
        raise fail(str(exc)) from None
    counter = _Counter(paths, stop, registrar.ignore_rules)

    def on_interrupt(_signum, _frame):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: now

    previous = signal.signal(signal.SIGINT, on_interrupt)
    stopped = False
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _rates_column(),
                      TimeRemainingColumn(), console=err) as progress:
            bar = progress.add_task("ingest (counting)", total=None, read=0)
            counter.start()
            # Registered a chunk at a time as the walk finds them (one transaction, then their runs
            # are sent): the workers start on the first chunk at once, and nothing holds the tree.
            for chunk in registrar.register_stream(_files_of(paths, registrar.ignore_rules), chunk=INGEST_CHUNK,
                                                   stop=stop):
                for outcome in chunk.outcomes:
                    counts[outcome] += 1
                progress.update(bar, advance=len(chunk.paths), read=progress.tasks[0].fields["read"] + chunk.bytes_read)
                if counter.total is not None and progress.tasks[0].total is None:
                    progress.update(bar, total=counter.total, description="ingest")
        # The runs not sent yet (backpressure held them); Ctrl-C leaves them to the next ingest,
        # `darkroom up` or `watch`, which send what the ledger holds unsent.
        if not stop.is_set():
            registrar.send_pending()
        stopped = stop.is_set()
    except KeyboardInterrupt:  # a second Ctrl-C: the chunk in hand was rolled back
        stopped = True
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.set()
        registrar.close()
    done = sum(counts.values())
    summary = ", ".join(f"{n} {o.value}" for o, n in counts.items() if n)
    if stopped:
        again = shlex.join(["darkroom", *sys.argv[1:]])
        err.print(f"darkroom: stopped after {done} file(s) ({summary or 'none registered'}); what is registered "
                  f"stays. Run `{again}` again to go on: registered files are not read again.",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    out.print(f"{done} file(s): {summary or 'nothing to do'}", highlight=False)
    if counts[Outcome.REJECTED] or counts[Outcome.REFUSED]:
        raise typer.Exit(EXIT_PARTIAL)


def _files_of(paths: list[Path], rules=None):
    """The files to ingest, as the walk finds them (no list of them); ``rules(root)``: what the walk
    of ``root`` leaves alone (``producer.files.IgnoreRules``: a folder left alone is not entered)."""
    from producer.files import walk

    for p in paths:
        if p.is_dir():
            yield from walk(p, rules(p) if rules is not None else None)
        else:
            yield p


class _Counter(threading.Thread):
    """Counts the files to ingest in the background (the walk again, names only), for the ETA."""

    def __init__(self, paths: list[Path], stop: threading.Event, rules=None) -> None:
        super().__init__(name="darkroom-count", daemon=True)
        self.paths, self.stop, self.total, self.rules = paths, stop, None, rules

    def run(self) -> None:
        n = 0
        for _path in _files_of(self.paths, self.rules):
            n += 1
            if self.stop.is_set():
                return
        self.total = n


def _rates_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rates(ProgressColumn):
        """Files and megabytes per second since the start."""

        def render(self, task) -> Text:
            elapsed = task.elapsed or 0.0
            if elapsed <= 0:
                return Text("")
            return Text(f"{task.completed / elapsed:,.0f} files/s {task.fields.get('read', 0) / elapsed / 1e6:,.1f} MB/s",
                        style="progress.data.speed")

    return Rates()
