"""Implant fusion rule (node.infer.fusion): detector hardware confirmed by the triage head."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from node.domain import Box, Side
from node.infer.fusion import IMPLANT_THRESHOLD, ImplantDecision, SideAssigner, hardware_score, implant_score


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
        (0.30, 0.00, 0.95, True, True),  # metal alone is enough unless triage firmly denies, and says so
        (0.10, 0.00, 0.95, False, True),  # metal only, both models deny it (a bright head): stated, not reported
        (None, None, 0.95, True, True),  # no models ran: the metal finder stands alone
        (0.99, 0.90, 0.95, True, False),  # everyone agrees
        (0.01, 0.00, 0.00, False, False),  # everyone agrees: native hip
        (0.90, 0.00, 0.00, False, True),  # triage alone: not an implant, but stated
        (0.90, 0.00, None, False, True),  # no usable metal reading: the old rule, stated
        (0.05, 0.80, 0.00, True, True),  # detector box, no metal anywhere: stated
        (0.05, 0.60, 0.00, False, True),  # an unsure detector box that triage and metal both deny: outvoted, stated
        (0.45, 0.79, 0.45, False, True),  # ... however close the other two come to 0.5
        (0.55, 0.60, 0.00, True, True),  # triage agrees with the box: reported, the metal's silence stated
        (0.05, 0.60, None, True, False),  # no usable metal reading: two sources only, the box stands
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


def test_an_outvoted_detector_box_is_stated_with_all_three_sources() -> None:
    d = decide_implant(0.12, 0.66, 0.0)
    assert d.present is False and d.uncertainty is not None
    assert "0.66" in d.uncertainty and "p=0.12" in d.uncertainty and "not reported" in d.uncertainty


def test_metal_only_finding_names_its_sources() -> None:
    d = decide_implant(0.2, 0.0, 0.93)
    assert d.by_metal_only and d.uncertainty is not None
    assert "metal finder" in d.uncertainty and "detector found no cup or stem" in d.uncertainty
    assert "p=0.20" in d.uncertainty


# --- weak hip-joint candidates on an AP pelvis (joint_candidates_for_ap_pelvis) ------------------


def _joint(side: str, x0: float, y0: float, score: float, size: float = 80.0) -> Box:
    return Box(x0, y0, x0 + size, y0 + size, f"hip_joint_{side}", score)


def test_a_missing_hip_takes_its_best_plausible_candidate_with_a_note() -> None:
    from node.infer.fusion import joint_candidates_for_ap_pelvis

    right = _joint("right", 60, 200, 0.8)
    cands = [
        _joint("left", 80, 210, 0.20),  # over the right hip: refused
        _joint("left", 330, 480, 0.18),  # far below the right hip: refused
        _joint("left", 320, 190, 0.12, size=300),  # more than three times its area: refused
        _joint("left", 330, 205, 0.09),  # the left hip
        _joint("left", 340, 200, 0.06),
    ]
    boxes, notes = joint_candidates_for_ap_pelvis([right], cands, image_width=512)
    assert boxes[0] is right and boxes[1] is cands[3] and len(boxes) == 2
    assert set(notes) == {Side.LEFT} and "0.09" in notes[Side.LEFT] and "low confidence" in notes[Side.LEFT]


def test_confident_hips_are_left_alone_and_two_weak_hips_must_sit_apart() -> None:
    from node.infer.fusion import joint_candidates_for_ap_pelvis

    both = [_joint("right", 60, 200, 0.8), _joint("left", 330, 200, 0.7)]
    boxes, notes = joint_candidates_for_ap_pelvis(both, [_joint("left", 320, 210, 0.2)], image_width=512)
    assert boxes == both and notes == {}
    # neither hip confident: the right takes its best; the left must then be on the other half
    cands = [_joint("right", 60, 200, 0.15), _joint("left", 90, 205, 0.14), _joint("left", 340, 210, 0.07)]
    boxes, notes = joint_candidates_for_ap_pelvis([], cands, image_width=512)
    assert boxes == [cands[0], cands[2]] and set(notes) == {Side.RIGHT, Side.LEFT}
    # no plausible candidate: nothing invented
    boxes, notes = joint_candidates_for_ap_pelvis([], [_joint("left", 0, 0, 0.1, size=400)], image_width=512)
    assert boxes == [] and notes == {}


def test_candidates_are_used_on_an_ap_pelvis_only() -> None:
    import numpy as np

    from node.domain import View
    from node.infer.triage import TriageResult
    from node.pipeline import analyse_hips

    image = np.full((512, 512), 0.3, dtype=np.float32)
    cands = [_joint("right", 60, 200, 0.15), _joint("left", 340, 210, 0.12)]

    def run(view: View, sides: tuple[Side, ...]) -> dict[Side, Box | None]:
        t = TriageResult(view=view, view_probability=0.99, view_probabilities={view: 0.99}, imaged_sides=sides,
                         side_probability=None if len(sides) == 2 else 0.99,
                         implant_probability={s: 0.01 for s in sides})
        hips, _ = analyse_hips(image, t, [], morphology=None, detector_ran=True, use_metal=False,
                               joint_candidates=cands)
        return {h.side: h.joint_box for h in hips}

    ap = run(View.AP_PELVIS, (Side.RIGHT, Side.LEFT))
    assert ap == {Side.RIGHT: cands[0], Side.LEFT: cands[1]}
    assert run(View.AP_HIP, (Side.RIGHT,)) == {Side.RIGHT: None}


def test_a_lone_weak_hip_must_lie_on_its_own_sides_half() -> None:
    """With no other hip to go by, a weak right-hip box on the image's right half (the
    patient's left) is not taken: it would report the hips on the wrong sides."""
    from node.infer.fusion import joint_candidates_for_ap_pelvis

    wrong = [_joint("right", 340, 200, 0.15)]
    assert joint_candidates_for_ap_pelvis([], wrong, image_width=512) == ([], {})


