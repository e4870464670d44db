"""A cup read from its clipped metal silhouette, where the rim inside the metal cannot show.

Why: many films (heavily windowed or processed ones, digitised prints, and the independently
written ``sketch`` phantoms) render the shell, the head and the neck as one flat white plateau.
The rim's ellipse then has no edge *inside* the metal for ``node.analyse.cup``'s rim search, and
after every pass refuses, the cup gets no angles although its outline says them plainly:

* the outline of a hemispherical shell is a half circle (the dome) and the open half of the rim
  ellipse; the rim is the shell's equator, so its ellipse shares the dome circle's centre and its
  semi-major axis is the dome's radius, and its long axis is the chord between the dome arc's two
  ends (the arc is symmetric about the cup's axis, so the chord's direction comes from the arc's
  midpoint, not from its ends, which blur into the rim where the two curves touch);
* the open half of the rim bounds the silhouette everywhere along the long axis except where the
  head, neck or stem bulge past it; metal only ever *adds* to the silhouette, so each end of the
  open side read as an ellipse gives the rim's minor axis or more, never less: the smaller end is
  taken, and only where its points agree with one another (a head's circle read as an ellipse gives
  a spread of minor axes).

Checks that hold for any style: the metal is clipped (a plateau), the dome arc spans a half circle
(a full circle is a head or bipolar bearing, a short arc is not a shell), the radius is about half
the cup box's longer side, the plateau covers at least the hemisphere the reading implies (area of
half the disc plus half the ellipse: metal that is not clipped leaves only its thickest part on the
plateau), and both ends of the open side show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from node.domain import Box
from node.imageops import sample_bilinear

FloatArray = NDArray[np.float64]

# The plateau: pixels within this share of the region's range (5th percentile to maximum) of its
# maximum. Clipped metal is flat; the edge blur outside it is refined to sub-pixel below.
PLATEAU_SHARE = 0.02
# The plateau must cover at least this share of the padded region to be a clipped cup at all.
MIN_PLATEAU_SHARE = 0.05
# region round the cup box searched, as a share of its width / height on each side
PAD_SHARE = 0.3
# The dome arc: a hemisphere's outline is a half circle. Dev sketch cups (seeds 424270-424370):
# 176-198° on the cups read right; the clipped head of a cemented all-polyethylene cup (a full
# circle broken by the neck) 242-317°.
DOME_SPAN_DEG = (170.0, 200.0)
# largest angular gap (degrees) inside one run of dome-arc points
ARC_MAX_GAP_DEG = 20.0
# the dome's radius against the cup box's longer side (a box round a cup: about 0.5; dev sketch
# readings 0.40-0.65; the head of a cemented all-polyethylene cup in its box: 0.29-0.33)
RADIUS_BOX_SHARE = (0.4, 0.65)
# a point lies on the dome circle within this share of its radius (at least 1 px)
ON_CIRCLE_SHARE = 0.015
# the stretch of each end of the open side read for the minor axis (share of the semi-major
# axis from the centre): further in, the head's disc (usually at most ~0.75 of the shell) bulges
# past a flat rim; beyond it the rim meets the dome circle tangentially and says little. Dev sketch
# cups (seeds 424270-424330): (0.5, 0.9) read 22 refused cups, 21 within 3° of the truth's rim;
# (0.65, 0.92) 27, 25 within 3° (the worst 4.2° in the ellipse's opening); fresh seeds 424340-424370
# afterwards 18, 15 within 3° (worst 2.0° / 5.2°).
END_SPAN = (0.65, 0.92)
MIN_END_POINTS = 3
# the minor axes read from the smaller end's points must agree: interquartile range at most
# this share of their median (a head's circle read as an ellipse gives a spread of 0.6-2 on
# dev sketch cups; the rim's own points 0.01-0.25)
MAX_END_SPREAD = 0.25
RANSAC_ITERS = 600


@dataclass(frozen=True)
class Silhouette:
    """The rim a clipped cup's outline implies (image coordinates)."""

    cx: float
    cy: float
    radius: float  # the dome's radius = the rim's semi-major axis
    semi_minor: float
    angle_deg: float  # the rim's long axis, 0..180
    opening_dir: tuple[float, float]  # unit vector towards the open side
    dome_span_deg: float
    end_spread: float
    plateau_share: float  # plateau area over the implied hemisphere's silhouette area


