"""Looking at and acting on the SQL ledger: `status`, `results`, `export`, `retry`, `rerun`,
`reconcile`, `migrate` and `config`.

The producer, worker and storage stack (Celery, SQLAlchemy, redis) and TensorFlow (through
tasks.classify) are imported inside each command, so that building the app for `darkroom --help`
does not load them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from darkroom import catalog
from darkroom.cli.common import (
    CLASSIFIER_FLAGS,
    EXIT_ERROR,
    EXIT_PARTIAL,
    EXIT_USAGE,
    broker_problem,
    check_broker,
    database_unreachable,
    die,
    err,
    expand_selectors,
    fail,
    model_and_weights,
    one_line,
    out,
    print_json,
    read_settings,
    sessions,
    short_path,
    short_reason,
    shorten,
)
from darkroom.settings import Settings

#: Problem groups `status` shows without --all.
STATUS_GROUPS = 20
#: Problems (one per run or file) `status --json` lists without --all.
STATUS_PROBLEMS = 1000
#: The most time `status` spends bringing the image counts up to date before it reads them.
STATUS_FOLD_SECONDS = 3.0
#: Seconds between `retry --wait`'s looks at the ledger.
WAIT_POLL_SECONDS = 1.0


def register(app: typer.Typer) -> None:
    app.command()(retry)
    app.command()(reconcile)
    app.command()(migrate)
    app.command()(status)
    app.command()(results)
    app.command()(export)
    app.command()(config)


def register_rerun(app: typer.Typer) -> None:
    """`rerun` is listed with the course's commands, as before."""
    app.command("rerun")(rerun)


# --- acting -------------------------------------------------------------------------------------


def retry(
    failed: Annotated[bool, typer.Option("--failed/--no-failed", help="Retry failed runs.")] = True,
    rejected: Annotated[bool, typer.Option(help="Also re-examine rejected images (e.g. after raising a limit).")] = False,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the runs sent are finished, printing each outcome; exit 3 if any failed "
                       "or was rejected again (a worker must be running).")] = False,
) -> None:
    """Send failed (and, if asked, rejected) task runs to the workers again."""
    from producer.registrar import Registrar
    from storage import ledger
    from storage.db import transaction
    from storage.models import FAILED, REJECTED
    from worker.app import app as celery_app

    settings = read_settings()
    if task is not None and task not in catalog.NAMES:
        raise fail(f"unknown task {task!r}; one of: {', '.join(catalog.NAMES)}")
    statuses = [s for s, wanted in ((FAILED, failed), (REJECTED, rejected)) if wanted]
    if not statuses:
        raise fail("nothing to retry: give --failed and/or --rejected")
    check_broker(settings)
    registrar = Registrar(settings=settings, app=celery_app, roots=[])
    with transaction(registrar.sessions) as s:
        ids = ledger.requeue_runs(s, statuses=statuses, task=task)
    registrar.send_pending()
    out.print(f"sent {len(ids)} run(s) to the workers again", highlight=False)
    if wait and ids:
        raise typer.Exit(_wait_for(registrar.sessions, ids))


def _wait_for(factory, run_ids: list[int]) -> int:
    """Print each run's outcome as it ends; 3 when any failed or was rejected, else 0."""
    from darkroom.cli.feed import run_line
    from storage import progress
    from storage.db import read_only

    left = set(run_ids)
    bad = 0
    started = time.monotonic()
    err.print(f"waiting for {len(left)} run(s) to finish (`darkroom worker` or `darkroom up` does the work; "
              "Ctrl-C stops waiting, not the work)", highlight=False, soft_wrap=True)
    while left:
        with read_only(factory) as s:
            ended = progress.ended_runs(s, sorted(left))
        for run in ended:
            left.discard(run.run_id)
            bad += run.status != "done"
            out.print(run_line(run, out.width), soft_wrap=True, highlight=False)
        if left:
            time.sleep(WAIT_POLL_SECONDS)
    n = len(run_ids)
    out.print(f"finished: {n - bad} done, {bad} failed or rejected, {time.monotonic() - started:.0f} s",
              highlight=False)
    return EXIT_PARTIAL if bad else 0


