"""Cup geometry on our own ray-traced shells (independent of the phantom package).

The renderer traces rays from a point source (or a parallel beam) through a hemispherical metal
shell, a metal head ball and a neck/stem band, so the rim ellipse, the dome outline and the
occlusion by the head are all physically right; the angles it is given are the ground truth.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from node.analyse.cup import (
    ProjectionGeometry,
    angles_from_axis,
    conic_to_ellipse,
    cup_axis_parallel,
    cup_axis_perspective,
    ellipse_conic,
    ellipse_distance,
    ellipse_points,
    fit_cup_ellipse,
    measure_cup,
)
from node.analyse.reference import HORIZONTAL, INTER_TEARDROP, horizontal_line, line_through
from node.domain import Box, Ellipse, Point, Side, View


def cup_axis_3d(incl_deg: float, antev_deg: float, side: Side, ref_angle_deg: float = 0.0) -> NDArray[np.float64]:
    """Cup axis (camera coords: x right, y down, z source→detector) from Murray radiographic angles."""
    ri, ra = math.radians(incl_deg), math.radians(antev_deg)
    h = np.array([math.cos(math.radians(ref_angle_deg)), math.sin(math.radians(ref_angle_deg)), 0.0])
    lateral = -h if side is Side.RIGHT else h
    inferior = np.array([-h[1], h[0], 0.0])
    anterior = np.array([0.0, 0.0, -1.0])
    return math.cos(ra) * (math.sin(ri) * lateral + math.cos(ri) * inferior) + math.sin(ra) * anterior


def _sphere_chord(S: NDArray[np.float64], d: NDArray[np.float64], C: NDArray[np.float64], r: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    oc = S - C
    bq = (d * oc).sum(-1)
    cq = (oc * oc).sum(-1) - r * r
    disc = bq * bq - cq
    ok = disc > 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    t0, t1 = -bq - sq, -bq + sq
    return np.where(ok, t0, 0.0), np.where(ok, t1, 0.0)


def _clip_len(t0: NDArray[np.float64], t1: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(np.clip(np.minimum(t1, hi) - np.maximum(t0, lo), 0.0, None), dtype=np.float64)


def render_cup(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radius_px: float,
    incl_deg: float,
    antev_deg: float,
    side: Side,
    *,
    focal_px: float | None = None,
    magnification: float = 1.15,
    head_frac: float = 0.55,
    wall_frac: float = 0.12,
    neck: bool = True,
    noise: float = 0.01,
    ref_angle_deg: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[NDArray[np.float32], Box]:
    """Render a cup (shell + head + neck) on a smooth background; returns image and cup box."""
    rng = rng or np.random.default_rng(0)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = focal_px if focal_px is not None else 1e9
    pp = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    depth = f / magnification
    R = radius_px / magnification
    # 3-D centre: on the ray through the requested image centre, at the object depth
    C = np.array([(centre[0] - pp[0]) / magnification, (centre[1] - pp[1]) / magnification, depth])
    S = np.array([0.0, 0.0, 0.0])
    if focal_px is None:  # parallel beam: rays along +z through each pixel
        Sx = np.stack([(xx - pp[0]) / magnification, (yy - pp[1]) / magnification, np.full_like(xx, depth - 10 * R)], -1)
        d = np.broadcast_to(np.array([0.0, 0.0, 1.0]), Sx.shape).copy()
    else:
        Sx = np.broadcast_to(S, (h, w, 3)).copy()
        d = np.stack([xx - pp[0], yy - pp[1], np.full_like(xx, f)], -1)
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
    n = cup_axis_3d(incl_deg, antev_deg, side, ref_angle_deg)
    dn = (d * n).sum(-1)
    tc = ((C - Sx) * n).sum(-1) / np.where(np.abs(dn) < 1e-12, 1e-12, dn)
    big = 1e12
    lo = np.where(dn < 0, tc, -big)  # dome side: (X − C)·n ≤ 0
    hi = np.where(dn > 0, tc, big)
    o0, o1 = _sphere_chord(Sx, d, C, R)
    i0, i1 = _sphere_chord(Sx, d, C, R * (1 - wall_frac))
    shell = _clip_len(o0, o1, lo, hi) - _clip_len(i0, i1, lo, hi)
    h0, h1 = _sphere_chord(Sx, d, C, R * head_frac)
    head = h1 - h0
    mu = 2.5 / (R * wall_frac)
    path = mu * (shell + head)
    metal = 1.0 - np.exp(-path)
    # neck and stem: a band from the head centre along the femoral neck, outwards and down
    if neck:
        band = np.zeros(shape, np.float32)
        lat = -1.0 if side is Side.RIGHT else 1.0
        c2 = (centre[0], centre[1])
        nd = np.array([lat * math.cos(math.radians(50)), math.sin(math.radians(50))])
        p1 = (c2[0] + nd[0] * radius_px * 1.6, c2[1] + nd[1] * radius_px * 1.6)
        p2 = (p1[0] + lat * 0.2 * radius_px, p1[1] + radius_px * 3)
        cv2.line(band, (round(c2[0]), round(c2[1])), (round(p1[0]), round(p1[1])), 1.0, round(0.35 * radius_px))
        cv2.line(band, (round(p1[0]), round(p1[1])), (round(p2[0]), round(p2[1])), 1.0, round(0.45 * radius_px))
        band = np.asarray(cv2.GaussianBlur(band, (0, 0), 0.7), dtype=np.float32)
        metal = 1.0 - (1.0 - metal) * (1.0 - 0.9 * band)
    bg = 0.25 + 0.1 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    img = bg + (0.97 - bg) * metal
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7)
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    # cup box: bounding box of the shell's projection, slightly loose
    ys, xs = np.nonzero(shell > 0)
    pad = 0.04 * radius_px
    box = Box(xs.min() - pad, ys.min() - pad, xs.max() + pad, ys.max() + pad, label="cup")
    return img, box


# --------------------------------------------------------------------------------------------
# pure geometry
# --------------------------------------------------------------------------------------------


def test_conic_round_trip() -> None:
    e = Ellipse(40.0, -12.0, 30.0, 11.0, 33.0)
    back = conic_to_ellipse(ellipse_conic(e))
    assert back.cx == pytest.approx(40.0) and back.cy == pytest.approx(-12.0)
    assert back.semi_major == pytest.approx(30.0) and back.semi_minor == pytest.approx(11.0)
    assert back.angle_deg == pytest.approx(33.0)


def test_ellipse_distance_is_orthogonal() -> None:
    e = Ellipse(0.0, 0.0, 50.0, 8.0, 20.0)
    on = ellipse_points(e, np.linspace(0, 2 * math.pi, 50))
    assert np.abs(ellipse_distance(on, 0.0, 0.0, 50.0, 8.0, math.radians(20.0))).max() < 1e-6
    # points pushed out along the normal by 1.5 px are 1.5 px away, also near the sharp ends
    th = math.radians(20.0)
    t = np.linspace(0, 2 * math.pi, 50)
    nx, ny = 8.0 * np.cos(t), 50.0 * np.sin(t)  # normal in the ellipse frame ∝ (x/a², y/b²)·a²b²
    nn = np.hypot(nx, ny)
    off = np.stack([np.cos(th) * nx - np.sin(th) * ny, np.sin(th) * nx + np.cos(th) * ny], 1) / nn[:, None]
    d = ellipse_distance(on + 1.5 * off, 0.0, 0.0, 50.0, 8.0, th)
    assert np.allclose(d, 1.5, atol=1e-3)


@pytest.mark.parametrize("side", [Side.RIGHT, Side.LEFT])
@pytest.mark.parametrize(("incl", "antev"), [(40.0, 15.0), (55.0, 30.0), (30.0, 5.0)])
def test_parallel_axis_round_trip(side: Side, incl: float, antev: float) -> None:
    """Orthographic projection of the rim circle → ellipse → the angles we started from."""
    n = cup_axis_3d(incl, antev, side)
    # rim circle in 3-D, projected along z
    u = np.cross(n, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    t = np.linspace(0, 2 * math.pi, 400)
    pts = 100 + 40 * (np.outer(np.cos(t), u) + np.outer(np.sin(t), v))[:, :2]
    e = _direct_fit(pts)
    ref = horizontal_line(400)
    ri, ra = angles_from_axis(cup_axis_parallel(e, (float(n[0]), float(n[1]))), ref, side)
    assert ri == pytest.approx(incl, abs=1e-6)
    assert ra == pytest.approx(antev, abs=1e-6)
    # and the clinical reading: long axis vs horizontal is the inclination
    assert min(e.angle_deg, 180 - e.angle_deg) == pytest.approx(incl, abs=1e-6)


@pytest.mark.parametrize("offset", [(-350.0, 120.0), (300.0, -200.0), (0.0, 0.0)])
def test_perspective_axis_round_trip(offset: tuple[float, float]) -> None:
    """A cup far off the central ray: the cone solution recovers the true axis, the plain
    arcsin(minor/major) would not."""
    f = 1000.0 / 0.14  # 1 m SID, 0.14 mm pixels
    pp = Point(1000.0, 1000.0)
    n = cup_axis_3d(45.0, 20.0, Side.RIGHT)
    C = np.array([offset[0] * 0.14, offset[1] * 0.14, 870.0])  # mm, camera coords
    u = np.cross(n, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    t = np.linspace(0, 2 * math.pi, 720)
    X = C + 26.0 * (np.outer(np.cos(t), u) + np.outer(np.sin(t), v))
    pts = np.stack([pp.x + f * X[:, 0] / X[:, 2], pp.y + f * X[:, 1] / X[:, 2]], 1)
    e = _direct_fit(pts)
    opening = (float(n[0]), float(n[1]))
    got = cup_axis_perspective(e, opening, f, pp)
    assert np.degrees(math.acos(min(1.0, abs(float(got @ n))))) < 0.05
    if offset != (0.0, 0.0):
        naive = cup_axis_parallel(e, opening)
        assert np.degrees(math.acos(min(1.0, float(naive @ n)))) > 1.0


def _direct_fit(pts: NDArray[np.float64]) -> Ellipse:
    """Algebraic conic fit through exact points (test helper)."""
    x, y = pts[:, 0], pts[:, 1]
    D = np.column_stack([x * x, x * y, y * y, x, y, np.ones_like(x)])
    _, _, Vt = np.linalg.svd(D)
    a, b, c, d, e, f = Vt[-1]
    C = np.array([[a, b / 2, d / 2], [b / 2, c, e / 2], [d / 2, e / 2, f]])
    return conic_to_ellipse(C)


# --------------------------------------------------------------------------------------------
# image → angles
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [Side.RIGHT, Side.LEFT])
@pytest.mark.parametrize(("incl", "antev"), [(45.0, 20.0), (30.0, 3.0), (62.0, 33.0)])
def test_measure_rendered_cup(side: Side, incl: float, antev: float) -> None:
    img, box = render_cup((260, 260), (130.0, 120.0), 60.0, incl, antev, side)
    ref = line_through(Point(10.0, 240.0), Point(250.0, 240.0), INTER_TEARDROP)
    m = measure_cup(img, box, side, View.AP_PELVIS, reference=ref)
    assert m.refusal_reason is None, m.refusal_reason
    assert m.inclination_deg == pytest.approx(incl, abs=1.0)
    assert m.anteversion_deg == pytest.approx(antev, abs=1.0)
    assert m.inclination_reference == INTER_TEARDROP and not m.flagged
    assert m.anteversion_liaw_deg is not None and m.anteversion_liaw_deg == pytest.approx(antev, abs=3.0)
    assert m.ellipse is not None and m.ellipse.semi_major == pytest.approx(60.0, rel=0.03)


def test_reference_line_rotation_is_subtracted() -> None:
    """A pelvis rotated 4° in the image: the cup turns with it, the inclination must not."""
    side = Side.LEFT
    img, box = render_cup((260, 260), (130.0, 120.0), 60.0, 45.0, 20.0, side, ref_angle_deg=-4.0)
    ref = line_through(Point(0.0, 200.0), Point(240.0, 200.0 + 240.0 * math.tan(math.radians(-4.0))), INTER_TEARDROP)
    m = measure_cup(img, box, side, View.AP_PELVIS, reference=ref)
    assert m.inclination_deg == pytest.approx(45.0, abs=1.0)
    # against the image horizontal the same cup reads 4° off: the reference line matters
    m_h = measure_cup(img, box, side, View.AP_PELVIS, reference=None)
    assert m_h.inclination_deg is not None and abs(m_h.inclination_deg - 45.0) > 3.0


def test_horizontal_fallback_is_flagged() -> None:
    img, box = render_cup((260, 260), (130.0, 120.0), 60.0, 40.0, 15.0, Side.RIGHT)
    m = measure_cup(img, box, Side.RIGHT, View.AP_PELVIS, reference=None)
    assert m.flagged and m.inclination_reference == HORIZONTAL
    assert m.inclination_deg == pytest.approx(40.0, abs=1.0)


def test_point_source_correction() -> None:
    """A cup 300 px off the central ray under a 1 m point source: corrected angles match."""
    f = 1000.0 / 0.2
    side = Side.RIGHT
    img, box = render_cup((700, 900), (150.0, 300.0), 60.0, 45.0, 20.0, side, focal_px=f)
    geo = ProjectionGeometry(source_image_distance_mm=1000.0, source_object_distance_mm=870.0)
    m = measure_cup(img, box, side, View.AP_PELVIS, reference=None, pixel_spacing_mm=0.2, geometry=geo)
    assert m.inclination_deg == pytest.approx(45.0, abs=1.0)
    assert m.anteversion_deg == pytest.approx(20.0, abs=1.0)


def test_refuses_blank_and_wrong_side() -> None:
    blank = np.full((200, 200), 0.3, np.float32)
    m = measure_cup(blank, Box(50, 50, 150, 150), Side.RIGHT, View.AP_PELVIS, reference=None)
    assert m.inclination_deg is None and m.anteversion_deg is None and m.refusal_reason
    img, box = render_cup((260, 260), (130.0, 120.0), 60.0, 45.0, 20.0, Side.RIGHT)
    wrong = measure_cup(img, box, Side.LEFT, View.AP_PELVIS, reference=None)
    assert wrong.inclination_deg is None and wrong.anteversion_deg is None and wrong.refusal_reason


def test_refuses_a_plain_disc() -> None:
    """A ball with no rim (e.g. a head without cup) has no ellipse to measure."""
    img = np.full((200, 200), 0.25, np.float32)
    cv2.circle(img, (100, 100), 50, 0.95, -1)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 0.8), dtype=np.float32)
    m = measure_cup(img, Box(45, 45, 155, 155), Side.RIGHT, View.AP_PELVIS, reference=None)
    assert m.inclination_deg is None and m.refusal_reason


def test_random_cups_accuracy_and_speed() -> None:
    """40 random cups, both sides, noise and a neck: MAE ≤ 1° each, ≤ 1 refusal."""
    rng = np.random.default_rng(7)
    ei, ea, refused, times = [], [], 0, []
    for k in range(40):
        side = Side.RIGHT if k % 2 else Side.LEFT
        incl, antev = rng.uniform(25, 65), rng.uniform(0, 35)
        r = rng.uniform(40, 70)
        img, box = render_cup((int(3 * r), int(3 * r)), (1.5 * r, 1.4 * r), r, incl, antev, side, rng=rng, noise=0.02)
        t0 = time.perf_counter()
        m = measure_cup(img, box, side, View.AP_PELVIS, reference=None)
        times.append(time.perf_counter() - t0)
        if m.inclination_deg is None or m.anteversion_deg is None:
            refused += 1
            continue
        ei.append(abs(m.inclination_deg - incl))
        ea.append(abs(m.anteversion_deg - antev))
    assert refused <= 1
    assert float(np.mean(ei)) <= 1.0, np.mean(ei)
    assert float(np.mean(ea)) <= 1.0, np.mean(ea)
    # the 150 ms budget is measured by benchmarks/bench_analyse.py on a quiet machine; here only
    # a pathological slow-down fails (the test machine is shared)
    assert float(np.median(times)) < 0.6


def test_fit_reports_rim_points_on_the_open_side() -> None:
    img, box = render_cup((260, 260), (130.0, 120.0), 60.0, 45.0, 20.0, Side.RIGHT)
    fit = fit_cup_ellipse(img, box)
    assert fit.refusal_reason is None and fit.opening_dir is not None
    # right hip: opens to the image left and down
    assert fit.opening_dir[0] < 0 and fit.opening_dir[1] > 0
    assert len(fit.rim_points) > 20 and fit.rim_rms_px < 1.0


def test_a_marker_ring_inside_its_cement_mantle_matches_the_mantle_s_box() -> None:
    """The ring wire lies ~1 mm inside the polyethylene and the cement mantle (2–4 mm) is what
    the detector boxes: the ring's hemisphere is checked against the box at the mantle's size
    too, while a box far larger than any mantle still refuses the ring."""
    import math

    import numpy as np

    from node.analyse.cup import WireFit, _wire_fit
    from node.domain import Box, Ellipse

    ring = Ellipse(100.0, 100.0, 30.0, 10.0, 135.0)  # a left hip's opening, seen at ~20° anteversion
    wire = WireFit("ring", ring, np.zeros((0, 2)), 0.7, 0.9, 200.0, 0.3)

    def hemisphere_box(radius: float) -> Box:
        u = np.array([1.0, 1.0]) / math.sqrt(2.0)  # opens laterally and inferiorly
        t = np.radians(np.linspace(0.0, 360.0, 721))
        dome = np.column_stack([100 + radius * np.cos(t), 100 + radius * np.sin(t)])
        dome = dome[(dome - 100.0) @ u <= 0]
        k = radius / ring.semi_major
        th = math.radians(ring.angle_deg)
        rim = np.column_stack([
            100 + k * (ring.semi_major * np.cos(t) * math.cos(th) - ring.semi_minor * np.sin(t) * math.sin(th)),
            100 + k * (ring.semi_major * np.cos(t) * math.sin(th) + ring.semi_minor * np.sin(t) * math.cos(th)),
        ])
        rim = rim[(rim - 100.0) @ u >= 0]
        pts = np.concatenate([dome, rim])
        return Box(*pts.min(axis=0), *pts.max(axis=0), "cup", 0.9)

    assert _wire_fit(wire, (1.0, 1.0), hemisphere_box(30.0)) is not None  # box of the ring itself
    assert _wire_fit(wire, (1.0, 1.0), hemisphere_box(34.5)) is not None  # mantle 15 % out: read
    # a ring seen on both halves only has to roughly agree with the box (a detector's box on an
    # unseen style is loose): 50 % larger is read, twice as large is not this cup's ring
    assert _wire_fit(wire, (1.0, 1.0), hemisphere_box(45.0)) is not None
    assert _wire_fit(wire, (1.0, 1.0), hemisphere_box(60.0)) is None
    # a ring seen mostly on one side could be a partly hidden arc: the strict bar holds
    lopsided = WireFit("ring", ring, np.zeros((0, 2)), 0.5, 0.6, 200.0, 0.3)
    assert _wire_fit(lopsided, (1.0, 1.0), hemisphere_box(34.5)) is not None
    assert _wire_fit(lopsided, (1.0, 1.0), hemisphere_box(45.0)) is None


def test_a_loose_box_refuses_the_outline_and_two_boxes_agreeing_on_it_lift_the_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A box much larger than the cup (as a detector gives on a style it never saw) refuses a fit
    that is right; a second, different loose box refuses the same ellipse; the pipeline's rule
    (``node.pipeline._same_outline``) sees the agreement and the cup read without the box check
    (``min_box_iou=0``) is the true one. Two readings of different ellipses do not agree.
    The dome here is seen whole, so the looser bar for a clear dome (``MIN_BOX_IOU_CLEAR_DOME``,
    tested below) would read it in either box, the last pass for a loose box
    (``LOOSE_BOX_MIN_IOU``, tested below) the first one, and the pass that confirms a fit in its
    own box (``SELF_BOX_MIN_IOU``, tested below) both: the first two bars are set to the usual one
    and the last pass is switched off to test the rule for fits without a clear dome."""
    from dataclasses import replace as _replace

    import node.analyse.cup as cup_module
    from node.analyse.cup import MIN_BOX_IOU, OUTLINE_BOX_REFUSAL
    from node.pipeline import _same_outline

    monkeypatch.setattr(cup_module, "MIN_BOX_IOU_CLEAR_DOME", MIN_BOX_IOU)
    monkeypatch.setattr(cup_module, "LOOSE_BOX_MIN_IOU", MIN_BOX_IOU)
    monkeypatch.setattr(cup_module, "SELF_BOX_MIN_IOU", 1.01)

    img, box = render_cup((320, 320), (160.0, 150.0), 60.0, 45.0, 20.0, Side.RIGHT)
    ref = line_through(Point(10.0, 300.0), Point(310.0, 300.0), INTER_TEARDROP)
    w, h = box.width, box.height
    loose = [Box(box.x0 - 0.3 * w, box.y0, box.x1, box.y1 + 0.2 * h, label="cup"),  # IoU 0.61 and 0.57
             Box(box.x0 - 0.25 * w, box.y0, box.x1 + 0.05 * w, box.y1 + 0.3 * h, label="cup")]
    refused = [measure_cup(img, b, Side.RIGHT, View.AP_PELVIS, reference=ref) for b in loose]
    for m in refused:
        assert m.refusal_reason is not None and m.refusal_reason.startswith(OUTLINE_BOX_REFUSAL), m.refusal_reason
    assert _same_outline(refused[0], refused[1])
    again = measure_cup(img, loose[0], Side.RIGHT, View.AP_PELVIS, reference=ref, min_box_iou=0.0)
    assert again.refusal_reason is None and _same_outline(refused[0], again, refused=False)
    assert again.inclination_deg == pytest.approx(45.0, abs=1.0)
    assert again.anteversion_deg == pytest.approx(20.0, abs=1.0)
    # a different ellipse, or a refusal for another reason, is no agreement
    e = refused[0].ellipse
    assert e is not None
    turned = _replace(refused[1], ellipse=_replace(e, angle_deg=e.angle_deg + 2.0))
    assert not _same_outline(refused[0], turned)
    other = _replace(refused[1], refusal_reason="rim ellipse reaches beyond the cup box: its ends are not the cup's")
    assert not _same_outline(refused[0], other)


