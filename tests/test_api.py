"""`darkroom.analyze`: one photo's results in this process, the same as a worker stores them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import darkroom
from darkroom import catalog
from tests.harness import Pipeline

#: What analyze and a worker must agree on (``near_duplicates`` needs the store; ``paths`` and
#: ``tasks`` states are compared separately).
SAME = ("sha256", "format", "width", "height", "size_bytes", "normalize", "normalizations", "labels",
        "labels_by_model", "faces", "augmentations", "artifacts", "phash")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """MobileNetV2 weights saved once, so that the worker and analyze classify with the same model."""
    import keras

    from tasks.classify import REGISTRY

    keras.utils.set_random_seed(5)
    path = tmp_path_factory.mktemp("weights") / "m.weights.h5"
    REGISTRY["mobilenet_v2"].build(weights=None).save_weights(str(path))
    return path


def test_analyze_gives_what_the_worker_stores(photos, weights, tmp_path):
    pipe = Pipeline(tmp_path / "store")
    pipe.configure(classifier_model="mobilenet_v2", classifier_weights=str(weights))
    work = catalog.planned_work(pipe.rt.settings)
    assert [task for task, _key in work] == list(catalog.NAMES)
    sha, run_ids = pipe.add(photos["astronaut"], work)
    for run_id in run_ids:
        assert pipe.execute(run_id) in ("done", "skipped")
    stored = pipe.results(sha)
    assert stored["status"] == "done"

    result = darkroom.analyze(photos["astronaut"], settings=pipe.rt.settings)
    for key in SAME:
        assert result[key] == stored[key], key
    assert result["status"] == "done" and result["errors"] == {}
    assert result["tasks"] == stored["tasks"]
    assert result["paths"] == [str(photos["astronaut"].absolute())]
    assert len(result["faces"]) == 1 and result["augmentations"] == 9 and len(result["phash"]) == 16


def test_analyze_an_array_some_tasks_and_bad_input(photos, tmp_path):
    from skimage import data

    from darkroom.settings import Settings

    settings = Settings(data_dir=tmp_path, _env_file=None)
    result = darkroom.analyze(data.coffee(), tasks=["normalize", "phash"], settings=settings)
    assert result["status"] == "done" and set(result["tasks"]) == {"normalize", "phash"}
    assert result["path"] is None and (result["width"], result["height"]) == (600, 400)
    assert result["labels"] == [] and result["faces"] == []  # tasks not asked for: their empty fields

    junk = tmp_path / "notes.jpg"
    junk.write_text("not a photo")
    rejected = darkroom.analyze(junk, tasks=["normalize"], settings=settings)
    assert rejected["status"] == "rejected" and str(junk) in rejected["errors"]["image"]
    with pytest.raises(FileNotFoundError):
        darkroom.analyze(tmp_path / "missing.jpg", settings=settings)


def test_a_model_that_cannot_be_had_fails_its_task_only(photos, tmp_path):
    from darkroom.settings import Settings

    settings = Settings(data_dir=tmp_path, classifier_model="mobilenet_v2",
                        classifier_weights=str(tmp_path / "missing.weights.h5"), _env_file=None)
    result = darkroom.analyze(photos["chelsea"], tasks=["classify", "normalize"], settings=settings)
    assert result["status"] == "failed"
    assert result["tasks"]["normalize"] == "done" and result["normalize"] is not None
    assert "DARKROOM_CLASSIFIER_WEIGHTS" in result["errors"]["classify"]


def test_analyze_many_classifies_a_list_in_one_batch(photos, weights, tmp_path, monkeypatch):
    import dataclasses

    from darkroom.settings import Settings

    settings = Settings(data_dir=tmp_path, classifier_model="mobilenet_v2", classifier_weights=str(weights),
                        _env_file=None)
    paths = [photos[name] for name in ("astronaut", "chelsea", "coffee")]
    alone = [darkroom.analyze(p, tasks=["classify"], settings=settings) for p in paths]
    task, calls = catalog.get("classify"), []

    def counting(model, images, **options):
        calls.append(len(images))
        return task.step(model, images, **options)

    monkeypatch.setitem(catalog.BY_NAME, "classify", dataclasses.replace(task, step=counting))
    together = darkroom.Analyzer(settings, tasks=["classify"]).analyze_many(paths)
    assert calls == [3]
    for a, b in zip(together, alone):
        assert [lab["class_id"] for lab in a["labels"]] == [lab["class_id"] for lab in b["labels"]]
        np.testing.assert_allclose([lab["score"] for lab in a["labels"]], [lab["score"] for lab in b["labels"]],
                                   atol=1e-5)


def test_near_duplicates_through_the_pipeline(photos, tmp_path):
    """The phash task's results: every resized or recompressed copy lists its original (and the
    original them); a different photo lists none of them."""
    from tasks.phash import distance, from_hex

    pipe = Pipeline(tmp_path / "store")
    original = photos["astronaut"]
    copies = {"half.jpg": 0.5, "quarter.png": 0.25}
    shas = {}
    for name, scale in copies.items():
        img = Image.open(original)
        path = tmp_path / name
        img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS).save(path, quality=70)
        shas[name] = pipe.add(path, [("phash", "")])
    shas["original"] = pipe.add(original, [("phash", "")])
    shas["other"] = pipe.add(photos["coffee"], [("phash", "")])
    for _sha, (run_id,) in shas.values():
        assert pipe.execute(run_id) == "done"
    results = {name: pipe.results(sha) for name, (sha, _runs) in shas.items()}
    group = {shas[n][0] for n in ("half.jpg", "quarter.png", "original")}
    for name in ("half.jpg", "quarter.png", "original"):
        assert set(results[name]["near_duplicates"]) == group - {shas[name][0]}, name
    assert results["other"]["near_duplicates"] == []
    assert distance(from_hex(results["original"]["phash"]), from_hex(results["other"]["phash"])) > 8
