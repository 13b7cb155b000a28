"""tasks.faces: MTCNN face detection (lesson 7 and its bonus) on scikit-image's sample photos."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")

from tasks.faces import KEYPOINTS, Face, FaceDetector, crop  # noqa: E402

# The astronaut's face in skimage.data.astronaut() (512x512): roughly x 170..280, y 50..190.
ASTRONAUT_FACE_X = (170, 280)
ASTRONAUT_FACE_Y = (50, 190)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector().load()


def test_module_import_is_light():
    """Workers fork after importing tasks: no TensorFlow/mtcnn at import time."""
    import subprocess

    code = "import sys, tasks.faces; print(any(m in sys.modules for m in ('tensorflow', 'keras', 'mtcnn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lazy_load_and_identity():
    d = FaceDetector()
    assert not d.loaded
    assert d.name == "mtcnn"
    from importlib.metadata import version

    assert d.version == version("mtcnn")
    with pytest.raises(ValueError):
        FaceDetector(min_confidence=1.5)
    with pytest.raises(ValueError):
        FaceDetector(min_face_size=0)


def test_astronaut_has_one_face(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    x, y, w, h = face.box
    cx, cy = x + w / 2, y + h / 2
    assert ASTRONAUT_FACE_X[0] <= cx <= ASTRONAUT_FACE_X[1]
    assert ASTRONAUT_FACE_Y[0] <= cy <= ASTRONAUT_FACE_Y[1]
    assert 40 <= w <= 150 and 40 <= h <= 160  # a head, not the whole photo
    assert face.confidence >= 0.9
    assert set(face.keypoints) == set(KEYPOINTS)
    # Eyes above the mouth, left eye (image left) left of the right eye, all inside the box.
    (lx, ly), (rx, ry) = face.keypoints["left_eye"], face.keypoints["right_eye"]
    assert lx < rx
    assert max(ly, ry) < min(face.keypoints["mouth_left"][1], face.keypoints["mouth_right"][1])
    for px, py in face.keypoints.values():
        assert x <= px <= x + w and y <= py <= y + h


def test_to_dict_is_plain_json(detector, astronaut):
    face = detector.detect(astronaut)[0]
    d = face.to_dict()
    assert type(d["confidence"]) is float
    assert all(type(v) is int for v in d["box"])
    assert all(type(c) is int for point in d["keypoints"].values() for c in point)
    again = json.loads(json.dumps(d))
    assert again == d
    assert Face.from_dict(again) == face


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_no_faces(detector, name):
    assert detector.detect(getattr(skimage_data, name)()) == []


def test_collage_has_four_faces_in_order(detector, collage):
    faces = detector.detect(collage)
    assert len(faces) == 4
    centres = [(f.box[0] + f.box[2] / 2, f.box[1] + f.box[3] / 2) for f in faces]
    # One face per 160x160 tile.
    tiles = {(int(cx // 160), int(cy // 160)) for cx, cy in centres}
    assert tiles == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # Deterministic order: left to right, then top to bottom.
    assert [(f.box[0], f.box[1]) for f in faces] == sorted((f.box[0], f.box[1]) for f in faces)
    assert [tuple(int(c // 160) for c in centre) for centre in centres] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_boxes_are_clipped_to_the_image(detector, astronaut):
    # The face cut in half by the top and left edges: whatever is found lies inside the image.
    part = np.ascontiguousarray(astronaut[120:, 220:])
    for face in FaceDetector(min_confidence=0.0).load().detect(part):
        x, y, w, h = face.box
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= part.shape[1] and y + h <= part.shape[0]
        for px, py in face.keypoints.values():
            assert 0 <= px < part.shape[1] and 0 <= py < part.shape[0]


def test_min_confidence_filters(detector, astronaut):
    best = detector.detect(astronaut)[0].confidence
    lenient = FaceDetector(min_confidence=0.0).load()
    loose = lenient.detect(astronaut)
    assert len(loose) >= 1
    assert any(f.box == detector.detect(astronaut)[0].box for f in loose)
    assert FaceDetector(min_confidence=min(1.0, best + 1e-4)).detect(astronaut) == []
    for threshold in (0.0, 0.5, 0.9):
        faces = FaceDetector(min_confidence=threshold).load().detect(astronaut)
        assert all(f.confidence >= threshold for f in faces)
        assert len(faces) == sum(f.confidence >= threshold for f in loose)


def test_min_face_size(astronaut, collage):
    # The astronaut's face is ~85x105 px; the collage's are ~75x95 px.
    assert len(FaceDetector(min_face_size=40).detect(astronaut)) == 1
    assert FaceDetector(min_face_size=300).detect(astronaut) == []
    assert len(FaceDetector(min_face_size=60).detect(collage)) == 4
    assert FaceDetector(min_face_size=120).detect(collage) == []
    # Small faces need a small min_face_size: at 12 px MTCNN still finds the big ones.
    assert len(FaceDetector(min_face_size=12).detect(astronaut)) == 1


def test_large_min_face_size_does_not_break_mtcnn():
    """mtcnn 1.0's pyramid goes below its 12 px window for min_face_size > ~23 (ValueError, or an
    error it swallows as "no faces"); the detector must keep working for every size."""
    from tasks.faces import _safe_min_face_size

    assert _safe_min_face_size(20, 512, 512) == 20
    assert 20 <= _safe_min_face_size(300, 512, 512) < 300
    rng = np.random.default_rng(0)
    detector = FaceDetector(min_confidence=0.0, min_face_size=100)
    for side in (12, 13, 30, 97, 333):
        assert isinstance(detector.detect(rng.integers(0, 256, (side, side + 7, 3), dtype=np.uint8)), list)


def test_crop_shape_equals_box(detector, astronaut):
    face = detector.detect(astronaut)[0]
    x, y, w, h = face.box
    patch = crop(astronaut, face)
    assert patch.shape == (h, w, 3)
    np.testing.assert_array_equal(patch, astronaut[y : y + h, x : x + w])
    grown = crop(astronaut, face, margin=0.25)
    assert grown.shape[0] > h and grown.shape[1] > w
    # Clipped at the image edges.
    edge = Face(box=(500, 500, 40, 40), confidence=1.0, keypoints={})
    assert crop(astronaut, edge, margin=0.5).shape == (32, 32, 3)
    with pytest.raises(ValueError):
        crop(astronaut, face, margin=-0.1)


def test_detect_batch_equals_detect(detector, astronaut, collage):
    images = [astronaut, collage, skimage_data.coffee(), astronaut[::-1].copy(), collage]
    batched = detector.detect_batch(images)
    assert len(batched) == len(images)
    for image, faces in zip(images, batched):
        single = detector.detect(image)
        assert len(faces) == len(single)
        for a, b in zip(faces, single):
            np.testing.assert_allclose(a.box, b.box, atol=1)
            assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
    assert detector.detect_batch([]) == []


def test_input_formats(detector, astronaut):
    gray = skimage_data.camera()  # 2-D uint8
    assert isinstance(detector.detect(gray), list)
    rgba = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert [f.box for f in detector.detect(rgba)] == [f.box for f in detector.detect(astronaut)]
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == []  # smaller than MTCNN's window
    with pytest.raises(TypeError):
        detector.detect(astronaut.astype(np.float32) / 255)
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 5), np.uint8))


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


@pytest.mark.parametrize("side", [480, 800, 1200, 1600])
def test_downscaled_search_loses_no_face_found_at_full_resolution(detector, astronaut, collage, side):
    """DARKROOM_FACE_MAX_SIDE (1024): large photos are searched smaller. On the real face photos
    packages ship, at the corpus's sizes (480-1600 px), every face found at full resolution is found
    again, in the same place (IoU >= 0.9), keypoints included."""
    from PIL import Image

    fast = FaceDetector(max_side=1024)
    for photo in (astronaut, collage):
        h, w = photo.shape[:2]
        scale = side / max(h, w)
        big = np.asarray(Image.fromarray(photo).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
        full, quick = detector.detect(big), fast.detect(big)
        assert len(quick) == len(full) >= 1
        for f in full:  # the same face is the one that overlaps most (order can swap in a column)
            q = max(quick, key=lambda c: _iou(f.box, c.box))
            assert _iou(f.box, q.box) >= 0.9, (f.box, q.box)
            assert set(q.keypoints) == set(f.keypoints)
            assert all(abs(q.keypoints[k][0] - f.keypoints[k][0]) <= 0.05 * f.box[2] for k in f.keypoints)


def test_max_side_must_be_sensible():
    with pytest.raises(ValueError, match="max_side"):
        FaceDetector(max_side=10)


def _photos_for_equivalence(astronaut, collage):
    """Real face and no-face photos, at their own sizes and at the corpus's larger ones."""
    from PIL import Image

    def at(photo, side):
        h, w = photo.shape[:2]
        scale = side / max(h, w)
        return np.asarray(Image.fromarray(photo).resize((round(w * scale), round(h * scale)), Image.LANCZOS))

    camera = np.stack([skimage_data.camera()] * 3, axis=-1)
    return {
        "astronaut": astronaut, "collage": collage, "camera": camera, "coffee": skimage_data.coffee(),
        "astronaut-1600": at(astronaut, 1600), "camera-1100": at(camera, 1100), "collage-900": at(collage, 900),
        "chelsea-1300": at(skimage_data.chelsea(), 1300), "tiny": astronaut[100:130, 200:260].copy(),
    }


