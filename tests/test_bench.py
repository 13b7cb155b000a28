"""The benchmark's parts (`darkroom bench`): the corpus, the in-process reference, the naive Celery
peer end to end against Redis, and the report's arithmetic. The full Darkroom system benchmark is
not run here (minutes); `darkroom bench --n 6 --model mobilenet_v2 --no-latency --scale 6` runs it small."""

from __future__ import annotations

import hashlib
import os

import pytest

from bench import report
from bench.corpus import build_corpus

NAIVE_REDIS_URL = os.environ.get("DARKROOM_TEST_NAIVE_REDIS_URL", "redis://127.0.0.1:6379/12")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> list:
    """Small photos (480-640 px) keep the model-running tests quick."""
    return build_corpus(tmp_path_factory.mktemp("corpus"), n=4, seed=7, sizes=(480, 640))


def test_corpus_is_deterministic_distinct_and_sized(tmp_path):
    from PIL import Image

    first = build_corpus(tmp_path / "a", n=12, seed=0)
    again = build_corpus(tmp_path / "b", n=12, seed=0)
    other = build_corpus(tmp_path / "a", n=12, seed=1)
    assert len(first) == 12
    hashes = [hashlib.sha256(img.path.read_bytes()).hexdigest() for img in first]
    assert hashes == [img.sha256 for img in first]
    assert len(set(hashes)) == 12, "two corpus files share a sha256"
    assert [img.sha256 for img in again] == hashes, "the same (n, seed) must give the same files"
    assert not set(hashes) & {img.sha256 for img in other}, "another seed must give other files"
    assert len({img.source for img in first}) >= 8, "the corpus should mix many source photos"
    for img in first:
        with Image.open(img.path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert (im.width, im.height) == (img.width, img.height)
            assert 480 <= max(im.size) <= 1600
    # Cached: a second call finds the files and rewrites nothing.
    mtimes = [img.path.stat().st_mtime_ns for img in first]
    assert [img.path.stat().st_mtime_ns for img in build_corpus(tmp_path / "a", n=12, seed=0)] == mtimes
    # The folder holds images only (darkroom ingest walks it).
    assert sorted(p.name for p in first[0].path.parent.iterdir()) == sorted(img.path.name for img in first)


def test_reference_times_every_stage(small_corpus):
    from bench.reference import STAGES, run_reference

    result, pipe = run_reference([img.path for img in small_corpus], "mobilenet_v2", "none", batch_size=4,
                                 raw_seconds=0.3)
    assert result.images == 4 and result.img_s > 0
    assert set(result.stages) == set(STAGES)
    for stage, cost in result.stages.items():
        assert cost["cpu_s_per_image"] > 0, stage
        assert cost["wall_s_per_image"] > 0, stage
    assert result.raw_classify_img_s > 0 and result.raw_classify_batches >= 3
    assert result.same_top1["checked"] == 4
    assert result.cpu_s_per_image == pytest.approx(sum(c["cpu_s_per_image"] for c in result.stages.values()))


def test_naive_peer_runs_end_to_end_on_redis(small_corpus, tmp_path):
    import redis

    try:
        redis.Redis.from_url(NAIVE_REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Redis at {NAIVE_REDIS_URL} is not reachable, and CI needs it")
        pytest.skip(f"Redis at {NAIVE_REDIS_URL} is not reachable")
    from bench.naive import TASKS, run_naive, stored_results

    files = [img.path for img in small_corpus]
    result = run_naive(files, "mobilenet_v2", tmp_path / "naive", NAIVE_REDIS_URL, files[:2], concurrency=2,
                       timeout=300, log=lambda _msg: None)
    assert result.errors == []
    assert result.images == 4 and result.img_s > 0
    assert len(result.peak_rss_mb) == 2 and all(mb > 50 for mb in result.peak_rss_mb.values())
    rows = stored_results(tmp_path / "naive")
    assert len(rows) == 4 * 4
    assert {(r["image"], r["task"]) for r in rows} == {(str(f), t) for f in files for t in TASKS}
    assert all(r["error"] is None for r in rows)
    classify = [r["result"] for r in rows if r["task"] == "classify"]
    assert all(len(top) == 5 for top in classify)
    redis.Redis.from_url(NAIVE_REDIS_URL).flushdb()


def test_darkroom_from_a_prefilled_queue_starts_the_clock_when_the_worker_consumes(small_corpus, tmp_path):
    """The classify-stage measurement: the warm worker is told to stop consuming, the ingest fills
    the queue, and only then is it told to consume again (real worker processes and Redis)."""
    import redis

    from bench.darkroom_run import run_darkroom

    url = os.environ.get("DARKROOM_TEST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    folder = small_corpus[0].path.parent
    warm = build_corpus(tmp_path / "warm", n=4, seed=8, sizes=(480, 640))
    result = run_darkroom(folder, len(small_corpus), "mobilenet_v2", "none", tmp_path / "dr", url,
                          [img.path for img in warm], concurrency=2, settings={"tasks": "normalize"},
                          prefill=True, timeout=300, log=lambda _msg: None)
    assert result.failed == [] and result.images == 4
    # The clock started after the ingest: the ingest's own seconds are not in the wall time
    assert result.img_s > 0 and result.ingest_s > 0
    assert result.task_ms["normalize"] > 0
    redis.Redis.from_url(url).flushdb()


def _measurements() -> dict:
    stages = {"decode": (0.010, 0.012), "normalize": (0.005, 0.006), "classify": (0.080, 0.050),
              "augment": (0.040, 0.045), "faces": (0.265, 0.300)}
    return {
        "model": "mobilenet_v2", "n": 200,
        "naive": {"img_s": 2.0, "peak_rss_mb": {"11": 900.0, "12": 950.0}, "errors": [], "concurrency": 2,
                  "task_ms": {"classify": 300.0}},
        "reference": {"img_s": 2.5, "batch_size": 16, "raw_classify_img_s": 40.0, "raw_classify_single_img_s": 30.0,
                      "same_top1": {"checked": 16, "identical": 16},
                      "stages": {s: {"cpu_s_per_image": c, "wall_s_per_image": w} for s, (c, w) in stages.items()}},
        "darkroom": {"img_s": 4.5, "classify_pipeline_img_s": 50.0, "classify_only_img_s": 38.0, "concurrency": 2,
                     "peak_rss_mb": {"21": 1000.0, "22": 1100.0}, "queue_depth_max": {"cpu": 12, "gpu": 30},
                     "queue_bound": 10000, "failed": [], "ingest_s": 10.0, "task_ms": {"faces": 500.0},
                     "latency": {"drops": [{"file": f"p{i}", "latency_s": 0.5 + i / 100, "registered_after_s": 0.1}
                                           for i in range(20)]}},
        "compute_s": {f"p{i}": 0.4 for i in range(20)},
        "flush_s": 0.05,
        "scale": [{"n": 200, "img_s": 4.5, "queue_depth_max": {"cpu": 5}, "queue_bound": 10000},
                  {"n": 1000, "img_s": 4.4, "queue_depth_max": {"cpu": 20}, "queue_bound": 10000},
                  {"n": 5000, "img_s": 4.0, "queue_depth_max": {"cpu": 10050, "gpu": 9000}, "queue_bound": 10000}],
        "outputs": {"labels_checked": 24, "labels_identical": 24, "faces_checked": 3, "faces_identical": 2},
    }


def test_classify_target_is_against_the_models_best_raw_throughput():
    """The classify stage is compared with the faster of the model's raw batches: the reference's
    size or Darkroom's forward pass (chunk)."""
    data = _measurements()
    data["reference"].update(chunk=4, raw_classify_chunk_img_s=50.0)
    m = report.compute(data, cores=2)
    assert m["raw_classify_best_img_s"] == 50.0
    assert m["classify_ratio"] == pytest.approx(38.0 / 50.0)
    met = {row["target"].split(" (")[0]: row["met"] for row in m["targets"]}
    assert met["classify in pipeline vs raw batched"] is False
    data["reference"]["raw_classify_chunk_img_s"] = 30.0  # slower than batch 16: 16 stays the baseline
    assert report.compute(data, cores=2)["classify_ratio"] == pytest.approx(38.0 / 40.0)


def test_report_computes_ratios_efficiency_and_targets():
    m = report.compute(_measurements(), cores=2)
    assert m["darkroom_vs_naive"] == pytest.approx(2.25)
    assert m["darkroom_vs_reference"] == pytest.approx(1.8)
    assert m["reference_vs_naive"] == pytest.approx(1.25)
    assert m["cpu_s_per_image"] == pytest.approx(0.4)
    assert m["ideal_img_s"] == pytest.approx(5.0)          # 2 cores / 0.4 CPU s per image
    assert m["cpu_efficiency"] == pytest.approx(0.9)       # 4.5 / 5.0
    assert m["classify_ratio"] == pytest.approx(38.0 / 40.0)  # the classify-only run wins over the estimate
    assert m["stage_cpu_ms"]["faces"] == pytest.approx(265.0)
    lat = m["latency"]
    assert lat["p50_s"] == pytest.approx(0.595)
    assert lat["p95_s"] == pytest.approx(0.6805)
    assert lat["bound_p50_s"] == pytest.approx(0.65) and lat["bound_p95_s"] == pytest.approx(0.65)
    assert m["scale_ratio"] == pytest.approx(4.5 / 4.0)
    assert m["naive_peak_rss_mb"] == [900.0, 950.0]
    assert m["warnings"] == []

    met = {row["target"].split(" (")[0]: row["met"] for row in m["targets"]}
    assert met["Darkroom vs naive peer"] is False          # 2.25x < 3x for MobileNetV2
    assert met["classify in pipeline vs raw batched"] is True
    assert met["CPU efficiency"] is True
    assert met["single-drop latency p50 / p95"] is False   # p95 0.68 s > 0.65 s
    assert met["per-image cost, largest / smallest"] is True
    assert met["queue depth during the 5000-image ingest"] is False  # 10050 >= 10000
    assert met["same top-1 labels as unbatched calls"] is True
    assert met["same faces as MTCNN on the original"] is False

    text = report.render_text(m, _measurements())
    for expected in ("naive Celery peer", "in-process reference", "Darkroom", "2.25x", "1.80x", "0.90",
                     "faces", "265.0", "5000", "targets"):
        assert expected in text, expected


def test_report_handles_missing_systems_and_vgg16_target():
    data = _measurements()
    data["model"] = "vgg16"
    del data["naive"]
    data["darkroom"]["foreign_load"] = 0.3  # another process busy on the machine meanwhile
    m = report.compute(data, cores=2)
    assert len(m["warnings"]) == 1 and "30%" in m["warnings"][0] and "darkroom" in m["warnings"][0]
    row = m["targets"][0]
    assert row["measured"] == "-" and row["met"] is None and row["wanted"] == ">= 2x"
    assert report.cpu_efficiency(3.0, 4, {"a": 0.5, "b": 0.5}) == (pytest.approx(0.75), pytest.approx(4.0))
    assert report.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert report.percentile([], 95) is None
    assert "in-process reference" in report.render_text(m, data)


def test_bench_ledger_times_every_command_on_both_databases_and_drops_its_scratch_database(postgres_server):
    """`darkroom bench ledger` at tiny sizes (the figures are the README's, from the full sizes): every
    command is timed at every size on SQLite and PostgreSQL, the tables' rows and bytes are printed,
    and the scratch database is gone afterwards."""
    import re
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    from bench.ledger import COMMANDS, REGISTER, TABLES
    from tests.harness import ROOT, base_env

    done = subprocess.run(
        [sys.executable, "-m", "darkroom", "bench", "ledger", "--images", "100,200", "--db", "both", "--files", "2",
         "--stream-seconds", "1", "--lookups", "2", "--repeat", "1", "--postgres-url", postgres_server],
        cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    timing = r"\d[\d,]*\.\d+ m?s"
    for name in ("PostgreSQL", "SQLite"):
        section = out.split(f"{name}: seconds per command")[1].split("rows and bytes per table")[0]
        head = section.splitlines()[1]
        assert re.search(r"100\s+per 1k\s+200\s+per 1k\s+growth", head), head
        for command in COMMANDS:
            label = "register 2 real JPEGs" if command == REGISTER else command
            line = next((line for line in section.splitlines() if line.startswith(label)), None)
            assert line is not None, f"{name}: {command} not timed\n{section}"
            # seconds and cost per 1k at both sizes, then the growth
            assert len(re.findall(timing, line)) >= 4, line
            assert re.search(r"\d\.\d\dx", line), line
        sizes = out.split(f"{name}: rows and bytes per table")[1]
        for table in TABLES:
            assert re.search(rf"^{table}\s+[\d,]+\s+[\d.,]+\s+[\d,]+\s+[\d.,]+$", sizes, re.M), table
    assert "SQLite against PostgreSQL at 200 images" in out
    assert re.search(r"registration in (reference|copy) mode", out)
    # the phash task's save with its near-duplicate pairing, per photo, at each size and database
    assert len(re.findall(r"phash save with pairing \d+\.\d ms a photo", out)) == 4, out

    dropped = re.findall(r"scratch database (darkroom_bench_\d+) dropped", done.stderr)
    assert len(dropped) == 2, done.stderr[-2000:]  # one per size
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        left = conn.execute(text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"),
                            {"names": list(set(dropped))}).scalars().all()
    admin.dispose()
    assert left == []
