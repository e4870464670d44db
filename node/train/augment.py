"""Strong domain randomisation for training images (SyntheX-style, Gao et al., Nat Mach Intell 2023).

Why: the bundled triage and detector were trained on one renderer's look only (our phantom
generator) and fail on an independent renderer and on real films. SyntheX showed that sim-only
training transfers to real X-rays when the *appearance* is randomised so widely that the model
never sees one fixed look and has to rely on anatomy. ``randomise`` does that to one 0..1 image
(bone bright, as ``node.pixels.normalise`` makes it) and keeps its detector boxes consistent.

Every transform fires with its own probability and draws its parameters widely (see
``PROBABILITIES`` and the docstrings of the ``_op_*`` functions); the fixed order follows the
imaging chain loosely: positioning (affine) → collimation → grid → scatter → vendor processing
(range compression, unsharp masking, tone curves, equalisation) → burned-in markers → film
digitisation (contrast squash, blur, low resolution, noise) → export (crop, pad, inversion,
JPEG). Finally the node's own normalisation (``node.pixels.percentile_window``) is re-applied,
so the model sees the input distribution the node will give it, whatever the chain did.

Never flips: a horizontal flip swaps the patient's sides (hip_joint_right/left, the triage side
and per-side implant labels). Geometric ops transform the boxes exactly for their shape class:
round anatomy (hip joints, cups, teardrops, tuberosities) as the ellipse inscribed in the box,
hardware (stems, plates, screws) as the box's corners; a box is clipped to what stays in view
(image, shutters) and dropped when too little of it does (``MIN_VISIBLE``).

``strength`` scales it: probabilities are multiplied by it (capped at 1) and amplitudes /
geometric ranges by ``min(strength, 1)``; 0 is the identity. Deterministic for a given
``numpy.random.Generator`` state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

import cv2
import numpy as np

from node.domain import Box
from node.pixels import percentile_window

AUGMENT_VERSION = "1"

# Transform → probability of firing at strength 1. Order here is the order of application.
PROBABILITIES: dict[str, float] = {
    "affine": 0.7,
    "collimation": 0.3,
    "grid": 0.15,
    "scatter": 0.3,
    "drc": 0.25,
    "unsharp": 0.35,
    "curve": 0.4,
    "gamma": 0.4,
    "equalise": 0.15,
    "markers": 0.35,
    "squash": 0.2,
    "blur": 0.25,
    "lowres": 0.2,
    "noise": 0.6,
    "crop": 0.3,
    "pad": 0.15,
    "invert": 0.03,
    "jpeg": 0.3,
}
TRANSFORMS: tuple[str, ...] = tuple(PROBABILITIES)
GEOMETRIC: frozenset[str] = frozenset({"affine", "crop", "pad"})

# Names ``record`` can receive: the transform, plus "transform.variant" for the variant drawn.
VARIANTS: tuple[str, ...] = (
    "collimation.hard",
    "collimation.soft",
    "grid.lines",
    "grid.moire",
    "unsharp.halo",
    "curve.lut",
    "curve.sigmoid",
    "equalise.hist",
    "equalise.clahe",
    "markers.letter",
    "markers.text",
    "markers.ruler",
    "markers.rect",
    "markers.over_anatomy",
    "blur.gaussian",
    "blur.motion",
    "noise.gaussian",
    "noise.poisson",
    "noise.correlated",
    "noise.clutter",
    "noise.speckle",
    "noise.grain",
    "jpeg.blocky",
    "fill.black",
    "fill.white",
    "fill.grey",
)

ROUND_LABELS = frozenset({"hip_joint_right", "hip_joint_left", "cup", "teardrop", "ischial_tuberosity"})
# Share of a box's (transformed) area that must stay in view for the box to be kept.
MIN_VISIBLE: dict[str, float] = {"hip_joint_right": 0.5, "hip_joint_left": 0.5}
DEFAULT_MIN_VISIBLE = 0.4
MIN_BOX_PX = 2.0

_ELLIPSE = np.stack(
    [
        np.cos(np.linspace(0, 2 * np.pi, 32, endpoint=False)),
        np.sin(np.linspace(0, 2 * np.pi, 32, endpoint=False)),
    ],
    axis=1,
)
_TEXTS = (
    "L", "R", "L", "R", "AP", "LAT", "PA", "SUPINE", "STANDING", "PORTABLE", "ERECT", "HIP", "PELVIS",
    "WB", "LEFT", "RIGHT", "kV 75", "mAs 20", "1:1", "x1.15", "DX", "CR", "FRONTAL",
)  # fmt: skip
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
)

Image = np.ndarray
Rng = np.random.Generator


# --- box bookkeeping ---------------------------------------------------------------------------


class _Geometry:
    """Box outlines and the half-planes that bound what is still in view, in current coordinates.

    Every geometric op maps both; pixels an op discards (outside a warped canvas, under a shutter,
    cropped away) add half-planes, so a later pad cannot make them "visible" again.
    """

    def __init__(self, boxes: Sequence[Box]):
        self.boxes = list(boxes)
        self.points: list[np.ndarray] = []
        for b in self.boxes:
            cx, cy, hw, hh = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2, (b.x1 - b.x0) / 2, (b.y1 - b.y0) / 2
            if b.label in ROUND_LABELS:
                pts = _ELLIPSE * (hw, hh) + (cx, cy)
            else:
                pts = np.array([[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1]], np.float64)
            self.points.append(pts)
        self.planes = np.zeros((0, 3))  # rows (a, b, c): visible where a*x + b*y + c >= 0
        self.changed = False

    def affine(self, m: np.ndarray) -> None:
        """Apply ``p' = A p + t`` (``m`` is OpenCV's 2x3 matrix)."""
        a, t = m[:, :2], m[:, 2]
        self.points = [p @ a.T + t for p in self.points]
        if len(self.planes):
            inv = np.linalg.inv(a)
            n = self.planes[:, :2] @ inv
            self.planes = np.column_stack([n, self.planes[:, 2] - n @ t])
        self.changed = True

    def shift(self, dx: float, dy: float) -> None:
        self.affine(np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]))

    def keep_rect(self, width: int, height: int) -> None:
        self.add_planes([(1, 0, 0), (-1, 0, width), (0, 1, 0), (0, -1, height)])

    def add_planes(self, planes: Sequence[tuple[float, float, float]]) -> None:
        self.planes = np.vstack([self.planes, np.asarray(planes, np.float64).reshape(-1, 3)])
        self.changed = True

    def result(self, width: int, height: int) -> list[Box]:
        if not self.changed:
            return list(self.boxes)
        self.keep_rect(width, height)
        out = []
        for box, pts in zip(self.boxes, self.points, strict=True):
            full = _area(pts)
            poly = pts
            for plane in self.planes:
                side = poly @ plane[:2] + plane[2]
                if side.min() >= 0:
                    continue
                poly = _clip(poly, side)
                if len(poly) < 3:
                    break
            if len(poly) < 3 or full <= 0:
                continue
            if _area(poly) / full < MIN_VISIBLE.get(box.label, DEFAULT_MIN_VISIBLE):
                continue
            x0, y0 = np.clip(poly.min(axis=0), 0, (width, height))
            x1, y1 = np.clip(poly.max(axis=0), 0, (width, height))
            if x1 - x0 < MIN_BOX_PX or y1 - y0 < MIN_BOX_PX:
                continue
            out.append(replace(box, x0=float(x0), y0=float(y0), x1=float(x1), y1=float(y1)))
        return out


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip(poly: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Sutherland–Hodgman: the part of ``poly`` where ``side >= 0`` (side = signed distances)."""
    out: list[np.ndarray] = []
    n = len(poly)
    for i in range(n):
        j = (i + 1) % n
        p, q, sp, sq = poly[i], poly[j], side[i], side[j]
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            out.append(p + (q - p) * (sp / (sp - sq)))
    return np.array(out) if out else np.zeros((0, 2))


