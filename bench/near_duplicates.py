"""Benchmark of near-duplicate grouping (tasks.phash): the index against comparing all pairs.

For each size ``n`` it builds ``n`` uniform random 64-bit hashes and plants clusters of
near-duplicates in them (each cluster: one hash and 1-5 copies with 0 to ``distance`` bits
flipped, replacing random hashes; seeded, so every run sees the same hashes). It then times
:func:`tasks.phash.group_near_duplicates`, counts the groups found and the planted clusters
recovered (a cluster is recovered when all its members are in one group), and measures the
peak memory that numpy allocated (tracemalloc, in a second run). The all-pairs baseline
(:func:`tasks.phash.all_pairs_neighbours`) is timed where that is feasible (``--all-pairs-max``,
100,000 by default) and extrapolated as ``n**2`` from the largest measured size beyond it,
marked "extrapolated".

    .venv/bin/python -m bench.near_duplicates --sizes 10000,100000,1000000 --distance 8
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from tasks import phash as ph

__all__ = ["main", "planted_hashes"]


def planted_hashes(n: int, clusters: int, distance: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """``n`` uniform random hashes with ``clusters`` planted clusters, and the clusters' indices.

    Members of a cluster are within ``distance`` bits of its first member (so pairwise within
    ``2 * distance``; single linkage through the first member joins them all)."""
    rng = np.random.default_rng([seed, n, distance])
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    bits = np.uint64(1) << np.arange(64, dtype=np.uint64)
    sizes = rng.integers(2, 7, clusters)
    chosen = rng.choice(n, int(sizes.sum()), replace=False) if clusters else np.empty(0, np.int64)
    planted, at = [], 0
    for size in sizes.tolist():
        members = chosen[at:at + size]
        at += size
        base = hashes[members[0]]
        for i in members[1:]:
            k = int(rng.integers(0, distance + 1))
            flip = np.bitwise_or.reduce(bits[rng.choice(64, k, replace=False)]) if k else np.uint64(0)
            hashes[i] = base ^ flip
        planted.append(sorted(members.tolist()))
    return hashes, planted


def _timed(fn, *args):
    """(result, seconds, peak bytes): timed on its own, then run again under tracemalloc for the
    peak (tracing slows numpy's allocations, so the two are not measured together)."""
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def run(sizes: list[int], distance: int, clusters: int | None, all_pairs_max: int, seed: int = 0) -> list[dict]:
    """One row per size: the figures :func:`main` prints."""
    rows = []
    measured: tuple[int, float] | None = None  # (n, seconds) of the largest all-pairs run
    for n in sizes:
        k = clusters if clusters is not None else max(1, min(n // 200, 5000))
        hashes, planted = planted_hashes(n, k, distance, seed)
        groups, seconds, peak = _timed(ph.group_near_duplicates, hashes, distance)
        where = {}
        for g, members in enumerate(groups):
            for i in members:
                where[i] = g
        recovered = sum(1 for c in planted if c[0] in where and all(where.get(i) == where[c[0]] for i in c))
        row = {"n": n, "distance": distance, "plan": ph.plan(np.unique(hashes).size, distance).describe(),
               "seconds": seconds, "peak_mib": peak / 2**20, "groups": len(groups),
               "planted": len(planted), "recovered": recovered}
        if n <= all_pairs_max:
            start = time.perf_counter()
            ph.all_pairs_neighbours(hashes, distance)
            base_s = time.perf_counter() - start
            measured = (n, base_s)
            row.update(all_pairs_s=base_s, all_pairs_extrapolated=False)
        elif measured is not None:
            row.update(all_pairs_s=measured[1] * (n / measured[0]) ** 2, all_pairs_extrapolated=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a plain-text table."""
    head = ("n", "d", "groups", "planted", "recovered", "index s", "peak MiB", "all-pairs s", "speed-up", "plan")
    lines = []
    for r in rows:
        base = r.get("all_pairs_s")
        base_text = "-" if base is None else f"{base:,.2f}" + (" (extrapolated)" if r["all_pairs_extrapolated"] else "")
        speed = "-" if base is None else f"{base / r['seconds']:,.0f}x"
        lines.append((f"{r['n']:,}", str(r["distance"]), f"{r['groups']:,}", f"{r['planted']:,}",
                      f"{r['recovered']:,}", f"{r['seconds']:.2f}", f"{r['peak_mib']:.0f}", base_text, speed,
                      r["plan"]))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    def fmt(cells):
        return "  ".join(c.rjust(w) if i < 9 else c for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.near_duplicates", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of hashes")
    parser.add_argument("--distance", type=int, default=8, help="bits within which hashes are near-duplicates")
    parser.add_argument("--clusters", type=int, default=None,
                        help="planted clusters per size (default: n/200, at most 5000)")
    parser.add_argument("--all-pairs-max", type=int, default=100_000,
                        help="largest size at which all pairs are compared (larger: extrapolated)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    rows = run(sizes, args.distance, args.clusters, args.all_pairs_max, args.seed)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
