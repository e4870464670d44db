"""What to render: :class:`PhantomSpec` and its random sampler.

A spec fully determines an image: anatomy, implants, pose, acquisition geometry, detector
physics, processing and the seed of the quantum noise. ``sample_spec`` draws one from a numpy
``Generator``; the same generator state gives the same spec, hence the same image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from node.domain import Side, View
from node.phantom.anatomy import (
    HARDWARE_KINDS,
    CupSpec,
    FemurPose,
    HardwareSpec,
    HipParams,
    PatientParams,
)

OTHER_KINDS: tuple[str, ...] = ("chest", "knee", "hand", "abdomen")
SINGLE_HIP_VIEWS = (View.AP_HIP, View.LATERAL_HIP, View.OBLIQUE_HIP)
IMPLANT_MODES: tuple[str, ...] = ("random", "none", "right", "left", "unilateral", "bilateral")
# "classic": the generator as it always was (same random stream, same pixels for a seed);
# "broad": more implant designs and hardware, children, wider body habitus, osteopenia and
# positioning, so models trained on phantoms meet fewer surprises (see ``sample_spec``).
VARIETIES: tuple[str, ...] = ("classic", "broad")

# Broad sampler: arthroplasty design of an implanted hip
DESIGN_WEIGHTS: dict[str, float] = {
    "hemispherical": 0.30,
    "flanged": 0.10,
    "dual_mobility": 0.10,
    "large_head": 0.06,
    "cemented_pe": 0.14,
    "hemiarthroplasty": 0.20,
    "resurfacing": 0.10,
}
# … non-arthroplasty hardware on a hip without one (implants="random" only)
HARDWARE_WEIGHTS: dict[str, float] = {
    "dhs": 0.25,
    "cannulated_screws": 0.22,
    "nail": 0.25,
    "pelvic_plate": 0.14,
    "cerclage": 0.14,
}
HARDWARE_PROB = 0.3  # per hip without an arthroplasty
PELVIC_PLATE_WITH_ARTHROPLASTY = 0.06  # an old acetabular fracture plate next to a cup
CONTRALATERAL_DIFFERENT = 0.6  # two arthroplasties: the second is of another design
# broad children's AP pelvis field (see ``sample_spec``): hip centres this share of the width apart,
# at about this magnification on the detector
CHILD_HIPS_APART_FRACTION = (0.38, 0.6)
CHILD_HIP_MAGNIFICATION = 1.1
PAEDIATRIC_PROB = 0.10  # AP pelvis / AP hip draws (implants "random" or "none"); see ``child_share``
# children: share of infants and toddlers (0.3–3 years: developmental-dysplasia screening age);
# the rest are 3–12 years
INFANT_SHARE = 0.6
INFANT_AGE = 3.0  # younger: infant pelvis (oblique acetabular roof, late ossific nucleus, …)


@dataclass(frozen=True)
class ImagingParams:
    """Detector physics and image processing ("realism knobs")."""

    kvp: float = 75.0
    dose_photons_mm2: float = 30000.0  # at the detector behind the median body path
    scatter_to_primary: float = 0.5
    scatter_sigma_mm: float = 35.0
    heel: float = 0.08  # fractional intensity change from top to bottom of the field
    blur_mm: float = 0.2
    unsharp_amount: float = 0.6
    unsharp_sigma_mm: float = 5.0
    tone_contrast: float = 1.8
    drc_amount: float = 0.7  # dynamic range compression (large-kernel equalisation), 0..1
    drc_sigma_mm: float = 25.0
    gamma: float = 1.0
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # left, right, top, bottom
    collimation_rotation_deg: float = 0.0
    shutter_black: bool = False
    marker: bool = True
    marker_position: tuple[float, float] = (0.1, 0.1)  # relative (x, y) of the marker centre
    marker_height_mm: float = 14.0
    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    noise: bool = True
    trabecular: float = 0.08  # relative amplitude of the trabecular texture on bone
    trabecular_mm: float = 1.5  # its grain
    grid_lines: float = 0.0  # amplitude of stationary-grid line artefacts (0: none)

    def mirrored(self) -> ImagingParams:
        lft, r, t, b = self.collimation
        return replace(self, collimation=(r, lft, t, b), collimation_rotation_deg=-self.collimation_rotation_deg,
                       marker_position=(1.0 - self.marker_position[0], self.marker_position[1]))


@dataclass(frozen=True)
class GeometryParams:
    """Acquisition geometry and patient positioning."""

    projection: str = "point"  # point | parallel
    sid_mm: float = 1100.0
    fov_mm: float = 400.0  # detector width covered by the image columns
    table_gap_mm: float = 55.0  # posterior skin → detector (AP) / lateral skin → detector (lateral)
    centre_offset_mm: tuple[float, float] = (0.0, 0.0)  # (lateral x, cranial z) shift of the central ray
    pelvic_tilt_deg: float = 0.0  # + anterior tilt (rotation about the left-right axis)
    pelvic_rotation_deg: float = 0.0  # + rotation about the long axis (left side forwards)
    pelvic_obliquity_deg: float = 0.0  # + left hip up
    lateral_beam_deg: float = 45.0  # cross-table lateral: beam angle from the transverse axis, cranial

    def mirrored(self) -> GeometryParams:
        dx, dz = self.centre_offset_mm
        return replace(self, centre_offset_mm=(-dx, dz), pelvic_rotation_deg=-self.pelvic_rotation_deg,
                       pelvic_obliquity_deg=-self.pelvic_obliquity_deg)


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that determines one phantom image."""

    view: View
    side: Side | None  # imaged side of single-hip views
    patient: PatientParams
    implants: dict[Side, CupSpec | None] = field(default_factory=dict)
    poses: dict[Side, FemurPose] = field(default_factory=dict)
    imaging: ImagingParams = field(default_factory=ImagingParams)
    geometry: GeometryParams = field(default_factory=GeometryParams)
    rows: int = 512
    cols: int = 512
    other_kind: str | None = None  # chest | knee | hand | abdomen (View.OTHER)
    noise_seed: int = 0
    unreliable_metadata: bool = False
    hardware: dict[Side, HardwareSpec | None] = field(default_factory=dict)  # not arthroplasty
    variety: str = "classic"  # how it was sampled (VARIETIES); "broad" also poses stem boxes

    def implant(self, side: Side) -> CupSpec | None:
        return self.implants.get(side)

    def mirrored(self) -> PhantomSpec:
        """The same patient and acquisition with left and right exchanged: the image is the
        mirror image (exactly, with the marker and noise off)."""
        p = self.patient
        gas = tuple((-x, y, z, a, b, c) for (x, y, z, a, b, c) in p.gas)

        def mirror_cup(c: CupSpec | None) -> CupSpec | None:
            if c is None:
                return None
            dx, dy, dz = c.centre_offset_mm
            return replace(c, centre_offset_mm=(-dx, dy, dz))

        return replace(
            self,
            side=None if self.side is None else self.side.other,
            patient=replace(p, right=p.left, left=p.right, gas=gas),
            implants={s.other: mirror_cup(c) for s, c in self.implants.items()},
            hardware={s.other: h for s, h in self.hardware.items()},
            poses={s.other: v for s, v in self.poses.items()},
            imaging=self.imaging.mirrored(),
            geometry=self.geometry.mirrored(),
        )

    def quiet(self) -> PhantomSpec:
        """No noise, no marker, no heel effect, no grid lines, no bone texture: for exact tests."""
        return replace(self, imaging=replace(self.imaging, noise=False, marker=False, heel=0.0, grid_lines=0.0,
                                                   trabecular=0.0))

    def parallel(self) -> PhantomSpec:
        return replace(self, geometry=replace(self.geometry, projection="parallel"))


