"""Acetabular cup geometry: rim ellipse → radiographic inclination and anteversion.

What a hemispherical shell looks like on a radiograph
-----------------------------------------------------
The cup is a metal hemisphere whose opening face (the *rim*) is a circle of radius R. Projected,
the rim is an ellipse with semi-major axis R (the rim diameter parallel to the detector) and
semi-minor axis R·sin(V), where V is the angle between the cup axis and the detector plane —
the radiographic anteversion (Murray 1993). The *silhouette* of the shell, however, is not that
ellipse: it is the union of

* the dome outline — a semicircle of radius R about the same centre, on the side the dome
  points to (superomedially on an AP), and
* the opening-side half of the rim ellipse.

Both halves meet at the ends of the ellipse's major axis. Fitting an ellipse to the whole
silhouette (the usual shortcut) therefore fits a half-disc and systematically overestimates the
minor axis. Here the silhouette is split: a RANSAC circle fit finds the dome (it is the only
long circular arc, ~180°), whose centre and radius fix the ellipse's centre and semi-major axis,
and whose gap (the open side) fixes the direction of the minor axis. The remaining edge points on
the open side are the candidate rim; the femoral head (a smaller concentric disc that may bulge
past a flat rim) and the neck/stem edges do not lie on any ellipse with that centre and major
axis, so a 1-D search over the axis ratio followed by a robust least-squares refinement of all
five parameters ignores them.

Angles
------
From the ellipse and the opening direction we build the cup axis as a 3-D unit vector in camera
coordinates (x right, y down, z from the X-ray source to the detector). With a known source–image
distance the exact perspective (cone) solution is used — a cup 15 cm off the central ray is seen
obliquely and the plain arcsin(minor/major) is then off by several degrees; otherwise the
parallel-beam approximation. Radiographic inclination is the angle, in the coronal plane, between
the longitudinal axis (perpendicular to the reference line) and the cup axis — on a parallel beam
exactly the angle of the ellipse's long axis against the reference line; radiographic
anteversion is the angle between the cup axis and the coronal plane (Lewinnek: arcsin S/L).
A single AP cannot tell anteversion from retroversion; like every AP method we report the
anteverted solution. Liaw's construction (the rim's height above the long axis at one fifth of its
length from the end) is measured on the raw rim edge points and reported alongside.

On a cross-table lateral the cup face is seen nearly edge-on; Woo–Morrey version is the angle
between the cup face (the ellipse's long axis) and the perpendicular to the film's long axis
(the image vertical), positive when the opening faces anteriorly (image up).

Everything here is pure numpy/OpenCV on a float image; no DICOM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

from node.analyse.reference import HORIZONTAL, ReferenceLine, horizontal_line
from node.domain import Box, CupMeasurement, Ellipse, Point, Side, View

FloatArray = NDArray[np.float64]

LEWINNEK = "Lewinnek"
LIAW = "Liaw"
WOO_MORREY = "Woo-Morrey"

# Thresholds below which a fit is refused rather than reported. Chosen on phantoms so that a
# correct fit clears them comfortably; a fit that fails them is wrong more often than right.
MIN_DOME_SPAN_DEG = 120.0
MAX_OPEN_SIDE_COVERED = 0.6
MIN_RIM_POINTS = 12
MIN_RIM_COVERAGE = 0.3
MAX_RIM_RMS_PX = 1.5
MIN_QUALITY = 0.3


@dataclass(frozen=True)
class ProjectionGeometry:
    """Point-source geometry of the exposure.

    ``source_image_distance_mm`` is DICOM (0018,1110); ``source_object_distance_mm`` (0018,1111)
    gives the magnification of anatomy at the isocentre. ``principal_point`` is where the central
    ray meets the detector, in image pixels (the image centre when unknown).
    """

    source_image_distance_mm: float
    source_object_distance_mm: float | None = None
    principal_point: Point | None = None

    @property
    def magnification(self) -> float:
        if self.source_object_distance_mm is None or self.source_object_distance_mm <= 0:
            return 1.0
        return self.source_image_distance_mm / self.source_object_distance_mm


@dataclass(frozen=True)
class CupFit:
    """Everything the fit found, for overlays, debugging and quality control."""

    ellipse: Ellipse | None
    opening_dir: tuple[float, float] | None  # unit vector, image coords, towards the open side
    dome_centre: Point | None = None
    dome_radius_px: float | None = None
    rim_points: FloatArray = field(default_factory=lambda: np.zeros((0, 2)))
    rim_rms_px: float = math.inf
    rim_coverage: float = 0.0
    dome_span_deg: float = 0.0
    liaw_sin: float | None = None
    quality: float = 0.0
    refusal_reason: str | None = None


# --------------------------------------------------------------------------------------------
# small geometry helpers (pure)
# --------------------------------------------------------------------------------------------


def ellipse_conic(e: Ellipse) -> FloatArray:
    """3×3 symmetric conic matrix C with X^T C X = 0 on the ellipse (X = (x, y, 1))."""
    t = math.radians(e.angle_deg)
    c, s = math.cos(t), math.sin(t)
    a2, b2 = e.semi_major**2, e.semi_minor**2
    A = c * c / a2 + s * s / b2
    B = c * s * (1.0 / a2 - 1.0 / b2)
    Cc = s * s / a2 + c * c / b2
    D = -(A * e.cx + B * e.cy)
    E = -(B * e.cx + Cc * e.cy)
    F = A * e.cx**2 + 2 * B * e.cx * e.cy + Cc * e.cy**2 - 1.0
    return np.array([[A, B, D], [B, Cc, E], [D, E, F]], dtype=np.float64)


def ellipse_points(e: Ellipse, t: FloatArray) -> FloatArray:
    """Points of the ellipse at parametric angles ``t`` (radians), shape (len(t), 2)."""
    th = math.radians(e.angle_deg)
    c, s = math.cos(th), math.sin(th)
    x = e.semi_major * np.cos(t)
    y = e.semi_minor * np.sin(t)
    return np.stack([e.cx + c * x - s * y, e.cy + s * x + c * y], axis=1)


def _to_frame(points: FloatArray, cx: float, cy: float, theta: float) -> tuple[FloatArray, FloatArray]:
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = points[..., 0] - cx, points[..., 1] - cy
    return c * dx + s * dy, -s * dx + c * dy


def ellipse_distance(
    points: FloatArray, cx: float, cy: float, a: float | FloatArray, b: float | FloatArray, theta: float
) -> FloatArray:
    """Signed orthogonal distance (positive outside) of points to an ellipse.

    Newton iterations on the foot-point parameter; accurate where the algebraic (Sampson)
    distance is not — near the ends of a thin ellipse, whose radius of curvature there is b²/a,
    a pixel or two for a cup seen at low anteversion.
    """
    xr, yr = _to_frame(points, cx, cy, theta)
    x, y = np.abs(xr), np.abs(yr)
    a = np.maximum(a, 1e-6)
    b = np.maximum(b, 1e-6)
    t = np.arctan2(a * y, b * x)
    for _ in range(6):
        ct, st = np.cos(t), np.sin(t)
        f = (a * a - b * b) * ct * st - x * a * st + y * b * ct
        df = (a * a - b * b) * (ct * ct - st * st) - x * a * ct - y * b * st
        t = t - f / np.where(np.abs(df) < 1e-12, 1e-12, df)
        t = np.clip(t, 0.0, math.pi / 2)
    px, py = a * np.cos(t), b * np.sin(t)
    d = np.hypot(x - px, y - py)
    inside = (x / a) ** 2 + (y / b) ** 2 < 1.0
    return np.where(inside, -d, d)


def _circle_lsq(p: FloatArray) -> tuple[float, float, float]:
    """Algebraic (Kåsa) circle fit: centre x, centre y, radius."""
    A = np.column_stack([2 * p[:, 0], 2 * p[:, 1], np.ones(len(p))])
    rhs = (p**2).sum(axis=1)
    sol, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    cx, cy, k = (float(v) for v in sol)
    return cx, cy, math.sqrt(max(k + cx * cx + cy * cy, 0.0))


def _ransac_circle(
    p: FloatArray, r_min: float, r_max: float, tol: float, rng: np.random.Generator, iters: int = 400
) -> tuple[float, float, float, NDArray[np.bool_]] | None:
    """Circle supported by the most points (the dome); vectorised over all hypotheses."""
    n = len(p)
    if n < 10:
        return None
    idx = rng.integers(0, n, size=(iters, 3))
    a, b, c = p[idx[:, 0]], p[idx[:, 1]], p[idx[:, 2]]
    d = 2 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1]) + c[:, 0] * (a[:, 1] - b[:, 1]))
    ok = np.abs(d) > 1e-6
    d = np.where(ok, d, 1.0)
    a2, b2, c2 = (a**2).sum(1), (b**2).sum(1), (c**2).sum(1)
    ux = (a2 * (b[:, 1] - c[:, 1]) + b2 * (c[:, 1] - a[:, 1]) + c2 * (a[:, 1] - b[:, 1])) / d
    uy = (a2 * (c[:, 0] - b[:, 0]) + b2 * (a[:, 0] - c[:, 0]) + c2 * (b[:, 0] - a[:, 0])) / d
    r = np.hypot(a[:, 0] - ux, a[:, 1] - uy)
    ok &= (r >= r_min) & (r <= r_max)
    if not ok.any():
        return None
    ux, uy, r = ux[ok], uy[ok], r[ok]
    dist = np.abs(np.hypot(p[None, :, 0] - ux[:, None], p[None, :, 1] - uy[:, None]) - r[:, None])
    counts = (dist < tol).sum(axis=1)
    best = int(np.argmax(counts))
    inl = dist[best] < tol
    cx, cy, rr = float(ux[best]), float(uy[best]), float(r[best])
    for _ in range(3):
        if inl.sum() < 5:
            break
        cx, cy, rr = _circle_lsq(p[inl])
        inl = np.abs(np.hypot(p[:, 0] - cx, p[:, 1] - cy) - rr) < tol
    return cx, cy, rr, inl


def _dome_arc(angles: FloatArray, radius: float) -> tuple[float, float, float]:
    """Where the dome is: (span of the dome arc in deg, direction of the open side in rad,
    fraction of the *other* half-circle that is also covered).

    Angles are binned in 5° sectors; a sector counts as covered when it holds at least 40 % of
    the edge points an unbroken arc would put there. The dome is the half-circle window with
    the most covered sectors (a few stray inliers on the open side — the neck crossing the
    circle, noise — cannot move it), refined by the mean direction of the points in it. A
    silhouette that is also covered on the other half is a full disc (a head without a cup, or
    a cup seen end-on) and has no measurable rim.
    """
    nb, half = 72, 36
    sector = (np.mod(angles, 2 * math.pi) / (2 * math.pi) * nb).astype(int) % nb
    counts = np.bincount(sector, minlength=nb)
    covered = (counts >= max(2.0, 0.4 * 2 * math.pi * radius / nb)).astype(int)
    ext = np.concatenate([covered, covered])
    window = np.array([ext[i : i + half].sum() for i in range(nb)])
    i0 = int(np.argmax(window))
    # several windows may tie (the arc is a little longer than 180° where the rim ellipse
    # touches the circle); start from the middle of the tied ones, then take the mean direction
    # of the points within ±105° of it, which is symmetric about the dome's axis
    ties = np.flatnonzero(window == window[i0])
    tie_dirs = (ties + half / 2.0) * (2 * math.pi / nb)
    mean = math.atan2(float(np.sin(tie_dirs).sum()), float(np.cos(tie_dirs).sum()))
    for _ in range(4):
        near = np.cos(angles - mean) > math.cos(math.radians(105.0))
        if not near.any():
            return 0.0, 0.0, 0.0
        mean = math.atan2(float(np.sin(angles[near]).sum()), float(np.cos(angles[near]).sum()))
    other_cov = float(covered.sum() - window[i0]) / half
    return float(window[i0]) * 360.0 / nb, mean + math.pi, other_cov


# --------------------------------------------------------------------------------------------
# image → edge points
# --------------------------------------------------------------------------------------------


def _crop(image: NDArray[np.float32], box: Box, margin: float) -> tuple[NDArray[np.float32], int, int]:
    h, w = image.shape
    mx, my = margin * box.width, margin * box.height
    x0 = max(math.floor(box.x0 - mx), 0)
    y0 = max(math.floor(box.y0 - my), 0)
    x1 = min(math.ceil(box.x1 + mx) + 1, w)
    y1 = min(math.ceil(box.y1 + my) + 1, h)
    return image[y0:y1, x0:x1], x0, y0


def _metal_mask(roi: NDArray[np.float32], inner: tuple[int, int, int, int]) -> NDArray[np.uint8] | None:
    """Binary mask of the metal blob (cup ∪ head ∪ neck) that dominates the cup box.

    Metal is the brightest thing on the image; the threshold sits half-way between the metal
    level (a high percentile inside the box, which the cup fills) and the surrounding bone/soft
    tissue (the median of the margin around the box).
    """
    ix0, iy0, ix1, iy1 = inner
    inside = roi[iy0:iy1, ix0:ix1]
    if inside.size < 25:
        return None
    ring = np.ones(roi.shape, dtype=bool)
    ring[iy0:iy1, ix0:ix1] = False
    hi = float(np.percentile(inside, 90))
    lo = float(np.median(roi[ring])) if ring.sum() > 50 else float(np.percentile(roi, 10))
    if hi - lo < 0.05:
        return None
    mask = (roi > (hi + lo) / 2.0).astype(np.uint8)
    n, labels, _stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return None
    in_box = np.bincount(labels[iy0:iy1, ix0:ix1].ravel(), minlength=n)
    in_box[0] = 0
    best = int(np.argmax(in_box))
    blob = (labels == best).astype(np.uint8)
    # fill holes: the inside of the rim, seen through one wall only, can fall below threshold
    padded = np.pad(blob, 1)
    ff = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, ff, (0, 0), 2)
    holes = (padded[1:-1, 1:-1] == 0).astype(np.uint8)
    return np.asarray(np.maximum(blob, holes), dtype=np.uint8)


def _subpixel_edges(smooth: NDArray[np.float32], contour: NDArray[np.int32]) -> tuple[FloatArray, FloatArray]:
    """Move each contour pixel to the gradient-magnitude maximum along the local normal.

    The threshold contour is quantised to whole pixels and sits wherever the threshold happens
    to cut the edge profile; the gradient maximum is the edge itself, to a tenth of a pixel.
    Returns points and outward unit normals.
    """
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = np.hypot(gx, gy).astype(np.float32)
    p = contour.astype(np.float64)
    xi, yi = contour[:, 0], contour[:, 1]
    nx, ny = -gx[yi, xi].astype(np.float64), -gy[yi, xi].astype(np.float64)
    nn = np.hypot(nx, ny)
    ok = nn > 1e-6
    nx, ny = np.where(ok, nx / np.where(ok, nn, 1), 0.0), np.where(ok, ny / np.where(ok, nn, 1), 0.0)
    steps = np.arange(-3.0, 3.0 + 1e-9, 0.25)
    mapx = (p[:, 0:1] + nx[:, None] * steps[None, :]).astype(np.float32)
    mapy = (p[:, 1:2] + ny[:, None] * steps[None, :]).astype(np.float32)
    prof = cv2.remap(mag, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float64)
    k = np.argmax(prof, axis=1)
    k = np.clip(k, 1, len(steps) - 2)
    rows = np.arange(len(p))
    f0, f1, f2 = prof[rows, k - 1], prof[rows, k], prof[rows, k + 1]
    den = f0 - 2 * f1 + f2
    off = np.where(np.abs(den) > 1e-12, 0.5 * (f0 - f2) / np.where(np.abs(den) > 1e-12, den, 1), 0.0)
    s = steps[k] + np.clip(off, -0.5, 0.5) * 0.25
    out = np.column_stack([p[:, 0] + nx * s, p[:, 1] + ny * s])
    return out[ok], np.column_stack([nx, ny])[ok]


# --------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------


def fit_cup_ellipse(
    image: NDArray[np.float32],
    cup_box: Box,
    *,
    stem_boxes: Sequence[Box] = (),
    margin: float = 0.15,
    seed: int = 0,
) -> CupFit:
    """Find the dome circle and the rim ellipse of the cup inside ``cup_box``.

    Deterministic (seeded RANSAC). Returns a ``CupFit`` whose ``refusal_reason`` says why no
    ellipse is given when the evidence is not good enough.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        return CupFit(None, None, refusal_reason="image is not a single-channel 2-D array")
    if cup_box.width < 8 or cup_box.height < 8:
        return CupFit(None, None, refusal_reason="cup box too small")
    roi, ox, oy = _crop(img, cup_box, margin)
    smooth = np.asarray(cv2.GaussianBlur(roi, (0, 0), 1.0), dtype=np.float32)
    inner = (
        max(round(cup_box.x0) - ox, 0),
        max(round(cup_box.y0) - oy, 0),
        min(round(cup_box.x1) - ox, roi.shape[1]),
        min(round(cup_box.y1) - oy, roi.shape[0]),
    )
    mask = _metal_mask(smooth, inner)
    if mask is None:
        return CupFit(None, None, refusal_reason="no metal cup found in the cup box")
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return CupFit(None, None, refusal_reason="no metal cup found in the cup box")
    contour = max(contours, key=cv2.contourArea).reshape(-1, 2)
    # contour pixels on the crop border are where the blob was cut, not edges
    h, w = roi.shape
    keep = (contour[:, 0] > 0) & (contour[:, 1] > 0) & (contour[:, 0] < w - 1) & (contour[:, 1] < h - 1)
    pts, _normals = _subpixel_edges(smooth, contour[keep])
    if len(pts) < 30:
        return CupFit(None, None, refusal_reason="cup outline too short")

    size = max(cup_box.width, cup_box.height)
    rng = np.random.default_rng(seed)
    circ = _ransac_circle(pts, 0.25 * size, 0.8 * size, tol=max(0.8, 0.01 * size), rng=rng)
    if circ is None:
        return CupFit(None, None, refusal_reason="dome outline not found")
    ccx, ccy, R, dome_in = circ
    dome_ang = np.arctan2(pts[dome_in, 1] - ccy, pts[dome_in, 0] - ccx)
    span, gap_dir, other_cov = _dome_arc(dome_ang, R)
    base = CupFit(
        None, None, dome_centre=Point(ccx + ox, ccy + oy), dome_radius_px=R, dome_span_deg=span
    )
    if span < MIN_DOME_SPAN_DEG:
        return _refuse(base, f"dome outline too short ({span:.0f}° of arc)")
    if other_cov > MAX_OPEN_SIDE_COVERED:
        return _refuse(base, "outline is a full circle: rim not distinguishable from the dome")
    u = np.array([math.cos(gap_dir), math.sin(gap_dir)])  # towards the open side

    # candidate rim points: on the open side, inside the dome circle, not on a stem outside it
    rel = pts - np.array([ccx, ccy])
    dist = np.hypot(rel[:, 0], rel[:, 1])
    cand = (~dome_in) & (dist < R + 0.5) & (rel @ u > -0.15 * R)
    for sb in stem_boxes:
        in_stem = (
            (pts[:, 0] + ox >= sb.x0) & (pts[:, 0] + ox <= sb.x1) & (pts[:, 1] + oy >= sb.y0) & (pts[:, 1] + oy <= sb.y1)
        )
        cand &= ~(in_stem & (dist > 0.9 * R))
    cp = pts[cand]
    if len(cp) < MIN_RIM_POINTS:
        return _refuse(base, "rim outline not visible")

    # coarse search: axis ratio × a few degrees either side of the dome's estimate of the axis
    theta0 = gap_dir + math.pi / 2.0
    tol = max(1.0, 0.012 * R)
    ks = np.arange(0.02, 0.9, 0.01)
    best = (-1, 0.0, theta0)
    for dth in np.radians(np.arange(-6.0, 6.01, 1.0)):
        d = np.abs(ellipse_distance(cp[None, :, :], ccx, ccy, R, ks[:, None] * R, theta0 + dth))
        score = (d < tol).sum(axis=1)
        i = int(np.argmax(score))
        if score[i] > best[0]:
            best = (int(score[i]), float(ks[i]), float(theta0 + dth))
    params = np.array([ccx, ccy, R, best[1] * R, best[2]])
    # robust refinement of all five parameters; the dome circle enters as a soft prior on the
    # centre and the semi-major axis (they are the same sphere seen twice)
    for window in (4.0 * tol, 2.5 * tol):
        sel = cp[np.abs(ellipse_distance(cp, *params)) < window]
        if len(sel) < MIN_RIM_POINTS:
            break
        w_prior = math.sqrt(len(sel)) / 3.0

        def resid(q: FloatArray, sel: FloatArray = sel, w_prior: float = w_prior) -> FloatArray:
            r = ellipse_distance(sel, q[0], q[1], q[2], q[3], q[4])
            prior = w_prior * np.array([q[0] - ccx, q[1] - ccy, q[2] - R])
            return np.concatenate([r, prior])

        sol = least_squares(resid, params, method="trf", loss="soft_l1", f_scale=0.5 * tol, max_nfev=100)
        params = sol.x
    inl = np.abs(ellipse_distance(cp, *params)) < tol
    cx, cy, a, b, th = (float(v) for v in params)
    a, b = abs(a), abs(b)
    if b > a:
        a, b, th = b, a, th + math.pi / 2
    rim = cp[inl]
    if len(rim) < MIN_RIM_POINTS:
        return _refuse(base, "too few points on the rim ellipse")
    rms = float(np.sqrt(np.mean(ellipse_distance(rim, cx, cy, a, b, th) ** 2)))
    # minor axis oriented towards the open side
    v = np.array([-math.sin(th), math.cos(th)])
    if v @ u < 0:
        v = -v
    xr, yr = _to_frame(rim, cx, cy, math.atan2(-v[0], v[1]))  # frame: x along major, y towards open
    # coverage along the long axis: the open half of the rim is a function of x there, and
    # stays meaningful for a nearly flat rim (parametric angles do not)
    on_open = yr > -2.0 * tol
    bins = np.unique(np.clip(np.floor((xr[on_open] / a + 1.0) * 10.0), 0, 19).astype(int))
    coverage = float(len(bins)) / 20.0
    liaw = _liaw_sin(xr, yr, a)
    angle_deg = math.degrees(th) % 180.0
    ell = Ellipse(cx + ox, cy + oy, a, b, angle_deg)
    quality = float(math.exp(-rms / 2.0) * min(1.0, coverage / 0.5) * min(1.0, span / 170.0))
    fit = CupFit(
        ell,
        (float(v[0]), float(v[1])),
        dome_centre=base.dome_centre,
        dome_radius_px=R,
        rim_points=rim + np.array([ox, oy]),
        rim_rms_px=rms,
        rim_coverage=coverage,
        dome_span_deg=span,
        liaw_sin=liaw,
        quality=quality,
    )
    if rms > MAX_RIM_RMS_PX:
        return _refuse(fit, f"rim ellipse fit residual too large ({rms:.2f} px)")
    if coverage < MIN_RIM_COVERAGE:
        return _refuse(fit, f"too little of the rim visible ({coverage:.0%})")
    if abs(a - R) > 0.08 * R:
        return _refuse(fit, "rim ellipse does not match the dome radius")
    if quality < MIN_QUALITY:
        return _refuse(fit, f"fit quality too low ({quality:.2f})")
    return fit