def test_after_every_fit_was_refused_a_box_loose_down_to_0_6_is_read_where_the_fit_is_good(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last pass for a loose box (``LOOSE_BOX_MIN_IOU``): the outline overlapping the box by
    0.61 is read, at 0.57 it stays refused. The clear-dome bar is set to the usual one and the
    own-box pass is switched off, as above."""
    import node.analyse.cup as cup_module
    from node.analyse.cup import MIN_BOX_IOU, OUTLINE_BOX_REFUSAL

    monkeypatch.setattr(cup_module, "MIN_BOX_IOU_CLEAR_DOME", MIN_BOX_IOU)
    monkeypatch.setattr(cup_module, "SELF_BOX_MIN_IOU", 1.01)
    img, box = render_cup((320, 320), (160.0, 150.0), 60.0, 45.0, 20.0, Side.RIGHT)
    ref = line_through(Point(10.0, 300.0), Point(310.0, 300.0), INTER_TEARDROP)
    w, h = box.width, box.height
    read = measure_cup(img, Box(box.x0 - 0.3 * w, box.y0, box.x1, box.y1 + 0.2 * h, label="cup"), Side.RIGHT,
                       View.AP_PELVIS, reference=ref)
    assert read.refusal_reason is None, read.refusal_reason
    assert read.inclination_deg == pytest.approx(45.0, abs=1.0)
    assert read.anteversion_deg == pytest.approx(20.0, abs=1.0)
    refused = measure_cup(img, Box(box.x0 - 0.25 * w, box.y0, box.x1 + 0.05 * w, box.y1 + 0.3 * h, label="cup"),
                          Side.RIGHT, View.AP_PELVIS, reference=ref)
    assert refused.refusal_reason is not None and refused.refusal_reason.startswith(OUTLINE_BOX_REFUSAL)


def test_a_fit_refused_for_its_box_alone_is_read_where_its_own_box_confirms_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last pass for a shifted box (``SELF_BOX_MIN_IOU``): a fit refused only for the box is
    fitted again in the box of its own silhouette and read where that finds the same rim; the box
    that overlapped the outline by 0.57 (refused by every other pass, see above) is read within 1°.
    A box overlapping the outline by less than SELF_BOX_MIN_IOU is not a box round this cup: the fit
    stays refused."""
    import node.analyse.cup as cup_module
    from node.analyse.cup import MIN_BOX_IOU, OUTLINE_BOX_REFUSAL, SELF_BOX_MIN_IOU

    monkeypatch.setattr(cup_module, "MIN_BOX_IOU_CLEAR_DOME", MIN_BOX_IOU)
    img, box = render_cup((320, 320), (160.0, 150.0), 60.0, 45.0, 20.0, Side.RIGHT)
    ref = line_through(Point(10.0, 300.0), Point(310.0, 300.0), INTER_TEARDROP)
    w, h = box.width, box.height
    shifted = Box(box.x0 - 0.25 * w, box.y0, box.x1 + 0.05 * w, box.y1 + 0.3 * h, label="cup")
    read = measure_cup(img, shifted, Side.RIGHT, View.AP_PELVIS, reference=ref)
    assert read.refusal_reason is None, read.refusal_reason
    assert read.inclination_deg == pytest.approx(45.0, abs=1.0)
    assert read.anteversion_deg == pytest.approx(20.0, abs=1.0)
    monkeypatch.setattr(cup_module, "SELF_BOX_MIN_IOU", fit_cup_ellipse(img, shifted).box_iou + 0.01)
    refused = measure_cup(img, shifted, Side.RIGHT, View.AP_PELVIS, reference=ref)
    assert refused.refusal_reason is not None and refused.refusal_reason.startswith(OUTLINE_BOX_REFUSAL)
    assert SELF_BOX_MIN_IOU < 0.57


def test_a_loose_box_around_a_clearly_seen_dome_is_read_down_to_half_overlap() -> None:
    """Where the dome is clearly seen (``CLEAR_DOME_SPAN_DEG``, ``CLEAR_DOME_QUALITY``) and the rim
    opens the way the dome's gap does (``LOOSE_BOX_MAX_TURN_DEG``), the outline has to overlap the
    detector's cup box by ``MIN_BOX_IOU_CLEAR_DOME`` only: on a style the detector never saw its
    cup boxes are loose, and such fits were right (issue 12, dev sketch phantoms). Below half
    overlap the box refuses the outline as before."""
    from node.analyse.cup import CLEAR_DOME_SPAN_DEG, MIN_BOX_IOU, MIN_BOX_IOU_CLEAR_DOME, OUTLINE_BOX_REFUSAL

    img, box = render_cup((320, 320), (160.0, 150.0), 60.0, 45.0, 20.0, Side.RIGHT)
    ref = line_through(Point(10.0, 300.0), Point(310.0, 300.0), INTER_TEARDROP)
    w, h = box.width, box.height
    for loose in (Box(box.x0 - 0.3 * w, box.y0, box.x1, box.y1 + 0.2 * h, label="cup"),
                  Box(box.x0 - 0.25 * w, box.y0, box.x1 + 0.05 * w, box.y1 + 0.3 * h, label="cup")):
        fit = fit_cup_ellipse(img, loose)
        assert MIN_BOX_IOU_CLEAR_DOME <= fit.box_iou < MIN_BOX_IOU and fit.dome_span_deg >= CLEAR_DOME_SPAN_DEG
        m = measure_cup(img, loose, Side.RIGHT, View.AP_PELVIS, reference=ref)
        assert m.refusal_reason is None, m.refusal_reason
        assert m.inclination_deg == pytest.approx(45.0, abs=1.0)
        assert m.anteversion_deg == pytest.approx(20.0, abs=1.0)
    looser = Box(box.x0 - 0.42 * w, box.y0, box.x1 + 0.05 * w, box.y1 + 0.5 * h, label="cup")
    m = measure_cup(img, looser, Side.RIGHT, View.AP_PELVIS, reference=ref)
    assert m.refusal_reason is not None and m.refusal_reason.startswith(OUTLINE_BOX_REFUSAL), m.refusal_reason


def test_a_dome_without_contrast_is_no_cup_outline() -> None:
    """In a box loose towards the femur, the search for a flatter rim once took a circle through
    the background (its step 0.8 % of the region's range) for the dome and read the cup 13° off
    in inclination and 16° in anteversion; a dome must show the metal's edge
    (``MIN_DOME_CONTRAST_SHARE``). Refused or right - never that wrong angle."""
    img, box = render_cup((320, 320), (160.0, 150.0), 60.0, 45.0, 20.0, Side.RIGHT)
    ref = line_through(Point(10.0, 300.0), Point(310.0, 300.0), INTER_TEARDROP)
    w, h = box.width, box.height
    loose = Box(box.x0 - 0.05 * w, box.y0 - 0.1 * h, box.x1 + 0.25 * w, box.y1 + 0.2 * h, label="cup")
    m = measure_cup(img, loose, Side.RIGHT, View.AP_PELVIS, reference=ref)
    if m.refusal_reason is None:
        assert m.inclination_deg == pytest.approx(45.0, abs=1.0)
        assert m.anteversion_deg == pytest.approx(20.0, abs=1.0)
    else:
        assert m.inclination_deg is None and m.anteversion_deg is None
