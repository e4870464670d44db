"""``hipnode evaluate`` end to end on small CSV files."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from node.evalstats import auroc, cohen_kappa, gwet_ac1
from node.evaluate import add_arguments, main


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return main(p.parse_args(argv))


def test_evaluate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, (n, 2))
    prob = np.clip(0.4 * y + rng.normal(0.3, 0.2, (n, 2)), 0, 1).round(3)
    second = np.where(rng.random((n, 2)) < 0.85, y, 1 - y)
    incl = rng.uniform(30, 60, n).round(2)
    meas = (incl + rng.normal(0.3, 1.0, n)).round(2)
    ids = [f"img{i:03d}" for i in range(n)]
    _write(tmp_path / "truth.csv", ["image_id", "side", "dysplasia", "cam_deformity", "inclination_deg"],
           [[ids[i], "R", y[i, 0], y[i, 1], incl[i]] for i in range(n)])
    pred_rows: list[list[object]] = [[ids[i], "R", prob[i, 0], prob[i, 1], meas[i]] for i in range(n - 1)]
    pred_rows[5][4] = ""  # a refused angle
    pred_rows.append(["extra", "R", 0.5, 0.5, 40.0])  # only in predictions
    _write(tmp_path / "pred.csv", ["image_id", "side", "dysplasia_prob", "cam_deformity_prob", "inclination_deg"],
           pred_rows)
    _write(tmp_path / "rater2.csv", ["image_id", "side", "dysplasia", "cam_deformity"],
           [[ids[i], "R", second[i, 0], second[i, 1]] for i in range(n)])
    out = tmp_path / "out"
    rc = _run(["--truth", str(tmp_path / "truth.csv"), "--pred", str(tmp_path / "pred.csv"),
               "--second-rater", str(tmp_path / "rater2.csv"), "--out", str(out), "--n-boot", "200",
               "--threshold", "dysplasia=0.45"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("Abnormality\tAccuracy")
    assert "Dysplasia" in printed and "CAM" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["n_matched"] == n - 1 and summary["only_in_truth"] == 1 and summary["only_in_pred"] == 1
    d = summary["flags"]["dysplasia"]
    assert d["threshold"] == 0.45
    assert d["auroc"] == pytest.approx(auroc(y[: n - 1, 0], prob[: n - 1, 0]))
    lo, hi = d["ci95"]["auroc"]
    assert lo <= d["auroc"] <= hi
    ang = summary["angles"]["inclination_deg"]
    assert ang["n"] == n - 2 and ang["refused"] == 1
    keep = [i for i in range(n - 1) if i != 5]
    assert ang["mae"] == pytest.approx(float(np.mean(np.abs(meas[keep] - incl[keep]))))
    ag = summary["agreement"]["cam_deformity"]
    assert ag["gwet_ac1"] == pytest.approx(gwet_ac1(y[:, 1], second[:, 1]))
    assert ag["cohen_kappa"] == pytest.approx(cohen_kappa(y[:, 1], second[:, 1]))
    for name in ("roc_dysplasia.png", "roc_cam_deformity.png", "bland_altman_inclination.png", "table1.tsv",
                 "agreement.tsv"):
        assert (out / name).stat().st_size > 0
    assert (out / "roc_dysplasia.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.csv").write_text("id,dysplasia\n1,0\n")
    (tmp_path / "p.csv").write_text("image_id,dysplasia_prob\n1,0.3\n")
    rc = _run(["--truth", str(tmp_path / "t.csv"), "--pred", str(tmp_path / "p.csv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "image_id" in capsys.readouterr().err
