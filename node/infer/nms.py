"""Non-maximum suppression, class-wise, in NumPy (no torchvision in the node).

Boxes are ``(n, 4)`` x0, y0, x1, y1. Greedy NMS: keep the highest-scoring box, drop every box of
the same class overlapping it by more than ``iou_threshold``, repeat. Class-wise, because a cup
box legitimately sits inside a hip-joint box.
"""

from __future__ import annotations

import numpy as np

from node.domain import Box


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(n, 4)`` and ``(m, 4)`` boxes → ``(n, m)``; empty boxes have IoU 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.asarray(iou, dtype=np.float64)


def pair_iou(a: Box, b: Box) -> float:
    """IoU of two ``Box`` objects (``box_iou`` for one pair)."""
    return float(box_iou(np.array([[a.x0, a.y0, a.x1, a.y1]]), np.array([[b.x0, b.y0, b.x1, b.y1]]))[0, 0])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Indices of kept boxes, highest score first (ties broken by input order)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        overlap = box_iou(boxes[best][None, :], boxes[rest])[0]
        order = rest[overlap <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float = 0.5,
    max_per_class: int | None = None,
) -> np.ndarray:
    """Class-wise NMS: boxes of different classes never suppress each other.

    Returns kept indices sorted by descending score. ``max_per_class`` caps detections per class
    (e.g. one cup per hip is anatomy, not a tuning choice, but that is for the caller to decide).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    kept: list[np.ndarray] = []
    for cls in np.unique(classes):
        idx = np.flatnonzero(classes == cls)
        k = idx[nms(boxes[idx], scores[idx], iou_threshold)]
        if max_per_class is not None:
            k = k[:max_per_class]
        kept.append(k)
    if not kept:
        return np.zeros(0, dtype=np.int64)
    allk = np.concatenate(kept)
    return np.asarray(allk[np.argsort(-scores[allk], kind="stable")], dtype=np.int64)
