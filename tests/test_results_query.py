"""`results` at any size: filters, keyset pages, one photo by an index look-up, and the streamed output.

Real SQLite and PostgreSQL. A small ledger of known states, labels and faces is built through the
storage functions; each filter's images are compared with what the filter says in plain Python
over every image (the Results JSON's own fields). The plans at 200,000 images are in
tests/test_ledger_scale.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.settings import get_settings
from storage import files, ledger, results
from storage.db import make_engine, migrate, read_only, session_factory, transaction
from storage.models import DONE, FAILED, QUEUED, REJECTED, RUNNING, Face, Image, Label, PHash, TaskRun

WORK = [("normalize", ""), ("classify", "vgg16"), ("faces", "mtcnn")]
N_PHOTOS = 40
BASE_TIME = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
LABELS = ["tabby", "Egyptian_cat", "golden_retriever", "tiger_cat"]
HASH_A = 0x0123456789ABCDEF


def sha_of(i: int) -> str:
    return hashlib.sha256(f"photo-{i}".encode()).hexdigest()


def path_of(i: int) -> str:
    return f"/archive/2024/photo-{i}.jpg"


def build(sessions) -> None:
    """``N_PHOTOS`` photos whose state, labels, faces and registration time follow ``i``:

    - i % 5: 0 everything done, 1 classify failed, 2 everything queued, 3 faces running, 4 done;
      i % 10 == 9: classify ``rejected`` while the image is not (counted as failed); i % 11 == 6:
      the image rejected at registration (no runs); photo 1 registered with no task (done);
    - done classify runs: vgg16's labels, the top one ``LABELS[i % 4]`` scoring (i % 7) / 7 and
      "golden_retriever" second at 0.01; every third image also mobilenet_v2's, "tabby" at 0.8;
    - done faces runs: i % 4 faces;
    - registered i hours after ``BASE_TIME``; a PNG when i % 4 == 1, else a JPEG;
    - perceptual hashes on two of every three: i % 3 == 0 ``HASH_A`` with its i % 12 low bits
      flipped, i % 3 == 1 the inverse of ``HASH_A`` with its i % 10 low bits flipped (so each is
      within 8 bits of some of its kind and of none of the other).
    """
    with transaction(sessions) as s:
        for i in range(N_PHOTOS):
            rejected = "truncated JPEG" if i % 11 == 6 else None
            reg = files.register_file(s, path=path_of(i), size_bytes=1000 + i, mtime_ns=1, sha256=sha_of(i),
                                      fmt="PNG" if i % 4 == 1 else "JPEG", width=640, height=480, rejected_reason=rejected,
                                      work=[] if i == 1 else WORK)
            s.flush()
            s.execute(update(Image).where(Image.id == reg.image_id).values(created_at=BASE_TIME + dt.timedelta(hours=i)))
            if i % 3 != 2:
                value = HASH_A if i % 3 == 0 else ~HASH_A & (2**64 - 1)
                value ^= (1 << (i % 12 if i % 3 == 0 else i % 10)) - 1
                results.PHASHES.save(s, "", [(reg.image_id, f"{value:016x}")])
            if rejected or i == 1:
                continue
            runs = {r.task: r for r in s.scalars(select(TaskRun).where(TaskRun.image_id == reg.image_id))}
            kind = i % 5
            states = {0: dict.fromkeys(runs, DONE), 1: {"normalize": DONE, "classify": FAILED, "faces": DONE},
                      2: dict.fromkeys(runs, QUEUED), 3: {"normalize": DONE, "classify": QUEUED, "faces": RUNNING},
                      4: dict.fromkeys(runs, DONE)}[kind]
            if i % 10 == 9:
                states["classify"] = REJECTED
            for task, state in states.items():
                runs[task].status = state
                runs[task].error = f"{task} went wrong" if state in (FAILED, REJECTED) else None
            if states["classify"] == DONE:
                top = {"rank": 1, "class_id": i % 4, "label": LABELS[i % 4], "score": (i % 7) / 7}
                second = {"rank": 2, "class_id": 9, "label": "golden_retriever", "score": 0.01}
                results.LABELS.save(s, "vgg16", [(reg.image_id, [top, second])])
                if i % 3 == 0:
                    results.LABELS.save(s, "mobilenet_v2", [(reg.image_id, [
                        {"rank": 1, "class_id": 1, "label": "tabby", "score": 0.8}])])
            if states["faces"] == DONE:
                found = [{"box": [k, k, 10, 10], "confidence": 0.99, "keypoints": {}} for k in range(i % 4)]
                results.FACES.save(s, "mtcnn", [(reg.image_id, found)])


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request, tmp_path_factory):
    """The ledger of :func:`build`, made once per database for the module's tests, which only read
    it (a test that adds photos does so in a transaction it rolls back)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('results') / 'darkroom.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        name = f"darkroom_results_{uuid.uuid4().hex[:10]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    build(sessions)
    yield url, sessions
    engine.dispose()
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def aware(when: dt.datetime) -> dt.datetime:
    """A naive time (SQLite's, or a filter's) is UTC."""
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def oracle(sessions, flt: results.ResultFilter) -> list[str]:
    """The sha256s of the images ``flt`` describes, decided in Python over every image, in id order."""
    with sessions() as s:
        images = list(s.scalars(select(Image).order_by(Image.id)))
        labels = list(s.scalars(select(Label)))
        faces = list(s.scalars(select(Face)))
        hashes = {p.image_id: p.hash for p in s.scalars(select(PHash))}
        wanted = []
        for image in images:
            if flt.status is not None and ledger.image_status(image) != flt.status:
                continue
            if flt.label is not None:
                texts = {flt.label.lower(), flt.label.lower().replace(" ", "_")}
                if not any(lab.image_id == image.id and lab.label.lower() in texts
                           and (flt.model is None or lab.model == flt.model)
                           and (flt.min_score is None or lab.score >= flt.min_score) for lab in labels):
                    continue
            if flt.faces is not None:
                if not any(r.task == "faces" and r.status == DONE for r in image.runs):
                    continue
                n = sum(f.image_id == image.id for f in faces)
                if (n < flt.faces) if flt.faces_or_more else (n != flt.faces):
                    continue
            if flt.since is not None and aware(image.created_at) < aware(flt.since):
                continue
            if flt.format is not None and image.format != {"jpg": "JPEG"}.get(flt.format.lower(), flt.format.upper()):
                continue
            if flt.near is not None and (image.id not in hashes or not any(
                    other != image.id and bin((h ^ hashes[image.id]) & (2**64 - 1)).count("1") <= flt.near
                    for other, h in hashes.items())):
                continue
            wanted.append(image.sha256)
        return wanted


