"""Domain randomisation (``node.train.augment``): identity, ranges, box geometry, determinism,
coverage of every transform, no flips, and its use by the detector / triage training code.

Synthetic images only (no phantom rendering, no torch): the file runs in a few seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest

from node.domain import DETECTOR_CLASSES, Box, Side, View
from node.train.augment import (
    GEOMETRIC,
    MIN_VISIBLE,
    TRANSFORMS,
    VARIANTS,
    _Geometry,
    limit_size,
    randomise,
)
from node.train.data import Sample


def _scene(size: int = 320) -> tuple[np.ndarray, list[Box]]:
    """Dim texture with four bright, well separated objects drawn exactly at their boxes:
    two rectangles (hardware labels, box = corners) and two ellipses (round anatomy)."""
    rng = np.random.default_rng(0)
    img = (cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 6) * 0.3).astype(np.float32)
    f = size / 320
    boxes = [
        Box(40 * f, 40 * f, 90 * f, 150 * f, "stem"),
        Box(190 * f, 50 * f, 270 * f, 90 * f, "other_hardware"),
        Box(40 * f, 200 * f, 130 * f, 280 * f, "hip_joint_right"),
        Box(200 * f, 190 * f, 270 * f, 270 * f, "cup"),
    ]
    for b in boxes:
        if b.label in ("stem", "other_hardware"):
            img[round(b.y0) : round(b.y1) + 1, round(b.x0) : round(b.x1) + 1] = 1.0
        else:
            centre = (round((b.x0 + b.x1) / 2), round((b.y0 + b.y1) / 2))
            axes = (round((b.x1 - b.x0) / 2), round((b.y1 - b.y0) / 2))
            cv2.ellipse(img, centre, axes, 0, 0, 360, 1.0, -1)
    return img, boxes


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_identity_at_strength_zero() -> None:
    img, boxes = _scene(128)
    for seed in range(5):
        out, got = randomise(img, boxes, np.random.default_rng(seed), strength=0.0)
        assert out is not img and out.dtype == np.float32
        np.testing.assert_array_equal(out, img)
        assert got == boxes
        out, none = randomise(img, None, np.random.default_rng(seed), strength=0.0)
        assert none is None
        np.testing.assert_array_equal(out, img)
    # nothing allowed to fire is the identity too, at any strength
    out, got = randomise(img, boxes, np.random.default_rng(1), strength=3.0, ops=[])
    np.testing.assert_array_equal(out, img)
    assert got == boxes


def test_output_shape_dtype_range_and_boxes_inside() -> None:
    img, boxes = _scene(192)
    h, w = img.shape
    changed = 0
    for seed in range(60):
        rec: list[str] = []
        out, got = randomise(img, boxes, np.random.default_rng(seed), record=rec)
        assert out.ndim == 2 and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        oh, ow = out.shape
        if "crop" not in rec and "pad" not in rec:
            assert out.shape == img.shape
        else:
            assert 0.5 * h <= oh <= 1.35 * h and 0.5 * w <= ow <= 1.35 * w
        assert got is not None and len(got) <= len(boxes)
        for b in got:
            assert 0 <= b.x0 < b.x1 <= ow and 0 <= b.y0 < b.y1 <= oh
            assert b.label in DETECTOR_CLASSES
        changed += not np.array_equal(out, img)
    assert changed >= 55  # at strength 1 almost every draw changes something


def test_boxes_follow_geometry() -> None:
    """Geometry only: every kept box must match the bright object's extent in the output."""
    img, boxes = _scene()
    checked = 0
    moved = 0
    for seed in range(40):
        rec: list[str] = []
        out, got = randomise(img, boxes, np.random.default_rng(1000 + seed), ops=GEOMETRIC, record=rec)
        if "fill.white" in rec:
            continue  # a white border would merge with the white objects
        assert got is not None
        moved += bool(set(rec) & GEOMETRIC)
        for b in got:
            # the object's bright pixels near the box (objects are far apart: no neighbour inside)
            mx, my = 0.25 * (b.x1 - b.x0) + 4, 0.25 * (b.y1 - b.y0) + 4
            x0, y0 = max(0, int(b.x0 - mx)), max(0, int(b.y0 - my))
            x1, y1 = min(out.shape[1], int(b.x1 + mx) + 1), min(out.shape[0], int(b.y1 + my) + 1)
            ys, xs = np.nonzero(out[y0:y1, x0:x1] > 0.85)  # grey fill is at most 0.7
            assert xs.size, (seed, b)
            seen = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            iou = _iou((b.x0, b.y0, b.x1, b.y1), seen)
            assert iou >= 0.8, (seed, b.label, iou, rec)
            checked += 1
    assert moved >= 20 and checked >= 60


