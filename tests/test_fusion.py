"""Implant fusion rule (node.infer.fusion): detector hardware confirmed by the triage head."""

from __future__ import annotations

import pytest

from node.domain import Box, Side
from node.infer.fusion import IMPLANT_THRESHOLD, SideAssigner, hardware_score, implant_score


@pytest.mark.parametrize(
    ("p", "hw", "present"),
    [
        (0.01, 0.80, True),  # confident detector overrules a triage miss
        (0.99, 0.00, False),  # triage alone never creates an implant
        (0.60, 0.30, True),  # weak detection confirmed by triage
        (0.40, 0.30, False),  # weak detection, triage disagrees
        (0.90, 0.20, False),  # below the detector's reporting threshold
        (None, 0.55, True),
        (None, 0.30, False),
    ],
)
def test_rule_table(p: float | None, hw: float, present: bool) -> None:
    score = implant_score(p, hw)
    assert score is not None
    assert (score >= IMPLANT_THRESHOLD) is present
    assert 0.0 <= score <= 1.0


def test_without_detector_the_triage_probability_stands() -> None:
    assert implant_score(0.7, None) == 0.7
    assert implant_score(None, None) is None


def test_boxes_go_to_the_nearer_joint_on_ap_pelvis() -> None:
    boxes = [
        Box(100, 100, 200, 200, "hip_joint_right", 0.9),
        Box(600, 100, 700, 200, "hip_joint_left", 0.9),
        Box(610, 110, 680, 180, "cup", 0.7),
        Box(120, 110, 180, 180, "stem", 0.4),
        Box(130, 110, 170, 170, "other_hardware", 0.99),  # screws are not an arthroplasty
    ]
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)
    assert hardware_score(boxes, Side.LEFT, assign) == pytest.approx(0.7)
    assert hardware_score(boxes, Side.RIGHT, assign) == pytest.approx(0.4)


def test_without_joints_the_image_half_decides_and_single_views_take_everything() -> None:
    boxes = [Box(600, 100, 700, 200, "cup", 0.6)]  # right half of the image = patient's left
    assert hardware_score(boxes, Side.LEFT, SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)) == 0.6
    assert hardware_score(boxes, Side.RIGHT, SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)) == 0.0
    single = SideAssigner(boxes, (Side.RIGHT,), 800)
    assert hardware_score(boxes, Side.RIGHT, single) == 0.6


# --- union with the metal finder (issue 12) -----------------------------------------------------

from node.infer.fusion import decide_implant  # noqa: E402


@pytest.mark.parametrize(
    ("p", "hw", "metal", "present", "uncertain"),
    [
        (0.99, 0.00, 0.95, True, True),  # the case: triage sure, no box, obvious metal
        (0.10, 0.00, 0.95, True, True),  # metal alone is enough, and says so
        (0.99, 0.90, 0.95, True, False),  # everyone agrees
        (0.01, 0.00, 0.00, False, False),  # everyone agrees: native hip
        (0.90, 0.00, 0.00, False, True),  # triage alone: not an implant, but stated
        (0.90, 0.00, None, False, True),  # no usable metal reading: the old rule, stated
        (0.05, 0.80, 0.00, True, True),  # detector box, no metal anywhere: stated
        (0.05, 0.00, 0.30, False, True),  # ambiguous metal
        (None, None, None, None, False),  # nothing to decide with
    ],
)
def test_union_with_metal(p: float | None, hw: float | None, metal: float | None, present: bool | None,
                          uncertain: bool) -> None:
    d = decide_implant(p, hw, metal)
    assert d.present is present
    assert (d.uncertainty is not None) is uncertain, d.uncertainty
    if present:
        assert d.probability is not None and d.probability >= 0.5


def test_metal_only_finding_names_its_sources() -> None:
    d = decide_implant(0.2, 0.0, 0.93)
    assert d.by_metal_only and d.uncertainty is not None
    assert "metal finder" in d.uncertainty and "detector found no cup or stem" in d.uncertainty
    assert "p=0.20" in d.uncertainty