def test_metal_only_claim_that_both_models_deny_is_not_reported_but_stated() -> None:
    d = decide_implant(0.05, 0.0, 1.0)
    assert d.present is False and d.probability is not None and d.probability < 0.5
    assert d.uncertainty is not None and "metal finder" in d.uncertainty and "p=0.05" in d.uncertainty
    # a box under the detector's reporting threshold does not carry it past a denying triage model
    weak = decide_implant(0.05, 0.3, 1.0)
    assert weak.present is False and weak.uncertainty is not None and "weak cup or stem box (score 0.30" in weak.uncertainty
    # ... but where the triage model does not firmly deny (p >= METAL_ONLY_MIN_TRIAGE), the union stands
    assert decide_implant(0.25, 0.3, 1.0).present is True
    # and a box at the threshold is a detection: the union stands
    assert decide_implant(0.05, 0.5, 1.0).present is True


# --- detector boxes lying on fracture hardware (decide_implant_on_side) --------------------------


def _dhs_boxes() -> list[Box]:
    return [
        Box(100, 100, 200, 200, "hip_joint_right", 0.9),
        Box(600, 100, 700, 200, "hip_joint_left", 0.9),
        Box(120, 120, 170, 170, "cup", 0.73),  # the lag screw in the femoral head, called a cup
        Box(140, 150, 200, 300, "stem", 0.33),  # the side plate, called a stem
        Box(110, 110, 210, 320, "other_hardware", 0.32),  # the same device as fixation hardware
    ]


def test_cup_and_stem_boxes_on_fixation_hardware_do_not_count_when_metal_saw_no_arthroplasty() -> None:
    from node.infer.fusion import decide_implant_on_side

    boxes = _dhs_boxes()
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)
    d = decide_implant_on_side(0.56, boxes, Side.RIGHT, assign, 0.0)
    assert d.present is False
    assert d.uncertainty is not None and "fracture hardware" in d.uncertainty and "0.73" in d.uncertainty


