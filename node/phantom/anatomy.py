"""Parametric 3D pelvis, proximal femora, soft tissue and total hip arthroplasty.

Everything is built from :mod:`geometry` primitives in patient coordinates (LPS, mm) with the
origin midway between the two native hip centres. ``sx`` is -1 for the patient's right side and
+1 for the left (the lateral direction is ``sx`` along x).

Besides primitives, the builder records the 3D geometry the ground truth needs (``Landmarks``):
head centres and radii, cup centre/axis/rim radius, teardrop curves, ischial tuberosities,
sourcil end points, the pelvic brim and the ischial spine tips, and point clouds of every
structure that gets a detector box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from node.domain import Side
from node.phantom import materials as m
from node.phantom.geometry import (
    F64,
    Primitive,
    Rigid,
    cylinder,
    ellipsoid,
    fibonacci_sphere,
    frame_from_z,
    frustum,
    polyhedron,
    rot_axis,
    sphere,
    tube,
    unit,
)


def side_sign(side: Side) -> float:
    return -1.0 if side is Side.RIGHT else 1.0


def cup_axis(side: Side, inclination_deg: float, anteversion_deg: float) -> F64:
    """Unit opening axis of a cup with the given radiographic inclination and anteversion
    (Murray 1993): inclination is the angle between the body's longitudinal axis and the axis
    projected on the coronal plane; anteversion the angle between the axis and the coronal
    plane. The axis points out of the cup: laterally, inferiorly and (anteverted) anteriorly."""
    sx = side_sign(side)
    ri, ra = math.radians(inclination_deg), math.radians(anteversion_deg)
    return np.array([sx * math.sin(ri) * math.cos(ra), -math.sin(ra), -math.cos(ri) * math.cos(ra)])


def radiographic_angles(side: Side, axis: F64) -> tuple[float, float]:
    """Inverse of :func:`cup_axis` (in the frame the axis is given in)."""
    sx = side_sign(side)
    a = unit(axis)
    ra = math.degrees(math.asin(max(-1.0, min(1.0, -a[1]))))
    ri = math.degrees(math.atan2(sx * a[0], -a[2]))
    return ri, ra


# ----------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class CupSpec:
    """A total hip arthroplasty on one side."""

    inclination_deg: float = 42.0  # radiographic (Murray), relative to the pelvis
    anteversion_deg: float = 18.0
    outer_radius_mm: float = 26.0
    shell_mm: float = 3.5
    head_radius_mm: float = 16.0
    head_material: str = "cocr"  # cocr | ceramic
    liner: str = "pe"  # pe | ceramic
    n_screws: int = 1
    stem_length_mm: float = 140.0
    stem_material: str = "titanium"  # titanium | cocr
    cemented: bool = False
    centre_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # cup centre − native hip centre
    wear_mm: float = 0.0  # head displacement into the liner, superolaterally
    cerclage: int = 0
    neck_length_mm: float = 38.0


@dataclass(frozen=True)
class HipParams:
    """Native anatomy of one hip."""

    head_radius_mm: float = 24.0
    joint_space_mm: float = 4.0
    lce_deg: float = 32.0  # lateral edge of the sourcil from vertical (design value)
    sourcil_medial_deg: float = 36.0  # medial end of the sourcil from vertical
    socket_inclination_deg: float = 50.0
    socket_version_deg: float = 17.0
    neck_shaft_deg: float = 130.0
    femoral_anteversion_deg: float = 12.0
    femoral_offset_mm: float = 42.0
    cam_mm: float = 0.0  # size of the anterosuperior head-neck bump (0: none)
    osteophytes: bool = False
    sclerosis: bool = False
    spine_length_mm: float = 10.0  # ischial spine projection medially
    shaft_radius_mm: float = 14.0
    external_rotation_deg: float = 0.0  # rotation of the femur about its shaft (posing)


@dataclass(frozen=True)
class PatientParams:
    sex: str = "M"  # M | F
    hip_half_width_mm: float = 88.0
    inlet_half_width_mm: float = 60.0
    inlet_half_depth_mm: float = 55.0
    inlet_tilt_deg: float = 35.0
    wing_flare_deg: float = 18.0
    wing_height_mm: float = 70.0
    subpubic_half_width_mm: float = 14.0
    body_half_width_mm: float = 175.0
    body_half_depth_mm: float = 120.0
    fat_mm: float = 25.0
    thigh_radius_mm: float = 85.0
    right: HipParams = field(default_factory=HipParams)
    left: HipParams = field(default_factory=HipParams)
    gas: tuple[tuple[float, float, float, float, float, float], ...] = ()  # (x, y, z, a, b, c)
    lumbar_levels: int = 3

    def hip(self, side: Side) -> HipParams:
        return self.right if side is Side.RIGHT else self.left


@dataclass(frozen=True)
class FemurPose:
    """Rotation of a femur about its hip centre: flexion (+: distal femur moves anteriorly),
    abduction (+: distal femur moves laterally), external rotation (about the shaft)."""

    flexion_deg: float = 0.0
    abduction_deg: float = 0.0
    external_rotation_deg: float = 0.0


# ----------------------------------------------------------------------------------------------
# Landmarks


@dataclass
class CupGeometry:
    centre: F64
    axis: F64
    rim_radius: float
    head_centre: F64
    head_radius: float
    shell_points: F64
    stem_points: F64
    screw_points: list[F64]
    cerclage_points: list[F64]


@dataclass
class Landmarks:
    hip_centre: dict[Side, F64] = field(default_factory=dict)  # native (pelvic) hip centre
    head_centre: dict[Side, F64] = field(default_factory=dict)  # femoral head (native or prosthetic)
    head_radius: dict[Side, float] = field(default_factory=dict)
    head_prosthetic: dict[Side, bool] = field(default_factory=dict)
    teardrop_curve: dict[Side, F64] = field(default_factory=dict)  # outer edge of the U, bottom part
    teardrop_points: dict[Side, F64] = field(default_factory=dict)
    tuberosity: dict[Side, tuple[F64, F64, F64]] = field(default_factory=dict)  # centre, R, axes
    sourcil: dict[Side, tuple[F64, F64]] = field(default_factory=dict)  # medial end, lateral end
    spine_tip: dict[Side, F64] = field(default_factory=dict)
    brim: F64 = field(default_factory=lambda: np.zeros((0, 3)))
    joint_points: dict[Side, F64] = field(default_factory=dict)
    cups: dict[Side, CupGeometry] = field(default_factory=dict)
    neck_axis: dict[Side, F64] = field(default_factory=dict)  # from the shaft towards the head
    cam_direction: dict[Side, F64] = field(default_factory=dict)
    femur_pose: dict[Side, Rigid] = field(default_factory=dict)


@dataclass
class Scene:
    prims: list[Primitive] = field(default_factory=list)
    marks: Landmarks = field(default_factory=Landmarks)


# ----------------------------------------------------------------------------------------------
# Helpers


def shell(center: F64, r_out: float, r_in: float, mu: float, tag: str,
          clip: list[tuple[F64, F64]] | None = None) -> list[Primitive]:
    c = clip or []
    return [sphere(center, r_out, mu, tag, c), sphere(center, r_in, -mu, tag, c)]


def bone_ellipsoid(center: F64, axes: tuple[float, float, float], R: F64 | None, tag: str,
                   cortex_mm: float = 2.0, clip: list[tuple[F64, F64]] | None = None,
                   cortical: float = m.CORTICAL, cancellous: float = m.CANCELLOUS) -> list[Primitive]:
    """Cortical shell of thickness ``cortex_mm`` around cancellous bone."""
    c = clip or []
    inner = tuple(max(a - cortex_mm, 0.5) for a in axes)
    return [
        ellipsoid(center, axes, cortical, R, tag, c),
        ellipsoid(center, inner, cancellous - cortical, R, tag, c),
    ]


def soft_ellipsoid(center: F64, axes: tuple[float, float, float], mu: float, R: F64 | None, tag: str,
                   clip: list[tuple[F64, F64]] | None = None, layers: int = 3) -> list[Primitive]:
    """Ellipsoid with a graded edge (nested shells of equal share): no sharp outline."""
    out = []
    for k in range(layers):
        f = 1.0 - 0.22 * k
        out.append(ellipsoid(center, tuple(a * f for a in axes), mu / layers, R, tag, clip or []))
    return out


def bone_tube(p0: F64, p1: F64, radii: tuple[float, float], tag: str, cortex_mm: float = 2.0,
              hint: F64 | tuple[float, float, float] = (1.0, 0.0, 0.0),
              n0: F64 | None = None, n1: F64 | None = None, caps: bool = False) -> list[Primitive]:
    """Cortical tube with cancellous core; ``caps`` rounds the (perpendicular) ends."""
    inner = (max(radii[0] - cortex_mm, 0.5), max(radii[1] - cortex_mm, 0.5))
    out = [
        cylinder(p0, p1, radii, m.CORTICAL, hint, tag, n0, n1),
        cylinder(p0, p1, inner, m.CANCELLOUS_FROM_CORTICAL, hint, tag, n0, n1),
    ]
    if caps:
        out += round_caps(p0, p1, radii, m.CORTICAL, hint, tag)
        out += round_caps(p0, p1, inner, m.CANCELLOUS_FROM_CORTICAL, hint, tag)
    return out


def round_caps(p0: F64, p1: F64, radii: tuple[float, float], mu: float,
               hint: F64 | tuple[float, float, float], tag: str) -> list[Primitive]:
    """Half-ellipsoid caps matching an elliptic cylinder's cross-section at both ends."""
    d = unit(np.asarray(p1, float) - np.asarray(p0, float))
    F = frame_from_z(d, hint)
    rc = min(radii)
    return [
        ellipsoid(p0, (radii[0], radii[1], rc), mu, F, tag, [(p0, d)]),
        ellipsoid(p1, (radii[0], radii[1], rc), mu, F, tag, [(p1, -d)]),
    ]


