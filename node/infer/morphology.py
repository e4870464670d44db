"""Hip morphology flags from joint crops: ONNX runtime, ensemble, class-activation maps.

The model (trained by ``hipnode train morphology``, see ``node/train/morphology.py``) is a timm
backbone followed by a per-position LayerNorm, global average pooling and one linear layer with
five outputs: the four flags of ``node.domain.MORPHOLOGY_FLAGS`` and patient sex (an auxiliary
head that stabilises training, as in the paper; reported but never a finding). The ONNX graph has
two outputs, ``logits`` (N, 5) and ``features`` (N, C, h, w) — the normalised feature map that is
pooled into the linear head. Because the head is *exactly* "average pool, then linear", the class
activation map ``CAM_k = W_k · F`` has the logit as its spatial mean (minus the bias): the heatmap
is the model's own evidence, not a gradient approximation, and needs no gradients at run time.
The head's weights ``W`` (K × C) and bias live in the manifest (``cam.weight`` / ``cam.bias``);
at load time they are checked against the graph by recomputing the logits from the features of
a probe input, so a manifest that does not belong to its ``model.onnx`` is refused.

Crops come from the detector's ``hip_joint_right`` / ``hip_joint_left`` boxes (``crop_joint``
adds a margin and makes the crop square, padding with edge pixels at the image border). Joints
whose crop overlaps hardware (``cup``, ``stem``, ``other_hardware`` boxes) are not scored — the
paper removed them from its data, so the model has never seen them — and get a refusal reason.

This module imports onnxruntime and numpy (and OpenCV for resizing) only: no torch in the node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from node.config import ModelsConfig
from node.domain import MORPHOLOGY_FLAGS, Box, MorphologyFlag, Side, best_joint_boxes
from node.imageops import subsampled_percentile
from node.infer.manifest import InputSpec, Manifest, ManifestError
from node.infer.preprocess import prepare
from node.infer.session import ModelSession, load_model

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

TASK = "morphology"
SEX_OUTPUT = "sex_female"
OUTPUT_CLASSES: tuple[str, ...] = (*MORPHOLOGY_FLAGS, SEX_OUTPUT)
LOGITS_OUTPUT = "logits"
FEATURES_OUTPUT = "features"

HARDWARE_LABELS: frozenset[str] = frozenset({"cup", "stem", "other_hardware"})

DEFAULT_MARGIN = 0.15
"""Fraction of the joint box's longer side added on every side of the crop: the detector's
box is tight around the joint, and the signs (the ischial spine medially, the head–neck junction
laterally) sit at its edges."""

HARDWARE_OVERLAP_FRACTION = 0.05
"""A joint is skipped when this fraction of a hardware box's area lies inside its crop. Not 0:
a stem box reaching the corner of the contralateral crop, or a sliver of detector jitter, should
not cost a hip its flags."""

LOGIT_CHECK_TOLERANCE = 1e-3


class MorphologyModelError(RuntimeError):
    """A morphology model or its manifest cannot be used (message says why)."""


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------


def crop_region(box: Box, margin: float = DEFAULT_MARGIN) -> Box:
    """Square region (image pixels, may extend past the image) that ``crop_joint`` cuts.

    Square so that resizing to the model's square input never distorts the joint's shape (a
    dysplastic, shallow acetabulum must not be made by an aspect ratio).
    """
    if margin < 0:
        raise ValueError("margin must be >= 0")
    side = max(box.width, box.height) * (1.0 + 2.0 * margin)
    side = max(side, 1.0)
    c = box.centre
    x0 = math.floor(c.x - side / 2.0)
    y0 = math.floor(c.y - side / 2.0)
    n = math.ceil(side)
    return Box(float(x0), float(y0), float(x0 + n), float(y0 + n), label=box.label, score=box.score)


def crop_joint(image: npt.NDArray[Any], box: Box, margin: float = DEFAULT_MARGIN) -> npt.NDArray[Any]:
    """Cut the square joint crop around ``box`` from a 2-D image, padding with edge pixels.

    Edge padding (not zeros) keeps the crop's intensity percentiles — which the preprocessing
    normalises by — those of the anatomy when a joint sits at the image border.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (rows, columns), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("image is empty")
    r = crop_region(box, margin)
    x0, y0, x1, y1 = int(r.x0), int(r.y0), int(r.x1), int(r.y1)
    h, w = image.shape
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, w), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:
        raise ValueError(f"joint box {box} lies outside the image {w}x{h}")
    inner = image[cy0:cy1, cx0:cx1]
    pad = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1))
    if any(p for pair in pad for p in pair):
        inner = np.pad(inner, pad, mode="edge")
    return inner


