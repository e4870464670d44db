"""``hipnode train detector``: ultralytics YOLO (from a model yaml, no downloaded weights) → ONNX.

ultralytics (AGPL-3.0) is imported only here, never by the node: the exported graph's raw head
output ``(n, 4 + C, A)`` is decoded by ``node.infer.detector`` with our own NMS.

Data are written once as a YOLO dataset of images *already letterboxed to the network size*
by ``node.infer.preprocess.letterbox`` (so training sees the node's resize exactly, and
ultralytics' own resize is the identity), with box labels mapped through the same transform.
Domain randomisation (``node.train.augment``, on by default, ``--no-randomise`` to turn off):
each training image is written ``--copies`` times, every copy but a clean first one randomised
in appearance and geometry with its boxes mapped alongside — so the model does not learn one
renderer's look. ultralytics' own augmentation stays mild on top: no horizontal flips (they
swap hip_joint_right / hip_joint_left), no mosaic (objects are anatomy in fixed relation to
each other); small scale/translate and brightness. Validation images are never randomised.

After training, validation uses the *exported ONNX model through the node's runtime* — the
figures in the manifest are what the node will do, not what ultralytics' validator says.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from node.config import ModelsConfig
from node.domain import DETECTOR_CLASSES, Box
from node.infer.detector import OUTPUT, DetectorModel, DetectorSettings
from node.infer.manifest import InputSpec, Manifest, OutputSpec, load_manifest
from node.infer.nms import box_iou
from node.infer.preprocess import letterbox, make_batch
from node.infer.session import create_session
from node.train.cli import describe_randomisation, randomisation_of, trained_styles
from node.train.common import (
    command_line,
    export_onnx,
    model_size_mb,
    offline_environment,
    seed_everything,
    write_model,
)
from node.train.data import Sample

log = logging.getLogger(__name__)

DEFAULT_ARCH = "hipnode-yolov8-pico"

# YOLOv8 layout at a quarter of "n" width (8…128 channels, ~0.8 M parameters): hips, cups and
# stems are large, high-contrast objects, and a CPU-only node (and CPU-only training) benefits
# more from a 4x cheaper network than from capacity it does not need. Any ultralytics model
# yaml (yolov8n.yaml, yolo11s.yaml…) can be given with --arch instead.
EMBEDDED_ARCHS = {
    "hipnode-yolov8-pico": """
nc: 7
scales:
  p: [0.33, 0.125, 1024]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 3, C2f, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 9], 1, Concat, [1]]
  - [-1, 3, C2f, [1024]]
  - [[15, 18, 21], 1, Detect, [nc]]