# ----------------------------------------------------------------------------------------------
# Sampling


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def sample_hip(rng: np.random.Generator, sex: str, dysplasia: bool, cam: bool, oa: bool,
               iss: bool) -> HipParams:
    female = sex == "F"
    rh = _u(rng, 21.0, 24.0) if female else _u(rng, 23.5, 27.0)
    if dysplasia:
        lce = _u(rng, 4.0, 17.0)
        medial = _u(rng, 30.0, 44.0)
        incl = _u(rng, 56.0, 66.0)
    else:
        lce = _u(rng, 25.0, 40.0)
        medial = lce + _u(rng, 0.0, 10.0)
        incl = _u(rng, 44.0, 54.0)
    version = _u(rng, -2.0, 8.0) if iss else _u(rng, 12.0, 24.0)
    return HipParams(
        head_radius_mm=rh,
        joint_space_mm=_u(rng, 0.6, 1.8) if oa else _u(rng, 3.5, 5.0),
        lce_deg=lce,
        sourcil_medial_deg=medial,
        socket_inclination_deg=incl,
        socket_version_deg=version,
        neck_shaft_deg=_u(rng, 124.0, 138.0) if not dysplasia else _u(rng, 132.0, 142.0),
        femoral_anteversion_deg=_u(rng, 5.0, 20.0),
        femoral_offset_mm=_u(rng, 36.0, 44.0) if female else _u(rng, 40.0, 49.0),
        cam_mm=_u(rng, 6.5, 11.0) if cam else 0.0,
        osteophytes=oa and bool(rng.random() < 0.8),
        sclerosis=oa and bool(rng.random() < 0.6),
        spine_length_mm=_u(rng, 25.0, 32.0) if iss else _u(rng, 2.0, 6.0),
        shaft_radius_mm=_u(rng, 12.5, 14.0) if female else _u(rng, 13.5, 15.5),
    )


