"""Capture metadata: EXIF written with Pillow (capture time with its offset, camera, lens, GPS,
orientation) into JPEG and HEIC files, read at registration into the ledger, back out in the Results
JSON's ``capture`` and through `results --taken-since/--taken-until/--camera`; the real Kodak DC50
RAW's metadata through LibRaw and its TIFF directory."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from darkroom.settings import Settings
from storage import capture
from storage import files as registry
from storage import results as stored
from storage.db import transaction
from tasks import metadata
from tasks.imaging import probe
from tests.test_formats import KDC, LIMITS

EXIF_IFD, GPS_IFD = 0x8769, 0x8825


def exif_block(*, make="Canon", model="Canon EOS R5", when="2024:05:01 14:30:15", offset="+02:00", subsec="25",
               lens="RF24-105mm F4 L IS USM", lat=("N", (48, 51, 29.64)), lon=("E", (2, 17, 40.34)), alt=(35.5, 0),
               orientation=6) -> Image.Exif:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if orientation:
        exif[0x0112] = orientation
    sub = exif.get_ifd(EXIF_IFD)
    if when:
        sub[0x9003] = when
    if offset:
        sub[0x9011] = offset
    if subsec:
        sub[0x9291] = subsec
    if lens:
        sub[0xA434] = lens
    if lat:
        gps = exif.get_ifd(GPS_IFD)
        gps[1], gps[2] = lat[0], tuple(IFDRational(round(v * 100), 100) for v in lat[1])
        gps[3], gps[4] = lon[0], tuple(IFDRational(round(v * 100), 100) for v in lon[1])
        if alt:
            gps[5], gps[6] = bytes([alt[1]]), IFDRational(round(alt[0] * 100), 100)
    return exif


def photo(fmt: str, pixels: np.ndarray, exif: Image.Exif) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, exif=exif.tobytes(), **({"quality": 80} if fmt != "PNG" else {}))
    return out.getvalue()


# --- reading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF", "WEBP", "PNG", "TIFF"])
def test_exif_written_by_pillow_is_read_from_the_header(fmt, astronaut):
    info = probe(photo(fmt, astronaut[:64, :96], exif_block()), **LIMITS)
    got = info.capture
    assert got.taken_local == dt.datetime(2024, 5, 1, 14, 30, 15, 250000) and got.taken_offset == 120
    assert got.taken_utc == dt.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=dt.timezone.utc)
    assert (got.make, got.model, got.lens) == ("Canon", "Canon EOS R5", "RF24-105mm F4 L IS USM")
    assert (got.latitude, got.longitude, got.altitude) == pytest.approx((48.8582333, 2.2945389, 35.5))
    # libheif applies the rotation itself and writes the HEIC upright: its EXIF then says 1.
    assert got.orientation == (1 if fmt == "HEIF" else 6)
    if fmt != "HEIF":
        assert (info.width, info.height) == (64, 96)  # turned by orientation 6


def test_no_offset_keeps_the_local_time_and_odd_values_are_left_out():
    exif = exif_block(offset=None, subsec=None, lat=("S", (33, 52, 4.0)), lon=("W", (151, 12, 36.0)),
                      alt=(12.0, 1), make="NIKON CORPORATION\x00", model="NIKON D850 ")
    got = metadata.from_exif(exif)
    assert got.taken_local == dt.datetime(2024, 5, 1, 14, 30, 15) and got.taken_offset is None
    assert got.taken_utc is None  # no zone: no instant made up
    assert (got.latitude, got.longitude, got.altitude) == pytest.approx((-33.8677778, -151.21, -12.0))
    assert (got.make, got.model) == ("NIKON CORPORATION", "NIKON D850")
    broken = metadata.from_exif(exif_block(when="0000:00:00 00:00:00", offset="+99:00", lat=("N", (0, 0, 0)),
                                           lon=("E", (0, 0, 0)), orientation=9, make="", model="", lens=""))
    assert broken.empty()  # a zero date, an impossible offset, 0,0 and orientation 9: nothing
    assert metadata.from_exif(Image.Exif()).empty()
    assert metadata.from_exif(exif_block(offset="-05:30")).taken_offset == -330


def test_camera_keys_match_make_model_or_both():
    assert capture.make_key("NIKON CORPORATION") == "nikon"
    assert capture.make_key("EASTMAN KODAK COMPANY") == "kodak"
    assert capture.make_key("OLYMPUS IMAGING CORP.") == "olympus"
    assert capture.model_key("Canon EOS R5", "Canon") == "eos r5"
    assert capture.model_key("iPhone 15 Pro", "Apple") == "iphone 15 pro"


def test_the_real_kodak_raw_says_when_and_with_what():
    if not KDC.is_file():
        pytest.skip(f"the real camera RAW {KDC} is absent (the shared test data is not mounted here)")
    got = probe(KDC, **LIMITS).capture
    assert got.taken_local == dt.datetime(1997, 4, 23, 8, 0, 47) and got.taken_offset is None
    assert got.make == "Eastman Kodak Company" and got.model == "Kodak Digital Science DC50 Zoom Camera"
    assert got.orientation == 1


# --- stored, shown and filtered ----------------------------------------------------------------------


@pytest.fixture()
def store(db_url, tmp_path, astronaut):
    """Photos registered as the producer registers them (worker.originals.describe: the header probed
    once), on SQLite and PostgreSQL: a JPEG and a HEIC from a Canon in Paris at 14:30+02:00, an
    iPhone HEIC without an offset in Sydney, a photo without EXIF, and the Kodak RAW when present."""
    from storage.db import make_engine, migrate, session_factory
    from worker.originals import describe

    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    settings = Settings(data_dir=tmp_path, _env_file=None)
    px = astronaut[:64, :64]
    made = {
        "paris.jpg": photo("JPEG", px, exif_block()),
        "paris.heic": photo("HEIF", px[::-1], exif_block(when="2024:05:01 23:30:00", offset="+02:00")),
        "sydney.heic": photo("HEIF", px[:, ::-1], exif_block(
            make="Apple", model="iPhone 15 Pro", when="2024:05:02 00:30:00", offset=None, subsec=None, lens=None,
            lat=("S", (33, 52, 4.0)), lon=("E", (151, 12, 36.0)), alt=None)),
        "plain.png": photo("PNG", px[::2], Image.Exif()),
    }
    paths = {}
    for name, data in made.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    if KDC.is_file():
        paths["kodak.kdc"] = KDC
    with transaction(sessions) as s:
        for path in paths.values():
            record = describe(path, path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                              size=path.stat().st_size, mtime_ns=1, settings=settings, reference=True)
            assert record.rejected_reason is None, record.rejected_reason
            registry.register_files(s, [record], work=[])
    yield sessions, paths
    engine.dispose()


def listed(sessions, **flt) -> list[str]:
    with sessions() as s:
        page = stored.select_page(s, stored.ResultFilter(**flt), limit=100)
        return sorted(item["path"].rsplit("/", 1)[-1] for item in stored.results_json(s, page, []))


def test_capture_in_the_results_json_and_through_the_filters(store):
    sessions, paths = store
    with sessions() as s:
        items = {i["path"].rsplit("/", 1)[-1]: i for i in stored.results_json(s, stored.find_images(s, []), [])}
    paris = items["paris.jpg"]["capture"]
    assert paris == {
        "taken": "2024-05-01T14:30:15.250000+02:00", "taken_utc": "2024-05-01T12:30:15.250000Z", "offset": "+02:00",
        "zone_known": True, "make": "Canon", "model": "Canon EOS R5", "lens": "RF24-105mm F4 L IS USM",
        "gps": {"lat": pytest.approx(48.8582333), "lon": pytest.approx(2.2945389), "alt": 35.5}, "orientation": 6,
    }
    sydney = items["sydney.heic"]["capture"]
    assert sydney["taken"] == "2024-05-02T00:30:00" and sydney["taken_utc"] is None and sydney["offset"] is None
    assert sydney["zone_known"] is False and sydney["gps"]["lat"] == pytest.approx(-33.8677778)
    assert items["plain.png"]["capture"] is None
    assert items["paris.jpg"]["frames"] == 1 and items["paris.jpg"]["first_frame"] is False
    json.dumps(list(items.values()))  # the JSON stays valid

    # By the camera's clock (no zone given): what a person reads on the photo.
    assert listed(sessions, taken_since=dt.datetime(2024, 5, 2)) == ["sydney.heic"]
    assert listed(sessions, taken_since=dt.datetime(2024, 5, 1), taken_until=dt.datetime(2024, 5, 2)) == [
        "paris.heic", "paris.jpg"]
    # An instant: paris.heic (23:30+02:00 is 21:30Z) is after 21:00Z, paris.jpg (12:30Z) before it.
    assert listed(sessions, taken_since=dt.datetime(2024, 5, 1, 21, 0, tzinfo=dt.timezone.utc)) == [
        "paris.heic", "sydney.heic"]  # sydney's zone is unknown: its clock against the given clock (21:00)
    assert listed(sessions, camera="canon") == listed(sessions, camera="EOS R5") == ["paris.heic", "paris.jpg"]
    assert listed(sessions, camera="Canon EOS R5") == ["paris.heic", "paris.jpg"]
    assert listed(sessions, camera="iphone 15 pro") == listed(sessions, camera="APPLE") == ["sydney.heic"]
    assert listed(sessions, camera="iphone") == []  # the whole model, not a part of it
    assert listed(sessions, camera="canon", taken_since=dt.datetime(2024, 5, 1, 20)) == ["paris.heic"]
    if "kodak.kdc" in paths:
        assert listed(sessions, camera="kodak") == ["kodak_dc50.kdc"]
        assert listed(sessions, taken_until=dt.datetime(2000, 1, 1)) == ["kodak_dc50.kdc"]


@pytest.mark.e2e
def test_results_options_from_the_command_line(tmp_path, redis_url, astronaut):
    """`darkroom ingest` reads the metadata as it registers (no worker needed for it); `results`
    filters on it, and a bad time is a usage error naming the option."""
    from tests.harness import Darkroom

    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="phash")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "paris.jpg").write_bytes(photo("JPEG", astronaut[:64, :64], exif_block()))
    (archive / "sydney.heic").write_bytes(photo("HEIF", astronaut[:64, :64][::-1], exif_block(
        make="Apple", model="iPhone 15 Pro", when="2024:05:31 23:30:00", offset=None)))
    assert dr.run("ingest", "--in-place", str(archive)).returncode == 0
    done = dr.run("results", "--jsonl", "--taken-since", "2024-05-01", "--taken-until", "2024-05-31")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["capture"]["model"] for r in rows) == ["Canon EOS R5", "iPhone 15 Pro"]  # the 31st included
    one = dr.run("results", "--jsonl", "--camera", "apple")
    assert [json.loads(line)["path"] for line in one.stdout.splitlines()] == [str(archive / "sydney.heic")]
    bad = dr.run("results", "--taken-since", "May 1st")
    assert bad.returncode == 2 and "--taken-since" in bad.stderr


def test_registering_reads_the_header_only(tmp_path, astronaut):
    """The metadata comes with the header the producer already probes: no pixel is decoded for it."""
    data = photo("JPEG", astronaut, exif_block())
    calls = []
    real = Image.Image.load

    def counting(im):
        calls.append(im.format)
        return real(im)

    Image.Image.load = counting
    try:
        info = probe(data, **LIMITS)
    finally:
        Image.Image.load = real
    assert info.capture.make == "Canon" and calls == []


def test_capture_columns_are_what_the_json_shows():
    values = metadata.Capture(taken_local=dt.datetime(2024, 1, 1, 8), taken_offset=-300, make="SONY",
                              model="ILCE-7M3").values()
    cols = capture.columns(values, frames=3)
    assert cols["taken_at"] == dt.datetime(2024, 1, 1, 13, tzinfo=dt.timezone.utc)
    assert (cols["camera_make_key"], cols["camera_model_key"], cols["frames"]) == ("sony", "ilce-7m3", 3)
    assert dataclasses.asdict(metadata.Capture()) == {k: None for k in values}


def test_analyze_gives_the_capture_a_worker_stores(tmp_path, astronaut):
    import darkroom

    settings = Settings(data_dir=tmp_path, _env_file=None)
    path = tmp_path / "paris.jpg"
    path.write_bytes(photo("JPEG", astronaut[:64, :64], exif_block()))
    result = darkroom.analyze(path, tasks=["phash"], settings=settings)
    assert result["capture"]["taken"] == "2024-05-01T14:30:15.250000+02:00" and result["capture"]["make"] == "Canon"
    assert (result["frames"], result["first_frame"]) == (1, False)
    bare = darkroom.analyze(astronaut[:32, :32], tasks=["phash"], settings=settings)
    assert bare["capture"] is None and bare["frames"] == 1
