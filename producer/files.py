"""Which paths are candidates at all: temporary and hidden names are left alone until renamed."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

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
    """Every candidate file below ``root``, as the folders are read: a folder's files (in the
    order the filesystem lists them) then its sub-folders (sorted), depth first, never following
    symlinked folders. It holds no list of files — only, for each folder it is inside, the names
    of the sub-folders still to visit — so a tree of any size costs the same memory. A folder
    that cannot be read is logged and left out."""
    pending: list[list[str]] = [[os.fspath(root)]]
    while pending:
        if not pending[-1]:
            pending.pop()
            continue
        folder = pending[-1].pop()
        subfolders: list[str] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not is_candidate_name(entry.name):
                        continue
                    try:
                        is_folder = entry.is_dir(follow_symlinks=False)
                        is_link = not is_folder and entry.is_symlink()
                    except OSError:
                        continue
                    if is_folder:
                        subfolders.append(entry.path)
                    elif is_link and _links_to_folder(entry.path):
                        continue  # a symlinked folder is not walked (nor a file)
                    else:
                        yield Path(entry.path)
        except OSError as exc:
            log.warning("cannot read the folder %s (%s): its files are left out", folder, exc.strerror or exc)
            continue
        subfolders.sort(reverse=True)  # popped from the end: visited in name order
        pending.append(subfolders)


def _links_to_folder(path: str) -> bool:
    try:
        return os.path.isdir(path)
    except OSError:
        return False


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, stays inside ``root``."""
    try:
        path.resolve(strict=True).relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False
