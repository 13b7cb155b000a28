"""`darkroom bench ledger`: the ledger's commands timed on synthetic archives of 10,000 to 1,000,000 photos.

For each size and database (PostgreSQL, SQLite) a fresh scratch store is made with the project's own
migrations (PostgreSQL: ``CREATE DATABASE darkroom_bench_<pid>``, dropped at the end even on an error;
SQLite: a file in a temporary folder) and filled fast — PostgreSQL with ``COPY`` (psycopg's
``cursor.copy()``), SQLite with ``executemany`` in large transactions — with what an archive that
Darkroom has mostly processed holds:

- ``images`` (about 0.5 % rejected: half at registration, half by a worker), ``files`` (paths like
  ``/archive/2019/IMG_0000123.jpg``; 2 % of the images under a second path; a few refused files);
- ``task_runs`` for the five tasks in every state: 89.5 % done, 2 % queued and never sent, 5 %
  queued and sent, 1 % running, 2.5 % failed with a few distinct reasons per task, and rejected;
- for each run done, its results: ``labels`` (top 5, ImageNet names, a few labels far more common
  than the rest), ``faces`` (0-3 a photo), ``normalizations`` (the scale report as JSON),
  ``phashes`` (1 % near-duplicates of another photo) and ``artifacts`` rows (9 augmentations and a
  contact sheet a photo, the boxed photo and a crop per face) with empty data: the bytes artifacts
  take are estimated apart (README: "At a million photos").

The tables are filled at the migration just before the counts' (0007), which then counts them as it
counts any existing store; then the newest schema, ``VACUUM ANALYZE`` (SQLite: ``ANALYZE``), and it
times, per size:

- ``status``: what `darkroom status` computes (run counts, image counts, the newest problem groups);
- one photo by path and by sha256: the look-up and its Results JSON (median of ``lookups``);
- a filtered page of 100 for three filters (a label above a score, two faces or more, failed): the
  keyset page and its Results JSON;
- the full stream: `darkroom results --jsonl` over every image, its output read by the bench:
  images/s from its first line (the CLI's start-up apart) and the growth of the memory of the
  command and its worker processes together (summed PSS) from then to its peak (stopped after
  ``stream_seconds`` of output); and, as its baseline in the same run, the stream in one process
  (``--jobs 1``);
- the reconciler after the broker lost everything: every pending run sent again to a private
  ``redis-server`` (flushed first), backpressure out of the way; seconds, runs and peak memory;
- ``rerun`` of the phash task over the whole store (committed);
- registration of real 2-4 MB JPEGs (made from scikit-image's photos, upscaled) through the
  Registrar, without sending, against ``sha256sum`` run in as many processes as there are cores
  over the same files (the disk-and-hash limit); both read the files from the page cache.

It prints seconds per command, the cost per 1,000 images (per 1,000 files for registration), the
growth of that cost from the smallest size to the largest, the issue's targets and whether they are
met, and each table's rows and bytes at every size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from storage.results import PAIR_DISTANCE

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_POSTGRES_URL = os.environ.get("DARKROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

#: (task, model key) of every run, as the default settings plan them (checked against the catalog).
WORK = (("normalize", ""), ("classify", "vgg16"), ("augment", ""), ("faces", "mtcnn"), ("phash", ""))
CLASSIFY = "vgg16"

# Run states in the fill: codes and their shares.
DONE, UNSENT, SENT, RUNNING, FAILED, REJECTED = range(6)
SHARES = (0.895, 0.02, 0.05, 0.01, 0.025)  # done, queued unsent, queued sent, running, failed
STATUS_NAME = {DONE: "done", UNSENT: "queued", SENT: "queued", RUNNING: "running", FAILED: "failed",
               REJECTED: "rejected"}
REJECTED_SHARE = 0.005
DUPLICATE_PATH_SHARE = 0.02
FACE_SHARES = (0.55, 0.25, 0.12, 0.08)
AUGMENTATIONS = 9
MS = {"normalize": 5.5, "classify": 170.0, "augment": 32.0, "faces": 159.0, "phash": 3.0}
REASONS = {
    "normalize": ("OSError: [Errno 5] Input/output error", "MemoryError"),
    "classify": ("model unavailable: no weights for vgg16 (put them in KERAS_HOME, or set DARKROOM_CLASSIFIER_WEIGHTS)",
                 "time limit of 900 s exceeded"),
    "augment": ("MemoryError", "OSError: [Errno 5] Input/output error"),
    "faces": ("time limit of 900 s exceeded", "ResourceExhaustedError: OOM when allocating tensor of shape [1,3024,4032,3]"),
    "phash": ("OSError: [Errno 5] Input/output error",),
}
REJECT_REASONS = ("cannot identify image file", "image file is truncated (41 bytes not processed)")
REFUSED_REASON = "symbolic link that leads outside the watched folder: refused (copy the file in instead of linking to it)"

# --- the commands timed, and the targets -----------------------------------------------------

STATUS = "status"
PHOTO_PATH = "one photo by path"
PHOTO_SHA = "one photo by sha256"
PAGE_LABEL = "page of 100: label, min score"
PAGE_FACES = "page of 100: faces 2+"
PAGE_FAILED = "page of 100: status failed"
STREAM = "full stream (JSON of every image)"
RECONCILE = "reconciler: broker lost, all pending resent"
RERUN = "rerun phash"
REGISTER = "register real JPEGs"
COMMANDS = (STATUS, PHOTO_PATH, PHOTO_SHA, PAGE_LABEL, PAGE_FACES, PAGE_FAILED, STREAM, RECONCILE, RERUN, REGISTER)
#: The most seconds each may take at the largest size (None: no such target).
LIMIT_S = {STATUS: 1.0, PHOTO_PATH: 0.05, PHOTO_SHA: 0.05, PAGE_LABEL: 0.2, PAGE_FACES: 0.2, PAGE_FAILED: 0.2}
STREAM_MIN_IMG_S = 10_000
#: Seconds of the stream in one process (--jobs 1), the baseline of the stream's workers.
STREAM_ONE_SECONDS = 15.0
STREAM_MAX_MB = 300
REGISTER_MIN_RATIO = 0.8
GROWTH_MAX = 1.5
SQLITE_MAX_RATIO = 2.0
TABLES = ("images", "files", "task_runs", "labels", "faces", "normalizations", "phashes", "near_pairs", "artifacts")
#: Filled after the newest migration (their columns and tables came after the counts' revision).
LATE_TABLES = ("phashes", "near_pairs")


@dataclasses.dataclass
class Options:
    sizes: list[int]
    dbs: list[str]
    postgres_url: str = DEFAULT_POSTGRES_URL
    files: int = 60
    stream_seconds: float = 30.0
    lookups: int = 20
    repeat: int = 3
    seed: int = 0
    json_path: Path | None = None


# --- the synthetic archive -----------------------------------------------------------------------------


def _imagenet_names() -> list[str]:
    data = json.loads((ROOT / "tasks" / "data" / "imagenet_class_index.json").read_text())
    return [data[str(i)][1] for i in range(len(data))]


@dataclasses.dataclass
class Plan:
    """What each image of a size gets, drawn once (seeded)."""

    n: int
    rejected: list[int]  # 0 no, 1 at registration (no runs), 2 by a worker (runs rejected)
    states: list[list[int]]  # (n, 5) state codes
    reasons: list[list[int]]
    faces: list[int]
    classes: list[list[int]]
    top_score: list[float]
    duplicate_path: list[bool]
    size_bytes: list[int]
    hashes: list[int]
    labels: list[str]
    common_label: str

    @classmethod
    def draw(cls, n: int, seed: int) -> Plan:
        rng = np.random.default_rng([seed, n])
        u = rng.random(n)
        rejected = np.where(u < REJECTED_SHARE / 2, 1, np.where(u < REJECTED_SHARE, 2, 0))
        states = rng.choice(5, size=(n, len(WORK)), p=SHARES)
        states[rejected == 2] = REJECTED
        names = _imagenet_names()
        # A few labels much more common than the rest, as in real archives (Zipf over the classes).
        order = rng.permutation(len(names))
        weights = 1.0 / (np.arange(len(names)) + 5.0)
        top = order[rng.choice(len(names), size=n, p=weights / weights.sum())]
        classes = np.column_stack([top, rng.integers(0, len(names), size=(n, 4))])
        hashes = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
        hashes ^= rng.integers(0, 2, size=n).astype(np.uint64)
        near = np.flatnonzero(rng.random(n) < 0.01)
        near = near[near > 0]
        flips = np.uint64(1) << rng.integers(0, 64, size=near.size).astype(np.uint64)
        hashes[near] = hashes[near - 1] ^ flips
        return cls(
            n=n, rejected=rejected.tolist(), states=states.tolist(), reasons=rng.integers(0, 2, size=(n, len(WORK))).tolist(),
            faces=rng.choice(4, size=n, p=FACE_SHARES).tolist(), classes=classes.tolist(),
            top_score=np.round(rng.uniform(0.15, 0.98, size=n), 6).tolist(),
            duplicate_path=(rng.random(n) < DUPLICATE_PATH_SHARE).tolist(),
            size_bytes=rng.integers(1_500_000, 6_000_000, size=n).tolist(),
            hashes=[int(h) - (1 << 64) if int(h) >= 1 << 63 else int(h) for h in hashes.tolist()],
            labels=names, common_label=names[int(order[0])],
        )


def sha_of(i: int, seed: int = 0) -> str:
    return hashlib.sha256(f"darkroom-bench:{seed}:{i}".encode()).hexdigest()


def path_of(i: int, n: int) -> str:
    return f"/archive/{2005 + (i - 1) * 20 // n}/IMG_{i:07d}.jpg"


class Stamps:
    """Timestamps a minute apart over 30 days, made once, in the form the database takes."""

    MINUTES = 30 * 24 * 60

    def __init__(self, backend: str) -> None:
        base = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
        stamps = [base + dt.timedelta(minutes=k) for k in range(self.MINUTES + 10)]
        if backend == "sqlite":  # SQLAlchemy's storage format for DateTime on SQLite
            self.values: list[Any] = [s.strftime("%Y-%m-%d %H:%M:%S.%f") for s in stamps]
        else:
            self.values = stamps

    def at(self, i: int, n: int, later: int = 0) -> Any:
        return self.values[(i * self.MINUTES) // (n + 1) + later]


def _rows_images(p: Plan, ts: Stamps, seed: int) -> Iterator[tuple]:
    sizes = ((4032, 3024), (3024, 4032), (6000, 4000), (1920, 1080))
    for i in range(1, p.n + 1):
        w, h = sizes[i % len(sizes)]
        rej = p.rejected[i - 1]
        reason = f"{path_of(i, p.n)}: {REJECT_REASONS[rej - 1]}" if rej else None
        yield (i, sha_of(i, seed), p.size_bytes[i - 1], None if rej else "JPEG", None if rej else w, None if rej else h,
               reason, ts.at(i, p.n))


def _rows_files(p: Plan, ts: Stamps) -> Iterator[tuple]:
    for i in range(1, p.n + 1):
        path = path_of(i, p.n)
        yield (path, i, p.size_bytes[i - 1], 1_700_000_000_000_000_000 + i, None, ts.at(i, p.n))
        if p.duplicate_path[i - 1]:
            yield (path.replace("/IMG_", "/copies/IMG_"), i, p.size_bytes[i - 1], 1_700_000_000_000_000_000 + i, None,
                   ts.at(i, p.n, 1))
    for k in range(max(1, p.n // 2000)):
        link = f"/archive/links/LINK_{k:05d}.jpg"
        yield (link, None, None, None, f"{link}: {REFUSED_REASON}", ts.at(k, p.n))


def _rows_runs(p: Plan, ts: Stamps) -> Iterator[tuple]:
    for i in range(1, p.n + 1):
        if p.rejected[i - 1] == 1:
            continue
        states, reasons = p.states[i - 1], p.reasons[i - 1]
        queued = ts.at(i, p.n)
        for t, (task, model) in enumerate(WORK):
            code = states[t]
            enqueued = None if code == UNSENT else queued
            started = ts.at(i, p.n, 1) if code in (DONE, RUNNING, FAILED, REJECTED) else None
            finished = ts.at(i, p.n, 2) if code in (DONE, FAILED, REJECTED) else None
            ms = MS[task] * (0.8 + (i % 41) / 100) if finished is not None else None
            worker = f"worker-{i % 4}.archive.lan:{1000 + i % 2}" if started is not None else None
            if code == FAILED:
                error = REASONS[task][reasons[t] % len(REASONS[task])]
            elif code == REJECTED:
                error = f"{path_of(i, p.n)}: {REJECT_REASONS[1]}"
            else:
                error = None
            attempts = {DONE: 1, UNSENT: 0, SENT: 0, RUNNING: 1, FAILED: 6, REJECTED: 1}[code]
            yield (i, task, model, STATUS_NAME[code], attempts, queued, enqueued, started, finished, ms, worker, error,
                   False)


def _done(p: Plan, i: int, task_index: int) -> bool:
    return p.rejected[i - 1] == 0 and p.states[i - 1][task_index] == DONE


def _rows_labels(p: Plan) -> Iterator[tuple]:
    t = [w[0] for w in WORK].index("classify")
    for i in range(1, p.n + 1):
        if not _done(p, i, t):
            continue
        top = p.top_score[i - 1]
        rest = 1.0 - top
        for rank, cls in enumerate(p.classes[i - 1], start=1):
            score = top if rank == 1 else round(rest * 0.5 ** (rank - 1), 6)
            yield (i, CLASSIFY, rank, cls, p.labels[cls], score)


def _rows_faces(p: Plan) -> Iterator[tuple]:
    t = [w[0] for w in WORK].index("faces")
    for i in range(1, p.n + 1):
        if not _done(p, i, t):
            continue
        for idx in range(p.faces[i - 1]):
            x, y = 400 + 300 * idx + i % 97, 600 + i % 89
            keypoints = (f'{{"left_eye": [{x + 40}, {y + 60}], "right_eye": [{x + 120}, {y + 60}], "nose": [{x + 80}, '
                         f'{y + 100}], "mouth_left": [{x + 50}, {y + 150}], "mouth_right": [{x + 110}, {y + 150}]}}')
            yield (i, "mtcnn", idx, x, y, 160 + i % 50, 200 + i % 60, round(0.9 + (i % 97) / 1000, 6), keypoints)


_REPORT = ('{{"mode": "scale", "per_channel": false, "dtype": "uint8", "before": {{"min": 0.0, "max": 255.0, '
           '"mean": [{m0}, {m1}, {m2}], "std": [{s0}, {s1}, {s2}], "mean_all": {ma}, "std_all": {sa}}}, '
           '"after": {{"min": 0.0, "max": 1.0, "mean": [{a0}, {a1}, {a2}], "std": [{b0}, {b1}, {b2}], '
           '"mean_all": {aa}, "std_all": {ba}}}}}')


def _rows_normalizations(p: Plan) -> Iterator[tuple]:
    t = [w[0] for w in WORK].index("normalize")
    for i in range(1, p.n + 1):
        if not _done(p, i, t):
            continue
        m = [100.0 + (i * k) % 80 + 0.125 for k in (3, 5, 7)]
        s = [50.0 + (i * k) % 30 + 0.5 for k in (2, 3, 5)]
        ma, sa = sum(m) / 3, sum(s) / 3
        report = _REPORT.format(m0=m[0], m1=m[1], m2=m[2], s0=s[0], s1=s[1], s2=s[2], ma=round(ma, 4), sa=round(sa, 4),
                                a0=round(m[0] / 255, 6), a1=round(m[1] / 255, 6), a2=round(m[2] / 255, 6),
                                b0=round(s[0] / 255, 6), b1=round(s[1] / 255, 6), b2=round(s[2] / 255, 6),
                                aa=round(ma / 255, 6), ba=round(sa / 255, 6))
        yield (i, "scale", False, "uint8", report)


def _rows_phashes(p: Plan) -> Iterator[tuple]:
    t = [w[0] for w in WORK].index("phash")
    for i in range(1, p.n + 1):
        if not _done(p, i, t):
            continue
        h = p.hashes[i - 1]
        u = h & (2**64 - 1)
        yield (i, h, (u >> 48) & 0xFFFF, (u >> 32) & 0xFFFF, (u >> 16) & 0xFFFF, u & 0xFFFF, PAIR_DISTANCE)


def _rows_near_pairs(p: Plan) -> Iterator[tuple]:
    """Both directions of every pair of hashed photos within PAIR_DISTANCE, as the phash task's
    save stores them (found here at once, by the same multi-index search ``duplicates`` uses)."""
    from tasks.phash import neighbours

    t = [w[0] for w in WORK].index("phash")
    ids = np.array([i for i in range(1, p.n + 1) if _done(p, i, t)], dtype=np.int64)
    if ids.size < 2:
        return
    hashes = np.array([p.hashes[i - 1] for i in ids.tolist()], dtype=np.int64).view(np.uint64)
    pairs = neighbours(hashes, PAIR_DISTANCE)
    distance = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) if hasattr(np, "bitwise_count") else \
        np.array([bin(int(x)).count("1") for x in (hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).tolist()])
    a, b = ids[pairs[:, 0]].tolist(), ids[pairs[:, 1]].tolist()
    rows = sorted([(x, y, int(d)) for x, y, d in zip(a, b, distance.tolist())] +
                  [(y, x, int(d)) for x, y, d in zip(a, b, distance.tolist())])
    yield from rows


def _rows_artifacts(p: Plan) -> Iterator[tuple]:
    ta = [w[0] for w in WORK].index("augment")
    tf = [w[0] for w in WORK].index("faces")
    for i in range(1, p.n + 1):
        if _done(p, i, ta):
            for idx in range(AUGMENTATIONS):
                yield (i, "augmented", idx, "image/jpeg", 256, 192, b"")
            yield (i, "contact_sheet", 0, "image/png", 768, 576, b"")
        if _done(p, i, tf) and p.faces[i - 1]:
            yield (i, "faces_boxed", 0, "image/jpeg", 4032, 3024, b"")
            for idx in range(p.faces[i - 1]):
                yield (i, "face_crop", idx, "image/jpeg", 160, 200, b"")


COLUMNS = {
    "images": ("id", "sha256", "size_bytes", "format", "width", "height", "rejected_reason", "created_at"),
    "files": ("path", "image_id", "size_bytes", "mtime_ns", "refused_reason", "seen_at"),
    "task_runs": ("image_id", "task", "model", "status", "attempts", "queued_at", "enqueued_at", "started_at",
                  "finished_at", "duration_ms", "worker", "error", "retry_pending"),
    "labels": ("image_id", "model", "rank", "class_id", "label", "score"),
    "faces": ("image_id", "model", "idx", "x", "y", "w", "h", "confidence", "keypoints"),
    "normalizations": ("image_id", "mode", "per_channel", "dtype", "report"),
    "phashes": ("image_id", "hash", "band0", "band1", "band2", "band3", "paired_within"),
    "near_pairs": ("image_id", "other_id", "distance"),
    "artifacts": ("image_id", "kind", "idx", "mime", "width", "height", "data"),
}


def _table_rows(table: str, plan: Plan, ts: Stamps, seed: int) -> Iterator[tuple]:
    return {
        "images": lambda: _rows_images(plan, ts, seed), "files": lambda: _rows_files(plan, ts),
        "task_runs": lambda: _rows_runs(plan, ts), "labels": lambda: _rows_labels(plan),
        "faces": lambda: _rows_faces(plan), "normalizations": lambda: _rows_normalizations(plan),
        "phashes": lambda: _rows_phashes(plan), "near_pairs": lambda: _rows_near_pairs(plan),
        "artifacts": lambda: _rows_artifacts(plan),
    }[table]()


def fill(engine, plan: Plan, seed: int, log: Callable[[str], None], tables: tuple[str, ...] = TABLES) -> dict[str, int]:
    """Write the plan's rows into ``tables`` of a migrated, empty store; returns the rows per table."""
    backend = engine.url.get_backend_name()
    ts = Stamps(backend)
    counts: dict[str, int] = {}
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        if backend == "postgresql":
            with conn.cursor() as cur:
                cur.execute("SET maintenance_work_mem = '512MB'")
                for table in tables:
                    start = time.perf_counter()
                    # The migrations' indexes, unique constraints and foreign keys are made again after
                    # the rows are in, from their own definitions: one sort or one check each, rather
                    # than a b-tree insert and a foreign-key look-up per row. The tables' own triggers
                    # (the counts migration 0007 keeps) fire as for any insert.
                    cur.execute("SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i "
                                "WHERE indrelid = %s::regclass AND NOT EXISTS "
                                "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)", (table,))
                    indexes = cur.fetchall()
                    cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                                "WHERE conrelid = %s::regclass AND contype IN ('u', 'f') ORDER BY contype DESC",
                                (table,))
                    constraints = cur.fetchall()
                    for name, _ in indexes:
                        cur.execute(f'DROP INDEX "{name}"')
                    for name, _ in constraints:
                        cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
                    n = 0
                    with cur.copy(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN") as copy:
                        for row in _table_rows(table, plan, ts, seed):
                            copy.write_row(row)
                            n += 1
                    for name, definition in constraints:
                        cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
                    for _, definition in indexes:
                        cur.execute(definition)
                    counts[table] = n
                    log(f"  {table}: {n:,} rows in {time.perf_counter() - start:.1f} s")
                cur.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), %s)", (plan.n,))
            conn.commit()
        else:
            conn.execute("PRAGMA synchronous=OFF")
            for table in tables:
                # The migrations' indexes (not those of UNIQUE, which belong to the table), made again after.
                indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                       "AND sql IS NOT NULL", (table,)).fetchall()
                for name, _ in indexes:
                    conn.execute(f'DROP INDEX "{name}"')
                n = 0
                sql = f"INSERT INTO {table} ({', '.join(COLUMNS[table])}) VALUES ({', '.join('?' * len(COLUMNS[table]))})"
                rows = _table_rows(table, plan, ts, seed)
                while batch := list(itertools.islice(rows, 100_000)):
                    conn.execute("BEGIN")
                    conn.executemany(sql, batch)
                    conn.execute("COMMIT")
                    n += len(batch)
                for _, definition in indexes:
                    conn.execute(definition)
                counts[table] = n
            conn.execute("PRAGMA synchronous=NORMAL")
    finally:
        raw.close()
    return counts


