"""Darkroom: computer-vision work over photos as they arrive and over whole archives.

``darkroom.analyze(path_or_array, tasks=..., settings=...)`` gives one photo's results in this
process (see :mod:`darkroom.api`); the ``darkroom`` command runs the system.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The API brings the vision code and the worker's modules: loaded when first asked for, so that
    # `darkroom --help` and the settings module stay light (PEP 562).
    if name in ("analyze", "Analyzer"):
        from darkroom import api

        return getattr(api, name)
    raise AttributeError(f"module 'darkroom' has no attribute {name!r}")


__all__ = ["Analyzer", "__version__", "analyze"]
