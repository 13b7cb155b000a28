"""Capture metadata in the ledger: the ``images`` columns of migration 0010 (when, with what and
where a photo was taken; how many frames it has), the Results JSON's ``capture`` object, and the
`results` filters on them (``--taken-since``/``--taken-until``, ``--camera``).

The values come from ``tasks.metadata.Capture.values()`` (read at registration from the header).
Capture time is kept as the camera's clock (``taken_local``, naive) with its offset from UTC in
minutes (``taken_offset``) and, when the offset is known, the UTC instant (``taken_at``); without an
offset only the local time is kept and the JSON says the zone is unknown.

Cameras are matched by keys: the make without company words (``NIKON CORPORATION`` is ``nikon``,
``EASTMAN KODAK COMPANY`` is ``kodak``) and the model without the make it repeats (Canon's ``Canon EOS
R5`` is ``eos r5``), lower case, spaces collapsed. ``--camera`` then finds a make, a model, or a make
and a model given together (``nikon``, ``d850``, ``"nikon d850"``, ``"Canon EOS R5"``), each an
equality on an index.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, or_

from storage.models import Image

#: Words of a camera maker's name that are not the brand.
_COMPANY_WORDS = frozenset({
    "ag", "camera", "cameras", "co", "company", "corp", "corporation", "digital", "eastman", "electric",
    "electronics", "gmbh", "imaging", "inc", "industries", "international", "limited", "ltd", "optical",
    "photo", "s.a", "sa",
})
_KEY_LIMIT = 200


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text.lower().replace("\x00", " ")) if w]


def make_key(make: str | None) -> str | None:
    """A camera make as `--camera` matches it: lower case, without company words."""
    if not make:
        return None
    words = _words(make)
    brand = [w for w in words if w.strip(".") not in _COMPANY_WORDS]
    return (" ".join(brand or words)).strip(" .")[:_KEY_LIMIT] or None


def model_key(model: str | None, make: str | None = None) -> str | None:
    """A camera model as `--camera` matches it: lower case, without the make it starts with."""
    if not model:
        return None
    words = _words(model)
    brand = make_key(make)
    if brand:
        lead = brand.split()
        if words[: len(lead)] == lead and len(words) > len(lead):
            words = words[len(lead):]
    return " ".join(words)[:_KEY_LIMIT] or None


def columns(values: Mapping[str, Any] | None, frames: int | None = None) -> dict[str, Any]:
    """The ``images`` columns for a photo's capture metadata (``tasks.metadata.Capture.values()``)
    and frame count."""
    values = values or {}
    out: dict[str, Any] = {"frames": frames}
    local, offset = values.get("taken_local"), values.get("taken_offset")
    make, model = values.get("make"), values.get("model")
    out.update(
        taken_local=local, taken_offset=offset if local is not None else None,
        taken_at=(local - dt.timedelta(minutes=offset)).replace(tzinfo=dt.timezone.utc)
        if local is not None and offset is not None else None,
        camera_make=make, camera_model=model, camera_make_key=make_key(make), camera_model_key=model_key(model, make),
        lens=values.get("lens"), gps_lat=values.get("latitude"), gps_lon=values.get("longitude"),
        gps_alt=values.get("altitude"), orientation=values.get("orientation"),
    )
    return out


def _offset_text(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def capture_json(image: Image) -> dict[str, Any] | None:
    """The Results JSON's ``capture`` object; None when the photo's metadata said nothing (or it
    was registered before this was read)."""
    local, offset = image.taken_local, image.taken_offset
    if (local is None and image.camera_make is None and image.camera_model is None and image.lens is None
            and image.gps_lat is None and image.orientation is None):
        return None
    taken = utc = None
    if local is not None:
        taken = local.isoformat() + (_offset_text(offset) if offset is not None else "")
        if offset is not None:
            utc = (local - dt.timedelta(minutes=offset)).isoformat() + "Z"
    gps = None
    if image.gps_lat is not None and image.gps_lon is not None:
        gps = {"lat": image.gps_lat, "lon": image.gps_lon, "alt": image.gps_alt}
    return {
        "taken": taken,
        "taken_utc": utc,
        "offset": _offset_text(offset) if offset is not None and local is not None else None,
        "zone_known": offset is not None if local is not None else None,
        "make": image.camera_make,
        "model": image.camera_model,
        "lens": image.lens,
        "gps": gps,
        "orientation": image.orientation,
    }


def frames_json(image: Image) -> dict[str, Any]:
    """``frames`` (how many the file holds; null when not known) and ``first_frame`` (true when the
    tasks saw only the first of several)."""
    return {"frames": image.frames, "first_frame": bool(image.frames and image.frames > 1)}


# --- filters -----------------------------------------------------------------------------------


def taken_conditions(since: dt.datetime | None, until: dt.datetime | None) -> list[Any]:
    """Taken at or after ``since`` and before ``until``. A naive time is the camera's clock (the
    time a person reads on the photo, wherever it was taken: ``taken_local``); an aware one an
    instant, compared with ``taken_at`` — and, for photos whose zone is unknown, their clock with
    the given time's own clock."""
    conds: list[Any] = []
    for bound, after in ((since, True), (until, False)):
        if bound is None:
            continue
        if bound.tzinfo is None:
            conds.append(Image.taken_local >= bound if after else Image.taken_local < bound)
            continue
        utc = bound.astimezone(dt.timezone.utc)
        wall = bound.replace(tzinfo=None)
        instant = Image.taken_at >= utc if after else Image.taken_at < utc
        clock = Image.taken_local >= wall if after else Image.taken_local < wall
        conds.append(or_(instant, and_(Image.taken_at.is_(None), Image.taken_offset.is_(None), clock)))
    return conds


def camera_condition(text: str) -> Any:
    """The photo's camera is ``text``: its make, its model, or a make followed by a model (any case,
    the make's company words optional)."""
    words = _words(text)
    if not words:
        raise ValueError("an empty camera matches nothing: give a make or a model (nikon, 'EOS R5')")
    whole = " ".join(words)
    options = [Image.camera_model_key == whole, Image.camera_make_key == make_key(whole)]
    for i in range(1, len(words)):
        make, model = make_key(" ".join(words[:i])), model_key(" ".join(words[i:]))
        if make and model:
            options.append(and_(Image.camera_make_key == make, Image.camera_model_key == model))
    return or_(*options)