def vacuum_analyze(engine, log: Callable[[str], None]) -> None:
    start = time.perf_counter()
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as c:
            c.exec_driver_sql("ANALYZE")
    log(f"  vacuum and analyze: {time.perf_counter() - start:.1f} s")


#: The migration that starts keeping counts (``ledger_counts``, its triggers): the tables are filled
#: just before it, so that it counts the synthetic archive once, set-based, as it counts any store
#: that existed before it, and the fill's COPY runs without the triggers.
COUNTS_REVISION = "0007"


def migrate_for_fill(engine) -> bool:
    """Migrate to just before :data:`COUNTS_REVISION` (True), or to the newest when there is no such
    revision (False: the counts are then folded after the fill)."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from storage.db import alembic_config, migrate

    cfg = alembic_config(engine)
    try:
        revision = ScriptDirectory.from_config(cfg).get_revision(COUNTS_REVISION)
    except Exception:  # noqa: BLE001 - no such revision: the newest schema, folded after
        revision = None
    if revision is None or not revision.down_revision:
        migrate(engine)
        return False
    command.upgrade(cfg, str(revision.down_revision))
    return True


def fill_store(engine, plan: Plan, seed: int, log: Callable[[str], None]) -> dict[str, int]:
    """A new store's schema from the migrations, the plan's rows, the counts `status` reads, and
    VACUUM ANALYZE; returns the rows per table."""
    from storage import ledger
    from storage.db import migrate, session_factory

    before_counts = migrate_for_fill(engine)
    counts = fill(engine, plan, seed, log, tuple(t for t in TABLES if t not in LATE_TABLES))
    start = time.perf_counter()
    migrate(engine)
    counts.update(fill(engine, plan, seed, log, LATE_TABLES))
    if not before_counts:
        ledger.fold_pending(session_factory(engine))
    log(f"  migrated to the newest schema, counts made: {time.perf_counter() - start:.1f} s")
    vacuum_analyze(engine, log)
    return counts


def table_sizes(engine) -> dict[str, tuple[int, int]]:
    """table -> (rows, bytes with its indexes)."""
    from sqlalchemy import text

    out = {}
    with engine.connect() as c:
        for table in TABLES:
            rows = c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            if engine.url.get_backend_name() == "postgresql":
                size = c.execute(text("SELECT pg_total_relation_size(:t)"), {"t": table}).scalar_one()
            else:
                size = c.execute(text(
                    "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN "
                    "(SELECT name FROM sqlite_master WHERE tbl_name = :t)"), {"t": table}).scalar_one()
            out[table] = (int(rows), int(size))
    return out


# --- scratch stores --------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_store(backend: str, postgres_url: str, folder: Path, log: Callable[[str], None]) -> Iterator[str]:
    """A new, empty database's URL; dropped (PostgreSQL) or deleted (SQLite) afterwards, whatever happens."""
    if backend == "sqlite":
        path = folder / f"ledger-{os.getpid()}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", ".migrate-lock"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = scratch_name()
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            log(f"scratch database {name} dropped")
    finally:
        admin.dispose()


