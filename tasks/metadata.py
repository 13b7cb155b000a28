"""Capture metadata from EXIF: when a photo was taken, with which camera and lens, where, and how it
is turned. Pure: it reads a Pillow ``Image.Exif`` (JPEG, TIFF, WebP, PNG, HEIC through pillow-heif,
AVIF: ``Image.getexif()`` of a file opened lazily, header only) and, for a camera RAW, what LibRaw
says (``rawpy``'s ``other.timestamp`` and ``lens``). Nothing here decodes a pixel.

- Capture time: ``DateTimeOriginal`` (else ``DateTimeDigitized``) with its sub-seconds, and its UTC
  offset from ``OffsetTimeOriginal`` (else ``OffsetTimeDigitized``, else ``OffsetTime``). EXIF
  stores the camera's local clock; without an offset the zone is unknown, so only that local time
  is kept (``offset`` None) and no UTC instant is made up.
- Camera: ``Make`` and ``Model``; lens: ``LensModel`` (with ``LensMake`` when the model does not
  name it), else LibRaw's lens.
- GPS: latitude and longitude in decimal degrees (south and west negative), altitude in metres
  (below sea level negative); an exact 0,0 (a receiver without a fix) is no position.
- Orientation: the EXIF value 1-8 (1: upright as stored).

Broken or odd values (a date of ``0000:00:00``, a zero denominator, text where a number belongs) are
left out one by one; they never make a photo unusable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from typing import Any

__all__ = ["Capture", "from_exif", "from_raw", "merge"]

# IFD0 (TIFF) tags.
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
# Sub-IFDs.
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
# Exif IFD tags.
_ORIGINAL, _DIGITIZED = 0x9003, 0x9004
_OFFSET, _OFFSET_ORIGINAL, _OFFSET_DIGITIZED = 0x9010, 0x9011, 0x9012
_SUBSEC_ORIGINAL, _SUBSEC_DIGITIZED = 0x9291, 0x9292
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
# GPS IFD tags.
_LAT_REF, _LAT, _LON_REF, _LON, _ALT_REF, _ALT = 1, 2, 3, 4, 5, 6

#: Longest text kept of a make, model or lens.
TEXT_LIMIT = 200

_DATE = re.compile(r"\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?(?:\.(\d{1,6}))?"
                   r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$")
_ZONE = re.compile(r"\s*(?:(Z)|([+-])(\d{2}):?(\d{2}))\s*$")


@dataclasses.dataclass(frozen=True)
class Capture:
    """What the photo's metadata says about how it was taken; None: not said (or unreadable)."""

    #: The camera's clock when the photo was taken (naive: EXIF's local time).
    taken_local: dt.datetime | None = None
    #: Minutes east of UTC of that clock (``+02:00`` is 120); None: the zone is unknown.
    taken_offset: int | None = None
    make: str | None = None
    model: str | None = None
    lens: str | None = None
    #: Decimal degrees (south, west negative) and metres (below sea level negative).
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    #: EXIF orientation, 1-8.
    orientation: int | None = None

    @property
    def taken_utc(self) -> dt.datetime | None:
        """The UTC instant, when the offset is known (an aware datetime)."""
        if self.taken_local is None or self.taken_offset is None:
            return None
        return (self.taken_local - dt.timedelta(minutes=self.taken_offset)).replace(tzinfo=dt.timezone.utc)

    def values(self) -> dict[str, Any]:
        """The fields as a plain dict (what the ledger records)."""
        return dataclasses.asdict(self)

    def empty(self) -> bool:
        return all(v is None for v in dataclasses.asdict(self).values())


def merge(first: Capture, then: Capture) -> Capture:
    """``first``'s values, with what it lacks taken from ``then`` (the capture time and its offset
    as one: an offset never joins another source's time)."""
    out = {k: v if v is not None else getattr(then, k) for k, v in dataclasses.asdict(first).items()}
    if first.taken_local is None:
        out["taken_local"], out["taken_offset"] = then.taken_local, then.taken_offset
    else:
        out["taken_offset"] = first.taken_offset
    return Capture(**out)


