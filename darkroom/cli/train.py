"""`darkroom train`: course lesson 5, train your own classifier, then use it in the pipeline.

Registered into the ``darkroom`` app by :func:`register`. The work is :mod:`tasks.train`; this
module parses options, shows progress and reports. Keras and TensorFlow are imported only when the
command runs, never when the app is built.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from darkroom.cli.common import err as console
from darkroom.cli.common import fail, out, read_settings


def _progress_callback(progress: Any, epochs: int) -> Any:
    """A Keras callback that shows one rich progress bar per epoch, advanced per batch, with the
    running loss and accuracy in its description."""
    import keras

    class RichProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.task: Any = None
            self.epoch = 0
            self.done = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.done = epoch + 1, 0
            steps = (self.params or {}).get("steps")
            self.task = progress.add_task(self._describe({}), total=steps)

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            progress.update(self.task, advance=1, description=self._describe(logs))

        def on_epoch_end(self, epoch, logs=None):
            progress.update(self.task, total=self.done, completed=self.done, description=self._describe(logs))

        def _describe(self, logs) -> str:
            logs = logs or {}
            parts = [f"epoch {self.epoch}/{epochs}"]
            if "loss" in logs:
                parts.append(f"loss {float(logs['loss']):.4f}")
            if "accuracy" in logs:
                parts.append(f"accuracy {float(logs['accuracy']) * 100:.2f}%")
            return "  ".join(parts)

    return RichProgress()


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "model"


def _load_data(data: Path | None, *, size: int, color: str, test_fraction: float, seed: int,
               classes: str | None):
    """(dataset, description, default model name) for the --data given."""
    from tasks import train as tr

    names = [c.strip() for c in classes.split(",")] if classes else None
    if names is not None and any(not n for n in names):
        raise fail("--classes must be comma-separated names with none empty")
    if data is None:
        if names is not None:
            raise fail("--classes applies to IDX folders only; Fashion-MNIST's names are built in")
        console.print("No --data: fetching Fashion-MNIST with Keras's downloader "
                      "(cached in ~/.keras/datasets/fashion-mnist) ...", highlight=False, soft_wrap=True)
        dataset = tr.load_keras_fashion_mnist()
        return dataset, "Fashion-MNIST (Keras's download)", "fashion-mnist"
    if not data.exists():
        raise fail(f"no such folder: {data}")
    if not data.is_dir():
        raise fail(f"--data must be a folder (the four IDX files, or one sub-folder per class): {data} is a file")
    name = _slug(data.resolve().name)
    if tr.is_idx_folder(data):
        if size != 28 or color != "grayscale":
            console.print("note: --size and --color apply to labelled folders; IDX images are used as stored",
                          highlight=False, soft_wrap=True)
        dataset = tr.load_idx_folder(data, classes=names)
        return dataset, f"IDX files in {data}", name
    if names is not None:
        raise fail("--classes applies to IDX folders; a labelled folder's classes are its sub-folders' names")
    dataset = tr.load_labelled_folder(data, size=(size, size), color_mode=color,
                                      test_fraction=test_fraction, seed=seed)
    return dataset, f"labelled folder {data}", name


def train_command(
    data: Annotated[Path | None, typer.Option(
        "--data", help="A folder with the four Fashion-MNIST IDX files (train-images-idx3-ubyte, ...; .gz or "
                       "not), or a labelled folder: one sub-folder of images per class. Default: Fashion-MNIST "
                       "via Keras's downloader (connected machines).",
        show_default=False)] = None,
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="Where to save the model (.keras; class names go beside it in <name>.json). "
                      "Default: DATA_DIR/models/<name>.keras.", show_default=False)] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 32,
    filters: Annotated[int, typer.Option(min=1, help="Filters of the 3x3 convolution.")] = 32,
    dense: Annotated[int, typer.Option(min=1, help="Units of the hidden dense layer.")] = 100,
    size: Annotated[int, typer.Option(min=4, max=1024, help="Labelled folders: images are resized to SIZE x SIZE.")] = 28,
    color: Annotated[str, typer.Option(help="Labelled folders: grayscale or rgb.")] = "grayscale",
    seed: Annotated[int, typer.Option(help="Random seed (weights, shuffling, the test split).")] = 0,
    test_fraction: Annotated[float, typer.Option(
        "--test-fraction", help="Labelled folders: share of each class held out for testing.")] = 0.2,
    classes: Annotated[str | None, typer.Option(
        help="IDX folders: comma-separated class names in label order (default: classes.txt in the "
             "folder, else Fashion-MNIST's).", show_default=False)] = None,
) -> None:
    """Train the course's CNN (lesson 5) on Fashion-MNIST or your own labelled photos, evaluate it on
    held-out images, and save it for `classify` (DARKROOM_CLASSIFIER_MODEL)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    color = color.strip().lower()
    if color not in ("grayscale", "rgb"):
        raise fail(f"--color must be grayscale or rgb, got {color!r}")
    if not 0.0 < test_fraction < 1.0:
        raise fail(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")

    from tasks import train as tr

    try:
        dataset, what, name = _load_data(data, size=size, color=color, test_fraction=test_fraction,
                                         seed=seed, classes=classes)
    except (tr.DataError, OSError) as exc:
        raise fail(str(exc)) from None
    for path, reason in dataset.skipped:
        console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False, soft_wrap=True)
    if dataset.skipped:
        console.print(f"[yellow]{len(dataset.skipped)} file(s) skipped[/] (not usable images)", highlight=False,
                      soft_wrap=True)

    if out_path is None:
        out_path = read_settings().data_dir / "models" / f"{name}.keras"
    elif out_path.suffix.lower() != ".keras":
        out_path = out_path.with_name(out_path.name + ".keras")

    h, w = dataset.input_size
    console.print(
        f"Data: {what}: {len(dataset.classes)} classes, {len(dataset.x_train):,} training and "
        f"{len(dataset.x_test):,} test images, {h}x{w} {dataset.color_mode}", highlight=False, soft_wrap=True)
    console.print(
        f"Model: Conv2D({filters}, 3x3) > MaxPooling2D > Flatten > Dense({dense}) > Dense({len(dataset.classes)}, "
        f"softmax); Adam; {epochs} epoch(s) of batch {batch_size}; seed {seed}", highlight=False, soft_wrap=True)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        callback = _progress_callback(progress, epochs)
        result = tr.train(dataset, epochs=epochs, batch_size=batch_size, seed=seed, callbacks=[callback],
                          filters=filters, dense=dense)

    if result.test_accuracy is None:
        out.print("> no held-out images to evaluate on", highlight=False, soft_wrap=True)
    else:
        out.print(f"> test loss {result.test_loss:.4f}, accuracy {result.test_accuracy * 100:.3f}%",
                  highlight=False, soft_wrap=True)

    extra = {
        "trained_on": what,
        "epochs": epochs, "batch_size": batch_size, "filters": filters, "dense": dense, "seed": seed,
        "test_loss": None if result.test_loss is None or math.isnan(result.test_loss) else round(result.test_loss, 6),
        "test_accuracy": None if result.test_accuracy is None else round(result.test_accuracy, 6),
    }
    try:
        saved = tr.save(result.model, out_path, dataset.classes, dataset.input_size, dataset.color_mode, extra=extra)
    except OSError as exc:
        raise fail(f"cannot save the model to {out_path}: {exc}") from None
    saved = saved.resolve()
    out.print(f"saved the model to {saved} (class names in {saved.with_suffix('.json')})", highlight=False,
              soft_wrap=True)
    out.print("classify with it in the pipeline:", highlight=False, soft_wrap=True)
    out.print(f"DARKROOM_CLASSIFIER_MODEL={shlex.quote(str(saved))}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `darkroom train` to the ``darkroom`` app."""
    app.command("train")(train_command)
