"""Metric code against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from node.evalstats import (
    FlagReport,
    agreement_table,
    angle_agreement,
    auroc,
    binary_metrics,
    bootstrap_ci,
    cohen_kappa,
    confusion,
    flag_report,
    format_table1,
    gwet_ac1,
    roc_curve,
)


def test_confusion_by_hand() -> None:
    """truth 1 1 1 0 0 0 0 1, pred 1 0 1 0 1 0 0 1 → TP 3, FN 1, TN 3, FP 1."""
    c = confusion([1, 1, 1, 0, 0, 0, 0, 1], [1, 0, 1, 0, 1, 0, 0, 1])
    assert (c.tp, c.fn, c.tn, c.fp) == (3, 1, 3, 1)
    assert c.accuracy == pytest.approx(6 / 8)
    assert c.sensitivity == pytest.approx(3 / 4)
    assert c.specificity == pytest.approx(3 / 4)
    assert c.ppv == pytest.approx(3 / 4)
    assert c.npv == pytest.approx(3 / 4)
    assert c.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_undefined_metrics_are_nan() -> None:
    m = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert math.isnan(m["sensitivity"]) and math.isnan(m["auroc"])
    assert m["specificity"] == pytest.approx(2 / 3)


def test_auroc_by_hand_with_ties() -> None:
    """Positives {0.8, 0.4}, negatives {0.4, 0.1}: pairs (0.8>0.4) 1, (0.8>0.1) 1, (0.4=0.4) ½,
    (0.4>0.1) 1 → 3.5 / 4 = 0.875."""
    assert auroc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.35 * y + rng.normal(0.4, 0.25, 300), 0, 1).round(2)  # rounding makes ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert binary_metrics(y, s, 0.5)["f1"] == pytest.approx(f1_score(y, s >= 0.5))
    fpr, tpr, _ = roc_curve(y, s)
    fpr_sk, tpr_sk, _ = sk_roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, fpr_sk) and np.allclose(tpr, tpr_sk)
    a = rng.integers(0, 3, 200)
    b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 3, 200))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_gwet_ac1_worked_example() -> None:
    """The high-agreement / low-κ paradox table (two raters, 125 subjects):

    ============  ========  ========
    A \\ B         yes       no
    ============  ========  ========
    yes           118       5
    no            2         0
    ============  ========  ========

    By hand: pₐ = 118/125 = 0.944. Marginals: A yes 123/125 = 0.984, B yes 120/125 = 0.960.
    Cohen: pₑ = 0.984·0.960 + 0.016·0.040 = 0.94528, κ = (0.944 − 0.94528)/(1 − 0.94528)
    = −0.00128/0.05472 = −0.02339.
    Gwet: π_yes = (0.984 + 0.960)/2 = 0.972, π_no = 0.028; pₑ = [0.972·0.028 + 0.028·0.972]/(2 − 1)
    = 0.054432; AC1 = (0.944 − 0.054432)/(1 − 0.054432) = 0.889568/0.945568 = 0.94078.
    """
    a = [1] * 118 + [1] * 5 + [0] * 2
    b = [1] * 118 + [0] * 5 + [1] * 2
    assert agreement_table(a, b).tolist() == [[0, 2], [5, 118]]  # sorted categories: 0, 1
    assert cohen_kappa(a, b) == pytest.approx(-0.02339, abs=5e-5)
    assert gwet_ac1(a, b) == pytest.approx(0.94078, abs=5e-5)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_gwet_ac1_and_kappa_match_the_published_pycm_example() -> None:
    """The worked example of the PyCM documentation (README "Usage" section; Haghighi et al.,
    JOSS 2018): 12 paired ratings in 3 classes, for which PyCM prints ``Kappa 0.35484`` and
    ``Gwet_AC1 0.38931``. An independent implementation, published with its figures."""
    actual = [2, 0, 2, 2, 0, 1, 1, 2, 2, 0, 1, 2]
    predicted = [0, 0, 2, 1, 0, 2, 1, 0, 2, 0, 2, 2]
    assert cohen_kappa(actual, predicted) == pytest.approx(0.35484, abs=5e-6)
    assert gwet_ac1(actual, predicted) == pytest.approx(0.38931, abs=5e-6)


def test_gwet_ac1_three_categories_by_hand() -> None:
    """3 categories, 10 subjects; A = 0 0 0 1 1 1 2 2 2 2, B = 0 0 1 1 1 2 2 2 2 0.
    pₐ = 7/10. A marginals (0.3, 0.3, 0.4), B (0.3, 0.3, 0.4) → π = (0.3, 0.3, 0.4);
    pₑ = (0.21 + 0.21 + 0.24)/2 = 0.33; AC1 = (0.7 − 0.33)/0.67 = 0.552239."""
    a = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    b = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
    assert gwet_ac1(a, b) == pytest.approx(0.37 / 0.67)


def test_perfect_agreement() -> None:
    assert gwet_ac1([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert cohen_kappa([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)


def test_bootstrap_interval_contains_estimate_and_shrinks() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = np.clip(0.3 * y + rng.normal(0.35, 0.2, 400), 0, 1)
    ci_small = bootstrap_ci(y[:80], s[:80], n_boot=500, seed=1)
    ci_big = bootstrap_ci(y, s, n_boot=500, seed=1)
    point = binary_metrics(y, s)
    for k in ("accuracy", "sensitivity", "auroc"):
        lo, hi = ci_big[k]
        assert lo <= point[k] <= hi
        assert (hi - lo) < (ci_small[k][1] - ci_small[k][0])
    assert bootstrap_ci(y, s, n_boot=200, seed=5) == bootstrap_ci(y, s, n_boot=200, seed=5)


def test_table1_layout() -> None:
    rep = FlagReport(
        "ischial_spine_sign", 100, 30, 0.5,
        {"accuracy": 0.872, "sensitivity": 0.667, "specificity": 0.96, "ppv": 0.875, "npv": 0.872,
         "f1": 0.757, "auroc": 0.89},
    )
    table = format_table1([rep], with_ci=False)
    lines = table.splitlines()
    assert lines[0].split("\t") == ["Abnormality", "Accuracy", "Sensitivity", "Specificity", "PPV", "NPV",
                                    "F1-score", "AUROC"]
    assert lines[1].split("\t") == ["Ischial Spine Sign", "87.2%", "66.7%", "96.0%", "87.5%", "87.2%",
                                    "0.757", "0.89"]
    r = flag_report("dysplasia", [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.7], n_boot=100)
    row = format_table1([r]).splitlines()[1]
    assert row.startswith("Dysplasia\t75.0% (") and "–" in row


def test_angle_agreement_by_hand() -> None:
    """Differences 1, −1, 2, nan-pair dropped → MAE 4/3, bias 2/3, sd of (1, −1, 2) = √(7/3)."""
    st = angle_agreement([41.0, 39.0, 22.0, math.nan], [40.0, 40.0, 20.0, 10.0])
    assert st.n == 3
    assert st.mae == pytest.approx(4 / 3)
    assert st.bias == pytest.approx(2 / 3)
    assert st.sd == pytest.approx(math.sqrt(7 / 3))
    assert st.loa_high == pytest.approx(2 / 3 + 1.96 * math.sqrt(7 / 3))


def test_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="y_true"):
        confusion([0, 2], [0, 1])