# --- helpers -----------------------------------------------------------------------------------


def _lowpass(img: Image, sigma: float) -> Image:
    """Gaussian blur; large sigmas on a downsampled copy (a 100-px kernel costs ~20x more)."""
    if sigma < 4.0:
        return np.asarray(cv2.GaussianBlur(img, (0, 0), sigma), np.float32)
    h, w = img.shape
    f = max(1.0, sigma / 2.0)
    small = cv2.resize(img, (max(2, round(w / f)), max(2, round(h / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)


def _loguniform(rng: Rng, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _mix(old: Image, new: Image, a: float) -> Image:
    """Blend toward the transformed image by the amplitude ``a`` (strength < 1 softens)."""
    return new if a >= 1.0 else old + np.float32(a) * (new - old)


def _lut(img: Image, curve: Callable[[np.ndarray], np.ndarray]) -> Image:
    """Apply a monotone tone curve on 0..1 through a 4096-entry table (fast, exact enough)."""
    xs = np.linspace(0.0, 1.0, 4096)
    table = np.asarray(curve(xs), np.float32)
    idx = np.clip(img * 4095.0 + 0.5, 0, 4095).astype(np.int32)
    return table[idx]


def _fill_value(rng: Rng, record: list[str] | None) -> float:
    u = rng.random()
    if u < 0.6:
        _note(record, "fill.black")
        return float(rng.uniform(0.0, 0.05))
    if u < 0.8:
        _note(record, "fill.white")
        return float(rng.uniform(0.95, 1.0))
    _note(record, "fill.grey")
    return float(rng.uniform(0.3, 0.7))


def _note(record: list[str] | None, name: str) -> None:
    if record is not None:
        record.append(name)


# --- transforms --------------------------------------------------------------------------------


def _op_affine(img: Image, geo: _Geometry, rng: Rng, a: float, fill: float) -> Image:
    """Scale 0.6–1.4 (log-uniform), rotation ±15°, aspect ×0.87–1.15, translation ±10 % — no flip."""
    h, w = img.shape
    scale = math.exp(rng.uniform(math.log(0.6), math.log(1.4)) * a)
    aspect = math.exp(rng.uniform(-0.07, 0.07) * a)
    angle = math.radians(rng.uniform(-15.0, 15.0) * a)
    tx, ty = rng.uniform(-0.1, 0.1, 2) * (w, h) * a
    sx, sy = scale * aspect, scale / aspect
    c, s = math.cos(angle), math.sin(angle)
    lin = np.array([[c, -s], [s, c]]) @ np.diag([sx, sy])
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.column_stack([lin, centre + np.array([tx, ty]) - lin @ centre])
    out = cv2.warpAffine(
        img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
    )
    geo.affine(m)
    geo.keep_rect(w, h)
    return np.asarray(out, np.float32)


def _op_collimation(img: Image, geo: _Geometry, rng: Rng, a: float, record: list[str] | None) -> Image:
    """Shutters on 1–4 sides, 2–22 % deep, tilted ±6°, black / white / faint; hard or soft edge."""
    h, w = img.shape
    n = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.15, 0.2]))
    sides = rng.permutation(4)[:n]
    soft = 0.0 if rng.random() < 0.5 else _loguniform(rng, 1.0, 8.0) * max(h, w) / 384
    _note(record, "collimation.soft" if soft else "collimation.hard")
    kind = rng.random()
    if kind < 0.5:
        shutter = np.full_like(img, rng.uniform(0.0, 0.08))
    elif kind < 0.8:
        shutter = np.full_like(img, rng.uniform(0.92, 1.0))
    else:  # scatter-only exposure: bright with a ghost of the anatomy
        shutter = np.float32(rng.uniform(0.6, 0.9)) + np.float32(rng.uniform(0.05, 0.2)) * img
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    visible = np.ones_like(img)
    planes = []
    for side in sides:
        depth = rng.uniform(0.02, 0.22) * a
        tilt = math.radians(rng.uniform(-6.0, 6.0) * a)
        # inward normal of the shutter edge and a point on it
        normal = {0: (1.0, 0.0), 1: (-1.0, 0.0), 2: (0.0, 1.0), 3: (0.0, -1.0)}[int(side)]
        point = {0: (depth * w, h / 2), 1: (w - 1 - depth * w, h / 2), 2: (w / 2, depth * h), 3: (w / 2, h - 1 - depth * h)}[int(side)]  # fmt: skip
        nx = normal[0] * math.cos(tilt) - normal[1] * math.sin(tilt)
        ny = normal[0] * math.sin(tilt) + normal[1] * math.cos(tilt)
        dist = (xs - np.float32(point[0])) * np.float32(nx) + (ys - np.float32(point[1])) * np.float32(ny)
        m = np.clip(dist / np.float32(soft) + 0.5, 0, 1) if soft else (dist >= 0).astype(np.float32)
        visible = np.minimum(visible, m)
        planes.append((nx, ny, -(nx * point[0] + ny * point[1])))
    geo.add_planes(planes)
    return np.asarray(img * visible + shutter * (1 - visible), np.float32)


def _op_grid(img: Image, rng: Rng, a: float, record: list[str] | None) -> Image:
    """Stationary-grid lines (period 2–7 px, amplitude 1–6 %, sine or square) or moiré beats."""
    h, w = img.shape
    u = max(h, w) / 384
    amp = np.float32(_loguniform(rng, 0.01, 0.06) * a)
    vertical = rng.random() < 0.5
    phase = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.65:
        _note(record, "grid.lines")
        period = rng.uniform(2.0, 7.0) * u
        coord = np.arange(w if vertical else h, dtype=np.float32)
        wave = np.sin(coord * np.float32(2 * math.pi / period) + np.float32(phase))
        if rng.random() < 0.4:
            wave = np.sign(wave)
        pattern = wave[None, :] if vertical else wave[:, None]
        return np.asarray(img + amp * pattern, np.float32)
    _note(record, "grid.moire")
    # two slightly different, slightly tilted gratings near the pixel pitch: low-frequency beats
    period = rng.uniform(1.6, 3.0) * u
    tilt = math.radians(rng.uniform(-3, 3))
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    along = (
        (xs * np.float32(math.cos(tilt)) + ys * np.float32(math.sin(tilt)))
        if vertical
        else (ys * np.float32(math.cos(tilt)) - xs * np.float32(math.sin(tilt)))
    )
    k1 = np.float32(2 * math.pi / period)
    k2 = np.float32(2 * math.pi / (period * (1 + rng.uniform(0.02, 0.12))))
    return np.asarray(
        img + amp * 0.5 * (np.sin(along * k1 + np.float32(phase)) + np.sin(along * k2)), np.float32
    )


def _op_scatter(img: Image, rng: Rng, a: float) -> Image:
    """Scatter haze added in the exposure domain (kills contrast under dense bone most)."""
    h, w = img.shape
    k = np.float32(rng.uniform(1.5, 4.0))
    counts = cv2.exp(-k * np.clip(img, 0, 1))
    haze = _lowpass(counts, rng.uniform(0.05, 0.25) * max(h, w))
    counts = counts + np.float32(rng.uniform(0.2, 1.5) * a) * haze
    return np.asarray(-cv2.log(counts) / k, np.float32)


def _op_drc(img: Image, rng: Rng, a: float) -> Image:
    """Dynamic range compression: subtract a share of a very large-kernel low-pass."""
    h, w = img.shape
    low = _lowpass(img, rng.uniform(0.04, 0.2) * max(h, w))
    return np.asarray(
        img - np.float32(rng.uniform(0.2, 0.8) * a) * (low - np.float32(low.mean())), np.float32
    )


def _op_unsharp(img: Image, rng: Rng, a: float, record: list[str] | None) -> Image:
    """Unsharp masking at 1–2 radii (1–30 px), amount 0.3–3 (large amounts overshoot: halos)."""
    u = max(img.shape) / 384
    for _ in range(1 + int(rng.random() < 0.35)):
        sigma = _loguniform(rng, 1.0, 30.0) * u
        amount = _loguniform(rng, 0.3, 3.0) * a
        if amount > 1.2:
            _note(record, "unsharp.halo")
        img = img + np.float32(amount) * (img - _lowpass(img, sigma))
    return img


def _op_curve(img: Image, rng: Rng, a: float, record: list[str] | None) -> Image:
    """Random monotone tone curve: smoothed piecewise-linear LUT (3–8 knots) or an S-curve."""
    x = np.clip(img, 0, 1)
    if rng.random() < 0.55:
        _note(record, "curve.lut")
        k = int(rng.integers(3, 9))
        knots_x = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, k - 2)), [1.0]])
        knots_y = np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.full(k - 1, 0.8)))])
        smooth = int(rng.integers(0, 400))

        def lut(xs: np.ndarray) -> np.ndarray:
            y = np.interp(xs, knots_x, knots_y)
            if smooth > 1:  # a moving average of a monotone sequence stays monotone
                y = np.convolve(np.pad(y, smooth, mode="edge"), np.ones(smooth) / smooth, "same")[
                    smooth:-smooth
                ]
            return np.asarray(y)

        out = _lut(x, lut)
    else:
        _note(record, "curve.sigmoid")
        gain = _loguniform(rng, 3.0, 16.0)
        centre = rng.uniform(0.25, 0.75)

        def lut(xs: np.ndarray) -> np.ndarray:
            s = 1 / (1 + np.exp(-gain * (xs - centre)))
            return np.asarray((s - s[0]) / (s[-1] - s[0]))

        out = _lut(x, lut)
    return _mix(x, out, a)


