"""Lateral centre-edge and Tönnis angles: pure geometry by hand, and on drawn hips."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from node.analyse.dysplasia import fit_femoral_head, lateral_centre_edge_deg, measure_dysplasia, tonnis_deg
from node.analyse.reference import INTER_TEARDROP, horizontal_line, line_through
from node.domain import Box, Point, Side


def test_lce_by_hand_both_sides() -> None:
    ref = horizontal_line(1000)
    c = Point(200.0, 300.0)
    # right hip (image left): lateral is image-left; an edge up and 1 unit left per unit up → 45°
    assert lateral_centre_edge_deg(c, Point(150.0, 250.0), ref, Side.RIGHT) == pytest.approx(45.0)
    # the same point for a left hip lies medial → −45°
    assert lateral_centre_edge_deg(c, Point(150.0, 250.0), ref, Side.LEFT) == pytest.approx(-45.0)
    # straight above: 0°
    assert lateral_centre_edge_deg(c, Point(200.0, 200.0), ref, Side.LEFT) == pytest.approx(0.0)


def test_tonnis_by_hand_and_rotation() -> None:
    ref = horizontal_line(1000)
    # left hip: medial end at x=700, lateral end 40 px further right and 10 px higher → atan(10/40)
    m, l_ = Point(700.0, 300.0), Point(740.0, 290.0)
    assert tonnis_deg(m, l_, ref, Side.LEFT) == pytest.approx(math.degrees(math.atan(0.25)))
    # rotate everything (points and reference) by 5°: the angle must not change
    a = math.radians(5.0)

    def rot(p: Point) -> Point:
        return Point(p.x * math.cos(a) - p.y * math.sin(a), p.x * math.sin(a) + p.y * math.cos(a))

    rref = line_through(rot(Point(0.0, 0.0)), rot(Point(1000.0, 0.0)), INTER_TEARDROP)
    assert tonnis_deg(rot(m), rot(l_), rref, Side.LEFT) == pytest.approx(math.degrees(math.atan(0.25)))
    assert lateral_centre_edge_deg(rot(Point(700, 400)), rot(Point(730, 300)), rref, Side.LEFT) == pytest.approx(
        math.degrees(math.atan2(30, 100))
    )


def draw_hip(side: Side, lce_deg: float, medial_deg: float = 35.0, noise: float = 0.01) -> tuple[NDArray[np.float32], Box]:
    """A femoral head (bright disc with a cortical ring), a joint space, a faint acetabular rim
    and a dense sourcil arc from ``medial_deg`` medial to ``lce_deg`` lateral of vertical."""
    rng = np.random.default_rng(int(lce_deg * 10) + (1 if side is Side.LEFT else 0))
    img = np.full((400, 400), 0.25, np.float32)
    cx, cy, r = 200.0, 220.0, 70.0
    cv2.circle(img, (200, 220), 70, 0.55, -1, lineType=cv2.LINE_AA)
    cv2.circle(img, (200, 220), 68, 0.62, 2, lineType=cv2.LINE_AA)
    lat = -1.0 if side is Side.RIGHT else 1.0
    rs = r + 7.0

    def arc(a0: float, a1: float, value: float, thick: int) -> None:
        for ph in np.arange(a0, a1, 0.25):
            t = math.radians(ph)
            x, y = cx + lat * rs * math.sin(t), cy - rs * math.cos(t)
            cv2.circle(img, (round(x), round(y)), thick, value, -1, lineType=cv2.LINE_AA)

    arc(-70.0, 80.0, 0.33, 3)  # the rest of the acetabular rim, faint
    arc(-medial_deg, lce_deg, 0.75, 2)  # the sourcil
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, noise, img.shape), dtype=np.float32)
    return np.clip(img, 0, 1).astype(np.float32), Box(100, 120, 300, 330, label="hip_joint")


@pytest.mark.parametrize("side", [Side.RIGHT, Side.LEFT])
@pytest.mark.parametrize("lce", [12.0, 28.0, 40.0])
def test_measure_drawn_hip(side: Side, lce: float) -> None:
    img, box = draw_hip(side, lce)
    head = fit_femoral_head(img, box)
    assert head is not None
    assert head[0] == pytest.approx(200.0, abs=1.5) and head[1] == pytest.approx(220.0, abs=1.5)
    m = measure_dysplasia(img, box, side, reference=horizontal_line(400))
    assert m.refusal_reason is None
    # the drawn sourcil's round end cap reaches ~1.5° beyond its centre line
    assert m.lce_deg == pytest.approx(lce + 1.2, abs=1.0)
    # both ends on an arc concentric with the head: Tönnis follows from the two end angles
    expected = math.degrees(math.atan2(math.cos(math.radians(lce)) - math.cos(math.radians(35.0)),
                                       math.sin(math.radians(lce)) + math.sin(math.radians(35.0))))
    assert m.tonnis_deg == pytest.approx(expected, abs=1.0)


def test_refuses_without_roof() -> None:
    img = np.full((400, 400), 0.25, np.float32)
    cv2.circle(img, (200, 220), 70, 0.55, -1, lineType=cv2.LINE_AA)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 1.0), dtype=np.float32)
    m = measure_dysplasia(img, Box(100, 120, 300, 330), Side.LEFT, reference=None)
    assert m.lce_deg is None and m.tonnis_deg is None and m.refusal_reason


@pytest.mark.parametrize("box_w", [600.0, 601.0, 602.5, 700.0])
def test_head_found_at_full_resolution(box_w: float) -> None:
    """A joint box of a full-resolution image (≥ 512 px) is searched at a reduced working scale;
    the circle must come back in full-scale pixels, also when the box is not a whole number of
    working pixels (INTER_AREA would then stretch, and the mapping back be off by ~1 px)."""
    cx, cy, r = 401.3, 377.6, 150.0
    img = np.full((800, 900), 0.2, np.float32)
    yy, xx = np.mgrid[0:800, 0:900].astype(np.float32)
    # anti-aliased disc: coverage from the signed distance to the true circle
    img += np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0) * 0.5
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 1.5), np.float32)
    img += np.random.default_rng(3).normal(0.0, 0.01, img.shape).astype(np.float32)  # edge thresholds need texture
    box = Box(cx - box_w / 2, cy - box_w / 2, cx + box_w / 2, cy + box_w / 2, label="hip_joint")
    fitted = fit_femoral_head(img, box)
    assert fitted is not None
    fx, fy, fr, support = fitted
    assert math.hypot(fx - cx, fy - cy) < 0.5 and abs(fr - r) < 0.75 and support > 0.9, fitted