def arc_points(center: F64, e1: F64, e2: F64, r: float, a0: float, a1: float, n: int) -> F64:
    t = np.radians(np.linspace(a0, a1, n))
    return center + r * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)


def ellipsoid_points(center: F64, axes: tuple[float, float, float], R: F64 | None, n: int = 400) -> F64:
    Rm = np.eye(3) if R is None else R
    out: F64 = center + (fibonacci_sphere(n) * np.asarray(axes)) @ Rm.T
    return out


# ----------------------------------------------------------------------------------------------
# Pelvis


def build_pelvis(p: PatientParams, implants: dict[Side, CupSpec | None], marks: Landmarks) -> list[Primitive]:
    prims: list[Primitive] = []
    female = p.sex == "F"

    # pelvic brim (linea terminalis): a tilted, slightly saddle-shaped ring
    g = math.radians(p.inlet_tilt_deg)
    u = np.array([0.0, math.cos(g), math.sin(g)])
    a_in, b_in = p.inlet_half_width_mm, p.inlet_half_depth_mm
    sym = np.array([0.0, -46.0, -12.0])
    centre = sym + b_in * u
    th = np.radians(np.linspace(0, 360, 49)[:-1])
    ring = centre + (a_in * np.cos(th))[:, None] * np.array([1.0, 0, 0]) + (b_in * np.sin(th))[:, None] * u
    ring[:, 2] += 14.0 * np.clip(np.sin(th), 0, None) ** 2  # posterior half rides higher (sacral ala)
    ring[:, 2] -= 6.0 * np.cos(th) ** 2 * (np.sin(th) < 0)  # pectineal parts dip towards the pubis
    marks.brim = ring
    prims += tube(ring, (2.6, 4.5), m.CORTICAL * 0.9, closed=True, hint=(0.0, 0.0, 1.0), tag="bone:brim")

    # sacrum: inverted triangle, tilted, with foramina
    sac_R = frame_from_z(unit([0.0, 0.35, 1.0]), (1.0, 0.0, 0.0))
    sac_c = np.array([0.0, 62.0, 28.0])
    top_w = 52.0 if female else 48.0
    left_plane_n = unit([1.0, 0.0, -(top_w - 12.0) / 95.0])
    clipv = [
        (np.array([top_w, 0.0, 70.0]), left_plane_n),
        (np.array([-top_w, 0.0, 70.0]), left_plane_n * np.array([-1.0, 1.0, 1.0])),
        (np.array([0.0, 0.0, 74.0]), sac_R[:, 2]),
    ]
    prims += bone_ellipsoid(sac_c, (60.0, 20.0, 62.0), sac_R, "bone:sacrum", 1.5, clipv,
                            cancellous=m.CANCELLOUS * 0.9)
    for k in range(4):
        for s in (-1.0, 1.0):
            z = 58.0 - 17.0 * k
            x = s * (17.0 - 2.2 * k)
            prims.append(sphere(np.array([x, 58.0 + 6.0 * k, z]), 4.2 - 0.5 * k, -m.CANCELLOUS * 1.8, "bone:sacrum"))
    # sacral ala and S1 body top
    for s in (-1.0, 1.0):
        prims += soft_ellipsoid(np.array([s * 33.0, 55.0, 62.0]), (22.0, 18.0, 11.0), m.CANCELLOUS, None, "bone:sacrum")
    # coccyx
    for k, (y, z, r) in enumerate(((86.0, -40.0, 7.0), (84.0, -52.0, 5.5), (80.0, -61.0, 4.5))):
        prims += bone_ellipsoid(np.array([0.0, y, z]), (r + 1.5, r, r + 1.0), None, f"bone:coccyx{k}", 1.2)

    # lumbar vertebrae L5 (and above)
    for lvl in range(p.lumbar_levels):
        zc = 90.0 + 36.0 * lvl
        yc = 40.0 - 2.0 * lvl
        body_r = (25.0 - 1.0 * lvl, 17.0)
        prims += bone_tube(np.array([0.0, yc, zc - 13.0]), np.array([0.0, yc, zc + 13.0]), body_r,
                           "bone:lumbar", 2.0)
        for s in (-1.0, 1.0):
            prims += bone_ellipsoid(np.array([s * 15.0, yc + 20.0, zc + 4.0]), (5.5, 9.0, 8.0), None, "bone:lumbar", 1.8)
            tp = (24.0 if lvl == 0 else 20.0)
            prims += bone_ellipsoid(np.array([s * (24.0 + tp * 0.6), yc + 24.0, zc + 2.0]), (tp, 6.0, 6.0),
                                    frame_from_z([0.0, 0.0, 1.0], [1.0, 0.0, -0.15 * s]), "bone:lumbar", 1.5)
            prims += bone_ellipsoid(np.array([s * 14.0, yc + 36.0, zc + 10.0]), (7.0, 6.0, 12.0), None, "bone:lumbar", 1.5)
        prims += bone_ellipsoid(np.array([0.0, yc + 50.0, zc - 2.0]), (5.0, 16.0, 10.0), None, "bone:lumbar", 1.5)
        prims += bone_ellipsoid(np.array([0.0, yc + 32.0, zc + 2.0]), (16.0, 6.0, 12.0), None, "bone:lumbar", 1.5)

    # pubic symphysis bodies
    sub = p.subpubic_half_width_mm
    for side in (Side.RIGHT, Side.LEFT):
        sx = side_sign(side)
        body_c = np.array([sx * 11.5, -44.0, -30.0 + (3.0 if female else 0.0)])
        body_ax = (9.0, 8.0, 16.0 if female else 20.0)
        prims += bone_ellipsoid(body_c, body_ax, frame_from_z([sx * 0.25, 0.1, 1.0]), f"bone:pubis:{side.value}", 2.0)
        prims += build_hemipelvis(p, side, implants.get(side), marks, body_c, sub)
    return prims


