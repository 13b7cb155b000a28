"""`darkroom serve` (darkroom.web): the pages, the JSON API, pictures by sha256, metrics, and its
safety, with FastAPI's test client against a real SQLite and a real PostgreSQL store filled by the
real worker pipeline (``worker.pipeline.execute``: normalize and phash, each photo's thumbnail made at
processing time); labels and faces are stored through the storage API (a classifier and MTCNN are
the other tests' business), the boxed photo drawn by ``tasks.draw`` on the real photo.

Raw requests that a client library would normalize (``%2e%2e``, ``..``) go to a real uvicorn on a
free port through ``http.client``, which sends a path as written.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import re
import subprocess
import sys
import threading
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ROOT, FakeTask, base_env, free_port

XSS = "<img src=x onerror=alert(1)>.jpg"
#: The photos of the store: name -> the scikit-image photo it is (the XSS-named one is a mirrored astronaut).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@dataclasses.dataclass
class Store:
    """A filled store: its settings, session factory, and each photo's sha256 by name."""

    settings: object
    sessions: object
    shas: dict[str, str]
    inbox: Path


def register(sessions, blobs, path: Path, work) -> tuple[str, list[int]]:
    """Register ``path`` as the producer does: its blob stored, its runs created (or rejected)."""
    from storage import files as registry
    from storage.db import transaction
    from tasks.imaging import BadImage, probe

    sha, size = blobs.put_file(path)
    fmt = width = height = reason = None
    try:
        info = probe(blobs.path_for(sha), max_pixels=10**8, max_bytes=10**9)
        fmt, width, height = info.format, info.width, info.height
    except BadImage as exc:
        reason = f"{path}: {exc}"
    with transaction(sessions) as s:
        reg = registry.register_file(s, path=str(path), size_bytes=size, mtime_ns=1, sha256=sha, fmt=fmt, width=width,
                                     height=height, rejected_reason=reason, work=[] if reason else work)
    return sha, reg.run_ids


