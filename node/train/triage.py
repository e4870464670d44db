"""``hipnode train triage``: multitask view / side / implant classifier → ONNX + manifest.

One timm backbone, three heads (see ``node.infer.triage``): view (softmax over 5), imaged side
of a single-hip view (softmax R/L, loss only on single-hip views), implant per side (two
sigmoids, loss only on sides whose status is known — an AP hip of the right side says nothing
about the left). No horizontal flips in augmentation: flipping swaps the patient's sides.

Domain randomisation (``node.train.augment``, on by default): training images are kept at
about twice the network size (float16) and every epoch each one is randomised afresh in
appearance and geometry *before* the node's letterbox, so the model never sees one renderer's
look. Draws that would crop away a labelled hip joint, cup or stem are redrawn, so view, side
and implant labels stay true (and nothing is ever flipped). Batches are prepared one step ahead
in a thread, overlapping the network's step. With ``--no-randomise`` the former scheme is
used: images prepared once at the network size (float16) and jittered on the fly by
``augment`` (gain, gamma, offset, noise, small shifts/zoom). Validation is never randomised.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from node.domain import Box
from node.infer.manifest import InputSpec, Manifest, OutputSpec
from node.infer.preprocess import letterbox
from node.infer.triage import TRIAGE_SIDES, TRIAGE_VIEWS
from node.train.common import (
    command_line,
    compare_onnx,
    export_onnx,
    model_size_mb,
    offline_environment,
    seed_everything,
    write_model,
)
from node.train.data import Sample

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_ARCH = "mobilenetv3_small_100"
ARCH_CHOICES = (
    "mobilenetv3_small_050",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "efficientnet_b3",
    "convnext_atto",
    "convnext_tiny",
    "resnet18",
)
MEAN, STD = 0.5, 0.25
IMPLANT_WEIGHT = 3.0  # implant is a local detail learnt later than the global view: weigh it up


def input_spec(size: int) -> InputSpec:
    return InputSpec(name="image", channels=1, height=size, width=size, mean=(MEAN,), std=(STD,))


def heads() -> dict[str, tuple[int, str]]:
    return {"view": (len(TRIAGE_VIEWS), "softmax"), "side": (2, "softmax"), "implant": (2, "sigmoid")}


@dataclass
class Tensors:
    """Prepared images (0..1, letterboxed, float16) and integer labels; -1 = no label."""

    x: np.ndarray  # (n, 1, s, s) float16
    view: np.ndarray  # (n,) int64
    side: np.ndarray  # (n,) int64, -1 unless single-hip view
    implant: np.ndarray  # (n, 2) float32 in {0, 1, -1}

    def __len__(self) -> int:
        return int(self.x.shape[0])


def to_tensors(samples: Iterable[Sample], size: int, images: bool = True) -> Tensors:
    """Labels and letterboxed images; ``images=False`` keeps labels only (``x`` is (n, 1, 0, 0)):
    with a ``Randomiser`` the images come from it, and a second copy would only cost memory."""
    xs, views, sides, implants = [], [], [], []
    for s in samples:
        if images:
            img, _ = letterbox(s.image01, size, size, 0.0)
            xs.append(img.astype(np.float16)[None])
        else:
            xs.append(np.zeros((1, 0, 0), np.float16))
        views.append(TRIAGE_VIEWS.index(s.view))
        sides.append(TRIAGE_SIDES.index(s.side) if s.side is not None and s.view in TRIAGE_VIEWS[1:4] else -1)
        implants.append([float(s.implant[sd]) if sd in s.implant else -1.0 for sd in TRIAGE_SIDES])
    return Tensors(
        np.stack(xs) if xs else np.zeros((0, 1, size, size), np.float16),
        np.asarray(views, np.int64),
        np.asarray(sides, np.int64),
        np.asarray(implants, np.float32).reshape(-1, 2),
    )


# Boxes whose loss would falsify a label: a hip joint (view, side), a cup or stem (implant).
PROTECTED_LABELS = frozenset({"hip_joint_right", "hip_joint_left", "cup", "stem"})
RETRIES = 4


def randomise_keeping(
    image01: np.ndarray,
    protect: list[Box] | None,
    rng: np.random.Generator,
    strength: float,
    *,
    ops: Collection[str] | None = None,
    record: list[str] | None = None,
) -> np.ndarray:
    """``augment.randomise`` redrawn until every ``protect`` box stays in view.

    Cropping or zooming away a hip of an AP pelvis would make it look like an AP hip, and a cut
    off cup would make "implant: yes" false. Without boxes to check (``None``), cropping is not
    drawn at all; after ``RETRIES`` failures only non-geometric transforms are used.
    """
    from node.train.augment import GEOMETRIC, TRANSFORMS, randomise

    allowed = [t for t in TRANSFORMS if ops is None or t in ops]
    if protect is None:
        return randomise(
            image01, None, rng, strength, ops=[t for t in allowed if t != "crop"], record=record
        )[0]
    for _ in range(RETRIES):
        draw: list[str] = []
        out, kept = randomise(image01, protect, rng, strength, ops=allowed, record=draw)
        if kept is not None and len(kept) == len(protect):
            if record is not None:
                record.extend(draw)
            return out
    flat = [t for t in allowed if t not in GEOMETRIC]
    return randomise(image01, None, rng, strength, ops=flat, record=record)[0]


@dataclass
class Randomiser:
    """Per-epoch randomised training inputs (``node.train.augment``), letterboxed like the node.

    Image ``i`` in epoch ``e`` depends only on ``(seed, e, i)``: reproducible, and independent of
    batch order and of the prefetch thread.
    """

    images: list[np.ndarray]  # float16, long side <= 2 x network size
    protect: list[list[Box] | None]
    size: int
    strength: float = 1.0
    seed: int = 0
    clean_share: float = 0.0

    @classmethod
    def from_samples(
        cls, samples: Iterable[Sample], size: int, strength: float, seed: int, clean_share: float
    ) -> Randomiser:
        from node.train.augment import limit_size

        images, protect = [], []
        for s in samples:
            keep = [b for b in s.boxes if b.label in PROTECTED_LABELS] if s.boxes is not None else None
            img, keep = limit_size(s.image01, keep, 2 * size)
            images.append(np.asarray(img, np.float16))
            protect.append(keep)
        return cls(images, protect, size, strength, seed, clean_share)

    def image(self, i: int, epoch: int) -> np.ndarray:
        """Network-size 0..1 image (float32) for sample ``i`` in ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, i])
        src = self.images[i].astype(np.float32)
        if rng.random() >= self.clean_share:
            src = randomise_keeping(src, self.protect[i], rng, self.strength)
        return letterbox(src, self.size, self.size, 0.0)[0]

    def batch(self, idx: Iterable[int], epoch: int) -> np.ndarray:
        """(b, 1, size, size) float32."""
        return np.stack([self.image(int(i), epoch)[None] for i in idx])


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Intensity and small geometric jitter on a (b, 1, h, w) 0..1 batch; no flips."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    r = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    gamma = torch.exp((r(b, 1, 1, 1) - 0.5) * 0.8)
    gain = 0.75 + 0.5 * r(b, 1, 1, 1)
    offset = (r(b, 1, 1, 1) - 0.5) * 0.2
    x = (x.clamp(0, 1) ** gamma) * gain + offset
    x = x + torch.randn(x.shape, generator=gen) * (0.03 * r(b, 1, 1, 1))
    scale = 1.0 + (r(b) - 0.5) * 0.2
    theta = torch.zeros(b, 2, 3)
    angle = (r(b) - 0.5) * math.radians(10)
    theta[:, 0, 0] = torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = (r(b, 2) - 0.5) * 0.16
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False).clamp(-0.2, 1.2)


def standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def loss_fn(
    logits: dict[str, torch.Tensor], view: torch.Tensor, side: torch.Tensor, implant: torch.Tensor
) -> Any:
    import torch.nn.functional as F

    loss = F.cross_entropy(logits["view"], view, label_smoothing=0.02)
    has_side = side >= 0
    if has_side.any():
        loss = loss + F.cross_entropy(logits["side"][has_side], side[has_side])
    known = implant >= 0
    if known.any():
        loss = loss + IMPLANT_WEIGHT * F.binary_cross_entropy_with_logits(
            logits["implant"][known], implant[known]
        )
    return loss


def predict(model: torch.nn.Module, x: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    import torch

    model.eval()
    outs: dict[str, list[np.ndarray]] = {"view": [], "side": [], "implant": []}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = standardise(torch.from_numpy(x[i : i + batch].astype(np.float32)))
            for name, value in zip(outs, model(xb), strict=True):
                outs[name].append(value.numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in outs.items()}


def metrics(pred: dict[str, np.ndarray], t: Tensors, implant_threshold: float = 0.5) -> dict[str, float]:
    """View accuracy (and per view), side accuracy on single-hip views, implant accuracy per known side."""
    out: dict[str, float] = {"n": float(len(t))}
    if not len(t):
        return out
    view_hat = pred["view"].argmax(1)
    out["view_accuracy"] = float((view_hat == t.view).mean())
    for k, v in enumerate(TRIAGE_VIEWS):
        m = t.view == k
        if m.any():
            out[f"view_accuracy_{v.value}"] = float((view_hat[m] == k).mean())
    m = t.side >= 0
    if m.any():
        out["side_accuracy"] = float((pred["side"].argmax(1)[m] == t.side[m]).mean())
    known = t.implant >= 0
    if known.any():
        hat = pred["implant"] >= implant_threshold
        out["implant_accuracy"] = float((hat[known] == (t.implant[known] > 0.5)).mean())
    return {k: round(v, 5) for k, v in out.items()}


def _triage_net_class() -> type:
    import torch
    from torch import nn

    from node.train.common import build_backbone

    class TriageNet(nn.Module):  # type: ignore[misc]
        """timm feature map pooled three ways: whole image, image-left half, image-right half.

        "Implant on the patient's right" is a statement about *where* in the image the metal is
        (image left on AP-like views); a globally pooled vector has to smuggle position through
        padding artefacts, the half-image pools state it directly. Heads see all three pools.
        """

        def __init__(self, arch: str, in_chans: int = 1, dropout: float = 0.1):
            super().__init__()
            self.backbone, _ = build_backbone(arch, in_chans)
            self.backbone.eval()
            with torch.no_grad():
                width = int(self.backbone.forward_features(torch.zeros(1, in_chans, 64, 64)).shape[1])
            self.backbone.train()
            self.arch = arch
            self.dropout = nn.Dropout(dropout)
            self.heads = nn.ModuleDict({name: nn.Linear(3 * width, n) for name, (n, _) in heads().items()})

        def logits(self, x: Any) -> dict[str, Any]:
            f = self.backbone.forward_features(x)
            half = f.shape[3] // 2
            pooled = torch.cat(
                [f.mean((2, 3)), f[..., :half].mean((2, 3)), f[..., f.shape[3] - half :].mean((2, 3))], 1
            )
            pooled = self.dropout(pooled)
            return {name: head(pooled) for name, head in self.heads.items()}

        def forward(self, x: Any) -> tuple[Any, ...]:
            z = self.logits(x)
            return (torch.softmax(z["view"], 1), torch.softmax(z["side"], 1), torch.sigmoid(z["implant"]))

    return TriageNet


def build_model(arch: str, head: str = "sided") -> Any:
    """``sided``: TriageNet (half-image pools); ``global``: ``common.MultiHead`` (pooled vector)."""
    if head == "global":
        from node.train.common import MultiHead

        return MultiHead(arch, 1, heads())
    return _triage_net_class()(arch, 1)


def train(
    train_t: Tensors,
    val_t: Tensors,
    arch: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    log_every_s: float = 30.0,
    head: str = "sided",
    randomiser: Randomiser | None = None,
    init: Path | None = None,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train from scratch, or from ``init`` (a ``weights.pt`` a previous run saved beside its
    ONNX: the exported graph has its batch norms folded away, so it cannot be trained on);
    returns the model (eval mode) and its validation metrics.

    With a ``randomiser`` the training images come from it (``train_t`` supplies the labels) and
    the torch ``augment`` is not applied: the randomiser covers far wider intensity, noise and
    geometry and ends with the node's own normalisation, whereas ``augment``'s gain and offset
    would feed ranges (max 0.75, min 0.1…) the node's percentile window never produces.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    seed_everything(seed)
    model = build_model(arch, head)
    if init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.02)
    steps_per_epoch = max(1, math.ceil(len(train_t) / batch_size))
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(train_t.x)
    v_all, s_all, i_all = (torch.from_numpy(a) for a in (train_t.view, train_t.side, train_t.implant))
    last = time.monotonic()
    pool = ThreadPoolExecutor(1) if randomiser is not None else None
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_t), generator=gen)
            running = 0.0
            chunks = [order[k * batch_size : (k + 1) * batch_size] for k in range(steps_per_epoch)]
            ahead = None
            if pool is not None and randomiser is not None:
                ahead = pool.submit(randomiser.batch, chunks[0].tolist(), epoch)
            for step in range(steps_per_epoch):
                idx = chunks[step]
                if pool is not None and randomiser is not None and ahead is not None:
                    xr = ahead.result()
                    if step + 1 < steps_per_epoch:  # the next batch is randomised while this one trains
                        ahead = pool.submit(randomiser.batch, chunks[step + 1].tolist(), epoch)
                if idx.numel() < 2:
                    continue  # batch norm needs two samples
                if randomiser is not None:
                    xb = standardise(torch.from_numpy(xr))
                else:
                    xb = standardise(augment(x_all[idx].float(), gen))
                loss = loss_fn(model.logits(xb), v_all[idx], s_all[idx], i_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach())
                if time.monotonic() - last > log_every_s:
                    log.info(
                        "epoch %d step %d/%d loss %.4f",
                        epoch + 1,
                        step + 1,
                        steps_per_epoch,
                        running / (step + 1),
                    )
                    last = time.monotonic()
            val = metrics(predict(model, val_t.x), val_t) if len(val_t) else {}
            log.info("epoch %d/%d train loss %.4f val %s", epoch + 1, epochs, running / steps_per_epoch, val)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    model.eval()
    return model, metrics(predict(model, val_t.x), val_t) if len(val_t) else {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from node.train.cli import add_data_arguments, add_randomise_arguments

    add_data_arguments(p)
    add_randomise_arguments(p)
    p.add_argument("--arch", default=DEFAULT_ARCH, help=f"timm architecture (e.g. {', '.join(ARCH_CHOICES)})")
    p.add_argument("--size", type=int, default=192, help="network input size in pixels (square, letterboxed)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--head", choices=("sided", "global"), default="sided", help="pooling for the heads (see TriageNet)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("models/triage"), help="model folder; a version folder is made in it"
    )
    p.add_argument("--version", default="1.0.0")
    p.add_argument(
        "--init", type=Path, help="start from this weights.pt (saved by an earlier run beside its model.onnx)"
    )


def export(model: torch.nn.Module, size: int, out_dir: Path, check: np.ndarray) -> float:
    """Export to ``out_dir/model.onnx`` and return the max |onnx - torch| on ``check`` (0..1 images)."""
    onnx_path = export_onnx(
        model, out_dir / "model.onnx", "image", ["view", "side", "implant"], (1, 1, size, size)
    )
    batch = ((check.astype(np.float32) - MEAN) / STD).astype(np.float32)
    return compare_onnx(model, onnx_path, batch, ["view", "side", "implant"])


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
        name="triage",
        version=version,
        task="triage",
        architecture=arch,
        input=input_spec(size),
        outputs=(
            OutputSpec("view", tuple(v.value for v in TRIAGE_VIEWS), "softmax"),
            OutputSpec("side", tuple(s.value for s in TRIAGE_SIDES), "softmax"),
            OutputSpec("implant", tuple(s.value for s in TRIAGE_SIDES), "sigmoid"),
        ),
        training_data=training_data,
        command=command,
        metrics=val,
        thresholds={"implant": 0.5},
        extra=extra,
    )


