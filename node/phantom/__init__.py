"""Synthetic hip radiographs with exact ground truth (``hipnode phantom``).

Quick start (in memory, no DICOM)::

    from node.phantom import generate, render, sample_spec
    from node.domain import Side, View

    for img in generate(100, seed=7, size=512):        # random views/implants/morphology
        x = img.pixels            # (rows, cols) uint16, img.truth.bits_stored bits,
                                  # img.truth.photometric MONOCHROME1 (bone dark) or MONOCHROME2
        x01 = img.normalized()    # float32 in [0, 1], bone bright (MONOCHROME1 already inverted)
        gt = img.truth            # GroundTruth: see below; gt.to_dict() is JSON-ready

    # pin what you need, leave the rest random (``seed`` may be an int or numpy Generator)
    spec = sample_spec(3, view=View.AP_PELVIS, implants="bilateral", rows=1024)
    img = render(spec)
    spec = sample_spec(4, view="ap_hip", side="L", implants={Side.LEFT: CupSpec(40, 15)})
    img = render(spec.quiet().parallel())   # no noise/marker, parallel rays: for exact tests

``generate(count, seed, views=..., implants=..., size=..., unreliable_fraction=...)`` yields
``PhantomImage``; image *i* depends only on ``(seed, i)`` so any subset or any number of worker
processes reproduces the same images bit for bit (``render_index(seed, i, **kw)`` renders one).

Views (``node.domain.View``): ``AP_PELVIS`` (both hips), ``AP_HIP`` (collimated to one hip),
``LATERAL_HIP`` (cross-table lateral, horizontal beam at ~45° to the long axis, anterior up),
``OBLIQUE_HIP`` (frog-leg: hip flexed and abducted, AP beam) and ``OTHER`` (``chest``, ``knee``,
``hand``, ``abdomen``; ``spec.other_kind``). Implant modes: ``random``, ``none``, ``right``,
``left``, ``unilateral``, ``bilateral`` — or a list of sides, or ``{Side: CupSpec | None}``.
``sample_spec(..., morphology={Side.RIGHT: {"dysplasia": True, "cam_deformity": False,
"ischial_spine_sign": True, "other_abnormality": False}})`` pins morphology per side.

Ground truth (``GroundTruth``), pixel coordinates of the stored image (x column, y row, origin
at the top-left pixel centre; on AP-like views the patient's right is on the image left):

- ``view``, ``imaged_sides`` (tuple of ``Side``: both for AP pelvis, one for single-hip views,
  none for OTHER), ``sex`` ("M"/"F"), ``other_kind``.
- ``hips[Side]`` → ``HipTruth``: ``implant`` (bool, patient truth whether imaged or not),
  ``cup`` (``CupTruth`` or None): ``inclination_deg`` / ``anteversion_deg`` (true radiographic
  values, Murray 1993, relative to the pelvis); ``ellipse`` (``node.domain.Ellipse`` of the
  projected outer rim circle of the shell: cx, cy, semi_major, semi_minor, angle_deg); on
  AP-like views ``seen_inclination_deg`` (ellipse long axis vs the inter-teardrop line),
  ``seen_inclination_horizontal_deg`` (vs image rows) and ``seen_anteversion_deg`` (Lewinnek,
  arcsin(minor/major) of the projected rim); on the lateral ``seen_version_deg`` (cup face vs
  the image vertical, + when opening anteriorly); ``head_centre`` / ``head_radius_px``.
  ``flags`` (``dysplasia``, ``cam_deformity``, ``ischial_spine_sign``, ``other_abnormality``)
  and ``measures`` (``lateral_centre_edge_deg`` and ``tonnis_deg`` as seen on this AP-like
  projection relative to the teardrop line — on other views as on a neutral AP —,
  ``alpha_deg`` and ``head_neck_offset_mm`` (3D, in the plane of the neck axis and the
  anterosuperior cam direction), ``joint_space_mm``, ``acetabular_version_deg``,
  ``ischial_spine_length_mm``, ``pelvic_tilt_deg``, ``pelvic_rotation_deg``). Implanted hips
  have dysplasia/cam/other flags False and those measures None. Thresholds: dysplasia when
  LCE < 20°, cam when alpha > 55°, ischial spine sign when the spine tip projects medial to the
  pelvic brim on the (this or a neutral) AP projection.
- ``landmarks``: ``teardrop_inferior`` {"R"/"L": Point}, ``ischial_tuberosity_inferior``
  {"R"/"L": Point}, ``inter_teardrop_angle_deg`` (AP-like views only; points may lie outside the
  image on AP hip views), ``femoral_head`` {"R"/"L": {x, y, r, prosthetic}} (prosthetic ball if
  implanted).
- ``boxes``: ``node.domain.Box`` with labels from ``DETECTOR_CLASSES`` for every structure at
  least 60 % inside the exposed field: ``hip_joint_right``, ``hip_joint_left``, ``cup``,
  ``stem``, ``other_hardware`` (each screw, each cerclage wire), ``teardrop`` and
  ``ischial_tuberosity`` (AP-like views).
- ``imager_pixel_spacing_mm`` (at the detector), ``magnification`` (at the imaged hip centre),
  ``photometric``, ``bits_stored``, ``projection`` ("point" or "parallel"), ``marker`` (the
  burned-in lead letter or None), ``pelvic_tilt_deg``, ``pelvic_rotation_deg``,
  ``corrupted_tags`` (DICOM keywords deliberately made wrong or removed), ``seed``, ``index``.

Exactness: all of the above is computed from the 3D model and the same camera that renders the
image; ``render_mask(spec, "mask:cup_rim:R")`` gives the rendered cup-opening disc so a fitted
ellipse can be compared with ``cup.ellipse``. In parallel mode with a neutral pelvis the seen
angles equal the true ones (tests fit ``cv2.fitEllipse`` to the rim mask: within 0.2°).

How it is made (modules): ``geometry`` — analytic primitives (ellipsoids, elliptic cylinders,
truncated elliptic cones, convex polyhedra, each ∩ half-spaces; half-shells and mitred swept
tubes are built from them) with additive attenuation, and an exact closed-form ray-sum
renderer (point source or parallel rays, float32, per-primitive bounding boxes, large smooth
soft tissue at ¼ resolution); ``anatomy`` — pelvis (iliac wings and crests, acetabula with
sourcil and teardrop, ilioischial line, brim, sacrum with foramina, L3–L5, pubis, rami,
ischia, tuberosities, spines), proximal femora (head, flared neck, trochanteric funnel,
trochanters, shaft with medullary canal), cortical/cancellous bone, fat/muscle envelope, bowel
gas, THA (shell, liner, ball, tapered stem, optional cement, screws, cerclage); ``other`` —
chest, knee, hand, abdomen; ``render`` — cameras per view and the detector/processing chain;
``truth`` — ground truth; ``dicom`` / ``cli`` — files; ``gallery`` — ``docs/phantoms.png``.

Realism knobs (``ImagingParams``, drawn at random by ``sample_spec``): kVp (bone/metal/soft
contrast), dose (quantum noise), scatter-to-primary ratio and kernel, heel effect, detector
blur, dynamic-range compression, unsharp masking, tone curve and gamma, collimation (with
rotation; shutter white or black), burned-in lead L/R marker, trabecular texture, grid lines,
10–16 bits stored, MONOCHROME1/2; ``GeometryParams``: SID 1000–1150 mm (chest 1500–1830),
detector field, table gap, pelvic tilt/rotation/obliquity, lateral beam angle; detector matrix
any size, or ``rows=0`` for native 0.139–0.2 mm pixels. ``spec.quiet()`` turns off noise,
marker, heel, texture and grid; ``spec.parallel()`` selects parallel rays; ``spec.mirrored()``
exchanges left and right (the image mirrors exactly).

CLI: ``hipnode phantom --count N --out DIR [--views …] [--implants …] [--seed S] [--size N|RxC|native]
[--transfer-syntax explicit|implicit|deflate|rle|jpegls|jpegls-near|j2k|j2k-lossy] [--modality
mixed|CR|DX] [--unreliable-fraction F] [--workers W]`` writes CR / DX-for-presentation files
grouped in studies and series plus ``DIR/ground_truth.jsonl`` (see ``node.phantom.cli``).

Known differences from clinical films (see the gallery): bones are smooth analytic solids with
a faint synthetic trabecular texture, so outlines are cleaner and more geometric than real
bone; overlapping primitives leave some internal edges; the sacrum, rami and iliac wings are
simplified; the cross-table lateral is the least convincing view; soft tissue has no bowel
pattern beyond gas bubbles, no skin folds beyond the gluteal crease; implants are generic.
"""

