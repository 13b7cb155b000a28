"""Darkroom's throughput benchmark: a corpus of real photos, three systems over it, one report.

- :mod:`bench.corpus`       the photos (from images scikit-image and scikit-learn ship);
- :mod:`bench.naive`        the naive Celery peer (its app is :mod:`bench.naive_app`);
- :mod:`bench.reference`    the same four stages in one process, classification batched;
- :mod:`bench.darkroom_run` Darkroom end to end (ingest, workers, SQL), latency of single drops;
- :mod:`bench.report`       the figures, the targets, the tables;
- :mod:`bench.runner`       runs it all for ``darkroom bench``.

Nothing here is imported by Darkroom itself; ``darkroom bench`` imports it when run.
"""