def fill_store(folder: Path, db_url: str, broker_url: str) -> Store:
    """A migrated store at ``db_url`` with the four shipped photos, a fifth named like an XSS attack
    and a text file named notes.jpg (rejected): normalize and phash run by the real pipeline; chelsea
    labelled tabby, the astronaut suit and with one face (its boxed photo and crop stored)."""
    from sqlalchemy import select

    from darkroom.settings import Settings
    from storage import results
    from storage.blobs import BlobStore
    from storage.db import make_engine, migrate, session_factory, transaction
    from storage.models import Image, TaskRun
    from tasks import imaging
    from tasks.draw import draw_boxes
    from tests import photos as pictures
    from worker.pipeline import execute
    from worker.runtime import Runtime

    inbox = folder / "inbox"
    inbox.mkdir(parents=True)
    for name in PHOTOS:
        pictures.write_jpeg(pictures.shipped(name), inbox / f"{name}.jpg")
    pictures.write_jpeg(np.ascontiguousarray(pictures.shipped("astronaut")[:, ::-1]), inbox / XSS)
    (inbox / "notes.jpg").write_text("not a photo at all")
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    settings = Settings(data_dir=folder / "data", database_url=db_url, broker_url=broker_url, tasks="normalize,phash")
    blobs = BlobStore(settings.blob_dir)
    rt = Runtime(settings=settings, sessions=sessions, blobs=blobs, identity="test:1")
    work = [("normalize", ""), ("phash", "")]
    shas: dict[str, str] = {}
    runs: list[int] = []
    for name in [*PHOTOS, "xss", "notes"]:
        path = inbox / (XSS if name == "xss" else f"{name}.jpg")
        shas[name], ids = register(sessions, blobs, path, work)
        runs += ids
    for run_id in runs:
        task = FakeTask()
        task.runtime, task.app = rt, None
        execute(task, run_id)
    with transaction(sessions) as s:
        ids = {name: s.scalar(select(Image.id).where(Image.sha256 == sha)) for name, sha in shas.items()}
        results.LABELS.save(s, "vgg16", [
            (ids["chelsea"], [{"rank": 0, "class_id": 281, "label": "tabby", "score": 0.71},
                              {"rank": 1, "class_id": 282, "label": "tiger_cat", "score": 0.2}]),
            (ids["coffee"], [{"rank": 0, "class_id": 967, "label": "espresso", "score": 0.9}]),
            (ids["astronaut"], [{"rank": 0, "class_id": 834, "label": "suit", "score": 0.42}])])
        face = {"box": [170, 50, 110, 140], "confidence": 0.999,
                "keypoints": {"left_eye": [200, 100], "right_eye": [250, 100], "nose": [225, 130],
                              "mouth_left": [205, 160], "mouth_right": [245, 160]}}
        results.FACES.save(s, "mtcnn", [(ids["astronaut"], [face])])
        photo = pictures.shipped("astronaut")
        boxed = draw_boxes(photo, [tuple(face["box"])])
        crop = np.ascontiguousarray(photo[50:190, 170:280])
        results.save_artifacts(s, ids["astronaut"], ("faces_boxed", "face_crop"), [
            results.ArtifactData("faces_boxed", 0, "image/jpeg", 512, 512, imaging.encode(boxed)),
            results.ArtifactData("face_crop", 0, "image/jpeg", crop.shape[1], crop.shape[0], imaging.encode(crop))])
        for name in ("astronaut", "chelsea", "coffee", "rocket", "xss"):
            s.add(TaskRun(image_id=ids[name], task="faces", model="mtcnn", status="done", attempts=1))
    return Store(settings=settings, sessions=sessions, shas=shas, inbox=inbox)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request, tmp_path_factory, redis_server):
    folder = tmp_path_factory.mktemp(f"web-{request.param}")
    if request.param == "sqlite":
        yield fill_store(folder, f"sqlite:///{folder / 'darkroom.db'}", redis_server)
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = request.getfixturevalue("postgres_server")
    name = f"darkroom_web_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    filled = fill_store(folder, make_url(admin_url).set(database=name).render_as_string(hide_password=False),
                        redis_server)
    yield filled
    filled.sessions.kw["bind"].dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def client(store):
    from fastapi.testclient import TestClient

    from darkroom.web import create_app

    with TestClient(create_app(store.settings, store.sessions)) as c:
        yield c


def results_cli_json(store, *shas: str) -> list[dict]:
    """The Results JSON as `darkroom results --json` builds it (catalog.results_json)."""
    from darkroom import catalog
    from storage import results

    with store.sessions() as s:
        return catalog.results_json(s, results.find_images(s, list(shas)), store.settings)


def names_in(html: str) -> list[str]:
    return re.findall(r'href="/photos/([0-9a-f]{64})"', html)


# --- pages ------------------------------------------------------------------------------------------


def test_overview_shows_counts_queues_and_problems(client, store):
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert 'data-run="normalize:done">5<' in html and 'data-run="phash:done">5<' in html
    assert 'data-image="done">5<' in html and 'data-image="rejected">1<' in html
    assert "notes.jpg" in html  # the rejection, with its reason
    assert re.search(r'<span class="pill">cpu \d+</span>', html)
    status = client.get("/api/status").json()
    assert status["images"] == {"done": 5, "rejected": 1}
    assert status["tasks"] == ["normalize", "faces", "phash"]  # the catalog's order
    assert status["runs"]["normalize:done"] == 5 and status["runs"]["phash:done"] == 5
    assert set(status["queues"]) == {"cpu", "gpu"}
    assert status["throughput"]["runs_per_second"] > 0  # ten runs just ended
    assert status["pending_runs"] == 0 and status["eta_seconds"] is None
    assert any("notes.jpg" in (p["path"] or "") for p in status["problems"])