def sample_patient(rng: np.random.Generator, sex: str | None = None,
                   morphology: dict[Side, dict[str, bool]] | None = None, variety: str = "classic",
                   paediatric: bool = False, age_years: float | None = None) -> PatientParams:
    """A patient. "classic" draws exactly what it always drew; "broad" (or a child) draws more
    after that: body habitus from thin to obese, osteopenia, and for a child (0.3–12 years,
    ``age_years`` pins it) age, skeletal scale, child hip morphology (see
    :func:`_broaden_patient`)."""
    sex = sex or ("F" if rng.random() < 0.5 else "M")
    female = sex == "F"
    size = float(np.clip(rng.normal(1.0, 0.12), 0.75, 1.35))
    hips = {}
    for side in (Side.RIGHT, Side.LEFT):
        flags = (morphology or {}).get(side)
        if flags is None:
            flags = {
                "dysplasia": bool(rng.random() < 0.15),
                "cam_deformity": bool(rng.random() < 0.2),
                "other_abnormality": bool(rng.random() < 0.2),
                "ischial_spine_sign": bool(rng.random() < 0.2),
            }
        hips[side] = sample_hip(rng, sex, flags.get("dysplasia", False), flags.get("cam_deformity", False),
                                flags.get("other_abnormality", False), flags.get("ischial_spine_sign", False))
    # the ischial spine sign is a pelvic (bilateral) finding most of the time
    n_gas = int(rng.integers(2, 12))
    gas = tuple(
        (
            _u(rng, -110, 110),
            _u(rng, -70, 30),
            _u(rng, 10, 190),
            _u(rng, 6, 28),
            _u(rng, 5, 18),
            _u(rng, 6, 24),
        )
        for _ in range(n_gas)
    )
    hw = (_u(rng, 88.0, 96.0) if female else _u(rng, 83.0, 91.0))
    patient = PatientParams(
        sex=sex,
        hip_half_width_mm=hw,
        inlet_half_width_mm=_u(rng, 63.0, 70.0) if female else _u(rng, 56.0, 62.0),
        inlet_half_depth_mm=_u(rng, 54.0, 60.0) if female else _u(rng, 50.0, 56.0),
        inlet_tilt_deg=_u(rng, 30.0, 42.0),
        wing_flare_deg=_u(rng, 20.0, 30.0) if female else _u(rng, 10.0, 20.0),
        wing_height_mm=_u(rng, 62.0, 70.0) if female else _u(rng, 68.0, 78.0),
        subpubic_half_width_mm=_u(rng, 18.0, 26.0) if female else _u(rng, 8.0, 14.0),
        body_half_width_mm=(170.0 if female else 165.0) * size,
        body_half_depth_mm=115.0 * size,
        fat_mm=(35.0 if female else 22.0) * size**2,
        thigh_radius_mm=(88.0 if female else 82.0) * size,
        right=hips[Side.RIGHT],
        left=hips[Side.LEFT],
        gas=gas,
    )
    if variety == "classic" and not paediatric:
        return patient
    return _broaden_patient(rng, patient, paediatric, age_years)


def _broaden_patient(rng: np.random.Generator, p: PatientParams, paediatric: bool,
                     age_years: float | None = None) -> PatientParams:
    """Wider habitus (size 0.62–1.7 of the standard trunk, subcutaneous fat 0.45–1.7 × what that
    size would carry), osteopenia (a quarter of adults: bone attenuation × 0.55–0.85), and for a
    child: age (``INFANT_SHARE`` 0.3–3 years, the rest 3–12), skeletal scale 0.3–0.8 with age,
    valgus and anteverted necks, a wide cartilage joint space, no cam or osteoarthritis; under
    five an oblique acetabular roof (index 12–30°, 30–42° in a dysplastic hip), and for infants
    and toddlers (see :func:`_infant`) a late femoral head nucleus, a short neck, flared iliac
    wings, more lumbar spine, thick soft tissue and much bowel gas."""
    female = p.sex == "F"
    size = float(np.clip(np.exp(rng.normal(0.0, 0.2)), 0.62, 1.7))
    fat_f = _u(rng, 0.45, 1.7)
    density = _u(rng, 0.55, 0.85) if rng.random() < 0.25 else _u(rng, 0.92, 1.08)
    p = replace(
        p,
        body_half_width_mm=(170.0 if female else 165.0) * size,
        body_half_depth_mm=115.0 * size,
        fat_mm=float(np.clip((35.0 if female else 22.0) * size**2 * fat_f, 5.0, 120.0)),
        thigh_radius_mm=(88.0 if female else 82.0) * size,
        bone_density=density,
    )
    if not paediatric:
        return p
    if age_years is not None:
        if not 0.1 <= age_years <= 18.0:
            raise ValueError(f"a child's age must be 0.1–18 years, got {age_years}")
        age = float(age_years)
    else:
        age = _u(rng, 0.3, INFANT_AGE) if rng.random() < INFANT_SHARE else _u(rng, INFANT_AGE, 12.0)
    if age < 2.0:  # about a third of the adult pelvis at 4 months, 0.45 at two years
        scale = float(np.clip(0.33 + 0.06 * age + rng.normal(0.0, 0.02), 0.3, 0.5))
    else:
        scale = float(np.clip(0.45 + 0.035 * (age - 2.0) + rng.normal(0.0, 0.03), 0.45, 0.8))

    def child_hip(h: HipParams) -> HipParams:
        dysplastic = h.lce_deg < 20.0  # as sample_hip drew it
        c = replace(h, neck_shaft_deg=_u(rng, 135.0, 150.0), femoral_anteversion_deg=_u(rng, 15.0, 35.0),
                    joint_space_mm=_u(rng, 4.0, 6.0), cam_mm=0.0, osteophytes=False, sclerosis=False)
        if age < 5.0:
            base = 27.0 - 3.0 * age
            ai = base + _u(rng, 8.0, 16.0) if dysplastic else base + _u(rng, -5.0, 4.0)
            onset = _u(rng, 0.4, 0.6) + (_u(rng, 0.1, 0.35) if dysplastic else 0.0)
            c = replace(c, acetabular_index_deg=float(np.clip(ai, 10.0, 42.0)), nucleus_onset_years=onset)
        return c

    p = replace(p, right=child_hip(p.right), left=child_hip(p.left), bone_density=_u(rng, 0.8, 1.0),
                fat_mm=p.fat_mm * _u(rng, 0.4, 1.0), paediatric=True, age_years=age)
    if age < INFANT_AGE:
        p = _infant(rng, p)
    return p.scaled(scale)


