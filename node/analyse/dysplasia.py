"""Dysplasia evidence on an AP radiograph: lateral centre-edge angle (LCE) and Tönnis angle.

A dysplasia flag from a classifier is easier to trust when it comes with the two numbers a
radiologist would measure (Wiberg's LCE < 20° and a Tönnis angle > 10° are the usual signs of an
undercovered femoral head). Both need two things found on the image:

* the femoral head — a bright disc with a sharp cortical outline: a circle fit (edge RANSAC with
  bright-inside polarity, the same machinery as the cup's dome) inside the hip-joint box;
* the sourcil — the dense, sclerotic weight-bearing roof of the acetabulum, a thin bright arc
  concentric with the head just beyond the joint space. Rays are cast from the head centre
  every 2° over the roof; on each the strongest thin bright ridge in a band just outside the
  head is scored. The sourcil is the contiguous run of angles around its strongest part (over
  the top of the head) where the ridge stays above half-way between its strength there and
  what lies beyond: its lateral and medial ends are the edges.

Angles are taken against the pelvic reference line (inter-teardrop line), like the cup's:
LCE between the perpendicular to that line through the head centre and the line to the lateral
sourcil edge (positive laterally); Tönnis between a parallel to the line and the line from the
medial to the lateral sourcil edge (positive when the lateral end is higher). Either comes back
as ``None`` with a reason when its landmarks are not found convincingly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from node.analyse.cup import edge_pixels, ransac_circles, subpixel_edges
from node.analyse.reference import ReferenceLine, horizontal_line
from node.domain import Box, Point, Side
from node.imageops import sample_bilinear

FloatArray = NDArray[np.float64]

MIN_HEAD_SUPPORT = 0.35  # fraction of the head circle that must show an outward edge
MIN_RIDGE_CONTRAST = 0.01  # intensity units (0..1 image) of the sourcil ridge at the top
HEAD_WORKING_PX = 256  # joint boxes larger than this are searched for the head at a reduced scale
MAX_BEYOND_MEDIAL = 0.25  # the medial end of the sourcil fades into the acetabular fossa: be strict


@dataclass(frozen=True)
class DysplasiaMeasurement:
    side: Side
    lce_deg: float | None
    tonnis_deg: float | None
    head_centre: Point | None = None
    head_radius_px: float | None = None
    sourcil_medial: Point | None = None
    sourcil_lateral: Point | None = None
    reference_method: str = ""
    quality: float = 0.0
    refusal_reason: str | None = None


def _axes(reference: ReferenceLine, side: Side) -> tuple[FloatArray, FloatArray]:
    """Unit 'lateral' and 'superior' directions in image coordinates for one hip on an AP."""
    hx, hy = reference.unit
    lateral = np.array([-hx, -hy]) if side is Side.RIGHT else np.array([hx, hy])
    superior = np.array([hy, -hx])
    return lateral, superior


def lateral_centre_edge_deg(centre: Point, lateral_edge: Point, reference: ReferenceLine, side: Side) -> float:
    """Wiberg's angle: from the perpendicular to the reference line to the lateral edge,
    positive when the edge lies lateral to the perpendicular."""
    lat, sup = _axes(reference, side)
    d = np.array([lateral_edge.x - centre.x, lateral_edge.y - centre.y])
    return math.degrees(math.atan2(float(d @ lat), float(d @ sup)))


def tonnis_deg(medial_edge: Point, lateral_edge: Point, reference: ReferenceLine, side: Side) -> float:
    """Tönnis angle: slope of the sourcil (medial → lateral end) against the reference line,
    positive when the lateral end is higher."""
    lat, sup = _axes(reference, side)
    d = np.array([lateral_edge.x - medial_edge.x, lateral_edge.y - medial_edge.y])
    return math.degrees(math.atan2(float(d @ sup), float(d @ lat)))


def fit_femoral_head(
    image: NDArray[np.float32], joint_box: Box, *, seed: int = 0
) -> tuple[float, float, float, float] | None:
    """Femoral head circle (cx, cy, r in image pixels) and its support (0..1) in a joint box."""
    h, w = image.shape
    x0, y0 = max(math.floor(joint_box.x0), 0), max(math.floor(joint_box.y0), 0)
    x1, y1 = min(math.ceil(joint_box.x1) + 1, w), min(math.ceil(joint_box.y1) + 1, h)
    roi = np.asarray(image[y0:y1, x0:x1], dtype=np.float32)
    if roi.shape[0] < 16 or roi.shape[1] < 16:
        return None
    # A head some 100 px across is found as well as one 300 px across, at a ninth of the cost:
    # joint boxes of full-resolution images are fitted at a working scale of at most
    # HEAD_WORKING_PX (the sourcil, whose ends make the angles, is still traced at full scale).
    f = max(1, math.ceil(min(roi.shape) / HEAD_WORKING_PX))
    if f > 1:
        # whole f × f blocks only, so that INTER_AREA averages exactly those blocks and the
        # mapping back below is exact
        roi = roi[: roi.shape[0] // f * f, : roi.shape[1] // f * f]
        roi = np.asarray(cv2.resize(roi, (roi.shape[1] // f, roi.shape[0] // f), interpolation=cv2.INTER_AREA),
                         dtype=np.float32)
    smooth = np.asarray(cv2.GaussianBlur(roi, (0, 0), 1.5), dtype=np.float32)
    pts, normals, strength = subpixel_edges(smooth, edge_pixels(smooth))
    size = min(joint_box.width, joint_box.height) / f
    circles = ransac_circles(
        pts, normals, strength, 0.2 * size, 0.6 * size, tol=max(1.0, 0.012 * size), rng=np.random.default_rng(seed),
        keep=1,
    )
    if not circles:
        return None
    cx, cy, r = circles[0]
    # support: the fraction of 120 sectors (3° each) in which an edge point lies on the circle
    # (radially within the tolerance), binned rather than compared pairwise: a full-resolution
    # joint box has tens of thousands of edge points
    tol = max(1.5, 0.02 * r)
    dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
    on = np.abs(np.hypot(dx, dy) - r) < tol
    sectors = np.floor((np.arctan2(dy[on], dx[on]) % (2 * math.pi)) / (2 * math.pi) * 120).astype(int) % 120
    support = float(len(np.unique(sectors))) / 120.0
    # working-scale pixel (i, j) covers full-scale pixels f·i … f·i + f − 1: centre at f·i + (f − 1)/2
    return f * cx + (f - 1) / 2.0 + x0, f * cy + (f - 1) / 2.0 + y0, f * r, support


def _ridge_profile(
    smooth: NDArray[np.float32], cx: float, cy: float, r: float, dirs: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """For each ray direction: strongest thin-bright-ridge response in the band just outside the
    head, and the radius where it is."""
    rho = np.linspace(1.04 * r, 1.4 * r, 37)  # beyond the head's own cortex
    w = max(2.0, 0.05 * r)
    mapx = (cx + dirs[:, 0:1] * rho[None, :]).astype(np.float32)
    mapy = (cy + dirs[:, 1:2] * rho[None, :]).astype(np.float32)

    def sample(dr: float) -> FloatArray:
        mx = (mapx + dirs[:, 0:1] * dr).astype(np.float32)
        my = (mapy + dirs[:, 1:2] * dr).astype(np.float32)
        return sample_bilinear(smooth, mx, my)

    centre, inner, outer = sample(0.0), sample(-w), sample(w)
    resp = centre - 0.5 * (inner + outer)
    k = np.argmax(resp, axis=1)
    rows = np.arange(len(dirs))
    return resp[rows, k], rho[k]


def _run(resp: FloatArray, radius: FloatArray, i0: int, thr: float, max_jump: float) -> tuple[int, int]:
    """Indices of the contiguous run of rays around ray ``i0`` with response ≥ thr whose ridge
    stays concentric (radius changes by at most ``max_jump`` between neighbouring rays): the
    sourcil is an arc around the head, other bright structures that touch it are not."""
    on = resp >= thr
    lo = hi = i0
    while hi + 1 < len(resp) and on[hi + 1] and abs(radius[hi + 1] - radius[hi]) <= max_jump:
        hi += 1
    while lo - 1 >= 0 and on[lo - 1] and abs(radius[lo - 1] - radius[lo]) <= max_jump:
        lo -= 1
    return lo, hi


def measure_dysplasia(
    image: NDArray[np.float32],
    joint_box: Box,
    side: Side,
    *,
    reference: ReferenceLine | None,
    head: tuple[float, float, float] | None = None,
) -> DysplasiaMeasurement:
    """LCE and Tönnis angle for one native hip on an AP image (float 0..1, bone bright).

    ``head`` (cx, cy, r) may be given when already known (e.g. from a landmark model); otherwise
    it is fitted inside ``joint_box``. Never raises on bad images.
    """
    img = np.asarray(image, dtype=np.float32)
    ref = reference if reference is not None else horizontal_line(int(img.shape[1]))
    quality = 1.0
    if head is None:
        fitted = fit_femoral_head(img, joint_box)
        if fitted is None or fitted[3] < MIN_HEAD_SUPPORT:
            return DysplasiaMeasurement(side, None, None, reference_method=ref.method,
                                        refusal_reason="femoral head outline not found")
        cx, cy, r, quality = fitted
    else:
        cx, cy, r = head
    if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(r) and r > 0):
        return DysplasiaMeasurement(side, None, None, reference_method=ref.method,
                                    refusal_reason="femoral head outline not found")
    lat, sup = _axes(ref, side)
    # rays from 60° medial to 80° lateral of the superior direction, every 2°
    phis = np.radians(np.arange(-60.0, 80.01, 2.0))
    dirs = np.stack([np.cos(phis)[:, None] * sup + np.sin(phis)[:, None] * lat]).reshape(-1, 2)
    # only the region the rays sample is smoothed (not the whole radiograph, once per hip):
    # out to 1.4 r + the ridge half-width, plus the blur's reach
    h, w = img.shape
    reach = 1.5 * r + 8.0
    rx0, ry0 = max(math.floor(cx - reach), 0), max(math.floor(cy - reach), 0)
    rx1, ry1 = min(math.ceil(cx + reach) + 1, w), min(math.ceil(cy + reach) + 1, h)
    if rx1 - rx0 < 8 or ry1 - ry0 < 8:
        return DysplasiaMeasurement(side, None, None, Point(cx, cy), r, reference_method=ref.method,
                                    refusal_reason="femoral head outside the image")
    smooth = np.asarray(cv2.GaussianBlur(img[ry0:ry1, rx0:rx1], (0, 0), 1.0), dtype=np.float32)
    resp, radius = _ridge_profile(smooth, cx - rx0, cy - ry0, r, dirs)
    # the sourcil's strongest part lies over the top of the head; its level sets the thresholds
    top = np.abs(np.degrees(phis) - 10.0) <= 25.0
    i_top = int(np.flatnonzero(top)[np.argmax(resp[top])])
    top_resp = float(np.median(resp[max(i_top - 2, 0) : i_top + 3]))
    base = DysplasiaMeasurement(side, None, None, Point(cx, cy), r, reference_method=ref.method, quality=quality)
    if top_resp < MIN_RIDGE_CONTRAST:
        return DysplasiaMeasurement(**{**base.__dict__, "refusal_reason": "acetabular roof (sourcil) not found"})
    jump = 0.04 * r
    lo, hi = _run(resp, radius, i_top, 0.5 * top_resp, jump)
    # The roof beyond the sourcil is not empty (the acetabular rim continues, less dense): the
    # end is where the response crosses half-way between the sourcil and what lies beyond it.
    n_out = 5
    beyond_lat = resp[hi + 1 : hi + 1 + n_out]
    beyond_med = resp[max(lo - n_out, 0) : lo]
    thr_lat = 0.5 * (top_resp + (float(np.median(beyond_lat)) if len(beyond_lat) else 0.0))
    thr_med = 0.5 * (top_resp + (float(np.median(beyond_med)) if len(beyond_med) else 0.0))
    hi = _run(resp, radius, i_top, thr_lat, jump)[1]
    lo = _run(resp, radius, i_top, thr_med, jump)[0]

    def edge_point(i: int, j: int) -> Point:
        # sub-sample end: interpolate where the response crosses the threshold between i and j
        thr = thr_lat if j > i else thr_med
        f = 0.0 if j < 0 or j >= len(phis) else float(np.clip((resp[i] - thr) / max(resp[i] - resp[j], 1e-9), 0, 1))
        phi = phis[i] + (0.0 if j < 0 or j >= len(phis) else f * (phis[j] - phis[i]))
        d = math.cos(phi) * sup + math.sin(phi) * lat
        return Point(cx + float(radius[i]) * float(d[0]), cy + float(radius[i]) * float(d[1]))

    lateral_edge = edge_point(hi, hi + 1)
    medial_edge = edge_point(lo, lo - 1)
    centre = Point(cx, cy)
    # an end counts only where the ridge clearly stops: what lies beyond it is at most half as
    # strong as the sourcil at the top (otherwise the "end" is noise along a continuing rim)
    clear_lat = len(beyond_lat) > 0 and float(np.median(beyond_lat)) <= 0.5 * top_resp
    clear_med = len(beyond_med) > 0 and float(np.median(beyond_med)) <= MAX_BEYOND_MEDIAL * top_resp
    lce = None if (hi == len(phis) - 1 or not clear_lat) else lateral_centre_edge_deg(centre, lateral_edge, ref, side)
    ton = None if (lo == 0 or lce is None or not clear_med) else tonnis_deg(medial_edge, lateral_edge, ref, side)
    if ton is not None and (not -20.0 <= ton <= 45.0 or math.degrees(phis[hi] - phis[lo]) < 25.0):
        ton = None  # an implausible slope or too short an arc: the medial end was not the sourcil's
    reason = None
    if lce is None:
        reason = "lateral edge of the sourcil not found"
    elif ton is None:
        reason = "medial end of the sourcil not found"
    return DysplasiaMeasurement(
        side,
        None if lce is None else round(lce, 2),
        None if ton is None else round(ton, 2),
        centre,
        r,
        medial_edge,
        lateral_edge,
        ref.method,
        quality,
        reason,
    )
