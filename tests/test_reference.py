"""Reference lines: method preference, pairing of bilateral landmarks, flagging."""

from __future__ import annotations

import pytest

from node.analyse.reference import (
    BI_ISCHIAL,
    HORIZONTAL,
    INTER_TEARDROP,
    ReferenceLine,
    inferior_point,
    reference_from_boxes,
    reference_from_points,
)
from node.domain import Box, Point


def test_teardrops_preferred_over_ischia() -> None:
    ref = reference_from_points([Point(600, 410), Point(400, 400)], [Point(380, 500), Point(620, 520)], image_width=1000)
    assert ref.method == INTER_TEARDROP and not ref.flagged
    assert ref.p0 == Point(400, 400) and ref.p1 == Point(600, 410)  # image-left first
    assert ref.angle_deg == pytest.approx(2.862405, abs=1e-5)  # atan(10/200)


def test_bi_ischial_when_one_teardrop_missing() -> None:
    ref = reference_from_points([Point(400, 400)], [Point(380, 500), Point(620, 500)], image_width=1000)
    assert ref.method == BI_ISCHIAL and ref.angle_deg == pytest.approx(0.0)


def test_horizontal_is_flagged_last_resort() -> None:
    ref = reference_from_points([], [Point(380, 500)], image_width=800)
    assert ref.method == HORIZONTAL and ref.flagged and ref.angle_deg == pytest.approx(0.0)


def test_false_positive_landmark_is_not_paired() -> None:
    """Two candidates on the left (one a false positive far off): the symmetric pair wins."""
    ref = reference_from_points([Point(400, 400), Point(300, 250), Point(600, 402)], [], image_width=1000,
                                midline_x=500)
    assert {ref.p0, ref.p1} == {Point(400, 400), Point(600, 402)}


def test_boxes_give_inferior_points() -> None:
    boxes = [Box(390, 380, 410, 400, label="teardrop"), Box(590, 385, 610, 405, label="teardrop"),
             Box(100, 100, 120, 120, label="cup")]
    assert inferior_point(boxes[0]) == Point(400, 400)
    ref = reference_from_boxes(boxes, image_width=1000)
    assert ref.method == INTER_TEARDROP and ref.p1 == Point(600, 405)
    low = reference_from_boxes([Box(390, 380, 410, 400, label="teardrop", score=0.1), boxes[1]], image_width=1000)
    assert low.method == HORIZONTAL


def test_degenerate_line_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        ReferenceLine(Point(1, 1), Point(1, 1), INTER_TEARDROP)