def _subpixel_edges(pts: FloatArray, roi: NDArray[np.float32], top: float) -> FloatArray:
    """Each outline pixel moved along its normal to where the profile crosses halfway between
    the plateau and the level a few pixels outside (the mask's own edge lies inside the blur).
    Profiles that leave the region, or have no crossing, leave their point where it was."""
    sm = cv2.GaussianBlur(roi, (0, 0), 1.0)
    gx = cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3)
    h, w = roi.shape
    ts = np.arange(-3.0, 6.01, 0.25)
    xi, yi = pts[:, 0].astype(int), pts[:, 1].astype(int)
    g = np.column_stack([gx[yi, xi], gy[yi, xi]]).astype(np.float64)
    norm = np.hypot(g[:, 0], g[:, 1])
    n = -g / np.maximum(norm, 1e-12)[:, None]  # outwards: bright to dark
    xs = pts[:, :1] + ts[None, :] * n[:, :1]
    ys = pts[:, 1:] + ts[None, :] * n[:, 1:]
    inside = (xs.min(axis=1) >= 0) & (ys.min(axis=1) >= 0) & (xs.max(axis=1) <= w - 1) & (ys.max(axis=1) <= h - 1)
    prof = sample_bilinear(roi, xs, ys)
    half = 0.5 * (top + prof[:, -1:])
    below = prof < half
    j = np.argmax(below, axis=1)  # the first sample under the half level
    ok = (norm >= 1e-6) & inside & below.any(axis=1) & (j > 0)
    rows = np.flatnonzero(ok)
    j = j[rows]
    p0, p1 = prof[rows, j - 1], prof[rows, j]
    t = ts[j - 1] + (p0 - half[rows, 0]) / np.maximum(p0 - p1, 1e-9) * (ts[j] - ts[j - 1])
    out = pts.copy()
    out[rows] = pts[rows] + t[:, None] * n[rows]
    return out


def _dome_circle(pts: FloatArray, r_min: float, r_max: float) -> tuple[float, float, float] | None:
    """The circle covering the widest arc of outline points (seeded RANSAC, refined on its
    inliers)."""
    rng = np.random.default_rng(0)
    n = len(pts)
    if n < 20:
        return None
    best: tuple[float, int, float, float, float] | None = None
    for _ in range(RANSAC_ITERS):
        (x1, y1), (x2, y2), (x3, y3) = pts[rng.choice(n, 3, replace=False)]
        d = 2.0 * (x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))
        if abs(d) < 1e-6:
            continue
        s1, s2, s3 = x1 * x1 + y1 * y1, x2 * x2 + y2 * y2, x3 * x3 + y3 * y3
        ux = (s1 * (y2 - y3) + s2 * (y3 - y1) + s3 * (y1 - y2)) / d
        uy = (s1 * (x3 - x2) + s2 * (x1 - x3) + s3 * (x2 - x1)) / d
        r = math.hypot(x1 - ux, y1 - uy)
        if not r_min <= r <= r_max:
            continue
        on = np.abs(np.hypot(pts[:, 0] - ux, pts[:, 1] - uy) - r) < 1.0
        ang = np.degrees(np.arctan2(pts[on, 1] - uy, pts[on, 0] - ux))
        span = 5.0 * len(np.unique(np.floor(ang / 5.0)))
        key = (span, int(on.sum()))
        if best is None or key > best[:2]:
            best = (span, int(on.sum()), ux, uy, r)
    if best is None:
        return None
    _, _, ux, uy, r = best
    for _ in range(3):
        q = pts[np.abs(np.hypot(pts[:, 0] - ux, pts[:, 1] - uy) - r) < 1.0]
        if len(q) < 3:
            return None
        a = np.column_stack([2 * q[:, 0], 2 * q[:, 1], np.ones(len(q))])
        sol, *_ = np.linalg.lstsq(a, (q**2).sum(axis=1), rcond=None)
        ux, uy = float(sol[0]), float(sol[1])
        r = math.sqrt(max(float(sol[2]) + ux * ux + uy * uy, 0.0))
    return ux, uy, r


