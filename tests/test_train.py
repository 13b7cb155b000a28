"""Lesson 5: train your own classifier, save it, and classify new photos with it in the pipeline.

Fashion-MNIST cannot be downloaded here, so the data is what a package ships: scikit-learn's
handwritten digits (1,797 images of 8x8, values 0..16), scaled to 0..255 and upscaled to 28x28 with
PIL bilinear, written as the four standard IDX files (as Fashion-MNIST comes) and as a labelled
folder of PNGs (one sub-folder per class). The lesson's CNN with the lesson's defaults (10 epochs,
batch 32) must reach a test accuracy of at least 0.95 on held-out digits both ways, and the saved
model must classify files dropped into the inbox through the real pipeline.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.harness import ROOT, Darkroom, base_env

#: Class names. The labelled folder's sub-folders carry them, so its classes come out in
#: alphabetical order ("eight", "five", ...), unlike the digits: the names must map right anyway.
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MIN_ACCURACY = 0.95


# --- data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits() -> dict:
    """scikit-learn's digits as 28x28 uint8 images, with a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    raw = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, 0..255
    images = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in raw])
    labels = data.target.astype(np.uint8)
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2, stratify=labels, random_state=0)
    return {"raw": raw, "images": images, "labels": labels, "train": train_idx, "test": test_idx}


@pytest.fixture(scope="session")
def idx_folder(digits, tmp_path_factory) -> Path:
    """The four standard IDX files (training files gzipped, test files not) and classes.txt."""
    from tasks.train import write_idx

    folder = tmp_path_factory.mktemp("digits-idx")
    x, y = digits["images"], digits["labels"]
    write_idx(folder / "train-images-idx3-ubyte.gz", x[digits["train"]])
    write_idx(folder / "train-labels-idx1-ubyte.gz", y[digits["train"]])
    write_idx(folder / "t10k-images-idx3-ubyte", x[digits["test"]])
    write_idx(folder / "t10k-labels-idx1-ubyte", y[digits["test"]])
    (folder / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return folder


@pytest.fixture(scope="session")
def labelled_folder(digits, tmp_path_factory) -> Path:
    """Every digit as a 28x28 grayscale PNG in <class name>/; the trainer makes its own split."""
    folder = tmp_path_factory.mktemp("labelled") / "digits"
    for i, (image, label) in enumerate(zip(digits["images"], digits["labels"])):
        sub = folder / NAMES[label]
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i:04d}.png")
    return folder


# --- training (once per session) -----------------------------------------------------------------


@pytest.fixture(scope="session")
def idx_model(idx_folder, tmp_path_factory) -> dict:
    """The lesson's CNN, lesson defaults, trained in-process through tasks.train on the IDX files."""
    from tasks import train as tr

    dataset = tr.load_idx_folder(idx_folder)
    start = time.monotonic()
    result = tr.train(dataset, epochs=10, batch_size=32, seed=0)
    seconds = time.monotonic() - start
    path = tr.save(result.model, tmp_path_factory.mktemp("models") / "digits-idx", dataset.classes,
                   dataset.input_size, dataset.color_mode)
    print(f"\nIDX digits, in-process: test accuracy {result.test_accuracy:.4f}, loss {result.test_loss:.4f}, "
          f"trained in {seconds:.1f} s")
    return {"path": path, "result": result, "dataset": dataset, "seconds": seconds}


@pytest.fixture(scope="session")
def cli_model(labelled_folder, tmp_path_factory) -> dict:
    """`darkroom train --data <labelled folder>` in a subprocess, model saved to its default place."""
    data_dir = tmp_path_factory.mktemp("cli") / "data"
    env = base_env()
    env["DARKROOM_DATA_DIR"] = str(data_dir)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "darkroom", "train", "--data", str(labelled_folder)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"^> test loss ([\d.]+), accuracy ([\d.]+)%$", done.stdout, re.M)
    assert match, done.stdout
    print(f"\nlabelled folder, `darkroom train`: printed {match.group(0)!r}; command took {seconds:.1f} s")
    return {"done": done, "loss": float(match.group(1)), "accuracy": float(match.group(2)) / 100,
            "path": (data_dir / "models" / "digits.keras").resolve(), "seconds": seconds}


def _rgb(images: np.ndarray) -> list[np.ndarray]:
    """Grayscale N x H x W x 1 as a list of H x W x 3 RGB images: what the pipeline decodes."""
    return [np.repeat(im.reshape(im.shape[0], im.shape[1], 1), 3, axis=2) for im in images]