def _op_gamma(img: Image, rng: Rng, a: float) -> Image:
    """Gamma 0.4–2.5 (log-uniform)."""
    g = math.exp(rng.uniform(math.log(0.4), math.log(2.5)) * a)
    return _lut(np.clip(img, 0, 1), lambda xs: xs**g)


def _op_equalise(img: Image, rng: Rng, a: float, record: list[str] | None) -> Image:
    """Global histogram equalisation or CLAHE (clip 1–4, 4–16 tiles)."""
    x = np.clip(img, 0, 1)
    if rng.random() < 0.5:
        _note(record, "equalise.hist")
        hist = np.bincount((x * 1023).astype(np.int32).ravel(), minlength=1024).astype(np.float64)
        cdf = np.cumsum(hist)
        cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
        out = cdf.astype(np.float32)[(x * 1023).astype(np.int32)]
    else:
        _note(record, "equalise.clahe")
        # 8-bit CLAHE (20x faster than OpenCV's 65536-bin 16-bit path; many exports are 8-bit)
        tiles = int(rng.integers(4, 17))
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.0, 4.0)), tileGridSize=(tiles, tiles))
        out = clahe.apply(np.round(x * 255).astype(np.uint8)).astype(np.float32) / np.float32(255.0)
    return _mix(x, out, a)


