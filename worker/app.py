"""The Celery application: ``celery -A worker.app worker`` and ``darkroom worker`` both start it.

Configured for safety first: JSON messages only, acknowledgement after the work is stored, requeue
when a worker process dies, and a visibility timeout longer than any task. Importing this module
must stay cheap: no TensorFlow, no database connection (those are made in each worker process).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from darkroom.settings import ALL_TASKS, TASK_QUEUES, Settings, get_settings


def task_name(task: str) -> str:
    return f"darkroom.{task}"


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("darkroom", broker=settings.redis_url, include=["worker.pipeline"])
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
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_routes={task_name(t): {"queue": TASK_QUEUES[t]} for t in ALL_TASKS},
        task_default_queue="cpu",
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 30),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_redirect_stdouts=False,
        # The broker's own heartbeat keeps long model loads from looking like dead connections.
        broker_heartbeat=0,
    )
    app.darkroom_settings = settings
    return app


app = create_app()


@worker_process_init.connect
def _start_process(**_kwargs) -> None:
    """In each new worker process (after the fork): note the queues this worker serves, and load
    its models in a background thread (``DARKROOM_PRELOAD_MODELS``). Celery waits only seconds for
    a process to start, and a model can take longer; tasks wait for the preload to finish."""
    from worker import runtime

    runtime.served_queues = sorted(app.amqp.queues.consume_from or ()) or None
    if app.darkroom_settings.preload_models:
        runtime.start_preload(app.darkroom_settings, runtime.served_queues)
