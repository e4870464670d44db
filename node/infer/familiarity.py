"""Knowing when it does not know: does this image look like what the models were trained on?

Why agreement between models rather than a learned out-of-distribution score: the triage model
and the detector were trained separately and read the image at different resolutions, so on an
image like their training data they agree about what must be on it. An AP pelvis carries two
hip joints, two teardrops and two ischial tuberosities; an AP or lateral hip carries its joint.
When triage calls the view confidently but the detector finds little of the anatomy that view
must contain, or triage hesitates between views, the image is outside what the models know (a
new vendor's processing, a child's pelvis, a film digitised badly) and every result on it is
marked low confidence in the SR, with the reason. The check costs nothing: it reads outputs the
node computes anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.domain import JOINT_LABELS, Box, View

# What each view must show, as detector labels with their counts.
EXPECTED: dict[View, dict[str, int]] = {
    View.AP_PELVIS: {"hip_joint_right": 1, "hip_joint_left": 1, "teardrop": 2, "ischial_tuberosity": 2},
    View.AP_HIP: {"hip_joint": 1},
    View.LATERAL_HIP: {"hip_joint": 1},
    View.OBLIQUE_HIP: {"hip_joint": 1},
}
VIEW_NAMES: dict[View, str] = {
    View.AP_PELVIS: "an AP pelvis",
    View.AP_HIP: "an AP hip",
    View.LATERAL_HIP: "a lateral hip",
    View.OBLIQUE_HIP: "an oblique hip",
    View.OTHER: "other",
}
# Below this fraction of the expected anatomy found, the image is called unfamiliar.
MIN_ANATOMY_FOUND = 0.5
# Triage's top view probability below this is hesitation between views.
MIN_VIEW_PROBABILITY = 0.8


def anatomy_found(view: View, boxes: Sequence[Box]) -> tuple[int, int]:
    """(found, expected) counts of the structures ``view`` must show, from the detector's boxes."""
    expected = EXPECTED.get(view)
    if not expected:
        return 0, 0
    found = 0
    for label, count in expected.items():
        if label == "hip_joint":
            n = sum(1 for b in boxes if b.label in JOINT_LABELS)
        else:
            n = sum(1 for b in boxes if b.label == label)
        found += min(n, count)
    return found, sum(expected.values())


def low_confidence_reason(
    view: View, view_probability: float, boxes: Sequence[Box], *, detector_ran: bool
) -> str | None:
    """Why results on this image should be read as low confidence, or None when the models agree."""
    reasons: list[str] = []
    if view_probability < MIN_VIEW_PROBABILITY:
        reasons.append(f"view called {VIEW_NAMES[view]} at only p={view_probability:.2f}")
    if detector_ran:
        found, expected = anatomy_found(view, boxes)
        if expected and found < MIN_ANATOMY_FOUND * expected:
            reasons.append(f"the detector found {found} of the {expected} landmarks expected on {VIEW_NAMES[view]}")
    if not reasons:
        return None
    return "image unlike the models' training images (" + "; ".join(reasons) + ")"
