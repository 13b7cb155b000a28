"""Near-duplicate pairs stored when a hash is saved (issue 12): a page's near-duplicates are one
indexed read, the same as the look-ups through the bands; hashes saved before pairs existed are
looked up until the reconciler's pairing reaches them; two near-duplicates hashed at the same
moment by two workers still pair. Real SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import event, func, select, update

from storage import files, results
from storage.db import transaction
from storage.models import NearPair, PHash

N = 120


def _planted(seed: int = 7) -> list[int]:
    """``N`` hashes: clusters of near-duplicates (0–12 bits apart) among random ones."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < N:
        base = int(rng.integers(0, 2**63)) << 1 | int(rng.integers(0, 2))
        out.append(base)
        for _ in range(int(rng.integers(0, 4))):
            flips = rng.choice(64, size=int(rng.integers(0, 13)), replace=False)
            out.append(base ^ sum(1 << int(b) for b in flips))
    return out[:N]


def _register(s, i: int) -> int:
    reg = files.register_file(s, path=f"/p/{i}.jpg", size_bytes=1, mtime_ns=1, sha256=f"{i:064x}", fmt="JPEG",
                              width=8, height=8, rejected_reason=None, work=[("phash", "")])
    s.flush()
    return reg.image_id


@pytest.fixture()
def hashed(sessions):
    """``N`` photos with the planted hashes, saved in batches of 16 as the phash task saves them."""
    hashes = _planted()
    with transaction(sessions) as s:
        ids = [_register(s, i) for i in range(N)]
    for start in range(0, N, 16):
        with transaction(sessions) as s:
            results.PHASHES.save(s, "", [(ids[k], f"{hashes[k]:016x}") for k in range(start, min(N, start + 16))])
    return sessions, ids, hashes


def _truth(ids, hashes, distance) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for a, ha in zip(ids, hashes):
        near = sorted(b for b, hb in zip(ids, hashes) if b != a and bin(ha ^ hb).count("1") <= distance)
        if near:
            out[a] = near
    return out


@pytest.mark.parametrize("distance", [0, 4, 8, 10])
def test_stored_pairs_are_every_pair_within_the_distance_both_ways(hashed, distance):
    sessions, ids, hashes = hashed
    with sessions() as s:
        got = {k: sorted(v) for k, v in results.PHASHES.stored_pairs(s, ids, distance).items()}
        assert got == _truth(ids, hashes, distance)
        assert got, "the planted clusters give pairs"
        # The look-ups through the bands agree.
        assert {k: sorted(v) for k, v in results.PHASHES._near_ids(s, dict(zip(ids, hashes)), distance).items()} == got


def test_a_page_reads_its_near_duplicates_in_a_few_statements(hashed):
    sessions, ids, hashes = hashed
    ctx = results.ReadContext(near_distance=8)
    with sessions() as s:
        statements: list[str] = []
        listen = lambda *a: statements.append(a[2]) if a[2].lstrip().upper().startswith("SELECT") else None  # noqa: E731
        event.listen(s.get_bind(), "before_cursor_execute", listen)
        try:
            read = results.PHASHES.read(s, ids, ctx)
        finally:
            event.remove(s.get_bind(), "before_cursor_execute", listen)
        # The hashes, the pairs, the sha256s: no statement per photo.
        assert len(statements) <= 3, statements
        want = _truth(ids, hashes, 8)
        sha = {i: f"{k:064x}" for k, i in enumerate(ids)}
        assert {i: v["near_duplicates"] for i, v in read.items() if v["near_duplicates"]} == \
            {i: sorted(sha[o] for o in others) for i, others in want.items()}


def test_a_new_hash_replaces_its_pairs(hashed):
    sessions, ids, hashes = hashed
    a = next(i for i, others in _truth(ids, hashes, 10).items())
    far = hashes[ids.index(a)] ^ (2**64 - 1)  # every bit flipped: near none of the cluster
    with transaction(sessions) as s:
        results.PHASHES.save(s, "", [(a, f"{far:016x}")])
    with sessions() as s:
        new = [far if i == a else h for i, h in zip(ids, hashes)]
        assert {k: sorted(v) for k, v in results.PHASHES.stored_pairs(s, ids, 10).items()} == _truth(ids, new, 10)


