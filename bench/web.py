"""`darkroom bench web`: `darkroom serve`'s pages over the synthetic archive of `darkroom bench ledger`.

The archive is filled by :mod:`bench.ledger` (its plan, its fill, its scratch database), and the
first ``thumbs`` photos get a real thumbnail artifact (a JPEG of a scikit-image photo at the size
the worker makes them). Then, through the application in this process (FastAPI's test client, so the
time is the server's: routing, SQL, the template or the JSON), each page is timed (the median of
``repeat`` calls after one to warm up): the gallery's first page of 100, a gallery page of 100 deep in
the archive (keyset, after the middle photo), a gallery page filtered by a label, and the same three
of ``/api/images`` (the Results JSON objects); then thumbnails served per second by the application
under a real uvicorn in this process, asked for by 4 keep-alive connections at once for a few seconds
(the clients share the machine's cores with the server, so this is a lower bound).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ledger

#: The targets of issue 15 at a million photos.
PAGE_TARGET_MS = 200
THUMBS_TARGET = 500


@dataclasses.dataclass
class Options:
    sizes: list[int]
    dbs: list[str]
    postgres_url: str
    repeat: int = 3
    thumbs: int = 2000
    thumb_seconds: float = 5.0
    #: Connections asking for thumbnails at once (a browser opens about six to one server).
    connections: int = 4
    seed: int = 0


def _thumb_bytes() -> tuple[bytes, int, int]:
    import skimage.data

    from darkroom import catalog
    from tasks import imaging

    small = imaging.fit_within(skimage.data.chelsea(), catalog.THUMB_SIDE)
    return imaging.encode(small, "JPEG", quality=80), small.shape[1], small.shape[0]


def add_thumbs(engine, n: int) -> None:
    """A real thumbnail artifact for images 1..n (the fill's ids), in chunks."""
    from sqlalchemy import insert

    from storage.models import Artifact

    data, width, height = _thumb_bytes()
    with engine.begin() as conn:
        for start in range(1, n + 1, 1000):
            conn.execute(insert(Artifact), [{"image_id": i, "kind": "thumb", "idx": 0, "mime": "image/jpeg",
                                             "width": width, "height": height, "data": data}
                                            for i in range(start, min(n, start + 999) + 1)])


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(url: str, plan: ledger.Plan, opts: Options) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from darkroom.settings import Settings
    from darkroom.web import create_app
    from storage.db import make_engine, session_factory

    engine = make_engine(url)
    settings = Settings(data_dir=Path(tempfile.gettempdir()), database_url=url, broker_url="redis://127.0.0.1:1/0")
    client = TestClient(create_app(settings, session_factory(engine)))
    middle = ledger.sha_of(plan.n // 2, opts.seed)
    label = {"label": plan.common_label, "min_score": 0.5, "limit": 100}
    pages = {
        "gallery, first page": ("/gallery", {"limit": 100}),
        "gallery, deep page": ("/gallery", {"limit": 100, "after": middle}),
        "gallery, a label": ("/gallery", label),
        "api, first page": ("/api/images", {"limit": 100}),
        "api, deep page": ("/api/images", {"limit": 100, "after": middle}),
        "api, a label": ("/api/images", label),
    }
    out: dict[str, Any] = {}
    for name, (path, params) in pages.items():
        def once(path=path, params=params):
            got = client.get(path, params=params)
            if got.status_code != 200:
                raise RuntimeError(f"{path} {params}: {got.status_code} {got.text[:200]}")
        out[name] = _median_ms(once, opts.repeat)
    shas = [ledger.sha_of(i, opts.seed) for i in range(1, min(opts.thumbs, plan.n) + 1)]
    out["thumbs/s"] = thumbs_per_second(client.app, shas, opts.connections, opts.thumb_seconds)
    client.close()
    engine.dispose()
    return out


def thumbs_per_second(app: Any, shas: list[str], connections: int, seconds: float) -> float:
    """Thumbnails served per second by ``app`` under a real uvicorn (in a thread of this process, on a
    free port), asked for by ``connections`` keep-alive connections at once, as a browser loads a
    gallery; each response checked to be a JPEG."""
    import http.client
    import socket
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    counts = [0] * connections
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def ask(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while time.perf_counter() < stop:
            conn.request("GET", f"/thumbs/{shas[i % len(shas)]}")
            got = conn.getresponse()
            got.read()
            if got.status != 200 or got.getheader("content-type") != "image/jpeg":
                errors.append(f"{got.status} {got.getheader('content-type')}")
                return
            counts[k] += 1
            i += connections
        conn.close()

    try:
        threads = [threading.Thread(target=ask, args=(k,)) for k in range(connections)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(10)
    if errors:
        raise RuntimeError(f"a thumbnail request failed: {errors[0]}")
    return sum(counts) / elapsed


def run(opts: Options, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from storage.db import make_engine

    rows = []
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-web-") as folder:
        for backend in opts.dbs:
            for n in opts.sizes:
                with ledger.scratch_store(backend, opts.postgres_url, Path(folder), log) as url:
                    plan = ledger.Plan.draw(n, opts.seed)
                    engine = make_engine(url)
                    log(f"{backend}, {n:,} photos: filling")
                    ledger.fill_store(engine, plan, opts.seed, log)
                    add_thumbs(engine, min(opts.thumbs, n))
                    engine.dispose()
                    log(f"{backend}, {n:,} photos: timing the pages")
                    rows.append({"db": backend, "images": n, **measure(url, plan, opts)})
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    names = [k for k in rows[0] if k not in ("db", "images")] if rows else []
    lines = ["server time per page of 100 (ms, median) and thumbnails served per second, "
             f"targets at 1,000,000 photos: <= {PAGE_TARGET_MS} ms a page, >= {THUMBS_TARGET} thumbnails/s", ""]
    header = ["db", "photos", *names]
    lines.append(" | ".join(header))
    lines.append(" | ".join("---" for _ in header))
    for row in rows:
        lines.append(" | ".join([row["db"], f"{row['images']:,}",
                                 *(f"{row[k]:,.0f}" for k in names)]))
    return "\n".join(lines)