def rerun(
    task: Annotated[str, typer.Option("--task", "-t", help=f"One of {', '.join(catalog.NAMES)}.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="classify only: the classifier (default: DARKROOM_CLASSIFIER_MODEL). Another model "
                        "labels every image anew, stored beside the labels already there.")] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="classify only: imagenet, none or a weights file.")] = None,
    failed_only: Annotated[bool, typer.Option("--failed-only", help="Only the runs that failed.")] = False,
) -> None:
    """Do a task again over every stored image, through the queue: a new classifier, changed settings."""
    # Creates the task's run for every image that lacks it (another --model labels every image anew,
    # its labels stored beside the others) and sends the done and failed runs again; --failed-only
    # sends the failed ones only (storage.ledger.rerun).
    from storage import ledger
    from storage.db import transaction
    from tasks.classify import Classifier, ModelUnavailable

    if task not in catalog.NAMES:
        die(f"--task: unknown task {task!r}: use one of {', '.join(catalog.NAMES)}")
    settings = read_settings()
    if task == "classify":
        name, chosen = model_and_weights(settings, model, weights)
        try:
            Classifier.create(name, chosen, names=CLASSIFIER_FLAGS)  # cheap: checks the name and that given files exist
        except ModelUnavailable as exc:
            die(str(exc))
        except ValueError as exc:
            die(f"--model: {exc}")
        key = catalog.classifier_key(name, chosen)
    elif model is not None or weights is not None:
        die("--model and --weights apply to --task classify only")
    else:
        key = catalog.get(task).model_key(settings)
    check_broker(settings)
    factory = sessions(settings)
    with transaction(factory) as s:
        done = ledger.rerun(s, task, key, failed_only=failed_only)
    sent = _send_unsent(settings)
    label = f"{task}:{key}" if key else task
    typer.echo(f"{label}: {len(done.created)} new run(s), {len(done.requeued)} requeued; {sent} sent "
               "(a worker does the work: `darkroom worker` or `darkroom up`)")


def _send_unsent(settings: Settings) -> int:
    """Send every run whose message is not in the broker yet: the producer's own sending, with its
    backpressure."""
    from producer.registrar import Registrar
    from worker.app import create_app

    celery_app = create_app(settings)
    try:
        return Registrar(settings=settings, app=celery_app, roots=[]).send_pending()
    finally:
        celery_app.close()


def reconcile() -> None:
    """Compare the SQL ledger with the broker now: resend what the broker lost or a dead worker held."""
    from producer.reconciler import Reconciler
    from producer.registrar import Registrar
    from worker.app import app as celery_app

    settings = read_settings()
    check_broker(settings)
    sessions(settings)
    result = Reconciler(Registrar(settings=settings, app=celery_app, roots=[])).check()
    out.print(f"broker lost its queue: {'yes' if result.broker_lost else 'no'}; "
              f"failed over to a new master: {'yes' if result.failover else 'no'}; resent {result.resent}, "
              f"taken over from dead workers {result.taken_over}, expired leases {result.expired}", highlight=False)


def migrate() -> None:
    """Create or upgrade the database schema."""
    settings = read_settings()
    sessions(settings, migrate=True)
    out.print(f"schema is current in {settings.masked()['database_url']}", highlight=False)


