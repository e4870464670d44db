"""Cup angles across arthroplasty designs: measured within bars, or refused — never a wrong angle.

Phantoms of the generator's broad variety (``sample_spec(..., variety="broad")``), AP pelvis,
neutral pelvis, both hips of one design, the true cup boxes standing in for the detector. The
cups' inclination and anteversion are redrawn from U(30°, 60°) and U(8°, 35°): a retroverted or
nearly edge-on cup has two readings on a single AP (``node.analyse.cup.cup_axis_perspective``),
which is not what these tests are about.

* metal-backed shells (hemispherical, flanged, dual mobility): every cup measured, within bars;
* cemented all-polyethylene cups: read from the marker wire where it is a ring (both image styles),
  and from the ends of an arc over the dome where the version it implies is 20° or more (refused
  with the arc's reason otherwise);
* resurfacing and large-head (metal-on-metal) bearings, whose head fills the shell and hides the
  rim: inclination alone (from the opening's direction) within 3°, anteversion refused with the
  reason, or both within 3° / 5°; before the filling-head and rim-end checks these read 12–40° off.

Bars were set at about twice the worst error measured on these exact phantoms when the checks were
written (see each constant). Rendering dominates the time (~0.5 s per 1024-row analytic image,
~1.5 s per voxel image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.analyse.cup import ProjectionGeometry, find_marker_wire, measure_cup
from node.analyse.reference import reference_from_points
from node.domain import Box, Side, View
from node.phantom import render, sample_spec
from node.phantom.anatomy import CupSpec
from node.phantom.spec import DESIGN_WEIGHTS, sample_arthroplasty
from node.pixels import normalise

ROWS = 1024


@dataclass(frozen=True)
class Outcome:
    design: str
    inclination_error: float | None  # measured − true (None: refused)
    anteversion_error: float | None  # None with an inclination: inclination only
    refusal_reason: str | None  # why nothing, or (inclination only) why no anteversion
    wire_found: str | None  # what ``find_marker_wire`` says on this cup's box


@cache
def _outcomes(design: str, n_images: int, seed: int, style: str = "analytic", wire: str = "ring") -> tuple[Outcome, ...]:
    """Both hips of ``n_images`` broad-variety AP pelvis phantoms with a ``design`` arthroplasty."""
    others = tuple(d for d in DESIGN_WEIGHTS if d != design)
    out: list[Outcome] = []
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        spec = sample_spec(rng, view=View.AP_PELVIS, implants="bilateral", rows=ROWS, variety="broad")
        cups: dict[Side, CupSpec | None] = {}
        for side in (Side.RIGHT, Side.LEFT):
            c = sample_arthroplasty(rng, spec.patient, side, "broad", exclude=others)
            cups[side] = replace(c, inclination_deg=float(rng.uniform(30, 60)), anteversion_deg=float(rng.uniform(8, 35)),
                                 marker_wire=wire)
        spec = replace(spec, implants=cups,
                       geometry=replace(spec.geometry, pelvic_tilt_deg=0.0, pelvic_rotation_deg=0.0))
        img = render(spec, style=style)
        gt = img.truth
        header = Dataset()
        header.PhotometricInterpretation = gt.photometric
        x = normalise(header, img.pixels.astype(np.float32))
        lm = gt.landmarks
        ref = reference_from_points(list(lm.get("teardrop_inferior", {}).values()),
                                    list(lm.get("ischial_tuberosity_inferior", {}).values()), image_width=gt.cols)
        stems = [b for b in gt.boxes if b.label == "stem"]
        for side in gt.imaged_sides:
            hip = gt.hips[side]
            cup = hip.cup
            assert cup is not None and hip.design == design
            box = next(b for b in gt.boxes if b.label == "cup" and b.x0 <= cup.ellipse.cx <= b.x1
                       and b.y0 <= cup.ellipse.cy <= b.y1)
            m = measure_cup(x, box, side, gt.view, reference=ref, pixel_spacing_mm=gt.imager_pixel_spacing_mm,
                            geometry=ProjectionGeometry(spec.geometry.sid_mm), stem_boxes=stems)
            w = find_marker_wire(x, box)
            if m.inclination_deg is not None and m.anteversion_deg is None:  # inclination only
                out.append(Outcome(design, m.inclination_deg - cup.inclination_deg, None, m.anteversion_refusal,
                                   None if w is None else w.kind))
            elif m.inclination_deg is None or m.anteversion_deg is None:
                out.append(Outcome(design, None, None, m.refusal_reason, None if w is None else w.kind))
            else:
                out.append(Outcome(design, m.inclination_deg - cup.inclination_deg,
                                   m.anteversion_deg - cup.anteversion_deg, None, None if w is None else w.kind))
    return tuple(out)


def _measured(outcomes: tuple[Outcome, ...]) -> list[tuple[float, float]]:
    return [(o.inclination_error, o.anteversion_error) for o in outcomes
            if o.inclination_error is not None and o.anteversion_error is not None]


# --- metal-backed shells: the measured share must not drop ------------------------------------

# (design, images, seed, least share measured, inclination bar, anteversion bar). When set, on these
# phantoms: hemispherical 6/6 measured, worst 0.4° / 3.5° (a cup at 10° anteversion, near the
# two-readings floor); dual mobility 6/6, 0.2° / 1.1°; flanged 4/6 (the same 4 as before the
# design work; the fifth the old code measured was 14° / 13° off and is now refused), worst 3.9° /
# 10.5° — a full-ring flange whose outline is taken for the dome: a known limit, held here so
# that it does not get worse.
METAL_BACKED = [
    ("hemispherical", 3, 301, 1.0, 1.0, 5.0),
    ("flanged", 3, 302, 4 / 6, 4.5, 12.0),
    ("dual_mobility", 3, 303, 1.0, 0.5, 2.5),
]


@pytest.mark.parametrize(("design", "n_images", "seed", "share", "inc_bar", "ant_bar"), METAL_BACKED)
def test_metal_backed_cups_are_measured_within_bars(design: str, n_images: int, seed: int, share: float,
                                                    inc_bar: float, ant_bar: float) -> None:
    outcomes = _outcomes(design, n_images, seed)
    errors = _measured(outcomes)
    assert len(outcomes) == 2 * n_images
    assert len(errors) >= share * len(outcomes) - 1e-9, outcomes
    assert max(abs(i) for i, _ in errors) <= inc_bar, outcomes
    assert max(abs(a) for _, a in errors) <= ant_bar, outcomes
    # no marker wire is seen in a metal-backed cup (a false ring would override the shell's fit)
    assert all(o.wire_found is None for o in outcomes), outcomes


# --- cemented all-polyethylene cups: the marker wire --------------------------------------------

# worst errors measured when set: analytic 0.1° / 0.2° (6/6 measured), voxel 0.3° / 0.5° (3/4: the
# fourth ring, edge-on and blurred into one bar, is not found and the cup is refused)
WIRE_INCLINATION_BAR = 1.0
WIRE_ANTEVERSION_BAR = 1.5


@pytest.mark.parametrize(("style", "n_images", "seed"), [("analytic", 3, 311), ("voxel", 2, 312)])
def test_cemented_cup_is_read_from_its_marker_ring(style: str, n_images: int, seed: int) -> None:
    outcomes = _outcomes("cemented_pe", n_images, seed, style, "ring")
    errors = _measured(outcomes)
    assert len(errors) >= len(outcomes) - 1, outcomes  # before the wire: ~1 in 10 measured, 9–28° off
    assert all(o.wire_found == "ring" for o in outcomes if o.inclination_error is not None), outcomes
    assert max(abs(i) for i, _ in errors) <= WIRE_INCLINATION_BAR, outcomes
    assert max(abs(a) for _, a in errors) <= WIRE_ANTEVERSION_BAR, outcomes


# An arc over the dome gives the opening through its ends (``node.analyse.cup.arc_opening``); it
# is read only where the version it implies is 20° or more (below, the reading is ill-conditioned
# and refused with that reason). When set: 3 of 10 arcs read, worst 2.7° / 1.8°; 3 refused as
# nearly flat, 1 for a run of 239°, the rest (wire not found) by the shell's checks.
ARC_INCLINATION_BAR = 4.0
ARC_ANTEVERSION_BAR = 4.0


@pytest.mark.parametrize(("style", "n_images", "seed"), [("analytic", 3, 313), ("voxel", 2, 314)])
def test_cemented_cup_with_an_arc_wire_is_read_from_its_ends_or_refused_with_the_reason(
        style: str, n_images: int, seed: int) -> None:
    outcomes = _outcomes("cemented_pe", n_images, seed, style, "arc")
    errors = _measured(outcomes)
    refused = [o.refusal_reason or "" for o in outcomes if o.inclination_error is None]
    assert errors, outcomes  # before: every arc refused ("does not mark the opening")
    assert max(abs(i) for i, _ in errors) <= ARC_INCLINATION_BAR, outcomes
    assert max(abs(a) for _, a in errors) <= ARC_ANTEVERSION_BAR, outcomes
    assert not any("wrong way" in r or "fit failed" in r for r in refused), refused
    assert any("marker arc" in r for r in refused), refused  # the ill-conditioned ones say so


def _semicircle_image(version_deg: float, incl_deg: float, r: float = 64.0) -> np.ndarray:
    """A marker arc drawn as a parallel beam sees it: half a great circle from the cup's superior
    in-plane direction over the dome (opening normal n: lateral-inferior in the image, tilted
    ``version_deg`` out of it) — the geometry of ``arc_opening``'s docstring."""
    v, i = math.radians(version_deg), math.radians(incl_deg)
    n = np.array([math.sin(i) * math.cos(v), math.cos(i) * math.cos(v), -math.sin(v)])  # x right, y down
    up = np.array([0.0, -1.0, 0.0])
    e = up - n * float(up @ n)
    e /= np.linalg.norm(e)
    s = np.linspace(0.0, math.pi, 400)
    pts3 = r * (np.cos(s)[:, None] * e - np.sin(s)[:, None] * n)
    return _drawn(np.column_stack([110 + pts3[:, 0], 110 + pts3[:, 1]]))


