"""Results: how each task's output is stored, and how it is read back into the Results JSON (the
contract scripts rely on; README: "Results JSON").

Each task's storage is one :class:`TaskResults` object (``NORMALIZATIONS``, ``LABELS``,
``AUGMENTATIONS``, ``FACES``, ``PHASHES``): ``save`` replaces what the task wrote before (a
redelivered task leaves one result), ``read`` gives the JSON fields it owns for many images at once,
``empty`` those fields for an image without a result. The catalog (``darkroom.catalog``) names which
object serves which task; :func:`results_json` puts one image's object together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, selectinload

from storage import capture
from storage.blobs import BlobStore
from storage.db import chunks
from storage.db import insert as insert_for
from storage.ledger import state_of
from storage.models import (
    DONE,
    FAILED,
    PENDING_STATES,
    QUEUED,
    REJECTED,
    RUNNING,
    Artifact,
    Face,
    Image,
    Label,
    NearPair,
    Normalization,
    PHash,
    SourceFile,
    TaskRun,
    hamming,
)


def _rows(session: Session, statement: Any) -> Any:
    """The rows of a SELECT of columns, run on the session's connection: the same rows as
    ``session.execute`` gives, without the ORM's per-row loading (a stream reads millions)."""
    return session.connection().execute(statement).all()  # fetched at once: a fetch a row costs more than the row


def ids_in(session: Session, column: Any, ids: Sequence[int]) -> Iterator[Any]:
    """Conditions ``column IN ids``, as few as the database allows: on PostgreSQL one array
    parameter per 50,000 ids (``= ANY(:ids)``: one value to bind, not one per id), elsewhere an
    ``IN`` list per chunk of :func:`storage.db.chunks`."""
    ids = list(ids)
    if session.get_bind().dialect.name == "postgresql":
        for start in range(0, len(ids), ARRAY_IDS):
            text = _array_text(ids[start:start + ARRAY_IDS])
            yield column == sa.any_(sa.cast(sa.bindparam("ids", text, type_=sa.Text, unique=True),
                                            postgresql.ARRAY(sa.Integer)))
    else:
        for chunk in chunks(ids):
            yield column.in_(chunk)


#: Ids a PostgreSQL statement carries as one array parameter.
ARRAY_IDS = 50_000


class Page(list):
    """A page of a stream (image ids, or rows of images) that holds every image from its first id
    to its last (``span``): its reads are ranges of an index, not look-ups of each id. Only a
    stream of every image has such pages (:func:`iter_pages`, :func:`iter_page_ids`)."""

    def __init__(self, items: Iterable[Any], span: tuple[int, int] | None) -> None:
        super().__init__(items)
        self.span = span


def _span(page: Any) -> tuple[int, int] | None:
    return getattr(page, "span", None)


class PageQuery:
    """A SELECT of plain columns about a page of images, which a stream runs page after page (a
    million photos: some twenty thousand times each).

    ``build(condition)`` makes the statement, ``condition`` being that ``column`` is one of the
    page's ids, or within the page's span (a :class:`Page` that has one: the range is cheaper to
    plan and to read). On PostgreSQL (psycopg) the statement is compiled once, its ids go as one array
    parameter per :data:`ARRAY_IDS`, and it runs on the driver's cursor of the session's connection
    (in its transaction), its rows the driver's tuples: none of SQLAlchemy's per-statement set-up
    and per-row objects, which cost a stream more than the database's work. Only columns that
    SQLAlchemy would hand over unchanged are read so; a statement with any other runs through
    SQLAlchemy, as on every other database (a chunk of :func:`storage.db.chunks` ids per statement).

    Statements run on the driver's cursor pass by SQLAlchemy's events: :attr:`executed` counts
    them (the ledger benchmark adds them to the statements it counts), and :attr:`every` holds
    each query (the plan tests explain each)."""

    #: Statements run on the driver's cursor, by every query of this process.
    executed: int = 0
    #: Every query made.
    every: list[PageQuery] = []

    def __init__(self, column: Any, build: Callable[[Any], Any], *, named: bool = False) -> None:
        self.column = column
        self.build = build
        #: Rows whose columns are also read by name (``row.sha256``), as SQLAlchemy's rows are.
        self.named = named
        self._compiled: dict[str, tuple[str, dict[str, Any]] | None] = {}
        PageQuery.every.append(self)

    def rows(self, session: Session, ids: Sequence[int], **values: Any) -> list[tuple]:
        """The statement's rows for ``ids`` (in its order, per chunk of ids); ``values``: those of
        the statement's own bind parameters (``sa.bindparam(name, placeholder)``)."""
        span = _span(ids)
        ids = list(ids)
        if not ids:
            return []
        connection = session.connection()
        compiled = self.compiled(connection.dialect, spanned=span is not None)
        if compiled is None:
            if span is not None:
                return connection.execute(self.build(self.column.between(*span)), values).all()
            return [row for cond in ids_in(session, self.column, ids)
                    for row in connection.execute(self.build(cond), values).all()]
        sql, params = compiled
        out: list[tuple] = []
        dbapi = connection.connection.dbapi_connection
        if self.named:
            cursor = dbapi.cursor(row_factory=namedtuple_row)
        else:
            cursor = dbapi.cursor()
        pages = [{"page_first": span[0], "page_last": span[1]}] if span is not None else [
            {"page_ids": _array_text(ids[start:start + ARRAY_IDS])} for start in range(0, len(ids), ARRAY_IDS)]
        try:
            for page in pages:
                cursor.execute(sql, {**params, **values, **page})
                PageQuery.executed += 1
                out += cursor.fetchall()
        finally:
            cursor.close()
        return out

    def compiled(self, dialect: Any, *, spanned: bool = False) -> tuple[str, dict[str, Any]] | None:
        """(SQL, its parameters but the page's: ``page_ids``, or ``page_first`` and ``page_last``
        when ``spanned``) run on the driver's cursor on this dialect, or None where the statement
        runs through SQLAlchemy."""
        key = f"{dialect.name}+{dialect.driver}{' spanned' if spanned else ''}"
        if key not in self._compiled:
            self._compiled[key] = None
            if key.startswith("postgresql+psycopg"):
                if spanned:
                    statement = self.build(self.column.between(sa.bindparam("page_first", 0, type_=sa.Integer),
                                                               sa.bindparam("page_last", 0, type_=sa.Integer)))
                else:
                    ids = sa.cast(sa.bindparam("page_ids", "{}", type_=sa.Text), postgresql.ARRAY(sa.Integer))
                    statement = self.build(self.column == sa.any_(ids))
                # Rows as the driver gives them are the rows only when no column's type converts them.
                if all(_unconverted(column.type) for column in statement.selected_columns):
                    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
                    params = {name: value for name, value in compiled.params.items()
                              if name not in ("page_ids", "page_first", "page_last")}
                    self._compiled[key] = (compiled.string, params)
        return self._compiled[key]


