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
minor axis. Here the silhouette is split: the dome circle (tangent to the cup box's superior and
medial edges, or found by RANSAC; refitted to the outward-facing edge points on it) gives a prior
for the ellipse's centre and semi-major axis, and its gap (the open side) the direction of the
minor axis to within ±22°. A grid search over axis ratio and angle scores open-half ellipses by
the bright-inside step along them; a robust orthogonal-distance fit of all five parameters to the
edge points near the best one follows, with the dome's prior at half the rim points' weight (the
dome's centre is itself uncertain by about a pixel, and that error would go straight into the
minor axis). The back half of the rim, seen through the dome (one wall inside the ellipse, two
outside), joins the fit where it shows.

The femoral head is a bright disc nearly concentric with the shell (0.45–0.75 of its radius).
Where the rim is flatter than the head is round the head bulges past the rim and its outline,
a stronger step of the same polarity, would pass for the rim: it is found (a circle over a long
arc on the open side) and its outline is no evidence for the rim, neither in the search nor in
the fit. Neck and stem edges do not lie on any ellipse near the dome's centre and major axis.

Under a point source the rim ellipse is *not* centred on the dome circle: a circle tilted towards
the source projects to an ellipse pulled towards the central ray (by up to 1–1.5 px for a cup
10–15 cm off it) and ~0.5 % shorter than the sphere's outline. The prior is therefore the exact
projection of the rim circle of the sphere that casts the dome outline, for the cup axis of the
current fit (``rim_ellipse_prior``); tying the rim to the dome's own centre biased anteversion by
−0.5…−1° at 20–35°.

