"""Phantom variety (``sample_spec(variety="broad")``): new arthroplasty designs, non-arthroplasty
hardware and children render with the right ground truth, and "classic" stays what it was."""

from __future__ import annotations

import collections
from dataclasses import replace

import numpy as np
import pytest

from node.domain import Box, Side, View
from node.phantom import CupSpec, render, render_mask, sample_spec
from node.phantom.anatomy import ARTHROPLASTY_DESIGNS, HARDWARE_KINDS, HardwareSpec
from node.phantom.render import build_scene, collimation_mask, make_camera
from node.phantom.spec import DESIGN_WEIGHTS, HARDWARE_WEIGHTS, PhantomSpec

ROWS = 160
# sha1 of render_index(5, i, size=64).pixels for i = 0, 1, 2, rendered by the generator before
# infants were added (git HEAD of node/phantom at the time): classic must keep rendering these
CLASSIC_DIGEST = "c635b479dd765c9a513294b27c0187d7166fcdb1"

# one CupSpec per design, sized for an average hip (head radius 21–27 mm)
DESIGNS: dict[str, CupSpec] = {
    "hemispherical": CupSpec(44.0, 16.0, n_screws=2, screw_holes=2),
    "flanged": CupSpec(40.0, 20.0, design="flanged", flange_mm=6.0, stem_shape="wedge"),
    "dual_mobility": CupSpec(45.0, 15.0, design="dual_mobility", shell_mm=2.5, shell_material="cocr",
                             head_radius_mm=14.0, n_screws=0, stem_shape="anatomic"),
    "large_head": CupSpec(42.0, 18.0, design="large_head", liner="none", head_radius_mm=22.3,
                          shell_material="cocr", n_screws=0, stem_shape="collared"),
    "cemented_pe": CupSpec(46.0, 14.0, design="cemented_pe", outer_radius_mm=25.0, head_radius_mm=11.0, n_screws=0,
                           cemented=True, stem_material="steel", marker_wire="arc"),
    "hemiarthroplasty": CupSpec(design="hemiarthroplasty", outer_radius_mm=24.0, bipolar=True, head_radius_mm=14.0,
                                n_screws=0, stem_shape="cylindrical", stem_length_mm=210.0),
    "resurfacing": CupSpec(41.0, 17.0, design="resurfacing", outer_radius_mm=29.0, head_radius_mm=25.3, liner="none",
                           shell_material="cocr", n_screws=0),
}


def _inside(b: Box, spec: PhantomSpec) -> bool:
    return 0 <= b.x0 < b.x1 <= spec.cols - 1 and 0 <= b.y0 < b.y1 <= spec.rows - 1


def test_classic_is_the_default_and_broad_is_not() -> None:
    """The default draws what it always drew (the one-off check against pixels saved before the
    change is in the report); "broad" draws something else from the same seed."""
    for seed, view in ((3, None), (4, View.AP_PELVIS), (5, View.AP_HIP)):
        a = sample_spec(seed, view=view, implants="bilateral", rows=96)
        b = sample_spec(seed, view=view, implants="bilateral", rows=96, variety="classic")
        c = sample_spec(seed, view=view, implants="bilateral", rows=96, variety="broad")
        assert a == b and a.variety == "classic" and c.variety == "broad"
        assert not a.hardware and not a.patient.paediatric and a.patient.scale == 1.0
        assert a.patient.bone_density == 1.0
        assert all(cs is not None and cs.design == "hemispherical" for cs in a.implants.values())
        assert c != a
    a_img, b_img = render(a), render(b)
    assert np.array_equal(a_img.pixels, b_img.pixels) and a_img.truth.to_dict() == b_img.truth.to_dict()
    assert not np.array_equal(a_img.pixels, render(c).pixels)
    with pytest.raises(ValueError):
        sample_spec(1, variety="wide")


def test_designs_and_kinds_are_all_sampled() -> None:
    assert set(DESIGN_WEIGHTS) == set(ARTHROPLASTY_DESIGNS)
    assert set(HARDWARE_WEIGHTS) == set(HARDWARE_KINDS)


