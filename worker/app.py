"""The Celery application: ``celery -A worker.app worker`` and ``darkroom worker`` both start it.

:func:`create_app` makes it from the settings: one Celery task per catalog task (``darkroom.<name>``,
routed to its queue), each a :class:`PipelineTask` whose :attr:`~PipelineTask.runtime` — the
process's engine, blob store and models — is made on first use in the worker process, after the
fork (Celery's "Instantiation": a task object lives as long as its process).

Configured for safety first: JSON messages only, acknowledgement after the work is stored, requeue
when a worker process dies, and a visibility timeout longer than any task. Importing this module
makes :data:`app` from the environment's settings (what ``celery -A worker.app`` needs) but stays
cheap: no TensorFlow, no database connection.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, current_app
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from darkroom import catalog
from darkroom.settings import Settings, load_settings
from worker.broker import transport_options
from worker.cluster import check_or_exit
from worker.pipeline import execute, int_list
from worker.runtime import PerProcess, Runtime


class PipelineTask(Task):
    """The base of Darkroom's Celery tasks: a message of run ids to stored results (see
    :func:`worker.pipeline.execute`)."""

    #: Retries are counted against DARKROOM_TASK_MAX_RETRIES by ``execute``, which then records the
    #: runs failed: Celery's own limit (3 by default) is off, or past it ``retry`` would raise the
    #: error instead, leaving the runs queued with no message to carry them.
    max_retries = None
    #: This app's runtimes, one per process (set by :func:`create_app`).
    runtimes: PerProcess

    @property
    def runtime(self) -> Runtime:
        """This process's runtime, made on first use (after the fork)."""
        return self.runtimes.get()


def _run_message(self: PipelineTask, run_id: int, takeover: bool = False, run_ids: list[int] | None = None,
                 **_params: Any) -> str:
    """Messages carry run ids only (one, or a group); extra keyword arguments from newer producers
    are ignored, not fatal."""
    return execute(self, int(run_id), takeover=bool(takeover), run_ids=int_list(run_ids))


def create_app(settings: Settings | None = None) -> Celery:
    """Darkroom's Celery app for ``settings`` (default: the environment's)."""
    settings = settings or load_settings()
    app = Celery("darkroom", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        # Messages are small JSON documents (ids); pickle is never accepted.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        # Acknowledge after the result is stored; a worker that dies mid-task gives the message back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        # The visibility timeout; with a sentinel:// URL, the master's name (DARKROOM_SENTINEL_MASTER).
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_routes=catalog.routes(),
        task_default_queue="cpu",
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 30),
        worker_hijack_root_logger=False,
        # DARKROOM_TASK_EVENTS: Flower (or `celery events`) follows the tasks; sent tasks say so too.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_redirect_stdouts=False,
        # The broker's own heartbeat keeps long model loads from looking like dead connections.
        broker_heartbeat=0,
    )

    def make_runtime() -> Runtime:
        consumed = sorted(app.amqp.queues.consume_from or ()) if app.amqp.queues.consume_from else None
        runtime = Runtime.create(settings, consumed)
        # The process's heartbeat (the reconciler takes over its runs once it is gone), written
        # before the runtime is handed out, so before the process claims anything.
        runtime.start_heartbeat()
        return runtime

    runtimes = PerProcess(make_runtime)
    for task in catalog.TASKS:
        app.task(name=task.celery_name, bind=True, base=PipelineTask, runtimes=runtimes)(_run_message)

    @worker_init.connect(weak=False)
    def check_setup(sender=None, **_kwargs) -> None:
        """In the worker's main process, before any child or message: refuse to start, with one line
        naming the setting to fix, when the database, the broker or the blob store is not the
        producer's (worker.cluster)."""
        if getattr(sender, "app", None) is app:
            check_or_exit(settings)

    @worker_process_init.connect(weak=False)
    def start_process(**_kwargs) -> None:
        """In each new worker process of this app (after the fork): load its models in a background
        thread (DARKROOM_PRELOAD_MODELS). Celery waits only seconds for a process to start, and a
        model can take longer; tasks wait for the preload to finish."""
        if current_app._get_current_object() is app and settings.preload_models:
            runtimes.get().start_preload()

    @worker_process_shutdown.connect(weak=False)
    def stop_process(**_kwargs) -> None:
        """A process that stops cleanly holds no run: its heartbeat key goes at once."""
        runtime = runtimes.made()
        if runtime is not None and runtime.heartbeat is not None:
            runtime.heartbeat.stop()

    return app


app = create_app()
app.set_current()