@pytest.mark.parametrize(("version", "incl"), [(25.0, 45.0), (35.0, 40.0), (22.0, 55.0)])
def test_arc_opening_recovers_the_opening_from_a_drawn_arc(version: float, incl: float) -> None:
    from node.analyse.cup import arc_opening

    box = Box(50, 50, 170, 170, "cup", 1.0)
    wire = find_marker_wire(_semicircle_image(version, incl), box)
    assert wire is not None and wire.kind == "arc"
    got = arc_opening(wire)
    assert not isinstance(got, str), got
    rim, opening = got
    assert abs(math.degrees(math.asin(rim.semi_minor / rim.semi_major)) - version) < 2.5
    # the opening points along n's in-plane part: lateral (+x here) and inferior (+y)
    want = math.degrees(math.atan2(math.cos(math.radians(incl)), math.sin(math.radians(incl))))
    assert abs(math.degrees(math.atan2(opening[1], opening[0])) - want) < 2.0


def test_arc_nearly_flat_to_the_film_is_refused_with_the_reason() -> None:
    from node.analyse.cup import arc_opening

    wire = find_marker_wire(_semicircle_image(5.0, 45.0), Box(50, 50, 170, 170, "cup", 1.0))
    assert wire is not None
    got = arc_opening(wire)
    assert isinstance(got, str) and "nearly flat" in got