def test_fixation_rule_never_overrides_metal_that_looks_like_an_arthroplasty() -> None:
    from node.infer.fusion import decide_implant_on_side

    boxes = _dhs_boxes()
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)
    assert decide_implant_on_side(0.56, boxes, Side.RIGHT, assign, 0.95).present is True
    assert decide_implant_on_side(0.56, boxes, Side.RIGHT, assign, None).present is True  # no metal reading
    # not on lateral views (a prosthesis and hardware overlap in projection), nor for a sure box
    assert decide_implant_on_side(0.56, boxes, Side.RIGHT, assign, 0.0, ap_view=False).present is True
    sure = [*boxes[:2], replace(boxes[2], score=0.91), *boxes[3:]]
    assert decide_implant_on_side(0.56, sure, Side.RIGHT, SideAssigner(sure, (Side.RIGHT, Side.LEFT), 800),
                                  0.0).present is True
    # a cup beside (not on) the fixation box counts as before
    apart = [*boxes[:2], Box(120, 20, 170, 70, "cup", 0.73), boxes[4]]
    assign = SideAssigner(apart, (Side.RIGHT, Side.LEFT), 800)
    d = decide_implant_on_side(0.56, apart, Side.RIGHT, assign, 0.0)
    assert d.present is True and "fracture hardware" not in (d.uncertainty or "")


def test_without_a_detector_the_side_decision_is_the_plain_union() -> None:
    from node.infer.fusion import decide_implant_on_side

    assign = SideAssigner([], (Side.RIGHT,), 800)
    assert decide_implant_on_side(0.9, None, Side.RIGHT, assign, None).present is True


# --- metal-only claims on metal the detector boxed as fixation (metal_on_fixation) ---------------


def _dhs_seen_by_metal() -> tuple[list[Box], list[Box]]:
    """Detector: hips and one fracture-hardware box, no cup or stem. Metal finder: a "stem"
    (the lag screw, barrel and side plate of a sliding hip screw) and a "head" (the lag screw's
    end in the femoral head) inside that box. (A stem with no ball at all meets ``lone_stem``
    first on AP views; the head keeps these tests on ``metal_on_fixation``.)"""
    boxes = [
        Box(100, 100, 200, 200, "hip_joint_right", 0.9),
        Box(600, 100, 700, 200, "hip_joint_left", 0.9),
        Box(110, 110, 230, 420, "other_hardware", 0.62),
    ]
    return boxes, [Box(120, 120, 225, 400, "stem", 0.99), Box(120, 112, 175, 167, "head", 0.95)]


def test_metal_only_stem_on_the_detectors_fixation_box_is_not_reported_but_stated() -> None:
    from node.infer.fusion import decide_implant_on_side

    boxes, metal_boxes = _dhs_seen_by_metal()
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)
    # without the metal boxes (callers that do not pass them) the union stands as before
    assert decide_implant_on_side(0.29, boxes, Side.RIGHT, assign, 0.99).present is True
    d = decide_implant_on_side(0.29, boxes, Side.RIGHT, assign, 0.99, metal_boxes=metal_boxes)
    assert d.present is False and not d.by_metal_only
    assert d.uncertainty is not None
    assert "fracture hardware" in d.uncertainty and "0.62" in d.uncertainty and "p=0.29" in d.uncertainty
    # on a lateral view the same while triage is below its threshold
    assert decide_implant_on_side(0.29, boxes, Side.RIGHT, assign, 0.99, ap_view=False,
                                  metal_boxes=metal_boxes).present is False
    # on an AP view a triage that is not confident does not keep stem-shaped metal either ...
    stem_only = metal_boxes[:1]
    d = decide_implant_on_side(0.64, boxes, Side.RIGHT, assign, 0.99, metal_boxes=stem_only)
    assert d.present is False and d.uncertainty is not None and "not confident" in d.uncertainty
    # ... but on a lateral view, where a prosthesis overlaps a plate in projection, it does
    assert decide_implant_on_side(0.64, boxes, Side.RIGHT, assign, 0.99, ap_view=False,
                                  metal_boxes=metal_boxes).present is True


