"""Classical metal finder: dense, texture-free, sharply bounded objects in a hip radiograph.

Why a second, non-learned opinion
---------------------------------
The learned detector and triage head were trained on one phantom style and can miss an obvious
prosthesis drawn by another renderer. Metal differs from bone by physics, not by style, so a
finder that works relative to the image's own structure gives fusion something to union with.
It is tuned to be *conservative*: fusion unions it with the models, so a false "metal" costs a
false arthroplasty claim, while a miss costs nothing the models do not already cover.

What metal looks like after processing
--------------------------------------
A cup, head or stem absorbs almost every primary photon: what reaches the detector behind it is
scatter, a field that is smooth on the scale of centimetres. Hence, whatever the vendor did:

* **no texture** - the trabecular pattern of the bone behind the metal is gone; what is left is
  quantum noise (more of it than over soft tissue: few photons arrive);
* **a solid, not a shell** - bone projects as a cortical shell: its outline rises over the
  cortex and often falls again into the medulla. Metal rises within its edge's blur to a
  plateau;
* **locally brighter all round** - along every edge of a metal object the metal is the bright
  side, whatever lies next to it (soft tissue, bone, cement).

Absolute brightness is a weak cue on its own. Large-kernel dynamic range compression (DRC),
scatter and unsharp masking change the *level* of metal a lot: on the project's phantoms the
median of a cup lies at the local bone level (median ratio (metal - soft) / (bone p90 - soft)
in a window around it 1.04, 10th percentile 0.79), a titanium stem can be no brighter than the
cortex around it, and a cup can be darker than the ilium a centimetre away. None of that changes
the sign of the step across the metal's own edge, which is a few pixels wide. Brightness above
the bone level is used where the image shows it (it relaxes the texture test), and reported as
``contrast``.

How
---
1. Work on a copy with a long side of ``WORK_PX`` (``cv2.INTER_AREA``); boxes and outlines are
   mapped back to full-resolution pixels exactly (pixel-centre convention).
2. Collimation shutters - uniform bands along the borders, black or white - are masked out.
3. Texture: local RMS of a band-pass (difference of Gaussians at the trabecular scale) of a
   median-filtered copy, relative to the texture of the image's quiet (noise-only) areas *at the
   same brightness* (a monotone grey-level transform - gamma, tone curve - scales noise and
   texture at an intensity by its slope there). ``flat`` where that ratio is below ``FLAT_K``.
   Flat pixels form zones separated by edges and by textured bone; a zone that leaks through a
   weak edge into darker soft tissue is cut by intersecting ``flat`` with intensity level sets
   at a few quantiles. Every (level, zone) is a candidate.
4. Edges: Canny on the smoothed copy with hysteresis thresholds relative to the median
   gradient (noise). For each edge pixel: the zones on its bright and dark sides (along the
   gradient), and the profile into the bright side, sampled in units of the edge's own blur.
5. A candidate scores (a product of ramps: every cue must hold) by the share of its edges on
   which it is the bright side, how much of its outline such edges cover, its texture in excess
   of the noise relative to its own edge step (invariant to grey-level transforms), holes, the
   plateau behind its edges, thickness and the amount of edge evidence. A *clipped plateau*
   (most of the zone at the image's top level, well above the bone level, bright-sided all
   round, no texture: processed films clip metal to white) may be smaller and thinner
   (``_clipped``): a cemented stem's flat core inside its bright mantle and a prosthetic head
   failed the size cues; such zones are kept only where they form a cup, head or stem.
   Clipped pixels deep inside a clipped region are offered once more as zones of their own
   (``_Maps.clipped``; the band-pass rings inside a strong edge, so a small clipped head keeps
   almost no flat core). They only add a stem, with the head or cup cut from it, where no cup,
   head or stem was found (``_with_clipped_parts``), well above the bone level and away from the
   frame. Clipped zones a little lower, and flat zones as far above bone but too thin or small
   for the score (``_thin_score``: metal white but not clipped), add only a stem carrying its
   ball (``_low_clipped_prostheses``), also where head and stem made two objects (``_paired``).
   Where even those cues fail - a film that renders bone nearly as white as metal, so a clipped
   plateau lies barely above the bone level and its edges are weak - a clean clipped plateau
   counts by its outline alone: a stem with its ball cut at a thin neck, or a lone round ball
   (``_clipped_silhouettes``).
6. Accepted zones are merged into objects, grown into their edge band, and classified by shape
   and size relative to the image (cup, head, stem; nail, screw, wire, other). A ball is cut
   off where a narrow neck joins it, at the object's thickest part or, in clipped metal, at a
   head narrower than the stem's shoulder (``_small_ball``). A stem carries
   a head: an elongated part with no ball of its own and no cup or head next to it is "other"
   (on phantoms such parts are femoral shafts, rami, or the lifted contralateral femur of a
   lateral view, a dense, smooth rod).

Measured on phantoms (``node.phantom``, 512 px, random implants, 200 images per view of a
seed not used in development), per imaged side, ``arthroplasty_evidence >= 0.5``: recall AP
pelvis 0.92, AP hip 0.89, lateral 0.84 (all 0.895 of 239 implanted sides); false positives
0.015 / 0.028 / 0.028 (0.021 of 561 native sides). Far from the 98 % / 2 % once asked for: on
these phantoms metal sits at the bone level and is noisy, and what is left to find it by is
texture, edges and shape. Grey-level transforms, blur and contrast squash cost a few points;
JPEG 30, noise (sd 0.02-0.03) and strong unsharp masking cost 15-40 points of recall, not
false positives. ``tests/test_metal.py`` holds the figures on its own smaller set.

Levels (``soft_level``, ``bone_level``) are percentiles 35 and 88 of the exposed field, reported
for logging and to express ``contrast``; when the field has no usable spread, or almost nothing
is exposed, the result is flagged ``reliable=False`` and "no metal" must not be read as evidence
of absence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
from numpy.typing import NDArray

from node.domain import Box, Side

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
LabelArray = NDArray[np.int32]

# ----------------------------------------------------------------------------------------------
# Constants. Lengths in pixels of the working copy (long side WORK_PX), where a pixel is
# 0.45-0.9 mm on a hip or pelvis film.

WORK_PX = 512
SMOOTH_SIGMA = 1.2  # Gaussian after the 3x3 median: removes noise, keeps edges 1-2 px wide
TEXTURE_OUTER = 2.5  # DoG outer sigma as a multiple of SMOOTH_SIGMA (trabecular grain)
TEXTURE_WINDOW = 1.2  # sigma of the local RMS
FLAT_K = 2.5  # flat where texture < FLAT_K x the quiet texture level at that intensity
QUIET_PERCENTILE = 25.0  # global quiet level: lower quartile of the texture in the field
QUIET_BINS = 12
QUIET_BIN_PERCENTILE = 10.0
QUIET_ENVELOPE_TOL = 0.15  # log units above the lower envelope at which a bin is textured bone
QUIET_SPAN = 2.0  # the intensity-dependent quiet level stays within this factor of the global one
CANNY_LOW, CANNY_HIGH = 3.0, 6.0  # hysteresis thresholds in units of the median gradient
SIDE_SAMPLES = tuple(range(2, 11))  # px along the gradient to find the zone on either side
PROFILE_MIN_WIDTH, PROFILE_MAX_WIDTH = 1.2, 3.0  # px: an edge's blur, for its profile samples
N_LEVELS = 5
LEVEL_QUANTILES = (35.0, 98.0)
MIN_ZONE_PX = 300
# A clipped plateau far above bone (see ``_clipped``) may be smaller and thinner: at the working
# scale a cemented stem's flat core is 7-8 px thick and a 28 mm head's under 300 px.
MIN_CLIPPED_ZONE_PX = 100
CLIPPED_LEV = (1.3, 1.6)  # ramp of (mean - soft) / gap
CLIPPED_SHARE = (0.5, 0.9)  # ramp of the zone's share at the image's top level
# A clipped zone shaped like a stem carrying its ball may sit lower (``_low_clipped_prostheses``)
CLIPPED_STEM_LEV = (1.15, 1.3)
MAX_ZONE_FRACTION = 0.3
CLIP_TOL = 1e-3  # image01 units: a pixel this close to the top level is clipped
# share of a clipped zone's outline along the frame or a shutter: burned-in labels are clipped
# too, and a clipped zone adds only a stem with its ball (``_with_clipped_parts``). At 0.1 a stem
# running along the collimator's edge (0.29) was lost; 0.3 is every zone's bar (``MAX_BORDER``).
CLIPPED_PASS_MAX_BORDER = 0.3
CLIP_INSET = 2  # px: a clipped pixel counts where its (2 x inset + 1)^2 neighbourhood is clipped too
SHUTTER_TOL = 0.03
SHUTTER_MAX_DEPTH = 0.4  # fraction of the image size

# candidate gates (cheap, before the shape features) and score ramps (bad, good)
MIN_BRIGHT_EDGES = 20
MIN_BRIGHT_FRAC = 0.75
# ... but not for a zone of the clipped pass: nothing is brighter than a clipped plateau, so edges
# that sample into it from their dark side are other edges nearby (a cemented cup's marker wire:
# dev sketch cups 424300:51 R, a head and stem found only without the bar; ``_plateau_score``)
CLIPPED_MIN_BRIGHT_FRAC = 0.0
MAX_BORDER = 0.3  # share of the outline next to a shutter or the image frame
COVER_BAD, COVER_GOOD = 0.25, 0.45
TEX_STEP_BAD, TEX_STEP_GOOD = 0.02, 0.01
TEX_NOISE_SHARE = 1.0  # texture in excess of this share of the quiet (noise) level counts
CURV_METAL, CURV_BAD, CURV_GOOD = 0.03, 0.12, 0.06
LEV_BAD, LEV_GOOD = 0.5, 0.75  # (mean - soft) / gap: metal is not much darker than the bone level
ACCEPT_SCORE = 0.65
BULB_RATIO = 1.5  # largest inscribed radius / mean half width of a stem that carries its ball
MERGE_GAP_PX = 6  # zones of one implant (cup, head, neck, stem) are separated by edge bands

MIN_GAP = 0.04  # bone - soft-tissue spread below which the image says nothing about metal
MIN_EXPOSED = 0.15
ARTHROPLASTY_KINDS = ("cup", "stem", "head")
# a ball cut from a stem (cup or head) is round: longer than this times its mean width is a
# barrel, a plate end or a nail, not a ball (the naming below calls a ball elongated at 2.2)
BALL_MAX_ELONGATION = 2.2
# a head cut off by ``_small_ball`` must be this round (area / enclosing circle)
BALL_MIN_ROUNDNESS = 0.75
SMALL_BALL_OPENINGS = (0.6, 0.75)
# ... only in metal well above the bone level ((median - soft) / gap, as CLIPPED_LEV starts): at
# the bone level a bony outline can be cut into a "head" and a "stem" as easily
SMALL_BALL_MIN_LEV = 1.3
# ... and with nothing but the stem left once it is cut off (pieces up to this share of the stem)
SMALL_BALL_MAX_SPARE = 0.15
# ... and where the ball meets the stem the metal is at most this share of the ball's radius thick.
# On dev sketch films (mixed 424240 / 424270 / 424280, cups 424300 / 424330) heads on their necks
# measured 0.42-0.62 (one 0.73), the ends of nails and a sliding hip screw's barrel 0.77-0.99.
SMALL_BALL_MAX_NECK = 0.7
# an arthroplasty part must reach its hip joint's box grown by this share of its larger side
JOINT_REACH = 0.75
# on an AP view a femoral stem lies in the femur: its box's centre is not above its hip joint's
# centre by more than this share of the joint's height (phantoms, 290 stems found on 4 validation
# sets: -0.08 at the highest, a short piece by the neck; the one "stem" above, -0.36, was the sacrum)
STEM_MAX_RISE = 0.25
# ... nor medial of it by more than this share of the joint's width: the femoral shaft runs down
# and out from the head, while the pubic ramus and the obturator ring, which an unseen style's
# bright bone can make pass for a stem, run towards the midline. Dev phantoms (seeds
# 424240-424370, never the bench seed; 3,381 + 1,052 mixed sides, 780 cup films): on the 229
# arthroplasty sides where the finder found a stem and nothing else it lies at most 0.07 medial;
# "stems" on native hips 0.46-1.12 (5 of those hips reported as arthroplasties, 3 on that stem
# alone). Medial is the standard AP display's: towards the image's right for the patient's right
# hip, as the detector's joint labels also assume.
STEM_MAX_MEDIAL = 0.25
# on an AP view a cup or a head sits in the joint: its box's centre lies within this share of the
# joint's height of the joint's centre, up or down (dev phantoms as above: cups -0.27 to +0.38,
# heads -0.17 to +0.10; "cups" a vertebral body 1.31 above a native hip and a bright patch 0.76
# below another, both reported as arthroplasties on metal alone)
BALL_MAX_DROP = 0.6
# A straight, parallel-sided bar - a lag screw, a bundle of cannulated screws, a nail - fills
# most of its minimum-area rectangle and is several times longer than wide; no component of a hip
# arthroplasty is (a cup and a head are round, a stem tapers and curves and carries a head).
# Measured on dev phantoms (seeds 424240-424330, never the bench seed): the bundles of cannulated
# screws an independently written renderer draws through the femoral neck fill 0.72-0.81 of
# their rectangle at elongation 3.6-6.0 on AP views; on AP views of arthroplasties where the
# finder named no cup, stem or head (3 styles; 780 cup films, 3,381 mixed sides) none of its
# objects is both (the nearest: a large-head stem, fill 0.64 at elongation 6.2).
BAR_MIN_FILL = 0.7
BAR_MIN_ELONGATION = 3.5
_LABEL_OF_KIND = {"cup": "cup", "stem": "stem", "head": "head"}


@dataclass(frozen=True)
class MetalObject:
    """One metal object, in full-resolution image pixels.

    ``box.label`` is "cup", "stem", "head" (a prosthetic head without a cup) or
    "other_hardware"; ``box.score`` the confidence 0.5..1 (only confident objects are reported).
    ``kind`` is finer: "cup", "stem", "head", "screw", "plate", "nail", "wire" or "other" (this
    finder does not resolve a plate's screw holes and reports plates as "nail" or "other").
    ``outline`` is the object's outer contour as (N, 2) float x, y - for a cup, the outline of
    cup and head together, a start for a cup fit. ``contrast`` is how far the object's median
    lies above the image's bone level, in units of the bone - soft-tissue gap; it can be
    negative on heavily equalised images, where metal is found by its edges and texture."""

    box: Box
    kind: str
    area_px: int
    outline: F64
    contrast: float


@dataclass(frozen=True)
class MetalEvidence:
    """What ``find_metal`` saw: the objects, the image's levels (image01 units, for logging),
    whether the image could show metal at all, and a one-line note."""

    objects: tuple[MetalObject, ...]
    soft_level: float
    bone_level: float
    threshold: float  # soft + LEV_BAD x gap: an accepted metal zone's mean lies above this level
    reliable: bool
    note: str


# ----------------------------------------------------------------------------------------------
# Working copy and its mapping back


@dataclass(frozen=True)
class _Work:
    """The analysed copy; working x = (full x + 0.5) * sx - 0.5 (pixel centres)."""

    img: F32
    sx: float
    sy: float

    def to_full(self, x: F64, y: F64) -> tuple[F64, F64]:
        return (x + 0.5) / self.sx - 0.5, (y + 0.5) / self.sy - 0.5


def _working_copy(image01: F32) -> _Work:
    h, w = image01.shape
    f = WORK_PX / max(h, w)
    ww, hh = max(8, round(w * f)), max(8, round(h * f))
    if (ww, hh) == (w, h):
        return _Work(np.ascontiguousarray(image01, dtype=np.float32), 1.0, 1.0)
    interp = cv2.INTER_AREA if f < 1.0 else cv2.INTER_LINEAR
    small = np.asarray(cv2.resize(image01, (ww, hh), interpolation=interp), dtype=np.float32)
    return _Work(small, ww / w, hh / h)


def _disk(r: int) -> NDArray[np.uint8]:
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)), dtype=np.uint8)


def _ramp(v: float, bad: float, good: float) -> float:
    """0 at ``bad``, 1 at ``good``, linear between (either order)."""
    return min(1.0, max(0.0, (v - bad) / (good - bad)))


# ----------------------------------------------------------------------------------------------
# Collimation shutters


def _shutter_mask(xs: F32) -> BoolArray:
    """Uniform bands along the borders (collimation shutters, white or black, and uniform air).

    Per border: if most of the outermost line has one value, the band is where the image keeps
    that value going inwards; its inner edge is fitted as a straight line (shutters are
    straight, possibly a few degrees rotated), so that an object touching the band is not eaten
    where its value happens to match."""
    h, w = xs.shape
    mask = np.zeros((h, w), dtype=bool)
    views = ((xs, mask), (xs[::-1], mask[::-1]), (xs.T, mask.T), (xs.T[::-1], mask.T[::-1]))
    for a, m in views:
        rows, cols = a.shape
        depth_max = max(2, int(SHUTTER_MAX_DEPTH * rows))
        border = a[0]
        v = float(np.median(border))
        close0 = np.abs(border - v) < SHUTTER_TOL
        if close0.mean() < 0.6:
            continue
        close = np.abs(a[:depth_max] - v) < SHUTTER_TOL
        depth = np.where(close.all(axis=0), depth_max, np.argmin(close, axis=0)).astype(np.float64)
        pos = np.arange(cols, dtype=np.float64)
        use = close0.copy()
        fit = np.array([0.0, float(np.median(depth[use]))])
        for _ in range(2):
            if use.sum() < max(8, 0.3 * cols):
                break
            fit = np.polyfit(pos[use], depth[use], 1)
            fit[0] = float(np.clip(fit[0], -0.1, 0.1))
            res = depth - np.polyval(fit, pos)
            use = close0 & (np.abs(res) < 3.0)
        line = np.polyval(fit, pos)
        if float(np.median(line)) < 2.0:
            continue
        r = np.arange(rows)[:, None]
        m |= r < np.clip(np.round(line + 1.0), 0, depth_max)[None, :]
    return mask


def _quiet_map(xs: F32, tex: F32, exposed: BoolArray, quiet: float) -> F32:
    """The texture level of quiet (noise-only) areas as a function of intensity.

    A monotone grey-level transform (gamma, tone curve) scales texture and noise at an intensity
    by its slope there, and quantum noise grows with attenuation, so "flat" is judged against
    quiet areas of similar brightness: per intensity bin a low percentile of the texture, fitted
    as a lower envelope (quadratic in log; bins where only textured bone lives sit above it and
    are left out), on the scale of the global quiet level and within ``QUIET_SPAN`` of it."""
    v = xs[exposed][::9]
    t = tex[exposed][::9]
    ok = t > 1e-7
    v, t = v[ok], t[ok]
    if v.size < 200:
        return np.full(xs.shape, quiet, dtype=np.float32)
    edges = np.unique(np.percentile(v, np.linspace(0.0, 100.0, QUIET_BINS + 1)))
    if edges.size < 4:
        return np.full(xs.shape, quiet, dtype=np.float32)
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, edges.size - 2)
    centres, qs = [], []
    for b in range(edges.size - 1):
        sel = idx == b
        if sel.sum() < 20:
            continue
        centres.append(float(np.median(v[sel])))
        qs.append(float(np.percentile(t[sel], QUIET_BIN_PERCENTILE)))
    if len(centres) < 3:
        return np.full(xs.shape, quiet, dtype=np.float32)
    cx, lq = np.asarray(centres), np.log(np.asarray(qs))
    use = np.ones(cx.size, dtype=bool)
    coef = np.polyfit(cx, lq, 1)
    for _ in range(3):  # lower envelope
        coef = np.polyfit(cx[use], lq[use], 2 if use.sum() >= 5 else 1)
        res = lq - np.polyval(coef, cx)
        new = res < QUIET_ENVELOPE_TOL
        if new.sum() < 3 or (new == use).all():
            break
        use = new
    lo, hi = min(centres), max(centres)
    # evaluated through a 256-entry table (xs is 0..1)
    grid = np.linspace(0.0, 1.0, 256)
    table = np.exp(np.polyval(coef, np.clip(grid, lo, hi))).astype(np.float32)
    q = table[np.clip(np.round(xs * np.float32(255.0)), 0, 255).astype(np.intp)]
    q0 = float(np.exp(np.median(lq)))
    # on the scale of the global quiet level, so that the thresholds keep their meaning
    q *= np.float32(quiet / q0)
    return np.clip(q, np.float32(quiet / QUIET_SPAN), np.float32(quiet * QUIET_SPAN))


# ----------------------------------------------------------------------------------------------
# Maps


@dataclass(frozen=True)
class _Maps:
    xs: F32  # smoothed image
    tex: F32  # local band-pass RMS
    qmap: F32  # quiet (noise-only) texture level at each pixel's intensity
    flat: BoolArray
    exposed: BoolArray
    soft: float
    bone: float
    gx: F32
    gy: F32
    grad: F32
    clipped: BoolArray  # clipped pixels deep inside a clipped plateau (``_clipped_interior``)


def _clipped_interior(xm: F32, exposed: BoolArray) -> BoolArray:
    """Pixels whose whole neighbourhood sits at the image's top level.

    A clipped plateau carries no texture at all, but the band-pass that measures texture rings
    for a few pixels inside every strong edge: a small clipped object (a 28 mm prosthetic head is
    some 17 working pixels across) keeps too small a flat core to become a candidate, and these
    pixels are offered as candidates of their own (``_candidates``)."""
    vals = xm[exposed]
    if vals.size == 0:
        return np.zeros(xm.shape, dtype=bool)
    top = float(vals.max())
    at_top = (xm >= np.float32(top - CLIP_TOL)).astype(np.uint8)
    return (cv2.erode(at_top, np.ones((2 * CLIP_INSET + 1, 2 * CLIP_INSET + 1), np.uint8)) > 0) & exposed


def _maps(img: F32) -> _Maps:
    xm = cv2.medianBlur(img, 3)
    xs = np.asarray(cv2.GaussianBlur(xm, (0, 0), SMOOTH_SIGMA), dtype=np.float32)
    band = xs - cv2.GaussianBlur(xm, (0, 0), SMOOTH_SIGMA * TEXTURE_OUTER)
    tex = np.sqrt(np.asarray(cv2.GaussianBlur(band * band, (0, 0), TEXTURE_WINDOW), dtype=np.float32))
    exposed = ~_shutter_mask(xs)
    # a two-pixel frame: filters reflect at the border, which is not anatomy
    exposed[:2, :] = exposed[-2:, :] = False
    exposed[:, :2] = exposed[:, -2:] = False
    sample, tsample = xs[exposed], tex[exposed]
    if sample.size < 64:
        sample, tsample = xs.ravel(), tex.ravel()
    tpos = tsample[tsample > 1e-7]
    quiet = max(float(np.percentile(tpos[:: max(1, tpos.size // 65536)], QUIET_PERCENTILE)) if tpos.size else 0.0, 1e-7)
    soft, bone = (float(v) for v in np.percentile(sample[:: max(1, sample.size // 65536)], (35.0, 88.0)))
    qmap = _quiet_map(xs, tex, exposed, quiet)
    flat = (tex < np.float32(FLAT_K) * qmap) & exposed
    gx = np.asarray(cv2.Sobel(xs, cv2.CV_32F, 1, 0), dtype=np.float32) / np.float32(8.0)
    gy = np.asarray(cv2.Sobel(xs, cv2.CV_32F, 0, 1), dtype=np.float32) / np.float32(8.0)
    grad = np.hypot(gx, gy)
    return _Maps(xs, tex, qmap, flat, exposed, soft, bone, gx, gy, grad, _clipped_interior(np.asarray(xm, dtype=np.float32), exposed))


# ----------------------------------------------------------------------------------------------
# Edges and what lies on either side of them


@dataclass(frozen=True)
class _Edges:
    side_at: dict[int, list[NDArray[np.intp]]]  # sign -> flat pixel indices at SIDE_SAMPLES along +-gradient
    curv: F64  # plateau test behind the edge (0 for a plateau or a linear ramp)
    step: F64  # the edge's step


def _sample(img: F32, x: F64, y: F64) -> F64:
    out = cv2.remap(img, x.astype(np.float32).reshape(1, -1), y.astype(np.float32).reshape(1, -1),
                    cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(out, dtype=np.float64).ravel()


def _edges(m: _Maps) -> _Edges:
    """Canny edges (hysteresis thresholds relative to the median gradient, i.e. the noise) and,
    per edge pixel, the pixels along its gradient on the bright and the dark side and the
    profile into the bright side.

    The profile is sampled in units of the edge's own width (step / gradient), so that blur - of
    the detector or of processing - does not turn a metal plateau into a "rising cortex".
    ``curv`` compares the rise over the first stretch behind the edge with the rise over the
    next one: ~0 for a plateau or a smooth (DRC) ramp, negative for a cortical ridge falling into
    the medulla, positive for a cortex still rising."""
    h, w = m.xs.shape
    g_exp = m.grad[m.exposed]
    gmed = float(np.median(g_exp[:: max(1, g_exp.size // 65536)])) if g_exp.size else 0.0
    gmax = float(m.grad.max())
    if gmed <= 0.0 or gmax <= 0.0:
        return _Edges({1: [], -1: []}, np.zeros(0), np.zeros(0))
    sc = 30000.0 / gmax
    dx = np.round(m.gx * sc).astype(np.int16)
    dy = np.round(m.gy * sc).astype(np.int16)
    lo, hi = min(gmed * CANNY_LOW * sc, 30000.0), min(gmed * CANNY_HIGH * sc, 30000.0)
    ed = (cv2.Canny(dx, dy, lo, hi, L2gradient=True) > 0) & m.exposed
    ys, xs = np.nonzero(ed)
    if ys.size == 0:
        return _Edges({1: [], -1: []}, np.zeros(0), np.zeros(0))
    g = m.grad[ys, xs].astype(np.float64) + 1e-12
    nx, ny = m.gx[ys, xs] / g, m.gy[ys, xs] / g
    fx, fy = xs.astype(np.float64), ys.astype(np.float64)
    side_at = {
        sgn: [np.clip(np.round(fy + sgn * ny * d), 0, h - 1).astype(np.intp) * w
              + np.clip(np.round(fx + sgn * nx * d), 0, w - 1).astype(np.intp) for d in SIDE_SAMPLES]
        for sgn in (1, -1)
    }
    step0 = _sample(m.xs, fx + nx * 2.5, fy + ny * 2.5) - _sample(m.xs, fx - nx * 3.0, fy - ny * 3.0)
    width = np.clip(np.maximum(step0, 1e-3) / (2.5 * g), PROFILE_MIN_WIDTH, PROFILE_MAX_WIDTH)

    def at(d: float) -> F64:
        return _sample(m.xs, fx + nx * d * width, fy + ny * d * width)

    v_out, v_in, v_deep, v_deeper = at(-2.5), at(2.0), at(4.5), at(7.0)
    step = v_in - v_out
    curv = ((v_deep - v_in) - (v_deeper - v_deep)) / np.maximum(step, 1e-3)
    return _Edges(side_at, curv, step)


# ----------------------------------------------------------------------------------------------
# Candidates: flat zones cut at intensity levels


@dataclass
class _Candidate:
    level: int
    label: int
    area: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), working pixels
    bright_frac: float  # share of its edges on which it is the bright side
    n_bright: int  # edge pixels on which it is the bright side
    curv: float  # mean plateau test behind those edges
    step: float  # mean step across them (image01 units)
    lev: float = 0.0  # (mean - soft) / gap
    tex_step: float = 0.0  # texture in excess of the noise / step: invariant to grey-level transforms
    border: float = 0.0  # share of its outline next to a shutter or the image frame
    filled_area: int = 0
    thick: float = 0.0  # largest inscribed radius
    cover: float = 0.0  # bright-side edge pixels per pixel of (smoothed) outline
    excess: float = 0.0  # RMS texture in excess of the noise
    perimeter: float = 0.0
    score: float = 0.0
    sat: float = 0.0  # share of its pixels at the image's top level (clipped)
    clipped_only: bool = False  # accepted only as a clipped plateau (``_clipped``)
    clipped_pass: bool = False  # a zone of clipped pixels (``_Maps.clipped``), not of flat ones
    stem_score: float = 0.0  # clipped pass: ``_plateau_score`` on the ``CLIPPED_STEM_LEV`` ramp


def _first_label(labr: LabelArray, idx: list[NDArray[np.intp]]) -> LabelArray:
    res = np.zeros(idx[0].size if idx else 0, dtype=np.int32)
    for ii in idx:
        lab = labr[ii]
        new = (res == 0) & (lab > 0)
        res[new] = lab[new]
    return res


def _candidates(m: _Maps, e: _Edges) -> tuple[list[_Candidate], list[LabelArray]]:
    """Zones of ``flat & (xs >= t)`` for t = -inf and N_LEVELS quantiles, with their edge
    statistics; those that pass the cheap gates get their pixel and shape features and a score."""
    h, w = m.xs.shape
    sample = m.xs[m.exposed]
    if sample.size < 64 or e.curv.size == 0:
        return [], []
    qs = np.percentile(sample[:: max(1, sample.size // 65536)], np.linspace(*LEVEL_QUANTILES, N_LEVELS))
    levels = [-np.inf, *(float(q) for q in qs)]
    top = float(sample.max())
    near_out = cv2.dilate((~m.exposed).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    cands: list[_Candidate] = []
    labels: list[LabelArray] = []
    # a zone that reappears unchanged at a higher level (same box, same area: level sets are
    # nested, so the same pixels) keeps its pixel and shape features
    seen: dict[tuple[int, int, int, int, int], _Candidate] = {}
    passes = [m.flat & (m.xs >= t) for t in levels]
    if m.clipped.any():
        passes.append(m.clipped)
    for li, flat_zone in enumerate(passes):
        clipped_pass = li == len(levels)
        mask = flat_zone.astype(np.uint8)
        n, lab_any, st, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        lab = np.asarray(lab_any, dtype=np.int32)
        labels.append(lab)
        area = st[:, cv2.CC_STAT_AREA]
        good = (area >= MIN_CLIPPED_ZONE_PX) & (area <= MAX_ZONE_FRACTION * h * w)
        good[0] = False
        if not good.any():
            continue
        labr = lab.ravel()
        lb = _first_label(labr, e.side_at[1])
        ld = _first_label(labr, e.side_at[-1])
        sep = lb != ld
        ob, od = sep & (lb > 0), sep & (ld > 0)
        cb = np.bincount(lb[ob], minlength=n).astype(np.float64)
        cd = np.bincount(ld[od], minlength=n).astype(np.float64)
        frac = CLIPPED_MIN_BRIGHT_FRAC if clipped_pass else MIN_BRIGHT_FRAC
        keep = good & (cb >= MIN_BRIGHT_EDGES) & (cb >= frac * (cb + cd))
        if not keep.any():
            continue
        curv_b = np.bincount(lb[ob], np.clip(e.curv[ob], -1.0, 1.0), minlength=n)
        step_b = np.bincount(lb[ob], e.step[ob], minlength=n)
        for k in np.nonzero(keep)[0]:
            x0, y0, bw, bh, a = (int(v) for v in st[k])
            c = _Candidate(level=li, label=int(k), area=a, bbox=(x0, y0, x0 + bw, y0 + bh),
                           bright_frac=float(cb[k] / (cb[k] + cd[k])), n_bright=int(cb[k]),
                           curv=float(curv_b[k] / cb[k]), step=float(step_b[k] / cb[k]))
            key = (*c.bbox, a)
            prev = seen.get(key)
            if prev is None:
                _zone_features(m, lab, c, near_out, top, clipped=clipped_pass)
                seen[key] = c
            else:
                c.lev, c.excess, c.border, c.sat = prev.lev, prev.excess, prev.border, prev.sat
                c.filled_area, c.thick, c.perimeter = prev.filled_area, prev.thick, prev.perimeter
                c.cover = c.n_bright / max(c.perimeter, 1.0)
                c.tex_step = c.excess / max(c.step, 1e-4)
            c.clipped_pass = clipped_pass
            c.score = _score(c, _clipped(c))
            if clipped_pass:
                c.score = max(c.score, _plateau_score(c))
            c.clipped_only = c.score >= ACCEPT_SCORE and _score(c, 0.0) < ACCEPT_SCORE
            if clipped_pass and c.border <= CLIPPED_PASS_MAX_BORDER:
                c.stem_score = _plateau_score(c, CLIPPED_STEM_LEV)
            if clipped_pass and (c.lev < CLIPPED_LEV[0] or c.border > CLIPPED_PASS_MAX_BORDER):
                # clipped but not far above bone (clipped bone as likely as metal), or along the
                # frame (burned-in labels and markers are clipped white too)
                c.score = 0.0
            cands.append(c)
    return cands, labels


def _zone_features(m: _Maps, lab: LabelArray, c: _Candidate, near_out: BoolArray, top: float,
                   clipped: bool = False) -> None:
    """Pixel and shape features of one candidate, on its bounding box. A ``clipped`` zone
    (pixels at the top level all round) has no texture: the band-pass there is edge ringing."""
    x0, y0, x1, y1 = c.bbox
    inside = lab[y0:y1, x0:x1] == c.label
    xs = m.xs[y0:y1, x0:x1][inside].astype(np.float64)
    t2 = m.tex[y0:y1, x0:x1][inside].astype(np.float64) ** 2 * (0.0 if clipped else 1.0)
    q2 = m.qmap[y0:y1, x0:x1][inside].astype(np.float64) ** 2
    gap = max(m.bone - m.soft, 1e-3)
    c.lev = (float(xs.mean()) - m.soft) / gap
    c.sat = float((xs >= top - 0.01).mean())
    c.excess = math.sqrt(max(float(t2.mean() - TEX_NOISE_SHARE * q2.mean()), 0.0))
    c.tex_step = c.excess / max(c.step, 1e-4)
    crop = cv2.copyMakeBorder(inside.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    edge = (crop > 0) & (cv2.erode(crop, np.ones((3, 3), np.uint8)) == 0)
    out = cv2.copyMakeBorder(near_out[y0:y1, x0:x1].astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0) > 0
    c.border = float(edge[out].sum()) / max(float(edge.sum()), 1.0)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outer = max(contours, key=len)
    filled = np.zeros_like(crop)
    cv2.drawContours(filled, [outer], -1, 1, -1)
    c.filled_area = int(filled.sum())
    c.thick = float(cv2.distanceTransform(filled, cv2.DIST_L2, 3).max())
    # the outline's length without the raggedness that noise gives it (one pixel tolerance)
    c.perimeter = float(cv2.arcLength(cv2.approxPolyDP(outer, 1.0, True), True))
    c.cover = c.n_bright / max(c.perimeter, 1.0)


# ----------------------------------------------------------------------------------------------
# Scoring


def _clipped(c: _Candidate) -> float:
    """0..1: how surely a zone is a clipped plateau far above bone - most of it at the image's
    top level, its mean well above the bone level, bright-sided all round, no texture.

    Processed radiographs clip metal to white. A cemented stem (its flat core narrowed by the
    bright cement mantle round it) and a prosthetic head (28-36 mm, under 300 working pixels once
    the edge band is off) then fail the size and thickness cues that keep bone out, though
    nothing else in a film looks like them; where bone itself is clipped, the bone level is near
    the top and the level cue fails. Zones accepted only through this are kept only where they
    are shaped like a cup, head or stem (``_analyse``)."""
    return (_ramp(c.lev, *CLIPPED_LEV) * _ramp(c.sat, *CLIPPED_SHARE) * _ramp(c.bright_frac, 0.95, 0.99)
            * _ramp(c.tex_step, 0.01, 0.005))


def _score(c: _Candidate, clipped: float = 0.0) -> float:
    """Metal-likeness of a zone, 0..1: every cue must hold (a product of ramps).

    * bright side of (nearly) all its edges, with such edges along much of its outline;
    * texture in excess of the noise small against its own edge step, and few holes (textured
      bone leaves speckles of non-flat pixels, metal only noise specks);
    * a plateau behind its edges (``curv``): no cortical ridge, no cortex still rising;
    * thick enough to be an implant body, with enough edge evidence;
    * not darker than typical bone (even where DRC has pulled metal down to the bone level of
      its surroundings, it stays near the image's bone level).

    Behind a large implant few photons arrive and the metal shows more quantum noise than
    anything else, so zones that are large, thick and bright-sided all round, or clearly above
    the bone level, are allowed more texture and holes."""
    if c.border > MAX_BORDER or c.filled_area <= 0:
        return 0.0
    if c.area < MIN_ZONE_PX and clipped < 1.0:
        return 0.0
    hole = 1.0 - c.area / c.filled_area
    big = _ramp(c.n_bright, 100.0, 200.0) * _ramp(c.thick, 10.0, 14.0) * _ramp(c.bright_frac, 0.88, 0.95)
    bright = _ramp(c.lev, 1.15, 1.4) * _ramp(c.bright_frac, 0.9, 0.97) * _ramp(c.thick, 8.0, 12.0)
    slack = max(big, bright)
    parts = (
        _ramp(c.bright_frac, 0.8, 0.95),
        _ramp(c.cover, COVER_BAD - 0.1 * bright, COVER_GOOD - 0.15 * bright),
        _ramp(c.tex_step, TEX_STEP_BAD + 0.01 * slack, TEX_STEP_GOOD + 0.01 * slack),
        _ramp(hole, 0.12 + 0.08 * slack, 0.04 + 0.08 * slack),
        _ramp(abs(c.curv - CURV_METAL), CURV_BAD, CURV_GOOD),
        _ramp(c.thick, 6.0 - 2.0 * clipped, 10.0 - 4.0 * clipped),
        _ramp(c.n_bright, 30.0, 80.0),
        _ramp(c.lev, LEV_BAD, LEV_GOOD),
    )
    return float(np.prod(parts))


def _plateau_score(c: _Candidate, lev_ramp: tuple[float, float] | None = None) -> float:
    """Metal-likeness of a zone of the clipped pass (``_Maps.clipped``), 0..1, without the
    bright-side and plateau cues of ``_score``.

    Nothing in the image is brighter than a clipped plateau, so no edge can have it on its dark
    side - yet edges nearby still sample into it (the marker wire of a cemented cup round the
    head, a cortex beside the neck), lowering its bright-side share, and the band of edge pixels
    inset round it bends the curvature cue. What is left to ask: far above bone and at the top
    level throughout (``CLIPPED_LEV``, ``CLIPPED_SHARE``), stepped down to along its outline, thick
    and solid."""
    hole = 1.0 - c.area / max(c.filled_area, 1)
    lev = CLIPPED_LEV if lev_ramp is None else lev_ramp
    return (_ramp(c.lev, *lev) * _ramp(c.sat, *CLIPPED_SHARE) * _ramp(c.cover, COVER_BAD, COVER_GOOD)
            * _ramp(hole, 0.12, 0.04) * _ramp(c.thick, 4.0, 6.0) * _ramp(c.n_bright, 30.0, 80.0))


# ----------------------------------------------------------------------------------------------
# Objects: accepted zones, merged, outlined and classified


def _select(cands: list[_Candidate], labels: list[LabelArray], shape: tuple[int, int]
            ) -> list[tuple[_Candidate, BoolArray]]:
    """Accepted candidates, best first, without repeats of one zone at several levels."""
    taken = np.zeros(shape, dtype=bool)
    out: list[tuple[_Candidate, BoolArray]] = []
    for c in sorted((c for c in cands if c.score >= ACCEPT_SCORE), key=lambda c: -c.score):
        x0, y0, x1, y1 = c.bbox
        zone = labels[c.level][y0:y1, x0:x1] == c.label
        if float(taken[y0:y1, x0:x1][zone].mean()) > 0.5:
            if not c.clipped_pass:
                continue
            # a clipped zone holds the whole clipped object where a flat zone may hold only the
            # part the band-pass left flat (a stem's core without the head on its neck): what it
            # adds is kept
            zone &= ~taken[y0:y1, x0:x1]
            if int(zone.sum()) < MIN_CLIPPED_ZONE_PX:
                continue
        full = np.zeros(shape, dtype=bool)
        full[y0:y1, x0:x1] = zone
        taken |= full
        out.append((c, full))
    return out


def _level(m: _Maps, mask: BoolArray) -> float:
    """An object's level: its median in bone-soft-tissue gaps above soft tissue, the unit
    ``_small_ball`` and the clipped passes judge "metal well above bone" in (the median, not the
    mean, so a rim of bone grown into the object does not pull it down)."""
    return (float(np.median(m.xs[mask])) - m.soft) / max(m.bone - m.soft, 1e-3)


@dataclass
class _Object:
    mask: BoolArray  # working scale
    score: float
    clipped_only: bool = False  # made only of zones accepted as clipped plateaus


def _objects(m: _Maps, accepted: list[tuple[_Candidate, BoolArray]]) -> list[_Object]:
    """Merge accepted zones that touch across an edge band, fill holes, and grow into the edge
    band up to the midpoint between the object's level and its surroundings'."""
    if not accepted:
        return []
    h, w = m.xs.shape
    union = np.zeros((h, w), dtype=np.uint8)
    score_map = np.zeros((h, w), dtype=np.float32)
    firm = np.zeros((h, w), dtype=bool)
    for c, zone in accepted:
        union[zone] = 1
        score_map[zone] = np.maximum(score_map[zone], np.float32(c.score))
        if not c.clipped_only:
            firm |= zone
    bridged = np.asarray(cv2.morphologyEx(union, cv2.MORPH_CLOSE, _disk(MERGE_GAP_PX // 2 + 1)), dtype=np.uint8) | union
    n, lab, st, _ = cv2.connectedComponentsWithStats(bridged, connectivity=8)
    out: list[_Object] = []
    for k in range(1, n):
        x0, y0, bw, bh, _ = (int(v) for v in st[k])
        pad = 8
        X0, Y0, X1, Y1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x0 + bw + pad), min(h, y0 + bh + pad)
        comp = (lab[Y0:Y1, X0:X1] == k).astype(np.uint8)
        core = (comp & union[Y0:Y1, X0:X1]) > 0
        if not core.any():
            continue
        contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        filled = np.zeros_like(comp)
        cv2.drawContours(filled, contours, -1, 1, -1)
        xs = m.xs[Y0:Y1, X0:X1]
        inner = float(np.median(xs[core]))
        ring = (cv2.dilate(filled, _disk(7)) > 0) & (cv2.dilate(filled, _disk(4)) == 0)
        outer = float(np.median(xs[ring])) if ring.any() else inner
        grown = (cv2.dilate(filled, _disk(4)) > 0) & ((xs >= 0.5 * (inner + outer)) | (filled > 0))
        grown &= m.exposed[Y0:Y1, X0:X1]
        _, glab = cv2.connectedComponents(grown.astype(np.uint8), connectivity=8)
        keep = np.unique(glab[core & grown])
        full = np.zeros((h, w), dtype=bool)
        full[Y0:Y1, X0:X1] = np.isin(glab, keep[keep > 0])
        out.append(_Object(full, float(score_map[Y0:Y1, X0:X1][core].max()),
                           not bool(firm[Y0:Y1, X0:X1][core].any())))
    return out


def _axis_profile(mask: BoolArray, outside: BoolArray | None = None) -> tuple[float, float, float, float, bool]:
    """Length and mean width along the principal axis, the widths of the first and last thirds
    (a taper), and whether the wider end touches ``outside`` (image frame or shutter)."""
    ys, xs = np.nonzero(mask)
    if xs.size < 5:
        return 0.0, 0.0, 0.0, 0.0, False
    pts = np.stack([xs, ys], 1).astype(np.float64)
    rel = pts - pts.mean(0)
    _, evecs = np.linalg.eigh(rel.T @ rel)
    t = rel @ evecs[:, 1]
    lo, hi = float(t.min()), float(t.max())
    length = hi - lo + 1.0
    third = max((hi - lo) / 3.0, 1.0)
    first, last = t <= lo + third, t >= hi - third
    a, b = float(first.sum()) / third, float(last.sum()) / third
    cut = False
    if outside is not None:
        wide = first if a >= b else last
        cut = bool(outside[ys[wide], xs[wide]].any())
    return length, xs.size / length, a, b, cut


@dataclass
class _Part:
    mask: BoolArray
    kind: str
    score: float
    has_ball: bool = True  # a stem: cut from an object with its ball, or bulging into one
    clipped_only: bool = False  # from an object made only of clipped plateaus


def _classify(obj: _Object, long_side: int, mm_per_px: float | None, outside: BoolArray,
              lev: float = 0.0, min_ball_lev: float | None = None) -> list[_Part]:
    """Split an object into a ball (cup or head) and a stem where a narrow neck joins them
    (an opening by ~0.45 of the ball's inscribed radius cuts the prosthetic neck and keeps the
    stem's body), and name the parts."""
    ys, xs = np.nonzero(obj.mask)
    if xs.size == 0:
        return []
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    pad = 2
    crop = np.pad(obj.mask[y0:y1, x0:x1], pad).astype(np.uint8)
    dist = np.asarray(cv2.distanceTransform(crop, cv2.DIST_L2, 3), dtype=np.float32)
    r_in = float(dist.max())
    cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
    ro = max(2, round(0.45 * r_in))
    n, lab_any = cv2.connectedComponents(cv2.morphologyEx(crop, cv2.MORPH_OPEN, _disk(ro)), connectivity=8)
    lab = np.asarray(lab_any, dtype=np.int32)
    pieces: list[tuple[NDArray[np.uint8], bool]] = [(crop, True)]
    split = False
    ball_label = int(lab[cy, cx])
    if n > 2 and ball_label > 0:
        cut = _cut_ball(crop, lab, ball_label, ro, r_in)
        if cut is not None:
            pieces, split = [(cut[0], True), (cut[1], False)], True
    small = False
    if not split and lev >= (SMALL_BALL_MIN_LEV if min_ball_lev is None else min_ball_lev):
        cut = _small_ball(crop, dist, r_in)
        if cut is not None:
            pieces, split, small = [(cut[0], True), (cut[1], False)], True, True
    out: list[_Part] = []
    for piece, maybe_ball in pieces:
        full = np.zeros_like(obj.mask)
        full[y0:y1, x0:x1] = piece[pad:-pad, pad:-pad] > 0
        kind = _name(full, maybe_ball, split, long_side, mm_per_px, outside)
        if small and kind == "cup":
            # a head with no metal cup round it (a cemented cup): narrower than the stem, or on a
            # neck too wide for the usual cut; a metal cup round the head, wider than any neck, is
            # cut there already
            kind = "head"
        out.append(_Part(full, kind, obj.score, split or _has_bulb(piece), obj.clipped_only))
    return out


def _cut_ball(crop: NDArray[np.uint8], lab: NDArray[np.int32], label: int, ro: int, r_ball: float,
              whole_rest: bool = False) -> tuple[NDArray[np.uint8], NDArray[np.uint8]] | None:
    """The ball (component ``label`` of the opened object, grown back by ``ro``) and the stem
    (the largest part left once it is cut off), where the ball is round and the stem long and
    narrow; None otherwise. ``whole_rest``: the stem must be all that is left (a ball at the end
    of the object, not a knot where a nail and its lag screw cross)."""
    ball = np.asarray(cv2.dilate((lab == label).astype(np.uint8), _disk(ro)), dtype=np.uint8) & crop
    rest = crop & (ball == 0)
    nr, rlab, rst, _ = cv2.connectedComponentsWithStats(rest, connectivity=8)
    if nr <= 1:
        return None
    areas = sorted((int(a) for a in rst[1:, cv2.CC_STAT_AREA]), reverse=True)
    if whole_rest and len(areas) > 1 and areas[1] > SMALL_BALL_MAX_SPARE * areas[0]:
        return None
    stem = (rlab == 1 + int(np.argmax(rst[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    length, width, _, _, _ = _axis_profile(stem > 0)
    b_len, b_width, _, _, _ = _axis_profile(ball > 0)
    # the ball must itself be ball-like: on a sliding hip screw or a nail with its lag screw the
    # thickest part is the barrel or the nail, and cutting there made two "stems" of a fixation
    # device (an arthroplasty finding on hardware)
    if b_len <= BALL_MAX_ELONGATION * max(b_width, 1.0) and length >= 2.0 * r_ball and length >= 2.5 * width:
        return ball, stem
    return None


def _is_round(mask: BoolArray) -> bool:
    """Whether a part fills at least ``BALL_MIN_ROUNDNESS`` of its enclosing circle: a ball, not
    the block the overlapping ends of screws make."""
    pts = np.stack(np.nonzero(mask)[::-1], 1).astype(np.float32)
    _, r_enc = cv2.minEnclosingCircle(pts)
    return float(mask.sum()) >= BALL_MIN_ROUNDNESS * math.pi * r_enc * r_enc


def _small_ball(crop: NDArray[np.uint8], dist: NDArray[np.float32], r_in: float
                ) -> tuple[NDArray[np.uint8], NDArray[np.uint8]] | None:
    """A ball the usual cut in ``_classify`` missed: first one that is not the object's thickest
    part, a prosthetic head on a neck above a stem whose shoulder is wider than the head (a
    cemented cup leaves the head on its own, and a broad stem's shoulder outgrows a 28 mm head).
    Deeper openings (``SMALL_BALL_OPENINGS`` of the thickest part's inscribed radius) cut the
    neck; a part they leave that is not the thickest, is round (``BALL_MIN_ROUNDNESS``) and cuts
    off from a stem at least twice its radius long (``_cut_ball``) is the ball. Failing that, the
    thickest part itself is tried the same way: a head can be the thickest part and still sit on
    a neck too wide (over 0.45 of its radius) for the cut in ``_classify``."""
    thick_at = np.unravel_index(int(np.argmax(dist)), dist.shape)
    for frac, own in ((f, o) for o in (False, True) for f in SMALL_BALL_OPENINGS):
        ro = max(2, round(frac * r_in))
        n, lab_any = cv2.connectedComponents(cv2.morphologyEx(crop, cv2.MORPH_OPEN, _disk(ro)), connectivity=8)
        lab = np.asarray(lab_any, dtype=np.int32)
        if n <= 2:
            continue
        thickest = int(lab[thick_at])
        for k in sorted(range(1, n), key=lambda k: -float(dist[lab == k].max())):
            if (k == thickest) != own:
                continue
            piece = lab == k
            if not _is_round(piece):
                continue
            r_b = float(dist[piece].max())
            cut = _cut_ball(crop, lab, k, ro, r_b, whole_rest=True)
            if cut is None:
                continue
            # a head sits on a neck: where it is cut off the metal is much narrower than the head
            # (a nail's end beyond its lag screw is cut off at the nail's full width)
            seam = (cv2.dilate(cut[0], np.ones((3, 3), np.uint8)) > 0) & (cut[1] > 0)
            if seam.any() and float(dist[seam].max()) <= SMALL_BALL_MAX_NECK * r_b:
                return cut
    return None


def _has_bulb(piece: NDArray[np.uint8]) -> bool:
    """Whether an elongated piece carries a ball: its largest inscribed circle is much wider
    than the piece is on average (a cup or head on a stem), not just its widest stretch."""
    length, width, _, _, _ = _axis_profile(piece > 0)
    r_in = float(cv2.distanceTransform(piece, cv2.DIST_L2, 3).max())
    return length > 0 and r_in >= BULB_RATIO * 0.5 * width


def _bbox(mask: BoolArray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _within_reach(a: tuple[int, int, int, int], b: tuple[int, int, int, int], reach: float) -> bool:
    """Whether boxes ``a`` and ``b`` (x0, y0, x1, y1) come within ``reach`` of each other."""
    return (b[0] - reach <= a[2] and a[0] <= b[2] + reach
            and b[1] - reach <= a[3] and a[1] <= b[3] + reach)


def _stems_need_a_ball(parts: list[_Part]) -> None:
    """A femoral stem carries a head. A stem-shaped part with no ball of its own (neither cut
    from one nor bulging into one) and no cup or head next to it is some other elongated thing
    - on phantoms a femoral shaft, a ramus, or the lifted contralateral femur of a lateral - and
    is renamed "other"."""
    balls = [_bbox(p.mask) for p in parts if p.kind in ("cup", "head")]
    for p in parts:
        if p.kind != "stem" or p.has_ball:
            continue
        box = _bbox(p.mask)
        reach = 0.5 * max(box[2] - box[0], box[3] - box[1])
        if not any(_within_reach(box, ball, reach) for ball in balls):
            p.kind = "other"


def _name(mask: BoolArray, maybe_ball: bool, split: bool, long_side: int, mm_per_px: float | None,
          outside: BoolArray) -> str:
    """Kind of one part by shape and by size relative to the image (a cup is 10-18 % of an AP
    pelvis, a larger share of a single-hip view), cross-checked in mm when the spacing is known."""
    area = int(mask.sum())
    if area == 0:
        return "other"
    pts = np.stack(np.nonzero(mask)[::-1], 1).astype(np.float32)
    _, r_enc = cv2.minEnclosingCircle(pts)
    d_rel = 2.0 * r_enc / long_side
    d_mm = 2.0 * r_enc * mm_per_px if mm_per_px is not None else None
    length, width, a, b, wide_cut = _axis_profile(mask, outside)
    elong = length / max(width, 1.0)
    if maybe_ball and elong < 2.2:
        if 0.05 <= d_rel <= 0.45 and (d_mm is None or 18.0 <= d_mm <= 90.0):
            # a cup (with its head) is a half disc and a half ellipse; a lone head a full disc
            circ = area / (math.pi * r_enc * r_enc)
            return "head" if circ >= 0.86 and not split else "cup"
        return "other"
    len_rel = length / long_side
    if elong >= 2.5 and len_rel >= 0.12:
        # a femoral stem tapers and is at most some 20 cm long; an intramedullary nail is a long
        # rod of nearly constant width
        if split:
            return "stem"
        if wide_cut:
            return "other"  # its wide end leaves the image: not a stem seen from its head down
        taper = max(a, b) / max(min(a, b), 1.0)
        return "stem" if taper >= 1.15 or len_rel < 0.45 else "nail"
    if elong >= 4.0 and width / long_side < 0.015:
        return "wire" if len_rel > 0.1 else "screw"
    return "other"


# ----------------------------------------------------------------------------------------------
# Public API


def _arthroplasty_mask(parts: Sequence[_Part], shape: tuple[int, int]) -> BoolArray:
    """The pixels of the parts already named a cup, stem or head: later passes add only where
    none was found."""
    found = np.zeros(shape, dtype=bool)
    for p in parts:
        if p.kind in ARTHROPLASTY_KINDS:
            found |= p.mask
    return found


def _with_clipped_parts(parts: list[_Part], m: _Maps, cands: list[_Candidate], labels: list[LabelArray],
                        long_side: int, mm_per_px: float | None, outside: BoolArray,
                        min_ball_lev: float | None = None, pair_apart: bool = False) -> list[_Part]:
    """``parts`` with the stems (and the heads or cups cut from them) that the clipped zones
    (``_Maps.clipped``) reveal, where no cup, head or stem was found already. (The caller also
    runs it where an object of no recognised shape was dropped: its flat zones are then named
    again, this time knowing their level, which ``_small_ball`` needs.)

    Why only those: a clipped zone also takes in bone clipped as white as the metal beside it,
    which would move the outline of a cup already found (the cup fit starts from it); and metal of
    no recognised shape adds only doubt. What it finds is a prosthesis whose head the flat zones
    missed: the object is cut where a head smaller than the stem's shoulder sits on its neck
    (``_small_ball``, in metal well above the bone level), and replaces the parts it covers.
    ``pair_apart``: objects that are neither also get their chance in pairs (``_paired``)."""
    found = _arthroplasty_mask(parts, m.xs.shape)
    objs = _objects(m, _select(cands, labels, m.xs.shape))
    groups = [_classify(o, long_side, mm_per_px, outside, _level(m, o.mask), min_ball_lev) for o in objs]
    _stems_need_a_ball([p for g in groups for p in g])
    new: list[_Part] = []
    loose: list[_Object] = []
    for o, g in zip(objs, groups, strict=True):
        pieces = [p for p in g if p.kind in ARTHROPLASTY_KINDS and not (p.mask & found).any()]
        if _a_stem_and_its_ball(pieces):
            new += pieces
        else:
            loose.append(o)
    if pair_apart:
        paired = _paired(loose, m, long_side, mm_per_px, outside, min_ball_lev)
        new += [p for p in paired if not (p.mask & found).any()]
    if not new:
        return parts
    covered = np.zeros(m.xs.shape, dtype=bool)
    for p in new:
        covered |= p.mask
    return [p for p in parts if not (p.mask & covered).any()] + new


def _paired(loose: list[_Object], m: _Maps, long_side: int, mm_per_px: float | None, outside: BoolArray,
            min_ball_lev: float | None) -> list[_Part]:
    """A stem and its ball that made two objects, named as one: two objects within reach of each
    other (half the larger one's long side) are classified together, and their parts kept where
    that cuts a ball off a stem (``_a_stem_and_its_ball``).

    Why: a cemented prosthesis's neck is too thin for a flat zone of its own, so its head (with
    the neck's stub) and its stem are separate objects, one a ball and the other a stem with no
    ball, or the head and neck one lump of no recognised shape; each alone is no prosthesis. Both
    are tried as they are (the usual cut in ``_classify`` takes a ball off across a gap) and joined
    where a few pixels apart (``MERGE_GAP_PX``: ``_small_ball`` cuts only at a neck it can see)."""
    out: list[_Part] = []
    used: set[int] = set()
    boxes = [_bbox(o.mask) for o in loose]
    for i, j in itertools.combinations(range(len(loose)), 2):
        if i in used or j in used:
            continue
        reach = 0.5 * max(max(bx[2] - bx[0], bx[3] - bx[1]) for bx in (boxes[i], boxes[j]))
        if not _within_reach(boxes[i], boxes[j], reach):
            continue
        a, b = loose[i], loose[j]
        both = (a.mask | b.mask).astype(np.uint8)
        closed = cv2.morphologyEx(both, cv2.MORPH_CLOSE, _disk(MERGE_GAP_PX // 2 + 1))
        joined = np.asarray(closed, dtype=np.uint8)
        for mask in (both > 0, (joined | both) > 0):
            union = _Object(mask, min(a.score, b.score), a.clipped_only and b.clipped_only)
            parts = [p for p in _classify(union, long_side, mm_per_px, outside, _level(m, mask), min_ball_lev)
                     if p.kind in ARTHROPLASTY_KINDS]
            if _a_stem_and_its_ball(parts):
                out += parts
                used |= {i, j}
                break
    return out


def _a_stem_and_its_ball(pieces: Sequence[_Part]) -> bool:
    """Whether clipped-zone parts may be added: only a stem with the ball cut from it. A clipped
    block alone (the overlapping ends of cannulated screws in a femoral head) is of a cup's size
    and would be named one, and a stem merely bulging (the barrel and lag screw of a sliding hip
    screw) is no prosthesis."""
    return any(p.kind == "stem" for p in pieces) and any(p.kind in ("cup", "head") for p in pieces)


def _low_clipped_prostheses(parts: list[_Part], m: _Maps, cands: list[_Candidate], labels: list[LabelArray],
                            long_side: int, mm_per_px: float | None, outside: BoolArray) -> list[_Part]:
    """``parts`` with the prostheses (a stem and the ball cut from it, ``_with_clipped_parts``)
    that clipped zones below ``CLIPPED_LEV`` but within ``CLIPPED_STEM_LEV`` show, and flat zones
    from that band up too thin or small for ``_score`` (``_thin_score``); a stem and a ball that
    made separate objects are named together (``_paired``).

    Why: where a film renders bone bright, clipped metal lies only a little above the bone level
    in units of the soft-tissue/bone gap, and the clipped pass's level cue drops it - on an
    independently written renderer's films a cemented stem with its head, white to the last
    pixel, gave no metal at all. Bone clipped as white as the metal is why that cue exists; only
    the silhouette of a stem carrying its ball, which bone does not have, lets the zone through
    (the head may then be cut off its neck down to the same level, ``SMALL_BALL_MIN_LEV``)."""
    low = [replace(c, score=c.stem_score) for c in cands
           if c.clipped_pass and c.score < ACCEPT_SCORE and c.stem_score >= ACCEPT_SCORE]
    thin = [replace(c, score=s) for c in cands
            if not c.clipped_pass and (s := _thin_score(c)) >= ACCEPT_SCORE]
    if not low and not thin:
        return parts
    return _with_clipped_parts(parts, m, low + thin, labels, long_side, mm_per_px, outside,
                               CLIPPED_STEM_LEV[0], pair_apart=True)


def _thin_score(c: _Candidate) -> float:
    """Metal-likeness of a flat zone (not of the clipped pass) from ``CLIPPED_STEM_LEV`` up, 0..1,
    with a clipped plateau's bars on size and thickness (``MIN_CLIPPED_ZONE_PX``, ``_plateau_score``)
    instead of ``_score``'s: bright-sided all round, textureless, solid, a plateau behind its edges.

    Why: a film need not clip metal to be white. Unclipped, a cemented stem's flat core, narrowed
    by its bright mantle (7-8 working pixels thick), and a 28 mm head (under ``MIN_ZONE_PX``) fail
    ``_score`` though they lie as far above bone as clipped metal (dev sketch 424390:56, 1.4 gaps
    above soft tissue: head and stem scored 0 and 0.41, and the finder saw nothing). Like the low
    clipped zones they are kept only as a stem carrying its ball."""
    if c.clipped_pass or c.border > MAX_BORDER or c.filled_area <= 0 or c.area < MIN_CLIPPED_ZONE_PX:
        return 0.0
    hole = 1.0 - c.area / c.filled_area
    return float(np.prod((
        _ramp(c.lev, *CLIPPED_STEM_LEV), _ramp(c.bright_frac, 0.95, 0.99), _ramp(c.tex_step, 0.01, 0.005),
        _ramp(hole, 0.12, 0.04), _ramp(c.cover, COVER_BAD, COVER_GOOD), _ramp(c.thick, 4.0, 6.0),
        _ramp(c.n_bright, 30.0, 80.0), _ramp(abs(c.curv - CURV_METAL), CURV_BAD, CURV_GOOD))))


def _silhouette_score(c: _Candidate) -> float:
    """How cleanly a zone of the clipped pass is one plateau at the image's top level, 0..1: all
    of it clipped (``CLIPPED_SHARE``), never the dark side of an edge, solid and thick - with no
    level cue (``CLIPPED_LEV``) and no edge cover, which ``_plateau_score`` asks for."""
    if not c.clipped_pass or c.border > CLIPPED_PASS_MAX_BORDER or c.filled_area <= 0:
        return 0.0
    hole = 1.0 - c.area / c.filled_area
    return float(np.prod((_ramp(c.sat, *CLIPPED_SHARE), _ramp(c.bright_frac, 0.95, 0.99),
                          _ramp(hole, 0.12, 0.04), _ramp(c.thick, 4.0, 6.0))))


def _clipped_silhouettes(parts: list[_Part], m: _Maps, cands: list[_Candidate], labels: list[LabelArray],
                         long_side: int, mm_per_px: float | None, outside: BoolArray) -> list[_Part]:
    """``parts`` with the prostheses that clipped plateaus show by their outline alone, where the
    level and edge cues fail: a stem with the ball cut from it at a thin neck (``_classify``'s
    usual cut; no ``_small_ball``), or a lone ball - one round part (``BALL_MIN_ROUNDNESS``) of a
    cup's or head's size (``_name``) - where no cup, head or stem was found.

    Why: on films that render bone nearly as white as metal (the bone level at 0.96-1.0 of the
    range, e.g. a lateral whose pelvis overlaps the joint) a prosthesis is one white plateau
    only 1.0-1.1 bone-soft-tissue gaps above soft tissue, and its edges against bright bone and
    cement are too weak for the edge cues; on an independently written renderer's films (dev
    sketch 424420-424740, 5,800 films) the finder saw no cup, head or stem on 99 of 409 lateral
    prosthesis films, plain to the eye; this step finds 11 of them (and 2 AP films) and adds
    nothing to the 2,740 films there without an arthroplasty. Without the level cue only the
    outline tells metal from clipped bone: a femur's neck is too thick for the cut, and the
    overlapping ends of screws make a clipped block, not a round ball."""
    sil = [replace(c, score=s) for c in cands
           if c.clipped_pass and c.score < ACCEPT_SCORE and c.stem_score < ACCEPT_SCORE
           and (s := _silhouette_score(c)) >= ACCEPT_SCORE]
    if not sil:
        return parts
    parts = _with_clipped_parts(parts, m, sil, labels, long_side, mm_per_px, outside, math.inf)
    found = _arthroplasty_mask(parts, m.xs.shape)
    for o in _objects(m, _select(sil, labels, m.xs.shape)):
        group = _classify(o, long_side, mm_per_px, outside, _level(m, o.mask), math.inf)
        if len(group) != 1 or group[0].kind not in ("cup", "head") or (group[0].mask & found).any():
            continue
        ball = group[0].mask
        if not _is_round(ball):
            continue
        parts = [p for p in parts if not (p.mask & ball).any()] + [group[0]]
        found |= ball
    return parts


def _plausible_spacing(pixel_spacing_mm: float | None) -> float | None:
    """The spacing when it can be a real one: 0.05-1.0 mm, and not the 1.0 placeholder."""
    if pixel_spacing_mm is None or not math.isfinite(pixel_spacing_mm):
        return None
    if not 0.05 <= pixel_spacing_mm < 1.0:
        return None
    return float(pixel_spacing_mm)


def _to_full(p: _Part, work: _Work, m: _Maps) -> MetalObject | None:
    mask = p.mask.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    outer = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    ox, oy = work.to_full(outer[:, 0], outer[:, 1])
    ys, xs = np.nonzero(mask)
    # working pixel i covers [i - 0.5, i + 0.5]
    bx, by = work.to_full(np.array([xs.min() - 0.5, xs.max() + 0.5]), np.array([ys.min() - 0.5, ys.max() + 0.5]))
    conf = 0.5 + 0.5 * _ramp(p.score, ACCEPT_SCORE, 1.0)
    box = Box(float(bx[0]), float(by[0]), float(bx[1]), float(by[1]), _LABEL_OF_KIND.get(p.kind, "other_hardware"), conf)
    gap = max(m.bone - m.soft, 1e-3)
    contrast = (float(np.median(m.xs[p.mask])) - m.bone) / gap
    return MetalObject(box, p.kind, round(xs.size / (work.sx * work.sy)), np.stack([ox, oy], 1), contrast)


def _analyse(image01: np.ndarray, pixel_spacing_mm: float | None = None
             ) -> tuple[MetalEvidence, _Maps, list[_Candidate]]:
    """``find_metal`` with its internals (maps, scored candidates) for inspection."""
    img = np.asarray(image01, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 16:
        raise ValueError(f"find_metal needs a 2-D image of at least 16 x 16 pixels, got shape {img.shape}")
    work = _working_copy(img)
    # after the reduction: a pass over a 3000-px image costs more than the whole analysis
    work = _Work(np.clip(np.nan_to_num(work.img), 0.0, 1.0).astype(np.float32), work.sx, work.sy)
    m = _maps(work.img)
    gap = m.bone - m.soft
    threshold = m.soft + LEV_BAD * gap
    exposed_frac = float(m.exposed.mean())
    if gap < MIN_GAP or exposed_frac < MIN_EXPOSED:
        why = (f"unreliable: no usable soft-tissue/bone separation (gap {gap:.3f})" if gap < MIN_GAP
               else f"unreliable: exposed field only {exposed_frac:.0%} of the image")
        return MetalEvidence((), m.soft, m.bone, threshold, False, why), m, []
    cands, labels = _candidates(m, _edges(m))
    spacing = _plausible_spacing(pixel_spacing_mm)
    mm_work = None if spacing is None else spacing / work.sx
    outside = cv2.dilate((~m.exposed).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    long_side = max(m.xs.shape)
    flat_zones = [c for c in cands if not c.clipped_pass]
    # each object's level goes with it, as on the clipped pass: a cemented prosthesis's head on its
    # long neck is cut off by ``_small_ball`` (only in metal well above bone) whether or not the
    # film clipped it, where before a flat-zone object got no such cut and stayed "other"
    parts = [p for o in _objects(m, _select(flat_zones, labels, m.xs.shape))
             for p in _classify(o, long_side, mm_work, outside, _level(m, o.mask))]
    _stems_need_a_ball(parts)
    # a clipped plateau that is no cup, head or stem is left out: it is admitted for those shapes
    # (``_clipped``), and "metal of no recognised shape" there would only add doubt
    kept = [p for p in parts if not p.clipped_only or p.kind in ARTHROPLASTY_KINDS]
    if len(kept) < len(parts) or any(c.clipped_pass and c.score >= ACCEPT_SCORE for c in cands):
        # a clipped plateau of no recognised shape, or a clipped zone: a head on its neck may be
        # cut off it (``_small_ball``) on the second pass
        parts = _with_clipped_parts(kept, m, cands, labels, long_side, mm_work, outside)
    else:
        parts = kept
    parts = _low_clipped_prostheses(parts, m, cands, labels, long_side, mm_work, outside)
    parts = _clipped_silhouettes(parts, m, cands, labels, long_side, mm_work, outside)
    found = [mo for mo in (_to_full(p, work, m) for p in parts) if mo is not None]
    found.sort(key=lambda o: -o.box.score)
    kinds = ", ".join(f"{o.kind} {o.box.score:.2f}" for o in found) or "none"
    note = f"{len(found)} metal object(s): {kinds}; levels soft {m.soft:.2f} bone {m.bone:.2f}"
    return MetalEvidence(tuple(found), m.soft, m.bone, threshold, True, note), m, cands


def find_metal(image01: np.ndarray, pixel_spacing_mm: float | None = None) -> MetalEvidence:
    """Metal objects in a radiograph, in full-resolution pixels.

    ``image01``: 2-D float 0..1 with bone and metal bright (``node.pixels.normalise``), any size
    (analysed at a long side of ``WORK_PX``). ``pixel_spacing_mm`` only cross-checks sizes and is
    ignored unless plausible (0.05-1.0 mm; 1.0 itself is the common placeholder)."""
    return _analyse(image01, pixel_spacing_mm)[0]


def near_joint(box: Box, joint: Box) -> bool:
    """Whether ``box`` reaches the hip joint: it meets the joint box grown by ``JOINT_REACH`` of
    the joint's larger side all round. A cup and a head sit in the joint and a stem's top at it;
    a "cup" by the spine or a "stem" in the flank is something else (phantoms: a vertebra with
    bowel gas read as cup and stem)."""
    pad = JOINT_REACH * max(joint.width, joint.height)
    return (box.x0 <= joint.x1 + pad and joint.x0 - pad <= box.x1
            and box.y0 <= joint.y1 + pad and joint.y0 - pad <= box.y1)


def _object_kind(o: MetalObject, joint: Box | None, ap_view: bool, side: Side | None = None) -> str:
    """An object's kind as the side's evidence counts it: a cup, stem or head that does not reach
    the side's joint, and on an AP view a "stem" above it or medial of it (``STEM_MAX_RISE``,
    ``STEM_MAX_MEDIAL``; medial needs the ``side``) and a cup or head well above or below it
    (``BALL_MAX_DROP``), count as "other" (see ``arthroplasty_evidence``)."""
    kind = o.kind
    if kind in ARTHROPLASTY_KINDS and joint is not None and not near_joint(o.box, joint):
        kind = "other"
    if not ap_view or joint is None:
        return kind
    centre, middle = o.box.centre, joint.centre
    if kind == "stem" and centre.y < middle.y - STEM_MAX_RISE * joint.height:
        kind = "other"
    if kind == "stem" and side is not None:
        medial = 1.0 if side is Side.RIGHT else -1.0
        if medial * (centre.x - middle.x) > STEM_MAX_MEDIAL * joint.width:
            kind = "other"
    if kind in ("cup", "head") and abs(centre.y - middle.y) > BALL_MAX_DROP * joint.height:
        kind = "other"
    return kind


def arthroplasty_evidence(evidence: MetalEvidence, side_of: Callable[[Box], Side], side: Side,
                          joint: Box | None = None, ap_view: bool = False) -> float:
    """0..1: how strongly the metal on ``side`` looks like a hip arthroplasty.

    A cup, stem or prosthetic head (sizes checked by the classifier) gives 0.9-1.0 with its
    confidence; metal of no recognised shape 0.25-0.45 (worth a second look, not enough on its
    own); nails, plates, screws and wires 0 (hardware, not an arthroplasty); no metal 0.
    ``side_of`` assigns a box to a patient side (nearest hip joint, else the image half). When
    the side's hip ``joint`` box is known, metal that does not reach it (``near_joint``) counts
    nothing, whatever its shape: a vertebral body or a marker on that half of the film is no doubt
    about the hip's arthroplasty. (On an independently written renderer's films, dev sketch seeds
    424240-424410, flat white vertebral bodies counted 0.45 and held up the models' weak claim on
    3 native hips, each reported as an arthroplasty; on 8,037 dev sides of three styles no
    decision on an arthroplasty side changed.) On an AP view (``ap_view``) a "stem" that lies
    above the joint or medial of it (``STEM_MAX_RISE``, ``STEM_MAX_MEDIAL``) counts as metal of no
    recognised shape: a stem goes down the femur; and so does a cup or head well above or below
    it (``BALL_MAX_DROP``): both sit in the joint."""
    best = 0.0
    for o in evidence.objects:
        if side_of(o.box) is not side:
            continue
        t = (o.box.score - 0.5) / 0.5
        kind = _object_kind(o, joint, ap_view, side)
        if kind in ARTHROPLASTY_KINDS:
            v = 0.9 + 0.1 * t
        elif kind == "other" and joint is not None and not near_joint(o.box, joint):
            v = 0.0  # metal away from the hip says nothing about an arthroplasty of that hip
        elif kind == "other":
            v = 0.25 + 0.2 * t
        else:
            v = 0.0
        best = max(best, float(np.clip(v, 0.0, 1.0)))
    return best


def is_straight_bar(o: MetalObject) -> bool:
    """Whether the object's outline is a straight parallel-sided bar (``BAR_MIN_FILL``,
    ``BAR_MIN_ELONGATION``): fixation hardware, never a cup, stem or head."""
    if o.outline.shape[0] < 3:
        return False
    c = o.outline.astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(c)
    long_side, short_side = max(w, h), min(w, h)
    if short_side < 1.0:
        return False
    fill = float(cv2.contourArea(c)) / (w * h)
    return fill >= BAR_MIN_FILL and long_side / short_side >= BAR_MIN_ELONGATION


def fixation_bars(evidence: MetalEvidence, side_of: Callable[[Box], Side], side: Side,
                  joint: Box | None = None, ap_view: bool = False) -> list[MetalObject]:
    """The straight bars (``is_straight_bar``) on ``side`` that are not counted as a cup, stem or
    head and reach the side's ``joint`` when it is known: screws or a nail at the hip. The fusion
    weighs them against a model's arthroplasty claim (``node.infer.fusion``)."""
    return [o for o in evidence.objects
            if side_of(o.box) is side and _object_kind(o, joint, ap_view, side) not in ARTHROPLASTY_KINDS
            and (joint is None or near_joint(o.box, joint)) and is_straight_bar(o)]


def arthroplasty_objects(evidence: MetalEvidence, side_of: Callable[[Box], Side], side: Side,
                         joint: Box | None = None, ap_view: bool = False) -> list[MetalObject]:
    """The objects on ``side`` that ``arthroplasty_evidence`` counts as a cup, stem or head: the
    fusion checks where they lie (on fracture hardware the detector boxed, say)."""
    return [o for o in evidence.objects
            if side_of(o.box) is side and _object_kind(o, joint, ap_view, side) in ARTHROPLASTY_KINDS]