def test_gallery_filters_and_keyset_pages(client, store):
    shas = store.shas
    everything = names_in(client.get("/gallery").text)
    assert sorted(everything) == sorted(shas.values())
    assert names_in(client.get("/gallery", params={"label": "tabby"}).text) == [shas["chelsea"]]
    assert names_in(client.get("/gallery", params={"label": "tabby", "model": "vgg16", "min_score": "0.7"}).text) == [
        shas["chelsea"]]
    assert names_in(client.get("/gallery", params={"label": "tabby", "min_score": "0.8"}).text) == []
    assert names_in(client.get("/gallery", params={"faces": "1"}).text) == [shas["astronaut"]]
    assert sorted(names_in(client.get("/gallery", params={"faces": "0"}).text)) == sorted(
        shas[n] for n in ("chelsea", "coffee", "rocket", "xss"))
    assert names_in(client.get("/gallery", params={"status": "rejected"}).text) == [shas["notes"]]
    # keyset pages of 2: every photo once, in order, each page linking the next
    seen: list[str] = []
    url = "/gallery?limit=2"
    pages = 0
    while url:
        html = client.get(url).text
        seen += names_in(html)
        found = re.search(r'href="([^"]+)" id="next"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
    assert seen == everything and pages == 3
    bad = client.get("/gallery", params={"status": "lost"})
    assert bad.status_code == 400 and "unknown status" in bad.text
    assert client.get("/gallery", params={"min_score": "0.5"}).status_code == 400  # a score without a label


def test_photo_page_shows_every_result(client, store):
    sha = store.shas["astronaut"]
    html = client.get(f"/photos/{sha}").text
    assert f'src="/images/{sha}/preview"' in html and f'src="/images/{sha}/artifacts/faces_boxed/0"' in html
    assert f'src="/images/{sha}/artifacts/face_crop/0"' in html
    assert str(store.inbox / "astronaut.jpg") in html
    assert "normalize" in html and "phash" in html and "test:1" in html  # the runs and their worker
    cat = client.get(f"/photos/{store.shas['chelsea']}").text
    assert "tabby" in cat and "71.00%" in cat and "vgg16" in cat
    rejected = client.get(f"/photos/{store.shas['notes']}").text
    assert "not an image in a supported format" in rejected and "rejected" in rejected
    assert client.get("/photos/" + "0" * 64).status_code == 404


def test_docs_page_and_openapi_are_served_locally(client):
    doc = client.get("/openapi.json").json()
    assert {"/api/images", "/api/images/{sha256}", "/api/status", "/metrics"} <= set(doc["paths"])
    html = client.get("/docs").text
    assert '<script src="/static/docs.js"' in html
    assert "http://" not in html and "https://" not in html and "cdn" not in html.lower()
    js = client.get("/static/docs.js")
    assert js.status_code == 200 and "openapi.json" in js.text and "http" not in js.text.replace("https", "")
    assert client.get("/redoc").status_code == 404


# --- the JSON API ---------------------------------------------------------------------------------------


def test_api_images_are_the_results_json_with_filters_and_keyset_pages(client, store):
    body = client.get("/api/images").json()
    assert body["next_after"] is None
    assert body["items"] == results_cli_json(store, *store.shas.values())
    tabby = client.get("/api/images", params={"label": "tabby"}).json()["items"]
    assert [r["sha256"] for r in tabby] == [store.shas["chelsea"]] and tabby[0]["labels"][0]["label"] == "tabby"
    assert [r["sha256"] for r in client.get("/api/images", params={"faces": "1+"}).json()["items"]] == [
        store.shas["astronaut"]]
    seen = []
    query = {"limit": 4}
    while True:
        page = client.get("/api/images", params=query).json()
        seen += [r["sha256"] for r in page["items"]]
        if page["next_after"] is None:
            break
        query = {"limit": 4, "after": page["next_after"]}
    assert seen == [r["sha256"] for r in body["items"]]
    assert client.get("/api/images", params={"status": "lost"}).status_code == 400
    assert client.get("/api/images", params={"after": "../../etc"}).status_code == 400
    assert client.get("/api/images", params={"after": "f" * 64}).status_code == 400  # no such photo
    assert client.get("/api/images", params={"limit": 100000}).status_code == 422


def test_the_stores_other_filters_are_offered_and_passed_on(client, store):
    """Filters ResultFilter has beyond status, label, faces and since (capture dates, a camera) appear
    in the gallery's form and work in the API; the test photos carry no capture metadata."""
    from darkroom.web import reads

    extra = reads.extra_filters()
    if not extra:
        pytest.skip("this store's ResultFilter has no other filters")
    html = client.get("/gallery").text
    for name in extra:
        assert f'name="{name}"' in html
    for name in reads.date_filters():
        assert f'type="date" name="{name}"' in html
        assert client.get("/api/images", params={name: "2020-01-01"}).status_code == 200
        bad = client.get("/api/images", params={name: "yesterday"})
        assert bad.status_code == 400 and name in bad.json()["detail"]
    if "camera" in extra:
        assert client.get("/api/images", params={"camera": "Canon"}).json()["items"] == []
        assert names_in(client.get("/gallery", params={"camera": "Canon"}).text) == []


def test_api_image_by_sha256(client, store):
    sha = store.shas["xss"]
    assert client.get(f"/api/images/{sha}").json() == results_cli_json(store, sha)[0]
    assert client.get(f"/api/images/{sha.upper()}").json()["sha256"] == sha
    assert client.get("/api/images/" + "0" * 64).status_code == 404
    assert client.get("/api/images/abc").status_code == 404


# --- pictures -------------------------------------------------------------------------------------------


def test_thumbnails_are_made_at_processing_time_and_cached_by_hash(client, store):
    from sqlalchemy import select

    from storage.models import Artifact, Image

    with store.sessions() as s:
        thumbs = dict(s.execute(select(Image.sha256, Artifact.width).join(Artifact, Artifact.image_id == Image.id)
                                .where(Artifact.kind == "thumb")).tuples().all())
    assert set(thumbs) == {store.shas[n] for n in (*PHOTOS, "xss")}  # every photo decoded; not the text file
    assert all(0 < w <= 320 for w in thumbs.values())
    sha = store.shas["chelsea"]
    got = client.get(f"/thumbs/{sha}")
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    assert "immutable" in got.headers["cache-control"]
    assert max(Image_open(got.content).size) == 320
    again = client.get(f"/thumbs/{sha}", headers={"If-None-Match": got.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    placeholder = client.get(f"/thumbs/{store.shas['notes']}")  # rejected: no picture
    assert placeholder.status_code == 200 and placeholder.headers["content-type"].startswith("image/svg+xml")
    assert client.get("/thumbs/" + "0" * 64).status_code == 404
    # The results do not count the thumbnail as one of theirs.
    assert "thumb" not in client.get(f"/api/images/{sha}").json()["artifacts"]


def test_a_photo_without_a_thumbnail_gets_one_on_demand(client, store):
    from sqlalchemy import delete, select

    from storage.db import transaction
    from storage.models import Artifact, Image

    sha = store.shas["rocket"]
    with transaction(store.sessions) as s:
        image_id = s.scalar(select(Image.id).where(Image.sha256 == sha))
        s.execute(delete(Artifact).where(Artifact.image_id == image_id, Artifact.kind == "thumb"))
    got = client.get(f"/thumbs/{sha}")
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    assert max(Image_open(got.content).size) == 320


def test_previews_and_artifacts(client, store):
    sha = store.shas["astronaut"]
    preview = client.get(f"/images/{sha}/preview")
    assert preview.status_code == 200 and Image_open(preview.content).size == (512, 512)
    boxed = client.get(f"/images/{sha}/artifacts/faces_boxed/0")
    assert boxed.status_code == 200 and Image_open(boxed.content).size == (512, 512)
    assert "immutable" in boxed.headers["cache-control"]
    assert client.get(f"/images/{sha}/artifacts/faces_boxed/1").status_code == 404
    assert client.get(f"/images/{sha}/artifacts/thumbs/0").status_code == 404
    assert client.get(f"/images/{store.shas['notes']}/preview").headers["content-type"].startswith("image/svg")


def Image_open(data: bytes):  # noqa: N802 - PIL's name
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# --- metrics --------------------------------------------------------------------------------------------


def test_metrics_are_read_from_the_ledger(client, store):
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    runs = {(s.labels["task"], s.labels["state"]): s.value for s in families["darkroom_runs"].samples}
    assert runs[("normalize", "done")] == 5 and runs[("phash", "done")] == 5
    images = {s.labels["state"]: s.value for s in families["darkroom_images"].samples}
    assert images == {"done": 5, "rejected": 1}
    assert families["darkroom_images_registered"].samples[0].value == 6
    counts = {s.labels["task"]: s.value for s in families["darkroom_task_duration_seconds"].samples
              if s.name.endswith("_count")}
    assert counts["normalize"] == 5 and counts["phash"] == 5
    depth = {s.labels["queue"] for s in families["darkroom_queue_depth"].samples}
    assert depth == {"cpu", "gpu"}
    assert families["darkroom_runs_ended_per_second"].samples[0].value > 0
    errors = {s.labels["part"]: s.value for s in families["darkroom_scrape_error"].samples}
    assert errors == {"database": 0, "broker": 0}


# --- safety ---------------------------------------------------------------------------------------------


def test_file_names_are_escaped_everywhere(client, store):
    sha = store.shas["xss"]
    for url in ("/gallery", f"/photos/{sha}", "/"):
        html = client.get(url).text
        assert "<img src=x onerror" not in html, url
    gallery = client.get("/gallery").text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in gallery
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in client.get(f"/photos/{sha}").text
    assert client.get(f"/api/images/{sha}").json()["path"].endswith(XSS)  # JSON has it as it is


def test_every_response_forbids_inline_script(client, store):
    sha = store.shas["astronaut"]
    for url in ("/", "/gallery", f"/photos/{sha}", "/docs", "/api/status", f"/thumbs/{sha}", "/metrics",
                "/photos/" + "0" * 64, "/static/style.css"):
        got = client.get(url)
        csp = got.headers["content-security-policy"]
        if got.headers["content-type"].startswith("image/"):  # a picture: no script at all, sandboxed
            assert csp.startswith("default-src 'none'") and "script-src" not in csp and "sandbox" in csp, url
        else:
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'self'" in csp, url
        assert got.headers["x-content-type-options"] == "nosniff"
        if got.headers["content-type"].startswith("text/html"):
            tags = Tags()
            tags.feed(got.text)
            assert all(src and src.startswith("/static/") for src in tags.scripts), (url, tags.scripts)
            assert not tags.handlers, (url, tags.handlers)  # no inline event handlers either
            assert not tags.img_named_x, url  # the XSS name never became a tag


class Tags(HTMLParser):
    """What a page's parsed tags hold: each script's src, any on* attribute, an <img src=x>."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.handlers: list[str] = []
        self.img_named_x = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs.get("src"))
        self.handlers += [name for name in attrs if name.startswith("on")]
        self.img_named_x |= tag == "img" and attrs.get("src") == "x"


@pytest.fixture(scope="module")
def live(store):
    """The app under a real uvicorn in this process, on a free port: raw paths reach it as written."""
    import uvicorn

    from darkroom.web import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store.settings, store.sessions), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_no_request_path_reaches_the_filesystem(live, store):
    sha = store.shas["astronaut"]
    db_name = "darkroom.db"
    secret = store.settings.data_dir / "blobs"
    attempts = []
    for bad in ("..", "%2e%2e", "%2E%2E", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                "/etc/passwd", "%2fetc%2fpasswd", "....//....//etc/passwd", f"..%2f{db_name}", "g" * 64, sha[:63],
                sha + "0", sha[:62] + "..", f"{sha}%00", "~root", str(secret).replace("/", "%2f")):
        attempts += [f"/thumbs/{bad}", f"/images/{bad}/preview", f"/images/{bad}/artifacts/faces_boxed/0",
                     f"/images/{sha}/artifacts/{bad}/0", f"/images/{sha}/artifacts/faces_boxed/{bad}",
                     f"/api/images/{bad}", f"/photos/{bad}", f"/static/{bad}"]
    attempts += ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2f%2e%2e%2fsettings.py",
                 "/thumbs/../../../../etc/passwd", "/images/../../etc/passwd/preview", "//etc/passwd"]
    for path in attempts:
        status, body = raw_get(live, path)
        assert status in (400, 404, 422), (path, status, body[:200])
        assert b"root:" not in body and b"SQLite format" not in body and b"import " not in body, path
    assert raw_get(live, f"/thumbs/{sha}")[0] == 200  # the real one works on the same server


def token_client(store, token: str):
    from fastapi.testclient import TestClient

    from darkroom.web import create_app

    settings = store.settings.model_copy(update={"serve_token": __import__("pydantic").SecretStr(token)})
    return TestClient(create_app(settings, store.sessions), follow_redirects=False)


def test_a_token_guards_every_route_but_the_login(store):
    token = "s3cret-" + uuid.uuid4().hex
    sha = store.shas["chelsea"]
    with token_client(store, token) as c:
        for url in ("/api/status", "/api/images", f"/thumbs/{sha}", "/metrics", "/openapi.json"):
            assert c.get(url).status_code == 401, url
        page = c.get("/gallery", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=%2Fgallery")
        assert c.get("/static/style.css").status_code == 200 and c.get("/login").status_code == 200
        assert c.get("/api/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        wrong = c.post("/login", data={"token": "wrong", "next": "/gallery"})
        assert wrong.status_code == 401 and "not the token" in wrong.text
        right = c.post("/login", data={"token": token, "next": "https://evil.example/"})
        assert right.status_code == 303 and right.headers["location"] == "/"  # never off this server
        cookie = right.cookies.get("darkroom_session")
        assert cookie and token not in cookie and "httponly" in right.headers["set-cookie"].lower()
        c.cookies.set("darkroom_session", cookie)
        assert c.get("/gallery").status_code == 200
        assert token not in c.get("/gallery").text and token not in c.get("/api/status").text


def test_serve_refuses_a_non_loopback_address_without_a_token(tmp_path):
    env = base_env()
    env.update(DARKROOM_DATA_DIR=str(tmp_path), DARKROOM_DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        done = subprocess.run([sys.executable, "-m", "darkroom", "serve", "--host", host, "--port", str(free_port())],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "DARKROOM_SERVE_TOKEN" in lines[0] and host in lines[0]
    env["DARKROOM_SERVE_TOKEN"] = ""  # compose's default when none is set
    done = subprocess.run([sys.executable, "-m", "darkroom", "serve", "--host", "0.0.0.0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "DARKROOM_SERVE_TOKEN is empty" in done.stderr
    assert not (tmp_path / "none.db").exists()  # refused before anything was opened


def test_the_token_is_masked_in_the_settings():
    from pydantic import SecretStr

    from darkroom.cli.serve import is_loopback
    from darkroom.settings import Settings

    assert Settings(serve_token=SecretStr("hunter2-token")).masked()["serve_token"] == "***"
    assert Settings().masked()["serve_token"] is None
    assert [is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "localhost", "0.0.0.0", "10.0.0.1", "example.com")] == [
        True, True, True, True, False, False, False]


def test_task_events_setting_turns_on_celery_events():
    from darkroom.settings import Settings
    from worker.app import create_app

    assert create_app(Settings()).conf.worker_send_task_events is False
    app = create_app(Settings(task_events=True))
    assert app.conf.worker_send_task_events is True and app.conf.task_send_sent_event is True


def test_a_thumbnail_stored_twice_keeps_the_first(store):
    """Two messages of one photo may each make its thumbnail: the second store is no error."""
    from sqlalchemy import select

    from storage.db import transaction
    from storage.models import Artifact, Image
    from storage.results import ArtifactData, save_thumbnails

    with store.sessions() as s:
        image_id = s.scalar(select(Image.id).where(Image.sha256 == store.shas["coffee"]))
        before = s.scalar(select(Artifact.data).where(Artifact.image_id == image_id, Artifact.kind == "thumb"))
    with transaction(store.sessions) as s:
        save_thumbnails(s, {image_id: ArtifactData("thumb", 0, "image/jpeg", 1, 1, b"other")})
    with store.sessions() as s:
        after = s.scalar(select(Artifact.data).where(Artifact.image_id == image_id, Artifact.kind == "thumb"))
    assert after == before and after != b"other"


def test_bench_web_runs_at_a_tiny_size():
    """`darkroom bench web` at 500 photos on SQLite: every page answers and thumbnails are served (the
    README's figures are from the full sizes)."""
    from bench import web

    rows = web.run(web.Options(sizes=[500], dbs=["sqlite"], postgres_url="", repeat=1, thumbs=50, thumb_seconds=0.5,
                               connections=2), log=lambda _msg: None)
    (row,) = rows
    assert row["db"] == "sqlite" and row["images"] == 500
    assert all(row[k] > 0 for k in row if k not in ("db", "images"))
    text = web.report(rows)
    assert "gallery, first page" in text and "thumbs/s" in text and "sqlite | 500" in text


def test_a_thumbnail_in_the_blob_store_is_served_and_made_again_when_gone(client, store):
    """DARKROOM_ARTIFACT_STORE=blobs: the thumbnail's bytes are in the blob store by their hash."""
    from sqlalchemy import select, update

    from storage.blobs import BlobStore
    from storage.db import transaction
    from storage.models import Artifact, Image

    sha = store.shas["coffee"]
    blobs = BlobStore(store.settings.blob_dir)
    with transaction(store.sessions) as s:
        image_id = s.scalar(select(Image.id).where(Image.sha256 == sha))
        where = (Artifact.image_id == image_id, Artifact.kind == "thumb")
        data = s.scalar(select(Artifact.data).where(*where))
        key = blobs.put_bytes(data)
        s.execute(update(Artifact).where(*where).values(data=None, blob=key))
    got = client.get(f"/thumbs/{sha}")
    assert got.status_code == 200 and got.content == data
    blobs.path_for(key).unlink()
    again = client.get(f"/thumbs/{sha}")
    assert again.status_code == 200 and again.headers["content-type"] == "image/jpeg"
    assert max(Image_open(again.content).size) == 320


def test_a_database_that_does_not_answer_is_a_503_that_says_so(tmp_path, redis_server):
    """The app on a PostgreSQL nothing listens on: pages and the API say the database did not answer,
    never its URL (which may hold a password); /metrics says so in darkroom_scrape_error."""
    from fastapi.testclient import TestClient

    from darkroom.settings import Settings
    from darkroom.web import create_app
    from storage.db import make_engine, session_factory

    url = f"postgresql+psycopg://darkroom:pw-secret@127.0.0.1:{free_port()}/none"
    settings = Settings(data_dir=tmp_path, database_url=url, broker_url=redis_server)
    engine = make_engine(url, connect_args={"connect_timeout": 2})
    with TestClient(create_app(settings, session_factory(engine))) as c:
        for path in ("/api/status", "/api/images", "/api/images/" + "a" * 64):
            got = c.get(path)
            assert got.status_code == 503 and "database did not answer" in got.json()["detail"], path
            assert "pw-secret" not in got.text
        page = c.get("/gallery", headers={"Accept": "text/html"})
        assert page.status_code == 503 and "database did not answer" in page.text and "pw-secret" not in page.text
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        errors = {s.labels["part"]: s.value for s in families["darkroom_scrape_error"].samples}
        assert errors == {"database": 1, "broker": 0}
    engine.dispose()


def test_thumbnails_are_320_px_from_a_draft_decode_or_the_pixels_at_hand(astronaut):
    from darkroom import catalog
    from darkroom.settings import Settings
    from tasks import imaging

    settings = Settings()
    big = np.asarray(Image.fromarray(astronaut).resize((2000, 1500)))
    jpeg = imaging.encode(big)
    small = imaging.fit_within(big, 250)  # what a decode for classify gives: smaller than a thumbnail
    for pixels in (None, small, big):
        thumb = catalog.thumbnail(jpeg, pixels, settings)
        assert (thumb.kind, thumb.width, thumb.height) == ("thumb", 320, 240)
        assert Image_open(thumb.data).size == (320, 240)
    png = io.BytesIO()
    Image.fromarray(big).save(png, "PNG")
    assert catalog.thumbnail(png.getvalue(), big, settings).width == 320  # from the pixels: no second decode
    tiny = imaging.encode(np.ascontiguousarray(astronaut[:100, :80]))
    assert (catalog.thumbnail(tiny, None, settings).width, catalog.thumbnail(tiny, None, settings).height) == (80, 100)