@pytest.mark.parametrize("form", ["auto", "s2d", "plain"])
def test_compiled_mtcnn_gives_the_packages_faces(detector, astronaut, collage, form, monkeypatch):
    """tasks.mtcnn_compiled runs MTCNN's networks compiled, each first block in either form; boxes,
    confidences and landmarks must be those of the mtcnn package as shipped (float rounding
    aside), faces and no-faces alike."""
    from tasks.mtcnn_compiled import compiled_mtcnn

    assert detector.compiled
    shipped = FaceDetector(compiled=False).load()
    assert shipped._mtcnn is not detector._mtcnn
    if form != "auto":  # the same detector, its networks in the form named
        detector = FaceDetector().load()
        monkeypatch.setattr(detector, "_mtcnn", compiled_mtcnn(first_block=form))
    found_any = 0
    for name, photo in _photos_for_equivalence(astronaut, collage).items():
        want, got = shipped.detect(photo), detector.detect(photo)
        assert len(got) == len(want), name
        found_any += len(want)
        for a, b in zip(got, want):
            assert np.abs(np.subtract(a.box, b.box)).max() <= 1, (name, a.box, b.box)
            assert a.confidence == pytest.approx(b.confidence, abs=1e-4), name
            assert a.keypoints.keys() == b.keypoints.keys()
            for k in a.keypoints:
                assert np.abs(np.subtract(a.keypoints[k], b.keypoints[k])).max() <= 1, (name, k)
    assert found_any >= 1 + 4 + 1 + 1 + 1 + 4  # the photos with people in them were really searched
    # Same-shape batches too (MTCNN's batched path).
    pair = [astronaut, astronaut[:, ::-1].copy()]
    assert [[f.box for f in fs] for fs in detector.detect_batch(pair)] == \
        [[f.box for f in fs] for fs in shipped.detect_batch(pair)]


