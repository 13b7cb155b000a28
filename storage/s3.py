"""The blob store in an S3 bucket (``s3://bucket/prefix?endpoint=http://host:port``): AWS S3, MinIO,
SeaweedFS. Objects are ``<prefix>/<aa>/<bb>/<sha256>``, the file store's layout.

Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, a profile, an instance role); with none at all, requests go unsigned (a
server that allows anonymous access, such as SeaweedFS without an ``-s3.config``). No message
here ever holds a credential: errors name the bucket, the prefix and the endpoint only.

The client is made on first use in the process that uses it (after a worker's fork), and shared
by that process's threads (boto3 clients are thread-safe).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from urllib.parse import quote

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

from storage.blobs import (
    CLUSTER_ID,
    SETTING,
    BlobCorrupt,
    BlobMissing,
    BlobStore,
    BlobStoreDenied,
    BlobStoreUnavailable,
    OversizeFile,
    missing_text,
    sha256_of,
)

#: Error codes that mean "this object (or bucket) is not there".
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


class S3BlobStore(BlobStore):
    """A blob store in a bucket. Uploads are skipped when the object exists (an upload twice is
    harmless anyway: the name is the content's hash); every download is checked against its hash."""

    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None, region: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.region = region
        self.root = Path(f"/s3/{bucket}/{self.prefix}")  # no folder: only for messages of code that expects one
        self._client = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._bucket_ready = False

    # --- where ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        options = [f"endpoint={self.endpoint}"] if self.endpoint else []
        options += [f"region={quote(self.region)}"] if self.region else []
        return where + ("?" + "&".join(options) if options else "")

    def key_for(self, sha256: str) -> str:
        sha256_of(sha256)
        return self._key(f"{sha256[:2]}/{sha256[2:4]}/{sha256}")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def path_for(self, sha256: str) -> Path:
        raise TypeError(f"the blob store {self.url} keeps objects, not files: read them with read()")

    # --- the client -------------------------------------------------------------------------------

    def client(self):
        """This process's S3 client, made on first use (a forked child makes its own)."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                session = boto3.session.Session()
                extra = {} if session.get_credentials() is not None else {"signature_version": UNSIGNED}
                config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                                s3={"addressing_style": "path"}, max_pool_connections=16, **extra)
                self._client = session.client("s3", endpoint_url=self.endpoint,
                                              region_name=self.region or session.region_name or "us-east-1",
                                              config=config)
                self._pid = os.getpid()
            return self._client

    def _trouble(self, exc: Exception, doing: str) -> Exception:
        """The exception to raise for a failed request: unavailable (retried) or a clear error."""
        if isinstance(exc, NoCredentialsError):
            return BlobStoreDenied(f"no credentials for the blob store {self.url} ({SETTING}): set "
                                   "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NO_BUCKET:
                return BlobStoreUnavailable(f"the bucket {self.bucket!r} does not exist at {self.url} ({SETTING})")
            if code in _DENIED:
                return BlobStoreDenied(f"the blob store {self.url} refused to {doing} ({code}): check "
                                       "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions")
            if status is not None and int(status) < 500:
                return RuntimeError(f"the blob store {self.url} could not {doing}: {code or status}")
            return BlobStoreUnavailable(f"the blob store {self.url} could not {doing}: {code or status} (server error)")
        # Connection refused, timeouts, a broken read: the store away for a moment.
        return BlobStoreUnavailable(f"the blob store {self.url} ({SETTING}) did not answer: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}")

    def _missing(self, exc: Exception) -> bool:
        return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code", "")) in _MISSING

    # --- the bucket -------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (the producer's first write); once per process."""
        if self._bucket_ready:
            return
        client = self.client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - sorted below
            if not self._missing(exc) and "NoSuchBucket" not in str(exc):
                raise self._trouble(exc, "show the bucket") from None
            try:
                client.create_bucket(Bucket=self.bucket)
            except Exception as exc2:  # noqa: BLE001
                code = getattr(exc2, "response", {}).get("Error", {}).get("Code", "")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._trouble(exc2, f"create the bucket {self.bucket!r} (create it yourself, or "
                                              "allow s3:CreateBucket)") from None
        self._bucket_ready = True

    def answers(self, *, bucket_needed: bool = False) -> None:
        """Raise (:class:`BlobStoreUnavailable`, :class:`BlobStoreDenied`) unless the endpoint answers and lets us
        in; a bucket not made yet is fine (the producer makes it with its first blob) unless ``bucket_needed``."""
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            if not self._missing(exc):
                raise self._trouble(exc, "show the bucket") from None
            if bucket_needed:
                raise BlobStoreUnavailable(f"the bucket {self.bucket!r} does not exist at {self.url} "
                                           f"({SETTING})") from None

    # --- objects ----------------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        return self._exists(self.key_for(sha256))

    def _exists(self, key: str) -> bool:
        try:
            self.client().head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return False
            raise self._trouble(exc, "look up an object") from None

    def read(self, sha256: str, *, what: str = "original") -> bytes:
        """The object's bytes, checked against ``sha256``. Raises :class:`BlobMissing` (a
        FileNotFoundError), :class:`BlobCorrupt`, or :class:`BlobStoreUnavailable`."""
        key = self.key_for(sha256)
        try:
            body = self.client().get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                raise BlobMissing(missing_text(what, sha256, self.url)) from None
            raise self._trouble(exc, f"read {key}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BlobCorrupt(f"the object {key} in the blob store {self.url} does not hash to its name: it was "
                              "damaged or overwritten; register the file again (drop it into the inbox, or ingest "
                              "it) to put it back")
        return data

    def _put(self, key: str, data: bytes) -> None:
        self.ensure_bucket()
        if self._exists(key):
            return
        try:
            self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:  # noqa: BLE001
            raise self._trouble(exc, f"write {key}") from None

    def store_file(self, source: Path, *, link: bool = False,
                   max_bytes: int | None = None) -> tuple[str, int, Path | bytes]:
        """Read ``source`` (bounded by ``max_bytes``: raises :class:`OversizeFile` past it), hash it
        here, and upload it under its hash unless that object exists. Returns (sha256, size, the bytes
        uploaded). ``link`` has no meaning for a bucket."""
        digest = hashlib.sha256()
        parts: list[bytes] = []
        size = 0
        with open(source, "rb") as src:
            while chunk := src.read(CHUNK_READ):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise OversizeFile(size)
                digest.update(chunk)
                parts.append(chunk)
        data = b"".join(parts)
        sha = digest.hexdigest()
        self._put(self.key_for(sha), data)
        return sha, size, data

    def put_file(self, source: Path, *, link: bool = False, max_bytes: int | None = None) -> tuple[str, int]:
        sha, size, _data = self.store_file(source, link=link, max_bytes=max_bytes)
        return sha, size

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self._put(self.key_for(sha), data)
        return sha

    # --- the clusters that wrote here ---------------------------------------------------------------

    def _mark_key(self, cluster: str) -> str:
        if not CLUSTER_ID.match(cluster):
            raise ValueError(f"not a cluster id: {cluster!r}")
        return self._key(f"clusters/{cluster}")

    def mark_cluster(self, cluster: str) -> None:
        self._put(self._mark_key(cluster), b"")

    def has_cluster(self, cluster: str) -> bool:
        key = self._mark_key(cluster)
        try:
            self.client().head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                self.answers(bucket_needed=True)  # a missing bucket is the store away (or the wrong URL), not a missing mark
                return False
            raise self._trouble(exc, "look up an object") from None


CHUNK_READ = 1 << 20
