"""Phantom generator: exact ground truth, symmetry, coverage of every combination, determinism."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from node.domain import DETECTOR_CLASSES, Side, View
from node.phantom import CupSpec, render, render_index, render_mask, sample_spec
from node.phantom.spec import OTHER_KINDS, PhantomSpec


def neutral(spec: PhantomSpec, fov_mm: float | None = None, projection: str = "parallel") -> PhantomSpec:
    g = replace(spec.geometry, projection=projection, pelvic_tilt_deg=0.0, pelvic_rotation_deg=0.0,
                pelvic_obliquity_deg=0.0, fov_mm=fov_mm or spec.geometry.fov_mm)
    return replace(spec.quiet(), geometry=g)


def fit_rim(mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """cv2.fitEllipse on the outer contour of the rendered rim disc (pixel-edge corrected)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    (cx, cy), (d1, d2), ang = cv2.fitEllipse(c)
    # contour points are the centres of the boundary pixels: half a pixel inside the true edge
    a, b = max(d1, d2) / 2.0 + 0.5, min(d1, d2) / 2.0 + 0.5
    major_dir = ang + 90.0 if d1 < d2 else ang  # cv2: ang is the direction of the first axis (d1)
    return cx, cy, a, b, major_dir % 180.0


@pytest.mark.parametrize(
    ("side", "incl", "ante"),
    [(Side.RIGHT, 40.0, 15.0), (Side.LEFT, 50.0, 25.0), (Side.RIGHT, 30.0, 5.0), (Side.LEFT, 62.0, 35.0)],
)
def test_cup_rim_recovers_stated_angles_in_parallel_projection(side: Side, incl: float, ante: float) -> None:
    spec = sample_spec(11, view=View.AP_HIP, side=side, implants={side: CupSpec(incl, ante)}, rows=1024)
    spec = neutral(spec, fov_mm=140.0)
    spec = replace(spec, implants={side: replace(spec.implants[side] or CupSpec(), centre_offset_mm=(0, 0, 0))})
    m = render_mask(spec, f"mask:cup_rim:{side.value}")
    assert m.sum() > 1000 and not m[0].any() and not m[-1].any()
    _, _, a, b, major_dir = fit_rim(m)
    inclination = min(major_dir, 180.0 - major_dir)  # vs image rows = the (level) teardrop line
    anteversion = math.degrees(math.asin(b / a))
    assert inclination == pytest.approx(incl, abs=0.2)
    assert anteversion == pytest.approx(ante, abs=0.2)
    # the ground truth says the same, both as true (Murray) and as seen values
    gt = render(replace(spec, rows=256, cols=256)).truth
    cup = gt.hips[side].cup
    assert cup is not None
    assert cup.inclination_deg == pytest.approx(incl, abs=1e-6)
    assert cup.anteversion_deg == pytest.approx(ante, abs=1e-6)
    assert cup.seen_inclination_deg == pytest.approx(incl, abs=1e-6)
    assert cup.seen_anteversion_deg == pytest.approx(ante, abs=1e-6)


def test_ground_truth_ellipse_matches_rendered_rim_under_perspective_and_tilt() -> None:
    """With a point source and a tilted, rotated pelvis the *seen* values differ from the true
    ones; the ground-truth ellipse still matches what is rendered."""
    spec = sample_spec(12, view=View.AP_PELVIS, implants={Side.LEFT: CupSpec(45.0, 20.0)}, rows=1024)
    g = replace(spec.geometry, projection="point", pelvic_tilt_deg=-10.0, pelvic_rotation_deg=6.0, fov_mm=400.0)
    spec = replace(spec.quiet(), geometry=g)
    cup = render(spec).truth.hips[Side.LEFT].cup
    assert cup is not None
    m = render_mask(spec, "mask:cup_rim:L")
    cx, cy, a, b, major_dir = fit_rim(m)
    e = cup.ellipse
    assert (cx, cy) == pytest.approx((e.cx, e.cy), abs=0.5)
    assert a == pytest.approx(e.semi_major, abs=0.6) and b == pytest.approx(e.semi_minor, abs=0.6)
    assert math.degrees(math.asin(b / a)) == pytest.approx(cup.seen_anteversion_deg, abs=0.5)
    assert abs(((major_dir - e.angle_deg) + 90) % 180 - 90) < 0.5
    assert abs(cup.seen_anteversion_deg - 20.0) > 1.0  # the tilt really changed what is seen


