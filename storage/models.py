"""The SQL schema: images, the files that brought them, task runs, and results.

One ``Image`` per distinct content (sha256). Every path that arrived is a ``SourceFile`` (several
paths may carry the same image; a refused file has no image). One ``TaskRun`` per (image, task,
model): the ledger that says what is queued, running, done, failed or rejected. Results hang off
the image and are keyed so that a task delivered twice leaves one result.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

# Stable constraint names so Alembic migrations are portable between SQLite and Postgres.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

def shown(text: str) -> str:
    """``text`` as it can be stored and shown: the bytes of a file name that is not valid UTF-8 (which
    Python holds as lone surrogates, ``caf\\udce9.jpg`` for the Latin-1 ``caf\\xe9.jpg``) written as
    ``\\xNN`` escapes (``caf\\xe9.jpg``). Any other text is returned as it is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate no file name decodes to
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")


class ShownText(TypeDecorator):
    """Text whose values are stored :func:`shown`: a path that is not valid UTF-8, or a message that
    names one, can be recorded (the database driver would refuse it) and shown, and looking a path up
    escapes it the same way. What is read back is the shown form."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return shown(value) if isinstance(value, str) else value


# Task-run states. ``queued`` and ``running`` are pending; the other three are terminal.
QUEUED, RUNNING, DONE, FAILED, REJECTED = "queued", "running", "done", "failed", "rejected"
PENDING_STATES = (QUEUED, RUNNING)
TERMINAL_STATES = (DONE, FAILED, REJECTED)

# Where an image's original is (Image.original).
ORIGINAL_BLOB, ORIGINAL_REFERENCE, ORIGINAL_MISSING = "blob", "reference", "missing"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    #: How it is decoded (``tasks.imaging.ImageInfo.decoder``): ``pillow``, ``pillow-heif``, ``raw:preview`` (a
    #: camera RAW's embedded preview) or ``raw:full`` (LibRaw's demosaic); NULL when rejected, or registered
    #: before migration 0005.
    decoder: Mapped[str | None] = mapped_column(String(16))
    #: The description of its embedded ICC profile (converted to sRGB before any task saw it); NULL without one.
    color_profile: Mapped[str | None] = mapped_column(Text)
    #: Set when the content can never be processed (not an image, corrupt, too large).
    rejected_reason: Mapped[str | None] = mapped_column(ShownText)
    #: The state this image is counted under in ``ledger_counts`` (kept by
    #: :func:`storage.ledger.fold_counts`; NULL until it is first counted).
    counted_state: Mapped[str | None] = mapped_column(String(16))
    #: Where a worker finds the original: ``blob`` (a copy in the blob store), ``reference`` (no
    #: copy: read from the image's files where they lie, checked unchanged), ``missing`` (held by
    #: reference and none of its files still holds it: its runs failed; registering a file with this
    #: content again sends them again).
    original: Mapped[str] = mapped_column(String(16), default=ORIGINAL_BLOB, server_default=ORIGINAL_BLOB)
    # How many frames the file holds (animated GIF/WebP/PNG, multi-page TIFF): the tasks saw the
    # first. NULL: registered before migration 0010, or rejected.
    frames: Mapped[int | None] = mapped_column(Integer)
    # Capture metadata from EXIF (or LibRaw), read at registration (migration 0010; storage.capture):
    #: When it was taken, by the camera's clock (naive local time) ...
    taken_local: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=False))
    #: ... that clock's offset from UTC in minutes (NULL: the zone is unknown) ...
    taken_offset: Mapped[int | None] = mapped_column(Integer)
    #: ... and the UTC instant, when the offset is known.
    taken_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    camera_make: Mapped[str | None] = mapped_column(Text)
    camera_model: Mapped[str | None] = mapped_column(Text)
    #: Make and model as `results --camera` matches them (storage.capture.camera_keys).
    camera_make_key: Mapped[str | None] = mapped_column(String(200))
    camera_model_key: Mapped[str | None] = mapped_column(String(200))
    lens: Mapped[str | None] = mapped_column(Text)
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    gps_alt: Mapped[float | None] = mapped_column(Float)
    #: The EXIF orientation (1-8) the file had; width and height are after it.
    orientation: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_images_rejected", "id", postgresql_where=text("rejected_reason IS NOT NULL"),
              sqlite_where=text("rejected_reason IS NOT NULL")),
        # `results --since`.
        Index("ix_images_created_at", "created_at"),
        # `results --taken-since/--taken-until` (by the camera's clock; with a zone, the UTC instant).
        Index("ix_images_taken_local", "taken_local"),
        Index("ix_images_taken_at", "taken_at"),
        # `results --camera` (a make, a model, or both).
        Index("ix_images_camera", "camera_make_key", "camera_model_key"),
        # `results --format`: a format's images in id order (keyset pages).
        Index("ix_images_format", "format", "id"),
        Index("ix_images_camera_model", "camera_model_key"),
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    files: Mapped[list[SourceFile]] = relationship(back_populates="image", order_by="SourceFile.id")
    runs: Mapped[list[TaskRun]] = relationship(back_populates="image", order_by="TaskRun.id")


class SourceFile(Base):
    """A path that arrived in the inbox or an ingested tree, and what became of it."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: As :func:`shown`: a name that is not valid UTF-8 has its bytes as ``\\xNN`` escapes.
    path: Mapped[str] = mapped_column(ShownText, unique=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    #: Why the file itself was refused before it became an image (e.g. a symlink out of the inbox).
    refused_reason: Mapped[str | None] = mapped_column(ShownText)

    __table_args__ = (
        Index("ix_files_refused", "id", postgresql_where=text("refused_reason IS NOT NULL"),
              sqlite_where=text("refused_reason IS NOT NULL")),
    )
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image | None] = relationship(back_populates="files")


