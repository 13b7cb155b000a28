"""Lesson 3, convolutional neural networks: the lesson's own CNN, and what a model does to an image's shape.

:func:`lesson3` is the lesson's model (a 256x256 grayscale image, ``Conv2D(32, (3, 3))``,
``MaxPooling2D()``, ``Flatten()``, ``Dense(1, activation="sigmoid")``); :func:`lesson5` is lesson 5's
Fashion-MNIST CNN. Both take ``extra`` layers, inserted after the lesson's pooling layer, as the
lesson's extra task does ("try adding more convolutional or pooling layers").

:func:`layer_rows` gives what ``model.summary()`` prints (each layer's name, type, output shape and
parameter count) as plain data, and :func:`shape_story` the lesson's task in words: how the image's
shape changes layer by layer, and why.

Keras is imported inside functions only (worker processes fork after importing ``tasks``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["LayerRow", "build_extra", "layer_rows", "lesson3", "lesson5", "parse_layers", "shape_story",
           "total_params"]

_EXTRA = re.compile(r"^(conv|pool)(\d+)?$")


def parse_layers(text: str) -> list[tuple[str, int]]:
    """Read ``"conv,pool,conv64,pool3"``: ``conv`` is a 3x3 convolution with 32 filters (``convN``:
    N filters), ``pool`` a 2x2 max pooling (``poolN``: NxN). Returns ``(kind, size)`` pairs.

    Raises:
        ValueError: An entry that is neither.
    """
    out: list[tuple[str, int]] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        match = _EXTRA.match(item)
        if not match or (match.group(2) is not None and int(match.group(2)) < 1):
            raise ValueError(f"unknown layer {item!r}: use conv (32 3x3 filters), convN (N filters), "
                             "pool (2x2 max pooling) or poolN (NxN), comma-separated")
        kind, number = match.group(1), match.group(2)
        out.append((kind, int(number) if number else (32 if kind == "conv" else 2)))
    return out


def build_extra(extra: list[tuple[str, int]], activation: str | None = None) -> list[Any]:
    """Keras layers for :func:`parse_layers`'s pairs, named as Keras names them in a fresh process
    after the lesson's first two (``conv2d_1``, ``max_pooling2d_1``, ...)."""
    from keras import layers

    built = []
    seen = {"conv": 0, "pool": 0}
    for kind, size in extra:
        seen[kind] += 1
        if kind == "conv":
            built.append(layers.Conv2D(size, (3, 3), activation=activation, name=f"conv2d_{seen[kind]}"))
        else:
            built.append(layers.MaxPooling2D((size, size), name=f"max_pooling2d_{seen[kind]}"))
    return built


def lesson3(extra: list[tuple[str, int]] = ()) -> Any:
    """The lesson's CNN: 256x256x1 in, Conv2D 32 3x3, MaxPooling2D, [extra], Flatten, Dense 1 sigmoid."""
    import keras
    from keras import layers

    return keras.Sequential(
        [keras.Input(shape=(256, 256, 1)), layers.Conv2D(32, (3, 3), name="conv2d"),
         layers.MaxPooling2D(name="max_pooling2d"), *build_extra(list(extra)), layers.Flatten(name="flatten"),
         layers.Dense(1, activation="sigmoid", name="dense")],
        name="lesson3",
    )


def lesson5(extra: list[tuple[str, int]] = ()) -> Any:
    """Lesson 5's Fashion-MNIST CNN: 28x28x1 in, Conv2D 32 3x3 relu, MaxPooling2D, [extra],
    Flatten, Dense 100 relu, Dense 10 softmax (he_uniform initialisers, as in the lesson)."""
    import keras
    from keras import layers

    return keras.Sequential(
        [keras.Input(shape=(28, 28, 1)),
         layers.Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform", name="conv2d"),
         layers.MaxPooling2D(name="max_pooling2d"), *build_extra(list(extra), activation="relu"),
         layers.Flatten(name="flatten"),
         layers.Dense(100, activation="relu", kernel_initializer="he_uniform", name="dense"),
         layers.Dense(10, activation="softmax", name="dense_1")],
        name="lesson5",
    )


@dataclass(frozen=True)
class LayerRow:
    """One line of a model summary. ``output_shape`` is Keras's, batch first: ``(None, 254, 254, 32)``."""

    name: str
    kind: str
    output_shape: Any
    params: int
    input_shape: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "output_shape": _jsonable(self.output_shape),
                "params": self.params}


def layer_rows(model: Any) -> list[LayerRow]:
    """Every layer of ``model`` but its input layers, in order, as ``model.summary()`` lists them."""
    rows = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        rows.append(LayerRow(layer.name, type(layer).__name__, _shape(layer, "output"), int(layer.count_params()),
                             _shape(layer, "input")))
    return rows


def total_params(model: Any) -> tuple[int, int, int]:
    """(total, trainable, non-trainable) parameter counts."""
    trainable = sum(int(_size(w)) for w in model.trainable_weights)
    frozen = sum(int(_size(w)) for w in model.non_trainable_weights)
    return trainable + frozen, trainable, frozen


def input_shape(model: Any) -> Any:
    shape = model.input_shape
    return tuple(shape) if isinstance(shape, (tuple, list)) and shape and not isinstance(shape[0], (tuple, list)) \
        else shape


def shape_story(model: Any) -> list[str]:
    """The lesson's task, in words: one line per layer saying how the image's shape changes and why.

    For the lesson's CNN::

        The input is a 256×256 image with 1 channel (256×256×1).
        conv2d (Conv2D): 32 filters of 3×3, 'valid' padding, stride 1: 256×256×1 → 254×254×32. ...
    """
    lines = [_describe_input(input_shape(model))]
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        lines.append(_describe(layer, _shape(layer, "input"), _shape(layer, "output")))
    return lines


