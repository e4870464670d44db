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


# Arthroplasty designs (``CupSpec.design``). "hemispherical" is the only one the classic sampler
# draws; the rest widen what a detector trained on phantoms has seen (``sample_spec(variety="broad")``).
ARTHROPLASTY_DESIGNS: tuple[str, ...] = (
    "hemispherical",  # modular metal shell, liner, head (the classic phantom THA)
    "flanged",  # the same with a metal rim flange (full ring or a superior hood)
    "dual_mobility",  # thin CoCr shell, radiolucent mobile PE bearing, small inner head
    "large_head",  # metal-on-metal style: head almost filling the shell, thin or no liner
    "cemented_pe",  # all-polyethylene cup (radiolucent) in a cement mantle, metal marker wire
    "hemiarthroplasty",  # no cup: a large (unipolar or bipolar) head in the native acetabulum
    "resurfacing",  # thin CoCr cup and a CoCr cap on the retained femoral head with a short peg
)
STEM_SHAPES: tuple[str, ...] = ("tapered", "wedge", "anatomic", "cylindrical", "collared")
# Non-arthroplasty hardware (``HardwareSpec.kind``): its hip is *not* an implanted hip.
HARDWARE_KINDS: tuple[str, ...] = ("dhs", "cannulated_screws", "nail", "pelvic_plate", "cerclage")
FEMORAL_NECK_HARDWARE: frozenset[str] = frozenset({"dhs", "cannulated_screws", "nail"})


@dataclass(frozen=True)
class CupSpec:
    """An arthroplasty on one side (despite the name, also a hemiarthroplasty or a resurfacing:
    see ``design``). The defaults of the fields after ``neck_length_mm`` reproduce the classic
    phantom THA exactly, so specs written before they existed render the same pixels.

    Radii mean, per design: ``outer_radius_mm`` the outer radius of the metal shell (the PE cup
    for ``cemented_pe``, the large bearing head for ``hemiarthroplasty``); ``head_radius_mm`` the
    femoral head (the inner head of a dual-mobility or bipolar bearing, the cap of a
    resurfacing)."""

    inclination_deg: float = 42.0  # radiographic (Murray), relative to the pelvis
    anteversion_deg: float = 18.0
    outer_radius_mm: float = 26.0
    shell_mm: float = 3.5
    head_radius_mm: float = 16.0
    head_material: str = "cocr"  # cocr | ceramic
    liner: str = "pe"  # pe | ceramic | metal | none
    n_screws: int = 1
    stem_length_mm: float = 140.0
    stem_material: str = "titanium"  # titanium | cocr | steel
    cemented: bool = False  # the stem (a ``cemented_pe`` cup always has its own mantle)
    centre_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # cup centre − native hip centre
    wear_mm: float = 0.0  # head displacement into the liner, superolaterally
    cerclage: int = 0
    neck_length_mm: float = 38.0
    design: str = "hemispherical"  # one of ARTHROPLASTY_DESIGNS
    shell_material: str = "titanium"  # titanium | cocr
    flange_mm: float = 0.0  # flanged: radial width of the rim flange
    flange_arc_deg: float = 360.0  # flanged: 360 a full ring, 180 a superior hood
    screw_holes: int = 0  # empty screw holes in the shell (lucent spots in the dome)
    mantle_mm: float = 2.5  # cemented_pe: cement mantle around the PE cup
    marker_wire: str = "ring"  # cemented_pe: "ring" (equatorial) | "arc" (over the dome)
    stem_shape: str = "tapered"  # one of STEM_SHAPES
    bipolar: bool = False  # hemiarthroplasty: outer shell + inner head instead of a solid head
    peg_mm: float = 38.0  # resurfacing: length of the central peg down the neck

    @property
    def has_cup(self) -> bool:
        """False for a hemiarthroplasty: no acetabular component, so no cup angles or box."""
        return self.design != "hemiarthroplasty"

    @property
    def socket_radius_mm(self) -> float:
        """Radius the reamed (or native) socket must clear."""
        if self.design == "cemented_pe":
            return self.outer_radius_mm + self.mantle_mm
        return self.outer_radius_mm


@dataclass(frozen=True)
class HardwareSpec:
    """Non-arthroplasty hardware on one side (fracture fixation, pelvic plates, cerclage).

    A hip with only such hardware is *not* an implanted hip (``HipTruth.implant`` False); each
    device gets an ``other_hardware`` box. ``count``: cannulated screws (2–3), side-plate screws
    (dhs), plate screws (pelvic_plate), distal locking screws (nail), wires (cerclage).
    ``length_mm``: side plate (dhs), nail, or plate (pelvic_plate). ``variant``: pelvic_plate
    "brim" (anterior column, along the pelvic brim) or "posterior" (posterior wall / column)."""

    kind: str  # one of HARDWARE_KINDS
    count: int = 3
    length_mm: float = 100.0
    material: str = "steel"  # steel | titanium
    variant: str = ""


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
    # children only (defaults: adult): the infant's ossified acetabular roof is a straight oblique
    # line at this angle to Hilgenreiner's line (None: the adult-style curved sourcil), and the
    # femoral head's ossific nucleus appears at this age (years; later in a dysplastic hip)
    acetabular_index_deg: float | None = None
    nucleus_onset_years: float = 0.0


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
    paediatric: bool = False  # open triradiate cartilage, femoral head epiphysis, no implants
    age_years: float | None = None  # children only
    scale: float = 1.0  # skeletal scale (children 0.45–0.8); the lengths above are already scaled
    bone_density: float = 1.0  # multiplier on every bone attenuation (osteopenia < 1)

    def hip(self, side: Side) -> HipParams:
        return self.right if side is Side.RIGHT else self.left

    def scaled(self, s: float) -> PatientParams:
        """Every length times ``s`` (angles kept), ``scale`` multiplied by ``s``: a child drawn
        as an adult-proportioned model and shrunk. The anatomy builders work on
        :meth:`unscaled` (their many fixed millimetre figures are adult) and the scene is then
        scaled as a whole, so a child is exactly a smaller pelvis, not a distorted one."""
        def hip(h: HipParams) -> HipParams:
            return replace(h, head_radius_mm=h.head_radius_mm * s, joint_space_mm=h.joint_space_mm * s,
                           femoral_offset_mm=h.femoral_offset_mm * s, cam_mm=h.cam_mm * s,
                           spine_length_mm=h.spine_length_mm * s, shaft_radius_mm=h.shaft_radius_mm * s)

        return replace(
            self,
            hip_half_width_mm=self.hip_half_width_mm * s, inlet_half_width_mm=self.inlet_half_width_mm * s,
            inlet_half_depth_mm=self.inlet_half_depth_mm * s, wing_height_mm=self.wing_height_mm * s,
            subpubic_half_width_mm=self.subpubic_half_width_mm * s, body_half_width_mm=self.body_half_width_mm * s,
            body_half_depth_mm=self.body_half_depth_mm * s, fat_mm=self.fat_mm * s,
            thigh_radius_mm=self.thigh_radius_mm * s, right=hip(self.right), left=hip(self.left),
            gas=tuple(tuple(v * s for v in g) for g in self.gas),  # type: ignore[misc]
            scale=self.scale * s,
        )

    def unscaled(self) -> PatientParams:
        """The adult-size model this patient is a scaled copy of (itself when ``scale`` is 1)."""
        return self if self.scale == 1.0 else self.scaled(1.0 / self.scale)


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
    has_cup: bool = True  # False: hemiarthroplasty (``shell_points`` is then the bearing head)
    design: str = "hemispherical"
    # rigid pose of the femur (set by :func:`build_femur`): ``stem_points`` and
    # ``cerclage_points`` are in the un-posed femur frame (see :meth:`posed`)
    pose: Rigid | None = None

    def posed(self, pts: F64) -> F64:
        """Femoral points where the posed femur carries them."""
        return pts if self.pose is None else self.pose.apply(pts)

    def scaled(self, s: float) -> CupGeometry:
        return replace(self, centre=self.centre * s, rim_radius=self.rim_radius * s, head_centre=self.head_centre * s,
                       head_radius=self.head_radius * s, shell_points=self.shell_points * s,
                       stem_points=self.stem_points * s, screw_points=[q * s for q in self.screw_points],
                       cerclage_points=[q * s for q in self.cerclage_points],
                       pose=None if self.pose is None else Rigid(self.pose.R, self.pose.t * s))