FILTERS = {
    "everything": results.ResultFilter(),
    "queued": results.ResultFilter(status=QUEUED),
    "running": results.ResultFilter(status=RUNNING),
    "done": results.ResultFilter(status=DONE),
    "failed (a failed or a rejected run)": results.ResultFilter(status=FAILED),
    "rejected": results.ResultFilter(status=REJECTED),
    "a label, any case, any model": results.ResultFilter(label="TABBY"),
    "a label with a space for its underscore": results.ResultFilter(label="egyptian cat", model="vgg16"),
    "a label of one model": results.ResultFilter(label="tabby", model="mobilenet_v2"),
    "a label scoring at least": results.ResultFilter(label="tabby", model="vgg16", min_score=0.5),
    "a second label": results.ResultFilter(label="golden_retriever", model="vgg16"),
    "a label nobody has": results.ResultFilter(label="tabb", model="vgg16"),
    "no faces": results.ResultFilter(faces=0),
    "two faces": results.ResultFilter(faces=2),
    "two faces or more": results.ResultFilter(faces=2, faces_or_more=True),
    "any number of faces": results.ResultFilter(faces=0, faces_or_more=True),
    "registered since": results.ResultFilter(since=BASE_TIME + dt.timedelta(hours=25)),
    "done since": results.ResultFilter(status=DONE, since=BASE_TIME + dt.timedelta(hours=25)),
    "failed with two faces or more": results.ResultFilter(status=FAILED, faces=2, faces_or_more=True),
    "queued since (a naive time is UTC)": results.ResultFilter(status=QUEUED, since=dt.datetime(2024, 5, 1, 20)),
    "a label of done photos with faces": results.ResultFilter(label="tabby", status=DONE, faces=1,
                                                              faces_or_more=True),
    "a format, any case, jpg for JPEG": results.ResultFilter(format="jpg"),
    "another format": results.ResultFilter(format="png"),
    "a format nobody has": results.ResultFilter(format="heic"),
    "failed PNGs": results.ResultFilter(format="PNG", status=FAILED),
    "a near-duplicate within 2 bits": results.ResultFilter(near=2),
    "a near-duplicate within 8 bits": results.ResultFilter(near=8),
    "done with a near-duplicate": results.ResultFilter(near=8, status=DONE),
    "a label and a near-duplicate": results.ResultFilter(label="tabby", near=8),
}
#: Filters the ledger gives no image (the rest must find some, or the comparison proves little).
EMPTY = {"a label nobody has", "a format nobody has"}