def main(args: argparse.Namespace) -> int:
    import torch

    from node.train.cli import describe_randomisation, load_training_data, randomisation_of, trained_styles

    offline_environment()
    seed_everything(args.seed, args.threads)
    t0 = time.monotonic()
    rs = randomisation_of(args)
    train_samples, val_samples, description = load_training_data(args, task="triage")
    randomiser = None
    if rs["enabled"]:
        clean = 1.0 / float(rs["copies"]) if rs["clean_first"] else 0.0
        randomiser = Randomiser.from_samples(
            train_samples, args.size, float(rs["strength"]), args.seed, clean
        )
    # validation stays clean (never randomised): its metrics compare across runs
    train_t = to_tensors(train_samples, args.size, images=randomiser is None)
    val_t = to_tensors(val_samples, args.size)
    check = val_t.x[:8] if len(val_t) else to_tensors(train_samples[:8], args.size).x
    del train_samples, val_samples
    log.info("data ready in %.0f s: %d train, %d val", time.monotonic() - t0, len(train_t), len(val_t))
    model, val = train(
        train_t,
        val_t,
        args.arch,
        args.epochs,
        args.batch,
        args.lr,
        args.seed,
        head=args.head,
        randomiser=randomiser,
        init=getattr(args, "init", None),
    )
    out_dir = Path(args.out) / args.version
    diff = export(model, args.size, out_dir, check)
    # the trainable weights (batch norms intact) so that a later run can start from them
    torch.save(model.state_dict(), out_dir / "weights.pt")
    val = {**val, "onnx_max_abs_diff": float(f"{diff:.3g}"), "train_seconds": round(time.monotonic() - t0, 1)}
    manifest = build_manifest(
        args.arch,
        args.size,
        args.version,
        f"{description}; {describe_randomisation(rs, task='triage')}",
        command_line(),
        val,
        {"seed": args.seed, "epochs": args.epochs, "randomisation": rs, "trained_on_styles": trained_styles(args)}
        | ({"init": str(args.init)} if getattr(args, "init", None) is not None else {}),
    )
    write_model(manifest, out_dir)
    log.info("wrote %s (%.1f MB): %s", out_dir, model_size_mb(out_dir / "model.onnx"), json.dumps(val))
    print(json.dumps({"out": str(out_dir), "metrics": val}))
    return 0
