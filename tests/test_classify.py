"""tasks.classify: ImageNet class index, top-k, the model registry, and Classifier loading paths.

Real ImageNet weights cannot be downloaded here, so models are built with ``weights=None`` and
their weights saved to local files; results are compared with Keras called directly.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from darkroom.catalog import CLASSIFIER_SETTINGS
from tests.keras_helpers import sharpen

pytest.importorskip("skimage.data")  # the sample photos (tests/conftest.py) are scikit-image's

from tasks.classify import (  # noqa: E402
    REGISTRY,
    AppSpec,
    Classifier,
    Label,
    ModelUnavailable,
    imagenet_classes,
    imagenet_wnids,
    top_k,
)

REQUIRED = {
    "vgg16": 224,
    "vgg19": 224,
    "resnet50": 224,
    "mobilenet_v2": 224,
    "efficientnet_b0": 224,
    "inception_v3": 299,
}


# ---------------------------------------------------------------------------------------------
# Fixtures: TensorFlow import and model builds are the cost, so they are shared.


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


def resize_like_load_img(images, size, tmp_path: Path, color_mode="rgb"):
    """The reference resize: write each image to PNG and read it back with keras's load_img."""
    import keras

    out = []
    for i, image in enumerate(images):
        path = tmp_path / f"ref{i}.png"
        keras.utils.save_img(str(path), image, scale=False)
        img = keras.utils.load_img(str(path), target_size=size, color_mode=color_mode, interpolation="bilinear")
        out.append(keras.utils.img_to_array(img, dtype="float32"))
    return np.stack(out)


@pytest.fixture(scope="module")
def mobilenet_batch(sample_photos, tmp_path_factory) -> np.ndarray:
    """The sample photos as MobileNetV2 takes them, prepared by Keras itself (load_img + preprocess_input)."""
    from keras.applications.mobilenet_v2 import preprocess_input

    return preprocess_input(resize_like_load_img(sample_photos, (224, 224), tmp_path_factory.mktemp("ref")))


@pytest.fixture(scope="module")
def mobilenet_reference(keras, tmp_path_factory, mobilenet_batch):
    """MobileNetV2(weights=None), deterministically initialised, sharpened, weights saved to a file."""
    keras.utils.set_random_seed(1234)
    model = keras.applications.MobileNetV2(weights=None)
    sharpen(model, mobilenet_batch)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_random.weights.h5"
    model.save_weights(str(path))
    return model, path


@pytest.fixture(scope="module")
def mobilenet_from_file(mobilenet_reference) -> Classifier:
    _, path = mobilenet_reference
    return Classifier.create("mobilenet_v2", weights=str(path)).load()


@pytest.fixture(scope="module")
def tiny_model(keras, tmp_path_factory):
    """A small CNN: 32x32 RGB in, 3 classes out, saved as .keras with a metadata sidecar."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 3.0)),
        ],
        name="tiny",
    )
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny.keras"
    model.save(str(path))
    (folder / "tiny.json").write_text(json.dumps({"classes": ["cat", "dog", "bird"], "preprocess": "scale"}))
    return model, path


def assert_same_top(row: list[Label], ref: np.ndarray, classes: list[str], k: int, atol: float = 1e-5):
    """``row`` is the top ``k`` of the reference scores ``ref``: same scores rank by rank, and each
    label's class really has that score (classes whose scores tie within ``atol`` may swap)."""
    order = np.argsort(-ref, kind="stable")[:k]
    assert [l.rank for l in row] == list(range(1, k + 1))
    np.testing.assert_allclose([l.score for l in row], ref[order], atol=atol)
    np.testing.assert_allclose([ref[l.class_id] for l in row], ref[order], atol=atol)
    assert [l.label for l in row] == [classes[l.class_id] for l in row]
    assert len({l.class_id for l in row}) == k
    gaps = np.abs(np.diff(ref[order]))
    if np.all(gaps > atol):  # no near-ties: the exact order is determined
        assert [l.class_id for l in row] == [int(i) for i in order]


# ---------------------------------------------------------------------------------------------
# ImageNet class index.


