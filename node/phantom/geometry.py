"""Analytic 3D primitives and an exact ray-sum renderer.

A :class:`Primitive` is a solid bounded by at most one quadric surface (ellipsoid or elliptic
cylinder, ``x^T Q x <= 0`` in homogeneous coordinates) intersected with any number of
half-spaces ``n·x <= h``. Ellipsoids, finite or bevelled cylinders, half-shells (two primitives
with opposite signs), boxes, wedges and mitred tube segments (swept tubes) are all of this
form. A primitive carries a linear attenuation coefficient ``mu`` (per mm) that is *added* to
whatever is there already, so cavities are primitives with a negative ``mu``.

For every detector pixel the renderer intersects the pixel's ray with each primitive in closed
form (quadratic for the quadric, one division per plane) and accumulates ``mu × chord length``:
a digitally reconstructed radiograph without voxels, exact up to float32 rounding. Work is
restricted to each primitive's projected bounding box.

World frame: DICOM patient coordinates (LPS, mm): +x towards the patient's left, +y posterior,
+z superior. Pixel (row i, column j) lies at ``origin + j * ex + i * ey`` on the detector.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import cv2
import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]


def unit(v: Sequence[float] | F64) -> F64:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if n == 0.0:
        raise ValueError("zero-length vector")
    return a / n


def rot_x(deg: float) -> F64:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rot_y(deg: float) -> F64:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rot_z(deg: float) -> F64:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def rot_axis(axis: Sequence[float] | F64, deg: float) -> F64:
    """Rotation matrix about ``axis`` by ``deg`` (right hand)."""
    k = unit(axis)
    t = math.radians(deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    out: F64 = np.eye(3) + math.sin(t) * kx + (1 - math.cos(t)) * (kx @ kx)
    return out


def frame_from_z(z: Sequence[float] | F64, hint: Sequence[float] | F64 = (1.0, 0.0, 0.0)) -> F64:
    """Orthonormal frame (columns x, y, z) whose z column is ``z``; x is as close to ``hint`` as possible."""
    zz = unit(z)
    h = np.asarray(hint, dtype=np.float64)
    x = h - zz * float(h @ zz)
    if np.linalg.norm(x) < 1e-6:
        h = np.array([0.0, 1.0, 0.0]) if abs(zz[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        x = h - zz * float(h @ zz)
    x = unit(x)
    y = np.cross(zz, x)
    return np.stack([x, y, zz], axis=1)


@dataclass(frozen=True)
class Rigid:
    """x' = R x + t."""

    R: F64 = field(default_factory=lambda: np.eye(3))
    t: F64 = field(default_factory=lambda: np.zeros(3))

    @staticmethod
    def about(point: Sequence[float] | F64, R: F64) -> Rigid:
        """Rotation ``R`` about a fixed ``point``."""
        p = np.asarray(point, dtype=np.float64)
        return Rigid(R, p - R @ p)

    def __matmul__(self, other: Rigid) -> Rigid:
        return Rigid(self.R @ other.R, self.R @ other.t + self.t)

    def apply(self, x: F64) -> F64:
        return np.asarray(x, dtype=np.float64) @ self.R.T + self.t

    def apply_vec(self, v: F64) -> F64:
        return np.asarray(v, dtype=np.float64) @ self.R.T

    def inverse(self) -> Rigid:
        return Rigid(self.R.T, -self.R.T @ self.t)