def test_pnet_nms_makes_the_packages_decisions():
    """tasks.mtcnn_compiled.smart_nms skips mtcnn's N x N matrices; its output must be the package's,
    bit for bit, for either method, any threshold, sorted or not, several images, odd boxes."""
    pytest.importorskip("mtcnn")
    from mtcnn.utils.bboxes import smart_nms_from_bboxes

    from tasks.mtcnn_compiled import smart_nms

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(0, 300))
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(-5, 60, (n, 2)) if trial % 3 == 0 else rng.uniform(5, 60, (n, 2))  # some degenerate
        if trial % 4 == 0:  # integer corners: ties and boxes that only touch
            xy, wh = np.round(xy), np.round(wh)
        boxes = np.column_stack([rng.integers(0, 2, n), xy, xy + wh, rng.uniform(0, 1, n)])
        for method in ("union", "min"):
            for threshold in (0.0, 0.5, 0.7):
                for initial_sort in (True, False):
                    with np.errstate(divide="ignore", invalid="ignore"):
                        want = smart_nms_from_bboxes(boxes.copy(), threshold, method=method, initial_sort=initial_sort)
                    got = smart_nms(boxes.copy(), threshold, method=method, initial_sort=initial_sort)
                    assert np.array_equal(got, want), (trial, method, threshold, initial_sort)


@pytest.mark.parametrize("form", ["s2d", "plain"])
def test_first_block_forms_give_the_networks_outputs(detector, form):
    """tasks.mtcnn_compiled computes each network's first block (conv 3x3, PReLU, max pool) on 2x2
    space-to-depth input ("s2d") or as the model's own layers ("plain"), with its PReLUs one pass
    shorter and its heads merged: PNet at every parity of height and width (the "same" pool's
    partial last window), RNet and ONet (3x3 pools) on their patches, in chunks: the Keras models'
    outputs to float rounding."""
    import tensorflow as tf

    from tasks.mtcnn_compiled import _CompiledModel, _FastNetwork

    pnet, rnet, onet = detector._mtcnn.stages
    fast = _FastNetwork(pnet._model, heads=2, first_block=form)
    assert (fast.first is not None) == (form == "s2d")
    rng = np.random.default_rng(0)
    for height in (12, 13, 14, 15, 24, 37):
        for width in (12, 13, 30, 31):
            x = tf.constant(rng.uniform(-1, 1, (2, height, width, 3)).astype(np.float32))
            want, got = pnet._model(x), fast(x)
            assert len(got) == len(want) == 2
            for a, b in zip(got, want):
                assert a.shape == b.shape, (height, width)
                np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=0)
    for stage, patch, outputs in ((rnet, 24, 2), (onet, 48, 3)):
        keras_model = stage._model.model
        compiled = _CompiledModel(keras_model, patch, outputs, sample=4, first_block=form)
        assert compiled.first_block == form
        x = tf.constant(rng.uniform(-1, 1, (PATCHES, patch, patch, 3)).astype(np.float32))
        want, got = keras_model(x), compiled(x)  # more patches than one chunk
        assert len(got) == len(want) == outputs
        for a, b in zip(got, want):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-5, rtol=0)