def test_class_index_shipped_in_keras_format():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == "tench"
    assert classes[999] == "toilet tissue"
    assert classes[1] == "goldfish"
    assert all(isinstance(c, str) and c and "_" not in c and c == c.strip() for c in classes)
    wnids = imagenet_wnids()
    assert wnids[0] == "n01440764" and wnids[999] == "n15075141"
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000

    raw = json.loads((Path(__file__).parent.parent / "tasks" / "data" / "imagenet_class_index.json").read_text())
    assert list(raw) == [str(i) for i in range(1000)]
    assert raw["0"] == ["n01440764", "tench"]
    assert raw["999"] == ["n15075141", "toilet tissue"]
    assert all(isinstance(v, list) and len(v) == 2 for v in raw.values())
    # Returned lists are copies: a caller can't corrupt the cache.
    classes[0] = "oops"
    assert imagenet_classes()[0] == "tench"


def test_class_index_script_reproduces_the_shipped_file(tmp_path):
    script = Path(__file__).parent.parent / "scripts" / "make_imagenet_index.py"
    source = tmp_path / "src"
    source.mkdir()
    shipped = json.loads((Path(__file__).parent.parent / "tasks" / "data" / "imagenet_class_index.json").read_text())
    # Rebuild the package's two input files from the shipped index (first synonym only).
    names = {k: f"{v[1]}, some synonym" for k, v in shipped.items()}
    wnids = {k: v[0] for k, v in shipped.items()}
    (source / "imagenet1k_label_to_names.json").write_text(json.dumps(names))
    (source / "imagenet1k_to_21k.json").write_text(json.dumps(wnids))
    out = tmp_path / "index.json"
    subprocess.run([sys.executable, str(script), str(source), str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text()) == shipped
    # A missing input file is a clear error.
    (source / "imagenet1k_to_21k.json").unlink()
    proc = subprocess.run([sys.executable, str(script), str(source), str(out)], capture_output=True, text=True)
    assert proc.returncode != 0 and "imagenet1k_to_21k.json" in proc.stderr


# ---------------------------------------------------------------------------------------------
# top_k: a pure function.


def test_top_k_orders_and_ranks():
    classes = ["a", "b", "c", "d"]
    probs = np.array([[0.1, 0.4, 0.2, 0.3], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    result = top_k(probs, classes, 3)
    assert [[(l.rank, l.class_id, l.label) for l in row] for row in result] == [
        [(1, 1, "b"), (2, 3, "d"), (3, 2, "c")],
        [(1, 0, "a"), (2, 1, "b"), (3, 2, "c")],  # ties: lower class id first
    ]
    assert result[0][0].score == pytest.approx(0.4)
    assert isinstance(result[0][0].score, float) and isinstance(result[0][0].class_id, int)
    assert result[0][0].to_dict() == {"rank": 1, "class_id": 1, "label": "b", "score": pytest.approx(0.4)}
    json.dumps([l.to_dict() for l in result[0]])


def test_top_k_ties_k_bounds_and_errors():
    probs = np.full((1, 5), 0.2)
    assert [l.class_id for l in top_k(probs, list("abcde"), 5)[0]] == [0, 1, 2, 3, 4]
    # Many ties in a wide row (where an unstable sort would shuffle them).
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 4, size=(3, 1000)) / 10
    names = [f"c{i}" for i in range(1000)]
    for row, labels in zip(wide, top_k(wide, names, 200)):
        expected = sorted(range(1000), key=lambda i: (-row[i], i))[:200]
        assert [l.class_id for l in labels] == expected
    assert len(top_k(probs, list("abcde"), 50)[0]) == 5
    assert top_k(np.array([0.3, 0.7]), ["x", "y"], 1) == [[Label(1, 1, "y", pytest.approx(0.7))]]
    with pytest.raises(ValueError):
        top_k(probs, list("abc"), 2)  # wrong number of names
    with pytest.raises(ValueError):
        top_k(probs, list("abcde"), 0)


# ---------------------------------------------------------------------------------------------
# Registry.


def test_module_import_is_light():
    """Workers fork after importing tasks: no TensorFlow/Keras at import time."""
    code = (
        "import sys, tasks.classify as c; c.Classifier.create('vgg16'); c.imagenet_classes(); "
        "print(any(m in sys.modules for m in ('tensorflow', 'keras')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_entries(keras):
    assert REQUIRED.items() <= {name: spec.input_size[0] for name, spec in REGISTRY.items()}.items()
    for name, spec in REGISTRY.items():
        assert isinstance(spec, AppSpec) and spec.name == name
        assert spec.input_size[0] == spec.input_size[1]
        module = importlib.import_module(f"keras.applications.{spec.module}")
        assert spec.preprocess_function() is module.preprocess_input
        assert callable(getattr(module, spec.constructor))
        assert spec.weights_file.endswith(".h5") and "notop" not in spec.weights_file
        assert spec.origin.startswith("https://storage.googleapis.com/") and spec.origin.endswith(spec.weights_file)
    assert REGISTRY["vgg16"].weights_file == "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    # Each model uses its own preprocess_input, not one shared function.
    assert REGISTRY["vgg16"].preprocess_function() is not REGISTRY["mobilenet_v2"].preprocess_function()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_preprocess_without_loading(name, sample_photos, tmp_path, keras):
    """preprocess() = keras load_img(bilinear) resize + that model's preprocess_input; no model built."""
    clf = Classifier.create(name, weights="none")
    spec = REGISTRY[name]
    batch = clf.preprocess(sample_photos)
    assert not clf.loaded
    assert clf.input_size == spec.input_size
    assert batch.shape == (2, *spec.input_size, 3) and batch.dtype == np.float32
    module = importlib.import_module(f"keras.applications.{spec.module}")
    expected = module.preprocess_input(resize_like_load_img(sample_photos, spec.input_size, tmp_path))
    np.testing.assert_allclose(batch, expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Classifier against Keras called directly.


def test_weights_file_reproduces_keras(mobilenet_reference, mobilenet_from_file, mobilenet_batch, sample_photos):
    model, path = mobilenet_reference
    clf = mobilenet_from_file
    assert clf.loaded and clf.name == "mobilenet_v2" and clf.input_size == (224, 224)
    assert len(clf.version) == 12 and clf.version != "imagenet"
    reference = model.predict(mobilenet_batch, verbose=0)
    probs = clf.predict_proba(sample_photos)
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs, reference, atol=1e-5)

    labels = clf.predict(sample_photos, top=5)
    classes = imagenet_classes()
    assert len(labels) == 2
    for row, ref in zip(labels, reference):
        assert_same_top(row, ref, classes, 5)
    # The two sample_photos get different answers (the batch isn't one image repeated).
    assert [l.class_id for l in labels[0]] != [l.class_id for l in labels[1]]


def test_batch_equals_single_images(mobilenet_from_file, sample_photos):
    both = mobilenet_from_file.predict_proba(sample_photos)
    for i, photo in enumerate(sample_photos):
        np.testing.assert_allclose(mobilenet_from_file.predict_proba([photo])[0], both[i], atol=1e-5)
    assert mobilenet_from_file.predict([]) == []
    assert mobilenet_from_file.predict_proba([]).shape == (0, 1000)
    with pytest.raises(TypeError):
        mobilenet_from_file.predict(sample_photos[0])  # one array, not a list
    with pytest.raises(TypeError):
        mobilenet_from_file.predict([sample_photos[0].astype(np.float32)])


def test_forward_in_chunks_equals_one_pass(mobilenet_from_file, sample_photos):
    """Classifier.chunk: a batch run as several forward passes gives the one pass's scores, in order,
    whatever the remainder."""
    photos = [*sample_photos, *[p[:, ::-1].copy() for p in sample_photos]]
    whole = mobilenet_from_file.predict_proba(photos)
    try:
        for chunk in (1, 2, 3, len(photos), len(photos) + 5):
            mobilenet_from_file.chunk = chunk
            np.testing.assert_allclose(mobilenet_from_file.predict_proba(photos), whole, atol=1e-5)
    finally:
        mobilenet_from_file.chunk = None


def test_worker_forward_chunk_setting():
    """DARKROOM_CLASSIFY_CHUNK: images per forward pass; 0: the whole batch on a GPU, the model's
    own CPU rule on a CPU."""
    from darkroom import catalog
    from darkroom.settings import Settings
    from tasks.classify import CPU_CHUNK

    model = catalog.get("classify").model
    make = lambda settings, device: model.make("vgg16@none", model.options(settings), device)  # noqa: E731
    assert make(Settings(classify_chunk=8), "CPU:0")._chunk == 8
    assert make(Settings(classify_chunk=0), "CPU:0")._chunk == CPU_CHUNK
    assert make(Settings(classify_chunk=0), "GPU:0")._chunk is None


def test_cpu_chunk_is_decided_by_the_models_weights(mobilenet_from_file, monkeypatch):
    """CPU_CHUNK: a few images per pass for a model whose weights fit in caches' reach, the whole
    batch for one whose every pass reads hundreds of MB (VGG16); explicit values are kept."""
    import tasks.classify as classify

    clf = mobilenet_from_file
    try:
        clf.chunk = classify.CPU_CHUNK
        assert clf.chunk == classify.CPU_FORWARD_CHUNK  # MobileNetV2: 14 MB of weights
        assert 10 * 2**20 < clf._weight_bytes < 20 * 2**20
        monkeypatch.setattr(classify, "WHOLE_BATCH_WEIGHT_BYTES", 2**20)
        assert clf.chunk is None
        clf.chunk = 3
        assert clf.chunk == 3
        for bad in (0, -1, True, "big", 2.5):
            with pytest.raises(ValueError, match="chunk"):
                clf.chunk = bad
    finally:
        clf.chunk = None


def test_random_init_matches_its_keras_model(sample_photos, mobilenet_batch):
    clf = Classifier.create("mobilenet_v2", weights="none")
    assert not clf.loaded and clf.version == "none"
    assert clf.load() is clf and clf.load() is clf  # idempotent
    model = clf.keras_model
    assert model is clf.keras_model
    sharpen(model, mobilenet_batch, seed=1)  # changes the classifier's own model in place
    reference = model.predict(mobilenet_batch, verbose=0)
    assert reference.max() > 0.01  # not the flat 0.001 of an untouched random init
    np.testing.assert_allclose(clf.predict_proba(sample_photos), reference, atol=1e-5)
    for row, ref in zip(clf.predict(sample_photos, top=3), reference):
        assert_same_top(row, ref, imagenet_classes(), 3)


# ---------------------------------------------------------------------------------------------
# Saved .keras models and their metadata sidecar.


def test_saved_model_with_sidecar(tiny_model, sample_photos, tmp_path):
    model, path = tiny_model
    clf = Classifier.create(str(path))
    assert clf.name == "file:tiny" and not clf.loaded
    assert len(clf.version) == 12
    assert clf.input_size == (32, 32)
    assert clf.classes == ["cat", "dog", "bird"]
    reference = model.predict(resize_like_load_img(sample_photos, (32, 32), tmp_path) / 255.0, verbose=0)
    np.testing.assert_allclose(clf.predict_proba(sample_photos), reference, atol=1e-5)
    labels = clf.predict(sample_photos, top=5)
    assert [len(row) for row in labels] == [3, 3]
    for row, ref in zip(labels, reference):
        assert [l.label for l in row] == [["cat", "dog", "bird"][i] for i in np.argsort(-ref, kind="stable")]


def test_saved_model_defaults_and_grayscale(keras, tmp_path, sample_photos):
    # Lesson 5's bonus: a 28x28 grayscale model; classes given as a bare list; color mode from the model.
    gray = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")]
    )
    gray.save(str(tmp_path / "fashion.keras"))
    (tmp_path / "fashion.json").write_text(json.dumps(["shirt", "shoe"]))
    clf = Classifier.create(str(tmp_path / "fashion.keras"))
    assert clf.color_mode == "grayscale" and clf.input_size == (28, 28)
    expected = gray.predict(resize_like_load_img(sample_photos, (28, 28), tmp_path, color_mode="grayscale") / 255.0, verbose=0)
    np.testing.assert_allclose(clf.predict_proba(sample_photos), expected, atol=1e-5)
    assert {l.label for l in clf.predict(sample_photos)[0]} == {"shirt", "shoe"}

    # 1000 outputs and no sidecar: the ImageNet names.
    big = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1000)])
    big.save(str(tmp_path / "big.keras"))
    assert Classifier.create(str(tmp_path / "big.keras")).classes[:1] == ["tench"]

    # Other sizes and no sidecar: class_<i>.
    small = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    small.save(str(tmp_path / "small.keras"))
    assert Classifier.create(str(tmp_path / "small.keras")).classes == ["class_0", "class_1", "class_2", "class_3"]

    # A sidecar whose class count is wrong is a clear error naming the file.
    (tmp_path / "small.json").write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(ModelUnavailable, match=r"4 outputs but 2 class names.*small\.json"):
        Classifier.create(str(tmp_path / "small.keras")).load()
    (tmp_path / "small.json").write_text(json.dumps({"preprocess": "bogus"}))
    with pytest.raises(ModelUnavailable, match="preprocess"):
        Classifier.create(str(tmp_path / "small.keras")).load()