@dataclass(frozen=True)
class Primitive:
    """Quadric (or none) ∩ half-spaces, with additive attenuation ``mu`` (1/mm)."""

    Q: F64 | None  # 4x4 symmetric; inside where X^T Q X <= 0
    planes: F64  # (k, 4): rows (nx, ny, nz, h), inside where n·x <= h
    mu: float
    corners: F64  # (m, 3) points whose convex hull contains the primitive
    tag: str = ""
    smooth: bool = False  # large, smooth: may be rendered at reduced resolution
    cone: bool = False  # Q is an (indefinite) elliptic cone; the planes keep one nappe

    def transformed(self, T: Rigid) -> Primitive:
        Q = None
        if self.Q is not None:
            Minv = np.eye(4)
            Minv[:3, :3] = T.R.T
            Minv[:3, 3] = -T.R.T @ T.t
            Q = Minv.T @ self.Q @ Minv
        planes = self.planes.copy()
        if len(planes):
            n = planes[:, :3] @ T.R.T
            planes = np.concatenate([n, (planes[:, 3] + n @ T.t)[:, None]], axis=1)
        return replace(self, Q=Q, planes=planes, corners=T.apply(self.corners))

    def with_mu(self, mu: float, tag: str | None = None) -> Primitive:
        return replace(self, mu=mu, tag=self.tag if tag is None else tag)


def _planes(rows: Iterable[tuple[F64, float]]) -> F64:
    out = [np.concatenate([unit(n), [h / float(np.linalg.norm(n))]]) for n, h in rows]
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def _box_corners(center: F64, M: F64) -> F64:
    """Corners of the parallelepiped center + M @ [±1, ±1, ±1]."""
    s = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float64)
    return np.asarray(center) + s @ M.T


def ellipsoid(
    center: Sequence[float] | F64,
    axes: Sequence[float],
    mu: float,
    R: F64 | None = None,
    tag: str = "",
    clip: Sequence[tuple[Sequence[float] | F64, Sequence[float] | F64]] = (),
    smooth: bool = False,
) -> Primitive:
    """Ellipsoid with semi-axes ``axes`` along the columns of ``R``; ``clip`` keeps the side of each
    plane ``(point, normal)`` *opposite* to the normal (n·(x - p) <= 0)."""
    c = np.asarray(center, dtype=np.float64)
    Rm = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
    a = np.asarray(axes, dtype=np.float64)
    A = Rm @ np.diag(1.0 / a**2) @ Rm.T
    Q = np.zeros((4, 4))
    Q[:3, :3] = A
    Q[:3, 3] = Q[3, :3] = -A @ c
    Q[3, 3] = c @ A @ c - 1.0
    planes = _planes((np.asarray(n, float), float(np.asarray(n, float) @ np.asarray(p, float))) for p, n in clip)
    return Primitive(Q, planes, mu, _box_corners(c, Rm @ np.diag(a)), tag, smooth)


def sphere(center: Sequence[float] | F64, r: float, mu: float, tag: str = "",
           clip: Sequence[tuple[Sequence[float] | F64, Sequence[float] | F64]] = ()) -> Primitive:
    return ellipsoid(center, (r, r, r), mu, tag=tag, clip=clip)


def cylinder(
    p0: Sequence[float] | F64,
    p1: Sequence[float] | F64,
    radii: tuple[float, float] | float,
    mu: float,
    hint: Sequence[float] | F64 = (1.0, 0.0, 0.0),
    tag: str = "",
    n0: Sequence[float] | F64 | None = None,
    n1: Sequence[float] | F64 | None = None,
    clip: Sequence[tuple[Sequence[float] | F64, Sequence[float] | F64]] = (),
    smooth: bool = False,
) -> Primitive:
    """Elliptic cylinder from ``p0`` to ``p1``; cross-section semi-axes ``radii`` with the first
    along ``hint`` (made perpendicular to the axis). End planes are perpendicular unless the
    outward end normals ``n0`` / ``n1`` are given (mitred joints of swept tubes)."""
    a0 = np.asarray(p0, dtype=np.float64)
    a1 = np.asarray(p1, dtype=np.float64)
    ax = a1 - a0
    L = float(np.linalg.norm(ax))
    F = frame_from_z(ax, hint)
    ra, rb = (radii, radii) if isinstance(radii, (int, float)) else radii
    A = F @ np.diag([1.0 / ra**2, 1.0 / rb**2, 0.0]) @ F.T
    Q = np.zeros((4, 4))
    Q[:3, :3] = A
    Q[:3, 3] = Q[3, :3] = -A @ a0
    Q[3, 3] = a0 @ A @ a0 - 1.0
    d = ax / L
    e0 = unit(-d if n0 is None else n0)
    e1 = unit(d if n1 is None else n1)
    rows = [(e0, float(e0 @ a0)), (e1, float(e1 @ a1))]
    rows += [(np.asarray(n, float), float(np.asarray(n, float) @ np.asarray(p, float))) for p, n in clip]
    # conservative hull: the ends may lean by the mitre angle
    lean0 = min(3.0, 1.0 / max(abs(float(e0 @ d)), 1e-3))
    lean1 = min(3.0, 1.0 / max(abs(float(e1 @ d)), 1e-3))
    r = max(ra, rb)
    M = F @ np.diag([ra, rb, 0.0])
    cs = []
    for p, lean in ((a0, lean0), (a1, lean1)):
        ext = r * math.sqrt(max(lean**2 - 1.0, 0.0))
        for sgn in (-1.0, 1.0):
            cs.append(_box_corners(p + sgn * ext * d, M))
    corners = np.concatenate(cs)
    return Primitive(Q, _planes(rows), mu, corners, tag, smooth)


