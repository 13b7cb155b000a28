"""MTCNN's three stages with their networks compiled: the same networks, weights and steps as the
``mtcnn`` package, about twice as fast on a CPU.

``mtcnn`` 1.0 calls its Keras networks eagerly, op by op: every PReLU is several full-size
temporaries, and each pyramid level's area resize runs as a separate eager op. Here each network
runs as one ``tf.function`` with a fixed input signature (traced once per process, whatever the
image size), and PNet's per-level resize is inside the same function, so TensorFlow's graph
optimizer fuses convolution, bias and activation. Every step between the networks (proposal
generation, the package's own NMS, square boxes, patch extraction, landmark mapping) is the
package's code, called as the package calls it.

The outputs are those of ``mtcnn.MTCNN`` to float rounding: ``tests/test_faces.py`` checks the boxes,
confidences and landmarks against the package on real photos.

Imported lazily (it imports TensorFlow), by :func:`tasks.faces._shared_mtcnn`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from mtcnn import MTCNN
from mtcnn.stages import StageONet, StagePNet, StageRNet
from mtcnn.utils.bboxes import generate_bounding_box, resize_to_square, smart_nms_from_bboxes, upscale_bboxes
from mtcnn.utils.images import build_scale_pyramid

__all__ = ["CompiledONet", "CompiledPNet", "CompiledRNet", "compiled_mtcnn"]

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
            per_level.append(smart_nms_from_bboxes(proposals, threshold=nms_pnet1, method="union",
                                                   initial_sort=False))
        bboxes = np.concatenate(per_level, axis=0) if per_level else np.empty((0, 6))
        bboxes = smart_nms_from_bboxes(bboxes, threshold=nms_pnet2, method="union", initial_sort=True)
        return resize_to_square(bboxes)


class CompiledRNet(StageRNet):
    """StageRNet with RNet compiled; no proposals in, none out (mtcnn would raise and swallow it)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._model = _CompiledModel(self._model, 24)

    def __call__(self, images_normalized, bboxes_batch, **kwargs):
        if len(bboxes_batch) == 0:
            return np.empty((0, 6))
        return super().__call__(images_normalized=images_normalized, bboxes_batch=bboxes_batch, **kwargs)


class CompiledONet(StageONet):
    """StageONet with ONet compiled."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._model = _CompiledModel(self._model, 48)

    def __call__(self, images_normalized, bboxes_batch, **kwargs):
        if len(bboxes_batch) == 0:
            return np.empty((0, 16))  # box (6 columns) + 5 landmarks (10)
        return super().__call__(images_normalized=images_normalized, bboxes_batch=bboxes_batch, **kwargs)


def compiled_mtcnn(device: str = "CPU:0") -> MTCNN:
    """An ``mtcnn.MTCNN`` (faces and landmarks) whose three stages run compiled."""
    with tf.device(device):
        return MTCNN(stages=[CompiledPNet(), CompiledRNet(), CompiledONet()], device=device)