@pytest.mark.parametrize("design", ARTHROPLASTY_DESIGNS)
def test_each_design_renders_with_its_truth(design: str) -> None:
    side = Side.LEFT if design in ("large_head", "hemiarthroplasty") else Side.RIGHT
    cup = DESIGNS[design]
    spec = sample_spec(100 + ARTHROPLASTY_DESIGNS.index(design), view=View.AP_HIP, side=side, implants={side: cup}, rows=ROWS,
                       variety="broad", paediatric=False)
    img = render(spec)
    gt = img.truth
    hip = gt.hips[side]
    assert hip.implant and hip.design == design and hip.hardware is None
    assert not gt.hips[side.other].implant
    metal = render_mask(spec, "metal")
    assert metal.sum() > 50
    labels = [b.label for b in gt.boxes]
    assert all(_inside(b, spec) for b in gt.boxes)
    assert labels.count("stem") == 1
    if design == "hemiarthroplasty":
        # no acetabular component: no cup angles, no cup box; the head is in the stem box
        assert hip.cup is None and "cup" not in labels
        assert gt.landmarks["femoral_head"][side.value]["prosthetic"]
        stem = next(b for b in gt.boxes if b.label == "stem")
        head = gt.landmarks["femoral_head"][side.value]
        assert stem.x0 <= head["x"] <= stem.x1 and stem.y0 <= head["y"] - 0.8 * head["r"]
    else:
        assert hip.cup is not None and labels.count("cup") == 1
        assert hip.cup.inclination_deg == pytest.approx(cup.inclination_deg, abs=1e-6)
        assert hip.cup.anteversion_deg == pytest.approx(cup.anteversion_deg, abs=1e-6)
        box = next(b for b in gt.boxes if b.label == "cup")
        e = hip.cup.ellipse
        assert box.x0 - 1 <= e.cx <= box.x1 + 1 and box.y0 - 1 <= e.cy <= box.y1 + 1
    if design == "cemented_pe":
        # the PE cup itself is radiolucent: its orientation shows only through a thin wire
        wire = render_mask(spec, f"metal:wire:{side.value}")
        box = next(b for b in gt.boxes if b.label == "cup")
        assert 0 < wire.sum() < 0.35 * (box.x1 - box.x0) * (box.y1 - box.y0)
        assert hip.cup is not None and hip.cup.cemented
        assert not render_mask(spec, f"metal:cup:{side.value}").any()
    if design == "flanged":
        # the flange widens the cup beyond its shell
        assert render_mask(spec, f"metal:cup:{side.value}").sum() > render_mask(
            replace(spec, implants={side: replace(cup, flange_mm=0.0)}), f"metal:cup:{side.value}").sum()


@pytest.mark.parametrize("kind", HARDWARE_KINDS)
def test_each_hardware_kind_is_other_hardware_not_an_implant(kind: str) -> None:
    side = Side.RIGHT
    hw = HardwareSpec(kind, count=3, length_mm=110.0 if kind != "nail" else 200.0,
                      variant="posterior" if kind == "pelvic_plate" else "")
    view = View.AP_PELVIS if kind in ("nail", "pelvic_plate") else View.AP_HIP
    spec = sample_spec(200 + HARDWARE_KINDS.index(kind), view=view, side=side, implants="none", hardware={side: hw},
                       rows=256, variety="broad")
    gt = render(spec).truth
    assert not gt.hips[side].implant and gt.hips[side].cup is None and gt.hips[side].hardware == kind
    assert gt.hips[side].flags["dysplasia"] in (True, False)  # a native hip keeps its morphology
    labels = [b.label for b in gt.boxes]
    assert "cup" not in labels and "stem" not in labels
    own = [b for b in gt.boxes if b.label == "other_hardware"]
    # one box per device: each cannulated screw, each wire (the lowest may leave the field)
    expected = {"cannulated_screws": (3,), "cerclage": (2, 3)}.get(kind, (1,))
    assert len(own) in expected, own
    assert all(_inside(b, spec) for b in gt.boxes)
    metal = render_mask(spec, "metal")
    for b in own:  # each box holds rendered metal
        assert metal[int(b.y0):int(b.y1) + 1, int(b.x0):int(b.x1) + 1].any()


def test_femoral_hardware_cannot_share_a_femur_with_a_stem() -> None:
    spec = sample_spec(7, view=View.AP_HIP, side="R", implants="right", rows=64,
                       hardware={Side.RIGHT: HardwareSpec("dhs")})
    with pytest.raises(ValueError):
        render(spec)


def test_posed_femur_carries_its_boxes() -> None:
    """On a frog-leg view the femur is flexed and abducted: boxes of femoral devices follow it."""
    side = Side.LEFT
    spec = sample_spec(306, view=View.OBLIQUE_HIP, side=side, rows=ROWS, variety="broad",
                       implants={side: replace(DESIGNS["hemispherical"], stem_length_mm=120.0)})
    gt = render(spec).truth
    stem = next(b for b in gt.boxes if b.label == "stem")
    m = render_mask(spec, f"metal:stem:{side.value}") & collimation_mask(spec)
    ys, xs = np.nonzero(m)
    assert stem.x0 == pytest.approx(xs.min(), abs=1.0) and stem.x1 == pytest.approx(xs.max(), abs=1.0)
    assert stem.y0 == pytest.approx(ys.min(), abs=1.0) and stem.y1 == pytest.approx(ys.max(), abs=1.0)


