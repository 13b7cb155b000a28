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
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, selectinload

from storage.db import chunks
from storage.ledger import image_status
from storage.models import FAILED, REJECTED, Artifact, Face, Image, Label, Normalization, PHash, SourceFile


@dataclasses.dataclass(frozen=True)
class ReadContext:
    """What reading results depends on besides the store: the configured classifier (whose labels
    are the results' ``labels``) and the distance within which photos are near-duplicates."""

    primary_model: str | None = None
    near_distance: int = 8


@dataclasses.dataclass(frozen=True)
class ArtifactData:
    kind: str
    idx: int
    mime: str
    width: int
    height: int
    data: bytes


class TaskResults:
    """How one task's results are stored and read back. Subclasses set :attr:`fields` (the JSON keys
    they fill) and :attr:`artifact_kinds` (the artifacts the task owns), and implement the three methods."""

    fields: tuple[str, ...] = ()
    artifact_kinds: tuple[str, ...] = ()

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        """Replace the results of each ``(image_id, data)``: ``data`` is the step's plain output."""

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext) -> dict[int, dict[str, Any]]:
        """The JSON fields of each image that has a result (image id -> fields)."""
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


def _artifact_keys(session: Session, image_ids: Sequence[int], kinds: Sequence[str]) -> dict[int, list[tuple[str, int]]]:
    out: dict[int, list[tuple[str, int]]] = {}
    for chunk in chunks(list(image_ids)):
        rows = session.execute(select(Artifact.image_id, Artifact.kind, Artifact.idx)
                               .where(Artifact.image_id.in_(chunk), Artifact.kind.in_(list(kinds))))
        for image_id, kind, idx in rows:
            out.setdefault(image_id, []).append((kind, idx))
    return out


# --- the tasks' results --------------------------------------------------------------------------


class NormalizationResults(TaskResults):
    """Lesson 2: one report per mode; ``normalize`` is the scale report in the contract's shape."""

    fields = ("normalize", "normalizations")

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        for image_id, reports in items:
            session.execute(delete(Normalization).where(Normalization.image_id == image_id))
            for report in reports:
                session.add(Normalization(image_id=image_id, mode=report["mode"],
                                          per_channel=bool(report["per_channel"]), dtype=report["dtype"], report=report))

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext) -> dict[int, dict[str, Any]]:
        reports: dict[int, dict[tuple[str, bool], dict[str, Any]]] = {}
        for chunk in chunks(list(image_ids)):
            rows = session.scalars(select(Normalization).where(Normalization.image_id.in_(chunk))
                                   .order_by(Normalization.id))
            for n in rows:
                reports.setdefault(n.image_id, {})[(n.mode, n.per_channel)] = n.report
        return {image_id: self.to_json({"": list(norms.values())}, (), ctx) for image_id, norms in reports.items()}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        reports = [report for data in by_model.values() for report in data]
        scale = next((r for r in reports if r["mode"] == "scale" and not r["per_channel"]), None)
        return {"normalize": _contract_normalize(scale) if scale else None, "normalizations": reports}

    def empty(self) -> dict[str, Any]:
        return {"normalize": None, "normalizations": []}


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

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext) -> dict[int, dict[str, Any]]:
        by_image: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for chunk in chunks(list(image_ids)):
            rows = session.scalars(select(Label).where(Label.image_id.in_(chunk))
                                   .order_by(Label.image_id, Label.model, Label.rank))
            for lab in rows:
                by_image.setdefault(lab.image_id, {}).setdefault(lab.model, []).append(
                    {"rank": lab.rank, "class_id": lab.class_id, "label": lab.label, "score": lab.score})
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

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext) -> dict[int, dict[str, Any]]:
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

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        for image_id, faces in items:
            session.execute(delete(Face).where(Face.image_id == image_id, Face.model == model))
            for idx, face in enumerate(faces):
                x, y, w, h = face["box"]
                session.add(Face(image_id=image_id, model=model, idx=idx, x=x, y=y, w=w, h=h,
                                 confidence=float(face["confidence"]), keypoints=face["keypoints"]))

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext) -> dict[int, dict[str, Any]]:
        crops = _artifact_keys(session, image_ids, ("face_crop",))
        found: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for chunk in chunks(list(image_ids)):
            rows = session.scalars(select(Face).where(Face.image_id.in_(chunk))
                                   .order_by(Face.image_id, Face.model, Face.idx))
            for f in rows:
                found.setdefault(f.image_id, {}).setdefault(f.model, []).append(
                    {"box": [f.x, f.y, f.w, f.h], "confidence": f.confidence, "keypoints": f.keypoints})
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


