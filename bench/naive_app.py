"""The naive peer: what a reader of the course writes with Celery, as a Celery app of its own.

    celery -A bench.naive_app worker -c 2 --pool prefork

One task per stage per image, each given the image's path: it opens the file itself, does the
course's computation, and writes its result into a SQLite file with a plain ``sqlite3`` insert.
Models are loaded lazily, once per worker process, into module-level globals. Configuration is
read from the environment at import (the runner, :mod:`bench.naive`, sets it):

- ``NAIVE_BROKER_URL``: the Redis to use (its own database);
- ``NAIVE_DB``: the SQLite file (table ``results``, made by the runner);
- ``NAIVE_MODEL``: vgg16, mobilenet_v2, ... (``keras.applications.<X>(weights=None)``);
- ``NAIVE_OUT``: where the boxed-faces and augmented images are saved.

What each task does, as the lessons do it:

- normalize (lesson 2): float copies of the pixels (``astype("float32")``, ``/ 255``) and their min,
  max, mean and standard deviation per channel, before and after;
- classify (lesson 4): ``keras.utils.load_img(path, target_size=(224, 224))``, ``img_to_array``,
  ``preprocess_input``, ``model.predict(x[None])`` on one image, the top 5. (``decode_predictions``
  would download the class index; the same index ships with Darkroom and is read from there.)
- augment (lesson 6, in Keras 3): ``RandomFlip("horizontal_and_vertical")`` + ``RandomRotation(0.25)``
  (the course's ``ImageDataGenerator(horizontal_flip, vertical_flip, rotation_range=90)``) over 9
  copies of the photo, saved as JPEG files. The photo is first made 256 px on its longest side,
  as Darkroom's augment does, so that both do the same work;
- faces (lesson 7): ``mtcnn.MTCNN().detect_faces(pixels)``, boxes drawn, the boxed image saved.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import traceback
from pathlib import Path

from celery import Celery

BROKER_URL = os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/15")
DB_PATH = os.environ.get("NAIVE_DB", "naive.db")
MODEL_NAME = os.environ.get("NAIVE_MODEL", "vgg16")
OUT_DIR = Path(os.environ.get("NAIVE_OUT", "naive-out"))

#: model name -> (keras.applications module, constructor, input size)
MODELS = {
    "vgg16": ("vgg16", "VGG16", 224),
    "vgg19": ("vgg19", "VGG19", 224),
    "resnet50": ("resnet50", "ResNet50", 224),
    "mobilenet_v2": ("mobilenet_v2", "MobileNetV2", 224),
    "efficientnet_b0": ("efficientnet", "EfficientNetB0", 224),
    "inception_v3": ("inception_v3", "InceptionV3", 299),
}

app = Celery("naive", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)

# --- loaded lazily, once per worker process -----------------------------------------------------

model = None
preprocess_input = None
detector = None
data_augmentation = None
class_names = None


def get_model():
    global model, preprocess_input, class_names
    if model is None:
        import importlib

        import keras

        module, constructor, _size = MODELS[MODEL_NAME]
        mod = importlib.import_module(f"keras.applications.{module}")
        model = getattr(mod, constructor)(weights=None)
        preprocess_input = mod.preprocess_input
        index = Path(__file__).resolve().parents[1] / "tasks" / "data" / "imagenet_class_index.json"
        raw = json.loads(index.read_text())
        class_names = [raw[str(i)][1] for i in range(len(raw))]
        assert keras  # imported for its side effects (backend set-up) before the model
    return model


def get_detector():
    global detector
    if detector is None:
        from mtcnn import MTCNN

        detector = MTCNN()
    return detector


def get_augmentation():
    global data_augmentation
    if data_augmentation is None:
        import keras

        data_augmentation = keras.Sequential([
            keras.layers.RandomFlip("horizontal_and_vertical"),
            keras.layers.RandomRotation(0.25),
        ])
    return data_augmentation


def save_result(image: str, task: str, tag: str, result, started: float, error: str | None = None) -> None:
    con = sqlite3.connect(DB_PATH, timeout=60)
    con.execute(
        "INSERT INTO results (image, task, tag, pid, result, error, started, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (image, task, tag, os.getpid(), json.dumps(result), error, started, time.time()),
    )
    con.commit()
    con.close()


def _run(task: str, path: str, tag: str, fn) -> None:
    started = time.time()
    try:
        result = fn(path)
    except Exception as exc:  # noqa: BLE001 - recorded, so the runner knows and does not wait forever
        save_result(path, task, tag, None, started, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return
    save_result(path, task, tag, result, started)


def _stats(a) -> dict:
    return {"min": float(a.min()), "max": float(a.max()),
            "mean": [float(v) for v in a.mean(axis=(0, 1))], "std": [float(v) for v in a.std(axis=(0, 1))]}


def _normalize(path: str) -> dict:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    before = _stats(pixels.astype("float32"))
    pixels = pixels.astype("float32")
    pixels /= 255.0
    return {"dtype": "uint8", "before": before, "after": _stats(pixels)}


def _classify(path: str) -> list:
    import keras
    import numpy as np

    m = get_model()
    size = MODELS[MODEL_NAME][2]
    img = keras.utils.load_img(path, target_size=(size, size))
    x = keras.utils.img_to_array(img)
    x = preprocess_input(x)
    preds = m.predict(x[None], verbose=0)[0]
    top = np.argsort(-preds)[:5]
    return [{"class_id": int(i), "label": class_names[int(i)], "score": float(preds[i])} for i in top]


def _augment(path: str) -> int:
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.thumbnail((256, 256))
    x = np.asarray(img, dtype="float32")
    batch = np.repeat(x[None], 9, axis=0)
    out = np.asarray(get_augmentation()(batch, training=True))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stem = Path(path).stem
    for i, a in enumerate(out):
        Image.fromarray(np.clip(a, 0, 255).astype("uint8")).save(OUT_DIR / f"{stem}_aug{i}.jpg", quality=90)
    return len(out)


def _faces(path: str) -> list:
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.open(path).convert("RGB")
    pixels = np.asarray(img)
    faces = get_detector().detect_faces(pixels)
    draw = ImageDraw.Draw(img)
    for face in faces:
        x, y, w, h = face["box"]
        draw.rectangle((x, y, x + w, y + h), outline="red", width=2)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    img.save(OUT_DIR / f"{Path(path).stem}_faces.jpg", quality=90)
    return [{"box": [int(v) for v in f["box"]], "confidence": float(f["confidence"])} for f in faces]


@app.task(name="naive.normalize")
def normalize(path: str, tag: str = "") -> None:
    _run("normalize", path, tag, _normalize)


@app.task(name="naive.classify")
def classify(path: str, tag: str = "") -> None:
    _run("classify", path, tag, _classify)


@app.task(name="naive.augment")
def augment(path: str, tag: str = "") -> None:
    _run("augment", path, tag, _augment)


@app.task(name="naive.faces")
def faces(path: str, tag: str = "") -> None:
    _run("faces", path, tag, _faces)


TASKS = ("normalize", "classify", "augment", "faces")
