"""The ``darkroom`` command: the Typer app assembled from one module per command group.

- :mod:`darkroom.cli.run`: ``up``, ``watch``, ``worker``, ``ingest``
- :mod:`darkroom.cli.ledger`: ``retry``, ``reconcile``, ``migrate``, ``status``, ``results``,
  ``export``, ``config``, ``rerun``
- :mod:`darkroom.cli.duplicates`: ``duplicates`` (near-duplicate photos)
- :mod:`darkroom.cli.course`: the course's lessons (``normalize``, ``model summary``, ``classify``,
  ``augment``, ``faces``)
- :mod:`darkroom.cli.train`, :mod:`darkroom.cli.bench`: ``train``, ``bench``
- :mod:`darkroom.cli.serve`: ``serve`` (the web view, :mod:`darkroom.web`)

What they share (output, exit codes, settings, the database and broker checks) is in
:mod:`darkroom.cli.common`. Building the app imports no TensorFlow or Celery (the settings bring the
catalog, and with it the vision code's modules and SQLAlchemy's: about half a second).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from darkroom import __version__
from darkroom.cli import bench, course, duplicates, ledger, run, serve, train
from darkroom.cli.common import EXIT_CODES_HELP

app = typer.Typer(
    name="darkroom",
    help="Computer-vision work over photos as they arrive and over whole archives.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"darkroom {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Computer-vision work over photos as they arrive and over whole archives."""


run.register(app)
ledger.register(app)
duplicates.register(app)
course.register(app)
ledger.register_rerun(app)
train.register(app)
bench.register(app)
serve.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
