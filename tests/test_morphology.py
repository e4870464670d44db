"""Morphology runtime: crops, hardware exclusion, class-activation maps, ensemble, thresholds.

The models here are hand-built (torch → legacy ONNX export → manifest, exactly the path the
trainer takes) so that the expected probabilities and heatmaps are known in closed form.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from node.config import ModelsConfig
from node.domain import MORPHOLOGY_FLAGS, Box, Side
from node.infer.manifest import Manifest, OutputSpec
from node.infer.morphology import (
    FEATURES_OUTPUT,
    LOGITS_OUTPUT,
    OUTPUT_CLASSES,
    MorphologyEnsemble,
    MorphologyModel,
    MorphologyModelError,
    crop_joint,
    crop_region,
    normalise_heatmap,
    score_image,
    select_joint_crops,
)
from node.train.morphology import INPUT_NAME, auroc, binary_metrics, input_spec, youden_threshold

# The legacy exporter is what the project requires (dynamo=False); torch announces its deprecation.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.onnx"),
]

SIZE = 64
POOL = 8  # feature stride of the toy model


class ToyNet(torch.nn.Module):  # type: ignore[misc]
    """features = [avgpool(x), -avgpool(x)] (stride 8); logits = Linear(GAP(features))."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, len(OUTPUT_CLASSES))
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            self.fc.bias.copy_(torch.from_numpy(bias.astype(np.float32)))

    def forward(self, x: Any) -> tuple[Any, Any]:
        f = torch.nn.functional.avg_pool2d(x, POOL)
        feats = torch.cat([f, -f], dim=1)
        return self.fc(feats.mean(dim=(2, 3))), feats


def write_toy_model(
    out: Path,
    weight: np.ndarray,
    bias: np.ndarray,
    thresholds: dict[str, float] | None = None,
    manifest_weight: np.ndarray | None = None,
    margin: float = 0.15,
) -> Path:
    from node.train.common import export_onnx, write_model

    model = ToyNet(weight, bias).eval()
    export_onnx(model, out / "model.onnx", INPUT_NAME, [LOGITS_OUTPUT, FEATURES_OUTPUT], (1, 1, SIZE, SIZE))
    cam_w = weight if manifest_weight is None else manifest_weight
    manifest = Manifest(
        name="morphology",
        version=out.name,
        task="morphology",
        architecture="toy",
        input=input_spec(SIZE),
        outputs=(OutputSpec(LOGITS_OUTPUT, OUTPUT_CLASSES), OutputSpec(FEATURES_OUTPUT)),
        thresholds=thresholds or dict.fromkeys(MORPHOLOGY_FLAGS, 0.5),
        extra={
            "cam": {"weight": cam_w.tolist(), "bias": bias.tolist()},
            "crop": {"margin": margin},
        },
    )
    write_model(manifest, out)
    return out