def _top1_accuracy(classifier, images: list[np.ndarray], truth: list[str]) -> float:
    labels = classifier.predict(images, top=1)
    return float(np.mean([lab[0].label == name for lab, name in zip(labels, truth)]))


# --- the lesson: train, evaluate, save, load, predict --------------------------------------------


def test_idx_digits_train_in_process_and_the_saved_model_classifies(idx_model, digits):
    from tasks.classify import Classifier

    result, dataset = idx_model["result"], idx_model["dataset"]
    assert dataset.classes == NAMES  # from classes.txt
    assert dataset.x_train.shape == (1437, 28, 28, 1) and dataset.x_test.shape == (360, 28, 28, 1)
    assert result.test_accuracy >= MIN_ACCURACY, result.test_accuracy
    assert len(result.history.history["loss"]) == 10
    # The lesson's bonus: load the saved model and predict, with the right class names.
    path = idx_model["path"]
    assert path.suffix == ".keras" and path.is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta == {"classes": NAMES, "preprocess": "scale", "color_mode": "grayscale", "input_size": [28, 28]}
    classifier = Classifier.create(str(path))
    assert classifier.classes == NAMES and classifier.color_mode == "grayscale"
    truth = [NAMES[y] for y in digits["labels"][digits["test"]]]
    accuracy = _top1_accuracy(classifier, _rgb(dataset.x_test), truth)
    assert accuracy == pytest.approx(result.test_accuracy, abs=0.003)


def test_darkroom_train_on_a_labelled_folder_end_to_end(cli_model, labelled_folder):
    from tasks.classify import Classifier
    from tasks.train import load_labelled_folder

    done = cli_model["done"]
    assert cli_model["accuracy"] >= MIN_ACCURACY, done.stdout
    path = cli_model["path"]
    assert path.is_file(), done.stdout
    assert f"DARKROOM_CLASSIFIER_MODEL={path}" in done.stdout.splitlines()
    sizes = re.search(r"10 classes, ([\d,]+) training and ([\d,]+) test images, 28x28 grayscale", done.stderr)
    assert sizes, done.stderr
    n_train, n_test = (int(n.replace(",", "")) for n in sizes.groups())
    assert n_train + n_test == 1797 and 355 <= n_test <= 365  # a fifth of each class held out
    assert "epoch 10/10" in done.stderr and "epoch 11/" not in done.stderr
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["classes"] == sorted(NAMES) and meta["preprocess"] == "scale"
    assert meta["color_mode"] == "grayscale" and meta["input_size"] == [28, 28]
    # The command's held-out images are the loader's (same seed and fraction): the saved model
    # classifies them, by name, as accurately as the command printed.
    dataset = load_labelled_folder(labelled_folder)
    classifier = Classifier.create(str(path))
    assert classifier.classes == sorted(NAMES)
    truth = [dataset.classes[y] for y in dataset.y_test]
    accuracy = _top1_accuracy(classifier, _rgb(dataset.x_test), truth)
    assert accuracy == pytest.approx(cli_model["accuracy"], abs=0.003)