# --- internals -----------------------------------------------------------------------------------


def _size(weight: Any) -> int:
    n = 1
    for d in weight.shape:
        n *= int(d)
    return n


def _shape(layer: Any, which: str) -> Any:
    try:
        tensor = getattr(layer, which)
    except (AttributeError, ValueError):
        return None
    if isinstance(tensor, (list, tuple)):
        return [tuple(t.shape) for t in tensor]
    return tuple(tensor.shape)


def _jsonable(shape: Any) -> Any:
    if isinstance(shape, (list, tuple)):
        return [_jsonable(s) for s in shape]
    return shape


def _dims(shape: Any) -> str:
    """``(None, 254, 254, 32)`` -> ``254×254×32``; several tensors joined with ' + '."""
    if isinstance(shape, list):
        return " + ".join(_dims(s) for s in shape)
    if shape is None:
        return "?"
    return "×".join("?" if d is None else str(d) for d in shape[1:]) or "a scalar"


def _count(shape: Any) -> int | None:
    if not isinstance(shape, tuple) or any(d is None for d in shape[1:]):
        return None
    n = 1
    for d in shape[1:]:
        n *= int(d)
    return n


def _describe_input(shape: Any) -> str:
    if isinstance(shape, tuple) and len(shape) == 4:
        _, h, w, c = shape
        size = f"{'?' if h is None else h}×{'?' if w is None else w}"
        return f"The input is a {size} image with {c} channel{'s' if c != 1 else ''} ({_dims(shape)})."
    return f"The input has shape {_dims(shape)}."


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _describe(layer: Any, before: Any, after: Any) -> str:
    kind = type(layer).__name__
    head = f"{layer.name} ({kind})"
    change = f"{_dims(before)} → {_dims(after)}"
    config = layer.get_config()
    spatial = isinstance(before, tuple) and isinstance(after, tuple) and len(before) == 4 and len(after) == 4
    if kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D") and spatial:
        kh, kw = _pair(config["kernel_size"])
        sh, sw = _pair(config.get("strides", 1))
        padding = config.get("padding", "valid")
        what = (f"{config['filters']} filters of {kh}×{kw}" if "filters" in config and kind != "DepthwiseConv2D"
                else f"a {kh}×{kw} filter per channel")
        why = _conv_why(before, after, kh, kw, sh, sw, padding, kind, config)
        return f"{head}: {what}, '{padding}' padding, stride {sh if sh == sw else f'{sh}×{sw}'}: {change}. {why}"
    if kind in ("MaxPooling2D", "AveragePooling2D") and spatial:
        ph, pw = _pair(config["pool_size"])
        strides = config.get("strides") or config["pool_size"]
        sh, sw = _pair(strides)
        how = "largest" if kind.startswith("Max") else "average"
        shrink = (f"each side is divided by {sh} and rounded down ({before[1]} → {after[1]})" if sh == sw == ph == pw
                  else f"the {ph}×{pw} window moves {sh} pixels at a time")
        return (f"{head}: {ph}×{pw} pooling, stride {sh if sh == sw else f'{sh}×{sw}'}: {change}. Each {ph}×{pw} "
                f"patch of every feature map becomes its {how} value, so {shrink}; the {after[3]} feature maps "
                "are kept.")
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return f"{head}: {change}. Each feature map becomes one number (its {'mean' if 'Average' in kind else 'maximum'})."
    if kind == "Flatten":
        n = _count(after)
        return (f"{head}: {change}. The feature maps are laid out in one row of "
                f"{'?' if n is None else f'{n:,}'} values, ready for a fully connected layer.")
    if kind == "Dense":
        units = config["units"]
        activation = config.get("activation", "linear")
        n_in = before[-1] if isinstance(before, tuple) else "?"
        extra = (" — one number between 0 and 1, the probability of one of two classes" if units == 1 and
                 activation == "sigmoid" else " — one probability per class" if activation == "softmax" else "")
        who = "its one unit" if units == 1 else f"each of its {units:,} units"
        return (f"{head}: {change}. Fully connected: {who} weighs all {n_in:,} inputs ({activation}){extra}."
                if isinstance(n_in, int)
                else f"{head}: {change}. Fully connected, {units} units ({activation}).")
    if kind in ("ZeroPadding2D",) and spatial:
        return f"{head}: {change}. Zeros are added around the edges."
    if kind in ("Reshape", "Rescaling", "Normalization", "Resizing", "Cropping2D", "UpSampling2D"):
        return f"{head}: {change}."
    if isinstance(before, list):
        return f"{head}: {change}. Combines {len(before)} inputs into one."
    if before == after:
        return f"{head}: {change} (shape unchanged: it changes the values, not the shape)."
    return f"{head}: {change}."


def _conv_why(before, after, kh, kw, sh, sw, padding, kind, config) -> str:
    h_in, h_out = before[1], after[1]
    channels = after[3]
    maps = (f"each of the {config['filters']} filters gives one feature map, so there are {channels} channels"
            if "filters" in config and kind != "DepthwiseConv2D" else f"there are {channels} channels")
    if kh == kw == 1 and sh == sw == 1:
        return f"A 1×1 filter looks at one pixel at a time, so the height and width stay; {maps}."
    if padding == "valid" and sh == sw == 1 and kh == kw and h_in is not None:
        return (f"A {kh}×{kw} window fits {h_out} times across {h_in} pixels, so each side loses {kh - 1}; {maps}.")
    if padding == "same" and sh == sw == 1:
        return f"'same' padding keeps the height and width; {maps}."
    return f"The window moves {sh} pixel{'s' if sh != 1 else ''} at a time; {maps}."