def test_first_block_form_is_chosen_by_timing_or_named():
    from tasks.mtcnn_compiled import FIRST_BLOCKS, compiled_mtcnn

    chosen = compiled_mtcnn()  # "auto": each network's faster form on this processor
    assert all(stage.first_block in FIRST_BLOCKS for stage in chosen.stages)
    named = compiled_mtcnn(first_block="s2d")
    assert [stage.first_block for stage in named.stages] == ["s2d"] * 3
    with pytest.raises(ValueError, match="first_block"):
        compiled_mtcnn(first_block="fast")


PATCHES = 300  # RNet and ONet take at most tasks.mtcnn_compiled.PATCH_CHUNK (128) at a time


@pytest.mark.parametrize(("height", "width"), [(100, 80), (101, 80), (12, 500), (13, 40)])
def test_pnet_strips_cover_the_level(height, width):
    from tasks.mtcnn_compiled import pnet_strips

    out_rows = (height - 1) // 2 - 4
    for budget in (1, 200, 1000, 5000, 1 << 30):
        strips = pnet_strips(height, width, budget)
        assert strips[0][0] == 0 and strips[-1][1] == height
        covered = 0
        for start, stop in strips:
            assert start % 2 == 0 and start == 2 * covered  # starts where the pooling does
            rows = (stop - start - 1) // 2 - 4  # this strip's output rows
            assert rows >= 1
            covered += rows
        assert covered == out_rows, (budget, strips)


def test_pnet_in_strips_finds_the_same_faces(detector, astronaut, collage, monkeypatch):
    """A level run in many narrow strips gives the faces of the whole level in one go."""
    import tasks.mtcnn_compiled as compiled

    wide = {name: detector.detect(photo) for name, photo in (("astronaut", astronaut), ("collage", collage))}
    monkeypatch.setattr(compiled, "STRIP_PIXELS", 4000)
    assert compiled.pnet_strips(256, 256) != [(0, 256)]
    for name, photo in (("astronaut", astronaut), ("collage", collage)):
        got = detector.detect(photo)
        assert len(got) == len(wide[name]) >= 1
        for a, b in zip(got, wide[name]):
            assert np.abs(np.subtract(a.box, b.box)).max() <= 1, name
            assert a.confidence == pytest.approx(b.confidence, abs=1e-5)


def test_prelu_and_merged_heads_are_the_keras_layers():
    """tasks.mtcnn_compiled's PReLU (one pass fewer) gives Keras's values exactly, for slopes below
    0, between 0 and 1, and above 1 (MTCNN has all three); its merged output layers give each head's
    own outputs, softmax included."""
    import keras
    import tensorflow as tf

    from tasks.mtcnn_compiled import _Heads, _prelu, _prelu_alpha

    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(0, 2, (3, 7, 9, 5)).astype(np.float32))
    x = tf.concat([x, tf.zeros([3, 7, 9, 1])], axis=-1)  # zeros too
    layer = keras.layers.PReLU(shared_axes=[1, 2])
    layer.build(x.shape)
    layer.set_weights([np.array([-1.3, -0.2, 0.0, 0.4, 1.0, 1.7], np.float32).reshape(1, 1, 6)])
    assert np.array_equal(_prelu(x, _prelu_alpha(layer)).numpy(), layer(x).numpy())

    inputs = keras.Input((7, 9, 6))
    convs = [keras.layers.Conv2D(4, 1), keras.layers.Conv2D(2, 1, activation="softmax")]
    for conv in convs:
        conv(inputs)
    heads = _Heads(convs)
    for got, conv in zip(heads(x), convs):
        np.testing.assert_allclose(got.numpy(), conv(x).numpy(), atol=1e-6, rtol=0)
    flat = tf.reshape(x, [3, -1])
    dense = [keras.layers.Dense(4), keras.layers.Dense(10), keras.layers.Dense(2, activation="softmax")]
    for d in dense:
        d.build(flat.shape)
    for got, d in zip(_Heads(dense)(flat), dense):
        np.testing.assert_allclose(got.numpy(), d(flat).numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="1x1"):
        wide = keras.layers.Conv2D(2, 3)
        wide(inputs)
        _Heads([wide, convs[0]])
