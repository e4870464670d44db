"""Spec → scene → camera → ray sums → detector physics → presentation image (+ ground truth)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from node.domain import Side, View
from node.phantom import materials as m
from node.phantom.anatomy import (
    FemurPose,
    Landmarks,
    Scene,
    build_femur,
    build_pelvis,
    build_soft_tissue,
    femur_axes,
    scale_primitive,
    side_sign,
)
from node.phantom.geometry import F32, F64, Camera, Rigid, rot_x, rot_y, rot_z, unit
from node.phantom.spec import PhantomSpec


def build_scene(spec: PhantomSpec) -> Scene:
    if spec.view is View.OTHER:
        from node.phantom.other import build_other

        return build_other(spec)
    patient = spec.patient
    # a child is built as its adult-size model and scaled as a whole (see PatientParams.scaled)
    p = patient.unscaled()
    scene = Scene()
    marks = scene.marks
    hardware = spec.hardware
    prims = build_pelvis(p, spec.implants, marks, hardware)
    # on the cross-table lateral the other leg is lifted out of the beam
    lifted = spec.side.other if (spec.view is View.LATERAL_HIP and spec.side is not None) else None
    for side in (Side.RIGHT, Side.LEFT):
        femur = build_femur(p, side, spec.implant(side), spec.poses.get(side, FemurPose()), marks,
                            hardware.get(side))
        if side is not lifted:
            prims += femur
    prims += build_soft_tissue(p, spec.poses, marks, lifted=lifted)
    if patient.scale != 1.0:
        prims = [scale_primitive(q, patient.scale) for q in prims]
        scene.marks = marks.scaled(patient.scale)
    if patient.bone_density != 1.0:  # osteopenia: every bone attenuates less
        prims = [q.with_mu(q.mu * patient.bone_density) if q.tag.startswith("bone") else q for q in prims]
    scene.prims = [q for q in prims if q.mu != 0.0 or q.tag.startswith("mask:")]
    return scene


def patient_pose(spec: PhantomSpec) -> Rigid:
    """Rigid pose of the patient (pelvis) relative to the equipment."""
    g = spec.geometry
    R = rot_z(g.pelvic_rotation_deg) @ rot_y(g.pelvic_obliquity_deg) @ rot_x(g.pelvic_tilt_deg)
    return Rigid.about(np.array([0.0, 20.0, 0.0]), R)


def _camera_from(centre: F64, direction: F64, right: F64, down: F64, spec: PhantomSpec, oid: float) -> Camera:
    """Detector centred on the central ray through ``centre`` (a point in the patient), ``oid`` mm
    behind it; source ``sid`` mm in front of the detector."""
    g = spec.geometry
    px = g.fov_mm / spec.cols
    det_c = centre + direction * oid
    ex = unit(right) * px
    ey = unit(down) * px
    origin = det_c - (spec.cols - 1) / 2.0 * ex - (spec.rows - 1) / 2.0 * ey
    src = None if g.projection == "parallel" else det_c - direction * g.sid_mm
    return Camera(origin, ex, ey, spec.rows, spec.cols, src, unit(direction))


def make_camera(spec: PhantomSpec, marks: Landmarks) -> Camera:
    """Camera in the patient frame for the spec's view."""
    g = spec.geometry
    p = spec.patient
    dx, dz = g.centre_offset_mm
    post_skin = 22.0 + p.body_half_depth_mm
    if spec.view is View.OTHER:
        from node.phantom.other import other_camera

        return other_camera(spec)
    if spec.view is View.LATERAL_HIP:
        assert spec.side is not None
        sx = side_sign(spec.side)
        H, _, hd, _ = femur_axes(p, spec.side)
        b = math.radians(g.lateral_beam_deg)
        d = np.array([sx * math.cos(b), 0.0, math.sin(b)])
        up = np.array([0.0, -1.0, 0.0])
        right = np.cross(up, -d)
        target = H - hd * 18.0 + unit(right) * (dx * 0.3) + np.array([0.0, dz * 0.3, 0.0])
        oid = p.body_half_width_mm - p.hip_half_width_mm + g.table_gap_mm + 40.0
        cam = _camera_from(target, d, right, -up, spec, oid)
    else:
        if spec.view is View.AP_PELVIS:
            target = np.array([dx, 0.0, 12.0 + dz])
        else:
            assert spec.side is not None
            sx = side_sign(spec.side)
            target = np.array([sx * (p.hip_half_width_mm - 4.0) + dx * 0.5, 0.0, -28.0 + dz * 0.5])
        d = np.array([0.0, 1.0, 0.0])
        oid = post_skin - target[1] + g.table_gap_mm
        cam = _camera_from(target, d, np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]), spec, oid)
    # the patient is posed relative to the equipment: express the camera in the patient frame
    return cam.transformed(patient_pose(spec).inverse())


