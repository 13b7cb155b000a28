"""`darkroom up` starting its own Redis, and `darkroom ingest` for archives, with real processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.harness import ROOT, Darkroom, free_port

pytestmark = pytest.mark.e2e


def test_up_starts_a_local_redis_when_none_answers_and_stops_it(tmp_path, photos):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    url = f"redis://127.0.0.1:{free_port()}/0"
    dr = Darkroom(tmp_path, url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="normalize")
    dr.env["DARKROOM_START_LOCAL_REDIS"] = "true"
    dr.inbox.mkdir()
    shutil.copy(photos["coffee"], dr.inbox / "coffee.jpg")
    done = subprocess.run([sys.executable, "-m", "darkroom", "up", str(dr.inbox), "--exit-when-idle"],
                          env=dr.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "starting a local redis-server" in done.stderr
    assert [r["status"] for r in dr.results()] == ["done"]
    # The Redis it started is stopped again, its data kept in the data dir
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    assert (dr.data / "redis").is_dir()


def test_up_says_what_to_do_when_redis_is_remote_and_down(tmp_path):
    dr = Darkroom(tmp_path, f"redis://:hunter2@127.0.0.2:{free_port()}/0", f"sqlite:///{tmp_path / 'd.db'}")
    dr.env["DARKROOM_START_LOCAL_REDIS"] = "true"
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=60)
    assert done.returncode == 1
    assert "no Redis answers at redis://:***@127.0.0.2" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout  # secrets are never printed


def test_ingest_walks_a_tree_then_workers_process_it(tmp_path, redis_url, photos):
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="normalize,augment")
    archive = tmp_path / "archive"
    (archive / "2019" / "summer").mkdir(parents=True)
    shutil.copy(photos["astronaut"], archive / "2019" / "astronaut.jpg")
    shutil.copy(photos["chelsea"], archive / "2019" / "summer" / "cat.jpg")
    shutil.copy(photos["chelsea"], archive / "cat again.jpg")
    (archive / "2019" / "broken.jpg").write_bytes(photos["rocket"].read_bytes()[:300])
    (archive / ".thumbnails").mkdir()
    shutil.copy(photos["rocket"], archive / ".thumbnails" / "t.jpg")
    done = dr.run("ingest", str(archive))
    # The truncated JPEG is rejected here when its header cannot be read (exit code 3), else by the
    # worker's full decode below (then `up --exit-when-idle` exits 3)
    rejected_at_ingest = "1 rejected" in done.stdout
    assert done.returncode == (3 if rejected_at_ingest else 0), done.stderr
    assert "4 file(s)" in done.stdout and "2 new" in done.stdout and "1 duplicate" in done.stdout
    assert redis.Redis.from_url(redis_url).llen("cpu") == 4  # two tasks for each of two new images
    # A second ingest of the same tree finds nothing new
    assert "4 known" in dr.run("ingest", str(archive)).stdout
    dr.inbox.mkdir()
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == (0 if rejected_at_ingest else 3), done.stderr
    by_name = {Path(r["path"]).name: r["status"] for r in dr.results()}
    # The truncated JPEG's header is readable, so it is registered and then rejected by the worker's full decode
    assert by_name == {"astronaut.jpg": "done", "cat.jpg": "done", "broken.jpg": "rejected"} or \
        by_name == {"astronaut.jpg": "done", "cat again.jpg": "done", "broken.jpg": "rejected"}