@pytest.mark.parametrize("name", list(FILTERS))
def test_each_filter_finds_exactly_the_images_it_describes(store, name, monkeypatch):
    _url, sessions = store
    flt = FILTERS[name]
    expected = oracle(sessions, flt)
    assert bool(expected) != (name in EMPTY), expected
    # Pages of 3, and a search that reads 3 candidates a statement: every boundary is crossed.
    monkeypatch.setattr(results, "SEARCH_BATCH", 3)
    with read_only(sessions) as s:
        streamed = [image.sha256 for page in results.iter_pages(s, flt, batch=3) for image in page]
    assert streamed == expected
    # One page after another by hand, each after the previous page's last id
    with sessions() as s:
        by_hand, after = [], None
        while page := results.select_page(s, flt, after=after, limit=4):
            assert len(page) <= 4 and all(img.runs is not None and img.files for img in page)
            by_hand += [img.sha256 for img in page]
            after = page[-1].id
    assert by_hand == expected


def test_the_filters_mean_what_the_ledger_says(store):
    """A few answers spelled out, so that the oracle itself is checked."""
    _url, sessions = store
    with sessions() as s:
        def ids(**kw) -> list[int]:
            number = {sha_of(i): i for i in range(N_PHOTOS)}
            return sorted(number[p.sha256] for page in results.iter_pages(s, results.ResultFilter(**kw)) for p in page)

        assert ids(status=REJECTED) == [6, 17, 28, 39]
        assert 1 in ids(status=DONE)  # no run at all: nothing left to do
        assert ids(status=RUNNING) == [3, 8, 13, 18, 23, 33, 38]  # 28 is rejected
        assert 9 in ids(status=FAILED) and 19 in ids(status=FAILED)  # a rejected run, the image not rejected
        assert ids(label="tabby", model="mobilenet_v2") == [0, 15, 24, 30]
        assert ids(faces=3) == [11, 15, 19, 31, 35]
        assert ids(faces=3, faces_or_more=True) == ids(faces=3)
        assert ids(since=BASE_TIME + dt.timedelta(hours=37)) == [37, 38, 39]


def test_a_filter_that_cannot_be_served_is_refused():
    with pytest.raises(ValueError, match="give label too"):
        results.ResultFilter(min_score=0.5)
    with pytest.raises(ValueError, match="unknown status"):
        results.ResultFilter(status="finished")
    with pytest.raises(ValueError, match="0 or more"):
        results.ResultFilter(faces=-1)


def test_keyset_pages_cover_every_image_exactly_once(store):
    _url, sessions = store
    with sessions() as s:
        every = [img.id for page in results.iter_pages(s, batch=7) for img in page]
        assert len(every) == N_PHOTOS and every == sorted(every)
        # --limit: only that many, in pages of the batch; --after: from the next one on
        assert [len(p) for p in results.iter_pages(s, limit=10, batch=4)] == [4, 4, 2]
        pieces, after = [], None
        while True:
            page = [img.id for p in results.iter_pages(s, after=after, limit=9, batch=4) for img in p]
            if not page:
                break
            pieces.append(page)
            after = page[-1]
        assert [i for piece in pieces for i in piece] == every
        assert [len(p) for p in pieces] == [9, 9, 9, 9, 4]


def test_a_stream_lets_each_page_go(store):
    """A stream's pages are rows, not objects the session keeps: memory does not grow with the store;
    its Results JSON is the same as for the objects of a page."""
    _url, sessions = store
    with read_only(sessions) as s:
        held = []
        for page in results.iter_pages(s, batch=5):
            held.append(len(s.identity_map))
            assert len(page) == 5
            objects = results.select_page(s, after=page[0].id - 1, limit=5)
            assert [o.id for o in objects] == [p.id for p in page]
            assert results.results_json(s, page, catalog_stores()) == results.results_json(s, objects, catalog_stores())
            s.expunge_all()
    assert len(held) == N_PHOTOS // 5
    assert max(held) == 0, held


def catalog_stores():
    from darkroom import catalog

    return catalog.result_stores()