def scratch_name() -> str:
    return f"darkroom_bench_{os.getpid()}"


# --- the measurements ------------------------------------------------------------------------------------


class Statements:
    """Counts the SQL statements an engine executes (the bench prints them per command: a command
    whose statements grow with its images is where its time goes)."""

    def __init__(self) -> None:
        self.events = 0

    @property
    def n(self) -> int:
        """Statements so far: those SQLAlchemy ran, and those the Results JSON's page queries ran
        on the driver's cursor (``storage.results.PageQuery``, which pass by its events)."""
        from storage.results import PageQuery

        return self.events + PageQuery.executed

    def count(self, engine) -> None:
        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", self._one)

    def _one(self, *_args) -> None:
        self.events += 1


#: Statements of the last call timed by :func:`_median_s` (per command, see :func:`measure_size`).
STATEMENTS = Statements()


def _median_s(fn: Callable[[], Any], times: int) -> tuple[float, int]:
    """(median seconds of ``times`` calls after a warm-up, statements of one call)."""
    fn()  # warm: the first call also loads the code and the plan
    seconds = []
    for _ in range(times):
        before = STATEMENTS.n
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), STATEMENTS.n - before


def _results_api():
    """storage.results' look-up and paging functions (see README: Results JSON)."""
    from storage import results

    return results


