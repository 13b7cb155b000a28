"""Typed settings: one object, read from the environment (``DARKROOM_*``) and a ``.env`` file.

Build it with :func:`get_settings` (cached per process) and pass it down; nothing else in the
project reads the environment for configuration.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import pathspec
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from darkroom import catalog
from storage.blobs import check_url
from tasks.augment import parse_spec
from tasks.faces import BOXED
from tasks.normalize import format_mode, parse_mode


class Settings(BaseSettings):
    """Everything Darkroom can be told. Each field is ``DARKROOM_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="DARKROOM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where things live.
    data_dir: Path = Field(Path("darkroom-data"), description="Blobs, the SQLite store and local Redis live here.")
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL; default: SQLite at DATA_DIR/darkroom.db. "
        "Postgres: postgresql+psycopg://user:password@host/db",
    )
    broker_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="Redis URL for the Celery broker.")
    start_local_redis: bool = Field(
        True, description="`darkroom up` starts a redis-server when none answers at a local BROKER_URL."
    )
    sentinel_master: str = Field(
        "mymaster", min_length=1, description="With a sentinel:// BROKER_URL: the name the sentinels know the "
        "Redis master by (their `sentinel monitor NAME ...`).")
    db_pool_size: int = Field(
        1, ge=1, description="PostgreSQL connections each process keeps open (its pool); a worker process uses one "
        "at a time. SQLite keeps SQLAlchemy's own pool.")
    db_max_overflow: int = Field(
        2, ge=0, description="PostgreSQL connections a process may open beyond DB_POOL_SIZE for a moment (closed "
        "again when returned).")

    # What to do with each image.
    tasks: Annotated[list[str], NoDecode] = Field(
        list(catalog.DEFAULT_TASKS), description=f"Tasks run on every image (comma-separated): {', '.join(catalog.NAMES)}.")
    classifier_model: str = Field(
        "vgg16", description="Registry name (vgg16, mobilenet_v2, ...) or the path of a saved .keras model."
    )
    classifier_weights: str = Field(
        "imagenet",
        description="'imagenet' (Keras download/cache), a local weights file (.h5 / .weights.h5), or 'none'.",
    )
    classifier_top_k: int = Field(5, ge=1, le=100)
    face_min_confidence: float = Field(0.9, ge=0.0, le=1.0)
    face_min_size: int = Field(20, ge=4, description="Smallest face MTCNN looks for, in pixels.")
    face_max_side: int = Field(
        1600, ge=0, description="Photos larger than this (longest side) are searched for faces at this size, "
        "faces mapped back: MTCNN's cost grows with the pixel count. Faces under FACE_MIN_SIZE x side / "
        "FACE_MAX_SIDE pixels are then not looked for, and boxes may shift a little. 0: always full resolution.",
    )
    augment_count: int = Field(9, ge=1, le=64)
    augment_seed: int = 0
    augment_rotation: float = Field(90.0, ge=0.0, le=180.0, description="Largest rotation, in degrees.")
    augment_flip: Literal["horizontal", "vertical", "horizontal_and_vertical", "none"] = "horizontal_and_vertical"
    augment_size: int = Field(256, ge=16, le=4096, description="Longest side of each augmented image.")
    augment: str = Field(
        "",
        description="More augmentation, as key=value pairs over the AUGMENT_* values, e.g. "
        "'flip=hv,rotation=90,zoom=0.2,shear=10,channel_shift=30,fill_mode=reflect' "
        "(keys: the fields of tasks.augment.AugmentSpec).",
    )
    normalize_modes: Annotated[list[str], NoDecode] = Field(
        ["scale"],
        description="Normalization reports stored per image (comma-separated): scale, center, standardize, "
        "each of the last two optionally ':per_channel'. The scale report is always stored (the results' "
        "'normalize').",
    )
    face_crops: bool = Field(True, description="Store a JPEG crop of every detected face.")
    face_boxed: Literal[BOXED] = Field(  # type: ignore[valid-type]
        "found", description="Store the photo with its faces boxed: when a face was found (a photo without "
        "one would be stored again unchanged), for every photo, or never.")

    phash_distance: int = Field(
        8, ge=0, le=32, description="Photos whose perceptual hashes differ in at most this many of 64 bits are "
        "near-duplicates (the results' near_duplicates, `darkroom duplicates`' default).")

    # Limits on input.
    max_image_pixels: int = Field(100_000_000, ge=1, description="Larger images are rejected (decompression bombs).")
    max_image_bytes: int = Field(200 * 1024 * 1024, ge=1)

    # Producer.
    settle_seconds: float = Field(1.0, ge=0.0, description="A file must be unchanged this long before it is taken.")
    watch_polling: bool = Field(False, description="Poll instead of inotify (network mounts).")
    rescan_seconds: float = Field(300.0, ge=0.0, description="Full rescan of the inbox every N seconds; 0 disables.")
    ignore: Annotated[list[str], NoDecode] = Field(
        [], description="Files the inbox watcher and `ingest` leave alone (counted in `status`), in gitignore syntax, "
        "separated by commas or newlines: '*.png,drafts/' (a leading ! takes files back, even sidecars or videos). "
        "A .darkroomignore file in the inbox or the ingested folder adds its lines.")
    reconcile_seconds: float = Field(
        30.0, ge=1.0, description="How often the producer compares the SQL ledger with the broker."
    )
    max_queue_depth: int = Field(10_000, ge=1, description="Backpressure: enqueueing waits while a queue is deeper.")
    blob_mode: Literal["copy", "link", "reference"] = Field(
        "copy", description="How originals are kept: 'copy' into the blob store (the file may then go), "
        "'link' (a hard link where the filesystem allows, else a copy), or 'reference': nothing copied, the "
        "original is read where it lies and must stay there (`darkroom ingest --in-place` does this for one "
        "ingest); a worker checks it is unchanged before using it.")

    blob_url: str | None = Field(
        None, description="Where originals (and DARKROOM_ARTIFACT_STORE=blobs artifacts) are kept, by sha256: "
        "file:///path (default: DATA_DIR/blobs) or s3://bucket/prefix?endpoint=http://host:port[&region=R] "
        "(S3, MinIO, SeaweedFS; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never in the URL). "
        "Every producer and worker host needs the same store.")

    artifact_store: Literal["sql", "blobs"] = Field(
        "sql", description="Where the images Darkroom makes (boxed faces, augmentations, contact sheets) are "
        "kept: 'sql', in the database (one store to back up), or 'blobs', in the blob store by sha256 with only "
        "their hash in SQL (a database a fraction of the size at a million photos).")

    # Worker.
    concurrency: int = Field(0, ge=0, description="Worker processes; 0 means the number of CPU cores.")
    queues: Annotated[list[str], NoDecode] = Field(["cpu", "gpu"], description="Queues a worker consumes.")
    task_max_retries: int = Field(
        5, ge=0, description="Retries of a run after a transient error (database or blob store away), with "
        "backoff of 1, 2, 4, ... 60 s; then the run is recorded failed.")
    visibility_timeout: int = Field(
        3600, ge=60, description="Seconds before Redis redelivers an unacknowledged message; longer than any task."
    )
    task_time_limit: int = Field(900, ge=10, description="Hard limit for one task, seconds.")
    prefetch_multiplier: int = Field(1, ge=1)
    fast_decode: bool = Field(
        True, description="Decode JPEGs at 1/2, 1/4 or 1/8 size in the codec when a task needs only a small "
        "image (classification's input size, augmentation's size): several times faster. false: always decode "
        "every pixel, then resize (as keras.utils.load_img does).",
    )
    raw: Literal["preview", "full"] = Field(
        "preview", description="How camera RAW files are decoded: 'preview', from the photo the camera embedded "
        "when it is at least as large as the tasks need (every pixel of the RAW when a task needs every pixel), "
        "else LibRaw's full demosaic; 'full': always the demosaic (slower; the RAW's own rendering).",
    )
    classify_batch_size: int = Field(
        16, ge=1, le=1024, description="Pending classify runs one worker process takes and classifies together."
    )
    classify_chunk: int = Field(
        0, ge=0, le=1024, description="Images per forward pass within a batch. 0: 4 on a CPU (a core keeps a few "
        "images' activations in its caches, not 16's) except for models of over 256 MB of weights (VGG16, VGG19: "
        "each pass reads them all), the whole batch on a GPU.")
    tf_threads: int = Field(0, ge=0, description="TensorFlow threads per worker process; 0: cores / processes.")
    preload_models: bool = Field(
        True, description="Each worker process loads the models of the tasks it may be sent, and runs them once, "
        "as it starts (in the background, after the fork), so the first photo does not wait for them. false: "
        "on first use.",
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0.0, description="How often each worker process refreshes its heartbeat key in Redis.")
    heartbeat_ttl: float = Field(
        30.0, gt=0.0, description="How long a worker process's heartbeat lasts without a refresh: the producer's "
        "reconciler takes over the runs of a process whose heartbeat is gone (within about TTL + "
        "RECONCILE_SECONDS of its death). At least twice HEARTBEAT_SECONDS.")
    log_level: str = "INFO"

    # Serving and monitoring.
    serve_token: SecretStr | None = Field(
        None, description="The token `darkroom serve` asks for (a bearer token, or typed into its login form); "
        "needed to serve on any address but loopback.")
    task_events: bool = Field(
        False, description="Workers send Celery's task events, so that Flower (or `celery events`) can follow them.")

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if sentinel_hosts(url) is None and url.partition("://")[0].lower() not in REDIS_SCHEMES:
            raise ValueError("must be a Redis URL: redis://[user:password@]host:port/db (or rediss://, unix://), or "
                             "Redis Sentinel's sentinel://host1:26379;sentinel://host2:26379 (with "
                             "DARKROOM_SENTINEL_MASTER)")
        return value

    @field_validator("heartbeat_ttl")
    @classmethod
    def _check_heartbeat_ttl(cls, value: float, info: ValidationInfo) -> float:
        every = info.data.get("heartbeat_seconds")
        if every is not None and value < 2 * every:
            raise ValueError("must be at least twice DARKROOM_HEARTBEAT_SECONDS (a heartbeat late by one refresh "
                             "must not look like a dead process)")
        return value

    @field_validator("face_max_side")
    @classmethod
    def _check_face_max_side(cls, value: int) -> int:
        if 0 < value < 64:
            raise ValueError("must be 0 (full resolution) or at least 64 pixels")
        return value

    @field_validator("tasks", "queues", "normalize_modes", mode="before")
    @classmethod
    def _split_csv(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ignore", mode="before")
    @classmethod
    def _split_patterns(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
        return value

    @field_validator("ignore")
    @classmethod
    def _check_ignore(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                pathspec.GitIgnoreSpec.from_lines([pattern])
            except (ValueError, TypeError, re.error) as exc:
                raise ValueError(f"{pattern!r} is not a gitignore pattern ({exc})") from None
        return value

    @field_validator("tasks")
    @classmethod
    def _check_tasks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"no task given: name at least one of {', '.join(catalog.NAMES)}")
        unknown = [name for name in value if name not in catalog.NAMES]
        if unknown:
            raise ValueError(f"unknown task {', '.join(map(repr, unknown))}: the tasks are {', '.join(catalog.NAMES)}")
        return list(dict.fromkeys(value))

    @field_validator("normalize_modes")
    @classmethod
    def _check_normalize_modes(cls, value: list[str]) -> list[str]:
        modes: list[str] = []
        for text in value:
            mode = format_mode(*parse_mode(text))  # raises ValueError, which names the bad entry
            if mode not in modes:
                modes.append(mode)
        return modes or ["scale"]

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return check_url(value.strip())  # raises ValueError saying what is wrong (never echoing a secret)

    @field_validator("augment")
    @classmethod
    def _check_augment(cls, value: str) -> str:
        parse_spec(value)  # raises ValueError naming the bad key or value
        return value.strip()

    # Derived values.
    @property
    def db_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'darkroom.db').resolve()}"

    @property
    def redis_url(self) -> str:
        return self.broker_url.get_secret_value()

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def blob_location(self) -> str:
        """The blob store's URL: DARKROOM_BLOB_URL, or ``file://`` DATA_DIR/blobs (absolute)."""
        return self.blob_url or (self.blob_dir.absolute()).as_uri()

    def masked(self) -> dict[str, object]:
        """Settings as plain data with every password replaced by ``***`` (for `darkroom config`)."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                # A token is masked whole; a URL keeps all but its password.
                value = "***" if name == "serve_token" else mask_url(value.get_secret_value())
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["database_url"] = mask_url(self.db_url)
        return out


#: The schemes of a plain Redis URL (redis-py's and kombu's).
REDIS_SCHEMES = ("redis", "rediss", "unix")


def sentinel_hosts(url: str) -> list[tuple[str, int]] | None:
    """The (host, port) of each sentinel a ``sentinel://h1:26379;sentinel://h2:26379`` URL names (kombu's
    syntax: the first part may carry the master's ``user:password@`` and ``/db``); None for any other URL.
    Raises ValueError, without the URL (it may hold a password), when it is malformed."""
    parts = [part.strip() for part in url.split(";") if part.strip()]
    if not parts or not any(part.lower().startswith("sentinel://") for part in parts):
        return None
    hosts = []
    for i, part in enumerate(parts, 1):
        split = urlsplit(part)
        if split.scheme.lower() != "sentinel":
            raise ValueError(f"part {i} of a sentinel URL list is not sentinel://host:port: separate the "
                             "sentinels with ';', each as sentinel://host:port")
        try:
            port = split.port or 26379
        except ValueError:
            raise ValueError(f"part {i} of the sentinel URL list has a port that is not a number") from None
        if not split.hostname:
            raise ValueError(f"part {i} of the sentinel URL list has no host")
        if split.path.strip("/") and not split.path.strip("/").isdigit():
            raise ValueError(f"part {i} of the sentinel URL list: the database after the port must be a number")
        hosts.append((split.hostname, port))
    return hosts


def mask_url(url: str) -> str:
    """Replace the password of a URL with ``***`` so it can be printed (each of a ``;``-separated list)."""
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def settings_error(exc: Exception) -> str:
    """One line naming each bad ``DARKROOM_`` variable and what is wrong with it (never its value:
    it may be a secret)."""
    if isinstance(exc, ValidationError):
        return "invalid settings: " + "; ".join(
            f"DARKROOM_{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors(include_input=False))
    return f"invalid settings: {exc}"


def load_settings() -> Settings:
    """:func:`get_settings`, or exit with the one-line error of :func:`settings_error` (for entry
    points such as ``celery -A worker.app``, where a traceback would bury it)."""
    try:
        return get_settings()
    except (ValidationError, SettingsError) as exc:
        raise SystemExit(f"darkroom: {settings_error(exc)}") from None


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