def test_a_cup_or_ball_the_triage_model_calls_an_implant_is_reported_though_the_detector_boxed_fixation() -> None:
    """BALL_LABELS: on an AP view, metal the finder shapes as a cup or a head (a ball in the
    joint, which a plate or screw along the femur does not show) with triage at its threshold
    keeps the claim where the detector's fracture-hardware box lies over it (cemented sketch
    prostheses, triage 0.51-0.89); stem-shaped metal alone, a triage under 0.5, or a side view
    still meet the fixation rule."""
    from node.infer.fusion import BALL_LABELS, decide_implant_on_side

    assert frozenset({"cup", "head"}) == BALL_LABELS and IMPLANT_THRESHOLD == 0.5
    boxes, metal_boxes = _dhs_seen_by_metal()  # a stem and a head inside the fixation box
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)

    def decide(t: float, mb: list[Box], ap_view: bool = True) -> Any:
        return decide_implant_on_side(t, boxes, Side.RIGHT, assign, 0.99, ap_view=ap_view, metal_boxes=mb)

    cup = [metal_boxes[0], Box(120, 112, 175, 167, "cup", 0.95)]
    for mb in (metal_boxes, cup, [cup[1]]):
        assert decide(0.5, mb).present is True
        assert decide(0.64, mb).present is True
        low = decide(0.49, mb)
        assert low.present is False and low.uncertainty is not None and "fracture hardware" in low.uncertainty
        assert decide(0.64, mb, ap_view=False).present is True  # the side-view limit is 0.5 anyway
        assert decide(0.49, mb, ap_view=False).present is False
    assert decide(0.89, metal_boxes[:1]).present is False  # a stem alone: fixation's own shape


def test_metal_on_fixation_rule_keeps_the_union_whenever_another_source_or_place_disagrees() -> None:
    from node.infer.fusion import decide_implant_on_side

    boxes, metal_boxes = _dhs_seen_by_metal()
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)

    def present(t: float | None, bx: list[Box], mb: list[Box], metal: float = 0.99) -> bool | None:
        return decide_implant_on_side(t, bx, Side.RIGHT, SideAssigner(bx, (Side.RIGHT, Side.LEFT), 800), metal,
                                      metal_boxes=mb).present

    assert present(0.9, boxes, metal_boxes) is True  # triage is confident (issue 12's films: p >= 0.99)
    assert present(None, boxes, metal_boxes) is True  # no triage reading: nothing to agree with
    # a cup box at the detector's floor is not "no box"
    assert present(0.29, [*boxes, Box(120, 120, 170, 170, "cup", 0.26)], metal_boxes) is True
    # metal beside the fixation box (a prosthesis next to a plate)
    assert present(0.29, boxes, [Box(300, 100, 380, 400, "stem", 0.99), Box(300, 90, 350, 140, "head", 0.95)]) is True
    # one of two metal objects off the fixation box is enough to keep the claim
    assert present(0.29, boxes, [*metal_boxes, Box(120, 20, 190, 90, "cup", 0.95)]) is True
    # a fixation box below the detector's floor is no detection
    weak = [*boxes[:2], replace(boxes[2], score=0.2)]
    assert present(0.29, weak, metal_boxes) is True
    # the fixation box must be on this side
    other_side = [*boxes[:2], Box(560, 110, 720, 420, "other_hardware", 0.62)]
    assert present(0.29, other_side, metal_boxes) is True
    assert decide_implant_on_side(0.29, boxes, Side.RIGHT, assign, 0.3, metal_boxes=metal_boxes).present is False


def test_triage_with_a_weak_box_does_not_outweigh_no_metal_on_an_ap_view() -> None:
    from node.infer.fusion import decide_implant_on_side

    boxes = [Box(100, 100, 160, 160, "cup", 0.35), Box(90, 90, 200, 200, "hip_joint_right", 0.9)]
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)
    d = decide_implant_on_side(0.84, boxes, Side.RIGHT, assign, 0.0)
    assert d.present is False and d.uncertainty is not None
    assert "p=0.84" in d.uncertainty and "0.35" in d.uncertainty and "not reported" in d.uncertainty
    # a confident triage, metal of any shape, no metal reading, or a lateral view: the union stands
    assert decide_implant_on_side(0.95, boxes, Side.RIGHT, assign, 0.0).present is True
    assert decide_implant_on_side(0.84, boxes, Side.RIGHT, assign, 0.3).present is True
    assert decide_implant_on_side(0.84, boxes, Side.RIGHT, assign, None).present is True
    assert decide_implant_on_side(0.84, boxes, Side.RIGHT, assign, 0.0, ap_view=False).present is True