def _infant(rng: np.random.Generator, p: PatientParams) -> PatientParams:
    """Proportions of an infant or toddler on the adult-size model before it is scaled: small
    hips (head × 0.85, short neck, slender shaft) under large flared iliac wings, five lumbar
    levels in the field, a relatively wide body with thick subcutaneous fat, and plenty of
    bowel gas (also over the pelvis)."""
    def hip(h: HipParams) -> HipParams:
        return replace(h, head_radius_mm=h.head_radius_mm * 0.85, femoral_offset_mm=h.femoral_offset_mm * 0.8,
                       shaft_radius_mm=h.shaft_radius_mm * 0.85, neck_shaft_deg=_u(rng, 140.0, 155.0),
                       femoral_anteversion_deg=_u(rng, 25.0, 40.0))

    extra = tuple(
        (_u(rng, -115, 115), _u(rng, -75, 25), _u(rng, -45, 200), _u(rng, 8, 30), _u(rng, 6, 18), _u(rng, 8, 26))
        for _ in range(int(rng.integers(8, 22)))
    )
    return replace(
        p, right=hip(p.right), left=hip(p.left), wing_flare_deg=_u(rng, 28.0, 40.0),
        wing_height_mm=p.wing_height_mm * _u(rng, 1.0, 1.12), body_half_width_mm=p.body_half_width_mm * 1.12,
        body_half_depth_mm=p.body_half_depth_mm * 1.05, fat_mm=_u(rng, 25.0, 45.0),
        thigh_radius_mm=p.thigh_radius_mm * 1.05, gas=p.gas + extra, lumbar_levels=5,
    )


def sample_cup(rng: np.random.Generator, patient: PatientParams, side: Side,
               inclination_deg: float | None = None, anteversion_deg: float | None = None) -> CupSpec:
    hp = patient.hip(side)
    outer = round(hp.head_radius_mm + _u(rng, 1.5, 4.0))
    head = float(rng.choice([14.0, 16.0, 18.0] if outer >= 26 else [14.0, 16.0]))
    return CupSpec(
        inclination_deg=float(inclination_deg if inclination_deg is not None else np.clip(rng.normal(43, 8), 22, 65)),
        anteversion_deg=float(anteversion_deg if anteversion_deg is not None else np.clip(rng.normal(18, 8), -5, 40)),
        outer_radius_mm=float(outer),
        shell_mm=_u(rng, 3.0, 4.5),
        head_radius_mm=head,
        head_material="cocr" if rng.random() < 0.7 else "ceramic",
        liner="pe" if rng.random() < 0.85 else "ceramic",
        n_screws=int(rng.choice([0, 0, 1, 2, 3])),
        stem_length_mm=_u(rng, 115.0, 170.0),
        stem_material="titanium" if rng.random() < 0.6 else "cocr",
        cemented=bool(rng.random() < 0.3),
        centre_offset_mm=(_u(rng, -4, 3) * (-1 if side is Side.RIGHT else 1), _u(rng, -2, 2), _u(rng, -2, 4)),
        wear_mm=_u(rng, 0.0, 2.5) if rng.random() < 0.3 else 0.0,
        cerclage=int(rng.choice([0, 0, 0, 0, 1, 2])),
        neck_length_mm=_u(rng, 34.0, 42.0),
    )


