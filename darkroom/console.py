"""Where the CLI writes: results to stdout, messages to stderr; one way to fail."""

from __future__ import annotations

import typer
from rich.console import Console

err = Console(stderr=True)
out = Console()


def fail(message: str) -> typer.Exit:
    """Print ``darkroom: message`` on stderr (one unwrapped line) and return the Exit to raise."""
    err.print(f"[bold red]darkroom:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code=1)
