"""The images the pages show, found by sha256 only: a request names a hash (checked to be 64 hex
digits before anything is looked up), never a path. Bytes come from the store: artifacts from SQL or
the blob store by their own hash, originals from the blob store or, for a photo held by reference,
from the files the ledger recorded for it — checked to still hold its content.

- a thumbnail: the ``thumb`` artifact a worker made at processing time, or, for a photo without
  one yet, made now from its original (draft-mode decode) and kept in a small in-memory cache;
- a preview of the original: at most :data:`PREVIEW_SIDE` pixels on its longest side, as JPEG (a
  browser shows no HEIC or camera RAW, and an original can be 100 MP);
- an artifact (``faces_boxed``, ``face_crop``, ``augmented``, ``contact_sheet``) as stored.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import threading
from pathlib import Path

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from darkroom import catalog
from darkroom.settings import Settings
from storage import files, results
from storage.blobs import BlobStore, BlobStoreDenied
from storage.models import Artifact, Image
from tasks import imaging

SHA256 = re.compile(r"^[0-9a-f]{64}$")
KIND = re.compile(r"^[a-z_]{1,32}$")
#: Longest side of an original's preview.
PREVIEW_SIDE = 1600


def valid_sha(text: str) -> bool:
    return bool(SHA256.match(text))


@dataclasses.dataclass(frozen=True)
class Picture:
    data: bytes
    mime: str
    #: The strong ETag: the sha256 of the bytes.
    etag: str


def _picture(data: bytes, mime: str) -> Picture:
    return Picture(data=data, mime=mime, etag=hashlib.sha256(data).hexdigest())


class LRU:
    """A small thread-safe cache of made pictures, bounded by count."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._items: collections.OrderedDict[str, Picture] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Picture | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: Picture) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.most:
                self._items.popitem(last=False)


class NoOriginal(LookupError):
    """The photo's original cannot be read (moved, deleted, or a content that is not an image)."""


class Media:
    """Pictures by sha256 from one store."""

    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self.settings = settings
        self.blobs = blobs
        self.thumbs = LRU(1024)
        self.previews = LRU(32)

    def thumb(self, session: Session, sha256: str) -> Picture | None:
        """The photo's thumbnail; None when no photo has this sha256. :class:`NoOriginal` when it has
        none and none can be made (a rejected file, an original gone)."""
        # One statement, of columns: the image and its thumbnail, if it has one.
        row = session.execute(select(Image.id, Image.rejected_reason, Artifact.id, Artifact.data, Artifact.blob,
                                     Artifact.mime)
                              .outerjoin(Artifact, and_(Artifact.image_id == Image.id, Artifact.kind == results.THUMB,
                                                        Artifact.idx == 0))
                              .where(Image.sha256 == sha256)).first()
        if row is None:
            return None
        image_id, rejected, art_id, data, blob, mime = row
        if art_id is not None:
            if data is None and blob is not None:
                try:
                    data = self.blobs.read(blob)
                except FileNotFoundError:  # gone from the blob store: made again below, from the original
                    data = None
            if data is not None:
                return _picture(data, mime)
        if rejected:
            raise NoOriginal("a rejected file has no picture")
        made = self.thumbs.get(sha256)
        if made is None:
            original = self.original(session, image_id, sha256)
            try:
                thumb = catalog.thumbnail(original, None, self.settings)
            except imaging.BadImage as exc:
                raise NoOriginal(str(exc)) from None
            made = _picture(thumb.data or b"", thumb.mime)
            self.thumbs.put(sha256, made)
        return made

    def preview(self, session: Session, sha256: str) -> Picture | None:
        """The original, at most :data:`PREVIEW_SIDE` pixels on its longest side, as a JPEG."""
        row = session.execute(select(Image.id, Image.rejected_reason).where(Image.sha256 == sha256)).first()
        if row is None:
            return None
        image_id, rejected = row
        if rejected:
            raise NoOriginal("a rejected file has no picture")
        made = self.previews.get(sha256)
        if made is None:
            original = self.original(session, image_id, sha256)
            try:
                pixels = imaging.decode(original, max_pixels=self.settings.max_image_pixels,
                                        at_least=(PREVIEW_SIDE, PREVIEW_SIDE), **catalog.raw_options(self.settings))
            except imaging.BadImage as exc:
                raise NoOriginal(str(exc)) from None
            made = _picture(imaging.encode(imaging.fit_within(pixels, PREVIEW_SIDE), "JPEG", quality=85), "image/jpeg")
            self.previews.put(sha256, made)
        return made

    def artifact(self, session: Session, sha256: str, kind: str, idx: int) -> Picture | None:
        """One artifact of the photo, as stored; None when there is none."""
        art = session.scalar(select(Artifact).join(Image, Image.id == Artifact.image_id)
                             .where(Image.sha256 == sha256, Artifact.kind == kind, Artifact.idx == idx))
        if art is None:
            return None
        return _picture(results.artifact_bytes(art, self.blobs), art.mime)

    def original(self, session: Session, image_id: int, sha256: str) -> bytes:
        """The photo's bytes: the blob store's copy, else the first recorded file that still holds
        its content (read only up to DARKROOM_MAX_IMAGE_BYTES, and its hash checked)."""
        try:
            return self.blobs.read(sha256)
        except (FileNotFoundError, ValueError):
            pass  # not in the store: held by reference, or gone
        except (ConnectionError, BlobStoreDenied) as exc:  # the store away, or refusing us: say so, no picture
            raise NoOriginal(f"the blob store did not give it: {exc}") from None
        _where, recorded = files.originals(session, image_id)
        for found in recorded:
            data = _read_bounded(Path(found.path), self.settings.max_image_bytes)
            if data is not None and hashlib.sha256(data).hexdigest() == sha256:
                return data
        raise NoOriginal("its original is not in the blob store and none of its files holds it any more")


def _read_bounded(path: Path, most: int) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(most + 1)
    except OSError:
        return None
    return None if len(data) > most else data