# --- looking ------------------------------------------------------------------------------------


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    show_all: Annotated[bool, typer.Option(
        "--all", help=f"Every group of problems, not only the newest {STATUS_GROUPS}.")] = False,
) -> None:
    """Counts per task and state, queue depths, and the failures grouped by task, state and reason.

    Exits 1 when the broker or the database is unreachable (after printing what it could)."""
    from sqlalchemy.exc import DBAPIError

    from storage import ignored, ledger, progress
    from storage.db import read_only

    settings = read_settings()
    unreachable: list[str] = []
    runs: dict[tuple[str, str], int] = {}
    images: dict[str, int] = {}
    left_alone: dict[str, int] = {}
    uncounted = 0
    problems: list = []
    summary = None
    try:
        # A short connect timeout: compose's health check runs `darkroom status` with 20 s to answer.
        factory = sessions(settings, connect_timeout=5)
        # The counts are kept as the work happens; recount the photos whose state changed since
        # the producer last did (a few seconds at most; the rest is said).
        uncounted = ledger.fold_pending(factory, seconds=STATUS_FOLD_SECONDS)
        with read_only(factory) as s:
            runs = ledger.run_counts(s)
            images = dict(ledger.image_counts(s))
            left_alone = ignored.counts(s)  # one row per kind
            if as_json:  # the newest (--all: every one)
                problems = ledger.problems(s, limit=None if show_all else STATUS_PROBLEMS)
            summary = progress.problem_groups(s, limit=None if show_all else STATUS_GROUPS)
    except typer.Exit:
        # The schema is missing (run `darkroom migrate`) or the database did not answer: said already.
        unreachable.append("database")
    except DBAPIError as exc:
        unreachable.append("database")
        fail(database_unreachable(settings, exc))
    depths = _queue_depths(settings)
    if isinstance(depths, str):
        unreachable.append("broker")
    if as_json:
        data = {
            "images": images,
            "ignored": left_alone,
            "uncounted": uncounted,
            "runs": {f"{task}:{state}": n for (task, state), n in sorted(runs.items())},
            "queues": depths,
            "problems": [vars(p) for p in problems],
            "problem_groups": [g.to_dict() for g in summary.groups] if summary else [],
        }
        if unreachable:
            data["unreachable"] = unreachable
        print_json(data)
    else:
        _print_status(runs, images, depths, summary, show_all, uncounted, left_alone)
    if "broker" in unreachable:
        problem = broker_problem(settings) or f"the broker at {settings.masked()['broker_url']} did not answer"
        err.print(f"[bold red]darkroom:[/] {problem}", highlight=False, soft_wrap=True)
    if unreachable:
        raise typer.Exit(EXIT_ERROR)


def _queue_depths(settings: Settings) -> dict[str, int] | str:
    import redis as redis_lib

    from worker.broker import for_settings
    from worker.queues import queue_depths

    try:
        return queue_depths(for_settings(settings, socket_timeout=3, socket_connect_timeout=3))
    except (redis_lib.RedisError, OSError) as exc:
        return f"unreachable ({type(exc).__name__})"