def test_metal_of_no_arthroplasty_shape_the_detector_boxed_as_fixation_outweighs_triage_and_a_weak_box() -> None:
    """Cannulated screws on an unseen style: triage says implant (0.58-0.80), the detector gives a
    weak cup box (0.30-0.38) and boxes the screws as fracture hardware, and the metal finder sees
    metal of no arthroplasty shape (evidence 0.25-0.45). On an AP view that is not reported, and
    the SR says why; each other source or view keeps the union."""
    from node.infer.fusion import decide_implant_on_side

    boxes = [Box(90, 90, 200, 200, "hip_joint_right", 0.9), Box(100, 100, 160, 160, "cup", 0.35),
             Box(95, 110, 260, 260, "other_hardware", 0.7)]
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)
    d = decide_implant_on_side(0.80, boxes, Side.RIGHT, assign, 0.45)
    assert d.present is False and d.uncertainty is not None
    assert "fracture hardware (score 0.70)" in d.uncertainty and "p=0.80" in d.uncertainty
    assert "not reported" in d.uncertainty
    # the union stands: a confident triage, an arthroplasty-shaped metal, a sure cup box, no
    # fixation box, a lateral view
    assert decide_implant_on_side(0.95, boxes, Side.RIGHT, assign, 0.45).present is True
    assert decide_implant_on_side(0.80, boxes, Side.RIGHT, assign, 0.95).present is True
    sure = [*boxes[:1], replace(boxes[1], score=0.6), *boxes[2:]]
    assert decide_implant_on_side(0.80, sure, Side.RIGHT, SideAssigner(sure, (Side.RIGHT, Side.LEFT), 800),
                                  0.45).present is True
    no_fix = boxes[:2]
    assert decide_implant_on_side(0.80, no_fix, Side.RIGHT, SideAssigner(no_fix, (Side.RIGHT, Side.LEFT), 800),
                                  0.45).present is True
    assert decide_implant_on_side(0.80, boxes, Side.RIGHT, assign, 0.45, ap_view=False).present is True
    # a fixation box weaker than the cup or stem box: the detector did not favour "hardware" (a
    # cemented stem boxed 0.49 as a stem and 0.26 as hardware)
    weak_fix = [*boxes[:2], replace(boxes[2], score=0.3)]
    assert decide_implant_on_side(0.80, weak_fix, Side.RIGHT, SideAssigner(weak_fix, (Side.RIGHT, Side.LEFT), 800),
                                  0.45).present is True


def test_a_straight_metal_bar_at_the_joint_outweighs_the_models_on_an_ap_view() -> None:
    """Cannulated screws through the femoral neck on an unseen style: triage says implant at
    p 0.99, the detector draws a cup box of 0.58, and the metal finder sees a straight bar at the
    joint and no cup, stem or head (evidence 0.45, "other"). On an AP view that is not reported,
    and the SR says why; a sure cup box, arthroplasty-shaped metal, no bar, or a lateral view
    with a confident triage model keep the union."""
    from node.infer.fusion import decide_implant_on_side

    boxes = [Box(90, 90, 200, 200, "hip_joint_right", 0.9), Box(100, 100, 160, 160, "cup", 0.58)]
    assign = SideAssigner(boxes, (Side.RIGHT, Side.LEFT), 800)
    bar = [Box(110, 120, 300, 200, "other_hardware", 1.0)]
    d = decide_implant_on_side(0.99, boxes, Side.RIGHT, assign, 0.45, bars=bar)
    assert d.present is False and d.uncertainty is not None
    assert "straight metal bar" in d.uncertainty and "p=0.99" in d.uncertainty
    assert "cup or stem box 0.58" in d.uncertainty and "not reported" in d.uncertainty
    assert decide_implant_on_side(0.99, boxes, Side.RIGHT, assign, 0.45).present is True
    # on a lateral view (a stem cut off by the film's edge can be a straight bar) only against a
    # triage model below BAR_OFF_AP_MAX_TRIAGE
    assert decide_implant_on_side(0.99, boxes, Side.RIGHT, assign, 0.45, bars=bar, ap_view=False).present is True
    lateral = decide_implant_on_side(0.58, boxes, Side.RIGHT, assign, 0.45, bars=bar, ap_view=False)
    assert lateral.present is False and lateral.uncertainty is not None and "p=0.58" in lateral.uncertainty
    assert decide_implant_on_side(0.99, boxes, Side.RIGHT, assign, 0.95, bars=bar).present is True
    sure = [boxes[0], replace(boxes[1], score=0.85)]
    assert decide_implant_on_side(0.99, sure, Side.RIGHT, SideAssigner(sure, (Side.RIGHT, Side.LEFT), 800), 0.45,
                                  bars=bar).present is True
    # no metal reading: the bar cannot have been seen, the union stands
    assert decide_implant_on_side(0.99, boxes, Side.RIGHT, assign, None, bars=bar).present is True


