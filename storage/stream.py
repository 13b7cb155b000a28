"""A long Results JSON stream made by several processes.

Reading a page of images and writing its Results JSON is Python's work (the rows turned into
dictionaries, the dictionaries into JSON) more than the database's, so one process uses one core
and leaves the others idle. :func:`json_pages` hands the pages of image ids in turn to ``jobs``
worker processes, each with a database connection of its own, and gives back the pages' JSON in
the order of the ids, never holding more than a few pages: on a 2-core machine three processes
stream a million-photo ledger about twice as fast as one.

Each page is read in a transaction of its own, as :func:`storage.results.iter_pages` reads them.
"""

from __future__ import annotations

import collections
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from storage.db import make_engine, read_only, session_factory
from storage.results import ReadContext, TaskResults, load_rows, results_json

#: The most worker processes a stream starts by default (beyond the cores, the database's own
#: processes and the writer want them).
MAX_JOBS = 8
#: Pages in flight per worker: one being read while the next waits, so that no worker idles
#: while the writer catches up.
PAGES_PER_JOB = 2
#: How often a worker checks that the writer still runs (seconds).
WRITER_CHECK_S = 0.5
#: How long a worker has to end when the stream stops before it is killed (seconds).
STOP_S = 5.0


def default_jobs() -> int:
    """The processes a stream uses unless told: the usable cores and one more (a worker waits on
    the database part of each page), at most :data:`MAX_JOBS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_JOBS, cores + 1))


class StreamWorkerFailed(RuntimeError):
    """A worker process of the stream ended without finishing its page (killed, or out of memory)."""


# --- in each worker process ------------------------------------------------------------------------


def _serve(conn: Any, writer: int, inherited: Engine | None, url: str, application_name: str,
           stores: Sequence[TaskResults], ctx: ReadContext, separator: bytes) -> None:
    """A worker: for each page of ids it is sent, the page's JSON (its count and bytes), or the
    error that stopped it; until the writer closes the connection, or ends."""
    # The writer answers Ctrl-C and stops the workers: one finishing its page must not print a
    # traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A writer killed outright leaves its workers without anyone to close their connections (the
    # other workers hold copies of them): they end with it.
    threading.Thread(target=_end_with, args=(writer,), name="end-with-writer", daemon=True).start()
    if inherited is not None:
        # A forked copy of the writer's engine: its connections are the writer's. Forget them
        # without closing them (closing would end the writer's session on the server).
        inherited.dispose(close=False)
    factory = session_factory(make_engine(url, pool_size=1, max_overflow=0, application_name=application_name))
    while True:
        try:
            ids = conn.recv()
        except (EOFError, OSError):
            return
        try:
            with read_only(factory) as session:
                items = results_json(session, load_rows(session, ids), stores, ctx)
            reply: tuple[str, Any] = ("page", (len(items), separator.join(map(orjson.dumps, items))))
        except Exception as exc:  # noqa: BLE001 - said to the writer, which raises it
            reply = ("error", exc)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        except Exception as exc:  # noqa: BLE001 - an error that cannot be pickled: its words
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _end_with(writer: int) -> None:
    while os.getppid() == writer:
        time.sleep(WRITER_CHECK_S)
    os._exit(1)


# --- in the writer ---------------------------------------------------------------------------------


class _Workers:
    """``jobs`` processes, each with a connection of its own to the writer; page ``k`` goes to
    worker ``k % jobs``, which answers its pages in the order it was sent them."""

    def __init__(self, jobs: int, engine: Engine, args: tuple) -> None:
        """``args``: what each worker is given after its connection, the writer's pid and the
        writer's engine (:func:`_serve`'s)."""
        # Forked where the platform forks (the workers start at once, sharing the writer's loaded
        # modules and the read context's index); elsewhere spawned, each importing afresh.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        inherited = engine if method == "fork" else None
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        # The writer's objects kept out of the collector's sight while the workers are forked: a
        # collection in a worker would otherwise touch, and so copy, every page of the writer's heap.
        gc.freeze()
        try:
            for k in range(jobs):
                mine, theirs = context.Pipe()
                proc = context.Process(target=_serve, name=f"darkroom-stream-{k}", daemon=True,
                                       args=(theirs, os.getpid(), inherited, *args))
                proc.start()
                # Closed here before the next worker is forked: a worker's end then lives in that
                # worker alone, and its death reads as the end of its connection.
                theirs.close()
                self.procs.append(proc)
                self.conns.append(mine)
        except BaseException:
            self.stop()
            raise
        finally:
            gc.unfreeze()

    def send(self, k: int, ids: list[int]) -> None:
        try:
            self.conns[k].send(ids)
        except (OSError, ValueError):
            raise self._died(k) from None

    def receive(self, k: int) -> tuple[int, bytes]:
        try:
            kind, value = self.conns[k].recv()
        except (EOFError, OSError):
            raise self._died(k) from None
        if kind == "error":
            raise value
        return value

    def _died(self, k: int) -> StreamWorkerFailed:
        self.procs[k].join(timeout=1)
        how = self.procs[k].exitcode
        why = f"killed by signal {-how}" if how is not None and how < 0 else f"exit code {how}"
        return StreamWorkerFailed(
            f"a worker process of the results stream ended without finishing its page ({why}; killed, or out of "
            "memory?); run the command again, or give --jobs 1 to stream in one process")

    def stop(self) -> None:
        """End every worker: its connection closed, then SIGTERM, then SIGKILL after :data:`STOP_S`."""
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_S
        for proc in self.procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()


def json_pages(pages: Iterable[list[int]], engine: Engine, stores: Sequence[TaskResults], ctx: ReadContext, *,
               jobs: int, separator: bytes = b"\n") -> Iterator[tuple[int, bytes]]:
    """For each page of image ids (in order), its images' Results JSON objects (orjson's) joined by
    ``separator``, and how many there are (an image deleted meanwhile is left out), made by ``jobs``
    worker processes on ``engine``'s database.

    At most ``jobs`` × :data:`PAGES_PER_JOB` pages are in flight, so memory stays flat however long
    the stream. However the generator ends (the last page, an error, closed because the reader went
    away), its workers are ended with it; an error in a worker is raised here, and a worker that
    died raises :class:`StreamWorkerFailed`."""
    workers = _Workers(jobs, engine, (engine.url.render_as_string(hide_password=False),
                                      f"darkroom-stream {os.getpid()}", list(stores), ctx, separator))
    in_flight: collections.deque[int] = collections.deque()
    try:
        for n, ids in enumerate(pages):
            workers.send(n % jobs, ids)
            in_flight.append(n % jobs)
            if len(in_flight) >= jobs * PAGES_PER_JOB:
                yield workers.receive(in_flight.popleft())
        while in_flight:
            yield workers.receive(in_flight.popleft())
    finally:
        workers.stop()
