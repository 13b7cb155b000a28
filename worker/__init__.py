"""The Celery side: the app and its configuration, the per-process runtime, and the task wrappers."""
