"""What a person sees while work finishes: one line per photo (or per run, for `retry --wait`) and a
status line with the counts and the rate — refreshed in place on a terminal, printed plainly (every
so often, and at the end) when stdout is a file or a pipe.

The rows come from :mod:`storage.progress` (bounded queries, polled about once a second).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from darkroom.cli.common import short_path, short_reason

#: When stdout is not a terminal, the status line is printed at most this often (seconds).
PLAIN_STATUS_EVERY = 30.0


def _seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def photo_line(item: Any, width: int) -> Text:
    """One finished photo (:class:`storage.progress.Finished`) or refused file
    (:class:`storage.progress.Refused`) as one line that fits ``width`` columns."""
    if not hasattr(item, "status"):  # a refused file
        what = f"refused: {short_reason(_without_path(item.reason, item.path), 50)}"
        return _fit("✗", "red", item.path, what, "", width)
    if item.status == "done":
        parts = [f"{item.faces} face{'s' if item.faces != 1 else ''}"]
        if item.label:
            parts.append(f"{item.label} {item.score * 100:.0f}%")
        return _fit("✓", "green", item.path or item.sha256[:12], ", ".join(parts), _seconds(item.seconds), width)
    task, reason = item.errors[0] if item.errors else ("", "")
    reason = short_reason(_without_path(reason, item.path), 50)
    what = f"{item.status}: {reason}" if task == "image" else f"{task} {item.status}: {reason}"
    if len(item.errors) > 1:
        what += f" (+{len(item.errors) - 1} more)"
    return _fit("✗", "red", item.path or item.sha256[:12], what, _seconds(item.seconds), width)


def run_line(run: Any, width: int) -> Text:
    """One ended run (:class:`storage.progress.RunOutcome`) as one line."""
    if run.status == "done":
        return _fit("✓", "green", run.path or run.sha256[:12], f"{run.task} done", _seconds(run.seconds), width)
    what = f"{run.task} {run.status}: {short_reason(_without_path(run.error, run.path), 50)}"
    return _fit("✗", "red", run.path or run.sha256[:12], what, _seconds(run.seconds), width)


def _without_path(reason: str | None, path: str | None) -> str:
    """Reasons often start with the file's path; the line shows the path already."""
    reason = reason or ""
    if path and reason.startswith(path):
        reason = reason[len(path):].lstrip(" :")
    return reason


def _fit(mark: str, style: str, path: str, what: str, took: str, width: int) -> Text:
    tail = f"  {what}" + (f"  {took}" if took else "")
    room = max(12, min(60, width - len(tail) - 2))
    line = Text()
    line.append(mark + " ", style=style)
    line.append(short_path(path, room))
    line.append(tail)
    line.truncate(max(20, width), overflow="ellipsis")
    return line


class StatusLine:
    """Counts of finished photos, and the rate since the first was seen."""

    def __init__(self) -> None:
        self.done = self.failed = self.refused = 0
        self.pending = 0
        self.started = time.monotonic()

    def count(self, item: Any) -> None:
        if not hasattr(item, "status"):
            self.refused += 1
        elif item.status == "done":
            self.done += 1
        else:
            self.failed += 1

    @property
    def problems(self) -> int:
        return self.failed + self.refused

    def text(self, *, final: bool = False) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        finished = self.done + self.failed
        rate = f"{finished / elapsed:.2f} photos/s" if finished else "0 photos/s"
        parts = [f"{self.done} done", f"{self.failed} failed or rejected"]
        if self.refused:
            parts.append(f"{self.refused} refused")
        if not final:
            parts.append(f"{self.pending} pending")
        parts.append(rate)
        parts.append(f"{elapsed:.0f} s")
        return ("finished: " if final else "") + ", ".join(parts)


class Feed:
    """Prints finished photos as lines and keeps a status line below them.

    On a terminal the status line is redrawn in place (rich's Live, transient); otherwise lines are
    printed plainly and the status line every :data:`PLAIN_STATUS_EVERY` seconds when it changed."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status = StatusLine()
        self.live: Live | None = None
        self._last_plain = time.monotonic()
        self._last_text = ""

    def __enter__(self) -> Feed:
        if self.console.is_terminal:
            self.live = Live(Text(self.status.text()), console=self.console, transient=True,
                             refresh_per_second=4, redirect_stdout=False, redirect_stderr=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def show(self, items: list[Any], pending: int | None = None) -> None:
        width = self.console.width
        for item in items:
            self.status.count(item)
            self.console.print(photo_line(item, width), soft_wrap=True, highlight=False)
        if pending is not None:
            self.status.pending = pending
        text = self.status.text()
        if self.live is not None:
            self.live.update(Text(text))
        elif time.monotonic() - self._last_plain >= PLAIN_STATUS_EVERY and text.split(", ")[:3] != self._last_text:
            self.console.print(text, highlight=False, soft_wrap=True)
            self._last_plain, self._last_text = time.monotonic(), text.split(", ")[:3]

    def summary(self) -> None:
        self.__exit__()
        self.console.print(self.status.text(final=True), highlight=False, soft_wrap=True)