def _print_status(runs, images, depths, summary, show_all: bool, uncounted: int = 0,
                  left_alone: dict[str, int] | None = None) -> None:
    if runs:
        table = Table(title="task runs")
        states = ["queued", "running", "done", "failed", "rejected"]
        table.add_column("task")
        for st in states:
            table.add_column(st, justify="right")
        tasks = sorted({t for t, _ in runs}, key=lambda t: catalog.NAMES.index(t) if t in catalog.NAMES else 99)
        for task in tasks:
            table.add_row(task, *[str(runs.get((task, st), 0)) for st in states])
        out.print(table)
    out.print("images: " + (", ".join(f"{n} {st}" for st, n in sorted(images.items())) or "none")
              + (f" ({uncounted} more changed state a moment ago and are still being counted)" if uncounted else ""),
              highlight=False)
    if left_alone:
        out.print("ignored (left alone, not registered): " + ", ".join(
            f"{n} {'by a pattern' if kind == 'pattern' else kind}" for kind, n in left_alone.items()),
            highlight=False, soft_wrap=True)
    if isinstance(depths, dict):
        out.print("queues: " + ", ".join(f"{q} {n}" for q, n in depths.items()), highlight=False)
    else:
        out.print(f"queues: {depths}", highlight=False)
    if summary is None or not summary.groups:
        return
    groups = summary.groups
    out.print(f"\n[bold]failed and rejected ({summary.total}"
              + (f", {summary.kinds} kinds of problem" if summary.kinds != summary.total else "") + ")[/]")
    # One line each, never wrapped: reasons are long, and people grep and copy them. The same
    # failure on many photos is one line, with its count and the command that retries it.
    for g in groups:
        what = f"{g.task} {g.status}" if g.task else g.status
        where = g.example or ""
        many = f" ×{g.count}" if g.count > 1 else ""
        head = f"- [{what}{many}]"
        if g.count == 1 or not g.task:
            head += f" {where}" if where and where not in g.reason else ""
        else:
            head += f" e.g. {where}" if where else ""
        again = ""
        if g.task:
            flags = f"--task {g.task}" if g.status == "failed" else f"--no-failed --rejected --task {g.task}"
            again = f" (retry: darkroom retry {flags})"
        out.print(f"{head}: {one_line(g.reason)}{again}", soft_wrap=True, highlight=False, markup=False)
    if summary.kinds > len(groups) and not show_all:
        out.print(f"… {summary.kinds - len(groups)} more (darkroom status --all)", highlight=False)


#: Images a page of `results` reads at once (the table prints a page at a time).
RESULTS_PAGE = 500
#: Beyond this many images, and beyond one per :data:`NEAR_INDEX_HASHES_PER_IMAGE` stored hashes,
#: `results` finds near-duplicates in an index of every hash held in memory (16 bytes a photo)
#: instead of looking up each photo's through the hash bands. A look-up costs about 7 ms a photo;
#: the index about 25 µs a stored hash (25 s at a million), so it pays once a stream has listed
#: about one photo per 250 stored hashes — and a short listing of a large store never builds it.
NEAR_INDEX_AFTER = 200
NEAR_INDEX_HASHES_PER_IMAGE = 250
#: A --json or --jsonl stream longer than this many images goes on in worker processes
#: (``storage.stream``; --jobs): a short one is written before they would have started.
PARALLEL_AFTER = 2000