def _unconverted(type_: Any) -> bool:
    """Whether SQLAlchemy hands a column of this type over as psycopg reads it: integers, text,
    booleans, floats (not decimals) and times, and a decorator of one that reads nothing differently."""
    if isinstance(type_, sa.types.TypeDecorator):
        if type(type_).process_result_value is not sa.types.TypeDecorator.process_result_value:
            return False
        type_ = type_.impl_instance
    if isinstance(type_, sa.Float):
        return not type_.asdecimal
    return (isinstance(type_, (sa.Integer, sa.String, sa.Boolean, sa.DateTime, sa.Date))
            and not isinstance(type_, sa.Enum))


def _array_text(ids: Sequence[int]) -> str:
    """Ids as PostgreSQL's array text ('{1,2,3}', cast in SQL): made by one join, not dumped id by id."""
    return "{" + ",".join(map(str, map(int, ids))) + "}"


@dataclasses.dataclass(frozen=True)
class ReadContext:
    """What reading results depends on besides the store: the configured classifier (whose labels
    are the results' ``labels``) and the distance within which photos are near-duplicates.

    ``near_lookup``: given image ids, each one's near-duplicates (image id -> the ids of the other
    images within ``near_distance``), from an index of every hash a caller holds in memory (a long
    stream: `results` builds one with ``tasks.phash.neighbours``); None: each photo's are looked up
    through the hash's indexed bands (a few thousand index entries a photo at a million photos)."""

    primary_model: str | None = None
    near_distance: int = 8
    near_lookup: Callable[[Sequence[int]], dict[int, list[int]]] | None = None


@dataclasses.dataclass(frozen=True)
class ArtifactData:
    kind: str
    idx: int
    mime: str
    width: int
    height: int
    #: The encoded image, or None when it is in the blob store under ``blob`` (its sha256).
    data: bytes | None
    blob: str | None = None

    def in_blobs(self, blobs: BlobStore) -> ArtifactData:
        """The same artifact with its bytes put in ``blobs`` (DARKROOM_ARTIFACT_STORE=blobs): SQL
        then keeps only its sha256."""
        if self.data is None:
            return self
        return dataclasses.replace(self, data=None, blob=blobs.put_bytes(self.data))


def artifact_bytes(artifact: Artifact, blobs: BlobStore) -> bytes:
    """An artifact's encoded image, from SQL or from the blob store."""
    if artifact.data is not None:
        return artifact.data
    if artifact.blob is None:
        raise ValueError(f"artifact {artifact.kind}-{artifact.idx} of image {artifact.image_id} holds no bytes")
    try:
        return blobs.read(artifact.blob, what=f"the {artifact.kind} image")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the {artifact.kind} image {artifact.blob} is missing from the blob store {blobs.url} "
            "(DARKROOM_BLOB_URL): `darkroom rerun --task TASK` makes it again") from None


class TaskResults:
    """How one task's results are stored and read back. Subclasses set :attr:`fields` (the JSON keys
    they fill) and :attr:`artifact_kinds` (the artifacts the task owns), and implement the three methods."""

    fields: tuple[str, ...] = ()
    artifact_kinds: tuple[str, ...] = ()

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        """Replace the results of each ``(image_id, data)``: ``data`` is the step's plain output."""

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext,
             artifacts: Artifacts | None = None) -> dict[int, dict[str, Any]]:
        """The JSON fields of each image that has a result (image id -> fields). ``artifacts``,
        when given, holds every artifact key of these images (read once for the page)."""
        return {}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        """The JSON fields of one image from its results as the step gave them (model key -> data)
        and the keys of its artifacts: what :meth:`read` gives for a stored result, without SQL
        (``darkroom.analyze``)."""
        return self.empty()

    def empty(self) -> dict[str, Any]:
        """The JSON fields of an image without a result."""
        return {}


def save_artifacts(session: Session, image_id: int, kinds: Sequence[str], artifacts: Sequence[ArtifactData]) -> None:
    """Replace the image's artifacts of ``kinds`` (those a task owns) with ``artifacts``."""
    session.execute(delete(Artifact).where(Artifact.image_id == image_id, Artifact.kind.in_(list(kinds))))
    for art in artifacts:
        if art.kind not in kinds:
            raise ValueError(f"a task owning artifacts {', '.join(kinds)} cannot write one of kind {art.kind}")
        session.add(Artifact(image_id=image_id, **dataclasses.asdict(art)))


#: The artifact kinds whose indices the Results JSON names (a face's ``crop``); of the others it
#: only counts them.
INDEXED_KINDS = ("face_crop",)


@dataclasses.dataclass(frozen=True)
class Artifacts:
    """A page's artifacts, read once by :func:`results_json`: per image, how many of each kind, and
    the (kind, idx) of those of :data:`INDEXED_KINDS`."""

    counts: dict[int, dict[str, int]]
    keys: dict[int, list[tuple[str, int]]]


def _artifact_keys(session: Session, image_ids: Sequence[int], kinds: Sequence[str],
                   known: Artifacts | None = None) -> dict[int, list[tuple[str, int]]]:
    """The (kind, idx) of the images' artifacts of ``kinds``: from ``known`` when it holds them,
    else read here."""
    if known is not None and set(kinds) <= set(INDEXED_KINDS):
        return {i: mine for i, arts in known.keys.items() if (mine := [a for a in arts if a[0] in kinds])}
    out: dict[int, list[tuple[str, int]]] = {}
    for ids in ids_in(session, Artifact.image_id, image_ids):
        rows = _rows(session, select(Artifact.image_id, Artifact.kind, Artifact.idx)
                               .where(ids, Artifact.kind.in_(list(kinds))))
        for image_id, kind, idx in rows:
            out.setdefault(image_id, []).append((kind, idx))
    return out


# --- the tasks' results --------------------------------------------------------------------------


class NormalizationResults(TaskResults):
    """Lesson 2: one report per mode; ``normalize`` is the scale report in the contract's shape."""

    fields = ("normalize", "normalizations")
    # Columns, not ORM objects: a stream reads a million of them.
    _page = PageQuery(Normalization.image_id, lambda ids: select(
        Normalization.image_id, Normalization.mode, Normalization.per_channel, sa.cast(Normalization.report, sa.Text))
        .where(ids).order_by(Normalization.id))

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        for image_id, reports in items:
            session.execute(delete(Normalization).where(Normalization.image_id == image_id))
            for report in reports:
                session.add(Normalization(image_id=image_id, mode=report["mode"],
                                          per_channel=bool(report["per_channel"]), dtype=report["dtype"], report=report))

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext,
             artifacts: Artifacts | None = None) -> dict[int, dict[str, Any]]:
        reports: dict[int, dict[tuple[str, bool], dict[str, Any]]] = {}
        for image_id, mode, per_channel, report in self._page.rows(session, image_ids):
            reports.setdefault(image_id, {})[(mode, bool(per_channel))] = _json(report)
        return {image_id: self.to_json({"": list(norms.values())}, (), ctx) for image_id, norms in reports.items()}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        reports = [report for data in by_model.values() for report in data]
        scale = next((r for r in reports if r["mode"] == "scale" and not r["per_channel"]), None)
        return {"normalize": _contract_normalize(scale) if scale else None, "normalizations": reports}

    def empty(self) -> dict[str, Any]:
        return {"normalize": None, "normalizations": []}


