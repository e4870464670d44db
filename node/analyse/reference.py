"""Pelvic reference lines for cup inclination (and the dysplasia angles).

Cup inclination is an angle against the *pelvis*, not against the image: a patient lying a few
degrees rotated in the coronal plane tilts every cup by the same amount. The reference line
undoes that. In order of preference (the usual clinical order):

1. inter-teardrop line — through the inferior tips of both radiographic teardrops;
2. bi-ischial line — through the inferior points of both ischial tuberosities, when the
   teardrops were not found (e.g. obscured by a cup);
3. image horizontal — only as a last resort, and the result is *flagged*, because it silently
   absorbs any pelvic rotation into the reported inclination.

The detector gives boxes; a box's inferior edge is taken as the landmark's inferior point (the
detector is trained on tight boxes, so its lower edge is the tangent to the lowest point). The
horizontal position is the box centre. Only the line's *direction* matters for inclination, so
a vertical error of a pixel or two at each end moves the angle by ~0.1° on a pelvis radiograph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from node.domain import Box, Point

INTER_TEARDROP = "inter-teardrop line"
BI_ISCHIAL = "bi-ischial line"
HORIZONTAL = "image horizontal"

TEARDROP_LABEL = "teardrop"
ISCHIAL_LABEL = "ischial_tuberosity"


@dataclass(frozen=True)
class ReferenceLine:
    """A line through two landmarks; ``p0`` is the one further to the image left.

    ``method`` is one of INTER_TEARDROP, BI_ISCHIAL, HORIZONTAL (the strings the SR reports);
    ``flagged`` is true when the line is the image horizontal fallback.
    """

    p0: Point
    p1: Point
    method: str
    flagged: bool = False

    def __post_init__(self) -> None:
        if self.p0 == self.p1:
            raise ValueError("reference line needs two distinct points")

    @property
    def angle_deg(self) -> float:
        """Direction p0 → p1 in image coordinates (degrees from +x towards +y, i.e. clockwise
        on screen), in (-90, 90] because p0 is the image-left point."""
        return math.degrees(math.atan2(self.p1.y - self.p0.y, self.p1.x - self.p0.x))

    @property
    def unit(self) -> tuple[float, float]:
        """Unit vector along the line, pointing towards the image right."""
        dx, dy = self.p1.x - self.p0.x, self.p1.y - self.p0.y
        n = math.hypot(dx, dy)
        return dx / n, dy / n

    @property
    def midpoint(self) -> Point:
        return Point((self.p0.x + self.p1.x) / 2.0, (self.p0.y + self.p1.y) / 2.0)

    def as_points(self) -> tuple[Point, Point]:
        return self.p0, self.p1


def line_through(a: Point, b: Point, method: str) -> ReferenceLine:
    """Reference line through two landmark points, ordered image-left first."""
    p0, p1 = (a, b) if a.x <= b.x else (b, a)
    return ReferenceLine(p0, p1, method, flagged=method == HORIZONTAL)


def inferior_point(box: Box) -> Point:
    """Inferior point of a landmark from its detector box (bottom edge, horizontal centre)."""
    return Point((box.x0 + box.x1) / 2.0, box.y1)


def horizontal_line(image_width: int, y: float = 0.0) -> ReferenceLine:
    """The flagged last-resort reference: a horizontal line across the image."""
    return ReferenceLine(Point(0.0, y), Point(float(max(image_width - 1, 1)), y), HORIZONTAL, flagged=True)


def _pair(points: Sequence[Point], midline_x: float | None, min_separation: float) -> tuple[Point, Point] | None:
    """The two landmarks that form a left/right pair: best one each side of the midline.

    With more than one candidate per side (a false positive), the one closest to the midline's
    mirror image of the other side wins — the landmarks are bilateral and roughly symmetric.
    """
    if len(points) < 2:
        return None
    if midline_x is None:
        midline_x = sum(p.x for p in points) / len(points)
    left = [p for p in points if p.x < midline_x]
    right = [p for p in points if p.x >= midline_x]
    if not left or not right:
        return None
    best: tuple[float, Point, Point] | None = None
    for a in left:
        for b in right:
            if b.x - a.x < min_separation:
                continue
            asym = abs((midline_x - a.x) - (b.x - midline_x)) + abs(a.y - b.y)
            if best is None or asym < best[0]:
                best = (asym, a, b)
    return None if best is None else (best[1], best[2])


def reference_from_points(
    teardrops: Sequence[Point] = (),
    ischial: Sequence[Point] = (),
    *,
    image_width: int,
    midline_x: float | None = None,
) -> ReferenceLine:
    """Choose the reference line from landmark points (inferior tips), best method first.

    ``midline_x`` (the pelvic midline, e.g. the symphysis) separates left from right landmarks;
    by default the mean x of the candidates is used.
    """
    min_sep = 0.1 * image_width
    pair = _pair(teardrops, midline_x, min_sep)
    if pair is not None:
        return line_through(pair[0], pair[1], INTER_TEARDROP)
    pair = _pair(ischial, midline_x, min_sep)
    if pair is not None:
        return line_through(pair[0], pair[1], BI_ISCHIAL)
    return horizontal_line(image_width)


def reference_from_boxes(
    boxes: Sequence[Box], *, image_width: int, midline_x: float | None = None, min_score: float = 0.25
) -> ReferenceLine:
    """Reference line from detector boxes (labels ``teardrop`` / ``ischial_tuberosity``)."""
    usable = [b for b in boxes if b.score >= min_score]
    tears = [inferior_point(b) for b in usable if b.label == TEARDROP_LABEL]
    isch = [inferior_point(b) for b in usable if b.label == ISCHIAL_LABEL]
    return reference_from_points(tears, isch, image_width=image_width, midline_x=midline_x)
