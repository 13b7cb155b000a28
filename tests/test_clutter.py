"""An archive's clutter — sidecars, catalogues, videos, system files — and ignore patterns (the
DARKROOM_IGNORE setting, a .darkroomignore in the inbox or archive root): left alone, never
rejected, and counted in `status` by kind, through the real watcher and `darkroom ingest`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from darkroom.settings import Settings
from producer.files import IGNORE_FILE, IgnoreError, IgnoreRules, walk
from producer.registrar import Outcome, Registrar
from producer.watcher import InboxWatcher
from storage import ignored
from storage.db import make_engine, migrate
from tests.harness import Darkroom
from worker.app import create_app


def tree(root: Path, photo, files: dict) -> None:
    """``files``: relative path -> bytes, or pixels (None: ``photo``) written as a real JPEG."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(data, bytes):
            Image.fromarray(photo if data is None else data).save(path, format="JPEG", quality=85)
        else:
            path.write_bytes(data)


MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + bytes(64)  # a QuickTime header: rejected if taken


def test_the_rules_say_what_is_left_alone_and_why(tmp_path):
    rules = IgnoreRules(tmp_path, ["*.png", "!keep.png"])
    rules.RELOAD_SECONDS = 0  # the file below is looked at again on every call
    kinds = {rel: rules.kind(tmp_path / rel) for rel in (
        "IMG_1.JPG", "IMG_1.XMP", "IMG_1.AAE", "MVI_1.THM", "clip.MOV", "a/b/holiday.mp4", "x.3gp", "Thumbs.db",
        "sub/.DS_Store", "._IMG_1.JPG", "desktop.ini", "Catalog.lrcat", "Catalog.lrcat-wal", "scan.png",
        "keep.png", "memo.WAV")}
    assert kinds == {
        "IMG_1.JPG": None, "IMG_1.XMP": "sidecar", "IMG_1.AAE": "sidecar", "MVI_1.THM": "sidecar",
        "clip.MOV": "video", "a/b/holiday.mp4": "video", "x.3gp": "video", "Thumbs.db": "system",
        "sub/.DS_Store": "system", "._IMG_1.JPG": "system", "desktop.ini": "system", "Catalog.lrcat": "catalogue",
        "Catalog.lrcat-wal": "catalogue", "scan.png": "pattern", "keep.png": None, "memo.WAV": "audio"}
    assert rules.kind(tmp_path / "Catalog Previews.lrdata", folder=True) == "catalogue"
    assert rules.kind(tmp_path / "s" / "@eaDir", folder=True) == "system"
    assert rules.kind(tmp_path / "outside.mov".replace("outside", "../outside")) is None  # not below the root

    # The root's .darkroomignore comes last: it can take videos back and leave more alone, and it is
    # read again when it changes.
    (tmp_path / IGNORE_FILE).write_text("# mine\n!*.mov\nprivate/\n")
    assert rules.kind(tmp_path / "clip.MOV") == "video"  # built-ins match in any case, gitignore does not
    assert rules.kind(tmp_path / "clip.mov") is None
    assert rules.kind(tmp_path / "private", folder=True) == "pattern"
    assert rules.kind(tmp_path / "private" / "a.jpg") == "pattern"
    time.sleep(0.01)
    (tmp_path / IGNORE_FILE).write_text("*.jpg\n")
    assert rules.kind(tmp_path / "IMG_1.JPG") is None and rules.kind(tmp_path / "a.jpg") == "pattern"
    assert rules.kind(tmp_path / "clip.mov") == "video"

    # A folder left alone is not entered: it is yielded itself (one ignored thing).
    (tmp_path / IGNORE_FILE).unlink()
    for rel in ("a.jpg", "Previews.lrdata/1/2/x.lrprev", "Previews.lrdata/y.lrprev", "b/@eaDir/t.jpg", "b/c.jpg",
                ".DS_Store", ".hidden.jpg.XYZ123"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    walked = sorted(p.relative_to(tmp_path).as_posix() for p in walk(tmp_path, rules))
    assert walked == [".DS_Store", "Previews.lrdata", "a.jpg", "b/@eaDir", "b/c.jpg"]  # rsync's temp name: unseen


def test_a_broken_ignore_file_is_named(tmp_path):
    (tmp_path / IGNORE_FILE).write_text("ok/\n[z-a].jpg\n")
    with pytest.raises(IgnoreError, match=r"\.darkroomignore.*pattern 2"):
        IgnoreRules(tmp_path).check()
    with pytest.raises(ValueError, match="ignore\n.*'!' is not a gitignore pattern"):
        Settings(ignore="*.png,!", _env_file=None)


def _counts(registrar) -> dict[str, int]:
    with registrar.sessions() as s:
        return ignored.counts(s)


def test_the_watcher_leaves_clutter_alone_and_counts_it_once(tmp_path, redis_url, astronaut):
    inbox = tmp_path / "inbox"
    tree(inbox, astronaut[:128, :128], {
        "IMG_1.JPG": None, "IMG_1.XMP": b"<x:xmpmeta/>", "IMG_1.MOV": MOV, ".DS_Store": bytes(16),
        "Thumbs.db": bytes(16), "scan.png": None, "private/secret.jpg": None, IGNORE_FILE: b"private/\n",
    })
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url, tasks=["phash"], ignore="*.png",
                        _env_file=None)
    migrate(make_engine(settings.db_url))
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[inbox])
    watcher = InboxWatcher(inbox, registrar, settle_seconds=0.2, rescan_seconds=0)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), kwargs={"tick": 0.05}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while watcher.counts[Outcome.NEW] + watcher.counts[Outcome.IGNORED] < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        (inbox / "later.mp4").write_bytes(MOV)  # an event, not the scan
        while watcher.counts[Outcome.IGNORED] < 7 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert watcher.counts[Outcome.NEW] == 1 and watcher.counts[Outcome.IGNORED] == 7, watcher.counts
    assert watcher.counts[Outcome.REJECTED] == 0
    assert _counts(registrar) == {"pattern": 2, "sidecar": 1, "system": 2, "video": 2}
    # A rescan hands nothing over again; a new watcher (a restart) finds them recorded: counted once.
    assert watcher.scan() == 0
    again = InboxWatcher(inbox, registrar, settle_seconds=0, rescan_seconds=0)
    again.scan()
    again.step()
    assert again.counts[Outcome.IGNORED] == 7 and _counts(registrar) == {"pattern": 2, "sidecar": 1, "system": 2,
                                                                         "video": 2}
    # The watcher remembers the ignored files the inbox holds, not those deleted since.
    remembered = set(watcher.ignored)
    assert inbox / "later.mp4" in remembered
    (inbox / "later.mp4").unlink()
    assert watcher.scan() == 0 and watcher.ignored == remembered - {inbox / "later.mp4"}
    registrar.close()


