"""What a hip group must say besides its values: what was not assessed and why, and where a
flag disagrees with the node's own measurement.

Why a module of its own: a radiologist reading an SR cannot tell "normal" from "not looked at"
unless the report says so. An empty hip group (no implant finding, no morphology, no angle and no
reason) was the commonest output on real films before this existed (issue 12: 17 of 18 real
hips). These rules are pure functions of the findings, so they are tested without models.
"""

from __future__ import annotations

from node.domain import HipFindings, View

# Skeletal maturity: the triradiate cartilage closes at about 14-16 years; before that the
# adult morphology models (trained on adult anatomy) and adult thresholds do not apply.
CHILD_AGE_YEARS = 16.0

# Wiberg's lateral centre-edge angle: < 20 deg dysplastic, 20-25 deg borderline, > 25 deg normal.
LCE_DYSPLASTIC_BELOW_DEG = 20.0
LCE_NORMAL_ABOVE_DEG = 25.0


def child_note(age_years: float) -> str:
    return (
        f"Child's hip (age {age_years:.0f} years from the header): adult morphology models and "
        "thresholds do not apply; morphology flags not reported"
    )


def gap_notes(
    hip: HipFindings,
    view: View,
    *,
    detector_ran: bool,
    morphology_configured: bool,
) -> list[str]:
    """One line for each finding this hip group does not carry, saying why.

    Called after every measurement is made, so it reads what is (not) there rather than
    repeating the decisions that led to it.
    """
    notes: list[str] = []
    ap_view = view in (View.AP_PELVIS, View.AP_HIP)
    if hip.implant_present is None:
        notes.append("Hip arthroplasty not assessed: no implant model or evidence available")
    if hip.joint_box is None and detector_ran:
        notes.append(
            "No hip joint found on this side by the detector: joint measurements "
            "(morphology, LCE / Tonnis) not assessed"
        )
    if hip.implant_present:
        if hip.cup is None:
            notes.append(
                "Cup angles not measured: no acetabular cup located on this side "
                "(hemiarthroplasty, or cup not found)"
            )
    elif ap_view and hip.joint_box is not None and hip.lateral_centre_edge_deg is None:
        notes.append("Lateral centre-edge angle not measured: acetabular roof edge or femoral head not found")
    if not hip.morphology and hip.morphology_refusal is None:
        if not ap_view:
            notes.append(f"Morphology not assessed: the models read AP views, this is {view.value.replace('_', ' ')}")
        elif not morphology_configured:
            notes.append("Morphology not assessed: no morphology model configured")
        elif hip.implant_present:
            notes.append("Morphology not assessed: hip arthroplasty on this side")
    return notes


def dysplasia_consistency(hip: HipFindings) -> str | None:
    """A sentence when the dysplasia flag contradicts the measured LCE angle (Wiberg), else None.

    The flag comes from a learned model, the angle from geometry on the same image; when they
    disagree neither is silently preferred: the SR states both and calls the flag uncertain.
    """
    lce = hip.lateral_centre_edge_deg
    flag = next((f for f in hip.morphology if f.name == "dysplasia"), None)
    if lce is None or flag is None:
        return None
    if flag.present and lce > LCE_NORMAL_ABOVE_DEG:
        return (
            f"Hip dysplasia flag (p={flag.probability:.2f}) disagrees with the measured lateral "
            f"centre-edge angle of {lce:.0f} deg (over {LCE_NORMAL_ABOVE_DEG:.0f} deg is normal by Wiberg): "
            "the flag is uncertain"
        )
    if not flag.present and lce < LCE_DYSPLASTIC_BELOW_DEG:
        return (
            f"Hip dysplasia flag absent (p={flag.probability:.2f}) but the measured lateral centre-edge "
            f"angle is {lce:.0f} deg (under {LCE_DYSPLASTIC_BELOW_DEG:.0f} deg is dysplastic by Wiberg): "
            "the flag is uncertain"
        )
    return None