def frustum(
    p0: Sequence[float] | F64,
    p1: Sequence[float] | F64,
    radii0: tuple[float, float],
    scale1: float,
    mu: float,
    hint: Sequence[float] | F64 = (1.0, 0.0, 0.0),
    tag: str = "",
    clip: Sequence[tuple[Sequence[float] | F64, Sequence[float] | F64]] = (),
) -> Primitive:
    """Truncated elliptic cone from ``p0`` (semi-axes ``radii0``) to ``p1`` (``scale1`` × those)."""
    if abs(scale1 - 1.0) < 1e-6:
        return cylinder(p0, p1, radii0, mu, hint, tag, clip=clip)
    a0 = np.asarray(p0, dtype=np.float64)
    a1 = np.asarray(p1, dtype=np.float64)
    ax = a1 - a0
    L = float(np.linalg.norm(ax))
    d = ax / L
    F = frame_from_z(ax, hint)
    za = -L / (scale1 - 1.0)  # apex position along the axis from p0
    apex = a0 + d * za
    M = F @ np.diag([1.0 / radii0[0] ** 2, 1.0 / radii0[1] ** 2, -1.0 / za**2]) @ F.T
    Q = np.zeros((4, 4))
    Q[:3, :3] = M
    Q[:3, 3] = Q[3, :3] = -M @ apex
    Q[3, 3] = apex @ M @ apex
    rows = [(-d, float(-d @ a0)), (d, float(d @ a1))]
    rows += [(np.asarray(n, float), float(np.asarray(n, float) @ np.asarray(q, float))) for q, n in clip]
    corners = np.concatenate([_box_corners(a0, F @ np.diag([radii0[0], radii0[1], 0.0])),
                              _box_corners(a1, F @ np.diag([radii0[0] * scale1, radii0[1] * scale1, 0.0]))])
    return Primitive(Q, _planes(rows), mu, corners, tag, False, True)


def polyhedron(planes: Sequence[tuple[Sequence[float] | F64, Sequence[float] | F64]], corners: F64,
               mu: float, tag: str = "") -> Primitive:
    """Convex polyhedron: half-spaces given as ``(point, outward normal)``; ``corners`` bound it."""
    rows = [(np.asarray(n, float), float(np.asarray(n, float) @ np.asarray(p, float))) for p, n in planes]
    return Primitive(None, _planes(rows), mu, np.asarray(corners, dtype=np.float64), tag)


