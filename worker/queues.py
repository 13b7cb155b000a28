"""Sending runs to the broker, and looking at queue depths. Used by the producer and the CLI."""

from __future__ import annotations

import redis
from celery import Celery

from darkroom import catalog
from storage.ledger import RunRef

QUEUES = catalog.QUEUES
# Kombu's Redis transport keeps one list per queue and priority step ("cpu", "cpu\x06\x163", ...).
_PRIORITY_SUFFIXES = ("",) + tuple(f"\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9))


def send_run(app: Celery, run: RunRef, producer=None) -> None:
    """One JSON message per run, carrying its id only; the worker reads everything else from SQL.
    ``producer``: a kombu producer to send with (from ``app.producer_or_acquire()``), so that many
    sends share one connection instead of each taking one from the pool."""
    send_runs(app, [run], producer)


def send_runs(app: Celery, runs: list[RunRef], producer=None) -> None:
    """One JSON message for a group of runs of the same task and model, carrying their ids only
    (``run_id``, and ``run_ids`` when there are several): a worker claims them together, in one
    batch. See :func:`messages`."""
    first = runs[0]
    if any((r.task, r.model) != (first.task, first.model) for r in runs):
        raise ValueError("a message's runs must share their task and model")
    kwargs: dict = {"run_id": first.id}
    if len(runs) > 1:
        kwargs["run_ids"] = [r.id for r in runs]
    task = catalog.get(first.task)
    app.send_task(task.celery_name, kwargs=kwargs, queue=task.queue, producer=producer)


def messages(runs: list[RunRef], group: dict[str, int]) -> list[list[RunRef]]:
    """The messages to send for ``runs``: one per run, except that runs of a task in ``group``
    (task -> most runs per message, e.g. classification's batch size) go together, up to that
    many of the same model per message. Order is kept: a message stands where its first run was."""
    out: list[list[RunRef]] = []
    open_groups: dict[tuple[str, str], list[RunRef]] = {}
    for run in runs:
        size = group.get(run.task, 1)
        if size <= 1:
            out.append([run])
            continue
        key = (run.task, run.model)
        current = open_groups.get(key)
        if current is None or len(current) >= size:
            current = open_groups[key] = []
            out.append(current)
        current.append(run)
    return out


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    pipe = client.pipeline()
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    counts = pipe.execute()
    n = len(_PRIORITY_SUFFIXES)
    return {queue: sum(counts[i * n:(i + 1) * n]) for i, queue in enumerate(queues)}
