"""``hipnode evaluate``: predictions against a labels CSV, in the morphology paper's terms.

CSV files (UTF-8, comma-separated, one header row)
--------------------------------------------------
Rows are joined on ``image_id`` plus ``side`` (``R``/``L``) when both files have a ``side``
column; rows present in only one file are counted and reported, not silently dropped.

``--truth`` (reference labels, e.g. the hip surgeon's):
    ``image_id``, [``side``], one 0/1 column per flag — ``ischial_spine_sign``,
    ``cam_deformity``, ``dysplasia``, ``other_abnormality`` (any subset) — and optionally angle
    columns ``inclination_deg``, ``anteversion_deg``, ``lce_deg``, ``tonnis_deg``.
    Empty cells mean "not labelled" and leave the row out of that flag / angle.

``--pred`` (the node's output; a ``hipnode export`` CSV is read as it is, one row per hip):
    ``image_id``, [``side``], ``<flag>_prob`` (probability 0..1) for each flag — a plain
    ``<flag>`` 0/1 column is accepted when there is no probability (AUROC is then the one-point
    ROC) — and the same optional angle columns. An empty angle cell is a refusal.

``--second-rater`` (optional): same layout as ``--truth``; Gwet's AC1 and Cohen's κ between the
two label files are reported per flag, as in the paper.

Outputs in ``--out``: ``table1.tsv`` (also printed), ``metrics.json``, ``agreement.tsv``,
``roc_<flag>.png``, ``bland_altman_<angle>.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from node.domain import MORPHOLOGY_FLAGS
from node.evalstats import (
    FlagReport,
    angle_agreement,
    cohen_kappa,
    flag_report,
    format_table1,
    gwet_ac1,
    roc_curve,
)

ANGLE_COLUMNS: tuple[str, ...] = ("inclination_deg", "anteversion_deg", "lce_deg", "tonnis_deg")

Row = dict[str, str]


def read_csv(path: Path) -> list[Row]:
    """A labels / predictions CSV, or a ``hipnode export`` CSV (read as predictions, see
    :func:`rows_from_export`)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "image_id" not in fields and "sop_instance_uid" in fields:
            return rows_from_export(
                {k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader
            )
        if "image_id" not in fields:
            raise ValueError(f"{path}: needs a header row with an 'image_id' column")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


EXPORT_SIDES = ("R", "L")


def rows_from_export(rows: Iterable[Row]) -> list[Row]:
    """``hipnode export`` rows (one per image, per-side columns ``<name>_R`` / ``<name>_L``) as
    prediction rows: one per imaged hip, ``image_id`` the SOP Instance UID, ``side`` R / L, the
    side's columns without their suffix (``dysplasia_prob``, ``inclination_deg``, …). So the
    labels only need the SOP Instance UID of each image and the side."""
    out: list[Row] = []
    for row in rows:
        for side in EXPORT_SIDES:
            if side not in row.get("sides", ""):
                continue
            hip = {"image_id": row["sop_instance_uid"], "side": side}
            suffix = f"_{side}"
            hip.update({k.removesuffix(suffix): v for k, v in row.items() if k.endswith(suffix)})
            out.append(hip)
    return out


def _key(row: Row, with_side: bool) -> tuple[str, str]:
    return (row["image_id"], row.get("side", "").upper() if with_side else "")


def join(a: Sequence[Row], b: Sequence[Row]) -> tuple[list[tuple[Row, Row]], int, int]:
    """Pairs of rows with the same key; counts of rows only in ``a`` and only in ``b``."""
    with_side = bool(a) and bool(b) and "side" in a[0] and "side" in b[0]
    ib = {_key(r, with_side): r for r in b}
    ia = {_key(r, with_side): r for r in a}
    pairs = [(r, ib[k]) for k, r in ia.items() if k in ib]
    return pairs, len(set(ia) - set(ib)), len(set(ib) - set(ia))


def _num(cell: str | None) -> float:
    if cell is None or cell == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _flag_arrays(pairs: Sequence[tuple[Row, Row]], flag: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not pairs or flag not in pairs[0][0]:
        return None
    pred_col = f"{flag}_prob" if f"{flag}_prob" in pairs[0][1] else flag if flag in pairs[0][1] else None
    if pred_col is None:
        return None
    y = np.array([_num(t.get(flag)) for t, _ in pairs])
    s = np.array([_num(p.get(pred_col)) for _, p in pairs])
    ok = np.isfinite(y) & np.isfinite(s)
    return y[ok].astype(np.int64), s[ok]


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for it in items:
        name, _, val = it.partition("=")
        if name not in MORPHOLOGY_FLAGS or not val:
            raise ValueError(f"--threshold expects FLAG=VALUE with FLAG one of {', '.join(MORPHOLOGY_FLAGS)}")
        out[name] = float(val)
    return out


def _plot_roc(path: Path, name: str, y: np.ndarray, s: np.ndarray, auc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(y, s)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auc:.2f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(name)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_bland_altman(path: Path, name: str, measured: np.ndarray, reference: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = angle_agreement(measured, reference)
    ok = np.isfinite(measured) & np.isfinite(reference)
    mean = (measured[ok] + reference[ok]) / 2
    diff = measured[ok] - reference[ok]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.scatter(mean, diff, s=10)
    for v, ls in ((st.bias, "-"), (st.loa_low, "--"), (st.loa_high, "--")):
        if math.isfinite(v):
            ax.axhline(v, ls=ls, color="grey", lw=1)
    ax.set_xlabel(f"mean of measured and reference {name} (°)")
    ax.set_ylabel("measured − reference (°)")
    ax.set_title(f"{name}: bias {st.bias:.2f}°, LoA {st.loa_low:.2f}…{st.loa_high:.2f}°")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate(
    truth: Sequence[Row],
    pred: Sequence[Row],
    out_dir: Path,
    *,
    second_rater: Sequence[Row] | None = None,
    thresholds: dict[str, float] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """Compute everything, write the files, return the summary that goes to ``metrics.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or {}
    pairs, only_truth, only_pred = join(truth, pred)
    reports: list[FlagReport] = []
    for flag in MORPHOLOGY_FLAGS:
        arrs = _flag_arrays(pairs, flag)
        if arrs is None or len(arrs[0]) == 0:
            continue
        y, s = arrs
        rep = flag_report(flag, y, s, thresholds.get(flag, 0.5), n_boot=n_boot, seed=seed)
        reports.append(rep)
        if plots:
            _plot_roc(out_dir / f"roc_{flag}.png", flag, y, s, rep.values["auroc"])
    summary: dict[str, Any] = {
        "n_matched": len(pairs),
        "only_in_truth": only_truth,
        "only_in_pred": only_pred,
        "flags": {
            r.name: {"n": r.n, "n_positive": r.n_positive, "threshold": r.threshold, **r.values,
                     "ci95": {k: list(v) for k, v in r.ci.items()}}
            for r in reports
        },
        "angles": {},
        "agreement": {},
    }
    table = format_table1(reports, with_ci=n_boot > 0)
    (out_dir / "table1.tsv").write_text(table + "\n", encoding="utf-8")
    for col in ANGLE_COLUMNS:
        if not pairs or col not in pairs[0][0] or col not in pairs[0][1]:
            continue
        ref = np.array([_num(t.get(col)) for t, _ in pairs])
        mea = np.array([_num(p.get(col)) for _, p in pairs])
        labelled = np.isfinite(ref)
        st = angle_agreement(mea, ref)
        summary["angles"][col] = {
            "n": st.n,
            "refused": int((labelled & ~np.isfinite(mea)).sum()),
            "mae": st.mae,
            "bias": st.bias,
            "sd": st.sd,
            "loa_low": st.loa_low,
            "loa_high": st.loa_high,
        }
        if plots and st.n > 0:
            _plot_bland_altman(out_dir / f"bland_altman_{col.removesuffix('_deg')}.png", col, mea, ref)
    if second_rater is not None:
        rpairs, _, _ = join(truth, second_rater)
        lines = ["flag\tn\tgwet_ac1\tcohen_kappa\tpercent_agreement"]
        for flag in MORPHOLOGY_FLAGS:
            if not rpairs or flag not in rpairs[0][0] or flag not in rpairs[0][1]:
                continue
            a = np.array([_num(x.get(flag)) for x, _ in rpairs])
            b = np.array([_num(y.get(flag)) for _, y in rpairs])
            ok = np.isfinite(a) & np.isfinite(b)
            a, b = a[ok].astype(int), b[ok].astype(int)
            ac1, kap = gwet_ac1(a, b), cohen_kappa(a, b)
            pa = float((a == b).mean()) if len(a) else math.nan
            summary["agreement"][flag] = {"n": len(a), "gwet_ac1": ac1, "cohen_kappa": kap, "agreement": pa}
            lines.append(f"{flag}\t{len(a)}\t{ac1:.3f}\t{kap:.3f}\t{pa:.3f}")
        (out_dir / "agreement.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "metrics.json").write_text(json.dumps(_jsonable(summary), indent=2), encoding="utf-8")
    summary["table1"] = table
    return summary


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", type=Path, required=True, help="reference labels CSV (see module doc)")
    parser.add_argument("--pred", type=Path, required=True, help="predictions CSV")
    parser.add_argument("--second-rater", type=Path, default=None, help="second rater's labels CSV (AC1, kappa)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--threshold", action="append", default=[], metavar="FLAG=VALUE",
                        help="decision threshold per flag (default 0.5); repeatable")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def main(args: argparse.Namespace) -> int:
    try:
        truth = read_csv(args.truth)
        pred = read_csv(args.pred)
        second = read_csv(args.second_rater) if args.second_rater else None
        thresholds = parse_thresholds(args.threshold)
    except (OSError, ValueError) as exc:
        print(f"hipnode evaluate: {exc}", file=sys.stderr)
        return 2
    summary = evaluate(truth, pred, args.out, second_rater=second, thresholds=thresholds,
                       n_boot=args.n_boot, seed=args.seed, plots=not args.no_plots)
    print(summary["table1"])
    for col, st in summary["angles"].items():
        print(f"{col}: n={st['n']} refused={st['refused']} MAE={st['mae']:.2f}° bias={st['bias']:.2f}° "
              f"LoA {st['loa_low']:.2f}…{st['loa_high']:.2f}°")
    for flag, ag in summary["agreement"].items():
        print(f"{flag}: Gwet AC1 {ag['gwet_ac1']:.3f}, Cohen kappa {ag['cohen_kappa']:.3f} (n={ag['n']})")
    if summary["only_in_truth"] or summary["only_in_pred"]:
        print(f"unmatched rows: {summary['only_in_truth']} only in truth, {summary['only_in_pred']} only in pred",
              file=sys.stderr)
    return 0
