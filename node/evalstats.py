"""Evaluation statistics: the morphology paper's Table 1, rater agreement, angle agreement.

Named apart from the node's Prometheus metrics (``node.observe``) so the two are never confused.

Pure numpy, no scikit-learn at run time (it is a test/train extra): the definitions are short
and writing them out keeps the edge cases explicit — a metric whose denominator is zero is
``nan`` ("not defined on this sample"), never 0 or 1, and bootstrap resamples on which it is
undefined are dropped from its interval rather than biasing it.

Conventions: labels are 0/1 integers, scores are probabilities; a case is called positive when
``score >= threshold`` (the same rule ``MorphologyFlag.present`` uses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

METRIC_NAMES: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auroc")


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.n)

    @property
    def sensitivity(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        return _ratio(self.tn, self.tn + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def _binary(y: ArrayLike, name: str) -> NDArray[np.int64]:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    return a.astype(np.int64)


def confusion(y_true: ArrayLike, y_pred: ArrayLike) -> Confusion:
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    return Confusion(
        tp=int(((t == 1) & (p == 1)).sum()),
        fp=int(((t == 0) & (p == 1)).sum()),
        tn=int(((t == 0) & (p == 0)).sum()),
        fn=int(((t == 1) & (p == 0)).sum()),
    )


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve as the Mann–Whitney probability P(score⁺ > score⁻), ties ½.

    Uses average ranks, so it is exact with tied scores; ``nan`` with only one class present.
    """
    t = _binary(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64)
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks of tied groups (1-based)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: ArrayLike, y_score: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """False-positive rate, true-positive rate and thresholds (descending), starting at (0, 0)."""
    t = _binary(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    distinct = np.flatnonzero(np.diff(s_sorted)) if len(s) > 1 else np.array([], dtype=np.int64)
    idx = np.concatenate([distinct, [len(s) - 1]]) if len(s) else np.array([], dtype=np.int64)
    tps = np.cumsum(t_sorted)[idx] if len(s) else np.array([])
    fps = (idx + 1) - tps
    n_pos, n_neg = int(t.sum()), len(t) - int(t.sum())
    tpr = np.concatenate([[0.0], tps / n_pos if n_pos else np.full(len(tps), math.nan)])
    fpr = np.concatenate([[0.0], fps / n_neg if n_neg else np.full(len(fps), math.nan)])
    thr = np.concatenate([[math.inf], s_sorted[idx]])
    return fpr.astype(np.float64), tpr.astype(np.float64), thr.astype(np.float64)


def binary_metrics(y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Table 1's seven numbers for one flag."""
    s = np.asarray(y_score, dtype=np.float64)
    c = confusion(y_true, (s >= threshold).astype(np.int64))
    return {
        "accuracy": c.accuracy,
        "sensitivity": c.sensitivity,
        "specificity": c.specificity,
        "ppv": c.ppv,
        "npv": c.npv,
        "f1": c.f1,
        "auroc": auroc(y_true, s),
    }


@dataclass(frozen=True)
class FlagReport:
    """Point estimates and percentile-bootstrap 95 % intervals for one flag."""

    name: str
    n: int
    n_positive: int
    threshold: float
    values: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)


def bootstrap_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    threshold: float = 0.5,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every Table 1 metric, resampling cases with replacement.

    Vectorised: all resamples' confusion counts come from one index matrix. AUROC is computed per
    resample (rank-based). Resamples on which a metric is undefined (e.g. no positives drawn) are
    left out of that metric's interval.
    """
    t = _binary(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64)
    n = len(t)
    if n == 0:
        return {k: (math.nan, math.nan) for k in METRIC_NAMES}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    tt = t[idx]
    pp = (s[idx] >= threshold).astype(np.int64)
    tp = ((tt == 1) & (pp == 1)).sum(1).astype(np.float64)
    fp = ((tt == 0) & (pp == 1)).sum(1).astype(np.float64)
    tn = ((tt == 0) & (pp == 0)).sum(1).astype(np.float64)
    fn = ((tt == 1) & (pp == 0)).sum(1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = {
            "accuracy": (tp + tn) / n,
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }
    vals["auroc"] = np.array([auroc(tt[b], s[idx[b]]) for b in range(n_boot)])
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out: dict[str, tuple[float, float]] = {}
    for k in METRIC_NAMES:
        v = vals[k][np.isfinite(vals[k])]
        out[k] = (float(np.percentile(v, lo_q)), float(np.percentile(v, hi_q))) if len(v) else (math.nan, math.nan)
    return out


def flag_report(
    name: str, y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5, *, n_boot: int = 2000, seed: int = 0
) -> FlagReport:
    t = _binary(y_true, "y_true")
    return FlagReport(
        name=name,
        n=len(t),
        n_positive=int(t.sum()),
        threshold=threshold,
        values=binary_metrics(t, y_score, threshold),
        ci=bootstrap_ci(t, y_score, threshold, n_boot=n_boot, seed=seed) if n_boot > 0 else {},
    )


# --------------------------------------------------------------------------------------------
# Table 1 layout
# --------------------------------------------------------------------------------------------

TABLE1_HEADER = ("Abnormality", "Accuracy", "Sensitivity", "Specificity", "PPV", "NPV", "F1-score", "AUROC")
TABLE1_NAMES: dict[str, str] = {
    "ischial_spine_sign": "Ischial Spine Sign",
    "cam_deformity": "CAM",
    "dysplasia": "Dysplasia",
    "other_abnormality": "All Abnormalities",
}


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _dec(x: float, places: int) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{places}f}"


def _cell(key: str, x: float) -> str:
    if key == "f1":
        return _dec(x, 3)
    if key == "auroc":
        return _dec(x, 2)
    return _pct(x)


def format_table1(reports: Sequence[FlagReport], *, with_ci: bool = True) -> str:
    """Tab-separated table in the paper's layout: percentages for the first five columns, F1 to
    three decimals and AUROC to two; with ``with_ci`` each cell carries its 95 % interval."""
    lines = ["\t".join(TABLE1_HEADER)]
    for r in reports:
        cells = [TABLE1_NAMES.get(r.name, r.name)]
        for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auroc"):
            txt = _cell(key, r.values[key])
            if with_ci and key in r.ci:
                lo, hi = r.ci[key]
                txt += f" ({_cell(key, lo)}–{_cell(key, hi)})"
            cells.append(txt)
        lines.append("\t".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# agreement between raters
# --------------------------------------------------------------------------------------------


def _categories(a: ArrayLike, b: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("the two raters' labels must be 1-D and of equal length")
    cats, inv = np.unique(np.concatenate([x, y]), return_inverse=True)
    return inv[: len(x)].astype(np.int64), inv[len(x) :].astype(np.int64), max(len(cats), 2)


def agreement_table(a: ArrayLike, b: ArrayLike) -> NDArray[np.int64]:
    """q×q counts: rows rater A, columns rater B (categories in sorted order)."""
    x, y, q = _categories(a, b)
    table = np.zeros((q, q), dtype=np.int64)
    np.add.at(table, (x, y), 1)
    return table


def cohen_kappa(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's κ = (pₐ − pₑ)/(1 − pₑ), pₑ = Σₖ pₖ(A)·pₖ(B)."""
    t = agreement_table(a, b).astype(np.float64)
    n = t.sum()
    if n == 0:
        return math.nan
    pa = np.trace(t) / n
    pe = float((t.sum(1) / n) @ (t.sum(0) / n))
    return _ratio(pa - pe, 1.0 - pe) if pe < 1.0 else math.nan


def gwet_ac1(a: ArrayLike, b: ArrayLike) -> float:
    """Gwet's AC1 (Gwet 2008) for two raters and q categories.

    pₐ = observed agreement; πₖ = mean of the two raters' marginal proportions for category k;
    pₑ = Σₖ πₖ(1 − πₖ)/(q − 1); AC1 = (pₐ − pₑ)/(1 − pₑ). Unlike κ it does not collapse when
    one category is rare — the reason the morphology paper reports it.
    """
    t = agreement_table(a, b).astype(np.float64)
    n = t.sum()
    if n == 0:
        return math.nan
    q = t.shape[0]
    pa = np.trace(t) / n
    pi = (t.sum(1) + t.sum(0)) / (2 * n)
    pe = float((pi * (1 - pi)).sum() / (q - 1))
    return _ratio(pa - pe, 1.0 - pe)


# --------------------------------------------------------------------------------------------
# continuous measurements (angles)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AngleAgreement:
    n: int
    mae: float
    bias: float  # mean of (measured − reference)
    sd: float
    loa_low: float  # bias − 1.96 sd
    loa_high: float


def angle_agreement(measured: ArrayLike, reference: ArrayLike) -> AngleAgreement:
    """MAE and Bland–Altman statistics of paired angle measurements (NaN pairs dropped)."""
    m = np.asarray(measured, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape:
        raise ValueError("measured and reference differ in length")
    ok = np.isfinite(m) & np.isfinite(r)
    d = m[ok] - r[ok]
    n = len(d)
    if n == 0:
        return AngleAgreement(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return AngleAgreement(n, float(np.abs(d).mean()), bias, sd, bias - 1.96 * sd, bias + 1.96 * sd)