def test_hashes_saved_before_pairs_are_looked_up_then_paired(hashed):
    """As after migration 0012 on an existing store: no pairs, ``paired_within`` NULL."""
    sessions, ids, hashes = hashed
    with transaction(sessions) as s:
        s.execute(NearPair.__table__.delete())
        s.execute(update(PHash).values(paired_within=None))
    ctx = results.ReadContext(near_distance=8)
    sha = {i: f"{k:064x}" for k, i in enumerate(ids)}
    want = {i: sorted(sha[o] for o in others) for i, others in _truth(ids, hashes, 8).items()}
    with sessions() as s:
        assert results.PHASHES.looks_up(s, 8)
        read = results.PHASHES.read(s, ids, ctx)
        assert {i: v["near_duplicates"] for i, v in read.items() if v["near_duplicates"]} == want
    assert results.pair_pending(sessions, chunk=50) == N
    with sessions() as s:
        assert not results.PHASHES.looks_up(s, 8) and results.PHASHES.looks_up(s, results.PAIR_DISTANCE + 1)
        assert s.scalar(select(func.count()).select_from(PHash).where(PHash.paired_within.is_(None))) == 0
        assert {k: sorted(v) for k, v in results.PHASHES.stored_pairs(s, ids, 10).items()} == _truth(ids, hashes, 10)
        read = results.PHASHES.read(s, ids, ctx)
        assert {i: v["near_duplicates"] for i, v in read.items() if v["near_duplicates"]} == want
    assert results.pair_pending(sessions) == 0


@pytest.mark.postgres
def test_two_near_duplicates_hashed_at_once_by_two_workers_pair(postgres_url):
    """Worker A has saved its hash and not committed when worker B saves a near-duplicate: B waits
    for A's commit (the pairing lock) and then sees A's hash. Without the lock neither would see the
    other and the pair would be lost."""
    from storage.db import make_engine, migrate, session_factory

    engine = make_engine(postgres_url)
    migrate(engine)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        a, b = _register(s, 1), _register(s, 2)
    ha = 0x0123456789ABCDEF
    hb = ha ^ 0b101
    first = sessions()
    first.begin()
    results.PHASHES.save(first, "", [(a, f"{ha:016x}")])  # A's row written, not committed
    done = threading.Event()

    def worker_b():
        with transaction(sessions) as s:
            results.PHASHES.save(s, "", [(b, f"{hb:016x}")])
        done.set()

    t = threading.Thread(target=worker_b)
    t.start()
    assert not done.wait(1.0), "B must wait for A's transaction"
    first.commit()
    first.close()
    t.join(30)
    assert done.is_set()
    with sessions() as s:
        assert results.PHASHES.stored_pairs(s, [a, b], 8) == {a: [b], b: [a]}
    engine.dispose()


def test_the_reconciler_pairs_the_hashes_saved_before_pairs_were_stored(tmp_path, redis_url):
    """A store upgraded by migration 0012 has hashes and no pairs: the producer's reconciler pairs
    them as it turns, and reads then come from the stored pairs."""
    from darkroom.settings import Settings
    from producer.reconciler import Reconciler
    from producer.registrar import Registrar
    from storage.db import make_engine, migrate, session_factory
    from worker.app import create_app

    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    hashes = _planted()[:40]
    with transaction(sessions) as s:
        ids = [_register(s, i) for i in range(len(hashes))]
        results.PHASHES.save(s, "", [(i, f"{h:016x}") for i, h in zip(ids, hashes)])
        s.execute(NearPair.__table__.delete())
        s.execute(update(PHash).values(paired_within=None))
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, broker_url=redis_url, tasks=["phash"])
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[tmp_path])
    Reconciler(registrar).check()
    registrar.close()
    with sessions() as s:
        assert not results.PHASHES.looks_up(s, 8)
        assert {k: sorted(v) for k, v in results.PHASHES.stored_pairs(s, ids, 10).items()} == _truth(ids, hashes, 10)
    engine.dispose()