def _op_markers(img: Image, rng: Rng, a: float, record: list[str] | None) -> Image:
    """1–4 burned-in items: L/R letters, text (Hershey fonts), tick rulers, annotation boxes.

    White or black; near a border 80 % of the time, else anywhere (over anatomy).
    """
    h, w = img.shape
    size = max(h, w)
    masks = {True: np.zeros((h, w), np.uint8), False: np.zeros((h, w), np.uint8)}
    for _ in range(int(rng.integers(1, 5))):
        white = rng.random() < 0.7
        canvas = masks[white]
        border = rng.random() < 0.8
        if not border:
            _note(record, "markers.over_anatomy")

        def place(bw: float, bh: float, _border: bool = border) -> tuple[int, int]:
            """Top-left corner for a bw x bh item: in a 12 % band along a random edge, or anywhere."""
            if _border:
                edge = int(rng.integers(4))
                bx = (
                    rng.uniform(0, max(1.0, w - bw))
                    if edge >= 2
                    else (rng.uniform(0, 0.12 * w) if edge == 0 else rng.uniform(w * 0.88 - bw, w - bw))
                )
                by = (
                    rng.uniform(0, max(1.0, h - bh))
                    if edge < 2
                    else (rng.uniform(0, 0.12 * h) if edge == 2 else rng.uniform(h * 0.88 - bh, h - bh))
                )
            else:
                bx, by = rng.uniform(0, max(1.0, w - bw)), rng.uniform(0, max(1.0, h - bh))
            return round(max(0.0, bx)), round(max(0.0, by))

        kind = rng.choice(4, p=[0.35, 0.3, 0.15, 0.2])
        if kind <= 1:
            text = str(rng.choice(_TEXTS[:4])) if kind == 0 else str(rng.choice(_TEXTS))
            if kind == 1 and rng.random() < 0.3:
                text = f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(0, 100):02d}"
            _note(record, "markers.letter" if kind == 0 else "markers.text")
            font = int(rng.choice(_FONTS)) | (cv2.FONT_ITALIC if rng.random() < 0.15 else 0)
            height = (rng.uniform(0.04, 0.1) if kind == 0 else rng.uniform(0.025, 0.06)) * size
            (_, th0), _ = cv2.getTextSize(text, font, 1.0, 1)
            scale = height / max(th0, 1)
            thick = max(1, round(scale * rng.uniform(1.0, 3.5)))
            (tw, th), base = cv2.getTextSize(text, font, scale, thick)
            x, y = place(tw, th + base)
            if rng.random() < 0.25:  # lead marker on a plastic tab: a filled box behind the letter
                masks[not white][max(0, y - 3) : y + th + base + 3, max(0, x - 3) : x + tw + 3] = 255
            cv2.putText(canvas, text, (x, y + th), font, scale, 255, thick, cv2.LINE_AA)
        elif kind == 2:
            _note(record, "markers.ruler")
            horizontal = rng.random() < 0.5
            length = rng.uniform(0.2, 0.8) * (w if horizontal else h)
            step = max(2.0, rng.uniform(0.008, 0.03) * size)
            tick = max(2.0, rng.uniform(0.01, 0.03) * size)
            x, y = place(length if horizontal else tick * 2, tick * 2 if horizontal else length)
            thick = int(rng.integers(1, 3))
            end = (round(x + length), y) if horizontal else (x, round(y + length))
            cv2.line(canvas, (x, y), end, 255, thick)
            for i in range(int(length / step) + 1):
                t = round(i * step)
                ln = round(tick * (2 if i % 10 == 0 else 1.5 if i % 5 == 0 else 1))
                p0 = (x + t, y) if horizontal else (x, y + t)
                p1 = (x + t, y + ln) if horizontal else (x + ln, y + t)
                cv2.line(canvas, p0, p1, 255, thick)
        else:
            _note(record, "markers.rect")
            bw, bh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.03, 0.12) * h
            x, y = place(bw, bh)
            filled = rng.random() < 0.5
            cv2.rectangle(
                canvas, (x, y), (round(x + bw), round(y + bh)), 255, -1 if filled else int(rng.integers(1, 4))
            )
            if filled and rng.random() < 0.6:  # text inside the annotation box, opposite colour
                text = str(rng.choice(_TEXTS))
                (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_PLAIN, 1.0, 1)
                s = max(0.3, min(bw / max(tw, 1), bh / max(th, 1)) * 0.7)
                cv2.putText(
                    masks[not white], text, (x + 2, round(y + bh * 0.75)), cv2.FONT_HERSHEY_PLAIN, s, 255, 1
                )
    out = img
    for white, m in masks.items():
        if m.any():
            alpha = m.astype(np.float32) * np.float32(a / 255.0)
            value = np.float32(rng.uniform(0.93, 1.0) if white else rng.uniform(0.0, 0.05))
            out = out * (1 - alpha) + value * alpha
    return out