def test_visibility_rule_drops_mostly_hidden_boxes() -> None:
    # 100x100 image; boxes hanging off the left edge by varying amounts
    def kept(label: str, visible_px: float) -> bool:
        geo = _Geometry([Box(visible_px - 100, 10, visible_px, 60, label)])
        geo.keep_rect(100, 100)
        return bool(geo.result(100, 100))

    assert kept("stem", 45) and not kept("stem", 35)  # rectangle: visible share = width share
    assert MIN_VISIBLE["hip_joint_right"] == 0.5
    # ellipse: a 50 % area share needs the cut at the centre line
    assert kept("hip_joint_right", 52) and not kept("hip_joint_right", 45)
    geo = _Geometry([Box(-20, 10, 80, 60, "stem")])
    geo.keep_rect(100, 100)
    (b,) = geo.result(100, 100)
    assert (b.x0, b.y0, b.x1, b.y1) == (0.0, 10.0, 80.0, 60.0)  # clipped to the image


def test_deterministic_for_a_seed() -> None:
    img, boxes = _scene(160)
    for seed in (3, 17, 123):
        a = randomise(img, boxes, np.random.default_rng(seed))
        b = randomise(img, boxes, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
    c = randomise(img, boxes, np.random.default_rng(4))
    d = randomise(img, boxes, np.random.default_rng(5))
    assert c[0].shape != d[0].shape or not np.array_equal(c[0], d[0])


def test_every_transform_and_variant_fires_and_stays_finite() -> None:
    img, boxes = _scene(128)
    counts: dict[str, int] = {}
    rng = np.random.default_rng(7)
    for _ in range(300):
        rec: list[str] = []
        out, _ = randomise(img, boxes, rng, record=rec)
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        for name in rec:
            counts[name] = counts.get(name, 0) + 1
    missing = (set(TRANSFORMS) | set(VARIANTS)) - set(counts)
    assert not missing, f"never fired in 300 draws: {sorted(missing)}"
    assert set(counts) <= set(TRANSFORMS) | set(VARIANTS)
    # rare inversion stays rare; common ones common (probabilities are what they say)
    assert 1 <= counts["invert"] <= 25 and counts["noise"] >= 140


def test_degenerate_inputs_give_finite_output() -> None:
    rng = np.random.default_rng(11)
    for img in (np.zeros((64, 64), np.float32), np.ones((40, 90), np.float32), _scene(24)[0]):
        for _ in range(40):
            out, _ = randomise(img, [], rng, strength=2.0)
            assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match="unknown transforms"):
        randomise(_scene(32)[0], None, rng, ops=["flip"])


def test_never_flips_left_right() -> None:
    """A marked object on the image left (the patient's right) stays left, as does its box."""
    size = 200
    img = np.full((size, size), 0.2, np.float32)
    cv2.circle(img, (40, 100), 18, 1.0, -1)
    box = [Box(22, 82, 58, 118, "hip_joint_right")]
    seen = 0
    for seed in range(60):
        rec: list[str] = []
        out, got = randomise(img, box, np.random.default_rng(seed), strength=0.5, ops=GEOMETRIC, record=rec)
        assert got is not None
        for b in got:
            assert b.label == "hip_joint_right" and (b.x0 + b.x1) / 2 < out.shape[1] / 2
        if "fill.white" not in rec:
            xs = np.nonzero(out > 0.8)[1]
            if xs.size:
                assert xs.mean() < out.shape[1] / 2, (seed, rec)
                seen += 1
    assert seen >= 30


def test_limit_size_scales_boxes() -> None:
    img = np.zeros((1000, 500), np.float32)
    out, boxes = limit_size(img, [Box(100, 200, 300, 400, "cup")], 250)
    assert out.shape == (250, 125)
    assert boxes == [Box(25, 50, 75, 100, "cup")]
    same, _ = limit_size(img, None, 2000)
    assert same is img


def test_detector_dataset_copies(tmp_path: Path) -> None:
    from node.train.detector import write_yolo_dataset

    img, boxes = _scene(128)
    samples = [Sample(img, View.AP_PELVIS, boxes=boxes), Sample(img, View.OTHER, boxes=None)]
    n = write_yolo_dataset(samples, tmp_path / "a", "train", 96, copies=3, seed=5, strength=1.0)
    assert n == 3  # the sample without detector labels is skipped
    pngs = sorted((tmp_path / "a" / "images" / "train").glob("*.png"))
    assert [p.stem for p in pngs] == ["000000", "000000_1", "000000_2"]
    clean_dir = tmp_path / "clean"
    assert write_yolo_dataset(samples, clean_dir, "train", 96) == 1
    assert pngs[0].read_bytes() == (clean_dir / "images" / "train" / "000000.png").read_bytes()
    assert pngs[1].read_bytes() != pngs[0].read_bytes() != pngs[2].read_bytes()
    for lab in (tmp_path / "a" / "labels" / "train").glob("*.txt"):
        for line in lab.read_text().splitlines():
            cls, *xywh = line.split()
            assert 0 <= int(cls) < len(DETECTOR_CLASSES)
            assert all(0.0 <= float(v) <= 1.0 for v in xywh)
    # reproducible for a seed
    write_yolo_dataset(samples, tmp_path / "b", "train", 96, copies=3, seed=5, strength=1.0)
    for p in pngs:
        assert p.read_bytes() == (tmp_path / "b" / "images" / "train" / p.name).read_bytes()