def tube(
    points: Sequence[Sequence[float]] | F64,
    radii: tuple[float, float] | float,
    mu: float,
    closed: bool = False,
    hint: Sequence[float] | F64 | None = None,
    tag: str = "",
) -> list[Primitive]:
    """Swept tube along a polyline, as mitred cylinder segments (no overlap, no gaps).

    ``hint`` orients the first semi-axis of an elliptic cross-section (e.g. the normal of the
    curve's plane); with a round tube it is irrelevant."""
    P = np.asarray(points, dtype=np.float64)
    if closed:
        P = np.concatenate([P, P[:1]])
    n = len(P) - 1
    dirs = [unit(P[k + 1] - P[k]) for k in range(n)]
    out: list[Primitive] = []
    for k in range(n):
        d = dirs[k]
        if k > 0 or closed:
            dp = dirs[k - 1]
            m0 = -unit(dp + d)
        else:
            m0 = -d
        if k < n - 1 or closed:
            dn = dirs[(k + 1) % n]
            m1 = unit(d + dn)
        else:
            m1 = d
        h = hint if hint is not None else (np.cross(d, [0.0, 0.0, 1.0]) if abs(d[2]) < 0.95 else [1.0, 0, 0])
        out.append(cylinder(P[k], P[k + 1], radii, mu, hint=h, tag=tag, n0=m0, n1=m1))
    return out


# ----------------------------------------------------------------------------------------------
# Cameras


