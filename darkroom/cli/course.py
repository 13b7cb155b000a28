"""The course's lessons as commands: ``normalize``, ``model summary``, ``classify``, ``augment`` and
``faces``, each on files, in this process, storing nothing.

Output is plain text on stdout (``--json`` for scripts); an error is one line on stderr,
``darkroom: ...``, with exit code 1. TensorFlow (through tasks.*) is imported inside each command,
never when the app is built.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from darkroom.cli.common import CLASSIFIER_FLAGS, die, model_and_weights, print_json, read_settings
from darkroom.settings import Settings

model_app = typer.Typer(help="Look inside models (lesson 3).", no_args_is_help=True)

#: Images per forward pass for `classify` (bounds memory on long argument lists).
_BATCH = 16


def register(app: typer.Typer) -> None:
    """Add the course's commands to the ``darkroom`` app."""
    app.command("normalize")(normalize)
    app.add_typer(model_app, name="model")
    app.command("classify")(classify)
    app.command("augment")(augment)
    app.command("faces")(faces)


# --- helpers -------------------------------------------------------------------------------------


def _check_files(paths: list[Path]) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        die(f"no such file: {', '.join(missing)}")
    folders = [str(p) for p in paths if not p.is_file()]
    if folders:
        die(f"not a file: {', '.join(folders)} (give image files; `darkroom ingest` takes folders)")


def _load(path: Path, settings: Settings):
    """The image as an HxWx3 uint8 RGB array, or a one-line error naming the file."""
    from tasks.imaging import BadImage, decode

    _check_files([path])
    try:
        return decode(path, max_pixels=settings.max_image_pixels)
    except BadImage as exc:
        die(f"{path}: {exc}")
    except OSError as exc:
        die(f"{path}: cannot be read ({exc.strerror or exc})")


def _image_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return "JPEG"
    if suffix == ".png":
        return "PNG"
    die(f"{out}: write a .jpg or .png file")


def _write_image(out: Path, pixels) -> None:
    from tasks.imaging import encode

    data = encode(pixels, _image_format(out), quality=92)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as exc:
        die(f"cannot write {out}: {exc.strerror or exc}")


# --- lesson 2: normalize -------------------------------------------------------------------------


def normalize(
    path: Annotated[Path, typer.Argument(help="An image file.")],
    mode: Annotated[str, typer.Option("--mode", "-m", help="scale (to 0-1), center or standardize.")] = "scale",
    per_channel: Annotated[bool, typer.Option("--per-channel", help="One mean (and deviation) per channel.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The full report as JSON.")] = False,
) -> None:
    """Lesson 2: pixel values before and after normalization, as the lesson prints them."""
    from tasks.normalize import format_mode, normalize_stats, parse_mode, report_lines

    try:
        mode, suffix_per_channel = parse_mode(mode)
        mode, per_channel = parse_mode(format_mode(mode, per_channel or suffix_per_channel))
    except ValueError as exc:
        die(f"--mode: {exc}")
    settings = read_settings()
    report = normalize_stats(_load(path, settings), mode=mode, per_channel=per_channel)
    if as_json:
        print_json({"path": str(path), **report.to_dict()})
        return
    for line in report_lines(report):
        typer.echo(line)


# --- lesson 3: model summary ---------------------------------------------------------------------