@pytest.mark.e2e
def test_a_trained_model_classifies_photos_dropped_into_the_inbox(idx_model, digits, tmp_path, redis_url):
    """The lesson's bonus through the pipeline: new photos (112x112 RGB PNGs of held-out digits)
    dropped into the inbox are classified by the trained model with its class names."""
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}",
                  classifier_model=str(idx_model["path"]), tasks="normalize,classify")
    dr.inbox.mkdir()
    picked: dict[int, int] = {}  # one held-out image of each of the first five digits seen
    for i in digits["test"]:
        label = int(digits["labels"][i])
        if label not in picked and len(picked) < 5:
            picked[label] = int(i)
    truth = {}
    for label, i in picked.items():
        name = f"held-out-{i}.png"
        photo = Image.fromarray(digits["raw"][i]).resize((112, 112), Image.BILINEAR).convert("RGB")
        photo.save(dr.inbox / name)
        truth[name] = NAMES[label]
    done = subprocess.run([sys.executable, "-m", "darkroom", "up", str(dr.inbox), "--exit-when-idle"],
                          env=dr.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = {Path(r["path"]).name: r for r in dr.results()}
    assert set(results) == set(truth)
    right = 0
    for name, r in results.items():
        assert r["status"] == "done", (name, r["errors"], done.stderr[-3000:])
        assert r["tasks"] == {"normalize": "done", f"classify:{idx_model['path']}": "done"}
        assert len(r["labels"]) == 5 and all(lab["label"] in NAMES for lab in r["labels"])
        right += r["labels"][0]["label"] == truth[name]
    print(f"\npipeline: {right} of {len(truth)} inbox photos labelled right")
    assert right >= 4, {n: (r["labels"][0], truth[n]) for n, r in results.items()}


# --- data loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain-idx3-ubyte", "zipped-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip(tmp_path, name, dtype):
    from tasks.train import read_idx, write_idx

    rng = np.random.default_rng(0)
    array = (rng.random((7, 5, 3)) * 100).astype(dtype)
    path = write_idx(tmp_path / name, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (7, 5, 3)
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_idx_layout_is_the_standard_one(tmp_path):
    """Big-endian header as MNIST's files have it: 0x00000803, then N, H, W; labels 0x00000801."""
    from tasks.train import read_idx, write_idx

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "x-idx3-ubyte", images).read_bytes()
    assert raw[:16] == bytes.fromhex("00000803" "00000002" "00000003" "00000004")
    assert raw[16:] == images.tobytes()
    labels = write_idx(tmp_path / "y-idx1-ubyte.gz", np.array([3, 1, 4], dtype=np.uint8))
    assert gzip.decompress(labels.read_bytes()) == bytes.fromhex("00000801" "00000003" "030104")
    # What Keras's Fashion-MNIST loader does with the file reads the same data.
    np.testing.assert_array_equal(np.frombuffer(gzip.decompress(labels.read_bytes()), np.uint8, offset=8), [3, 1, 4])
    np.testing.assert_array_equal(read_idx(labels), [3, 1, 4])


def test_bad_idx_files_say_what_is_wrong(tmp_path):
    from tasks.train import DataError, read_idx, write_idx

    (tmp_path / "text").write_text("hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")
    full = write_idx(tmp_path / "full", np.zeros((10, 28, 28), np.uint8)).read_bytes()
    (tmp_path / "cut").write_bytes(full[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(full)[:-30])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut.gz")


def test_a_missing_idx_file_is_named(idx_folder, tmp_path):
    from tasks.train import DataError, load_idx_folder

    folder = tmp_path / "three-of-four"
    shutil.copytree(idx_folder, folder)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_idx_folder(folder)
    message = str(err.value)
    assert "missing t10k-labels-idx1-ubyte" in message and "train-images-idx3-ubyte" in message


def test_idx_folder_class_names(idx_folder, tmp_path):
    from tasks.train import FASHION_MNIST_CLASSES, load_idx_folder

    assert load_idx_folder(idx_folder, classes=list("abcdefghij")).classes == list("abcdefghij")
    folder = tmp_path / "no-names"
    shutil.copytree(idx_folder, folder)
    (folder / "classes.txt").unlink()
    dataset = load_idx_folder(folder)
    assert dataset.classes == list(FASHION_MNIST_CLASSES) and dataset.classes[9] == "Ankle boot"
    assert dataset.y_train.dtype == np.int64 and dataset.x_train.dtype == np.uint8


def _png(path: Path, size: tuple[int, int], mode: str = "L", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


def test_labelled_folder_skips_and_reports_bad_files(tmp_path):
    from tasks.train import load_labelled_folder

    root = tmp_path / "pets"
    for i in range(5):
        _png(root / "cat" / f"c{i}.png", (40 + i, 30), "RGB")            # any size, RGB
        _png(root / "dog" / "nested" / f"d{i}.png", (100, 120), "L", 20 * i)  # any depth, grayscale
    Image.new("RGB", (64, 48), (10, 200, 30)).save(root / "cat" / "c5.jpg", quality=90)
    good = (root / "dog" / "nested" / "d0.png").read_bytes()
    (root / "dog" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "dog" / "notes.txt").write_text("not a photo")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01junk")           # hidden: ignored
    dataset = load_labelled_folder(root, size=(28, 28), test_fraction=0.2, seed=0)
    assert dataset.classes == ["cat", "dog"]
    skipped = {p.name: reason for p, reason in dataset.skipped}
    assert set(skipped) == {"broken.png", "notes.txt"}
    assert "corrupt" in skipped["broken.png"] and "not an image" in skipped["notes.txt"]
    assert len(dataset.x_train) + len(dataset.x_test) == 11
    # Stratified: a fifth of each class held out (rounded), both classes in both splits.
    assert sorted(dataset.y_test.tolist()) == [0, 1]
    assert dataset.x_train.shape[1:] == (28, 28, 1) and dataset.x_train.dtype == np.uint8
    rgb = load_labelled_folder(root, size=(32, 24), color_mode="rgb")
    assert rgb.x_train.shape[1:] == (32, 24, 3) and rgb.color_mode == "rgb" and rgb.input_size == (32, 24)
    # The same seed gives the same split; another seed another one.
    again = load_labelled_folder(root, size=(28, 28), test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(again.x_test, dataset.x_test)


def test_labelled_folder_errors(tmp_path):
    from tasks.train import DataError, load_labelled_folder

    with pytest.raises(DataError, match="no such folder"):
        load_labelled_folder(tmp_path / "nope")
    _png(tmp_path / "one" / "only" / "a.png", (10, 10))
    with pytest.raises(DataError, match="at least 2 class sub-folders.*found 1 \\(only\\)"):
        load_labelled_folder(tmp_path / "one")
    _png(tmp_path / "two" / "a" / "a.png", (10, 10))
    (tmp_path / "two" / "b").mkdir()
    (tmp_path / "two" / "b" / "junk.txt").write_text("x")
    with pytest.raises(DataError, match="no usable image in .*: b;"):
        load_labelled_folder(tmp_path / "two")


def test_keras_download_failure_says_to_use_the_idx_files(monkeypatch):
    import keras

    from tasks.train import DataError, load_keras_fashion_mnist

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError) as err:
        load_keras_fashion_mnist()
    message = str(err.value)
    assert "URL fetch failure" in message and "--data" in message
    assert "t10k-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message


def test_the_model_is_the_lessons():
    from tasks.train import build_model

    model = build_model((28, 28, 1), 10)
    conv, pool, flat, hidden, output = model.layers
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert conv.filters == 32 and conv.kernel_size == (3, 3) and conv.activation.__name__ == "relu"
    assert type(conv.kernel_initializer).__name__ == "HeUniform"
    assert pool.pool_size == (2, 2)
    assert hidden.units == 100 and hidden.activation.__name__ == "relu"
    assert type(hidden.kernel_initializer).__name__ == "HeUniform"
    assert output.units == 10 and output.activation.__name__ == "softmax"
    assert type(model.optimizer).__name__ == "Adam" and model.loss == "categorical_crossentropy"
    assert model.output_shape == (None, 10)
    varied = build_model((32, 32, 3), 4, filters=8, dense=16)
    assert varied.layers[0].filters == 8 and varied.layers[3].units == 16 and varied.output_shape == (None, 4)


# --- the command's errors -------------------------------------------------------------------------


def _invoke(*args: str):
    from typer.testing import CliRunner

    from darkroom.cli import app

    return CliRunner().invoke(app, ["train", *args])


def test_train_command_errors_are_one_clear_line(tmp_path, idx_folder):
    incomplete = tmp_path / "idx"
    shutil.copytree(idx_folder, incomplete)
    (incomplete / "train-images-idx3-ubyte.gz").unlink()
    _png(tmp_path / "single" / "cats" / "a.png", (10, 10))
    _png(tmp_path / "empty" / "cats" / "a.png", (10, 10))
    (tmp_path / "empty" / "dogs").mkdir()
    cases = {
        str(tmp_path / "absent"): "no such folder",
        str(incomplete): "missing train-images-idx3-ubyte",
        str(tmp_path / "single"): "at least 2 class sub-folders",
        str(tmp_path / "empty"): "no usable image",
    }
    for data, expected in cases.items():
        result = _invoke("--data", data, "--out", str(tmp_path / "m.keras"))
        assert result.exit_code == 1, (data, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("darkroom: ") and expected in lines[0], result.output
    assert not (tmp_path / "m.keras").exists()
    result = _invoke("--data", str(tmp_path / "single"), "--color", "sepia")
    assert result.exit_code == 1 and "--color must be grayscale or rgb" in result.output


def test_train_is_a_darkroom_command():
    result = _invoke("--help")
    assert result.exit_code == 0
    for option in ("--data", "--out", "--epochs", "--batch-size", "--filters", "--dense", "--size", "--color",
                   "--seed", "--test-fraction"):
        assert option in result.output