@dataclass
class HardwareGeometry:
    """Point cloud of one non-arthroplasty device, where it is rendered (posed)."""

    kind: str
    points: F64
    elongated: bool = False  # plates and nails: boxed even when largely outside the field
    tags: tuple[str, ...] = ()  # its primitives' tags (the box is what they cover in the image)


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
    hardware: dict[Side, list[HardwareGeometry]] = field(default_factory=dict)
    # children: (triradiate point, lateral acetabular edge) — Hilgenreiner's line runs through the
    # triradiate points, the acetabular index from there to the lateral edge
    acetabular_roof: dict[Side, tuple[F64, F64]] = field(default_factory=dict)
    nucleus: dict[Side, float] = field(default_factory=dict)  # children: ossific nucleus radius (0: none)

    def scaled(self, s: float) -> Landmarks:
        """The same landmarks for the scene scaled by ``s`` about the origin (children)."""
        def pts(d: dict[Side, F64]) -> dict[Side, F64]:
            return {k: v * s for k, v in d.items()}

        return Landmarks(
            hip_centre=pts(self.hip_centre), head_centre=pts(self.head_centre),
            head_radius={k: v * s for k, v in self.head_radius.items()}, head_prosthetic=dict(self.head_prosthetic),
            teardrop_curve=pts(self.teardrop_curve), teardrop_points=pts(self.teardrop_points),
            tuberosity={k: (c * s, R, ax * s) for k, (c, R, ax) in self.tuberosity.items()},
            sourcil={k: (a * s, b * s) for k, (a, b) in self.sourcil.items()}, spine_tip=pts(self.spine_tip),
            brim=self.brim * s, joint_points=pts(self.joint_points),
            cups={k: g.scaled(s) for k, g in self.cups.items()}, neck_axis=dict(self.neck_axis),
            cam_direction=dict(self.cam_direction),
            femur_pose={k: Rigid(T.R, T.t * s) for k, T in self.femur_pose.items()},
            hardware={k: [replace(h, points=h.points * s) for h in v] for k, v in self.hardware.items()},
            acetabular_roof={k: (a * s, b * s) for k, (a, b) in self.acetabular_roof.items()},
            nucleus={k: v * s for k, v in self.nucleus.items()},
        )


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


def cylinder_points(p0: F64, p1: F64, r: float, n: int = 12) -> F64:
    """Points on the two end circles of a round cylinder (for boxes: exact silhouette extremes
    up to the polygon's ``cos(π/n)``)."""
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    F = frame_from_z(p1 - p0)
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    ring = r * (np.cos(t)[:, None] * F[:, 0] + np.sin(t)[:, None] * F[:, 1])
    return np.concatenate([p0 + ring, p1 + ring])


def scale_primitive(p: Primitive, s: float) -> Primitive:
    """``p`` scaled by ``s`` about the origin (x' = s x): exact for quadrics and half-spaces;
    attenuation per mm is a material property and stays."""
    Q = None
    if p.Q is not None:
        M = np.diag([1.0 / s, 1.0 / s, 1.0 / s, 1.0])
        Q = M @ p.Q @ M
    planes = p.planes.copy()
    if len(planes):
        planes[:, 3] *= s
    return replace(p, Q=Q, planes=planes, corners=p.corners * s)


def carve(prims: list[Primitive], region: list[tuple[F64, F64]]) -> list[Primitive]:
    """Remove the convex ``region`` (half-spaces ``(point, outward normal)``: inside where
    n·(x − p) <= 0) from every primitive, exactly.

    Attenuation is additive, so a gap cannot be punched with one negative primitive (it would
    have to cancel every overlapping bone exactly). Instead each primitive that meets the region
    is split into the disjoint convex pieces of prim minus region — piece *i* lies outside
    half-space *i* and inside all before it — so positive and negative primitives of a
    composite (cortex/cancellous) are cut identically and the gap is exactly empty. Used for
    growth cartilage (triradiate cartilage, physes), which is radiolucent."""
    rows = []
    for q, n in region:
        nn = unit(n)
        rows.append((nn, float(nn @ np.asarray(q, float))))
    out: list[Primitive] = []
    for prim in prims:
        c = prim.corners
        if any(bool(np.all(c @ n > h)) for n, h in rows):
            out.append(prim)  # entirely outside the region
            continue
        inside: list[F64] = []
        for n, h in rows:
            if not bool(np.all(c @ n <= h)):  # else this piece is empty
                extra = np.array([*inside, np.concatenate([-n, [-h]])])
                tight = _clipped_corners(c, extra)
                if tight is not None:  # else the piece is empty
                    out.append(replace(prim, planes=np.concatenate([prim.planes.reshape(-1, 4), extra]),
                                       corners=tight))
            inside.append(np.concatenate([n, [h]]))
    return out


_TRIPLES = np.array([(i, j, k) for i in range(16) for j in range(i + 1, 16) for k in range(j + 1, 16)])


def _clipped_corners(corners: F64, rows: F64) -> F64 | None:
    """Bounding points of (axis-aligned box of ``corners``) ∩ half-spaces ``rows`` (n·x <= h):
    its vertices, or None when that is empty. A carved piece keeps only the box it can occupy,
    so later carves skip it and the renderer does not trace rays through the whole original
    primitive for every piece (``corners`` kept when the clip saves little)."""
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    eye = np.eye(3)
    A = np.concatenate([eye, -eye, rows[:, :3]])
    b = np.concatenate([hi, -lo, rows[:, 3]])
    k = len(A)
    if k > 16:
        return corners
    t = _TRIPLES[_TRIPLES.max(axis=1) < k]
    M = A[t]
    ok = np.abs(np.linalg.det(M)) > 1e-9
    x = np.linalg.solve(M[ok], b[t][ok][..., None])[..., 0]
    tol = 1e-6 * (1.0 + float(np.abs(b).max()))
    v = x[np.all(x @ A.T <= b + tol, axis=1)]
    if len(v) == 0:
        return None
    if float(np.prod(v.max(axis=0) - v.min(axis=0))) > 0.7 * float(np.prod(hi - lo)):
        return corners
    out: F64 = v
    return out


# ----------------------------------------------------------------------------------------------
# Pelvis


def build_pelvis(p: PatientParams, implants: dict[Side, CupSpec | None], marks: Landmarks,
                 hardware: dict[Side, HardwareSpec | None] | None = None) -> list[Primitive]:
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
    if p.paediatric:
        for side in (Side.RIGHT, Side.LEFT):
            body_c = np.array([side_sign(side) * 11.5, -44.0, -30.0 + (3.0 if female else 0.0)])
            for region in growth_cartilage_regions(p, side, marks, body_c, sub):
                prims = carve(prims, region)
        for region in infant_cartilage_regions(p, marks):
            prims = carve(prims, region)
    for side in (Side.RIGHT, Side.LEFT):
        hw = (hardware or {}).get(side)
        if hw is not None and hw.kind == "pelvic_plate":
            prims += build_pelvic_plate(p, side, hw, marks)
    return prims


