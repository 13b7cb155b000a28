"""End to end: real Redis, real Celery worker processes, the real watcher, SQLite and PostgreSQL.

Photos go into the inbox the ways people put them there — copied, written slowly in chunks, renamed
in, dropped twice — and every one must end ``done`` with all four results, the duplicate adding no
work, the results JSON keeping its documented contract.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, Darkroom, base_env, stop, write_slowly

pytestmark = pytest.mark.e2e

CONTRACT_KEYS = {"path", "sha256", "width", "height", "status", "normalize", "labels", "faces",
                 "augmentations", "errors"}


@pytest.fixture(scope="session")
def mobilenet_weights(tmp_path_factory) -> Path:
    """A MobileNetV2 weights file made here (no download): the pipeline loads it like any local file."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.weights.h5"
    # Random weights give nearly flat probabilities; a sharper last layer keeps the top label
    # well clear of the runner-up, so label comparisons test the pipeline, not rounding noise.
    code = ("import keras; keras.utils.set_random_seed(0); m = keras.applications.MobileNetV2(weights=None); "
            "k = m.layers[-1].kernel; k.assign(k * 200.0); "
            f"m.save_weights({str(path)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=base_env(), timeout=300)
    return path


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_photos_dropped_into_a_running_darkroom_end_done(db, tmp_path, redis_url, photos, mobilenet_weights,
                                                         request):
    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}" if db == "sqlite" else request.getfixturevalue("postgres_url")
    dr = Darkroom(tmp_path, redis_url, db_url, classifier_model="mobilenet_v2",
                  classifier_weights=str(mobilenet_weights))
    dr.inbox.mkdir()
    # Given one photo already in the inbox before Darkroom starts
    shutil.copy(photos["coffee"], dr.inbox / "coffee.jpg")
    if db == "sqlite":  # everything in one foreground command
        up = dr.start("up", str(dr.inbox), name="up")
        worker = None
    else:  # the producer alone, and Celery's own worker command on Darkroom's app
        up = dr.start("watch", str(dr.inbox), name="watch")
        log = open(dr.logs / "celery.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "cpu,gpu",
                                   "-c", "2", "--loglevel", "INFO"], env=dr.env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dr.wait_for_log("for new files", proc=up)  # the startup scan is done: what comes now is new
        # When photos arrive: copied, written slowly in chunks, renamed in, and one duplicate
        shutil.copy(photos["astronaut"], dr.inbox / "astronaut.jpg")
        (dr.inbox / "sub dir").mkdir()
        write_slowly(photos["chelsea"], dr.inbox / "sub dir" / "chelsea slow.jpg")
        staging = tmp_path / "staging.jpg"
        shutil.copy(photos["rocket"], staging)
        os.rename(staging, dr.inbox / "rocket.jpg")
        shutil.copy(photos["astronaut"], dr.inbox / "astronaut copy.jpg")
        results = dr.wait_until_settled(expected_images=4, proc=up)
    finally:
        code = stop(up)
        worker_code = stop(worker, signal.SIGTERM) if worker else 0
    # Then Ctrl-C stopped watcher and worker cleanly
    assert code == 0, dr.log_tail()
    assert worker_code == 0, dr.log_tail()
    by_name = {Path(r["path"]).name: r for r in results}
    assert set(by_name) == {"coffee.jpg", "astronaut.jpg", "chelsea slow.jpg", "rocket.jpg"}, dr.log_tail()
    for r in results:
        assert CONTRACT_KEYS <= set(r)
        assert r["status"] == "done", (r["path"], r["errors"], dr.log_tail())
        assert r["normalize"]["dtype"] == "uint8"
        assert r["normalize"]["after"]["max"] <= 1.0 and len(r["normalize"]["mean"]) == 3
        assert [lab["rank"] for lab in r["labels"]] == [1, 2, 3, 4, 5]
        assert r["augmentations"] == 9
        assert len(r["phash"]) == 16
        assert r["errors"] == {}
    # The slow file was read complete, not half-written: its size is the original's
    assert by_name["chelsea slow.jpg"]["size_bytes"] == photos["chelsea"].stat().st_size
    astro = by_name["astronaut.jpg"]
    assert len(astro["faces"]) == 1
    assert sorted(Path(p).name for p in astro["paths"]) == ["astronaut copy.jpg", "astronaut.jpg"]
    assert by_name["coffee.jpg"]["faces"] == []
    # The duplicate added no work: five task runs per distinct photo, no more
    status = json.loads(dr.run("status", "--json").stdout)
    assert sum(status["runs"].values()) == 20
    assert status["images"] == {"done": 4}
    # Results for one photo by path, and the exported files
    assert [r["sha256"] for r in dr.results(str(dr.inbox / "astronaut copy.jpg"))] == [astro["sha256"]]
    export = tmp_path / "export"
    assert dr.run("export", str(export)).returncode == 0
    folder = export / astro["sha256"]
    assert (folder / "faces_boxed.jpg").stat().st_size > 1000
    assert (folder / "contact_sheet.jpg").exists() and len(list(folder.glob("augmented-*.jpg"))) == 9
    assert json.loads((folder / "result.json").read_text())["sha256"] == astro["sha256"]


