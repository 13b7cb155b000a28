"""The course's commands (`normalize`, `model summary`, `classify`, `augment`, `faces`, `rerun`), run
in-process through the real `darkroom` Typer app, on photos that packages ship."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import redis
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.settings import get_settings

LABEL_LINE = re.compile(r"^\S.* \(\d{1,3}\.\d{2}%\)$")


@pytest.fixture()
def run(monkeypatch, tmp_path):
    """`darkroom ARGS` in this process, in a scratch folder, with settings read afresh."""
    monkeypatch.chdir(tmp_path)
    for var in ("DARKROOM_CLASSIFIER_MODEL", "DARKROOM_CLASSIFIER_WEIGHTS", "DARKROOM_AUGMENT",
                "DARKROOM_FACE_MIN_CONFIDENCE", "DARKROOM_FACE_MIN_SIZE", "DARKROOM_AUGMENT_SEED"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str):
        get_settings.cache_clear()
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("darkroom: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- lesson 2 --------------------------------------------------------------------------------------


def test_normalize_prints_the_lessons_report(run, files):
    result = run("normalize", files["gradient"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["Data Type: uint8", "Min: 0.000, Max: 255.000", "Min: 0.000, Max: 1.000"]


def test_normalize_standardize_per_channel(run, files):
    result = run("normalize", files["astronaut"], "--mode", "standardize", "--per-channel")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Data Type: uint8" and lines[1] == "Min: 0.000, Max: 255.000"
    assert lines[2].startswith("Means: [") and "Standard Deviations: [" in lines[2]
    assert lines[3] == "Means: [0.000, 0.000, 0.000], Standard Deviations: [1.000, 1.000, 1.000]"
    assert lines[4].startswith("Min: -")
    # The per-channel means printed are the photo's own
    means = [float(v) for v in re.findall(r"[\d.]+", lines[2].split("Standard")[0])]
    pixels = np.asarray(Image.open(files["astronaut"]).convert("RGB"))
    np.testing.assert_allclose(means, pixels.reshape(-1, 3).mean(axis=0), atol=5e-4)


def test_normalize_center_and_json(run, files):
    result = run("normalize", files["gradient"], "--mode", "center", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "center" and report["per_channel"] is False and report["dtype"] == "uint8"
    assert report["before"]["min"] == 0 and report["before"]["max"] == 255
    assert abs(report["after"]["mean_all"]) < 1e-6
    assert report["after"]["max"] - report["after"]["min"] == 255


@pytest.mark.parametrize("args, needles", [
    (["normalize", "missing.jpg"], ["no such file", "missing.jpg"]),
    (["normalize", "TEXT"], ["notes.jpg", "not an image"]),
    (["normalize", "GRADIENT", "--mode", "whiten"], ["whiten"]),
    (["normalize", "GRADIENT", "--per-channel"], ["scale"]),
])
def test_normalize_errors(run, files, args, needles):
    args = [str(files["text"]) if a == "TEXT" else str(files["gradient"]) if a == "GRADIENT" else a for a in args]
    one_line_error(run(*args), *needles)


# --- lesson 3 --------------------------------------------------------------------------------------


def test_model_summary_of_the_lessons_cnn(run):
    result = run("model", "summary", "lesson3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    rows = [line for line in out.splitlines() if "(None" in line]
    assert len(rows) == 4
    for kind, shape, params in [("Conv2D", "(None, 254, 254, 32)", "320"), ("MaxPooling2D", "(None, 127, 127, 32)", "0"),
                                ("Flatten", "(None, 516128)", "0"), ("Dense", "(None, 1)", "516,129")]:
        row = next(r for r in rows if f"({kind})" in r)
        assert shape in row and row.split()[-1] == params, row
    assert "Total params: 516,449" in out
    # The lesson's task: how the shape changes, in words
    story = out.split("How the image's shape changes:")[1]
    assert "256×256×1 → 254×254×32" in story and "254×254×32 → 127×127×32" in story
    assert "127×127×32 → 516128" in story and "516,128 values" in story
    assert "each side loses 2" in story and "divided by 2" in story


def test_model_summary_default_is_lesson3_and_layers_add_more(run):
    assert "Total params: 516,449" in run("model", "summary").stdout
    result = run("model", "summary", "lesson3", "--layers", "conv,pool")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for shape in ("(None, 254, 254, 32)", "(None, 127, 127, 32)", "(None, 125, 125, 32)", "(None, 62, 62, 32)",
                  "(None, 123008)"):
        assert shape in out
    # conv: 3*3*32*32 + 32 = 9,248; dense: 123,008 + 1
    assert "Total params: 132,577" in out
    assert "127×127×32 → 125×125×32" in out and "125×125×32 → 62×62×32" in out


def test_model_summary_lesson5_json(run):
    result = run("model", "summary", "lesson5", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["input_shape"] == [None, 28, 28, 1]
    assert [layer["output_shape"] for layer in summary["layers"]] == [
        [None, 26, 26, 32], [None, 13, 13, 32], [None, 5408], [None, 100], [None, 10]]
    assert summary["total_params"] == 320 + 5408 * 100 + 100 + 1010 == 542_230


def test_model_summary_of_registry_and_saved_models(run, tmp_path):
    """VGG16 is lesson 4's model: its architecture alone (no weights) gives the summary."""
    result = run("model", "summary", "vgg16")
    assert result.exit_code == 0, result.output
    assert "Total params: 138,357,544" in result.stdout
    assert "(None, 7, 7, 512)" in result.stdout and "(None, 1000)" in result.stdout
    assert "224×224×64 → 112×112×64" in result.stdout
    # A saved .keras model, by path
    from tasks.cnn import lesson3

    path = tmp_path / "mine.keras"
    lesson3().save(path)
    saved = run("model", "summary", path)
    assert saved.exit_code == 0, saved.output
    assert "Total params: 516,449" in saved.stdout