def build_hemipelvis(p: PatientParams, side: Side, cup: CupSpec | None, marks: Landmarks,
                     pubic_body: F64, sub: float) -> list[Primitive]:
    prims: list[Primitive] = []
    sx = side_sign(side)
    s = side.value
    hp = p.hip(side)
    hw = p.hip_half_width_mm
    female = p.sex == "F"
    H = np.array([sx * hw, 0.0, 0.0])
    marks.hip_centre[side] = H
    lat = np.array([sx, 0.0, 0.0])
    up = np.array([0.0, 0.0, 1.0])

    Rh = hp.head_radius_mm
    r_in = Rh + hp.joint_space_mm
    if cup is not None:
        r_in = max(r_in, cup.outer_radius_mm + 0.5)
    # acetabular socket: subchondral shell clipped by the opening plane
    beta = math.radians(hp.socket_inclination_deg)
    ver = math.radians(hp.socket_version_deg)
    n_open = np.array([sx * math.sin(beta) * math.cos(ver), -math.sin(ver), -math.cos(beta) * math.cos(ver)])
    phi = math.radians(hp.lce_deg)
    h_off = -r_in * math.cos(ver) * math.cos(beta + phi)
    clip = [(H + n_open * h_off, n_open)]
    dens = 1.35 if hp.sclerosis else 1.0
    prims += shell(H, r_in + 4.0, r_in, m.CORTICAL * 0.55 * dens, f"bone:acetabulum:{s}", clip)
    prims += soft_ellipsoid(H + np.array([0.0, 0.0, 6.0]), (r_in + 12.0, r_in + 10.0, r_in + 10.0),
                            m.CANCELLOUS * 0.6, None, f"bone:acetabulum:{s}", [(H + n_open * h_off, n_open)])
    prims.append(sphere(H, r_in + 3.0, -m.CANCELLOUS * 0.6, f"bone:acetabulum:{s}",
                        [(H + n_open * h_off, n_open)]))
    # sourcil: dense sheet along the roof in the coronal plane, from medial end to lateral edge
    th_m = hp.sourcil_medial_deg
    arc = arc_points(H, up, lat, r_in + 1.2, -th_m, hp.lce_deg, 14)
    prims += tube(arc, (9.0, 1.4 * dens), m.CORTICAL * 1.1 * dens, hint=(0.0, 1.0, 0.0), tag=f"bone:sourcil:{s}")
    marks.sourcil[side] = (arc[0], arc[-1])

    # teardrop: U-shaped sheet medial to the socket
    xt = sx * (hw - r_in - 6.5)
    zb = -0.72 * 0.5 * (p.right.head_radius_mm + p.left.head_radius_mm)  # level teardrops
    w_td = 3.6
    bottom = arc_points(np.array([xt, 0.0, zb + w_td]), np.array([0.0, 0.0, -1.0]), lat, w_td, -90.0, 90.0, 9)
    med_limb = np.array([[xt - sx * w_td, 0.0, zb + w_td + 20.0]])
    lat_top = np.array([[xt + sx * (w_td + 5.0), 0.0, zb + w_td + 22.0]])
    u_curve = np.concatenate([med_limb, bottom, lat_top])
    prims += tube(u_curve, (8.0, 0.9), m.CORTICAL * 1.2, hint=(0.0, 1.0, 0.0), tag=f"bone:teardrop:{s}")
    outer = arc_points(np.array([xt, 0.0, zb + w_td]), np.array([0.0, 0.0, -1.0]), lat, w_td + 0.9, -60.0, 60.0, 41)
    marks.teardrop_curve[side] = outer
    td_pts = np.concatenate([u_curve + np.array([0.0, dy, 0.0]) for dy in (-8.0, 8.0)])
    marks.teardrop_points[side] = td_pts

    # quadrilateral plate / ilioischial line (Köhler): a sagittal sheet seen edge-on
    xq = sx * (hw - r_in - 11.0)
    prims.append(cylinder(np.array([xq, 12.0, 18.0]), np.array([xq + sx * 4.0, 22.0, -38.0]), (1.3, 11.0),
                          m.CORTICAL * 0.3, hint=lat, tag=f"bone:quadrilateral:{s}"))

    # ilium body above the socket and the iliac wing
    prims += soft_ellipsoid(H + np.array([sx * 2.0, 10.0, 36.0]), (26.0, 22.0, 38.0), m.CANCELLOUS * 1.0,
                            frame_from_z([sx * -0.3, 0.2, 1.0]), f"bone:ilium:{s}")
    psi = math.radians(38.0)
    w_dir = np.array([sx * math.cos(psi), -math.sin(psi), 0.0])
    flare = p.wing_flare_deg
    v_dir = rot_axis(w_dir, -sx * flare) @ up
    if float(v_dir @ lat) < 0:
        v_dir = rot_axis(w_dir, sx * flare) @ up
    n_dir = unit(np.cross(w_dir, v_dir))
    wing_c = np.array([sx * (hw - 12.0), 28.0, 58.0])
    wa, wb, wt = 78.0 if not female else 84.0, p.wing_height_mm - 8.0, 7.0
    R_w = np.stack([w_dir, v_dir, n_dir], axis=1)
    wing_clip: list[tuple[F64, F64]] = []
    prims.append(ellipsoid(wing_c, (wa, wb, wt), m.CORTICAL * 0.42, R_w, f"bone:ilium:{s}", wing_clip))
    prims.append(ellipsoid(wing_c, (wa - 16.0, wb - 16.0, wt * 0.7), -m.CORTICAL * 0.22, R_w, f"bone:ilium:{s}",
                           wing_clip))
    crest = arc_points(wing_c, w_dir, v_dir, 1.0, 8.0, 172.0, 17)
    crest = wing_c + (crest - wing_c) * np.array([1.0, 1.0, 1.0])
    crest = np.array([wing_c + (wa - 3.0) * math.cos(t) * w_dir + (wb - 3.0) * math.sin(t) * v_dir
                      for t in np.radians(np.linspace(8.0, 170.0, 17))])
    crest = crest[crest[:, 0] * sx > 38.0]
    if len(crest) >= 2:
        prims += tube(crest, (5.5, 4.0), m.CORTICAL * 0.75, hint=n_dir, tag=f"bone:crest:{s}")
    # anterior border: ASIS → AIIS → acetabular rim
    asis = wing_c + (wa - 4.0) * math.cos(math.radians(10.0)) * w_dir + (wb - 4.0) * math.sin(math.radians(10.0)) * v_dir
    aiis = H + np.array([sx * (r_in + 4.0), -22.0, 30.0])
    prims += tube(np.stack([asis, aiis, H + np.array([sx * (r_in + 2.0), -18.0, 12.0])]), (4.0, 3.5),
                  m.CORTICAL * 0.7, tag=f"bone:ilium:{s}")
    # posterior ilium / sacroiliac part and posterior column to the ischial spine
    si_c = np.array([sx * 50.0, 64.0, 44.0])
    prims += soft_ellipsoid(si_c, (13.0, 20.0, 36.0), m.CANCELLOUS * 1.2, frame_from_z([sx * -0.35, 0.0, 1.0]),
                            f"bone:ilium:{s}")
    # sacroiliac joint line: thin cortical sheet seen obliquely
    prims.append(cylinder(si_c + np.array([-sx * 9.0, -6.0, 30.0]), si_c + np.array([-sx * 2.0, 6.0, -34.0]), (1.0, 12.0),
                          m.CORTICAL * 0.25, hint=(1.0, 0.0, 0.0), tag=f"bone:si:{s}"))
    # ischial spine: its base sits just lateral to the pelvic brim (as seen on an AP) at its level,
    # so a long spine projects medial to the brim (ischial spine sign) and a short one does not
    z_sp = 2.0
    ring = marks.brim
    lat_pts = ring[ring[:, 0] * sx > 0]
    lat_pts = lat_pts[np.argsort(lat_pts[:, 2])]
    brim_x = float(np.interp(z_sp, lat_pts[:, 2], np.abs(lat_pts[:, 0]))) if len(lat_pts) > 1 else hw - 30.0
    spine_base = np.array([sx * (brim_x + 16.0), 46.0, z_sp])
    prims += bone_tube(np.array([sx * 56.0, 58.0, 30.0]), spine_base + np.array([0.0, 0.0, -4.0]), (8.0, 6.0),
                       f"bone:column:{s}", 2.0, caps=True)
    # ischial spine: cone-like ellipsoid pointing medially
    sd = unit(np.array([-sx, 0.15, -0.05]))
    L = max(hp.spine_length_mm, 2.0)
    tip = spine_base + sd * L
    marks.spine_tip[side] = tip
    prims += bone_ellipsoid(spine_base + sd * (L / 2.0), (L / 2.0 + 1.0, 4.0, 5.0), frame_from_z(sd, up)[:, [2, 0, 1]],
                            f"bone:spine:{s}", 1.5)

    # ischium and tuberosity
    tub_c = np.array([sx * (hw - 20.0), 30.0, -47.0 - (0.0 if female else 3.0)])
    tub_ax = (12.0, 15.0, 13.0)
    tub_R = frame_from_z([sx * 0.15, 0.1, 1.0])
    marks.tuberosity[side] = (tub_c, tub_R, np.asarray(tub_ax))
    prims += bone_tube(H + np.array([sx * 4.0, 16.0, -18.0]), tub_c + np.array([0.0, 0.0, 4.0]), (10.0, 12.0),
                       f"bone:ischium:{s}", 1.8, hint=lat, caps=True)
    prims += bone_ellipsoid(tub_c, tub_ax, tub_R, f"bone:tuberosity:{s}", 1.6, cortical=m.CORTICAL * 0.8)
    # superior pubic ramus, inferior (ischiopubic) ramus
    sup0 = H + np.array([-sx * 14.0, -16.0, -10.0])
    sup1 = pubic_body + np.array([sx * 4.0, 0.0, 8.0])
    prims += bone_tube(sup0, sup1, (7.5, 9.0), f"bone:ramus:{s}", 1.6, hint=(0.0, 0.0, 1.0), caps=True)
    inf0 = pubic_body + np.array([sx * 1.0, 2.0, -12.0])
    inf1 = tub_c + np.array([-sx * 8.0, -6.0, -2.0])
    mid = 0.5 * (inf0 + inf1) + np.array([sx * sub * 0.3, 0.0, -6.0])
    prims += tube(np.stack([inf0, mid, inf1]), (5.0, 6.5), m.CORTICAL * 0.6, hint=(0.0, 0.0, 1.0),
                  tag=f"bone:ramus:{s}")
    prims += round_caps(inf0, mid, (5.0, 6.5), m.CORTICAL * 0.6, (0.0, 0.0, 1.0), f"bone:ramus:{s}")[:1]
    prims += round_caps(mid, inf1, (5.0, 6.5), m.CORTICAL * 0.6, (0.0, 0.0, 1.0), f"bone:ramus:{s}")[1:]
    # joint region points (for the hip_joint box)
    marks.joint_points[side] = np.concatenate([
        ellipsoid_points(H, (r_in + 6.0, r_in + 6.0, r_in + 6.0), None, 200),
        ellipsoid_points(H + np.array([0.0, 0.0, -Rh - 10.0]), (Rh * 0.8, Rh * 0.8, Rh * 0.6), None, 100),
    ])
    if hp.osteophytes and cup is None:
        rim_lat = arc[-1] + lat * 4.0 + up * 1.0
        prims += bone_ellipsoid(rim_lat, (6.0, 8.0, 3.5), frame_from_z(unit(lat + up * 0.6)), f"bone:osteophyte:{s}", 1.2)
    return prims