def test_randomise_flags_and_manifest_settings() -> None:
    from node.train import detector as det_train
    from node.train import triage as tri_train
    from node.train.cli import describe_randomisation, randomisation_of

    for module in (det_train, tri_train):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        on = randomisation_of(p.parse_args([]))
        assert on["enabled"] and on["copies"] == 2 and on["strength"] == 1.0 and on["clean_first"]
        assert set(on["probabilities"]) == set(TRANSFORMS)
        off = randomisation_of(p.parse_args(["--no-randomise"]))
        assert not off["enabled"]
        assert describe_randomisation(off) == "no domain randomisation"
        custom = randomisation_of(
            p.parse_args(["--copies", "4", "--randomise-strength", "0.5", "--no-clean-first"])
        )
        assert (custom["copies"], custom["strength"], custom["clean_first"]) == (4, 0.5, False)
        assert "strength 0.5" in describe_randomisation(custom)
    m = det_train.build_manifest("x.yaml", 64, "0.0.1", "d", "cmd", {}, {"randomisation": on})
    assert m.extra["randomisation"]["version"] == on["version"]


def test_triage_randomiser_keeps_protected_hips_and_is_reproducible() -> None:
    from node.train.triage import Randomiser, randomise_keeping

    size = 200
    img = np.full((size, size), 0.2, np.float32)
    cv2.circle(img, (22, 100), 18, 1.0, -1)  # hips close to both edges: crops / zooms cut them
    cv2.circle(img, (178, 100), 18, 1.0, -1)
    hips = [Box(4, 82, 40, 118, "hip_joint_right"), Box(160, 82, 196, 118, "hip_joint_left")]
    lost_plain = lost_kept = used = 0
    for seed in range(60):
        for keep in (False, True):
            rec: list[str] = []
            rng = np.random.default_rng(seed)
            if keep:
                out = randomise_keeping(img, hips, rng, 1.0, ops=GEOMETRIC, record=rec)
            else:
                out = randomise(img, None, rng, 1.0, ops=GEOMETRIC, record=rec)[0]
            if "fill.white" in rec:
                continue
            bright = out > 0.8
            half = out.shape[1] // 2
            lost = not (bright[:, :half].sum() >= 300 and bright[:, half:].sum() >= 300)
            if keep:
                lost_kept += lost
                used += 1
            else:
                lost_plain += lost
    assert lost_plain >= 3, "the scene must be one where unprotected draws lose a hip"
    assert lost_kept == 0 and used >= 30

    samples = [
        Sample(img, View.AP_PELVIS, boxes=hips),
        Sample(img[:, :120].copy(), View.AP_HIP, boxes=None),
    ]
    r = Randomiser.from_samples(samples, 64, strength=1.0, seed=3, clean_share=0.0)
    a, b = r.batch([0, 1], epoch=2), r.batch([0, 1], epoch=2)
    assert a.shape == (2, 1, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, r.batch([0, 1], epoch=3))
    from node.infer.preprocess import letterbox

    clean = Randomiser.from_samples(samples, 64, strength=1.0, seed=3, clean_share=1.0)
    source = limit_size(img, None, 2 * 64)[0].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(clean.image(0, 0), letterbox(source, 64, 64)[0])


def test_triage_trains_on_randomised_batches_reproducibly() -> None:
    """One tiny epoch through the randomiser path (prefetch thread included), twice: same model."""
    pytest.importorskip("timm")
    from node.train import triage as tri_train

    img, boxes = _scene(96)
    samples = [
        Sample(img, View.AP_PELVIS, None, {Side.RIGHT: True, Side.LEFT: False}, boxes),
        Sample(img[:, :60].copy(), View.AP_HIP, Side.RIGHT, {Side.RIGHT: False}, None),
        Sample(img.T.copy(), View.OTHER, None, {}, []),
    ] * 2
    size = 32
    labels = tri_train.to_tensors(samples, size, images=False)
    assert labels.x.shape == (6, 1, 0, 0) and len(labels) == 6
    val = tri_train.to_tensors(samples, size)
    probs = []
    for _ in range(2):
        r = tri_train.Randomiser.from_samples(samples, size, strength=1.0, seed=9, clean_share=0.3)
        model, metrics = tri_train.train(
            labels, val, "mobilenetv3_small_050", epochs=1, batch_size=3, lr=1e-3, seed=2, randomiser=r
        )
        assert 0.0 <= metrics["view_accuracy"] <= 1.0
        probs.append(tri_train.predict(model, val.x)["view"])
    np.testing.assert_array_equal(probs[0], probs[1])
