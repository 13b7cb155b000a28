"""Content-addressed store for originals (and artifacts with DARKROOM_ARTIFACT_STORE=blobs), by
sha256, behind a URL (DARKROOM_BLOB_URL):

- ``file:///path`` (the default: DATA_DIR/blobs): :class:`BlobStore`, ``<root>/<aa>/<bb>/<sha256>``;
- ``s3://bucket/prefix?endpoint=http://host:port`` (S3, MinIO, SeaweedFS): :class:`storage.s3.S3BlobStore`,
  the same layout under the prefix, every download checked against its sha256.

:func:`storage.stores.open_store` picks the implementation from the URL; both have the same methods (``put_file``,
``store_file``, ``put_bytes``, ``read``, ``exists``, the cluster marks), so callers do not care which.
Names come from the hash alone, so nothing a user names a file can steer where it is written.

A store marks the clusters whose producers wrote to it (``clusters/<uuid>``): a worker whose store
lacks its cluster's mark is pointed at another store (see :mod:`storage.cluster`), and a blob
missing from a store that holds the mark is missing for good, not a store away for a moment.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CLUSTER_ID = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 1 << 20
#: The setting a person fixes when a store is the wrong one or away.
SETTING = "DARKROOM_BLOB_URL"


class BlobMissing(FileNotFoundError):
    """The store answered, and has no object under this hash."""


class BlobCorrupt(Exception):
    """The store's object does not hash to its name: it holds other bytes than were put there."""


class BlobStoreUnavailable(ConnectionError):
    """The store did not answer (or answered with a server error): trouble that passes, retried."""


class BlobStoreDenied(RuntimeError):
    """The store refused us (credentials, permissions): a setting to fix, not trouble that passes."""


def check_url(url: str) -> str:
    """``url`` when it is a blob store URL Darkroom can use, else ValueError saying what is wrong
    (never the URL itself: it might hold a secret someone put there)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("a file URL names a local folder: file:///absolute/path (three slashes)")
        if not unquote(parts.path).startswith("/"):
            raise ValueError("a file URL needs an absolute path: file:///absolute/path")
        if parts.query:
            raise ValueError("a file URL takes no ?options")
        return url
    if parts.scheme == "s3":
        if "@" in parts.netloc or parts.password is not None:
            raise ValueError("credentials do not go in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc or ""):
            raise ValueError("s3://BUCKET/prefix: the bucket name is 3-63 lower-case letters, digits, '.' or '-'")
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(options) - {"endpoint", "region"})
        if unknown:
            raise ValueError(f"unknown option {', '.join(unknown)}: an s3 URL takes ?endpoint=http://host:port "
                             "and &region=NAME")
        for endpoint in options.get("endpoint", []):
            ep = urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.hostname:
                raise ValueError("endpoint= must be an http:// or https:// address, e.g. http://host:8333")
            if "@" in ep.netloc:
                raise ValueError("credentials do not go in the endpoint: set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY")
        return url
    raise ValueError("must be file:///path or s3://bucket/prefix?endpoint=http://host:port")


def sha256_of(name: str) -> str:
    if not _SHA256.match(name):
        raise ValueError(f"not a sha256 hex digest: {name!r}")
    return name


class BlobStore:
    """The store in a local (or mounted) folder: ``file:///path``. The base of every store: an
    S3 store (:class:`storage.s3.S3BlobStore`) has the same methods, less :meth:`path_for`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def url(self) -> str:
        """Where the store is, to show a person (no secret is ever part of it)."""
        return self.root.absolute().as_uri()

    def path_for(self, sha256: str) -> Path:
        sha256_of(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def read(self, sha256: str, *, what: str = "original") -> bytes:
        """The blob's bytes. Raises :class:`BlobMissing` (a FileNotFoundError) naming the store."""
        try:
            return self.path_for(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(missing_text(what, sha256, self.url)) from None

    def store_file(self, source: Path, *, link: bool = False,
                   max_bytes: int | None = None) -> tuple[str, int, Path | bytes]:
        """:meth:`put_file`, and what to read the stored content from now (the blob's path; an S3
        store gives the bytes it uploaded): the file itself may change the next moment."""
        sha, size = self.put_file(source, link=link, max_bytes=max_bytes)
        return sha, size, self.path_for(sha)

    def answers(self, *, bucket_needed: bool = False) -> None:
        """Raise (:class:`BlobStoreUnavailable`, :class:`BlobStoreDenied`) unless the store can be
        asked; a folder always can (a missing one is made by the first blob). See the S3 store's."""

    # --- the clusters that wrote here ---------------------------------------------------------------

    def _mark(self, cluster: str) -> Path:
        if not CLUSTER_ID.match(cluster):
            raise ValueError(f"not a cluster id: {cluster!r}")
        return self.root / "clusters" / cluster

    def mark_cluster(self, cluster: str) -> None:
        """Record that cluster ``cluster`` (its uuid, hex) keeps blobs here."""
        mark = self._mark(cluster)
        if mark.is_file():
            return
        mark.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=mark.parent, prefix=".incoming-")
        os.close(fd)
        os.replace(tmp, mark)

    def has_cluster(self, cluster: str) -> bool:
        """Whether cluster ``cluster`` keeps blobs here (raises :class:`BlobStoreUnavailable` when the
        store cannot be asked)."""
        try:
            return self._mark(cluster).is_file()
        except PermissionError as exc:
            raise BlobStoreDenied(f"the blob store {self.url} cannot be read ({exc.strerror})") from None

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


def missing_text(what: str, sha256: str, url: str) -> str:
    return (f"{what} {sha256} is missing from the blob store {url} ({SETTING}): if that is the producer's "
            "store, register the file again (drop it into the inbox, or ingest it) to restore it; if not, "
            f"set {SETTING} to the producer's")


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