def _refuse(fit: CupFit, reason: str) -> CupFit:
    return CupFit(
        fit.ellipse,
        fit.opening_dir,
        dome_centre=fit.dome_centre,
        dome_radius_px=fit.dome_radius_px,
        rim_points=fit.rim_points,
        rim_rms_px=fit.rim_rms_px,
        rim_coverage=fit.rim_coverage,
        dome_span_deg=fit.dome_span_deg,
        liaw_sin=fit.liaw_sin,
        quality=fit.quality,
        refusal_reason=reason,
    )


def _liaw_sin(xr: FloatArray, yr: FloatArray, a: float) -> float | None:
    """Liaw's construction on the raw rim points: the rim's height above the long axis where the
    perpendicular at one fifth of the long axis from each end meets it; for a circle of radius a
    tilted by V that height is 0.8·a·sin V. Averaged over both ends that have points."""
    vals = []
    for sgn in (-1.0, 1.0):
        sel = (np.abs(xr - sgn * 0.6 * a) < 0.06 * a) & (yr > -0.05 * a)
        if sel.sum() >= 3:
            coef = np.polyfit(xr[sel], yr[sel], 1)
            vals.append(float(np.polyval(coef, sgn * 0.6 * a)))
    if not vals:
        return None
    return float(np.clip(np.mean(vals) / (0.8 * a), 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# ellipse → cup axis → angles
# --------------------------------------------------------------------------------------------


def cup_axis_parallel(e: Ellipse, opening_dir: tuple[float, float]) -> FloatArray:
    """Cup axis (unit, camera coordinates) for a parallel beam: tilted out of the detector plane
    by arcsin(b/a) towards the source (−z), its in-plane part along the minor axis, open side."""
    th = math.radians(e.angle_deg)
    v = np.array([-math.sin(th), math.cos(th)])
    if v @ np.asarray(opening_dir) < 0:
        v = -v
    s = min(e.semi_minor / e.semi_major, 1.0)
    c = math.sqrt(1.0 - s * s)
    return np.array([v[0] * c, v[1] * c, -s])


def cup_axis_perspective(
    e: Ellipse, opening_dir: tuple[float, float], focal_px: float, principal: Point
) -> FloatArray:
    """Cup axis from the rim ellipse under a point source (the exact cone solution).

    The rays through the ellipse form an elliptic cone Q = Hᵀ C H. With eigenvalues sorted so
    that λ1 ≥ λ2 > 0 > λ3, the planes that cut the cone in a circle have normals
    ±√((λ1−λ2)/(λ1−λ3))·e1 + √((λ2−λ3)/(λ1−λ3))·e3. Of the two, the one whose in-plane part
    points to the open side while facing the source is the anteverted cup.
    """
    C = ellipse_conic(e)
    H = np.array([[1.0, 0.0, principal.x / focal_px], [0.0, 1.0, principal.y / focal_px], [0.0, 0.0, 1.0 / focal_px]])
    Q = H.T @ C @ H
    w, V = np.linalg.eigh(Q)
    if (w > 0).sum() == 1:
        w, V = -w, V
    order = np.argsort(-w)  # λ1 ≥ λ2 > 0 > λ3
    w, V = w[order], V[:, order]
    l1, l2, l3 = (float(x) for x in w)
    if not (l1 >= l2 > 0 > l3):
        return cup_axis_parallel(e, opening_dir)
    g1 = math.sqrt(max((l1 - l2) / (l1 - l3), 0.0))
    g3 = math.sqrt(max((l2 - l3) / (l1 - l3), 0.0))
    u = np.asarray(opening_dir, dtype=np.float64)
    best: FloatArray | None = None
    for sgn in (1.0, -1.0):
        n = sgn * g1 * V[:, 0] + g3 * V[:, 2]
        n = n / np.linalg.norm(n)
        if n[:2] @ u < 0:
            n = -n
        if n[2] <= 0 and (best is None or n[2] < best[2] - 1e-12 or best[2] > 0):
            best = n
    if best is None:  # both face away: nearly edge-on; take the parallel-beam answer
        return cup_axis_parallel(e, opening_dir)
    return best


def angles_from_axis(n: FloatArray, reference: ReferenceLine, side: Side) -> tuple[float, float]:
    """Radiographic inclination and anteversion (Murray) of a cup axis on an AP image.

    Patient axes in the image: mediolateral along the reference line, longitudinal perpendicular
    to it (inferior = image down), anterior towards the source (−z). The patient's right is on
    the image left, so "lateral" is −reference for the right hip, +reference for the left: both
    inclinations come out positive.
    """
    hx, hy = reference.unit
    lateral = np.array([-hx, -hy, 0.0]) if side is Side.RIGHT else np.array([hx, hy, 0.0])
    inferior = np.array([-hy, hx, 0.0])
    anterior = np.array([0.0, 0.0, -1.0])
    n = n / np.linalg.norm(n)
    ri = math.degrees(math.atan2(float(n @ lateral), float(n @ inferior)))
    ra = math.degrees(math.asin(float(np.clip(n @ anterior, -1.0, 1.0))))
    return ri, ra


def woo_morrey_version(n: FloatArray, reference: ReferenceLine) -> float:
    """Woo–Morrey version on a cross-table lateral: angle between the cup face and the
    perpendicular to the film's long axis, i.e. the angle of the in-plane cup axis against the
    reference (horizontal); positive when the opening faces up the image (anterior)."""
    hx, hy = reference.unit
    up = np.array([hy, -hx])
    along = abs(float(n[0] * hx + n[1] * hy))
    return math.degrees(math.atan2(float(n[:2] @ up), along))


def measure_cup(
    image: NDArray[np.float32],
    cup_box: Box,
    side: Side,
    view: View,
    *,
    reference: ReferenceLine | None,
    pixel_spacing_mm: float | None = None,
    stem_boxes: Sequence[Box] = (),
    geometry: ProjectionGeometry | None = None,
) -> CupMeasurement:
    """Measure one cup: inclination and anteversion (AP) or Woo–Morrey version (lateral).

    ``image``: float32 0..1, MONOCHROME2 (metal bright). ``reference``: the pelvic reference line
    (``reference.reference_from_boxes``); ``None`` falls back to the image horizontal and flags
    the result. ``pixel_spacing_mm`` with ``geometry`` enables the point-source correction
    (focal length in pixels = SID / detector pixel spacing). Never raises on bad images: an
    untrustworthy fit comes back with no numbers and a ``refusal_reason``.
    """
    lateral_view = view in (View.LATERAL_HIP,)
    method = WOO_MORREY if lateral_view else LEWINNEK
    ref = reference if reference is not None else horizontal_line(int(image.shape[1]))
    flagged = ref.method == HORIZONTAL and not lateral_view
    ref_pts = ref.as_points()
    fit = fit_cup_ellipse(image, cup_box, stem_boxes=stem_boxes)

    def refuse(reason: str) -> CupMeasurement:
        return CupMeasurement(
            side=side,
            inclination_deg=None,
            anteversion_deg=None,
            inclination_reference=ref.method,
            anteversion_method=method,
            ellipse=fit.ellipse,
            reference_line=ref_pts,
            quality=fit.quality,
            refusal_reason=reason,
            flagged=flagged,
        )

    if view not in (View.AP_PELVIS, View.AP_HIP, View.LATERAL_HIP):
        return refuse(f"cup angles are not measured on a {view.value} view")
    if fit.refusal_reason is not None or fit.ellipse is None or fit.opening_dir is None:
        return refuse(fit.refusal_reason or "no rim ellipse")
    e = fit.ellipse
    if geometry is not None and pixel_spacing_mm:
        pp = geometry.principal_point or Point((image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0)
        n = cup_axis_perspective(e, fit.opening_dir, geometry.source_image_distance_mm / pixel_spacing_mm, pp)
    else:
        n = cup_axis_parallel(e, fit.opening_dir)
    liaw = None if fit.liaw_sin is None else math.degrees(math.asin(fit.liaw_sin))
    if lateral_view:
        version = woo_morrey_version(n, ref)
        return CupMeasurement(
            side=side,
            inclination_deg=None,
            anteversion_deg=round(version, 2),
            inclination_reference=ref.method,
            anteversion_method=WOO_MORREY,
            ellipse=e,
            reference_line=ref_pts,
            quality=fit.quality,
        )
    ri, ra = angles_from_axis(n, ref, side)
    if ri < -5.0 or ri > 95.0:
        return refuse(f"cup opening points the wrong way for the {side.name.lower()} hip (side mislabelled?)")
    return CupMeasurement(
        side=side,
        inclination_deg=round(ri, 2),
        anteversion_deg=round(ra, 2),
        inclination_reference=ref.method,
        anteversion_method=LEWINNEK,
        anteversion_liaw_deg=None if liaw is None else round(liaw, 2),
        ellipse=e,
        reference_line=ref_pts,
        quality=fit.quality,
        flagged=flagged,
    )


def conic_to_ellipse(C: FloatArray) -> Ellipse:
    """Centre, semi-axes and major-axis angle of the ellipse with conic matrix ``C``."""
    A, B, D = C[0, 0], C[0, 1], C[0, 2]
    Cc, E, F = C[1, 1], C[1, 2], C[2, 2]
    M = np.array([[A, B], [B, Cc]])
    centre = np.linalg.solve(M, -np.array([D, E]))
    k = -(F + D * centre[0] + E * centre[1])
    w, V = np.linalg.eigh(M / k)
    # smaller eigenvalue ↔ longer axis
    i_major = int(np.argmin(w))
    a, b = 1.0 / math.sqrt(w[i_major]), 1.0 / math.sqrt(w[1 - i_major])
    vx, vy = V[:, i_major]
    return Ellipse(float(centre[0]), float(centre[1]), a, b, math.degrees(math.atan2(vy, vx)) % 180.0)


def cup_diameter_mm(fit: CupFit, pixel_spacing_mm: float, geometry: ProjectionGeometry | None = None) -> float | None:
    """Outer cup diameter in millimetres at the patient, corrected for magnification."""
    if fit.dome_radius_px is None:
        return None
    mag = geometry.magnification if geometry is not None else 1.0
    return 2.0 * fit.dome_radius_px * pixel_spacing_mm / mag
