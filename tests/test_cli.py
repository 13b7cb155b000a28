"""The `darkroom` command as a script and a person see it: --version, completion, exit codes a script
can trust, `status` grouping the same failure, `results`' one-line cells, and `up`'s per-photo lines
instead of Celery's log stream."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from darkroom import __version__
from darkroom.cli import app
from darkroom.settings import get_settings
from tests.harness import ROOT, Darkroom, free_port, stop

#: The message the classifier's failure carries when its weights are missing: long, the same on
#: every photo.
LONG_REASON = ("ModelUnavailable: the ImageNet weights of vgg16 cannot be had: " + "no download here; " * 40
               + "set DARKROOM_CLASSIFIER_WEIGHTS to a local file")


@pytest.fixture()
def cli(monkeypatch, tmp_path):
    """`darkroom ARGS` in this process, with settings read afresh from ``env``."""
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("DARKROOM_"):
            monkeypatch.delenv(var)
    runner = CliRunner()

    def invoke(*args: str, **env: str):
        for key, value in env.items():
            monkeypatch.setenv(f"DARKROOM_{key.upper()}", value)
        get_settings.cache_clear()
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


# --- the command itself --------------------------------------------------------------------------


def test_version_prints_the_version_and_exits_0(cli):
    done = cli("--version")
    assert done.exit_code == 0
    assert done.stdout.strip() == f"darkroom {__version__}"


def test_version_and_completion_and_exit_codes_are_in_help(cli):
    done = cli("--help")
    assert done.exit_code == 0
    for flag in ("--version", "--install-completion", "--show-completion"):
        assert flag in done.stdout
    text = " ".join(done.stdout.split())
    assert "Exit codes: 0 everything done; 1 an error" in text and "3 the work finished" in text


def test_shell_completion_is_on():
    show = subprocess.run([sys.executable, "-m", "darkroom", "--show-completion", "bash"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stderr
    assert "complete -o default -F" in show.stdout
    # What the shell asks when Tab is pressed after `darkroom status --a`
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(_DARKROOM_COMPLETE="complete_bash", COMP_WORDS="darkroom status --a", COMP_CWORD="2")
    done = subprocess.run([sys.executable, "-c", "from darkroom.cli import app; app(prog_name='darkroom')"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--all"]


def test_usage_error_exits_2_and_bad_settings_exit_1(cli):
    assert cli("wrok").exit_code == 2
    assert cli("status", "--no-such-flag").exit_code == 2
    done = cli("config", tasks="normalize,sharpen")
    assert done.exit_code == 1
    assert "DARKROOM_TASKS" in done.stderr and "\n" not in done.stderr.strip()


# --- exit codes ----------------------------------------------------------------------------------


def test_ingest_with_a_rejected_file_exits_3(tmp_path, redis_url, photos):
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="normalize")
    dr.inbox.mkdir()
    shutil.copy(photos["coffee"], dr.inbox / "coffee.jpg")
    (dr.inbox / "notes.txt").write_text("not a photo")
    done = dr.run("ingest", str(dr.inbox))
    assert done.returncode == 3, done.stderr
    assert "2 file(s): 1 new, 1 rejected" in done.stdout
    # Nothing left to do: 0
    again = dr.run("ingest", str(dr.inbox / "coffee.jpg"))
    assert again.returncode == 0, again.stderr


def test_status_with_redis_unreachable_exits_1_with_one_line(tmp_path):
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    dr = Darkroom(tmp_path, url, f"sqlite:///{tmp_path / 'darkroom.db'}")
    assert dr.run("migrate").returncode == 0
    done = dr.run("status")
    assert done.returncode == 1
    assert "images: none" in done.stdout and "queues: unreachable" in done.stdout  # what it could
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Redis answers at redis://:***@127.0.0.1" in lines[0], done.stderr
    assert "DARKROOM_BROKER_URL" in lines[0] and "s3cret" not in done.stdout + done.stderr
    as_json = dr.run("status", "--json")
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["unreachable"] == ["broker"] and data["images"] == {} and data["problems"] == []


def test_status_with_the_database_unreachable_exits_1_with_one_line(tmp_path, redis_url):
    db = f"postgresql+psycopg://darkroom:pw@127.0.0.1:{free_port()}/darkroom"
    dr = Darkroom(tmp_path, redis_url, db)
    done = dr.run("status", timeout=60)
    assert done.returncode == 1
    assert "queues: cpu 0, gpu 0" in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "database" in lines[0] and "unreachable" in lines[0] and "DARKROOM_DATABASE_URL" in lines[0]
    assert "pw@" not in done.stderr


# --- status and results on a ledger with the same failure on many photos -------------------------


@pytest.fixture()
def ledger(tmp_path):
    """A migrated SQLite store: five photos whose classify failed with the same long reason, one
    with another reason, one rejected by the worker, one refused file, and one done photo."""
    from storage.db import make_engine, migrate, session_factory, transaction
    from storage.models import DONE, FAILED, REJECTED, Image, SourceFile, TaskRun

    url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    engine = make_engine(url)
    migrate(engine)
    now = dt.datetime.now(dt.timezone.utc)
    with transaction(session_factory(engine)) as s:
        def photo(i: int, classify: str, error: str | None = None, rejected: str | None = None) -> None:
            image = Image(sha256=f"{i:064x}", size_bytes=1000, format="JPEG", width=640, height=480,
                          rejected_reason=rejected)
            s.add(image)
            s.flush()
            s.add(SourceFile(path=str(tmp_path / "inbox" / f"photo-{i}.jpg"), image_id=image.id))
            s.add(TaskRun(image_id=image.id, task="normalize", status=REJECTED if rejected else DONE,
                          error=rejected, finished_at=now, duration_ms=12.0))
            s.add(TaskRun(image_id=image.id, task="classify", model="vgg16", status=classify, error=error,
                          attempts=1, finished_at=now + dt.timedelta(seconds=i), duration_ms=30.0))

        for i in range(5):
            photo(i, FAILED, LONG_REASON)
        photo(5, FAILED, "OSError: disk on fire")
        reason = f"{tmp_path / 'inbox' / 'photo-6.jpg'}: truncated JPEG"
        photo(6, REJECTED, reason, rejected=reason)
        photo(7, DONE)
        s.add(SourceFile(path=str(tmp_path / "inbox" / "link.jpg"),
                         refused_reason=f"{tmp_path / 'inbox' / 'link.jpg'}: a link outside the watched folder"))
    return url


def test_status_prints_the_same_failure_once_with_its_count(cli, ledger, redis_url):
    done = cli("status", database_url=ledger, broker_url=redis_url)
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    same = [line for line in lines if "no download here" in line]
    assert len(same) == 1, done.stdout
    assert "[classify failed ×5]" in same[0] and "darkroom retry --task classify" in same[0]
    assert any("[classify failed]" in line and "disk on fire" in line and "photo-5.jpg" in line for line in lines)
    assert any("[classify rejected]" in line and "truncated JPEG" in line for line in lines)
    assert any("link outside the watched folder" in line for line in lines)
    assert "failed and rejected (9, 5 kinds of problem)" in done.stdout
    # --json keeps every problem, and adds the groups
    data = json.loads(cli("status", "--json", database_url=ledger, broker_url=redis_url).stdout)
    assert len(data["problems"]) == 9  # photo-6 rejected: both its runs
    assert set(data["problems"][0]) == {"path", "sha256", "task", "status", "attempts", "reason"}
    groups = {(g["task"], g["status"], g["reason"][:16]): g["count"] for g in data["problem_groups"]}
    assert groups[("classify", "failed", LONG_REASON[:16])] == 5
    assert groups[("classify", "failed", "OSError: disk on")] == 1
    assert sum(groups.values()) == 9


def test_status_shows_20_groups_unless_all(cli, tmp_path, ledger, redis_url):
    from storage.db import make_engine, session_factory, transaction
    from storage.models import FAILED, Image, TaskRun

    with transaction(session_factory(make_engine(ledger))) as s:
        for i in range(30):
            image = Image(sha256=f"{1000 + i:064x}", size_bytes=1)
            s.add(image)
            s.flush()
            s.add(TaskRun(image_id=image.id, task="augment", status=FAILED, error=f"reason number {i}",
                          finished_at=dt.datetime.now(dt.timezone.utc)))
    done = cli("status", database_url=ledger, broker_url=redis_url)
    assert done.exit_code == 0
    shown = [line for line in done.stdout.splitlines() if line.startswith("- [")]
    assert len(shown) == 20
    assert "… 15 more (darkroom status --all)" in done.stdout
    every = cli("status", "--all", database_url=ledger, broker_url=redis_url)
    assert len([line for line in every.stdout.splitlines() if line.startswith("- [")]) == 35
    assert "more (darkroom status --all)" not in every.stdout


def test_results_table_keeps_each_cell_on_one_line(cli, ledger):
    done = cli("results", database_url=ledger)
    assert done.exit_code == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "photo-" in line]
    assert len(rows) == 8, done.stdout  # one line per image: nothing wrapped
    failed = next(line for line in rows if "photo-0.jpg" in line)
    assert "classify: " in failed and "…" in failed and "no download here; no download" not in failed
    from darkroom.cli.common import out

    assert max(len(line) for line in done.stdout.splitlines()) <= out.width
    # The full text stays in --json
    data = json.loads(cli("results", "--json", database_url=ledger).stdout)
    assert data[0]["errors"] == {"classify": LONG_REASON}


# --- up: one line per photo, logs in a file ------------------------------------------------------


def test_up_prints_one_line_per_photo_and_keeps_celerys_log_in_a_file(tmp_path, redis_url, photos):
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="normalize")
    dr.inbox.mkdir()
    for name in ("coffee", "chelsea"):
        shutil.copy(photos[name], dr.inbox / f"{name}.jpg")
    (dr.inbox / "notes.txt").write_text("not a photo")
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr  # finished, one file rejected
    log_file = dr.data / "logs" / "darkroom.log"
    assert str(log_file) in done.stderr.splitlines()[0]
    lines = done.stdout.splitlines()
    for name in ("coffee.jpg", "chelsea.jpg"):
        mine = [line for line in lines if name in line]
        assert len(mine) == 1 and mine[0].startswith("✓") and "0 faces" in mine[0], done.stdout
    notes = [line for line in lines if "notes.txt" in line]
    assert len(notes) == 1 and notes[0].startswith("✗") and "rejected" in notes[0], done.stdout
    assert lines[-1].startswith("finished: 2 done, 1 failed or rejected"), done.stdout
    # Celery's INFO stream is in the log file, not on the terminal
    for noise in ("received", "succeeded in", "celery@", "[tasks]"):
        assert noise not in done.stdout + done.stderr, noise
    log = log_file.read_text()
    assert "succeeded in" in log and "registered" in log
    # Nothing left: 0
    again = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1].startswith("finished: 0 done, 0 failed or rejected")


def test_up_exits_3_when_a_task_fails_and_retry_wait_reports_it_again(tmp_path, redis_url, photos):
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="normalize,classify",
                  classifier_model="mobilenet_v2", classifier_weights=str(tmp_path / "missing.weights.h5"),
                  preload_models="false", concurrency="1")
    dr.inbox.mkdir()
    shutil.copy(photos["coffee"], dr.inbox / "coffee.jpg")
    done = dr.run("up", str(dr.inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if "coffee.jpg" in line)
    assert line.startswith("✗") and "classify failed" in line, done.stdout
    # retry --wait sends it again, waits for the worker, and says it failed again
    worker = dr.start("worker", name="worker")
    try:
        retry = dr.run("retry", "--task", "classify", "--wait", timeout=300)
    finally:
        stop(worker, timeout=60)
    assert retry.returncode == 3, retry.stdout + retry.stderr + dr.log_tail()
    assert "sent 1 run(s)" in retry.stdout
    assert any("coffee.jpg" in line and "classify failed" in line for line in retry.stdout.splitlines())
    assert "finished: 0 done, 1 failed or rejected" in retry.stdout


def test_progress_poll_finds_photos_as_their_last_run_ends(ledger):
    """The feed's reads (storage.progress): new images and refused files by id range, finished
    photos among those waited for, nothing twice."""
    from storage import progress
    from storage.db import make_engine, session_factory, transaction
    from storage.models import DONE, FAILED, QUEUED, Image, SourceFile, TaskRun

    factory = session_factory(make_engine(ledger))
    with factory() as s:
        watch = progress.start_watch(s)
        assert watch.waiting == {} and progress.poll(s, watch) == []  # what was there is not new
    with transaction(factory) as s:
        image = Image(sha256="f" * 64, size_bytes=1)
        s.add(image)
        s.flush()
        s.add(SourceFile(path="/in/new.jpg", image_id=image.id))
        s.add(SourceFile(path="/in/link.jpg", refused_reason="/in/link.jpg: a link out"))
        runs = [TaskRun(image_id=image.id, task="normalize", status=QUEUED),
                TaskRun(image_id=image.id, task="classify", model="vgg16", status=QUEUED)]
        s.add_all(runs)
    with factory() as s:
        found = progress.poll(s, watch)
        assert [type(f).__name__ for f in found] == ["Refused"] and list(watch.waiting) == [image.id]
    with transaction(factory) as s:
        for run, state in zip(runs, (DONE, FAILED)):
            s.get(TaskRun, run.id).status = state
            s.get(TaskRun, run.id).duration_ms = 500.0
        s.get(TaskRun, runs[1].id).error = "weights missing"
    with factory() as s:
        (done,) = progress.poll(s, watch)
        assert (done.path, done.status, done.errors, done.seconds) == \
            ("/in/new.jpg", "failed", (("classify", "weights missing"),), 1.0)
        assert progress.poll(s, watch) == [] and watch.waiting == {}


# --- near-duplicates -------------------------------------------------------------------------------


def test_duplicates_groups_resized_copies_and_says_when_nothing_is_hashed(cli, tmp_path, photos):
    from PIL import Image

    from tests.harness import Pipeline

    store = tmp_path / "store"
    pipe = Pipeline(store)
    env = {"data_dir": str(store), "database_url": pipe.db_url}
    assert cli("duplicates", **env).exit_code == 1  # nothing hashed yet: says how to hash
    added = {}
    for name in ("astronaut", "coffee"):
        original = Image.open(photos[name])
        half = tmp_path / f"{name}-half.jpg"
        original.resize((original.width // 2, original.height // 2), Image.LANCZOS).save(half, quality=75)
        for path in (photos[name], half):
            sha, (run_id,) = pipe.add(path, [("phash", "")])
            assert pipe.execute(run_id) == "done"
            added[str(path)] = sha
    done = cli("duplicates", "--json", **env)
    assert done.exit_code == 0, done.output
    groups = json.loads(done.stdout)
    assert sorted(sorted(i["path"] for i in g["images"]) for g in groups) == sorted(
        sorted([str(photos[name]), str(tmp_path / f"{name}-half.jpg")]) for name in ("astronaut", "coffee"))
    text = cli("duplicates", "--distance", "0", **env)
    assert text.exit_code == 0 and "2 group(s), 4 of 4 photo(s) (distance 0)" in text.stdout
