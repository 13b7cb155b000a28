"""The worker: each task's run through the real ``worker.pipeline.execute`` (claim, blob read,
decode, step, write, finish) on a real SQLite store, with the settings that shape each task; batches,
groups, retries, companion runs, preload, device choice and malformed messages.

For registry models built with ``weights=None`` (every model in the registry, VGG16 and VGG19
included), the label and score the pipeline stores equal calling the Keras model directly on the
same file (the course's lesson 4).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from darkroom.catalog import classifier_key
from storage import ledger
from storage.db import transaction
from storage.models import DONE, QUEUED, TaskRun
from tasks.augment import AugmentSpec, augment, contact_sheet
from tasks.imaging import decode, encode
from tasks.normalize import normalize_stats
from tests.harness import FakeTask, Pipeline, Retry
from tests.keras_helpers import sharpen

# Every registry model, VGG16 and VGG19 (528 and 549 MB of weights) included.
CLASSIFIERS = ["mobilenet_v2", "efficientnet_b0", "resnet50", "inception_v3", "xception", "vgg16", "vgg19"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Pipeline:
    """One store and one worker runtime for the whole module, so that each model loads once; tests
    add new content (a mirrored or rotated copy) where they need runs of their own."""
    return Pipeline(tmp_path_factory.mktemp("store"))


def keras_direct(model, spec, path: Path) -> np.ndarray:
    """The course's lesson 4, verbatim but for the model: load_img, img_to_array, preprocess_input,
    predict (with the bilinear resize Darkroom uses; Keras's load_img defaults to nearest)."""
    import keras

    image = keras.utils.load_img(str(path), target_size=spec.input_size, interpolation="bilinear")
    image = keras.utils.img_to_array(image)
    image = image.reshape((1, *image.shape))
    image = spec.preprocess_function()(image)
    return np.asarray(model.predict(image, verbose=0))[0]


# --- normalize: a report per configured mode (lesson 2) -------------------------------------------

def test_normalize_stores_one_report_per_configured_mode(pipe, files):
    pipe.configure(normalize_modes="center,standardize:per_channel,standardize")
    sha, (run_id,) = pipe.add(files["coffee"], [("normalize", "")])
    assert pipe.execute(run_id) == DONE
    result = pipe.results(sha)
    reports = {(r["mode"], r["per_channel"]): r for r in result["normalizations"]}
    assert set(reports) == {("scale", False), ("center", False), ("standardize", True), ("standardize", False)}
    # The contract's `normalize` stays the scale report, whatever else is configured
    assert result["normalize"]["mode"] == "scale"
    assert result["normalize"]["after"]["max"] <= 1.0 and result["normalize"]["before"]["max"] > 1.0
    # Each stored report is exactly what tasks.normalize gives for the image
    pixels = decode(files["coffee"])
    for (mode, per_channel), stored in reports.items():
        assert stored == normalize_stats(pixels, mode, per_channel).to_dict()
    std = reports[("standardize", True)]["after"]
    np.testing.assert_allclose(std["mean"], [0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(std["std"], [1, 1, 1], atol=1e-5)
    centered = reports[("center", False)]["after"]
    assert abs(centered["mean_all"]) < 1e-6 and centered["min"] < 0 < centered["max"]


# --- faces: crops of every face, keypoints on the boxed image (lesson 7) ---------------------------


def test_faces_of_a_collage_each_with_its_crop(pipe, files):
    pipe.configure()
    sha, (run_id,) = pipe.add(files["collage"], [("faces", "mtcnn")])
    assert pipe.execute(run_id) == DONE
    faces = pipe.results(sha)["faces"]
    # Six copies of a real face: six faces, one per tile
    assert len(faces) == 6
    tiles = {(f["box"][0] + f["box"][2] // 2) // 160 + 3 * ((f["box"][1] + f["box"][3] // 2) // 160) for f in faces}
    assert tiles == set(range(6))
    arts = pipe.artifacts(sha)
    collage = decode(files["collage"])
    for i, face in enumerate(faces):
        assert face["crop"] == i
        x, y, w, h = face["box"]
        art = arts[("face_crop", i)]
        assert (art.width, art.height) == (w, h) and art.mime == "image/jpeg"
        crop = decode(art.data)
        assert crop.shape == (h, w, 3)
        # The crop is that face's pixels (JPEG-close)
        assert np.abs(crop.astype(int) - collage[y:y + h, x:x + w].astype(int)).mean() < 6
    # The boxed image has a red dot on every keypoint (the lesson's box, plus landmarks)
    boxed = decode(arts[("faces_boxed", 0)].data)
    for face in faces:
        for px, py in face["keypoints"].values():
            r, g, b = boxed[py, px].astype(int)
            assert r > 180 and g < 90 and b < 90, (px, py, boxed[py, px])


def test_face_crops_off_and_a_rerun_replaces_them(pipe, files):
    pipe.configure()
    sha, (run_id,) = pipe.add(files["astronaut"], [("faces", "mtcnn")])
    assert pipe.execute(run_id) == DONE
    first = pipe.results(sha)
    assert len(first["faces"]) == 1 and first["faces"][0]["crop"] == 0
    assert first["artifacts"] == {"faces_boxed": 1, "face_crop": 1}
    # When crops are switched off and the task is run again over the store
    pipe.configure(face_crops=False)
    with transaction(pipe.sessions) as s:
        again = ledger.rerun(s, "faces", "mtcnn")
    assert run_id in again.requeued
    assert pipe.execute(run_id) == DONE
    second = pipe.results(sha)
    assert second["faces"][0]["box"] == first["faces"][0]["box"]
    assert second["faces"][0]["crop"] is None
    assert second["artifacts"] == {"faces_boxed": 1}


def test_boxed_photo_stored_when_a_face_is_found_by_default(pipe, files, tmp_path):
    """DARKROOM_FACE_BOXED: a photo without faces is not stored again unchanged ("found", the
    default); "always" stores it for every photo, "never" for none; a rerun replaces what was there."""
    pipe.configure()
    cup = tmp_path / "cup.png"  # new content: the coffee photo mirrored (no face)
    Image.fromarray(np.fliplr(data.coffee())).save(cup)
    sha, (run_id,) = pipe.add(cup, [("faces", "mtcnn")])
    assert pipe.execute(run_id) == DONE
    result = pipe.results(sha)
    assert result["faces"] == [] and result["tasks"]["faces:mtcnn"] == "done"
    assert result["artifacts"] == {}
    for setting, want in (("always", {"faces_boxed": 1}), ("never", {}), ("found", {})):
        pipe.configure(face_boxed=setting)
        with transaction(pipe.sessions) as s:
            assert run_id in ledger.rerun(s, "faces", "mtcnn").requeued
        assert pipe.execute(run_id) == DONE
        assert pipe.results(sha)["artifacts"] == want, setting
    # A photo with a face (new content: the astronaut mirrored), boxing off: its crop only
    pipe.configure(face_boxed="never")
    mirrored = tmp_path / "mirrored.png"
    Image.fromarray(np.fliplr(data.astronaut())).save(mirrored)
    sha, (run_id,) = pipe.add(mirrored, [("faces", "mtcnn")])
    assert pipe.execute(run_id) == DONE
    assert pipe.results(sha)["artifacts"] == {"face_crop": 1}
    pipe.configure()


# --- augment: the settings' spec string (lesson 6) -------------------------------------------------


def test_augment_uses_the_settings_spec(pipe, files):
    pipe.configure(augment="count=4,size=64,shear=15,channel_shift=30,fill_mode=reflect", augment_seed=3)
    sha, (run_id,) = pipe.add(files["rocket"], [("augment", "")])
    assert pipe.execute(run_id) == DONE
    result = pipe.results(sha)
    assert result["augmentations"] == 4 and result["artifacts"] == {"augmented": 4, "contact_sheet": 1}
    arts = pipe.artifacts(sha)
    spec = AugmentSpec(count=4, size=64, shear=15.0, channel_shift=30.0, fill_mode="reflect", seed=3)
    # The worker decodes the 427x640 JPEG at 1/4 size (DARKROOM_FAST_DECODE): enough for 64 px outputs.
    assert decode(files["rocket"], at_least=spec.decode_size).shape == (107, 160, 3)
    expected = augment(decode(files["rocket"], at_least=spec.decode_size), spec)
    for i, img in enumerate(expected):
        assert arts[("augmented", i)].data == encode(img, "JPEG", quality=90)
    sheet = arts[("contact_sheet", 0)]
    # 4 images of the rocket (427x640 -> 43x64) in rows of 3: 2 rows, 3 columns, 4 px gaps
    assert (sheet.width, sheet.height) == (3 * 68 + 4, 2 * 47 + 4) == contact_sheet(expected).shape[1::-1]


def test_artifacts_kept_in_the_blob_store_when_asked(pipe, files, tmp_path):
    """DARKROOM_ARTIFACT_STORE=blobs: the images a task makes go to the blob store by sha256 and SQL
    keeps only the hash; the same bytes come out of export as with the default (SQL)."""
    from darkroom.cli.exporting import export_images

    spec = "count=2,size=48"
    kept = {}
    photos = {}
    for name in ("rocket", "coffee"):  # new content (upside down): runs of this test's own
        photos[name] = tmp_path / f"{name}-flipped.png"
        Image.fromarray(np.flipud(np.asarray(Image.open(files[name]).convert("RGB")))).save(photos[name])
    for store, photo in (("sql", photos["rocket"]), ("blobs", photos["coffee"])):
        pipe.configure(augment=spec, augment_seed=5, artifact_store=store)
        sha, (run_id,) = pipe.add(photo, [("augment", "")])
        assert pipe.execute(run_id) == DONE
        kept[store] = (sha, pipe.artifacts(sha))
    pipe.configure()
    sha, arts = kept["blobs"]
    assert arts and all(a.data is None and pipe.blobs.exists(a.blob) for a in arts.values())
    assert all(a.blob is None and a.data for a in kept["sql"][1].values())
    expected = augment(decode(photos["coffee"], at_least=48), AugmentSpec(count=2, size=48, seed=5))
    for i, img in enumerate(expected):
        assert pipe.blobs.path_for(arts[("augmented", i)].blob).read_bytes() == encode(img, "JPEG", quality=90)
    n_images, _ = export_images(pipe.sessions, tmp_path / "out", [sha], pipe.settings())
    assert n_images == 1
    assert (tmp_path / "out" / sha / "augmented-1.jpg").read_bytes() == encode(expected[1], "JPEG", quality=90)
    # A blob gone from the store is said plainly, with how to make it again.
    pipe.blobs.path_for(arts[("contact_sheet", 0)].blob).unlink()
    with pytest.raises(FileNotFoundError, match="contact_sheet image .* is missing from the blob store.*rerun"):
        export_images(pipe.sessions, tmp_path / "again", [sha], pipe.settings())


# --- classify: fast decode, batches and groups, the model's own labels (lesson 4) ------------------


def test_fast_decode_classifies_the_photo_decoded_smaller_and_can_be_turned_off(pipe, files, tmp_path):
    """A large JPEG is decoded at 1/4 size for a 224 px model (DARKROOM_FAST_DECODE, the default);
    with it off the scores are the course's (every pixel decoded, then resized)."""
    import keras

    from tasks.classify import REGISTRY

    spec = REGISTRY["mobilenet_v2"]
    big = tmp_path / "chelsea-big.jpg"
    Image.fromarray(data.chelsea()).resize((1353, 900), Image.LANCZOS).save(big, quality=92)
    keras.utils.set_random_seed(5)
    model = spec.build(weights=None)
    small = decode(big, at_least=(224, 224))
    assert small.shape == (225, 339, 3)  # 1/4: the smallest scale still >= 224 x 224
    prep = spec.preprocess_function()
    fast_input = prep(np.asarray(Image.fromarray(small).resize((224, 224), Image.BILINEAR), dtype=np.float32)[None])
    sharpen(model, fast_input)  # a clear winner, not flat 0.001 scores
    fast_scores = np.asarray(model.predict(fast_input, verbose=0))[0]
    weights = tmp_path / "m.weights.h5"
    model.save_weights(str(weights))
    key = classifier_key("mobilenet_v2", str(weights))
    sha, (run_id,) = pipe.add(big, [("classify", key)])
    for fast, want in ((True, fast_scores), (False, keras_direct(model, spec, big))):
        pipe.configure(classifier_top_k=3, fast_decode=fast)
        if not fast:  # the same run again, now decoding every pixel
            with transaction(pipe.sessions) as s:
                assert run_id in ledger.rerun(s, "classify", key).requeued
        assert pipe.execute(run_id) == DONE
        labels = pipe.results(sha)["labels_by_model"][key]
        order = np.argsort(-want, kind="stable")[:3]
        assert [lab["class_id"] for lab in labels] == [int(i) for i in order], fast
        np.testing.assert_allclose([lab["score"] for lab in labels], want[order], rtol=0, atol=1e-5)
    assert not np.allclose(fast_scores, keras_direct(model, spec, big), atol=1e-5)  # really two decodes
    pipe.configure()
    pipe.rt.models.clear()


def test_a_group_message_classifies_its_runs_in_one_batch_and_retries_as_a_group(pipe, files, tmp_path):
    import keras

    from tasks.classify import REGISTRY

    keras.utils.set_random_seed(3)
    weights = tmp_path / "m.weights.h5"
    REGISTRY["mobilenet_v2"].build(weights=None).save_weights(str(weights))
    key = classifier_key("mobilenet_v2", str(weights))
    copies = []
    for i, name in enumerate(("chelsea", "coffee", "rocket", "astronaut")):
        copy = tmp_path / f"{i}-{name}.png"  # new content, so new runs in this module's store
        Image.fromarray(np.rot90(decode(files[name]), 1 + i % 3)).save(copy)
        copies.append(pipe.add(copy, [("classify", key)]))
    (sha1, (r1,)), (sha2, (r2,)), (sha3, (r3,)), (sha4, (r4,)) = copies
    pipe.configure(classify_batch_size=3)
    try:
        # A message for the group [r1, r2] takes both, and r3 (pending) to fill the batch of 3
        assert pipe.execute(r1, run_ids=[r1, r2]) == DONE
        with pipe.sessions() as s:
            runs = {r.id: r for r in s.query(TaskRun).filter(TaskRun.id.in_([r1, r2, r3, r4]))}
        assert [runs[r].status for r in (r1, r2, r3, r4)] == [DONE, DONE, DONE, QUEUED]
        assert len({runs[r].finished_at for r in (r1, r2, r3)}) == 1  # one forward pass, one write
        assert pipe.execute(r3) == "skipped"  # r3's own message: already done
        assert all(pipe.results(sha)["labels_by_model"][key] for sha in (sha1, sha2, sha3))

        # A group that meets a transient error is retried as a group, each run noting the retry
        pipe.blobs.path_for(sha4).rename(tmp_path / "away")
        with transaction(pipe.sessions) as s:
            assert set(ledger.rerun(s, "classify", key).requeued) >= {r1, r2, r3}
        pipe.configure(classify_batch_size=2)  # the group alone: no other run in its batch
        task = FakeTask()
        with pytest.raises(Retry):
            pipe.execute(r4, run_ids=[r4, r1], task=task)
        assert task.retried == [{"run_id": r4, "takeover": True, "run_ids": [r4, r1]}]
        with pipe.sessions() as s:
            assert all(s.get(TaskRun, r).error.startswith("retrying:") for r in (r4, r1))
        (tmp_path / "away").rename(pipe.blobs.path_for(sha4))
        assert pipe.execute(r4, run_ids=[r4, r1]) == DONE
    finally:
        pipe.configure()
        pipe.rt.models.clear()


def test_malformed_run_ids_are_ignored_not_fatal():
    from worker.pipeline import int_list as _int_list

    assert _int_list(None) is None and _int_list([3, 4]) == [3, 4]
    for bad in ("1,2", [1, "2"], [True], {"a": 1}):
        assert _int_list(bad) is None


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_pipeline_labels_equal_the_model_called_directly(name, pipe, files, tmp_path):
    import keras

    from tasks.classify import REGISTRY, imagenet_classes

    spec = REGISTRY[name]
    keras.utils.set_random_seed(11)
    model = spec.build(weights=None)
    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(str(files[p]), target_size=spec.input_size,
                                                                    interpolation="bilinear"))
                      for p in ("chelsea", "coffee")])
    sharpen(model, spec.preprocess_function()(batch))
    weights = tmp_path / f"{name}.weights.h5"
    model.save_weights(str(weights))
    reference = keras_direct(model, spec, files["chelsea"])
    assert reference.max() > 0.05  # sharpened: a clear winner, not a flat 0.001

    # When the pipeline classifies the same file with those weights
    pipe.configure(classifier_top_k=5)
    key = classifier_key(name, str(weights))
    sha, run_ids = pipe.add(files["chelsea"], [("classify", key)])
    assert len(run_ids) == 1
    assert pipe.execute(run_ids[0]) == DONE
    labels = pipe.results(sha)["labels_by_model"][key]
    # Then its top-5 labels and scores are the model's own
    order = np.argsort(-reference, kind="stable")[:5]
    classes = imagenet_classes()
    assert [lab["class_id"] for lab in labels] == [int(i) for i in order]
    assert [lab["label"] for lab in labels] == [classes[i] for i in order]
    np.testing.assert_allclose([lab["score"] for lab in labels], reference[order], rtol=0, atol=1e-5)
    pipe.rt.models.clear()  # free the model


# --- the process: device choice, preload, companion runs -------------------------------------------


def test_faces_run_on_the_gpu_when_tensorflow_sees_one(pipe, monkeypatch):
    """One worker process per GPU: MTCNN goes to that GPU (mtcnn's own default is the CPU)."""
    import tensorflow as tf

    from worker.runtime import tf_device

    assert tf_device() == ("GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0")
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    assert tf_device() == "GPU:0"
    if not tf.config.get_visible_devices("GPU"):  # here: the detector's key device, without building it
        from darkroom import catalog
        from tasks.faces import FaceDetector

        built = []
        monkeypatch.setattr(FaceDetector, "load", lambda self: built.append(self.device) or self)
        pipe.configure(face_min_confidence=0.5, face_min_size=33)
        try:
            assert pipe.rt.models.get(catalog.get("faces"), "mtcnn").device == "GPU:0" and built == ["GPU:0"]
        finally:
            pipe.configure()
            pipe.rt.models.clear()


def test_preload_loads_and_runs_the_models_of_the_queues_a_process_serves(pipe, tmp_path, caplog):
    """DARKROOM_PRELOAD_MODELS: a new worker process loads its tasks' models before the first photo."""
    import keras

    from tasks.classify import REGISTRY

    def preload(rt, queues):
        rt.queues = queues
        try:
            return rt.preload()
        finally:
            rt.queues = None

    keras.utils.set_random_seed(2)
    weights = tmp_path / "m.weights.h5"
    REGISTRY["mobilenet_v2"].build(weights=None).save_weights(str(weights))
    pipe.configure(classifier_model="mobilenet_v2", classifier_weights=str(weights))
    key = ("classify", classifier_key("mobilenet_v2", str(weights)), ("chunk", 0))
    try:
        assert preload(pipe.rt, ["cpu"]) == ["augment"]  # normalize has no model; classify and faces are gpu's
        assert key not in pipe.rt.models.loaded()
        assert preload(pipe.rt, ["cpu", "gpu"]) == [f"classify:{classifier_key('mobilenet_v2', str(weights))}",
                                                     "augment", "faces:mtcnn"]
        assert key in pipe.rt.models.loaded() and any(k[0] == "faces" for k in pipe.rt.models.loaded())
        # A model that cannot be had is left to its runs, which say what to do; the rest still loads
        pipe.configure(classifier_model="mobilenet_v2", classifier_weights=str(tmp_path / "missing.weights.h5"),
                       tasks=["classify", "faces"])
        with caplog.at_level("WARNING", logger="worker.runtime"):
            assert preload(pipe.rt, None) == ["faces:mtcnn"]
        assert "could not preload classify" in caplog.text
    finally:
        pipe.configure()
        pipe.rt.models.clear()


def test_normalize_and_faces_of_a_photo_are_done_together_from_one_decode(pipe, files, tmp_path, monkeypatch):
    """The full-pixel tasks of an image: the first of its messages does both (one decode, one
    transaction); the other's message is then skipped. Only in a process that serves both queues."""
    import worker.pipeline

    original, calls = worker.pipeline.decode, []

    def counting_decode(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(worker.pipeline, "decode", counting_decode)
    copy = tmp_path / "astro.png"
    Image.fromarray(np.fliplr(decode(files["astronaut"]))).save(copy)
    sha, (norm, faces) = pipe.add(copy, [("normalize", ""), ("faces", "mtcnn")])
    assert pipe.execute(norm) == DONE
    assert len(calls) == 1
    with pipe.sessions() as s:
        assert [s.get(TaskRun, r).status for r in (norm, faces)] == [DONE, DONE]
        assert s.get(TaskRun, norm).finished_at == s.get(TaskRun, faces).finished_at  # one transaction
    assert pipe.execute(faces) == "skipped"
    results = pipe.results(sha)
    assert len(results["faces"]) == 1 and results["normalize"]["dtype"] == "uint8"

    # A worker that serves only the cpu queue leaves faces to the gpu workers
    copy2 = tmp_path / "astro2.png"
    Image.fromarray(np.flipud(decode(files["astronaut"]))).save(copy2)
    sha2, (norm2, faces2) = pipe.add(copy2, [("normalize", ""), ("faces", "mtcnn")])
    monkeypatch.setattr(pipe.rt, "queues", ["cpu"])
    assert pipe.execute(norm2) == DONE
    with pipe.sessions() as s:
        assert s.get(TaskRun, faces2).status == QUEUED


def test_a_companion_run_is_given_back_when_its_group_meets_a_transient_error(pipe, files, tmp_path, monkeypatch,
                                                                             redis_url):
    import json

    import redis as redis_lib

    from darkroom import catalog
    from darkroom.settings import Settings
    from worker.app import create_app

    monkeypatch.setattr(pipe, "app", create_app(Settings(broker_url=redis_url, _env_file=None)))
    copy = tmp_path / "coffee.png"
    Image.fromarray(np.flipud(decode(files["coffee"]))).save(copy)
    sha, (norm, faces) = pipe.add(copy, [("normalize", ""), ("faces", "mtcnn")])

    def away(*_args, **_kwargs):
        raise ConnectionError("the blob store's disk is away")

    monkeypatch.setitem(catalog.BY_NAME, "faces", dataclasses.replace(catalog.get("faces"), step=away))
    task = FakeTask()
    with pytest.raises(Retry):
        pipe.execute(norm, task=task)
    assert task.retried == [{"run_id": norm, "takeover": True}]  # the message's own run is retried
    with pipe.sessions() as s:
        # and the companion is queued again, with a message of its own
        assert s.get(TaskRun, faces).status == QUEUED and s.get(TaskRun, faces).enqueued_at is not None
    (raw,) = redis_lib.Redis.from_url(redis_url).lrange("gpu", 0, -1)
    assert json.loads(__import__("base64").b64decode(json.loads(raw)["body"]))[1]["run_id"] == faces