def results(
    selectors: Annotated[list[str] | None, typer.Argument(
        help="Paths or sha256 (prefixes of 8+); all images (or those the filters choose) if none.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="The JSON array (see README: Results JSON), written as it is read: one image per line.")] = False,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per line, no array.")] = False,
    status: Annotated[str | None, typer.Option(
        "--status", help="Only images in this state: queued, running, done, failed or rejected.")] = None,
    label: Annotated[str | None, typer.Option(
        "--label", help="Only images with this label among their top labels: the whole label, any case, a space "
                        "for an underscore ('golden retriever' finds golden_retriever).")] = None,
    min_score: Annotated[float | None, typer.Option(
        "--min-score", help="With --label: that label scores at least this (0..1).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="With --label: whose labels, a classifier (mobilenet_v2) or a stored key (vgg16@none); "
                        "default: DARKROOM_CLASSIFIER_MODEL's.")] = None,
    faces: Annotated[str | None, typer.Option(
        "--faces", help="Only images whose faces run is done with exactly N faces (N+: N or more; 0: none).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only images registered at or after this local date or time (2024-05-01, "
                        "2024-05-01T14:30).")] = None,
    taken_since: Annotated[str | None, typer.Option(
        "--taken-since", help="Only photos taken at or after this date or time, by the camera's clock (EXIF); "
                              "with a zone (…+02:00) an instant.")] = None,
    taken_until: Annotated[str | None, typer.Option(
        "--taken-until", help="Only photos taken before this time, or up to the end of this date (2024-05-31), "
                              "by the camera's clock; with a zone an instant.")] = None,
    camera: Annotated[str | None, typer.Option(
        "--camera", help="Only photos taken with this camera: its make (nikon, canon, apple), its model (d850, "
                         "'iPhone 15 Pro') or both ('nikon d850'); any case.")] = None,
    file_format: Annotated[str | None, typer.Option(
        "--format", help="Only photos of this format: JPEG (or jpg), PNG, GIF, WEBP, TIFF, BMP, HEIF (or heic), "
                         "AVIF, RAW; any case.")] = None,
    near: Annotated[int | None, typer.Option(
        "--near", min=0, max=10, help="Only photos with a near-duplicate within this many bits (0: an identical "
                                     "perceptual hash; DARKROOM_PHASH_DISTANCE is the usual choice).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many images.")] = None,
    after: Annotated[str | None, typer.Option(
        "--after", help="Start after this image: the sha256 of the last one of the previous page.")] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", min=1, max=64, help="Processes that read and write a long --json or --jsonl stream, each with "
                                      "a database connection (default: the cores + 1, at most 8; 1: this one "
                                      "process).")] = None,
) -> None:
    """Print the results of some or all images, as they are read (each cell one short line; --json
    and --jsonl have the full text). Filters combine; --limit and --after page through them."""
    from storage import ledger, stream
    from storage import results as stored
    from storage.db import read_only

    settings = read_settings()
    if as_json and as_jsonl:
        raise fail("give --json or --jsonl, not both", EXIT_USAGE)
    filtering = any(v is not None for v in (status, label, min_score, model, faces, since, taken_since, taken_until,
                                            camera, file_format, near, limit, after))
    if selectors and filtering:
        raise fail("give paths or sha256s, or filters (--status, --label, --faces, --since, --taken-since, "
                   "--taken-until, --camera, --format, --near, --limit, --after), not both", EXIT_USAGE)
    flt = _result_filter(settings, status, label, min_score, model, faces, since)
    flt = dataclasses.replace(flt, **_capture_filter(taken_since, taken_until, camera))
    try:
        flt = dataclasses.replace(flt, format=file_format, near=near)
    except ValueError as exc:
        raise fail(f"--format: {exc}", EXIT_USAGE) from None
    factory = sessions(settings)
    writer = _ResultsWriter("json" if as_json else "jsonl" if as_jsonl else "table")
    try:
        with read_only(factory) as s:
            if selectors:
                images = _selected(s, selectors)
                if not images:
                    raise fail(f"no image matches {' '.join(selectors)}")
                pages = iter([images])
            else:
                if model is not None and flt.model not in stored.label_models(s):  # a typo would find nothing
                    known = ", ".join(stored.label_models(s)) or "none yet"
                    raise fail(f"--model: no labels from {flt.model} are stored (models with labels: {known})",
                               EXIT_USAGE)
                start = None
                if after is not None:
                    try:
                        image = stored.find_image(s, after) if len(after) >= 8 else None
                    except stored.AmbiguousSelector as exc:
                        raise fail(f"--after: {exc}", EXIT_USAGE) from None
                    if image is None:
                        raise fail(f"--after: no image has the sha256 {after}; give the sha256 of the last image "
                                   "of the previous page", EXIT_USAGE)
                    start = image.id
                pages = stored.iter_pages(s, flt, after=start, limit=limit, batch=RESULTS_PAGE)
            ctx = catalog.read_context(settings)
            stores = catalog.result_stores()
            # The stored hashes, from the counts the database keeps (no count of the table).
            hashes = ledger.run_counts(s).get(("phash", "done"), 0)
            index_after = max(NEAR_INDEX_AFTER, hashes // NEAR_INDEX_HASHES_PER_IMAGE)
            # Stored pairs serve every photo in one read a page, unless some hash is not paired yet.
            lookups = stored.PHASHES.looks_up(s, ctx.near_distance)
            workers = jobs or stream.default_jobs()

            def indexed(ctx):
                # A long stream: every hash in memory once beats a look-up through the bands per photo.
                return dataclasses.replace(ctx, near_lookup=_NearIndex(s, ctx.near_distance)) \
                    if lookups and ctx.near_lookup is None else ctx

            for page in pages:
                if writer.count + len(page) > index_after:
                    ctx = indexed(ctx)
                writer.write(stored.results_json(s, page, stores, ctx))
                if (not selectors and writer.kind != "table" and workers > 1 and writer.count >= PARALLEL_AFTER
                        and len(page) == RESULTS_PAGE):
                    # A long stream: the rest of its pages read and written by worker processes.
                    pages.close()
                    left = None if limit is None else limit - writer.count
                    if left == 0:
                        break
                    ctx = indexed(ctx)  # before the workers are forked: they share it
                    ids = stored.iter_page_ids(s, flt, after=page[-1].id, limit=left, batch=RESULTS_PAGE)
                    try:
                        with _StopBetweenPages() as stopping:
                            for count, text in stream.json_pages(ids, s.get_bind(), stores, ctx, jobs=workers,
                                                                 separator=writer.separator):
                                writer.write_encoded(count, text)
                                stopping.check()
                    except stream.StreamWorkerFailed as exc:
                        raise fail(str(exc)) from None
                    break
        writer.close()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly.
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    if writer.count == 0 and writer.kind == "table" and filtering:
        err.print("no image matches the filters", highlight=False)


class _StopBetweenPages:
    """SIGTERM and Ctrl-C end a stream between two pages, through its ``finally`` blocks (its worker
    processes stopped, its transaction ended), not in the middle of a statement, which would leave
    the connection mid-command and the ending with a traceback. A second signal ends it at once."""

    def __enter__(self) -> _StopBetweenPages:
        import signal

        self.signum: int | None = None
        self.old = {sig: signal.signal(sig, self._note) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum, _frame) -> None:
        if self.signum is not None:
            self._raise(signum)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            self._raise(self.signum)

    @staticmethod
    def _raise(signum: int) -> None:
        import signal

        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def __exit__(self, *_exc) -> None:
        import signal

        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class _NearIndex:
    """Every stored perceptual hash and the pairs within ``distance`` bits (``tasks.phash.neighbours``:
    multi-index hashing, never all pairs), as arrays: each photo's near-duplicates without a
    statement per photo. A million photos: about 16 MB and a few seconds, once."""

    def __init__(self, session, distance: int) -> None:
        import numpy as np

        from storage import results as stored
        from tasks.phash import neighbours

        ids, hashes = [], []
        batch_ids, batch_hashes = [], []
        for image_id, value in stored.PHASHES.all_hashes(session):
            batch_ids.append(image_id)
            batch_hashes.append(value)
            if len(batch_ids) >= 100_000:
                ids.append(np.array(batch_ids, dtype=np.int64))
                hashes.append(np.array(batch_hashes, dtype=np.uint64))
                batch_ids, batch_hashes = [], []
        ids.append(np.array(batch_ids, dtype=np.int64))
        hashes.append(np.array(batch_hashes, dtype=np.uint64))
        self.ids = np.concatenate(ids)  # in id order (all_hashes reads by keyset)
        pairs = neighbours(np.concatenate(hashes), distance)
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
        order = np.argsort(src, kind="stable")
        self.others = self.ids[dst[order]]
        self.starts = np.searchsorted(src[order], np.arange(self.ids.size + 1))

    def __call__(self, image_ids) -> dict[int, list[int]]:
        import numpy as np

        wanted = np.asarray(list(image_ids), dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, wanted), max(self.ids.size - 1, 0))
        found: dict[int, list[int]] = {}
        for image_id, i in zip(wanted.tolist(), at.tolist()):
            if self.ids.size and self.ids[i] == image_id and self.starts[i + 1] > self.starts[i]:
                found[image_id] = self.others[self.starts[i]:self.starts[i + 1]].tolist()
        return found