@model_app.command("summary")
def summary(
    name: Annotated[str, typer.Argument(
        help="lesson3 (the lesson's CNN), lesson5, a classifier name (vgg16, mobilenet_v2, ...) "
             "or the path of a saved .keras model.")] = "lesson3",
    layers: Annotated[str, typer.Option(
        "--layers", help="Layers added after the lesson's pooling layer (lesson3/lesson5): "
                         "conv, convN (N filters), pool, poolN; e.g. conv,pool.")] = "",
    weights: Annotated[str, typer.Option(
        "--weights", help="Classifier weights to load: none (the architecture alone: the counts are "
                          "the same), imagenet or a weights file.")] = "none",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Lesson 3: each layer's output shape and parameters, then how the image's shape changes."""
    from tasks import cnn

    try:
        extra = cnn.parse_layers(layers)
    except ValueError as exc:
        die(f"--layers: {exc}")
    model = _summary_model(name, extra, weights)
    rows = cnn.layer_rows(model)
    total, trainable, frozen = cnn.total_params(model)
    story = cnn.shape_story(model)
    if as_json:
        print_json({"model": model.name, "input_shape": list(cnn.input_shape(model)),
                    "layers": [r.to_dict() for r in rows], "total_params": total,
                    "trainable_params": trainable, "non_trainable_params": frozen, "shape_story": story})
        return
    table = [("Layer (type)", "Output Shape", "Param #")]
    table += [(f"{r.name} ({r.kind})", _shape_text(r.output_shape), f"{r.params:,}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    typer.echo(f'Model: "{model.name}"')
    for i, row in enumerate(table):
        typer.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}".rstrip())
        if i == 0:
            typer.echo("-" * (sum(widths) + 4))
    typer.echo(f"Total params: {total:,}")
    typer.echo(f"Trainable params: {trainable:,}")
    typer.echo(f"Non-trainable params: {frozen:,}")
    typer.echo("")
    typer.echo("How the image's shape changes:")
    for line in story:
        typer.echo(line)


def _shape_text(shape: Any) -> str:
    if isinstance(shape, list):
        return ", ".join(_shape_text(s) for s in shape)
    return str(tuple(shape)) if shape is not None else "?"


def _summary_model(name: str, extra: list[tuple[str, int]], weights: str):
    from tasks import cnn
    from tasks.classify import REGISTRY, Classifier, ModelUnavailable

    key = name.strip().lower()
    builders = {"lesson3": cnn.lesson3, "lesson5": cnn.lesson5}
    if extra and key not in builders:
        die("--layers adds layers to the course's own CNNs: use it with lesson3 or lesson5")
    try:
        if key in builders:
            return builders[key](extra)
        if key in REGISTRY:
            if weights.strip().lower() == "none":
                return REGISTRY[key].build(weights=None)
            return Classifier.create(key, weights, names=CLASSIFIER_FLAGS).keras_model
        path = Path(name).expanduser()
        if path.suffix.lower() == ".keras" or path.exists():
            _check_files([path])
            return Classifier.create(str(path), "imagenet" if weights.strip().lower() == "none" else weights,
                                     names=CLASSIFIER_FLAGS).keras_model
    except ModelUnavailable as exc:
        die(str(exc))
    except ValueError as exc:
        die(f"{name}: {exc}")
    die(f"unknown model {name!r}: use lesson3, lesson5, one of {', '.join(REGISTRY)}, "
         "or the path of a saved .keras model")


# --- lesson 4: classify --------------------------------------------------------------------------


def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="vgg16, vgg19, resnet50, mobilenet_v2, efficientnet_b0, inception_v3, xception, "
                        "or a saved .keras model (default: DARKROOM_CLASSIFIER_MODEL).")] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="imagenet, none, or a weights file (default: DARKROOM_CLASSIFIER_WEIGHTS, "
                          "or imagenet with --model).")] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=1000, help="Labels per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Lesson 4: label photos with a pre-trained model, printed `label (xx.xx%)` as the course does."""
    from tasks.classify import Classifier, ModelUnavailable

    settings = read_settings()
    model, weights = model_and_weights(settings, model, weights)
    _check_files(paths)
    try:
        classifier = Classifier.create(model, weights, names=CLASSIFIER_FLAGS)
    except ModelUnavailable as exc:
        die(str(exc))
    except ValueError as exc:
        die(f"--model: {exc}")
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), _BATCH):
        chunk = paths[start:start + _BATCH]
        images = [_load(p, settings) for p in chunk]
        try:
            labels = classifier.predict(images, top=top)
        except ModelUnavailable as exc:
            die(str(exc))
        for path, found in zip(chunk, labels):
            results.append({"path": str(path), "labels": [lab.to_dict() for lab in found]})
            if not as_json:
                typer.echo(str(path))
                for lab in found:
                    typer.echo(f"{lab.label} ({lab.score * 100:.2f}%)")
    if as_json:
        print_json([{"model": classifier.name, "weights": classifier.version, **r} for r in results])


# --- lesson 6: augment ---------------------------------------------------------------------------