def test_broad_sampling_covers_every_design_and_kind() -> None:
    designs: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    children = both_hw = 0
    for i in range(120):
        spec = sample_spec(np.random.default_rng([77, i]), rows=64, variety="broad")
        for c in spec.implants.values():
            if c is not None:
                designs[c.design] += 1
        hw = [h for h in spec.hardware.values() if h is not None]
        kinds.update(h.kind for h in hw)
        if len(hw) == 2:  # contralateral hardware is of another kind
            both_hw += 1
            assert hw[0].kind != hw[1].kind
        if spec.patient.paediatric:
            children += 1
            assert spec.view in (View.AP_PELVIS, View.AP_HIP)
            assert not any(spec.implants.values()) and not spec.hardware
            assert spec.patient.age_years is not None and 0.3 <= spec.patient.age_years <= 12.0
            assert 0.3 <= spec.patient.scale <= 0.8
    assert set(designs) == set(ARTHROPLASTY_DESIGNS), designs
    assert set(kinds) == set(HARDWARE_KINDS), kinds
    assert children >= 3 and both_hw >= 1


def _bone_column(spec: PhantomSpec, side: Side) -> tuple[np.ndarray, int, int]:
    """Bone mask (parallel AP, neutral pelvis) and the (column, row) of the triradiate
    cartilage's horizontal limb, medial to the femoral head."""
    g = replace(spec.geometry, projection="parallel", pelvic_tilt_deg=0.0, pelvic_rotation_deg=0.0,
                pelvic_obliquity_deg=0.0)
    spec = replace(spec.quiet(), geometry=g)
    scene = build_scene(spec)
    cam = make_camera(spec, scene.marks)
    hp = spec.patient.hip(side)
    r_in = hp.head_radius_mm + hp.joint_space_mm  # the child's own (scaled) millimetres
    H = scene.marks.hip_centre[side]
    sx = -1.0 if side is Side.RIGHT else 1.0
    p = H + np.array([-sx * 0.95 * r_in, 0.0, 0.12 * r_in])
    u, v = cam.project(p[None, :])[0]
    return render_mask(spec, "bone"), round(float(u)), round(float(v))


def test_child_has_an_open_triradiate_cartilage_and_no_implants() -> None:
    spec = sample_spec(16, view=View.AP_PELVIS, implants="none", paediatric=True, rows=400, variety="broad")
    assert spec.patient.paediatric and spec.patient.age_years is not None
    img = render(spec)
    gt = img.truth
    assert gt.paediatric and gt.age_years == spec.patient.age_years
    assert not any(h.implant for h in gt.hips.values()) and render_mask(spec, "metal").sum() == 0
    labels = [b.label for b in gt.boxes]
    assert "hip_joint_right" in labels and "hip_joint_left" in labels
    assert all(gt.hips[s].measures["alpha_deg"] is None for s in (Side.RIGHT, Side.LEFT))
    reach = int(10.0 / (spec.geometry.fov_mm / spec.cols))  # ±10 mm (at the detector) round the limb
    for side in (Side.RIGHT, Side.LEFT):
        bone, x, y = _bone_column(spec, side)
        win = bone[y - reach:y + reach + 1, x]
        gap = np.nonzero(~win)[0]
        # rays through the cartilage cross no bone at all; ilium above, ischium/pubis below
        assert gap.size >= 2 and win[:gap[0]].any() and win[gap[-1] + 1:].any()
    # the same skeleton grown up has no such gap
    adult = replace(spec, patient=replace(spec.patient.unscaled(), paediatric=False, age_years=None))
    bone, x, y = _bone_column(adult, Side.RIGHT)
    assert bone[y - reach:y + reach + 1, x].all()


def test_children_are_smaller_and_can_be_refused_implants() -> None:
    child = sample_spec(30, view=View.AP_HIP, side="R", implants="none", paediatric=True, rows=64)
    adult = sample_spec(30, view=View.AP_HIP, side="R", implants="none", paediatric=False, rows=64)
    assert child.patient.hip_half_width_mm < 0.82 * adult.patient.unscaled().hip_half_width_mm
    with pytest.raises(ValueError):
        sample_spec(30, view=View.AP_HIP, side="R", implants="right", paediatric=True, rows=64)