def test_saved_keras_application_without_sidecar(mobilenet_reference, mobilenet_batch, sample_photos, tmp_path):
    """A whole MobileNetV2 saved as .keras: ImageNet names (1000 outputs) and MobileNetV2's own
    preprocess_input (recognised by model.name), with no metadata file."""
    model, _ = mobilenet_reference
    path = tmp_path / "my_mobilenet.keras"
    model.save(str(path))
    clf = Classifier.create(str(path))
    assert clf.name == "file:my_mobilenet"
    reference = model.predict(mobilenet_batch, verbose=0)
    np.testing.assert_allclose(clf.predict_proba(sample_photos), reference, atol=1e-5)
    for row, ref in zip(clf.predict(sample_photos), reference):
        assert_same_top(row, ref, imagenet_classes(), 5)


# ---------------------------------------------------------------------------------------------
# Errors: what is missing and how to fix it.


def test_uncached_imagenet_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    clf = Classifier.create("vgg16", "imagenet", names=CLASSIFIER_SETTINGS)
    assert clf.version == "imagenet"
    with pytest.raises(ModelUnavailable) as info:
        clf.load()  # tries Keras's download, which fails offline (or would not be cached here)
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in message
    assert "DARKROOM_CLASSIFIER_WEIGHTS" in message and "DARKROOM_CLASSIFIER_MODEL" in message
    assert "~/.keras/models/" in message
    assert str(tmp_path / "empty-keras-home" / "models") in message
    assert not clf.loaded


