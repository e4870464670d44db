"""``hipnode train morphology``: multitask hip-morphology model on joint crops → ONNX + manifest.

The model follows the morphology abstract (seed 000): a timm backbone (``convnext_tiny`` as in
the paper, ``--arch``; a small CPU variant for the bundled weights) predicting four flags
(``node.domain.MORPHOLOGY_FLAGS``) plus patient sex as an auxiliary task, on hip-joint crops with
hardware-bearing joints excluded. The head is ``LayerNorm2d → global average pool → Linear``, so
the exported feature map and the linear weights give exact class-activation maps at run time
(see ``node.infer.morphology``); the ONNX graph has two outputs, ``logits`` and ``features``, and
the manifest stores the head (``cam.weight`` / ``cam.bias``), the per-flag thresholds (Youden's J
on the validation split), validation metrics and the exact command.

Data (``--data``):

* ``phantom`` — generated on the fly by ``node.phantom`` (``--images``, ``--phantom-seed``);
  crops are cut from the generator's ground-truth joint boxes, flags and sex are its truth.
* a folder of DICOM files plus ``labels.csv`` (``--labels`` to name another file), one row per
  hip joint with columns:

  ``file``                 DICOM path relative to the folder
  ``side``                 ``R`` or ``L`` (patient side)
  ``x0,y0,x1,y1``          joint box in stored-image pixels (column, row; top-left origin)
  ``ischial_spine_sign``, ``cam_deformity``, ``dysplasia``, ``other_abnormality``
                           ``1`` / ``0``; blank = not annotated (masked out of the loss)
  ``sex``                  ``F`` / ``M`` (optional, blank = unknown)
  ``hardware``             ``1`` if the joint contains hardware (optional; such rows are skipped)
  ``patient_id``           optional; rows of one patient stay on one side of the split
                           (default: the file)

Reproducibility: one ``--seed`` drives the split, initialisation, augmentation and batch order;
``torch.use_deterministic_algorithms`` is on and the thread count is fixed (``--threads``).

Also ``python -m node.train.morphology evaluate …``: scores bundled / trained weights through the
node's runtime (``node.infer.morphology``, onnxruntime only) on a fresh phantom seed and prints
AUROC per flag with bootstrap 95 % confidence intervals.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import pickle
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from node.domain import JOINT_LABELS, MORPHOLOGY_FLAGS, Box
from node.infer.manifest import InputSpec, Manifest, OutputSpec
from node.infer.morphology import (
    DEFAULT_MARGIN,
    FEATURES_OUTPUT,
    HARDWARE_LABELS,
    LOGITS_OUTPUT,
    OUTPUT_CLASSES,
    TASK,
    crop_joint,
    crop_region,
    hardware_in_region,
    prepare_crop,
)

log = logging.getLogger(__name__)

INPUT_NAME = "image"
CONTEXT_EXTRA = 0.2
"""Training crops are cut with a wider margin and then re-cropped with jitter, so augmentation
can shift and scale the window without returning to the full radiograph (which would not fit in
memory for thousands of images)."""
SEX_LOSS_WEIGHT = 0.3
NORM_MEAN = 0.5
NORM_STD = 0.25


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class JointSample:
    """One hip joint: the exact run-time input plus a wider context crop for augmentation."""

    group: str  # split unit (patient or image): both hips of a patient on one side of the split
    side: str
    exact: np.ndarray  # (1, S, S) float32, prepared exactly as the node prepares it
    context: np.ndarray  # (C, C) float16, 0..1 image values around the joint, context_margin()
    labels: np.ndarray  # (4,) float32, NaN = unknown
    sex_female: float  # 1.0 / 0.0 / NaN


def astuple_shallow(sample: JointSample) -> tuple[Any, ...]:
    """Field values in declaration order (``dataclasses.astuple`` would deep-copy the arrays)."""
    return tuple(getattr(sample, f.name) for f in fields(sample))


def input_spec(size: int) -> InputSpec:
    """The declared network input: 1 channel, square, per-crop 1–99 % window, stretch resize."""
    return InputSpec(
        name=INPUT_NAME,
        channels=1,
        height=size,
        width=size,
        mean=(NORM_MEAN,),
        std=(NORM_STD,),
        window="percentile",
        low_pct=1.0,
        high_pct=99.0,
        resize="stretch",
    )


def context_size(size: int, margin: float) -> int:
    return int(math.ceil(size * (1.0 + 2.0 * context_margin(margin)) / (1.0 + 2.0 * margin) / 8.0) * 8)


def context_margin(margin: float) -> float:
    """Margin of the stored context crop: the run-time margin plus ``CONTEXT_EXTRA``."""
    return margin + CONTEXT_EXTRA


def make_sample(
    image01: np.ndarray,
    box: Box,
    *,
    group: str,
    side: str,
    labels: Sequence[float],
    sex_female: float,
    spec: InputSpec,
    margin: float,
) -> JointSample:
    """Cut one joint from a 0..1 image: exact run-time crop + context crop for augmentation."""
    import cv2

    exact = prepare_crop(crop_joint(image01, box, margin), spec)
    ctx_px = context_size(spec.height, margin)
    ctx = crop_joint(image01, box, context_margin(margin)).astype(np.float32)
    interp = cv2.INTER_AREA if ctx.shape[0] > ctx_px else cv2.INTER_LINEAR
    ctx = cv2.resize(ctx, (ctx_px, ctx_px), interpolation=interp).astype(np.float16)
    return JointSample(
        group=group,
        side=side,
        exact=exact,
        context=ctx,
        labels=np.asarray(labels, dtype=np.float32),
        sex_female=float(sex_female),
    )


def _flag_value(text: str, column: str, row_no: int) -> float:
    t = (text or "").strip().lower()
    if t == "":
        return math.nan
    if t in ("1", "true", "yes", "y", "present"):
        return 1.0
    if t in ("0", "false", "no", "n", "absent"):
        return 0.0
    raise ValueError(f"labels row {row_no}: column {column!r} must be 1/0 or blank, got {text!r}")


def _sex_value(text: str, row_no: int) -> float:
    t = (text or "").strip().upper()
    if t == "":
        return math.nan
    if t in ("F", "FEMALE"):
        return 1.0
    if t in ("M", "MALE"):
        return 0.0
    raise ValueError(f"labels row {row_no}: column 'sex' must be F/M or blank, got {text!r}")


def read_dicom01(path: Path) -> np.ndarray:
    """Stored pixels → 0..1 float32, bone bright, exactly as the node normalises them.

    The per-crop window applied afterwards makes any global window equivalent, but the
    MONOCHROME1 inversion and the Modality LUT matter, so ``node.pixels`` does it.
    """
    from node import pixels

    ds = pixels.read_dataset(path)
    raw = pixels.decode(ds)
    return pixels.normalise(ds, raw)


def folder_samples(folder: Path, labels_csv: Path, spec: InputSpec, margin: float) -> list[JointSample]:
    """Samples from a site archive: DICOM files + one labels row per joint (see module doc)."""
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    need = {"file", "side", "x0", "y0", "x1", "y1", *MORPHOLOGY_FLAGS}
    if rows and not need.issubset(rows[0].keys()):
        raise ValueError(f"{labels_csv}: missing columns {sorted(need - set(rows[0].keys()))}")
    samples: list[JointSample] = []
    cache: dict[str, np.ndarray] = {}
    skipped = 0
    for i, row in enumerate(rows, start=2):
        if _flag_value(row.get("hardware", ""), "hardware", i) == 1.0:
            skipped += 1
            continue
        side = row["side"].strip().upper()
        if side not in ("R", "L"):
            raise ValueError(f"labels row {i}: side must be R or L, got {row['side']!r}")
        fname = row["file"]
        if fname not in cache:
            cache.clear()  # rows of one file are usually adjacent; keep memory flat
            cache[fname] = read_dicom01(folder / fname)
        box = Box(float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
        samples.append(
            make_sample(
                cache[fname],
                box,
                group=(row.get("patient_id") or "").strip() or fname,
                side=side,
                labels=[_flag_value(row[f], f, i) for f in MORPHOLOGY_FLAGS],
                sex_female=_sex_value(row.get("sex", ""), i),
                spec=spec,
                margin=margin,
            )
        )
    log.info("%s: %d joints, %d skipped for hardware", labels_csv, len(samples), skipped)
    return samples


PHANTOM_VIEWS = ("ap_pelvis",)
"""The paper's images are AP pelvis radiographs; both joints of each phantom are used."""