def _json(text: str) -> Any:
    """A stored JSON document read as text (orjson: a few times faster than json; the standard
    library's for what orjson refuses, such as a NaN that SQLite kept)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _contract_normalize(report: dict[str, Any]) -> dict[str, Any]:
    before, after = report["before"], report["after"]
    return {
        "mode": report["mode"],
        "dtype": report["dtype"],
        "before": {"min": before["min"], "max": before["max"]},
        "after": {"min": after["min"], "max": after["max"]},
        "mean": after["mean"],
        "std": after["std"],
    }


class LabelResults(TaskResults):
    """Lesson 4: the top-k labels per model; ``labels`` are the configured classifier's."""

    fields = ("labels", "labels_by_model")
    _page = PageQuery(Label.image_id, lambda ids: select(
        Label.image_id, Label.model, Label.rank, Label.class_id, Label.label, Label.score)
        .where(ids).order_by(Label.image_id, Label.model, Label.rank))

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        """Two statements for a whole batch: delete the model's labels of these images, insert the new."""
        labels = dict(items)
        if not labels:
            return
        for chunk in chunks(sorted(labels)):
            session.execute(delete(Label).where(Label.model == model, Label.image_id.in_(chunk)))
        rows = [{"image_id": image_id, "model": model, "rank": lab["rank"], "class_id": lab["class_id"],
                 "label": lab["label"], "score": float(lab["score"])}
                for image_id, labs in labels.items() for lab in labs]
        if rows:
            session.execute(insert(Label), rows)

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext,
             artifacts: Artifacts | None = None) -> dict[int, dict[str, Any]]:
        by_image: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for image_id, model, rank, class_id, label, score in self._page.rows(session, image_ids):
            by_image.setdefault(image_id, {}).setdefault(model, []).append(
                {"rank": rank, "class_id": class_id, "label": label, "score": score})
        return {image_id: self.to_json(labels_by_model, (), ctx) for image_id, labels_by_model in by_image.items()}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        labels_by_model = {model: list(labels) for model, labels in by_model.items()}
        if ctx.primary_model and ctx.primary_model in labels_by_model:
            labels = labels_by_model[ctx.primary_model]
        else:
            labels = next(iter(labels_by_model.values()), [])
        return {"labels": labels, "labels_by_model": labels_by_model}

    def empty(self) -> dict[str, Any]:
        return {"labels": [], "labels_by_model": {}}


class AugmentationResults(TaskResults):
    """Lesson 6: the augmented images and their contact sheet are artifacts; the JSON counts them."""

    fields = ("augmentations",)
    artifact_kinds = ("augmented", "contact_sheet")

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext,
             artifacts: Artifacts | None = None) -> dict[int, dict[str, Any]]:
        if artifacts is not None:
            return {image_id: {"augmentations": n} for image_id, kinds in artifacts.counts.items()
                    if (n := kinds.get("augmented", 0))}
        keys = _artifact_keys(session, image_ids, ("augmented",))
        return {image_id: self.to_json({}, arts, ctx) for image_id, arts in keys.items()}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        return {"augmentations": sum(kind == "augmented" for kind, _idx in artifacts)}

    def empty(self) -> dict[str, Any]:
        return {"augmentations": 0}


class FaceResults(TaskResults):
    """Lesson 7: one row per face; the boxed photo and each face's crop are artifacts."""

    fields = ("faces",)
    artifact_kinds = ("faces_boxed", "face_crop")
    _page = PageQuery(Face.image_id, lambda ids: select(
        Face.image_id, Face.model, Face.x, Face.y, Face.w, Face.h, Face.confidence, sa.cast(Face.keypoints, sa.Text))
        .where(ids).order_by(Face.image_id, Face.model, Face.idx))

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        for image_id, faces in items:
            session.execute(delete(Face).where(Face.image_id == image_id, Face.model == model))
            for idx, face in enumerate(faces):
                x, y, w, h = face["box"]
                session.add(Face(image_id=image_id, model=model, idx=idx, x=x, y=y, w=w, h=h,
                                 confidence=float(face["confidence"]), keypoints=face["keypoints"]))

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext,
             artifacts: Artifacts | None = None) -> dict[int, dict[str, Any]]:
        crops = _artifact_keys(session, image_ids, ("face_crop",), artifacts)
        found: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for image_id, model, x, y, w, h, confidence, keypoints in self._page.rows(session, image_ids):
            found.setdefault(image_id, {}).setdefault(model, []).append(
                {"box": [x, y, w, h], "confidence": confidence,
                 "keypoints": None if keypoints is None else _json(keypoints)})
        return {image_id: self.to_json(by_model, crops.get(image_id, ()), ctx) for image_id, by_model in found.items()}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        # faces[i]["crop"]: the idx of the face's stored crop (artifact kind face_crop; the export's
        # face_crop-<idx>.jpg), or None when crops are not stored (DARKROOM_FACE_CROPS=false).
        crops = {idx for kind, idx in artifacts if kind == "face_crop"}
        return {"faces": [{**face, "model": model, "crop": i if i in crops else None}
                          for model in sorted(by_model) for i, face in enumerate(by_model[model])]}

    def empty(self) -> dict[str, Any]:
        return {"faces": []}


_BANDS = 4
_BAND_BITS = 16
_BAND_MASK = (1 << _BAND_BITS) - 1


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _bands(value: int) -> list[int]:
    """The hash's four 16-bit bands, most significant first."""
    return [(value >> (_BAND_BITS * (_BANDS - 1 - i))) & _BAND_MASK for i in range(_BANDS)]


def _within(band: int, radius: int) -> list[int]:
    """Every 16-bit value within ``radius`` bits of ``band``."""
    out = [band]
    for r in range(1, radius + 1):
        for bits in itertools.combinations(range(_BAND_BITS), r):
            flip = 0
            for b in bits:
                flip |= 1 << b
            out.append(band ^ flip)
    return out


#: Near-duplicate pairs are stored (``near_pairs``) up to this distance when a hash is saved;
#: a reader asking for more (``DARKROOM_PHASH_DISTANCE`` above it) looks them up through the bands.
PAIR_DISTANCE = 10
#: The PostgreSQL advisory lock under which hashes are paired: two near-duplicates hashed at the
#: same moment by two workers would each miss the other (neither sees the other's uncommitted row).
PAIRING_LOCK = 0x64726B70  # "drkp"


