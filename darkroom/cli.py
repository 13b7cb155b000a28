"""The ``darkroom`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from darkroom.console import err, fail as _fail
from darkroom.console import out as out_console

from darkroom.settings import ALL_TASKS, Settings, get_settings

app = typer.Typer(
    name="darkroom",
    help="Computer-vision work over photos as they arrive and over whole archives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console, out = err, out_console
#: Files `darkroom ingest` records per transaction.
INGEST_CHUNK = 32
log = logging.getLogger("darkroom")


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _settings() -> Settings:
    """The settings, or a clear error naming each bad variable (never echoing its value: it may be a secret)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"DARKROOM_{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise _fail(f"invalid settings: {problems}") from None
    except SettingsError as exc:
        raise _fail(f"invalid settings: {exc}") from None


def _sessions(settings: Settings, *, migrate: bool = False):
    from storage.db import make_engine, migrate as run_migrations, schema_is_current, session_factory

    engine = make_engine(settings.db_url)
    if migrate:
        run_migrations(engine)
    elif not schema_is_current(engine):
        raise _fail(f"the database {settings.masked()['database_url']} has no current Darkroom schema; "
                    "run `darkroom migrate` (or `darkroom up`) first")
    return session_factory(engine)


# --- running ------------------------------------------------------------------------------------


@app.command()
def up(
    inbox: Annotated[Path, typer.Argument(help="Folder to watch; created if missing.")] = Path("inbox"),
    exit_when_idle: Annotated[bool, typer.Option(help="Process what is there, then exit.")] = False,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-c", help="Worker processes.")] = None,
) -> None:
    """Watcher and a worker (all queues) in one foreground command; Ctrl-C stops both cleanly."""
    from darkroom.services import ServiceError, ensure_redis, stop_redis

    settings = _settings()
    _setup_logging(settings)
    inbox.mkdir(parents=True, exist_ok=True)
    try:
        redis_proc = ensure_redis(settings)
    except ServiceError as exc:
        raise _fail(str(exc)) from None
    try:
        _sessions(settings, migrate=True)
        argv = [sys.executable, "-m", "darkroom", "worker", "--queues", ",".join(settings.queues)]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        worker = subprocess.Popen(argv, start_new_session=True)
        console.print(f"Darkroom is watching [bold]{inbox}[/]; results in {settings.data_dir}. "
                      "Ctrl-C stops.", highlight=False)
        try:
            code = _watch(settings, inbox, exit_when_idle=exit_when_idle, worker=worker)
        finally:
            _stop_worker(worker)
    finally:
        stop_redis(redis_proc, settings.redis_url)
    if code:
        raise typer.Exit(code)


def _stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish or return in-flight work
    try:
        worker.wait(timeout=120)
    except subprocess.TimeoutExpired:
        log.error("worker did not stop within 120 s; killing it (its messages go back to the queue)")
        worker.kill()
        worker.wait()