from __future__ import annotations

from node.phantom.anatomy import CupSpec, FemurPose, HipParams, PatientParams
from node.phantom.api import (
    STYLES,
    PhantomImage,
    generate,
    neutral_ap_camera,
    render,
    render_index,
    render_mask,
)
from node.phantom.spec import (
    IMPLANT_MODES,
    OTHER_KINDS,
    GeometryParams,
    ImagingParams,
    PhantomSpec,
    sample_spec,
)
from node.phantom.truth import CupTruth, GroundTruth, HipTruth

# Bumped whenever the same (seed, index, size) renders different pixels or truth: key caches on it.
# 4: variety "broad" (designs, hardware, children down to infants) and the "voxel" style; classic
# analytic images are unchanged. 5: broad children's AP pelvis collimated to the pelvis and centred
# on the hips (``node.phantom.spec.CHILD_HIPS_APART_FRACTION``).
PHANTOM_VERSION = "5"

__all__ = [
    "IMPLANT_MODES",
    "OTHER_KINDS",
    "PHANTOM_VERSION",
    "STYLES",
    "CupSpec",
    "CupTruth",
    "FemurPose",
    "GeometryParams",
    "GroundTruth",
    "HipParams",
    "HipTruth",
    "ImagingParams",
    "PatientParams",
    "PhantomImage",
    "PhantomSpec",
    "generate",
    "neutral_ap_camera",
    "render",
    "render_index",
    "render_mask",
    "sample_spec",
]