@dataclass(frozen=True)
class Camera:
    """A flat detector and either a point source or parallel rays.

    Pixel (i, j) centre is ``origin + j * ex + i * ey`` (ex, ey: world vectors of one pixel step).
    ``source`` is the focal spot; for parallel projection ``source`` is None and rays travel along
    ``direction`` (towards the detector)."""

    origin: F64
    ex: F64
    ey: F64
    rows: int
    cols: int
    source: F64 | None
    direction: F64  # unit vector of the central ray, source → detector

    @property
    def normal(self) -> F64:
        """Unit detector normal pointing towards the source."""
        n = unit(np.cross(self.ex, self.ey))
        return n if float(n @ self.direction) < 0 else -n

    @property
    def pixel_mm(self) -> float:
        return float(np.linalg.norm(self.ex))

    def transformed(self, T: Rigid) -> Camera:
        return Camera(
            T.apply(self.origin),
            T.apply_vec(self.ex),
            T.apply_vec(self.ey),
            self.rows,
            self.cols,
            None if self.source is None else T.apply(self.source),
            T.apply_vec(self.direction),
        )

    def downsampled(self, f: int) -> Camera:
        """Same field of view with pixels ``f`` times larger (ceil of the size)."""
        rows = -(-self.rows // f)
        cols = -(-self.cols // f)
        o = self.origin + (f - 1) / 2.0 * (self.ex + self.ey)
        return Camera(o, self.ex * f, self.ey * f, rows, cols, self.source, self.direction)

    @cached_property
    def _proj(self) -> tuple[F64, F64]:
        """(M⁻¹, reference point): solves X - ref = M (·) for (j, i) (see ``project``)."""
        if self.source is None:
            M = np.stack([self.ex, self.ey, self.direction], axis=1)
            return np.asarray(np.linalg.inv(M), dtype=np.float64), self.origin
        M = np.stack([self.ex, self.ey, self.origin - self.source], axis=1)
        return np.asarray(np.linalg.inv(M), dtype=np.float64), self.source

    def project(self, pts: F64) -> F64:
        """World points (n, 3) → pixel coordinates (n, 2) as (x=column, y=row)."""
        X = np.atleast_2d(np.asarray(pts, dtype=np.float64))
        Minv, ref = self._proj
        q = (X - ref) @ Minv.T
        if self.source is None:
            return q[:, :2].copy()
        return q[:, :2] / q[:, 2:3]

    def magnification(self, pt: Sequence[float] | F64) -> float:
        if self.source is None:
            return 1.0
        S = self.source
        n = self.normal
        return float(((self.origin - S) @ n) / ((np.asarray(pt, float) - S) @ n))


# ----------------------------------------------------------------------------------------------
# Rendering


def _poly2(coef: F64, ii: F32, jj: F32) -> F32 | float:
    """Evaluate c0 + c1 j + c2 i + c3 j² + c4 ij + c5 i² on the grid (rows ii, cols jj)."""
    c0, c1, c2, c3, c4, c5 = (float(c) for c in coef)
    if c1 == 0.0 and c2 == 0.0 and c3 == 0.0 and c4 == 0.0 and c5 == 0.0:
        return c0
    rowv = np.float32(c0) + jj * np.float32(c1)
    if c3 != 0.0:
        rowv = rowv + (jj * jj) * np.float32(c3)
    colv = ii * np.float32(c2)
    if c5 != 0.0:
        colv = colv + (ii * ii) * np.float32(c5)
    out: F32 = colv[:, None] + rowv[None, :]
    if c4 != 0.0:
        out += np.float32(c4) * np.outer(ii, jj)
    return out


def _bilinear(u: tuple[F64, F64, F64], v: tuple[F64, F64, F64], M: F64) -> F64:
    """Coefficients of (u0 + j u1 + i u2)^T M (v0 + j v1 + i v2) as a quadratic in (j, i)."""
    u0, u1, u2 = u
    v0, v1, v2 = v
    return np.array(
        [
            u0 @ M @ v0,
            u1 @ M @ v0 + u0 @ M @ v1,
            u2 @ M @ v0 + u0 @ M @ v2,
            u1 @ M @ v1,
            u1 @ M @ v2 + u2 @ M @ v1,
            u2 @ M @ v2,
        ]
    )


class Renderer:
    """Accumulates ∫ mu dl over primitives for one camera."""

    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.ii = np.arange(cam.rows, dtype=np.float32)
        self.jj = np.arange(cam.cols, dtype=np.float32)
        n = cam.normal
        if cam.source is None:
            self.scale = 1.0
            self.d_len: F32 | None = None
        else:
            S = cam.source
            centre = cam.origin + (cam.cols - 1) / 2.0 * cam.ex + (cam.rows - 1) / 2.0 * cam.ey
            self.scale = float(np.linalg.norm(centre - S))
            d0 = (cam.origin - S) / self.scale
            ex = cam.ex / self.scale
            ey = cam.ey / self.scale
            # |d|² is a quadratic in (j, i)
            self.d_len = np.sqrt(
                np.maximum(_as_grid(_poly2(_bilinear((d0, ex, ey), (d0, ex, ey), np.eye(3)), self.ii, self.jj),
                                    cam.rows, cam.cols), 0.0)
            ).astype(np.float32)
        self._n = n

    def _ray_terms(self, depth_point: F64) -> tuple[tuple[F64, F64, F64], tuple[F64, F64, F64]]:
        """Ray o(i,j) + t d(i,j), each affine in (j, i), homogeneous (4-vectors). The origin is
        placed near ``depth_point`` so t stays small (float32 conditioning); t is in mm when the
        direction is unit length (exactly for parallel rays, up to ``d_len`` otherwise)."""
        cam = self.cam
        if cam.source is None:
            dirv = cam.direction
            back = float((depth_point - cam.origin) @ dirv)  # origin on the ray near the object
            o0 = cam.origin + back * dirv
            o = (np.append(o0, 1.0), np.append(cam.ex, 0.0), np.append(cam.ey, 0.0))
            d = (np.append(dirv, 0.0), np.zeros(4), np.zeros(4))
        else:
            S = cam.source
            d0 = (cam.origin - S) / self.scale
            ex = cam.ex / self.scale
            ey = cam.ey / self.scale
            t0 = float((depth_point - S) @ cam.direction)  # distance along the central ray
            o0 = S + t0 * d0
            o = (np.append(o0, 1.0), np.append(t0 * ex, 0.0), np.append(t0 * ey, 0.0))
            d = (np.append(d0, 0.0), np.append(ex, 0.0), np.append(ey, 0.0))
        return o, d

    def bbox(self, p: Primitive, margin: int = 2) -> tuple[int, int, int, int] | None:
        cam = self.cam
        uv = cam.project(p.corners)
        if not np.all(np.isfinite(uv)):
            return 0, cam.rows, 0, cam.cols
        j0 = max(math.floor(uv[:, 0].min()) - margin, 0)
        j1 = min(math.ceil(uv[:, 0].max()) + margin + 1, cam.cols)
        i0 = max(math.floor(uv[:, 1].min()) - margin, 0)
        i1 = min(math.ceil(uv[:, 1].max()) + margin + 1, cam.rows)
        if j0 >= j1 or i0 >= i1:
            return None
        return i0, i1, j0, j1

    def chord(self, p: Primitive, box: tuple[int, int, int, int]) -> F32:
        """Chord length (mm) of each ray in ``box`` through primitive ``p``."""
        i0, i1, j0, j1 = box
        ii = self.ii[i0:i1] - np.float32(0)
        jj = self.jj[j0:j1]
        depth_point = p.corners.mean(axis=0)
        o, d = self._ray_terms(depth_point)
        # shift the polynomial origin to the box corner so coefficients stay small
        o = (o[0] + i0 * o[2] + j0 * o[1], o[1], o[2])
        d = (d[0] + i0 * d[2] + j0 * d[1], d[1], d[2])
        ii = ii - np.float32(i0)
        jj = jj - np.float32(j0)
        shape = (i1 - i0, j1 - j0)
        big = np.float32(1e9)
        ni, nj = shape
        if p.cone:
            return self._cone_chord(p, o, d, ii, jj, shape, (i0, i1, j0, j1))
        if p.Q is not None:
            Q = p.Q
            A = _as_grid(_poly2(_bilinear(d, d, Q), ii, jj), *shape)
            B = _as_grid(_poly2(2.0 * _bilinear(d, o, Q), ii, jj), *shape)
            C = _poly2(_bilinear(o, o, Q), ii, jj)
            np.maximum(A, np.float32(1e-12), out=A)
            disc = B * B
            disc -= np.float32(4.0) * A * C if not isinstance(C, float) else A * np.float32(4.0 * C)
            np.maximum(disc, 0.0, out=disc)
            np.sqrt(disc, out=disc)
            inv = np.reciprocal(A, out=A)
            if not len(p.planes):
                length = disc
                length *= inv
                if self.d_len is not None:
                    length *= self.d_len[i0:i1, j0:j1]
                return length
            inv *= np.float32(0.5)
            disc *= inv  # half chord in t
            B *= inv
            np.negative(B, out=B)  # mid point in t
            t1 = B - disc
            t2 = B
            t2 += disc
        else:
            t1 = np.full(shape, -big, dtype=np.float32)
            t2 = np.full(shape, big, dtype=np.float32)
        for row in p.planes:
            n3 = row[:3]
            cnd = np.array([n3 @ d[0][:3], n3 @ d[1][:3], n3 @ d[2][:3], 0, 0, 0])
            cno = np.array([n3 @ o[0][:3] - row[3], n3 @ o[1][:3], n3 @ o[2][:3], 0, 0, 0])
            # n·d is affine in (j, i): its extremes over the box are at the corners
            corners = [cnd[0] + cnd[1] * jc + cnd[2] * ic for jc in (0, nj - 1) for ic in (0, ni - 1)]
            lo, hi = min(corners), max(corners)
            if lo > 1e-9 or hi < -1e-9:
                # one-sided everywhere: bound = (n·o - h) / (-(n·d))
                bound = _as_grid(_poly2(cno, ii, jj), *shape)
                bound /= _as_grid(_poly2(-cnd, ii, jj), *shape)
                if lo > 0:
                    np.minimum(t2, bound, out=t2)
                else:
                    np.maximum(t1, bound, out=t1)
                continue
            nd = _poly2(cnd, ii, jj)
            no = _poly2(cno, ii, jj)
            if isinstance(nd, float):
                # rays parallel to the plane: inside or outside as a whole
                outside = _as_grid(no, *shape) > 0
                t2 = np.where(outside, t1, t2)
                continue
            nd_arr = _as_grid(nd, *shape)
            no_arr = _as_grid(no, *shape)
            par = np.abs(nd_arr) < 1e-12
            bound = np.asarray(-no_arr / np.where(par, np.float32(1.0), nd_arr), dtype=np.float32)
            t2 = np.where(nd_arr > 1e-12, np.minimum(t2, bound), t2)
            t1 = np.where(nd_arr < -1e-12, np.maximum(t1, bound), t1)
            t2 = np.where(par & (no_arr > 0), t1, t2)
        length = t2
        length -= t1
        np.maximum(length, 0.0, out=length)
        if self.d_len is not None:
            length *= self.d_len[i0:i1, j0:j1]
        return length

    def _slab(self, p: Primitive, o: tuple[F64, F64, F64], d: tuple[F64, F64, F64], ii: F32, jj: F32,
              shape: tuple[int, int]) -> tuple[F32, F32]:
        t1 = np.full(shape, -1e9, dtype=np.float32)
        t2 = np.full(shape, 1e9, dtype=np.float32)
        for row in p.planes:
            n3 = row[:3]
            nd = _as_grid(_poly2(np.array([n3 @ d[0][:3], n3 @ d[1][:3], n3 @ d[2][:3], 0, 0, 0]), ii, jj), *shape)
            no = _as_grid(_poly2(np.array([n3 @ o[0][:3] - row[3], n3 @ o[1][:3], n3 @ o[2][:3], 0, 0, 0]), ii, jj),
                          *shape)
            par = np.abs(nd) < 1e-12
            bound = np.asarray(-no / np.where(par, np.float32(1.0), nd), dtype=np.float32)
            t2 = np.where(nd > 1e-12, np.minimum(t2, bound), t2)
            t1 = np.where(nd < -1e-12, np.maximum(t1, bound), t1)
            t2 = np.where(par & (no > 0), np.float32(-1e9), t2)
        return t1, t2

    def _cone_chord(self, p: Primitive, o: tuple[F64, F64, F64], d: tuple[F64, F64, F64], ii: F32, jj: F32,
                    shape: tuple[int, int], box: tuple[int, int, int, int]) -> F32:
        """Chord through one nappe of an elliptic cone cut by planes (a convex frustum)."""
        assert p.Q is not None
        s1, s2 = self._slab(p, o, d, ii, jj, shape)
        A = _as_grid(_poly2(_bilinear(d, d, p.Q), ii, jj), *shape)
        B = _as_grid(_poly2(2.0 * _bilinear(d, o, p.Q), ii, jj), *shape)
        C = _as_grid(_poly2(_bilinear(o, o, p.Q), ii, jj), *shape)
        disc = B * B - np.float32(4.0) * A * C
        sq = np.sqrt(np.maximum(disc, 0.0))
        a2 = np.where(np.abs(A) < 1e-12, np.float32(1e-12), A) * np.float32(2.0)
        r1 = (-B - sq) / a2
        r2 = (-B + sq) / a2
        lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
        pos = A > 0
        len_pos = np.maximum(np.minimum(s2, hi) - np.maximum(s1, lo), 0.0)
        len_neg = np.maximum(np.minimum(s2, lo) - s1, 0.0) + np.maximum(s2 - np.maximum(s1, hi), 0.0)
        length = np.where(disc > 0, np.where(pos, len_pos, len_neg),
                          np.where(pos, np.float32(0.0), np.maximum(s2 - s1, 0.0))).astype(np.float32)
        if self.d_len is not None:
            i0, i1, j0, j1 = box
            length *= self.d_len[i0:i1, j0:j1]
        return length

    def add(self, acc: F32, p: Primitive, scale: float = 1.0) -> None:
        box = self.bbox(p)
        if box is None:
            return
        i0, i1, j0, j1 = box
        acc[i0:i1, j0:j1] += np.float32(p.mu * scale) * self.chord(p, box)


def _as_grid(x: F32 | float, rows: int, cols: int) -> F32:
    if isinstance(x, float):
        return np.full((rows, cols), x, dtype=np.float32)
    if x.shape != (rows, cols):
        return np.ascontiguousarray(np.broadcast_to(x, (rows, cols)), dtype=np.float32)
    return x


def line_integral(cam: Camera, prims: Sequence[Primitive], coarse: int = 4,
                  mu_scale: dict[str, float] | None = None, renderer: Renderer | None = None) -> F32:
    """∫ mu dl for every pixel. Primitives flagged ``smooth`` are rendered ``coarse`` times
    coarser and upsampled (they are large and featureless: the body envelope). Pass a
    ``renderer`` of the same camera to reuse its per-pixel ray lengths."""
    acc = np.zeros((cam.rows, cam.cols), dtype=np.float32)
    r = renderer if renderer is not None and renderer.cam is cam else Renderer(cam)
    smooth = [p for p in prims if p.smooth]
    sharp = [p for p in prims if not p.smooth]
    scale = mu_scale or {}
    for p in sharp:
        r.add(acc, p, scale.get(p.tag.split(":")[0], 1.0))
    if smooth:
        if coarse > 1 and min(cam.rows, cam.cols) >= 64:
            cc = cam.downsampled(coarse)
            rc = Renderer(cc)
            low = np.zeros((cc.rows, cc.cols), dtype=np.float32)
            for p in smooth:
                rc.add(low, p, scale.get(p.tag.split(":")[0], 1.0))
            low = np.asarray(cv2.GaussianBlur(low, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE), dtype=np.float32)
            # pixel centres of the coarse grid sit at (f-1)/2 + f k of the fine grid
            up = cv2.resize(low, (cc.cols * coarse, cc.rows * coarse), interpolation=cv2.INTER_LINEAR)
            acc += up[: cam.rows, : cam.cols]
        else:
            for p in smooth:
                r.add(acc, p, scale.get(p.tag.split(":")[0], 1.0))
    return acc


def mask(cam: Camera, prims: Sequence[Primitive], tag_prefix: str) -> NDArray[np.bool_]:
    """Pixels whose ray passes through any primitive whose tag starts with ``tag_prefix``."""
    out = np.zeros((cam.rows, cam.cols), dtype=bool)
    r = Renderer(cam)
    for p in prims:
        if not p.tag.startswith(tag_prefix):
            continue
        box = r.bbox(p)
        if box is None:
            continue
        i0, i1, j0, j1 = box
        out[i0:i1, j0:j1] |= r.chord(p, box) > 1e-4
    return out


def ellipse_from_points(uv: F64) -> tuple[float, float, float, float, float]:
    """Exact ellipse (cx, cy, semi_major, semi_minor, angle_deg in [0, 180)) through points that
    lie on a conic (e.g. a projected circle), by algebraic least squares."""
    x, y = uv[:, 0], uv[:, 1]
    mx, my = float(x.mean()), float(y.mean())
    s = float(max(x.std(), y.std(), 1e-9))
    xs, ys = (x - mx) / s, (y - my) / s
    D = np.stack([xs * xs, xs * ys, ys * ys, xs, ys, np.ones_like(xs)], axis=1)
    _, _, vt = np.linalg.svd(D)
    a, b, c, d, e, f = vt[-1]
    M = np.array([[a, b / 2], [b / 2, c]])
    centre = np.linalg.solve(2 * M, [-d, -e])
    f0 = f + 0.5 * (d * centre[0] + e * centre[1])
    w, v = np.linalg.eigh(M)
    ax = np.sqrt(-f0 / w)
    k = int(np.argmax(ax))
    major, minor = float(ax[k]) * s, float(ax[1 - k]) * s
    vec = v[:, k]
    ang = math.degrees(math.atan2(vec[1], vec[0])) % 180.0
    return mx + float(centre[0]) * s, my + float(centre[1]) * s, major, minor, ang


def fibonacci_sphere(n: int) -> F64:
    k = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * k / n)
    th = math.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], axis=1)