class PHashResults(TaskResults):
    """The perceptual hash (``phash``, 16 hex digits) and the photos within the near-duplicate
    distance of it (``near_duplicates``, their sha256s).

    When a hash is saved, the photos within :data:`PAIR_DISTANCE` bits of it are found through the
    hash's four 16-bit bands, each indexed (two hashes within ``d`` bits have some band within
    ``d // 4`` bits, pigeonhole: the candidates are the rows whose band is one of the values within
    that many bits, each then checked exactly), and the pairs are stored in both directions. A
    page's near-duplicates are then one indexed read of ``near_pairs``. Hashes saved before pairs
    were stored (``paired_within`` NULL) are looked up through the bands until :meth:`pair_some`
    has paired them.
    """

    fields = ("phash", "near_duplicates")
    #: Near-duplicates listed per photo at most (the ``duplicates`` command lists whole groups).
    LIMIT = 100
    _page = PageQuery(PHash.image_id, lambda ids: select(PHash.image_id, PHash.hash, PHash.paired_within).where(ids))
    _pairs = PageQuery(NearPair.image_id, lambda ids: select(NearPair.image_id, NearPair.other_id).where(
        ids, NearPair.distance <= sa.bindparam("distance", 0, type_=sa.SmallInteger)))

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        if not items:
            return
        self._lock(session)
        ids = [image_id for image_id, _ in items]
        for chunk in chunks(ids):
            session.execute(delete(NearPair).where(NearPair.image_id.in_(chunk)))
            session.execute(delete(NearPair).where(NearPair.other_id.in_(chunk)))
            session.execute(delete(PHash).where(PHash.image_id.in_(chunk)))
        hashes = {image_id: int(value, 16) for image_id, value in items}
        session.execute(insert(PHash), [
            {"image_id": image_id, "hash": _signed64(h), "band0": b[0], "band1": b[1], "band2": b[2], "band3": b[3],
             "paired_within": PAIR_DISTANCE}
            for image_id, h in hashes.items() for b in [_bands(h)]])
        self._store_pairs(session, hashes)

    def _lock(self, session: Session) -> None:
        if session.get_bind().dialect.name == "postgresql":
            # Held to the end of the transaction; on SQLite the write lock already serializes writers.
            session.execute(select(func.pg_advisory_xact_lock(PAIRING_LOCK)))

    def _store_pairs(self, session: Session, hashes: dict[int, int]) -> None:
        """Store, both ways, the pairs within :data:`PAIR_DISTANCE` of each of ``hashes`` (whose rows
        are already written, so photos of one batch pair with each other too)."""
        pairs: dict[tuple[int, int], int] = {}
        for image_id, value in hashes.items():
            for other, distance in self._near_rows(session, image_id, value, PAIR_DISTANCE):
                pairs[(image_id, other)] = pairs[(other, image_id)] = distance
        rows = [{"image_id": a, "other_id": b, "distance": d} for (a, b), d in sorted(pairs.items())]
        for start in range(0, len(rows), 5000):
            session.execute(insert(NearPair), rows[start:start + 5000])

    def pair_some(self, session: Session, limit: int = 1000) -> int:
        """Pair up to ``limit`` of the hashes saved before pairs were stored (found by a partial
        index); returns how many were paired. The producer's reconciler calls it every turn."""
        self._lock(session)
        rows = session.execute(select(PHash.image_id, PHash.hash).where(PHash.paired_within.is_(None))
                               .order_by(PHash.image_id).limit(limit)).tuples().all()
        if not rows:
            return 0
        hashes = {image_id: value & (2**64 - 1) for image_id, value in rows}
        # A legacy hash may already be paired with a new one (stored when that one was saved).
        for chunk in chunks(list(hashes)):
            session.execute(delete(NearPair).where(NearPair.image_id.in_(chunk)))
            session.execute(delete(NearPair).where(NearPair.other_id.in_(chunk)))
        self._store_pairs(session, hashes)
        for chunk in chunks(list(hashes)):
            session.execute(sa.update(PHash).where(PHash.image_id.in_(chunk)).values(paired_within=PAIR_DISTANCE))
        return len(rows)

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext,
             artifacts: Artifacts | None = None) -> dict[int, dict[str, Any]]:
        hashes: dict[int, int] = {}
        paired: set[int] = set()
        for image_id, value, within in self._page.rows(session, image_ids):
            hashes[image_id] = value
            if within is not None and within >= ctx.near_distance:
                paired.add(image_id)
        if ctx.near_lookup is not None:
            # The same answer as near(), from the caller's index.
            near = self._as_shas(session, ctx.near_lookup(list(hashes)))
        else:
            near_ids = self.stored_pairs(session, sorted(paired), ctx.near_distance)
            near_ids.update(self._near_ids(session, {i: v for i, v in hashes.items() if i not in paired},
                                           ctx.near_distance))
            near = self._as_shas(session, near_ids)
        return {image_id: {"phash": f"{value & (2**64 - 1):016x}", "near_duplicates": near.get(image_id, [])}
                for image_id, value in hashes.items()}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        """One photo alone has no near-duplicates to list."""
        return {"phash": next(iter(by_model.values()), None), "near_duplicates": []}

    def looks_up(self, session: Session, distance: int) -> bool:
        """Whether reading near-duplicates within ``distance`` needs look-ups through the bands for
        some photo: the distance is beyond the stored pairs', or some hash is not paired yet."""
        return distance > PAIR_DISTANCE or session.scalar(
            select(PHash.image_id).where(PHash.paired_within.is_(None)).limit(1)) is not None

    def stored_pairs(self, session: Session, image_ids: Sequence[int], distance: int) -> dict[int, list[int]]:
        """The stored near-duplicates (image ids) within ``distance`` of each of ``image_ids`` (whose
        pairs are stored up to at least that distance): one indexed statement per chunk of ids."""
        out: dict[int, list[int]] = {}
        for image_id, other in self._pairs.rows(session, image_ids, distance=distance):
            out.setdefault(image_id, []).append(other)
        return out

    def near(self, session: Session, image_id: int, value: int, distance: int) -> list[str]:
        """The sha256s of other images whose hash is within ``distance`` bits of ``value``."""
        return self.near_many(session, {image_id: value}, distance).get(image_id, [])

    def near_many(self, session: Session, hashes: dict[int, int], distance: int) -> dict[int, list[str]]:
        """:meth:`near` for many photos (image id -> hash), looked up through the bands."""
        return self._as_shas(session, self._near_ids(session, hashes, distance))

    def _near_ids(self, session: Session, hashes: dict[int, int], distance: int) -> dict[int, list[int]]:
        near_ids: dict[int, list[int]] = {}
        for image_id, value in hashes.items():
            found = [other for other, _ in self._near_rows(session, image_id, value, distance)]
            if found:
                near_ids[image_id] = found
        return near_ids

    def _near_rows(self, session: Session, image_id: int, value: int, distance: int) -> list[tuple[int, int]]:
        """(image id, distance) of every other hash within ``distance`` bits of ``value``: one
        statement, the union of its four bands' look-ups. Each band's index (band, image_id, hash)
        gives the candidates and the distance is checked on the index entries (hamming() in SQL)."""
        radius = max(0, distance) // _BANDS
        columns = (PHash.band0, PHash.band1, PHash.band2, PHash.band3)
        # On PostgreSQL each band's values go as one array (one statement, compiled once, for every
        # photo); elsewhere as an IN list.
        arrays = session.get_bind().dialect.name == "postgresql"

        def among(band, wanted: list[int], k: int):
            if arrays:
                return band == sa.any_(sa.bindparam(f"band{k}", wanted, type_=postgresql.ARRAY(sa.Integer)))
            return band.in_(wanted)

        value &= 2**64 - 1
        dist = hamming(PHash.hash, _signed64(value))
        near = sa.union(*(
            select(PHash.image_id, dist.label("distance")).where(
                among(band, _within(part, radius), k), PHash.image_id != image_id, dist <= distance)
            for k, (band, part) in enumerate(zip(columns, _bands(value)))))
        return [(other, d) for other, d in session.execute(select(near.subquery())).tuples()]

    def _as_shas(self, session: Session, near: dict[int, list[int]]) -> dict[int, list[str]]:
        """Each photo's near-duplicates (image ids) as the Results JSON lists them: the first
        :attr:`LIMIT` by image id, as sorted sha256s, read for every photo at once."""
        first = {image_id: sorted(others)[: self.LIMIT] for image_id, others in near.items()}
        shas = dict(_SHAS.rows(session, sorted({o for others in first.values() for o in others})))
        return {image_id: sorted(shas[o] for o in others if o in shas) for image_id, others in first.items()}

    def all_hashes(self, session: Session, batch: int = 10_000) -> Iterable[tuple[int, int]]:
        """Every (image id, unsigned hash), streamed in id order a batch at a time (keyset paging)."""
        last = 0
        while True:
            rows = session.execute(select(PHash.image_id, PHash.hash).where(PHash.image_id > last)
                                   .order_by(PHash.image_id).limit(batch)).all()
            if not rows:
                return
            for image_id, value in rows:
                yield image_id, value & (2**64 - 1)
            last = rows[-1][0]

    def empty(self) -> dict[str, Any]:
        return {"phash": None, "near_duplicates": []}