Other designs
-------------
*Heads that fill the shell* (metal-on-metal large heads, resurfacing caps: 0.8–0.95 of the
shell's radius) cover the whole rim but its ends; what shows on the open side is the head's
outline, and a resurfacing cap's cut edge, which is a half-ellipse much like a rim. Two checks
that hold for every design catch them instead of a rule per design: such a head's outline is a
circle concentric with the dome running just inside *both* ends of the opening, where a real rim
bends away from the dome and crosses each radius once (``_filling_head``: refused, saying so);
and a rim meets the dome at both ends of its long axis, where it is the shell's outline and must
be seen (``_rim_end_coverage``: an "opening" whose ends do not show is another outline). The
fitted rim's ends must also lie in the cup box (``_outside_box``).

*Cemented all-polyethylene cups* have no metal outline: the polyethylene is radiolucent and the
"dome" is the bone-like cement mantle. Their orientation shows only by the marker wire, which is
looked for first on AP views (``find_marker_wire``): a ring round the opening gives the opening's
ellipse directly (read as a rim, point source included); an arc over the dome is half a great
circle whose ends lie on the opening, 180° apart on its ellipse, and whose apex is the dome's
pole: it gives the opening too (``arc_opening``), but only where the version it implies is large
enough to be read (``WIRE_ARC_MIN_VERSION_DEG``); otherwise the cup is refused, saying so.

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
anteverted solution. Nor can it, under a point source, tell apart the two anteverted readings of
a nearly edge-on rim (anteversion below about twice the ray's obliquity at the cup, ~10° on an AP
pelvis): the shell and its mirror image about the plane across the local ray cast the same image
to a fraction of a pixel, and their mean is reported (``cup_axis_perspective``). With
anteversion spread evenly over 0–35° that alone costs 0.6–0.75° of mean absolute error (phantoms
at the detector's pixel size, three seeds of 200 cups, computed from the true rim ellipses). Liaw's construction (the rim's height above the long axis at one fifth of its
length from the end) is measured on the raw rim edge points and reported alongside.

On a cross-table lateral the cup face is seen nearly edge-on; Woo–Morrey version is the angle
between the cup face (the ellipse's long axis) and the perpendicular to the film's long axis
(the image vertical), positive when the opening faces anteriorly (image up).

Everything here is pure numpy/OpenCV on a float image; no DICOM.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from numpy.typing import NDArray

from node.analyse.reference import HORIZONTAL, ReferenceLine, horizontal_line
from node.analyse.silhouette import read_silhouette
from node.domain import Box, CupMeasurement, Ellipse, Point, Side, View
from node.imageops import sample_bilinear, subsampled_percentile

FloatArray = NDArray[np.float64]

log = logging.getLogger(__name__)

LEWINNEK = "Lewinnek"
LIAW = "Liaw"
WOO_MORREY = "Woo-Morrey"

# Thresholds below which a fit is refused rather than reported. Chosen on phantoms so that a
# correct fit clears them comfortably; a fit that fails them is wrong more often than right.
# a dome circle moved to the foot of its edge must keep at least this radius (pixels)
MIN_DOME_RADIUS_PX = 2.0
MIN_DOME_SPAN_DEG = 90.0
MAX_OPEN_SIDE_COVERED = 0.6
MIN_RIM_POINTS = 12
MIN_RIM_COVERAGE = 0.3
MAX_RIM_RMS_PX = 1.5
MIN_QUALITY = 0.3
# The rim ellipse's semi-major axis against the dome's radius: a shell's opening is its equator.
# Wider (to FLANGE_MAX_DOME_SHARE) only where the metal reaches out to the ellipse's ends - a
# flange (``_flange_shows``). Dev phantoms: flanges read at 1.06-1.26 of the dome's radius within
# 2.2° / 2.1° (sketch) and 4.1° / 2.9° (analytic); a head or cap outline read as a wider rim had the
# metal share at its ends 0.68 and below, or an axis ratio of 0.72 (46° of anteversion).
RIM_MIN_DOME_SHARE = 0.74
RIM_MAX_DOME_SHARE = 1.06
FLANGE_MAX_DOME_SHARE = 1.3
FLANGE_MIN_METAL_SHARE = 0.75
FLANGE_MAX_AXIS_RATIO = 0.64  # sin 40° (SUSPECT_ANTEVERSION_DEG)
EDGE_PERCENTILE = 92.0
MIN_BOX_IOU = 0.7
# The two refusals that blame the cup box rather than the outline (the caller may try another
# box: ``node.pipeline``); each refusal reason starts with its phrase.
OUTLINE_BOX_REFUSAL = "cup outline does not match the cup box"
RIM_BEYOND_BOX_REFUSAL = "rim ellipse reaches beyond the cup box"
# The dome outline is the metal's outer edge: its contrast (the median step across it) is at
# least this share of the region's range (5th to 95th percentile). A synthetic cup in a box loose
# towards the femur was read 13° off through a "dome" in the background whose step was 0.8 % of
# the range. Right fits sit far above that on dev phantoms (from 0.095 on sketch 424242, voxel
# 424243 and analytic 424242; a resurfacing cap in a test phantom at 0.09), but a bar of 5 % cost a
# right flanged cup on the bench's voxel set: this is a guard against a dome with no edge at all,
# not a classifier of fits.
MIN_DOME_CONTRAST_SHARE = 0.02
# The rim's ends may lie outside the cup box by this share of its longer side (correct fits on
# phantoms: ≤ 0.065; a rim run off along bone below a flanged cup: 0.17).
MAX_RIM_END_OUTSIDE_BOX = 0.1
# ... unless the dome is clearly seen (an outline over at least 120° and a fit of quality 0.6 or
# more, so the rim's ends continue the dome's own outline): then up to 0.2. On a style the
# detector never saw its cup boxes are loose, and at 0.1 right fits (errors under 2°) were refused
# on dev phantoms; 0.2 for every fit let through resurfacing "rims" 32–36° off (dome seen over 90°,
# quality 0.34–0.40).
MAX_RIM_END_OUTSIDE_CLEAR_DOME = 0.2
CLEAR_DOME_SPAN_DEG = 120.0
CLEAR_DOME_QUALITY = 0.6
# ... and where the dome is clearly seen, and the rim opens within LOOSE_BOX_MAX_TURN_DEG of the
# dome's gap, the outline need overlap the cup box only by MIN_BOX_IOU_CLEAR_DOME (MIN_BOX_IOU
# otherwise). On dev sketch phantoms (cups seeds 424270-424320, 583 cups; never the bench seed) the
# detector's boxes were loose round 13 such cups (IoU 0.53-0.70), all read within 1.2° / 2.4° once
# the bar was lowered; on analytic and voxel dev sets (4 x 60 films) nothing changed but one
# resurfacing cup read 16° off, whose rim turned 19° from the dome's gap (the right fits: under 8°;
# one right flanged cup at 15.5° stays refused).
MIN_BOX_IOU_CLEAR_DOME = 0.5
LOOSE_BOX_MAX_TURN_DEG = 10.0
# Where every fit was refused on an AP view, the outline may still be right and the box loose: a
# last pass lowers the overlap bar to LOOSE_BOX_MIN_IOU for any fit and keeps its answer only
# where the fit clears RETRY_MIN_QUALITY and its rim is at least LOOSE_BOX_MIN_RIM_SHARE of the
# dome's radius (a loose box round a resurfacing cap lets its inner outline, at 0.74-0.8 of the
# radius, pose as the rim). Dev sketch cups (seeds 424270-424320, 581 cups): 5 more read, within
# 3.2° / 2.0° (detector boxes at IoU 0.61-0.68), none lost; analytic / voxel (424270 / 424280,
# 316 cups): 2 flanged cups more, within 0.5° / 0.7°, and without the rim share two voxel
# resurfacing cups read 16-18° off (rims at 0.76 / 0.78 R; every right one at 0.83 R or more).
# Fresh dev sets afterwards (sketch 424330, analytic / voxel 424290: 251 cups): 2 more, within
# 1.5° / 1.1°, none lost. Removing the bar altogether read 4 dev sketch cups 9-44° off. The pass
# also follows a "head fills the cup" refusal (one more sketch resurfacing cup, 1.4° / 1.0°).
LOOSE_BOX_MIN_IOU = 0.6
LOOSE_BOX_MIN_RIM_SHARE = 0.8
# An acetabular shell is a hemisphere: its opening's plane passes through the dome's centre, so the
# rim ellipse's centre projects onto the dome circle's. On the dev cups read (sketch 424270-424330,
# analytic / voxel 424270-424290: 899 cups) every right reading lay within 0.09 of the radius beyond
# it except three flanged sketch cups (0.094-0.111), and three readings 8-26° off at 0.106-0.219. A
# "rim" whose centre lies further than MAX_RIM_OFFSET_SHARE of the radius beyond the dome's centre,
# towards the opening, is the cut edge of a larger shell: the head of a bipolar hemiarthroplasty
# (analytic / voxel dev sets: 0.11-0.21), which has no cup to measure. Refused on AP views: dev
# hemiarthroplasty heads read as cups 24 -> 11 (analytic / voxel 424270 / 424280) and 16 -> 6
# (424290; those left are mostly solid heads, offsets near 0), one voxel resurfacing reading 25.7° off
# refused, no right reading lost (a bar of 0.09 lost the three flanged sketch cups).
MAX_RIM_OFFSET_SHARE = 0.12
RIM_OFFSET_REFUSAL = "rim centred beyond the dome's centre"
# Beyond these the "cup" is almost certainly something else (a head, a side mix-up): a cup is
# implanted at 20–70° inclination and within ±45° version; refusing costs less than a wild number.
MIN_INCLINATION_DEG = 5.0
MAX_INCLINATION_DEG = 85.0
MAX_ANTEVERSION_DEG = 50.0
# After a refusal on an AP the rim is searched again among ellipses no rounder than this
# (minor/major; ≈ 38° of anteversion as seen): the femoral head's outline is about 0.5–0.75 of
# the shell's radius and, concentric with it, can pass for a rim that open. The axis may then stray
# up to ±36° (not ±10°) from the dome gap: a head or stem filling the open side tilts the gap too.
RETRY_MAX_RATIO = 0.62
RETRY_MIN_QUALITY = 0.4  # a second try must clear a higher bar than MIN_QUALITY
# Anteversion beyond this is outside the usual range of implanted cups and is where the head's
# outline (axis ratio ≥ ~0.6) lands: such a result is searched again as after a refusal.
SUSPECT_ANTEVERSION_DEG = 40.0
# Below this minor semi-axis (px) the back half of the rim is too close to the open half to be
# told from it along a normal: it is not used.
BACK_RIM_MIN_PX = 5.0
# Weight of the dome's prior on the rim ellipse's centre and long axis, relative to the rim
# points (1: as much as all of them together). The dome's centre is itself uncertain by about a
# pixel (bone, screws and the head's halo cross its outline) and that error goes straight into
# the minor axis, so the rim's own evidence (both ends, the apex, the back half) must be able
# to outvote it; with no prior at all a short or thin rim drifts.
PRIOR_SCALE = 0.5
# The rim meets the dome at both ends of its long axis, and there it *is* the shell's outline:
# whatever else lies in the cup (a head of up to ~0.8 of the shell's radius) sits further in. A
# fitted rim whose ends (this span of the semi-major axis, on the open side) are not seen is
# another outline that does not meet the dome: the cut edge of a resurfacing cap, or a head that
# fills the shell and hides the rim (``_filling_head`` finds most of those first). An end can fade
# against bone, so the demand is on both ends together, and only a nearly unseen end is refused on
# its own: on phantoms correct fits had ≥ 1.44 of both ends together (≥ 0.44 of either, ≥ 0.89 of
# the better one), such impostors ≤ 1.34 (≤ 0.22 of one end where the other was complete).
RIM_END_SPAN = (0.80, 0.98)
MIN_RIM_END_COVERAGE = 0.3
MIN_RIM_ENDS_COVERAGE = 1.2
# Where every fit on an AP view was refused, a last pass accepts a rim seen at one end only: where
# the shell meets bone that the film renders as white as the metal (an over-windowed or heavily
# processed film), the rim's other end has no edge to show. The seen end must be whole (at least
# ONE_END_MIN_COVERAGE of it, the two together as much), and the fit must leave no doubt that it is
# the rim: quality >= RETRY_MIN_QUALITY, the ellipse within ONE_END_MAX_RMS_PX of its points, its
# long axis at least ONE_END_MIN_RIM_SHARE of the dome's radius (the rim's long axis *is* the dome's
# diameter; a resurfacing cap's inner edge or a head's outline is shorter). Dev sketch cups (seeds
# 424270-424320, 581 cups): 6 more read, all within 2.0° / 2.0°, none lost; analytic / voxel (424270
# / 424280, 316 cups): none, but one more hemiarthroplasty's head read as a cup (as 23 heads on
# those sets already were by the other passes: the README's "one known fault"); fresh sets
# afterwards (sketch 424330, analytic / voxel 424290, 251 cups): 2 more, within 0.9° / 1.7°. With a
# residual bar of 0.45 px and no rim share the pass read 13 dev cups, 4 of them 5.7-12.8° off
# (residuals 0.34-0.44 px; the worst a voxel resurfacing cup whose "rim" was 0.92 of the radius).
# Lowering the end bars for every fit instead of in a pass of its own let other fits win elsewhere:
# 15 cups read before changed, four by 7-21°.
ONE_END_MIN_COVERAGE = 0.9
ONE_END_MAX_RMS_PX = 0.35
ONE_END_MIN_RIM_SHARE = 0.95
# Where the first fit was refused only because the detector's box does not fit it
# (``OUTLINE_BOX_REFUSAL``, ``RIM_BEYOND_BOX_REFUSAL``) and every later pass refused too, it is
# fitted again in its own box - the bounds of the silhouette it implies - where that box still
# overlaps the detector's by SELF_BOX_MIN_IOU. It is kept only where the second fit, started from a
# different crop and box edges, passes every check with the usual overlap bar, finds the same rim
# ellipse (``same_rim``), clears RETRY_MIN_QUALITY and lies within SELF_BOX_MAX_RMS_PX of its
# points. On an independently written renderer's films the detector's boxes were shifted towards the
# dome and missed the rim's lateral end. Dev sketch cups (seeds 424270-424320, 581): 7 more read,
# all hemispherical, within 2.8° / 2.2°, none lost; analytic / voxel (424270 / 424280, 316): none
# changed; fresh sets afterwards (sketch 424330, analytic / voxel 424290, 251): 2 more, within 1.6°
# / 0.8°. A first version (same rim within 1°, no residual bar) read a flanged sketch cup 34° off
# (0.47 px) and moved a right voxel flanged reading by 3.7° (0.38 px).
SELF_BOX_MIN_IOU = 0.4
SELF_BOX_MAX_RMS_PX = 0.35
# Two fits found "the same rim" when their ellipses' long-axis angles and arcsin(minor/major) agree
# within SAME_RIM_DEG and their centres (at least 1 px apart allowed) and semi-major axes within
# SAME_RIM_SHARE of the semi-major axis (``node.pipeline._same_outline`` uses it too).
SAME_RIM_DEG = 0.5
SAME_RIM_SHARE = 0.02
# A head whose outline is a circle of this share of the shell's radius, seen next to both ends of
# the opening on at least this many rays (2.5° apart, of 36), fills the shell and hides the rim
# (see ``_filling_head``). Usual heads are ≤ 0.75 of the shell; such heads 0.79–0.89 on phantoms.
FILLING_HEAD_FRAC = (0.78, 0.95)
FILLING_HEAD_MIN_RAYS = 12
# ... but the rim's ends still show beyond the head's disc: its open half runs outside a circle of
# radius r (< R) where cos²t > (r² − b²) / (R² − b²), the last tenth or two of the long axis at
# each end. Fitted from those points alone (the head's disc left out), with the dome's centre and
# radius as the prior, the rim need cover only this share of the long axis (MIN_RIM_COVERAGE
# otherwise); every other check holds, the seen-ends one (both ends) included, and each end must
# show whole, from the dome's circle in towards the head's (HEAD_EARS_REACH, ``_ears_reach_in``).
# Dev cups, every fit this read: sketch 424270-424320 5 resurfacing (within 1.9° / 1.5°),
# analytic / voxel 424270 / 424280 2 large heads (0.6° / 0.6°); fresh sets sketch 424330,
# analytic / voxel 424290: 2 resurfacing (2.5° / 1.8°); none lost.
HEAD_EARS_MIN_COVERAGE = 0.1
HEAD_EARS_REACH = (0.5, 0.8, 1.1)
# A head hides the rim only where the rim does not show across it: a rim fitted without leaving
# out the head's disc is kept where its points well inside that disc (within HEAD_CROSSING_DEPTH
# of its radius) cover at least this share of the rim's long axis (``_rim_across_head``).
HEAD_CROSSING_MIN_COVERAGE = 0.1
HEAD_CROSSING_DEPTH = 0.5
# Marker wire of an all-polyethylene cup (``find_marker_wire``). On phantoms (1024 rows, both image
# styles) rings covered 0.50–0.81 of their ellipse with symmetry 0.61–0.97, arcs one run of
# 185–190° with symmetry ≤ 0.11; in ~270 metal-backed cups (both styles, 1024 rows and native)
# no ring or arc was found (a first prototype's best ridge ellipse there covered ≤ 0.32).
WIRE_WORK_PX = 150.0  # the box's longer side at the working scale
WIRE_SIGMA_PX = 1.25  # Gaussian σ for a sharp wire at the working scale (and twice it for a blurred one)
WIRE_TOL_PX = 1.5  # distance of wire points to the ellipse, at the working scale
WIRE_MIN_HEIGHT_SHARE = 0.3
WIRE_RANSAC_ITERS = 1000
WIRE_SCORE_POINTS = 300
WIRE_MIN_COVERAGE_TO_REFINE = 0.2  # of the RANSAC ellipse, by the scored points: below, no wire
WIRE_SEMI_MAJOR_SHARE = (0.45, 0.65)  # of the box's longer side (0.51–0.59 on phantoms)
WIRE_MAX_OFFSET_SHARE = 0.3  # centre from the box's centre, of the box's longer side
WIRE_RING_MIN_COVERAGE = 0.35
WIRE_RING_MIN_SYMMETRY = 0.5
WIRE_ARC_MIN_RUN_DEG = 120.0
WIRE_ARC_MAX_SYMMETRY = 0.3
# A ring's axis ratio is sin(version): never rounder than this (version ≤ 50°, MAX_ANTEVERSION_DEG).
WIRE_RING_MAX_AXIS_RATIO = 0.77
# A ring the head or stem hides in part is judged on the bins it could show in (``_shown_bins``):
# hidden where both sides of the ellipse are at least this share of the wire's own level.
WIRE_HIDDEN_LEVEL_SHARE = 0.97
WIRE_SHOWN_MIN_BINS = 24  # of 72: a third of the ellipse must be open to view
WIRE_SHOWN_MIN_COVERAGE = 0.6
WIRE_MIN_BOX_IOU = 0.85  # rings 0.91–0.99 on phantoms; an arc taken for a rounder ring 0.71
WIRE_MANTLE_SCALES = (1.0, 1.05, 1.1, 1.15, 1.2)  # cup outline (with its mantle) over the ring
# A ring seen on both halves of its ellipse (symmetry at least this) cannot be a partly hidden
# arc, so the box only has to roughly agree: on a style the detector never saw its cup boxes
# overlap the true ones by IoU 0.64-0.88 (dev phantoms), and rings measured right were refused.
WIRE_CLEAR_RING_SYMMETRY = 0.7
WIRE_CLEAR_MIN_BOX_IOU = 0.6
# An arc over the dome is a half great circle: its two ends lie on the opening, 180° apart on its
# ellipse. Outside this run (a hidden end, or bright bone continuing it) the ends are not known.
WIRE_ARC_RUN_DEG = (165.0, 195.0)
# Version from an arc is arccos(|apex − centre| / r), both read off an ellipse fitted to half of
# itself; near 0° the cosine is flat: a 1 % error in r is ~10° of version at 5°, ~1.6° at 20°.
# On dev phantoms (seeds 424242/424243) arcs read at 18–19° included a cup of true version −4.5°
# (read 18°) and one of 16° (read 19°); below 10° errors were 3–20°. Below this the arc is refused
# rather than guessed.
WIRE_ARC_MIN_VERSION_DEG = 20.0


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
    dome_contrast: float = 0.0  # median intensity drop across the dome outline
    box_iou: float = 0.0  # overlap of the modelled silhouette's bounding box with the cup box
    rim_end_coverage: tuple[float, float] = (0.0, 0.0)  # share of each end of the rim seen (RIM_END_SPAN)
    gap_turn_deg: float = 0.0  # angle between the rim's minor axis and the dome's gap direction
    head_fills_shell: bool = False  # a head (or resurfacing cap) of nearly the shell's size hides the rim
    # a filled cup: the opening's direction from where the outline leaves the dome at both ends
    # of the opening (``_opening_from_outline``), unit vector, to check the dome's gap against
    outline_opening_dir: tuple[float, float] | None = None


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


def _foot(
    xr: FloatArray, yr: FloatArray, a: float | FloatArray, b: float | FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Foot points (in the ellipse frame) and signed distances of frame coordinates (xr, yr).

    Exact, by bisection on the standard one-dimensional root problem (Eberly, "Distance from a
    point to an ellipse"): robust for the very thin ellipses of cups seen nearly edge-on, where
    Newton iterations on the angle and the algebraic (Sampson) distance both fail — their
    radius of curvature at the ends is b²/a, a fraction of a pixel.
    """
    A = np.maximum(np.abs(np.asarray(a, dtype=np.float64)), 1e-9)
    B = np.maximum(np.abs(np.asarray(b, dtype=np.float64)), 1e-9)
    swap = B > A
    e0, e1 = np.where(swap, B, A), np.where(swap, A, B)
    y0 = np.where(swap, np.abs(yr), np.abs(xr))
    y1 = np.where(swap, np.abs(xr), np.abs(yr)) + 1e-12
    z0, z1 = y0 / e0, y1 / e1
    g = z0 * z0 + z1 * z1 - 1.0
    r0 = (e0 / e1) ** 2
    lo = z1 - 1.0
    hi = np.where(g < 0, 0.0, np.hypot(r0 * z0, z1) - 1.0)
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        G = (r0 * z0 / (mid + r0)) ** 2 + (z1 / (mid + 1.0)) ** 2 - 1.0
        lo = np.where(G > 0, mid, lo)
        hi = np.where(G > 0, hi, mid)
    # G is convex and decreasing on the bracket: Newton from its middle converges quadratically
    # (bisection alone needs ~34 halvings for the long brackets of thin ellipses)
    sbar = 0.5 * (lo + hi)
    for _ in range(3):
        t0, t1 = r0 * z0 / (sbar + r0), z1 / (sbar + 1.0)
        G = t0 * t0 + t1 * t1 - 1.0
        dG = -2.0 * (t0 * t0 / (sbar + r0) + t1 * t1 / (sbar + 1.0))
        sbar = np.clip(sbar - G / np.where(dG < -1e-300, dG, -1e-300), lo, hi)
    x0 = r0 * y0 / (sbar + r0)
    x1 = y1 / (sbar + 1.0)
    d = np.hypot(x0 - y0, x1 - y1)
    fx = np.where(swap, x1, x0) * np.sign(xr + 1e-300)
    fy = np.where(swap, x0, x1) * np.sign(yr + 1e-300)
    return fx, fy, np.where(g < 0, -d, d)


def ellipse_distance(
    points: FloatArray, cx: float, cy: float, a: float | FloatArray, b: float | FloatArray, theta: float
) -> FloatArray:
    """Signed orthogonal distance (positive outside) of points to an ellipse (exact)."""
    xr, yr = _to_frame(points, cx, cy, theta)
    return _foot(xr, yr, a, b)[2]


def fit_ellipse_geometric(
    pts: FloatArray, params: FloatArray, prior: tuple[float, float, float], w_prior: float, scale: float
) -> FloatArray:
    """Robust orthogonal-distance ellipse fit (cx, cy, a, b, θ) with a soft prior on centre and
    semi-major axis.

    Alternates exact foot-point correspondences with Gauss–Newton steps on the signed
    distances along the ellipse normals at those points (soft-ℓ1 loss, scale ``scale``, by
    iteratively reweighted least squares): the same minimum as a direct orthogonal fit at a
    small fraction of the cost.
    """
    q = np.asarray(params, dtype=np.float64).copy()
    pr0 = np.asarray(prior, dtype=np.float64)
    for _ in range(4):
        q_start = q.copy()
        xr, yr = _to_frame(pts, q[0], q[1], q[4])
        fx, fy, _ = _foot(xr, yr, q[2], q[3])
        t = np.arctan2(fy / max(abs(q[3]), 1e-9), fx / max(abs(q[2]), 1e-9))
        ct, st = np.cos(t), np.sin(t)
        # Gauss–Newton on the soft-ℓ1 objective by iteratively reweighted least squares, with the
        # analytic Jacobian of the residual along the (momentarily fixed) normals: ~20× cheaper
        # than a finite-difference trust-region solver for the same minimum.
        for _ in range(6):
            c, s_ = math.cos(q[4]), math.sin(q[4])
            ex, ey = q[2] * ct, q[3] * st
            px = q[0] + c * ex - s_ * ey
            py = q[1] + s_ * ex + c * ey
            nx_l, ny_l = ct * q[3], st * q[2]
            nn = np.hypot(nx_l, ny_l) + 1e-12
            nx = (c * nx_l - s_ * ny_l) / nn
            ny = (s_ * nx_l + c * ny_l) / nn
            r = (pts[:, 0] - px) * nx + (pts[:, 1] - py) * ny
            J = np.empty((len(r) + 3, 5))
            J[: len(r), 0] = -nx
            J[: len(r), 1] = -ny
            J[: len(r), 2] = -(nx * c * ct + ny * s_ * ct)
            J[: len(r), 3] = -(-nx * s_ * st + ny * c * st)
            J[: len(r), 4] = -(nx * (-s_ * ex - c * ey) + ny * (c * ex - s_ * ey))
            J[len(r) :] = 0.0
            J[len(r) :, :3] = w_prior * np.eye(3)
            res = np.concatenate([r, w_prior * (q[:3] - pr0)])
            w = 1.0 / np.sqrt(np.sqrt(1.0 + (res / scale) ** 2))  # √ of the soft-ℓ1 IRLS weight
            Jw, rw = J * w[:, None], res * w
            try:
                dq = np.linalg.solve(Jw.T @ Jw + 1e-9 * np.eye(5), -(Jw.T @ rw))
            except np.linalg.LinAlgError:
                break
            q = q + dq
            if float(np.abs(dq).max()) < 1e-4:
                break
        if float(np.abs(q - q_start).max()) < 1e-3:
            break  # the foot points no longer move
    return q


def _circle_lsq(p: FloatArray) -> tuple[float, float, float]:
    """Algebraic (Kåsa) circle fit: centre x, centre y, radius."""
    A = np.column_stack([2 * p[:, 0], 2 * p[:, 1], np.ones(len(p))])
    rhs = (p**2).sum(axis=1)
    sol, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    cx, cy, k = (float(v) for v in sol)
    return cx, cy, math.sqrt(max(k + cx * cx + cy * cy, 0.0))


def ransac_circles(
    p: FloatArray,
    normals: FloatArray,
    strength: FloatArray,
    r_min: float,
    r_max: float,
    tol: float,
    rng: np.random.Generator,
    iters: int = 600,
    keep: int = 4,
    max_score_points: int = 700,
) -> list[tuple[float, float, float]]:
    """Up to ``keep`` distinct circles best supported by edge points (dome candidates), best
    first; vectorised over all hypotheses.

    A point supports a circle only if it lies on it *and* its edge faces outwards (bright
    inside, dark outside): the dome is a bright disc's edge, which rules out most bone edges
    and the far side of the stem. Support is weighted by edge strength, so the metal's own
    outline beats a concentric but fainter one (the cement mantle around a cemented cup).
    """
    n = len(p)
    if n < 10:
        return []
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
        return []
    ux, uy, r = ux[ok], uy[ok], r[ok]
    # hypotheses are scored on a fixed subsample of the edge points (the ranking of long arcs
    # does not need them all); the chosen ones are refined on every point
    sub = np.sort(rng.choice(n, size=max_score_points, replace=False)) if n > max_score_points else np.arange(n)
    # single precision for the (hypotheses × points) scoring arrays: half the memory traffic, and
    # a few 1e-5 px of rounding do not matter against a tolerance of about a pixel
    ps, ns = p[sub].astype(np.float32), normals[sub].astype(np.float32)
    dx = ps[None, :, 0] - ux[:, None].astype(np.float32)
    dy = ps[None, :, 1] - uy[:, None].astype(np.float32)
    rad = np.hypot(dx, dy)
    facing = (dx * ns[None, :, 0] + dy * ns[None, :, 1]) > np.float32(0.8) * rad
    ok_pts = (np.abs(rad - r[:, None].astype(np.float32)) < np.float32(tol)) & facing
    counts = ok_pts.astype(np.float32) @ strength[sub].astype(np.float32)
    out: list[tuple[float, float, float]] = []
    for best in np.argsort(-counts):
        if len(out) >= keep or counts[best] <= 0:
            break
        bdx, bdy = p[:, 0] - ux[best], p[:, 1] - uy[best]
        brad = np.hypot(bdx, bdy)
        inl = (np.abs(brad - r[best]) < tol) & ((bdx * normals[:, 0] + bdy * normals[:, 1]) > 0.8 * brad)
        cx, cy, rr = float(ux[best]), float(uy[best]), float(r[best])
        for _ in range(3):
            if inl.sum() < 5:
                break
            cx, cy, rr = _circle_lsq(p[inl])
            ddx, ddy = p[:, 0] - cx, p[:, 1] - cy
            rad1 = np.hypot(ddx, ddy)
            inl = (np.abs(rad1 - rr) < tol) & ((ddx * normals[:, 0] + ddy * normals[:, 1]) > 0.8 * rad1)
        if all(math.hypot(cx - qx, cy - qy) > 0.1 * rr or abs(rr - qr) > 0.1 * rr for qx, qy, qr in out):
            out.append((cx, cy, rr))
    return out


def _dome_side(
    smooth: NDArray[np.float32], cx: float, cy: float, R: float, open_hint: FloatArray | None = None
) -> tuple[float, float, float, float]:
    """Which half of the fitted circle is the dome: (span of the dome arc in deg, direction of
    the open side in rad, fraction of the open half-circle that also shows an edge, typical
    edge contrast of the dome).

    The circle is sampled every 5°; a sector shows the dome outline when the intensity drops
    across the circle by at least half of the circle's typical drop. The dome is the
    half-circle with the most such sectors (ties: the middle one), so stretches of dome that
    fade against overlapping bone or screws do not tilt it. A silhouette whose other half is
    also on the circle is a full disc (a head without a cup, or a cup seen end-on).
    With ``open_hint`` (on an AP the cup opens laterally and inferiorly) only half-circles whose
    open side lies within 65° of it are considered.
    """
    nb, half = 72, 36
    ang = (np.arange(nb) + 0.5) * (2 * math.pi / nb)
    nrm = np.column_stack([np.cos(ang), np.sin(ang)])
    st = _step(smooth, np.array([cx, cy]) + R * nrm, nrm, 1.5)
    ref = float(np.percentile(st, 75))
    if ref <= 1e-6:
        return 0.0, 0.0, 0.0, 0.0
    covered = (st > 0.5 * ref).astype(int)
    ext = np.concatenate([covered, covered])
    window = np.array([ext[i : i + half].sum() for i in range(nb)])
    if open_hint is not None:
        open_dirs = (np.arange(nb) + half / 2.0) * (2 * math.pi / nb) + math.pi
        ok = np.cos(open_dirs - math.atan2(open_hint[1], open_hint[0])) > math.cos(math.radians(65.0))
        window = np.where(ok, window, -1)
    ties = np.flatnonzero(window == window.max())
    # middle of the (circular) run of tied windows that contains the first maximum
    run = [int(ties[0])]
    while (run[-1] + 1) % nb in set(ties.tolist()) and len(run) < nb:
        run.append((run[-1] + 1) % nb)
    while (run[0] - 1) % nb in set(ties.tolist()) and len(run) < nb:
        run.insert(0, (run[0] - 1) % nb)
    start = run[len(run) // 2] if len(run) % 2 else (run[len(run) // 2 - 1] + run[len(run) // 2]) / 2.0
    dome_dir = (float(start) + half / 2.0) * (2 * math.pi / nb)
    in_win = ((np.arange(nb) - round(float(start))) % nb) < half
    span = float(covered[in_win].sum()) * 360.0 / nb
    other_cov = float(covered[~in_win].sum()) / half
    dome_step = float(np.median(st[in_win & (covered > 0)])) if covered[in_win].any() else 0.0
    return span, dome_dir + math.pi, other_cov, dome_step


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


def edge_pixels(smooth: NDArray[np.float32]) -> NDArray[np.int32]:
    """Thin edge pixels (Canny) of the region, (x, y) integer coordinates.

    Edges rather than an intensity threshold: after a radiograph's tone mapping and unsharp
    masking the metal need not be brighter than every bit of bone or soft tissue around it,
    but its outline is always a strong, locally straight-or-circular step. Canny's thresholds
    come from the region's own gradient distribution, so contrast and windowing do not matter.
    """
    lo, hi = subsampled_percentile(smooth, [0.5, 99.5])
    if hi - lo < 1e-6:
        return np.zeros((0, 2), dtype=np.int32)
    u8 = np.clip((smooth - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    gx = cv2.Sobel(u8, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(u8, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    t_hi = float(subsampled_percentile(mag, EDGE_PERCENTILE))
    if t_hi <= 1e-3:
        return np.zeros((0, 2), dtype=np.int32)
    edges = cv2.Canny(u8, 0.4 * t_hi, t_hi, L2gradient=True)
    ys, xs = np.nonzero(edges)
    h, w = smooth.shape
    keep = (xs > 1) & (ys > 1) & (xs < w - 2) & (ys < h - 2)
    return np.column_stack([xs[keep], ys[keep]]).astype(np.int32)


def subpixel_edges(
    smooth: NDArray[np.float32], contour: NDArray[np.int32]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Move each contour pixel to the gradient-magnitude maximum along the local normal.

    The threshold contour is quantised to whole pixels and sits wherever the threshold happens
    to cut the edge profile; the gradient maximum is the edge itself, to a tenth of a pixel.
    Returns points, outward unit normals and edge strengths (gradient magnitude).
    """
    if len(contour) == 0:
        empty = np.zeros((0, 2))
        return empty, empty, np.zeros(0)
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
    prof = sample_bilinear(mag, mapx, mapy)
    k = np.argmax(prof, axis=1)
    k = np.clip(k, 1, len(steps) - 2)
    rows = np.arange(len(p))
    f0, f1, f2 = prof[rows, k - 1], prof[rows, k], prof[rows, k + 1]
    den = f0 - 2 * f1 + f2
    off = np.where(np.abs(den) > 1e-12, 0.5 * (f0 - f2) / np.where(np.abs(den) > 1e-12, den, 1), 0.0)
    s = steps[k] + np.clip(off, -0.5, 0.5) * 0.25
    out = np.column_stack([p[:, 0] + nx * s, p[:, 1] + ny * s])
    return out[ok], np.column_stack([nx, ny])[ok], f1[ok]


# --------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------


def _step(img: NDArray[np.float32], p: FloatArray, n: FloatArray, delta: float) -> FloatArray:
    """Intensity just inside minus just outside points ``p`` with outward normals ``n``."""
    v = sample_bilinear(img, np.concatenate([p[:, 0] - delta * n[:, 0], p[:, 0] + delta * n[:, 0]]),
                        np.concatenate([p[:, 1] - delta * n[:, 1], p[:, 1] + delta * n[:, 1]]))
    return v[: len(p)] - v[len(p) :]


def _open_half(
    cx: float, cy: float, a: FloatArray, b: FloatArray, theta: FloatArray, u: FloatArray, t: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Points and outward unit normals of the open half of H ellipses sharing a centre.

    ``a``, ``b``, ``theta``: shape (H,); ``t``: (T,) parametric angles in (0, π) → (H, T, 2).
    """
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))[:, None]
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))[:, None]
    theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    m = np.stack([np.cos(theta), np.sin(theta)], axis=-1)[:, None, :]
    v = np.stack([-np.sin(theta), np.cos(theta)], axis=-1)
    v = np.where(((v @ u) < 0)[:, None], -v, v)[:, None, :]
    ct, st = np.cos(t)[None, :], np.sin(t)[None, :]
    pts = np.array([cx, cy]) + (a * ct)[..., None] * m + (b * st)[..., None] * v
    nrm = (ct / a)[..., None] * m + (st / b)[..., None] * v
    nrm = nrm / np.linalg.norm(nrm, axis=-1, keepdims=True)
    return pts, nrm


def _head_circle(
    smooth: NDArray[np.float32], cx: float, cy: float, R: float, gap_dir: float, dome_step: float
) -> tuple[float, float, float] | None:
    """The femoral head's outline on the open side of the shell, if one shows: (x, y, radius).

    The prosthetic head is a bright disc nearly concentric with the shell (0.45–0.75 of its
    radius). Where the rim is flatter than the head is round, the head bulges past the rim and
    its outline is a strong bright-inside step on the open side — the same polarity and about
    the same place as the rim, which it then outshines. Looked for along rays from the dome
    centre across the open half: the radius where most rays show a step, then a circle fitted
    to each ray's step nearest that radius. Only a *circle* over a long arc counts: the rim's
    distance from the centre changes along the open half (from b at its apex to a at its
    ends), so the rim does not pass for one.
    """
    phi = gap_dir + np.radians(np.linspace(-85.0, 85.0, 35))
    d = np.column_stack([np.cos(phi), np.sin(phi)])
    r = np.arange(0.38 * R, 0.85 * R, 0.5)
    p = np.array([cx, cy]) + r[None, :, None] * d[:, None, :]
    n = np.broadcast_to(d[:, None, :], p.shape)
    st = _step(smooth, p.reshape(-1, 2), n.reshape(-1, 2), 1.5).reshape(len(phi), len(r))
    hit = np.clip(st / (0.5 * dome_step), 0.0, 1.0)
    support = hit.sum(axis=0)
    j = int(np.argmax(support))
    if support[j] < 8.0:
        return None
    # per ray, the strongest step within ±0.1 R of the peak radius (the head may sit a few
    # pixels off the shell's centre, so its edge is not at one radius from it)
    win = np.abs(r - r[j]) <= 0.1 * R
    k = np.argmax(np.where(win[None, :], st, -np.inf), axis=1)
    strong = st[np.arange(len(phi)), k] > 0.5 * dome_step
    q = p[np.arange(len(phi)), k][strong]
    if len(q) < 8:
        return None
    # start from the dome's centre and the rays' median radius, not from a plain least-squares
    # circle: a few rays that caught the rim or the neck instead drag that one off the head
    rad = np.hypot(q[:, 0] - cx, q[:, 1] - cy)
    start = np.abs(rad - np.median(rad)) < max(1.5, 0.03 * R)
    if start.sum() < 8:
        return None
    hx, hy, hr = _circle_lsq(q[start])
    for _ in range(2):
        inl = np.abs(np.hypot(q[:, 0] - hx, q[:, 1] - hy) - hr) < max(1.0, 0.015 * R)
        if inl.sum() < 8:
            return None
        hx, hy, hr = _circle_lsq(q[inl])
    arc = float(inl.sum()) * 5.0  # rays are 5° apart
    if arc < 45.0 or not 0.4 * R <= hr <= 0.85 * R or math.hypot(hx - cx, hy - cy) > 0.15 * R:
        return None
    return hx, hy, hr


def _filling_head(
    smooth: NDArray[np.float32], cx: float, cy: float, R: float, gap_dir: float, dome_step: float
) -> float | None:
    """Radius of a femoral head (or resurfacing cap) that nearly fills the shell, if one shows.

    Such a head (0.8–0.95 of the shell's outer radius: metal-on-metal bearings, resurfacing caps)
    covers all of the rim but its ends: on the open side its outline, a circle concentric with the
    dome, runs just inside both ends of the opening, where a rim bends away from the dome and
    crosses every radius only once. Looked for on rays 45–87.5° either side of the gap (2.5°
    apart): the strongest bright-inside step on each, and the radius that most of them share. A
    head of usual size (≤ ~0.75 of the shell) falls below the radii searched; a cut resurfacing
    cap shows on one side for 30° or more and next to the other end for a few rays, hence the
    weaker demand on the second side.
    """
    tol = max(1.0, 0.015 * R)
    r = np.arange(0.6 * R, 0.96 * R, 0.5)
    offs = np.radians(np.arange(45.0, 88.0, 2.5))
    phi = gap_dir + np.concatenate([-offs, offs])
    d = np.column_stack([np.cos(phi), np.sin(phi)])
    p = np.array([cx, cy]) + r[None, :, None] * d[:, None, :]
    n = np.broadcast_to(d[:, None, :], p.shape)
    st = _step(smooth, p.reshape(-1, 2), n.reshape(-1, 2), 1.5).reshape(len(phi), len(r))
    k = np.argmax(st, axis=1)
    strong = st[np.arange(len(phi)), k] >= 0.5 * dome_step
    rr = r[k]
    best, rho, sides = 0, 0.0, (0, 0)
    for i in np.flatnonzero(strong):
        inl = strong & (np.abs(rr - rr[i]) <= tol)
        if int(inl.sum()) <= best:
            continue
        rho_i = float(np.median(rr[inl]))
        inl = strong & (np.abs(rr - rho_i) <= tol)
        best, rho, sides = int(inl.sum()), rho_i, (int(inl[: len(offs)].sum()), int(inl[len(offs) :].sum()))
    if best < FILLING_HEAD_MIN_RAYS or min(sides) < 2 or not FILLING_HEAD_FRAC[0] * R <= rho <= FILLING_HEAD_FRAC[1] * R:
        return None
    return rho


def _opening_from_outline(
    smooth: NDArray[np.float32], cx: float, cy: float, R: float, gap_dir: float, head_r: float
) -> float | None:
    """Direction (rad) of a filled cup's opening from its silhouette, independently of
    ``_dome_side``'s sector count: the outline's radius, read every 0.5° from 115° either side of
    the gap, falls from the dome's radius to the head's across the rim's two ends; the opening
    faces midway between the two angles where it crosses the middle radius (the rim ellipse and
    the concentric head are symmetric about the cup's axis). The outline on each ray is the
    outermost point still above the level midway between the metal inside (0.5-0.65 R) and the
    background outside (beyond 1.12 R). ``None`` when either crossing is not found."""
    r = np.arange(0.5 * R, 1.25 * R, 0.25)
    d = np.radians(np.arange(-115.0, 115.01, 0.5))
    th = gap_dir + d
    xs = (cx + r[None, :] * np.cos(th)[:, None]).astype(np.float32)
    ys = (cy + r[None, :] * np.sin(th)[:, None]).astype(np.float32)
    prof = sample_bilinear(smooth, xs, ys)
    inside = np.median(prof[:, (r >= 0.5 * R) & (r <= 0.65 * R)], axis=1)
    outside = np.median(prof[:, r >= 1.12 * R], axis=1)
    half = 0.5 * (inside + outside)
    rad = np.full(len(d), np.nan)
    for i in range(len(d)):
        above = np.flatnonzero(prof[i] >= half[i])
        if above.size == 0 or above[-1] + 1 >= len(r) or inside[i] <= outside[i]:
            continue
        j = int(above[-1])
        p0, p1 = float(prof[i, j]), float(prof[i, j + 1])
        rad[i] = r[j] + 0.25 * ((p0 - half[i]) / (p0 - p1) if p0 != p1 else 0.0)
    level = 0.5 * (R + head_r)

    def crossing(order: range) -> float | None:
        prev: int | None = None
        for k in order:
            if not np.isfinite(rad[k]):
                continue
            if rad[k] < level:
                if prev is None:
                    return None
                t = (rad[prev] - level) / (rad[prev] - rad[k])
                return float(d[prev] + t * (d[k] - d[prev]))
            prev = k
        return None

    lo, hi = crossing(range(len(d))), crossing(range(len(d) - 1, -1, -1))
    if lo is None or hi is None:
        return None
    return gap_dir + 0.5 * (lo + hi)


def _off_head(pts: FloatArray, head: tuple[float, float, float] | None, tol: float) -> NDArray[np.bool_]:
    """True for points outside the head's disc and clear of its outline by ``tol`` (all of them
    when there is no head).

    Not just the outline: a prosthetic head is solid metal and leaves (next to) nothing of the
    X-ray beam, so adding the shell's wall in front of or behind it changes nothing on the image
    and the rim is invisible wherever it crosses the head. Any step found there is the head's
    blurred edge, not the rim, and pulls a fit towards the head's outline.
    """
    if head is None:
        return np.ones(pts.shape[:-1], dtype=bool)
    hx, hy, hr = head
    return np.asarray(np.hypot(pts[..., 0] - hx, pts[..., 1] - hy) >= hr + tol)


def _search_rim(
    smooth: NDArray[np.float32],
    cx: float,
    cy: float,
    R: float,
    theta0: float,
    u: FloatArray,
    step: float,
    k_max: float = math.sin(math.radians(MAX_ANTEVERSION_DEG + 3.0)),
    head: tuple[float, float, float] | None = None,
) -> list[tuple[float, float, float]]:
    """Semi-major axis, axis ratio and angle of the open-half ellipse best supported by edges:
    the best hypothesis first, then the runner-up of the other stage when there is one.

    Grid search in two stages: (axis ratio × angle) with the dome's radius, then (semi-major ×
    axis ratio) at the best angle — the second because around a cemented cup the brightest
    circle may be the cement mantle, a few millimetres outside the metal rim.
    """
    t = np.linspace(0.1 * math.pi, 0.9 * math.pi, 36)
    head_tol = max(1.5, 0.02 * R)

    def score(a: FloatArray, b: FloatArray, th: FloatArray) -> FloatArray:
        pts, nrm = _open_half(cx, cy, a, b, th, u, t)
        d = _step(smooth, pts.reshape(-1, 2), nrm.reshape(-1, 2), 1.5).reshape(len(a), len(t))
        # the head's outline is no evidence for a rim that happens to run along it
        d = np.where(_off_head(pts, head, head_tol), d, 0.0)
        return np.asarray(np.clip(d / step, 0.0, 1.0).sum(axis=1), dtype=np.float64)

    # coarse-to-fine: axis ratio every 0.03, then every 0.01 around the best (each stage ~⅓
    # of the full 0.01 grid's hypotheses; the score is smooth on the 0.03 scale)
    # a rim nearly as round as the dome would be refused anyway (MAX_ANTEVERSION_DEG); leaving
    # those ratios (> k_max) out keeps the femoral head — a bright disc concentric with the
    # shell, about 0.7 of its radius — from posing as a wide-open rim in the reduced-radius stage
    # the dome's gap fixes the axis to ±22°; a retry (k_max below the head's ratio) widens that to
    # ±36°, as a head or stem filling the open side can also tilt the gap
    if k_max > RETRY_MAX_RATIO:
        # 2° steps within ±10° of the gap, 4° steps out to ±22°: a stem or bone across the dome
        # tilts the gap by more than 10° in about one cup in twenty
        offs = np.concatenate([np.arange(-22.0, -10.0, 4.0), np.arange(-10.0, 10.01, 2.0), np.arange(14.0, 22.01, 4.0)])
    else:
        offs = np.arange(-36.0, 36.01, 2.0)
    ths = theta0 + np.radians(offs)
    K, TH = (g.ravel() for g in np.meshgrid(np.arange(0.01, k_max, 0.03), ths, indexing="ij"))
    sc = score(np.full(len(K), R), K * R, TH)
    i = int(np.argmax(sc))
    k0 = float(K[i])
    K, TH = (g.ravel() for g in np.meshgrid(np.clip(k0 + np.arange(-0.04, 0.041, 0.01), 0.01, k_max), ths, indexing="ij"))
    sc = score(np.full(len(K), R), K * R, TH)
    i = int(np.argmax(sc))
    k1, th1 = float(K[i]), float(TH[i])
    scales = np.arange(0.76, 1.021, 0.02)
    S, K2 = (g.ravel() for g in np.meshgrid(scales, np.arange(0.01, k_max, 0.03), indexing="ij"))
    sc2 = score(S * R, K2 * S * R, np.full(len(S), th1))
    j = int(np.argmax(sc2))
    S, K2 = (g.ravel() for g in np.meshgrid(
        np.clip(S[j] + np.arange(-0.02, 0.021, 0.02), 0.76, 1.02),
        np.clip(K2[j] + np.arange(-0.02, 0.021, 0.01), 0.01, k_max), indexing="ij"))
    sc2 = score(S * R, K2 * S * R, np.full(len(S), th1))
    j = int(np.argmax(sc2))
    if sc2[j] > 1.1 * sc[i]:
        return [(float(S[j] * R), float(K2[j]), th1), (R, k1, th1)]
    return [(R, k1, th1)]


def _edge_levels(smooth: NDArray[np.float32], pts: FloatArray, nrm: FloatArray) -> FloatArray:
    """Outward offsets from each edge point (a gradient maximum) to where the intensity has
    fallen to 80 %, 50 % and 20 % of the way from the outside level to the inside level:
    shape (N, 3), NaN where the profile is not a clean bright-inside step."""
    if len(pts) == 0:
        return np.zeros((0, 3))
    steps = np.arange(-4.0, 7.01, 0.25)
    mx = (pts[:, 0:1] + nrm[:, 0:1] * steps[None, :]).astype(np.float32)
    my = (pts[:, 1:2] + nrm[:, 1:2] * steps[None, :]).astype(np.float32)
    prof = sample_bilinear(smooth, mx, my)
    inside = prof[:, steps <= -3.0].mean(axis=1)
    outside = prof[:, steps >= 5.0].mean(axis=1)
    out = np.full((len(pts), 3), np.nan)
    rows = np.arange(len(pts))
    for j, level in enumerate((0.8, 0.5, 0.2)):
        thr = outside + level * (inside - outside)
        below = prof < thr[:, None]
        below[:, steps < -3.0] = False
        k = np.argmax(below, axis=1)
        ok = below.any(axis=1) & (inside > outside) & (k > 0)
        k = np.clip(k, 1, len(steps) - 1)
        f_in, f_out = prof[rows, k - 1], prof[rows, k]
        frac = np.clip((f_in - thr) / np.where(f_in - f_out > 1e-9, f_in - f_out, 1.0), 0.0, 1.0)
        out[:, j] = np.where(ok, steps[k - 1] + frac * 0.25, np.nan)
    return out


def _ramp_shift(levels: FloatArray, step_width: float) -> FloatArray:
    """Per-point outward shift to the outer boundary of an edge.

    A blurred step's boundary is its 50 % point. Near the rim of a metal shell the rays cross
    a wedge of metal that thickens from zero at the outer rim inwards, so the intensity ramps up
    over a few pixels and the 50 % point lies half a ramp inside the true outer rim — more the
    more the opening faces the beam. The ramp's width is the edge's 20–80 % distance beyond that
    of a plain blurred step (``step_width``, measured on the dome, whose tangential rays make a
    step); a linear ramp's 20–80 % distance is 0.6 of its width.
    """
    width = levels[:, 2] - levels[:, 0]
    w_med = float(np.nanmedian(width)) if np.isfinite(width).any() else 0.0
    # blur and ramp widen the edge in quadrature (both are near-Gaussian/linear spreads of
    # comparable size), not additively: subtracting widths underestimates a narrow ramp
    ramp = math.sqrt(max(w_med * w_med - step_width * step_width, 0.0))
    shift = levels[:, 1] + ramp / 0.6 / 2.0
    return np.where(np.isfinite(shift), np.clip(shift, -2.0, 6.0), 0.0)


def _rim_points(
    gx: NDArray[np.float32],
    gy: NDArray[np.float32],
    params: FloatArray,
    u: FloatArray,
    search: float,
    min_grad: float,
    stems: Sequence[tuple[float, float, float, float]],
    R: float,
    smooth: NDArray[np.float32] | None = None,
    step_width: float = 0.0,
    back: bool = False,
) -> FloatArray:
    """Edge points near the open half of an ellipse: along each normal, the sub-pixel maximum of
    the outward intensity drop, kept when it is a real step (≥ ``min_grad`` per pixel).

    With ``back`` also the back half of the rim, seen through the dome. The open half alone
    leaves the ellipse's centre along the minor axis to the dome's prior (its two ends fix only
    the long axis, and its apex fixes centre + minor axis together); the back half's apex fixes
    centre − minor axis, so both come from the rim itself."""
    cx, cy, a, b, th = (float(v) for v in params)
    t = np.linspace(0.03 * math.pi, 0.97 * math.pi, 160)
    if back and abs(b) >= BACK_RIM_MIN_PX:
        t = np.concatenate([t, t + math.pi])
    pts, nrm = _open_half(cx, cy, np.array([abs(a)]), np.array([abs(b) + 1e-6]), np.array([th]), u, t)
    pts, nrm = pts.reshape(-1, 2), nrm.reshape(-1, 2)
    # the back half of the rim is seen through the shell: one wall inside the ellipse, two
    # outside it, so the intensity drops *into* the ellipse there: search along inward normals
    nrm = np.where((t > math.pi)[:, None], -nrm, nrm)
    steps = np.arange(-search, search + 1e-9, 0.25)
    mx = (pts[:, 0:1] + nrm[:, 0:1] * steps[None, :]).astype(np.float32)
    my = (pts[:, 1:2] + nrm[:, 1:2] * steps[None, :]).astype(np.float32)
    sgx = sample_bilinear(gx, mx, my)
    sgy = sample_bilinear(gy, mx, my)
    prof = -(sgx * nrm[:, 0:1] + sgy * nrm[:, 1:2])
    k = np.clip(np.argmax(prof, axis=1), 1, len(steps) - 2)
    rows = np.arange(len(pts))
    f0, f1, f2 = prof[rows, k - 1], prof[rows, k], prof[rows, k + 1]
    den = f0 - 2 * f1 + f2
    off = np.where(np.abs(den) > 1e-12, 0.5 * (f0 - f2) / np.where(np.abs(den) > 1e-12, den, 1.0), 0.0)
    sft = steps[k] + np.clip(off, -0.5, 0.5) * 0.25
    out = pts + nrm * sft[:, None]
    keep = f1 >= min_grad
    if smooth is not None and keep.any():
        lv = _edge_levels(smooth, out[keep], nrm[keep])
        out[keep] = out[keep] + nrm[keep] * _ramp_shift(lv, step_width)[:, None]
    for x0, y0, x1, y1 in stems:
        inside = (out[:, 0] >= x0) & (out[:, 0] <= x1) & (out[:, 1] >= y0) & (out[:, 1] <= y1)
        far = np.hypot(out[:, 0] - cx, out[:, 1] - cy) > 1.02 * R
        keep &= ~(inside & far)
    return np.asarray(out[keep], dtype=np.float64)


def fit_cup_ellipse(
    image: NDArray[np.float32],
    cup_box: Box,
    *,
    stem_boxes: Sequence[Box] = (),
    open_hint: tuple[float, float] | None = None,
    margin: float = 0.3,
    seed: int = 0,
    max_ratio: float | None = None,
    camera: tuple[float, Point] | None = None,
    min_box_iou: float = MIN_BOX_IOU,
    min_end_coverage: tuple[float, float] = (MIN_RIM_END_COVERAGE, MIN_RIM_ENDS_COVERAGE),
) -> CupFit:
    """Find the dome circle and the rim ellipse of the cup inside ``cup_box``.

    Deterministic (seeded RANSAC). Returns a ``CupFit`` whose ``refusal_reason`` says why no
    ellipse is given when the evidence is not good enough. ``open_hint``: the direction the
    cup is expected to open towards (laterally and inferiorly on an AP), used to tell the dome
    half of the outline from the open half when the image alone is ambiguous.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        return CupFit(None, None, refusal_reason="image is not a single-channel 2-D array")
    if cup_box.width < 8 or cup_box.height < 8:
        return CupFit(None, None, refusal_reason="cup box too small")
    roi, ox, oy = _crop(img, cup_box, margin)
    smooth = np.asarray(cv2.GaussianBlur(roi, (0, 0), 1.0), dtype=np.float32)
    pts, normals, strength = subpixel_edges(smooth, edge_pixels(smooth))
    if len(pts) < 30:
        return CupFit(None, None, refusal_reason="no cup outline found in the cup box")

    size = max(cup_box.width, cup_box.height)
    rng = np.random.default_rng(seed)
    circles = ransac_circles(pts, normals, strength, 0.4 * size, 0.8 * size, tol=max(0.8, 0.01 * size), rng=rng)
    if open_hint is not None:
        boxed = _circle_from_box(smooth, cup_box, (ox, oy), np.asarray(open_hint, dtype=np.float64))
        if boxed is not None:
            circles = [_refine_circle(pts, normals, boxed, max(0.8, 0.01 * size)), *circles[:3]]
    if not circles:
        return CupFit(None, None, refusal_reason="dome outline not found")
    gx = np.asarray(cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3) / 8.0, dtype=np.float32)
    gy = np.asarray(cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3) / 8.0, dtype=np.float32)
    stems = [(sb.x0 - ox, sb.y0 - oy, sb.x1 - ox, sb.y1 - oy) for sb in stem_boxes]
    # Several circles may be plausible domes (the head, a cement mantle, bone): each is tried
    # with the full shell model (dome half + rim half) and the one the image supports best wins.
    hint = None if open_hint is None else np.asarray(open_hint, dtype=np.float64)
    cam = None if camera is None else (camera[0], Point(camera[1].x - ox, camera[1].y - oy))
    fits: list[CupFit] = []
    for i, c in enumerate(circles):
        if i >= 2 and any(f.refusal_reason is None for f in fits):
            break  # the two strongest circles had a measurable cup; weaker ones are clutter
        fits.append(_fit_from_circle(smooth, gx, gy, c, (ox, oy), stems, hint, cup_box, max_ratio, cam, min_box_iou,
                                      min_end_coverage))
    filled = [f for f in fits if f.head_fills_shell]
    if filled:
        # a head that fills the shell hides the rim whichever circle is taken for the dome: what
        # another circle finds instead (the edge of a resurfacing cap, the head's outline) is no rim
        return filled[0]
    good = [f for f in fits if f.refusal_reason is None]
    pool = good or fits
    # the metal's own outline is the strongest half-circle edge in the region: a bone or cement
    # outline that happens to support a rim-like curve loses on contrast
    # and the silhouette it implies must fill the detector's box
    return max(pool, key=lambda f: f.quality * f.dome_contrast * f.box_iou**8)


def _refine_circle(
    p: FloatArray, normals: FloatArray, circle: tuple[float, float, float], tol: float
) -> tuple[float, float, float]:
    """A circle refitted to the outward-facing edge points on it, as RANSAC's circles are.

    The circle from the box is tangent to two box edges with the best-supported radius; the box
    is a few tenths of a pixel to a few pixels off the outline, and the rim ellipse is anchored
    to this circle's centre. Starting with a wider band catches an outline a few pixels away.
    """
    cx, cy, r = circle
    for band in (3.0 * tol, tol, tol):
        dx, dy = p[:, 0] - cx, p[:, 1] - cy
        rad = np.hypot(dx, dy)
        inl = (np.abs(rad - r) < band) & ((dx * normals[:, 0] + dy * normals[:, 1]) > 0.8 * rad)
        if inl.sum() < 20:
            break
        nx, ny, nr = _circle_lsq(p[inl])
        if math.hypot(nx - circle[0], ny - circle[1]) > 0.1 * circle[2] or abs(nr - circle[2]) > 0.1 * circle[2]:
            break  # drifted to another outline: keep the last good one
        cx, cy, r = nx, ny, nr
    return cx, cy, r


def _circle_from_box(
    smooth: NDArray[np.float32], box: Box, offset: tuple[int, int], open_hint: FloatArray
) -> tuple[float, float, float] | None:
    """Dome circle from the cup box: the dome half-circle reaches the box's superior and medial
    edges (for any inclination between 0° and 90° both extreme points lie on the dome), so the
    circle is tangent to them and only its radius is free; the radius is the one whose dome
    half shows the strongest outline. Independent of RANSAC, it holds when the dome edge is
    faint or crowded by cement, screws and bone."""
    ox, oy = offset
    medial_right = open_hint[0] < 0  # opens towards the image left → medial edge is the right one
    top = box.y0 - oy if open_hint[1] > 0 else box.y1 - oy
    side_x = (box.x1 if medial_right else box.x0) - ox
    size = max(box.width, box.height)
    radii = np.arange(0.42 * size, 0.76 * size, 0.5)
    sx = -1.0 if medial_right else 1.0
    sy = 1.0 if open_hint[1] > 0 else -1.0
    cx = side_x + sx * radii
    cy = top + sy * radii
    dome_dir = math.atan2(-open_hint[1], -open_hint[0])
    ang = dome_dir + np.radians(np.linspace(-80.0, 80.0, 33))
    nrm = np.column_stack([np.cos(ang), np.sin(ang)])
    p = np.stack([cx[:, None] + radii[:, None] * nrm[None, :, 0], cy[:, None] + radii[:, None] * nrm[None, :, 1]], -1)
    n = np.broadcast_to(nrm[None], p.shape)
    st = _step(smooth, p.reshape(-1, 2), n.reshape(-1, 2), 1.5).reshape(len(radii), -1)
    score = np.percentile(st, 25, axis=1)
    i = int(np.argmax(score))
    if score[i] <= 0:
        return None
    return float(cx[i]), float(cy[i]), float(radii[i])


def _fit_from_circle(
    smooth: NDArray[np.float32],
    gx: NDArray[np.float32],
    gy: NDArray[np.float32],
    circle: tuple[float, float, float],
    offset: tuple[int, int],
    stems: Sequence[tuple[float, float, float, float]],
    open_hint: FloatArray | None,
    box: Box,
    max_ratio: float | None = None,
    camera: tuple[float, Point] | None = None,
    min_box_iou: float = MIN_BOX_IOU,
    min_end_coverage: tuple[float, float] = (MIN_RIM_END_COVERAGE, MIN_RIM_ENDS_COVERAGE),
) -> CupFit:
    """The rim ellipse that goes with one dome circle (ROI coordinates in, image coordinates out)."""
    ccx, ccy, R = circle
    ox, oy = offset
    span, gap_dir, other_cov, dome_step = _dome_side(smooth, ccx, ccy, R, open_hint)
    # the dome circle sits on gradient maxima too: move it to the foot of its edge, like the rim
    dd = gap_dir + math.pi + np.radians(np.linspace(-70.0, 70.0, 29))
    dn = np.column_stack([np.cos(dd), np.sin(dd)])
    dl = _edge_levels(smooth, np.array([ccx, ccy]) + R * dn, dn)
    if np.isfinite(dl[:, 1]).any():
        R = R + float(np.nanmedian(dl[:, 1]))
    if R < MIN_DOME_RADIUS_PX:
        # the foot of the edge lies at or beyond the circle's centre: no dome of this circle (a
        # sketch film's degenerate candidate went to -0.03 px and failed the whole cup fit)
        return CupFit(None, None, refusal_reason="dome outline not found")
    dw = dl[:, 2] - dl[:, 0]
    dome_width = float(np.nanmedian(dw)) if np.isfinite(dw).any() else 0.0
    base = CupFit(
        None, None, dome_centre=Point(ccx + ox, ccy + oy), dome_radius_px=R, dome_span_deg=span,
        dome_contrast=dome_step,
    )
    if span < MIN_DOME_SPAN_DEG:
        return _refuse(base, f"dome outline too short ({span:.0f}° of arc)")
    if other_cov > MAX_OPEN_SIDE_COVERED:
        return _refuse(base, "outline is a full circle: rim not distinguishable from the dome")
    u = np.array([math.cos(gap_dir), math.sin(gap_dir)])  # towards the open side

    # The rim is searched for in the image itself, not among detected edge pixels: on the open
    # side the rays cross a single wall of the shell, so the rim edge can be much weaker than
    # the head's or the dome's and would not survive a global edge threshold. Every hypothesis
    # (axis ratio k, axis angle θ) with the dome's centre and radius is scored by how much of its
    # open half sits on a bright-inside/dark-outside step; the dome's own edge contrast sets
    # what "a step" is, so windowing and tone mapping do not matter.
    p5, p95 = (float(v) for v in np.percentile(smooth, (5.0, 95.0)))
    if dome_step <= 1e-4:
        return _refuse(base, "no contrast at the cup outline")
    if dome_step < MIN_DOME_CONTRAST_SHARE * (p95 - p5):
        return _refuse(base, f"dome outline too faint for the metal's edge (its step is {dome_step / (p95 - p5):.0%} "
                             "of the region's range)")
    theta0 = gap_dir + math.pi / 2.0

    def rim(head: tuple[float, float, float] | None, min_coverage: float = MIN_RIM_COVERAGE) -> CupFit:
        hyps = (_search_rim(smooth, ccx, ccy, R, theta0, u, 0.5 * dome_step, head=head) if max_ratio is None
                else _search_rim(smooth, ccx, ccy, R, theta0, u, 0.5 * dome_step, max_ratio, head=head))
        first: CupFit | None = None
        for a_best, k_best, th_best in hyps:
            fit = _rim_fit(smooth, gx, gy, (ccx, ccy, R), (a_best, k_best, th_best), u, base, stems, dome_step,
                           dome_width, span, (ox, oy), box, head, camera, min_box_iou, min_coverage,
                           min_end_coverage)
            if fit.refusal_reason is None:
                return fit
            first = first or fit
        assert first is not None
        return first

    filling = _filling_head(smooth, ccx, ccy, R, gap_dir, dome_step)
    if filling is not None:
        seen = _rim_across_head(rim(None), (ccx + ox, ccy + oy, filling))
        if seen is not None:
            return seen
        # a dense head hides the rim inside its disc, but the rim's ends reach beyond it
        ears = rim((ccx, ccy, filling), HEAD_EARS_MIN_COVERAGE)
        if ears.refusal_reason is None and _ears_reach_in(ears, filling):
            return ears
        # the opening's direction still shows - the dome's outline ends where the rim begins, at
        # both ends of the opening - and with it the inclination (``_measure_fit``); only the
        # rim's width, hence anteversion, is hidden
        lip = _opening_from_outline(smooth, ccx, ccy, R, gap_dir, filling)
        return _refuse(replace(base, head_fills_shell=True, opening_dir=(math.cos(gap_dir), math.sin(gap_dir)),
                               outline_opening_dir=None if lip is None else (math.cos(lip), math.sin(lip))),
                       f"the femoral head fills the cup (its outline runs at {filling / R:.0%} of the cup's radius "
                       "next to both ends of the opening): the rim is hidden behind it")
    # a hypothesis from the reduced-radius stage (cement mantle) that does not hold up — too few
    # rim points, a major axis that does not match the dome — falls back to the dome's radius
    head = _head_circle(smooth, ccx, ccy, R, gap_dir, dome_step)
    fit = rim(head)
    if fit.refusal_reason is not None and head is not None:
        seen = _rim_across_head(rim(None), (head[0] + ox, head[1] + oy, head[2]))
        if seen is not None:
            return seen
    return fit


def _ears_reach_in(fit: CupFit, head_r: float) -> bool:
    """Whether a rim fitted from its ends beyond a filling head (``HEAD_EARS_MIN_COVERAGE``) shows
    each end whole: points from the dome's circle in to the head's, and none well beyond the dome
    (``HEAD_EARS_REACH``, as shares of the way from the head's circle to the dome's: a rim's end
    lies on the dome's outline). Where the vertex of an end is not seen, or the points there are
    the shell's own outline running along the dome, the end says nothing about the rim's width (an
    analytic large head read 7° / 8.5° off from such an end: 0.17-0.69 of the way, where right ears
    reached 0.12-0.28 and 0.91-1.04); points far outside the dome are not the rim (the bench's
    analytic resurfacing cup read 5° / 8° off from an end reaching 1.56)."""
    if fit.ellipse is None or fit.dome_centre is None or fit.dome_radius_px is None or len(fit.rim_points) == 0:
        return False
    p = np.asarray(fit.rim_points, dtype=np.float64)
    way = (np.hypot(p[:, 0] - fit.dome_centre.x, p[:, 1] - fit.dome_centre.y) - head_r) / max(
        fit.dome_radius_px - head_r, 1e-6)
    xr, _ = _to_frame(p, fit.ellipse.cx, fit.ellipse.cy, math.radians(fit.ellipse.angle_deg))
    inner, outer, beyond = HEAD_EARS_REACH
    return all(bool(np.any(sel)) and float(way[sel].min()) <= inner and outer <= float(way[sel].max()) <= beyond
               for sel in (xr < 0, xr > 0))


def _rim_across_head(fit: CupFit, head: tuple[float, float, float]) -> CupFit | None:
    """``fit`` (a rim fitted without leaving out the head's disc) where it shows that the head
    does not hide the rim: its points well inside the head's disc (image coordinates; within
    ``HEAD_CROSSING_DEPTH`` of its radius, clear of the head's own outline) cover at least
    ``HEAD_CROSSING_MIN_COVERAGE`` of the rim's long axis. ``None`` otherwise.

    A head outline in the right place is no proof of a head that hides the rim: bone (a
    resurfaced femur's own head round a cap the image barely shows, or a head drawn fainter than
    the metal) leaves the rim in view across it. A dense head leaves nothing of the rim inside
    its disc to fit: there the refusal stands.
    """
    if fit.refusal_reason is not None or fit.ellipse is None or fit.rim_points is None or fit.opening_dir is None:
        return None
    hx, hy, hr = head
    e = fit.ellipse
    p = np.asarray(fit.rim_points, dtype=np.float64)
    inside = np.hypot(p[:, 0] - hx, p[:, 1] - hy) < HEAD_CROSSING_DEPTH * hr
    if not inside.any():
        return None
    q = p[inside]
    if len(q) >= 8:
        # points that run round a circle of about the head's size are the outline of a head (or
        # cap) sitting off the shell's centre, not a rim across it
        qx, qy, qr = _circle_lsq(q)
        rms = float(np.sqrt(np.mean((np.hypot(q[:, 0] - qx, q[:, 1] - qy) - qr) ** 2)))
        if 0.6 * hr <= qr <= 1.2 * hr and rms <= max(1.0, 0.02 * hr):
            return None
    xr, _ = _to_frame(q, e.cx, e.cy, math.radians(e.angle_deg))
    bins = np.unique(np.clip(np.floor((xr / e.semi_major + 1.0) * 10.0), 0, 19).astype(int))
    return fit if len(bins) / 20.0 >= HEAD_CROSSING_MIN_COVERAGE else None


def _rim_fit(
    smooth: NDArray[np.float32],
    gx: NDArray[np.float32],
    gy: NDArray[np.float32],
    dome: tuple[float, float, float],
    hyp: tuple[float, float, float],
    u: FloatArray,
    base: CupFit,
    stems: Sequence[tuple[float, float, float, float]],
    dome_step: float,
    dome_width: float,
    span: float,
    offset: tuple[int, int],
    box: Box,
    head: tuple[float, float, float] | None = None,
    camera: tuple[float, Point] | None = None,
    min_box_iou: float = MIN_BOX_IOU,
    min_coverage: float = MIN_RIM_COVERAGE,
    min_end_coverage: tuple[float, float] = (MIN_RIM_END_COVERAGE, MIN_RIM_ENDS_COVERAGE),
) -> CupFit:
    """Rim points and the robust ellipse fit from one search hypothesis (ROI coordinates)."""
    ccx, ccy, R = dome
    a_best, k_best, th_best = hyp
    ox, oy = offset
    params = np.array([ccx, ccy, a_best, k_best * a_best, th_best])
    tol = max(1.0, 0.012 * R)
    rim = np.zeros((0, 2))
    prior = (ccx, ccy, a_best)
    for search in (4.0, 2.5):
        rim = _rim_points(gx, gy, params, u, search, 0.3 * dome_step / 1.5, stems, R, smooth, dome_width, True)
        rim = rim[_off_head(rim, head, max(1.5, 0.02 * R))]
        if len(rim) < MIN_RIM_POINTS:
            break
        w_prior = PRIOR_SCALE * math.sqrt(len(rim))
        params = fit_ellipse_geometric(rim, params, prior, w_prior, 0.5 * tol)
        if camera is not None:
            # under a point source the rim's centre and long axis are not the dome's (see
            # rim_ellipse_prior): re-anchor them for the axis just found
            e = Ellipse(params[0], params[1], max(abs(params[2]), abs(params[3])), min(abs(params[2]), abs(params[3])),
                        math.degrees(params[4] + (math.pi / 2 if abs(params[3]) > abs(params[2]) else 0.0)))
            n = cup_axis_perspective(e, (float(u[0]), float(u[1])), camera[0], camera[1])
            prior = rim_ellipse_prior((ccx, ccy, a_best), n, camera[0], camera[1])
    if len(rim):
        rim = rim[np.abs(ellipse_distance(rim, *params)) < tol]
    cx, cy, a, b, th = (float(v) for v in params)
    a, b = abs(a), abs(b)
    if b > a:
        a, b, th = b, a, th + math.pi / 2
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
    end_cov = _rim_end_coverage(xr[on_open] / a)
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
        dome_contrast=dome_step,
        box_iou=_silhouette_iou(ell, (float(v[0]), float(v[1])), ell.semi_major, box),
        gap_turn_deg=math.degrees(math.acos(float(np.clip(v @ u, -1.0, 1.0)))),
        rim_end_coverage=end_cov,
    )
    if rms > MAX_RIM_RMS_PX:
        return _refuse(fit, f"rim ellipse fit residual too large ({rms:.2f} px)")
    clear_dome = span >= CLEAR_DOME_SPAN_DEG and quality >= CLEAR_DOME_QUALITY
    loose_box = clear_dome and fit.gap_turn_deg <= LOOSE_BOX_MAX_TURN_DEG
    if fit.box_iou < (min(min_box_iou, MIN_BOX_IOU_CLEAR_DOME) if loose_box else min_box_iou):
        return _refuse(fit, f"{OUTLINE_BOX_REFUSAL} (IoU {fit.box_iou:.2f})")
    if _outside_box(ell, box) > (MAX_RIM_END_OUTSIDE_CLEAR_DOME if clear_dome else MAX_RIM_END_OUTSIDE_BOX):
        return _refuse(fit, f"{RIM_BEYOND_BOX_REFUSAL}: its ends are not the cup's")
    if coverage < min_coverage:
        return _refuse(fit, f"too little of the rim visible ({coverage:.0%})")
    if min(end_cov) < min_end_coverage[0] or sum(end_cov) < min_end_coverage[1]:
        return _refuse(fit, f"rim not seen where it meets the dome ({end_cov[0]:.0%} and {end_cov[1]:.0%} of its ends): "
                            "the outline found is not the rim")
    in_range = RIM_MIN_DOME_SHARE * R <= a <= FLANGE_MAX_DOME_SHARE * R
    if not in_range or (a > RIM_MAX_DOME_SHARE * R and not _flange_shows(smooth, ell, (ccx, ccy, R), (ox, oy))):
        return _refuse(fit, "rim ellipse does not match the dome radius")
    if quality < MIN_QUALITY:
        return _refuse(fit, f"fit quality too low ({quality:.2f})")
    return fit


def _flange_shows(smooth: NDArray[np.float32], ell: Ellipse, dome: tuple[float, float, float],
                  offset: tuple[int, int]) -> bool:
    """Whether a rim ellipse wider than the dome (semi-major up to ``FLANGE_MAX_DOME_SHARE`` of its
    radius) is a flange's: a flat collar round the opening, in the opening's plane, whose outline
    gives the opening's orientation and axis ratio as the rim does. The metal must then reach out
    to the ellipse's ends - midway between the dome's circle and each end the image is within
    ``1 - FLANGE_MIN_METAL_SHARE`` of the metal's level (inside the dome) over the background's
    (just outside it) - and the rim must not be very open (axis ratio at most
    ``FLANGE_MAX_AXIS_RATIO``): a wide, round outline is a head or cap, not a collar."""
    if ell.semi_minor > FLANGE_MAX_AXIS_RATIO * ell.semi_major:
        return False
    cx, cy, R = dome
    ox, oy = offset
    ang = np.radians(np.arange(0.0, 360.0, 10.0))
    metal = float(np.percentile(sample_bilinear(smooth, cx + 0.85 * R * np.cos(ang), cy + 0.85 * R * np.sin(ang)), 75))
    bg = float(np.percentile(sample_bilinear(smooth, cx + 1.2 * R * np.cos(ang), cy + 1.2 * R * np.sin(ang)), 25))
    th = math.radians(ell.angle_deg)
    r = 0.5 * (R + ell.semi_major)
    ex, ey = ell.cx - ox, ell.cy - oy
    ends = sample_bilinear(smooth, np.array([ex + r * math.cos(th), ex - r * math.cos(th)]),
                           np.array([ey + r * math.sin(th), ey - r * math.sin(th)]))
    return bool(metal > bg and float(np.min(ends)) - bg >= FLANGE_MIN_METAL_SHARE * (metal - bg))


def _rim_end_coverage(x: FloatArray) -> tuple[float, float]:
    """Share of each end of the rim's open half (``RIM_END_SPAN`` of the semi-major axis from the
    centre) that has rim points; ``x``: rim points' coordinates along the long axis / a."""
    lo, hi = RIM_END_SPAN
    n = round((hi - lo) / 0.02)
    out = []
    for sgn in (-1.0, 1.0):
        u = sgn * x
        sel = (u >= lo) & (u < hi)
        out.append(float(len(np.unique(np.floor((u[sel] - lo) / 0.02).astype(int)))) / n)
    return out[0], out[1]


def _outside_box(e: Ellipse, box: Box) -> float:
    """How far the farther end of the ellipse's long axis lies outside ``box``, as a share of the
    box's longer side (0 inside). The rim's ends are the cup's extreme points along the opening's
    long axis, which the detector's box bounds."""
    th = math.radians(e.angle_deg)
    dx, dy = e.semi_major * math.cos(th), e.semi_major * math.sin(th)
    out = max(max(box.x0 - x, x - box.x1, box.y0 - y, y - box.y1, 0.0)
              for x, y in ((e.cx - dx, e.cy - dy), (e.cx + dx, e.cy + dy)))
    return out / max(box.width, box.height)


def _scale_about_centre(e: Ellipse, k: float) -> Ellipse:
    return Ellipse(e.cx, e.cy, e.semi_major * k, e.semi_minor * k, e.angle_deg)


def _silhouette_bounds(e: Ellipse, opening: tuple[float, float], R: float) -> tuple[float, float, float, float]:
    """Bounding box of the modelled shell silhouette: the dome half-circle of radius R plus the
    open half of the rim ellipse."""
    u = np.asarray(opening)
    base = math.atan2(-u[1], -u[0])
    ang = base + np.radians(np.linspace(-90.0, 90.0, 61))
    dome = np.column_stack([e.cx + R * np.cos(ang), e.cy + R * np.sin(ang)])
    rim = ellipse_points(e, np.linspace(0, 2 * math.pi, 121))
    rim = rim[(rim - np.array([e.cx, e.cy])) @ u >= 0]
    pts = np.concatenate([dome, rim])
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _silhouette_iou(e: Ellipse, opening: tuple[float, float], R: float, box: Box) -> float:
    """IoU of the box around the modelled shell silhouette (``_silhouette_bounds``) with the
    detector's cup box, in image pixels."""
    x0, y0, x1, y1 = _silhouette_bounds(e, opening, R)
    ix = max(0.0, min(x1, box.x1) - max(x0, box.x0))
    iy = max(0.0, min(y1, box.y1) - max(y0, box.y0))
    inter = ix * iy
    union = (x1 - x0) * (y1 - y0) + box.width * box.height - inter
    return float(inter / union) if union > 0 else 0.0


def _refuse(fit: CupFit, reason: str) -> CupFit:
    """``fit`` with its refusal reason: everything found stays for overlays and quality control."""
    return replace(fit, refusal_reason=reason)


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
# the marker wire of a cemented all-polyethylene cup
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireFit:
    """The metal marker wire of an all-polyethylene cup, fitted with an ellipse.

    ``kind``: "ring" (a closed wire round the opening: its ellipse is the opening's) or "arc" (a
    half-circle over the dome: it does not give the opening). ``coverage``: share of the ellipse
    (72 bins of 5°) with wire points; ``symmetry``: share of those whose opposite bin (through the
    centre) has wire too — about 1 for a ring, whose two halves a head in the middle hides
    alike, about 0 for an arc, which is one half of its ellipse.
    """

    kind: str
    ellipse: Ellipse
    points: FloatArray
    coverage: float
    symmetry: float
    longest_run_deg: float
    rms_px: float


def _ridge_points(
    roi: NDArray[np.float32], sigma: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Centre-line points of thin bright lines (ridges) at scale ``sigma``: points (x, y), unit
    normals across the line, and the line's height above the brighter of its two sides.

    Hessian of the Gaussian-smoothed image: across a bright line its smallest eigenvalue is
    strongly negative; non-maximum suppression along that direction and a parabola give the
    centre line to a fraction of a pixel. The height test (centre minus the brighter side, 3σ
    out) keeps lines and drops the bright side of a step edge (a head's or stem's outline), which
    has the same curvature on one side only.
    """
    sm = cv2.GaussianBlur(roi, (0, 0), sigma)
    dxx = cv2.Sobel(sm, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(sm, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(sm, cv2.CV_32F, 1, 1, ksize=3)
    half_tr = 0.5 * (dxx + dyy)
    lam = half_tr - np.sqrt(np.maximum(half_tr * half_tr - (dxx * dyy - dxy * dxy), 0.0))
    vx, vy = dxy, lam - dxx
    flat = np.abs(vx) + np.abs(vy) < 1e-9
    vx, vy = np.where(flat, lam - dyy, vx), np.where(flat, dxy, vy)
    nn = np.hypot(vx, vy) + 1e-12
    vx, vy = vx / nn, vy / nn
    strength = np.asarray(np.maximum(-lam, 0.0), dtype=np.float32)
    h, w = strength.shape
    thr = float(subsampled_percentile(strength, 90.0))
    if thr <= 1e-9:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
    m = 3
    inner = strength[m : h - m, m : w - m] > thr
    yi, xi = np.nonzero(inner)
    yi, xi = yi + m, xi + m
    nx, ny = vx[yi, xi].astype(np.float64), vy[yi, xi].astype(np.float64)
    p = np.column_stack([xi, yi]).astype(np.float64)
    k3 = np.array([-1.0, 0.0, 1.0])
    sp = sample_bilinear(strength, (p[:, 0:1] + nx[:, None] * k3).astype(np.float32),
                         (p[:, 1:2] + ny[:, None] * k3).astype(np.float32))
    peak = (sp[:, 1] >= sp[:, 0]) & (sp[:, 1] >= sp[:, 2])
    den = sp[:, 0] - 2.0 * sp[:, 1] + sp[:, 2]
    off = np.where(np.abs(den) > 1e-12, 0.5 * (sp[:, 0] - sp[:, 2]) / np.where(np.abs(den) > 1e-12, den, 1.0), 0.0)
    q = p + np.column_stack([nx, ny]) * np.clip(off, -0.5, 0.5)[:, None]
    d = np.array([-3.0 * sigma, 0.0, 3.0 * sigma])
    light = np.asarray(cv2.GaussianBlur(roi, (0, 0), 0.7), dtype=np.float32)
    v = sample_bilinear(light, (q[:, 0:1] + nx[:, None] * d).astype(np.float32),
                        (q[:, 1:2] + ny[:, None] * d).astype(np.float32))
    height = v[:, 1] - np.maximum(v[:, 0], v[:, 2])
    return q[peak], np.column_stack([nx, ny])[peak], np.asarray(height[peak], dtype=np.float64)


def _conics_through(
    p5: FloatArray,
) -> tuple[FloatArray, NDArray[np.bool_], FloatArray, FloatArray, FloatArray, FloatArray]:
    """Conics through 5 points each, (K, 5, 2) → coefficients (K, 6) of Ax²+Bxy+Cy²+Dx+Ey+F,
    whether each is a real ellipse, and its centre x, y, semi-major and semi-minor axes.

    With F = −1: the points are centred on the cup box, inside every ellipse of interest, and a
    conic through the origin (F = 0) is no such ellipse. A 5×5 solve per hypothesis instead of a
    5×6 null space: several times faster.
    """
    x, y = p5[..., 0], p5[..., 1]
    M = np.stack([x * x, x * y, y * y, x, y], axis=-1)
    good = np.abs(np.linalg.det(M)) > 1e-12
    sol = np.zeros((len(p5), 5))
    if good.any():
        sol[good] = np.linalg.solve(M[good], np.ones((int(good.sum()), 5, 1)))[..., 0]
    c = np.concatenate([sol, -np.ones((len(p5), 1))], axis=1)
    A, B, Cc, D, E, F = c.T
    disc = B * B - 4.0 * A * Cc
    ok = good & (disc < -1e-12)
    den = np.where(ok, disc, -1.0)
    x0 = (2.0 * Cc * D - B * E) / den
    y0 = (2.0 * A * E - B * D) / den
    f0 = A * x0 * x0 + B * x0 * y0 + Cc * y0 * y0 + D * x0 + E * y0 + F
    half_tr = 0.5 * (A + Cc)
    root = np.sqrt(np.maximum(half_tr * half_tr - (A * Cc - 0.25 * B * B), 0.0))
    # the eigenvalue of smaller magnitude belongs to the long axis
    lo = np.where(half_tr >= 0, half_tr - root, half_tr + root)
    with np.errstate(divide="ignore", invalid="ignore"):
        a2 = -f0 / lo
        b2 = -f0 / (2.0 * half_tr - lo)
    ok &= np.isfinite(a2) & np.isfinite(b2) & (a2 > 0) & (b2 > 0)
    return (c, ok, x0, y0, np.sqrt(np.where(ok, np.maximum(a2, b2), 0.0)),
            np.sqrt(np.where(ok, np.minimum(a2, b2), 0.0)))


def find_marker_wire(image: NDArray[np.float32], cup_box: Box, seed: int = 0) -> WireFit | None:
    """The marker wire of an all-polyethylene cup inside ``cup_box``, if one shows.

    A cemented all-polyethylene cup is nearly invisible (the polyethylene is as radiolucent as
    soft tissue, the cement mantle around it as dense as bone); its orientation is read from a
    thin metal wire. The region is brought to a working scale (the box's longer side
    ``WIRE_WORK_PX`` pixels: the time does not grow with the detector's resolution, and the
    wire — ~1 mm in a cup of ~45–55 mm — is 2–4 px wide there). Wire points are thin bright lines
    at two scales (a sharp wire; a blurred one, or a ring seen edge-on, whose two halves merge into
    one bar), the brightest of each (≥ ``WIRE_MIN_HEIGHT_SHARE`` of the 99th-percentile line
    height: the wire is metal, bone edges are fainter). An ellipse through them is found by RANSAC
    (5 points, Sampson distance, the line running along the ellipse), centred in the box and about
    the size of the cup's opening (the box bounds the polyethylene hemisphere: the opening's
    semi-major axis is 0.52–0.6 of its longer side), then refined by the orthogonal fit. A ring
    shows on both halves of its ellipse (the head in the middle hides both alike); an arc over the
    dome is one contiguous half. Anything else — no wire, a metal-backed cup, bone — gives short
    scattered lines that cover little of any ellipse: ``None``.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or cup_box.width < 8 or cup_box.height < 8:
        return None
    roi, ox, oy = _crop(img, cup_box, 0.15)
    full_h, full_w = roi.shape
    f = max(1.0, max(cup_box.width, cup_box.height) / WIRE_WORK_PX)
    if f > 1.0:
        roi = np.asarray(cv2.resize(roi, (max(round(full_w / f), 8), max(round(full_h / f), 8)),
                                    interpolation=cv2.INTER_AREA), dtype=np.float32)
    sx, sy = full_w / roi.shape[1], full_h / roi.shape[0]
    size = max(cup_box.width / sx, cup_box.height / sy)  # the box's longer side at the working scale
    pts_l, nrm_l = [], []
    for sigma in (WIRE_SIGMA_PX, 2.0 * WIRE_SIGMA_PX):
        p, n, h = _ridge_points(roi, sigma)
        if len(p) == 0:
            continue
        top = float(np.percentile(h, 99))
        if top <= 0.0:
            continue
        keep = h >= WIRE_MIN_HEIGHT_SHARE * top
        pts_l.append(p[keep])
        nrm_l.append(n[keep])
    if not pts_l:
        return None
    pts, nrm = np.concatenate(pts_l), np.concatenate(nrm_l)
    n_pts = len(pts)
    if n_pts < 20:
        return None
    centre = np.array([(0.5 * (cup_box.x0 + cup_box.x1) - ox) / sx, (0.5 * (cup_box.y0 + cup_box.y1) - oy) / sy])
    q = (pts - centre) / size  # normalised: the conics' coefficients stay well scaled
    rng = np.random.default_rng(seed)
    c, ok, x0, y0, a, b = _conics_through(q[rng.integers(0, n_pts, (WIRE_RANSAC_ITERS, 5))])
    lo, hi = WIRE_SEMI_MAJOR_SHARE
    ok &= (np.hypot(x0, y0) <= WIRE_MAX_OFFSET_SHARE) & (a >= lo) & (a <= hi)
    flat = (b[ok] <= WIRE_RING_MAX_AXIS_RATIO * a[ok])
    c = c[ok]
    if len(c) == 0:
        return None
    # hypotheses are ranked on a fixed subsample of the points (as the dome's circles are)
    sub = np.sort(rng.choice(n_pts, size=WIRE_SCORE_POINTS, replace=False)) if n_pts > WIRE_SCORE_POINTS \
        else np.arange(n_pts)
    qs, ns = q[sub].astype(np.float32), nrm[sub].astype(np.float32)
    A, B, Cc, D, E, F = (c[:, i : i + 1].astype(np.float32) for i in range(6))
    xq, yq = qs[None, :, 0], qs[None, :, 1]
    val = A * xq * xq + B * xq * yq + Cc * yq * yq + D * xq + E * yq + F
    gx, gy = 2.0 * A * xq + B * yq + D, B * xq + 2.0 * Cc * yq + E
    g = np.hypot(gx, gy) + np.float32(1e-12)
    # the line runs along the ellipse: its normal (across the line) is the ellipse's normal
    along = np.abs(gx * ns[None, :, 0] + gy * ns[None, :, 1]) > np.float32(0.8) * g
    inl = (np.abs(val) < np.float32(WIRE_TOL_PX / size) * g) & along
    votes = inl.sum(axis=1)
    light = np.asarray(cv2.GaussianBlur(roi, (0, 0), 0.7), dtype=np.float32)
    frame = _WireFrame(pts, light, centre, size, sx, sy, ox, oy, len(sub) / n_pts)
    best = int(np.argmax(votes))
    found = _wire_from_hypothesis(frame, c[best], pts[sub][inl[best]])
    if found is None and flat.any():
        # The cement mantle's bright border is a circle about the cup as large as the ring, and
        # can outvote a ring the head hides most of; a ring is never that round (its axis ratio
        # is sin(version)): the best flat ellipse gets its own chance.
        k = int(np.flatnonzero(flat)[np.argmax(votes[flat])])
        if k != best:
            found = _wire_from_hypothesis(frame, c[k], pts[sub][inl[k]])
    return found


@dataclass(frozen=True)
class _WireFrame:
    """The working-scale wire points and image of ``find_marker_wire`` and the way back to image
    pixels (scale ``sx``, ``sy``, offset ``ox``, ``oy``)."""

    pts: FloatArray
    light: NDArray[np.float32]
    centre: FloatArray
    size: float
    sx: float
    sy: float
    ox: int
    oy: int
    sub_share: float  # the ranking subsample's share of all points


def _wire_from_hypothesis(fr: _WireFrame, cb: FloatArray, on: FloatArray) -> WireFit | None:
    """Refine one RANSAC conic (normalised coordinates) on its wire points ``on`` and say whether
    it is a ring, an arc or neither (``None``)."""
    if len(on) < 12 * fr.sub_share:
        return None
    lo, hi = WIRE_SEMI_MAJOR_SHARE
    size, centre, pts, tol = fr.size, fr.centre, fr.pts, WIRE_TOL_PX
    e0 = conic_to_ellipse(np.array([[cb[0], cb[1] / 2, cb[3] / 2], [cb[1] / 2, cb[2], cb[4] / 2],
                                    [cb[3] / 2, cb[4] / 2, cb[5]]]))
    params = np.array([e0.cx * size + centre[0], e0.cy * size + centre[1], e0.semi_major * size,
                       e0.semi_minor * size, math.radians(e0.angle_deg)])
    if _bin_coverage(e0, (on - centre) / size) < WIRE_MIN_COVERAGE_TO_REFINE:
        return None  # neither a ring nor an arc: not worth the orthogonal fit
    for _ in range(2):
        params = fit_ellipse_geometric(on, params, (params[0], params[1], params[2]), 0.0, tol)
        on = pts[np.abs(ellipse_distance(pts, *params)) < tol]
        if len(on) < 12:
            return None
    cx, cy, ea, eb, th = (float(v) for v in params)
    ea, eb = abs(ea), abs(eb)
    if eb > ea:
        ea, eb, th = eb, ea, th + math.pi / 2
    if not lo * size <= ea <= hi * size:
        return None
    bins = _angle_bins(on, cx, cy, ea, eb, th)
    coverage = float(bins.mean())
    symmetry = float((bins & np.roll(bins, 36)).sum()) / max(int(bins.sum()), 1)
    run = longest = 0
    for v in np.concatenate([bins, bins]):
        run = run + 1 if v else 0
        longest = max(longest, run)
    longest_deg = 5.0 * min(longest, 72)
    rms = float(np.sqrt(np.mean(ellipse_distance(on, cx, cy, ea, eb, th) ** 2)))
    # back to image pixels (INTER_AREA maps pixel centres: x_img = (x + 0.5)·s − 0.5)
    sx, sy = fr.sx, fr.sy
    ell = _scale_ellipse(Ellipse(cx, cy, ea, eb, math.degrees(th) % 180.0), sx, sy, fr.ox, fr.oy)
    on_img = np.column_stack([(on[:, 0] + 0.5) * sx - 0.5 + fr.ox, (on[:, 1] + 0.5) * sy - 0.5 + fr.oy])
    if coverage >= WIRE_RING_MIN_COVERAGE and symmetry >= WIRE_RING_MIN_SYMMETRY:
        return WireFit("ring", ell, on_img, coverage, symmetry, longest_deg, rms * sx)
    if longest_deg >= WIRE_ARC_MIN_RUN_DEG and symmetry <= WIRE_ARC_MAX_SYMMETRY:
        return WireFit("arc", ell, on_img, coverage, symmetry, longest_deg, rms * sx)
    if eb <= WIRE_RING_MAX_AXIS_RATIO * ea:
        # A ring a head (or stem) hides in part: judged on the part of its ellipse that could
        # show - where the wire would not lie on something at least as bright as itself.
        shown = _shown_bins(fr.light, on, cx, cy, ea, eb, th)
        if shown is not None and int(shown.sum()) >= WIRE_SHOWN_MIN_BINS:
            pair = shown & np.roll(shown, 36)
            cov_shown = float((bins & shown).sum()) / float(shown.sum())
            sym_shown = float((bins & np.roll(bins, 36) & pair).sum()) / max(int((bins & pair).sum()), 1)
            if cov_shown >= WIRE_SHOWN_MIN_COVERAGE and sym_shown >= WIRE_RING_MIN_SYMMETRY:
                return WireFit("ring", ell, on_img, coverage, sym_shown, longest_deg, rms * sx)
    return None


def _shown_bins(light: NDArray[np.float32], on: FloatArray, cx: float, cy: float, a: float, b: float,
                th: float) -> NDArray[np.bool_] | None:
    """Which of the 72 angle bins of an ellipse a wire could show in: not where both sides of the
    ellipse are as bright as the wire found on it (a metal head or stem over the wire)."""
    h, w = light.shape
    if len(on) < 8:
        return None
    level = float(np.median(sample_bilinear(light, on[:, 0:1].astype(np.float32), on[:, 1:2].astype(np.float32))))
    t = (np.arange(72 * 3) + 0.5) / (72 * 3) * 2.0 * math.pi
    p = ellipse_points(Ellipse(cx, cy, a, b, math.degrees(th)), t)
    ct, st, c0, s0 = np.cos(t), np.sin(t), math.cos(th), math.sin(th)
    n = np.column_stack([b * ct * c0 - a * st * s0, b * ct * s0 + a * st * c0])  # the normal
    n = n / (np.hypot(n[:, 0], n[:, 1])[:, None] + 1e-12)
    d = np.array([-3.0 * WIRE_SIGMA_PX, 3.0 * WIRE_SIGMA_PX])
    v = sample_bilinear(light, (p[:, 0:1] + n[:, 0:1] * d).astype(np.float32),
                        (p[:, 1:2] + n[:, 1:2] * d).astype(np.float32))
    inside = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
    hidden = (np.min(v, axis=1) >= WIRE_HIDDEN_LEVEL_SHARE * level) | ~inside
    return np.asarray(~hidden.reshape(72, 3).all(axis=1))


def _angle_bins(p: FloatArray, cx: float, cy: float, a: float, b: float, th: float) -> NDArray[np.bool_]:
    """Which of 72 bins of the ellipse's parametric angle (5° each) have points."""
    xr, yr = _to_frame(p, cx, cy, th)
    t = np.arctan2(yr / max(b, 1e-6), xr / max(a, 1e-6)) % (2.0 * math.pi)
    bins = np.zeros(72, dtype=bool)
    bins[np.floor(t / (2.0 * math.pi) * 72).astype(int) % 72] = True
    return bins


def _bin_coverage(e: Ellipse, p: FloatArray) -> float:
    """Share of the 72 angle bins of ``e`` that points ``p`` fall in."""
    return float(_angle_bins(p, e.cx, e.cy, e.semi_major, e.semi_minor, math.radians(e.angle_deg)).mean())


def _scale_ellipse(e: Ellipse, sx: float, sy: float, ox: float, oy: float) -> Ellipse:
    """An ellipse found on a resized crop, in the full image's pixels (exact for sx ≠ sy too:
    the conic is mapped, not just its axes)."""
    if abs(sx - 1.0) < 1e-12 and abs(sy - 1.0) < 1e-12:
        return Ellipse(e.cx + ox, e.cy + oy, e.semi_major, e.semi_minor, e.angle_deg)
    # X_img = S·X_roi + t  ⇒  C_img = Hᵀ C_roi H with H = S⁻¹ (X_img − t)
    H = np.array([[1.0 / sx, 0.0, -(ox - 0.5 * sx + 0.5) / sx], [0.0, 1.0 / sy, -(oy - 0.5 * sy + 0.5) / sy],
                  [0.0, 0.0, 1.0]])
    return conic_to_ellipse(H.T @ ellipse_conic(e) @ H)


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

    A cup off the central ray is seen obliquely by δ ≈ 3–6° (its offset / SID). When the rim is
    nearly edge-on to that ray (true anteversion below ~2δ) *both* solutions face the source.
    They are mirror images of each other about the plane perpendicular to the local ray (one
    opens towards that ray, one away from it), so the shell's ray sums are the same up to
    perspective terms well below a pixel (the projected shell centres differ by ~0.2 px): the
    image cannot tell them apart. The normalised mean of the two axes is returned. Under a flat
    prior over anteversion that costs nothing in mean error against picking either one, and it
    halves the worst case (from the pair's separation, up to ~2δ, to half of it); on the phantom
    bench (200 + 200 cups) it lowered the 95th-percentile error by 1.2–1.6°.
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
    facing: list[FloatArray] = []
    for sgn in (1.0, -1.0):
        n = sgn * g1 * V[:, 0] + g3 * V[:, 2]
        n = n / np.linalg.norm(n)
        if n[:2] @ u < 0:
            n = -n
        if n[2] <= 0:
            facing.append(n)
            if best is None or n[2] < best[2] - 1e-12:
                best = n
    if len(facing) == 2:
        mean = facing[0] + facing[1]
        return np.asarray(mean / np.linalg.norm(mean), dtype=np.float64)
    if best is None:  # both face away: nearly edge-on; take the parallel-beam answer
        return cup_axis_parallel(e, opening_dir)
    return best


def _sphere_cone(direction: FloatArray, sin_alpha: float) -> FloatArray:
    """Quadratic form of the cone of rays tangent to a sphere seen in ``direction`` (unit) under
    the half-angle α: rᵀQr = 0 ⇔ the angle between r and the direction is α."""
    return np.outer(direction, direction) - (1.0 - sin_alpha * sin_alpha) * np.eye(3)


def rim_ellipse_prior(
    dome: tuple[float, float, float], axis: FloatArray, focal_px: float, principal: Point
) -> tuple[float, float, float]:
    """Centre and semi-major axis of the rim ellipse that goes with a dome outline under a point
    source, for a given cup axis: (cx, cy, a), in the dome's pixel coordinates.

    On a parallel beam the rim ellipse shares the dome circle's centre and radius. Under a point
    source it does not: the rim is a great circle of the shell's sphere, and a circle tilted
    towards the source projects to an ellipse whose centre is pulled towards the central ray
    (the near half is magnified more), by up to 1–1.5 px for an anteverted cup 10–15 cm off the
    central ray, and whose long axis is ~0.5 % shorter than the sphere's outline. Tying the rim
    to the dome's own centre and radius then skews the rim fit: the centre is dragged to the open
    side and the minor axis shrinks (anteversion −0.5…−1° at 20–35°). The sphere is recovered
    from its outline (direction and angular radius; the distance does not matter), the rim circle
    through its centre perpendicular to ``axis`` is projected exactly.
    """
    cx, cy, r = dome
    K = np.array([[focal_px, 0.0, principal.x], [0.0, focal_px, principal.y], [0.0, 0.0, 1.0]])
    Kinv = np.linalg.inv(K)
    tx, ty, tr = cx, cy, r
    d = np.zeros(3)
    sin_a = 0.0
    for _ in range(3):
        ray = Kinv @ np.array([tx, ty, 1.0])
        d = ray / np.linalg.norm(ray)
        sin_a = math.sin(math.atan(tr / (focal_px * np.linalg.norm(ray))))
        try:
            sil = conic_to_ellipse(Kinv.T @ _sphere_cone(d, sin_a) @ Kinv)
        except (ValueError, np.linalg.LinAlgError):
            return cx, cy, r
        # the outline is a (very nearly circular) ellipse: match its centre and mean radius
        tx, ty = tx + cx - sil.cx, ty + cy - sil.cy
        tr = tr + r - 0.5 * (sil.semi_major + sil.semi_minor)
    n = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    X = d  # the sphere's centre at unit distance; its radius is then sin α
    h = float(n @ X)
    Q = h * h * np.eye(3) - h * (np.outer(n, X) + np.outer(X, n)) + (1.0 - sin_a * sin_a) * np.outer(n, n)
    try:
        rim = conic_to_ellipse(Kinv.T @ Q @ Kinv)
    except (ValueError, np.linalg.LinAlgError):
        return cx, cy, r  # a degenerate axis (rim seen exactly edge-on from the source): no better prior
    if not (math.isfinite(rim.cx) and math.isfinite(rim.cy) and math.isfinite(rim.semi_major)):
        return cx, cy, r
    return rim.cx, rim.cy, rim.semi_major


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
    wire: WireFit | None = None,
    min_box_iou: float = MIN_BOX_IOU,
) -> CupMeasurement:
    """Measure one cup: inclination and anteversion (AP) or Woo–Morrey version (lateral).

    ``image``: float32 0..1, MONOCHROME2 (metal bright). ``reference``: the pelvic reference line
    (``reference.reference_from_boxes``); ``None`` falls back to the image horizontal and flags
    the result. ``pixel_spacing_mm`` with ``geometry`` enables the point-source correction
    (focal length in pixels = SID / detector pixel spacing). ``wire``: a marker wire already found
    (``cup_box_from_marker_wire``): the cup is read from it alone. ``min_box_iou``: how well the
    modelled cup outline must fill ``cup_box`` (``MIN_BOX_IOU``; the caller lowers it only where
    two different boxes led to the same outline). Never raises on bad images: an untrustworthy fit
    comes back with no numbers and a ``refusal_reason``.
    """
    try:
        return _measure_cup(image, cup_box, side, view, reference=reference, pixel_spacing_mm=pixel_spacing_mm,
                            stem_boxes=stem_boxes, geometry=geometry, wire=wire, min_box_iou=min_box_iou)
    except Exception as exc:  # a bug here must cost one hip's angles, not the study's report
        log.exception("cup fit failed on the %s hip", side.name.lower())
        ref = reference if reference is not None else horizontal_line(int(np.shape(image)[1]))
        return CupMeasurement(
            side=side,
            inclination_deg=None,
            anteversion_deg=None,
            inclination_reference=ref.method,
            anteversion_method=WOO_MORREY if view is View.LATERAL_HIP else LEWINNEK,
            reference_line=ref.as_points(),
            refusal_reason=f"cup fit failed ({type(exc).__name__}); see the node log",
            flagged=ref.method == HORIZONTAL and view is not View.LATERAL_HIP,
        )


def _measure_cup(
    image: NDArray[np.float32],
    cup_box: Box,
    side: Side,
    view: View,
    *,
    reference: ReferenceLine | None,
    pixel_spacing_mm: float | None,
    stem_boxes: Sequence[Box],
    geometry: ProjectionGeometry | None,
    wire: WireFit | None = None,
    min_box_iou: float = MIN_BOX_IOU,
) -> CupMeasurement:
    """``measure_cup`` without its guard against unexpected errors."""
    lateral_view = view in (View.LATERAL_HIP,)
    ref = reference if reference is not None else horizontal_line(int(image.shape[1]))
    flagged = ref.method == HORIZONTAL and not lateral_view
    hint: tuple[float, float] | None = None
    if not lateral_view:
        hx, hy = ref.unit
        lat = (-hx, -hy) if side is Side.RIGHT else (hx, hy)
        inf = (-hy, hx)
        hint = (lat[0] + inf[0], lat[1] + inf[1])
    camera = None
    if geometry is not None and pixel_spacing_mm:
        pp = geometry.principal_point or Point((image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0)
        camera = (geometry.source_image_distance_mm / pixel_spacing_mm, pp)
    if hint is not None and view in (View.AP_PELVIS, View.AP_HIP):
        # An all-polyethylene cup shows its orientation only by its marker wire; a wire, where
        # one shows, is read before (and instead of) any outline: the "dome" of such a cup is the
        # bone-like cement mantle, and its rim does not show.
        given = wire is not None
        if wire is None:
            wire = find_marker_wire(image, cup_box)
        wire_fit = None if wire is None else _wire_fit(wire, hint, cup_box)
        if wire_fit is not None:
            return _measure_fit(wire_fit, image, side, view, ref, flagged, pixel_spacing_mm, geometry)
        if given:
            return _measure_fit(CupFit(None, None, refusal_reason="the marker wire found near the hip joint does "
                                       "not match the cup it implies"), image, side, view, ref, flagged,
                                pixel_spacing_mm, geometry)
    elif wire is not None:
        return _measure_fit(CupFit(None, None, refusal_reason="a cup found only by its marker wire is measured "
                                   "on AP views only"), image, side, view, ref, flagged, pixel_spacing_mm, geometry)
    fit = fit_cup_ellipse(image, cup_box, stem_boxes=stem_boxes, open_hint=hint, camera=camera, min_box_iou=min_box_iou)
    m = _measure_fit(fit, image, side, view, ref, flagged, pixel_spacing_mm, geometry)
    suspect = m.anteversion_deg is not None and m.anteversion_deg > SUSPECT_ANTEVERSION_DEG
    if (m.refusal_reason is not None or suspect) and hint is not None and view in (View.AP_PELVIS, View.AP_HIP) \
            and not fit.head_fills_shell:
        # The usual culprit of a refusal, or of a very open rim, is the femoral head: a bright
        # disc concentric with the shell whose outline reads as a wide-open rim. Search again for
        # rims flatter than any head outline could be; keep that answer only when it passes
        # every check and a higher quality bar, else keep the first answer (or refusal).
        retry = fit_cup_ellipse(image, cup_box, stem_boxes=stem_boxes, open_hint=hint, max_ratio=RETRY_MAX_RATIO,
                                camera=camera, min_box_iou=min_box_iou)
        m2 = _measure_fit(retry, image, side, view, ref, flagged, pixel_spacing_mm, geometry)
        if m2.refusal_reason is None and retry.quality >= RETRY_MIN_QUALITY:
            return m2
    if (m.refusal_reason is not None and hint is not None and view in (View.AP_PELVIS, View.AP_HIP)
            and min_box_iou > LOOSE_BOX_MIN_IOU):
        # a box loose round a cup of a style the detector never saw (see LOOSE_BOX_MIN_IOU)
        loose = fit_cup_ellipse(image, cup_box, stem_boxes=stem_boxes, open_hint=hint, camera=camera,
                                min_box_iou=LOOSE_BOX_MIN_IOU)
        m3 = _measure_fit(loose, image, side, view, ref, flagged, pixel_spacing_mm, geometry)
        if (m3.refusal_reason is None and loose.quality >= RETRY_MIN_QUALITY and loose.ellipse is not None
                and loose.dome_radius_px
                and loose.ellipse.semi_major >= LOOSE_BOX_MIN_RIM_SHARE * loose.dome_radius_px):
            return m3
    if m.refusal_reason is not None and hint is not None and view in (View.AP_PELVIS, View.AP_HIP):
        # one end of the rim lost where the shell meets bone as bright as itself (ONE_END_MIN_COVERAGE),
        # then the detector's box shifted off a right outline (SELF_BOX_MIN_IOU)
        one = fit_cup_ellipse(image, cup_box, stem_boxes=stem_boxes, open_hint=hint, camera=camera,
                              min_box_iou=min_box_iou, min_end_coverage=(0.0, ONE_END_MIN_COVERAGE))
        m4 = _measure_fit(one, image, side, view, ref, flagged, pixel_spacing_mm, geometry)
        if (m4.refusal_reason is None and one.ellipse is not None and one.dome_radius_px
                and max(one.rim_end_coverage) >= ONE_END_MIN_COVERAGE and one.quality >= RETRY_MIN_QUALITY
                and one.rim_rms_px is not None and one.rim_rms_px <= ONE_END_MAX_RMS_PX
                and one.ellipse.semi_major >= ONE_END_MIN_RIM_SHARE * one.dome_radius_px):
            return m4
        own = _fit_in_own_box(image, fit, cup_box, stem_boxes, hint, camera)
        if own is not None:
            m5 = _measure_fit(own, image, side, view, ref, flagged, pixel_spacing_mm, geometry)
            if m5.refusal_reason is None:
                return m5
    return m


# Where every rim fit on an AP view was refused, a cup whose metal the film clips to one flat
# plateau (shell, head and neck alike) is read from its outline (``node.analyse.silhouette``): the
# rim's ellipse shares the dome circle's centre and radius, its long axis is square to the dome
# arc's middle, and its minor axis is the smaller one the open side's two ends show. The pipeline
# tries it after every other reading (``measure_cup_from_outline``). Dev sketch cup sets, through
# the whole analysis: seeds 424270-424330 (678 visible cups) 603 -> 628 measured, the new readings
# within 1.9° / 4.2° of the truth's angles; fresh seeds 424340-424370 afterwards (394) 337 -> 353,
# within 5.0° / 5.2°; no reading already made changed. Analytic / voxel dev cups (424270-424290,
# 470): one more (voxel, 1.3° / 2.0°; their metal is seldom clipped). On the dev mixed sets (sketch
# 424240-424370, analytic / voxel 424270 / 424310) 55 sides were read so, every one a true cup,
# MAE 1.57° / 1.63° (worst 9.7° / 6.1°) against the rim fits' 1.49° / 1.67° (worst 25.8° / 31.6°)
# on the other 870 cups of those films.
# A cup whose head fills it gets its inclination only from the rim fit (the opening's direction,
# read two ways that agree within 3°); the outline may give both angles where the rim's ends show
# past the head, and is kept only where its inclination agrees with that reading within this. Dev
# sketch cups given an inclination only: 4 read so (seeds 424300, 424330, 424340, 424360), within
# 0.9° of the truth's rim ellipse in both angles.
OUTLINE_MAX_INCLINATION_TURN_DEG = 3.0
SILHOUETTE_NOTE = ("Cup read from its metal outline: the film shows the metal as one flat white "
                   "plateau, so the rim inside it does not show; inclination from the dome's half circle, "
                   "anteversion from the open side's outline")


def measure_cup_from_outline(
    image: NDArray[np.float32],
    cup_box: Box,
    side: Side,
    view: View,
    refused: CupMeasurement,
    *,
    reference: ReferenceLine | None,
    pixel_spacing_mm: float | None = None,
    geometry: ProjectionGeometry | None = None,
) -> CupMeasurement | None:
    """A cup every rim fit refused (``refused``), or gave its inclination only (a head filling
    the cup), read from its clipped metal outline (``SILHOUETTE_NOTE``) on an AP view, or ``None``;
    an inclination already read must agree within ``OUTLINE_MAX_INCLINATION_TURN_DEG``. The caller
    tries it last, after every reading from the rim's own edge. Never raises: a failure costs this
    reading only."""
    why = refused.refusal_reason or refused.anteversion_refusal
    if view not in (View.AP_PELVIS, View.AP_HIP) or why is None:
        return None
    ref = reference if reference is not None else horizontal_line(int(image.shape[1]))
    flagged = ref.method == HORIZONTAL
    hx, hy = ref.unit
    lat = (-hx, -hy) if side is Side.RIGHT else (hx, hy)
    hint = (lat[0] - hy, lat[1] + hx)  # lateral and inferior, as in _measure_cup
    try:
        fit = _silhouette_fit(image, cup_box, hint)
        if fit is None:
            return None
        m = _measure_fit(fit, image, side, view, ref, flagged, pixel_spacing_mm, geometry)
    except Exception:  # a bug here must not cost the refusal already in hand
        log.exception("cup outline reading failed on the %s hip", side.name.lower())
        return None
    if m.refusal_reason is not None or m.inclination_deg is None:
        return None
    turn = None if refused.inclination_deg is None else abs(m.inclination_deg - refused.inclination_deg)
    if turn is not None and turn > OUTLINE_MAX_INCLINATION_TURN_DEG:
        return None  # the opening's own direction (inclination only) disagrees with the outline's
    return replace(m, note=f"{SILHOUETTE_NOTE} (the rim fit: {why})")


def _silhouette_fit(image: NDArray[np.float32], cup_box: Box, hint: tuple[float, float]) -> CupFit | None:
    """The rim a clipped cup's outline implies, as a fit ``_measure_fit`` reads, or ``None``."""
    s = read_silhouette(image, cup_box, hint)
    if s is None:
        return None
    ell = Ellipse(s.cx, s.cy, s.radius, s.semi_minor, s.angle_deg)
    return CupFit(ell, s.opening_dir, dome_centre=Point(s.cx, s.cy), dome_radius_px=s.radius,
                  dome_span_deg=s.dome_span_deg, quality=1.0 - s.end_spread,
                  box_iou=_silhouette_iou(ell, s.opening_dir, s.radius, cup_box))


def _fit_in_own_box(image: NDArray[np.float32], refused: CupFit, cup_box: Box, stem_boxes: Sequence[Box],
                    hint: tuple[float, float], camera: tuple[float, Point] | None) -> CupFit | None:
    """A fit refused for the detector's box alone, confirmed in the box of its own silhouette
    (``SELF_BOX_MIN_IOU``), or ``None``."""
    e = refused.ellipse
    if (refused.refusal_reason is None or e is None or refused.opening_dir is None
            or not refused.refusal_reason.startswith((OUTLINE_BOX_REFUSAL, RIM_BEYOND_BOX_REFUSAL))
            or refused.box_iou < SELF_BOX_MIN_IOU):
        return None
    x0, y0, x1, y1 = _silhouette_bounds(e, refused.opening_dir, e.semi_major)
    again = fit_cup_ellipse(image, Box(x0, y0, x1, y1, cup_box.label, cup_box.score), stem_boxes=stem_boxes,
                            open_hint=hint, camera=camera)
    if (again.refusal_reason is not None or again.ellipse is None or again.quality < RETRY_MIN_QUALITY
            or again.rim_rms_px is None or again.rim_rms_px > SELF_BOX_MAX_RMS_PX
            or not same_rim(e, again.ellipse)):
        return None
    return again


def same_rim(a: Ellipse, b: Ellipse) -> bool:
    """Whether two rim ellipses are the same outline (``SAME_RIM_DEG``, ``SAME_RIM_SHARE``)."""
    turn = abs((a.angle_deg - b.angle_deg + 90.0) % 180.0 - 90.0)
    width = abs(math.degrees(math.asin(min(1.0, a.semi_minor / a.semi_major)))
                - math.degrees(math.asin(min(1.0, b.semi_minor / b.semi_major))))
    tol = max(1.0, SAME_RIM_SHARE * a.semi_major)
    return (turn <= SAME_RIM_DEG and width <= SAME_RIM_DEG and math.hypot(a.cx - b.cx, a.cy - b.cy) <= tol
            and abs(a.semi_major - b.semi_major) <= SAME_RIM_SHARE * a.semi_major)


# Where an all-polyethylene cup has no box at all (its polyethylene and cement are not metal, and
# on a style the detector never saw it may box the stem but not the cup), its marker wire is
# looked for where the cup sits in the hip-joint box: centred at these shares of the joint box's
# width from its medial edge and of its height from the top, in square boxes of these shares of
# its width (truth cup boxes on dev phantoms: centre 0.44–0.48 / 0.38–0.41, width 0.54–0.59).
WIRE_JOINT_CENTRE = (0.46, 0.40)
WIRE_JOINT_SIZES = (0.56, 0.48, 0.66)
# The head sits in the cup, concentric with it, and the ring lies in the opening's plane through
# the cup's centre: a ring's centre lies near the head's. On dev sketch films (cups seeds
# 424270-424330, 39 cups read from a wire found in the joint) the right rings were centred within
# 0.21 of their semi-major axis of the metal ball's box centre (up to 0.15 where the ball is a
# head named "cup"; a bare head's box takes in a stub of neck); the one "ring" there that was the
# cement mantle's bright inner border (read 18° / 24° off) at 0.59. Checked in the joint-box
# search only, where the box is placed by proportion and can frame the mantle.
WIRE_BALL_MAX_OFFSET_SHARE = 0.35


def cup_box_from_marker_wire(image: NDArray[np.float32], joint: Box, side: Side,
                             ball: Box | None = None) -> tuple[Box, WireFit] | None:
    """A cup box for a cemented all-polyethylene cup nobody boxed, from its marker wire near the
    hip joint (``WIRE_JOINT_CENTRE``, ``WIRE_JOINT_SIZES``): the box of the hemisphere the wire
    implies (at ``WIRE_MANTLE_SCALES[2]`` of the wire's radius, the mantle's usual size) with the
    wire, or ``None`` where no ring or arc shows. Only a wire counts: an outline found in a box
    placed by proportion alone could be any bone edge, so the cup is then measured from this wire
    alone (``measure_cup(..., wire=...)``), never by the shell fit. ``ball``: the metal finder's
    head (or head-and-cup) box on that side, if any: a ring centred away from it
    (``WIRE_BALL_MAX_OFFSET_SHARE``) is some other bright ellipse, and the next box size is tried."""
    fx, fy = WIRE_JOINT_CENTRE
    cx = joint.x0 + fx * joint.width if side is Side.LEFT else joint.x1 - fx * joint.width
    cy = joint.y0 + fy * joint.height
    lateral = 1.0 if side is Side.LEFT else -1.0  # the patient's left hip lies on the image's right
    hint = (lateral, 1.0)
    for share in WIRE_JOINT_SIZES:
        half = 0.5 * share * joint.width
        wire = find_marker_wire(image, Box(cx - half, cy - half, cx + half, cy + half, "cup", 0.0))
        if wire is None:
            continue
        if ball is not None and wire.kind == "ring" and math.hypot(
                wire.ellipse.cx - ball.centre.x,
                wire.ellipse.cy - ball.centre.y) > WIRE_BALL_MAX_OFFSET_SHARE * wire.ellipse.semi_major:
            continue
        return _cup_box_of_wire(wire, hint), wire
    return None


def _cup_box_of_wire(wire: WireFit, hint: tuple[float, float]) -> Box:
    """The box of the hemisphere a marker wire implies, at ``WIRE_MANTLE_SCALES[2]`` of the wire's
    radius (the cement mantle's usual size), opening as ``_wire_opening`` says (``hint`` where the
    wire does not tell)."""
    e, opening, _ = _wire_opening(wire, hint)
    k = WIRE_MANTLE_SCALES[2]
    x0, y0, x1, y1 = _silhouette_bounds(_scale_about_centre(e, k), opening, e.semi_major * k)
    return Box(x0, y0, x1, y1, "cup", 0.0)


# A cemented all-polyethylene cup's ring is larger than the metal head inside it (a 22-32 mm head
# in a 40-55 mm cup: the ring's radius 1.6-2.5 times the head's), and concentric with it. Where the
# metal finder saw that head, the ring is also looked for in square boxes centred on it whose
# half-side is these multiples of the head's radius (the ring's semi-major axis must then be
# 0.45-0.65 of the box's side, ``WIRE_SEMI_MAJOR_SHARE``: together they cover rings of 1.4-2.9 head
# radii).
WIRE_BALL_BOX_SCALES = (1.8, 2.0, 1.6, 2.2)


def cup_box_from_wire_round_ball(image: NDArray[np.float32], side: Side, ball: Box) -> tuple[Box, WireFit] | None:
    """A cup box and marker ring found round the metal finder's ``ball`` (a head, or a head named
    "cup"), or ``None``: the first ring found in boxes centred on it (``WIRE_BALL_BOX_SCALES``)
    whose centre lies within ``WIRE_BALL_MAX_OFFSET_SHARE`` of its semi-major axis of the ball's.

    Why: ``cup_box_from_marker_wire`` places its boxes by proportion in the hip-joint box, sized
    for the cup; where the film shows little more than the head (a ring seen nearly edge-on is a
    thin bar whose middle the head hides, and only its two ends show beside the head), those boxes
    missed the ring on dev sketch films that a box centred on the head frames (see
    ``node.pipeline._wire_in_joint`` for where it is used and what it gave). The box's size
    is the head's: only the ring's radius is unknown, and the scales cover it."""
    r = 0.5 * min(ball.width, ball.height)  # a head's box may take in a stub of its neck
    if r <= 0.0:
        return None
    cx, cy = ball.centre.x, ball.centre.y
    hint = (1.0 if side is Side.LEFT else -1.0, 1.0)  # the patient's left hip lies on the image's right
    for k in WIRE_BALL_BOX_SCALES:
        half = k * r
        wire = find_marker_wire(image, Box(cx - half, cy - half, cx + half, cy + half, "cup", 0.0))
        if wire is None or wire.kind != "ring":
            continue
        if math.hypot(wire.ellipse.cx - cx, wire.ellipse.cy - cy) > WIRE_BALL_MAX_OFFSET_SHARE * wire.ellipse.semi_major:
            continue
        return _cup_box_of_wire(wire, hint), wire
    return None


def _wire_fit(wire: WireFit, hint: tuple[float, float], box: Box) -> CupFit | None:
    """The cup fit a marker wire gives: the opening's ellipse for a ring (``None`` when the cup it
    implies does not fill the box), a refusal for an arc.

    The ring lies in the opening plane just inside the rim, so its ellipse has the rim's
    orientation and axis ratio (its centre, 1–2 mm towards the dome, does not matter). Which way
    the cup opens the ring does not say; on an AP it is laterally and inferiorly (``hint``). The
    polyethylene hemisphere this opening implies (dome of the ring's radius plus the open half of
    the ring) must fill the cup box, as a shell's outline must (a partly hidden arc can pass for a
    rounder ring; its hemisphere does not fit the box).
    """
    e, opening, refusal = _wire_opening(wire, hint)
    if refusal is not None:
        return CupFit(e, None, rim_points=wire.points, refusal_reason=refusal)
    clear = wire.kind == "arc" or wire.symmetry >= WIRE_CLEAR_RING_SYMMETRY
    bar = WIRE_CLEAR_MIN_BOX_IOU if clear else WIRE_MIN_BOX_IOU
    # The ring lies inside the polyethylene (about a millimetre in) and the cement mantle (2–4 mm)
    # surrounds it, so the silhouette the box bounds is that of a hemisphere up to ~20 % larger
    # than the ring: the best of those sizes is compared.
    iou = max(_silhouette_iou(_scale_about_centre(e, k), opening, e.semi_major * k, box) for k in WIRE_MANTLE_SCALES)
    if iou < bar:
        return None
    quality = float(math.exp(-wire.rms_px / 2.0) * min(1.0, wire.coverage / 0.5))
    return CupFit(e, opening, rim_points=wire.points, rim_rms_px=wire.rms_px, rim_coverage=wire.coverage,
                  quality=quality, box_iou=iou)


def _wire_opening(wire: WireFit, hint: tuple[float, float]) -> tuple[Ellipse, tuple[float, float], str | None]:
    """The rim ellipse and open direction a marker wire implies, and why it cannot be read
    (``None`` when it can).

    A ring's ellipse is the opening's; which way the cup opens it does not say, so its minor axis
    is turned towards ``hint`` (on an AP laterally and inferiorly). An arc gives both through
    ``arc_opening``; where that fails, the arc's own ellipse and ``hint`` stand in (for placing a
    box only), and an opening that points away from ``hint`` is refused.
    """
    if wire.kind == "arc":
        arc = arc_opening(wire)
        if isinstance(arc, str):
            return wire.ellipse, hint, arc
        e, opening = arc
        if np.asarray(opening) @ np.asarray(hint) <= 0:
            return e, opening, ("the marker arc's apex is not on the dome side: the arc does not show "
                                "the cup's opening")
        return e, opening, None
    e = wire.ellipse
    th = math.radians(e.angle_deg)
    v = np.array([-math.sin(th), math.cos(th)])
    if v @ np.asarray(hint) < 0:
        v = -v
    return e, (float(v[0]), float(v[1])), None


def arc_opening(wire: WireFit) -> tuple[Ellipse, tuple[float, float]] | str:
    """The opening a marker arc over the dome implies: the rim's ellipse and the open direction,
    or why the arc does not give it.

    The arc is half a great circle of the cup, in a plane through its axis: r·(cos s·e − sin s·n)
    for s in [0°, 180°], with n the opening's normal and e a direction in the opening plane. Its
    image is half an ellipse whose semi-major axis is r (a circle's projection keeps its radius
    along the direction parallel to the detector) and on which the parametric angle runs exactly
    as s does (an affine map keeps a circle's parametrisation up to a phase). So the arc's ends
    are 180° apart on the ellipse, its apex (s = 90°, the dome's pole, at centre − r·n) lies
    midway between them, and the vector from the apex to the centre is r times the in-plane part
    of n. Its length gives how far n leaves the detector plane: cos(version) = |apex − centre| / r.
    The rim is then the circle of radius r about n: an ellipse with semi-axes r and r·sin(version),
    its minor axis along n's in-plane part, which is also the way the cup opens.

    Version is the apex's parametric offset from the ellipse's major axis, so an error δ in
    where the ends are seen is an error of about δ in version: the ends must both show (the
    visible run 165–195°, ``WIRE_ARC_RUN_DEG``).
    """
    e = wire.ellipse
    th = math.radians(e.angle_deg)
    u = np.array([math.cos(th), math.sin(th)])
    v = np.array([-math.sin(th), math.cos(th)])
    c = np.array([e.cx, e.cy])
    d = np.asarray(wire.points, dtype=np.float64) - c
    if len(d) < 8 or e.semi_major <= 0 or e.semi_minor <= 0:
        return "the cup's marker arc is too short to read"
    t = np.sort(np.arctan2((d @ v) / e.semi_minor, (d @ u) / e.semi_major) % (2.0 * math.pi))
    gaps = np.diff(np.concatenate([t, t[:1] + 2.0 * math.pi]))
    k = int(np.argmax(gaps))
    run = 2.0 * math.pi - float(gaps[k])
    lo, hi = WIRE_ARC_RUN_DEG
    if not lo <= math.degrees(run) <= hi:
        return (f"the cup's marker arc runs {math.degrees(run):.0f}° of its ellipse, not the half circle it is: "
                "its ends, which mark the opening, are not both seen")
    mid = float(t[(k + 1) % len(t)]) + run / 2.0
    apex = c + e.semi_major * math.cos(mid) * u + e.semi_minor * math.sin(mid) * v
    n_xy = c - apex  # r times the in-plane part of the opening's normal
    r = e.semi_major
    length = float(np.hypot(*n_xy))
    if length <= 1e-6:
        return "the cup's marker arc gives no opening direction"
    sin_v = math.sqrt(max(0.0, 1.0 - min(1.0, length / r) ** 2))
    if math.degrees(math.asin(sin_v)) < WIRE_ARC_MIN_VERSION_DEG:
        return (f"the cup's marker arc lies nearly flat to the film (version under {WIRE_ARC_MIN_VERSION_DEG:.0f}°), "
                "where it does not show the version reliably")
    opening = (float(n_xy[0] / length), float(n_xy[1] / length))
    rim = Ellipse(e.cx, e.cy, r, max(r * sin_v, 1e-3), math.degrees(math.atan2(opening[0], -opening[1])) % 180.0)
    return rim, opening


def _measure_fit(
    fit: CupFit,
    image: NDArray[np.float32],
    side: Side,
    view: View,
    ref: ReferenceLine,
    flagged: bool,
    pixel_spacing_mm: float | None,
    geometry: ProjectionGeometry | None,
) -> CupMeasurement:
    """Angles (or the refusal) from one fit; see ``measure_cup``."""
    lateral_view = view in (View.LATERAL_HIP,)
    method = WOO_MORREY if lateral_view else LEWINNEK
    ref_pts = ref.as_points()

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
    if fit.head_fills_shell and fit.opening_dir is not None and not lateral_view:
        return _inclination_only(fit, side, ref, flagged, refuse)
    if fit.refusal_reason is not None or fit.ellipse is None or fit.opening_dir is None:
        return refuse(fit.refusal_reason or "no rim ellipse")
    e = fit.ellipse
    if not lateral_view and fit.dome_centre is not None and fit.dome_radius_px:
        beyond = ((e.cx - fit.dome_centre.x) * fit.opening_dir[0]
                  + (e.cy - fit.dome_centre.y) * fit.opening_dir[1]) / fit.dome_radius_px
        if beyond > MAX_RIM_OFFSET_SHARE:
            return refuse(f"{RIM_OFFSET_REFUSAL} ({beyond:.0%} of its radius towards the opening): the edge of a shell "
                          "larger than a hemisphere, as a bipolar hemiarthroplasty's head is, not a cup's opening")
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
    if ri < MIN_INCLINATION_DEG or ri > MAX_INCLINATION_DEG:
        return refuse(f"cup opening points the wrong way for the {side.name.lower()} hip (side mislabelled?)")
    if ra > MAX_ANTEVERSION_DEG or ra < -MAX_ANTEVERSION_DEG:
        return refuse("rim nearly circular: not distinguishable from the dome or a head")
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


# A cup whose head fills it is read for inclination when its dome outline covers at least this
# arc, and when the opening's direction from the dome's gap (``_dome_side``) and from the
# outline's crossings (``_opening_from_outline``) agree within this many degrees.
FILLED_MIN_DOME_SPAN_DEG = 150.0
FILLED_MAX_DISAGREEMENT_DEG = 3.0


def _inclination_only(fit: CupFit, side: Side, ref: ReferenceLine, flagged: bool,
                      refuse: Callable[[str], CupMeasurement]) -> CupMeasurement:
    """Inclination of a cup whose rim a filling head hides (resurfacing, large metal heads).

    On an AP film the rim ellipse's long axis is perpendicular to the projected cup axis
    whatever the anteversion, so the direction of the opening - the middle of the gap the dome
    outline leaves between the rim's two ends - gives the radiographic inclination on its own;
    the ellipse's width, which gives anteversion, lies behind the head. The direction is read
    two ways - the middle of the gap the dome leaves, and midway between where the outline
    crosses from the dome's radius to the head's - and taken halfway between them only when
    they agree (``FILLED_MAX_DISAGREEMENT_DEG``) on a dome seen over most of its half
    (``FILLED_MIN_DOME_SPAN_DEG``). On three dev sets (voxel seeds 424242 / 424243, analytic
    424242; never the bench seed) 52 of 67 such cups were read, inclination MAE 1.2°, worst
    3.7°; without those checks the worst were 12° and 30° off (one a cemented cup whose head was
    taken for the shell). Inclination is what metal-on-metal surveillance asks of an AP film;
    anteversion is refused with the reason. A point-source correction is not applied (it needs
    the ellipse).
    """
    assert fit.opening_dir is not None and fit.refusal_reason is not None
    gap = math.atan2(fit.opening_dir[1], fit.opening_dir[0])
    lip = None if fit.outline_opening_dir is None else math.atan2(fit.outline_opening_dir[1],
                                                                  fit.outline_opening_dir[0])
    turn = None if lip is None else (lip - gap + math.pi) % (2.0 * math.pi) - math.pi
    if fit.dome_span_deg < FILLED_MIN_DOME_SPAN_DEG or turn is None \
            or abs(math.degrees(turn)) > FILLED_MAX_DISAGREEMENT_DEG:
        return refuse(f"{fit.refusal_reason}; the opening's direction is not clear enough for the inclination "
                      "either")
    opening = gap + 0.5 * turn
    n = np.array([math.cos(opening), math.sin(opening), 0.0])
    ri, _ = angles_from_axis(n, ref, side)
    if ri < MIN_INCLINATION_DEG or ri > MAX_INCLINATION_DEG:
        return refuse(f"cup opening points the wrong way for the {side.name.lower()} hip (side mislabelled?)")
    line = None
    if fit.dome_centre is not None and fit.dome_radius_px is not None:
        c, r = fit.dome_centre, fit.dome_radius_px
        px, py = -math.sin(opening), math.cos(opening)
        line = (Point(c.x - r * px, c.y - r * py), Point(c.x + r * px, c.y + r * py))
    return CupMeasurement(
        side=side,
        inclination_deg=round(ri, 2),
        anteversion_deg=None,
        inclination_reference=ref.method,
        anteversion_method=LEWINNEK,
        reference_line=ref.as_points(),
        quality=fit.quality,
        flagged=flagged,
        anteversion_refusal=fit.refusal_reason,
        opening_line=line,
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
