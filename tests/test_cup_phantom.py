"""Cup angles on fresh phantoms against the generator's ground truth (small sample).

40 cups: 20 AP pelvis phantoms with a cup on each side, inclination U(25°, 65°), anteversion
U(0°, 35°), point source, noise, stems overlapping the opening, at the detector's own pixel size
(0.139–0.2 mm, ~2000–3000 px: what the node receives); ground-truth boxes and landmarks stand in
for the detector. The pelvis has no sagittal tilt or axial rotation (a single AP cannot see them;
obliquity stays and is undone by the inter-teardrop line).
The 200-cup figures, timing and the issue's bar (inclination and anteversion MAE ≤ 1.0°, refusals
≤ 2 %) live in ``benchmarks/bench_analyse.py``. Inclination is held to the bar here; anteversion
and refusals only to regression guards at the achieved level (40 cups are too few for the bar).

Also here: the point-source model of where the rim ellipse lies relative to the dome outline,
which the anteversion figures depend on, checked on an exactly projected circle and sphere.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import pytest

from benchmarks.bench_analyse import cup_trial
from node.analyse.cup import _circle_lsq, conic_to_ellipse, rim_ellipse_prior
from node.domain import Point


@pytest.fixture(scope="module")
def trial() -> dict[str, Any]:
    return cup_trial(20, 0, neutral=True, seed=77_000)


@pytest.mark.slow
def test_phantom_inclination_bar(trial: dict[str, Any]) -> None:
    assert trial["cups"] == 40
    assert trial["inclination_mae_deg"] <= 1.0, trial


# Regression guards, not the issue's bar. Issue 5's bar is: inclination MAE ≤ 1.0°, anteversion
# MAE ≤ 1.0°, refusals ≤ 2 %, judged on 200 fresh cups by ``benchmarks/bench_analyse.py`` (which
# prints the bar and whether it is met). About 0.6° of the anteversion error is not measurement
# error: a nearly edge-on rim has two anteverted readings a point-source image cannot tell apart
# (see ``cup_axis_perspective``), and their mean is off by half their separation. This 40-cup
# sample is unlucky there: 16 of its cups have anteversion below 10° (29 % expected), and that
# floor alone, measured with the true rim ellipses, is 0.93° on it. When these guards were set the
# code achieved anteversion MAE 1.57° and 2 refusals of 40 on it (one gross fit: a nearly flat rim
# read as 19.6° instead of 6.3°); they allow a margin over that so that a regression fails the suite.
ANTEVERSION_GUARD_DEG = 1.8  # issue bar: 1.0° on 200 cups
REFUSAL_GUARD = 3 / 40  # issue bar: 2 % on 200 cups


@pytest.mark.slow
def test_phantom_anteversion_regression_guard(trial: dict[str, Any]) -> None:
    """Anteversion MAE must not regress past the achieved level (guard, not the issue's 1.0° bar)."""
    assert trial["anteversion_mae_deg"] is not None
    assert trial["anteversion_mae_deg"] <= ANTEVERSION_GUARD_DEG, trial


@pytest.mark.slow
def test_phantom_refusal_regression_guard(trial: dict[str, Any]) -> None:
    """Refusals must not regress past the achieved level (guard, not the issue's 2 % bar)."""
    assert trial["refused_fraction"] is not None
    assert trial["refused_fraction"] <= REFUSAL_GUARD, trial["refusal_reasons"]


def test_trial_is_reproducible() -> None:
    a = cup_trial(2, 512, neutral=True, seed=5)
    b = cup_trial(2, 512, neutral=True, seed=5)
    for k in ("cups", "refused", "inclination_mae_deg", "anteversion_mae_deg"):
        assert a[k] == b[k]
    assert a["cups"] == 4 and np.isfinite(a["time_per_radiograph_ms_median"])


def _project(points: np.ndarray, focal: float) -> np.ndarray:
    return np.asarray(focal * points[:, :2] / points[:, 2:3], dtype=np.float64)


@pytest.mark.parametrize(("anteversion_deg", "side"), [(5.0, 1.0), (20.0, 1.0), (35.0, -1.0)])
def test_rim_prior_matches_point_source_projection(anteversion_deg: float, side: float) -> None:
    """The rim ellipse predicted from the dome outline and the cup axis is where a pinhole puts
    the rim circle — and not where the dome's own centre and radius would put it (the test would
    pass vacuously if the two coincided)."""
    focal = 1100.0 / 0.34  # SID / pixel, pixels
    centre = np.array([side * 110.0, 60.0, 880.0])  # mm, a hip ~13 cm off the central ray
    radius = 26.0
    v, i = math.radians(anteversion_deg), math.radians(45.0)
    axis = np.array([side * math.sin(i) * math.cos(v), math.cos(i) * math.cos(v), -math.sin(v)])
    # the rim circle, projected and fitted with a conic (exact: a projected circle is a conic)
    e1 = np.cross(axis, [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    t = np.linspace(0.0, 2 * math.pi, 720, endpoint=False)
    rim = _project(centre + radius * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2), focal)
    x, y = rim[:, 0], rim[:, 1]
    _, _, vt = np.linalg.svd(np.column_stack([x * x, x * y, y * y, x, y, np.ones_like(x)]))
    c = vt[-1]
    truth = conic_to_ellipse(np.array([[c[0], c[1] / 2, c[3] / 2], [c[1] / 2, c[2], c[4] / 2],
                                       [c[3] / 2, c[4] / 2, c[5]]]))
    # the dome outline: the projected sphere's silhouette, measured as a circle
    u = np.random.default_rng(0).normal(size=(100_000, 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    hull = cv2.convexHull(_project(centre + radius * u, focal).astype(np.float32)).reshape(-1, 2)
    dome = _circle_lsq(hull.astype(np.float64))
    cx, cy, a = rim_ellipse_prior(dome, axis, focal, Point(0.0, 0.0))
    assert math.hypot(cx - truth.cx, cy - truth.cy) < 0.1
    assert abs(a - truth.semi_major) < 0.1
    assert math.hypot(dome[0] - truth.cx, dome[1] - truth.cy) + abs(dome[2] - truth.semi_major) > 0.4


def test_sample_bilinear_takes_more_profiles_than_remap_allows() -> None:
    """``cv2.remap`` refuses maps of ≥ 32767 rows; a cup box on a full-resolution detector image
    has more edge pixels than that, and the fit raised instead of measuring (found on 0.15 mm
    phantoms, where every cup failed)."""
    from node.imageops import sample_bilinear

    rng = np.random.default_rng(5)
    img = rng.random((64, 80), dtype=np.float32)
    n = 40_000
    mx = rng.uniform(0, 79, (n, 5)).astype(np.float32)
    my = rng.uniform(0, 63, (n, 5)).astype(np.float32)
    got = sample_bilinear(img, mx, my)
    assert got.shape == (n, 5)
    x0, y0 = np.floor(mx).astype(int), np.floor(my).astype(int)
    fx, fy = mx - x0, my - y0
    x1, y1 = np.minimum(x0 + 1, 79), np.minimum(y0 + 1, 63)
    want = (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x1] * fx * (1 - fy)
            + img[y1, x0] * (1 - fx) * fy + img[y1, x1] * fx * fy)
    assert np.abs(got - want).max() < 2e-3  # cv2's bilinear weights are 5-bit fixed point


@pytest.mark.slow
def test_cups_measured_on_full_resolution_detector_images() -> None:
    """Cups on AP pelvis phantoms at the detector's own pixel size (0.139–0.2 mm, ~2000–3000 px,
    as the node receives them) are measured, not refused with an error, and are accurate."""
    t = cup_trial(2, 0, neutral=True, seed=51_010)
    assert t["cups"] == 4
    assert not any(r.startswith("cup fit failed") for r in t["refusal_reasons"]), t
    assert t["refused"] <= 1, t
    assert t["inclination_mae_deg"] <= 1.5 and t["anteversion_mae_deg"] <= 3.0, t


def test_unexpected_error_in_the_fit_becomes_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the fit costs one hip's angles (logged), never the whole study's analysis."""
    import node.analyse.cup as cup
    from node.domain import Box, Side, View

    def boom(*_a: object, **_k: object) -> None:
        raise IndexError("synthetic")

    monkeypatch.setattr(cup, "fit_cup_ellipse", boom)
    m = cup.measure_cup(np.zeros((100, 100), np.float32), Box(10, 10, 60, 60, "cup", 0.9), Side.LEFT,
                        View.AP_PELVIS, reference=None)
    assert m.inclination_deg is None and m.anteversion_deg is None
    assert m.refusal_reason is not None and m.refusal_reason.startswith("cup fit failed (IndexError)")
