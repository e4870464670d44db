"""The "sketch" phantom: an independent 2-D attenuation painter, for EVALUATION ONLY.

Why it exists: the node's models were trained on images from our own phantom generator, and an
outside tester scores us with a renderer written independently of ours. A second renderer that
shares no shapes, code or parameters with the training generator shows how the node fails on
anatomy and implants drawn by someone else. Never train on these images: their value is that the
models have not seen their style.

How an image is made:

1. ``_plan`` draws every random choice (view, anatomy, implants, presentation) from
   ``np.random.default_rng([seed, index, 7919])`` into a ``SketchScene``; the ground truth is
   computed from the plan alone, so it does not depend on pixels.
2. The scene is painted as a map of attenuation line integrals (mu x path length in mm, excess
   over water for bone and metal) on the stored pixel grid, evaluated in the view's own world
   millimetres through ``Frame`` (so in-plane rotation and cropping are exact, never resampled).
   Bones get 3-D-like thickness profiles from signed distances (a cylinder chord
   ``2*sqrt(2re - e^2)`` at depth ``e`` inside the outline, a thinner cortical shell on top).
   Acetabular cups, liners, heads and resurfacing caps are drawn physically: the analytic length
   of each pixel's ray through a hemispherical shell (``halfball_chord``).
3. ``_expose`` turns the integrals into a detector image (exponential attenuation, blur,
   scatter, quantum and electronic noise, grid lines, collimation), takes the log and applies a
   random presentation (window, edge enhancement, tone curve, sometimes histogram equalisation),
   bit depth and photometric interpretation, then burns in text.

World coordinates of AP views: ``u`` mm towards image right (the patient's left), ``v`` mm down
the image (caudal), origin midway between the hip centres; the beam runs along ``z``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from node.domain import DETECTOR_CLASSES, Box, Ellipse, Point, Side, View
from node.phantom.truth import CupTruth, GroundTruth, HipTruth

Arr = NDArray[np.float64]
Arr32 = NDArray[np.float32]
Vec = tuple[float, float]
Vec3 = tuple[float, float, float]
Field = Callable[..., Arr]  # (u, v, texture) -> values; lambdas bind loop values as defaults

KINDS = ("mixed", "cups")

# attenuation per mm at a diagnostic effective energy; bone and implants as excess over water
MU_WATER = 0.0205
MU_FAT = 0.0025  # fat attenuates this much less than muscle
MU_TRAB = 0.016  # cancellous bone
MU_CORT = 0.048  # cortical bone
MU_PLATE = 0.026  # thin flat bone (iliac wing, sacrum) as a whole
MU_CEMENT = 0.056  # PMMA with barium sulphate: a little denser than cortical bone
MU_POLY = -0.0008  # UHMWPE: as lucent as soft tissue
MU_LEAD = 3.0
METAL_MU: dict[str, float] = {"cocr": 1.25, "steel": 1.0, "ti": 0.52, "ceramic": 0.33}

THA_DESIGNS = ("hemispherical", "flanged", "dual_mobility", "cemented")
THA_DESIGN_P = (0.55, 0.10, 0.15, 0.20)
STEM_KINDS = ("straight_taper", "anatomic", "short", "revision_long")
HARDWARE = ("sliding_hip_screw", "cannulated_screws", "intramedullary_nail", "plate", "cerclage")
OTHER_KINDS = ("knee", "hand", "chest")


# ---------------------------------------------------------------------------------------------
# image frame and canvas


@dataclass(frozen=True)
class Frame:
    """World millimetres of a view <-> stored pixels (x column, y row, origin at pixel centre 0).

    The content is rotated by ``theta`` (radians, from +x towards +y) about the image centre,
    which shows world point ``(u0, v0)``. Painting evaluates every field at the world position of
    each pixel centre, so the rotation is exact and the truth needs only ``to_px``."""

    rows: int
    cols: int
    spacing: float
    u0: float
    v0: float
    theta: float

    def to_px(self, u: float, v: float) -> Vec:
        c, s = math.cos(self.theta), math.sin(self.theta)
        du, dv = u - self.u0, v - self.v0
        x = (self.cols - 1) / 2.0 + (c * du - s * dv) / self.spacing
        y = (self.rows - 1) / 2.0 + (s * du + c * dv) / self.spacing
        return x, y

    def window(self, u_lo: float, u_hi: float, v_lo: float, v_hi: float) -> tuple[slice, slice] | None:
        """Pixel rows/columns covering a world rectangle, clipped to the image (None if outside)."""
        xs, ys = zip(*(self.to_px(u, v) for u in (u_lo, u_hi) for v in (v_lo, v_hi)), strict=True)
        x0, x1 = max(0, math.floor(min(xs)) - 1), min(self.cols, math.ceil(max(xs)) + 2)
        y0, y1 = max(0, math.floor(min(ys)) - 1), min(self.rows, math.ceil(max(ys)) + 2)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def grid(self, ys: slice, xs: slice) -> tuple[Arr, Arr]:
        """World ``(u, v)`` of the pixel centres of a window."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        y = np.arange(ys.start, ys.stop, dtype=np.float64)[:, None] - (self.rows - 1) / 2.0
        x = np.arange(xs.start, xs.stop, dtype=np.float64)[None, :] - (self.cols - 1) / 2.0
        u = self.u0 + self.spacing * (c * x + s * y)
        v = self.v0 + self.spacing * (-s * x + c * y)
        return u, v


class Canvas:
    """Line-integral layers of one image: soft tissue, bone (and cement), metal (and lead).

    Metal is kept apart so the exposure's window can be set on the anatomy alone, as a modality's
    histogram analysis does (which is why metal is uniformly white on real films)."""

    def __init__(self, frame: Frame, texture: Arr32) -> None:
        self.frame = frame
        shape = (frame.rows, frame.cols)
        self.layers: dict[str, Arr32] = {k: np.zeros(shape, np.float32) for k in ("soft", "bone", "metal")}
        self.texture = texture

    def paint(self, layer: str, bounds: tuple[float, float, float, float], fn: Field, gain: float = 1.0) -> None:
        """Add ``gain * fn(u, v, texture)`` over the pixels of a world rectangle."""
        win = self.frame.window(*bounds)
        if win is None:
            return
        u, v = self.frame.grid(*win)
        val = fn(u, v, self.texture[win].astype(np.float64))
        self.layers[layer][win] += (gain * val).astype(np.float32)

    def scale(self, layer: str, bounds: tuple[float, float, float, float], fn: Field) -> None:
        """Multiply a layer by ``fn`` (growth cartilage cut into already painted bone)."""
        win = self.frame.window(*bounds)
        if win is None:
            return
        u, v = self.frame.grid(*win)
        self.layers[layer][win] *= fn(u, v, self.texture[win].astype(np.float64)).astype(np.float32)