def growth_cartilage_regions(p: PatientParams, side: Side, marks: Landmarks, pubic_body: F64,
                             sub: float) -> list[list[tuple[F64, F64]]]:
    """Radiolucent cartilage of a child's hemipelvis, as convex regions to :func:`carve` out.

    The open triradiate cartilage is a Y at the acetabular floor: a near-horizontal limb
    separating the ilium (above) from the ischium and pubis, from the inner pelvic wall to the
    middle of the socket, and a limb running down from it between the pubis (medial) and the
    ischium. Both limbs contain the AP beam direction, so an AP film sees them edge-on as lucent
    bands (Hilgenreiner's line runs through the top of this Y). Before about 7 years the
    ischiopubic synchondrosis also splits the inferior ramus near the ischium."""
    sx = side_sign(side)
    hp = p.hip(side)
    H = marks.hip_centre[side]
    r_in = hp.head_radius_mm + hp.joint_space_mm
    lat = np.array([sx, 0.0, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    age = p.age_years if p.age_years is not None else 8.0
    g = triradiate_gap_mm(p)  # mm of the adult-size model
    t = math.radians(-8.0)  # the horizontal limb dips a little medially
    n1 = np.array([sx * math.sin(t), 0.0, math.cos(t)])
    y0 = H + up * (0.12 * r_in)
    horizontal = [(y0 + n1 * g / 2, n1), (y0 - n1 * g / 2, -n1), (H, lat), (H - lat * (r_in + 16.0), -lat)]
    # an infant's shallow socket is cleared lateral of the triradiate point: the limb lies medial to it
    m_v = 0.45 * r_in if hp.acetabular_index_deg is None else ROOF_MEDIAL * r_in + 0.5 * g + 4.0
    y1 = H - lat * m_v + up * (0.12 * r_in)
    dvec = unit(np.array([-sx * 0.25, 0.0, -1.0]))
    n2 = unit(np.array([-dvec[2], 0.0, dvec[0]]))
    vertical = [(y1 + n2 * g / 2, n2), (y1 - n2 * g / 2, -n2), (y1, up), (H - up * (r_in + 8.0), -up)]
    regions = [horizontal, vertical]
    if age < 7.0:
        # same construction as the inferior ramus in build_hemipelvis
        tub_c = marks.tuberosity[side][0]
        inf0 = pubic_body + np.array([sx * 1.0, 2.0, -12.0])
        inf1 = tub_c + np.array([-sx * 8.0, -6.0, -2.0])
        mid = 0.5 * (inf0 + inf1) + np.array([sx * sub * 0.3, 0.0, -6.0])
        e = unit(mid - inf1)
        q = inf1 + (mid - inf1) * 0.3
        F = frame_from_z(e)
        g2 = 0.7 * g
        regions.append([(q + e * g2 / 2, e), (q - e * g2 / 2, -e), (q + F[:, 0] * 14.0, F[:, 0]),
                        (q - F[:, 0] * 14.0, -F[:, 0]), (q + F[:, 1] * 14.0, F[:, 1]), (q - F[:, 1] * 14.0, -F[:, 1])])
    return regions


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
        r_in = max(r_in, cup.socket_radius_mm + 0.5)
    # acetabular socket: subchondral shell clipped by the opening plane
    beta = math.radians(hp.socket_inclination_deg)
    ver = math.radians(hp.socket_version_deg)
    n_open = np.array([sx * math.sin(beta) * math.cos(ver), -math.sin(ver), -math.cos(beta) * math.cos(ver)])
    phi = math.radians(hp.lce_deg)
    h_off = -r_in * math.cos(ver) * math.cos(beta + phi)
    clip = [(H + n_open * h_off, n_open)]
    dens = 1.35 if hp.sclerosis else 1.0
    roof = infant_roof(p, side, H) if p.paediatric else None
    if roof is None:
        prims += shell(H, r_in + 4.0, r_in, m.CORTICAL * 0.55 * dens, f"bone:acetabulum:{s}", clip)
        prims += soft_ellipsoid(H + np.array([0.0, 0.0, 6.0]), (r_in + 12.0, r_in + 10.0, r_in + 10.0),
                                m.CANCELLOUS * 0.6, None, f"bone:acetabulum:{s}", [(H + n_open * h_off, n_open)])
        prims.append(sphere(H, r_in + 3.0, -m.CANCELLOUS * 0.6, f"bone:acetabulum:{s}",
                            [(H + n_open * h_off, n_open)]))
        # sourcil: dense sheet along the roof in the coronal plane, from medial end to lateral edge
        th_m = hp.sourcil_medial_deg
        arc = arc_points(H, up, lat, r_in + 1.2, -th_m, hp.lce_deg, 14)
        prims += tube(arc, (9.0, 1.4 * dens), m.CORTICAL * 1.1 * dens, hint=(0.0, 1.0, 0.0),
                      tag=f"bone:sourcil:{s}")
        marks.sourcil[side] = (arc[0], arc[-1])
        if p.paediatric:
            g = triradiate_gap_mm(p)
            marks.acetabular_roof[side] = (H - lat * r_in + up * (0.12 * r_in + g / 2.0), arc[-1])
    else:
        # infant: no bony socket yet, only the ilium's straight oblique roof (its margin a thin
        # dense line) over the cartilage; the bone below it is carved (infant_cartilage_regions)
        tri, edge, n_roof = roof
        prims += tube(np.stack([tri + n_roof * 1.8, edge + n_roof * 1.8]), (8.0, 1.8), m.CORTICAL * 0.9,
                      hint=(0.0, 1.0, 0.0), tag=f"bone:sourcil:{s}")
        marks.sourcil[side] = (tri, edge)
        marks.acetabular_roof[side] = (tri, edge)

    # teardrop: U-shaped sheet medial to the socket
    xt = sx * (hw - r_in - 6.5)
    zb = -0.72 * 0.5 * (p.right.head_radius_mm + p.left.head_radius_mm)  # level teardrops
    w_td = 3.6
    bottom = arc_points(np.array([xt, 0.0, zb + w_td]), np.array([0.0, 0.0, -1.0]), lat, w_td, -90.0, 90.0, 9)
    med_limb = np.array([[xt - sx * w_td, 0.0, zb + w_td + 20.0]])
    lat_top = np.array([[xt + sx * (w_td + 5.0), 0.0, zb + w_td + 22.0]])
    u_curve = np.concatenate([med_limb, bottom, lat_top])
    if not (p.paediatric and (p.age_years or 0.0) < TEARDROP_AGE):  # no teardrop in a young child
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
    if p.paediatric and (p.age_years or 0.0) < 3.0:  # an infant's ischium is a slim bar, no tuberosity yet
        tub_ax = (8.0, 10.0, 9.0)
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
    if side in marks.acetabular_roof:  # a child's box holds the whole roof, triradiate point to edge
        tri, edge = marks.acetabular_roof[side]
        marks.joint_points[side] = np.concatenate([marks.joint_points[side], ellipsoid_points(tri, (4.0,) * 3, None, 30),
                                                   ellipsoid_points(edge, (4.0,) * 3, None, 30)])
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
                marks: Landmarks, hardware: HardwareSpec | None = None) -> list[Primitive]:
    if cup is not None and hardware is not None and hardware.kind in FEMORAL_NECK_HARDWARE:
        raise ValueError(f"{hardware.kind} and an arthroplasty cannot share the {side.value} femur")
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
    if p.paediatric:
        prims = carve(prims, trochanter_apophysis_region(p, T, sd, ml, ro))
    # lesser trochanter (posteromedial; an infant's is still cartilage)
    lt_dir = unit(-lat * 0.8 + post * 0.6)
    lt_c = T + sd * 40.0 + lt_dir * (ro * 1.0)
    if not (p.paediatric and (p.age_years or 0.0) < 3.0):
        prims += bone_ellipsoid(lt_c, (8.0, 6.5, 12.0), frame_from_z(-sd, lt_dir), f"bone:trochanter:{s}", 1.2,
                                cortical=m.CORTICAL * 0.7)
    # neck: elliptic frustum widening towards the trochanters, taller than deep
    r_si = Rh * 0.72
    r_ap = Rh * 0.62
    neck_hint = unit(np.cross(hd, post))  # in the coronal plane, perpendicular to the neck
    neck_start = H - hd * math.sqrt(max(Rh**2 - r_si**2, 1.0))
    neck_end = T - hd * 4.0
    cut = None
    resurfacing = cup is not None and cup.design == "resurfacing"
    if cup is not None and not resurfacing:
        L_nt = float(np.linalg.norm(H - T))
        cut = T + hd * (L_nt * 0.38)
        neck_start = cut
    physis = 0.0
    neck_clip: list[tuple[F64, F64]] = []
    n_ph = hd
    if p.paediatric:
        # the metaphysis ends at the physis, a radiolucent plate at the base of the head. Its
        # plane is turned towards the coronal plane (real physes are cupped and seen as a lucent
        # line on an AP film; a flat plate square to an anteverted neck would hide behind itself)
        physis = physis_gap_mm(p)
        n_ph = unit(hd * np.array([1.0, 0.3, 1.0]))
        neck_start = H - hd * (0.25 * Rh)
        depth = metaphysis_depth(p) * Rh
        neck_clip = [(H - hd * depth - n_ph * (physis / 2.0), n_ph)]
    flare = 1.3
    prims.append(frustum(neck_start, neck_end, (r_si, r_ap), flare, m.CORTICAL, neck_hint, f"bone:neck:{s}",
                         neck_clip))
    prims.append(frustum(neck_start, neck_end, (r_si - 2.2, r_ap - 2.2), flare * (r_si + 1.0) / r_si,
                         -m.CORTICAL + m.CANCELLOUS, neck_hint, f"bone:neck:{s}", neck_clip))
    meta_pts: F64 | None = None
    if p.paediatric and cup is None:
        # the ossification centre of the head (epiphysis): smaller than the cartilaginous head,
        # flat on its physeal side
        re = epiphysis_radius_mm(p, Rh, hp.nucleus_onset_years)
        ph = [(H - hd * depth + n_ph * (physis / 2.0), -n_ph)]
        if re > 0.0:
            cortex = min(1.0, 0.35 * re)
            # a young nucleus is small but dense (it would vanish at cancellous density once scaled)
            dense = 1.0 if (p.age_years or 0.0) >= 3.0 else 1.8
            prims += shell(H, re, re - cortex, m.CORTICAL * 0.6 * dense, f"bone:head:{s}", ph)
            prims.append(sphere(H, re - cortex, m.CANCELLOUS * 1.3 * dense, f"bone:head:{s}", ph))
        marks.cam_direction[side] = unit(np.cross(hd, np.cross(np.array([0.0, 0, 1]), hd)))
        marks.head_centre[side] = H
        marks.head_radius[side] = re if re > 0.0 else Rh  # no nucleus: the cartilaginous head
        marks.nucleus[side] = re
        marks.head_prosthetic[side] = False
        # the box holds the metaphysis wherever the pose carries it (added once posed, below)
        meta = H - hd * (depth + physis / 2.0)
        meta_pts = np.concatenate([meta + ellipsoid_points(np.zeros(3), (r_si * flare,) * 3, None, 40),
                                   meta[None, :] - hd * 6.0])
    elif resurfacing:
        assert cup is not None
        # the retained head, reshaped to sit inside the cap
        rb = min(Rh, cup.head_radius_mm - 2.5)
        prims += shell(H, rb, rb - 1.4, m.CORTICAL * 0.8, f"bone:head:{s}")
        prims.append(sphere(H, rb - 1.4, m.CANCELLOUS * 1.3, f"bone:head:{s}"))
        marks.cam_direction[side] = unit(np.cross(hd, np.cross(np.array([0.0, 0, 1]), hd)))
    elif cup is None:
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
    devices: list[HardwareGeometry] = []
    if hardware is not None and hardware.kind != "pelvic_plate":
        hw_prims, devices = build_femoral_hardware(p, side, hardware, H, sd, hd, T)
        prims += hw_prims

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
    if cup is not None and side in marks.cups:
        marks.cups[side].pose = T_pose
    if devices:
        marks.hardware.setdefault(side, []).extend(replace(d, points=T_pose.apply(d.points)) for d in devices)
    if meta_pts is not None and side in marks.joint_points:
        marks.joint_points[side] = np.concatenate([marks.joint_points[side], T_pose.apply(meta_pts)])
    if not np.allclose(R, np.eye(3)):
        prims = [q.transformed(T_pose) for q in prims]
    if cup is not None:
        prims += pelvic_parts  # the shell (and its screws) stays with the pelvis
    return prims


def build_tha(p: PatientParams, side: Side, cup: CupSpec, H: F64, sd: F64, hd: F64, T: F64,
              cut: F64, marks: Landmarks) -> tuple[list[Primitive], list[Primitive]]:
    """Acetabular component (+ screws) (pelvic parts); head, stem (+ cement, cerclage) (femoral
    parts, posed with the femur), for every design of ``ARTHROPLASTY_DESIGNS``.

    The classic design ("hemispherical", tapered stem, PE or ceramic liner, titanium shell)
    takes exactly the statements it always took, in the same order: its pixels do not move."""
    design = cup.design
    if design not in ARTHROPLASTY_DESIGNS:
        raise ValueError(f"design must be one of {ARTHROPLASTY_DESIGNS}, got {design!r}")
    if cup.stem_shape not in STEM_SHAPES:
        raise ValueError(f"stem_shape must be one of {STEM_SHAPES}, got {cup.stem_shape!r}")
    prims: list[Primitive] = []
    s = side.value
    sx = side_sign(side)
    C = H + np.asarray(cup.centre_offset_mm)
    a = cup_axis(side, cup.inclination_deg, cup.anteversion_deg)
    Rc = cup.outer_radius_mm
    face = [(C, a)]  # keep the dome side: a·(x − C) <= 0
    shell_mu = m.TITANIUM if cup.shell_material == "titanium" else m.COCR
    metal_shell = design not in ("cemented_pe", "hemiarthroplasty")
    if metal_shell:
        prims.append(sphere(C, Rc, shell_mu, f"metal:cup:{s}", face))
        prims.append(sphere(C, Rc - cup.shell_mm, -shell_mu, f"metal:cup:{s}", face))
    elif design == "cemented_pe":
        prims += _cemented_pe_cup(cup, C, a, s, face)
    if cup.has_cup:
        # rim disc (zero attenuation): used for ground-truth masks of the cup opening
        prims.append(cylinder(C - a * 0.01, C + a * 0.01, Rc, 0.0, tag=f"mask:cup_rim:{s}"))
    if not metal_shell or design == "resurfacing" or cup.liner == "none":
        pass  # the PE cup is the bearing / a hemiarthroplasty has no cup / monoblock metal bearing
    elif cup.liner == "ceramic":
        prims += shell(C, Rc - cup.shell_mm, cup.head_radius_mm + 0.3, m.CERAMIC, f"metal:liner:{s}", face)
    elif cup.liner == "metal":
        prims += shell(C, Rc - cup.shell_mm, cup.head_radius_mm + 0.3, m.COCR, f"metal:liner:{s}", face)
    else:
        prims += shell(C, Rc - cup.shell_mm, cup.head_radius_mm + 0.3, m.POLYETHYLENE, f"soft:liner:{s}", face)
    up = np.array([0.0, 0.0, 1.0])
    flange_pts = np.zeros((0, 3))
    if design == "flanged" and cup.flange_mm > 0:
        flange, flange_pts = _flange(cup, C, a, shell_mu, s)
        prims += flange
    # head ball displaced by wear towards the dome
    wear_dir = unit(-a * 0.3 + up)
    B = C + wear_dir * cup.wear_mm
    head_mu = m.COCR if cup.head_material == "cocr" else m.CERAMIC * 1.3
    marks.head_centre[side] = B
    marks.head_radius[side] = cup.head_radius_mm if cup.has_cup else Rc
    marks.head_prosthetic[side] = True
    shell_pts = C + fibonacci_sphere(300) * Rc
    if cup.has_cup:
        shell_pts = shell_pts[(shell_pts - C) @ a <= 0.0]
    if len(flange_pts):
        shell_pts = np.concatenate([shell_pts, flange_pts])

    # screws through the dome into the ilium (superoposterior quadrant)
    screws: list[F64] = []
    dome = -a
    rng_dirs = [(-25.0, 20.0), (10.0, 30.0), (-5.0, -10.0)]
    for k in range(cup.n_screws if cup.has_cup else 0):
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
    if metal_shell and cup.screw_holes > 0:
        prims += _screw_holes(cup, C, a, shell_mu, sx, s)

    pelvic = prims
    prims = []
    neck_dir = -hd
    if design == "resurfacing":
        # cap over the retained head (a little more than a hemisphere) and a central peg
        rcap = cup.head_radius_mm
        cap_clip = [(B + neck_dir * (rcap * 0.35), neck_dir)]
        prims += shell(B, rcap, rcap - 2.5, head_mu, f"metal:head:{s}", cap_clip)
        peg_end = B + neck_dir * cup.peg_mm
        prims.append(cylinder(B, peg_end, 3.2, m.COCR, tag=f"metal:stem:{s}"))
        cap_pts = B + fibonacci_sphere(300) * rcap
        cap_pts = cap_pts[(cap_pts - B) @ neck_dir <= rcap * 0.35]
        stem_pts_arr = np.concatenate([cap_pts, cylinder_points(B, peg_end, 3.2)])
        marks.cups[side] = CupGeometry(C, a, Rc, B, rcap, shell_pts, stem_pts_arr, screws, [], True, design)
        return pelvic, prims

    # stem: prosthetic neck (trunnion), proximal body with medial flare, tapered distal body
    head_pts = np.zeros((0, 3))
    if design == "hemiarthroplasty":
        # a large head in the native socket: solid (unipolar) or a shell round an inner head (bipolar)
        if cup.bipolar:
            prims += shell(B, Rc, Rc - 3.0, m.COCR, f"metal:head:{s}", [(B + neck_dir * (Rc * 0.25), neck_dir)])
            prims.append(sphere(B, cup.head_radius_mm, head_mu, f"metal:head:{s}"))
        else:
            prims.append(sphere(B, Rc, head_mu, f"metal:head:{s}"))
        head_pts = B + fibonacci_sphere(300) * Rc
    else:
        prims.append(sphere(B, cup.head_radius_mm, head_mu, f"metal:head:{s}"))
    stem_mu = m.TITANIUM if cup.stem_material == "titanium" else (m.STEEL if cup.stem_material == "steel" else m.COCR)
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

    if cup.stem_shape == "tapered":
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
    else:
        body, body_pts, tip = _stem_body(cup, axis_top, sd, ml, stem_mu, s)
        prims += body
        stem_pts.extend(body_pts)
    # shoulder block joining the neck to the body (lateral shoulder)
    prims.append(cylinder(shoulder, axis_top + sd * 12.0 + ml * 3.0, (7.5, 6.5), stem_mu, ap, f"metal:stem:{s}"))
    if cup.stem_shape == "collared":
        # a collar resting on the calcar at the neck cut, perpendicular to the neck
        cc = shoulder - ml * 6.0 + neck_dir * 2.0
        prims.append(cylinder(cc, cc + neck_dir * 2.5, (12.0, 9.0), stem_mu, ml, f"metal:stem:{s}"))
        stem_pts.extend(cylinder_points(cc, cc + neck_dir * 2.5, 12.0))
    stem_pts_arr = np.concatenate([np.array(stem_pts), B + np.outer(np.linspace(0, 1, 8), shoulder - B),
                                   (tip + sd * 0.0)[None, :]])
    if len(head_pts):
        stem_pts_arr = np.concatenate([stem_pts_arr, head_pts])
    cerclage: list[F64] = []
    for k in range(cup.cerclage):
        zc = 55.0 + 18.0 * k
        cc = axis_top + sd * zc
        ro = p.hip(side).shaft_radius_mm * 1.45 + 1.0
        ring = cc + np.array([ro * math.cos(t) * ml + ro * 0.9 * math.sin(t) * ap
                              for t in np.radians(np.linspace(0, 360, 25)[:-1])])
        prims += tube(ring, 0.9, m.COCR, closed=True, tag=f"metal:cerclage{k}:{s}")
        cerclage.append(ring)
    if design == "hemiarthroplasty":
        marks.cups[side] = CupGeometry(B, a, Rc, B, Rc, shell_pts, stem_pts_arr, screws, cerclage, False, design)
    else:
        marks.cups[side] = CupGeometry(C, a, Rc, B, cup.head_radius_mm, shell_pts, stem_pts_arr, screws, cerclage,
                                       True, design)
    return pelvic, prims


def _mirror_safe_frame(d: F64) -> tuple[F64, F64]:
    """Two unit vectors square to ``d``, the first towards the patient's head: polygons built
    on them (symmetric about the first) mirror exactly with the side (``spec.mirrored()``)."""
    up = np.array([0.0, 0.0, 1.0])
    e0 = up - d * float(up @ d)
    if float(np.linalg.norm(e0)) < 1e-6:
        e0 = np.array([0.0, 1.0, 0.0]) - d * float(d[1])
    e0 = unit(e0)
    return e0, unit(np.cross(d, e0))


def _cemented_pe_cup(cup: CupSpec, C: F64, a: F64, s: str, face: list[tuple[F64, F64]]) -> list[Primitive]:
    """All-polyethylene cup (barely distinguishable from soft tissue) in a cement mantle, with
    the thin metal marker wire that is the only way to see its orientation on a film."""
    Rpe = cup.outer_radius_mm
    prims = shell(C, Rpe + cup.mantle_mm, Rpe, m.CEMENT, f"cement:cup:{s}", face)
    prims += shell(C, Rpe, cup.head_radius_mm + 0.3, m.POLYETHYLENE, f"soft:cup:{s}", face)
    e0, e1 = _mirror_safe_frame(a)
    if cup.marker_wire == "arc":
        # a semicircle over the dome in the plane of the axis and the cup's superior direction
        up = np.array([0.0, 0.0, 1.0])
        e = unit(up - a * float(up @ a))
        t = np.radians(np.linspace(0.0, 180.0, 25))
        r = Rpe - 1.0
        pts = C + r * (np.cos(t)[:, None] * e - np.sin(t)[:, None] * a)
        prims += tube(pts, 0.5, m.STEEL, tag=f"metal:wire:{s}")
    elif cup.marker_wire == "ring":
        t = np.radians(np.linspace(0.0, 360.0, 37)[:-1])
        pts = C - a * 1.5 + (Rpe - 1.2) * (np.cos(t)[:, None] * e0 + np.sin(t)[:, None] * e1)
        prims += tube(pts, 0.5, m.STEEL, closed=True, tag=f"metal:wire:{s}")
    else:
        raise ValueError(f"marker_wire must be 'ring' or 'arc', got {cup.marker_wire!r}")
    return prims


def _flange(cup: CupSpec, C: F64, a: F64, mu: float, s: str) -> tuple[list[Primitive], F64]:
    """A flat annulus round the rim, just inside the opening plane (full ring, or the superior
    half: a hooded cup). Disjoint from the shell, whose radius is below ``Rc`` there."""
    Rc, w, th = cup.outer_radius_mm, cup.flange_mm, 2.0
    clip: list[tuple[F64, F64]] = []
    e0, e1 = _mirror_safe_frame(a)
    t = np.radians(np.linspace(0.0, 360.0, 36, endpoint=False))
    ring = (Rc + w) * (np.cos(t)[:, None] * e0 + np.sin(t)[:, None] * e1)
    if cup.flange_arc_deg < 360.0:
        down = np.array([0.0, 0.0, -1.0])
        inf = unit(down - a * float(down @ a))
        clip = [(C, inf)]
        ring = ring[ring @ inf <= 0.0]
    prims = [cylinder(C - a * th, C, Rc + w, mu, tag=f"metal:cup:{s}", clip=clip),
             cylinder(C - a * th, C, Rc, -mu, tag=f"metal:cup:{s}", clip=clip)]
    return prims, np.concatenate([C + ring, C - a * th + ring])


def _screw_holes(cup: CupSpec, C: F64, a: F64, mu: float, sx: float, s: str) -> list[Primitive]:
    """Empty screw holes: the shell material inside a hexagonal prism removed exactly (a pair of
    clipped spheres with opposite attenuation), so the hole shows as a lucent spot."""
    prims: list[Primitive] = []
    dirs = [(-25.0, 20.0), (10.0, 30.0), (-5.0, -10.0), (25.0, -25.0), (-35.0, -30.0), (30.0, 5.0)]
    Rc = cup.outer_radius_mm
    for k in range(cup.n_screws, min(cup.n_screws + cup.screw_holes, len(dirs))):
        tilt_sup, tilt_post = dirs[k]
        d = unit(-a + np.array([0.0, 0.0, 1.0]) * math.tan(math.radians(20.0 + tilt_sup * 0.3))
                 + np.array([0.0, 1.0, 0.0]) * math.tan(math.radians(tilt_post)) + np.array([-sx, 0, 0]) * 0.25)
        e0, e1 = _mirror_safe_frame(d)
        planes: list[tuple[F64, F64]] = [(C, -d), (C, a)]
        for j in range(6):
            e = math.cos(j * math.pi / 3.0) * e0 + math.sin(j * math.pi / 3.0) * e1
            planes.append((C + e * 3.2, e))
        prims.append(sphere(C, Rc, -mu, f"metal:cup:{s}", planes))
        prims.append(sphere(C, Rc - cup.shell_mm, mu, f"metal:cup:{s}", planes))
    return prims


def _stem_body(cup: CupSpec, axis_top: F64, sd: F64, ml: F64, mu: float,
               s: str) -> tuple[list[Primitive], list[F64], F64]:
    """Stem body of the non-classic shapes, as convex segments between stations along a
    (possibly bent) axis with mitred joints; a cemented stem sits in a mantle 2.5 mm larger.
    Returns the primitives, box points and the tip."""
    L = cup.stem_length_mm
    post = np.array([0.0, 1.0, 0.0])
    pw = unit(post - sd * float(post @ sd))
    ap = unit(np.cross(sd, ml))
    last = L - 6.0
    # stations: (z along the canal, medial half-width, lateral half-width, AP half-thickness,
    #            medial-lateral shift, posterior shift)
    shape = cup.stem_shape
    if shape == "wedge":
        st = [(0.0, 19.0, 12.0, 6.0, 0.0, 0.0), (last, 4.8, 4.8, 3.2, 0.0, 0.0)]
    elif shape == "collared":
        st = [(0.0, 21.0, 11.0, 7.5, 0.0, 0.0), (45.0, 8.5, 8.5, 6.4, 0.0, 0.0), (last, 4.5, 4.5, 4.0, 0.0, 0.0)]
    elif shape == "anatomic":
        st = [(0.0, 23.0, 11.0, 8.0, 0.0, 2.5), (14.0, 15.0, 9.5, 7.8, 0.0, 2.0), (30.0, 10.5, 8.5, 7.2, 0.0, 1.0),
              (50.0, 8.0, 7.8, 6.6, 0.0, 0.0), (last, 5.0, 5.0, 4.5, 0.0, -2.5)]
    elif shape == "cylindrical":
        st = [(0.0, 20.0, 11.0, 8.0, 0.0, 0.0), (min(40.0, last - 10.0), 6.8, 6.8, 6.8, 0.0, 0.0)]
    else:
        raise ValueError(shape)
    st = [q for q in st[:-1] if q[0] < last - 4.0] + [st[-1]]
    centres = [axis_top + sd * z + ml * dm + pw * dp for z, _, _, _, dm, dp in st]
    dirs = [unit(centres[k + 1] - centres[k]) for k in range(len(st) - 1)]
    mitre = [dirs[0]] + [unit(dirs[k - 1] + dirs[k]) for k in range(1, len(dirs))] + [dirs[-1]]
    prims: list[Primitive] = []
    pts: list[F64] = []

    def segment(k: int, grow: float, seg_mu: float, tag: str) -> Primitive:
        c0, c1 = centres[k], centres[k + 1]
        (_, wm0, wl0, t0, _, _), (_, wm1, wl1, t1, _, _) = st[k], st[k + 1]
        wm0, wl0, t0, wm1, wl1, t1 = (v + grow for v in (wm0, wl0, t0, wm1, wl1, t1))

        def side_plane(off0: float, off1: float, dirv: F64) -> tuple[F64, F64]:
            q0 = c0 + dirv * off0
            q1 = c1 + dirv * off1
            along = unit(q1 - q0)
            nrm = unit(np.cross(unit(np.cross(along, dirv)), along))
            return q0, nrm if float(nrm @ dirv) >= 0 else -nrm

        corners = [c + sg_m * ml * w + sg_a * ap * t + sd * dz for c, wm, wl, t in ((c0, wm0, wl0, t0), (c1, wm1, wl1, t1))
                   for sg_m, w in ((-1.0, wm), (1.0, wl)) for sg_a in (-1.0, 1.0) for dz in (-1.5, 1.5)]
        if grow == 0.0:
            pts.extend(corners)
        planes = [(c0, -mitre[k]), (c1, mitre[k + 1]), side_plane(wm0, wm1, -ml), side_plane(wl0, wl1, ml),
                  side_plane(t0, t1, ap), side_plane(t0, t1, -ap)]
        return polyhedron(planes, np.array(corners), seg_mu, tag)

    for k in range(len(st) - 1):
        if cup.cemented:
            prims.append(segment(k, 2.5, m.CEMENT, f"cement:mantle:{s}"))
            prims.append(segment(k, 0.0, mu - m.CEMENT, f"metal:stem:{s}"))
        else:
            prims.append(segment(k, 0.0, mu, f"metal:stem:{s}"))
    end = centres[-1]
    d_end = dirs[-1]
    if shape == "cylindrical":
        r = st[-1][3]
        tip_c = axis_top + sd * last
        if float((tip_c - end) @ d_end) > 1.0:
            if cup.cemented:
                prims.append(cylinder(end, tip_c, r + 2.5, m.CEMENT, tag=f"cement:mantle:{s}"))
                prims.append(cylinder(end, tip_c, r, mu - m.CEMENT, tag=f"metal:stem:{s}"))
            else:
                prims.append(cylinder(end, tip_c, r, mu, tag=f"metal:stem:{s}"))
            pts.extend(cylinder_points(end, tip_c, r))
            end = tip_c
            d_end = unit(sd)
        prims.append(ellipsoid(end, (r, r, 6.0), mu, frame_from_z(d_end, ml), f"metal:stem:{s}", [(end, -d_end)]))
    else:
        _, _, wl, t, _, _ = st[-1]
        prims.append(ellipsoid(end, (wl, t, 6.0), mu, frame_from_z(d_end, ml), f"metal:stem:{s}", [(end, -d_end)]))
    tip = end + d_end * 6.0
    pts.append(tip)
    return prims, pts, tip


# ----------------------------------------------------------------------------------------------
# Children


TEARDROP_AGE = 4.0  # younger children have no radiographic teardrop (no box, no primitive)
ROOF_MEDIAL = 0.55  # infant: triradiate point this many socket radii medial to the head centre


def physis_gap_mm(p: PatientParams) -> float:
    """Width of the radiolucent proximal femoral physis (mm of the adult-size model)."""
    age = p.age_years if p.age_years is not None else 8.0
    return float(np.clip(5.0 - 0.2 * (age - 2.0), 2.5, 5.0))


def triradiate_gap_mm(p: PatientParams) -> float:
    """Width of the triradiate cartilage (mm of the adult-size model): wide in infants, closing
    in adolescence."""
    age = p.age_years if p.age_years is not None else 8.0
    if age < 2.0:
        return 9.0 + 2.5 * (2.0 - age)
    return float(np.clip(9.0 - 0.55 * (age - 2.0), 3.5, 9.0))


def epiphysis_radius_mm(p: PatientParams, head_radius_mm: float, onset_years: float = 0.0) -> float:
    """Radius of the ossified femoral head epiphysis (0: not yet ossified).

    Before two years the ossific nucleus grows from nothing at ``onset_years`` (about 4–6
    months, later in dysplasia) to about 12 mm across at two years and 15 mm at three, inside a
    cartilaginous head of about 17–23 mm (real millimetres, as a fraction of that head here);
    after two it is about half the cartilaginous head, most of it by 12."""
    age = p.age_years if p.age_years is not None else 8.0
    if age < 2.0:
        if age <= onset_years:
            return 0.0
        real = 7.5 * math.sqrt((age - onset_years) / max(3.0 - onset_years, 0.5))  # nucleus radius
        frac = real / (8.5 + age)  # cartilaginous head radius
        return head_radius_mm * float(np.clip(frac, 0.08, 0.6))
    return head_radius_mm * float(np.clip(0.55 + 0.035 * (age - 2.0), 0.55, 0.9))


def metaphysis_depth(p: PatientParams) -> float:
    """Distance from the head centre to the femoral metaphysis, in head radii: an infant's neck
    ends a full radius below the centre (the cartilaginous head and physis are lucent), a
    school child's just below the ossified epiphysis."""
    age = p.age_years if p.age_years is not None else 8.0
    return float(np.interp(age, [0.3, 1.0, 2.0, 4.0], [1.0, 0.9, 0.7, 0.42]))


def infant_roof(p: PatientParams, side: Side, H: F64) -> tuple[F64, F64, F64] | None:
    """(triradiate point, lateral acetabular edge, upward roof normal) of an infant hip whose
    ``acetabular_index_deg`` is set, else None.

    The ossified roof runs straight from the top of the triradiate cartilage (on Hilgenreiner's
    line) up and out at the acetabular index to the lateral edge; a steeper index (dysplasia)
    also covers less of the head."""
    hp = p.hip(side)
    ai = hp.acetabular_index_deg
    if ai is None:
        return None
    sx = side_sign(side)
    lat = np.array([sx, 0.0, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    r_in = hp.head_radius_mm + hp.joint_space_mm
    g = triradiate_gap_mm(p)
    tri = H - lat * (ROOF_MEDIAL * r_in) + up * (0.12 * r_in + g / 2.0)
    a = math.radians(ai)
    cover = float(np.clip(0.75 - 0.012 * ai, 0.2, 0.6))  # lateral edge, socket radii lateral of the centre
    edge = tri + (lat * math.cos(a) + up * math.sin(a)) * ((ROOF_MEDIAL + cover) * r_in / math.cos(a))
    return tri, edge, -lat * math.sin(a) + up * math.cos(a)


def infant_cartilage_regions(p: PatientParams, marks: Landmarks) -> list[list[tuple[F64, F64]]]:
    """Lucent regions of an infant pelvis besides the triradiate and ischiopubic cartilages:
    the unossified socket below each oblique roof and lateral to the triradiate point, the
    acetabular margin above the lateral edge, and a wide cartilaginous symphysis."""
    regions: list[list[tuple[F64, F64]]] = []
    yv = np.array([0.0, 1.0, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    for side in (Side.RIGHT, Side.LEFT):
        H = marks.hip_centre[side]
        roof = infant_roof(p, side, H)
        if roof is None:
            continue
        tri, edge, n_roof = roof
        sx = side_sign(side)
        lat = np.array([sx, 0.0, 0.0])
        hp = p.hip(side)
        r_in = hp.head_radius_mm + hp.joint_space_mm
        box = [(H - up * (r_in + 10.0), -up), (H + lat * (r_in + 60.0), lat), (H + yv * (r_in + 30.0), yv),
               (H - yv * (r_in + 30.0), -yv)]
        regions.append([(tri, n_roof), (tri, -lat), *box])
        b = math.radians(70.0)  # the ilium's outer surface rises steeply above the edge
        n2 = -lat * math.sin(b) + up * math.cos(b)
        regions.append([(edge, n2), (edge, -lat), (edge + up * (0.7 * r_in), up), *box])
    age = p.age_years if p.age_years is not None else 8.0
    if age < 8.0 and regions:
        half = float(np.interp(age, [0.3, 3.0, 8.0], [10.0, 7.0, 3.0]))
        regions.append([(np.array([half, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])),
                        (np.array([-half, 0.0, 0.0]), np.array([-1.0, 0.0, 0.0])),
                        (np.array([0.0, -20.0, 0.0]), yv), (np.array([0.0, 0.0, -5.0]), up)])
    return regions


def trochanter_apophysis_region(p: PatientParams, T: F64, sd: F64, ml: F64, ro: float) -> list[tuple[F64, F64]]:
    """Growth plate of the greater trochanter: a lucent band from the lateral cortex up to the
    trochanteric fossa, seen edge-on on an AP (it contains the AP direction). Before about 4
    years the apophysis has not ossified: everything above the plate goes."""
    age = p.age_years if p.age_years is not None else 8.0
    l0 = T - sd * 5.0 + ml * (1.7 * ro)
    l1 = T - sd * 28.0 + ml * (0.1 * ro)
    d = unit(l1 - l0)
    u = -sd
    n = unit(ml * float(d @ u) - u * float(d @ ml))  # in the coronal plane, towards the trochanter
    if float(n @ u) < 0:
        n = -n
    g = physis_gap_mm(p) * 0.8
    if age < 4.0:
        return [(l0 - n * g / 2.0, -n), (l1, d)]
    return [(l0 + n * g / 2.0, n), (l0 - n * g / 2.0, -n), (l1, d)]


# ----------------------------------------------------------------------------------------------
# Non-arthroplasty hardware


def _hw_mu(hw: HardwareSpec) -> float:
    return m.TITANIUM if hw.material == "titanium" else m.STEEL


def _lateral_exit(T: F64, sd: F64, ml: F64, start: F64, direction: F64, dist: float) -> F64:
    """Where the line ``start − t·direction`` (t > 0) reaches ``dist`` from the shaft axis in
    the medial-lateral direction: the lateral cortex for a screw up the neck."""
    f0 = float((start - T) @ ml)
    rate = -float(direction @ ml)
    t = (dist - f0) / max(rate, 1e-3)
    out: F64 = start - direction * t
    return out


def _screw(p0: F64, p1: F64, r_shaft: float, r_thread: float, thread_mm: float, mu: float, tag: str,
           head_r: float = 0.0, cannula: float = 0.0) -> tuple[list[Primitive], F64]:
    """A screw from its head end ``p0`` to its tip ``p1``: shaft, threaded distal part, rounded
    tip, optional head (washer) outside ``p0`` and a lucent cannula down its axis."""
    d = unit(p1 - p0)
    L = float(np.linalg.norm(p1 - p0))
    th = min(thread_mm, L * 0.6)
    q = p1 - d * th
    prims = [cylinder(p0, q, r_shaft, mu, tag=tag)]
    if th > 0.5:
        prims.append(cylinder(q, p1, r_thread, mu, tag=tag))
    else:
        r_thread = r_shaft
    prims.append(ellipsoid(p1, (r_thread, r_thread, r_thread * 0.8), mu, frame_from_z(d), tag, [(p1, -d)]))
    pts = [cylinder_points(p0, p1, r_thread)]
    if head_r > 0:
        prims.append(cylinder(p0 - d * 3.0, p0, head_r, mu, tag=tag))
        pts.append(cylinder_points(p0 - d * 3.0, p0, head_r))
    if cannula > 0:
        prims.append(cylinder(p0 - d * (3.0 if head_r > 0 else 0.0), p1 - d * 2.0, cannula, -mu, tag=tag))
    return prims, np.concatenate(pts)


def _plate(c0: F64, c1: F64, width_dir: F64, half_w: float, thick_dir: F64, half_t: float, mu: float,
           tag: str) -> tuple[Primitive, F64]:
    """A straight rectangular plate from ``c0`` to ``c1`` (centre line)."""
    d = unit(c1 - c0)
    wd = unit(width_dir - d * float(width_dir @ d))
    td = unit(np.cross(d, wd))
    if float(td @ thick_dir) < 0:
        td = -td
    corners = np.array([c + sw * wd * half_w + st * td * half_t for c in (c0, c1) for sw in (-1, 1) for st in (-1, 1)])
    planes = [(c0, -d), (c1, d), (c0 + wd * half_w, wd), (c0 - wd * half_w, -wd), (c0 + td * half_t, td),
              (c0 - td * half_t, -td)]
    return polyhedron(planes, corners, mu, tag), corners


def build_femoral_hardware(p: PatientParams, side: Side, hw: HardwareSpec, H: F64, sd: F64, hd: F64,
                           T: F64) -> tuple[list[Primitive], list[HardwareGeometry]]:
    """Fixation in the proximal femur, in the un-posed femur frame: a dynamic hip screw (lag
    screw, barrel and side plate with cortical screws), cannulated screws up the neck, a
    cephalomedullary nail with its lag screw and distal locking screws, or cerclage wires."""
    if hw.kind not in HARDWARE_KINDS:
        raise ValueError(f"hardware kind must be one of {HARDWARE_KINDS}, got {hw.kind!r}")
    s = side.value
    sx = side_sign(side)
    hp = p.hip(side)
    Rh, ro = hp.head_radius_mm, hp.shaft_radius_mm
    lat = np.array([sx, 0.0, 0.0])
    ml = unit(lat - sd * float(lat @ sd))
    post = np.array([0.0, 1.0, 0.0])
    pw = unit(post - sd * float(post @ sd))
    mu = _hw_mu(hw)
    prims: list[Primitive] = []
    devices: list[HardwareGeometry] = []
    tip = H + hd * (Rh - 10.0)  # lag screw tip ~1 cm under the subchondral bone (tip-apex distance)
    if hw.kind in ("dhs", "nail"):
        E = _lateral_exit(T, sd, ml, H, hd, ro * 1.5)
    if hw.kind == "dhs":
        tag = f"metal:dhs:{s}"
        b0 = E - hd * 6.0
        b1 = E + hd * 38.0
        prims.append(cylinder(b0, b1, 6.5, mu, tag=tag))  # barrel
        lag, lag_pts = _screw(b1, tip, 4.0, 6.3, 22.0, mu, tag)
        prims += lag
        z_top = float((E - T) @ sd) - 4.0
        off = ro + 2.8
        c0 = T + sd * z_top + ml * off
        c1 = T + sd * (z_top + hw.length_mm) + ml * off
        plate, plate_pts = _plate(c0, c1, pw, 9.5, ml, 2.8, mu, tag)
        prims.append(plate)
        pts = [cylinder_points(b0, b1, 6.5), lag_pts, plate_pts]
        for k in range(hw.count):
            z = z_top + 22.0 + 16.0 * k
            if z > z_top + hw.length_mm - 6.0:
                break
            q0 = T + sd * z + ml * (off + 2.8)
            sp, spts = _screw(q0, q0 - ml * (off + 2.8 + ro + 2.0), 2.25, 2.25, 0.0, mu, tag, head_r=4.0)
            prims += sp
            pts.append(spts)
        devices.append(HardwareGeometry("dhs", np.concatenate(pts), elongated=True, tags=(tag,)))
    elif hw.kind == "cannulated_screws":
        down = np.array([0.0, 0.0, -1.0])
        inf = unit(down - hd * float(down @ hd))
        ant = unit(np.cross(hd, inf))
        r_si = Rh * 0.72
        offsets = [inf * (0.45 * r_si), -inf * (0.35 * r_si) + ant * (0.42 * r_si),
                   -inf * (0.35 * r_si) - ant * (0.42 * r_si)]
        if hw.count == 2:
            offsets = [inf * (0.45 * r_si), -inf * (0.4 * r_si)]
        for k, o in enumerate(offsets[: max(1, hw.count)]):
            tag = f"metal:cannulated{k}:{s}"
            depth = math.sqrt(max((Rh - 6.0) ** 2 - float(o @ o), 1.0))
            p1 = H + o + hd * depth
            p0 = _lateral_exit(T, sd, ml, H + o, hd, ro * 1.45)
            sp, spts = _screw(p0, p1, 2.4, 3.6, 24.0, mu, tag, head_r=5.0, cannula=1.3)
            prims += sp
            devices.append(HardwareGeometry("cannulated_screws", spts, tags=(tag,)))
    elif hw.kind == "nail":
        tag = f"metal:nail:{s}"
        n0 = T - sd * 40.0 + ml * (0.55 * ro)  # entry at the tip of the greater trochanter
        n1 = T + sd * 45.0
        d1 = unit(n1 - n0)
        mit = unit(d1 + sd)
        r_prox, r_dist = 8.5, 5.5
        prims.append(cylinder(n0, n1, r_prox, mu, tag=tag, n1=mit))
        t0 = n1 + sd * 20.0
        prims.append(frustum(n1 - sd * 3.0, t0, (r_prox, r_prox), r_dist / r_prox, mu, tag=tag, clip=[(n1, -mit)]))
        L_rest = max(hw.length_mm - 85.0 - 20.0, 30.0)
        n2 = t0 + sd * L_rest
        prims.append(cylinder(t0, n2, r_dist, mu, tag=tag))
        prims.append(ellipsoid(n2, (r_dist, r_dist, 5.0), mu, frame_from_z(sd), tag, [(n2, -sd)]))
        lag0 = E - hd * 8.0
        lag, lag_pts = _screw(lag0, tip, 5.25, 5.5, 20.0, mu, tag)
        prims += lag
        pts = [cylinder_points(n0, n1, r_prox), cylinder_points(t0, n2 + sd * 5.0, r_dist), lag_pts]
        for k in range(hw.count):
            zc = n2 - sd * (25.0 + 18.0 * k)
            q0 = zc + ml * (ro + 5.0)
            sp, spts = _screw(q0, zc - ml * (ro + 1.0), 2.5, 2.5, 0.0, mu, tag, head_r=4.0)
            prims += sp
            pts.append(spts)
        devices.append(HardwareGeometry("nail", np.concatenate(pts), elongated=True, tags=(tag,)))
    elif hw.kind == "cerclage":
        ap = unit(np.cross(sd, ml))
        for k in range(max(1, hw.count)):
            tag = f"metal:wire{k}:{s}"
            cc = T + sd * (40.0 + 22.0 * k)  # subtrochanteric
            r = ro * 1.2 + 1.0
            ring = cc + np.array([r * math.cos(t) * ml + r * 0.92 * math.sin(t) * ap
                                  for t in np.radians(np.linspace(0, 360, 25)[:-1])])
            prims += tube(ring, 0.9, m.COCR if hw.material != "titanium" else m.TITANIUM, closed=True, tag=tag)
            crimp = cc + ml * (r + 1.8)
            prims.append(cylinder(crimp - ap * 3.5, crimp + ap * 3.5, 1.9, m.COCR, tag=tag))
            devices.append(HardwareGeometry("cerclage", np.concatenate([ring, cylinder_points(crimp - ap * 3.5,
                                                                                                crimp + ap * 3.5, 1.9)]),
                                            tags=(tag,)))
    else:
        raise ValueError(f"{hw.kind} is not femoral hardware")
    return prims, devices


def build_pelvic_plate(p: PatientParams, side: Side, hw: HardwareSpec, marks: Landmarks) -> list[Primitive]:
    """A contoured reconstruction plate with screws: along the pelvic brim (anterior column,
    ``variant`` "brim") or round the posterior wall and column ("posterior")."""
    s = side.value
    sx = side_sign(side)
    H = marks.hip_centre[side]
    hp = p.hip(side)
    r_in = hp.head_radius_mm + hp.joint_space_mm
    mu = _hw_mu(hw)
    tag = f"metal:plate:{s}"
    up = np.array([0.0, 0.0, 1.0])
    lat = np.array([sx, 0.0, 0.0])
    post = np.array([0.0, 1.0, 0.0])
    if hw.variant == "posterior":
        # from the ischium above the tuberosity, round the back of the acetabulum (bulging
        # laterally) up the posterior column onto the ilium; face on to an AP beam
        tub = marks.tuberosity[side][0]
        q0 = tub + up * 14.0
        q1 = H + lat * (r_in + 10.0) + post * (0.7 * r_in)
        q2 = H + up * (r_in + 40.0) + post * (0.5 * r_in)
        t = np.linspace(0.0, 1.0, 16)[:, None]
        path = (1 - t) ** 2 * q0 + 2 * t * (1 - t) * q1 + t**2 * q2
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
        path = path[np.abs(cum - cum[-1] / 2.0) <= hw.length_mm / 2.0]
        into = [unit(-post + 0.35 * unit(H - q)) for q in path]  # forwards into the column
        thick = post
    else:
        ring = marks.brim
        th = np.degrees(np.arctan2(ring[:, 1] - ring[:, 1].mean(), ring[:, 0] * sx))
        keep = (th > -80.0) & (th < 50.0)
        order = np.argsort(th[keep])
        path = ring[keep][order] + up * 5.5
        # trim to the plate's length from the anterior (pubic) end
        seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        path = path[cum <= hw.length_mm]
        thick = unit(np.array([-sx, 0.0, 1.0]))
        into = [unit(np.array([sx * 0.5, 0.15, -1.0])) for _ in path]
    if len(path) < 2:
        return []
    prims = tube(path, (1.7, 5.5), mu, hint=thick, tag=tag)
    pts = [path + sg * 5.5 * unit(np.cross(thick, unit(path[-1] - path[0]))) for sg in (-1.0, 1.0)]
    pts += [path + thick * 1.7, path - thick * 1.7]
    n_scr = min(hw.count, len(path))
    idx = [int(v) for v in np.linspace(0, len(path) - 1, n_scr + 2)[1:-1].round()] if n_scr > 0 else []
    for k in idx:
        q0 = path[k]
        d = into[k]
        sp, spts = _screw(q0, q0 + d * 34.0, 1.75, 1.9, 0.0, mu, tag, head_r=3.6)
        prims += sp
        pts.append(spts)
    marks.hardware.setdefault(side, []).append(HardwareGeometry("pelvic_plate", np.concatenate(pts), elongated=True,
                                                                tags=(tag,)))
    return prims

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
