"""MTCNN's three stages with their networks compiled: the same networks, weights and steps as the
``mtcnn`` package, three to four times as fast on a CPU.

``mtcnn`` 1.0 calls its Keras networks eagerly, op by op: every PReLU is several full-size
temporaries, and each pyramid level's area resize runs as a separate eager op. Here each network
runs as a ``tf.function`` with a fixed input signature (traced once per process, whatever the
image size), so TensorFlow's graph optimizer fuses convolution, bias and activation. Each
network's first block (a 3x3 convolution on the 3 colour channels, PReLU, max pool) can be
computed on the input in 2x2 space-to-depth form (:class:`_FirstBlock`), several times faster on
processors whose convolutions over 3 channels are slow, or as the model's own layers; which is
faster is timed for each network as it loads (:func:`_fastest`). PReLUs take one full-size pass
fewer than Keras's (:func:`_prelu`), and the output layers are one product (:class:`_Heads`);
the rest are the networks' own Keras layers. PNet takes large pyramid levels in
strips, RNet and ONet take the proposals in chunks, so that their tensors stay in the CPU's caches.

Every step between the networks (proposal generation, the package's own NMS, square boxes, patch
extraction, landmark mapping) is the package's code, called as the package calls it, except
PNet's NMS: :func:`smart_nms` makes the package's decisions (bit for bit: the same float
operations on the same pairs) without building its N x N matrices, which cost more than PNet
itself on large photos.

The outputs are those of ``mtcnn.MTCNN`` to float rounding: ``tests/test_faces.py`` checks the boxes,
confidences and landmarks against the package on real photos.

Imported lazily (it imports TensorFlow), by :func:`tasks.faces._shared_mtcnn`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf
from mtcnn import MTCNN
from mtcnn.stages import StageONet, StagePNet, StageRNet
from mtcnn.utils.bboxes import (
    generate_bounding_box,
    iou,
    limit_bboxes,
    nms,
    resize_to_square,
    sort_by_scores,
    to_json,
    upscale_bboxes,
)
from mtcnn.utils.images import build_scale_pyramid

__all__ = ["CompiledMTCNN", "CompiledONet", "CompiledPNet", "CompiledRNet", "compiled_mtcnn", "nms_keep", "smart_nms"]

log = logging.getLogger(__name__)

_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32)


def _s2d_kernel(kernel: np.ndarray, channel_major: bool = False) -> np.ndarray:
    """A 3x3 kernel ``[3, 3, C, O]`` as the 2x2 kernel ``[2, 2, 4C, 4O]`` that gives, on the input
    rearranged by ``tf.nn.space_to_depth(x, 2)``, the four outputs of every 2x2 block of the
    original convolution: output channel ``(py * 2 + px) * O + o`` is row ``2i + py``, column
    ``2j + px`` of channel ``o``; ``channel_major``: channel ``o * 4 + py * 2 + px``, each channel's
    four positions side by side (what a max pool over the depth reduces). A 3x3 window at any of
    the four offsets lies within two blocks each way."""
    k = np.asarray(kernel, np.float32)
    if k.shape[:2] != (3, 3):
        raise ValueError(f"expected a 3x3 kernel, got {k.shape}")
    channels, outputs = k.shape[2:]
    out = np.zeros((2, 2, 2, 2, channels, 4, outputs), np.float32)  # [ky, kx, dy, dx, c, phase, o]
    for py in range(2):
        for px in range(2):
            for u in range(3):
                for v in range(3):
                    row, col = py + u, px + v
                    out[row // 2, col // 2, row % 2, col % 2, :, py * 2 + px, :] = k[u, v]
    if channel_major:
        out = out.transpose(0, 1, 2, 3, 4, 6, 5)
    return out.reshape(2, 2, 4 * channels, 4 * outputs)


def _prelu_alpha(layer) -> np.ndarray | None:
    """A Keras PReLU layer's slopes as one per channel of the last axis, or None when its slopes
    are shared otherwise (then the layer itself is called)."""
    alpha = np.asarray(layer.get_weights()[0], np.float32)
    if alpha.ndim and all(d == 1 for d in alpha.shape[:-1]):
        return alpha.reshape(-1)
    return None


def _prelu(x, alpha):
    """Keras's PReLU, ``relu(x) + (-alpha) * relu(-x)``, as ``relu(x) + alpha * min(x, 0)``: the
    same values (the two products differ only in the signs of both factors), one full-size pass
    fewer."""
    return tf.nn.relu(x) + alpha * tf.minimum(x, 0.0)


class _FirstBlock:
    """``maxpool(prelu(conv1(x)))``, the first block of each MTCNN network, computed on the input
    in 2x2 space-to-depth form.

    conv1 maps the 3 colour channels to 10-32 with a 3x3 kernel; so few input channels keep the
    CPU's vector units mostly idle (about 2 GMAC/s on one core, two thirds of PNet's time).
    Rearranged, the same sums are a 2x2 convolution from 12 channels to 4 x 10-32 (the four
    positions of every 2x2 block of the output, side by side per channel), which runs several
    times faster although it multiplies some zeros, and the max pool becomes a max over those four
    positions (a max pool over the depth; for the 3x3 pools of RNet and ONet, with their
    neighbours'). The sums are the same products added in another order, so the outputs are the
    network's to float rounding; every max is exact.
    """

    def __init__(self, conv, prelu, pool):
        kernel, bias = conv.get_weights()
        if tuple(conv.strides) != (1, 1) or conv.padding != "valid" or kernel.shape[:2] != (3, 3):
            raise ValueError(f"{conv.name}: expected a 3x3 'valid' convolution with stride 1")
        self.pool = (tuple(pool.pool_size), tuple(pool.strides), pool.padding)
        if self.pool not in (((2, 2), (2, 2), "same"), ((3, 3), (2, 2), "same")):
            raise ValueError(f"{pool.name}: unsupported pooling {self.pool}")
        alpha = _prelu_alpha(prelu)
        if alpha is None or int(alpha.shape[0]) != kernel.shape[-1]:
            raise ValueError(f"{prelu.name}: expected one slope per channel")
        self.channels = int(kernel.shape[-1])
        # The 2x2 pool is a max pool over the depth of the channel-major layout; the 3x3 pools take
        # rows and columns of neighbouring blocks, quicker to slice from the position-major one.
        self.channel_major = self.pool[0] == (2, 2)
        self.kernel = tf.constant(_s2d_kernel(kernel, self.channel_major))
        spread = (lambda v: np.repeat(v, 4)) if self.channel_major else (lambda v: np.tile(v, 4))
        self.bias = tf.constant(spread(np.asarray(bias, np.float32)))
        self.alpha = tf.constant(spread(alpha))

    def __call__(self, x):
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        # conv1's output is (height - 2) x (width - 2); as 2x2 blocks, ceil of half that.
        rows, cols = (height - 1) // 2, (width - 1) // 2
        x = tf.pad(x, [[0, 0], [0, 2 * rows + 2 - height], [0, 2 * cols + 2 - width], [0, 0]])
        y = tf.nn.bias_add(tf.nn.conv2d(tf.nn.space_to_depth(x, 2), self.kernel, 1, "VALID"), self.bias)
        y = _prelu(y, self.alpha)
        if self.channel_major:
            pooled = tf.nn.max_pool(y, [1, 1, 1, 4], [1, 1, 1, 4], "VALID")  # each block's four positions
            blocks = tf.reshape(y, [tf.shape(y)[0], rows, cols, self.channels, 2, 2])  # [n, i, j, c, py, px]
            return self._pool2(pooled, blocks, (height - 2) % 2 == 1, (width - 2) % 2 == 1)
        # A 3x3 pool, stride 2, "same", over an even-sized output (RNet's 24 px and ONet's 48 px
        # patches) pads one row and column after: window (i, j) is rows 2i..2i+2, columns 2j..2j+2.
        tf.debugging.assert_equal((height - 2) % 2 + (width - 2) % 2, 0, message="3x3 pool needs even sizes")
        blocks = tf.reshape(y, [tf.shape(y)[0], rows, cols, 2, 2, self.channels])  # [n, i, j, py, px, c]
        inside = tf.reduce_max(blocks, axis=[3, 4])
        below = tf.reduce_max(blocks[:, :, :, 0], axis=3)  # row 2i + 2 is the next block's first row
        right = tf.reduce_max(blocks[:, :, :, :, 0], axis=3)
        corner = blocks[:, :, :, 0, 0]
        low = tf.constant(-np.inf, tf.float32)
        below = tf.pad(below[:, 1:], [[0, 0], [0, 1], [0, 0], [0, 0]], constant_values=low)
        right = tf.pad(right[:, :, 1:], [[0, 0], [0, 0], [0, 1], [0, 0]], constant_values=low)
        corner = tf.pad(corner[:, 1:, 1:], [[0, 0], [0, 1], [0, 1], [0, 0]], constant_values=low)
        return tf.maximum(tf.maximum(inside, below), tf.maximum(right, corner))

    @staticmethod
    def _pool2(pooled, blocks, odd_rows, odd_cols):
        """A 2x2 pool, stride 2, "same" (``pooled``: the max of each block, ``blocks`` in the
        channel-major layout): one window per block, except that an odd-sized output's last window
        has only its first row (column): the block's second one lies outside."""

        def last_row(p):
            row = tf.reduce_max(blocks[:, -1, :, :, 0], axis=-1)  # [n, j, c]; its last column: below
            return tf.concat([p[:, :-1], row[:, None]], axis=1)

        def last_col(p):
            col = blocks[:, :, -1, :, :, 0]  # [n, i, c, py]
            values = tf.reduce_max(col, axis=-1)
            corner = tf.cond(odd_rows, lambda: col[:, -1:, :, 0], lambda: values[:, -1:])
            values = tf.concat([values[:, :-1], corner], axis=1)
            return tf.concat([p[:, :, :-1], values[:, :, None]], axis=2)

        pooled = tf.cond(odd_rows, lambda: last_row(pooled), lambda: pooled)
        return tf.cond(odd_cols, lambda: last_col(pooled), lambda: pooled)


class _Heads:
    """A network's output layers, which all take the same input (1x1 convolutions, or dense
    layers), as one layer: their kernels side by side, one product instead of one per head, each
    head's slice then given its own activation (linear or softmax)."""

    def __init__(self, heads: list):
        kinds = {type(h).__name__ for h in heads}
        if kinds not in ({"Conv2D"}, {"Dense"}):
            raise ValueError(f"expected 1x1 convolutions or dense layers as heads, got {sorted(kinds)}")
        kernels, biases = zip(*(h.get_weights() for h in heads))
        if kinds == {"Conv2D"} and any(k.shape[:2] != (1, 1) or tuple(h.strides) != (1, 1)
                                       for k, h in zip(kernels, heads)):
            raise ValueError("expected 1x1 convolutions with stride 1 as heads")
        self.conv = kinds == {"Conv2D"}
        self.kernel = tf.constant(np.concatenate([np.asarray(k, np.float32).reshape(k.shape[-2], k.shape[-1])
                                                  for k in kernels], axis=-1))
        self.bias = tf.constant(np.concatenate(biases).astype(np.float32))
        self.sizes = [int(b.shape[0]) for b in biases]
        self.activations = [h.get_config()["activation"] for h in heads]
        if set(self.activations) - {"linear", "softmax"}:
            raise ValueError(f"unsupported head activations {self.activations}")

    def __call__(self, x):
        if self.conv:
            y = tf.nn.bias_add(tf.nn.conv2d(x, self.kernel[None, None], 1, "VALID"), self.bias)
        else:
            y = tf.nn.bias_add(tf.matmul(x, self.kernel), self.bias)
        parts = tf.split(y, self.sizes, axis=-1)
        return [tf.nn.softmax(p, axis=-1) if a == "softmax" else p for p, a in zip(parts, self.activations)]


class _FastNetwork:
    """An MTCNN network (PNet, RNet or ONet, inference only) with its PReLUs as :func:`_prelu` and
    its output layers as one (:class:`_Heads`); with ``first_block="s2d"``, :class:`_FirstBlock`
    in place of its first three layers ("plain": the model's own). The rest are the model's own
    layers, called in its order: each layer feeds the next, and the last ``heads`` layers all take
    the same input (the outputs)."""

    def __init__(self, model: tf.keras.Model, heads: int, first_block: str = "s2d"):
        layers = list(model.layers)
        if first_block not in FIRST_BLOCKS:
            raise ValueError(f"first_block must be one of {', '.join(FIRST_BLOCKS)}, got {first_block!r}")
        self.first = _FirstBlock(*layers[:3]) if first_block == "s2d" else None
        self.body = []
        for layer in layers[3 if self.first else 0:-heads]:
            alpha = _prelu_alpha(layer) if type(layer).__name__ == "PReLU" else None
            self.body.append(layer if alpha is None else (lambda x, a=alpha: _prelu(x, a)))
        self.heads = _Heads(layers[-heads:])

    def __call__(self, x):
        if self.first is not None:
            x = self.first(x)
        for layer in self.body:  # convolutions, PReLUs, pools, permute, flatten, dense: no training mode
            x = layer(x)
        return self.heads(x)


#: The ways :class:`_FastNetwork` computes a network's first block; the same outputs to float
#: rounding (``tests/test_faces.py``), at a speed that depends on the processor: on a 2-core AMD
#: EPYC the space-to-depth form made PNet several times faster, on an Intel Xeon with AVX-512 the
#: plain convolution is as fast for PNet and 1.4-1.7x faster for RNet and ONet.
FIRST_BLOCKS = ("s2d", "plain")


def _fastest(model: tf.keras.Model, heads: int, signature: tf.TensorSpec, sample: tuple[int, ...],
             first_block: str = "auto"):
    """The network traced with ``first_block``'s form, or with "auto", with whichever form runs
    ``sample``-shaped input faster here (both traced, then each timed three times, interleaved, as
    the network loads: about 1 s for MTCNN's three). Returns (concrete function, the form chosen)."""
    if first_block != "auto":
        return _traced(_FastNetwork(model, heads, first_block), signature), first_block
    candidates = {form: _traced(_FastNetwork(model, heads, form), signature) for form in FIRST_BLOCKS}
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, sample).astype(np.float32))
    best: dict[str, float] = {}
    for _form, fn in candidates.items():
        fn(x)[0].numpy()  # the first call of a graph prepares its kernels
    for _ in range(3):
        for form, fn in candidates.items():
            started = time.perf_counter()
            fn(x)[0].numpy()
            best[form] = min(best.get(form, np.inf), time.perf_counter() - started)
    form = min(best, key=best.__getitem__)
    log.debug("%s: first block %s (%s)", model.name, form, ", ".join(f"{f} {t * 1e3:.2f} ms" for f, t in best.items()))
    return candidates[form], form