def _texture(rng: np.random.Generator, rows: int, cols: int) -> Arr32:
    """Band-limited noise (unit std) for trabecular mottling, stool and cement irregularity."""
    out = np.zeros((rows, cols), np.float32)
    for factor, sigma, weight in ((4, 0.8, 0.6), (2, 0.6, 0.6), (1, 0.7, 0.25)):
        small = rng.standard_normal((rows // factor + 2, cols // factor + 2)).astype(np.float32)
        small = ndimage.gaussian_filter(small, sigma)
        big = ndimage.zoom(small, factor, order=1)[:rows, :cols]
        out += weight * big / max(float(small.std()), 1e-6)
    out /= max(float(out.std()), 1e-6)
    return out


def smooth_closed(pts: Sequence[Vec], iterations: int = 3) -> list[Vec]:
    """Chaikin corner cutting: a polygon of landmarks becomes a smooth bone outline."""
    out = list(pts)
    for _ in range(iterations):
        nxt: list[Vec] = []
        for i in range(len(out)):
            (ax, ay), (bx, by) = out[i], out[(i + 1) % len(out)]
            nxt.append((0.75 * ax + 0.25 * bx, 0.75 * ay + 0.25 * by))
            nxt.append((0.25 * ax + 0.75 * bx, 0.25 * ay + 0.75 * by))
        out = nxt
    return out


def _bounds(points: Sequence[Vec], margin: float) -> tuple[float, float, float, float]:
    us = [p[0] for p in points]
    vs = [p[1] for p in points]
    return min(us) - margin, max(us) + margin, min(vs) - margin, max(vs) + margin


# ---------------------------------------------------------------------------------------------
# signed distances and thickness profiles (world mm)


def sd_circle(u: Arr, v: Arr, c: Vec, r: float) -> Arr:
    return np.asarray(np.hypot(u - c[0], v - c[1]) - r)


def sd_ellipse(u: Arr, v: Arr, c: Vec, a: float, b: float, ang_deg: float = 0.0) -> Arr:
    """Approximate signed distance to an ellipse (first-order, exact on the outline)."""
    ca, sa = math.cos(math.radians(ang_deg)), math.sin(math.radians(ang_deg))
    du, dv = u - c[0], v - c[1]
    x, y = du * ca + dv * sa, -du * sa + dv * ca
    k0 = np.hypot(x / a, y / b)
    k1 = np.hypot(x / (a * a), y / (b * b))
    ratio = np.divide(k0, k1, out=np.full_like(k0, min(a, b)), where=k1 > 1e-12)
    return np.asarray((k0 - 1.0) * ratio)


def _seg_param(u: Arr, v: Arr, p: Vec, q: Vec) -> tuple[Arr, Arr, float]:
    """Position along segment p->q (unclamped fraction), distance to its line, its length."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    length = math.hypot(dx, dy) or 1e-9
    ex, ey = dx / length, dy / length
    wu, wv = u - p[0], v - p[1]
    t = (wu * ex + wv * ey) / length
    d = np.abs(wu * ey - wv * ex)
    return t, d, length


def sd_segment(u: Arr, v: Arr, p: Vec, q: Vec, r0: float, r1: float | None = None) -> Arr:
    """Tapered capsule: distance to segment minus a radius interpolated along it."""
    r1 = r0 if r1 is None else r1
    t, d, length = _seg_param(u, v, p, q)
    tc = np.clip(t, 0.0, 1.0)
    along = (t - tc) * length
    return np.asarray(np.hypot(d, along) - (r0 + (r1 - r0) * tc))


def sd_polyline(u: Arr, v: Arr, pts: Sequence[Vec], r: float) -> Arr:
    out = sd_segment(u, v, pts[0], pts[1], r)
    for a, b in itertools.pairwise(pts[1:]):
        out = np.minimum(out, sd_segment(u, v, a, b, r))
    return out


def sd_polygon(u: Arr, v: Arr, pts: Sequence[Vec]) -> Arr:
    """Exact signed distance to a simple polygon (negative inside, even-odd rule)."""
    d2 = np.full(u.shape, np.inf)
    inside = np.zeros(u.shape, bool)
    n = len(pts)
    for i in range(n):
        ax, ay = pts[i]
        bx, by = pts[i - 1]
        ex, ey = bx - ax, by - ay
        wu, wv = u - ax, v - ay
        t = np.clip((wu * ex + wv * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
        d2 = np.minimum(d2, (wu - ex * t) ** 2 + (wv - ey * t) ** 2)
        if ay != by:
            cross = (v < ay) != (v < by)
            xint = ax + (v - ay) * (ex / ey)
            inside ^= cross & (u < xint)
    d = np.sqrt(d2)
    return np.asarray(np.where(inside, -d, d))


def _raster(row: Arr, col: Arr, rows: int, cols: int) -> NDArray[np.bool_]:
    """Even-odd scanline fill of a polygon given in (fractional) pixel indices."""
    idx: list[NDArray[np.int64]] = []
    for i in range(len(row)):
        r0, c0, r1, c1 = float(row[i - 1]), float(col[i - 1]), float(row[i]), float(col[i])
        if r0 == r1:
            continue
        lo, hi = min(r0, r1), max(r0, r1)
        ys = np.arange(max(0, math.ceil(lo)), min(rows, math.ceil(hi)), dtype=np.int64)
        if ys.size == 0:
            continue
        xs = c0 + (ys - r0) * ((c1 - c0) / (r1 - r0))
        xi = np.clip(np.ceil(xs), 0, cols).astype(np.int64)
        idx.append(ys * (cols + 1) + xi)
    if not idx:
        return np.zeros((rows, cols), bool)
    toggles = np.bincount(np.concatenate(idx), minlength=rows * (cols + 1)).reshape(rows, cols + 1)[:, :cols]
    return np.asarray(np.cumsum(toggles, axis=1) % 2 == 1)


def sd_polygon_fast(u: Arr, v: Arr, pts: Sequence[Vec]) -> Arr:
    """Signed distance to a polygon by scanline fill and distance transforms.

    About half a pixel accurate, but its cost does not grow with the number of vertices, so
    smooth bone outlines can have hundreds. ``u, v`` must be a window's pixel-centre grid."""
    rows, cols = u.shape
    if rows < 3 or cols < 3:
        return sd_polygon(u, v, pts)
    u0, v0 = float(u[0, 0]), float(v[0, 0])
    ax, ay = float(u[0, 1]) - u0, float(v[0, 1]) - v0
    bx, by = float(u[1, 0]) - u0, float(v[1, 0]) - v0
    det = ax * by - ay * bx
    p = np.asarray(pts, dtype=np.float64)
    du, dv = p[:, 0] - u0, p[:, 1] - v0
    col = (du * by - dv * bx) / det
    row = (ax * dv - ay * du) / det
    inside = _raster(row, col, rows, cols)
    if not inside.any():
        return np.full(u.shape, 1e3)
    if inside.all():
        return sd_polygon(u, v, pts)
    step = math.hypot(ax, ay)
    din = ndimage.distance_transform_edt(inside)
    dout = ndimage.distance_transform_edt(~inside)
    return np.asarray(np.where(inside, 0.5 - din, dout - 0.5) * step)


def smin(a: Arr, b: Arr, k: float) -> Arr:
    """Smooth union of two signed distances (fillet of size ~k, as bones merge)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return np.asarray(b + (a - b) * h - k * h * (1.0 - h))


def chord(e: Arr, r: Arr | float) -> Arr:
    """Path length through a cylinder of radius r of a ray at depth e inside its outline."""
    ee = np.clip(e, 0.0, r)
    return np.asarray(2.0 * np.sqrt(ee * (2.0 * np.asarray(r) - ee)))


def tube(d: Arr, r: float) -> Arr:
    """Path through a thin cylinder (a cortical line seen tangentially) at distance d from its axis."""
    return np.asarray(2.0 * np.sqrt(np.clip(r * r - d * d, 0.0, None)))


def bone(parts: Sequence[tuple[Arr, float, float]], k: float, tex: Arr, mottle: float = 0.25,
         marrow: Sequence[float] | None = None) -> Arr:
    """Integral through a bone made of primitives ``(signed distance, radius, cortex)``.

    The outline is the smooth union; radius and cortical thickness blend between primitives, so
    a femoral shaft has thick cortical "tram lines" and the head a thin subchondral shell.
    ``marrow`` (per primitive, 0..1) thins the cancellous bone, as in a diaphysis' fatty canal."""
    d = parts[0][0]
    for s, _, _ in parts[1:]:
        d = smin(d, s, k)
    wsum = np.zeros_like(d)
    rsum = np.zeros_like(d)
    tsum = np.zeros_like(d)
    msum = np.zeros_like(d)
    for i, (s, r, tc) in enumerate(parts):
        w = np.exp(-np.clip(s - d, 0.0, 40.0) / (0.6 * k))
        wsum += w
        rsum += w * r
        tsum += w * tc
        msum += w * (1.0 if marrow is None else 1.0 - marrow[i])
    r_eff = rsum / wsum
    tc_eff = np.minimum(tsum / wsum, 0.8 * r_eff)
    e = -d
    outer = chord(e, r_eff)
    inner = chord(e - tc_eff, r_eff - tc_eff)
    return np.asarray(MU_TRAB * inner * (msum / wsum) * (1.0 + mottle * tex) + MU_CORT * (outer - inner))


def plate(e: Arr, t_in: float, t_rim: float, w_rim: float, tex: Arr, mottle: float = 0.2) -> Arr:
    """Flat bone seen face-on: thin inside, thick rounded rim with a cortical edge."""
    ep = np.maximum(e, 0.0)
    body = (t_in + (t_rim - t_in) * np.exp(-ep / w_rim)) * np.sqrt(np.clip(ep / 1.5, 0.0, 1.0))
    rim = 7.0 * np.exp(-ep / 1.4) * np.sqrt(np.clip(ep / 0.6, 0.0, 1.0))
    return np.asarray(MU_PLATE * body * (1.0 + mottle * tex) + MU_CORT * 0.5 * rim)


def bezier(pts: Sequence[Vec], n: int = 24) -> list[Vec]:
    """Points along a Bezier curve through control points (smooth cortical lines)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p = np.asarray(pts, dtype=np.float64)[None, :, :]
    k = len(pts) - 1
    coeff = np.stack([math.comb(k, i) * t[:, 0] ** i * (1 - t[:, 0]) ** (k - i) for i in range(k + 1)], axis=1)
    out = (coeff[:, :, None] * p).sum(axis=1)
    return [(float(a), float(b)) for a, b in out]


def arc(c: Vec, r: float, a0_deg: float, a1_deg: float, n: int = 28) -> list[Vec]:
    """Points on a circular arc; angles from +u towards +v (image down)."""
    a = np.radians(np.linspace(a0_deg, a1_deg, n))
    return [(c[0] + r * math.cos(x), c[1] + r * math.sin(x)) for x in a]


# ---------------------------------------------------------------------------------------------
# implants: plain data, projected analytically


@dataclass(frozen=True)
class Rod:
    """A screw, nail, peg or wire segment: a cylinder in the image plane (parallel rays)."""

    p0: Vec
    p1: Vec
    radius: float
    mu: float
    thread_from: float = 1.0  # fraction of the length (from p0) where the thread starts
    thread_depth: float = 0.0
    pitch: float = 2.5
    head_radius: float = 0.0  # screw head at p0
    radius1: float | None = None  # tapered rods (nails)


@dataclass(frozen=True)
class Strip:
    """A plate or a stem: a solid of constant depth along z with rounded edges, cut by holes."""

    outline: tuple[Vec, ...]
    depth: float
    mu: float
    holes: tuple[tuple[Vec, float], ...] = ()
    edge: float = 2.0
    taper_axis: tuple[Vec, Vec] | None = None  # depth falls along this axis (stems thin distally)
    taper: float = 0.0
    cement: float = 0.0  # cement mantle thickness around it (mm), 0 = none


@dataclass(frozen=True)
class Wire:
    pts: tuple[Vec, ...]
    radius: float
    mu: float
    wrap: float = 0.0  # half-width of the bone it is wrapped around (brighter where tangential)


@dataclass(frozen=True)
class Ball:
    centre: Vec
    radius: float
    mu: float


Part = Rod | Strip | Wire | Ball


@dataclass
class Component:
    label: str  # detector class ("stem", "other_hardware") or "" for parts not boxed
    parts: list[Part]


@dataclass
class CupGeom:
    """An acetabular (or resurfacing) component in world mm; its axis points out of the opening."""

    side: Side
    design: str
    centre: Vec
    axis: Vec3
    outer_r: float
    wall: float
    shell_mu: float
    head_r: float
    head_mu: float
    inclination: float
    anteversion: float
    bearing_r: float = 0.0  # dual mobility: polyethylene bearing radius
    cement: float = 0.0  # cemented cup: mantle thickness
    flange: float = 0.0  # flange width beyond the rim
    wire: bool = False  # marker wire ring of an all-polyethylene cup
    screws: list[Rod] = field(default_factory=list)
    cap_axis: Vec3 | None = None  # resurfacing: the femoral cap's axis (towards the neck)
    cap_wall: float = 0.0


def halfball_chord(u: Arr, v: Arr, centre: Vec, radius: float, axis: Vec3) -> Arr:
    """Length of each ray (along z, at world (u, v)) inside a half ball.

    The half ball is the ball of ``radius`` about ``(centre, z=0)`` cut by the plane through the
    centre with unit normal ``axis``; the kept half is the dome side, ``axis . (p - c) <= 0``.
    The ray's chord through the ball is ``[-h, h]``; the plane cuts it at
    ``t = -(nx du + ny dv) / nz``. Mirroring z leaves line integrals unchanged, so the sign of
    ``nz`` (anteversion versus retroversion) does not matter."""
    nx, ny, nz = axis
    nz = abs(nz)
    du, dv = u - centre[0], v - centre[1]
    h = np.sqrt(np.clip(radius * radius - du * du - dv * dv, 0.0, None))
    w = nx * du + ny * dv
    if nz < 1e-9:
        return np.asarray(np.where(w <= 0.0, 2.0 * h, 0.0))
    s = -w / nz
    return np.asarray(np.clip(s + h, 0.0, 2.0 * h))


def ball_chord(u: Arr, v: Arr, centre: Vec, radius: float) -> Arr:
    du, dv = u - centre[0], v - centre[1]
    return np.asarray(2.0 * np.sqrt(np.clip(radius * radius - du * du - dv * dv, 0.0, None)))


def cup_parts(u: Arr, v: Arr, cup: CupGeom) -> dict[str, Arr]:
    """Path lengths (mm) through each part of a cup assembly at world points (u, v)."""
    inner = cup.outer_r - cup.wall
    out: dict[str, Arr] = {}
    out["shell"] = halfball_chord(u, v, cup.centre, cup.outer_r, cup.axis) - halfball_chord(
        u, v, cup.centre, inner, cup.axis
    )
    if cup.design == "resurfacing":
        assert cup.cap_axis is not None
        out["head"] = halfball_chord(u, v, cup.centre, cup.head_r, cup.cap_axis) - halfball_chord(
            u, v, cup.centre, cup.head_r - cup.cap_wall, cup.cap_axis
        )
        return out
    head = ball_chord(u, v, cup.centre, cup.head_r)
    out["head"] = head
    if cup.design == "dual_mobility":
        out["liner"] = ball_chord(u, v, cup.centre, cup.bearing_r) - head
    else:
        out["liner"] = np.clip(halfball_chord(u, v, cup.centre, inner, cup.axis) - head, 0.0, None)
    if cup.cement > 0.0:
        out["cement"] = halfball_chord(u, v, cup.centre, cup.outer_r + cup.cement, cup.axis) - halfball_chord(
            u, v, cup.centre, cup.outer_r, cup.axis
        )
    if cup.flange > 0.0:
        out["flange"] = _flange_path(u, v, cup)
    if cup.wire:
        out["wire"] = _ring_path(u, v, cup, cup.outer_r - 1.2, 0.5)
    return out


def _plane_coords(u: Arr, v: Arr, cup: CupGeom) -> tuple[Arr, Arr, float]:
    """In-plane radius where each ray meets the opening plane, and |nz| (for edge-on paths)."""
    nx, ny, nz = cup.axis
    nz = max(abs(nz), 1e-3)
    du, dv = u - cup.centre[0], v - cup.centre[1]
    dz = -(nx * du + ny * dv) / nz
    rad = np.sqrt(du * du + dv * dv + dz * dz)
    return rad, dz, nz


def _flange_path(u: Arr, v: Arr, cup: CupGeom) -> Arr:
    """A 1.5 mm thick annulus in the opening plane, from the rim outwards; path = t / |nz|."""
    rad, _, nz = _plane_coords(u, v, cup)
    inside = (rad >= cup.outer_r - 0.5) & (rad <= cup.outer_r + cup.flange)
    return np.asarray(np.where(inside, min(1.5 / nz, 25.0), 0.0))


def _ring_path(u: Arr, v: Arr, cup: CupGeom, ring_r: float, wire_r: float) -> Arr:
    """A thin wire circle in the opening plane: its projection is an ellipse (semi-axes ring_r
    and ring_r |nz|); the path through the wire grows where its tangent turns towards the beam."""
    nx, ny, nz = cup.axis
    nzz = max(abs(nz), 0.02)
    ang = math.degrees(math.atan2(nx, -ny))
    sd = sd_ellipse(u, v, cup.centre, ring_r, max(ring_r * nzz, 0.3), ang)
    ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
    du, dv = u - cup.centre[0], v - cup.centre[1]
    x, y = du * ca + dv * sa, -du * sa + dv * ca
    phi = np.arctan2(y / nzz, x)
    txy = np.sqrt(np.sin(phi) ** 2 + (nzz * np.cos(phi)) ** 2)
    return np.asarray(tube(np.abs(sd), wire_r) / np.maximum(txy, 0.2))


def rod_path(u: Arr, v: Arr, rod: Rod) -> Arr:
    t, d, length = _seg_param(u, v, rod.p0, rod.p1)
    r1 = rod.radius if rod.radius1 is None else rod.radius1
    r = rod.radius + (r1 - rod.radius) * np.clip(t, 0.0, 1.0)
    if rod.thread_depth > 0.0:
        saw = (t * length / rod.pitch) % 1.0
        r = r + np.where(t >= rod.thread_from, rod.thread_depth * (1.0 - 2.0 * np.abs(saw - 0.5)), 0.0)
    body = np.where((t >= 0.0) & (t <= 1.0), 2.0 * np.sqrt(np.clip(r * r - d * d, 0.0, None)), 0.0)
    if rod.head_radius > 0.0:
        hl = 4.0 / length
        body = np.maximum(body, np.where((t >= -hl) & (t <= 0.0), tube(d, rod.head_radius), 0.0))
    return np.asarray(body)


def strip_path(u: Arr, v: Arr, s: Strip) -> tuple[Arr, Arr]:
    """Metal path and cement path of a plate or stem."""
    sd = sd_polygon(u, v, s.outline)
    depth: Arr | float = s.depth
    if s.taper_axis is not None and s.taper > 0.0:
        t, _, _ = _seg_param(u, v, s.taper_axis[0], s.taper_axis[1])
        depth = s.depth * (1.0 - s.taper * np.clip(t, 0.0, 1.0))
    metal = np.asarray(depth * np.sqrt(np.clip(-sd / s.edge, 0.0, 1.0)))
    for c, r in s.holes:
        metal = metal * np.clip(sd_circle(u, v, c, r) / 0.6, 0.0, 1.0)
    cement = np.zeros_like(sd)
    if s.cement > 0.0:
        m = s.cement
        outside = np.asarray(depth + 2.0 * m) * np.sqrt(np.clip((m - sd) / (0.5 * m + 0.5), 0.0, 1.0))
        cement = np.asarray(np.where(sd < 0.0, 2.0 * m, np.where(sd < m, outside, 0.0)))
    return metal, cement


def wire_path(u: Arr, v: Arr, w: Wire) -> Arr:
    d = sd_polyline(u, v, w.pts, 0.0)
    path = tube(d, w.radius)
    if w.wrap > 0.0:
        centre = w.pts[len(w.pts) // 2]
        a, b = w.pts[0], w.pts[-1]
        half = 0.5 * math.hypot(b[0] - a[0], b[1] - a[1])
        ex, ey = (b[0] - a[0]) / (2 * half), (b[1] - a[1]) / (2 * half)
        x = np.abs((u - centre[0]) * ex + (v - centre[1]) * ey) / max(w.wrap, 1e-6)
        path = path / np.sqrt(np.clip(1.0 - x * x, 0.04, 1.0))
    return np.asarray(path)


def part_points(p: Part) -> tuple[list[Vec], float]:
    """Outline points and margin of a part (bounds for painting and detector boxes)."""
    if isinstance(p, Rod):
        r = max(p.radius, p.radius1 or 0.0, p.head_radius) + p.thread_depth
        return [p.p0, p.p1], r
    if isinstance(p, Strip):
        return list(p.outline), p.cement + 0.5
    if isinstance(p, Wire):
        return list(p.pts), p.radius * 3
    return [p.centre], p.radius


def paint_part(canvas: Canvas, p: Part) -> None:
    pts, margin = part_points(p)
    bounds = _bounds(pts, margin + 1.0)
    if isinstance(p, Rod):
        canvas.paint("metal", bounds, lambda u, v, t: rod_path(u, v, p), p.mu)
    elif isinstance(p, Strip):
        canvas.paint("metal", bounds, lambda u, v, t: strip_path(u, v, p)[0], p.mu)
        if p.cement > 0.0:
            canvas.paint("bone", bounds, lambda u, v, t: strip_path(u, v, p)[1] * (1.0 + 0.25 * t), MU_CEMENT)
    elif isinstance(p, Wire):
        canvas.paint("metal", bounds, lambda u, v, t: wire_path(u, v, p), p.mu)
    else:
        canvas.paint("metal", bounds, lambda u, v, t: ball_chord(u, v, p.centre, p.radius), p.mu)


def paint_cup(canvas: Canvas, cup: CupGeom) -> None:
    reach = cup.outer_r + cup.cement + cup.flange + 2.0
    bounds = (cup.centre[0] - reach, cup.centre[0] + reach, cup.centre[1] - reach, cup.centre[1] + reach)
    mus = {
        "shell": cup.shell_mu,
        "head": cup.head_mu,
        "liner": MU_POLY,
        "flange": cup.shell_mu,
        "wire": METAL_MU["steel"],
    }

    def metal(u: Arr, v: Arr, t: Arr) -> Arr:
        parts = cup_parts(u, v, cup)
        return np.asarray(sum(mus[k] * parts[k] for k in parts if k in mus))

    canvas.paint("metal", bounds, metal)
    if cup.cement > 0.0:
        canvas.paint("bone", bounds, lambda u, v, t: cup_parts(u, v, cup)["cement"] * (1.0 + 0.3 * t), MU_CEMENT)
    for s in cup.screws:
        paint_part(canvas, s)


def cup_outline(cup: CupGeom) -> list[Vec]:
    """World points on the projected silhouette: the opening ellipse and the dome's half circle."""
    nx, ny, _ = cup.axis
    e1 = np.array([-ny, nx, 0.0]) / max(math.hypot(nx, ny), 1e-9)
    e2 = np.cross(np.array(cup.axis), e1)
    phi = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
    r = cup.outer_r + cup.flange
    rim = [(cup.centre[0] + r * (math.cos(a) * e1[0] + math.sin(a) * e2[0]),
            cup.centre[1] + r * (math.cos(a) * e1[1] + math.sin(a) * e2[1])) for a in phi]
    dome = [(cup.centre[0] + cup.outer_r * math.cos(a), cup.centre[1] + cup.outer_r * math.sin(a)) for a in phi
            if nx * math.cos(a) + ny * math.sin(a) <= 0.0]
    return rim + dome


# ---------------------------------------------------------------------------------------------
# anatomy (AP): parameters


@dataclass
class FemurGeom:
    """One proximal femur in world mm. ``J`` is where the neck axis meets the shaft axis."""

    side: Side
    sgn: float  # +1 patient left (image right), -1 patient right (image left)
    head: Vec
    rh: float
    neck_dir: Vec  # unit, from the head towards the shaft
    shaft_dir: Vec  # unit, down the shaft
    lat_dir: Vec  # unit, lateral, perpendicular to the shaft
    J: Vec
    tn: float
    r_shaft: float
    version: float  # femoral anteversion, degrees

    def wt(self, w: float, t: float) -> Vec:
        """World point at lateral offset w from the shaft axis and t mm down from J."""
        return (
            self.J[0] + t * self.shaft_dir[0] + w * self.lat_dir[0],
            self.J[1] + t * self.shaft_dir[1] + w * self.lat_dir[1],
        )

    def along_neck(self, k: float, off: float = 0.0) -> Vec:
        """Point k mm from the head centre along the neck axis, ``off`` mm towards superior."""
        px, py = self.neck_dir[1] * self.sgn, -self.neck_dir[0] * self.sgn  # superior normal
        if py > 0:
            px, py = -px, -py
        return (self.head[0] + k * self.neck_dir[0] + off * px, self.head[1] + k * self.neck_dir[1] + off * py)

    def neck_axis3(self) -> Vec3:
        """3-D unit neck axis from the head towards the shaft, tilted by the anteversion."""
        a = math.radians(self.version)
        return (self.neck_dir[0] * math.cos(a), self.neck_dir[1] * math.cos(a), math.sin(a))


@dataclass
class Anatomy:
    child: bool
    age: float
    sex: str
    s: float
    hw: float
    rh: dict[Side, float]
    nsa: dict[Side, float]
    beta: dict[Side, float]
    offset: dict[Side, float]
    ce: dict[Side, float]
    version: dict[Side, float]
    inlet: tuple[float, float, float]  # centre v, half width, half height
    wing: float
    crest: float
    pubic_gap: float
    sacrum: float
    body_w: float
    body_d: float
    fat: float
    jit: Arr
    gas: list[tuple[Vec, float, float, float]]
    spine: bool

    def femur(self, side: Side) -> FemurGeom:
        sgn = 1.0 if side is Side.LEFT else -1.0
        rh = self.rh[side]
        beta = math.radians(self.beta[side])
        alpha = self.nsa[side]
        phi_n = -beta + math.radians(180.0 - alpha)
        head = (sgn * self.hw, 0.0)
        neck = (sgn * math.sin(phi_n), math.cos(phi_n))
        shaft = (-sgn * math.sin(beta), math.cos(beta))
        lat = (sgn * math.cos(beta), math.sin(beta))
        tn = self.offset[side] / math.sin(math.radians(180.0 - alpha))
        j = (head[0] + tn * neck[0], head[1] + tn * neck[1])
        return FemurGeom(side, sgn, head, rh, neck, shaft, lat, j, tn, 0.56 * rh / (0.92 if self.sex == "F" else 1.0),
                         self.version[side])

    def socket_r(self, side: Side) -> float:
        return self.rh[side] + (5.0 if self.child else 2.8)


def _sample_anatomy(rng: np.random.Generator, sex: str, child: bool) -> Anatomy:
    age = float(rng.uniform(3.0, 14.0)) if child else float(rng.uniform(22.0, 92.0))
    s = (0.42 + 0.04 * age) * float(rng.uniform(0.93, 1.07)) if child else float(np.clip(rng.normal(1.0, 0.06), 0.87, 1.15))
    fem = sex == "F"
    hw = (92.0 if fem else 87.0) * s * float(rng.uniform(0.96, 1.04))
    rh0 = (22.3 if fem else 25.3) * s * float(rng.uniform(0.94, 1.06))
    if child:
        rh0 *= 0.8
    nsa0 = float(rng.normal(142.0 if child else 130.0, 4.5))
    sides = (Side.RIGHT, Side.LEFT)

    def per_side(base: float, sd: float, lo: float, hi: float) -> dict[Side, float]:
        return {sd_: float(np.clip(base + rng.normal(0.0, sd), lo, hi)) for sd_ in sides}

    gas: list[tuple[Vec, float, float, float]] = []
    for _ in range(int(rng.integers(2, 11))):
        gas.append(((float(rng.uniform(-150, 150)) * s, float(rng.uniform(-210, -20)) * s),
                    float(rng.uniform(8, 30)) * s, float(rng.uniform(6, 18)) * s, float(rng.uniform(0, 180))))
    if rng.random() < 0.6:
        gas.append(((float(rng.normal(0, 8)) * s, float(rng.uniform(-20, 10)) * s), float(rng.uniform(10, 22)) * s,
                    float(rng.uniform(8, 16)) * s, float(rng.uniform(60, 120))))
    return Anatomy(
        child=child,
        age=age,
        sex=sex,
        s=s,
        hw=hw,
        rh={sd_: rh0 * float(rng.uniform(0.98, 1.02)) for sd_ in sides},
        nsa=per_side(nsa0, 2.0, 115.0, 150.0),
        beta=per_side(7.0, 1.5, 3.0, 11.0),
        offset=per_side((37.0 if fem else 42.0) * s, 2.5 * s, 28.0 * s, 52.0 * s),
        ce=per_side(float(rng.normal(30.0, 5.0)), 2.0, 14.0, 45.0),
        version=per_side(float(rng.normal(13.0, 6.0)), 2.0, -5.0, 30.0),
        inlet=(-32.0 * s, (64.0 if fem else 54.0) * s * float(rng.uniform(0.94, 1.06)), (57.0 if fem else 62.0) * s),
        wing=float(rng.uniform(0.92, 1.08)),
        crest=float(rng.uniform(0.92, 1.08)),
        pubic_gap=float(rng.uniform(1.5, 3.0)) * (1.6 if child else 1.0),
        sacrum=float(rng.uniform(0.93, 1.07)),
        body_w=float(rng.uniform(0.88, 1.3)),
        body_d=float(rng.uniform(0.85, 1.35)),
        fat=float(rng.uniform(10.0, 40.0)),
        jit=rng.normal(0.0, 1.0, 96),
        gas=gas,
        spine=True,
    )


# ---------------------------------------------------------------------------------------------
# anatomy (AP): painting


def _mirror(sgn: float, pts: Sequence[Vec]) -> list[Vec]:
    return [(sgn * a, b) for a, b in pts]


def _paint_soft_ap(canvas: Canvas, an: Anatomy) -> None:
    """Body outline: elliptical cross-sections through the trunk, splitting into two thighs."""
    s = an.s
    vs = np.array([-320.0, -180.0, -110.0, 0.0, 70.0, 130.0]) * s
    half = np.array([150.0, 158.0, 170.0, 186.0, 183.0, 170.0]) * s * an.body_w
    depth = 118.0 * s * an.body_d
    split = 95.0 * s
    fat = an.fat * s * an.body_w
    thigh_c = an.hw + 12.0 * s
    thigh_a = 88.0 * s * an.body_w
    thigh_b = 62.0 * s * an.body_d

    def soft(u: Arr, v: Arr, t: Arr) -> Arr:
        a = np.interp(v, vs, half)
        x = u / a
        trunk = 2.0 * depth * np.sqrt(np.clip(1.0 - x * x, 0.0, None))
        inner_a = np.maximum(a - fat, 1.0)
        xi = u / inner_a
        muscle = 2.0 * (depth - 0.7 * fat) * np.sqrt(np.clip(1.0 - xi * xi, 0.0, None))
        blend = np.clip((v - split) / (40.0 * s), 0.0, 1.0)
        xt = (np.abs(u) - thigh_c) / thigh_a
        thigh = 2.0 * thigh_b * np.sqrt(np.clip(1.0 - xt * xt, 0.0, None))
        xti = (np.abs(u) - thigh_c) / max(thigh_a - fat, 1.0)
        thigh_m = 2.0 * (thigh_b - 0.7 * fat) * np.sqrt(np.clip(1.0 - xti * xti, 0.0, None))
        total = (1.0 - blend) * trunk + blend * np.maximum(thigh, (1.0 - blend) * trunk)
        mus = (1.0 - blend) * muscle + blend * np.maximum(thigh_m, 0.0)
        return np.asarray(MU_WATER * total - MU_FAT * (total - mus))

    canvas.paint("soft", (-1e4, 1e4, -1e4, 1e4), soft)
    for (c, a, b, ang) in an.gas:
        bounds = (c[0] - a - 2, c[0] + a + 2, c[1] - a - 2, c[1] + a + 2)
        canvas.paint("soft", bounds, lambda u, v, t, c=c, a=a, b=b, ang=ang: -MU_WATER * chord(-sd_ellipse(
            u, v, c, a, b, ang), min(a, b)) * np.clip(0.75 + 0.35 * t, 0.2, 1.2))


def _paint_spine(canvas: Canvas, an: Anatomy) -> None:
    """L5 and L4 above the sacrum: cylindrical bodies with end plates, pedicle rings,
    transverse and spinous processes."""
    s = an.s
    top = -118.0 * s * an.sacrum
    for i, (h, w) in enumerate(((26.0, 27.0), (27.0, 25.0))):
        cv = top - (11.0 + h / 2 + i * (h + 10.0)) * s
        hh, ww = h * s / 2, w * s
        lo, hi = cv - hh, cv + hh

        def body(u: Arr, v: Arr, t: Arr, cv: float = cv, hh: float = hh, ww: float = ww) -> Arr:
            half = ww * (1.0 - 0.06 * (1.0 - ((v - cv) / hh) ** 2))
            vert = np.clip((hh - np.abs(v - cv)) / 1.2, 0.0, 1.0)
            e = half - np.abs(u)
            trab = MU_TRAB * chord(e - 1.5, 0.8 * ww) * (1.0 + 0.15 * t) * 1.3
            cort = MU_CORT * (chord(e, 0.8 * ww) - chord(e - 1.5, 0.8 * ww - 1.5))
            plates = MU_CORT * 1.4 * (tube(np.abs(v - cv + hh - 1.0), 1.2) + tube(np.abs(v - cv - hh + 1.0), 1.2)) * (e > 0)
            return np.asarray((trab + cort) * vert + plates * np.clip(e / 3.0, 0.0, 1.0))

        canvas.paint("bone", (-ww - 3, ww + 3, lo - 3, hi + 3), body)
        for sg in (-1.0, 1.0):
            pc = (sg * 0.6 * ww, cv - 0.15 * hh)
            canvas.paint("bone", (pc[0] - 9, pc[0] + 9, pc[1] - 11, pc[1] + 11), lambda u, v, t, pc=pc: MU_CORT * 2.2 * tube(
                np.abs(sd_ellipse(u, v, pc, 5.0 * s, 7.5 * s)), 1.3))
            tp0 = (sg * ww * 0.85, cv - 0.3 * hh)
            tp1 = (sg * (ww + (26.0 if i == 0 else 20.0) * s), cv - 0.3 * hh - (9.0 if i == 0 else 3.0) * s)
            canvas.paint("bone", _bounds([tp0, tp1], 8), lambda u, v, t, a=tp0, b=tp1: 0.8 * bone(
                [(sd_segment(u, v, a, b, 6.5 * s, 3.5 * s), 4.0 * s, 1.0)], 2.0, t))
        sp = (0.0, cv + 0.35 * hh)
        canvas.paint("bone", (-10, 10, sp[1] - 16, sp[1] + 16), lambda u, v, t, sp=sp: bone(
            [(sd_ellipse(u, v, sp, 4.5 * s, 10.0 * s), 4.0 * s, 1.5)], 2.0, t))


def _sacrum_outline(an: Anatomy) -> list[Vec]:
    s = an.s * an.sacrum
    j = an.jit
    half = [(28, -119), (48, -113), (51, -96), (42, -72), (30, -48), (19, -25), (10, -8), (4, 1)]
    right = [((x + 1.2 * j[i]) * s, (y + 1.2 * j[i + 8]) * s) for i, (x, y) in enumerate(half)]
    outline = [(0.0, -123.0 * s), *right, *[(-x, y) for x, y in reversed(right)]]
    return smooth_closed(outline, 2)


def _paint_sacrum(canvas: Canvas, an: Anatomy) -> None:
    """Sacrum: a foreshortened wedge of cancellous bone with four pairs of foramina, the S1 end
    plate seen obliquely, the median crest and the sacroiliac joint lines."""
    s = an.s * an.sacrum
    outline = _sacrum_outline(an)

    def sac(u: Arr, v: Arr, t: Arr) -> Arr:
        e = -sd_polygon_fast(u, v, outline)
        val = plate(e, 6.0, 10.0, 8.0 * s, t, 0.2)
        for k in range(4):
            fy = (-96.0 + 18.0 * k) * s
            for sg in (-1.0, 1.0):
                fc = (sg * (18.0 - 2.5 * k) * s, fy)
                df = sd_ellipse(u, v, fc, (5.0 - 0.6 * k) * s, (4.0 - 0.5 * k) * s)
                val = val - MU_PLATE * 6.0 * np.clip(-df / 1.5, 0.0, 1.0)
                val = val + MU_CORT * tube(np.abs(df - 1.0), 0.8) * 1.4 * (v < fc[1])
        val = val + MU_CORT * 0.6 * tube(np.abs(u), 2.0 * s) * (v < -20.0 * s) * (v > -108.0 * s)
        ring = sd_ellipse(u, v, (0.0, -113.0 * s), 25.0 * s, 6.5 * s)
        val = val + MU_CORT * 1.8 * tube(np.abs(ring), 1.1)
        return np.asarray(val)

    canvas.paint("bone", _bounds(outline, 3), sac)
    for k, (cy, r) in enumerate(((8.0, 3.8), (15.0, 3.0), (20.5, 2.3))):
        c = (0.0, cy * s + 2.0 * k * s * an.jit[20])
        canvas.paint("bone", (-8, 8, c[1] - 6, c[1] + 6), lambda u, v, t, c=c, r=r: bone(
            [(sd_ellipse(u, v, c, r * s * 1.2, r * s * 0.9), r * s, 1.0)], 2.0, t))


def _ilium_outline(an: Anatomy, side: Side) -> list[Vec]:
    """Landmarks of one ilium (SI joint, crest, ASIS, AIIS, acetabular roof), smoothed."""
    s = an.s
    r_s = an.socket_r(side)
    lh = an.hw
    lam = math.radians(an.ce[side])
    w, c = an.wing, an.crest
    j = an.jit[24 if side is Side.RIGHT else 56:]
    lat_edge = (lh + math.sin(lam) * (r_s + 2.0), -math.cos(lam) * (r_s + 2.0))
    pts = [
        (lh - r_s - 9 * s, -6 * s),
        (50 * s, -40 * s),
        (43 * s, -72 * s),
        (39 * s, -106 * s * c),
        (44 * s, -136 * s * c),
        (62 * s * w, -158 * s * c),
        (90 * s * w, -168 * s * c),
        (116 * s * w, -163 * s * c),
        (136 * s * w, -146 * s * c),
        (143 * s * w, -122 * s * c),
        (137 * s * w, -101 * s * c),
        (128 * s * w, -89 * s),
        (121 * s, -72 * s),
        (122 * s, -57 * s),
        (lh + r_s + 6 * s, -42 * s),
        lat_edge,
        (lh + 0.2 * r_s, -r_s - 1.0),
        (lh - 0.6 * r_s, -0.85 * r_s),
    ]
    pts = [(x + 1.5 * s * float(j[i]), y + 1.5 * s * float(j[i + 18])) for i, (x, y) in enumerate(pts)]
    return _mirror(1.0 if side is Side.LEFT else -1.0, smooth_closed(pts, 3))


def _teardrop(an: Anatomy, side: Side) -> tuple[float, float, float]:
    """Lateral distance of the teardrop's centre from the midline, its lowest point, half-width."""
    return an.hw - an.socket_r(side) - 5.0 * an.s, 0.72 * an.rh[side] + 3.0 * an.s, 3.6 * an.s


def _paint_hemipelvis(canvas: Canvas, an: Anatomy, side: Side) -> None:
    """One innominate bone: ilium plate, acetabulum with its roof, walls, teardrop, rami."""
    s = an.s
    sgn = 1.0 if side is Side.LEFT else -1.0
    lh = an.hw
    r_s = an.socket_r(side)
    H = (sgn * lh, 0.0)
    lam = an.ce[side]

    def P(lat: float, v: float) -> Vec:
        return (sgn * lat, v)

    # a child's open triradiate cartilage (a dark Y in the acetabular floor) and ischiopubic
    # synchondrosis, cut into this bone's own density only
    yc = P(lh - r_s + 2 * s, 4 * s)
    legs = [bezier([yc, P(lh - r_s + 4 * s, -r_s * 0.9)], 6), bezier([yc, P(lh - r_s - 8 * s, 0.9 * r_s)], 6),
            bezier([yc, P(lh + 0.1 * r_s, 0.95 * r_s)], 6), bezier([P(lh - 40 * s, 72 * s), P(lh - 30 * s, 76 * s)], 4)]

    def growth(u: Arr, v: Arr) -> Arr | float:
        if not an.child:
            return 1.0
        d = np.minimum.reduce([sd_polyline(u, v, leg, 0.0) for leg in legs])
        return np.asarray(1.0 - 0.85 * np.exp(-((d / (1.4 * s)) ** 2)))

    ilium = _ilium_outline(an, side)
    pillar = bezier([P(lh - 8 * s, -r_s - 4 * s), P(lh + 10 * s, -75 * s), P(118 * s * an.wing, -128 * s * an.crest)], 12)
    supra = P(lh - 4 * s, -r_s - 14 * s)

    def ilium_fn(u: Arr, v: Arr, t: Arr) -> Arr:
        sd = sd_polygon_fast(u, v, ilium)
        inside = np.clip(-sd / 1.5, 0.0, 1.0)
        pil = 9.0 * s * np.exp(-((sd_polyline(u, v, pillar, 0.0) / (7.0 * s)) ** 2))
        sup = 18.0 * s / (1.0 + np.exp(sd_ellipse(u, v, supra, 30.0 * s, 20.0 * s) / (5.0 * s)))
        extra = MU_TRAB * (pil + sup) * (1.0 + 0.15 * t)
        return np.asarray(plate(-sd, 3.0, 11.0, 6.0 * s, t) + extra * inside)

    canvas.paint("bone", _bounds(ilium, 3), ilium_fn)

    # acetabular bone above and medial to the socket; the socket hollow (the head fills it)
    mass = smooth_closed(_mirror(sgn, [(lh + x * r_s, y * r_s) for x, y in (
        (math.sin(math.radians(lam)) * 1.02, -math.cos(math.radians(lam)) * 1.02), (0.5, -1.3), (-0.3, -1.5),
        (-1.25, -1.05), (-1.5, -0.1), (-1.35, 0.75), (-0.7, 1.05), (0.05, 1.0), (0.2, 0.2), (0.3, -0.4))]), 2)

    def acetab(u: Arr, v: Arr, t: Arr) -> Arr:
        e = -sd_polygon_fast(u, v, mass)
        m = MU_TRAB * 26.0 * s / (1.0 + np.exp(-(e - 3.0 * s) / (3.0 * s))) * (1.0 + 0.12 * t)
        socket = MU_TRAB * ball_chord(u, v, H, r_s)
        return np.asarray(np.maximum(m - 0.6 * socket, 0.3 * m) * growth(u, v))

    canvas.paint("bone", _bounds(mass, 3), acetab)

    # the sourcil (roof) seen tangentially, and the sclerotic bone above it
    a_med, a_lat = (-90.0 - 40.0, -90.0 + lam) if sgn > 0 else (-90.0 + 40.0, -90.0 - lam)
    roof = arc(H, r_s + 1.4, a_med, a_lat, 30)

    def sourcil(u: Arr, v: Arr, t: Arr) -> Arr:
        d = sd_polyline(u, v, roof, 0.0)
        above = np.hypot(u - H[0], v - H[1]) > r_s + 1.4
        return np.asarray(MU_CORT * (2.0 * tube(d, 1.7) + 2.5 * np.exp(-d / 3.5) * above))

    canvas.paint("bone", _bounds(roof, 16), sourcil)
    # posterior and anterior wall lines crossing the head, the ilio-ischial line, the teardrop
    lat_edge = (H[0] + sgn * math.sin(math.radians(lam)) * (r_s + 1.4), -math.cos(math.radians(lam)) * (r_s + 1.4))
    post = bezier([lat_edge, P(lh + 0.8 * r_s, 0.25 * r_s), P(lh + 0.35 * r_s, 0.95 * r_s), P(lh - 0.15 * r_s, 1.1 * r_s)])
    ant = bezier([P(lh + 0.4 * r_s, -0.9 * r_s), P(lh + 0.4 * r_s, 0.05 * r_s), P(lh - 0.05 * r_s, 0.7 * r_s),
                  P(lh - 0.6 * r_s, 0.85 * r_s)])
    ilio = bezier([P(lh - r_s - 11 * s, -45 * s), P(lh - r_s - 7 * s, -5 * s), P(lh - r_s - 5 * s, 20 * s),
                   P(lh - r_s - 1 * s, 40 * s)])
    brim = bezier([P(45 * s, -92 * s), P(lh - r_s - 16 * s, -40 * s), P(lh - r_s - 12 * s, 8 * s),
                   P(lh - r_s - 25 * s, 26 * s), P(16 * s + an.pubic_gap, 27 * s)], 30)
    for line, r, g in ((post, 1.2, 1.1), (ant, 1.0, 0.7), (ilio, 1.5, 0.8), (brim, 2.0, 0.75)):
        canvas.paint("bone", _bounds(line, 4), lambda u, v, t, line=line, r=r, g=g: MU_CORT * g * tube(
            sd_polyline(u, v, line, 0.0), r) * 2.0)
    td_c, td_bot, tw = _teardrop(an, side)
    # U-shaped: the lateral limb (acetabular fossa) curves out towards the roof, the medial limb
    # (inner pelvic wall) runs straight up
    lateral_limb = bezier([P(td_c + tw + 7 * s, -16 * s), P(td_c + tw, -8 * s), P(td_c + tw, td_bot - tw)], 8)
    bottom = _mirror(sgn, arc((td_c, td_bot - tw), tw, 0.0, 180.0, 12))
    tear = [*lateral_limb, *bottom[1:], P(td_c - tw, -14 * s)]
    inside_u = [*bottom, P(td_c - tw, -6 * s), P(td_c + tw, -6 * s)]
    canvas.paint("bone", _bounds(tear, 4), lambda u, v, t: MU_CORT * (3.2 * tube(sd_polyline(u, v, tear, 0.0), 1.8 * s)
                                                                     + 2.0 * np.clip(-sd_polygon(u, v, inside_u), 0, 1)))

    # pubis, ischium and the obturator ring
    sup0, sup1 = P(lh - 0.45 * r_s, 0.35 * r_s), P(12 * s + an.pubic_gap, 31 * s)
    pub_c = P(10.0 * s + an.pubic_gap, 42 * s)
    ob_c = P(lh - 40 * s, 48 * s)
    isch0, isch1 = P(lh - 8 * s, 0.8 * r_s), P(lh - 20 * s, 70 * s)
    tub_c = P(lh - 22 * s, 80 * s)
    inf0, inf1 = P(12 * s + an.pubic_gap, 56 * s), P(lh - 34 * s, 84 * s)
    ob_ang = -25.0 * sgn

    def lower(u: Arr, v: Arr, t: Arr) -> Arr:
        hole = sd_ellipse(u, v, ob_c, 16 * s, 24 * s, ob_ang)
        ring = np.maximum(sd_ellipse(u, v, ob_c, 24 * s, 31 * s, ob_ang), -hole)
        parts = [
            (sd_segment(u, v, sup0, sup1, 11 * s, 8.0 * s), 8.0 * s, 1.6),
            (sd_ellipse(u, v, pub_c, 10 * s, 17 * s, 8.0 * sgn), 9.0 * s, 1.8),
            (sd_segment(u, v, isch0, isch1, 14 * s, 12 * s), 12.0 * s, 2.0),
            (sd_ellipse(u, v, tub_c, 16 * s, 12 * s, -25.0 * sgn), 11.0 * s, 2.4),
            (sd_segment(u, v, inf0, inf1, 6.5 * s, 7.0 * s), 6.0 * s, 1.6),
            (ring, 6.0 * s, 1.5),
        ]
        val = bone(parts, 4.0 * s, t, 0.15)
        return np.asarray(val * np.clip(hole / (1.2 * s), 0.0, 1.0) * growth(u, v))

    canvas.paint("bone", (min(sup1[0], H[0]) - 30, max(sup1[0], H[0]) + 30, -10, 110 * s), lower)



def _paint_si_joints(canvas: Canvas, an: Anatomy) -> None:
    """Sacroiliac joints: a lucent line with sclerotic margins along the sacrum's upper sides."""
    s = an.s * an.sacrum
    for sg in (-1.0, 1.0):
        line = bezier([(sg * 41.0 * s, -122.0 * s), (sg * 47.0 * s, -100.0 * s), (sg * 42.0 * s, -78.0 * s),
                       (sg * 37.0 * s, -62.0 * s)], 16)
        canvas.paint("bone", _bounds(line, 8), lambda u, v, t, line=line, sg=sg: MU_CORT * (
            1.6 * tube(sd_polyline(u, v, [(x + sg * 2.2, y) for x, y in line], 0.0), 1.3)
            + 1.4 * tube(sd_polyline(u, v, [(x - sg * 2.0, y) for x, y in line], 0.0), 1.2))
            - MU_PLATE * 7.0 * np.exp(-(sd_polyline(u, v, line, 0.0) / 1.0) ** 2))


def _femur_parts(parts_geo: Sequence[tuple[str, Any, float, float]], u: Arr, v: Arr, ellipse_angle: float,
                 cut: tuple[Vec, Vec] | None) -> list[tuple[Arr, float, float]]:
    """Signed distances of a femur's parts (circles, segments, ellipses at ``ellipse_angle``),
    each with its radius and cortex weight, clipped by the cutting plane of an osteotomy (a
    prosthesis replaces the head) where there is one. Shared by the AP and the lateral femur."""
    parts: list[tuple[Arr, float, float]] = []
    for kind, g, r, tc in parts_geo:
        if kind == "circ":
            sd = sd_circle(u, v, g[0], g[1])
        elif kind == "seg":
            sd = sd_segment(u, v, g[0], g[1], g[2], g[3])
        else:
            sd = sd_ellipse(u, v, g[0], g[1], g[2], ellipse_angle)
        parts.append((sd, r, tc))
    if cut is not None:
        (cx, cy), (nx, ny) = cut
        plane = -((u - cx) * nx + (v - cy) * ny)
        parts = [(np.maximum(p, plane), r, tc) for p, r, tc in parts]
    return parts


def _paint_femur(canvas: Canvas, fg: FemurGeom, an: Anatomy, cut: tuple[Vec, Vec] | None, head: bool) -> None:
    """Proximal femur: head, neck, trochanters and shaft as one smooth union.

    ``cut`` (a point and a normal pointing into the kept bone) is an arthroplasty's neck
    osteotomy; ``head=False`` removes the head above it."""
    s = an.s
    rh, rs = fg.rh, fg.r_shaft
    neck_r = 0.62 * rh
    parts_geo: list[tuple[str, Any, float, float]] = [
        ("seg", (fg.head, fg.along_neck(0.55 * fg.tn), neck_r, 0.7 * rh), neck_r, 1.6),
        ("seg", (fg.along_neck(0.5 * fg.tn), fg.wt(2.0 * s, 8.0 * s), 0.72 * rh, 0.85 * rh), 0.8 * rh, 1.4),
        ("ell", (fg.wt(9.0 * s, -20.0 * s), 0.68 * rh, 0.9 * rh), 0.6 * rh, 1.2),
        ("ell", (fg.wt(-(rs + 1.5 * s), 22.0 * s), 0.3 * rh, 0.38 * rh), 0.28 * rh, 1.0),
        ("seg", (fg.wt(1.5 * s, -8.0 * s), fg.wt(0.0, 60.0 * s), 1.55 * rs, rs), 1.1 * rs, 0.2 * rs),
        ("seg", (fg.wt(0.0, 55.0 * s), fg.wt(0.0, 600.0 * s), rs, rs * 0.92), rs, 0.42 * rs),
    ]
    if head:
        parts_geo.insert(0, ("circ", (fg.head, rh), rh, 1.2))
    marrow = [0.0] * (len(parts_geo) - 1) + [0.75]
    shaft_angle = math.degrees(math.atan2(fg.shaft_dir[1], fg.shaft_dir[0])) - 90.0
    # a child's capital physis (across the head's base) and greater trochanteric apophysis
    phys_c, perp = fg.along_neck(0.45 * rh), (-fg.neck_dir[1], fg.neck_dir[0])
    physis = bezier([(phys_c[0] + perp[0] * rh, phys_c[1] + perp[1] * rh), fg.along_neck(0.2 * rh),
                     (phys_c[0] - perp[0] * rh, phys_c[1] - perp[1] * rh)], 10)
    apophysis = bezier([fg.wt(2.0 * s, -14.0 * s), fg.wt(rs + 8.0 * s, -28.0 * s)], 4)
    pts = [fg.head, fg.wt(0.0, 650.0 * s), fg.wt(40.0 * s, -60.0 * s), fg.wt(-40.0 * s, 40.0 * s)]
    bounds = _bounds(pts, rh + 5)

    def fem(u: Arr, v: Arr, t: Arr) -> Arr:
        parts = _femur_parts(parts_geo, u, v, shaft_angle, cut)
        val = bone(parts, 4.0 * s, t, 0.2, marrow)
        if an.child:
            d1 = sd_polyline(u, v, physis, 0.0)
            d2 = sd_polyline(u, v, apophysis, 0.0)
            val = val * (1.0 - 0.9 * np.exp(-((d1 / (1.3 * s)) ** 2)) - 0.7 * np.exp(-((d2 / (1.2 * s)) ** 2)))
        if not head:
            return val
        # the fovea and the compressive trabecular bundle
        fov = (fg.head[0] - fg.sgn * 0.7 * rh, fg.head[1] - 0.55 * rh)
        val = val * (1.0 - 0.2 * np.exp(-(sd_circle(u, v, fov, 0.0) / (0.25 * rh)) ** 2))
        bundle = sd_segment(u, v, (fg.head[0], fg.head[1] - 0.3 * rh), fg.wt(-rs * 0.8, 35.0 * s), 0.0)
        return np.asarray(val * (1.0 + 0.12 * np.exp(-(bundle / (0.35 * rh)) ** 2)))

    canvas.paint("bone", bounds, fem)


# ---------------------------------------------------------------------------------------------
# implants (AP planning)


def _rng_choice(rng: np.random.Generator, items: Sequence[str], p: Sequence[float]) -> str:
    return items[int(rng.choice(len(items), p=np.asarray(p) / sum(p)))]


def _cup_axis(side: Side, incl: float, antev: float) -> Vec3:
    """Axis of an AP cup from radiographic inclination and anteversion (Murray 1993)."""
    sgn = 1.0 if side is Side.LEFT else -1.0
    i, a = math.radians(incl), math.radians(antev)
    return (sgn * math.sin(i) * math.cos(a), math.cos(i) * math.cos(a), math.sin(a))


def _plan_cup(rng: np.random.Generator, side: Side, design: str, centre: Vec, rh: float, axis: Vec3,
              incl: float, antev: float) -> CupGeom:
    sgn = 1.0 if side is Side.LEFT else -1.0
    outer_r = float(np.clip(2.0 * round(rh + rng.uniform(1.0, 5.0) ), 44.0, 64.0)) / 2.0
    if design == "cemented":
        outer_r = float(np.clip(outer_r - 1.0, 22.0, 29.0))
        head_r = float(rng.choice([11.0, 14.0, 16.0] if outer_r >= 24 else [11.0, 14.0]))
        cup = CupGeom(side, design, centre, axis, outer_r, outer_r - head_r, 0.0, head_r,
                      METAL_MU["steel"] if rng.random() < 0.5 else METAL_MU["cocr"], incl, antev,
                      cement=float(rng.uniform(2.0, 4.0)), wire=True)
        cup.shell_mu = MU_POLY
        return cup
    wall = float(rng.uniform(3.0, 5.0))
    shell_mu = METAL_MU["ti"] if rng.random() < 0.8 else METAL_MU["cocr"]
    if design == "dual_mobility":
        wall = float(rng.uniform(2.5, 3.5))
        bearing = outer_r - wall - 0.2
        head_r = float(rng.choice([11.0, 14.0]))
        return CupGeom(side, design, centre, axis, outer_r, wall, METAL_MU["cocr"], head_r, METAL_MU["cocr"],
                       incl, antev, bearing_r=bearing, screws=_cup_screws(rng, centre, outer_r, axis, sgn, 1))
    inner = outer_r - wall
    heads = [r for r in (11.0, 14.0, 16.0, 18.0, 20.0) if r <= inner - 4.0]
    head_r = float(rng.choice(heads[-3:]))
    head_mu = METAL_MU["cocr"] if rng.random() < 0.6 else METAL_MU["ceramic"]
    n_max = 3 if design == "hemispherical" else 2
    cup = CupGeom(side, design, centre, axis, outer_r, wall, shell_mu, head_r, head_mu, incl, antev,
                  flange=float(rng.uniform(3.0, 6.0)) if design == "flanged" else 0.0,
                  screws=_cup_screws(rng, centre, outer_r, axis, sgn, n_max))
    return cup


def _cup_screws(rng: np.random.Generator, centre: Vec, outer_r: float, axis: Vec3, sgn: float, n_max: int) -> list[Rod]:
    """Dome screws: from inside the dome into the ilium (up and medial), projected."""
    p = np.array([0.35, 0.3, 0.25, 0.1][: n_max + 1])
    n = int(rng.choice(n_max + 1, p=p / p.sum()))
    out: list[Rod] = []
    ax = np.array(axis)
    for _ in range(n):
        d = -ax + np.array([rng.normal(-0.25 * sgn, 0.2), rng.normal(-0.35, 0.15), rng.normal(0.0, 0.35)])
        d = d / np.linalg.norm(d)
        start = outer_r - 7.0
        length = float(rng.uniform(20.0, 40.0))
        p0 = (centre[0] + start * d[0], centre[1] + start * d[1])
        p1 = (centre[0] + (start + length) * d[0], centre[1] + (start + length) * d[1])
        if math.hypot(p1[0] - p0[0], p1[1] - p0[1]) < 4.0:
            continue
        out.append(Rod(p0, p1, 2.6, METAL_MU["ti"], 0.0, 0.7, 2.5, head_radius=4.0))
    return out


def _plan_stem(rng: np.random.Generator, fg: FemurGeom, kind: str, head_c: Vec, cemented: bool,
               s: float) -> list[Part]:
    """A femoral stem outline in the shaft frame (w lateral, t down from J) + the trunnion."""
    rs = fg.r_shaft
    canal = 0.55 * rs
    if kind == "short":
        length, w_tip, w_cal, tau, shoulder = rng.uniform(70, 95) * s, 0.55 * canal, 15 * s, 22 * s, rng.uniform(-20, -12) * s
    elif kind == "revision_long":
        length, w_tip, w_cal, tau, shoulder = rng.uniform(200, 260) * s, 0.95 * canal, 16 * s, 40 * s, rng.uniform(-30, -22) * s
    else:
        length, w_tip, w_cal, tau, shoulder = rng.uniform(105, 150) * s, 0.62 * canal, 16 * s, 30 * s, rng.uniform(-32, -22) * s
    if cemented:
        w_tip *= 0.8
        w_cal *= 0.85
    w_tip = float(max(w_tip, 3.5))
    bow = {"anatomic": rng.uniform(2.0, 4.0) * s, "short": 0.0}.get(kind, 0.0)
    lateral_drift = 0.10 if kind == "short" else 0.0
    w_sh = float(rng.uniform(8.0, 11.0)) * s

    def axis_w(t: float) -> float:
        return bow * math.sin(math.pi * min(max(t / length, 0.0), 1.0)) + lateral_drift * max(t, 0.0)

    ts = np.linspace(-8.0 * s, length - w_tip, 14)
    lat = [fg.wt(axis_w(t) + w_tip + (w_sh - w_tip) * max(0.0, 1.0 - (t - shoulder) / length) ** 1.3, t)
           for t in ts]
    tip = [fg.wt(axis_w(length - w_tip) + w_tip * math.cos(a), length - w_tip + w_tip * math.sin(a))
           for a in np.linspace(0.0, math.pi, 8)]
    med = [fg.wt(axis_w(t) - (w_tip + (w_cal - w_tip) * math.exp(-(t + 8.0 * s) / tau)), t) for t in ts[::-1]]
    k_neck = 0.52 * fg.tn
    top = [fg.along_neck(k_neck, -7.0 * s), fg.along_neck(k_neck, 7.5 * s), fg.wt(w_sh * 0.6, shoulder),
           fg.wt(w_sh, shoulder + 4.0 * s)]
    outline = tuple([*lat, *tip, *med, *top])
    mu = METAL_MU["ti"] if not cemented and rng.random() < 0.8 else METAL_MU["cocr"] if rng.random() < 0.5 else METAL_MU["steel"]
    depth = float(rng.uniform(12.0, 16.0)) * (0.85 if kind == "short" else 1.0)
    body = Strip(outline, depth, mu, edge=2.5, taper_axis=(fg.J, fg.wt(0.0, length)), taper=0.4,
                 cement=float(rng.uniform(2.0, 4.0)) if cemented else 0.0)
    trunnion = Rod(head_c, fg.along_neck(k_neck + 4.0), 5.5, mu, radius1=7.0)
    parts: list[Part] = [body, trunnion]
    if kind == "revision_long" and rng.random() < 0.6:
        for k in range(int(rng.integers(1, 3))):
            t = length - (25.0 + 15.0 * k) * s
            parts.append(Rod(fg.wt(rs + 6.0, t), fg.wt(-rs - 6.0, t), 2.4, METAL_MU["steel"], 0.0, 0.5, 1.8,
                             head_radius=4.0))
    return parts


def _neck_line_to_lateral(fg: FemurGeom, off: float) -> tuple[Vec, Vec]:
    """Where a line parallel to the neck axis (offset ``off`` superior) enters the lateral cortex
    and its direction from there towards the head."""
    p = fg.along_neck(0.0, off)
    d = fg.neck_dir
    # param k where the line p + k d crosses w = r_shaft (lateral cortex)
    jw = (p[0] - fg.J[0]) * fg.lat_dir[0] + (p[1] - fg.J[1]) * fg.lat_dir[1]
    dw = d[0] * fg.lat_dir[0] + d[1] * fg.lat_dir[1]
    k = (fg.r_shaft + 1.0 - jw) / max(dw, 1e-6)
    entry = (p[0] + k * d[0], p[1] + k * d[1])
    return entry, (-d[0], -d[1])


def _plan_fixation(rng: np.random.Generator, fg: FemurGeom, kind: str, s: float) -> list[Part]:
    rs, rh = fg.r_shaft, fg.rh
    steel = METAL_MU["steel"] if rng.random() < 0.6 else METAL_MU["ti"]
    parts: list[Part] = []

    def lag(off: float = -2.0) -> tuple[Vec, Vec, Vec]:
        entry, d = _neck_line_to_lateral(fg, off * s)
        c = fg.along_neck(0.0, off * s)
        reach = math.hypot(c[0] - entry[0], c[1] - entry[1]) + rh - float(rng.uniform(8.0, 14.0))
        tip = (entry[0] + reach * d[0], entry[1] + reach * d[1])
        return entry, tip, d

    def shaft_screws(t0: float, n: int, step: float, side_w: float) -> None:
        for k in range(n):
            t = t0 + k * step
            parts.append(Rod(fg.wt(side_w, t), fg.wt(-side_w * (rs + 3.0) / abs(side_w), t + rng.normal(0, 1.0)), 2.2,
                             steel, 0.15, 0.5, 1.75, head_radius=3.8))

    if kind == "sliding_hip_screw":
        entry, tip, d = lag()
        back = (entry[0] - 6.0 * d[0], entry[1] - 6.0 * d[1])
        parts.append(Rod(back, tip, 4.0, steel, 0.78, 2.2, 3.0))
        parts.append(Rod(back, (entry[0] + 40.0 * d[0], entry[1] + 40.0 * d[1]), 6.5, steel))
        t_entry = (entry[0] - fg.J[0]) * fg.shaft_dir[0] + (entry[1] - fg.J[1]) * fg.shaft_dir[1]
        length = float(rng.uniform(90.0, 170.0)) * s
        w0, w1 = rs + 1.0, rs + 6.0
        outline = (fg.wt(w0, t_entry - 6.0 * s), fg.wt(w1, t_entry - 10.0 * s), fg.wt(w1, t_entry + length),
                   fg.wt(w0, t_entry + length))
        parts.append(Strip(outline, 16.0, steel, edge=1.2))
        shaft_screws(t_entry + 30.0 * s, int(length // (16.0 * s)) - 1, 15.0 * s, w1 + 1.0)
    elif kind == "cannulated_screws":
        n = int(rng.integers(2, 4))
        offs = [-0.42 * fg.rh * 0.66, 0.38 * fg.rh * 0.66, -0.02 * fg.rh][:n]
        thread = float(rng.choice([16.0, 32.0]))
        for off in offs:
            entry, d = _neck_line_to_lateral(fg, off)
            c = fg.along_neck(0.0, off)
            reach = math.hypot(c[0] - entry[0], c[1] - entry[1]) + 0.75 * rh
            tip = (entry[0] + reach * d[0], entry[1] + reach * d[1])
            back = (entry[0] - 3.0 * d[0], entry[1] - 3.0 * d[1])
            parts.append(Rod(back, tip, 3.4, steel, 1.0 - thread / reach, 1.3, 2.8, head_radius=6.0))
    elif kind == "intramedullary_nail":
        entry_pt = fg.wt(6.0 * s, -52.0 * s)
        bend = fg.wt(0.0, 35.0 * s)
        length = float(rng.choice([190.0, 380.0])) * s
        parts.append(Rod(entry_pt, bend, 8.2, steel))
        parts.append(Rod(bend, fg.wt(0.0, length), 7.5, steel, radius1=5.5))
        entry, tip, d = lag(-1.0)
        back = (entry[0] - 8.0 * d[0], entry[1] - 8.0 * d[1])
        parts.append(Rod(back, tip, 5.2, steel, 0.8, 1.2, 3.0))
        if length < 300 * s:
            shaft_screws(length - 30.0 * s, int(rng.integers(1, 3)), 14.0 * s, rs + 5.0)
    elif kind == "plate":
        t0 = float(rng.uniform(20.0, 60.0)) * s
        length = float(rng.uniform(110.0, 200.0)) * s
        if rng.random() < 0.6:
            w0, w1 = rs + 1.0, rs + 5.5
            outline = (fg.wt(w0, t0), fg.wt(w1, t0), fg.wt(w1, t0 + length), fg.wt(w0, t0 + length))
            parts.append(Strip(outline, 14.0, steel, edge=1.2))
            shaft_screws(t0 + 8.0 * s, int(length // (18.0 * s)), 18.0 * s, w1 + 1.0)
        else:
            half = 6.5 * s
            outline = (fg.wt(-half, t0), fg.wt(half, t0), fg.wt(half, t0 + length), fg.wt(-half, t0 + length))
            holes = tuple((fg.wt(0.0, t0 + 9.0 * s + 17.0 * s * k), 2.6 * s) for k in range(int(length // (17.0 * s))))
            parts.append(Strip(outline, 4.5, steel, holes=holes, edge=0.8))
            for c, _ in holes[:: 1 if rng.random() < 0.5 else 2]:
                parts.append(Ball(c, 3.0 * s, steel * 4.0))
    else:  # cerclage
        for k in range(int(rng.integers(2, 5))):
            t = float(rng.uniform(20.0, 140.0)) * s + 0.0 * k
            sag = float(rng.uniform(1.5, 4.0))
            a, m, b = fg.wt(-rs - 0.8, t), fg.wt(0.0, t + sag), fg.wt(rs + 0.8, t + rng.normal(0.0, 1.5))
            pts = tuple(bezier([a, m, b], 12))
            parts.append(Wire(pts, 0.8, steel, wrap=rs + 0.8))
            parts.append(Ball(b if rng.random() < 0.5 else a, 2.0, steel))
    return parts


def _plan_other_hardware(rng: np.random.Generator, an: Anatomy) -> list[Part]:
    """Hardware away from the hips: lumbosacral pedicle screws with rods, or iliac/SI screws."""
    s = an.s
    parts: list[Part] = []
    if rng.random() < 0.5:
        top = -118.0 * s * an.sacrum
        levels = [top - 28.0 * s, top - 66.0 * s, top + 12.0 * s][: int(rng.integers(2, 4))]
        for sg in (-1.0, 1.0):
            heads = []
            for lv in levels:
                p0 = (sg * 30.0 * s, lv)
                p1 = (sg * 12.0 * s, lv + rng.normal(0, 2.0))
                parts.append(Rod(p0, p1, 3.2, METAL_MU["ti"], 0.2, 0.8, 2.6, head_radius=6.0))
                heads.append(p0)
            parts.append(Wire(tuple(sorted(heads, key=lambda p: p[1])), 3.0, METAL_MU["ti"]))
    else:
        for sg in (-1.0, 1.0) if rng.random() < 0.5 else (float(rng.choice([-1.0, 1.0])),):
            if rng.random() < 0.5:  # iliosacral screw
                p0, p1 = (sg * 110.0 * s, -95.0 * s), (sg * 5.0 * s, -100.0 * s)
            else:  # iliac screw from the posterior crest towards the acetabulum
                p0, p1 = (sg * 60.0 * s, -145.0 * s), (sg * (an.hw - 10.0), -40.0 * s)
            parts.append(Rod(p0, p1, 3.6, METAL_MU["ti"], 0.6, 0.9, 2.8, head_radius=6.0))
    return parts


# ---------------------------------------------------------------------------------------------
# scene plan


@dataclass
class HipPlan:
    side: Side
    state: str  # "none" | "tha" | "hemiarthroplasty" | "resurfacing" | "fixation"
    design: str | None = None
    hardware: str | None = None
    cup: CupGeom | None = None
    components: list[Component] = field(default_factory=list)
    head_ball: Ball | None = None  # hemiarthroplasty head
    cut: tuple[Vec, Vec] | None = None


@dataclass
class Presentation:
    photometric: str
    bits: int
    marker: str | None
    marker_corner: int
    collimate: bool
    border: str
    text_lines: int
    ruler: bool
    grid: bool


@dataclass
class SketchScene:
    """Everything random about one image, drawn before any pixel is painted."""

    kind: str
    view: View
    frame: Frame
    anatomy: Anatomy
    sides: tuple[Side, ...]
    hips: dict[Side, HipPlan]
    other_hardware: list[Component]
    other_kind: str | None
    lateral: dict[str, float]
    present: Presentation
    truth: GroundTruth


def _hip_state(rng: np.random.Generator, kind: str) -> str:
    if kind == "cups":
        return "tha"
    return _rng_choice(rng, ("none", "tha", "hemiarthroplasty", "resurfacing", "fixation"),
                       (0.45, 0.30, 0.07, 0.05, 0.13))


def _plan_hip_ap(rng: np.random.Generator, an: Anatomy, side: Side, state: str, resurf_share: float) -> HipPlan:
    fg = an.femur(side)
    s = an.s
    plan = HipPlan(side, state)
    if state == "tha" and rng.random() < resurf_share:
        state = plan.state = "resurfacing"
    if state in ("tha", "resurfacing"):
        incl = float(np.clip(rng.normal(40.0, 12.0), 20.0, 65.0))
        antev = float(np.clip(rng.normal(15.0, 9.0), 0.0, 35.0))
        axis = _cup_axis(side, incl, antev)
        centre = (fg.head[0] + float(rng.normal(0.0, 1.5)), fg.head[1] + float(rng.normal(0.0, 1.5)))
        if state == "resurfacing":
            cap_r = fg.rh + float(rng.uniform(-1.0, 1.5))
            outer = cap_r + float(rng.uniform(3.0, 5.0))
            centre = fg.head
            cap_axis = fg.neck_axis3()
            plan.cup = CupGeom(side, "resurfacing", centre, axis, outer, outer - cap_r, METAL_MU["cocr"], cap_r,
                               METAL_MU["cocr"], incl, antev, cap_axis=cap_axis, cap_wall=float(rng.uniform(2.5, 4.0)))
            plan.design = "resurfacing"
            peg = Rod(fg.head, fg.along_neck(cap_r + float(rng.uniform(12.0, 20.0))), 3.4, METAL_MU["cocr"])
            plan.components.append(Component("", [peg]))
            return plan
        design = _rng_choice(rng, THA_DESIGNS, THA_DESIGN_P)
        plan.design = design
        plan.cup = _plan_cup(rng, side, design, centre, fg.rh, axis, incl, antev)
        stem_kind = _rng_choice(rng, STEM_KINDS, (0.45, 0.2, 0.2, 0.15))
        cemented = rng.random() < (0.35 if design != "cemented" else 0.7)
        plan.components.append(Component("stem", _plan_stem(rng, fg, stem_kind, centre, cemented, s)))
        plan.cut = _neck_cut(rng, fg)
    elif state == "hemiarthroplasty":
        plan.design = "hemiarthroplasty"
        r = float(np.clip(fg.rh + rng.normal(0.0, 1.0), 21.0, 28.0))
        plan.head_ball = Ball(fg.head, r, METAL_MU["cocr"])
        stem_kind = _rng_choice(rng, STEM_KINDS[:2], (0.6, 0.4))
        plan.components.append(Component("stem", _plan_stem(rng, fg, stem_kind, fg.head, rng.random() < 0.6, s)))
        plan.cut = _neck_cut(rng, fg)
    elif state == "fixation":
        hw = _rng_choice(rng, HARDWARE, (0.3, 0.25, 0.2, 0.15, 0.1))
        plan.hardware = hw
        plan.components.append(Component("other_hardware", _plan_fixation(rng, fg, hw, s)))
    return plan


def _neck_cut(rng: np.random.Generator, fg: FemurGeom) -> tuple[Vec, Vec]:
    p = fg.along_neck(float(rng.uniform(0.5, 0.62)) * fg.tn)
    a = math.radians(float(rng.uniform(-15.0, 15.0)))
    nx, ny = fg.neck_dir
    return p, (nx * math.cos(a) - ny * math.sin(a), nx * math.sin(a) + ny * math.cos(a))


def _present(rng: np.random.Generator, view: View, sides: tuple[Side, ...]) -> Presentation:
    marker: str | None = None
    if rng.random() < 0.75:
        if view in (View.AP_HIP, View.LATERAL_HIP) and sides:
            marker = sides[0].value
        else:
            marker = "R" if rng.random() < 0.6 else "L"
    return Presentation(
        photometric="MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
        bits=int(rng.choice([10, 12, 14, 16], p=[0.15, 0.45, 0.25, 0.15])),
        marker=marker,
        marker_corner=int(rng.integers(0, 2)),
        collimate=bool(rng.random() < 0.55),
        border="bright" if rng.random() < 0.5 else "dark",
        text_lines=int(rng.choice([0, 1, 2, 3, 4], p=[0.25, 0.2, 0.25, 0.2, 0.1])),
        ruler=bool(rng.random() < 0.3),
        grid=bool(rng.random() < 0.3),
    )


def _plan(kind: str, rng: np.random.Generator, rows: int) -> SketchScene:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if rows < 64:
        raise ValueError("rows must be at least 64")
    if kind == "cups":
        view, child = View.AP_PELVIS, False
    else:
        view = [View.AP_PELVIS, View.AP_HIP, View.LATERAL_HIP, View.OTHER][
            int(rng.choice(4, p=[0.45, 0.25, 0.20, 0.10]))]
        child = bool(rng.random() < 0.10)
    sex = "F" if rng.random() < 0.5 else "M"
    an = _sample_anatomy(rng, sex, child)
    s = an.s
    max_rot = 2.0 if kind == "cups" else 4.0
    theta = math.radians(float(rng.uniform(-max_rot, max_rot)))
    sides: tuple[Side, ...] = ()
    other_kind: str | None = None
    lateral: dict[str, float] = {}
    if view is View.AP_PELVIS:
        sides = (Side.RIGHT, Side.LEFT)
        aspect = float(rng.uniform(1.12, 1.3))
        width = float(rng.uniform(350.0, 420.0)) * (s if child else 1.0)
        cols = round(rows * aspect)
        frame = Frame(rows, cols, width / cols, float(rng.normal(0.0, 8.0)) * s, float(rng.uniform(-62.0, -30.0)) * s,
                      theta)
    elif view is View.AP_HIP:
        sides = (Side.RIGHT if rng.random() < 0.5 else Side.LEFT,)
        sgn = 1.0 if sides[0] is Side.LEFT else -1.0
        height = float(rng.uniform(200.0, 260.0)) * (s if child else 1.0)
        cols = round(rows * rng.uniform(0.8, 1.0))
        frame = Frame(rows, cols, height / rows, sgn * (an.hw + float(rng.uniform(-28.0, 0.0)) * s),
                      float(rng.uniform(15.0, 55.0)) * s, theta)
    elif view is View.LATERAL_HIP:
        sides = (Side.RIGHT if rng.random() < 0.5 else Side.LEFT,)
        e = 1.0 if rng.random() < 0.5 else -1.0
        psi = float(rng.uniform(-16.0, 16.0))
        height = float(rng.uniform(190.0, 250.0)) * (s if child else 1.0)
        cols = round(rows * rng.uniform(1.0, 1.3))
        along = float(rng.uniform(20.0, 60.0)) * s
        d = (e * math.cos(math.radians(psi)), math.sin(math.radians(psi)))
        frame = Frame(rows, cols, height / rows, d[0] * along, d[1] * along + float(rng.normal(0.0, 10.0)) * s, theta)
        lateral = {"e": e, "psi": psi, "other": float(rng.choice([0.0, 130.0, -150.0], p=[0.5, 0.3, 0.2]))}
    else:
        other_kind = OTHER_KINDS[int(rng.integers(0, 3))]
        size = {"knee": 250.0, "hand": 230.0, "chest": 420.0}[other_kind] * (s if child else 1.0)
        cols = round(rows * rng.uniform(0.8, 1.1))
        frame = Frame(rows, cols, size / rows, float(rng.normal(0.0, 8.0)), float(rng.normal(0.0, 8.0)), theta)

    hips: dict[Side, HipPlan] = {}
    if kind == "cups":
        both = rng.random() < 0.6
        tha_sides = (Side.RIGHT, Side.LEFT) if both else ((Side.RIGHT,) if rng.random() < 0.5 else (Side.LEFT,))
        for sd in sides:
            state = "tha" if sd in tha_sides else "none"
            hips[sd] = _plan_hip_ap(rng, an, sd, state, 0.10)
    elif view in (View.AP_PELVIS, View.AP_HIP):
        for sd in sides:
            hips[sd] = _plan_hip_ap(rng, an, sd, "none" if child else _hip_state(rng, kind), 0.0)
    elif view is View.LATERAL_HIP:
        sd = sides[0]
        hips[sd] = _plan_hip_lateral(rng, an, sd, "none" if child else _hip_state(rng, kind), lateral)
    other_hw: list[Component] = []
    if kind == "mixed" and view in (View.AP_PELVIS, View.AP_HIP) and not child and rng.random() < 0.10:
        other_hw.append(Component("other_hardware", _plan_other_hardware(rng, an)))
    present = _present(rng, view, sides)
    scene = SketchScene(kind, view, frame, an, sides, hips, other_hw, other_kind, lateral, present,
                        truth=_dummy_truth(view))
    scene.truth = _truth(scene)
    return scene


def _dummy_truth(view: View) -> GroundTruth:
    return GroundTruth(view, (), "F", {}, [], {}, 0, 0, 1.0, 1.0, "MONOCHROME2", 12, "parallel", None)


# ---------------------------------------------------------------------------------------------
# lateral (cross-table) view


def _lat_axes(lat: dict[str, float]) -> tuple[Vec, Vec]:
    """Unit vectors along the femur (away from the acetabulum) and anterior (image up)."""
    e, psi = lat["e"], math.radians(lat["psi"])
    d = (e * math.cos(psi), math.sin(psi))
    a = (e * math.sin(psi), -math.cos(psi))
    return d, a


def _lat_pt(lat: dict[str, float], t: float, q: float) -> Vec:
    d, a = _lat_axes(lat)
    return (t * d[0] + q * a[0], t * d[1] + q * a[1])


def _plan_hip_lateral(rng: np.random.Generator, an: Anatomy, side: Side, state: str, lat: dict[str, float]) -> HipPlan:
    plan = HipPlan(side, state)
    s = an.s
    rh = an.rh[side]
    d, a = _lat_axes(lat)
    shaft_q = -8.0 * s

    def L(t: float, q: float) -> Vec:
        return _lat_pt(lat, t, q)

    if state in ("tha", "resurfacing"):
        ver = math.radians(float(rng.uniform(5.0, 35.0)))
        xi = math.radians(float(rng.uniform(25.0, 50.0)))
        n = (math.cos(xi) * (math.cos(ver) * d[0] + math.sin(ver) * a[0]),
             math.cos(xi) * (math.cos(ver) * d[1] + math.sin(ver) * a[1]), math.sin(xi))
        if state == "resurfacing":
            outer = rh + float(rng.uniform(3.0, 5.0))
            plan.cup = CupGeom(side, "resurfacing", (0.0, 0.0), n, outer, outer - rh, METAL_MU["cocr"], rh,
                               METAL_MU["cocr"], 0.0, 0.0, cap_axis=(d[0] * 0.95, d[1] * 0.95, 0.31),
                               cap_wall=float(rng.uniform(2.5, 4.0)))
            plan.design = "resurfacing"
            plan.components.append(Component("", [Rod((0.0, 0.0), L(rh + 16.0, -2.0 * s), 3.4, METAL_MU["cocr"])]))
            return plan
        design = _rng_choice(rng, THA_DESIGNS, THA_DESIGN_P)
        plan.design = design
        plan.cup = _plan_cup(rng, side, design, (0.0, 0.0), rh, n, 0.0, 0.0)
        plan.cup.screws = []
        plan.components.append(Component("stem", _lat_stem(rng, lat, s, rng.random() < 0.35)))
        plan.cut = (L(0.55 * 50.0 * s, 0.0), d)
    elif state == "hemiarthroplasty":
        plan.design = "hemiarthroplasty"
        plan.head_ball = Ball((0.0, 0.0), float(np.clip(rh + rng.normal(0.0, 1.0), 21.0, 28.0)), METAL_MU["cocr"])
        plan.components.append(Component("stem", _lat_stem(rng, lat, s, rng.random() < 0.6)))
        plan.cut = (L(0.55 * 50.0 * s, 0.0), d)
    elif state == "fixation":
        hw = _rng_choice(rng, HARDWARE, (0.3, 0.25, 0.2, 0.15, 0.1))
        plan.hardware = hw
        steel = METAL_MU["steel"]
        parts: list[Part] = []
        rs = 0.56 * rh
        if hw in ("sliding_hip_screw", "intramedullary_nail"):
            parts.append(Rod(L(95.0 * s, shaft_q + 2.0), L(rh - 10.0, -1.0), 4.0, steel, 0.75, 2.2, 3.0))
            if hw == "sliding_hip_screw":
                parts.append(Rod(L(95.0 * s, shaft_q + 2.0), L(58.0 * s, -2.0), 6.5, steel))
                parts.append(Strip((L(70.0 * s, shaft_q + 6.0), L(230.0 * s, shaft_q + 6.0), L(230.0 * s, shaft_q - 6.0),
                                    L(70.0 * s, shaft_q - 6.0)), 5.0, steel, edge=1.0))
            else:
                parts.append(Rod(L(40.0 * s, shaft_q + 4.0), L(380.0 * s, shaft_q), 7.5, steel, radius1=5.5))
        elif hw == "cannulated_screws":
            for q in (-0.35 * rh, 0.3 * rh, 0.0)[: int(rng.integers(2, 4))]:
                parts.append(Rod(L(100.0 * s, shaft_q + q * 0.6), L(0.75 * rh, q * 0.7), 3.4, steel, 0.75, 1.3, 2.8,
                                 head_radius=6.0))
        elif hw == "plate":
            t0 = float(rng.uniform(60.0, 100.0)) * s
            parts.append(Strip((L(t0, shaft_q + 7.0), L(t0 + 160 * s, shaft_q + 7.0), L(t0 + 160 * s, shaft_q - 7.0),
                                L(t0, shaft_q - 7.0)), 4.5, steel, edge=1.0))
            for k in range(6):
                parts.append(Ball(L(t0 + 12.0 * s + 26.0 * s * k, shaft_q + rng.normal(0, 1.5)), 3.0, steel * 3.0))
        else:
            for k in range(int(rng.integers(2, 5))):
                t = float(rng.uniform(80.0, 200.0)) * s + 0.0 * k
                pts = tuple(bezier([L(t, shaft_q - rs - 0.8), L(t + 2.5, shaft_q), L(t, shaft_q + rs + 0.8)], 12))
                parts.append(Wire(pts, 0.8, steel, wrap=rs + 0.8))
        plan.components.append(Component("other_hardware", parts))
    return plan


def _lat_stem(rng: np.random.Generator, lat: dict[str, float], s: float, cemented: bool) -> list[Part]:
    length = float(rng.uniform(150.0, 210.0)) * s
    q0 = -8.0 * s
    w0, w1 = float(rng.uniform(8.0, 10.0)) * s, float(rng.uniform(4.0, 5.0)) * s
    pts = [_lat_pt(lat, 30.0 * s, q0 + w0 + 2.0), _lat_pt(lat, length, q0 + w1),
           _lat_pt(lat, length + w1, q0), _lat_pt(lat, length, q0 - w1), _lat_pt(lat, 30.0 * s, q0 - w0)]
    mu = METAL_MU["ti"] if not cemented else METAL_MU["cocr"]
    body = Strip(tuple(pts), float(rng.uniform(20.0, 28.0)), mu, edge=3.0,
                 taper_axis=(_lat_pt(lat, 30.0 * s, q0), _lat_pt(lat, length, q0)), taper=0.6,
                 cement=float(rng.uniform(2.0, 4.0)) if cemented else 0.0)
    trunnion = Rod((0.0, 0.0), _lat_pt(lat, 36.0 * s, q0 + 1.0), 5.5, mu, radius1=7.0)
    return [body, trunnion]


def _paint_lateral(canvas: Canvas, scene: SketchScene) -> None:
    """Cross-table lateral: femur along the image horizontal (anterior up), acetabulum as an arc,
    ischium behind, the greater trochanter superimposed on the neck, the other thigh's shadow."""
    an, lat = scene.anatomy, scene.lateral
    side = scene.sides[0]
    s = an.s
    rh = an.rh[side]
    r_s = an.socket_r(side)
    plan = scene.hips[side]
    d, a = _lat_axes(lat)
    sq = -8.0 * s
    rs = 0.56 * rh

    def L(t: float, q: float) -> Vec:
        return _lat_pt(lat, t, q)

    def local(u: Arr, v: Arr) -> tuple[Arr, Arr]:
        return u * d[0] + v * d[1], u * a[0] + v * a[1]

    big = (-1e4, 1e4, -1e4, 1e4)

    other_thigh = scene.lateral.get("other", 0.0)

    def soft(u: Arr, v: Arr, t: Arr) -> Arr:
        tt, qq = local(u, v)
        thigh_r = 72.0 * s * an.body_w
        thigh = 2.0 * np.sqrt(np.clip(thigh_r**2 - (qq - sq) ** 2, 0.0, None)) * np.clip((tt + 40.0 * s) / (60.0 * s), 0, 1)
        buttock = 2.0 * 95.0 * s * an.body_d * np.sqrt(np.clip(1.0 - ((tt + 70.0 * s) / (150.0 * s)) ** 2
                                                               - ((qq + 10.0 * s) / (125.0 * s)) ** 2, 0.0, None))
        out = np.maximum(thigh, buttock)
        if other_thigh:
            out = out + 2.0 * 55.0 * s * np.sqrt(np.clip(
                1.0 - ((tt - 80.0 * s) / (260.0 * s)) ** 2 - ((qq - other_thigh * s) / (55.0 * s)) ** 2, 0.0, None))
        return np.asarray(MU_WATER * out)

    canvas.paint("soft", big, soft)
    # the pelvis beyond the joint (ilium and pubis seen obliquely), denser towards the acetabulum
    wall = smooth_closed([L(-r_s + 4.0, 30.0 * s), L(-45.0 * s, 58.0 * s), L(-130.0 * s, 62.0 * s),
                          L(-205.0 * s, 30.0 * s), L(-210.0 * s, -45.0 * s), L(-120.0 * s, -62.0 * s),
                          L(-45.0 * s, -48.0 * s), L(-r_s + 2.0, -28.0 * s)], 3)

    def wall_fn(u: Arr, v: Arr, t: Arr) -> Arr:
        sd = sd_polygon_fast(u, v, wall)
        near = np.exp(-np.hypot(u, v) / (60.0 * s))
        edge = 1.0 / (1.0 + np.exp(sd / (3.0 * s)))
        return np.asarray(MU_PLATE * edge * (5.0 + 16.0 * near) * (1.0 + 0.25 * t))

    canvas.paint("bone", _bounds(wall, 10), wall_fn)
    back = math.degrees(math.atan2(-d[1], -d[0]))
    acet = arc((0.0, 0.0), r_s + 5.0 * s, back - 105.0, back + 105.0, 30)

    def acetab(u: Arr, v: Arr, t: Arr) -> Arr:
        dd = sd_polyline(u, v, acet, 0.0)
        return np.asarray(MU_TRAB * chord(6.0 * s - dd, 6.0 * s) * 1.6 * (1 + 0.2 * t)
                          + MU_CORT * 2.5 * tube(np.abs(np.hypot(u, v) - r_s - 1.0), 1.6)
                          * (np.hypot(u, v) < r_s + 12.0) * ((u * d[0] + v * d[1]) < 0.25 * r_s))

    canvas.paint("bone", _bounds(acet, 10), acetab)
    isch = [L(-8.0 * s, -r_s - 2.0 * s), L(12.0 * s, -62.0 * s)]
    tub = L(22.0 * s, -76.0 * s)
    pub = [L(-8.0 * s, r_s + 2.0 * s), L(-45.0 * s, 52.0 * s)]
    axis_deg = math.degrees(math.atan2(d[1], d[0]))
    canvas.paint("bone", _bounds([*isch, tub, *pub], 30), lambda u, v, t: bone(
        [(sd_segment(u, v, isch[0], isch[1], 13.0 * s, 10.0 * s), 11.0 * s, 2.0),
         (sd_ellipse(u, v, tub, 17.0 * s, 11.0 * s, axis_deg + 30.0), 10.0 * s, 2.2),
         (sd_segment(u, v, pub[0], pub[1], 10.0 * s, 8.0 * s), 8.0 * s, 1.6)], 5.0 * s, t, 0.2))
    # femur
    head = plan.state == "none" or plan.state in ("fixation", "resurfacing")
    parts_geo: list[tuple[str, tuple[Any, ...], float, float]] = [
        ("seg", ((0.0, 0.0), L(45.0 * s, sq + 1.0), 0.66 * rh, 0.8 * rh), 0.7 * rh, 1.8),
        ("seg", (L(40.0 * s, sq), L(700.0 * s, sq), rs * 1.15, rs), rs, 0.4 * rs),
        ("ell", (L(70.0 * s, sq - rs - 2.0 * s), 9.0 * s, 7.0 * s), 6.0 * s, 1.0),
    ]
    if head:
        parts_geo.insert(0, ("circ", ((0.0, 0.0), rh), rh, 1.2))
    cut = plan.cut
    physis = bezier([L(0.45 * rh, 1.0 * rh), L(0.3 * rh, 0.0), L(0.45 * rh, -1.0 * rh)], 10)
    fb = _bounds([(0.0, 0.0), L(700.0 * s, sq), L(60.0 * s, 40.0 * s), L(60.0 * s, -40.0 * s)], rh + 5)

    def fem(u: Arr, v: Arr, t: Arr) -> Arr:
        parts = _femur_parts(parts_geo, u, v, math.degrees(math.atan2(d[1], d[0])), cut)
        val = bone(parts, 5.0 * s, t, 0.15)
        if an.child and head:
            val = val * (1.0 - 0.9 * np.exp(-((sd_polyline(u, v, physis, 0.0) / (1.3 * s)) ** 2)))
        return val

    canvas.paint("bone", fb, fem)
    gt = L(62.0 * s, sq + 6.0 * s)
    canvas.paint("bone", (gt[0] - 40, gt[0] + 40, gt[1] - 40, gt[1] + 40), lambda u, v, t: MU_TRAB * chord(
        -sd_ellipse(u, v, gt, 26.0 * s, 17.0 * s, math.degrees(math.atan2(d[1], d[0]))), 14.0 * s) * (1.0 + 0.15 * t))


# ---------------------------------------------------------------------------------------------
# OTHER views (crude on purpose: they only have to be "not a hip")


def _paint_other(canvas: Canvas, scene: SketchScene, rng: np.random.Generator) -> None:
    kind = scene.other_kind
    s = scene.anatomy.s if scene.anatomy.child else 1.0
    big = (-1e4, 1e4, -1e4, 1e4)
    if kind == "knee":
        canvas.paint("soft", big, lambda u, v, t: MU_WATER * 2.0 * np.sqrt(np.clip((62.0 * s) ** 2 - u * u, 0.0, None)))
        parts_f: list[tuple[tuple[Any, ...], float, float]] = [
            (("seg", (0.0, -400.0 * s), (0.0, -60.0 * s), 15.0 * s, 30.0 * s), 15.0 * s, 5.0),
            (("ell", (-21.0 * s, -22.0 * s), 21.0 * s, 20.0 * s), 20.0 * s, 1.5),
            (("ell", (21.0 * s, -22.0 * s), 22.0 * s, 20.0 * s), 20.0 * s, 1.5),
        ]

        def femur(u: Arr, v: Arr, t: Arr) -> Arr:
            ps: list[tuple[Arr, float, float]] = []
            for g, r, tc in parts_f:
                if g[0] == "seg":
                    ps.append((sd_segment(u, v, g[1], g[2], g[3], g[4]), r, tc))
                else:
                    ps.append((sd_ellipse(u, v, g[1], g[2], g[3]), r, tc))
            val = bone(ps, 6.0 * s, t)
            notch = sd_ellipse(u, v, (0.0, -4.0 * s), 8.0 * s, 14.0 * s)
            return np.asarray(val * np.clip(0.4 + notch / (6.0 * s), 0.4, 1.0))

        canvas.paint("bone", (-60, 60, -400, 10), femur)
        canvas.paint("bone", (-60, 60, 0, 400), lambda u, v, t: bone(
            [(sd_ellipse(u, v, (0.0, 16.0 * s), 40.0 * s, 12.0 * s), 16.0 * s, 1.5),
             (sd_segment(u, v, (0.0, 20.0 * s), (0.0, 400.0 * s), 26.0 * s, 15.0 * s), 15.0 * s, 5.0)], 8.0 * s, t))
        canvas.paint("bone", (20, 60, 10, 400), lambda u, v, t: bone(
            [(sd_ellipse(u, v, (38.0 * s, 35.0 * s), 11.0 * s, 10.0 * s), 9.0 * s, 1.2),
             (sd_segment(u, v, (38.0 * s, 40.0 * s), (42.0 * s, 400.0 * s), 7.0 * s, 6.0 * s), 6.0 * s, 2.5)], 3.0, t))
        canvas.paint("bone", (-30, 30, -70, 0), lambda u, v, t: 0.6 * bone(
            [(sd_ellipse(u, v, (3.0 * s, -32.0 * s), 22.0 * s, 26.0 * s), 11.0 * s, 1.5)], 3.0, t))
    elif kind == "hand":
        rays = []
        for k in range(5):
            ang = math.radians(-96.0 + 9.0 * (k - 2)) if k else math.radians(-138.0)
            base = (-4.0 * s + 11.0 * s * (k - 2.5), 52.0 * s) if k else (-26.0 * s, 56.0 * s)
            lengths = [64.0, 42.0, 26.0, 19.0] if k else [44.0, 32.0, 24.0]
            radii = [5.0, 4.6, 4.0, 3.6] if k else [5.6, 5.0, 4.4]
            p = base
            ca, sa = math.cos(ang), math.sin(ang)
            for seg, r in zip(lengths, radii, strict=True):
                q = (p[0] + seg * s * ca, p[1] + seg * s * sa)
                # the capsule's round ends stay inside the bone's length: dark joint spaces between
                rays.append(((p[0] + r * s * ca, p[1] + r * s * sa), (q[0] - r * s * ca, q[1] - r * s * sa), r * s))
                p = (q[0] + 2.0 * s * ca, q[1] + 2.0 * s * sa)
        soft_pts = [(r[0], r[1], r[2] * 1.5 + 3.0 * s) for r in rays]

        def hand_soft(u: Arr, v: Arr, t: Arr) -> Arr:
            dd = sd_ellipse(u, v, (-4.0 * s, 30.0 * s), 46.0 * s, 42.0 * s)
            out = chord(-dd, 24.0 * s)
            for p, q, r in soft_pts:
                out = np.maximum(out, chord(-sd_segment(u, v, p, q, r), r))
            arm = chord(-sd_segment(u, v, (0.0, 60.0 * s), (0.0, 400.0 * s), 34.0 * s), 30.0 * s)
            return np.asarray(MU_WATER * np.maximum(out, arm))

        canvas.paint("soft", big, hand_soft)
        for p, q, r in rays:
            canvas.paint("bone", _bounds([p, q], r + 3), lambda u, v, t, p=p, q=q, r=r: 2.2 * bone(
                [(sd_segment(u, v, p, q, r * 1.15, r * 0.9), r, 1.6 * s)], 1.0, t))
        for _ in range(8):
            c = (float(rng.normal(0.0, 12.0)) * s, float(rng.uniform(55.0, 78.0)) * s)
            canvas.paint("bone", (c[0] - 12, c[0] + 12, c[1] - 12, c[1] + 12), lambda u, v, t, c=c: bone(
                [(sd_ellipse(u, v, c, 7.0 * s, 6.0 * s), 6.0 * s, 0.8)], 1.0, t))
        for x0, r in ((-12.0, 13.0), (22.0, 8.0)):
            canvas.paint("bone", (x0 * s - 20, x0 * s + 20, 80 * s, 400), lambda u, v, t, x0=x0, r=r: bone(
                [(sd_segment(u, v, (x0 * s, 95.0 * s), (x0 * s, 400.0 * s), r * s * 1.3, r * s), r * s, 2.5)], 4.0, t))
    else:  # chest
        canvas.paint("soft", big, lambda u, v, t: MU_WATER * 2.0 * 110.0 * s * np.sqrt(
            np.clip(1.0 - (u / (170.0 * s)) ** 2, 0.0, None)))

        def lungs(u: Arr, v: Arr, t: Arr) -> Arr:
            out = np.zeros_like(u)
            for sg in (-1.0, 1.0):
                dd = sd_ellipse(u, v, (sg * 70.0 * s, -20.0 * s), 62.0 * s, 130.0 * s)
                out = out + chord(-dd, 70.0 * s)
            heart = chord(-sd_ellipse(u, v, (18.0 * s, 50.0 * s), 65.0 * s, 55.0 * s), 50.0 * s)
            return np.asarray(-0.7 * MU_WATER * np.clip(out - heart, 0.0, None))

        canvas.paint("soft", big, lungs)
        canvas.paint("bone", (-25, 25, -400, 400), lambda u, v, t: bone(
            [(sd_segment(u, v, (0.0, -300.0 * s), (0.0, 300.0 * s), 18.0 * s), 16.0 * s, 1.5)], 2.0, t, 0.5))
        for k in range(10):
            for sg in (-1.0, 1.0):
                y0 = (-150.0 + 26.0 * k) * s
                pts = bezier([(sg * 10.0 * s, y0), (sg * 120.0 * s, y0 - 30.0 * s), (sg * 150.0 * s, y0 + 40.0 * s),
                              (sg * 110.0 * s, y0 + 70.0 * s)], 20)
                canvas.paint("bone", _bounds(pts, 8), lambda u, v, t, pts=pts: bone(
                    [(sd_polyline(u, v, pts, 5.0 * s), 5.0 * s, 1.2)], 1.0, t))
        for sg in (-1.0, 1.0):
            cl = bezier([(sg * 15.0 * s, -160.0 * s), (sg * 70.0 * s, -150.0 * s), (sg * 120.0 * s, -175.0 * s)], 12)
            canvas.paint("bone", _bounds(cl, 10), lambda u, v, t, cl=cl: bone(
                [(sd_polyline(u, v, cl, 7.0 * s), 7.0 * s, 2.0)], 1.0, t))


# ---------------------------------------------------------------------------------------------
# painting a scene


def _paint_ap(canvas: Canvas, scene: SketchScene) -> None:
    an = scene.anatomy
    _paint_soft_ap(canvas, an)
    _paint_sacrum(canvas, an)
    _paint_spine(canvas, an)
    _paint_si_joints(canvas, an)
    for side in (Side.RIGHT, Side.LEFT):
        plan = scene.hips.get(side)
        _paint_hemipelvis(canvas, an, side)
        fg = an.femur(side)
        arthro = plan is not None and plan.state in ("tha", "hemiarthroplasty")
        _paint_femur(canvas, fg, an, plan.cut if plan is not None else None, not arthro)


def _paint_implants(canvas: Canvas, scene: SketchScene) -> None:
    for plan in scene.hips.values():
        for comp in plan.components:
            for part in comp.parts:
                paint_part(canvas, part)
        if plan.head_ball is not None:
            paint_part(canvas, plan.head_ball)
        if plan.cup is not None:
            paint_cup(canvas, plan.cup)
    for comp in scene.other_hardware:
        for part in comp.parts:
            paint_part(canvas, part)


def cup_path_length(scene: SketchScene, side: Side, part: str = "shell") -> Arr:
    """Path length (mm) through one part of a side's cup, on the scene's full pixel grid.

    This is what ``render_sketch`` paints (times the part's mu); tests threshold it to check
    that the truth ellipse is the drawn one."""
    f = scene.frame
    out = np.zeros((f.rows, f.cols))
    plan = scene.hips.get(side)
    if plan is None or plan.cup is None:
        return out
    u, v = f.grid(slice(0, f.rows), slice(0, f.cols))
    return cup_parts(u, v, plan.cup).get(part, out)


# ---------------------------------------------------------------------------------------------
# truth


def _box_from_points(frame: Frame, pts: Sequence[Vec], margin_mm: float, label: str) -> Box | None:
    """Pixel box of world points (+margin), clipped; None when mostly outside the image."""
    xy = [frame.to_px(u, v) for u, v in pts]
    m = margin_mm / frame.spacing
    x0, x1 = min(p[0] for p in xy) - m, max(p[0] for p in xy) + m
    y0, y1 = min(p[1] for p in xy) - m, max(p[1] for p in xy) + m
    cx0, cx1 = max(x0, 0.0), min(x1, frame.cols - 1.0)
    cy0, cy1 = max(y0, 0.0), min(y1, frame.rows - 1.0)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    if (cx1 - cx0) * (cy1 - cy0) < 0.5 * (x1 - x0) * (y1 - y0):
        return None
    return Box(round(cx0, 2), round(cy0, 2), round(cx1, 2), round(cy1, 2), label)


def _cup_truth(scene: SketchScene, cup: CupGeom) -> CupTruth:
    f = scene.frame
    nx, ny, _ = cup.axis
    major = math.degrees(math.atan2(nx, -ny))  # direction (-ny, nx), perpendicular to the axis
    angle = (major + math.degrees(f.theta)) % 180.0
    cx, cy = f.to_px(*cup.centre)
    a_px = cup.outer_r / f.spacing
    ell = Ellipse(cx, cy, a_px, a_px * math.sin(math.radians(cup.anteversion)), angle)
    return CupTruth(
        side=cup.side,
        inclination_deg=cup.inclination,
        anteversion_deg=cup.anteversion,
        ellipse=ell,
        seen_inclination_deg=cup.inclination,
        seen_anteversion_deg=cup.anteversion,
        head_centre=Point(cx, cy),
        head_radius_px=cup.head_r / f.spacing,
        screws=len(cup.screws),
        cemented=cup.cement > 0.0,
    )


def _component_points(comp: Component) -> tuple[list[Vec], float]:
    pts: list[Vec] = []
    margin = 0.0
    for p in comp.parts:
        q, m = part_points(p)
        if isinstance(p, (Rod, Ball)):
            r = m
            q = [(x + dx, y + dy) for x, y in q for dx, dy in ((r, 0), (-r, 0), (0, r), (0, -r))]
        else:
            margin = max(margin, m)
        pts.extend(q)
    return pts, margin


def _truth(scene: SketchScene) -> GroundTruth:
    f, an, view = scene.frame, scene.anatomy, scene.view
    boxes: list[Box] = []
    hips: dict[Side, HipTruth] = {}

    def add(b: Box | None) -> None:
        if b is not None and b.label in DETECTOR_CLASSES:
            boxes.append(b)

    for side in scene.sides:
        plan = scene.hips[side]
        implant = plan.state in ("tha", "hemiarthroplasty", "resurfacing")
        cup_truth = None
        if plan.cup is not None and view in (View.AP_PELVIS, View.AP_HIP):
            cup_truth = _cup_truth(scene, plan.cup)
        hips[side] = HipTruth(side, implant, cup=cup_truth, design=plan.design, hardware=plan.hardware)
        label = "hip_joint_right" if side is Side.RIGHT else "hip_joint_left"
        if view is View.LATERAL_HIP:
            centre: Vec = (0.0, 0.0)
        else:
            centre = plan.cup.centre if plan.cup is not None else an.femur(side).head
        r = max(an.rh[side], plan.cup.outer_r if plan.cup is not None else 0.0)
        add(_box_from_points(f, [centre], 1.6 * r, label))
        if plan.cup is not None:
            add(_box_from_points(f, cup_outline(plan.cup), 0.5, "cup"))
        for comp in plan.components:
            if comp.label:
                pts, margin = _component_points(comp)
                add(_box_from_points(f, pts, margin, comp.label))
    for comp in scene.other_hardware:
        pts, margin = _component_points(comp)
        add(_box_from_points(f, pts, margin, comp.label))
    if view in (View.AP_PELVIS, View.AP_HIP):
        for side in (Side.RIGHT, Side.LEFT):
            sgn = 1.0 if side is Side.LEFT else -1.0
            td_c, td_bot, tw = _teardrop(an, side)
            add(_box_from_points(f, [(sgn * (td_c - tw), -4.0 * an.s), (sgn * (td_c + tw + 2.0 * an.s), td_bot)],
                                 2.0 * an.s, "teardrop"))
            tub = (sgn * (an.hw - 22.0 * an.s), 80.0 * an.s)
            add(_box_from_points(f, [(tub[0] - 17 * an.s, tub[1] - 14 * an.s), (tub[0] + 17 * an.s, tub[1] + 13 * an.s)],
                                 1.0, "ischial_tuberosity"))
    p = scene.present
    return GroundTruth(
        view=view,
        imaged_sides=scene.sides,
        sex=an.sex,
        hips=hips,
        boxes=boxes,
        landmarks={},
        rows=f.rows,
        cols=f.cols,
        imager_pixel_spacing_mm=f.spacing,
        magnification=1.0,
        photometric=p.photometric,
        bits_stored=p.bits,
        projection="parallel",
        marker=p.marker,
        other_kind=scene.other_kind,
        paediatric=an.child,
        age_years=round(an.age, 1),
        variety="sketch",
    )


# ---------------------------------------------------------------------------------------------
# exposure and presentation

_LETTERS = {
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
}


def _paint_marker(canvas: Canvas, scene: SketchScene, rng: np.random.Generator) -> None:
    p = scene.present
    if p.marker is None:
        return
    f = scene.frame
    h_px = max(7, round(float(rng.uniform(12.0, 20.0)) / f.spacing))
    bitmap = np.array([[c == "1" for c in row] for row in _LETTERS[p.marker]], dtype=np.float32)
    cell = max(1, h_px // 7)
    glyph = np.kron(bitmap, np.ones((cell, cell), np.float32))
    glyph = np.pad(glyph, cell)
    gh, gw = glyph.shape
    right = (p.marker == "L") if scene.view is not View.OTHER else bool(rng.random() < 0.5)
    if scene.view is View.LATERAL_HIP:
        right = bool(rng.random() < 0.5)
    y = int(rng.uniform(0.03, 0.1) * f.rows) if p.marker_corner == 0 else int(f.rows * rng.uniform(0.82, 0.9))
    x = int(f.cols * rng.uniform(0.78, 0.9)) if right else int(f.cols * rng.uniform(0.04, 0.12))
    y, x = min(max(y, 0), f.rows - gh), min(max(x, 0), f.cols - gw)
    frame_box = np.zeros((gh, gw), np.float32)
    frame_box[:cell, :] = frame_box[-cell:, :] = frame_box[:, :cell] = frame_box[:, -cell:] = 1.0
    patch = ndimage.gaussian_filter(glyph * 2.0 * MU_LEAD, 0.6) + frame_box * 0.4
    canvas.layers["metal"][y:y + gh, x:x + gw] += patch.astype(np.float32)


def _paint_ruler(canvas: Canvas, scene: SketchScene, rng: np.random.Generator) -> None:
    f = scene.frame
    vertical = bool(rng.random() < 0.5)
    n = f.rows if vertical else f.cols
    pos = int(rng.uniform(0.02, 0.06) * (f.cols if vertical else f.rows))
    width = max(4, int(12.0 / f.spacing))
    ticks = np.zeros((n, width), np.float32)
    ticks[:, :] = 0.3
    step = 5.0 / f.spacing
    for k in range(int(n / step)):
        i = round(k * step)
        length = width if k % 2 == 0 else width // 2
        ticks[i:i + max(1, round(0.6 / f.spacing)), :length] += 2.5
    if vertical:
        canvas.layers["metal"][:, pos:pos + width] += ticks
    else:
        canvas.layers["metal"][pos:pos + width, :] += ticks.T


def _collimation(scene: SketchScene, rng: np.random.Generator) -> Arr32:
    f = scene.frame
    if not scene.present.collimate:
        return np.ones((f.rows, f.cols), np.float32)
    y = np.arange(f.rows, dtype=np.float32)[:, None] - (f.rows - 1) / 2.0
    x = np.arange(f.cols, dtype=np.float32)[None, :] - (f.cols - 1) / 2.0
    a = math.radians(float(rng.uniform(-3.0, 3.0)))
    ca, sa = math.cos(a), math.sin(a)
    xr, yr = ca * x + sa * y, -sa * x + ca * y
    m = [float(rng.uniform(0.0, 0.09)) for _ in range(4)]
    hx0, hx1 = (0.5 - m[0]) * f.cols, (0.5 - m[1]) * f.cols
    hy0, hy1 = (0.5 - m[2]) * f.rows, (0.5 - m[3]) * f.rows
    inside = np.minimum.reduce([xr + hx0, hx1 - xr, yr + hy0, hy1 - yr])
    return np.asarray(np.clip(inside / 2.0 + 0.5, 0.0, 1.0), dtype=np.float32)


def _box_blur(img: Arr32, sigma: float) -> Arr32:
    """Gaussian-like low-pass by three box passes (cost independent of sigma)."""
    size = max(1, round(math.sqrt(12.0 * sigma * sigma / 3.0 + 1.0)))
    out = img
    for _ in range(3):
        out = ndimage.uniform_filter(out, size, mode="nearest")
    return np.asarray(out, dtype=np.float32)


def _lowpass_small(img: Arr32, sigma_px: float, factor: int = 8) -> Arr32:
    """Very wide low-pass (scatter, dynamic range compression) computed at 1/factor size."""
    rows, cols = img.shape
    r2, c2 = -(-rows // factor) * factor, -(-cols // factor) * factor
    pad = np.pad(img, ((0, r2 - rows), (0, c2 - cols)), mode="edge")
    small = pad.reshape(r2 // factor, factor, c2 // factor, factor).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
    big = ndimage.zoom(small, factor, order=1, mode="nearest")
    out = np.empty((rows, cols), np.float32)
    bh, bw = big.shape
    out[:] = big[:rows, :cols] if bh >= rows and bw >= cols else np.pad(big, ((0, max(0, rows - bh)), (0, max(0, cols - bw))), mode="edge")[:rows, :cols]
    return out


def _blocky(q: Arr32, step: float) -> Arr32:
    """Quantise each 8x8 block's deviation from its mean, as a coarse JPEG would."""
    rows, cols = q.shape
    r8, c8 = rows - rows % 8, cols - cols % 8
    out = q.copy()
    blocks = np.ascontiguousarray(out[:r8, :c8]).reshape(r8 // 8, 8, c8 // 8, 8)
    mean = blocks.mean(axis=(1, 3), keepdims=True)
    out[:r8, :c8] = (mean + np.round((blocks - mean) / step) * step).reshape(r8, c8)
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _expose(scene: SketchScene, canvas: Canvas, rng: np.random.Generator) -> Arr32:
    """Line integrals -> bone-bright presentation values in [0, 1]."""
    f = scene.frame
    soft, bonel, metal = canvas.layers["soft"], canvas.layers["bone"], canvas.layers["metal"]
    total = soft + bonel + metal
    field_m = _collimation(scene, rng)
    anat = (field_m > 0.5) & (metal < 0.02) & (soft > 0.6)
    if int(anat.sum()) < 100:
        anat = field_m > 0.5
    sub = total[::3, ::3][anat[::3, ::3]]
    ref = float(np.percentile(sub, 55.0)) if sub.size else 0.0
    n0 = float(rng.uniform(250.0, 3000.0))
    primary = n0 * np.exp(-np.clip(total - ref, -3.0, 40.0)).astype(np.float32)
    if scene.present.grid:
        period = float(rng.uniform(2.5, 9.0))
        g = float(rng.uniform(0.01, 0.04))
        if rng.random() < 0.5:
            coord = np.arange(f.cols, dtype=np.float32)[None, :]
        else:
            coord = np.arange(f.rows, dtype=np.float32)[:, None]
        primary = primary * (1.0 - g * (0.5 + 0.5 * np.cos(2.0 * math.pi * coord / period))).astype(np.float32)
    primary = primary * field_m
    primary = ndimage.gaussian_filter(primary, float(rng.uniform(0.5, 1.2)))
    spr = float(rng.uniform(0.05, 0.4))
    scatter_src = np.minimum(primary, n0 * 2.0)
    scatter = spr * _lowpass_small(scatter_src, float(rng.uniform(25.0, 60.0)) / f.spacing)
    detected = primary + scatter
    e_noise = float(rng.uniform(1.0, 6.0))
    noise = rng.standard_normal(detected.shape, dtype=np.float32)
    if rng.random() < 0.5:
        noise = ndimage.gaussian_filter(noise, 0.6) * 1.8
    detected = detected + np.sqrt(np.maximum(detected, 0.0) + e_noise**2) * noise
    detected = np.maximum(detected, 0.2)
    p = -np.log(detected / n0)
    if rng.random() < 0.7:  # dynamic range compression in the log domain
        p = p - float(rng.uniform(0.3, 0.7)) * _lowpass_small(np.minimum(p, float(np.percentile(p[anat], 99.5))),
                                                           float(rng.uniform(15.0, 40.0)) / f.spacing, 4)
    # window on the anatomy (a modality's histogram analysis): mostly the bones and their
    # surroundings, sometimes the whole body; metal and collimation never count
    roi = anat
    if scene.view is not View.OTHER and rng.random() < 0.75:
        near_bone = _lowpass_small((bonel > 0.12).astype(np.float32), 8.0 / f.spacing, 4) > 0.15
        if int((near_bone & anat).sum()) > 500:
            roi = near_bone & anat
    vals = p[::2, ::2][roi[::2, ::2]]
    lo, hi = (float(x) for x in np.percentile(vals, (float(rng.uniform(0.5, 10.0)), 99.8)))
    span = max(hi - lo, 1e-3)
    lo -= span * float(rng.uniform(0.0, 0.06))
    hi += span * float(rng.uniform(0.0, 0.08))
    q = np.clip((p - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.75:  # unsharp-mask edge enhancement
        k = float(rng.uniform(0.2, 1.3))
        q = q + k * (q - _box_blur(q, float(rng.uniform(1.5, 10.0))))
        q = np.clip(q, 0.0, 1.0)
    curve = int(rng.integers(0, 3))
    gamma = float(rng.uniform(0.75, 1.4))
    if curve in (0, 2):
        q = q**gamma
    if curve in (1, 2):
        g, m = float(rng.uniform(3.0, 9.0)), float(rng.uniform(0.4, 0.6))
        lo_s, hi_s = 1.0 / (1.0 + math.exp(g * m)), 1.0 / (1.0 + math.exp(-g * (1.0 - m)))
        q = ((1.0 / (1.0 + np.exp(-g * (q - m)))) - lo_s) / (hi_s - lo_s)
    if rng.random() < 0.15:  # histogram-equalised look
        hist, edges = np.histogram(q[::2, ::2], bins=512, range=(0.0, 1.0))
        cdf = np.cumsum(hist).astype(np.float64)
        cdf /= cdf[-1]
        alpha = float(rng.uniform(0.4, 1.0))
        q = (1.0 - alpha) * q + alpha * np.interp(q, edges[1:], cdf).astype(np.float32)
    q = np.clip(q, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.08:  # lossy-compression look: 8x8 blocks lose their fine detail
        q = _blocky(q, float(rng.uniform(0.015, 0.04)))
    if scene.present.collimate and scene.present.border == "dark":
        q = np.where(field_m < 0.5, np.float32(rng.uniform(0.0, 0.05)), q).astype(np.float32)
    return np.asarray(q, dtype=np.float32)


def _burn_text(q: Arr32, scene: SketchScene, rng: np.random.Generator) -> None:
    """Burned-in annotation: lines of small bright glyph-like blocks in the corners."""
    rows, cols = q.shape
    h = max(5, int(rows * rng.uniform(0.012, 0.02)))
    level = float(rng.uniform(0.85, 1.0))
    for k in range(scene.present.text_lines):
        corner = int(rng.integers(0, 4))
        n_chars = int(rng.integers(6, 22))
        cw = max(3, int(h * 0.65))
        y = int(rows * 0.015) + k * int(h * 1.6) if corner < 2 else rows - int(rows * 0.015) - (k + 1) * int(h * 1.6)
        x = int(cols * 0.015) if corner % 2 == 0 else cols - int(cols * 0.015) - n_chars * cw
        if y < 0 or y + h > rows or x < 0:
            continue
        for c in range(n_chars):
            if rng.random() < 0.15:
                continue
            glyph = rng.random((5, 3)) < 0.55
            block = np.kron(glyph, np.ones((max(1, h // 5), max(1, (cw - 1) // 3)), bool))
            bh, bw = block.shape
            x0 = x + c * cw
            if x0 + bw > cols:
                break
            region = q[y:y + bh, x0:x0 + bw]
            region[block[: region.shape[0], : region.shape[1]]] = level


def _quantise(q: Arr32, present: Presentation, rng: np.random.Generator) -> NDArray[np.uint16]:
    top = (1 << present.bits) - 1
    gain = float(rng.uniform(0.75, 1.0))
    offset = float(rng.uniform(0.0, 1.0 - gain)) * top
    stored = np.clip(np.round(q * gain * top + offset), 0, top).astype(np.uint16)
    if present.photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    return np.asarray(stored, dtype=np.uint16)


# ---------------------------------------------------------------------------------------------
# public API


def sketch_scene(kind: str, seed: int, index: int, rows: int = 768) -> SketchScene:
    """The plan (geometry, implants, truth) of ``render_sketch(kind, seed, index, rows)``,
    without painting: cheap, for statistics over many images and for checks on the geometry."""
    return _plan(kind, np.random.default_rng([seed, index, 7919]), rows)


def render_sketch(kind: str, seed: int, index: int, rows: int = 768) -> tuple[np.ndarray, GroundTruth]:
    """Deterministic in (kind, seed, index, rows). kind is "mixed" or "cups".

    Returns (stored pixels as a uint16 2-D array, GroundTruth). For evaluation only: never train
    on these images."""
    rng = np.random.default_rng([seed, index, 7919])
    scene = _plan(kind, rng, rows)
    f = scene.frame
    canvas = Canvas(f, _texture(rng, f.rows, f.cols))
    if scene.view in (View.AP_PELVIS, View.AP_HIP):
        _paint_ap(canvas, scene)
    elif scene.view is View.LATERAL_HIP:
        _paint_lateral(canvas, scene)
    else:
        _paint_other(canvas, scene, rng)
    _paint_implants(canvas, scene)
    _paint_marker(canvas, scene, rng)
    if scene.present.ruler:
        _paint_ruler(canvas, scene, rng)
    q = _expose(scene, canvas, rng)
    _burn_text(q, scene, rng)
    stored = _quantise(q, scene.present, rng)
    truth = scene.truth
    truth.seed, truth.index = seed, index
    return stored, truth