def _watch(settings: Settings, inbox: Path, *, exit_when_idle: bool, worker: subprocess.Popen | None = None) -> int:
    from producer.reconciler import Reconciler
    from producer.registrar import Registrar
    from producer.watcher import InboxWatcher
    from worker.app import app as celery_app

    registrar = Registrar(settings=settings, app=celery_app, roots=[inbox])
    watcher = InboxWatcher(inbox, registrar, settle_seconds=settings.settle_seconds,
                           rescan_seconds=settings.rescan_seconds, polling=settings.watch_polling,
                           reconciler=Reconciler(registrar), reconcile_seconds=settings.reconcile_seconds)
    stop = threading.Event()
    failed = {"code": 0}

    def handle(signum, _frame):
        log.info("stopping (signal %s)", signum)
        stop.set()

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def until() -> bool:
        if worker is not None and worker.poll() is not None:
            log.error("the worker exited with code %s", worker.returncode)
            failed["code"] = 1
            return True
        return exit_when_idle and registrar.pending_runs() == 0

    try:
        watcher.run(stop, until=until if (exit_when_idle or worker is not None) else None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return failed["code"]


@app.command()
def watch(
    inbox: Annotated[Path, typer.Argument(help="Folder to watch; created if missing.")] = Path("inbox"),
    exit_when_idle: Annotated[bool, typer.Option(help="Register what is there, wait for its results, exit.")] = False,
) -> None:
    """The producer alone: watch INBOX, register and enqueue every complete photo."""
    settings = _settings()
    _setup_logging(settings)
    _check_broker(settings)
    _sessions(settings, migrate=True)
    raise typer.Exit(_watch(settings, inbox, exit_when_idle=exit_when_idle))


def _check_broker(settings: Settings) -> None:
    from darkroom.services import ServiceError, redis_answers

    try:
        answers = redis_answers(settings.redis_url)
    except ServiceError as exc:
        raise _fail(str(exc)) from None
    if not answers:
        raise _fail(f"no Redis answers at {settings.masked()['broker_url']}; start it (or use `darkroom up`, "
                    "which starts one), or set DARKROOM_BROKER_URL")


@app.command()
def worker(
    queues: Annotated[Optional[str], typer.Option("--queues", "-Q", help="Comma-separated: cpu,gpu.")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-c", help="Processes (default: cores).")] = None,
    loglevel: Annotated[Optional[str], typer.Option("--loglevel", "-l")] = None,
    hostname: Annotated[Optional[str], typer.Option("--hostname", "-n", help="Celery node name.")] = None,
) -> None:
    """A worker alone: Celery's own worker on Darkroom's app (`celery -A worker.app worker` works too)."""
    settings = _settings()
    _setup_logging(settings)
    _check_broker(settings)
    _sessions(settings, migrate=True)
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


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to walk.")],
) -> None:
    """Walk trees once: register and enqueue every image, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from producer.files import walk
    from producer.registrar import Outcome, Registrar
    from worker.app import app as celery_app

    settings = _settings()
    _setup_logging(settings)
    logging.getLogger("producer").setLevel(logging.WARNING)
    _check_broker(settings)
    _sessions(settings, migrate=True)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _fail(f"no such file or folder: {', '.join(map(str, missing))}")
    roots = [p if p.is_dir() else p.parent for p in paths]
    registrar = Registrar(settings=settings, app=celery_app, roots=roots)
    files: list[Path] = []
    for p in paths:
        files.extend(walk(p) if p.is_dir() else [p])
    counts = {o: 0 for o in Outcome}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bar = progress.add_task("ingest", total=len(files))
        # Files are recorded a chunk at a time (one transaction, then their runs are sent): far
        # cheaper per file than one at a time, and the workers start on the first chunk at once.
        for start in range(0, len(files), INGEST_CHUNK):
            chunk = files[start:start + INGEST_CHUNK]
            for outcome in registrar.register_many(chunk):
                counts[outcome] += 1
            progress.advance(bar, len(chunk))
    registrar.send_pending()
    summary = ", ".join(f"{n} {o.value}" for o, n in counts.items() if n)
    out.print(f"{len(files)} file(s): {summary or 'nothing to do'}", highlight=False)


@app.command()
def retry(
    failed: Annotated[bool, typer.Option("--failed/--no-failed", help="Retry failed runs.")] = True,
    rejected: Annotated[bool, typer.Option(help="Also re-examine rejected images (e.g. after raising a limit).")] = False,
    task: Annotated[Optional[str], typer.Option(help="Only this task.")] = None,
) -> None:
    """Send failed (and, if asked, rejected) task runs to the workers again."""
    from producer.registrar import Registrar
    from storage import repo
    from storage.db import transaction
    from storage.models import FAILED, REJECTED
    from worker.app import app as celery_app

    settings = _settings()
    if task is not None and task not in ALL_TASKS:
        raise _fail(f"unknown task {task!r}; one of: {', '.join(ALL_TASKS)}")
    statuses = [s for s, wanted in ((FAILED, failed), (REJECTED, rejected)) if wanted]
    if not statuses:
        raise _fail("nothing to retry: give --failed and/or --rejected")
    _check_broker(settings)
    registrar = Registrar(settings=settings, app=celery_app, roots=[])
    with transaction(registrar.sessions) as s:
        ids = repo.requeue_runs(s, statuses=statuses, task=task)
    registrar.send_pending()
    out.print(f"sent {len(ids)} run(s) to the workers again", highlight=False)


@app.command()
def reconcile() -> None:
    """Compare the SQL ledger with the broker now: resend what the broker lost or a dead worker held."""
    from producer.reconciler import Reconciler
    from producer.registrar import Registrar
    from worker.app import app as celery_app

    settings = _settings()
    _check_broker(settings)
    _sessions(settings)
    result = Reconciler(Registrar(settings=settings, app=celery_app, roots=[])).check()
    out.print(f"broker lost its queue: {'yes' if result.broker_lost else 'no'}; resent {result.resent}, "
              f"expired leases {result.expired}", highlight=False)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    settings = _settings()
    _sessions(settings, migrate=True)
    out.print(f"schema is current in {settings.masked()['database_url']}", highlight=False)


# --- looking ------------------------------------------------------------------------------------


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Counts per task and state, queue depths, and every failure with its reason."""
    import redis as redis_lib

    from storage import repo
    from worker.queues import queue_depths

    settings = _settings()
    sessions = _sessions(settings)
    with sessions() as s:
        runs = repo.run_counts(s)
        images = repo.image_counts(s)
        problems = repo.problems(s)
    try:
        depths: dict[str, int] | str = queue_depths(redis_lib.Redis.from_url(settings.redis_url, socket_timeout=3))
    except (redis_lib.RedisError, OSError) as exc:
        depths = f"unreachable ({type(exc).__name__})"
    if as_json:
        _print_json({
            "images": dict(images),
            "runs": {f"{task}:{state}": n for (task, state), n in sorted(runs.items())},
            "queues": depths,
            "problems": [vars(p) for p in problems],
        })
        return
    table = Table(title="task runs")
    states = ["queued", "running", "done", "failed", "rejected"]
    table.add_column("task")
    for st in states:
        table.add_column(st, justify="right")
    tasks = sorted({t for t, _ in runs}, key=lambda t: ALL_TASKS.index(t) if t in ALL_TASKS else 99)
    for task in tasks:
        table.add_row(task, *[str(runs.get((task, st), 0)) for st in states])
    out.print(table)
    out.print("images: " + (", ".join(f"{n} {st}" for st, n in sorted(images.items())) or "none"), highlight=False)
    if isinstance(depths, dict):
        out.print("queues: " + ", ".join(f"{q} {n}" for q, n in depths.items()), highlight=False)
    else:
        out.print(f"queues: {depths}", highlight=False)
    if problems:
        # One line each, never wrapped: reasons are long, and people grep and copy them.
        out.print(f"\n[bold]failed and rejected ({len(problems)})[/]")
        for p in problems:
            where = p.path or (p.sha256 or "")[:12]
            what = f"{p.task} {p.status}" if p.task else p.status
            tries = f", {p.attempts} attempt(s)" if p.attempts else ""
            out.print(f"- {where} [{what}{tries}]: {p.reason}", soft_wrap=True, highlight=False, markup=False)


@app.command()
def results(
    selectors: Annotated[Optional[list[str]], typer.Argument(help="Paths or sha256 (prefixes of 8+); all if none.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON array (see README: Results JSON).")] = False,
) -> None:
    """Print the results of some or all images."""
    from storage import repo
    from darkroom.work import classifier_key

    settings = _settings()
    sessions = _sessions(settings)
    primary = classifier_key(settings.classifier_model, settings.classifier_weights)
    with sessions() as s:
        images = repo.find_images(s, _expand(selectors or []))
        data = [repo.image_results(s, img, primary_model=primary) for img in images]
    if selectors and not data:
        raise _fail(f"no image matches {' '.join(selectors)}")
    if as_json:
        _print_json(data)
        return
    table = Table()
    for col in ("path", "status", "size", "top label", "faces", "aug", "errors"):
        table.add_column(col, overflow="fold")
    for item in data:
        top = item["labels"][0] if item["labels"] else None
        table.add_row(
            item["path"] or item["sha256"][:12], item["status"],
            f"{item['width']}x{item['height']}" if item["width"] else "-",
            f"{top['label']} ({top['score'] * 100:.2f}%)" if top else "-",
            str(len(item["faces"])), str(item["augmentations"]),
            "; ".join(f"{k}: {v}" for k, v in item["errors"].items()) or "",
        )
    out.print(table)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _expand(selectors: list[str]) -> list[str]:
    """Paths as given and as absolute paths (the store records absolute paths)."""
    expanded: list[str] = []
    for sel in selectors:
        expanded.append(sel)
        absolute = os.path.abspath(sel)
        if absolute != sel:
            expanded.append(absolute)
    return expanded


@app.command()
def export(
    directory: Annotated[Path, typer.Argument(help="Where to write; one folder per image, named by its sha256.")],
    selectors: Annotated[Optional[list[str]], typer.Argument(help="Paths or sha256; all images if none.")] = None,
) -> None:
    """Write the boxed images, augmented images, contact sheets and a JSON file per image."""
    from darkroom.exporting import export_images

    settings = _settings()
    sessions = _sessions(settings)
    try:
        n_images, n_files = export_images(sessions, directory, _expand(selectors or []), settings)
    except OSError as exc:
        raise _fail(f"could not write into {directory}: {exc.strerror or exc} (files already written are "
                    "complete; nothing partial was left)") from None
    out.print(f"exported {n_images} image(s), {n_files} file(s) to {directory}", highlight=False)


@app.command()
def config(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The effective settings (environment, .env, defaults), with passwords masked."""
    masked = _settings().masked()
    if as_json:
        _print_json(masked)
        return
    table = Table(show_header=True)
    table.add_column("setting (DARKROOM_…)")
    table.add_column("value", overflow="fold")
    for key, value in masked.items():
        table.add_row(key.upper(), ",".join(map(str, value)) if isinstance(value, list) else str(value))
    out.print(table)


def _register_extensions() -> None:
    """Commands that live in their own modules (the course's lessons, training, the benchmark)."""
    from darkroom import bench_cli, course_cli, train_cli

    for module in (course_cli, train_cli, bench_cli):
        module.register(app)


_register_extensions()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