def test_a_stem_with_no_ball_that_neither_model_backs_is_not_reported_on_an_ap_view() -> None:
    """Cannulated screws or a sliding hip screw the metal finder takes for a stem, with no cup or
    head of its own (dev sketch films: triage 0.12-0.48, cup boxes 0.34-0.71): not reported on an
    AP view, and the SR says why. A head beside the stem, a triage model at 0.5, a box of
    ``DETECTOR_ALONE_MIN_SCORE``, cup and stem boxes both at 0.5, a lateral view or no triage
    reading keep the union."""
    from node.infer.fusion import DETECTOR_ALONE_MIN_SCORE, LONE_STEM_MAX_TRIAGE, decide_implant_on_side

    joint = Box(100, 100, 200, 200, "hip_joint_right", 0.9)
    stem = Box(130, 120, 240, 300, "stem", 1.0)

    def decide(t: float | None, cup: float | None, metal_boxes: list[Box], *, ap: bool = True, metal: float = 1.0,
               stem_box: float | None = None) -> ImplantDecision:
        boxes = [joint] if cup is None else [joint, Box(105, 105, 165, 165, "cup", cup)]
        if stem_box is not None:
            boxes.append(Box(130, 130, 230, 300, "stem", stem_box))
        assign = SideAssigner(boxes, (Side.RIGHT,), 800)
        return decide_implant_on_side(t, boxes, Side.RIGHT, assign, metal, ap_view=ap, metal_boxes=metal_boxes)

    d = decide(0.39, 0.64, [stem])
    assert d.present is False and not d.by_metal_only and d.uncertainty is not None
    assert "stem-shaped" in d.uncertainty and "no cup or head" in d.uncertainty
    assert "p=0.39" in d.uncertainty and "0.64" in d.uncertainty and "not reported" in d.uncertainty
    no_box = decide(0.29, None, [stem])
    assert no_box.present is False and no_box.uncertainty is not None and "found no cup or stem" in no_box.uncertainty
    # the union stands: the stem carries its ball, ...
    assert decide(0.39, 0.64, [stem, Box(110, 110, 160, 160, "head", 1.0)]).present is True
    assert decide(0.39, 0.64, [stem, Box(100, 100, 170, 170, "cup", 1.0)]).present is True
    # ... a model backs it, ...
    assert decide(LONE_STEM_MAX_TRIAGE, 0.64, [stem]).present is True
    assert decide(0.39, 0.71, [stem]).present is False  # (dev sketch 424490:56 R: cup box 0.71)
    assert decide(0.39, DETECTOR_ALONE_MIN_SCORE, [stem]).present is True
    # ... the detector boxes a cup and a stem (a cemented prosthesis: cup 0.80 / stem 0.68 on dev)
    assert decide(0.41, 0.64, [stem], stem_box=0.5).present is True
    assert decide(0.41, 0.64, [stem], stem_box=0.45).present is False
    assert decide(None, 0.64, [stem]).present is True
    # ... it is not an AP view (a lateral's head often hides in the stem's outline), ...
    assert decide(0.39, 0.64, [stem], ap=False).present is True
    # ... or the metal evidence is not the finder's arthroplasty-shaped metal
    assert decide(0.39, 0.64, [], metal=1.0).present is True
    weak = decide(0.39, 0.64, [stem], metal=0.45)  # (the weak box is outvoted there by another rule)
    assert weak.uncertainty is not None and "stem-shaped" not in weak.uncertainty