def _selected(s, selectors: list[str]) -> list:
    """The images the selectors name, each an index look-up (paths as given and made absolute)."""
    from storage import results as stored

    return stored.find_images(s, expand_selectors(selectors))


def _result_filter(settings: Settings, status, label, min_score, model, faces, since):
    """The options as a ``ResultFilter``, or a one-line usage error naming the option."""
    import datetime as dt
    import re

    from storage import results as stored

    if status is not None and status not in stored.IMAGE_STATES:
        raise fail(f"--status: {status!r} is not a state; one of {', '.join(stored.IMAGE_STATES)}", EXIT_USAGE)
    if label is None and (min_score is not None or model is not None):
        raise fail("--min-score and --model qualify --label: give --label too (e.g. --label tabby --min-score 0.5)",
                   EXIT_USAGE)
    if label is not None and not label.strip():
        raise fail("--label: give the label's text (e.g. --label tabby)", EXIT_USAGE)
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise fail(f"--min-score: {min_score} is not a score; give one from 0 to 1 (e.g. 0.5)", EXIT_USAGE)
    key = None
    if label is not None:
        if model is None:
            key = catalog.get("classify").model_key(settings)
        else:
            name, weights = model_and_weights(settings, model, None)
            key = catalog.classifier_key(name, weights)
    n_faces, or_more = None, False
    if faces is not None:
        match = re.fullmatch(r"\s*(\d+)\s*(\+?)\s*", faces)
        if not match:
            raise fail(f"--faces: {faces!r} is not a number of faces; give N (exactly N) or N+ (N or more), "
                       "e.g. --faces 2+", EXIT_USAGE)
        n_faces, or_more = int(match.group(1)), bool(match.group(2))
    when = None
    if since is not None:
        try:
            when = dt.datetime.fromisoformat(since.strip())
        except ValueError:
            raise fail(f"--since: {since!r} is not a date or time; give an ISO date (2024-05-01) or date and time "
                       "(2024-05-01T14:30, local time unless it says its zone)", EXIT_USAGE) from None
        if when.tzinfo is None:
            when = when.astimezone()  # the local time a person means
    return stored.ResultFilter(status=status, label=label, min_score=min_score, model=key, faces=n_faces,
                               faces_or_more=or_more, since=when)


