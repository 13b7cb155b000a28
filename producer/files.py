"""Which paths are candidates at all: temporary and hidden names are left alone until renamed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

#: Names that belong to a file still being written (browsers, rsync, editors, office suites).
TEMP_SUFFIXES = (".part", ".crdownload", ".download", ".partial", ".tmp", ".temp", ".swp", ".swx", "~", ".!qb", ".opdownload")


def is_candidate_name(name: str) -> bool:
    """False for hidden files (rsync's ``.name.XXXXXX``, ``.DS_Store``), temporary and editor files."""
    if not name or name.startswith(".") or name.startswith("~$"):
        return False
    if name.startswith("#") and name.endswith("#"):
        return False
    lowered = name.lower()
    return not lowered.endswith(TEMP_SUFFIXES)


def is_candidate(path: Path, root: Path) -> bool:
    """Every component below ``root`` must be a candidate name (a hidden folder hides its files)."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    return all(is_candidate_name(part) for part in rel.parts)


def walk(root: Path) -> Iterator[Path]:
    """Every candidate file below ``root``, sorted per folder, never following symlinked folders."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if is_candidate_name(d))
        for name in sorted(filenames):
            if is_candidate_name(name):
                yield Path(dirpath) / name


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, stays inside ``root``."""
    try:
        path.resolve(strict=True).relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False