def test_one_photo_by_path_sha256_or_prefix(store, tmp_path, monkeypatch):
    _url, sessions = store
    with sessions() as s:
        assert results.find_image(s, path_of(12)).sha256 == sha_of(12)
        assert results.find_image(s, sha_of(12)).files[0].path == path_of(12)
        assert results.find_image(s, sha_of(12).upper()).sha256 == sha_of(12)
        assert results.find_image(s, sha_of(12)[:8]).sha256 == sha_of(12)
        assert results.find_image(s, sha_of(12)[:7]) is None  # too short to be a prefix
        assert results.find_image(s, "/archive/2024/nothing.jpg") is None
        assert results.find_image(s, "f" * 64) is None
        # several selectors at once: each image once, in id order
        found = results.find_images(s, [sha_of(3), path_of(1), sha_of(3)[:10], "nothing"])
        assert [img.sha256 for img in found] == [sha_of(1), sha_of(3)]
    # a relative path and a link are resolved against the working folder
    (tmp_path / "real").mkdir()
    photo = tmp_path / "real" / "x.jpg"
    photo.write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    with sessions() as s:
        files.register_file(s, path=str(photo), size_bytes=1, mtime_ns=1, sha256="ab" * 32, fmt="JPEG", width=1,
                            height=1, rejected_reason=None, work=[])
        assert results.find_image(s, "real/x.jpg").sha256 == "ab" * 32
        assert results.find_image(s, "link/x.jpg").sha256 == "ab" * 32
        s.rollback()