def from_exif(exif: Any) -> Capture:
    """The capture metadata in a Pillow ``Image.Exif`` (``im.getexif()``); an empty Capture when it
    holds none. Never raises for bad values."""
    if exif is None:
        return Capture()
    ifd0 = _mapping(exif)
    sub = _sub_ifd(exif, _EXIF_IFD)
    gps = _sub_ifd(exif, _GPS_IFD)

    def tag(number: int) -> Any:  # Exif IFD first; some cameras (old Kodaks) put them in IFD0
        value = sub.get(number)
        return value if value is not None else ifd0.get(number)

    taken, offset = None, None
    for when, subsec, zones in ((_ORIGINAL, _SUBSEC_ORIGINAL, (_OFFSET_ORIGINAL, _OFFSET)),
                                (_DIGITIZED, _SUBSEC_DIGITIZED, (_OFFSET_DIGITIZED, _OFFSET))):
        taken, inline = _date(tag(when), tag(subsec))
        if taken is not None:
            offset = inline
            for zone in zones:
                if offset is None:
                    offset = _offset(tag(zone))
            break
    lens = _text(tag(_LENS_MODEL))
    lens_make = _text(tag(_LENS_MAKE))
    if lens and lens_make and not lens.lower().startswith(lens_make.lower()):
        lens = _text(f"{lens_make} {lens}")
    elif lens is None:
        lens = lens_make
    lat, lon, alt = _position(gps)
    orientation = _int(ifd0.get(_ORIENTATION))
    return Capture(
        taken_local=taken, taken_offset=offset, make=_text(ifd0.get(_MAKE)), model=_text(ifd0.get(_MODEL)),
        lens=lens, latitude=lat, longitude=lon, altitude=alt,
        orientation=orientation if orientation in range(1, 9) else None,
    )


def from_raw(timestamp: Any = None, lens_make: Any = None, lens_model: Any = None) -> Capture:
    """What LibRaw says (``rawpy``'s ``other.timestamp``, a naive local time, and ``lens``)."""
    taken = timestamp if isinstance(timestamp, dt.datetime) and timestamp.year > 1970 else None
    if taken is not None:
        taken = taken.replace(tzinfo=None)
    model, make = _text(lens_model), _text(lens_make)
    lens = model if not make or (model and model.lower().startswith(make.lower())) else _text(f"{make} {model or ''}")
    return Capture(taken_local=taken, lens=lens)


# --- values --------------------------------------------------------------------------------------


def _mapping(exif: Any) -> dict[int, Any]:
    try:
        return dict(exif.items())
    except Exception:  # noqa: BLE001 - a broken EXIF block is no metadata, never an error
        return {}


def _sub_ifd(exif: Any, tag: int) -> dict[int, Any]:
    try:
        return dict(exif.get_ifd(tag).items())
    except Exception:  # noqa: BLE001 - an IFD offset pointing anywhere
        return {}


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = " ".join(value.replace("\x00", " ").split())
    return text[:TEXT_LIMIT] or None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _date(value: Any, subsec: Any = None) -> tuple[dt.datetime | None, int | None]:
    """EXIF's ``YYYY:MM:DD HH:MM:SS`` (a few writers add sub-seconds or a zone) as a naive
    datetime, and the offset in minutes when the text carries one."""
    text = _text(value)
    if text is None:
        return None, None
    match = _DATE.match(text)
    if not match:
        return None, None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    digits = fraction or "".join(ch for ch in (_text(subsec) or "") if ch.isdigit())
    micro = int((digits + "000000")[:6]) if digits else 0
    try:
        when = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro)
    except ValueError:  # 0000:00:00 00:00:00, 2024:02:30, ...
        return None, None
    return when, _offset(zone)


def _offset(value: Any) -> int | None:
    """``+02:00`` as 120 minutes; None when absent or not an offset a clock can have (±14 h)."""
    text = _text(value)
    if text is None:
        return None
    match = _ZONE.match(text)
    if not match:
        return None
    utc, sign, hours, minutes = match.groups()
    if utc:
        return 0
    total = int(hours) * 60 + int(minutes)
    if total > 14 * 60 or int(minutes) >= 60:
        return None
    return -total if sign == "-" else total


def _degrees(value: Any) -> float | None:
    """Degrees, minutes and seconds (three rationals) as decimal degrees."""
    if isinstance(value, (tuple, list)):
        parts = [_float(v) for v in value[:3]]
        if not parts or any(p is None for p in parts):
            return None
        return sum(p / 60**i for i, p in enumerate(parts))
    return _float(value)


def _ref(value: Any) -> str:
    text = _text(value) or ""
    return text[:1].upper()


def _position(gps: dict[int, Any]) -> tuple[float | None, float | None, float | None]:
    lat, lon = _degrees(gps.get(_LAT)), _degrees(gps.get(_LON))
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180 or (lat == 0 and lon == 0):
        return None, None, None
    if _ref(gps.get(_LAT_REF)) == "S":
        lat = -lat
    if _ref(gps.get(_LON_REF)) == "W":
        lon = -lon
    alt = _float(gps.get(_ALT))
    if alt is not None:
        ref = gps.get(_ALT_REF)
        below = ref in (1, b"\x01") or (isinstance(ref, bytes) and ref[:1] == b"\x01")
        alt = -abs(alt) if below else alt
    return round(lat, 7), round(lon, 7), round(alt, 2) if alt is not None else None
