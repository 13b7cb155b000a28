"""Face detection with MTCNN (course lesson 7 and its bonus: every face in a photo, not just the first).

Pure vision code: RGB arrays in, :class:`Face` records (plain data) out. The detector is the
``mtcnn`` package (https://github.com/ipazc/mtcnn); its three small networks' weights ship inside
the package, so nothing is downloaded. TensorFlow and ``mtcnn`` are imported lazily, in
:meth:`FaceDetector.load`, so that worker processes can fork after importing this module and
load the networks once per process.

Usage::

    detector = FaceDetector(min_confidence=0.9, min_face_size=20)
    faces = detector.detect(rgb_uint8_array)          # list[Face], deterministic order
    heads = [crop(rgb_uint8_array, face, margin=0.2) for face in faces]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from tasks.base import InferenceModel, ModelUnavailable, Output, one_line
from tasks.draw import draw_boxes
from tasks.imaging import fit_within

__all__ = ["BOXED", "KEYPOINTS", "Face", "FaceDetector", "crop", "detect_faces"]

#: The five landmarks MTCNN gives for every face, in a fixed order.
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# MTCNN's own default threshold for its last stage (ONet); see FaceDetector._detect_group.
_MTCNN_ONET_THRESHOLD = 0.8
# MTCNN's default image-pyramid step (StagePNet's scale_factor).
_MTCNN_SCALE_FACTOR = 0.709


@dataclass(frozen=True)
class Face:
    """One detected face.

    ``box`` is ``(x, y, width, height)`` in pixels, clipped to the image; ``confidence`` is
    MTCNN's face probability in [0, 1]; ``keypoints`` maps each name of :data:`KEYPOINTS` to an
    ``(x, y)`` pixel inside the image.
    """

    box: tuple[int, int, int, int]
    confidence: float
    keypoints: dict[str, tuple[int, int]]

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        """The box as ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive (numpy slice bounds)."""
        x, y, w, h = self.box
        return (x, y, x + w, y + h)

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def to_dict(self) -> dict[str, Any]:
        """Plain ints/floats/lists only: ``json.dumps`` takes it as is."""
        return {
            "box": [int(v) for v in self.box],
            "confidence": float(self.confidence),
            "keypoints": {name: [int(x), int(y)] for name, (x, y) in self.keypoints.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Face:
        """The inverse of :meth:`to_dict`."""
        x, y, w, h = (int(v) for v in data["box"])
        return cls(
            box=(x, y, w, h),
            confidence=float(data["confidence"]),
            keypoints={str(k): (int(v[0]), int(v[1])) for k, v in data.get("keypoints", {}).items()},
        )


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate one image and return it as a C-contiguous HxWx3 uint8 array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"expected a uint8 image (pixel values 0..255), got dtype {arr.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8) (multiply [0, 1] floats by 255 first)"
        )
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ValueError(f"expected an HxWx3 RGB image (or HxW / HxWx1 / HxWx4), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


class FaceDetector(InferenceModel):
    """MTCNN face detector, loaded lazily and once.

    ``min_confidence``: faces MTCNN is less sure of are dropped. ``min_face_size``: the smallest
    face (pixels) MTCNN looks for; passed to MTCNN, which builds its image pyramid from it (smaller
    values find smaller faces and cost more time). mtcnn 1.0's pyramid breaks for values above
    ~23 px (see :func:`_safe_min_face_size`): MTCNN is then given the largest safe value and faces
    whose box's longer side is under ``min_face_size`` are dropped afterwards. ``device``:
    TensorFlow device MTCNN runs on (MTCNN's default, ``"CPU:0"``, when None; e.g. ``"GPU:0"``).

    Results are deterministic for a given image: faces are ordered left to right (box ``x``), then
    top to bottom (box ``y``). :meth:`detect_batch` runs images of the same shape as one batch
    through MTCNN and gives the same faces as :meth:`detect` on each image.
    """

    name = "mtcnn"

    def __init__(self, min_confidence: float = 0.9, min_face_size: int = 20, device: str | None = None,
                 max_side: int | None = None, compiled: bool = True):
        super().__init__()
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if int(min_face_size) < 1:
            raise ValueError(f"min_face_size must be a positive number of pixels, got {min_face_size}")
        self.min_confidence = float(min_confidence)
        self.min_face_size = int(min_face_size)
        self.device = device or "CPU:0"
        if max_side is not None and int(max_side) < 64:
            raise ValueError(f"max_side must be at least 64 pixels (or None for full resolution), got {max_side}")
        #: Larger images are searched at this longest side, and the faces mapped back: MTCNN's cost
        #: grows with the pixel count, and faces big enough to matter survive the downscale.
        self.max_side = int(max_side) if max_side else None
        #: Run MTCNN's networks compiled (:mod:`tasks.mtcnn_compiled`: the package's steps, same
        #: outputs, about twice as fast on a CPU); False runs the ``mtcnn`` package as shipped.
        self.compiled = bool(compiled)
        self._mtcnn: Any = None

    def __repr__(self) -> str:
        return (
            f"FaceDetector(min_confidence={self.min_confidence}, min_face_size={self.min_face_size}, "
            f"device={self.device!r}, loaded={self.loaded})"
        )

    @property
    def version(self) -> str:
        """The installed ``mtcnn`` package version (results are keyed by name + version)."""
        try:
            return version("mtcnn")
        except PackageNotFoundError:
            return "unknown"

    def _load(self) -> None:
        """Import TensorFlow + mtcnn and build the three networks (:meth:`load` calls it once); the
        networks are built once per process and device and shared by every FaceDetector."""
        self._mtcnn = _shared_mtcnn(self.device, self.compiled)

    def predict(self, images: list[np.ndarray]) -> list[list[Face]]:
        return self.detect_batch(images)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one HxWx3 uint8 RGB image (grayscale and RGBA are converted)."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each image; one list per image, in input order.

        Images of the same shape go through MTCNN together as one batch (MTCNN pads mixed shapes
        to the largest one and builds one pyramid for all of them, which would change results).
        """
        arrays = [_as_rgb_uint8(image) for image in images]
        if self.max_side is not None and any(max(a.shape[:2]) > self.max_side for a in arrays):
            return [self._detect_downscaled(a) if max(a.shape[:2]) > self.max_side else self.detect_batch_full([a])[0]
                    for a in arrays]
        return self.detect_batch_full(arrays)

    def _detect_downscaled(self, image: np.ndarray) -> list[Face]:
        """Search a smaller copy (longest side ``max_side``) and map the faces back to ``image``."""
        height, width = image.shape[:2]
        small = fit_within(image, self.max_side)
        sx, sy = width / small.shape[1], height / small.shape[0]
        # min_face_size counts in the small copy's pixels: that is where the time is saved (MTCNN's
        # work grows with (image side / smallest face)^2), and why faces smaller than
        # min_face_size x (side / max_side) in the original are not looked for.
        found = self.detect_batch_full([small])[0]
        faces = []
        for f in found:
            x, y, w, h = f.box
            x0, y0 = min(int(round(x * sx)), width - 1), min(int(round(y * sy)), height - 1)
            x1, y1 = min(int(round((x + w) * sx)), width), min(int(round((y + h) * sy)), height)
            keypoints = {k: (min(int(round(px * sx)), width - 1), min(int(round(py * sy)), height - 1))
                         for k, (px, py) in f.keypoints.items()}
            faces.append(Face(box=(x0, y0, x1 - x0, y1 - y0), confidence=f.confidence, keypoints=keypoints))
        return faces

    def detect_batch_full(self, arrays: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each image at full resolution (``max_side`` ignored)."""
        arrays = [_as_rgb_uint8(image) for image in arrays]
        results: list[list[Face]] = [[] for _ in arrays]
        if not arrays:
            return results
        self.load()
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, arr in enumerate(arrays):
            groups.setdefault(arr.shape, []).append(index)
        for shape, indices in groups.items():
            height, width = shape[:2]
            if min(height, width) < 12:  # smaller than MTCNN's 12x12 proposal window: no face fits.
                continue
            found, used_size = self._detect_group([arrays[i] for i in indices])
            # When MTCNN could not be given min_face_size (see _safe_min_face_size), smaller faces
            # are dropped here by their box's longer side instead.
            min_side = self.min_face_size if used_size < self.min_face_size else 0
            for i, raw_faces in zip(indices, found):
                results[i] = self._to_faces(raw_faces, width, height, min_side)
        return results

    def _detect_group(self, arrays: list[np.ndarray]) -> tuple[list[list[dict]], int]:
        """Run MTCNN on same-shape images; returns its faces and the min_face_size it was given."""
        height, width = arrays[0].shape[:2]
        min_face_size = _safe_min_face_size(self.min_face_size, width, height)
        # MTCNN's last stage drops boxes below its threshold (0.8) before we see them; lowering it
        # to min_confidence makes min_confidence < 0.8 meaningful. Above 0.8 we filter afterwards,
        # which keeps the same faces (NMS never lets a weaker box suppress a stronger one).
        found = self._mtcnn.detect_faces(
            # The compiled detector takes uint8 pixels as they are; mtcnn's own path wants floats.
            list(arrays) if self.compiled else [arr.astype(np.float32) for arr in arrays],
            min_face_size=min_face_size,
            threshold_onet=min(_MTCNN_ONET_THRESHOLD, self.min_confidence),
            box_format="xywh",
            fit_to_image=True,
        )
        if len(found) != len(arrays):  # defensive: mtcnn returns one list per input image
            raise RuntimeError(f"mtcnn returned {len(found)} results for {len(arrays)} images")
        return found, min_face_size

    def _to_faces(self, raw_faces: list[dict], width: int, height: int, min_side: int = 0) -> list[Face]:
        faces: list[Face] = []
        for raw in raw_faces:
            confidence = float(raw["confidence"])
            if confidence < self.min_confidence:
                continue
            x, y, w, h = (int(round(float(v))) for v in raw["box"])
            x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
            x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
            if x1 <= x0 or y1 <= y0 or max(x1 - x0, y1 - y0) < min_side:
                continue
            keypoints = {}
            for name in KEYPOINTS:
                point = raw.get("keypoints", {}).get(name)
                if point is None:
                    continue
                px, py = (int(round(float(v))) for v in point)
                keypoints[name] = (min(max(px, 0), width - 1), min(max(py, 0), height - 1))
            faces.append(Face(box=(x0, y0, x1 - x0, y1 - y0), confidence=confidence, keypoints=keypoints))
        faces.sort(key=lambda f: (f.box[0], f.box[1], f.box[2], f.box[3], -f.confidence))
        return faces


_MTCNN_BY_DEVICE: dict[tuple[str, bool], Any] = {}
_MTCNN_LOCK = threading.Lock()


def _shared_mtcnn(device: str, compiled: bool = True) -> Any:
    with _MTCNN_LOCK:
        if (device, compiled) in _MTCNN_BY_DEVICE:
            return _MTCNN_BY_DEVICE[device, compiled]
        try:
            from mtcnn import MTCNN

            if compiled:
                from tasks.mtcnn_compiled import compiled_mtcnn
        except ImportError as exc:
            raise ModelUnavailable(
                f"face detector: the mtcnn package cannot be imported ({one_line(exc, 300, with_type=True)}); "
                "install it into this environment: pip install 'mtcnn>=1,<2'"
            ) from exc
        try:
            if compiled:
                detector = compiled_mtcnn(device)
            else:
                detector = MTCNN(stages="face_and_landmarks_detection", device=device)
        except Exception as exc:  # a broken install: weights missing from the package, ...
            raise ModelUnavailable(
                f"face detector: MTCNN could not be built on {device} ({one_line(exc, 300, with_type=True)}); its weights "
                "ship inside the mtcnn package (mtcnn/assets/weights/*.lz4): reinstall it with "
                "pip install --force-reinstall 'mtcnn>=1,<2'"
            ) from exc
        _MTCNN_BY_DEVICE[device, compiled] = detector
        return detector


def _safe_min_face_size(min_face_size: int, width: int, height: int) -> int:
    """The largest value <= ``min_face_size`` for which MTCNN's image pyramid stays usable.

    mtcnn 1.0 builds its pyramid with a number of levels that depends only on the image size and
    starts it at scale 12 / min_face_size; for min_face_size above ~23 px its last levels shrink
    the image below PNet's 12x12 window, and MTCNN then fails (a ValueError, or an error it
    swallows as "no faces"). Levels are computed exactly as mtcnn does (sizes truncated)."""
    from mtcnn.utils.images import build_scale_pyramid

    size = int(min_face_size)
    while size > 1:
        scales = build_scale_pyramid(width, height, min_face_size=size, scale_factor=_MTCNN_SCALE_FACTOR)
        if len(scales) == 0 or int(min(width, height) * float(np.min(scales))) >= 12:
            break
        size -= 1
    return size


def crop(image: np.ndarray, face: Face, margin: float = 0.0) -> np.ndarray:
    """The face's box cut out of ``image`` (a copy), grown by ``margin`` times the box size on each
    side and clipped to the image. ``margin=0`` gives exactly ``box``'s height x width."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    arr = np.asarray(image)
    if arr.ndim < 2:
        raise ValueError(f"expected an image array (HxW or HxWxC), got shape {arr.shape}")
    height, width = arr.shape[:2]
    x, y, w, h = face.box
    dx, dy = int(round(w * margin)), int(round(h * margin))
    x0, y0 = max(x - dx, 0), max(y - dy, 0)
    x1, y1 = min(x + w + dx, width), min(y + h + dy, height)
    return arr[y0:max(y1, y0), x0:max(x1, x0)].copy()


#: When the photo with its faces boxed is stored: when a face was found (a photo without one would
#: be stored again unchanged), for every photo, or never.
BOXED = ("found", "always", "never")


def detect_faces(model: FaceDetector, images: list[np.ndarray], *, crops: bool = True,
                 boxed: str = "found") -> list[Output]:
    """The pipeline's step (lesson 7 and its bonus): each image's faces as plain data, the image with
    every face boxed and its landmarks dotted (artifact ``faces_boxed``, as ``boxed`` says: see
    :data:`BOXED`), and one crop per face (``face_crop``, its idx the face's index) when ``crops``."""
    if boxed not in BOXED:
        raise ValueError(f"boxed must be one of {', '.join(BOXED)}; got {boxed!r}")
    outputs = []
    for image, faces in zip(images, model.detect_batch(images)):
        pictures: list[tuple[str, int, np.ndarray]] = []
        if boxed == "always" or (boxed == "found" and faces):
            pictures.append(("faces_boxed", 0, draw_boxes(image, [f.box for f in faces], [f.keypoints for f in faces])))
        if crops:
            pictures += [("face_crop", i, crop(image, face)) for i, face in enumerate(faces)]
        outputs.append(Output([face.to_dict() for face in faces], pictures))
    return outputs