def _render_joints(job: tuple[int, int, int, str]) -> list[dict[str, Any]]:
    """All joints of phantom ``index`` of stream ``seed`` (a picklable unit of work)."""
    from node.phantom import render_index

    seed, index, size, implants = job
    img = render_index(seed, index, views=list(PHANTOM_VIEWS), implants=implants, size=size)
    gt = img.truth
    image01 = img.normalized()
    hardware = [b for b in gt.boxes if b.label in HARDWARE_LABELS]
    female = 1.0 if gt.sex == "F" else 0.0 if gt.sex == "M" else math.nan
    out = []
    for b in gt.boxes:
        side = JOINT_LABELS.get(b.label)
        if side is None or side not in gt.hips:
            continue
        hip = gt.hips[side]
        out.append(
            {
                "image01": image01,
                "box": b,
                "side": side.value,
                "labels": [float(bool(hip.flags.get(f, False))) for f in MORPHOLOGY_FLAGS],
                "sex_female": female,
                "implant": bool(hip.implant),
                "hardware_boxes": hardware,
                "group": f"phantom:{seed}:{index}",
            }
        )
    return out


def phantom_joints(
    count: int, seed: int, size: int = 512, implants: str = "none", workers: int = 1
) -> Iterator[dict[str, Any]]:
    """Joints of ``count`` AP-pelvis phantoms of stream ``seed`` with their ground truth.

    Each yielded dict: ``image01`` (the whole 0..1 image), ``box`` (ground-truth joint box),
    ``side``, ``labels`` (4 flags, 0/1), ``sex_female``, ``implant`` (that hip has an implant),
    ``hardware_boxes`` (every cup / stem / screw / wire box of the image), ``group`` (the image:
    both hips of one patient stay on one side of the split). Image ``i`` depends only on
    ``(seed, i)``, so ``workers`` processes give the same joints in the same order.
    """
    jobs = [(seed, i, size, implants) for i in range(count)]
    if workers <= 1:
        for job in jobs:
            yield from _render_joints(job)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        for joints in pool.imap(_render_joints, jobs, chunksize=4):
            yield from joints