def _op_squash(img: Image, rng: Rng, a: float) -> Image:
    """Digitised-film look: anatomy squeezed into [lo, hi] (raised black, dull white), 8-bit levels.

    The final percentile window stretches it back, so what remains is posterisation and, with
    the noise / JPEG that follow, noise amplified relative to the anatomy — as on a scanned film.
    """
    lo = rng.uniform(0.05, 0.35) * a
    hi = 1.0 - rng.uniform(0.05, 0.35) * a
    y = np.float32(lo) + np.float32(hi - lo) * np.clip(img, 0, 1)
    return np.asarray(np.round(y * np.float32(255.0)) / np.float32(255.0), np.float32)


def _op_blur(img: Image, rng: Rng, a: float, record: list[str] | None) -> Image:
    """Gaussian blur sigma 0.5–2.5 px or motion blur 3–11 px at a random angle."""
    u = max(img.shape) / 384
    if rng.random() < 0.7:
        _note(record, "blur.gaussian")
        return np.asarray(cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.5) * u * a + 1e-3), np.float32)
    _note(record, "blur.motion")
    length = max(2, round(rng.uniform(3, 11) * u * a))
    k = np.zeros((length + 2, length + 2), np.float32)
    c = (length + 1) / 2
    ang = rng.uniform(0, math.pi)
    dx, dy = math.cos(ang) * length / 2, math.sin(ang) * length / 2
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    k /= max(float(k.sum()), 1.0)
    return np.asarray(cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT), np.float32)


