"""Exact ground truth of a rendered phantom, computed from the 3D model and the camera."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from node.domain import DETECTOR_CLASSES, Box, Ellipse, Point, Side, View
from node.phantom.anatomy import TEARDROP_AGE, Landmarks, radiographic_angles, side_sign
from node.phantom.geometry import (
    F64,
    Camera,
    Primitive,
    ellipse_from_points,
    fibonacci_sphere,
    frame_from_z,
    mask,
)
from node.phantom.spec import PhantomSpec

AP_LIKE = (View.AP_PELVIS, View.AP_HIP, View.OBLIQUE_HIP)

DYSPLASIA_LCE_DEG = 20.0
DYSPLASIA_AI_DEG = 30.0  # children with an infant (oblique) roof: acetabular index above this
CAM_ALPHA_DEG = 55.0


@dataclass
class CupTruth:
    side: Side
    inclination_deg: float  # radiographic (Murray 1993), relative to the pelvis
    anteversion_deg: float
    ellipse: Ellipse  # projected outer rim circle of the shell, pixels
    seen_inclination_deg: float | None = None  # AP-like: major axis vs inter-teardrop line
    seen_inclination_horizontal_deg: float | None = None  # AP-like: major axis vs image rows
    seen_anteversion_deg: float | None = None  # AP-like: Lewinnek arcsin(minor/major)
    seen_version_deg: float | None = None  # lateral: cup face vs image vertical, + anterior opening
    head_centre: Point | None = None
    head_radius_px: float | None = None
    screws: int = 0
    cemented: bool = False


@dataclass
class HipTruth:
    side: Side
    implant: bool  # an arthroplasty (THA of any design, hemiarthroplasty, resurfacing)
    cup: CupTruth | None = None  # None without an acetabular component (also hemiarthroplasty)
    flags: dict[str, bool] = field(default_factory=dict)
    measures: dict[str, float | None] = field(default_factory=dict)
    design: str | None = None  # the arthroplasty's design (``ARTHROPLASTY_DESIGNS``)
    hardware: str | None = None  # non-arthroplasty hardware on this side (``HARDWARE_KINDS``)


@dataclass
class GroundTruth:
    view: View
    imaged_sides: tuple[Side, ...]
    sex: str
    hips: dict[Side, HipTruth]
    boxes: list[Box]
    landmarks: dict[str, Any]
    rows: int
    cols: int
    imager_pixel_spacing_mm: float
    magnification: float  # at the (imaged) hip centre; PixelSpacing at the hip = imager / magnification
    photometric: str
    bits_stored: int
    projection: str
    marker: str | None
    other_kind: str | None = None
    corrupted_tags: list[str] = field(default_factory=list)
    pelvic_tilt_deg: float = 0.0
    pelvic_rotation_deg: float = 0.0
    seed: int | None = None
    index: int | None = None
    paediatric: bool = False  # a child: open growth cartilage, no implants
    age_years: float | None = None
    variety: str = "classic"  # the sampler's variety (``node.phantom.spec.VARIETIES``)

    def implant(self, side: Side) -> bool:
        return self.hips[side].implant

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as their values, sides as "R"/"L")."""

        def conv(o: Any) -> Any:
            if isinstance(o, (View, Side)):
                return o.value
            if isinstance(o, dict):
                return {conv(k): conv(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [conv(v) for v in o]
            if isinstance(o, (np.floating, float)):
                return None if not math.isfinite(float(o)) else round(float(o), 4)
            if isinstance(o, np.integer):
                return int(o)
            if isinstance(o, np.bool_):
                return bool(o)
            return o

        d = asdict(self)
        out: dict[str, Any] = conv(d)
        return out


# ----------------------------------------------------------------------------------------------


def _line_angle(p0: F64, p1: F64) -> float:
    return math.degrees(math.atan2(p1[1] - p0[1], p1[0] - p0[0]))


def _acute(a: float, b: float) -> float:
    d = abs((a - b) % 180.0)
    return min(d, 180.0 - d)


def _ray_interval(p: Primitive, o: F64, d: F64) -> tuple[float, float]:
    """[t1, t2] of the ray o + t d inside primitive p (empty: t1 >= t2)."""
    t1, t2 = -1e9, 1e9
    if p.Q is not None:
        Oh = np.append(o, 1.0)
        D = np.append(d, 0.0)
        A = D @ p.Q @ D
        B = 2 * D @ p.Q @ Oh
        C = Oh @ p.Q @ Oh
        if abs(A) < 1e-12:
            if C > 0:
                return 0.0, 0.0
        else:
            disc = B * B - 4 * A * C
            if p.cone and A < 0:
                # the inside of the nappe is outside the roots; the planes keep one piece
                if disc > 0:
                    r = math.sqrt(disc)
                    lo, hi = sorted(((-B - r) / (2 * A), (-B + r) / (2 * A)))
                    s1, s2 = _ray_interval(replace(p, Q=None, cone=False), o, d)
                    if min(s2, lo) > s1:
                        return s1, min(s2, lo)
                    return max(s1, hi), s2
            elif disc <= 0:
                return 0.0, 0.0
            else:
                r = math.sqrt(disc)
                t1, t2 = (-B - r) / (2 * A), (-B + r) / (2 * A)
    for row in p.planes:
        nd = float(row[:3] @ d)
        no = float(row[:3] @ o) - row[3]
        if abs(nd) < 1e-12:
            if no > 0:
                return 0.0, 0.0
            continue
        b = -no / nd
        if nd > 0:
            t2 = min(t2, b)
        else:
            t1 = max(t1, b)
    return t1, t2


def _reach(prims: list[Primitive], o: F64, d: F64) -> float:
    """Distance from o along d to where the union of prims (containing o) is left."""
    ivs = sorted((t1, t2) for t1, t2 in (_ray_interval(p, o, d) for p in prims) if t2 > t1)
    end = 0.0
    for t1, t2 in ivs:
        if t1 <= end + 1e-6 and t2 > end:
            end = t2
    return end


def femoral_head_neck(scene_prims: list[Primitive], marks: Landmarks, side: Side, head_r: float
                      ) -> tuple[float, float]:
    """Alpha angle (deg) and anterosuperior head-neck offset (mm) in the plane of the neck axis and
    the cam direction, from the native (un-posed) bone surfaces."""
    s = side.value
    outer = [p for p in scene_prims if p.mu > 0 and (p.tag in (f"bone:head:{s}", f"bone:neck:{s}", f"bone:cam:{s}"))]
    T = marks.femur_pose.get(side)
    H = marks.head_centre[side]
    hd = marks.neck_axis[side]
    cd = marks.cam_direction[side]
    if T is not None:
        hd = T.apply_vec(hd)
        cd = T.apply_vec(cd)
    neck = -hd
    cd = cd - neck * float(cd @ neck)
    cd = cd / np.linalg.norm(cd)
    def outside(deg: float) -> bool:
        th = math.radians(deg)
        return _reach(outer, H, math.cos(th) * neck + math.sin(th) * cd) <= head_r + 0.05

    alpha = float("nan")
    prev = 0.0
    for k in range(1, 121):
        if outside(float(k)):
            lo, hi = prev, float(k)
            for _ in range(12):
                mid = 0.5 * (lo + hi)
                if outside(mid):
                    hi = mid
                else:
                    lo = mid
            alpha = hi
            break
        prev = float(k)
    offset = float("inf")
    for t in np.linspace(head_r * 0.7, head_r * 1.3, 13):
        o = H + neck * t
        r = _reach(outer, o, cd)
        offset = min(offset, head_r - r)
    return alpha, float(offset)


def compute_truth(spec: PhantomSpec, cam: Camera, marks: Landmarks, prims: list[Primitive],
                  exposed: np.ndarray, marker: str | None, neutral_cam: Camera | None) -> GroundTruth:
    view = spec.view
    rows, cols = spec.rows, spec.cols
    if view is View.OTHER:
        imaged: tuple[Side, ...] = ()
    elif view is View.AP_PELVIS:
        imaged = (Side.RIGHT, Side.LEFT)
    else:
        assert spec.side is not None
        imaged = (spec.side,)
    px = cam.pixel_mm
    boxes: list[Box] = []
    landmarks: dict[str, Any] = {}
    hips: dict[Side, HipTruth] = {}
    ys, xs = np.nonzero(exposed[:: max(1, rows // 256), :: max(1, cols // 256)])
    f = max(1, rows // 256)
    fx = max(1, cols // 256)
    field_box = (xs.min() * fx, ys.min() * f, (xs.max() + 1) * fx - 1, (ys.max() + 1) * f - 1) if xs.size else (0, 0, cols - 1, rows - 1)

    def add_box(pts: F64, label: str, c: Camera = cam, min_inside: float = 0.6,
                tags: tuple[str, ...] = ()) -> None:
        """Box of the projected points, clipped to the exposed field; dropped when less than
        ``min_inside`` of it is inside (long devices — plates, nails, revision stems — are
        recognisable from a smaller visible part and use a lower bar). With ``tags`` the box is
        that of the pixels the primitives so tagged actually cover in the exposed field (a
        device leaving the field obliquely would otherwise get a box far larger than what
        shows); the points then only give the full extent for ``min_inside``."""
        if label not in DETECTOR_CLASSES:
            raise ValueError(label)
        uv = c.project(pts)
        if tags:
            x0, y0 = uv.min(axis=0)
            x1, y1 = uv.max(axis=0)
            seen_mask = mask(c, [q for q in prims if q.tag in tags and q.mu > 0], "") & exposed
            ys_, xs_ = np.nonzero(seen_mask)
            if not xs_.size:
                return
            hx0, hy0, hx1, hy1 = float(xs_.min()), float(ys_.min()), float(xs_.max()), float(ys_.max())
            full = max((x1 - x0) * (y1 - y0), 1e-9)
            if (hx1 - hx0) * (hy1 - hy0) / full < min_inside or hx1 - hx0 < 3 or hy1 - hy0 < 3:
                return
            boxes.append(Box(hx0, hy0, hx1, hy1, label))
            return
        x0, y0 = uv.min(axis=0)
        x1, y1 = uv.max(axis=0)
        area = max((x1 - x0) * (y1 - y0), 1e-9)
        cx0, cy0 = max(x0, field_box[0]), max(y0, field_box[1])
        cx1, cy1 = min(x1, field_box[2]), min(y1, field_box[3])
        if cx1 <= cx0 or cy1 <= cy0:
            return
        inside = (cx1 - cx0) * (cy1 - cy0) / area
        if inside < min_inside or (cx1 - cx0) < 3 or (cy1 - cy0) < 3:
            return
        boxes.append(Box(float(cx0), float(cy0), float(cx1), float(cy1), label))

    if view is View.OTHER:
        return GroundTruth(view, imaged, spec.patient.sex, {}, boxes, landmarks, rows, cols, px, 1.0,
                           spec.imaging.photometric, spec.imaging.bits_stored, spec.geometry.projection, marker,
                           spec.other_kind, seed=None, variety=spec.variety)

    # reference line and landmarks on AP-like projections
    ap_cam = cam if view in AP_LIKE else neutral_cam
    assert ap_cam is not None
    td = {}
    for side in (Side.RIGHT, Side.LEFT):
        uv = ap_cam.project(marks.teardrop_curve[side])
        td[side] = uv[int(np.argmax(uv[:, 1]))]
    ref_angle = _line_angle(td[Side.RIGHT], td[Side.LEFT])
    if view in AP_LIKE:
        landmarks["teardrop_inferior"] = {s.value: Point(float(td[s][0]), float(td[s][1])) for s in td}
        tub = {}
        for side in (Side.RIGHT, Side.LEFT):
            c, R, ax = marks.tuberosity[side]
            pts = c + (fibonacci_sphere(3000) * ax) @ R.T
            uv = cam.project(pts)
            tub[side] = uv[int(np.argmax(uv[:, 1]))]
        landmarks["ischial_tuberosity_inferior"] = {s.value: Point(float(tub[s][0]), float(tub[s][1])) for s in tub}
        landmarks["inter_teardrop_angle_deg"] = ref_angle
    heads = {}
    for side in (Side.RIGHT, Side.LEFT):
        c = marks.head_centre[side]
        r = marks.head_radius[side]
        # silhouette of the sphere: project a dense point cloud and fit its outline extent
        pts = c + fibonacci_sphere(2000) * r
        uv = cam.project(pts)
        cu = cam.project(c[None, :])[0]
        rad = float(np.max(np.linalg.norm(uv - cu, axis=1)))
        heads[side] = (float(cu[0]), float(cu[1]), rad)
    landmarks["femoral_head"] = {s.value: {"x": v[0], "y": v[1], "r": v[2], "prosthetic": marks.head_prosthetic[s]}
                                 for s, v in heads.items()}
    child_ai: dict[Side, float] = {}
    if spec.patient.paediatric and view in AP_LIKE and marks.acetabular_roof:
        # Hilgenreiner's line through the triradiate points; the acetabular index from there to
        # the lateral acetabular edge (the infant screening measure); the ossific nucleus (None
        # before it appears: then ``femoral_head`` is the invisible cartilaginous head)
        roof = {sd: cam.project(np.stack(marks.acetabular_roof[sd])) for sd in (Side.RIGHT, Side.LEFT)}
        landmarks["triradiate"] = {sd.value: Point(float(uv[0, 0]), float(uv[0, 1])) for sd, uv in roof.items()}
        landmarks["acetabular_edge_lateral"] = {sd.value: Point(float(uv[1, 0]), float(uv[1, 1]))
                                                for sd, uv in roof.items()}
        hilgenreiner = _line_angle(roof[Side.RIGHT][0], roof[Side.LEFT][0])
        for sd, uv in roof.items():
            a = _line_angle(uv[0], uv[1]) if sd is Side.LEFT else _line_angle(uv[1], uv[0])
            child_ai[sd] = _acute(a, hilgenreiner)
        landmarks["hilgenreiner_angle_deg"] = hilgenreiner
        landmarks["ossific_nucleus"] = {
            sd.value: ({"x": heads[sd][0], "y": heads[sd][1], "r": heads[sd][2]}
                       if marks.nucleus.get(sd, 0.0) > 0.0 else None) for sd in (Side.RIGHT, Side.LEFT)}
    hip_c = marks.hip_centre[imaged[0]] if imaged else np.zeros(3)
    magnification = cam.magnification(hip_c) if cam.source is not None else 1.0

    for side in (Side.RIGHT, Side.LEFT):
        cupspec = spec.implant(side)
        ht = HipTruth(side, cupspec is not None)
        ht.design = cupspec.design if cupspec is not None else None
        hw = spec.hardware.get(side)
        ht.hardware = hw.kind if hw is not None else None
        if cupspec is not None and side in marks.cups and marks.cups[side].has_cup:
            g = marks.cups[side]
            ri, ra = radiographic_angles(side, g.axis)
            e1 = frame_from_z(g.axis)
            t = np.radians(np.arange(0.0, 360.0, 4.0))
            rim = g.centre + g.rim_radius * (np.cos(t)[:, None] * e1[:, 0] + np.sin(t)[:, None] * e1[:, 1])
            cx, cy, a, b, ang = ellipse_from_points(cam.project(rim))
            ell = Ellipse(cx, cy, a, b, ang)
            ct = CupTruth(side, ri, ra, ell, screws=cupspec.n_screws,
                          cemented=cupspec.cemented or cupspec.design == "cemented_pe")
            if view in AP_LIKE:
                ct.seen_inclination_deg = _acute(ang, ref_angle)
                ct.seen_inclination_horizontal_deg = _acute(ang, 0.0)
                ct.seen_anteversion_deg = math.degrees(math.asin(min(1.0, b / a)))
            elif view is View.LATERAL_HIP:
                dev = _acute(ang, 90.0)
                tip = cam.project(np.stack([g.centre, g.centre + g.axis * 10.0]))
                sign = 1.0 if tip[1, 1] < tip[0, 1] else -1.0
                ct.seen_version_deg = sign * dev
            hc = heads[side]
            ct.head_centre = Point(hc[0], hc[1])
            ct.head_radius_px = hc[2]
            ht.cup = ct
        hips[side] = ht

    # morphology (native hips only; the ischial spine sign is pelvic)
    for side in (Side.RIGHT, Side.LEFT):
        hp = spec.patient.hip(side)
        ht = hips[side]
        sx = side_sign(side)
        iss = _ischial_spine_sign(ap_cam, marks, side)
        ht.flags["ischial_spine_sign"] = iss
        ht.measures["pelvic_tilt_deg"] = spec.geometry.pelvic_tilt_deg
        ht.measures["pelvic_rotation_deg"] = spec.geometry.pelvic_rotation_deg
        ht.measures["acetabular_version_deg"] = hp.socket_version_deg
        ht.measures["ischial_spine_length_mm"] = hp.spine_length_mm
        if ht.implant:
            for k in ("dysplasia", "cam_deformity", "other_abnormality"):
                ht.flags[k] = False
            ht.measures.update(lateral_centre_edge_deg=None, tonnis_deg=None, alpha_deg=None,
                               head_neck_offset_mm=None, joint_space_mm=None)
            continue
        # LCE and Tönnis as they appear on the AP-like projection, relative to the teardrop line
        med, lat_e = marks.sourcil[side]
        T = marks.femur_pose.get(side)
        uv = ap_cam.project(np.stack([med, lat_e, marks.hip_centre[side]]))
        rot = -math.radians(ref_angle)
        Rm = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
        q = (uv - uv[2]) @ Rm.T
        lat_sign = sx  # image x grows towards the patient's left on AP views
        lx, ly = q[1, 0] * lat_sign, -q[1, 1]
        mx_, my_ = q[0, 0] * lat_sign, -q[0, 1]
        lce = math.degrees(math.atan2(lx, ly))
        tonnis = math.degrees(math.atan2(ly - my_, lx - mx_))
        _ = T
        if spec.patient.paediatric:
            # the head is a separate epiphysis on a physis: no head-neck contour to measure
            ht.measures.update(lateral_centre_edge_deg=lce, tonnis_deg=tonnis, alpha_deg=None,
                               head_neck_offset_mm=None, joint_space_mm=hp.joint_space_mm,
                               acetabular_index_deg=child_ai.get(side))
            ai = child_ai.get(side, hp.acetabular_index_deg)  # as seen, else by design (non-AP views)
            ht.flags["dysplasia"] = lce < DYSPLASIA_LCE_DEG if ai is None else ai > DYSPLASIA_AI_DEG
            ht.flags["cam_deformity"] = False
            ht.flags["other_abnormality"] = False
            continue
        alpha, offset = femoral_head_neck(prims, marks, side, hp.head_radius_mm)
        ht.measures.update(lateral_centre_edge_deg=lce, tonnis_deg=tonnis, alpha_deg=alpha,
                           head_neck_offset_mm=offset, joint_space_mm=hp.joint_space_mm)
        ht.flags["dysplasia"] = lce < DYSPLASIA_LCE_DEG
        ht.flags["cam_deformity"] = alpha > CAM_ALPHA_DEG
        ht.flags["other_abnormality"] = bool(hp.joint_space_mm < 2.0 or hp.osteophytes)

    # boxes
    for side in (Side.RIGHT, Side.LEFT):
        jpts: list[F64] = [marks.joint_points[side]]
        if side in marks.cups:
            g = marks.cups[side]
            jpts.append(g.shell_points)
        label = "hip_joint_right" if side is Side.RIGHT else "hip_joint_left"
        add_box(np.concatenate(jpts), label)
        if side in marks.cups:
            g = marks.cups[side]
            # classic specs keep their historical stem boxes (un-posed femur points); anything
            # new boxes the stem where the posed femur actually carries it
            posed = spec.variety != "classic" or g.design != "hemispherical"
            if g.has_cup:
                add_box(g.shell_points, "cup")
            sv = side.value
            if posed:
                stem_tags = (f"metal:stem:{sv}",) + ((f"metal:head:{sv}",) if not g.has_cup or
                                                      g.design == "resurfacing" else ())
                add_box(g.posed(g.stem_points), "stem", min_inside=0.3, tags=stem_tags)
            else:
                add_box(g.stem_points, "stem")
            for sp in g.screw_points:
                add_box(sp, "other_hardware")
            for kc, sp in enumerate(g.cerclage_points):
                if posed:
                    add_box(g.posed(sp), "other_hardware", tags=(f"metal:cerclage{kc}:{sv}",))
                else:
                    add_box(sp, "other_hardware")
        for device in marks.hardware.get(side, []):
            add_box(device.points, "other_hardware", min_inside=0.3 if device.elongated else 0.6, tags=device.tags)
        young = spec.patient.paediatric and (spec.patient.age_years or 0.0) < TEARDROP_AGE
        if view in AP_LIKE and not young:  # a young child has no teardrop to box
            add_box(marks.teardrop_points[side], "teardrop")
            c, R, ax = marks.tuberosity[side]
            add_box(c + (fibonacci_sphere(400) * ax) @ R.T, "ischial_tuberosity")
    gt = GroundTruth(view, imaged, spec.patient.sex, hips, boxes, landmarks, rows, cols, px, magnification,
                     spec.imaging.photometric, spec.imaging.bits_stored, spec.geometry.projection, marker,
                     None, pelvic_tilt_deg=spec.geometry.pelvic_tilt_deg,
                     pelvic_rotation_deg=spec.geometry.pelvic_rotation_deg, paediatric=spec.patient.paediatric,
                     age_years=spec.patient.age_years, variety=spec.variety)
    return gt


def _ischial_spine_sign(cam: Camera, marks: Landmarks, side: Side) -> bool:
    """Does the spine tip project medial to the pelvic brim (centre line) on this AP projection?"""
    tip = cam.project(marks.spine_tip[side][None, :])[0]
    ring = cam.project(marks.brim)
    mid_x = float(ring[:, 0].mean())
    sx = side_sign(side)  # on AP images patient left is image right
    xs = []
    n = len(ring)
    for k in range(n):
        a, b = ring[k], ring[(k + 1) % n]
        if (a[1] - tip[1]) * (b[1] - tip[1]) <= 0 and a[1] != b[1]:
            t = (tip[1] - a[1]) / (b[1] - a[1])
            x = a[0] + t * (b[0] - a[0])
            if (x - mid_x) * sx > 0:
                xs.append(x)
    if not xs:
        return False
    brim_x = max(xs, key=lambda v: abs(v - mid_x))
    return bool(abs(tip[0] - mid_x) < abs(brim_x - mid_x))