# ----------------------------------------------------------------------------------------------
# Femur


def femur_axes(p: PatientParams, side: Side) -> tuple[F64, F64, F64, F64]:
    """(hip centre, shaft axis pointing distally, neck axis pointing to the head, neck/shaft point)."""
    sx = side_sign(side)
    hp = p.hip(side)
    H = np.array([sx * p.hip_half_width_mm, 0.0, 0.0])
    s_dir = unit([-sx * math.sin(math.radians(7.0)), 0.0, -math.cos(math.radians(7.0))])
    ang = 180.0 - hp.neck_shaft_deg  # angle between the neck axis and the proximal shaft
    # rotate -s towards medial by ``ang`` in the coronal plane
    axis_c = np.array([0.0, 1.0, 0.0]) * (-sx)
    h_dir = rot_axis(axis_c, ang) @ (-s_dir)
    if float(h_dir[0]) * sx > 0:
        h_dir = rot_axis(axis_c, -ang) @ (-s_dir)
    # femoral anteversion: rotate about the shaft so the head comes forward
    h1 = rot_axis(s_dir, hp.femoral_anteversion_deg) @ h_dir
    h2 = rot_axis(s_dir, -hp.femoral_anteversion_deg) @ h_dir
    h_dir = h1 if h1[1] < h2[1] else h2
    L_nt = hp.femoral_offset_mm / math.sin(math.radians(ang))
    T = H - L_nt * h_dir
    return H, s_dir, unit(h_dir), T