#: RNet and ONet take the proposals in chunks of this many patches: a photo can have a thousand,
#: and in one batch their intermediate tensors outgrow the CPU's caches (about 30 % slower).
PATCH_CHUNK = 128
#: PNet takes a large pyramid level in horizontal strips of about this many pixels, for the same
#: reason (about 30 % faster on a 1280 x 960 level); see :func:`pnet_strips`.
STRIP_PIXELS = 1 << 19


def pnet_strips(height: int, width: int, budget: int | None = None) -> list[tuple[int, int]]:
    """Input row ranges ``[start, stop)`` that split PNet over a ``height`` x ``width`` level into
    strips of about ``budget`` pixels whose outputs, stacked, are the whole level's.

    PNet's output row ``k`` sees input rows ``2k .. 2k + 11`` (a 12-px window, stride 2), so a strip
    for output rows ``[a, b)`` takes input rows ``[2a, 2b + 10)``: neighbouring strips overlap by
    10 rows and start on even rows, where the 2x2 pooling starts. The last strip runs to the
    bottom, so an odd height's partial last pooling window is the whole level's.
    """
    budget = STRIP_PIXELS if budget is None else budget
    out_rows = (height - 1) // 2 - 4  # conv 3x3, pool 2x2 "same", conv 3x3, conv 3x3
    per = max(1, (budget // max(width, 1) - 10) // 2)
    if out_rows <= per:
        return [(0, height)]
    return [(2 * a, height if a + per >= out_rows else 2 * (a + per) + 10) for a in range(0, out_rows, per)]


def _traced(fn, *signature: tf.TensorSpec):
    """``fn`` traced once for ``signature``, now (under the device scope of the caller), as a
    concrete function: called a few dozen times per photo, it skips ``tf.function``'s dispatch
    (binding the arguments to the signature, about 0.1 ms a call)."""
    return tf.function(fn, input_signature=list(signature)).get_concrete_function()


def _joined(parts: list, axis: int) -> list:
    """The outputs of a network run on consecutive slices of its input, each joined along ``axis``."""
    return [tf.concat([part[k] for part in parts], axis=axis) for k in range(len(parts[0]))]


class _CompiledModel:
    """A Keras network called through one traced graph for any batch size (inference mode), on
    at most :data:`PATCH_CHUNK` patches at a time; its first block in the faster form here
    (``first_block="auto"``) or the one named."""

    def __init__(self, model: tf.keras.Model, patch: int, heads: int, sample: int, first_block: str = "auto"):
        self.model = model
        self._forward, self.first_block = _fastest(model, heads, tf.TensorSpec([None, patch, patch, 3], tf.float32),
                                                   (sample, patch, patch, 3), first_block)

    def __call__(self, patches):
        patches = tf.convert_to_tensor(patches, tf.float32)
        count = int(patches.shape[0])
        if count <= PATCH_CHUNK:
            return self._forward(patches)
        return _joined([self._forward(patches[i:i + PATCH_CHUNK]) for i in range(0, count, PATCH_CHUNK)], axis=0)


class CompiledPNet(StagePNet):
    """StagePNet with each pyramid level's area resize and PNet (in strips) compiled; PNet's first
    block in the faster form here (``first_block="auto"``) or the one named (:data:`FIRST_BLOCKS`)."""

    def __init__(self, first_block: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self._network, self.first_block = _fastest(self._model, 2, _IMAGES, (1, 240, 320, 3), first_block)
        self._scale = _traced(lambda images, size: tf.image.resize(images, size, method=tf.image.ResizeMethod.AREA),
                              _IMAGES, tf.TensorSpec([2], tf.int32))

    def _level(self, images, size: tuple[int, int]):
        """PNet's two outputs (box offsets, face scores) over ``images`` resized to ``size``
        (height, width; plain ints: reading them back from a tensor costs a slice op each)."""
        height, width = size
        scaled = self._scale(images, tf.constant([height, width], tf.int32))
        strips = pnet_strips(height, width * int(images.shape[0]))
        if len(strips) == 1:
            return self._network(scaled)
        return _joined([self._network(scaled[:, start:stop]) for start, stop in strips], axis=1)

    def __call__(self, images_normalized, images_oshapes, min_face_size=20, min_size=12, scale_factor=0.709,
                 threshold_pnet=0.6, nms_pnet1=0.5, nms_pnet2=0.7, **kwargs):
        # The steps of StagePNet.__call__, in its order and with its helpers.
        scales_groups = [build_scale_pyramid(shape[1], shape[0], min_face_size=min_face_size,
                                             scale_factor=scale_factor) for shape in images_oshapes]
        scales = scales_groups[int(np.argmax([group.shape[0] for group in scales_groups]))]
        images = tf.convert_to_tensor(images_normalized, tf.float32)
        shape = np.asarray(images.shape[-3:-1])
        batch_size = int(images.shape[0])
        per_level = []
        for scale in scales:
            # mtcnn's scale_images passes shape * scale to tf.image.resize, which truncates.
            height, width = (int(v) for v in (shape * scale).astype(np.int32))
            bbox_reg, bbox_class = self._level(images, (height, width))
            proposals = generate_bounding_box(bbox_reg, bbox_class, threshold_pnet)
            proposals = upscale_bboxes(proposals, np.asarray([scale] * batch_size))
            per_level.append(smart_nms(proposals, threshold=nms_pnet1, method="union", initial_sort=False))
        bboxes = np.concatenate(per_level, axis=0) if per_level else np.empty((0, 6))
        bboxes = smart_nms(bboxes, threshold=nms_pnet2, method="union", initial_sort=True)
        return resize_to_square(bboxes)


class _CompiledRefinement:
    """RNet's and ONet's stage with the network compiled for ``PATCH`` x ``PATCH`` patches; no
    proposals in, none out (``COLUMNS`` wide), where mtcnn would raise and swallow the error."""

    PATCH: int
    COLUMNS: int
    HEADS: int

    #: Patches per call when the first block's forms are timed (RNet sees a few hundred a photo,
    #: ONet a few).
    SAMPLE: int

    def __init__(self, first_block: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self._model = _CompiledModel(self._model, self.PATCH, self.HEADS, self.SAMPLE, first_block)
        self.first_block = self._model.first_block

    def __call__(self, images_normalized, bboxes_batch, **kwargs):
        if len(bboxes_batch) == 0:
            return np.empty((0, self.COLUMNS))
        return super().__call__(images_normalized=images_normalized, bboxes_batch=bboxes_batch, **kwargs)


class CompiledRNet(_CompiledRefinement, StageRNet):
    PATCH, COLUMNS, HEADS, SAMPLE = 24, 6, 2, 128  # image, box (4), score; outputs: box, score


class CompiledONet(_CompiledRefinement, StageONet):
    PATCH, COLUMNS, HEADS, SAMPLE = 48, 16, 3, 16  # image, box (4), score, 5 landmarks (10); outputs: box, landmarks, score


def nms_keep(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by mtcnn's ``nms(iou(boxes, method), threshold)``, in increasing order.

    mtcnn's rule: box ``j`` goes when any earlier box ``i < j`` (suppressed or not) overlaps it by
    more than ``threshold``. Only pairs whose boxes intersect can pass a threshold >= 0, so only
    those are computed (found through the boxes sorted by left edge), each with mtcnn's formula and
    operation order, so every decision is the one mtcnn makes.
    """
    n = len(boxes)
    if n < 2 or not threshold >= 0 or method not in ("union", "min"):
        return nms(iou(boxes, method=method), threshold) if n else np.empty(0, dtype=np.int64)
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    order = np.argsort(x0, kind="stable")
    # Pairs (p, q), p < q in left-edge order, whose q starts left of p's right edge.
    ends = np.searchsorted(x0[order], x1[order], side="left")
    counts = np.maximum(ends - np.arange(n) - 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.arange(n)
    first = np.repeat(np.arange(n), counts)
    second = first + 1 + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    a, b = order[first], order[second]
    hit = (x0[b] < x1[a]) & (x0[a] < x1[b]) & (y0[a] < y1[b]) & (y0[b] < y1[a])
    a, b = a[hit], b[hit]
    # mtcnn's iou(), element by element.
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    height = np.maximum(0, np.minimum(boxes[a, 2], boxes[b, 2]) - np.maximum(boxes[a, 0], boxes[b, 0]))
    width = np.maximum(0, np.minimum(boxes[a, 3], boxes[b, 3]) - np.maximum(boxes[a, 1], boxes[b, 1]))
    inter = height * width
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "union":
            overlap = inter / (area[a] + area[b] - inter)
        else:
            overlap = inter / np.minimum(area[a], area[b])
    suppressed = np.zeros(n, dtype=bool)
    suppressed[np.maximum(a, b)[overlap > threshold]] = True
    return np.flatnonzero(~suppressed)


def smart_nms(bboxes: np.ndarray, threshold: float, method: str = "union", initial_sort: bool = True) -> np.ndarray:
    """mtcnn's ``smart_nms_from_bboxes`` (rows ``[image, x1, y1, x2, y2, score, ...]``), same output,
    with :func:`nms_keep` in place of the N x N matrices."""
    if initial_sort:
        bboxes = sort_by_scores(bboxes, scores=bboxes[:, 5], ascending=False)
    result = []
    for image_id in np.unique(bboxes[:, 0]):
        target = bboxes[bboxes[:, 0] == image_id]
        result.append(target[nms_keep(target[:, 1:5], threshold, method)])
    return np.concatenate(result, axis=0) if result else np.empty((0, 6))


@tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
def _normalized(images):
    """mtcnn's normalize_images, ``(x - 127.5) / 128`` in float32, in one pass over uint8 pixels."""
    return (tf.cast(images, tf.float32) - 127.5) / 128


class CompiledMTCNN(MTCNN):
    """``mtcnn.MTCNN`` for same-shape uint8 images: they are normalized once, in TensorFlow, and the
    three stages share that tensor. mtcnn itself copies a full-size float image six times on the
    way (a float cast, padding, two normalization steps, a conversion per stage): 1-5 ms each on
    a large photo. Anything else (mixed shapes, file names, bytes) goes through mtcnn's own path."""

    def detect_faces(self, image, fit_to_image=True, limit_boundaries_landmarks=False, box_format="xywh",
                     output_type="json", postprocess=True, batch_stack_justification="center", **kwargs):
        images = image if isinstance(image, list) else [image]
        if (output_type != "json" or not images or not all(isinstance(i, np.ndarray) and i.dtype == np.uint8
                                                           and i.shape == images[0].shape for i in images)):
            return super().detect_faces(image, fit_to_image, limit_boundaries_landmarks, box_format, output_type,
                                        postprocess, batch_stack_justification, **kwargs)
        # The steps of MTCNN.detect_faces; same-shape images need no padding (pad_param all 0).
        with tf.device(self._device):
            images_oshapes = np.stack([i.shape for i in images], axis=0)
            try:
                images_normalized = _normalized(tf.constant(np.stack(images, axis=0)))
                bboxes_batch = None
                for stage in self.stages:
                    bboxes_batch = stage(bboxes_batch=bboxes_batch, images_normalized=images_normalized,
                                         images_oshapes=images_oshapes, **kwargs)
            except tf.errors.InvalidArgumentError:  # mtcnn's "no faces"
                bboxes_batch = np.empty((0, 16))
            if postprocess and fit_to_image and len(bboxes_batch):
                bboxes_batch = limit_bboxes(bboxes_batch, images_shapes=images_oshapes,
                                            limit_landmarks=limit_boundaries_landmarks)
            result = to_json(bboxes_batch, images_count=len(images), output_as_width_height=box_format == "xywh",
                             input_as_width_height=False)
        return result if isinstance(image, list) else (result[0] if result else result)


def compiled_mtcnn(device: str = "CPU:0", first_block: str = "auto") -> MTCNN:
    """An ``mtcnn.MTCNN`` (faces and landmarks) whose three stages run compiled, each network's
    first block in the faster of its forms on this processor ("auto", timed as it loads) or the
    one named (:data:`FIRST_BLOCKS`)."""
    with tf.device(device):
        stages = [CompiledPNet(first_block), CompiledRNet(first_block), CompiledONet(first_block)]
        return CompiledMTCNN(stages=stages, device=device)
