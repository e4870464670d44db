"""Leave-one-style-out table: the node's analysis on the style its models trained on and on a
style they never saw (``node.train.generalise``), plus the real paediatric films.

Three styles: ``analytic`` (the phantom generator's ray sums), ``voxel`` (the same scenes
voxelised, own textures, own detector and presentation model) and ``sketch``
(``node.phantom.sketch``: an independently written 2-D attenuation painter with its own anatomy
and physically projected implants, sharing no code or shapes with the training generator,
evaluation only: ``hipnode train`` refuses it). A style is held out when neither bundled model
trained on it; the models' manifests say which styles they saw (``trained_on_styles``), so the
table marks each column from them. Every column uses the same fresh seeds, the same specs and
the node's own analysis (triage → detector → metal finder → fusion → cup fit). Issue 12's
targets on a held-out style: implant per side >= 99 %, laterals >= 95 %, >= 90 % of visible cups
measured, inclination MAE <= 2 deg, anteversion MAE <= 3 deg.

Run: ``python -m benchmarks.bench_generalise [--quick]``; results in
``benchmarks/results/generalise.json`` (and the table printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from node.config import ModelsConfig
from node.infer.detector import DetectorModel
from node.infer.triage import TriageModel
from node.train.generalise import EVAL_STYLES, evaluate_styles, real_films, table, trained_on_styles

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "implant_per_side_accuracy": (0.99, ">="),
    "lateral_accuracy": (0.95, ">="),
    "cups_measured_fraction": (0.90, ">="),
    "inclination_mae_deg": (2.0, "<="),
    "anteversion_mae_deg": (3.0, "<="),
}


def targets_met(figures: dict[str, Any]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for key, (bar, op) in TARGETS.items():
        v = figures.get(key)
        out[key] = None if v is None else (v >= bar if op == ">=" else v <= bar)
    return out


# Baselines scored in the same run, on the same seeds (a triage model or ensemble, a detector, and
# the triage's test-time views, ``models.triage_test_time``): the first pair bundled before issue
# 12 and the pair before the current one, both as they ran then (the image alone); ``run`` adds
# the bundled models reading the image alone, which is what the test-time views add.
BASELINES: tuple[tuple[str, str | list[str], str, str], ...] = (
    ("triage 1.2.0 + detector 1.1.0 (before issue 12)", "triage/1.2.0", "detector/1.1.0", "none"),
    ("triage 2.2.0 + detector 2.1.0 (the previous bundled pair)", "triage/2.2.0", "detector/2.1.0", "none"),
)
# held-out figures quoted as ratios against each baseline
RATIO_KEYS = ("implant_per_side_accuracy", "lateral_accuracy", "cups_measured_fraction", "view_accuracy")


def _ratios(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        a, b = current.get(key), baseline.get(key)
        out[key] = round(a / b, 4) if a is not None and b else None
    return out


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    cfg = ModelsConfig(root=ROOT / "models")
    # the bundled defaults, as `hipnode run` loads them (triage: an ensemble, node.config)
    triage, detector = TriageModel.load(cfg.triage or "triage", cfg), DetectorModel.load(cfg.detector or "detector", cfg)
    t0 = time.perf_counter()
    mixed, cups = (24, 10) if quick else (160, 50)
    result = evaluate_styles(triage, detector, mixed=mixed, cups=cups, workers=2, progress=print)
    result["models"] = {"triage": triage.label, "detector": detector.label, "triage_test_time": triage.test_time}
    # held out = styles neither bundled model trained on (their manifests say which)
    trained = trained_on_styles(triage, detector)
    held_out = [style for style in EVAL_STYLES if style not in trained]
    result["trained_on_styles"] = trained
    result["trained_on_styles_per_model"] = {
        "triage": trained_on_styles(triage), "detector": trained_on_styles(detector)}
    result["held_out_styles"] = held_out
    result["held_out_targets_met"] = {style: targets_met(result["styles"][style]) for style in held_out}
    result["real_films"] = real_films(triage, detector)
    result["baselines"] = {}
    current = (triage.label, detector.label, triage.test_time)
    alone = ("the bundled models without test-time views", cfg.triage_names, cfg.detector or "detector", "none")
    for label, t_name, d_name, views in (*BASELINES, alone):
        base_cfg = cfg.model_copy(update={"triage_test_time": views})
        bt, bd = TriageModel.load(t_name, base_cfg), DetectorModel.load(d_name, base_cfg)
        if (bt.label, bd.label, bt.test_time) == current:
            continue  # the current pair is not its own baseline
        base = evaluate_styles(bt, bd, mixed=mixed, cups=cups, workers=2, progress=print)
        base["real_films"] = real_films(bt, bd)
        base["held_out_ratio_current_over_baseline"] = {
            style: _ratios(result["styles"][style], base["styles"][style]) for style in held_out}
        result["baselines"][label] = base
        print(f"{label}: held-out ratios current/baseline {base['held_out_ratio_current_over_baseline']}")
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["table"] = table(result, trained).splitlines()
    print(table(result, trained))
    real = result["real_films"]
    print(f"real films: {real['ap_pelvis']}/{real['n']} AP pelvis, {real['hips_located']}/{real['hips_total']} hips "
          f"located, {real['implant_reported']} implants reported (none present)")
    (results_dir / "generalise.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    run(out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
