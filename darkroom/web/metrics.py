"""``/metrics``: Prometheus metrics read from the ledger at scrape time, so they are right with any
number of workers (no worker process keeps a counter of its own).

- ``darkroom_runs{task,state}``: runs per task and state (the counts `status` reads);
- ``darkroom_images{state}``: photos per state; ``darkroom_images_registered_total``: every photo
  registered (``rate()`` of it: photos registered per second);
- ``darkroom_queue_depth{queue}``: messages waiting in each queue;
- ``darkroom_task_duration_seconds{task}``: a histogram of the run times of the runs done in the
  last :data:`DURATION_WINDOW` seconds (at most :data:`DURATION_RUNS` of them, the newest);
- ``darkroom_runs_ended_per_second``, ``darkroom_photos_registered_per_second`` and
  ``darkroom_photos_processed_per_second`` over the last :data:`reads.THROUGHPUT_SECONDS` seconds
  (processed: ended runs ÷ the runs each photo gets);
- ``darkroom_scrape_error{part}``: 1 when the database or the broker did not answer this scrape.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from darkroom import catalog
from darkroom.settings import Settings
from darkroom.web import reads
from storage import ledger
from storage.models import DONE, TaskRun, utcnow

log = logging.getLogger(__name__)

#: The task-duration histogram covers the runs done in this many recent seconds ...
DURATION_WINDOW = 600
#: ... at most this many of them (the newest), so a scrape reads a bounded range of an index.
DURATION_RUNS = 20_000
#: Histogram buckets, in seconds.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def durations(session: Session, seconds: int = DURATION_WINDOW, most: int = DURATION_RUNS) -> dict[str, list[float]]:
    """task -> the durations (seconds) of its runs done in the last ``seconds`` (the newest ``most``
    over all tasks), through ix_task_runs_status_finished."""
    since = utcnow() - dt.timedelta(seconds=seconds)
    rows = session.execute(select(TaskRun.task, TaskRun.duration_ms)
                           .where(TaskRun.status == DONE, TaskRun.finished_at >= since, TaskRun.duration_ms.is_not(None))
                           .order_by(TaskRun.finished_at.desc()).limit(most))
    out: dict[str, list[float]] = {}
    for task, ms in rows:
        out.setdefault(task, []).append(ms / 1000.0)
    return out


def histogram(name: str, doc: str, by_task: dict[str, list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["task"])
    for task in sorted(by_task):
        values = by_task[task]
        buckets = [(str(le), sum(v <= le for v in values)) for le in BUCKETS] + [("+Inf", len(values))]
        family.add_metric([task], buckets, sum_value=sum(values))
    return family


class LedgerCollector:
    """A prometheus-client collector that reads the ledger (and the broker's queue lengths) on every scrape."""

    def __init__(self, sessions: Callable[[], Session], queues: Callable[[], dict[str, int] | str],
                 settings: Settings) -> None:
        self.sessions = sessions
        self.queues = queues
        self.settings = settings

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only; nothing to read while registering

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily("darkroom_scrape_error", "1 when a part did not answer this scrape", labels=["part"])
        try:
            with self.sessions() as s:
                runs = ledger.run_counts(s)
                images = ledger.image_counts(s)
                ended, registered = reads.rates(s)
                by_task = durations(s)
            errors.add_metric(["database"], 0)
        except DBAPIError as exc:
            log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            errors.add_metric(["database"], 1)
            runs, images, ended, registered, by_task = {}, {}, None, None, None
        if runs or images or by_task is not None:
            family = GaugeMetricFamily("darkroom_runs", "Task runs per task and state", labels=["task", "state"])
            for (task, state), n in sorted(runs.items()):
                family.add_metric([task, state], n)
            yield family
            family = GaugeMetricFamily("darkroom_images", "Photos per state (as last counted)", labels=["state"])
            for state, n in sorted(images.items()):
                family.add_metric([state], n)
            yield family
            yield CounterMetricFamily("darkroom_images_registered", "Photos registered", value=sum(images.values()))
            yield histogram("darkroom_task_duration_seconds",
                            f"Run times of the runs done in the last {DURATION_WINDOW} s", by_task or {})
            per_photo = max(1, len(catalog.planned_work(self.settings)))
            yield GaugeMetricFamily("darkroom_runs_ended_per_second",
                                    f"Runs ended per second over the last {reads.THROUGHPUT_SECONDS} s", value=ended)
            yield GaugeMetricFamily("darkroom_photos_registered_per_second",
                                    f"Photos registered per second over the last {reads.THROUGHPUT_SECONDS} s",
                                    value=registered)
            yield GaugeMetricFamily("darkroom_photos_processed_per_second",
                                    f"Runs ended per second over the last {reads.THROUGHPUT_SECONDS} s, divided by "
                                    f"the {per_photo} runs each photo gets", value=ended / per_photo)
        depths = self.queues()
        if isinstance(depths, dict):
            family = GaugeMetricFamily("darkroom_queue_depth", "Messages waiting in each queue", labels=["queue"])
            for queue, n in depths.items():
                family.add_metric([queue], n)
            yield family
            errors.add_metric(["broker"], 0)
        else:
            errors.add_metric(["broker"], 1)
        yield errors


def registry(collector: LedgerCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