def test_a_sure_triage_model_alone_reports_an_implant_on_a_side_view_where_nothing_else_saw_anything() -> None:
    """On lateral and oblique views the detector and the metal finder both missed prostheses seen
    side-on (dev sketch films: triage 0.95-1.00, no box, no metal at all). A triage model of
    ``TRIAGE_ALONE_OFF_AP_MIN`` reports the implant there, uncertain and saying why. Not on AP
    views, below the limit, where the finder saw any metal on the side or a straight bar, where
    the detector drew a cup, stem or fracture-hardware box at its floor, or where the finder could
    not read the film."""
    from node.infer.fusion import DETECTOR_FLOOR, TRIAGE_ALONE_OFF_AP_MIN, decide_implant_on_side

    joint = Box(100, 100, 200, 200, "hip_joint_right", 0.9)

    def decide(t: float | None, *, ap: bool = False, metal_free: bool = True, extra: Box | None = None,
               bars: tuple[Box, ...] = (), metal: float | None = 0.0) -> ImplantDecision:
        boxes = [joint] if extra is None else [joint, extra]
        assign = SideAssigner(boxes, (Side.RIGHT,), 800)
        return decide_implant_on_side(t, boxes, Side.RIGHT, assign, metal, ap_view=ap, bars=bars,
                                      metal_free=metal_free)

    d = decide(0.95)
    assert d.present is True and not d.by_metal_only and d.probability == 0.95
    assert d.uncertainty is not None and "p=0.95" in d.uncertainty and "uncertain" in d.uncertainty
    assert "no metal at all" in d.uncertainty
    assert decide(TRIAGE_ALONE_OFF_AP_MIN).present is True
    # AP views keep "nothing without a box" (cannulated screws the finder missed reached 0.95 there)
    assert decide(0.99, ap=True).present is False
    assert decide(TRIAGE_ALONE_OFF_AP_MIN - 0.01).present is False
    assert decide(None).present is False  # no triage reading
    # the finder saw metal on that side (fracture hardware at triage 0.98 on an oblique), or could not read
    assert decide(0.99, metal_free=False).present is False
    assert decide(0.99, metal_free=False, metal=None).present is False
    assert decide(0.99, bars=(Box(120, 150, 260, 170, "other_hardware", 0.9),)).present is False
    # the detector boxed fracture hardware at its floor
    assert decide(0.99, extra=Box(110, 110, 190, 190, "other_hardware", DETECTOR_FLOOR)).present is False
    assert decide(0.99, extra=Box(110, 110, 190, 190, "other_hardware", DETECTOR_FLOOR - 0.01)).present is True
    # a weak cup box at the floor is the usual rule's business (triage + weak box), not this one's
    weak = decide(0.99, extra=Box(110, 110, 170, 170, "cup", 0.3))
    assert weak.present is True and (weak.uncertainty is None or "no metal at all" not in weak.uncertainty)


def test_an_unsure_stem_box_with_no_cup_box_and_no_metal_is_not_reported_on_an_ap_view() -> None:
    """Native femoral shafts the detector boxes as a stem (dev sketch films: stem boxes 0.51-0.79,
    no cup box, triage 0.51-0.67, no metal): not reported on an AP view, and the SR says why. A cup
    box at the detector's floor beside the stem (a cemented prosthesis whose metal the finder
    missed: cup 0.42, stem 0.74), a triage model of ``STEM_BOX_ALONE_MAX_TRIAGE``, a stem box of
    ``DETECTOR_ALONE_MIN_SCORE``, metal of any shape, an unreadable film or another view keep it."""
    from node.infer.fusion import (
        DETECTOR_ALONE_MIN_SCORE,
        DETECTOR_FLOOR,
        METAL_NONE,
        STEM_BOX_ALONE_MAX_TRIAGE,
        decide_implant_on_side,
    )

    joint = Box(100, 100, 200, 200, "hip_joint_right", 0.9)

    def decide(t: float, stem: float, cup: float | None = None, *, metal: float | None = 0.0,
               ap: bool = True) -> ImplantDecision:
        boxes = [joint, Box(130, 150, 230, 320, "stem", stem)]
        if cup is not None:
            boxes.append(Box(105, 105, 165, 165, "cup", cup))
        assign = SideAssigner(boxes, (Side.RIGHT,), 800)
        return decide_implant_on_side(t, boxes, Side.RIGHT, assign, metal, ap_view=ap)

    d = decide(0.57, 0.73)
    assert d.present is False and d.uncertainty is not None
    assert "boxed a stem (score 0.73) but no cup or head" in d.uncertainty and "p=0.57" in d.uncertainty
    assert "not reported" in d.uncertainty
    assert decide(0.51, 0.51, cup=DETECTOR_FLOOR - 0.01).present is False
    # the union stands: a cup box at the floor, ...
    assert decide(0.64, 0.74, cup=0.42).present is True
    assert decide(0.64, 0.74, cup=DETECTOR_FLOOR).present is True
    # ... a surer triage model or stem box, ...
    assert decide(STEM_BOX_ALONE_MAX_TRIAGE, 0.77).present is True
    assert decide(0.57, DETECTOR_ALONE_MIN_SCORE).present is True
    # ... metal the finder saw there (of any shape) or a film it could not read, ...
    assert decide(0.57, 0.73, metal=METAL_NONE).present is True
    assert decide(0.57, 0.73, metal=None).present is True
    # ... or a lateral view
    assert decide(0.57, 0.73, ap=False).present is True