# --- heads that fill the shell: refuse rather than guess ----------------------------------------

SAFE_INCLINATION = 3.0
SAFE_ANTEVERSION = 5.0


@pytest.mark.parametrize(("design", "style", "n_images", "seed", "inclination_only"), [
    ("resurfacing", "analytic", 3, 321, True),
    ("resurfacing", "voxel", 2, 322, True),
    # the two readings of the opening's direction disagree by more than 3° on all four: refused
    ("large_head", "analytic", 2, 323, False),
])
def test_head_filling_the_shell_is_refused_or_measured_right(design: str, style: str, n_images: int,
                                                              seed: int, inclination_only: bool) -> None:
    outcomes = _outcomes(design, n_images, seed, style)
    for o in outcomes:
        if o.inclination_error is not None and o.anteversion_error is not None:
            assert abs(o.inclination_error) <= SAFE_INCLINATION and abs(o.anteversion_error) <= SAFE_ANTEVERSION, o
        if o.inclination_error is not None:
            assert abs(o.inclination_error) <= SAFE_INCLINATION, o
    # the opening's direction gives inclination where the head hides the rim's width (before:
    # every such cup refused outright), and anteversion is then refused with that reason
    only = [o for o in outcomes if o.inclination_error is not None and o.anteversion_error is None]
    assert bool(only) is inclination_only, outcomes
    assert all(o.refusal_reason is not None and "fills the cup" in o.refusal_reason for o in only), only
    # most cups without an anteversion say why: the head hides the rim (when set: 12 of 14; the
    # other two were refused by the rim's size or extent, never as a side mix-up or "fit failed")
    reasons = [o.refusal_reason or "" for o in outcomes if o.anteversion_error is None]
    assert reasons, outcomes
    assert sum("fills the cup" in r or "rim not seen" in r for r in reasons) >= 0.5 * len(reasons), reasons
    assert not any("wrong way" in r or "fit failed" in r for r in reasons), reasons