def pair_pending(factory: Callable[[], Session], *, seconds: float = 2.0, chunk: int = 200) -> int:
    """Pair the hashes saved before pairs were stored, a chunk per transaction, for about
    ``seconds``; returns how many were paired (0 once every hash is)."""
    deadline = time.monotonic() + seconds
    done = 0
    while True:
        with factory() as s, s.begin():
            n = PHASHES.pair_some(s, chunk)
        done += n
        if n < chunk or time.monotonic() > deadline:
            return done


NORMALIZATIONS = NormalizationResults()
LABELS = LabelResults()
AUGMENTATIONS = AugmentationResults()
FACES = FaceResults()
PHASHES = PHashResults()


# --- finding images and putting their results together ------------------------------------------


#: The states of an image (:func:`storage.ledger.image_status`), as ``ResultFilter.status`` takes them.
IMAGE_STATES = (QUEUED, RUNNING, DONE, FAILED, REJECTED)
#: The task whose runs say an image's faces were looked for (``ResultFilter.faces``).
FACES_TASK = "faces"
#: Candidates one statement of a page's search reads at most.
SEARCH_BATCH = 5000
#: Images a sha256 prefix may select at most (a prefix of 8 hex digits is one in four billion).
PREFIX_MATCHES = 1000


@dataclasses.dataclass(frozen=True)
class ResultFilter:
    """Which images `results` lists; every field given must hold (None: any).

    - ``status``: the image's state, as :func:`storage.ledger.image_status` derives it (one of
      :data:`IMAGE_STATES`; an image without any run is ``done``).
    - ``label``: one of the image's top-k labels is this text, ignoring case, the whole label (not a
      part of it: "retriever" does not find "golden_retriever"); a space matches an underscore, so
      "golden retriever" finds ImageNet's "golden_retriever". Only with ``label``: ``min_score``
      (that label's score is at least this, 0..1) and ``model`` (the classifier key whose labels
      are matched, as stored in ``labels.model``, e.g. ``vgg16``, ``mobilenet_v2@none``; None:
      any classifier's labels).
    - ``faces``: the image's faces run is done and found exactly this many faces (``faces_or_more``:
      at least this many); ``faces=0``: done and found none.
    - ``since``: registered at or after this time (a naive datetime is taken as UTC).
    - ``taken_since``, ``taken_until``: taken at or after, and before, this time
      (:func:`storage.capture.taken_conditions`: naive is the camera's clock, aware an instant).
    - ``camera``: taken with this camera: its make, its model, or both, any case
      (:func:`storage.capture.camera_condition`).
    - ``format``: the file's format as registered (JPEG, PNG, HEIF, AVIF, RAW, ...; any case, and
      ``jpg``, ``heic`` and ``tif`` for JPEG, HEIF and TIFF).
    - ``near``: the image has a near-duplicate within this many bits (0 to
      :data:`PAIR_DISTANCE`), read from the stored pairs (a hash saved before pairs were stored
      counts once the producer has paired it).

    Every filter is read through an index (migration 0004): a page costs the same in a store of any size.
    """

    status: str | None = None
    label: str | None = None
    min_score: float | None = None
    model: str | None = None
    faces: int | None = None
    faces_or_more: bool = False
    since: dt.datetime | None = None
    taken_since: dt.datetime | None = None
    taken_until: dt.datetime | None = None
    camera: str | None = None
    format: str | None = None
    near: int | None = None

    def __post_init__(self) -> None:
        if self.format is not None:
            name = self.format.strip().upper().lstrip(".")
            if not name:
                raise ValueError("an empty format matches nothing: give one, e.g. JPEG or HEIC")
            object.__setattr__(self, "format", _FORMAT_ALIASES.get(name, name))
        if self.near is not None:
            try:
                near = int(self.near)  # a web form gives text
            except (TypeError, ValueError):
                raise ValueError(f"near is a number of bits, 0 to {PAIR_DISTANCE}, not {self.near!r}") from None
            if not 0 <= near <= PAIR_DISTANCE:
                raise ValueError(f"near is a number of bits, 0 to {PAIR_DISTANCE} (the pairs stored), not {near}")
            object.__setattr__(self, "near", near)
        if self.status is not None and self.status not in IMAGE_STATES:
            raise ValueError(f"unknown status {self.status!r}: one of {', '.join(IMAGE_STATES)}")
        if self.label is not None and not self.label.strip():
            raise ValueError("an empty label matches nothing: give the label's text")
        if self.label is None and (self.min_score is not None or self.model is not None):
            raise ValueError("min_score and model qualify a label: give label too")
        if self.faces is not None and self.faces < 0:
            raise ValueError(f"a number of faces is 0 or more, not {self.faces}")


#: Names people give a format for the name it is registered under.
_FORMAT_ALIASES = {"JPG": "JPEG", "JPE": "JPEG", "HEIC": "HEIF", "TIF": "TIFF"}