# ----------------------------------------------------------------------------------------------
# Detector and processing


def _sym_sample(a: NDArray[Any], step: int) -> NDArray[Any]:
    """A sparse sample of ``a`` that is the same set for ``a`` and its left-right mirror image."""
    return np.concatenate([a[::step, ::step].ravel(), a[::step, ::-1][:, ::step].ravel()])


def _blur(img: F32, sigma_px: float) -> F32:
    """Gaussian blur; large kernels are done on a downsampled copy."""
    if sigma_px < 0.3:
        return img
    if sigma_px < 6.0:
        return np.asarray(cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT), dtype=np.float32)
    f = max(1, int(sigma_px / 3.0))
    h, w = img.shape
    small = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / f, borderType=cv2.BORDER_REFLECT)
    return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.float32)


def trabecular_texture(spec: PhantomSpec, px_mm: float) -> F32:
    """Band-pass noise (grain ``trabecular_mm``) that modulates the bone ray sums."""
    im = spec.imaging
    h, w = spec.rows, spec.cols
    if im.trabecular <= 0:
        return np.zeros((h, w), dtype=np.float32)
    rng = np.random.default_rng(spec.noise_seed ^ 0x7AB)
    grain_px = im.trabecular_mm / px_mm
    f = 2 if grain_px > 3.0 else 1
    hh, ww = -(-h // f), -(-w // f)
    n = rng.standard_normal((hh, ww), dtype=np.float32)
    g = grain_px / f
    band = cv2.GaussianBlur(n, (0, 0), max(g * 0.5, 0.5)) - cv2.GaussianBlur(n, (0, 0), max(g * 1.5, 1.0))
    sd = float(band.std()) or 1.0
    band *= np.float32(im.trabecular / sd)
    if f > 1:
        band = np.asarray(cv2.resize(band, (ww * f, hh * f), interpolation=cv2.INTER_LINEAR), dtype=np.float32)[:h, :w]
    return np.ascontiguousarray(band, dtype=np.float32)


def collimation_mask(spec: PhantomSpec) -> NDArray[np.bool_]:
    im = spec.imaging
    h, w = spec.rows, spec.cols
    lft, r, t, b = im.collimation
    if max(lft, r, t, b) <= 0 and im.collimation_rotation_deg == 0:
        return np.ones((h, w), dtype=bool)
    # corners in pixel-centre coordinates, so that mirrored margins give mirrored masks
    pts = np.array([[lft * w, t * h], [(1 - r) * w, t * h], [(1 - r) * w, (1 - b) * h], [lft * w, (1 - b) * h]]) - 0.5
    c = pts.mean(axis=0)
    a = math.radians(im.collimation_rotation_deg)
    Rm = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (pts - c) @ Rm.T + c
    out = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(out, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def marker_letter(spec: PhantomSpec) -> str | None:
    """The side letter on the lead marker, by the marker's position and the view."""
    im = spec.imaging
    if not im.marker:
        return None
    if spec.view is View.AP_PELVIS:
        return "R" if im.marker_position[0] < 0.5 else "L"
    if spec.side is not None:
        return spec.side.value
    if spec.view is View.OTHER:
        return "R" if im.marker_position[0] < 0.5 else "L"
    return None


def draw_marker(spec: PhantomSpec, px_mm: float) -> tuple[NDArray[np.bool_], str | None]:
    letter = marker_letter(spec)
    h, w = spec.rows, spec.cols
    out = np.zeros((h, w), dtype=np.uint8)
    if letter is None:
        return out.astype(bool), None
    im = spec.imaging
    height_px = im.marker_height_mm / px_mm
    scale = height_px / 22.0  # Hershey simplex cap height ≈ 22 px at scale 1
    thick = max(1, round(height_px / 7.0))
    (tw, th), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cx, cy = im.marker_position[0] * w, im.marker_position[1] * h
    org = (round(cx - tw / 2), round(cy + th / 2))
    cv2.putText(out, letter, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thick, cv2.LINE_AA)
    return out.astype(bool), letter


@dataclass
class Exposure:
    pixels: NDArray[np.uint16]
    exposed: NDArray[np.bool_]
    marker: str | None
    line_integral: F32


def tone_lut(spec: PhantomSpec, size: int = 65536) -> NDArray[np.uint16]:
    """Stored value for x in [-0.5, 1.5] (``size`` steps): S-curve, gamma, bit depth, photometric."""
    im = spec.imaging
    x = np.linspace(-0.5, 1.5, size, dtype=np.float64)
    c = im.tone_contrast
    y = 0.5 + (0.5 / math.tanh(c / 2.0)) * np.tanh(c * (x - 0.5))
    y = np.clip(y, 0.0, 1.0)
    if im.gamma != 1.0:
        y = y**im.gamma
    vmax = (1 << im.bits_stored) - 1
    out = np.round(y * vmax).astype(np.int64)
    if im.photometric == "MONOCHROME1":
        out = vmax - out
    return out.astype(np.uint16)


def expose(spec: PhantomSpec, L: F32, px_mm: float) -> Exposure:
    """Line integrals → detected quanta → log → presentation processing → stored values.

    Written for speed at 2048² (float32, in place, large blurs on downsampled copies)."""
    im = spec.imaging
    rng = np.random.default_rng(spec.noise_seed)
    h, w = L.shape
    exposed = collimation_mask(spec)
    collimated = not bool(exposed.all())
    mk, letter = draw_marker(spec, px_mm)
    if letter is not None and mk.any():
        ys, xs = np.nonzero(mk)
        sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        L = L.copy()
        L[sl] += mk[sl].astype(np.float32) * np.float32(m.LEAD * 3.0)
    rows = np.linspace(-0.5, 0.5, h, dtype=np.float32)
    heel = (np.float32(1.0) + np.float32(im.heel) * rows)[:, None]
    primary = np.negative(L)
    np.exp(primary, out=primary)
    if im.heel != 0.0:
        primary *= heel
    expf = exposed.astype(np.float32) if collimated else None
    if expf is not None:
        primary *= expf
    sub = _sym_sample(primary, 8)[_sym_sample(exposed, 8)]
    ref = max(float(np.median(sub)) if sub.size else 1.0, 1e-6)
    scatter = _blur(primary, im.scatter_sigma_mm / px_mm)
    scatter *= np.float32(im.scatter_to_primary)
    if expf is not None:  # off-field scatter reaching the shuttered area is weaker
        scatter *= np.float32(0.25) + np.float32(0.75) * expf
    n_ref = im.dose_photons_mm2 * px_mm * px_mm  # quanta per pixel at the reference transmission
    gain = np.float32(n_ref / ref)
    quanta = primary
    quanta += scatter
    quanta *= gain
    if im.noise:
        sd = np.sqrt(np.maximum(quanta, np.float32(0.0)))
        sd *= rng.standard_normal((h, w), dtype=np.float32)
        quanta += sd
    quanta = _blur(quanta, im.blur_mm / px_mm)
    # log relative to the flat field (gain × heel)
    np.maximum(quanta, np.float32(0.5), out=quanta)
    if im.heel != 0.0:
        quanta /= heel
    quanta *= np.float32(1.0 / gain)
    logv = np.log(quanta, out=quanta)
    np.negative(logv, out=logv)
    if im.grid_lines > 0:
        logv += np.float32(im.grid_lines) * np.sin(np.arange(w, dtype=np.float32) * np.float32(2.4))[None, :]
    # presentation: dynamic range compression, window on the exposed field, edge enhancement,
    # tone curve (what CR/DX "for presentation" processing does)
    if im.drc_amount > 0:
        top = np.float32(np.percentile(_sym_sample(logv, 4), 99.0))
        clipped = np.minimum(logv, top)
        if collimated:
            clipped[~exposed] = np.float32(np.median(_sym_sample(clipped, 4)))
        base = _blur(clipped, im.drc_sigma_mm / px_mm)
        base *= np.float32(im.drc_amount)
        logv -= base
    sample = _sym_sample(logv, 4)[_sym_sample(exposed, 4)]
    if sample.size < 16:
        sample = logv.ravel()
    lo, hi = np.percentile(sample, [0.5, 99.6])
    hi = max(hi, lo + 1e-3)
    x = logv
    x -= np.float32(lo)
    x *= np.float32(1.0 / (hi - lo))
    if im.unsharp_amount > 0:
        k = np.float32(im.unsharp_amount)
        blurred = _blur(x, im.unsharp_sigma_mm / px_mm)
        x *= np.float32(1.0) + k
        blurred *= k
        x -= blurred
    # tone curve, gamma, bit depth and photometric in one lookup table
    n = 65536
    x += np.float32(0.5)
    x *= np.float32((n - 1) / 2.0)
    np.clip(x, 0, n - 1, out=x)
    pix = tone_lut(spec, n)[x.astype(np.int32)]
    vmax = (1 << im.bits_stored) - 1
    if collimated:
        fill = 0.0 if im.shutter_black else 0.97
        v = round(fill * vmax)
        pix[~exposed] = (vmax - v) if im.photometric == "MONOCHROME1" else v
    if letter is not None:
        v = vmax if im.photometric == "MONOCHROME2" else 0
        pix[mk & ~exposed] = v
    return Exposure(pix, exposed, letter, L)