def toy_weights(bias: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    w = np.zeros((len(OUTPUT_CLASSES), 2))
    w[0] = (4.0, 0.0)  # ischial_spine_sign: evidence where the crop is bright
    w[1] = (0.0, 4.0)  # cam_deformity: evidence where the crop is dark
    w[2] = (1.0, 1.0)  # dysplasia: constant map (w·f = 0 everywhere)
    w[3] = (2.0, 0.0)
    return w, np.full(len(OUTPUT_CLASSES), bias)


def spot_crop(row: int, col: int, n: int = 200) -> np.ndarray:
    """A dark crop with a bright square around (row, col)."""
    img = np.full((n, n), 0.1, dtype=np.float32)
    img[max(row - 20, 0) : row + 20, max(col - 20, 0) : col + 20] = 0.9
    return img


def cfg_for(root: Path, names: list[str]) -> ModelsConfig:
    return ModelsConfig(root=root, morphology=names, batch_size=2)


# ---------------------------------------------------------------------------------- crops


def test_crop_joint_is_square_with_margin_and_edge_padding() -> None:
    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    box = Box(40, 30, 80, 50)  # 40 wide, 20 high
    region = crop_region(box, 0.25)
    assert region.width == region.height == 60  # 40 * (1 + 2 * 0.25)
    crop = crop_joint(image, box, 0.25)
    assert crop.shape == (60, 60)
    assert crop[0, 0] == image[int(region.y0), int(region.x0)]
    # at the border the crop is padded with the edge pixels, not zeros
    corner = crop_joint(image, Box(0, 0, 20, 20), 0.5)
    assert corner.shape == (40, 40)
    assert corner[0, 0] == image[0, 0] and corner[0, 15] == image[0, 5]
    with pytest.raises(ValueError, match="outside the image"):
        crop_joint(image, Box(500, 500, 540, 540), 0.1)
    with pytest.raises(ValueError, match="2-D"):
        crop_joint(np.zeros((3, 10, 10)), box, 0.1)


def test_select_joint_crops_refuses_hardware_with_reason() -> None:
    image = np.random.default_rng(0).random((400, 600)).astype(np.float32)
    boxes = [
        Box(50, 100, 200, 250, "hip_joint_right", 0.9),
        Box(60, 110, 190, 240, "hip_joint_right", 0.4),  # weaker duplicate: ignored
        Box(400, 100, 550, 250, "hip_joint_left", 0.95),
        Box(420, 120, 500, 200, "cup", 0.9),  # left hip has a cup
        Box(0, 380, 10, 390, "stem", 0.9),  # far away: no effect
    ]
    crops = select_joint_crops(image, boxes, margin=0.1)
    by_side = {c.side: c for c in crops}
    assert set(by_side) == {Side.RIGHT, Side.LEFT}
    right, left = by_side[Side.RIGHT], by_side[Side.LEFT]
    assert right.crop is not None and right.refusal_reason is None and right.joint_box.score == 0.9
    assert right.crop.shape == (180, 180)
    assert left.crop is None and left.refusal_reason is not None and "hardware" in left.refusal_reason
    assert "cup" in left.refusal_reason


# ---------------------------------------------------------------------------------- metrics


def test_auroc_and_youden_match_sklearn_and_hand_cases() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    p = np.round(rng.random(300) * 0.5 + y * 0.3, 2)  # ties on purpose
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert math.isnan(auroc(np.ones(4, bool), np.arange(4.0)))
    y2 = np.array([0, 0, 1, 1], bool)
    p2 = np.array([0.1, 0.4, 0.35, 0.8])
    t = youden_threshold(y2, p2)
    # best J = 0.5 is reached by cuts between 0.1 and 0.35 or between 0.4 and 0.8; first one wins
    assert 0.1 < t < 0.35
    m = binary_metrics(y2, p2, 0.6)
    assert (m["sensitivity"], m["specificity"], m["accuracy"]) == (0.5, 1.0, 0.75)


# ---------------------------------------------------------------------------------- CAM


def test_heatmaps_are_crop_sized_normalised_and_point_at_the_evidence(tmp_path: Path) -> None:
    w, b = toy_weights()
    write_toy_model(tmp_path / "morphology" / "1.0.0", w, b)
    ens = MorphologyEnsemble.load(cfg_for(tmp_path, ["morphology"]))
    crops = [spot_crop(40, 150, n=200), spot_crop(160, 40, n=180)]
    preds = ens.predict_with_heatmaps(crops)
    for crop, pred in zip(crops, preds, strict=True):
        assert set(pred.heatmaps) == set(MORPHOLOGY_FLAGS)
        for hm in pred.heatmaps.values():
            assert hm.shape == crop.shape and hm.dtype == np.float32
            assert hm.min() >= 0.0 and hm.max() <= 1.0
        bright = np.unravel_index(int(np.argmax(crop)), crop.shape)
        peak = np.unravel_index(int(np.argmax(pred.heatmaps["ischial_spine_sign"])), crop.shape)
        assert math.dist(peak, bright) < 45  # the bright square's neighbourhood (crop px)
        assert pred.heatmaps["ischial_spine_sign"].max() == pytest.approx(1.0)
        # the "dark" flag has its *minimum* on the spot
        dark = pred.heatmaps["cam_deformity"]
        assert dark[peak] == pytest.approx(0.0, abs=0.05)
        # no spatial preference → an all-zero map, not amplified noise
        assert float(np.abs(pred.heatmaps["dysplasia"]).max()) == 0.0
    # a constant map is zeros; otherwise 0..1
    assert normalise_heatmap(np.ones((2, 2), np.float32), 5, 7).shape == (5, 7)


def test_manifest_head_must_reproduce_the_logits(tmp_path: Path) -> None:
    w, b = toy_weights()
    wrong = w.copy()
    wrong[0] = (-4.0, 0.0)
    write_toy_model(tmp_path / "morphology" / "1.0.0", w, b, manifest_weight=wrong)
    with pytest.raises(MorphologyModelError, match="do not reproduce the logits"):
        MorphologyModel.load("morphology", cfg_for(tmp_path, ["morphology"]))


# ---------------------------------------------------------------------------------- ensemble


def test_ensemble_averages_probabilities_and_thresholds(tmp_path: Path) -> None:
    w, _ = toy_weights()
    w = w * 0.0  # logits = bias only: probabilities known exactly
    b1 = np.array([2.0, -1.0, 0.0, 0.5, 0.0])
    b2 = np.array([0.0, 1.0, -3.0, 0.5, 1.0])
    t1 = {"ischial_spine_sign": 0.8, "cam_deformity": 0.5, "dysplasia": 0.2, "other_abnormality": 0.6}
    t2 = {"ischial_spine_sign": 0.6, "cam_deformity": 0.5, "dysplasia": 0.1, "other_abnormality": 0.7}
    write_toy_model(tmp_path / "m1" / "1.0.0", w, b1, t1)
    write_toy_model(tmp_path / "m2" / "1.0.0", w, b2, t2)
    ens = MorphologyEnsemble.load(cfg_for(tmp_path, ["m1", "m2"]))
    crops = [spot_crop(50, 50), spot_crop(100, 20, n=150), spot_crop(10, 10, n=120)]
    flags = ens.predict(crops)
    sig = 1.0 / (1.0 + np.exp(-np.stack([b1, b2])))
    expected = sig.mean(axis=0)
    assert len(flags) == 3
    for per_crop in flags:
        assert [f.name for f in per_crop] == list(MORPHOLOGY_FLAGS)
        for k, f in enumerate(per_crop):
            assert f.probability == pytest.approx(expected[k], abs=1e-6)
            assert f.threshold == pytest.approx((t1[f.name] + t2[f.name]) / 2.0)
    # thresholds applied: ischial 0.5*(0.881+0.5)=0.69 < 0.7 → absent; cam 0.5 ≥ 0.5 → present;
    # dysplasia 0.5*(0.5+0.047)=0.27 ≥ 0.15 → present; other 0.622 < 0.65 → absent
    assert [f.present for f in flags[0]] == [False, True, True, False]
    sex = ens.predict_with_heatmaps(crops[:1], heatmaps=False)[0].sex_female_probability
    assert sex == pytest.approx(expected[4], abs=1e-6)
    # explicit thresholds override the members'
    ens2 = MorphologyEnsemble(ens.models, thresholds=dict.fromkeys(MORPHOLOGY_FLAGS, 0.99))
    assert not any(f.present for f in ens2.predict(crops[:1])[0])
    assert ens.predict([]) == []


def test_ensemble_refuses_members_with_different_crop_margins(tmp_path: Path) -> None:
    w, b = toy_weights()
    write_toy_model(tmp_path / "m1" / "1.0.0", w, b, margin=0.15)
    write_toy_model(tmp_path / "m2" / "1.0.0", w, b, margin=0.35)
    with pytest.raises(MorphologyModelError, match="crop margin"):
        MorphologyEnsemble.load(cfg_for(tmp_path, ["m1", "m2"]))
    write_toy_model(tmp_path / "m3" / "1.0.0", w, b, margin=0.35)
    assert MorphologyEnsemble.load(cfg_for(tmp_path, ["m2", "m3"])).margin == 0.35


def test_single_member_uses_its_own_thresholds(tmp_path: Path) -> None:
    w, b = toy_weights()
    t = {"ischial_spine_sign": 0.31, "cam_deformity": 0.42, "dysplasia": 0.53, "other_abnormality": 0.64}
    write_toy_model(tmp_path / "morphology" / "2.0.0", w, b, t)
    ens = MorphologyEnsemble.load(cfg_for(tmp_path, ["morphology"]))
    assert ens.thresholds == pytest.approx(t)


def test_score_image_scores_free_joints_and_refuses_hardware(tmp_path: Path) -> None:
    w, b = toy_weights()
    write_toy_model(tmp_path / "morphology" / "1.0.0", w, b)
    ens = MorphologyEnsemble.load(cfg_for(tmp_path, ["morphology"]))
    image = np.full((300, 500), 0.2, np.float32)
    image[100:140, 60:100] = 0.9  # bright spot in the right joint
    boxes = [
        Box(40, 80, 160, 200, "hip_joint_right", 0.9),
        Box(340, 80, 460, 200, "hip_joint_left", 0.9),
        Box(350, 90, 420, 160, "cup", 0.8),
    ]
    results = {r.side: r for r in score_image(ens, image, boxes)}
    right, left = results[Side.RIGHT], results[Side.LEFT]
    assert left.flags == [] and left.heatmaps == {} and left.refusal_reason is not None
    assert [f.name for f in right.flags] == list(MORPHOLOGY_FLAGS) and right.refusal_reason is None
    hm = right.heatmaps["ischial_spine_sign"]
    assert hm.shape == (int(right.region.height), int(right.region.width))
    r, c = np.unravel_index(int(np.argmax(hm)), hm.shape)
    assert 90 <= right.region.y0 + r <= 150 and 50 <= right.region.x0 + c <= 110
