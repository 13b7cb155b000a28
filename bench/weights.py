"""Seeded random weights that every process shares: ``python -m bench.weights MODEL OUT [IMAGES...]``.

With ``weights=none`` each worker process draws its own random weights, so labels from two
processes cannot be compared. The benchmark therefore gives Darkroom and the in-process checks
one weights file: the architecture built with ``weights=None`` under a fixed seed, then its
BatchNormalization statistics set from a few real photos (layer by layer, in inference mode), so
that outputs differ from image to image. (A freshly initialised MobileNetV2 gives 0.001 for every
class on every image: its activations vanish, and every "top-1" would be class 0.) Speed is that of
any weights: the architecture is the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def make_weights(model: str, out: Path, calibration: list[Path], seed: int = 0) -> Path:
    """Write the weights file ``out`` (once; kept as a cache) in a subprocess; returns ``out``."""
    out = Path(out)
    if out.is_file() and out.stat().st_size > 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    subprocess.run([sys.executable, "-m", "bench.weights", model, str(out), str(seed), *map(str, calibration)],
                   check=True, env=env, timeout=1800)
    return out


def _build(model: str, out: Path, seed: int, calibration: list[Path]) -> None:
    import keras
    import numpy as np

    from tasks.classify import REGISTRY, Classifier
    from tasks.imaging import decode

    keras.utils.set_random_seed(seed)
    spec = REGISTRY[model]
    net = spec.build(weights=None)
    if calibration:
        clf = Classifier.create(model, "none")
        batch = clf.preprocess([decode(str(p)) for p in calibration])
        bn_layers = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in bn_layers:
            # The layer's input under the statistics set so far (earlier layers already calibrated).
            probe = keras.Model(net.inputs, layer.input)
            x = np.asarray(probe([batch], training=False), dtype=np.float64)
            axes = tuple(range(x.ndim - 1))
            layer.moving_mean.assign(x.mean(axis=axes).astype(np.float32))
            layer.moving_variance.assign(x.var(axis=axes).astype(np.float32) + 1e-3)
        # A random last layer at Keras's initial scale gives near-uniform scores; widen them.
        last = net.layers[-1]
        if isinstance(last, keras.layers.Dense):
            kernel = np.asarray(last.kernel)
            last.kernel.assign(kernel * 10.0)
    tmp = out.with_name(out.name + ".tmp.weights.h5")
    net.save_weights(str(tmp))
    os.replace(tmp, out)


if __name__ == "__main__":
    _model, _out, _seed, *_images = sys.argv[1:]
    _build(_model, Path(_out), int(_seed), [Path(p) for p in _images])
