"""Sending runs to the broker, and looking at queue depths. Used by the producer and the CLI."""

from __future__ import annotations

import redis
from celery import Celery

from darkroom.settings import TASK_QUEUES
from storage.repo import RunRef
from worker.app import task_name

QUEUES = tuple(sorted(set(TASK_QUEUES.values())))
# Kombu's Redis transport keeps one list per queue and priority step ("cpu", "cpu\x06\x163", ...).
_PRIORITY_SUFFIXES = ("",) + tuple(f"\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9))


def send_run(app: Celery, run: RunRef) -> None:
    """One JSON message per run, carrying its id only; the worker reads everything else from SQL."""
    app.send_task(task_name(run.task), kwargs={"run_id": run.id}, queue=TASK_QUEUES[run.task])


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    pipe = client.pipeline()
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    counts = pipe.execute()
    n = len(_PRIORITY_SUFFIXES)
    return {queue: sum(counts[i * n:(i + 1) * n]) for i, queue in enumerate(queues)}
