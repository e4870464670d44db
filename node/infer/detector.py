"""Detector: YOLO-style ONNX output → ``node.domain.Box`` in stored-image pixels.

The graph (exported by ``node.train.detector``) has one output ``predictions`` of shape
``(n, 4 + C, A)``: for each of A anchor points a box centre x, y, width, height in *network
input* pixels and C per-class sigmoid scores, classes in ``DETECTOR_CLASSES`` order. Decoding
here — score threshold, class-wise NMS (``node.infer.nms``), mapping through the letterbox back
to source pixels — is ours, so the node needs neither torch nor ultralytics.

Scores are per class (multi-label): a cup and its hip joint share anchor points, and taking only
the arg-max class per anchor would hide one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.config import ModelsConfig
from node.domain import DETECTOR_CLASSES, JOINT_LABELS, Box
from node.infer.manifest import ManifestError
from node.infer.nms import batched_nms
from node.infer.preprocess import Letterbox, batched, make_batch
from node.infer.session import ModelSession, load_model

OUTPUT = "predictions"

#: The weakest hip-joint box kept as a *candidate*: used only where anatomy says a hip must be
#: (each side of an AP pelvis, see ``node.pipeline.add_joint_candidates``), never as a detection.
#: Measured on phantoms never used for training (analytic, 150 images): where no hip of a side is
#: in view (AP hip of the other side, lateral) the best box for that side never reached 0.02; on
#: other anatomy 3 of 100 reached 0.05 (none 0.2) — which is why a candidate must also sit where
#: the hip of an AP pelvis can be.
JOINT_CANDIDATE_FLOOR = 0.05
#: The second, zoomed-out look for hip joints: the image padded by this share of its size on
#: every side (with its median), so that a pelvis that fills the film is seen at a scale
#: closer to the training phantoms', where the hips take a smaller part of the field.
CONTEXT_PAD = 0.25


@dataclass(frozen=True)
class DetectorSettings:
    score_threshold: float = 0.25
    iou_threshold: float = 0.5
    max_detections: int = 50
    max_per_class: int | None = 4  # at most two hips, plus slack; hardware may be several


def decode_predictions(
    pred: np.ndarray,
    transform: Letterbox,
    classes: Sequence[str] = DETECTOR_CLASSES,
    settings: DetectorSettings = DetectorSettings(),
) -> list[Box]:
    """One image's ``(4 + C, A)`` raw predictions → boxes in source pixels, best first."""
    if pred.ndim != 2 or pred.shape[0] != 4 + len(classes):
        raise ValueError(f"expected (4 + {len(classes)}, anchors) predictions, got {pred.shape}")
    xywh = pred[:4].T.astype(np.float64)
    scores = pred[4:].T
    anchor_idx, class_idx = np.nonzero(scores >= settings.score_threshold)
    if anchor_idx.size == 0:
        return []
    conf = scores[anchor_idx, class_idx].astype(np.float64)
    c = xywh[anchor_idx]
    boxes = np.stack(
        [c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2], 1
    )
    keep = batched_nms(boxes, conf, class_idx, settings.iou_threshold, settings.max_per_class)
    keep = keep[: settings.max_detections]
    src = transform.to_source(boxes[keep])
    out = []
    for (x0, y0, x1, y1), k in zip(src, keep, strict=True):
        if x1 - x0 < 1.0 or y1 - y0 < 1.0:
            continue  # entirely in the padding
        out.append(
            Box(float(x0), float(y0), float(x1), float(y1), classes[int(class_idx[k])], float(conf[k]))
        )
    return out


def _pad(image: np.ndarray, share: float) -> np.ndarray:
    h, w = image.shape[:2]
    py, px = round(h * share), round(w * share)
    return np.pad(image, ((py, py), (px, px)), mode="constant", constant_values=float(np.median(image)))


