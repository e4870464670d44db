"""The clipped-metal outline reader (``node.analyse.silhouette``) on drawn cups whose rim, angles
and head are known exactly: it reads the rim a hemispherical shell's outline implies, and gives no
answer where the outline is not a shell's (a full circle), where the metal is not clipped, or where
a head bulging past a flat rim poses as the open side."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

import node.analyse.silhouette as sil
from node.domain import Box

SIZE = 300
SCALE = 4  # drawn at 4x and averaged down: sub-pixel outlines


def _cup(radius: float = 40.0, minor: float = 14.0, angle_deg: float = 40.0, head: float = 0.6,
         clipped: bool = True, full_circle: bool = False) -> tuple[np.ndarray, Box, tuple[float, float]]:
    """A film of one cup: shell (dome half-disc and rim ellipse), head and neck as one metal
    silhouette over textured bone, blurred, and clipped to one level unless ``clipped`` is false
    (then the metal's brightness follows its thickness). Returns image, cup box, opening direction."""
    rng = np.random.default_rng(7)
    cx, cy = 150.0, 140.0
    img = cv2.GaussianBlur((0.45 + 0.05 * rng.standard_normal((SIZE, SIZE))).astype(np.float32), (0, 0), 3)
    t = math.radians(angle_deg)
    u = (math.cos(t + math.pi / 2), math.sin(t + math.pi / 2))  # the opening, square to the rim's long axis
    big = np.zeros((SIZE * SCALE, SIZE * SCALE), np.uint8)
    c = (round(cx * SCALE), round(cy * SCALE))
    if full_circle:
        cv2.circle(big, c, round(radius * SCALE), 255, -1)
    else:
        start = math.degrees(math.atan2(-u[1], -u[0])) - 90.0
        cv2.ellipse(big, c, (round(radius * SCALE), round(radius * SCALE)), 0, start, start + 180, 255, -1)
        cv2.ellipse(big, c, (round(radius * SCALE), round(minor * SCALE)), angle_deg, 0, 360, 255, -1)
        cv2.circle(big, c, round(head * radius * SCALE), 255, -1)
        neck = (cx + 2.2 * radius * u[0] - 0.8 * radius * u[1], cy + 2.2 * radius * u[1] + 0.8 * radius * u[0])
        cv2.line(big, c, (round(neck[0] * SCALE), round(neck[1] * SCALE)), 255, round(0.5 * radius * SCALE))
    mask = cv2.resize(big, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    if clipped:
        metal: np.ndarray | float = 1.0
    else:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        metal = 0.7 + 0.3 * np.clip(1 - ((xx - cx) ** 2 + (yy - cy) ** 2) / radius**2, 0, 1)
    out = cv2.GaussianBlur((img * (1 - mask) + mask * metal).astype(np.float32), (0, 0), 1.0)
    out += 0.005 * rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    if clipped:
        out = np.minimum(out, 0.95)
    box = Box(cx - 1.05 * radius, cy - 1.05 * radius, cx + 1.05 * radius, cy + 1.05 * radius, "cup", 0.9)
    return np.clip(out, 0, 1).astype(np.float32), box, u


@pytest.mark.parametrize(("angle_deg", "minor"), [(40.0, 14.0), (30.0, 8.0), (50.0, 22.0), (140.0, 15.0)])
def test_a_clipped_cups_outline_gives_its_rim(angle_deg: float, minor: float) -> None:
    img, box, u = _cup(angle_deg=angle_deg, minor=minor)
    s = sil.read_silhouette(img, box, u)
    assert s is not None
    assert abs((s.angle_deg - angle_deg + 90.0) % 180.0 - 90.0) < 0.5, s
    assert abs(s.radius - 40.0) < 0.5, s
    assert abs(s.semi_minor - minor) < 1.0, s
    assert s.opening_dir[0] * u[0] + s.opening_dir[1] * u[1] > 0.99, s
    assert 170.0 <= s.dome_span_deg <= 200.0


def test_a_full_circle_is_not_a_shell() -> None:
    """A bipolar head or a bare femoral head: no half circle, no rim."""
    img, box, u = _cup(full_circle=True)
    assert sil.read_silhouette(img, box, u) is None


def test_metal_that_is_not_clipped_is_left_to_the_rim_fit() -> None:
    """Where the metal's brightness still follows its thickness, the plateau is only its thickest
    part and does not cover the hemisphere it would imply."""
    img, box, u = _cup(clipped=False)
    assert sil.read_silhouette(img, box, u) is None


def test_a_head_bulging_past_a_flat_rim_is_not_read_as_the_rim(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rim seen edge-on (minor axis 1 px) with a head of 0.8 of the shell: the open side is the
    head's circle, whose points give minor axes that disagree (spread over 1). Without the spread
    check it is read as a rim 12 px wide (about 17° of anteversion too many)."""
    img, box, u = _cup(minor=1.0, head=0.8)
    assert sil.read_silhouette(img, box, u) is None
    monkeypatch.setattr(sil, "MAX_END_SPREAD", 99.0)
    wrong = sil.read_silhouette(img, box, u)
    assert wrong is not None and wrong.semi_minor > 8.0, wrong