def _longest_arc(ang_deg: FloatArray) -> tuple[float, float] | None:
    """(start, span) in degrees of the longest run of angles with no gap over ARC_MAX_GAP_DEG."""
    a = np.sort(ang_deg % 360.0)
    if len(a) < 10:
        return None
    gaps = np.diff(np.r_[a, a[0] + 360.0])
    big = np.flatnonzero(gaps > ARC_MAX_GAP_DEG)
    if len(big) == 0:
        return None  # a full circle
    runs = []
    for j in range(len(big)):
        start = float(a[(big[j] + 1) % len(a)])
        end = float(a[big[(j + 1) % len(big)]])
        runs.append(((end - start) % 360.0, start))
    span, start = max(runs)
    return start, span


def read_silhouette(image: NDArray[np.float32], cup_box: Box,
                    open_hint: tuple[float, float]) -> Silhouette | None:
    """The rim a clipped cup's outline implies, or ``None`` where any check fails (see the
    module's docstring). ``open_hint``: roughly where the cup opens (image coordinates)."""
    w, h = cup_box.width, cup_box.height
    x0 = max(0, int(cup_box.x0 - PAD_SHARE * w))
    y0 = max(0, int(cup_box.y0 - PAD_SHARE * h))
    x1 = min(int(image.shape[1]), int(cup_box.x1 + PAD_SHARE * w))
    y1 = min(int(image.shape[0]), int(cup_box.y1 + PAD_SHARE * h))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    roi = np.ascontiguousarray(image[y0:y1, x0:x1], dtype=np.float32)
    top, low = float(roi.max()), float(np.percentile(roi, 5))
    if top - low <= 1e-6:
        return None
    mask = (roi >= top - PLATEAU_SHARE * (top - low)).astype(np.uint8)
    if mask.mean() < MIN_PLATEAU_SHARE:
        return None
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    inside = labels[max(0, int(cup_box.y0) - y0):int(cup_box.y1) - y0, max(0, int(cup_box.x0) - x0):int(cup_box.x1) - x0]
    counts = np.bincount(inside.ravel(), minlength=n)
    counts[0] = 0
    k = int(counts.argmax())
    if counts[k] == 0:
        return None
    comp = (labels == k).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = max(contours, key=len)[:, 0, :].astype(np.float64)
    on_border = (pts[:, 0] <= 0) | (pts[:, 1] <= 0) | (pts[:, 0] >= comp.shape[1] - 1) | (pts[:, 1] >= comp.shape[0] - 1)
    pts = _subpixel_edges(pts[~on_border], roi, top)
    side = max(w, h)
    circle = _dome_circle(pts, RADIUS_BOX_SHARE[0] * side, RADIUS_BOX_SHARE[1] * side)
    if circle is None:
        return None
    ux, uy, r = circle
    dist = np.hypot(pts[:, 0] - ux, pts[:, 1] - uy)
    on = np.abs(dist - r) < max(1.0, ON_CIRCLE_SHARE * r)
    arc = _longest_arc(np.degrees(np.arctan2(pts[on, 1] - uy, pts[on, 0] - ux)))
    if arc is None:
        return None
    start, span = arc
    if not DOME_SPAN_DEG[0] <= span <= DOME_SPAN_DEG[1]:
        return None
    mid = math.radians(start + span / 2.0)
    u = (-math.cos(mid), -math.sin(mid))  # the opening faces away from the dome's middle
    if u[0] * open_hint[0] + u[1] * open_hint[1] <= 0:
        return None
    theta = math.atan2(u[1], u[0]) + math.pi / 2.0
    along = np.array([math.cos(theta), math.sin(theta)])
    rel = pts - np.array([ux, uy])
    xr, yr = rel @ along, rel @ np.array(u)
    ends: list[tuple[float, float]] = []
    for sgn in (-1.0, 1.0):
        t = sgn * xr / r
        sel = (t > END_SPAN[0]) & (t < END_SPAN[1]) & (yr > 0) & (dist < 1.02 * r)
        if int(sel.sum()) < MIN_END_POINTS:
            return None
        minors = yr[sel] / np.sqrt(1.0 - (xr[sel] / r) ** 2)
        med = float(np.median(minors))
        spread = float(np.percentile(minors, 75) - np.percentile(minors, 25)) / max(med, 1.0)
        ends.append((med, spread))
    b, spread = min(ends)
    if spread > MAX_END_SPREAD or not 0.0 <= b < r:
        return None
    plateau = float(comp.sum()) / (0.5 * math.pi * r * (r + b))
    if plateau < 1.0:
        return None
    return Silhouette(ux + x0, uy + y0, r, b, math.degrees(theta) % 180.0, u, span, spread, plateau)