def _op_lowres(img: Image, rng: Rng, a: float) -> Image:
    """Down-sample by 2–6 and back up (a 331-px digitised film shown at 2k)."""
    h, w = img.shape
    f = 1 + (rng.uniform(2.0, 6.0) - 1) * a
    small = cv2.resize(img, (max(4, round(w / f)), max(4, round(h / f))), interpolation=cv2.INTER_AREA)
    interp = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST][int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
    return np.asarray(cv2.resize(small, (w, h), interpolation=interp), np.float32)


def _op_noise(img: Image, rng: Rng, a: float, record: list[str] | None) -> Image:
    """One or more of: Gaussian, signal-dependent (Poisson-like), correlated, low-frequency
    clutter, salt-and-pepper specks, multiplicative film grain."""
    h, w = img.shape
    u = max(h, w) / 384
    kinds = {
        "gaussian": 0.5,
        "poisson": 0.4,
        "correlated": 0.35,
        "clutter": 0.3,
        "speckle": 0.15,
        "grain": 0.25,
    }
    chosen = [k for k, p in kinds.items() if rng.random() < p]
    if not chosen:
        chosen = [str(rng.choice(list(kinds)))]
    # Amplitudes are relative to the anatomy's current contrast (scatter, range compression or a
    # squash may have shrunk it to a third): the final window would otherwise turn a "mild" draw
    # into pure noise, and a box over invisible anatomy teaches nothing.
    lo, hi = np.percentile(img[::4, ::4], (1, 99))
    rel = a * float(np.clip(hi - lo, 0.25, 1.0))
    out = img

    def normal() -> np.ndarray:
        return rng.standard_normal((h, w), dtype=np.float32)

    for k in chosen:
        _note(record, f"noise.{k}")
        if k == "gaussian":
            out = out + np.float32(_loguniform(rng, 0.004, 0.06) * rel) * normal()
        elif k == "poisson":  # quantum noise: larger where fewer photons (bright bone) or reverse
            base = np.clip(out, 0, 1) if rng.random() < 0.7 else 1 - np.clip(out, 0, 1)
            out = out + np.float32(_loguniform(rng, 0.01, 0.08) * rel) * np.sqrt(base + 0.02) * normal()
        elif k == "correlated":
            n = cv2.GaussianBlur(normal(), (0, 0), _loguniform(rng, 0.7, 3.0) * u)
            out = out + np.float32(_loguniform(rng, 0.005, 0.05) * rel) * n / np.float32(n.std() + 1e-6)
        elif k == "clutter":  # blotchy soft-tissue / bowel-gas-like texture, made at low resolution
            f = _loguniform(rng, 4.0, 20.0) * u / 2
            small = rng.standard_normal((max(2, round(h / f)), max(2, round(w / f))), dtype=np.float32)
            n = cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.0), (w, h), interpolation=cv2.INTER_LINEAR)
            out = out + np.float32(_loguniform(rng, 0.01, 0.05) * rel) * n / np.float32(n.std() + 1e-6)
        elif k == "speckle":
            frac = _loguniform(rng, 1e-4, 3e-3) * a
            m = rng.random((h, w), dtype=np.float32)
            out = np.where(m < frac / 2, np.float32(0.0), np.where(m > 1 - frac / 2, np.float32(1.0), out))
        else:  # grain: multiplicative, fine
            n = cv2.GaussianBlur(normal(), (0, 0), rng.uniform(0.5, 1.2) * u)
            out = out * (1 + np.float32(_loguniform(rng, 0.02, 0.1) * rel) * n)
    return np.asarray(out, np.float32)


