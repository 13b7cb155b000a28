"""MTCNN's three stages with their networks compiled: the same networks, weights and steps as the
``mtcnn`` package, about twice as fast on a CPU.

``mtcnn`` 1.0 calls its Keras networks eagerly, op by op: every PReLU is several full-size
temporaries, and each pyramid level's area resize runs as a separate eager op. Here each network
runs as one ``tf.function`` with a fixed input signature (traced once per process, whatever the
image size), and PNet's per-level resize is inside the same function, so TensorFlow's graph
optimizer fuses convolution, bias and activation. Every step between the networks (proposal
generation, the package's own NMS, square boxes, patch extraction, landmark mapping) is the
package's code, called as the package calls it, except PNet's NMS: :func:`smart_nms` makes the
package's decisions (bit for bit: the same float operations on the same pairs) without building
its N x N matrices, which cost more than PNet itself on large photos.

The outputs are those of ``mtcnn.MTCNN`` to float rounding: ``tests/test_faces.py`` checks the boxes,
confidences and landmarks against the package on real photos.

Imported lazily (it imports TensorFlow), by :func:`tasks.faces._shared_mtcnn`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from mtcnn import MTCNN
from mtcnn.stages import StageONet, StagePNet, StageRNet
from mtcnn.utils.bboxes import (generate_bounding_box, iou, limit_bboxes, nms, resize_to_square, sort_by_scores,
                                to_json, upscale_bboxes)
from mtcnn.utils.images import build_scale_pyramid

__all__ = ["CompiledMTCNN", "CompiledONet", "CompiledPNet", "CompiledRNet", "compiled_mtcnn", "nms_keep", "smart_nms"]

_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32)


class _CompiledModel:
    """A Keras network called through one traced graph for any batch size (inference mode)."""

    def __init__(self, model: tf.keras.Model, patch: int):
        self.model = model
        self._forward = tf.function(lambda x: model(x, training=False),
                                    input_signature=[tf.TensorSpec([None, patch, patch, 3], tf.float32)])

    def __call__(self, patches):
        return self._forward(tf.convert_to_tensor(patches, tf.float32))


class CompiledPNet(StagePNet):
    """StagePNet with each pyramid level (area resize + PNet) as one compiled call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        model = self._model

        @tf.function(input_signature=[_IMAGES, tf.TensorSpec([2], tf.int32)])
        def level(images, size):
            scaled = tf.image.resize(images, size, method=tf.image.ResizeMethod.AREA)
            return model(scaled, training=False)

        self._level = level

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
            size = tf.constant((shape * scale).astype(np.int32))
            bbox_reg, bbox_class = self._level(images, size)
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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._model = _CompiledModel(self._model, self.PATCH)

    def __call__(self, images_normalized, bboxes_batch, **kwargs):
        if len(bboxes_batch) == 0:
            return np.empty((0, self.COLUMNS))
        return super().__call__(images_normalized=images_normalized, bboxes_batch=bboxes_batch, **kwargs)


class CompiledRNet(_CompiledRefinement, StageRNet):
    PATCH, COLUMNS = 24, 6  # image, box (4), score


class CompiledONet(_CompiledRefinement, StageONet):
    PATCH, COLUMNS = 48, 16  # image, box (4), score, 5 landmarks (10)


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


def compiled_mtcnn(device: str = "CPU:0") -> MTCNN:
    """An ``mtcnn.MTCNN`` (faces and landmarks) whose three stages run compiled."""
    with tf.device(device):
        return CompiledMTCNN(stages=[CompiledPNet(), CompiledRNet(), CompiledONet()], device=device)
