"""File names that are not valid UTF-8 (an archive copied from an old Windows machine or a camera card:
``caf\\xe9.jpg`` in Latin-1) are recorded, shown with their bytes escaped, and read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from storage import files
from storage.db import make_engine, migrate, session_factory, transaction
from storage.models import SourceFile, shown

LATIN1 = b"caf\xe9.jpg"  # "café.jpg" as Latin-1 bytes: not valid UTF-8


def latin1_photo(folder: Path, pixels) -> str:
    """A photo whose name is the Latin-1 bytes above; returns its path as Python holds it."""
    raw = os.fsencode(folder) + b"/" + LATIN1
    Image.fromarray(pixels).save(raw, format="JPEG", quality=90)
    path = os.fsdecode(raw)
    assert path.endswith("caf\udce9.jpg")  # a lone surrogate: the database drivers refuse it
    return path


def test_shown_escapes_only_what_is_not_utf8():
    assert shown("/in/caf\udce9.jpg") == "/in/caf\\xe9.jpg"
    assert shown("/in/café 写真.jpg") == "/in/café 写真.jpg"
    assert shown("/in/a\\b.jpg") == "/in/a\\b.jpg"
    assert shown("/in/x\ud800y") == "/in/x\\ud800y"


def test_a_name_that_is_not_utf8_is_recorded_found_and_read(tmp_path, db_url, astronaut):
    path = latin1_photo(tmp_path, astronaut)
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        reg = files.register_file(s, path=path, size_bytes=10, mtime_ns=1, sha256="a" * 64, fmt="JPEG", width=512,
                                  height=512, rejected_reason=f"{path}: a reason naming it", work=[])
    with sessions() as s:
        assert s.query(SourceFile.path).scalar() == str(tmp_path / "caf\\xe9.jpg")  # stored and shown escaped
        assert files.file_signatures(s, [path]) == {path: (10, 1)}  # looked up by the name the walk gives
        _where, [original] = files.originals(s, reg.image_id)
    assert original.path == path and Path(original.path).read_bytes()[:3] == b"\xff\xd8\xff"  # readable
    assert files.readable_path(str(tmp_path / "plain.jpg")) == str(tmp_path / "plain.jpg")


@pytest.mark.e2e
def test_up_exit_when_idle_returns_with_such_a_name_and_the_json_stays_valid(tmp_path, redis_url, astronaut):
    from tests.harness import Darkroom

    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="phash")
    dr.inbox.mkdir()
    latin1_photo(dr.inbox, astronaut)
    Image.fromarray(astronaut[:, ::-1]).save(dr.inbox / "plain.jpg")
    archive = tmp_path / "archive"
    archive.mkdir()
    latin1_photo(archive, astronaut[::-1])
    assert dr.run("ingest", "--in-place", str(archive)).returncode == 0  # held by reference: read by its name
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "caf\\xe9.jpg" in done.stdout
    assert "Logging error" not in done.stderr, done.stderr  # its log lines are written, not lost
    assert "caf\\udce9.jpg" in (dr.data / "logs" / "darkroom.log").read_text()
    listing = dr.run("results", "--json")
    assert listing.returncode == 0, listing.stderr
    results = {r["path"]: r for r in json.loads(listing.stdout)}
    assert set(results) == {str(dr.inbox / "caf\\xe9.jpg"), str(dr.inbox / "plain.jpg"),
                            str(archive / "caf\\xe9.jpg")}
    assert all(r["status"] == "done" for r in results.values()), results
    assert [r["sha256"] for r in dr.results(str(dr.inbox / "caf\\xe9.jpg"))] == [
        results[str(dr.inbox / "caf\\xe9.jpg")]["sha256"]]


def test_a_camera_raw_with_such_a_name_is_read_as_a_raw(tmp_path):
    from tasks.imaging import decode, probe
    from tests.test_formats import KDC

    if not KDC.is_file():
        pytest.skip(f"the real camera RAW {KDC} is absent (the shared test data is not mounted here)")
    raw = os.fsencode(tmp_path) + b"/caf\xe9.kdc"
    with open(raw, "wb") as fh:  # a copy in this test's folder only
        fh.write(KDC.read_bytes())
    info = probe(os.fsdecode(raw), max_pixels=10**8, max_bytes=10**8)  # LibRaw takes UTF-8 names only
    assert (info.format, info.decoder, info.width) == ("RAW", "raw:full", 768)  # not its 96x64 TIFF preview
    assert decode(os.fsdecode(raw)).shape == (512, 768, 3)
