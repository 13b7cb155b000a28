"""Models the tests build: random-init Keras applications made usable for label comparisons."""

from __future__ import annotations

import numpy as np


def sharpen(model, batch: np.ndarray, seed: int = 0) -> None:
    """Give a random-init model well separated outputs.

    A random-init application pools features of ~1e-10 (the BatchNorm layers shrink the signal at
    every block), so its probabilities are a flat 0.001 and top-5 orders would be noise. Rescale
    the last layer so the logits (which still depend on the input) spread over a few units."""
    import keras

    features = keras.Model(model.input, model.get_layer("predictions").input)(batch, training=False)
    norm = float(np.median(np.linalg.norm(np.asarray(features), axis=1)))
    assert norm > 0
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(seed)
    dense.set_weights([(rng.normal(0, 3.0, kernel.shape) / norm).astype("float32"), np.zeros_like(bias)])