def test_a_prefix_of_several_photos_is_ambiguous(store):
    _url, sessions = store
    with sessions() as s:
        for sha in ("deadbeef" + "0" * 56, "deadbeef" + "1" * 56):
            files.register_file(s, path=f"/x/{sha}.jpg", size_bytes=1, mtime_ns=1, sha256=sha, fmt="JPEG", width=1,
                                height=1, rejected_reason=None, work=[])
        with pytest.raises(results.AmbiguousSelector, match="more than one"):
            results.find_image(s, "deadbeef")
        assert results.find_image(s, "deadbeef1").sha256.endswith("1" * 56)
        assert len(results.find_images(s, ["deadbeef"])) == 2
        s.rollback()


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture()
def cli(monkeypatch, tmp_path, store):
    """`darkroom results ARGS` in this process on the ledger: (exit code, stdout, stderr)."""
    url, _sessions = store
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("DARKROOM_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("DARKROOM_DATABASE_URL", url)
    monkeypatch.setenv("DARKROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "160")
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str):
        get_settings.cache_clear()
        done = runner.invoke(app, ["results", *args], catch_exceptions=False)
        return done.exit_code, done.stdout, done.stderr

    invoke.sessions = _sessions
    yield invoke
    get_settings.cache_clear()


def test_json_is_written_as_it_goes_and_is_valid(cli, store):
    _url, sessions = store
    code, stdout, _ = cli("--json")
    assert code == 0
    data = json.loads(stdout)
    assert [item["sha256"] for item in data] == oracle(sessions, results.ResultFilter())
    # "[", one image a line separated by ",", "]"
    lines = stdout.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == N_PHOTOS + 2
    assert all(line.endswith(",") for line in lines[1:-2]) and not lines[-2].endswith(",")
    assert json.loads(lines[1].rstrip(","))["sha256"] == sha_of(0)
    # JSON lines: one object a line, the same objects
    code, stdout, _ = cli("--jsonl")
    assert code == 0 and [json.loads(line) for line in stdout.splitlines()] == data
    # nothing matches: an empty array, and no lines
    code, stdout, _ = cli("--json", "--label", "zebra")
    assert (code, stdout) == (0, "[]\n") and json.loads(stdout) == []
    code, stdout, _ = cli("--jsonl", "--label", "zebra")
    assert (code, stdout) == (0, "")


@pytest.mark.parametrize(("args", "flt"), [
    (["--status", "failed"], results.ResultFilter(status=FAILED)),
    (["--label", "Egyptian cat"], results.ResultFilter(label="egyptian_cat", model="vgg16")),
    (["--label", "tabby", "--model", "mobilenet_v2"], results.ResultFilter(label="tabby", model="mobilenet_v2")),
    (["--label", "tabby", "--min-score", "0.5"], results.ResultFilter(label="tabby", model="vgg16", min_score=0.5)),
    (["--faces", "2"], results.ResultFilter(faces=2)),
    (["--faces", "2+"], results.ResultFilter(faces=2, faces_or_more=True)),
    (["--faces", "0"], results.ResultFilter(faces=0)),
    (["--format", "jpg"], results.ResultFilter(format="JPEG")),
    (["--near", "8", "--status", "done"], results.ResultFilter(near=8, status=DONE)),
    (["--since", "2024-05-02T06:00+00:00", "--status", "done"],
     results.ResultFilter(status=DONE, since=BASE_TIME + dt.timedelta(hours=30))),
])
def test_each_option_filters_as_the_storage_filter_does(cli, store, args, flt):
    _url, sessions = store
    code, stdout, stderr = cli("--jsonl", *args)
    assert code == 0, stderr
    found = [json.loads(line)["sha256"] for line in stdout.splitlines()]
    assert found == oracle(sessions, flt) and found


def test_since_takes_a_local_date(cli, store, monkeypatch):
    _url, sessions = store
    monkeypatch.setenv("TZ", "UTC")
    __import__("time").tzset()
    try:
        code, stdout, _ = cli("--jsonl", "--since", "2024-05-02")
    finally:
        monkeypatch.delenv("TZ")
        __import__("time").tzset()
    assert code == 0
    assert [json.loads(line)["sha256"] for line in stdout.splitlines()] == oracle(
        sessions, results.ResultFilter(since=BASE_TIME + dt.timedelta(days=1)))


def test_limit_and_after_page_through_every_image_once(cli, store):
    _url, sessions = store
    seen, after = [], []
    for _ in range(10):
        code, stdout, stderr = cli("--json", "--limit", "15", *after)
        assert code == 0, stderr
        page = [item["sha256"] for item in json.loads(stdout)]
        if not page:
            break
        seen += page
        after = ["--after", page[-1]]
    assert seen == oracle(sessions, results.ResultFilter())
    # filtered pages too
    code, stdout, _ = cli("--jsonl", "--status", "done", "--limit", "3")
    first = [json.loads(line)["sha256"] for line in stdout.splitlines()]
    code, stdout, _ = cli("--jsonl", "--status", "done", "--after", first[-1][:12])
    rest = [json.loads(line)["sha256"] for line in stdout.splitlines()]
    assert first + rest == oracle(sessions, results.ResultFilter(status=DONE)) and len(first) == 3


@pytest.mark.parametrize(("args", "says"), [
    (["--since", "yesterday"], "--since: 'yesterday' is not a date or time"),
    (["--after", "f" * 64], "--after: no image has the sha256"),
    (["--after", "tooshort"], "--after: no image has the sha256"),
    (["--faces", "two"], "--faces: 'two' is not a number of faces"),
    (["--status", "finished"], "--status: 'finished' is not a state"),
    (["--min-score", "0.5"], "--min-score and --model qualify --label"),
    (["--label", "tabby", "--model", "resnet50"], "--model: no labels from resnet50 are stored (models with labels: "
                                                  "mobilenet_v2, vgg16)"),
    (["--json", "--jsonl"], "give --json or --jsonl, not both"),
    ([sha_of(1), "--status", "done"], "not both"),
])
def test_a_bad_option_is_one_line_and_exit_2(cli, args, says):
    code, stdout, stderr = cli(*args)
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and says in stderr, stderr


def test_selectors_still_name_photos_and_an_unknown_one_fails(cli):
    code, stdout, _ = cli("--json", path_of(5), sha_of(2)[:10])
    assert code == 0
    assert [item["sha256"] for item in json.loads(stdout)] == [sha_of(2), sha_of(5)]
    code, _stdout, stderr = cli("/archive/none.jpg")
    assert code == 1 and "no image matches /archive/none.jpg" in stderr


def test_the_table_streams_a_page_at_a_time_as_one_table(cli, monkeypatch):
    from darkroom.cli import ledger as commands

    monkeypatch.setattr(commands, "RESULTS_PAGE", 7)
    code, stdout, _ = cli()
    assert code == 0
    rows = [line for line in stdout.splitlines() if "photo-" in line]
    assert len(rows) == N_PHOTOS  # one line each, pages included
    assert sum("status" in line and "path" in line for line in stdout.splitlines()) == 1  # one header
    assert len({line.index(" ", line.index("photo-")) for line in rows}) <= 2  # the columns line up
    code, stdout, stderr = cli("--status", "running", "--label", "zebra")
    assert code == 0 and "no image matches the filters" in stderr


def test_a_long_stream_finds_the_same_near_duplicates_in_an_index_in_memory(cli, monkeypatch):
    """Past NEAR_INDEX_AFTER images, `results` holds every hash in memory and finds near-duplicates
    there, with no look-up per photo: the same lists as the look-ups through the bands."""
    from darkroom.cli import ledger as commands

    monkeypatch.setattr(results.PHashResults, "LIMIT", 6)  # the first 6 by image id, both ways
    monkeypatch.setattr(commands, "NEAR_INDEX_AFTER", 10**9)
    code, by_bands, _ = cli("--jsonl")
    assert code == 0
    monkeypatch.setattr(commands, "NEAR_INDEX_AFTER", 0)
    monkeypatch.setattr(commands, "RESULTS_PAGE", 7)
    # As when some hashes were saved before pairs were stored (the index is then worth building).
    monkeypatch.setattr(results.PHashResults, "looks_up", lambda *_a: True)

    def no_lookup(*_args, **_kwargs):
        raise AssertionError("a near-duplicate look-up per photo in a long stream")

    monkeypatch.setattr(results.PHashResults, "near", no_lookup)
    code, by_index, _ = cli("--jsonl")
    assert code == 0 and by_index == by_bands
    items = [json.loads(line) for line in by_bands.splitlines()]
    near = {item["sha256"]: item["near_duplicates"] for item in items if item["phash"]}
    assert len(near) == 27 and sum(len(n) == 6 for n in near.values()) >= 10
    kind = {sha_of(i): i % 3 for i in range(N_PHOTOS)}
    assert all(kind[other] == kind[sha] for sha, others in near.items() for other in others)


def test_the_configured_classifier_without_labels_yet_matches_nothing(cli, monkeypatch):
    """Only a --model the person typed is checked against the stored models (a typo would find nothing)."""
    monkeypatch.setenv("DARKROOM_CLASSIFIER_MODEL", "resnet50")
    code, stdout, stderr = cli("--json", "--label", "tabby")
    assert (code, stdout) == (0, "[]\n"), stderr
    code, stdout, _ = cli("--jsonl", "--label", "tabby", "--model", "vgg16")
    assert code == 0 and len(stdout.splitlines()) == len(oracle(cli.sessions, results.ResultFilter(
        label="tabby", model="vgg16")))


@pytest.mark.parametrize("args", [
    ["--jsonl"], ["--json"], ["--jsonl", "--label", "golden retriever"], ["--jsonl", "--status", "done", "--limit", "12"],
    ["--json", "--faces", "1+", "--after", sha_of(3)],
])
def test_a_stream_in_worker_processes_is_the_stream_of_one_process(cli, monkeypatch, args):
    """Past PARALLEL_AFTER images the rest of a stream is read and written by worker processes, each
    with a connection of its own (storage.stream): the same bytes, in the same order, as one process."""
    from darkroom.cli import ledger as commands
    from storage import stream

    monkeypatch.setattr(commands, "RESULTS_PAGE", 4)
    monkeypatch.setattr(commands, "PARALLEL_AFTER", 4)
    code, alone, stderr = cli(*args, "--jobs", "1")
    assert code == 0, stderr
    pages = []
    real = stream.json_pages

    def counted(ids, *a, **kw):
        for count, text in real(ids, *a, **kw):
            pages.append(count)
            yield count, text

    monkeypatch.setattr(stream, "json_pages", counted)
    code, together, stderr = cli(*args, "--jobs", "3")
    assert code == 0, stderr
    assert together == alone
    assert len(pages) >= 2 and all(0 < n <= 4 for n in pages)  # the workers wrote pages of their own
    if "--json" in args:
        json.loads(together)


def test_a_page_of_every_image_in_its_span_reads_as_its_ids_do(store):
    """A page of every image from its first id to its last is read by ranges of the indexes
    (results.Page): the same Results JSON as reading each of its ids."""
    from darkroom import catalog

    _url, sessions = store
    with read_only(sessions) as s:
        pages = list(results.iter_page_ids(s, batch=9))
        assert all(isinstance(page, results.Page) and page.span == (page[0], page[-1]) for page in pages)
        for page in pages:
            spanned = results.load_rows(s, page)
            by_ids = results.load_rows(s, list(page))
            assert results.Page is type(spanned) and [r.id for r in spanned] == [r.id for r in by_ids] == page
            assert (results.results_json(s, spanned, catalog.result_stores())
                    == results.results_json(s, by_ids, catalog.result_stores()))
        # a filtered stream's pages skip images: read by their ids
        assert not any(isinstance(page, results.Page) for page in results.iter_page_ids(
            s, results.ResultFilter(status=DONE), batch=9))
