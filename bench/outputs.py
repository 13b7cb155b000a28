"""Same outputs: what Darkroom stored against plain, unbatched calls on the original photo.

- labels: the stored top-1 against ``Classifier.predict([image])`` (one image per call, decoded as
  the worker decodes it for classification) with the same weights file, in this process; the
  largest difference of the stored top-k scores is kept too;
- faces: the stored faces against ``mtcnn.MTCNN().detect_faces(original)`` (MTCNN's defaults, faces
  under Darkroom's confidence threshold dropped): the same count, and each stored box matched to
  one of MTCNN's with IoU >= 0.9.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_MTCNN: Any = None


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + aw, bx + bw), min(ay + ah, by + bh)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def match_faces(stored: list, expected: list, threshold: float = 0.9) -> tuple[bool, float]:
    """(same count and every box matched at IoU >= threshold, the smallest matched IoU)."""
    if len(stored) != len(expected):
        return False, 0.0
    left = list(expected)
    worst = 1.0
    for box in stored:
        if not left:
            return False, 0.0
        best = max(left, key=lambda e: iou(box, e))
        worst = min(worst, iou(box, best))
        left.remove(best)
    return worst >= threshold, worst


def mtcnn_faces(image, min_confidence: float = 0.9) -> list[list[int]]:
    global _MTCNN
    if _MTCNN is None:
        from mtcnn import MTCNN

        _MTCNN = MTCNN()
    found = _MTCNN.detect_faces(image)
    return [[int(v) for v in f["box"]] for f in found if float(f["confidence"]) >= min_confidence]


def check(pipe, items: list[tuple[Path, dict]], *, label_model_key: str | None, face_items: set[str],
          min_confidence: float = 0.9) -> dict:
    """Compare stored outputs with unbatched calls.

    Args:
        pipe: a loaded :class:`bench.reference.Pipeline` (same model and weights file as Darkroom).
        items: (path, stored) with stored = ``Store.outputs`` of that photo.
        label_model_key: the model key Darkroom stored labels under (None: skip labels, e.g.
            per-process random weights, which no other process can reproduce).
        face_items: the paths (str) whose faces are checked (photos with people in them).
    """
    from tasks.imaging import decode

    labels_checked = labels_same = 0
    score_diff = 0.0
    faces_checked = faces_same = 0
    worst_iou = 1.0
    mismatches: list[str] = []
    for path, stored in items:
        image = decode(str(path))
        if label_model_key is not None:
            got = stored.get("labels", {}).get(label_model_key)
            if got:
                want = pipe.classify([pipe.decode_for_classify(path)])[0]
                labels_checked += 1
                if int(got[0][0]) == want[0]["class_id"]:
                    labels_same += 1
                else:
                    mismatches.append(f"{Path(path).name}: top-1 {got[0][0]} stored, {want[0]['class_id']} unbatched")
                want_scores = {lab["class_id"]: lab["score"] for lab in want}
                for class_id, score in got:
                    if class_id in want_scores:
                        score_diff = max(score_diff, abs(float(score) - want_scores[class_id]))
        if str(path) in face_items:
            stored_boxes = [f[:4] for f in stored.get("faces", [])]
            expected = mtcnn_faces(image, min_confidence)
            ok, worst = match_faces(stored_boxes, expected)
            faces_checked += 1
            faces_same += ok
            worst_iou = min(worst_iou, worst)
            if not ok:
                mismatches.append(f"{Path(path).name}: faces {stored_boxes} stored, MTCNN {expected}")
    return {
        "labels_checked": labels_checked, "labels_identical": labels_same, "max_score_diff": score_diff,
        "faces_checked": faces_checked, "faces_identical": faces_same,
        "faces_min_iou": worst_iou if faces_checked else None, "mismatches": mismatches[:10],
    }