def build_femur(p: PatientParams, side: Side, cup: CupSpec | None, pose: FemurPose,
                marks: Landmarks) -> list[Primitive]:
    prims: list[Primitive] = []
    sx = side_sign(side)
    s = side.value
    hp = p.hip(side)
    H, sd, hd, T = femur_axes(p, side)
    lat = np.array([sx, 0.0, 0.0])
    post = np.array([0.0, 1.0, 0.0])
    Rh = hp.head_radius_mm
    ro = hp.shaft_radius_mm
    ri = ro * 0.55
    tag = f"bone:femur:{s}"

    # shaft (diaphysis)
    top = T + sd * 55.0
    prims.append(cylinder(top, top + sd * 520.0, (ro, ro * 0.95), m.CORTICAL, lat, tag))
    prims.append(cylinder(top, top + sd * 520.0, (ri, ri * 0.95), -m.CORTICAL + m.CANCELLOUS * 0.4, lat, tag))
    # metaphysis: a funnel (truncated elliptic cone) from the trochanteric region to the shaft
    ml = unit(lat - sd * float(lat @ sd))
    f_top = T - sd * 8.0 + ml * 3.0
    wide = (ro * 1.85, ro * 1.45)
    narrow = ro / wide[0]
    prims.append(frustum(f_top, top, wide, narrow, m.CORTICAL * 0.75, ml, tag))
    prims.append(frustum(f_top, top, (wide[0] - 2.0, wide[1] - 2.0), (ri + 1.0) / (wide[0] - 2.0),
                         -m.CORTICAL * 0.75 + m.CANCELLOUS, ml, tag))
    # rounded top of the funnel (same cross-section at the joint: no seam)
    cap_R = np.stack([ml, unit(np.cross(-sd, ml)), -sd], axis=1)
    above = [(f_top, sd)]
    prims.append(ellipsoid(f_top, (wide[0], wide[1], 22.0), m.CORTICAL * 0.75, cap_R, tag, above))
    prims.append(ellipsoid(f_top, (wide[0] - 2.0, wide[1] - 2.0, 20.0), -m.CORTICAL * 0.75 + m.CANCELLOUS, cap_R, tag,
                           above))
    # greater trochanter: cancellous with a thin cortex, soft outline
    gt_c = T - sd * 14.0 + lat * (ro * 0.95) + post * 4.0
    gt_R = frame_from_z(-sd, lat)
    prims += soft_ellipsoid(gt_c, (12.0, 16.0, 21.0), m.CANCELLOUS * 1.3, gt_R, f"bone:trochanter:{s}")
    prims.append(ellipsoid(gt_c, (12.0, 16.0, 21.0), m.CORTICAL * 0.35, gt_R, f"bone:trochanter:{s}",
                           [(gt_c - sd * 2.0, sd)]))
    prims.append(ellipsoid(gt_c, (10.8, 14.8, 19.8), -m.CORTICAL * 0.35, gt_R, f"bone:trochanter:{s}",
                           [(gt_c - sd * 2.0, sd)]))
    # lesser trochanter (posteromedial)
    lt_dir = unit(-lat * 0.8 + post * 0.6)
    lt_c = T + sd * 40.0 + lt_dir * (ro * 1.0)
    prims += bone_ellipsoid(lt_c, (8.0, 6.5, 12.0), frame_from_z(-sd, lt_dir), f"bone:trochanter:{s}", 1.2,
                            cortical=m.CORTICAL * 0.7)
    # neck: elliptic frustum widening towards the trochanters, taller than deep
    r_si = Rh * 0.72
    r_ap = Rh * 0.62
    neck_hint = unit(np.cross(hd, post))  # in the coronal plane, perpendicular to the neck
    neck_start = H - hd * math.sqrt(max(Rh**2 - r_si**2, 1.0))
    neck_end = T - hd * 4.0
    cut = None
    if cup is not None:
        L_nt = float(np.linalg.norm(H - T))
        cut = T + hd * (L_nt * 0.38)
        neck_start = cut
    flare = 1.3
    prims.append(frustum(neck_start, neck_end, (r_si, r_ap), flare, m.CORTICAL, neck_hint, f"bone:neck:{s}"))
    prims.append(frustum(neck_start, neck_end, (r_si - 2.2, r_ap - 2.2), flare * (r_si + 1.0) / r_si,
                         -m.CORTICAL + m.CANCELLOUS, neck_hint, f"bone:neck:{s}"))
    if cup is None:
        # native head with a cortical shell
        prims += shell(H, Rh, Rh - 1.4, m.CORTICAL * 0.8, f"bone:head:{s}")
        prims.append(sphere(H, Rh - 1.4, m.CANCELLOUS * 1.3, f"bone:head:{s}"))
        # cam bump at the anterosuperior head-neck junction
        cam_dir = unit(rot_axis(hd, -sx * 45.0 if True else 0.0) @ unit(np.cross(hd, np.cross(np.array([0.0, 0, 1]), hd))))
        # choose the rotation sense that points anteriorly
        alt = unit(rot_axis(hd, sx * 45.0) @ unit(np.cross(hd, np.cross(np.array([0.0, 0, 1]), hd))))
        if alt[1] < cam_dir[1]:
            cam_dir = alt
        marks.cam_direction[side] = cam_dir
        if hp.cam_mm > 0:
            cc = H - hd * (Rh * 0.78) + cam_dir * (r_si * 0.72)
            prims += bone_ellipsoid(cc, (hp.cam_mm + 4.0, hp.cam_mm + 6.0, hp.cam_mm + 2.0),
                                    frame_from_z(cam_dir, hd), f"bone:cam:{s}", 1.5)
        if hp.osteophytes:
            inf = unit(np.cross(hd, np.cross(hd, np.array([0.0, 0.0, 1.0]))))
            if inf[2] > 0:
                inf = -inf
            oc = H - hd * (Rh * 0.55) + inf * (Rh * 0.85)
            prims += bone_ellipsoid(oc, (7.0, 5.0, 4.0), frame_from_z(inf, hd), f"bone:osteophyte:{s}", 1.2)
        marks.head_centre[side] = H
        marks.head_radius[side] = Rh
        marks.head_prosthetic[side] = False
    marks.neck_axis[side] = hd

    if cup is not None:
        pelvic_parts, femoral_parts = build_tha(p, side, cup, H, sd, hd, T, cut if cut is not None else T, marks)
        prims += femoral_parts

    # pose: rotate about the (possibly prosthetic) head centre
    centre = marks.head_centre[side]
    R = np.eye(3)
    if pose.external_rotation_deg:
        R = rot_axis(sd, -sx * pose.external_rotation_deg) @ R
    if pose.abduction_deg:
        R = rot_axis(np.array([0.0, 1.0, 0.0]), -sx * pose.abduction_deg) @ R
    if pose.flexion_deg:
        R = rot_axis(np.array([1.0, 0.0, 0.0]), pose.flexion_deg) @ R
    # make the sign conventions explicit: flexion moves the knee anteriorly (−y), abduction laterally
    knee = centre + sd * 400.0
    kk = R @ (knee - centre)
    if pose.flexion_deg and kk[1] > 0:
        R = rot_axis(np.array([1.0, 0.0, 0.0]), -2 * pose.flexion_deg) @ R
    T_pose = Rigid.about(centre, R)
    marks.femur_pose[side] = T_pose
    if not np.allclose(R, np.eye(3)):
        prims = [q.transformed(T_pose) for q in prims]
    if cup is not None:
        prims += pelvic_parts  # the shell (and its screws) stays with the pelvis
    return prims