def _since_utc(since: dt.datetime) -> dt.datetime:
    return since.replace(tzinfo=dt.timezone.utc) if since.tzinfo is None else since.astimezone(dt.timezone.utc)


def _label_texts(label: str) -> list[str]:
    """The lower-case forms a label filter matches: as typed, and with spaces as underscores."""
    text = " ".join(label.split()).lower()
    return sorted({text, text.replace(" ", "_")})


def label_models(session: Session) -> list[str]:
    """The classifier keys that stored labels, read by skipping through the labels' index (one
    look-up per model, not a scan of the labels)."""
    models: list[str] = []
    while True:
        query = select(func.min(Label.model))
        if models:
            query = query.where(Label.model > models[-1])
        model = session.scalar(query)
        if model is None:
            return models
        models.append(model)


def _has_run(*conds) -> Any:
    return select(TaskRun.id).where(TaskRun.image_id == Image.id, *conds).exists()


def _status_conditions(status: str) -> list[Any]:
    """``image_status(image) == status`` as SQL on ``images`` (each part an index look-up by image id)."""
    not_rejected = Image.rejected_reason.is_(None)
    if status == REJECTED:
        return [Image.rejected_reason.is_not(None)]
    if status == RUNNING:
        return [not_rejected, _has_run(TaskRun.status == RUNNING)]
    if status == QUEUED:
        return [not_rejected, ~_has_run(TaskRun.status == RUNNING), _has_run(TaskRun.status == QUEUED)]
    if status == FAILED:
        return [not_rejected, ~_has_run(TaskRun.status.in_(PENDING_STATES)),
                _has_run(TaskRun.status.in_((FAILED, REJECTED)))]
    return [not_rejected, ~_has_run(TaskRun.status != DONE)]  # done: every run done (or none at all)


def _conditions(flt: ResultFilter, label_models: Sequence[str] | None) -> list[Any]:
    """Every condition of ``flt`` on ``images``, each checked by index look-ups by image id."""
    conds: list[Any] = []
    if flt.status is not None:
        conds += _status_conditions(flt.status)
    if flt.label is not None:
        lab = [Label.image_id == Image.id, func.lower(Label.label).in_(_label_texts(flt.label))]
        if label_models is not None:
            lab.append(Label.model.in_(list(label_models)))
        if flt.min_score is not None:
            lab.append(Label.score >= flt.min_score)
        conds.append(select(Label.id).where(*lab).exists())
    if flt.faces is not None:
        conds.append(_has_run(TaskRun.task == FACES_TASK, TaskRun.status == DONE))
        if flt.faces > 0:
            conds.append(select(Face.id).where(Face.image_id == Image.id, Face.idx == flt.faces - 1).exists())
        if not flt.faces_or_more:
            conds.append(~select(Face.id).where(Face.image_id == Image.id, Face.idx == flt.faces).exists())
    if flt.since is not None:
        conds.append(Image.created_at >= _since_utc(flt.since))
    conds += capture.taken_conditions(flt.taken_since, flt.taken_until)
    if flt.camera is not None:
        conds.append(capture.camera_condition(flt.camera))
    if flt.format is not None:
        conds.append(Image.format == flt.format)
    if flt.near is not None:
        conds.append(select(NearPair.other_id).where(NearPair.image_id == Image.id, NearPair.distance <= flt.near)
                     .exists())
    return conds


@dataclasses.dataclass(frozen=True)
class _Search:
    """How a filter's images are found: ``drivers``, queries of candidate image ids that one index
    gives in id order (a page reads them from a cursor up, merged), and ``conditions``, checked on
    each chunk of candidates (empty when the drivers give exactly the images wanted)."""

    drivers: list[tuple[Any, Any]]  # (query selecting the id column, that column)
    conditions: list[Any]


def _search(session: Session, flt: ResultFilter) -> _Search:
    models = None
    if flt.label is not None:
        models = [flt.model] if flt.model is not None else label_models(session)
    conds = _conditions(flt, models)
    drivers: list[tuple[Any, Any]]

    def runs_in(status: str, *more: Any) -> tuple[Any, Any]:
        # ix_task_runs_status_image: (status, image_id, task)
        return select(TaskRun.image_id).where(TaskRun.status == status, *more).distinct(), TaskRun.image_id

    if flt.label is not None:
        # ix_labels_model_label: (model, lower(label), image_id, score), one range per model and text
        drivers = [(select(Label.image_id).where(Label.model == model, func.lower(Label.label) == text).distinct(),
                    Label.image_id)
                   for model in models or () for text in _label_texts(flt.label)]
    elif flt.faces:
        # ix_faces_idx_image: the images with a face numbered faces - 1
        drivers = [(select(Face.image_id).where(Face.idx == flt.faces - 1).distinct(), Face.image_id)]
    elif flt.status == REJECTED:
        drivers = [(select(Image.id).where(Image.rejected_reason.is_not(None)), Image.id)]  # ix_images_rejected
    elif flt.status == RUNNING:
        drivers = [runs_in(RUNNING)]
    elif flt.status == QUEUED:
        drivers = [runs_in(QUEUED)]
    elif flt.status == FAILED:
        drivers = [runs_in(FAILED), runs_in(REJECTED)]
    elif flt.faces == 0:
        drivers = [runs_in(DONE, TaskRun.task == FACES_TASK)]
    elif flt.near is not None:
        # near_pairs' primary key (image_id, other_id): the few photos that have a near-duplicate
        drivers = [(select(NearPair.image_id).where(NearPair.distance <= flt.near).distinct(), NearPair.image_id)]
    elif flt.format is not None:
        drivers = [(select(Image.id).where(Image.format == flt.format), Image.id)]  # ix_images_format
    else:
        # Every image (or those since a time), in id order: the primary key (or the planner's
        # choice of ix_images_created_at when few are that recent).
        query = select(Image.id)
        if flt.since is not None:
            query = query.where(Image.created_at >= _since_utc(flt.since))
        query = query.where(*capture.taken_conditions(flt.taken_since, flt.taken_until))
        if flt.camera is not None:
            query = query.where(capture.camera_condition(flt.camera))
        exact = flt.status is None
        return _Search([(query, Image.id)], [] if exact else conds)
    return _Search(drivers, conds)


def _candidates(session: Session, drivers: Sequence[tuple[Any, Any]], after: int, n: int) -> list[int]:
    """The first ``n`` ids above ``after`` that any driver gives, in order (each driver reads at
    most ``n`` from its index)."""
    found: set[int] = set()
    for query, column in drivers:
        found.update(session.scalars(query.where(column > after).order_by(column).limit(n)))
    return sorted(found)[:n]