def _settings(**values):
    from darkroom.settings import Settings

    return Settings(_env_file=None, **values)


def time_status(factory, repeat: int = 3) -> tuple[float, int]:
    from storage import ledger, progress
    from storage.db import read_only

    def once():
        ledger.fold_pending(factory, seconds=5)  # nothing to fold in a store at rest: one look
        with read_only(factory) as s:
            ledger.run_counts(s)
            ledger.image_counts(s)
            progress.problem_groups(s, limit=20)
    return _median_s(once, repeat)


def time_photos(factory, plan: Plan, seed: int, lookups: int) -> dict[str, tuple[float, int]]:
    from darkroom import catalog
    from storage.db import read_only

    results = _results_api()
    settings = _settings()
    step = max(1, plan.n // lookups)
    ids = [i for i in range(1, plan.n + 1, step) if plan.rejected[i - 1] == 0][:lookups]

    def lookup(selectors: list[str]) -> tuple[float, int]:
        seconds = []
        for k, sel in enumerate([selectors[0], *selectors]):
            before = STATEMENTS.n
            start = time.perf_counter()
            with read_only(factory) as s:
                image = results.find_image(s, sel)
                if image is None:
                    raise RuntimeError(f"find_image found no image for {sel}")
                catalog.results_json(s, [image], settings)
            if k:  # the first is a warm-up
                seconds.append(time.perf_counter() - start)
        return statistics.median(seconds), STATEMENTS.n - before

    return {PHOTO_PATH: lookup([path_of(i, plan.n) for i in ids]), PHOTO_SHA: lookup([sha_of(i, seed) for i in ids])}


def page_filters(plan: Plan) -> dict[str, dict[str, Any]]:
    return {PAGE_LABEL: {"label": plan.common_label, "min_score": 0.5},
            PAGE_FACES: {"faces": 2, "faces_or_more": True},
            PAGE_FAILED: {"status": "failed"}}


def time_pages(factory, plan: Plan, repeat: int = 3) -> dict[str, tuple[float, int]]:
    from darkroom import catalog
    from storage.db import read_only

    results = _results_api()
    settings = _settings()
    out = {}
    for name, fields in page_filters(plan).items():
        flt = results.ResultFilter(**fields)

        def once(flt=flt, name=name):
            with read_only(factory) as s:
                page = results.select_page(s, flt, limit=100)
                if not page:  # a small archive may hold fewer than 100, never none
                    raise RuntimeError(f"{name}: no image matches")
                catalog.results_json(s, page, settings)
        out[name] = _median_s(once, repeat)
    return out


def _child(kind: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``kind`` in a new Python process (so that its memory is its own) and return what it printed."""
    done = subprocess.run([sys.executable, "-m", "bench.ledger", kind, json.dumps(args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _vm_kb(key: str) -> int:
    from bench.procs import status_kb

    return status_kb(os.getpid(), key) or 0


def _memory_start() -> int:
    """The resident memory now (KiB), with the peak reset to it where Linux allows."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _vm_kb("VmRSS")


def _memory_growth_mb(start_kb: int) -> float:
    return max(0, _vm_kb("VmHWM") - start_kb) / 1024.0


def time_stream(url: str, seconds: float, work: Path, jobs: int | None = None) -> dict[str, Any]:
    """`darkroom results --jsonl` over the whole store, as a person runs it (``jobs``: its --jobs;
    None: its default, worker processes past the first pages), its output read here: the images/s
    from its first line to its last (the CLI's start-up apart), and the memory of the command and
    its workers together (their proportional set sizes, PSS, summed: a page a forked worker shares
    with the writer counts once), sampled twice a second: its peak, and its growth from when the
    first line came. Stopped after ``seconds`` of output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(DARKROOM_DATABASE_URL=url, DARKROOM_DATA_DIR=str(work / "stream"), TF_CPP_MIN_LOG_LEVEL="2",
               DARKROOM_START_LOCAL_REDIS="false")
    work.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "darkroom", "results", "--jsonl", *(["--jobs", str(jobs)] if jobs else [])]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, bufsize=1 << 20)
        images = nbytes = 0
        first = base_kb = None
        peak_kb = processes = 0
        sampled = 0.0
        stopped = False
        try:
            # Read as `wc -l` would, a block at a time (a Python loop over lines would take a good part
            # of a 2-core machine from the stream it measures); the first line is checked as JSON.
            head = b""
            while chunk := proc.stdout.read1(1 << 20):
                if first is None:
                    head += chunk
                    if b"\n" not in head:
                        continue
                    first = time.perf_counter()
                    base_kb, _ = _tree_pss_kb(proc.pid)
                    json.loads(head.split(b"\n", 1)[0])
                    chunk, head = head, b""
                images += chunk.count(b"\n")
                nbytes += len(chunk)
                now = time.perf_counter()
                if now - sampled >= 0.5:
                    sampled = now
                    kb, n = _tree_pss_kb(proc.pid)
                    peak_kb, processes = max(peak_kb, kb), max(processes, n)
                if now - first > seconds:
                    stopped = True
                    break
            end = time.perf_counter()
            if stopped:
                proc.terminate()
        finally:
            proc.stdout.close()
            proc.wait()
        if not stopped and proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"darkroom results --jsonl failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    if first is None:
        raise RuntimeError("darkroom results --jsonl printed nothing")
    streamed = end - first
    peak_kb = max(peak_kb, base_kb or 0)
    return {"seconds": streamed, "startup_s": first - start, "images": images, "bytes": nbytes, "stopped": stopped,
            "img_s": (images - 1) / streamed if streamed > 0 else float(images), "processes": processes,
            "memory_mb": max(0, peak_kb - (base_kb or 0)) / 1024.0, "peak_mb": peak_kb / 1024.0}


def _tree_pss_kb(pid: int) -> tuple[int, int]:
    """(the summed PSS, KiB, of ``pid`` and its children; how many processes that is)."""
    from bench.procs import children

    pids = [pid, *children(pid)]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total, len(pids)


def child_reconcile(args: dict[str, Any]) -> dict[str, Any]:
    """The broker lost everything (its marker key is gone): the reconciler resends every pending run."""
    import redis

    from producer.reconciler import EPOCH_KEY, Reconciler
    from producer.registrar import Registrar
    from storage import ledger
    from worker.app import create_app
    from worker.queues import queue_depths

    settings = _settings(data_dir=Path(args["data_dir"]), database_url=args["url"], broker_url=args["redis_url"],
                         max_queue_depth=10**9)
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[])
    STATEMENTS.count(registrar.sessions.kw["bind"])
    client = redis.Redis.from_url(args["redis_url"])
    client.flushall()
    with registrar.sessions() as s:
        pending = ledger.pending_count(s)
    start_kb = _memory_start()
    before = STATEMENTS.n
    start = time.perf_counter()
    result = Reconciler(registrar).check()
    seconds = time.perf_counter() - start
    statements = STATEMENTS.n - before
    memory = _memory_growth_mb(start_kb)
    with registrar.sessions() as s:
        unsent = len(ledger.unsent_runs(s, limit=10))
    messages = sum(queue_depths(client).values())
    assert client.get(EPOCH_KEY) is not None
    client.flushall()
    return {"seconds": seconds, "pending": pending, "resent": result.resent, "broker_lost": result.broker_lost,
            "unsent_after": unsent, "messages": messages, "memory_mb": memory, "statements": statements}


CHILDREN = {"reconcile": child_reconcile}


def time_rerun(factory) -> dict[str, Any]:
    from storage import ledger
    from storage.db import transaction

    before = STATEMENTS.n
    start = time.perf_counter()
    with transaction(factory) as s:
        done = ledger.rerun(s, "phash", "")
    return {"seconds": time.perf_counter() - start, "created": len(done.created), "requeued": len(done.requeued),
            "statements": STATEMENTS.n - before}


def time_pairing(factory, plan: Plan, photos: int = 200) -> dict[str, Any]:
    """What the phash task's save costs with its near-duplicate pairing (a band look-up a photo,
    under the pairing lock): new hashes for ``photos`` hashed photos spread over the store, half of
    them a bit away from another photo's (so pairs are written too), saved in batches of 16 as a
    worker saves them; rolled back."""
    from sqlalchemy import func, select

    from storage import results
    from storage.models import NearPair, PHash

    t = [w[0] for w in WORK].index("phash")
    done = [i for i in range(2, plan.n + 1, max(2, plan.n // (4 * photos))) if _done(plan, i, t)][:photos]
    rng = np.random.default_rng(3)
    items = []
    for k, i in enumerate(done):
        # every other one a bit away from the hash of the photo just before it (one that keeps its hash)
        if k % 2 and i - 1 not in done and _done(plan, i - 1, t):
            value = (plan.hashes[i - 2] & (2**64 - 1)) ^ (1 << int(rng.integers(0, 64)))
        else:
            value = int(rng.integers(0, 2**63)) << 1
        items.append((i, f"{value:016x}"))
    with factory() as s:
        s.begin()
        before = STATEMENTS.n
        start = time.perf_counter()
        for b in range(0, len(items), 16):
            results.PHASHES.save(s, "", items[b:b + 16])
        seconds = time.perf_counter() - start
        statements = STATEMENTS.n - before
        pairs = s.scalar(select(func.count()).select_from(NearPair).where(NearPair.image_id.in_([i for i, _ in items])))
        assert s.scalar(select(func.count()).select_from(PHash).where(PHash.image_id.in_(done))) == len(done)
        s.rollback()
    return {"seconds": seconds, "photos": len(items), "ms_per_photo": 1000 * seconds / max(1, len(items)),
            "pairs": pairs, "statements": statements}


# --- real files: registration against sha256sum ----------------------------------------------------------


def make_jpegs(folder: Path, count: int, log: Callable[[str], None]) -> list[Path]:
    """``count`` distinct real JPEGs of 2-4 MB: scikit-image's photos upscaled to 6-12 MP with a
    little grain, each file a base photo with its own comment segment (so every sha256 differs)."""
    from PIL import Image

    from bench.corpus import _source, available_sources

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    bases = []
    for name in available_sources()[:min(6, count)]:
        src = Image.fromarray(_source(name))
        scale = 3000 / max(src.size)
        big = np.asarray(src.resize((round(src.width * scale), round(src.height * scale)), Image.Resampling.LANCZOS),
                         dtype=np.int16)
        grain = rng.normal(0, 6, big.shape).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
        if 2_000_000 <= buf.tell() <= 4_200_000:
            bases.append(buf.getvalue())
    if not bases:
        raise RuntimeError("could not make a 2-4 MB JPEG from the scikit-image photos")
    paths = []
    for i in range(count):
        base = bases[i % len(bases)]
        comment = f"darkroom bench ledger {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        path = folder / f"IMG_{i:05d}.jpg"
        path.write_bytes(base[:2] + segment + base[2:])
        paths.append(path)
    sizes = [p.stat().st_size for p in paths]
    log(f"{count} JPEGs of {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB in {folder}")
    return paths


def sha256sum_files_s(paths: list[Path]) -> tuple[float, int]:
    """Files per second of ``sha256sum`` in as many processes as there are cores (best of two), and the cores."""
    from bench.procs import cores

    n = cores()
    for p in paths:  # into the page cache, as the registration will find them
        p.read_bytes()
    per = math.ceil(len(paths) / n)
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        procs = [subprocess.Popen(["sha256sum", *map(str, paths[k:k + per])], stdout=subprocess.DEVNULL)
                 for k in range(0, len(paths), per)]
        if any(proc.wait() != 0 for proc in procs):
            raise RuntimeError("sha256sum failed")
        best = min(best, time.perf_counter() - start)
    return len(paths) / best, n


def blob_mode() -> str:
    """In place ('reference') when this Darkroom has it, else copy."""
    from pydantic import ValidationError

    try:
        _settings(blob_mode="reference")
        return "reference"
    except ValidationError:
        return "copy"


def time_register(url: str, redis_url: str, paths: list[Path], data_dir: Path, mode: str) -> dict[str, Any]:
    from producer.registrar import Outcome, Registrar
    from worker.app import create_app

    settings = _settings(data_dir=data_dir, database_url=url, broker_url=redis_url, blob_mode=mode)
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[paths[0].parent])
    STATEMENTS.count(registrar.sessions.kw["bind"])
    for p in paths:
        p.read_bytes()
    before = STATEMENTS.n
    start = time.perf_counter()
    outcomes = []
    for k in range(0, len(paths), 32):  # as `darkroom ingest` records them: 32 a transaction
        outcomes += registrar.register_many(paths[k:k + 32], send=False)
    seconds = time.perf_counter() - start
    if any(o is not Outcome.NEW for o in outcomes):
        raise RuntimeError(f"registration: {sorted({o.value for o in outcomes})}, not all new")
    registrar.sessions.kw["bind"].dispose()
    return {"seconds": seconds, "files": len(paths), "files_s": len(paths) / seconds, "statements": STATEMENTS.n - before,
            "mb_s": sum(p.stat().st_size for p in paths) / 1e6 / seconds}


# --- the run -------------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the bench's own on a free port, without persistence, in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        import socket

        import redis

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _check_work() -> None:
    from darkroom import catalog

    planned = tuple(catalog.planned_work(_settings(tasks=list(catalog.NAMES), classifier_model=CLASSIFY,
                                                   classifier_weights="imagenet")))
    if planned != WORK:
        raise RuntimeError(f"the catalog plans {planned}, the bench fills {WORK}: update bench/ledger.py")


def measure_size(backend: str, url: str, plan: Plan, opts: Options, redis_url: str, paths: list[Path], mode: str,
                 work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from storage.db import make_engine, migrate, session_factory

    engine = make_engine(url)
    try:
        start = time.perf_counter()
        counts = fill_store(engine, plan, opts.seed, log)
        fill_s = time.perf_counter() - start
        log(f"{backend} {plan.n:,}: filled {sum(counts.values()):,} rows in {fill_s:.1f} s")
        sizes = table_sizes(engine)
        STATEMENTS.count(engine)
        factory = session_factory(engine)
        seconds: dict[str, float] = {}
        statements: dict[str, int] = {}
        extra: dict[str, Any] = {"fill_s": fill_s, "tables": sizes, "statements": statements}
        timed = {STATUS: time_status(factory, opts.repeat), **time_photos(factory, plan, opts.seed, opts.lookups),
                 **time_pages(factory, plan, opts.repeat)}
        for command, (s, k) in timed.items():
            seconds[command], statements[command] = s, k
        log("  " + ", ".join(f"{k} {seconds[k] * 1000:.1f} ms ({statements[k]} statements)" for k in timed))
        migrate(engine)  # `results` wants the newest schema: one added while the bench ran is made now
        stream = time_stream(url, opts.stream_seconds, work)
        seconds[STREAM] = stream["seconds"]
        extra["stream"] = stream
        # The baseline in the same run: the stream in one process (--jobs 1).
        one = extra["stream_one"] = time_stream(url, min(opts.stream_seconds, STREAM_ONE_SECONDS), work, jobs=1)
        log(f"  stream {stream['images']:,} images in {stream['seconds']:.1f} s: {stream['img_s']:,.0f} images/s in "
            f"{stream['processes']} processes ({stream['img_s'] / one['img_s']:.2f}x one process's "
            f"{one['img_s']:,.0f}/s), +{stream['memory_mb']:.0f} MB")
        rec = _child("reconcile", {"url": url, "redis_url": redis_url, "data_dir": str(work / "reconcile")},
                     timeout=3600)
        if not rec["broker_lost"] or rec["resent"] != rec["pending"] or rec["unsent_after"]:
            raise RuntimeError(f"the reconciler did not resend every pending run: {rec}")
        seconds[RECONCILE], statements[RECONCILE] = rec["seconds"], rec["statements"]
        extra["reconcile"] = rec
        log(f"  reconciler resent {rec['resent']:,} runs in {rec['seconds']:.1f} s ({rec['messages']:,} messages), "
            f"+{rec['memory_mb']:.0f} MB")
        rerun = time_rerun(factory)
        seconds[RERUN], statements[RERUN] = rerun["seconds"], rerun["statements"]
        extra["rerun"] = rerun
        log(f"  rerun phash: {rerun['requeued']:,} runs requeued in {rerun['seconds']:.1f} s")
        pairing = time_pairing(factory, plan)
        extra["pairing"] = pairing
        log(f"  phash save with pairing: {pairing['ms_per_photo']:.1f} ms a photo ({pairing['photos']} photos, "
            f"{pairing['pairs']} pairs, {pairing['statements']} statements)")
        if paths:
            # The counts of what the rerun changed are folded first: that is the rerun's work, which
            # the registrar's periodic fold would otherwise do inside the registration timed here.
            from storage import ledger as ledger_of

            ledger_of.fold_pending(factory)
            reg = time_register(url, redis_url, paths, work / f"register-{backend}-{plan.n}", mode)
            shutil.rmtree(work / f"register-{backend}-{plan.n}", ignore_errors=True)
            seconds[REGISTER], statements[REGISTER] = reg["seconds"], reg["statements"]
            extra["register"] = reg
            log(f"  registered {reg['files']} files in {reg['seconds']:.2f} s: {reg['files_s']:.1f} files/s, "
                f"{reg['mb_s']:.0f} MB/s")
        return {"n": plan.n, "seconds": seconds, **extra}
    finally:
        engine.dispose()


def run(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every size on every database; returns the measurements (see :func:`report`)."""
    from bench.procs import cores, cpu_model, memory_gb

    _check_work()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the scratch database is dropped
    data: dict[str, Any] = {"machine": {"cpu": cpu_model(), "cores": cores(), "memory_gb": memory_gb()},
                            "sizes": opts.sizes, "dbs": {}, "files": opts.files}
    try:
        with tempfile.TemporaryDirectory(prefix="darkroom-bench-ledger-") as tmp:
            work = Path(tmp)
            paths: list[Path] = []
            if opts.files:
                paths = make_jpegs(work / "photos", opts.files, log)
                data["sha256sum_files_s"], data["hash_processes"] = sha256sum_files_s(paths)
                data["register_mode"] = blob_mode()
                data["file_mb"] = sum(p.stat().st_size for p in paths) / 1e6 / len(paths)
                log(f"sha256sum in {data['hash_processes']} processes: {data['sha256sum_files_s']:.1f} files/s; "
                    f"registration in {data['register_mode']} mode")
            redis = PrivateRedis(work)
            try:
                for backend in opts.dbs:
                    rows = []
                    for n in opts.sizes:
                        plan = Plan.draw(n, opts.seed)
                        with scratch_store(backend, opts.postgres_url, work, log) as url:
                            if backend == "postgresql":
                                data.setdefault("scratch", scratch_name())
                            rows.append(measure_size(backend, url, plan, opts, redis.url, paths, data.get("register_mode", ""),
                                                     work, log))
                    data["dbs"][backend] = rows
            finally:
                redis.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if opts.json_path:
        opts.json_path.write_text(json.dumps(data, indent=2, default=str))
    return data


# --- the report ------------------------------------------------------------------------------------------


def _per_1k(command: str, row: dict[str, Any]) -> float | None:
    s = row["seconds"].get(command)
    if s is None:
        return None
    if command == STREAM:
        return s / row["stream"]["images"] * 1000 if row["stream"]["images"] else None
    if command == REGISTER:
        return s / row["register"]["files"] * 1000
    return s / row["n"] * 1000


def _statements(command: str, row: dict[str, Any]) -> str:
    """The statements one call made at this size (the stream's: per image; registration's: per file)."""
    k = row.get("statements", {}).get(command)
    if k is None:
        return "-"
    if command == STREAM and row["stream"]["images"]:
        return f"{k / row['stream']['images']:.2f}/image"
    if command == REGISTER:
        return f"{k / row['register']['files']:.1f}/file"
    return f"{k:,}"


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:,.2f} s"