@pytest.mark.parametrize("args, needles", [
    (["model", "summary", "vgg99"], ["vgg99", "lesson3", "mobilenet_v2"]),
    (["model", "summary", "lesson3", "--layers", "spin"], ["spin", "conv"]),
    (["model", "summary", "mobilenet_v2", "--layers", "conv"], ["lesson3"]),
    (["model", "summary", "lesson5", "--layers", "pool,pool,pool,pool"], ["lesson5"]),
    (["model", "summary", "nowhere/model.keras"], ["no such file"]),
])
def test_model_summary_errors(run, args, needles):
    one_line_error(run(*args), *needles)


# --- lesson 4 --------------------------------------------------------------------------------------


def test_classify_prints_label_and_percent(run, files):
    result = run("classify", files["chelsea"], files["coffee"], "--model", "mobilenet_v2", "--weights", "none")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    assert lines[0] == str(files["chelsea"]) and lines[6] == str(files["coffee"])
    for line in lines[1:6] + lines[7:12]:
        assert LABEL_LINE.match(line), line


def test_classify_top_and_json(run, files):
    text = run("classify", files["chelsea"], "--model", "mobilenet_v2", "--weights", "none", "--top", "3")
    assert text.exit_code == 0 and len(text.stdout.splitlines()) == 4
    result = run("classify", files["chelsea"], "--model", "mobilenet_v2", "--weights", "none", "--json")
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.stdout)
    assert item["model"] == "mobilenet_v2" and item["weights"] == "none" and item["path"] == str(files["chelsea"])
    assert [lab["rank"] for lab in item["labels"]] == [1, 2, 3, 4, 5]
    # The printed lines are the JSON's labels, as the course prints them
    printed = text.stdout.splitlines()[1:]
    assert printed == [f"{lab['label']} ({lab['score'] * 100:.2f}%)" for lab in item["labels"][:3]]


@pytest.mark.parametrize("args, needles", [
    (["classify", "CHELSEA", "--model", "vgg99"], ["vgg99", "vgg16"]),
    (["classify", "CHELSEA", "--model", "mobilenet_v2", "--weights", "/nowhere/w.h5"], ["/nowhere/w.h5", "does not exist"]),
    (["classify", "missing.jpg", "--model", "mobilenet_v2", "--weights", "none"], ["no such file"]),
    (["classify", "TEXT", "--model", "mobilenet_v2", "--weights", "none"], ["notes.jpg"]),
])
def test_classify_errors(run, files, args, needles):
    args = [str(files["chelsea"]) if a == "CHELSEA" else str(files["text"]) if a == "TEXT" else a for a in args]
    one_line_error(run(*args), *needles)


def test_classify_unavailable_imagenet_weights(run, files, monkeypatch):
    """ImageNet weights that cannot be had (no cache, no network): the loader's message, on one line."""
    from tasks import keras_models
    from tasks.classify import ModelUnavailable

    def no_download(spec, names):
        raise ModelUnavailable(f"classifier {spec.name!r}: no ImageNet weights here.\nSet {names['weights']}.")

    monkeypatch.setattr(keras_models, "_imagenet_weights", no_download)
    one_line_error(run("classify", files["chelsea"], "--model", "mobilenet_v2"), "mobilenet_v2",
                   "DARKROOM_CLASSIFIER_WEIGHTS")