def _capture_filter(taken_since: str | None, taken_until: str | None, camera: str | None) -> dict:
    """The capture filters' ``ResultFilter`` fields, or a one-line usage error naming the option. A
    time without a zone is the camera's clock (kept naive); a date alone for --taken-until is up to
    the end of that day."""
    import datetime as dt

    def parse(option: str, text: str | None, end_of_day: bool) -> dt.datetime | None:
        if text is None:
            return None
        try:
            when = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise fail(f"{option}: {text!r} is not a date or time; give an ISO date (2024-05-01) or date and time "
                       "(2024-05-01T14:30, by the camera's clock; or with a zone: 2024-05-01T14:30+02:00)",
                       EXIT_USAGE) from None
        if end_of_day and len(text.strip()) == 10:  # a date alone: that whole day
            when += dt.timedelta(days=1)
        return when

    if camera is not None and not camera.strip():
        raise fail("--camera: give a make or a model (e.g. --camera nikon, --camera 'iPhone 15 Pro')", EXIT_USAGE)
    return {"taken_since": parse("--taken-since", taken_since, False),
            "taken_until": parse("--taken-until", taken_until, True), "camera": camera}


class _ResultsWriter:
    """Writes results as they come, a page at a time: the JSON array (``[``, one image a line,
    separated by ``,``, ``]``; ``[]`` when none), JSON lines, or the table of one-line cells."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0
        self.widths = self._widths() if kind == "table" else {}

    def write(self, items: list[dict]) -> None:
        import orjson  # JSON a few times faster than the standard library's: a stream writes a million

        if self.kind == "table":
            if items:
                out.print(self._table(items, header=self.count == 0))
            self.count += len(items)
        else:
            self.write_encoded(len(items), self.separator.join(map(orjson.dumps, items)))

    @property
    def separator(self) -> bytes:
        """What comes between two images' JSON objects: a comma in the array, a line each."""
        return b",\n" if self.kind == "json" else b"\n"

    def write_encoded(self, count: int, text: bytes) -> None:
        """``count`` images' JSON objects, already encoded and joined by :attr:`separator`."""
        import sys

        if count:
            if self.kind == "json":
                sys.stdout.buffer.write(b"[\n" if self.count == 0 else b",\n")
                sys.stdout.buffer.write(text)
            else:
                sys.stdout.buffer.write(text + b"\n")
            sys.stdout.buffer.flush()
        self.count += count

    def close(self) -> None:
        import sys

        if self.kind == "json":
            sys.stdout.buffer.write(b"\n]\n" if self.count else b"[]\n")
            sys.stdout.buffer.flush()

    @staticmethod
    def _widths() -> dict[str, int]:
        # Each cell one line: the fixed columns take what they need, the rest of the width goes to the
        # path (its end kept), the top label and the errors (the task and the gist of its reason).
        fixed = {"status": 8, "size": 9, "faces": 5, "aug": 3}
        room = max(30, out.width - 3 * 7 - 1 - sum(fixed.values()))  # padding and dividers
        widths = {"path": room * 2 // 5, "top label": room // 5}
        widths["errors"] = room - widths["path"] - widths["top label"]
        widths.update(fixed)
        return widths

    def _table(self, items: list[dict], *, header: bool) -> Table:
        widths = self.widths
        # A page at a time, each with the same widths, so that the pages line up as one table.
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=header, show_edge=False)
        for col in ("path", "status", "size", "top label", "faces", "aug", "errors"):
            table.add_column(col, no_wrap=True, overflow="ellipsis", width=widths[col],
                             justify="right" if col in ("faces", "aug") else "left")
        for item in items:
            top = item["labels"][0] if item["labels"] else None
            errors = "; ".join(f"{task}: {short_reason(_without_path(why, item['paths']), 40)}"
                               for task, why in item["errors"].items())
            table.add_row(
                short_path(item["path"], widths["path"]) or item["sha256"][:12], item["status"],
                f"{item['width']}x{item['height']}" if item["width"] else "-",
                shorten(f"{top['label']} {top['score'] * 100:.0f}%", widths["top label"]) if top else "-",
                str(len(item["faces"])), str(item["augmentations"]), shorten(errors, widths["errors"]),
            )
        return table