def _pick(rng: np.random.Generator, weights: dict[str, float], exclude: tuple[str, ...] = ()) -> str:
    keys = [k for k in weights if k not in exclude]
    w = np.array([weights[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _broad_stem(rng: np.random.Generator, design: str) -> dict[str, object]:
    """Stem length (short 85–100 mm 20 %, standard 120–150 mm 60 %, long revision 200–250 mm
    20 %), shape, fixation and alloy."""
    r = rng.random()
    length = _u(rng, 85.0, 100.0) if r < 0.2 else (_u(rng, 120.0, 150.0) if r < 0.8 else _u(rng, 200.0, 250.0))
    if length > 180.0:
        shape = _pick(rng, {"cylindrical": 0.5, "tapered": 0.35, "wedge": 0.15})
    else:
        shape = _pick(rng, {"tapered": 0.3, "wedge": 0.2, "anatomic": 0.15, "cylindrical": 0.15, "collared": 0.2})
    p_cem = {"cemented_pe": 0.85, "hemiarthroplasty": 0.6}.get(design, 0.3)
    cemented = bool(rng.random() < p_cem)
    if cemented:
        material = "cocr" if rng.random() < 0.6 else "steel"
    else:
        material = "titanium" if rng.random() < 0.75 else "cocr"
    return {"stem_length_mm": length, "stem_shape": shape, "cemented": cemented, "stem_material": material}


HEAD_RADII_MM: tuple[float, ...] = (11.0, 14.0, 16.0, 18.0, 20.0)  # 22, 28, 32, 36, 40 mm heads


def sample_arthroplasty(rng: np.random.Generator, patient: PatientParams, side: Side, variety: str = "classic",
                        exclude: tuple[str, ...] = ()) -> CupSpec:
    """An arthroplasty: the classic THA (exactly :func:`sample_cup`), or under "broad" any of
    ``ARTHROPLASTY_DESIGNS`` (``DESIGN_WEIGHTS``, minus ``exclude``) with its own sizes,
    materials, stems, screws, holes and cerclage."""
    if variety == "classic":
        return sample_cup(rng, patient, side)
    design = _pick(rng, DESIGN_WEIGHTS, exclude)
    hp = patient.hip(side)
    Rh = hp.head_radius_mm
    kw: dict[str, object] = {
        "design": design,
        "inclination_deg": float(np.clip(rng.normal(43, 9), 20, 70)),
        "anteversion_deg": float(np.clip(rng.normal(17, 9), -10, 45)),
        "centre_offset_mm": (_u(rng, -4, 3) * (-1 if side is Side.RIGHT else 1), _u(rng, -2, 2), _u(rng, -2, 4)),
        "neck_length_mm": _u(rng, 34.0, 42.0),
        "n_screws": 0,
        "cerclage": int(rng.choice([0, 1, 2, 3], p=[0.65, 0.15, 0.12, 0.08])),
        "head_material": "cocr" if rng.random() < 0.7 else "ceramic",
    }
    kw.update(_broad_stem(rng, design))
    if design in ("hemispherical", "flanged"):
        outer = float(round(Rh + _u(rng, 1.5, 4.0)))
        shell_mm = _u(rng, 3.0, 4.5)
        liner = _pick(rng, {"pe": 0.7, "ceramic": 0.15, "metal": 0.15})
        room = outer - shell_mm - {"pe": 4.0, "ceramic": 3.5, "metal": 1.5}[liner]
        heads = [r for r in HEAD_RADII_MM if r <= room] or [HEAD_RADII_MM[0]]
        kw.update(outer_radius_mm=outer, shell_mm=shell_mm, liner=liner, head_radius_mm=float(rng.choice(heads)),
                  shell_material="titanium" if rng.random() < 0.85 else "cocr",
                  n_screws=int(rng.choice([0, 0, 1, 2, 3])), screw_holes=int(rng.choice([0, 0, 1, 2, 3])),
                  wear_mm=_u(rng, 0.0, 2.5) if liner == "pe" and rng.random() < 0.3 else 0.0)
        if design == "flanged":
            kw.update(flange_mm=_u(rng, 3.0, 7.0), flange_arc_deg=360.0 if rng.random() < 0.5 else 180.0)
    elif design == "dual_mobility":
        outer = float(round(Rh + _u(rng, 1.5, 3.5)))
        kw.update(outer_radius_mm=outer, shell_mm=_u(rng, 2.0, 3.0), shell_material="cocr", liner="pe",
                  head_radius_mm=11.0 if rng.random() < 0.5 else 14.0, head_material="cocr",
                  screw_holes=int(rng.choice([0, 0, 1, 2])))
    elif design == "large_head":
        outer = float(round(Rh + _u(rng, 2.0, 4.0)))
        shell_mm = _u(rng, 3.0, 4.5)
        liner = "none" if rng.random() < 0.7 else "metal"
        head = outer - shell_mm - (0.2 if liner == "none" else 1.7)
        kw.update(outer_radius_mm=outer, shell_mm=shell_mm, liner=liner, head_radius_mm=head, head_material="cocr",
                  shell_material="cocr" if rng.random() < 0.7 else "titanium", n_screws=int(rng.choice([0, 0, 1])))
    elif design == "cemented_pe":
        kw.update(outer_radius_mm=float(round(Rh + _u(rng, -0.5, 2.0))), mantle_mm=_u(rng, 2.0, 4.0), liner="pe",
                  head_radius_mm=11.0 if rng.random() < 0.5 else 14.0, head_material="cocr",
                  marker_wire="ring" if rng.random() < 0.6 else "arc",
                  wear_mm=_u(rng, 0.0, 2.5) if rng.random() < 0.3 else 0.0)
    elif design == "hemiarthroplasty":
        kw.update(outer_radius_mm=Rh + _u(rng, -0.5, 1.0), bipolar=bool(rng.random() < 0.5),
                  head_radius_mm=11.0 if rng.random() < 0.5 else 14.0,
                  centre_offset_mm=(_u(rng, -1, 1), _u(rng, -1, 1), _u(rng, -1.5, 0.5)))
    elif design == "resurfacing":
        shell_mm = _u(rng, 3.0, 4.0)
        cap = Rh + _u(rng, 0.5, 1.5)
        kw.update(outer_radius_mm=cap + 0.15 + shell_mm, shell_mm=shell_mm, shell_material="cocr", liner="none",
                  head_radius_mm=cap, head_material="cocr", centre_offset_mm=(0.0, 0.0, 0.0),
                  peg_mm=_u(rng, 30.0, 40.0), cerclage=0)
    return CupSpec(**kw)  # type: ignore[arg-type]


def sample_hardware(rng: np.random.Generator, kind: str) -> HardwareSpec:
    """One device of ``kind`` with its own size, screw count and alloy."""
    material = "titanium" if rng.random() < 0.5 else "steel"
    if kind == "dhs":
        return HardwareSpec(kind, count=int(rng.integers(2, 6)), length_mm=_u(rng, 70.0, 140.0), material=material)
    if kind == "cannulated_screws":
        return HardwareSpec(kind, count=int(rng.choice([2, 3, 3])), material=material)
    if kind == "nail":
        long_nail = rng.random() < 0.35
        return HardwareSpec(kind, count=int(rng.integers(1, 3)),
                            length_mm=_u(rng, 300.0, 420.0) if long_nail else _u(rng, 170.0, 240.0),
                            material="titanium" if rng.random() < 0.7 else "steel",
                            variant="long" if long_nail else "short")
    if kind == "pelvic_plate":
        return HardwareSpec(kind, count=int(rng.integers(3, 8)), length_mm=_u(rng, 70.0, 140.0), material=material,
                            variant="brim" if rng.random() < 0.6 else "posterior")
    if kind == "cerclage":
        return HardwareSpec(kind, count=int(rng.integers(1, 4)), material="steel")
    raise ValueError(f"hardware kind must be one of {HARDWARE_KINDS}, got {kind!r}")


def sample_implants(rng: np.random.Generator, patient: PatientParams,
                    implants: str | Sequence[Side | str] = "random",
                    variety: str = "classic") -> tuple[dict[Side, CupSpec | None], dict[Side, HardwareSpec | None]]:
    """Arthroplasties (and, under "broad" with ``implants="random"``, other hardware) for both
    sides. "classic" draws exactly what ``sample_spec`` always drew.

    Broad: the sides come from the same modes; each implanted side gets a design from
    ``DESIGN_WEIGHTS`` (a second one differs from the first with ``CONTRALATERAL_DIFFERENT``);
    each side without one gets hardware with ``HARDWARE_PROB`` (never the same kind as the other
    side's), a side with a cup a pelvic plate with ``PELVIC_PLATE_WITH_ARTHROPLASTY``."""
    sides = implant_sides(rng, implants) if isinstance(implants, str) else tuple(Side(s) for s in implants)
    if variety == "classic":
        return {s: (sample_cup(rng, patient, s) if s in sides else None) for s in (Side.RIGHT, Side.LEFT)}, {}
    imp: dict[Side, CupSpec | None] = {}
    for s in (Side.RIGHT, Side.LEFT):
        if s not in sides:
            imp[s] = None
            continue
        other = imp.get(s.other)
        exclude = (other.design,) if other is not None and rng.random() < CONTRALATERAL_DIFFERENT else ()
        imp[s] = sample_arthroplasty(rng, patient, s, variety, exclude)
    hw: dict[Side, HardwareSpec | None] = {Side.RIGHT: None, Side.LEFT: None}
    if implants == "random":
        for s in (Side.RIGHT, Side.LEFT):
            cup = imp[s]
            if cup is not None:
                other_hw = hw[s.other]
                if (cup.has_cup and (other_hw is None or other_hw.kind != "pelvic_plate")
                        and rng.random() < PELVIC_PLATE_WITH_ARTHROPLASTY):
                    hw[s] = sample_hardware(rng, "pelvic_plate")
                continue
            if rng.random() < HARDWARE_PROB:
                taken = hw[s.other]
                hw[s] = sample_hardware(rng, _pick(rng, HARDWARE_WEIGHTS, (taken.kind,) if taken else ()))
    return imp, hw


def implant_sides(rng: np.random.Generator, mode: str) -> tuple[Side, ...]:
    if mode == "none":
        return ()
    if mode == "right":
        return (Side.RIGHT,)
    if mode == "left":
        return (Side.LEFT,)
    if mode == "bilateral":
        return (Side.RIGHT, Side.LEFT)
    if mode == "unilateral":
        return (Side.RIGHT,) if rng.random() < 0.5 else (Side.LEFT,)
    if mode == "random":
        r = rng.random()
        if r < 0.4:
            return ()
        if r < 0.65:
            return (Side.RIGHT,)
        if r < 0.9:
            return (Side.LEFT,)
        return (Side.RIGHT, Side.LEFT)
    raise ValueError(f"implants must be one of {IMPLANT_MODES}, got {mode!r}")


VIEW_WEIGHTS: dict[View, float] = {
    View.AP_PELVIS: 0.34,
    View.AP_HIP: 0.2,
    View.LATERAL_HIP: 0.16,
    View.OBLIQUE_HIP: 0.14,
    View.OTHER: 0.16,
}


def sample_imaging(rng: np.random.Generator, view: View, side: Side | None) -> ImagingParams:
    lft, r, t, b = (float(v) for v in rng.uniform(0.0, 0.08, 4) * (rng.random() < 0.6))
    if view in SINGLE_HIP_VIEWS:
        lft, r, t, b = (float(v) for v in rng.uniform(0.0, 0.15, 4))
    # marker: near an upper (or lower) corner on the patient side it names
    mx = _u(rng, 0.06, 0.2)
    my = _u(rng, 0.06, 0.2) if rng.random() < 0.75 else _u(rng, 0.8, 0.94)
    if view in (View.AP_PELVIS,):
        marker_side = Side.RIGHT if rng.random() < 0.5 else Side.LEFT
        x = mx if marker_side is Side.RIGHT else 1.0 - mx
    elif view in (View.AP_HIP, View.OBLIQUE_HIP):
        x = mx if side is Side.RIGHT else 1.0 - mx  # lateral side of the image
    else:
        x = mx if rng.random() < 0.5 else 1.0 - mx
    x = float(np.clip(x, lft + 0.05, 1 - r - 0.05))
    my = float(np.clip(my, t + 0.05, 1 - b - 0.05))
    return ImagingParams(
        kvp=_u(rng, 65.0, 90.0),
        dose_photons_mm2=float(np.exp(rng.uniform(math.log(8000), math.log(80000)))),
        scatter_to_primary=_u(rng, 0.2, 1.2),
        scatter_sigma_mm=_u(rng, 25.0, 50.0),
        heel=_u(rng, -0.15, 0.15),
        blur_mm=_u(rng, 0.1, 0.35),
        unsharp_amount=_u(rng, 0.2, 1.2),
        unsharp_sigma_mm=_u(rng, 3.0, 10.0),
        tone_contrast=_u(rng, 1.0, 3.0),
        drc_amount=_u(rng, 0.6, 0.9),
        drc_sigma_mm=_u(rng, 20.0, 50.0),
        gamma=_u(rng, 0.8, 1.25),
        collimation=(lft, r, t, b),
        collimation_rotation_deg=_u(rng, -3.0, 3.0) if rng.random() < 0.3 else 0.0,
        shutter_black=bool(rng.random() < 0.25),
        marker=bool(rng.random() < 0.92),
        marker_position=(x, my),
        marker_height_mm=_u(rng, 10.0, 18.0),
        bits_stored=int(rng.choice([10, 12, 12, 14, 15, 16])),
        photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
        noise=True,
        trabecular=_u(rng, 0.04, 0.12),
        trabecular_mm=_u(rng, 1.0, 2.0),
        grid_lines=_u(rng, 0.002, 0.01) if rng.random() < 0.15 else 0.0,
    )


def sample_geometry(rng: np.random.Generator, view: View) -> GeometryParams:
    fov = {
        View.AP_PELVIS: (400.0, 440.0),
        View.AP_HIP: (220.0, 290.0),
        View.LATERAL_HIP: (220.0, 280.0),
        View.OBLIQUE_HIP: (230.0, 300.0),
        View.OTHER: (240.0, 430.0),
    }[view]
    return GeometryParams(
        projection="point",
        sid_mm=_u(rng, 1000.0, 1150.0),
        fov_mm=_u(rng, *fov),
        table_gap_mm=_u(rng, 40.0, 80.0),
        centre_offset_mm=(float(rng.normal(0, 8)), float(rng.normal(0, 10))),
        pelvic_tilt_deg=float(np.clip(rng.normal(0, 5), -12, 12)),
        pelvic_rotation_deg=float(np.clip(rng.normal(0, 3), -8, 8)),
        pelvic_obliquity_deg=float(np.clip(rng.normal(0, 1.5), -4, 4)),
        lateral_beam_deg=_u(rng, 38.0, 52.0),
    )


def sample_spec(
    rng: np.random.Generator | int,
    view: View | str | None = None,
    side: Side | str | None = None,
    implants: str | Sequence[Side | str] | dict[Side, CupSpec | None] = "random",
    rows: int = 512,
    cols: int | None = None,
    sex: str | None = None,
    morphology: dict[Side, dict[str, bool]] | None = None,
    other_kind: str | None = None,
    views: Sequence[View] | None = None,
    unreliable_fraction: float = 0.0,
    patient: PatientParams | None = None,
    pixel_mm: float | None = None,
    variety: str = "classic",
    paediatric: bool | None = None,
    hardware: dict[Side, HardwareSpec | None] | None = None,
    child_share: float | None = None,
    age_years: float | None = None,
) -> PhantomSpec:
    """Draw a random spec; every argument given pins that aspect.

    ``implants``: a mode (``random``, ``none``, ``right``, ``left``, ``unilateral``,
    ``bilateral``), a sequence of sides, or an explicit ``{Side: CupSpec | None}``.
    ``patient`` reuses an anatomy (several views of one patient). ``rows=0`` asks for the
    detector's native matrix at ``pixel_mm`` (default: drawn from 0.139–0.2 mm).

    ``variety="classic"`` (default) draws exactly the stream it always drew: same seed, same
    pixels. ``"broad"`` adds (see ``DESIGN_WEIGHTS``, ``HARDWARE_WEIGHTS`` and the other
    module constants): arthroplasty designs beyond the hemispherical THA, stems of every length
    and shape, non-arthroplasty hardware (``implants="random"`` only), children
    (``PAEDIATRIC_PROB`` of AP pelvis / AP hip draws with ``implants`` "random" or "none"),
    thin-to-obese habitus, osteopenia, pelvic tilt ±20° and rotation ±15°.
    ``paediatric`` pins a child (True) or an adult (False) whatever the variety; a child gets
    no implants. ``hardware`` pins the non-arthroplasty hardware ``{Side: HardwareSpec | None}``.

    ``child_share`` (broad only; None: ``PAEDIATRIC_PROB``) is the probability that an AP pelvis
    / AP hip draw open to a child (``implants`` "random" or "none", no pinned hardware) is a
    child; ``INFANT_SHARE`` of children are infants and toddlers (0.3–3 years). ``age_years``
    pins a child's age (and makes the draw a child unless ``paediatric=False``)."""
    if variety not in VARIETIES:
        raise ValueError(f"variety must be one of {VARIETIES}, got {variety!r}")
    broad = variety == "broad"
    if child_share is not None and not (broad and 0.0 <= child_share <= 1.0):
        raise ValueError(f"child_share must be in [0, 1] with variety='broad', got {child_share!r} ({variety})")
    if age_years is not None:
        if paediatric is False:
            raise ValueError("age_years is for children (paediatric=False given)")
        paediatric = True
    share = PAEDIATRIC_PROB if child_share is None else child_share
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if view is None:
        pool = list(views) if views else list(VIEW_WEIGHTS)
        w = np.array([VIEW_WEIGHTS[v] for v in pool])
        view = pool[int(rng.choice(len(pool), p=w / w.sum()))]
    view = View(view)
    if view in SINGLE_HIP_VIEWS:
        side = Side(side) if side is not None else (Side.RIGHT if rng.random() < 0.5 else Side.LEFT)
    else:
        side = None
    if patient is None:
        child = bool(paediatric) if paediatric is not None else (
            broad and view in (View.AP_PELVIS, View.AP_HIP) and isinstance(implants, str)
            and implants in ("random", "none") and not any((hardware or {}).values())
            and bool(rng.random() < share))
        patient = sample_patient(rng, sex, morphology, variety, paediatric=child, age_years=age_years)
    hw: dict[Side, HardwareSpec | None] = {}
    if isinstance(implants, dict):
        imp = {s: implants.get(s) for s in (Side.RIGHT, Side.LEFT)}
    elif patient.paediatric:
        if implants not in ("random", "none"):
            raise ValueError(f"the phantom's children have no implants (implants={implants!r})")
        imp = {Side.RIGHT: None, Side.LEFT: None}
    else:
        imp, hw = sample_implants(rng, patient, implants, variety)
    if hardware is not None:
        hw = {s: hardware.get(s) for s in (Side.RIGHT, Side.LEFT)}
    hw = {s: h for s, h in hw.items() if h is not None}
    if patient.paediatric and (any(c is not None for c in imp.values()) or hw):
        raise ValueError("the phantom's children have no implants or hardware")
    # an implanted hip has no native morphology to speak of
    poses = {Side.RIGHT: FemurPose(), Side.LEFT: FemurPose()}
    for s in (Side.RIGHT, Side.LEFT):
        poses[s] = FemurPose(external_rotation_deg=_u(rng, -15.0, 20.0))
    infant = patient.paediatric and (patient.age_years or 0.0) < INFANT_AGE
    if infant and rng.random() < 0.4:  # a wriggling infant: thighs often abducted and flexed
        for s in (Side.RIGHT, Side.LEFT):
            poses[s] = FemurPose(flexion_deg=_u(rng, 0.0, 15.0), abduction_deg=_u(rng, 0.0, 12.0),
                                 external_rotation_deg=poses[s].external_rotation_deg)
    if view is View.OBLIQUE_HIP and side is not None:
        poses[side] = FemurPose(flexion_deg=_u(rng, 30.0, 50.0), abduction_deg=_u(rng, 35.0, 55.0),
                                external_rotation_deg=_u(rng, 0.0, 15.0))
    if view is View.LATERAL_HIP and side is not None:
        poses[side.other] = FemurPose(flexion_deg=_u(rng, 75.0, 90.0), abduction_deg=_u(rng, 15.0, 30.0))
        poses[side] = FemurPose(external_rotation_deg=_u(rng, -10.0, 15.0))
    kind = None
    if view is View.OTHER:
        kind = other_kind or OTHER_KINDS[int(rng.integers(len(OTHER_KINDS)))]
    imaging = sample_imaging(rng, view, side)
    geometry = sample_geometry(rng, view)
    if broad:
        geometry = replace(geometry, pelvic_tilt_deg=float(np.clip(rng.normal(0, 8), -20, 20)),
                           pelvic_rotation_deg=float(np.clip(rng.normal(0, 5), -15, 15)))
    if patient.paediatric and view is not View.OTHER:
        # collimated to the child: the field shrinks with the skeleton; a thin body scatters less
        # (an infant's film reaches from the lumbar spine to mid-femur)
        grow = 1.1 + 0.3 * float(np.clip((INFANT_AGE - (patient.age_years or 0.0)) / INFANT_AGE, 0.0, 1.0))
        geometry = replace(geometry, fov_mm=geometry.fov_mm * min(1.0, patient.scale * grow + 0.05))
        if broad and view is View.AP_PELVIS:
            # A child's AP pelvis is collimated to the pelvis (gonad dose) and centred on the hips:
            # the hip centres lie 38-60 % of the film's width apart (paediatric radiography
            # texts: field from the iliac crests to the proximal femora), where the field above
            # left them 30-35 % apart with the whole lumbar spine in view. Version 5 of the
            # generator; the adult field (hips ~46 % apart) is unchanged.
            hips_apart = 2.0 * patient.hip_half_width_mm * CHILD_HIP_MAGNIFICATION
            dx, _ = geometry.centre_offset_mm
            geometry = replace(geometry, fov_mm=hips_apart / _u(rng, *CHILD_HIPS_APART_FRACTION),
                               centre_offset_mm=(dx * patient.scale, _u(rng, -27.0, -10.0)))  # ray 0-15 mm below the hips
        imaging = replace(imaging, scatter_to_primary=imaging.scatter_to_primary * patient.scale)
        if infant:  # low kVp for a small body: more bone contrast
            imaging = replace(imaging, kvp=_u(rng, 55.0, 68.0))
    if kind == "chest":
        geometry = replace(geometry, sid_mm=_u(rng, 1500.0, 1830.0))
    if rows <= 0:
        px = pixel_mm or float(rng.choice([0.139, 0.143, 0.148, 0.15, 0.16, 0.175, 0.2]))
        aspect = 1.0 if view is View.OTHER else (0.82 if view is View.AP_PELVIS else 1.2)
        cols = round(geometry.fov_mm / px)
        rows = round(cols * aspect)
    unreliable = bool(rng.random() < unreliable_fraction)
    noise_seed = int(rng.integers(0, 2**31 - 1))
    return PhantomSpec(
        view=view,
        side=side,
        patient=patient,
        implants=imp,
        poses=poses,
        imaging=imaging,
        geometry=geometry,
        rows=rows,
        cols=cols or rows,
        other_kind=kind,
        noise_seed=noise_seed,
        unreliable_metadata=unreliable,
        hardware=hw,
        variety=variety,
    )