def test_exit_when_idle_with_default_vgg16_and_no_weights(tmp_path, redis_url, photos):
    """The default classifier's weights cannot be downloaded here: classify fails with the way to fix
    it, the other three tasks are unaffected, and `up --exit-when-idle` still finishes."""
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}")
    dr.inbox.mkdir()
    shutil.copy(photos["astronaut"], dr.inbox / "astronaut.jpg")
    (dr.inbox / "notes.txt").write_text("not a photo")
    (dr.inbox / "download.jpg.part").write_bytes(b"partial")  # a browser's temporary name: left alone
    done = subprocess.run([sys.executable, "-m", "darkroom", "up", str(dr.inbox), "--exit-when-idle"],
                          env=dr.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stdout + done.stderr  # finished, with a failed task and a rejected file
    results = {Path(r["path"]).name: r for r in dr.results()}
    assert set(results) == {"astronaut.jpg", "notes.txt"}
    astro = results["astronaut.jpg"]
    assert astro["status"] == "failed"
    assert set(astro["errors"]) == {"classify"}
    assert "vgg16" in astro["errors"]["classify"] and "DARKROOM_CLASSIFIER_WEIGHTS" in astro["errors"]["classify"]
    assert astro["tasks"] == {"normalize": "done", "classify:vgg16": "failed", "augment": "done", "faces:mtcnn": "done",
                              "phash": "done"}
    assert len(astro["faces"]) == 1 and astro["augmentations"] == 9
    notes = results["notes.txt"]
    assert notes["status"] == "rejected" and "notes.txt" in notes["errors"]["image"]
    status = dr.run("status")
    assert status.returncode == 0
    assert "DARKROOM_CLASSIFIER_WEIGHTS" in status.stdout and "notes.txt" in status.stdout
    # An operator retries the failed task: it is sent again, tried again, and says so
    retry = dr.run("retry", "--task", "classify")
    assert retry.returncode == 0 and "sent 1 run(s)" in retry.stdout, retry.stderr
    assert dr.results(str(dr.inbox / "astronaut.jpg"))[0]["tasks"]["classify:vgg16"] == "queued"
    again = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert again.returncode == 3, again.stderr  # classify failed again
    problems = json.loads(dr.run("status", "--json").stdout)["problems"]
    assert [(p["task"], p["attempts"]) for p in problems if p["task"]] == [("classify", 2)]


def test_classify_takes_pending_runs_into_one_batch_with_unbatched_labels(tmp_path, redis_url, photos,
                                                                          mobilenet_weights):
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="classify",
                  classifier_model="mobilenet_v2", classifier_weights=str(mobilenet_weights), concurrency="1")
    dr.inbox.mkdir()
    for name, path in photos.items():
        shutil.copy(path, dr.inbox / f"{name}.jpg")
    # Given a queue full of classify runs before any worker starts
    assert dr.run("ingest", str(dr.inbox)).returncode == 0
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == 0, done.stderr
    log = (dr.data / "logs" / "darkroom.log").read_text()  # the worker's log (`up --verbose`: on stderr)
    # Then the first message's process took the other pending runs into its forward pass
    assert f"in one batch of {len(photos)}" in log, log[-3000:]
    # Each run was worked on once: the batch members' own messages were skipped, not redone
    from sqlalchemy import select

    from storage.db import make_engine, session_factory
    from storage.models import TaskRun

    with session_factory(make_engine(dr.env["DARKROOM_DATABASE_URL"]))() as s:
        assert [r.attempts for r in s.scalars(select(TaskRun))] == [1] * len(photos)
    # And the labels are those of one-image-at-a-time calls
    from tasks.classify import Classifier
    from tasks.imaging import decode

    classifier = Classifier.create("mobilenet_v2", str(mobilenet_weights))
    for r in dr.results():
        single = classifier.predict([decode(Path(r["path"]))], top=5)[0]
        assert [lab["class_id"] for lab in r["labels"]][0] == single[0].class_id
        assert r["labels"][0]["score"] == pytest.approx(single[0].score, abs=1e-4)
