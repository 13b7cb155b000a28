"""Per-run overhead of an S3 blob store (DARKROOM_BLOB_URL=s3://...) against the file store, on the
same photos: what registering a photo costs (copy and fsync, or hash and upload), what reading its
original costs a worker (a file read, or a download checked against its sha256), and a whole run
(``worker.pipeline.execute``: claim, read, decode, every task's step, store) with each store.

    .venv/bin/python scripts/bench_blob_url.py [--size 4032x3024] [--rounds 5] [--tasks normalize]
        [--endpoint http://host:8333]

Without --endpoint a private SeaweedFS is started on free ports in a temp folder (the test suite's
``PrivateSeaweed``) and removed at the end. The stores are timed in turns, round after round, on one
SQLite ledger each; medians are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def photos(folder: Path, size: tuple[int, int]) -> list[Path]:
    """scikit-image's four photos as JPEGs (quality 92) of ``size``, as a phone writes them."""
    import skimage.data
    from PIL import Image

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size, Image.BICUBIC).save(path, quality=92)
        out.append(path)
    return out


class Task:
    """What ``execute`` needs of a Celery task (no retries expected here)."""

    def __init__(self, rt) -> None:
        self.runtime, self.app = rt, None
        self.request = types.SimpleNamespace(retries=0)

    def retry(self, exc, countdown, kwargs):
        raise RuntimeError(f"unexpected retry: {exc}")


def setup(label: str, folder: Path, blob_url: str | None, tasks: list[str], files: list[Path]):
    from darkroom.settings import Settings
    from producer.registrar import Registrar
    from storage.db import make_engine, migrate
    from storage.stores import open_store
    from worker.app import create_app
    from worker.runtime import Runtime

    settings = Settings(data_dir=folder / label, database_url=f"sqlite:///{folder / label}.db", tasks=tasks,
                        blob_url=blob_url, preload_models=False, broker_url="redis://127.0.0.1:1/0")
    engine = make_engine(settings.db_url)
    migrate(engine)
    engine.dispose()
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[folder])
    put_ms = []
    for path in files:
        started = time.perf_counter()
        registrar.register(path, send=False)
        put_ms.append((time.perf_counter() - started) * 1000)
    rt = Runtime.create(settings)
    rt.blobs = open_store(settings.blob_location)
    return registrar, rt, put_ms


def requeue(rt) -> list[tuple[int, int, str]]:
    """Make every run of the store queued again; (run id, image id, sha256) of each photo's run of the
    first task, in order."""
    from sqlalchemy import select

    from storage import ledger
    from storage.db import read_only, transaction
    from storage.models import DONE, Image, TaskRun

    with transaction(rt.sessions) as s:
        ledger.requeue_runs(s, statuses=[DONE])
    with read_only(rt.sessions) as s:
        # One run a photo (of the first task): it takes the photo's other full-pixel runs with it.
        first = rt.settings.tasks[0]
        return [tuple(r) for r in s.execute(select(TaskRun.id, Image.id, Image.sha256).join(Image)
                                            .where(TaskRun.task == first).order_by(TaskRun.id))]


def read_ms(rt, image_id: int, sha: str) -> float:
    from worker.originals import read_original

    started = time.perf_counter()
    data = read_original(rt, None, image_id, sha)
    elapsed = (time.perf_counter() - started) * 1000
    assert hashlib.sha256(data).hexdigest() == sha
    return elapsed


def run_ms(rt, run_id: int) -> float:
    from storage.models import DONE
    from worker.pipeline import execute

    started = time.perf_counter()
    assert execute(Task(rt), run_id) == DONE
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4032x3024", help="photo size, WxH (default: 12 MP)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", default="normalize", help="DARKROOM_TASKS for the runs timed")
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of a private SeaweedFS")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    folder = Path(tempfile.mkdtemp(prefix="darkroom-bench-blobs-"))
    seaweed = None
    try:
        endpoint = args.endpoint
        if endpoint is None:
            from tests.harness import PrivateSeaweed

            seaweed = PrivateSeaweed(folder / "seaweed")
            endpoint = seaweed.endpoint
        files = photos(folder, (width, height))
        mb = sum(p.stat().st_size for p in files) / len(files) / 1e6
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        stores = {"file": setup("file", folder, None, tasks, files),
                  "s3": setup("s3", folder, f"s3://{bucket}/originals?endpoint={endpoint}", tasks, files)}
        reads: dict[str, list[float]] = {k: [] for k in stores}
        runs: dict[str, list[float]] = {k: [] for k in stores}
        paired: list[float] = []  # each run's S3 time less the same photo's run on the file store
        for n in range(args.rounds):
            todo = {label: requeue(rt) for label, (_reg, rt, _put) in stores.items()}
            # In turns, photo by photo (the order swapped every round): a busy machine loads both alike.
            for i in range(len(todo["file"])):
                timed = {}
                for label in (("file", "s3") if n % 2 == 0 else ("s3", "file")):
                    rt = stores[label][1]
                    run_id, image_id, sha = todo[label][i]
                    reads[label].append(read_ms(rt, image_id, sha))
                    timed[label] = run_ms(rt, run_id)
                    runs[label].append(timed[label])
                paired.append(timed["s3"] - timed["file"])
        med = {label: {"register": statistics.median(stores[label][2]), "read": statistics.median(reads[label]),
                       "run": statistics.median(runs[label])} for label in stores}
        print(f"{len(files)} photos, {width}x{height} JPEG (mean {mb:.2f} MB), tasks {','.join(tasks)}, "
              f"{args.rounds} rounds, medians in ms")
        print(f"{'store':6} {'register':>9} {'read':>7} {'run':>7}")
        for label, m in med.items():
            print(f"{label:6} {m['register']:9.1f} {m['read']:7.1f} {m['run']:7.1f}")
        read_over = med["s3"]["read"] - med["file"]["read"]
        over = statistics.median(paired)
        print(f"S3 against file, per run: reading the original +{read_over:.1f} ms "
              f"({read_over / med['file']['run'] * 100:.1f} % of a run); the whole run, paired with the same "
              f"photo's on the file store, median {over:+.1f} ms ({over / med['file']['run'] * 100:+.1f} %); "
              f"registering a photo {med['s3']['register'] / med['file']['register']:.2f}x")
        for registrar, _rt, _put in stores.values():
            registrar.close()
        return 0
    finally:
        if seaweed is not None:
            seaweed.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