def verdicts(data: dict[str, Any], backend: str) -> dict[str, tuple[str, bool | None]]:
    """command -> (what is wanted, met?) at the largest size, growth included."""
    rows = data["dbs"][backend]
    last, first = rows[-1], rows[0]
    out: dict[str, tuple[str, bool | None]] = {}
    for command in COMMANDS:
        s = last["seconds"].get(command)
        if s is None:
            continue
        wanted, met = [], []
        if command in LIMIT_S:
            wanted.append(f"<= {_fmt_s(LIMIT_S[command])}")
            met.append(s <= LIMIT_S[command])
        if command == STREAM:
            st = last["stream"]
            wanted.append(f">= {STREAM_MIN_IMG_S:,}/s in <= {STREAM_MAX_MB} MB")
            met.append(st["img_s"] >= STREAM_MIN_IMG_S and st["memory_mb"] <= STREAM_MAX_MB)
        if command == RECONCILE:
            rec = last["reconcile"]
            wanted.append("every run resent")
            met.append(rec["resent"] == rec["pending"] and rec["unsent_after"] == 0)
        if command == REGISTER:
            ratio = last["register"]["files_s"] / data["sha256sum_files_s"]
            wanted.append(f">= {REGISTER_MIN_RATIO}x sha256sum")
            met.append(ratio >= REGISTER_MIN_RATIO)
        if len(rows) > 1:
            a, b = _per_1k(command, first), _per_1k(command, last)
            if a and b is not None:
                wanted.append(f"growth <= {GROWTH_MAX}x")
                met.append(b / a <= GROWTH_MAX)
        out[command] = (", ".join(wanted), all(met) if met else None)
    return out