# --- lesson 6 --------------------------------------------------------------------------------------


def test_augment_writes_the_lessons_3x3_sheet(run, files, tmp_path):
    result = run("augment", files["astronaut"])
    assert result.exit_code == 0, result.output
    sheet = tmp_path / "astronaut-augmented.jpg"
    assert str(sheet.name) in result.stdout and "3×3" in result.stdout
    with Image.open(sheet) as im:
        assert im.format == "JPEG" and im.size == (3 * 256 + 16, 3 * 256 + 16)


def test_augment_spec_and_out(run, files, tmp_path):
    out = tmp_path / "sheets" / "more.png"
    result = run("augment", files["astronaut"], "--augment", "count=6,size=64,shear=20,channel_shift=40,zoom=0.2",
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert "2×3" in result.stdout and "shear=20.0" in result.stdout and "channel_shift=40.0" in result.stdout
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (3 * 68 + 4, 2 * 68 + 4)
        sheet = np.asarray(im.convert("RGB"))
    # The sheet holds exactly the pipeline's images for that spec
    from tasks.augment import AugmentSpec, augment, contact_sheet

    expected = contact_sheet(augment(data.astronaut(), AugmentSpec(count=6, size=64, shear=20, channel_shift=40,
                                                                    zoom=0.2)))
    # (the file was JPEG-encoded once, as the photo: compare loosely)
    assert np.abs(sheet.astype(int) - expected.astype(int)).mean() < 8


def test_augment_settings_are_the_base(run, files, tmp_path, monkeypatch):
    monkeypatch.setenv("DARKROOM_AUGMENT", "count=4,size=32")
    result = run("augment", files["coffee"], "--augment", "seed=2", "--out", tmp_path / "s.jpg")
    assert result.exit_code == 0, result.output
    assert "count=4" in result.stdout and "seed=2" in result.stdout
    with Image.open(tmp_path / "s.jpg") as im:
        assert im.size == (3 * 36 + 4, 2 * (21 + 4) + 4)  # coffee 400x600 -> 21x32


@pytest.mark.parametrize("spec, needle", [("spin=3", "spin"), ("shear=120", "shear"), ("fill_mode=mirror", "fill_mode")])
def test_augment_bad_spec(run, files, spec, needle):
    one_line_error(run("augment", files["coffee"], "--augment", spec), "--augment", needle)


# --- lesson 7 --------------------------------------------------------------------------------------


def test_faces_on_the_astronaut(run, files, tmp_path):
    result = run("faces", files["astronaut"], "--crops", tmp_path / "crops")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{files['astronaut']}: 1 face"
    match = re.match(r"^0: box x=(\d+) y=(\d+) w=(\d+) h=(\d+)  confidence (\d+\.\d\d)%  left_eye \((\d+), (\d+)\)",
                     lines[1])
    assert match, lines[1]
    x, y, w, h = (int(v) for v in match.groups()[:4])
    assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200 and float(match.group(5)) > 90
    for name in ("right_eye", "nose", "mouth_left", "mouth_right"):
        assert name in lines[1]
    boxed = tmp_path / "astronaut-faces.jpg"
    assert f"boxed image: {boxed.name}" in result.stdout
    with Image.open(boxed) as im:
        assert im.format == "JPEG" and im.size == (512, 512)
        pixels = np.asarray(im)
    # The keypoint is drawn (a red dot) on the boxed image
    ex, ey = int(match.group(6)), int(match.group(7))
    r, g, b = pixels[ey, ex].astype(int)
    assert r > 180 and g < 90 and b < 90
    with Image.open(tmp_path / "crops" / "astronaut-face-0.jpg") as im:
        assert im.size == (w, h)


def test_faces_on_a_collage_of_six(run, files, tmp_path):
    result = run("faces", files["collage"], "--json", "--out", tmp_path / "boxed.png")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert len(found["faces"]) == 6
    assert found["boxed"] == str(tmp_path / "boxed.png") and (tmp_path / "boxed.png").stat().st_size > 1000
    # A confidence threshold above every face's finds none
    strict = run("faces", files["collage"], "--min-confidence", "1.0", "--json")
    assert strict.exit_code == 0 and all(f["confidence"] >= 1.0 for f in json.loads(strict.stdout)["faces"])


def test_faces_min_size_drops_small_faces(run, files, tmp_path):
    result = run("faces", files["collage"], "--min-size", "200", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["faces"] == []  # every face is about 90-110 px


@pytest.mark.parametrize("args, needles", [
    (["faces", "missing.jpg"], ["no such file"]),
    (["faces", "TEXT"], ["notes.jpg"]),
    (["faces", "ASTRO", "--min-confidence", "2"], ["min_confidence"]),
    (["faces", "ASTRO", "--out", "boxed.gif"], [".jpg or .png"]),
])
def test_faces_errors(run, files, args, needles):
    args = [str(files["text"]) if a == "TEXT" else str(files["astronaut"]) if a == "ASTRO" else a for a in args]
    one_line_error(run(*args), *needles)


# --- rerun -----------------------------------------------------------------------------------------


@pytest.fixture()
def store(tmp_path, redis_url, monkeypatch):
    """A migrated SQLite store and the test Redis, as the environment names them."""
    from storage.db import make_engine, migrate, session_factory

    db_url = f"sqlite:///{tmp_path / 'darkroom.db'}"
    engine = make_engine(db_url)
    migrate(engine)
    monkeypatch.setenv("DARKROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DARKROOM_DATABASE_URL", db_url)
    monkeypatch.setenv("DARKROOM_BROKER_URL", redis_url)
    yield session_factory(engine), redis.Redis.from_url(redis_url)
    engine.dispose()


def test_rerun_classify_with_another_model_creates_and_sends_runs(run, store):
    from storage import files, ledger
    from storage.db import transaction
    from storage.models import DONE, QUEUED, TaskRun
    from worker.queues import queue_depths

    sessions, client = store
    work = [("classify", "mobilenet_v2@none"), ("normalize", "")]
    with transaction(sessions) as s:
        regs = [files.register_file(s, path=f"/in/{c}.jpg", size_bytes=1, mtime_ns=1, sha256=c * 64, fmt="JPEG",
                                   width=4, height=4, rejected_reason=None, work=work) for c in "ab"]
        files.register_file(s, path="/in/c.txt", size_bytes=1, mtime_ns=1, sha256="c" * 64, fmt=None, width=None,
                           height=None, rejected_reason="not an image", work=work)
        for reg in regs:
            ledger.mark_enqueued(s, reg.run_ids)
            for run_id in reg.run_ids:
                ledger.finish_run(s, run_id, status=DONE)
    # When a different model is asked for
    result = run("rerun", "--task", "classify", "--model", "resnet50", "--weights", "none")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("classify:resnet50@none: 2 new run(s), 0 requeued; 2 sent")
    # Then each usable image has a new run under the new model's key, sent to the gpu queue
    with sessions() as s:
        new = s.query(TaskRun).filter_by(task="classify", model="resnet50@none").all()
        assert len(new) == 2 and all(r.status == QUEUED and r.enqueued_at is not None for r in new)
        assert s.query(TaskRun).filter_by(model="mobilenet_v2@none", status=DONE).count() == 2
    assert queue_depths(client)["gpu"] == 1
    messages = [json.loads(raw) for raw in client.lrange("gpu", 0, -1)]
    assert {m["headers"]["task"] for m in messages} == {"darkroom.classify"}
    # One message for the batch, carrying the new runs' ids (and nothing else)
    (body,) = [json.loads(base64.b64decode(m["body"])) for m in messages]
    assert sorted(body[1]["run_ids"]) == sorted(r.id for r in new) and body[1]["run_id"] == body[1]["run_ids"][0]
    # The model already there is run again over what it labelled
    again = run("rerun", "--task", "classify", "--model", "mobilenet_v2", "--weights", "none")
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("classify:mobilenet_v2@none: 0 new run(s), 2 requeued; 2 sent")
    # --failed-only touches nothing when nothing failed
    none = run("rerun", "--task", "normalize", "--failed-only")
    assert none.exit_code == 0 and none.stdout.startswith("normalize: 0 new run(s), 0 requeued; 0 sent")
    assert queue_depths(client) == {"cpu": 0, "gpu": 2}


@pytest.mark.parametrize("args, needles", [
    (["rerun", "--task", "spin"], ["spin", "classify"]),
    (["rerun", "--task", "faces", "--model", "vgg16"], ["classify only"]),
    (["rerun", "--task", "classify", "--model", "vgg99"], ["vgg99"]),
])
def test_rerun_errors(run, store, args, needles):
    one_line_error(run(*args), *needles)