def _page_ids(session: Session, search: _Search, after: int, limit: int) -> list[int]:
    ids: list[int] = []
    cursor = after
    n = limit if not search.conditions else min(max(2 * limit, 100), SEARCH_BATCH)
    while len(ids) < limit:
        if not search.conditions:
            n = limit - len(ids)
        candidates = _candidates(session, search.drivers, cursor, n)
        if not candidates:
            break
        if search.conditions:
            for chunk in chunks(candidates):
                ids += session.scalars(select(Image.id).where(Image.id.in_(chunk), *search.conditions)
                                       .order_by(Image.id))
        else:
            ids += candidates
        if len(candidates) < n:
            break  # every driver is exhausted
        cursor = candidates[-1]
        n = min(4 * n, SEARCH_BATCH)
    return ids[:limit]


def load_rows(session: Session, ids: Sequence[int]) -> list[Any]:
    """The images of ``ids`` in that order, as rows of the ``images`` columns: what
    :func:`results_json` takes (a page of :func:`iter_page_ids`; a :class:`Page` stays one)."""
    rows = _load(session, ids, relations=False)
    return Page(rows, span) if (span := _span(ids)) is not None else rows


def _load(session: Session, ids: Sequence[int], *, relations: bool = True) -> list[Any]:
    """The images of ``ids`` in that order: objects with their runs and files (``relations``), or
    rows of the ``images`` columns (a stream, whose Results JSON reads runs and files as columns)."""
    # A stream's images as rows of the table's columns (read as image.sha256 like the objects, at a
    # third of the cost of mapping them).
    if relations:
        query = select(Image).options(selectinload(Image.runs), selectinload(Image.files))
        found = [image for cond in ids_in(session, Image.id, ids) for image in session.scalars(query.where(cond))]
    else:
        found = _IMAGES.rows(session, ids)  # a Page's by its span
    images = {image.id: image for image in found}
    return [images[i] for i in ids if i in images]


def select_page(session: Session, flt: ResultFilter = ResultFilter(), *, after: int | None = None,
                limit: int = 100) -> list[Image]:
    """Up to ``limit`` images with an id above ``after`` that match ``flt``, in id order, with their
    runs and files loaded: one page (keyset paging, never OFFSET; the next page is ``after`` the
    last image's id). Fewer than ``limit`` only when no more match."""
    if limit <= 0:
        return []
    return _load(session, _page_ids(session, _search(session, flt), after or 0, limit))


def iter_pages(session: Session, flt: ResultFilter = ResultFilter(), *, after: int | None = None,
               limit: int | None = None, batch: int = 500) -> Iterator[list[Any]]:
    """Every image matching ``flt`` (at most ``limit``; above ``after``), a page of ``batch`` at a
    time, in id order, in constant memory. Each image is a row of the ``images`` table's columns
    (``image.id``, ``image.sha256``, ... as on :class:`~storage.models.Image`, without its
    relationships), which :func:`results_json` takes.

    The session is for reading: between pages the previous page's images are let go and its
    transaction ended (so a stream of a million images holds no snapshot and no lock for its whole
    length); the next page starts a new one with the same execution options (e.g. read-only)."""
    options = dict(session.connection().get_execution_options())
    search = _search(session, flt)
    # Images in id order with nothing else to check (every image, or those since a time): a page's rows
    # are read at once, one statement instead of its ids and then its rows.
    direct = not search.conditions and len(search.drivers) == 1 and search.drivers[0][1] is Image.id
    cursor = after or 0
    left = limit
    while left is None or left > 0:
        n = batch if left is None else min(batch, left)
        if direct:
            page = _rows(session, search.drivers[0][0].with_only_columns(*Image.__table__.columns)
                         .where(Image.id > cursor).order_by(Image.id).limit(n))
            if flt == ResultFilter() and page:
                page = Page(page, (page[0].id, page[-1].id))
        else:
            page = _load(session, _page_ids(session, search, cursor, n), relations=False)
        if not page:
            return
        yield page
        if len(page) < n:
            return
        cursor = page[-1].id
        if left is not None:
            left -= len(page)
        _next_transaction(session, options)


def iter_page_ids(session: Session, flt: ResultFilter = ResultFilter(), *, after: int | None = None,
                  limit: int | None = None, batch: int = 500) -> Iterator[list[int]]:
    """The ids of :func:`iter_pages`'s pages, without their rows (for readers elsewhere: a stream
    whose pages worker processes read, :mod:`storage.stream`): :data:`SEARCH_BATCH` ids a
    statement, a transaction each, handed out ``batch`` at a time."""
    options = dict(session.connection().get_execution_options())
    search = _search(session, flt)
    every = flt == ResultFilter()  # each page holds every image from its first id to its last
    cursor = after or 0
    left = limit
    while left is None or left > 0:
        n = SEARCH_BATCH if left is None else min(SEARCH_BATCH, left)
        ids = _page_ids(session, search, cursor, n)
        _next_transaction(session, options)
        for start in range(0, len(ids), batch):
            page = ids[start:start + batch]
            yield Page(page, (page[0], page[-1])) if every else page
        if len(ids) < n:
            return
        cursor = ids[-1]
        if left is not None:
            left -= len(ids)


def _next_transaction(session: Session, options: dict[str, Any]) -> None:
    """End a reading session's transaction (its objects let go) and begin the next with the same
    execution options: a long stream holds no snapshot and no lock for its whole length."""
    session.expunge_all()
    session.rollback()
    session.connection(execution_options=options)


def _hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def _paths(selector: str) -> list[str]:
    """A path as given, absolute, and with its links resolved (the store records absolute paths)."""
    return list(dict.fromkeys([selector, os.path.abspath(selector), os.path.realpath(selector)]))


def _ids_by_selector(session: Session, selector: str, most: int) -> list[int]:
    """The ids of the images ``selector`` names (a sha256 or a prefix of 8+ hex digits, else a
    path), each an index look-up; at most ``most``."""
    sha = selector.lower()
    found: list[int] = []
    if len(sha) == 64 and _hex(sha):
        found = list(session.scalars(select(Image.id).where(Image.sha256 == sha)))  # uq_images_sha256
    elif len(sha) >= 8 and _hex(sha):
        # A range rather than LIKE 'abc%': an index range in any collation.
        found = list(session.scalars(select(Image.id).where(Image.sha256 >= sha, Image.sha256 < sha + "g")
                                     .order_by(Image.sha256).limit(most)))
    if found:
        return found
    for path in _paths(selector):
        image_id = session.scalar(select(SourceFile.image_id).where(SourceFile.path == path))  # uq_files_path
        if image_id is not None:
            return [image_id]
    return []


class AmbiguousSelector(LookupError):
    """A sha256 prefix that names more than one image."""


def find_image(session: Session, selector: str) -> Image | None:
    """The image ``selector`` names: a path as recorded (or made absolute, or with links resolved),
    a full sha256, or a sha256 prefix of 8+ hex digits; None when none. Index look-ups only.
    :class:`AmbiguousSelector` when a prefix names several images."""
    ids = _ids_by_selector(session, selector, 2)
    if len(ids) > 1:
        raise AmbiguousSelector(f"{selector} is the start of more than one sha256: give more of it")
    return _load(session, ids)[0] if ids else None