""",
}


def resolve_arch(arch: str, workdir: Path) -> str:
    """An embedded architecture name → a yaml file in ``workdir``; anything else is passed on."""
    if arch in EMBEDDED_ARCHS:
        path = workdir / f"{arch}-p.yaml"  # ultralytics reads the scale letter from the file name
        path.write_text(EMBEDDED_ARCHS[arch])
        return str(path)
    return arch


def input_spec(size: int) -> InputSpec:
    return InputSpec(
        name="image", channels=3, height=size, width=size, mean=(0.0,), std=(1.0,), pad_value=0.0
    )


def write_yolo_dataset(
    samples: Sequence[Sample],
    root: Path,
    split: str,
    size: int,
    copies: int = 1,
    seed: int = 0,
    strength: float = 0.0,
    clean_first: bool = True,
) -> int:
    """Letterboxed 8-bit PNGs + YOLO label files under ``root/{images,labels}/split``; returns count.

    Each sample is written ``copies`` times; every copy but a clean first one (``clean_first``)
    is independently randomised by ``node.train.augment.randomise`` at ``strength`` (0: all
    clean) with its boxes transformed alongside. A copy's draw depends only on ``(seed, sample
    index, copy)``, so the dataset is reproducible. Randomisation happens on the source image
    (shrunk to at most twice the network size first) *before* the letterbox, as the node's
    letterbox would see such an image. Validation splits are written with ``strength`` 0.
    """
    from node.train.augment import limit_size, randomise

    img_dir, lab_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, s in enumerate(samples):
        if s.boxes is None:
            continue
        for c in range(max(1, copies)):
            image, boxes = s.image01, list(s.boxes)
            if strength > 0 and not (c == 0 and clean_first):
                rng = np.random.default_rng([seed, i, c])
                image, shrunk = limit_size(image, boxes, 2 * size)
                image, moved = randomise(image, shrunk, rng, strength)
                boxes = moved or []
            stem = f"{i:06d}" if c == 0 else f"{i:06d}_{c}"
            img, tr = letterbox(image, size, size, 0.0)
            cv2.imwrite(str(img_dir / f"{stem}.png"), np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
            (lab_dir / f"{stem}.txt").write_text(_yolo_labels(boxes, tr, size))
            n += 1
    return n


def _yolo_labels(boxes: Sequence[Box], tr: Any, size: int) -> str:
    """YOLO label lines (class cx cy w h, normalised) for source-pixel boxes through ``tr``."""
    lines = []
    if boxes:
        net = tr.to_network(np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes]))
        for b, (x0, y0, x1, y1) in zip(boxes, net, strict=True):
            x0, x1 = np.clip([x0, x1], 0, size)
            y0, y1 = np.clip([y0, y1], 0, size)
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            cls = DETECTOR_CLASSES.index(b.label)
            lines.append(
                f"{cls} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
            )
    return "\n".join(lines) + ("\n" if lines else "")


def detector_metrics(
    predictions: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]], iou: float = 0.5
) -> dict[str, float]:
    """Recall and precision per class at ``iou`` (greedy one-to-one matching by score)."""
    out: dict[str, float] = {}
    for cls in DETECTOR_CLASSES:
        tp = n_true = n_pred = 0
        for pred, truth in zip(predictions, truths, strict=True):
            t = [b for b in truth if b.label == cls]
            p = sorted((b for b in pred if b.label == cls), key=lambda b: -b.score)
            n_true += len(t)
            n_pred += len(p)
            if not t or not p:
                continue
            m = box_iou(
                np.array([[b.x0, b.y0, b.x1, b.y1] for b in p]),
                np.array([[b.x0, b.y0, b.x1, b.y1] for b in t]),
            )
            used: set[int] = set()
            for row in m:
                j = next((int(j) for j in np.argsort(-row) if int(j) not in used and row[j] >= iou), None)
                if j is not None:
                    used.add(j)
                    tp += 1
        if n_true:
            out[f"{cls}_recall"] = round(tp / n_true, 5)
            out[f"{cls}_n"] = float(n_true)
        if n_pred:
            out[f"{cls}_precision"] = round(tp / n_pred, 5)
    return out


def evaluate(model: DetectorModel, samples: Sequence[Sample]) -> dict[str, float]:
    labelled = [s for s in samples if s.boxes is not None]
    preds = model.detect([s.image01 for s in labelled])
    return detector_metrics(preds, [s.boxes or [] for s in labelled])


def _export_module(yolo_model: Any) -> Any:
    """The trained DetectionModel in export mode: forward returns only the decoded head tensor."""
    import torch
    from ultralytics.nn.modules.head import Detect

    model = yolo_model.float().eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.export = True
            m.format = "onnx"
            m.dynamic = False

    class _Head(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            y = self.inner(x)
            return y[0] if isinstance(y, list | tuple) else y

    return _Head(model).eval()


def train_yolo(
    dataset_yaml: Path,
    arch: str,
    size: int,
    epochs: int,
    batch: int,
    seed: int,
    workdir: Path,
    threads: int,
    init: Path | None = None,
) -> tuple[Any, Path]:
    """Run ultralytics training on CPU, offline, deterministic; returns the best DetectionModel
    and the checkpoint it came from."""
    from ultralytics import YOLO

    workdir = workdir.resolve()  # ultralytics nests a relative project under its runs_dir
    yolo = YOLO(str(init) if init is not None else resolve_arch(arch, workdir), task="detect")
    yolo.train(
        data=str(dataset_yaml),
        epochs=epochs,
        imgsz=size,
        batch=batch,
        device="cpu",
        workers=min(2, threads) if threads else 2,
        seed=seed,
        deterministic=True,
        pretrained=init is not None,
        amp=False,
        plots=False,
        val=False,  # validated below through onnxruntime; per-epoch NMS on CPU costs minutes
        project=str(workdir),
        name="run",
        exist_ok=True,
        fliplr=0.0,
        flipud=0.0,
        mosaic=0.0,
        mixup=0.0,
        degrees=3.0,
        translate=0.05,
        scale=0.15,
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.3,
        rect=False,
        cache=False,
        optimizer="AdamW",
        lr0=0.002,
        warmup_epochs=1.0,
        verbose=False,
        patience=1000,
        cos_lr=True,
        close_mosaic=0,
    )
    save_dir = Path(getattr(yolo.trainer, "save_dir", workdir / "run"))
    return load_weights(save_dir / "weights"), checkpoint_of(save_dir / "weights")


def checkpoint_of(weights_dir: Path) -> Path:
    """The checkpoint ``load_weights`` reads: ``best.pt``, else ``last.pt``."""
    best = weights_dir / "best.pt"
    return best if best.exists() else weights_dir / "last.pt"


def load_weights(weights_dir: Path) -> Any:
    """The DetectionModel from ``best.pt`` (or ``last.pt``) of an ultralytics run."""
    return load_weights_file(checkpoint_of(weights_dir))


def load_weights_file(checkpoint: Path) -> Any:
    """The DetectionModel of one ultralytics checkpoint (a run's best.pt, a model's weights.pt)."""
    from ultralytics import YOLO

    return YOLO(str(checkpoint)).model


def add_arguments(p: argparse.ArgumentParser) -> None:
    from node.train.cli import add_data_arguments, add_randomise_arguments

    add_data_arguments(p)
    add_randomise_arguments(p)
    p.add_argument(
        "--arch", default=DEFAULT_ARCH, help="ultralytics model yaml (yolov8n.yaml, yolo11n.yaml…)"
    )
    p.add_argument("--size", type=int, default=256, help="network input size in pixels (square, letterboxed)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("models/detector"),
        help="model folder; a version folder is made in it",
    )
    p.add_argument("--version", default="1.0.0")
    p.add_argument(
        "--init",
        type=Path,
        help="start from these ultralytics weights (best.pt of an earlier run) instead of from scratch",
    )
    p.add_argument("--workdir", type=Path, help="keep the YOLO dataset and runs here (default: temporary)")


def build_manifest(
    arch: str,
    size: int,
    version: str,
    training_data: str,
    command: str,
    val: dict[str, float],
    extra: dict[str, Any],
) -> Manifest:
    return Manifest(
        name="detector",
        version=version,
        task="detector",
        architecture=f"ultralytics {Path(arch).stem}",
        input=input_spec(size),
        outputs=(OutputSpec(OUTPUT, DETECTOR_CLASSES, "yolo"),),
        training_data=training_data,
        command=command,
        metrics=val,
        thresholds={"score": 0.25, "iou": 0.5},
        extra=extra,
    )


def train_and_export(
    args: argparse.Namespace, train_samples: Sequence[Sample], val_samples: Sequence[Sample], description: str
) -> tuple[Any, Path, dict[str, float]]:
    """Train, export ``args.out/args.version``, validate through the node runtime.

    Returns the torch export module, the model folder and the manifest metrics.
    """
    t0 = time.monotonic()
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="hipnode-yolo-")
        workdir = Path(tmp)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        ds = workdir / "dataset"
        if ds.exists():
            shutil.rmtree(ds)
        rs = randomisation_of(args)
        n_train = write_yolo_dataset(
            train_samples,
            ds,
            "train",
            args.size,
            copies=int(rs["copies"]) if rs["enabled"] else 1,
            seed=args.seed,
            strength=float(rs["strength"]) if rs["enabled"] else 0.0,
            clean_first=bool(rs["clean_first"]),
        )
        # ultralytics needs a val split; the real validation happens below through onnxruntime.
        # Never randomised: clean phantoms stay clean so metrics compare across runs.
        n_val = write_yolo_dataset(list(val_samples) or list(train_samples[:16]), ds, "val", args.size)
        names = "\n".join(f"  {i}: {c}" for i, c in enumerate(DETECTOR_CLASSES))
        (ds / "data.yaml").write_text(f"path: {ds}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
        log.info("YOLO dataset: %d train / %d val images (%s)", n_train, n_val, ds)
        net, checkpoint = train_yolo(
            ds / "data.yaml",
            args.arch,
            args.size,
            args.epochs,
            args.batch,
            args.seed,
            workdir,
            args.threads,
            args.init,
        )
        result = export_and_validate(net, args, train_samples, val_samples, description, t0)
        # ultralytics' own checkpoint beside the ONNX (whose batch norms are folded away), so a
        # later run can continue from it with --init even after the work folder is gone
        shutil.copyfile(checkpoint, result[1] / "weights.pt")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def check_export(module: Any, onnx_path: Path, batch: np.ndarray, size: int, atol: float = 1e-4) -> float:
    """onnxruntime vs torch on ``batch``: scores within ``atol``; box coordinates (network pixels,
    up to ``size``) within ``atol * size`` — float32 rounding in fused convolutions scales with the
    magnitude, so 1e-4 *relative to the image size* is the like-for-like bar. Returns the score diff.
    """
    import onnxruntime as ort

    from node.train.common import ExportMismatch, torch_outputs

    (want,) = torch_outputs(module, batch)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run([OUTPUT], {"image": batch.astype(np.float32)})
    box_diff = float(np.max(np.abs(got[:, :4] - want[:, :4])))
    score_diff = float(np.max(np.abs(got[:, 4:] - want[:, 4:])))
    if score_diff > atol or box_diff > atol * size:
        raise ExportMismatch(f"onnx vs torch: scores differ by {score_diff:.3g}, boxes by {box_diff:.3g} px")
    log.info("onnx vs torch: scores %.3g, boxes %.3g px", score_diff, box_diff)
    return score_diff


def export_and_validate(
    net: Any,
    args: argparse.Namespace,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    description: str,
    t0: float,
) -> tuple[Any, Path, dict[str, float]]:
    """Export a trained DetectionModel to ``args.out/args.version``, check it, validate, manifest."""
    module = _export_module(net)
    out_dir = Path(args.out) / args.version
    onnx_path = export_onnx(module, out_dir / "model.onnx", "image", [OUTPUT], (1, 3, args.size, args.size))
    check_images = [s.image01 for s in (list(val_samples) or list(train_samples))[:4]]
    check, _ = make_batch(check_images, input_spec(args.size))
    diff = check_export(module, onnx_path, check, args.size)
    rs = randomisation_of(args)
    extra: dict[str, Any] = {
        "seed": args.seed,
        "epochs": args.epochs,
        "batch": args.batch,
        "randomisation": rs,
    }
    extra["trained_on_styles"] = trained_styles(args)  # [] = site data only
    if getattr(args, "init", None) is not None:
        extra["init"] = str(args.init)
    description = f"{description}; {describe_randomisation(rs)}"
    write_model(
        build_manifest(args.arch, args.size, args.version, description, command_line(), {}, extra), out_dir
    )
    val: dict[str, float] = {}
    if val_samples:
        runtime = DetectorModel(
            create_session(load_manifest(out_dir), ModelsConfig()), settings=DetectorSettings()
        )
        val = evaluate(runtime, val_samples)
    val = {
        **val,
        "onnx_max_abs_diff_scores": float(f"{diff:.3g}"),
        "train_seconds": round(time.monotonic() - t0, 1),
    }
    write_model(
        build_manifest(args.arch, args.size, args.version, description, command_line(), val, extra), out_dir
    )
    log.info("wrote %s (%.1f MB): %s", out_dir, model_size_mb(out_dir / "model.onnx"), json.dumps(val))
    return module, out_dir, val


def main(args: argparse.Namespace) -> int:
    from node.train.cli import load_training_data

    offline_environment()
    seed_everything(args.seed, args.threads)
    train_samples, val_samples, description = load_training_data(args, task="detector")
    _, out_dir, val = train_and_export(args, train_samples, val_samples, description)
    print(json.dumps({"out": str(out_dir), "metrics": val}))
    return 0