def _op_crop(img: Image, geo: _Geometry, rng: Rng, a: float) -> Image:
    """Partial view: cut 5–35 % off one side or two (opposite sides together at most 45 %)."""
    h, w = img.shape
    sides = rng.permutation(4)[: 1 + int(rng.random() < 0.4)]
    cut = dict.fromkeys(range(4), 0.0)
    for s in sides:
        cut[int(s)] = rng.uniform(0.05, 0.35) * a
    for p, q in ((0, 1), (2, 3)):
        if cut[p] + cut[q] > 0.45:
            f = 0.45 / (cut[p] + cut[q])
            cut[p], cut[q] = cut[p] * f, cut[q] * f
    left, right, top, bottom = (round(cut[0] * w), round(cut[1] * w), round(cut[2] * h), round(cut[3] * h))
    geo.shift(-left, -top)
    geo.keep_rect(w - left - right, h - top - bottom)
    return np.ascontiguousarray(img[top : h - bottom, left : w - right])


def _op_pad(img: Image, geo: _Geometry, rng: Rng, a: float, fill: float) -> Image:
    """Borders of the fill value on 1–4 sides, each up to 15 % (export frames, odd aspect)."""
    h, w = img.shape
    n = int(rng.integers(1, 5))
    pads = [0, 0, 0, 0]
    for s in rng.permutation(4)[:n]:
        pads[int(s)] = round(rng.uniform(0.02, 0.15) * a * (w if s < 2 else h))
    left, right, top, bottom = pads
    geo.shift(left, top)
    return np.asarray(
        cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill), np.float32
    )


def _op_jpeg(img: Image, rng: Rng, record: list[str] | None) -> Image:
    """8-bit JPEG re-encode, quality 15–90; 15 % of the time 5–14 (blocky)."""
    if rng.random() < 0.15:
        _note(record, "jpeg.blocky")
        q = int(rng.integers(5, 15))
    else:
        q = int(rng.integers(15, 91))
    x = np.clip(img, 0, 1)  # an 8-bit export of what the chain made (a squashed range stays squashed)
    ok, buf = cv2.imencode(".jpg", np.round(x * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid 8-bit image
        return img
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), np.float32) / np.float32(255.0)


# --- entry points ------------------------------------------------------------------------------


