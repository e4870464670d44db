"""Implant present per side: the detector's hardware boxes, confirmed by the triage head.

Why fuse: the registry abstract (seed 004) runs a classifier *and* a detector before measuring.
On phantoms the two fail differently. The triage head works on a 192-px thumbnail and misses
some implants that the detector, at a higher resolution, boxes with a confident score (lateral
views especially); the triage head also reports the odd implant where the detector finds no
metal at all. Measured on 300 validation phantoms (seed 1001, never trained on) the triage head
alone was right for 98.3 % of imaged sides, the fused rule below for 99.7 %; the rule was chosen
there and only then run on the evaluation set (see ``hipnode train evaluate``).

The rule, as one score so that the SR can carry a single number with the flag::

    hw    = best cup or stem score on that side (0 when the detector found none)
    score = max(hw, min(2·hw, p_triage))          present when score >= 0.5

* the detector alone decides when it is confident (``hw >= 0.5``);
* a weak detection (``0.25 <= hw < 0.5``; 0.25 is the detector's reporting threshold) counts
  only when the triage head agrees (``p_triage >= 0.5``);
* without any cup or stem box on that side, no implant, whatever the triage head says: the
  cup measurement needs the box anyway, and a claimed implant with nothing to measure would be
  a finding nobody can check.

Without a detector the triage probability is used as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from node.domain import Box, Side, best_joint_boxes

# an arthroplasty shows as a cup or a stem; screws and wires ("other_hardware") are not one
ARTHROPLASTY_LABELS: tuple[str, ...] = ("cup", "stem")
IMPLANT_THRESHOLD = 0.5


def side_of_box(box: Box, joints: Mapping[Side, Box], image_width: int) -> Side:
    """Patient side of a structure on an AP-like image: the nearer hip joint, else the image
    half (the patient's right is displayed on the image's left)."""
    c = box.centre
    if joints:
        return min(joints, key=lambda s: abs(joints[s].centre.x - c.x) + abs(joints[s].centre.y - c.y))
    return Side.RIGHT if c.x < image_width / 2.0 else Side.LEFT


class SideAssigner:
    """Assigns detector boxes to patient sides for one image.

    On a single-hip view every box belongs to the imaged side (the model decided which); on an
    AP pelvis a box goes to the nearer detected hip joint, else to its image half.
    """

    def __init__(self, boxes: Sequence[Box], imaged_sides: Sequence[Side], image_width: int) -> None:
        self.joints = best_joint_boxes(boxes)
        self.single = imaged_sides[0] if len(imaged_sides) == 1 else None
        self.width = image_width

    def __call__(self, box: Box) -> Side:
        return self.single if self.single is not None else side_of_box(box, self.joints, self.width)


def hardware_score(boxes: Sequence[Box], side: Side, assign: SideAssigner) -> float:
    """Best cup or stem score among the boxes assigned to ``side`` (0.0 when none)."""
    return max((b.score for b in boxes if b.label in ARTHROPLASTY_LABELS and assign(b) is side), default=0.0)


def implant_score(triage_probability: float | None, hardware: float | None) -> float | None:
    """The fused score of the module docstring; ``hardware`` None means no detector ran."""
    if hardware is None:
        return triage_probability
    p = 0.0 if triage_probability is None else triage_probability
    return max(hardware, min(2.0 * hardware, p))
