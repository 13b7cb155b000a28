"""The blob store a URL names (DARKROOM_BLOB_URL): a folder (:class:`storage.blobs.BlobStore`) or
an S3 bucket (:class:`storage.s3.S3BlobStore`), with the same methods."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from storage.blobs import BlobStore, check_url
from storage.s3 import S3BlobStore


def open_store(url: str) -> BlobStore:
    """The blob store at ``url`` (see :func:`storage.blobs.check_url`). Nothing is contacted yet."""
    check_url(url)
    parts = urlsplit(url)
    if parts.scheme == "s3":
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return S3BlobStore(bucket=parts.netloc, prefix=unquote(parts.path).strip("/"),
                           endpoint=options.get("endpoint"), region=options.get("region"))
    return BlobStore(Path(unquote(parts.path)))


__all__ = ["open_store"]