def randomise(
    image01: np.ndarray,
    boxes: list[Box] | None,
    rng: np.random.Generator,
    strength: float = 1.0,
    *,
    record: list[str] | None = None,
    ops: Collection[str] | None = None,
) -> tuple[np.ndarray, list[Box] | None]:
    """A randomised copy of a 0..1 image (bone bright) and its boxes mapped consistently.

    ``boxes`` in image pixels (``None`` passes through as ``None``); returned boxes are clipped to
    the returned image and dropped when less than ``MIN_VISIBLE`` of them stays in view. The
    image may change shape (crop / pad) and is always float32 0..1 after the node's percentile
    window. ``record`` receives the names of the transforms (and variants) that fired; ``ops``
    restricts the transforms to a subset of ``TRANSFORMS`` (tests, or callers that must not
    crop). When nothing fires (always at ``strength`` 0) the image and boxes come back unchanged.
    """
    if image01.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image01.shape}")
    unknown = set(ops or ()) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"unknown transforms {sorted(unknown)}; known: {TRANSFORMS}")
    img = np.asarray(image01, np.float32)
    if strength <= 0:
        return img.copy(), (list(boxes) if boxes is not None else None)
    a = min(1.0, float(strength))
    allowed = set(TRANSFORMS) if ops is None else set(ops)
    # Draw every coin first, in a fixed order: a transform's parameters never shift another's coin.
    fire = {
        name: bool(rng.random() < min(1.0, p * strength)) and name in allowed
        for name, p in PROBABILITIES.items()
    }
    if not any(fire.values()):
        return img.copy(), (list(boxes) if boxes is not None else None)
    geo = _Geometry(boxes or [])
    fill = _fill_value(rng, record) if fire["affine"] or fire["pad"] else 0.0
    # one entry per transform: the arguments each needs, bound here (rng is drawn in this order)
    ops_table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "affine": lambda x: _op_affine(x, geo, rng, a, fill),
        "collimation": lambda x: _op_collimation(x, geo, rng, a, record),
        "grid": lambda x: _op_grid(x, rng, a, record),
        "scatter": lambda x: _op_scatter(x, rng, a),
        "drc": lambda x: _op_drc(x, rng, a),
        "unsharp": lambda x: _op_unsharp(x, rng, a, record),
        "curve": lambda x: _op_curve(x, rng, a, record),
        "gamma": lambda x: _op_gamma(x, rng, a),
        "equalise": lambda x: _op_equalise(x, rng, a, record),
        "markers": lambda x: _op_markers(x, rng, a, record),
        "squash": lambda x: _op_squash(x, rng, a),
        "blur": lambda x: _op_blur(x, rng, a, record),
        "lowres": lambda x: _op_lowres(x, rng, a),
        "noise": lambda x: _op_noise(x, rng, a, record),
        "crop": lambda x: _op_crop(x, geo, rng, a),
        "pad": lambda x: _op_pad(x, geo, rng, a, fill),
        "invert": lambda x: 1.0 - np.clip(x, 0, 1),
        "jpeg": lambda x: _op_jpeg(x, rng, record),
    }
    for name, on in fire.items():
        if not on:
            continue
        _note(record, name)
        img = ops_table[name](img)
    img = np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0)
    out = percentile_window(img)
    h, w = out.shape
    return out, (geo.result(w, h) if boxes is not None else None)


def limit_size(
    image01: np.ndarray, boxes: list[Box] | None, max_side: int
) -> tuple[np.ndarray, list[Box] | None]:
    """Shrink (area-averaging) so the long side is at most ``max_side``; boxes scaled with it.

    A 2500-px site radiograph would cost ~40x a 384-px one to randomise and is letterboxed to a
    few hundred pixels anyway; callers randomise at about twice the network size.
    """
    h, w = image01.shape
    f = max_side / max(h, w)
    if f >= 1.0:
        return image01, boxes
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    out = np.asarray(cv2.resize(image01, (nw, nh), interpolation=cv2.INTER_AREA), np.float32)
    if boxes is None:
        return out, None
    sx, sy = nw / w, nh / h
    return out, [replace(b, x0=b.x0 * sx, y0=b.y0 * sy, x1=b.x1 * sx, y1=b.y1 * sy) for b in boxes]


def settings(enabled: bool, strength: float, copies: int, clean_first: bool) -> dict[str, object]:
    """The randomisation settings as recorded in a model manifest (``extra.randomisation``)."""
    return {
        "enabled": bool(enabled),
        "module": "node.train.augment",
        "version": AUGMENT_VERSION,
        "strength": float(strength),
        "copies": int(copies),
        "clean_first": bool(clean_first),
        "probabilities": dict(PROBABILITIES) if enabled else {},
    }