def test_broad_specs_mirror_exactly() -> None:
    spec = sample_spec(41, view=View.AP_PELVIS, rows=128, variety="broad",
                       implants={Side.RIGHT: DESIGNS["flanged"], Side.LEFT: DESIGNS["cemented_pe"]},
                       hardware={Side.LEFT: HardwareSpec("pelvic_plate", 4, 100.0, variant="brim")}).quiet()
    a, b = render(spec), render(spec.mirrored())
    vmax = (1 << a.truth.bits_stored) - 1
    diff = np.abs(np.fliplr(a.pixels).astype(np.int64) - b.pixels.astype(np.int64))
    assert np.percentile(diff, 99.5) <= 0.002 * vmax
    assert b.truth.hips[Side.RIGHT].hardware == "pelvic_plate" and b.truth.hips[Side.LEFT].design == "flanged"


def test_habitus_and_bone_density_vary_under_broad() -> None:
    pats = [sample_spec(np.random.default_rng([9, i]), view=View.AP_PELVIS, implants="none", rows=64,
                        variety="broad", paediatric=False).patient for i in range(40)]
    fat = [p.fat_mm for p in pats]
    dens = [p.bone_density for p in pats]
    assert min(fat) < 15.0 and max(fat) > 45.0
    assert min(dens) < 0.85 and max(dens) > 0.95
    thin = replace(pats[0], bone_density=0.6)
    spec = sample_spec(9, view=View.AP_PELVIS, implants="none", rows=96, patient=pats[0]).quiet()
    from node.phantom.geometry import line_integral

    def bone_sum(s: PhantomSpec) -> float:
        scene = build_scene(s)
        cam = make_camera(s, scene.marks)
        return float(line_integral(cam, [q for q in scene.prims if q.tag.startswith("bone")]).sum())

    assert bone_sum(replace(spec, patient=thin)) == pytest.approx(bone_sum(spec) * 0.6 / pats[0].bone_density,
                                                                   rel=1e-3)


def _pelvis(age: float, seed: int, rows: int = 160) -> PhantomSpec:
    return sample_spec(np.random.default_rng([seed, 1]), view=View.AP_PELVIS, implants="none", rows=rows,
                       variety="broad", age_years=age)


def test_infants_render_with_a_late_ossific_nucleus_and_no_teardrop() -> None:
    """Infants and toddlers (developmental-dysplasia screening age): no femoral head nucleus
    before ~5 months, one from a year; no teardrop box under four; no implants."""
    for age, seed in ((0.3, 1), (0.38, 2), (1.0, 3), (2.5, 4)):
        spec = _pelvis(age, seed)
        gt = render(spec).truth
        assert gt.paediatric and gt.age_years == pytest.approx(age)
        assert not any(h.implant for h in gt.hips.values()) and render_mask(spec, "metal").sum() == 0
        labels = [b.label for b in gt.boxes]
        assert "teardrop" not in labels and {"hip_joint_right", "hip_joint_left"} <= set(labels)
        nucleus = gt.landmarks["ossific_nucleus"]
        heads = render_mask(spec, "bone:head")
        if age < 0.4:
            assert nucleus == {"R": None, "L": None} and not heads.any()
        else:
            assert all(v is not None and v["r"] > 0.5 for v in nucleus.values()) and heads.any()
            for v in nucleus.values():  # the rendered nucleus is where the truth says
                assert v is not None and heads[round(v["y"]), round(v["x"])]
        for s in (Side.RIGHT, Side.LEFT):
            ai = gt.hips[s].measures["acetabular_index_deg"]
            assert ai is not None and 8.0 < ai < 45.0
            assert gt.hips[s].flags["dysplasia"] == (ai > 30.0)
    # the nucleus grows with age (same patient, older)
    young, old = _pelvis(0.8, 9), _pelvis(2.5, 9)
    r = [render(s).truth.landmarks["ossific_nucleus"]["R"]["r"] / s.patient.scale for s in (young, old)]
    assert r[1] > 1.5 * r[0]