class TaskRun(Base):
    __tablename__ = "task_runs"
    __table_args__ = (
        UniqueConstraint("image_id", "task", "model"),
        Index("ix_task_runs_status_task", "status", "task"),
        # The runs still to be sent, in id order (the producer's every turn).
        Index("ix_task_runs_unsent", "id", postgresql_where=text("status = 'queued' AND enqueued_at IS NULL"),
              sqlite_where=text("status = 'queued' AND enqueued_at IS NULL")),
        # Pending runs of a model, oldest first (a worker filling its batch).
        Index("ix_task_runs_task_model_status", "task", "model", "status", "id"),
        # Failed and rejected runs, newest first (`status`' problems).
        Index("ix_task_runs_status_finished", "status", "finished_at"),
        # The images with a run in a state, in image order (`results --status`, `--faces 0`).
        Index("ix_task_runs_status_image", "status", "image_id", "task"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(32))
    #: The model (and its weights identity) the result comes from; '' for tasks without one.
    model: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: When the message was handed to the broker; NULL means it still has to be sent.
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(ShownText)
    #: Queued for a retry whose message is on its way: the run belongs to that message (which may
    #: take it over from any holder), not to a batch or group another process gathers.
    retry_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    image: Mapped[Image] = relationship(back_populates="runs")


class Normalization(Base):
    """Lesson 2: pixel statistics before and after one normalization mode."""

    __tablename__ = "normalizations"
    __table_args__ = (UniqueConstraint("image_id", "mode", "per_channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(16))
    per_channel: Mapped[bool] = mapped_column(default=False)
    dtype: Mapped[str] = mapped_column(String(16))
    #: The full report (before/after min, max, mean, std) as produced by tasks.normalize.
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class Label(Base):
    """Lesson 4: one of the top-k labels a classifier gave an image."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("image_id", "model", "rank"),
        # The images a model gave a label (any case), in image order (`results --label`).
        Index("ix_labels_model_label", "model", text("lower(label)"), "image_id", "score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    rank: Mapped[int] = mapped_column(Integer)
    class_id: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)


class Face(Base):
    """Lesson 7: one detected face."""

    __tablename__ = "faces"
    __table_args__ = (
        UniqueConstraint("image_id", "model", "idx"),
        # The images with a face numbered idx (at least idx + 1 faces), in image order (`results --faces`).
        Index("ix_faces_idx_image", "idx", "image_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    idx: Mapped[int] = mapped_column(Integer)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    keypoints: Mapped[dict[str, Any]] = mapped_column(JSON)


class PHash(Base):
    """A perceptual hash of the image (64 bits, stored signed) and its four 16-bit bands, each
    indexed with the image and the hash, so that a near-duplicate look-up is read from the indexes
    alone (see :mod:`storage.results`)."""

    __tablename__ = "phashes"
    __table_args__ = (
        *(Index(f"ix_phashes_band{i}", f"band{i}", "image_id", "hash") for i in range(4)),
        Index("ix_phashes_unpaired", "image_id", postgresql_where=text("paired_within IS NULL"),
              sqlite_where=text("paired_within IS NULL")),
    )

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    hash: Mapped[int] = mapped_column(BigInteger)
    band0: Mapped[int] = mapped_column(Integer)
    band1: Mapped[int] = mapped_column(Integer)
    band2: Mapped[int] = mapped_column(Integer)
    band3: Mapped[int] = mapped_column(Integer)
    #: The distance up to which this photo's near-duplicate pairs are stored in ``near_pairs``
    #: (``storage.results.PAIR_DISTANCE`` when its hash was saved); NULL for a hash saved before
    #: pairs were stored, whose near-duplicates are looked up through the bands until it is paired.
    paired_within: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)


class NearPair(Base):
    """Two photos whose perceptual hashes are within ``distance`` bits, stored in both directions
    when the second of them is hashed: a page's near-duplicates are one indexed read."""

    __tablename__ = "near_pairs"
    __table_args__ = (Index("ix_near_pairs_other", "other_id"),)

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    other_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    distance: Mapped[int] = mapped_column(SmallInteger)


class hamming(FunctionElement):  # noqa: N801 (an SQL function)
    """``hamming(a, b)``: how many of two 64-bit integers' bits differ, in SQL (PostgreSQL's
    ``bit_count``; on SQLite a function storage.db registers on every connection)."""

    type = Integer()
    name = "hamming"
    inherit_cache = True


@compiles(hamming, "postgresql")
def _hamming_postgresql(element, compiler, **kw) -> str:
    a, b = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"bit_count(int8send({a} # {b}))"


@compiles(hamming, "sqlite")
def _hamming_sqlite(element, compiler, **kw) -> str:
    return f"darkroom_hamming({compiler.process(element.clauses, **kw)})"


class Artifact(Base):
    """An image Darkroom made: the boxed faces, each augmentation, the contact sheet."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("image_id", "kind", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    idx: Mapped[int] = mapped_column(Integer, default=0)
    mime: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    #: The encoded image, kept in SQL (DARKROOM_ARTIFACT_STORE=sql, the default) ...
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: ... or the sha256 of its bytes in the blob store (DARKROOM_ARTIFACT_STORE=blobs).
    blob: Mapped[str | None] = mapped_column(String(64))


#: Ids that grow for ever (every change of a run adds a row before it is folded) are 64-bit.
BigId = BigInteger().with_variant(Integer, "sqlite")


class LedgerCount(Base):
    """Counts that `status` reads instead of counting millions of rows: runs per (task, model,
    status), kind ``run``, and images per state, kind ``image``. Several rows may hold parts of one
    count (they are summed): triggers add a row per change of a run, written in the changing
    transaction so that concurrent writers never wait on one counter row, and
    :func:`storage.ledger.fold_counts` sums them up now and then. Kept by the database's triggers
    (migration 0007), so no statement anywhere can leave them wrong."""

    __tablename__ = "ledger_counts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: ``run`` or ``image``.
    kind: Mapped[str] = mapped_column(String(8))
    task: Mapped[str] = mapped_column(String(32), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(BigInteger)


class IgnoredFile(Base):
    """A file the producer left alone (a sidecar, a video, a catalogue, system clutter, or one an
    ignore pattern names): recorded once per path, so that nothing vanishes silently
    (storage.ignored)."""

    __tablename__ = "ignored_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(ShownText, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IgnoredCount(Base):
    """How many files of each kind were ignored: what `status` reads (one row per kind)."""

    __tablename__ = "ignored_counts"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class DirtyImage(Base):
    """An image whose state may have changed (one of its runs changed, it was rejected or
    re-examined) and is to be counted again by :func:`storage.ledger.fold_counts`. Written by
    triggers (migration 0007); no foreign key, so that a deleted image is still folded."""

    __tablename__ = "dirty_images"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    image_id: Mapped[int] = mapped_column(Integer)


class Cluster(Base):
    """This Darkroom's identity (one row, ``id`` 1), recorded by its first producer and mirrored in
    Redis (``darkroom:cluster``): a worker whose database or blob store is not the producer's refuses
    to start (storage.cluster)."""

    __tablename__ = "cluster"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: 32 hex digits.
    uuid: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The blob store the producer that recorded it used (DARKROOM_BLOB_URL; never holds a secret).
    blob_url: Mapped[str] = mapped_column(Text)
    #: The host that recorded it.
    host: Mapped[str] = mapped_column(String(255))
    #: When a producer first stored a blob (and marked its store ``clusters/<uuid>``); NULL while it has
    #: stored none (originals held in place): a worker's store must then hold the mark.
    blobs_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
