"""node.infer.familiarity: results are marked low confidence when the models disagree about
what the image shows."""

from __future__ import annotations

from node.domain import Box, View
from node.infer.familiarity import anatomy_found, low_confidence_reason


def _b(label: str) -> Box:
    return Box(0, 0, 10, 10, label, 0.9)


FULL_AP = [_b("hip_joint_right"), _b("hip_joint_left"), _b("teardrop"), _b("teardrop"),
           _b("ischial_tuberosity"), _b("ischial_tuberosity")]


def test_full_anatomy_and_confident_view_is_familiar() -> None:
    assert anatomy_found(View.AP_PELVIS, FULL_AP) == (6, 6)
    assert low_confidence_reason(View.AP_PELVIS, 0.97, FULL_AP, detector_ran=True) is None
    # extra boxes of one kind do not make up for missing ones
    assert anatomy_found(View.AP_PELVIS, [_b("teardrop")] * 5) == (2, 6)


def test_missing_anatomy_marks_low_confidence() -> None:
    reason = low_confidence_reason(View.AP_PELVIS, 0.97, FULL_AP[:2], detector_ran=True)
    assert reason is not None and "2 of the 6" in reason
    assert low_confidence_reason(View.AP_PELVIS, 0.97, FULL_AP[:3], detector_ran=True) is None  # 3 of 6
    reason = low_confidence_reason(View.LATERAL_HIP, 0.99, [_b("cup")], detector_ran=True)
    assert reason is not None and "0 of the 1" in reason
    # without a detector there is nothing to compare: only the view's own confidence counts
    assert low_confidence_reason(View.AP_PELVIS, 0.97, [], detector_ran=False) is None


def test_hesitant_view_marks_low_confidence() -> None:
    reason = low_confidence_reason(View.AP_PELVIS, 0.62, FULL_AP, detector_ran=True)
    assert reason is not None and "p=0.62" in reason