def test_flipping_side_flips_the_image() -> None:
    for view, imp in ((View.AP_PELVIS, "right"), (View.AP_HIP, "right"), (View.OBLIQUE_HIP, "none"),
                      (View.LATERAL_HIP, "right")):
        spec = sample_spec(21, view=view, side=Side.RIGHT, implants=imp, rows=160).quiet()
        a = render(spec)
        b = render(spec.mirrored())
        vmax = (1 << a.truth.bits_stored) - 1
        diff = np.abs(np.fliplr(a.pixels).astype(np.int64) - b.pixels.astype(np.int64))
        assert np.percentile(diff, 99.5) <= 0.002 * vmax, view
        if view is not View.AP_PELVIS:
            assert b.truth.imaged_sides == (Side.LEFT,)
        ca = a.truth.hips[Side.RIGHT].cup
        cb = b.truth.hips[Side.LEFT].cup
        if ca is not None and cb is not None:
            assert cb.ellipse.cx == pytest.approx(a.truth.cols - 1 - ca.ellipse.cx, abs=1e-3)
            assert cb.ellipse.angle_deg == pytest.approx((180.0 - ca.ellipse.angle_deg) % 180.0, abs=1e-3)


def test_single_hip_views_differ_by_side() -> None:
    """Side must be visible: right and left AP hips of one patient are not the same picture."""
    r = render(sample_spec(22, view=View.AP_HIP, side=Side.RIGHT, implants="none", rows=128).quiet())
    left = render(replace(r.spec, side=Side.LEFT))
    x, y = r.normalized(), left.normalized()
    assert np.abs(x - y).mean() > 1.5 * np.abs(np.fliplr(x) - y).mean()


@pytest.mark.parametrize("view", [v for v in View if v is not View.OTHER])
@pytest.mark.parametrize("implants", ["none", "right", "left", "bilateral"])
def test_every_view_and_implant_combination_renders(view: View, implants: str) -> None:
    spec = sample_spec(hash((view.value, implants)) % 1000, view=view, implants=implants, rows=96, cols=112)
    img = render(spec)
    gt = img.truth
    assert img.pixels.shape == (96, 112) and img.pixels.dtype == np.uint16
    assert int(img.pixels.max()) <= (1 << gt.bits_stored) - 1 and img.pixels.std() > 0
    assert gt.view is view
    assert len(gt.imaged_sides) == (2 if view is View.AP_PELVIS else 1)
    want = {"none": (), "right": (Side.RIGHT,), "left": (Side.LEFT,), "bilateral": (Side.RIGHT, Side.LEFT)}[implants]
    assert tuple(s for s in (Side.RIGHT, Side.LEFT) if gt.hips[s].implant) == want
    for s in want:
        cup = gt.hips[s].cup
        assert cup is not None and cup.ellipse.semi_major > cup.ellipse.semi_minor > 0
        if view is View.LATERAL_HIP:
            assert cup.seen_version_deg is not None
        else:
            assert cup.seen_inclination_deg is not None and cup.seen_anteversion_deg is not None
    assert all(b.label in DETECTOR_CLASSES and b.x1 > b.x0 and b.y1 > b.y0 for b in gt.boxes)
    assert all(b.x0 >= 0 and b.x1 <= gt.cols - 1 and b.y0 >= 0 and b.y1 <= gt.rows - 1 for b in gt.boxes)
    d = gt.to_dict()
    assert d["view"] == view.value and set(d["hips"]) == {"R", "L"}


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_other_images_render_without_hips(kind: str) -> None:
    img = render(sample_spec(31, view=View.OTHER, other_kind=kind, rows=96))
    assert img.truth.view is View.OTHER and img.truth.imaged_sides == () and img.truth.boxes == []
    assert img.truth.other_kind == kind and img.pixels.std() > 0