def find_images(session: Session, selectors: Sequence[str] = ()) -> list[Image]:
    """Images by path (as recorded, or resolved), sha256 or a sha256 prefix of 8+ characters (every
    image it starts, up to :data:`PREFIX_MATCHES`), each an index look-up; in id order, each once.
    All images when ``selectors`` is empty (for a store of any size use :func:`iter_pages`)."""
    if not selectors:
        return [image for page in _pages_in_one_session(session) for image in page]
    ids: set[int] = set()
    for sel in selectors:
        ids.update(_ids_by_selector(session, sel, PREFIX_MATCHES))
    return _load(session, sorted(ids))


def _pages_in_one_session(session: Session) -> Iterator[list[Image]]:
    cursor = 0
    while page := _load(session, _page_ids(session, _search(session, ResultFilter()), cursor, SEARCH_BATCH)):
        yield page
        cursor = page[-1].id


def results_json(session: Session, images: Sequence[Image], stores: Sequence[TaskResults],
                 ctx: ReadContext = ReadContext()) -> list[dict[str, Any]]:
    """Each image's results in the documented JSON shape, the tasks' fields read for all of
    ``images`` at once (a few statements per task, not per image; ranges of their indexes for a
    :class:`Page` of every image in its span)."""
    ids = [image.id for image in images]
    if (span := _span(images)) is not None:
        ids = Page(ids, span)
    arts = _page_artifacts(session, ids)
    per_store = [(store, store.read(session, ids, ctx, arts)) for store in stores]
    # Paths and runs as columns, a statement each for the whole page (not ORM objects: a stream
    # reads a million images' worth).
    paths_of: dict[int, list[str]] = {}
    for image_id, path in _PATHS.rows(session, ids):
        paths_of.setdefault(image_id, []).append(path)
    runs_of: dict[int, list[tuple[str, str, str, str | None]]] = {}
    for image_id, task, model, status, error in _RUNS.rows(session, ids):
        runs_of.setdefault(image_id, []).append((task, model, status, error))
    out = []
    for image in images:
        paths = paths_of.get(image.id, [])
        runs = runs_of.get(image.id, [])
        errors = {task: error for task, _m, status, error in runs if status in (FAILED, REJECTED) and error}
        if image.rejected_reason and not errors:
            errors["image"] = image.rejected_reason
        item: dict[str, Any] = {
            "path": paths[0] if paths else None,
            "paths": paths,
            "sha256": image.sha256,
            "format": image.format,
            "decoder": image.decoder,
            "color_profile": image.color_profile,
            **capture.frames_json(image),
            "capture": capture.capture_json(image),
            "original": image.original,
            "width": image.width,
            "height": image.height,
            "size_bytes": image.size_bytes,
            "status": state_of(image.rejected_reason, [status for _t, _m, status, _e in runs]),
            "tasks": {f"{task}:{model}" if model else task: status for task, model, status, _e in runs},
        }
        for store, values in per_store:
            item.update(values.get(image.id) or store.empty())
        item["artifacts"] = dict(arts.counts.get(image.id, {}))
        item["errors"] = errors
        out.append(item)
    return out


def _page_artifacts(session: Session, image_ids: Sequence[int]) -> Artifacts:
    """The images' artifacts (not their thumbnails): counted per kind in SQL, and the keys of those
    of :data:`INDEXED_KINDS` (two statements a chunk, a few rows per image instead of one per artifact)."""
    counts: dict[int, dict[str, int]] = {}
    keys: dict[int, list[tuple[str, int]]] = {}
    for image_id, kind, n in _ARTIFACT_COUNTS.rows(session, image_ids):
        counts.setdefault(image_id, {})[kind] = n
    for image_id, kind, idx in _INDEXED_ARTIFACTS.rows(session, image_ids):
        keys.setdefault(image_id, []).append((kind, idx))
    return Artifacts(counts, keys)


# The Results JSON's reads of a page besides the tasks' own.
_IMAGES = PageQuery(Image.id, lambda ids: select(*Image.__table__.columns).where(ids), named=True)
_SHAS = PageQuery(Image.id, lambda ids: select(Image.id, Image.sha256).where(ids))
_PATHS = PageQuery(SourceFile.image_id, lambda ids: select(SourceFile.image_id, SourceFile.path).where(ids)
                   .order_by(SourceFile.image_id, SourceFile.id))
_RUNS = PageQuery(TaskRun.image_id, lambda ids: select(
    TaskRun.image_id, TaskRun.task, TaskRun.model, TaskRun.status, TaskRun.error).where(ids)
    .order_by(TaskRun.image_id, TaskRun.id))
_ARTIFACT_COUNTS = PageQuery(Artifact.image_id, lambda ids: select(Artifact.image_id, Artifact.kind, func.count())
                             .where(ids, Artifact.kind != THUMB).group_by(Artifact.image_id, Artifact.kind))
_INDEXED_ARTIFACTS = PageQuery(Artifact.image_id, lambda ids: select(Artifact.image_id, Artifact.kind, Artifact.idx)
                               .where(ids, Artifact.kind.in_(INDEXED_KINDS)))


#: The gallery's thumbnail of a photo (`darkroom serve`): an artifact no task owns, made once by the
#: first message that decodes the photo. Not one of the results: neither counted in the Results JSON's
#: ``artifacts`` nor exported.
THUMB = "thumb"


def save_thumbnails(session: Session, thumbs: dict[int, ArtifactData]) -> None:
    """Store each photo's thumbnail (image id -> artifact) unless one is there already (two messages
    of one photo may both have made one: the first stored stays)."""
    if thumbs:
        rows = [{"image_id": image_id, **dataclasses.asdict(art)} for image_id, art in thumbs.items()]
        session.execute(insert_for(session, Artifact).values(rows)
                        .on_conflict_do_nothing(index_elements=["image_id", "kind", "idx"]))


def artifacts_for(session: Session, image_id: int) -> list[Artifact]:
    """The image's artifacts (the tasks' images; not its thumbnail), bytes included."""
    return list(session.scalars(select(Artifact).where(Artifact.image_id == image_id, Artifact.kind != THUMB)
                                .order_by(Artifact.kind, Artifact.idx)))


def image_names(session: Session, image_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    """image id -> (sha256, the first path it arrived under), a chunk of ids per statement."""
    out: dict[int, tuple[str, str | None]] = {}
    for chunk in chunks(sorted(set(image_ids))):
        first = (select(SourceFile.image_id, func.min(SourceFile.path).label("path"))
                 .where(SourceFile.image_id.in_(chunk)).group_by(SourceFile.image_id).subquery())
        rows = session.execute(select(Image.id, Image.sha256, first.c.path)
                               .outerjoin(first, first.c.image_id == Image.id).where(Image.id.in_(chunk)))
        out.update({image_id: (sha, path) for image_id, sha, path in rows})
    return out