def build_tha(p: PatientParams, side: Side, cup: CupSpec, H: F64, sd: F64, hd: F64, T: F64,
              cut: F64, marks: Landmarks) -> tuple[list[Primitive], list[Primitive]]:
    """Acetabular shell (+ screws) and liner (pelvic parts); head ball, stem (+ cement, cerclage)
    (femoral parts, posed with the femur)."""
    prims: list[Primitive] = []
    s = side.value
    sx = side_sign(side)
    C = H + np.asarray(cup.centre_offset_mm)
    a = cup_axis(side, cup.inclination_deg, cup.anteversion_deg)
    Rc = cup.outer_radius_mm
    face = [(C, a)]  # keep the dome side: a·(x − C) <= 0
    prims.append(sphere(C, Rc, m.TITANIUM, f"metal:cup:{s}", face))
    prims.append(sphere(C, Rc - cup.shell_mm, -m.TITANIUM, f"metal:cup:{s}", face))
    # rim disc (zero attenuation): used for ground-truth masks of the cup opening
    prims.append(cylinder(C - a * 0.01, C + a * 0.01, Rc, 0.0, tag=f"mask:cup_rim:{s}"))
    if cup.liner == "ceramic":
        prims += shell(C, Rc - cup.shell_mm, cup.head_radius_mm + 0.3, m.CERAMIC, f"metal:liner:{s}", face)
    else:
        prims += shell(C, Rc - cup.shell_mm, cup.head_radius_mm + 0.3, m.POLYETHYLENE, f"soft:liner:{s}", face)
    # head ball displaced by wear towards the dome
    up = np.array([0.0, 0.0, 1.0])
    wear_dir = unit(-a * 0.3 + up)
    B = C + wear_dir * cup.wear_mm
    head_mu = m.COCR if cup.head_material == "cocr" else m.CERAMIC * 1.3
    marks.head_centre[side] = B
    marks.head_radius[side] = cup.head_radius_mm
    marks.head_prosthetic[side] = True
    shell_pts = C + fibonacci_sphere(300) * Rc
    shell_pts = shell_pts[(shell_pts - C) @ a <= 0.0]

    # screws through the dome into the ilium (superoposterior quadrant)
    screws: list[F64] = []
    dome = -a
    rng_dirs = [(-25.0, 20.0), (10.0, 30.0), (-5.0, -10.0)]
    for k in range(cup.n_screws):
        tilt_sup, tilt_post = rng_dirs[k % 3]
        d = unit(dome + np.array([0.0, 0.0, 1.0]) * math.tan(math.radians(20.0 + tilt_sup * 0.3))
                 + np.array([0.0, 1.0, 0.0]) * math.tan(math.radians(tilt_post)) + np.array([-sx, 0, 0]) * 0.25)
        p0 = C + d * (Rc - cup.shell_mm - 1.5)
        p1 = C + d * (Rc + 18.0 + 6.0 * k)
        prims.append(cylinder(p0, p0 + d * 3.0, 3.8, m.TITANIUM, tag=f"metal:screw{k}:{s}"))
        prims.append(cylinder(p0 + d * 3.0, p1, 2.4, m.TITANIUM, tag=f"metal:screw{k}:{s}"))
        prims.append(ellipsoid(p1, (2.4, 2.4, 3.0), m.TITANIUM, frame_from_z(d), f"metal:screw{k}:{s}",
                               [(p1, -d)]))
        L = float(np.linalg.norm(p1 - p0)) + 3
        pts = np.concatenate([p0 + np.outer(np.linspace(0, 1, 12), p1 + d * 3.0 - p0) + off
                              for off in (np.zeros(3), *(3.8 * frame_from_z(d)[:, i] for i in (0, 1)),
                                          *(-3.8 * frame_from_z(d)[:, i] for i in (0, 1)))])
        _ = L
        screws.append(pts)

    # stem: prosthetic neck (trunnion), proximal body with medial flare, tapered distal body
    pelvic = prims
    prims = []
    prims.append(sphere(B, cup.head_radius_mm, head_mu, f"metal:head:{s}"))
    stem_mu = m.TITANIUM if cup.stem_material == "titanium" else m.COCR
    neck_dir = -hd
    shoulder = B + neck_dir * cup.neck_length_mm
    prims.append(cylinder(B, shoulder, (7.0, 6.0), stem_mu, tag=f"metal:stem:{s}"))
    lat = np.array([sx, 0.0, 0.0])
    ml = unit(lat - sd * float(lat @ sd))  # medial-lateral direction perpendicular to the shaft
    ap = unit(np.cross(sd, ml))
    # axis of the stem follows the canal, starting at the shaft axis level of the shoulder
    t_sh = float((shoulder - T) @ sd)
    axis_top = T + sd * (t_sh - 6.0)
    L = cup.stem_length_mm
    tip = axis_top + sd * L
    w_top, w_mid, w_tip = 17.0, 8.5, 4.5  # half widths (medial-lateral)
    t_top, t_tip = 7.5, 4.0  # half thickness (anterior-posterior)
    z_mid = 45.0
    stem_pts = []

    def slab(z0: float, z1: float, wm0: float, wm1: float, wl0: float, wl1: float,
             t0: float, t1: float, grow: float = 0.0) -> Primitive:
        p0 = axis_top + sd * z0
        p1 = axis_top + sd * z1
        wm0, wm1, wl0, wl1, t0, t1 = (v + grow for v in (wm0, wm1, wl0, wl1, t0, t1))
        corners = [p + sg_m * ml * w + sg_a * ap * t for p, wm, wl, t in ((p0, wm0, wl0, t0), (p1, wm1, wl1, t1))
                   for sg_m, w in ((-1.0, wm), (1.0, wl)) for sg_a in (-1.0, 1.0)]
        stem_pts.extend(corners)

        def side_plane(off0: float, off1: float, dirv: F64) -> tuple[F64, F64]:
            q0 = p0 + dirv * off0
            q1 = p1 + dirv * off1
            along = unit(q1 - q0)
            other = unit(np.cross(along, dirv))
            nrm = unit(np.cross(other, along))
            if float(nrm @ dirv) < 0:
                nrm = -nrm
            return q0, nrm

        planes = [
            (p0, -sd),
            (p1, sd),
            side_plane(wm0, wm1, -ml),
            side_plane(wl0, wl1, ml),
            side_plane(t0, t1, ap),
            side_plane(t0, t1, -ap),
        ]
        return polyhedron(planes, np.array(corners), stem_mu, f"metal:stem:{s}")

    # proximal part: wide medial flare under the shoulder (calcar)
    parts = [
        (0.0, z_mid, w_top + 4.0, w_mid, w_top - 6.0, w_mid, t_top, t_top * 0.85),
        (z_mid, L - 6.0, w_mid, w_tip, w_mid, w_tip, t_top * 0.85, t_tip),
    ]
    for prt in parts:
        poly = slab(*prt)
        if cup.cemented:
            mantle = slab(*prt, grow=2.5)
            prims.append(mantle.with_mu(m.CEMENT, f"cement:mantle:{s}"))
            prims.append(poly.with_mu(stem_mu - m.CEMENT))
        else:
            prims.append(poly)
    prims.append(ellipsoid(axis_top + sd * (L - 6.0), (w_tip, t_tip, 6.0), stem_mu, frame_from_z(sd, ml),
                           f"metal:stem:{s}", [(axis_top + sd * (L - 6.0), -sd)]))
    # shoulder block joining the neck to the body (lateral shoulder)
    prims.append(cylinder(shoulder, axis_top + sd * 12.0 + ml * 3.0, (7.5, 6.5), stem_mu, ap, f"metal:stem:{s}"))
    stem_pts_arr = np.concatenate([np.array(stem_pts), B + np.outer(np.linspace(0, 1, 8), shoulder - B),
                                   (tip + sd * 0.0)[None, :]])
    cerclage: list[F64] = []
    for k in range(cup.cerclage):
        zc = 55.0 + 18.0 * k
        cc = axis_top + sd * zc
        ro = p.hip(side).shaft_radius_mm * 1.45 + 1.0
        ring = cc + np.array([ro * math.cos(t) * ml + ro * 0.9 * math.sin(t) * ap
                              for t in np.radians(np.linspace(0, 360, 25)[:-1])])
        prims += tube(ring, 0.9, m.COCR, closed=True, tag=f"metal:cerclage{k}:{s}")
        cerclage.append(ring)
    marks.cups[side] = CupGeometry(C, a, Rc, B, cup.head_radius_mm, shell_pts, stem_pts_arr, screws, cerclage)
    return pelvic, prims


