"""Cup angles on fresh phantoms against the generator's ground truth (small sample).

40 cups: 20 AP pelvis phantoms with a cup on each side, inclination U(25°, 65°), anteversion
U(0°, 35°), point source, noise, stems overlapping the opening; ground-truth boxes and landmarks
stand in for the detector. The pelvis has no sagittal tilt or axial rotation (a single AP
cannot see them; obliquity stays and is undone by the inter-teardrop line).
The 200-cup figure, timing and the issue's bar (inclination and anteversion MAE ≤ 1.0°, refusals
≤ 2 %) live in ``benchmarks/bench_analyse.py``. Inclination is held to the bar here; anteversion
and refusals only to regression guards at the achieved level (the anteversion bar is not met).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.bench_analyse import cup_trial


@pytest.fixture(scope="module")
def trial() -> dict[str, Any]:
    return cup_trial(20, 1024, neutral=True, seed=77_000)


@pytest.mark.slow
def test_phantom_inclination_bar(trial: dict[str, Any]) -> None:
    assert trial["cups"] == 40
    assert trial["inclination_mae_deg"] <= 1.0, trial


# Regression guards, not the issue's bar. Issue 5's bar is: inclination MAE ≤ 1.0°, anteversion
# MAE ≤ 1.0°, refusals ≤ 2 % (judged on 200 fresh cups by ``benchmarks/bench_analyse.py``, which
# prints the bar and whether it is met). The anteversion bar is NOT met yet (200-cup bench:
# 1.76°); the refusal bar is met on the bench (1 %) but 40 cups are too few to hold it to 2 %.
# On this 40-cup sample the code achieved anteversion MAE 1.70° and 0 refusals of 40 when these
# guards were set; they allow a small margin over that so that a regression fails the suite.
ANTEVERSION_GUARD_DEG = 2.0  # issue bar: 1.0° (not met yet)
REFUSAL_GUARD = 2 / 40  # issue bar: 2 %


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