def augment(
    path: Annotated[Path, typer.Argument(help="An image file.")],
    spec: Annotated[str, typer.Option(
        "--augment", "-a", help="key=value pairs over the settings, e.g. 'flip=hv,rotation=90,zoom=0.2'; keys: "
                                "flip, rotation, count, seed, size, width_shift, height_shift, zoom, shear, "
                                "brightness, contrast, channel_shift, fill_mode, fill_value.")] = "",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the contact sheet (.jpg or .png); default NAME-augmented.jpg here.")] = None,
    cols: Annotated[int, typer.Option("--cols", min=1, max=64, help="Images per row.")] = 3,
) -> None:
    """Lesson 6: randomly transformed copies of a photo, written as one contact sheet (the lesson's 3×3 plot)."""
    from darkroom import catalog
    from tasks.augment import AugmentSpec, contact_sheet, parse_spec, spec_from
    from tasks.augment import augment as make

    settings = read_settings()
    try:
        chosen = parse_spec(spec, spec_from(**catalog.get("augment").options(settings)))
    except ValueError as exc:
        die(f"--augment: {exc}")
    out = out or Path(f"{path.stem}-augmented.jpg")
    _image_format(out)
    images = make(_load(path, settings), chosen)
    sheet = contact_sheet(images, cols=cols)
    _write_image(out, sheet)
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)
    defaults = AugmentSpec()
    changed = ", ".join(f"{k}={v}" for k, v in vars(chosen).items()
                        if k in ("flip", "rotation", "count", "seed", "size") or v != getattr(defaults, k))
    typer.echo(f"{out}: {len(images)} augmented images in {rows}×{cols} ({sheet.shape[1]}×{sheet.shape[0]} pixels); "
               f"{changed}")


# --- lesson 7: faces -----------------------------------------------------------------------------


def faces(
    path: Annotated[Path, typer.Argument(help="An image file.")],
    min_confidence: Annotated[float | None, typer.Option(
        "--min-confidence", help="Faces MTCNN is less sure of are dropped (default: DARKROOM_FACE_MIN_CONFIDENCE).")] = None,
    min_size: Annotated[int | None, typer.Option(
        "--min-size", help="Smallest face looked for, in pixels (default: DARKROOM_FACE_MIN_SIZE).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the boxed image (.jpg or .png); default NAME-faces.jpg here.")] = None,
    crops: Annotated[Path | None, typer.Option(
        "--crops", help="Also write each face's crop into this folder (NAME-face-<i>.jpg).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Lesson 7: every face in a photo (the lesson's bonus), with a box and its five landmarks drawn."""
    from tasks.classify import ModelUnavailable
    from tasks.draw import draw_boxes
    from tasks.faces import FaceDetector, crop

    settings = read_settings()
    try:
        detector = FaceDetector(settings.face_min_confidence if min_confidence is None else min_confidence,
                                settings.face_min_size if min_size is None else min_size)
    except ValueError as exc:
        die(str(exc))
    out = out or Path(f"{path.stem}-faces.jpg")
    _image_format(out)
    image = _load(path, settings)
    try:
        found = detector.detect(image)
    except ModelUnavailable as exc:
        die(str(exc))
    _write_image(out, draw_boxes(image, [f.box for f in found], [f.keypoints for f in found]))
    crop_paths = []
    if crops is not None:
        for i, face in enumerate(found):
            crop_paths.append(crops / f"{path.stem}-face-{i}.jpg")
            _write_image(crop_paths[-1], crop(image, face))
    if as_json:
        print_json({"path": str(path), "faces": [f.to_dict() for f in found], "boxed": str(out),
                    "crops": [str(p) for p in crop_paths]})
        return
    typer.echo(f"{path}: {len(found)} face{'s' if len(found) != 1 else ''}")
    for i, face in enumerate(found):
        x, y, w, h = face.box
        points = ", ".join(f"{name} ({px}, {py})" for name, (px, py) in face.keypoints.items())
        typer.echo(f"{i}: box x={x} y={y} w={w} h={h}  confidence {face.confidence * 100:.2f}%  {points}")
    typer.echo(f"boxed image: {out}")
    if crop_paths:
        typer.echo(f"crops: {', '.join(map(str, crop_paths))}")