def test_one_source_alone_is_not_reported_against_a_triage_model_that_firmly_denies_an_implant() -> None:
    """On an AP view, against triage below ``METAL_ONLY_MIN_TRIAGE``: a confident cup box where the
    metal finder saw no arthroplasty-like metal (dev sketch films: hips with fixation the finder
    missed, or native, boxed at 0.84-0.91, triage 0.04-0.06), and metal the finder shapes as a lone cup with only a weak box (native
    femoral heads: boxes 0.51-0.58, triage 0.01-0.16), are not reported, and the SR says why. A
    triage model at the limit, a stem or head beside the cup, a box of ``DETECTOR_ALONE_MIN_SCORE``
    on the lone cup, metal beside the confident box, an unread film, no triage reading and side
    views keep the union."""
    from node.infer.fusion import (
        DETECTOR_ALONE_MIN_SCORE,
        METAL_NONE,
        METAL_ONLY_MIN_TRIAGE,
        decide_implant_on_side,
    )

    joint = Box(100, 100, 200, 200, "hip_joint_right", 0.9)
    cup_metal = Box(110, 110, 170, 170, "cup", 1.0)

    def decide(t: float | None, box: float, metal: float | None, metal_boxes: list[Box], *,
               ap: bool = True) -> ImplantDecision:
        boxes = [joint, Box(105, 105, 165, 165, "cup", box)]
        assign = SideAssigner(boxes, (Side.RIGHT,), 800)
        return decide_implant_on_side(t, boxes, Side.RIGHT, assign, metal, ap_view=ap, metal_boxes=metal_boxes)

    alone = decide(0.04, 0.91, 0.0, [])
    assert alone.present is False and alone.uncertainty is not None and not alone.by_metal_only
    assert "boxed a cup or stem (score 0.91)" in alone.uncertainty and "p=0.04" in alone.uncertainty
    assert "no arthroplasty-like metal" in alone.uncertainty and "not reported" in alone.uncertainty
    ball = decide(0.16, 0.52, 0.91, [cup_metal])
    assert ball.present is False and ball.uncertainty is not None
    assert "cup-shaped (evidence 0.91)" in ball.uncertainty and "weak (score 0.52)" in ball.uncertainty
    assert "p=0.16" in ball.uncertainty and "not reported" in ball.uncertainty
    # the union stands: triage at the limit, ...
    assert decide(METAL_ONLY_MIN_TRIAGE, 0.91, 0.0, []).present is True
    assert decide(METAL_ONLY_MIN_TRIAGE, 0.52, 0.91, [cup_metal]).present is True
    # ... the cup's head or a stem beside it, a sure box on it, ...
    assert decide(0.16, 0.52, 0.91, [cup_metal, Box(120, 120, 160, 160, "head", 1.0)]).present is True
    assert decide(0.16, 0.52, 0.91, [cup_metal, Box(130, 150, 230, 320, "stem", 1.0)]).present is True
    assert decide(0.16, DETECTOR_ALONE_MIN_SCORE, 0.91, [cup_metal]).present is True
    # ... metal of any shape beside the confident box, a film the finder could not read, ...
    assert decide(0.04, 0.91, METAL_NONE, []).present is True
    assert decide(0.04, 0.91, None, []).present is True
    # ... no triage reading, or a side view
    assert decide(None, 0.91, 0.0, []).present is True
    assert decide(0.04, 0.91, 0.0, [], ap=False).present is True
    assert decide(0.16, 0.52, 0.91, [cup_metal], ap=False).present is True