# ----------------------------------------------------------------------------------------------
# Soft tissue


def build_soft_tissue(p: PatientParams, poses: dict[Side, FemurPose], marks: Landmarks,
                      trunk_only: bool = False, lifted: Side | None = None) -> list[Primitive]:
    """Trunk (two halves) and thighs, each a fat envelope around a muscle compartment.

    The trunk ends at an oblique plane per side (lower laterally: the gluteal fold) and each
    thigh starts at the same plane, so soft tissue is partitioned without overlap."""
    prims: list[Primitive] = []
    W, D = p.body_half_width_mm, p.body_half_depth_mm
    f = p.fat_mm
    yc = 22.0
    slope = math.tan(math.radians(22.0))
    z_fold = -68.0
    for side in (Side.RIGHT, Side.LEFT):
        sx = side_sign(side)
        own = (np.zeros(3), np.array([-sx, 0.0, 0.0]))  # keep sx * x >= 0
        fold_n = unit(np.array([-slope * sx, 0.0, -1.0]))
        fold = (np.array([0.0, 0.0, z_fold]), fold_n)  # keep z >= z_fold - slope * |x|
        t0, t1 = np.array([0.0, yc, -400.0]), np.array([0.0, yc, 450.0])
        clip = [own] if trunk_only else [own, fold]
        prims.append(cylinder(t0, t1, (W, D), m.SOFT + m.FAT, tag="soft:trunk", clip=clip, smooth=True))
        prims.append(cylinder(t0, t1, (W - f, D - 0.8 * f), m.MUSCLE - m.FAT, tag="soft:muscle", clip=clip,
                              smooth=True))
        if trunk_only or side is lifted:
            continue
        r = p.thigh_radius_mm
        top = np.array([sx * (p.hip_half_width_mm + 8.0), yc - 5.0, 40.0])
        bot = top + np.array([-sx * 30.0, 0.0, -600.0])
        below = [(np.array([0.0, 0.0, z_fold]), -fold_n), own]
        # thighs taper distally (wide at the buttock crease: a soft fold, not a step)
        parts = [
            frustum(top, bot, (r * 1.25, r * 1.15), 0.7, m.SOFT + m.FAT, tag=f"soft:thigh:{side.value}", clip=below),
            frustum(top, bot, ((r - 0.6 * f) * 1.25, (r - 0.6 * f) * 1.15), 0.7, m.MUSCLE - m.FAT,
                    tag=f"soft:thigh:{side.value}", clip=below),
        ]
        parts = [replace(q, smooth=True) for q in parts]
        T_pose = marks.femur_pose.get(side)
        if T_pose is not None:
            parts = [q.transformed(T_pose) for q in parts]
        prims += parts
    for k, (x, y, z, a, b, cz) in enumerate(p.gas):
        prims.append(ellipsoid(np.array([x, y, z]), (a, b, cz), m.AIR, None, f"gas:{k}"))
    return prims