def _intersection_area(a: Box, b: Box) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def hardware_in_region(
    region: Box, hardware: Sequence[Box], min_fraction: float = HARDWARE_OVERLAP_FRACTION
) -> Box | None:
    """The first hardware box with at least ``min_fraction`` of its area inside ``region``."""
    for hw in hardware:
        area = max(hw.width, 0.0) * max(hw.height, 0.0)
        if area <= 0.0:
            continue
        if _intersection_area(region, hw) / area >= min_fraction:
            return hw
    return None


@dataclass(frozen=True)
class JointCrop:
    """One hip joint to score, or the reason it is not scored (``crop`` is then ``None``)."""

    side: Side
    joint_box: Box
    region: Box
    crop: npt.NDArray[Any] | None
    refusal_reason: str | None = None


def select_joint_crops(
    image: npt.NDArray[Any], boxes: Sequence[Box], margin: float = DEFAULT_MARGIN
) -> list[JointCrop]:
    """Joint crops for the detector's boxes on one image, hardware-bearing joints refused.

    Takes the best-scoring ``hip_joint_right`` / ``hip_joint_left`` box per side; hardware is
    every ``cup`` / ``stem`` / ``other_hardware`` box, whichever side it was assigned to.
    """
    best = best_joint_boxes(boxes)
    hardware = [b for b in boxes if b.label in HARDWARE_LABELS]
    out: list[JointCrop] = []
    for side in (Side.RIGHT, Side.LEFT):
        if side not in best:
            continue
        jb = best[side]
        region = crop_region(jb, margin)
        hw = hardware_in_region(region, hardware)
        if hw is not None:
            out.append(JointCrop(side, jb, region, None, f"hardware in joint region ({hw.label})"))
            continue
        try:
            crop = crop_joint(image, jb, margin)
        except ValueError as exc:
            out.append(JointCrop(side, jb, region, None, f"joint crop unusable: {exc}"))
            continue
        out.append(JointCrop(side, jb, region, crop))
    return out


def window_crop(crop: npt.NDArray[Any], low_pct: float, high_pct: float) -> FloatArray:
    """Map a crop to 0..1 by its own ``low_pct``–``high_pct`` percentile window.

    A joint crop's local contrast is what carries the signs; windowing each crop by itself makes
    the model indifferent to how the whole image was windowed, the box size and the bit depth.
    """
    if crop.ndim != 2 or crop.size == 0:
        raise ValueError(f"crop must be a non-empty 2-D array, got shape {crop.shape}")
    x = np.asarray(crop, dtype=np.float32)
    # every pixel of crops up to 256 × 256 (all training crops); a subsample of larger ones
    lo, hi = (float(v) for v in subsampled_percentile(x, (low_pct, high_pct)))
    if hi - lo <= 1e-6:
        return np.zeros_like(x)
    out: FloatArray = np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return out


def prepare_crop(crop: npt.NDArray[Any], spec: InputSpec) -> FloatArray:
    """Crop → (channels, S, S) float32 network input: per-crop window, then ``preprocess.prepare``.

    Training calls this very function, so crops are prepared identically in both places.
    """
    x, _ = prepare(window_crop(crop, spec.low_pct, spec.high_pct), spec)
    return x


# --------------------------------------------------------------------------------------------
# Class-activation maps
# --------------------------------------------------------------------------------------------


def class_activation_maps(features: FloatArray, weight: FloatArray) -> FloatArray:
    """Raw CAMs ``(N, K, h, w)`` from features ``(N, C, h, w)`` and head weights ``(K, C)``.

    With average pooling then a linear layer, ``mean_hw(CAM_k) + bias_k`` is the logit ``k``.
    """
    if features.ndim != 4 or weight.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(f"features {features.shape} and head weight {weight.shape} do not match")
    cams: FloatArray = np.einsum("nchw,kc->nkhw", features, weight, optimize=True).astype(np.float32)
    return cams


def _minmax_in_place(x: FloatArray) -> FloatArray:
    """Min–max ``x`` (float32, 2-D) to 0..1 in place: exactly 0 and 1 at the extremes (a division,
    not a rounded reciprocal); zeros for a constant map."""
    lo, hi, _, _ = cv2.minMaxLoc(x)
    if hi - lo <= 1e-12:
        x.fill(0.0)
        return x
    np.subtract(x, np.float32(lo), out=x)
    np.divide(x, np.float32(hi - lo), out=x)
    return x