def _without_path(reason: str, paths: list[str]) -> str:
    """Rejection reasons start with the file's path; the path column shows it already."""
    for p in paths:
        if reason.startswith(p):
            return reason[len(p):].lstrip(" :") or reason
    return reason


def export(
    directory: Annotated[Path, typer.Argument(help="Where to write; one folder per image, named by its sha256.")],
    selectors: Annotated[list[str] | None, typer.Argument(help="Paths or sha256; all images if none.")] = None,
) -> None:
    """Write the boxed images, augmented images, contact sheets and a JSON file per image."""
    from darkroom.cli.exporting import export_images

    settings = read_settings()
    factory = sessions(settings)
    try:
        n_images, n_files = export_images(factory, directory, expand_selectors(selectors or []), settings)
    except OSError as exc:
        raise fail(f"could not write into {directory}: {exc.strerror or exc} (files already written are "
                   "complete; nothing partial was left)") from None
    out.print(f"exported {n_images} image(s), {n_files} file(s) to {directory}", highlight=False)


def config(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The effective settings (environment, .env, defaults), with passwords masked."""
    masked = read_settings().masked()
    if as_json:
        print_json(masked)
        return
    table = Table(show_header=True)
    table.add_column("setting (DARKROOM_…)")
    table.add_column("value", overflow="fold")
    for key, value in masked.items():
        table.add_row(key.upper(), ",".join(map(str, value)) if isinstance(value, list) else str(value))
    out.print(table)