@pytest.mark.e2e
def test_ingest_leaves_an_archives_clutter_alone_and_status_counts_it(tmp_path, redis_url, astronaut):
    archive = tmp_path / "archive"
    tree(archive, astronaut[:128, :128], {
        "2024/IMG_0001.JPG": None, "2024/IMG_0001.XMP": b"<x/>", "2024/IMG_0001.AAE": b"<plist/>",
        "2024/MVI_0002.MOV": MOV, "2024/MVI_0002.THM": bytes(32), "2024/clip.mp4": MOV,
        "2024/.DS_Store": bytes(16), "2024/._IMG_0001.JPG": bytes(16), "Thumbs.db": bytes(16), "desktop.ini": b"[x]",
        "Lightroom/Catalog.lrcat": bytes(64), "Lightroom/Catalog Previews.lrdata/0/A/x.lrprev": bytes(64),
        "2024/@eaDir/IMG_0001.JPG/SYNOPHOTO_THUMB_XL.jpg": None,  # a NAS's thumbnail, a real JPEG
        "drafts/draft.jpg": None, "scan.png": None, "2023/IMG_0003.JPG": astronaut[128:256, :128], IGNORE_FILE: b"drafts/\n",
    })
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="phash", ignore="*.png")
    done = dr.run("ingest", "--in-place", str(archive))
    assert done.returncode == 0, done.stdout + done.stderr  # nothing rejected
    assert "2 new" in done.stdout and "14 ignored" in done.stdout, done.stdout
    expected = {"sidecar": 3, "video": 2, "system": 5, "catalogue": 2, "pattern": 2}
    status = dr.run("status", "--json")
    assert json.loads(status.stdout)["ignored"] == expected, status.stdout
    shown = dr.run("status")
    assert "ignored (left alone, not registered): 2 catalogue, 2 by a pattern, 3 sidecar, 5 system, 2 video" in (
        shown.stdout), shown.stdout
    assert sorted(Path(r["path"]).name for r in dr.results()) == ["IMG_0001.JPG", "IMG_0003.JPG"]
    again = dr.run("ingest", "--in-place", "--changed", str(archive))
    assert again.returncode == 0 and "14 ignored" in again.stdout, again.stdout
    assert json.loads(dr.run("status", "--json").stdout)["ignored"] == expected  # each path counted once
