"""Content-addressed store for originals: ``<root>/<aa>/<bb>/<sha256>``.

Names come from the hash alone, so nothing a user names a file can steer where it is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        try:
            return self.path_for(sha256).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"original {sha256} is missing from the blob store {self.root}; "
                "drop the file into the inbox again to restore it"
            ) from None

    def put_file(self, source: Path, *, link: bool = False, max_bytes: int | None = None) -> tuple[str, int]:
        """Hash ``source`` while copying it in; return (sha256, size). Atomic: no partial blob is ever visible.

        With ``link`` the file is hard-linked when it is on the same filesystem (no copy; the blob then
        shares the inode, so the original must not be edited in place afterwards).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        # Stop reading: the caller rejects it by size; hash what we have is meaningless.
                        raise OversizeFile(size)
                    digest.update(chunk)
                    if not link:
                        out.write(chunk)
                if not link:
                    out.flush()
                    os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path_for(sha)
            if final.exists():
                return sha, size
            final.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(source, final)
                    return sha, size
                except OSError:
                    shutil.copyfile(source, tmp)
            os.replace(tmp, final)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)


    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` (an artifact Darkroom made) under its sha256 and return it; atomic, and
        nothing is written when the same bytes are there already."""
        sha = hashlib.sha256(data).hexdigest()
        final = self.path_for(sha)
        if final.exists():
            return sha
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, final)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return sha


class OversizeFile(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def hash_file(path: Path, *, max_bytes: int | None = None) -> tuple[str, int]:
    """(sha256, size) of the file at ``path``, read where it lies (nothing is copied: an original
    held by reference). Raises :class:`OversizeFile` as soon as it is over ``max_bytes``. Reads
    into one buffer; the hash releases the GIL, so threads hash files side by side."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            size += n
            if max_bytes is not None and size > max_bytes:
                raise OversizeFile(size)
            digest.update(view[:n])
    return digest.hexdigest(), size
