"""Which paths are candidates at all: temporary and hidden names are left alone until renamed; an
archive's clutter (sidecars, catalogues, videos, system files) and what ignore patterns name are
left alone and counted (:class:`IgnoreRules`)."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pathspec

log = logging.getLogger(__name__)

#: Names that belong to a file still being written (browsers, rsync, editors, office suites).
TEMP_SUFFIXES = (".part", ".crdownload", ".download", ".partial", ".tmp", ".temp", ".swp", ".swx", "~", ".!qb", ".opdownload")


#: Hidden names that are an archive's clutter, not a file being written: taken, to be ignored and
#: counted (:data:`CLUTTER`'s ``system``), where other hidden names are left alone unseen.
HIDDEN_CLUTTER = (".DS_Store", ".picasa.ini")


def is_candidate_name(name: str) -> bool:
    """False for hidden files (rsync's ``.name.XXXXXX``), temporary and editor files; True for the
    hidden clutter that is ignored and counted (``.DS_Store``, macOS's ``._name`` copies)."""
    if name in HIDDEN_CLUTTER or (name.startswith("._") and len(name) > 2):
        return True
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


def walk(root: Path, ignore: IgnoreRules | None = None) -> Iterator[Path]:
    """Every candidate file below ``root``, as the folders are read: a folder's files (in the
    order the filesystem lists them) then its sub-folders (sorted), depth first, never following
    symlinked folders. It holds no list of files — only, for each folder it is inside, the names
    of the sub-folders still to visit — so a tree of any size costs the same memory. A folder
    that cannot be read is logged and left out. A folder ``ignore`` leaves alone (a Lightroom
    ``.lrdata``, a NAS's ``@eaDir``) is not entered: it is yielded itself, for the registrar to
    count as one ignored thing."""
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
                        if ignore is not None and ignore.kind(Path(entry.path), folder=True):
                            yield Path(entry.path)
                            continue
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


# --- an archive's clutter, and ignore patterns ----------------------------------------------------

#: Left alone (never registered, so never rejected) and counted in `status` by kind. Gitignore
#: patterns, matched in lower case (cameras write ``.MOV``, ``.THM``).
CLUTTER: dict[str, tuple[str, ...]] = {
    # Edits and metadata kept beside a photo: Lightroom/darktable (.xmp), iOS edits (.aae), camera
    # thumbnails (.thm), RawTherapee, DxO, ON1, Capture One, Google Takeout's .json.
    "sidecar": ("*.xmp", "*.aae", "*.thm", "*.pp3", "*.dop", "*.on1", "*.cos", "*.json"),
    # Photo managers' catalogues and their folders (previews, journals, locks).
    "catalogue": ("*.lrcat", "*.lrcat-*", "*.lrcat.lock", "*.lrdata/", "*.lrdata", "*.cocatalog/",
                  "*.cocatalogdb"),
    "video": ("*.mp4", "*.mov", "*.avi", "*.mkv", "*.m4v", "*.3gp", "*.3g2", "*.mts", "*.m2ts", "*.mpg",
              "*.mpeg", "*.wmv", "*.webm", "*.flv", "*.ogv", "*.vob", "*.mod", "*.tod", "*.lrv", "*.insv",
              "*.mxf", "*.dv", "*.qt"),
    # Voice memos some cameras record beside a photo.
    "audio": ("*.wav", "*.mp3", "*.m4a", "*.aac", "*.amr", "*.wma"),
    # Operating systems' and NAS's files: Windows thumbnails and folder settings, macOS's Finder
    # data and ._ copies, Picasa's settings, Synology's thumbnail folders, recycle bins.
    "system": ("thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", ".ds_store", "._*",
               ".picasa.ini", "picasa.ini", "@eadir/", "$recycle.bin/", "system volume information/"),
}
#: The kind of a file an ignore pattern names (DARKROOM_IGNORE, a .darkroomignore).
PATTERN_KIND = "pattern"
#: The ignore file read in an inbox or an ingested tree's root.
IGNORE_FILE = ".darkroomignore"



def _builtin_rules() -> tuple[dict[str, tuple[str, bool]], dict[str, tuple[str, bool]], list[tuple[str, str, bool]]]:
    """:data:`CLUTTER` as look-ups by name (a dict each for whole names and ``*.ext`` suffixes, the
    rest fnmatch patterns), each with its kind and whether it names folders only (``x/``): gitignore's
    meaning for patterns without an inner slash, matched name by name at a fraction of its cost."""
    exact: dict[str, tuple[str, bool]] = {}
    suffix: dict[str, tuple[str, bool]] = {}
    globs: list[tuple[str, str, bool]] = []
    for kind, patterns in CLUTTER.items():
        for pattern in patterns:
            folders_only, body = pattern.endswith("/"), pattern.rstrip("/")
            if not any(c in body for c in "*?["):
                exact[body] = (kind, folders_only)
            elif body.startswith("*.") and not any(c in body[2:] for c in "*?[."):
                suffix[body[1:]] = (kind, folders_only)
            else:
                globs.append((body, kind, folders_only))
    return exact, suffix, globs


_EXACT, _SUFFIX, _GLOBS = _builtin_rules()


def clutter_kind(rel: str, *, folder: bool = False) -> str | None:
    """The :data:`CLUTTER` kind of ``rel`` (a path relative to a root, ``/``-separated; a ``folder``
    or a file), in any case; None when it is none of them. A folder's kind covers what is in it."""
    parts = rel.lower().split("/")
    last = len(parts) - 1
    for i, name in enumerate(parts):
        is_folder = folder or i < last
        hit = _EXACT.get(name)
        if hit is None:
            dot = name.rfind(".")
            hit = _SUFFIX.get(name[dot:]) if dot >= 0 else None
        if hit is None:
            hit = next(((kind, only) for pattern, kind, only in _GLOBS if fnmatch.fnmatchcase(name, pattern)), None)
        if hit is not None and (is_folder or not hit[1]):
            return hit[0]
    return None


class IgnoreError(ValueError):
    """Ignore patterns that cannot be read; the message names where they are and what to do."""


def ignore_spec(lines: Sequence[str], where: str) -> pathspec.GitIgnoreSpec:
    """Gitignore lines as a spec; :class:`IgnoreError` naming ``where`` and the line when one is bad."""
    for number, line in enumerate(lines, 1):
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except (ValueError, TypeError, re.error) as exc:
            raise IgnoreError(f"{where}, pattern {number} ({line.strip()!r}): {exc}; fix it (gitignore syntax)") from None
    return pathspec.GitIgnoreSpec.from_lines(list(lines))


class IgnoreRules:
    """What is left alone below ``root``: the :data:`CLUTTER` kinds, then ``patterns`` (the setting
    DARKROOM_IGNORE), then the lines of ``root/.darkroomignore`` (read again when it changes), in
    gitignore syntax: the last pattern that matches decides, so ``!*.mov`` in the file takes videos
    after all, and ``raw/`` leaves a folder alone. Safe to use from several threads."""

    #: How often the root's .darkroomignore is looked at again (a stat), at most.
    RELOAD_SECONDS = 1.0

    def __init__(self, root: Path, patterns: Sequence[str] = ()) -> None:
        self.root = Path(os.path.abspath(root))
        self.real_root = Path(os.path.realpath(root))
        self._prefix = os.path.join(str(self.root), "")
        self._real_prefix = os.path.join(str(self.real_root), "")
        self._looked_at = float("-inf")
        self.patterns = list(patterns)
        self._lock = threading.Lock()
        self._file_sig: tuple[int, int] | None = None
        self._spec = ignore_spec(self.patterns, "DARKROOM_IGNORE")
        self._warned: tuple[int, int] | None = None

    def check(self) -> None:
        """Raise :class:`IgnoreError` when the root's .darkroomignore cannot be used."""
        self._user(strict=True)

    def kind(self, path: Path, *, folder: bool = False) -> str | None:
        """The kind of ``path`` (a file, or a ``folder``) when it is left alone, else None."""
        rel = self._relative(path)
        if rel is None:
            return None
        spec = self._user()
        if spec.patterns:
            decided = spec.check_file(rel + "/" if folder else rel).include
            if decided is not None:
                return PATTERN_KIND if decided else None
        return clutter_kind(rel, folder=folder)

    def _relative(self, path: Path) -> str | None:
        """``path`` relative to the root, ``/``-separated (string work: this runs for every file)."""
        for base, candidate in ((self._prefix, os.path.abspath(path)), (self._real_prefix, os.path.realpath(path))):
            if candidate.startswith(base) and len(candidate) > len(base):
                return candidate[len(base):].replace(os.sep, "/")
        return None

    def _user(self, strict: bool = False) -> pathspec.GitIgnoreSpec:
        now = time.monotonic()
        if not strict and now - self._looked_at < self.RELOAD_SECONDS:
            return self._spec
        self._looked_at = now
        where = self.root / IGNORE_FILE
        try:
            st = os.stat(where)
            sig = (st.st_size, st.st_mtime_ns)
        except OSError:
            sig = None
        with self._lock:
            if sig == self._file_sig and not strict:
                return self._spec
            lines: list[str] = []
            if sig is not None:
                try:
                    lines = where.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
                    spec = ignore_spec(self.patterns + lines, f"DARKROOM_IGNORE and {where}")
                except (OSError, IgnoreError) as exc:
                    if strict:
                        raise IgnoreError(str(exc)) from None
                    if self._warned != sig:
                        self._warned = sig
                        log.error("the ignore file %s cannot be used (%s): its patterns are left out until it "
                                  "is fixed", where, exc)
                    spec = ignore_spec(self.patterns, "DARKROOM_IGNORE")
            else:
                spec = ignore_spec(self.patterns, "DARKROOM_IGNORE")
            self._spec, self._file_sig = spec, sig
            return spec
