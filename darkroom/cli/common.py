"""What every command shares: where output goes, the exit codes, one way to fail, the settings,
the database and broker checks, logging, and short text for one-line cells.

The command modules import this one; it imports none of them. The storage stack and redis are
imported inside the functions that need them, so that `darkroom --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console

from darkroom.settings import Settings, get_settings, settings_error

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

#: Results go to stdout, messages to stderr.
err = Console(stderr=True)
out = Console()

# --- exit codes (README: "Exit codes"; `darkroom --help`'s epilog) --------------------------------

#: Everything asked for was done.
EXIT_OK = 0
#: An error: bad settings, a service unreachable, bad arguments the command detects.
EXIT_ERROR = 1
#: Click's usage errors (unknown option, missing argument).
EXIT_USAGE = 2
#: The work finished, but some files failed or were rejected (`up --exit-when-idle`, `ingest`,
#: `retry --wait`).
EXIT_PARTIAL = 3
#: `ingest` stopped by Ctrl-C after the files in hand (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 everything done; 1 an error (bad settings, a service unreachable, bad arguments); "
    "2 a usage error; 3 the work finished but some files failed or were rejected "
    "(up --exit-when-idle, ingest, retry --wait); 130 ingest stopped by Ctrl-C (run it again to go on)."
)

#: The log file of `darkroom up` (under DARKROOM_DATA_DIR) unless --verbose.
LOG_FILE = Path("logs") / "darkroom.log"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``darkroom: message`` on stderr (one unwrapped line) and return the Exit to raise."""
    err.print(f"[bold red]darkroom:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code=code)


def die(message: str) -> NoReturn:
    """Fail with ``message`` squeezed onto one line (exit code 1)."""
    raise fail(" ".join(str(message).split()))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_settings() -> Settings:
    """The settings, or a clear error naming each bad variable (never echoing its value: it may be a secret)."""
    try:
        return get_settings()
    except (ValidationError, SettingsError) as exc:
        raise fail(settings_error(exc)) from None


def database_unreachable(settings: Settings, exc: BaseException) -> str:
    """The one line that says the database did not answer, and which setting names it."""
    detail = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
    return (f"the database at {settings.masked()['database_url']} is unreachable ({type(exc).__name__}: {detail}); "
            "start it, or set DARKROOM_DATABASE_URL")


def sessions(settings: Settings, *, migrate: bool = False, connect_timeout: int | None = None) -> sessionmaker[Session]:
    """A session factory on the configured database, its schema brought up to date (``migrate``)
    or checked to be current; fails with one line when the database cannot be reached."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from storage.db import make_engine, schema_is_current, session_factory
    from storage.db import migrate as run_migrations

    kwargs: dict[str, Any] = {}
    if connect_timeout and settings.db_url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": connect_timeout}
    engine = make_engine(settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                         application_name=f"darkroom-cli {os.getpid()}", **kwargs)
    try:
        if migrate:
            run_migrations(engine)
        elif not schema_is_current(engine):
            raise fail(f"the database {settings.masked()['database_url']} has no current Darkroom schema; "
                       "run `darkroom migrate` (or `darkroom up`) first")
    except (OperationalError, DBAPIError) as exc:
        raise fail(database_unreachable(settings, exc)) from None
    return session_factory(engine)


def broker_problem(settings: Settings) -> str | None:
    """None when Redis answers at the broker URL, else the one line that says what to fix."""
    from darkroom.cli.services import ServiceError, redis_answers

    try:
        answers = redis_answers(settings.redis_url, master_name=settings.sentinel_master)
    except ServiceError as exc:
        return str(exc)
    if answers:
        return None
    from worker.broker import is_sentinel

    if is_sentinel(settings.redis_url):
        return (f"no Redis master named {settings.sentinel_master!r} answers through the sentinels at "
                f"{settings.masked()['broker_url']}; check that they run and monitor it, or set "
                "DARKROOM_BROKER_URL and DARKROOM_SENTINEL_MASTER")
    return (f"no Redis answers at {settings.masked()['broker_url']}; start it (or use `darkroom up`, "
            "which starts one), or set DARKROOM_BROKER_URL")


def check_broker(settings: Settings) -> None:
    problem = broker_problem(settings)
    if problem:
        raise fail(problem)


def setup_logging(settings: Settings, *, log_file: Path | None = None) -> None:
    """Logs on stderr; or, with ``log_file``, everything into that file and only errors (and this
    CLI's own notices, such as a Redis being started) on stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_file is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        root.addHandler(handler)
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a file name that is not valid UTF-8 is logged (caf\udce9.jpg), not lost in an error
    to_file = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
    to_file.setFormatter(fmt)
    root.addHandler(to_file)
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setFormatter(logging.Formatter("darkroom: %(message)s"))
    to_terminal.addFilter(lambda r: r.levelno >= logging.ERROR or
                          (r.name.startswith("darkroom.cli") and r.levelno >= logging.INFO))
    root.addHandler(to_terminal)


def expand_selectors(selectors: list[str]) -> list[str]:
    """Paths as given and as absolute paths (the store records absolute paths)."""
    expanded: list[str] = []
    for sel in selectors:
        expanded.append(sel)
        absolute = os.path.abspath(sel)
        if absolute != sel:
            expanded.append(absolute)
    return expanded


#: What a classifier's errors call its arguments in the commands that take --model and --weights.
CLASSIFIER_FLAGS = {"model": "--model (or DARKROOM_CLASSIFIER_MODEL)", "weights": "--weights (or DARKROOM_CLASSIFIER_WEIGHTS)"}


def model_and_weights(settings: Settings, model: str | None, weights: str | None) -> tuple[str, str]:
    """--model/--weights over the settings: a --model without --weights means ImageNet weights
    (the configured weights belong to the configured model)."""
    if model is None:
        return settings.classifier_model, weights if weights is not None else settings.classifier_weights
    return model, weights if weights is not None else "imagenet"


# --- short text for one-line cells and lines ----------------------------------------------------


def one_line(text: str | None) -> str:
    """Whitespace (newlines included) squeezed to single spaces."""
    return " ".join((text or "").split())


def shorten(text: str | None, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with "…" when longer."""
    text = one_line(text)
    return text if len(text) <= width else text[: max(0, width - 1)].rstrip() + "…"


def short_reason(text: str | None, width: int = 60) -> str:
    """The gist of an error: its first sentence (or line), cut to ``width``."""
    text = one_line(text)
    for stop in (". ", "; "):
        head, sep, _ = text.partition(stop)
        if sep and len(head) >= 12:
            text = head
            break
    return shorten(text, width)


def short_path(path: str | None, width: int = 40) -> str:
    """A path relative to the working folder when inside it, its end kept when too long ("…/b/c.jpg")."""
    if not path:
        return ""
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
    except ValueError:
        pass
    path = one_line(path)
    return path if len(path) <= width else "…" + path[-(width - 1):]