def _table(head: list[str], lines: list[list[str]], left: int = 1) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


NAMES = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


def report(data: dict[str, Any]) -> str:
    """The measurements as plain-text tables."""
    m = data["machine"]
    parts = [f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB"]
    if data.get("sha256sum_files_s"):
        parts.append(f"real files: {data['files']} JPEGs of {data['file_mb']:.1f} MB on average; sha256sum in "
                     f"{data['hash_processes']} processes: {data['sha256sum_files_s']:.1f} files/s "
                     f"({data['sha256sum_files_s'] * data['file_mb']:.0f} MB/s); registration in "
                     f"{data['register_mode']} mode")
    for backend, rows in data["dbs"].items():
        sizes = [r["n"] for r in rows]
        judged = verdicts(data, backend)
        head = ["command"]
        for n in sizes:
            head += [f"{n:,}", "per 1k"]
        head += ["growth", f"target at {sizes[-1]:,}", "met", "SQL statements"]
        lines = []
        for command in COMMANDS:
            if command not in rows[-1]["seconds"]:
                continue
            name = command
            if command == REGISTER:
                name = f"register {data['files']} real JPEGs ({data['register_mode']})"
            line = [name]
            for r in rows:
                line += [_fmt_s(r["seconds"].get(command)), _fmt_s(_per_1k(command, r))]
            a, b = _per_1k(command, rows[0]), _per_1k(command, rows[-1])
            line.append(f"{b / a:.2f}x" if a and b is not None and len(rows) > 1 else "-")
            wanted, met = judged.get(command, ("", None))
            line += [wanted, "-" if met is None else ("yes" if met else "NO"), _statements(command, rows[-1])]
            lines.append(line)
        parts.append(f"\n{NAMES[backend]}: seconds per command, cost per 1,000 images (registration: per 1,000 files)\n"
                     + _table(head, lines))
        details = []
        for r in rows:
            st, rec, rr = r["stream"], r["reconcile"], r["rerun"]
            one = r.get("stream_one")
            text = (f"{r['n']:,}: fill {r['fill_s']:.1f} s; stream {st['images']:,} images"
                    f"{' (stopped at the time limit)' if st['stopped'] else ''}, {st['img_s']:,.0f} images/s"
                    f" in {st.get('processes', 1)} processes"
                    + (f" = {st['img_s'] / one['img_s']:.2f}x one process's {one['img_s']:,.0f}/s" if one else "") + ", "
                    f"{st['bytes'] / st['images'] if st['images'] else 0:,.0f} bytes of JSON each, "
                    f"+{st['memory_mb']:.0f} MB; reconciler {rec['resent']:,} runs resent in {rec['messages']:,} "
                    f"messages, +{rec['memory_mb']:.0f} MB; rerun {rr['requeued']:,} runs requeued")
            if "pairing" in r:
                text += f"; phash save with pairing {r['pairing']['ms_per_photo']:.1f} ms a photo"
            if "register" in r:
                reg = r["register"]
                text += (f"; register {reg['files_s']:.1f} files/s, {reg['mb_s']:.0f} MB/s = "
                         f"{reg['files_s'] / data['sha256sum_files_s']:.2f}x sha256sum")
            details.append(text)
        parts.append("\n".join(details))
        head = ["table"]
        for n in sizes:
            head += [f"rows at {n:,}", "MB"]
        lines = []
        for table in TABLES:
            line = [table]
            for r in rows:
                count, size = r["tables"][table]
                line += [f"{count:,}", f"{size / 1e6:,.1f}"]
            lines.append(line)
        line = ["all"]
        for r in rows:
            line += [f"{sum(c for c, _ in r['tables'].values()):,}",
                     f"{sum(b for _, b in r['tables'].values()) / 1e6:,.1f}"]
        lines.append(line)
        parts.append(f"\n{NAMES[backend]}: rows and bytes per table (with its indexes)\n" + _table(head, lines))
    both = data["dbs"].get("postgresql"), data["dbs"].get("sqlite")
    if all(both):
        common = sorted({r["n"] for r in both[0]} & {r["n"] for r in both[1]})
        if common:
            n = common[-1]
            pg = next(r for r in both[0] if r["n"] == n)
            lite = next(r for r in both[1] if r["n"] == n)
            lines = []
            for command in COMMANDS:
                a, b = pg["seconds"].get(command), lite["seconds"].get(command)
                if a is None or b is None:
                    continue
                lines.append([command, _fmt_s(a), _fmt_s(b), f"{b / a:.2f}x", "yes" if b / a <= SQLITE_MAX_RATIO else "NO"])
            parts.append(f"\nSQLite against PostgreSQL at {n:,} images (target: within {SQLITE_MAX_RATIO:g}x)\n"
                         + _table(["command", "PostgreSQL", "SQLite", "SQLite / PG", "met"], lines))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] in CHILDREN:  # a measurement in a process of its own
        print(json.dumps(CHILDREN[argv[0]](json.loads(argv[1]))))
        return 0
    print("usage: darkroom bench ledger --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["COMMANDS", "Options", "Plan", "fill", "report", "run", "scratch_store", "table_sizes"]