@pytest.mark.parametrize("flag", ["dysplasia", "cam_deformity", "ischial_spine_sign", "other_abnormality"])
def test_morphology_variants_render_with_flags_and_measures(flag: str) -> None:
    flags = {k: k == flag for k in ("dysplasia", "cam_deformity", "ischial_spine_sign", "other_abnormality")}
    spec = sample_spec(41, view=View.AP_PELVIS, implants="none", rows=128,
                       morphology={Side.RIGHT: flags, Side.LEFT: {k: False for k in flags}})
    gt = render(neutral(spec)).truth
    right, left = gt.hips[Side.RIGHT], gt.hips[Side.LEFT]
    assert right.flags[flag] is True
    assert left.flags[flag] is False
    m = right.measures
    if flag == "dysplasia":
        assert m["lateral_centre_edge_deg"] is not None and m["lateral_centre_edge_deg"] < 20.0
        assert m["tonnis_deg"] is not None and m["tonnis_deg"] > 5.0
    if flag == "cam_deformity":
        assert m["alpha_deg"] is not None and m["alpha_deg"] > 55.0
        assert left.measures["alpha_deg"] is not None and left.measures["alpha_deg"] < 50.0
    for view in (View.LATERAL_HIP, View.OBLIQUE_HIP):
        other = render(replace(neutral(spec), view=view, side=Side.RIGHT, rows=64, cols=64))
        assert other.truth.hips[Side.RIGHT].flags[flag] is True


def test_landmarks_are_where_the_anatomy_is() -> None:
    spec = neutral(sample_spec(51, view=View.AP_PELVIS, implants="none", rows=256))
    gt = render(spec).truth
    td = gt.landmarks["teardrop_inferior"]
    tub = gt.landmarks["ischial_tuberosity_inferior"]
    heads = gt.landmarks["femoral_head"]
    # right structures on the image left, tuberosities below teardrops, heads lateral to teardrops
    assert td["R"].x < td["L"].x and tub["R"].x < tub["L"].x
    assert tub["R"].y > td["R"].y and tub["L"].y > td["L"].y
    assert heads["R"]["x"] < td["R"].x < td["L"].x < heads["L"]["x"]
    assert abs(gt.landmarks["inter_teardrop_angle_deg"]) < 1e-6
    labels = sorted(b.label for b in gt.boxes)
    assert labels == sorted(["hip_joint_right", "hip_joint_left", "teardrop", "teardrop",
                             "ischial_tuberosity", "ischial_tuberosity"])
    td_mask = render_mask(spec, "bone:teardrop:R")
    ys, _xs = np.nonzero(td_mask)
    assert ys.max() == pytest.approx(td["R"].y, abs=1.5)


def test_same_index_same_pixels_and_truth() -> None:
    a = render_index(5, 3, size=96)
    b = render_index(5, 3, size=96)
    c = render_index(5, 4, size=96)
    assert a.pixels.tobytes() == b.pixels.tobytes()
    assert a.truth.to_dict() == b.truth.to_dict()
    assert a.pixels.tobytes() != c.pixels.tobytes()


def test_photometric_and_bits() -> None:
    spec = sample_spec(61, view=View.AP_PELVIS, implants="none", rows=96)
    m2 = render(replace(spec, imaging=replace(spec.imaging, photometric="MONOCHROME2", bits_stored=12)))
    m1 = render(replace(spec, imaging=replace(spec.imaging, photometric="MONOCHROME1", bits_stored=12)))
    assert np.array_equal(m1.pixels.astype(np.int64), 4095 - m2.pixels.astype(np.int64))
    assert np.allclose(m1.normalized(), m2.normalized())
    for bits in (10, 16):
        img = render(replace(spec, imaging=replace(spec.imaging, bits_stored=bits)))
        assert int(img.pixels.max()) <= (1 << bits) - 1 and int(img.pixels.max()) > (1 << (bits - 1))