def _unpad(boxes: list[Box], shape: tuple[int, ...], share: float) -> list[Box]:
    """Hip-joint boxes found on ``_pad(image, share)`` in the unpadded image's pixels (boxes that
    lie mostly in the padding are dropped)."""
    h, w = shape[:2]
    py, px = round(h * share), round(w * share)
    out = []
    for b in boxes:
        if b.label not in JOINT_LABELS:
            continue
        x0, y0 = max(b.x0 - px, 0.0), max(b.y0 - py, 0.0)
        x1, y1 = min(b.x1 - px, float(w)), min(b.y1 - py, float(h))
        if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < 0.5 * b.width * b.height:
            continue
        out.append(Box(x0, y0, x1, y1, b.label, b.score))
    return out


class DetectorModel:
    """A loaded detector; ``detect`` batches any number of 0..1 images."""

    def __init__(self, model: ModelSession, batch_size: int = 8, settings: DetectorSettings | None = None):
        m = model.manifest
        if m.task != "detector":
            raise ManifestError(f"{m.label}: task is {m.task!r}, not 'detector'")
        self.classes = tuple(m.output(OUTPUT).classes)
        if self.classes != DETECTOR_CLASSES:
            raise ManifestError(f"{m.label}: classes {list(self.classes)} != DETECTOR_CLASSES")
        self.model = model
        self.batch_size = batch_size
        self.context_pass = True  # the zoomed-out second look for hip joints (``CONTEXT_PAD``)
        self.settings = settings or DetectorSettings(
            score_threshold=m.threshold("score", 0.25), iou_threshold=m.threshold("iou", 0.5)
        )

    @classmethod
    def load(cls, name: str | Path, cfg: ModelsConfig) -> DetectorModel:
        return cls(load_model(name, cfg, task="detector"), batch_size=cfg.batch_size)

    @property
    def label(self) -> str:
        return self.model.manifest.label

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        return [boxes for boxes, _ in self.detect_with_candidates(images)]

    def detect_with_candidates(self, images: Sequence[np.ndarray]) -> list[tuple[list[Box], list[Box]]]:
        """Per image: the detections (score ≥ the manifest's threshold) and the weaker hip-joint
        boxes (``JOINT_CANDIDATE_FLOOR`` up to that threshold), from one decode. NMS is greedy by
        score, so decoding down to the floor leaves the detections exactly as a decode at the
        threshold gives them."""
        thr = self.settings.score_threshold
        low = DetectorSettings(min(thr, JOINT_CANDIDATE_FLOOR), self.settings.iou_threshold,
                               self.settings.max_detections, self.settings.max_per_class)
        results: list[tuple[list[Box], list[Box]]] = []
        for chunk in batched(images, self.batch_size):
            found = self._decode(chunk, low)
            wide = self._decode([_pad(im, CONTEXT_PAD) for im in chunk], low) if self.context_pass else None
            for i, boxes in enumerate(found):
                joints = [b for b in boxes if b.label in JOINT_LABELS]
                if wide is not None:
                    joints = self._merge_joints(joints, _unpad(wide[i], chunk[i].shape, CONTEXT_PAD))
                rest = [b for b in boxes if b.label not in JOINT_LABELS and b.score >= thr]
                results.append((
                    sorted(rest + [b for b in joints if b.score >= thr], key=lambda b: -b.score),
                    [b for b in joints if b.score < thr],
                ))
        return results

    def _decode(self, images: Sequence[np.ndarray], settings: DetectorSettings) -> list[list[Box]]:
        batch, transforms = make_batch(images, self.model.manifest.input)
        pred = self.model.run(batch)[OUTPUT]
        return [decode_predictions(pred[i], tr, self.classes, settings) for i, tr in enumerate(transforms)]

    def _merge_joints(self, a: list[Box], b: list[Box]) -> list[Box]:
        """Hip-joint boxes of both looks, class-wise NMS: where both saw a hip the stronger box stays."""
        allb = a + b
        if not allb:
            return []
        xyxy = np.array([[x.x0, x.y0, x.x1, x.y1] for x in allb])
        keep = batched_nms(xyxy, np.array([x.score for x in allb]), np.array([x.label for x in allb]),
                           self.settings.iou_threshold, self.settings.max_per_class)
        return [allb[int(k)] for k in keep]