# --- the wire finder on drawn wires -------------------------------------------------------------


def _drawn(points: np.ndarray, shape: tuple[int, int] = (220, 220), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full(shape, 0.3, np.float32) + rng.normal(0.0, 0.01, shape).astype(np.float32)
    cv2.polylines(img, [np.round(points * 16).astype(np.int32)], False, 0.9, 2, cv2.LINE_AA, shift=4)
    return np.asarray(cv2.GaussianBlur(img, (0, 0), 0.8), dtype=np.float32)


def _ellipse_pts(cx: float, cy: float, a: float, b: float, th_deg: float, t0: float, t1: float) -> np.ndarray:
    t = np.linspace(t0, t1, 400)
    th = math.radians(th_deg)
    return np.column_stack([cx + a * np.cos(t) * math.cos(th) - b * np.sin(t) * math.sin(th),
                            cy + a * np.cos(t) * math.sin(th) + b * np.sin(t) * math.cos(th)])


def test_marker_ring_gives_the_ellipse_and_an_arc_is_told_apart() -> None:
    box = Box(50, 50, 170, 170, "cup", 1.0)
    ring = find_marker_wire(_drawn(_ellipse_pts(112, 105, 66, 20, 40, 0, 2 * math.pi)), box)
    assert ring is not None and ring.kind == "ring"
    assert abs(ring.ellipse.angle_deg - 40.0) < 1.0
    assert abs(ring.ellipse.semi_minor / ring.ellipse.semi_major - 20 / 66) < 0.02
    arc = find_marker_wire(_drawn(_ellipse_pts(112, 105, 64, 58, 80, 0, math.pi)), box)
    assert arc is not None and arc.kind == "arc"
    # a plain disc (a head) and its outline are no wire
    disc = np.full((220, 220), 0.3, np.float32)
    cv2.circle(disc, (110, 110), 40, 1.0, -1)
    assert find_marker_wire(disc, box) is None


# --- a cemented cup nobody boxed: found by its marker wire in the hip joint ----------------------


def _cemented_ring_film(style: str) -> tuple[np.ndarray, Any, float]:
    """An AP pelvis with bilateral cemented all-polyethylene cups marked by a wire ring (45° / 22°),
    neutral pelvis: the image (0..1, MONOCHROME2), its truth and the source-image distance."""
    rng = np.random.default_rng([331, 0])
    spec = sample_spec(rng, view=View.AP_PELVIS, implants="bilateral", rows=ROWS, variety="broad")
    cups: dict[Side, CupSpec | None] = {}
    for side in (Side.RIGHT, Side.LEFT):
        c = sample_arthroplasty(rng, spec.patient, side, "broad",
                                exclude=tuple(d for d in DESIGN_WEIGHTS if d != "cemented_pe"))
        cups[side] = replace(c, inclination_deg=45.0, anteversion_deg=22.0, marker_wire="ring")
    spec = replace(spec, implants=cups, geometry=replace(spec.geometry, pelvic_tilt_deg=0.0, pelvic_rotation_deg=0.0))
    img = render(spec, style=style)
    header = Dataset()
    header.PhotometricInterpretation = img.truth.photometric
    return normalise(header, img.pixels.astype(np.float32)), img.truth, spec.geometry.sid_mm


def _analysed_with(x: np.ndarray, gt: Any, sid_mm: float, boxes: list[Box]) -> list[Any]:
    """``analyse_hips`` on a film both of whose hips triage calls implanted (AP pelvis), with
    ``boxes`` standing in for the detector's."""
    from node.infer.triage import TriageResult
    from node.pipeline import analyse_hips

    sides = (Side.RIGHT, Side.LEFT)
    t = TriageResult(view=View.AP_PELVIS, view_probability=0.99, view_probabilities={View.AP_PELVIS: 0.99},
                     imaged_sides=sides, side_probability=None, implant_probability={s: 0.99 for s in sides})
    hips, _ = analyse_hips(x, t, boxes, morphology=None, detector_ran=True,
                           pixel_spacing_mm=gt.imager_pixel_spacing_mm, geometry=ProjectionGeometry(sid_mm))
    return list(hips)


def test_cemented_cup_without_a_cup_box_is_found_by_its_marker_wire_in_the_joint() -> None:
    """On a style it never saw the detector boxed the stem of a cemented cup but not the cup, and
    the metal finder sees no cup (polyethylene and cement): ``analyse_hips`` looks for the marker
    wire where the cup sits in the hip-joint box (``cup_box_from_marker_wire``)."""
    x, gt, sid_mm = _cemented_ring_film("voxel")
    # the detector's view of it: joints, stems and landmarks, no cup box
    boxes = [replace(b, score=0.9) for b in gt.boxes if b.label != "cup"]
    hips = _analysed_with(x, gt, sid_mm, boxes)
    for hip in hips:
        truth = gt.hips[hip.side].cup
        assert truth is not None and hip.implant_present
        assert any("marker wire" in n for n in hip.notes), hip.notes
        assert hip.cup is not None and hip.cup.inclination_deg is not None and hip.cup.anteversion_deg is not None, hip
        assert abs(hip.cup.inclination_deg - truth.inclination_deg) <= WIRE_INCLINATION_BAR
        assert abs(hip.cup.anteversion_deg - truth.anteversion_deg) <= WIRE_ANTEVERSION_BAR


def test_a_cup_found_only_by_its_wire_is_never_read_by_the_shell_fit() -> None:
    """With the wire given (``cup_box_from_marker_wire``), a wire that does not fit the box it
    implies refuses the cup; it never falls back to an outline in a box placed by proportion
    (a cemented cup read that way was 50° off on a held-out phantom)."""
    img = _drawn(_ellipse_pts(112, 105, 66, 20, 40, 0, 2 * math.pi))
    box = Box(50, 50, 170, 170, "cup", 1.0)
    wire = find_marker_wire(img, box)
    assert wire is not None and wire.kind == "ring"
    elsewhere = Box(0, 0, 60, 60, "cup", 0.0)
    m = measure_cup(img, elsewhere, Side.LEFT, View.AP_PELVIS, reference=None, wire=wire)
    assert m.inclination_deg is None and m.refusal_reason is not None and "marker wire" in m.refusal_reason


def test_a_ring_partly_hidden_by_the_head_and_the_neck_is_still_read_as_a_ring() -> None:
    """The head hides the middle of both halves of a ring alike, but a neck crossing one half near
    its end hides that stretch only: the ring's visible halves no longer mirror each other
    (symmetry under ``WIRE_RING_MIN_SYMMETRY``) and it was refused (dev sketch cemented cups). It
    is judged on the part of its ellipse nothing as bright as the wire covers (``_shown_bins``)."""
    img = np.full((220, 220), 0.3, np.float32) + np.random.default_rng(0).normal(0.0, 0.01, (220, 220)).astype(np.float32)
    ring = _ellipse_pts(112, 105, 62, 18, 40, 0, 2 * math.pi)
    cv2.polylines(img, [np.round(ring * 16).astype(np.int32)], False, 0.9, 2, cv2.LINE_AA, shift=4)
    cv2.circle(img, (112, 105), 34, 1.0, -1)  # the head
    end = _ellipse_pts(112, 105, 62, 18, 40, 0.5, 0.5)[0]
    cv2.line(img, (112, 105), (int(112 + 3 * (end[0] - 112)), int(105 + 3 * (end[1] - 105))), 1.0, 26)  # the neck
    wire = find_marker_wire(np.asarray(cv2.GaussianBlur(img, (0, 0), 0.8), dtype=np.float32), Box(50, 50, 170, 170, "cup", 1.0))
    assert wire is not None and wire.kind == "ring", wire
    assert abs(wire.ellipse.angle_deg - 40.0) < 1.0
    assert abs(wire.ellipse.semi_minor / wire.ellipse.semi_major - 18 / 62) < 0.02


def _drawn_cup(incl: float, version: float, head_share: float, head_level: float, r: float = 60.0,
               flange: float = 1.0) -> tuple[np.ndarray, Box]:
    """A left hip's metal shell as a parallel beam sees it (dome half-disc and the open half of its
    rim ellipse, white), over pelvic bone on the dome's side and soft tissue on the open side,
    with a concentric femoral head of ``head_share`` of its radius at ``head_level`` and a neck;
    ``flange`` > 1: a collar in the opening's plane out to that share of the radius."""
    h = w = 260
    img = np.full((h, w), 0.05, np.float32) + np.random.default_rng(0).normal(0.0, 0.01, (h, w)).astype(np.float32)
    cx, cy = 130.0, 120.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    i = math.radians(incl)
    along = dx * math.cos(i) - dy * math.sin(i)  # the rim's long axis, its superolateral end first
    open_ = dx * math.sin(i) + dy * math.cos(i)  # towards the opening: lateral and inferior
    img[open_ < 0] = 0.45
    img[np.hypot(dx, dy) <= head_share * r] = head_level
    b = r * math.sin(math.radians(version))
    if flange > 1.0:  # the collar: an elliptical annulus in the opening's plane
        img[(along / (flange * r)) ** 2 + (open_ / (flange * b)) ** 2 <= 1] = 1.0
    shell = ((np.hypot(dx, dy) <= r) & (open_ <= 0)) | ((open_ >= 0) & ((along / r) ** 2 + (open_ / b) ** 2 <= 1))
    img[shell] = 1.0
    img[(open_ > 0) & (np.abs(along) < 0.12 * r) & (open_ < 2 * r) & ~shell] = max(head_level, 0.6)
    e = max(1.0, flange) * r + 2
    return np.asarray(cv2.GaussianBlur(img, (0, 0), 1.0), dtype=np.float32), Box(cx - e, cy - e, cx + e, cy + e, "cup", 0.9)


@pytest.mark.parametrize(("incl", "version", "head_share"), [(40.0, 15.0, 0.82), (45.0, 20.0, 0.86), (50.0, 10.0, 0.82)])
def test_a_rim_seen_across_a_head_of_bone_is_measured_and_a_metal_head_still_hides_it(
        incl: float, version: float, head_share: float) -> None:
    """A head outline just inside the shell's ends is no proof that a head hides the rim: the
    sketch style's resurfaced femur is bone round a cap it does not draw, and the rim shows across
    it (dev sketch: 14 resurfacing cups refused "the head fills the cup", now within 0.2-3.6°). The
    rim, fitted without leaving the head's disc out, is kept where it runs well inside that disc
    (``_rim_across_head``); a metal head leaves nothing of the rim there and the refusal stands."""
    img, box = _drawn_cup(incl, version, head_share, 0.5)
    m = measure_cup(img, box, Side.LEFT, View.AP_PELVIS, reference=None)
    assert m.inclination_deg is not None and m.anteversion_deg is not None, m
    assert abs(m.inclination_deg - incl) < 1.0 and abs(m.anteversion_deg - version) < 1.0, m
    img, box = _drawn_cup(incl, version, head_share, 1.0)
    m = measure_cup(img, box, Side.LEFT, View.AP_PELVIS, reference=None)
    assert m.anteversion_deg is None and m.anteversion_refusal is not None and "fills the cup" in m.anteversion_refusal, m
    assert m.inclination_deg is not None and abs(m.inclination_deg - incl) < 1.0, m


def test_cemented_cup_boxed_by_its_head_alone_is_read_from_its_marker_wire_in_the_joint() -> None:
    """On a style it never saw the detector boxed the metal head of a cemented cup as "cup" (dev
    sketch: boxes 45-71 px round cups of 100-150 px); the shell fit in that box refuses. The
    marker wire is then looked for where the cup sits in the hip-joint box and, where it is a
    sharp line (``WIRE_RETRY_MAX_RMS_SHARE``), the cup is read from it, saying so."""
    x, gt, sid_mm = _cemented_ring_film("analytic")
    boxes = [replace(b, score=0.9) for b in gt.boxes if b.label != "cup"]
    for s in gt.imaged_sides:  # the detector's "cup": the head's box
        cup = gt.hips[s].cup
        assert cup is not None and cup.head_radius_px is not None
        r = cup.head_radius_px + 2.0
        boxes.append(Box(cup.head_centre.x - r, cup.head_centre.y - r, cup.head_centre.x + r, cup.head_centre.y + r,
                         "cup", 0.8))
    hips = _analysed_with(x, gt, sid_mm, boxes)
    for hip in hips:
        truth = gt.hips[hip.side].cup
        assert truth is not None and hip.cup is not None
        assert any("marker wire in the hip joint (in the cup box:" in n for n in hip.notes), hip.notes
        assert hip.cup.inclination_deg is not None and hip.cup.anteversion_deg is not None, hip.cup
        assert abs(hip.cup.inclination_deg - truth.inclination_deg) <= WIRE_INCLINATION_BAR
        assert abs(hip.cup.anteversion_deg - truth.anteversion_deg) <= WIRE_ANTEVERSION_BAR


@pytest.mark.parametrize(("incl", "version", "flange"), [(40.0, 15.0, 1.12), (50.0, 20.0, 1.2)])
def test_a_flange_wider_than_the_dome_is_read_where_its_metal_reaches_the_rim_ends(
        incl: float, version: float, flange: float) -> None:
    """A flanged cup's collar lies in the opening's plane: its outline is an ellipse of the rim's
    orientation and axis ratio, 1.06-1.26 times the dome's radius on dev phantoms, and was refused
    ("rim ellipse does not match the dome radius"; dev sketch: 10 flanged cups). It is read where
    the metal reaches out to that ellipse's ends (``_flange_shows``)."""
    img, box = _drawn_cup(incl, version, 0.5, 1.0, flange=flange)
    m = measure_cup(img, box, Side.LEFT, View.AP_PELVIS, reference=None)
    assert m.inclination_deg is not None and m.anteversion_deg is not None, m
    assert abs(m.inclination_deg - incl) < 1.0 and abs(m.anteversion_deg - version) < 1.0, m