@pytest.mark.parametrize("age", [0.5, 1.5, 6.0])
def test_child_joint_box_holds_the_acetabulum_and_the_metaphysis(age: float) -> None:
    """The hip box of a child contains its triradiate point, its lateral acetabular edge, the
    ossific nucleus, and the top of the femoral metaphysis (its rendered bone just below the
    cartilaginous head)."""
    spec = _pelvis(age, 20 + int(age * 10), rows=200)
    gt = render(spec).truth
    boxes = {b.label: b for b in gt.boxes}
    for s, label in ((Side.RIGHT, "hip_joint_right"), (Side.LEFT, "hip_joint_left")):
        b = boxes[label]
        pts = [gt.landmarks["triradiate"][s.value], gt.landmarks["acetabular_edge_lateral"][s.value]]
        for p in pts:
            assert b.x0 <= p.x <= b.x1 and b.y0 <= p.y <= b.y1, (label, p, b)
        tri, edge = pts
        assert (edge.x < tri.x) == (s is Side.RIGHT) and edge.y < tri.y  # lateral and up
        nuc = gt.landmarks["ossific_nucleus"][s.value]
        if nuc is not None:
            assert b.x0 <= nuc["x"] - nuc["r"] and nuc["x"] + nuc["r"] <= b.x1 and nuc["y"] + nuc["r"] <= b.y1
        # femoral bone under the head centre, inside the box, within 1.6 head radii
        head = gt.landmarks["femoral_head"][s.value]
        neck = render_mask(spec, f"bone:neck:{s.value}")
        ys, xs = np.nonzero(neck)
        near = np.hypot(xs - head["x"], ys - head["y"])
        top = int(np.argmin(near))
        assert b.x0 <= xs[top] <= b.x1 and b.y0 <= ys[top] <= b.y1
    assert "teardrop" in boxes or age < 4.0


def test_child_share_sets_how_many_children_are_drawn() -> None:
    def count(share: float | None, n: int = 200) -> int:
        return sum(sample_spec(np.random.default_rng([55, i]), view=View.AP_PELVIS, implants="none", rows=32,
                               variety="broad", child_share=share).patient.paediatric for i in range(n))

    assert count(0.0) == 0 and count(1.0) == 200
    assert 80 <= count(0.5) <= 120 and 8 <= count(None) <= 35  # binomial, ±3 sigma
    ages = [sample_spec(np.random.default_rng([56, i]), view=View.AP_PELVIS, implants="none", rows=32,
                        variety="broad", child_share=1.0).patient.age_years for i in range(200)]
    infants = sum(a is not None and a < 3.0 for a in ages)
    assert 100 <= infants <= 140 and min(a or 0.0 for a in ages) >= 0.3  # INFANT_SHARE 0.6
    with pytest.raises(ValueError):
        sample_spec(1, child_share=0.5)  # classic has no children
    with pytest.raises(ValueError):
        sample_spec(1, variety="broad", child_share=1.5)


def test_classic_pixels_are_unchanged_by_the_infants() -> None:
    """Classic draws (default arguments) still render the pixels they rendered before infants
    existed: a fixed digest of a few images saved before the change."""
    import hashlib

    from node.phantom import render_index

    digest = hashlib.sha1()
    for i in range(3):
        digest.update(render_index(5, i, size=64).pixels.tobytes())
    assert digest.hexdigest() == CLASSIC_DIGEST


def test_child_ap_pelvis_is_collimated_to_the_pelvis() -> None:
    """Version 5: a broad child's AP pelvis is framed as a paediatric film is, collimated to the
    pelvis and centred on the hips (version 4 left the hips ~30-35 % of the width apart, low in a
    field that showed the whole lumbar spine); adults keep their field."""

    def frame(child: bool, i: int) -> tuple[float, float, float]:
        spec = sample_spec(np.random.default_rng([57, i]), view=View.AP_PELVIS, implants="none", rows=160,
                           variety="broad", child_share=1.0 if child else 0.0)
        gt = render(spec).truth
        boxes = {b.label: b for b in gt.boxes}
        r, lft = boxes["hip_joint_right"].centre, boxes["hip_joint_left"].centre
        if not child:
            return (lft.x - r.x) / gt.cols, 0.0, 0.0
        edge = gt.landmarks["acetabular_edge_lateral"]
        return ((lft.x - r.x) / gt.cols, abs(edge["L"].x - edge["R"].x) / gt.cols,
                0.5 * (edge["R"].y + edge["L"].y) / gt.rows)

    children = [frame(True, i) for i in range(12)]
    adults = [frame(False, i) for i in range(6)]
    # measured at version 5: hip boxes 0.46-0.6 apart, acetabular edges 0.53-0.70 apart, the
    # edges at 0.29-0.42 of the height (version 4: boxes ~0.3-0.35 apart)
    assert all(0.4 <= hips <= 0.66 and 0.45 <= edges <= 0.8 for hips, edges, _ in children), children
    assert all(0.2 <= y <= 0.5 for _, _, y in children), "acetabula in the upper middle of the film"
    assert all(0.44 <= hips <= 0.62 for hips, _, _ in adults), adults  # measured 0.50-0.57