class PHashResults(TaskResults):
    """The perceptual hash (``phash``, 16 hex digits) and the photos within the near-duplicate
    distance of it (``near_duplicates``, their sha256s).

    Near-duplicates are looked up through the hash's four 16-bit bands, each indexed: two hashes
    within ``d`` bits have some band within ``d // 4`` bits (pigeonhole), so the candidates are the
    rows whose band equals one of the values within that many bits of the photo's band; each is
    then checked exactly. A look-up reads a few dozen index entries, not the table.
    """

    fields = ("phash", "near_duplicates")
    #: Near-duplicates listed per photo at most (the ``duplicates`` command lists whole groups).
    LIMIT = 100

    def save(self, session: Session, model: str, items: Sequence[tuple[int, Any]]) -> None:
        for image_id, value in items:
            session.execute(delete(PHash).where(PHash.image_id == image_id))
            hashed = int(value, 16)
            b0, b1, b2, b3 = _bands(hashed)
            session.add(PHash(image_id=image_id, hash=_signed64(hashed), band0=b0, band1=b1, band2=b2, band3=b3))

    def read(self, session: Session, image_ids: Sequence[int], ctx: ReadContext) -> dict[int, dict[str, Any]]:
        hashes: dict[int, int] = {}
        for chunk in chunks(list(image_ids)):
            hashes.update(session.execute(select(PHash.image_id, PHash.hash).where(PHash.image_id.in_(chunk))).tuples().all())
        return {image_id: {"phash": f"{value & (2**64 - 1):016x}",
                           "near_duplicates": self.near(session, image_id, value, ctx.near_distance)}
                for image_id, value in hashes.items()}

    def to_json(self, by_model: dict[str, Any], artifacts: Sequence[tuple[str, int]], ctx: ReadContext) -> dict[str, Any]:
        """One photo alone has no near-duplicates to list."""
        return {"phash": next(iter(by_model.values()), None), "near_duplicates": []}

    def near(self, session: Session, image_id: int, value: int, distance: int) -> list[str]:
        """The sha256s of other images whose hash is within ``distance`` bits of ``value``."""
        value &= 2**64 - 1
        radius = max(0, distance) // _BANDS
        columns = (PHash.band0, PHash.band1, PHash.band2, PHash.band3)
        found: dict[int, int] = {}
        for column, band in zip(columns, _bands(value)):
            for chunk in chunks(_within(band, radius)):
                rows = session.execute(select(PHash.image_id, PHash.hash).where(column.in_(chunk), PHash.image_id != image_id))
                found.update(rows.tuples().all())
        near = sorted(other for other, h in found.items() if ((h & (2**64 - 1)) ^ value).bit_count() <= distance)
        shas = dict(session.execute(select(Image.id, Image.sha256).where(Image.id.in_(near[: self.LIMIT]))).tuples().all())
        return sorted(shas[i] for i in near[: self.LIMIT])

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


NORMALIZATIONS = NormalizationResults()
LABELS = LabelResults()
AUGMENTATIONS = AugmentationResults()
FACES = FaceResults()
PHASHES = PHashResults()


# --- finding images and putting their results together ------------------------------------------


def find_images(session: Session, selectors: Sequence[str] = ()) -> list[Image]:
    """Images by path (as recorded, or resolved), sha256 or a sha256 prefix of 8+ characters; all when empty."""
    query = select(Image).options(selectinload(Image.runs), selectinload(Image.files)).order_by(Image.id)
    if not selectors:
        return list(session.scalars(query))
    found: dict[int, Image] = {}
    for sel in selectors:
        conds = [SourceFile.path == sel]
        if len(sel) >= 8 and all(c in "0123456789abcdef" for c in sel.lower()):
            # A range rather than LIKE 'abc%': an index range in any collation.
            prefix = sel.lower()
            conds.append(Image.sha256.between(prefix, prefix + "g"))
        matches = session.scalars(
            query.outerjoin(SourceFile, SourceFile.image_id == Image.id)
            .where(conds[0] if len(conds) == 1 else conds[0] | conds[1])
        ).unique()
        for img in matches:
            found.setdefault(img.id, img)
    return sorted(found.values(), key=lambda img: img.id)


def results_json(session: Session, images: Sequence[Image], stores: Sequence[TaskResults],
                 ctx: ReadContext = ReadContext()) -> list[dict[str, Any]]:
    """Each image's results in the documented JSON shape, the tasks' fields read for all of
    ``images`` at once (a few statements per task, not per image)."""
    ids = [image.id for image in images]
    per_store = [(store, store.read(session, ids, ctx)) for store in stores]
    art_counts = {image_id: Counter(kind for kind, _ in arts)
                  for image_id, arts in _all_artifact_kinds(session, ids).items()}
    out = []
    for image in images:
        paths = [f.path for f in image.files]
        errors = {run.task: run.error for run in image.runs if run.status in (FAILED, REJECTED) and run.error}
        if image.rejected_reason and not errors:
            errors["image"] = image.rejected_reason
        item: dict[str, Any] = {
            "path": paths[0] if paths else None,
            "paths": paths,
            "sha256": image.sha256,
            "format": image.format,
            "width": image.width,
            "height": image.height,
            "size_bytes": image.size_bytes,
            "status": image_status(image),
            "tasks": {f"{r.task}:{r.model}" if r.model else r.task: r.status for r in image.runs},
        }
        for store, values in per_store:
            item.update(values.get(image.id) or store.empty())
        item["artifacts"] = dict(art_counts.get(image.id, {}))
        item["errors"] = errors
        out.append(item)
    return out


def _all_artifact_kinds(session: Session, image_ids: Sequence[int]) -> dict[int, list[tuple[str, int]]]:
    out: dict[int, list[tuple[str, int]]] = {}
    for chunk in chunks(list(image_ids)):
        for image_id, kind, idx in session.execute(select(Artifact.image_id, Artifact.kind, Artifact.idx)
                                                   .where(Artifact.image_id.in_(chunk))):
            out.setdefault(image_id, []).append((kind, idx))
    return out


def artifacts_for(session: Session, image_id: int) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.image_id == image_id).order_by(Artifact.kind, Artifact.idx)))


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