def test_imagenet_weights_come_from_the_keras_home_cache(mobilenet_reference, mobilenet_batch, sample_photos, tmp_path,
                                                         monkeypatch):
    """weights="imagenet" finds Keras's cached file under $KERAS_HOME/models/ (read at load time)
    and loads it without touching the network. The cached file here is in Keras's legacy .h5
    format, as the files Keras downloads are (MobileNetV2's has no hash for Keras to check)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model, _ = mobilenet_reference
    cache = tmp_path / "keras-home" / "models"
    cache.mkdir(parents=True)
    with h5py.File(cache / REGISTRY["mobilenet_v2"].weights_file, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    clf = Classifier.create("mobilenet_v2", "imagenet").load()
    assert clf.version == "imagenet"
    np.testing.assert_allclose(clf.predict_proba(sample_photos), model.predict(mobilenet_batch, verbose=0), atol=1e-5)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.h5"
    with pytest.raises(ModelUnavailable, match=str(missing)) as info:
        Classifier.create("mobilenet_v2", weights=str(missing), names=CLASSIFIER_SETTINGS).load()
    assert "DARKROOM_CLASSIFIER_WEIGHTS" in str(info.value)
    with pytest.raises(ModelUnavailable, match="missing.keras"):
        Classifier.create(str(tmp_path / "missing.keras")).load()


def test_bad_weights_file_is_model_unavailable(tmp_path):
    bad = tmp_path / "garbage.weights.h5"
    bad.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(ModelUnavailable, match="garbage.weights.h5"):
        Classifier.create("mobilenet_v2", weights=str(bad)).load()


def test_unknown_model_lists_known_names(tmp_path):
    with pytest.raises(ValueError) as info:
        Classifier.create("alexnet")
    for name in REQUIRED:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="alexnet"):
        Classifier.create("alexnet", weights=str(tmp_path / "missing.h5"))  # the model is checked first
    legacy = tmp_path / "old_model.h5"
    legacy.write_bytes(b"")
    with pytest.raises(ModelUnavailable, match=r"not a \.keras file.*DARKROOM_CLASSIFIER_WEIGHTS"):
        Classifier.create(str(legacy), names=CLASSIFIER_SETTINGS)
    # tasks/ knows no settings: by default its errors name the arguments
    with pytest.raises(ModelUnavailable, match=r"not a \.keras file.*the weights argument"):
        Classifier.create(str(legacy))
