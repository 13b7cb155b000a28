"""`darkroom export`: one folder per image, named by its sha256, written atomically.

Every name written is derived from the content hash and a fixed kind, never from a file name, so
nothing an uploader chooses can steer a write outside the export folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from darkroom import catalog
from darkroom.settings import Settings
from storage import results
from storage.stores import open_store

_EXT = {"image/jpeg": "jpg", "image/png": "png"}


def artifact_name(kind: str, idx: int, mime: str) -> str:
    ext = _EXT.get(mime, "bin")
    single = kind in ("faces_boxed", "contact_sheet")
    return f"{kind}.{ext}" if single and idx == 0 else f"{kind}-{idx}.{ext}"


def export_images(sessions: sessionmaker[Session], directory: Path, selectors: Sequence[str],
                  settings: Settings) -> tuple[int, int]:
    root = directory.resolve()
    root.mkdir(parents=True, exist_ok=True)
    blobs = open_store(settings.blob_location)
    n_images = n_files = 0
    with sessions() as s:
        # Everything: a page at a time (constant memory at a million photos); else each named one.
        pages = [results.find_images(s, selectors)] if selectors else results.iter_pages(s)
        for image in (image for page in pages for image in page):
            folder = root / image.sha256  # sha256 is validated hex: cannot contain a separator
            folder.mkdir(exist_ok=True)
            for art in results.artifacts_for(s, image.id):
                _write(folder / artifact_name(art.kind, art.idx, art.mime), results.artifact_bytes(art, blobs))
                n_files += 1
            (result,) = catalog.results_json(s, [image], settings)
            _write(folder / "result.json", json.dumps(result, indent=2, ensure_ascii=False).encode())
            n_files += 1
            n_images += 1
    return n_images, n_files


def _write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