def has_hardware(joint: dict[str, Any], margin: float) -> bool:
    """The paper's exclusion: an implanted hip, or any hardware box inside the joint crop."""
    return (
        bool(joint["implant"])
        or hardware_in_region(crop_region(joint["box"], margin), joint["hardware_boxes"]) is not None
    )


def phantom_samples(
    count: int,
    seed: int,
    spec: InputSpec,
    margin: float,
    size: int = 512,
    implants: str = "none",
    workers: int = 1,
) -> list[JointSample]:
    samples: list[JointSample] = []
    skipped = 0
    for j in phantom_joints(count, seed, size=size, implants=implants, workers=workers):
        if has_hardware(j, margin):
            skipped += 1
            continue
        samples.append(
            make_sample(
                j["image01"],
                j["box"],
                group=j["group"],
                side=j["side"],
                labels=j["labels"],
                sex_female=j["sex_female"],
                spec=spec,
                margin=margin,
            )
        )
    log.info(
        "phantoms (seed %d, %d images): %d joints, %d skipped for hardware",
        seed,
        count,
        len(samples),
        skipped,
    )
    return samples


def split_groups(
    samples: Sequence[JointSample], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Deterministic split by group hash (independent of sample order and of the machine)."""
    train, val = [], []
    for i, s in enumerate(samples):
        h = hashlib.sha256(f"{seed}:{s.group}".encode()).digest()
        (val if int.from_bytes(h[:8], "big") / 2**64 < val_fraction else train).append(i)
    return train, val


def augment(sample: JointSample, spec: InputSpec, margin: float, rng: np.random.Generator) -> np.ndarray:
    """A jittered re-crop of the context (±10 % scale, ±6 % shift), flip, gamma, noise."""
    ctx = sample.context.astype(np.float32)
    n = ctx.shape[0]
    nominal = n * (1.0 + 2.0 * margin) / (1.0 + 2.0 * context_margin(margin))
    side = nominal * rng.uniform(0.9, 1.1)
    cx = n / 2.0 + rng.uniform(-0.06, 0.06) * nominal
    cy = n / 2.0 + rng.uniform(-0.06, 0.06) * nominal
    x0 = round(min(max(cx - side / 2.0, 0.0), n - side))
    y0 = round(min(max(cy - side / 2.0, 0.0), n - side))
    k = round(min(side, n))
    sub = ctx[y0 : y0 + k, x0 : x0 + k]
    if rng.random() < 0.5:
        sub = sub[:, ::-1]
    sub = np.clip(sub, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    sub = sub + rng.normal(0.0, rng.uniform(0.0, 0.03), sub.shape).astype(np.float32)
    return prepare_crop(np.ascontiguousarray(sub, dtype=np.float32), spec)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def build_model(arch: str, size: int, n_out: int = len(OUTPUT_CLASSES), dropout: float = 0.1) -> Any:
    """timm backbone (random init, never downloaded) + LayerNorm2d → GAP → Linear head.

    The norm sits *before* pooling (per position) so that "features" is exactly what the linear
    layer averages: CAM_k = W_k · features, and mean(CAM_k) + b_k = logit_k.
    """
    import timm
    import torch
    from timm.layers import LayerNorm2d
    from torch import nn

    class MorphologyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model(
                arch, pretrained=False, num_classes=0, global_pool="", in_chans=1
            )
            with torch.no_grad():
                width = int(self.backbone.forward_features(torch.zeros(1, 1, size, size)).shape[1])
            self.norm = LayerNorm2d(width)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(width, n_out)

        def forward(self, x: Any) -> tuple[Any, Any]:
            feats = self.norm(self.backbone.forward_features(x))
            logits = self.fc(self.dropout(feats.mean(dim=(2, 3))))
            return logits, feats

    return MorphologyNet()


# --------------------------------------------------------------------------------------------
# Metrics (numpy; sklearn is not needed for these two)
# --------------------------------------------------------------------------------------------


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties count half); NaN if a class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(p, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Probability threshold maximising sensitivity + specificity − 1 on ``(y, p)``.

    The cut is placed midway between adjacent distinct scores, so a threshold learnt on the
    validation set is not glued to one validation case's exact probability.
    """
    y = np.asarray(y, dtype=bool)
    if y.all() or (~y).all():
        return 0.5
    values = np.unique(p)
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1e-6]])
    best, best_j = 0.5, -1.0
    for c in cuts:
        pred = p >= c
        sens = float((pred & y).sum() / y.sum())
        spec = float((~pred & ~y).sum() / (~y).sum())
        if sens + spec - 1.0 > best_j:
            best, best_j = float(c), sens + spec - 1.0
    return float(min(max(best, 1e-4), 1.0 - 1e-4))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.asarray(y, dtype=bool)
    pred = p >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())

    def ratio(a: int, b: int) -> float:
        return round(a / b, 4) if b else math.nan

    return {
        "auroc": round(auroc(y, p), 4),
        "accuracy": ratio(tp + tn, y.size),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "n_positive": int(y.sum()),
        "n": int(y.size),
    }


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hipnode train morphology``."""
    parser.add_argument("--data", default="phantom", help="'phantom' or a folder of DICOM files + labels CSV")
    parser.add_argument("--labels", type=Path, default=None, help="labels CSV (default: <data>/labels.csv)")
    parser.add_argument("--images", type=int, default=600, help="phantom images to generate (2 joints each)")
    parser.add_argument("--phantom-seed", type=int, default=1, help="phantom generator seed")
    parser.add_argument("--phantom-size", type=int, default=512, help="phantom image rows/columns")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering phantoms")
    parser.add_argument(
        "--cache", type=Path, default=None, help="pickle of prepared phantom joints (reused if present)"
    )
    parser.add_argument(
        "--arch",
        default="mobilenetv3_small_100",
        help="timm architecture: convnext_tiny as in the paper (GPU), mobilenetv3_small_100 / convnext_atto on a CPU",
    )
    parser.add_argument("--size", type=int, default=128, help="crop side in network pixels")
    parser.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help="crop margin (fraction of box side)"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (on a shared CPU more threads can be slower)"
    )
    parser.add_argument(
        "--time-limit-min", type=float, default=0.0, help="stop training after this (0 = none)"
    )
    parser.add_argument("--name", default=TASK, help="model name in the manifest")
    parser.add_argument(
        "--out", type=Path, required=True, help="output version folder, e.g. models/morphology/1.0.0"
    )


def _loss(logits: Any, labels: Any, sex: Any) -> Any:
    import torch
    import torch.nn.functional as F

    flag_logits = logits[:, : len(MORPHOLOGY_FLAGS)]
    mask = ~torch.isnan(labels)
    flag_loss = F.binary_cross_entropy_with_logits(
        flag_logits[mask], torch.nan_to_num(labels)[mask], reduction="sum"
    ) / mask.sum().clamp(min=1)
    smask = ~torch.isnan(sex)
    sex_loss = F.binary_cross_entropy_with_logits(
        logits[:, -1][smask], torch.nan_to_num(sex)[smask], reduction="sum"
    ) / smask.sum().clamp(min=1)
    return flag_loss + SEX_LOSS_WEIGHT * sex_loss


def predict_torch(model: Any, batch: np.ndarray, batch_size: int = 64) -> np.ndarray:
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, batch.shape[0], batch_size):
            logits, _ = model(torch.from_numpy(batch[i : i + batch_size]))
            outs.append(torch.sigmoid(logits).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, len(OUTPUT_CLASSES)), np.float32)


def evaluate_split(
    probs: np.ndarray, samples: Sequence[JointSample], thresholds: dict[str, float]
) -> dict[str, Any]:
    labels = np.stack([s.labels for s in samples])
    out: dict[str, Any] = {}
    for k, f in enumerate(MORPHOLOGY_FLAGS):
        known = ~np.isnan(labels[:, k])
        out[f] = binary_metrics(labels[known, k] > 0.5, probs[known, k], thresholds[f])
    sex = np.asarray([s.sex_female for s in samples])
    known = ~np.isnan(sex)
    if known.any():
        out["sex_accuracy"] = round(float(((probs[known, -1] >= 0.5) == (sex[known] > 0.5)).mean()), 4)
    return out


def load_samples(args: argparse.Namespace, spec: InputSpec) -> tuple[list[JointSample], str]:
    """Samples from ``--data`` and a one-line description of them for the manifest."""
    if args.data == "phantom":
        cache = args.cache
        key = f"phantom seed={args.phantom_seed} images={args.images} px={args.phantom_size} size={args.size} margin={args.margin}"
        if cache is not None and cache.is_file():
            with open(cache, "rb") as fh:
                cached_key, rows = pickle.load(fh)
            if cached_key != key:
                raise SystemExit(f"{cache} holds {cached_key!r}, not {key!r}; delete it or change --cache")
            samples = [JointSample(*row) for row in rows]
            log.info("loaded %d joints from %s", len(samples), cache)
        else:
            samples = phantom_samples(
                args.images,
                args.phantom_seed,
                spec,
                args.margin,
                size=args.phantom_size,
                workers=args.workers,
            )
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with open(cache, "wb") as fh:
                    # plain tuples, not JointSample: the cache must load whether this module
                    # ran as ``__main__`` or as ``node.train.morphology``
                    rows = [astuple_shallow(x) for x in samples]
                    pickle.dump((key, rows), fh, protocol=pickle.HIGHEST_PROTOCOL)
        text = (
            f"synthetic AP-pelvis phantoms from node.phantom: {args.images} images of {args.phantom_size} px, "
            f"seed {args.phantom_seed}, implants none; {len(samples)} joint crops from ground-truth joint boxes"
        )
        return samples, text
    folder = Path(args.data)
    labels_csv = args.labels or folder / "labels.csv"
    samples = folder_samples(folder, labels_csv, spec, args.margin)
    return samples, f"{folder} with {labels_csv.name}: {len(samples)} hardware-free joint crops"


def train(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Path:
    """Load ``--data``, then ``fit_and_export``."""
    from node.train.common import offline_environment, seed_everything

    offline_environment()
    seed_everything(args.seed, threads=args.threads)
    t0 = time.monotonic()
    samples, text = load_samples(args, input_spec(args.size))
    log.info("data ready in %.0fs: %d joints", time.monotonic() - t0, len(samples))
    out, _ = fit_and_export(samples, args, text, argv)
    return out


def fit_and_export(
    samples: Sequence[JointSample],
    args: argparse.Namespace,
    data_text: str,
    argv: Sequence[str] | None = None,
) -> tuple[Path, Any]:
    """Train, choose thresholds, export, verify ONNX against torch, write the manifest.

    Returns the version folder and the trained torch model (eval mode).
    """
    import torch

    from node.train.common import command_line, compare_onnx, export_onnx, seed_everything, write_model

    seed_everything(args.seed, threads=args.threads)
    spec = input_spec(args.size)
    t0 = time.monotonic()
    if len(samples) < 4:
        raise SystemExit(f"only {len(samples)} usable joints: too few to train")
    train_idx, val_idx = split_groups(samples, args.val_fraction, args.seed)
    if not val_idx or not train_idx:
        raise SystemExit("the split left no training or no validation joints; change --val-fraction")
    log.info("%d train, %d val joints", len(train_idx), len(val_idx))

    model = build_model(args.arch, args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / args.batch_size))
    total = steps_per_epoch * args.epochs
    warmup = max(1, min(steps_per_epoch, total // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    rng = np.random.default_rng(args.seed)
    val_samples = [samples[i] for i in val_idx]
    val_x = np.stack([s.exact for s in val_samples])
    best_score, best_state, best_epoch = -1.0, None, 0
    deadline = t0 + args.time_limit_min * 60.0 if args.time_limit_min > 0 else math.inf
    epochs_run = 0
    stopped_early = False
    try:
        for epoch in range(args.epochs):
            model.train()
            order = rng.permutation(train_idx)
            t_ep, loss_sum = time.monotonic(), 0.0
            for b in range(steps_per_epoch):
                chunk = [samples[i] for i in order[b * args.batch_size : (b + 1) * args.batch_size]]
                if not chunk:
                    continue
                x = torch.from_numpy(np.stack([augment(s, spec, args.margin, rng) for s in chunk]))
                y = torch.from_numpy(np.stack([s.labels for s in chunk]))
                sx = torch.tensor([s.sex_female for s in chunk], dtype=torch.float32)
                logits, _ = model(x)
                loss = _loss(logits, y, sx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach())
                if (b + 1) % max(1, steps_per_epoch // 4) == 0:
                    log.info(
                        "epoch %d step %d/%d loss %.4f", epoch + 1, b + 1, steps_per_epoch, loss_sum / (b + 1)
                    )
            epochs_run = epoch + 1
            probs = predict_torch(model, val_x)
            metrics = evaluate_split(probs, val_samples, dict.fromkeys(MORPHOLOGY_FLAGS, 0.5))
            aucs = [metrics[f]["auroc"] for f in MORPHOLOGY_FLAGS]
            score = float(np.nanmean(aucs)) if not all(math.isnan(a) for a in aucs) else 0.0
            log.info(
                "epoch %d/%d loss %.4f val AUROC %s (%.0fs)",
                epoch + 1,
                args.epochs,
                loss_sum / steps_per_epoch,
                " ".join(f"{a:.3f}" for a in aucs),
                time.monotonic() - t_ep,
            )
            if score > best_score:
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if time.monotonic() > deadline:
                log.warning("time limit reached after epoch %d", epoch + 1)
                stopped_early = True
                break
    except KeyboardInterrupt:
        # Ctrl-C / SIGINT: keep what was learnt. The best epoch so far is exported and the
        # manifest says the run was stopped, so nobody mistakes it for the full schedule.
        stopped_early = True
        log.warning(
            "interrupted during epoch %d; exporting the best epoch so far (%d)", epochs_run + 1, best_epoch
        )
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()

    probs = predict_torch(model, val_x)
    labels = np.stack([s.labels for s in val_samples])
    thresholds: dict[str, float] = {}
    for k, f in enumerate(MORPHOLOGY_FLAGS):
        known = ~np.isnan(labels[:, k])
        thresholds[f] = round(youden_threshold(labels[known, k] > 0.5, probs[known, k]), 6)
    metrics = evaluate_split(probs, val_samples, thresholds)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(
        model, out / "model.onnx", INPUT_NAME, [LOGITS_OUTPUT, FEATURES_OUTPUT], (1, 1, args.size, args.size)
    )
    check = val_x[: min(8, len(val_x))]
    max_diff = compare_onnx(model, onnx_path, check, [LOGITS_OUTPUT, FEATURES_OUTPUT], atol=1e-4)
    head_w = model.fc.weight.detach().numpy().astype(np.float64)
    head_b = model.fc.bias.detach().numpy().astype(np.float64)
    manifest = Manifest(
        name=args.name,
        version=out.name,
        task=TASK,
        architecture=f"{args.arch} + LayerNorm2d + global average pool + linear (4 flags + sex)",
        input=spec,
        outputs=(
            OutputSpec(LOGITS_OUTPUT, OUTPUT_CLASSES, "none"),
            OutputSpec(FEATURES_OUTPUT, (), "none"),
        ),
        training_data=data_text,
        command=command_line(argv),
        metrics={
            "validation": metrics,
            "validation_joints": len(val_idx),
            "training_joints": len(train_idx),
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "stopped_early": stopped_early,
            "onnx_vs_torch_max_abs_diff": float(f"{max_diff:.3g}"),
        },
        thresholds=thresholds,
        extra={
            "cam": {
                "feature_output": FEATURES_OUTPUT,
                "note": "CAM_k = sum_c weight[k][c] * features[c]; mean over positions + bias[k] = logit k",
                "weight": [[float(f"{v:.9g}") for v in row] for row in head_w],
                "bias": [float(f"{v:.9g}") for v in head_b],
            },
            "crop": {
                "margin": args.margin,
                "source": "detector hip_joint_right / hip_joint_left box, square, edge-padded; hardware excluded",
            },
            "threshold_method": "Youden J on the validation split",
            "seed": args.seed,
            "training_seconds": round(time.monotonic() - t0, 1),
        },
    )
    write_model(manifest, out)
    log.info("wrote %s (%.2f MB); validation %s", out, onnx_path.stat().st_size / 1e6, json.dumps(metrics))
    return out, model


def main(args: argparse.Namespace) -> int:
    train(args)
    return 0


# --------------------------------------------------------------------------------------------
# Evaluation on a fresh phantom seed (through the node's runtime, onnxruntime only)
# --------------------------------------------------------------------------------------------


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", default=["morphology"], help="model names / version dirs (ensemble)"
    )
    parser.add_argument("--root", type=Path, default=Path("models"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--phantom-seed", type=int, default=987654)
    parser.add_argument("--phantom-size", type=int, default=512)
    parser.add_argument(
        "--implants", default="random", help="phantom implant mode (implanted hips are skipped)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--cache", type=Path, default=None, help="pickle of the evaluation crops (reused if present)"
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--prepare-only", action="store_true", help="only render and cache the crops (--cache)"
    )
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="crop margin for --prepare-only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def evaluation_crops(
    args: argparse.Namespace, margin: float
) -> tuple[list[np.ndarray], list[list[float]], int]:
    """Run-time crops (ground-truth joint boxes) and labels of the evaluation phantoms."""
    key = f"eval seed={args.phantom_seed} images={args.images} px={args.phantom_size} implants={args.implants} margin={margin}"
    if args.cache is not None and args.cache.is_file():
        with open(args.cache, "rb") as fh:
            cached_key, (crops, labels, skipped) = pickle.load(fh)
        if cached_key != key:
            raise SystemExit(f"{args.cache} holds {cached_key!r}, not {key!r}")
    else:
        crops, labels, skipped = [], [], 0
        for j in phantom_joints(
            args.images,
            args.phantom_seed,
            size=args.phantom_size,
            implants=args.implants,
            workers=args.workers,
        ):
            if has_hardware(j, margin):
                skipped += 1
                continue
            crops.append(crop_joint(j["image01"], j["box"], margin))
            labels.append(j["labels"])
        if args.cache is not None:
            with open(args.cache, "wb") as fh:
                pickle.dump((key, (crops, labels, skipped)), fh, protocol=pickle.HIGHEST_PROTOCOL)
    return crops, labels, skipped


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """AUROC (bootstrap 95 % CI), sensitivity, specificity per flag on fresh phantoms."""
    from node.config import ModelsConfig
    from node.infer.morphology import MorphologyEnsemble

    cfg = ModelsConfig(root=args.root, morphology=list(args.models))
    ensemble = MorphologyEnsemble.load(cfg)
    crops, labels, skipped = evaluation_crops(args, ensemble.margin)
    t = time.monotonic()
    probs = ensemble.probabilities(crops)
    infer_ms = (time.monotonic() - t) * 1000.0 / max(1, len(crops))
    y = np.asarray(labels, dtype=np.float32)
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {
        "models": [m.manifest.label for m in ensemble.models],
        "phantom_seed": args.phantom_seed,
        "images": args.images,
        "joints": len(crops),
        "skipped_hardware": skipped,
        "ms_per_joint": round(infer_ms, 2),
        "flags": {},
    }
    for k, f in enumerate(MORPHOLOGY_FLAGS):
        yk, pk = y[:, k] > 0.5, probs[:, k]
        m = binary_metrics(yk, pk, ensemble.thresholds[f])
        boots = []
        for _ in range(args.bootstrap):
            idx = rng.integers(0, len(yk), len(yk))
            a = auroc(yk[idx], pk[idx])
            if not math.isnan(a):
                boots.append(a)
        m["auroc_ci95"] = [
            round(float(np.percentile(boots, 2.5)), 4),
            round(float(np.percentile(boots, 97.5)), 4),
        ]
        result["flags"][f] = m
    return result


def print_evaluation(result: dict[str, Any]) -> None:
    print(f"models: {', '.join(result['models'])}")
    print(
        f"fresh phantoms: seed {result['phantom_seed']}, {result['images']} images, {result['joints']} joints "
        f"({result['skipped_hardware']} skipped for hardware), {result['ms_per_joint']} ms/joint"
    )
    print(f"{'flag':<20}{'AUROC':>8}  {'95% CI':<17}{'sens':>7}{'spec':>7}{'acc':>7}{'pos/n':>10}")
    for f, m in result["flags"].items():
        lo, hi = m["auroc_ci95"]
        print(
            f"{f:<20}{m['auroc']:>8.4f}  [{lo:.4f}, {hi:.4f}] {m['sensitivity']:>7.3f}{m['specificity']:>7.3f}"
            f"{m['accuracy']:>7.3f}{m['n_positive']:>5}/{m['n']:<4}"
        )


def _cli(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if argv and argv[0] == "evaluate":
        p = argparse.ArgumentParser(prog="python -m node.train.morphology evaluate")
        add_evaluate_arguments(p)
        a = p.parse_args(argv[1:])
        if a.prepare_only:
            crops, _, skipped = evaluation_crops(a, a.margin)
            print(f"prepared {len(crops)} joints ({skipped} skipped for hardware) in {a.cache}")
            return 0
        result = evaluate(a)
        print_evaluation(result)
        if a.json:
            a.json.write_text(json.dumps(result, indent=2))
        return 0
    p = argparse.ArgumentParser(prog="hipnode train morphology")
    add_arguments(p)
    a = p.parse_args(argv)
    train(a, ["hipnode", "train", "morphology", *argv])
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