def minmax01(cam: FloatArray) -> FloatArray:
    """Min–max to 0..1 on the CAM's own grid (zeros for a constant map)."""
    return _minmax_in_place(np.array(cam, dtype=np.float32))


def _resize_maps(maps: FloatArray, height: int, width: int) -> FloatArray:
    """(N, K, h, w) maps → (N, K, height, width), bilinear."""
    out: FloatArray = np.stack(
        [[cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in per_crop] for per_crop in maps]
    ).astype(np.float32)
    return out


def normalise_heatmap(cam: FloatArray, height: int, width: int) -> FloatArray:
    """One raw CAM (h, w) → (height, width) map in 0..1 (min–max, as in Zhou et al. 2016).

    Min–max shows *where* the evidence is relative to the rest of the crop; whether the flag is
    present is the probability's business. A constant map (no spatial preference) becomes zeros.
    """
    up: FloatArray = np.asarray(
        cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.float32
    )
    return _minmax_in_place(up)  # in place: crops of full-resolution images are ~10⁶ pixels


def sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = (1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MorphologySpec:
    """The morphology-specific parts of a manifest, validated.

    Beyond the common contract (``node.infer.manifest``) a morphology manifest carries:
    ``thresholds`` (one per flag, chosen on validation), ``cam: {weight: K×C, bias: K}`` (the
    linear head, for class-activation maps) and ``crop: {margin: …}`` (the crop margin the model
    was trained with, so run time cuts the same crops).
    """

    classes: tuple[str, ...]
    thresholds: dict[str, float]
    head_weight: FloatArray
    head_bias: FloatArray
    margin: float = DEFAULT_MARGIN

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> MorphologySpec:
        """Validate; errors name the manifest key."""
        where = manifest.label
        if manifest.task != TASK:
            raise MorphologyModelError(f"{where}: task is {manifest.task!r}, expected {TASK!r}")
        if manifest.input.channels != 1 or manifest.input.height != manifest.input.width:
            raise MorphologyModelError(
                f"{where}: input must be 1 channel, square; got {manifest.input.shape}"
            )
        try:
            classes = manifest.output(LOGITS_OUTPUT).classes
            manifest.output(FEATURES_OUTPUT)
        except ManifestError as exc:
            raise MorphologyModelError(str(exc)) from None
        if classes[: len(MORPHOLOGY_FLAGS)] != MORPHOLOGY_FLAGS:
            raise MorphologyModelError(
                f"{where}: outputs.{LOGITS_OUTPUT}.classes must start with {MORPHOLOGY_FLAGS}"
            )
        missing = [f for f in MORPHOLOGY_FLAGS if f not in manifest.thresholds]
        if missing:
            raise MorphologyModelError(f"{where}: thresholds: missing {missing}")
        cam = manifest.extra.get("cam") or {}
        crop = manifest.extra.get("crop") or {}
        if not isinstance(cam, Mapping) or not isinstance(crop, Mapping):
            raise MorphologyModelError(f"{where}: cam / crop must be mappings")
        try:
            weight = np.asarray(cam.get("weight"), dtype=np.float32)
            bias = np.asarray(cam.get("bias"), dtype=np.float32)
        except (TypeError, ValueError):
            raise MorphologyModelError(f"{where}: cam.weight / cam.bias must be numbers") from None
        if weight.ndim != 2 or weight.shape[0] != len(classes) or bias.shape != (len(classes),):
            raise MorphologyModelError(
                f"{where}: cam.weight / cam.bias: expected ({len(classes)}, C) / ({len(classes)},), "
                f"got {weight.shape} / {bias.shape}"
            )
        margin = float(crop.get("margin", DEFAULT_MARGIN))
        if not 0.0 <= margin <= 2.0:
            raise MorphologyModelError(f"{where}: crop.margin must be within 0..2, got {margin}")
        return cls(
            classes=classes,
            thresholds={f: float(manifest.thresholds[f]) for f in MORPHOLOGY_FLAGS},
            head_weight=weight,
            head_bias=bias,
            margin=margin,
        )


@dataclass
class CropPrediction:
    """Flags (and heatmaps, crop-sized, 0..1, one per flag) for one crop."""

    flags: list[MorphologyFlag]
    heatmaps: dict[str, FloatArray] = field(default_factory=dict)
    sex_female_probability: float | None = None


class MorphologyModel:
    """One ONNX morphology model: prepares and batches crops, returns probabilities and raw CAMs."""

    def __init__(self, model: ModelSession, batch_size: int = 8) -> None:
        self.model = model
        self.manifest = model.manifest
        self.spec = MorphologySpec.from_manifest(model.manifest)
        self.batch_size = max(1, batch_size)
        self._check_head()

    @classmethod
    def load(cls, name: str | Path, cfg: ModelsConfig) -> MorphologyModel:
        """Resolve ``name`` under ``cfg.root``; checksum, graph I/O and provider are verified."""
        return cls(load_model(name, cfg, task=TASK), batch_size=cfg.batch_size)

    def _check_head(self) -> None:
        """Refuse a manifest whose head weights do not reproduce the graph's logits."""
        s = self.manifest.input.height
        ramp = np.linspace(-1.0, 1.0, s * s, dtype=np.float32).reshape(1, 1, s, s)
        probe = (ramp * np.sin(np.arange(s, dtype=np.float32) / 3.0)[None, None, :, None]).astype(np.float32)
        logits, features = self._run(probe)
        if features.ndim != 4 or features.shape[1] != self.spec.head_weight.shape[1]:
            raise MorphologyModelError(
                f"{self.manifest.label}: features {features.shape} do not match cam.weight {self.spec.head_weight.shape}"
            )
        recon = features.mean(axis=(2, 3)) @ self.spec.head_weight.T + self.spec.head_bias
        err = float(np.abs(recon - logits).max())
        if not err <= LOGIT_CHECK_TOLERANCE:
            raise MorphologyModelError(
                f"{self.manifest.label}: cam.weight/cam.bias do not reproduce the logits (max error {err:.3g})"
            )

    def _run(self, batch: FloatArray) -> tuple[FloatArray, FloatArray]:
        out = self.model.run(batch)
        return np.asarray(out[LOGITS_OUTPUT], np.float32), np.asarray(out[FEATURES_OUTPUT], np.float32)

    def prepare(self, crops: Sequence[npt.NDArray[Any]]) -> FloatArray:
        """Stack prepared crops into one (N, 1, S, S) batch."""
        return np.stack([prepare_crop(c, self.manifest.input) for c in crops]).astype(np.float32)

    def infer(self, batch: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Probabilities (N, K) and raw CAMs (N, K, h, w) for a prepared batch."""
        probs: list[FloatArray] = []
        cams: list[FloatArray] = []
        for i in range(0, batch.shape[0], self.batch_size):
            logits, features = self._run(batch[i : i + self.batch_size])
            probs.append(sigmoid(logits))
            cams.append(class_activation_maps(features, self.spec.head_weight))
        return np.concatenate(probs), np.concatenate(cams)


# --------------------------------------------------------------------------------------------
# Ensemble
# --------------------------------------------------------------------------------------------


class MorphologyEnsemble:
    """Several morphology models whose probabilities are averaged (the paper's ensemble).

    The ensemble's threshold per flag is the mean of its members' validation thresholds unless
    given explicitly: averaged probabilities sit on the members' common scale, and a single member
    gives exactly its own threshold. Heatmaps are the mean of the members' normalised maps,
    normalised again, so one member with a larger activation scale cannot drown the others.
    """

    def __init__(self, models: Sequence[MorphologyModel], thresholds: dict[str, float] | None = None) -> None:
        if not models:
            raise MorphologyModelError("an ensemble needs at least one model")
        self.models = list(models)
        classes = {m.spec.classes for m in self.models}
        if len(classes) != 1:
            raise MorphologyModelError(f"ensemble members disagree on outputs: {sorted(classes)}")
        self.classes = self.models[0].spec.classes
        margins = {m.spec.margin for m in self.models}
        if len(margins) != 1:
            # the joint is cropped once for all members: a member trained on another margin would
            # see crops it never learnt from
            raise MorphologyModelError(f"ensemble members disagree on the crop margin: {sorted(margins)}")
        if thresholds is None:
            thresholds = {
                f: float(np.mean([m.spec.thresholds[f] for m in self.models])) for f in MORPHOLOGY_FLAGS
            }
        self.thresholds = thresholds

    @classmethod
    def load(cls, cfg: ModelsConfig, names: Sequence[str | Path] | None = None) -> MorphologyEnsemble:
        """Every model in ``names`` (default ``cfg.morphology``), resolved under ``cfg.root``."""
        names = list(cfg.morphology if names is None else names)
        return cls([MorphologyModel.load(n, cfg) for n in names])

    @property
    def margin(self) -> float:
        return self.models[0].spec.margin

    def probabilities(self, crops: Sequence[npt.NDArray[Any]]) -> FloatArray:
        """Averaged probabilities (N, K) in ``self.classes`` order."""
        if not crops:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        out: FloatArray = np.mean([m.infer(m.prepare(crops))[0] for m in self.models], axis=0).astype(
            np.float32
        )
        return out

    def predict(self, crops: Sequence[npt.NDArray[Any]]) -> list[list[MorphologyFlag]]:
        """One list of ``MorphologyFlag`` (in ``MORPHOLOGY_FLAGS`` order) per crop."""
        return [p.flags for p in self.predict_with_heatmaps(crops, heatmaps=False)]

    def predict_with_heatmaps(
        self, crops: Sequence[npt.NDArray[Any]], heatmaps: bool = True
    ) -> list[CropPrediction]:
        """Flags, sex probability and (optionally) one crop-sized 0..1 heatmap per flag."""
        if not crops:
            return []
        probs_all: list[FloatArray] = []
        maps_all: list[FloatArray] = []  # per member: (N, K, h, w) CAMs min–maxed on their own grid
        batches: dict[InputSpec, FloatArray] = {}
        for m in self.models:
            spec = m.manifest.input
            if spec not in batches:  # members with the same input share one prepared batch
                batches[spec] = m.prepare(crops)
            probs, cams = m.infer(batches[spec])
            probs_all.append(probs)
            if heatmaps:
                maps_all.append(
                    np.stack([[minmax01(cams[i, k]) for k in range(len(MORPHOLOGY_FLAGS))] for i in range(len(crops))])
                )
        probs_mean = np.mean(probs_all, axis=0)
        sex_idx = self.classes.index(SEX_OUTPUT) if SEX_OUTPUT in self.classes else None
        if heatmaps and len({a.shape[2:] for a in maps_all}) > 1:
            # members whose feature grids differ are averaged on the first one's grid
            h, w = maps_all[0].shape[2:]
            maps_all = [a if a.shape[2:] == (h, w) else _resize_maps(a, h, w) for a in maps_all]
        out: list[CropPrediction] = []
        for i, crop in enumerate(crops):
            flags = [
                MorphologyFlag(f, float(probs_mean[i, k]), self.thresholds[f])
                for k, f in enumerate(MORPHOLOGY_FLAGS)
            ]
            maps: dict[str, FloatArray] = {}
            if heatmaps:
                # averaged on the feature grid, brought to the crop's size once per flag (each
                # member's map was min–maxed first, so no member outweighs another by its scale)
                for k, f in enumerate(MORPHOLOGY_FLAGS):
                    stacked = np.mean([member[i, k] for member in maps_all], axis=0).astype(np.float32)
                    maps[f] = normalise_heatmap(stacked, crop.shape[0], crop.shape[1])
            sex = float(probs_mean[i, sex_idx]) if sex_idx is not None else None
            out.append(CropPrediction(flags, maps, sex))
        return out


@dataclass
class JointResult:
    """Morphology of one hip on one image: flags + heatmaps, or the reason there are none.

    ``heatmaps`` are in the coordinates of ``region`` (a square in image pixels that may reach
    past the image border): pixel (r, c) of a heatmap lies at image (region.y0 + r, region.x0 + c).
    """

    side: Side
    joint_box: Box
    region: Box
    flags: list[MorphologyFlag] = field(default_factory=list)
    heatmaps: dict[str, FloatArray] = field(default_factory=dict)
    sex_female_probability: float | None = None
    refusal_reason: str | None = None


def score_image(
    ensemble: MorphologyEnsemble, image01: npt.NDArray[Any], boxes: Sequence[Box], heatmaps: bool = True
) -> list[JointResult]:
    """Crop the detector's joints (hardware-bearing ones refused), score them in one batch."""
    joints = select_joint_crops(image01, boxes, ensemble.margin)
    usable = [j for j in joints if j.crop is not None]
    preds = ensemble.predict_with_heatmaps([j.crop for j in usable if j.crop is not None], heatmaps=heatmaps)
    by_id = {id(j): p for j, p in zip(usable, preds, strict=True)}
    out: list[JointResult] = []
    for j in joints:
        pred = by_id.get(id(j))
        if pred is None:
            out.append(JointResult(j.side, j.joint_box, j.region, refusal_reason=j.refusal_reason))
        else:
            out.append(
                JointResult(
                    j.side, j.joint_box, j.region, pred.flags, pred.heatmaps, pred.sex_female_probability
                )
            )
    return out
