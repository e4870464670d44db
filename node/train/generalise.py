"""Leave-one-style-out evaluation: the node's analysis on phantom styles the models never saw.

Why: a figure measured on the generator style a model was trained on says little about images
drawn any other way (issue 12: the bundled models scored ~99 % in style and missed half the
implants of an independent renderer). The phantom generator forms images in more than one way
(``node.phantom``: ``analytic`` ray sums, ``voxel`` voxelised anatomy with its own textures and
detector model; ``sketch``, an independently written painter, evaluation only). A style is held
out for a model pair when no model in it (ensemble members each) lists it in its manifest's
``trained_on_styles`` (``trained_on_styles``); this module scores the styles side by side with the
*node's own* analysis
(``node.pipeline.analyse_hips``: triage, detector, metal finder, fusion, cup fit).

Two sets per style, both fresh seeds never trained on:

* ``mixed``: every view, random implants and hardware (``variety="broad"``): view accuracy
  (laterals separately), implant per imaged side, cup recall (a cup box of the node's with
  IoU >= 0.5 to the true cup box, on AP views);
* ``cups``: AP pelvis with one or two cups, neutral pelvic tilt / rotation (a single AP cannot
  see sagittal tilt, so the truth is only observable then): the share of visible cups measured
  and the inclination / anteversion MAE against the generator's true radiographic angles.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from node.analyse.cup import ProjectionGeometry
from node.domain import Box, Side, View
from node.infer.detector import DetectorModel
from node.infer.nms import pair_iou
from node.infer.triage import TriageModel, confirm_uncertain_view, side_from_header

log = logging.getLogger(__name__)

AP_VIEWS = (View.AP_PELVIS, View.AP_HIP)
STYLES = ("analytic", "voxel")
# Styles for evaluation only: ``sketch`` (``node.phantom.sketch``) shares no scene, shapes or
# implant models with the generator that trains the models; it was written by a separate author
# who did not read that generator, as an outside tester's renderer would be.
EVAL_STYLES = (*STYLES, "sketch")


@dataclass
class Rendered:
    """One phantom as the node would read it, with its truth."""

    image01: np.ndarray
    truth: Any  # node.phantom.truth.GroundTruth
    sid_mm: float | None


def _render_job(job: tuple[str, str, int, int, int]) -> Rendered:
    """Image ``index`` of set ``kind`` in ``style`` (deterministic in its arguments)."""
    from node.phantom import render, sample_spec
    from node.train.data import phantom_image01

    kind, style, seed, index, rows = job
    if style == "sketch":
        from pydicom.dataset import Dataset

        from node.phantom.sketch import render_sketch
        from node.pixels import normalise

        pixels, truth = render_sketch(kind, seed, index, rows)
        header = Dataset()
        header.PhotometricInterpretation = truth.photometric
        return Rendered(normalise(header, pixels.astype(np.float32)), truth, None)
    rng = np.random.default_rng([seed, index])
    if kind == "cups":
        implants = "unilateral" if rng.random() < 0.4 else "bilateral"
        spec = sample_spec(rng, view=View.AP_PELVIS, implants=implants, rows=rows, variety="broad")
        spec = replace(spec, geometry=replace(spec.geometry, pelvic_tilt_deg=0.0, pelvic_rotation_deg=0.0))
    else:
        spec = sample_spec(rng, rows=rows, variety="broad")
    img = render(spec, style=style)
    sid = spec.geometry.sid_mm if spec.geometry.projection == "point" else None
    return Rendered(phantom_image01(img), img.truth, sid)


def render_set(kind: str, style: str, n: int, seed: int, rows: int, workers: int = 1) -> list[Rendered]:
    jobs = [(kind, style, seed, i, rows) for i in range(n)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            return list(pool.imap(_render_job, jobs, chunksize=2))
    return [_render_job(j) for j in jobs]


def _ratio(ok: Sequence[bool]) -> float | None:
    return round(sum(ok) / len(ok), 4) if ok else None


def _mae(errors: Sequence[float]) -> float | None:
    return round(float(np.mean(np.abs(errors))), 3) if errors else None


def lateral_side_from_pixels(items: Sequence[Rendered], triage: TriageModel) -> tuple[float | None, int]:
    """Share of true laterals on which the triage head, from pixels alone, names the imaged hip
    (the analysis itself takes a lateral's side from the header: ``side_from_header``)."""
    laterals = [r for r in items if r.truth.view is View.LATERAL_HIP]
    results = triage.predict([r.image01 for r in laterals]) if laterals else []
    ok = [t.imaged_sides == r.truth.imaged_sides for r, t in zip(laterals, results, strict=True)]
    return _ratio(ok), len(ok)


def analyse(
    items: Sequence[Rendered], triage: TriageModel, detector: DetectorModel
) -> list[tuple[Any, Any, list[Any]]]:
    """(triage result, truth, hips) per image through the node's own analysis.

    A lateral's side (and an AP hip's where the model is unsure of it) comes from the laterality
    its header would carry (the truth's imaged side, as ``node.phantom.dicom`` writes it), as the
    worker reads it; ``lateral_side_from_pixels`` scores the pixels' own answer on laterals."""
    from node.pipeline import analyse_hips

    images = [r.image01 for r in items]
    results = triage.predict(images)
    found = detector.detect_with_candidates(images)
    out = []
    for r, t, (bx, candidates) in zip(items, results, found, strict=True):
        hips: list[Any] = []
        t, _ = confirm_uncertain_view(t, bx)
        # the laterality a modality writes (``node.phantom.dicom`` does: the imaged side), read
        # as the worker reads it (``side_from_header``)
        sides = r.truth.imaged_sides
        t, _ = side_from_header(t, sides[0] if len(sides) == 1 else None)
        if t.view is not View.OTHER:
            spacing = r.truth.imager_pixel_spacing_mm
            geo = ProjectionGeometry(r.sid_mm) if r.sid_mm and spacing else None
            hips, _ = analyse_hips(r.image01, t, bx, morphology=None, detector_ran=True,
                                   pixel_spacing_mm=spacing, geometry=geo, joint_candidates=candidates)
        out.append((t, r.truth, hips))
    return out


def score_mixed(analysed: Sequence[tuple[Any, Any, list[Any]]]) -> dict[str, Any]:
    view_ok, lateral_ok, implant_ok, cup_found = [], [], [], []
    per_view: dict[str, list[bool]] = {}
    for t, gt, hips in analysed:
        ok = t.view is gt.view
        view_ok.append(ok)
        per_view.setdefault(gt.view.value, []).append(ok)
        if gt.view is View.LATERAL_HIP:
            lateral_ok.append(ok)
        by_side = {h.side: h for h in hips}
        for side in gt.imaged_sides:
            truth = gt.hips.get(side)
            if truth is None:
                continue
            hip = by_side.get(side)
            implant_ok.append(hip is not None and hip.implant_present is not None
                              and bool(hip.implant_present) == bool(truth.implant))
            if gt.view in AP_VIEWS and truth.cup is not None:
                cup_boxes = [b for b in gt.boxes if b.label == "cup"]
                true_box = _nearest_box(cup_boxes, truth.cup.ellipse.cx, truth.cup.ellipse.cy)
                got = hip.cup_box if hip is not None else None
                cup_found.append(true_box is not None and got is not None and pair_iou(true_box, got) >= 0.5)
    return {
        "images": len(analysed),
        "view_accuracy": _ratio(view_ok),
        "view_accuracy_per_view": {k: {"n": len(v), "accuracy": _ratio(v)} for k, v in sorted(per_view.items())},
        "lateral_accuracy": _ratio(lateral_ok),
        "lateral_n": len(lateral_ok),
        "implant_per_side_accuracy": _ratio(implant_ok),
        "implant_sides": len(implant_ok),
        "cup_recall_iou50": _ratio(cup_found),
        "cup_n": len(cup_found),
    }


def score_cups(analysed: Sequence[tuple[Any, Any, list[Any]]]) -> dict[str, Any]:
    e_inc: list[float] = []
    e_ant: list[float] = []
    e_inc_only: list[float] = []  # inclination without anteversion (a head fills the cup)
    visible = 0
    refusals: dict[str, int] = {}
    by_design: dict[str, dict[str, Any]] = {}
    for _t, gt, hips in analysed:
        by_side = {h.side: h for h in hips}
        for side in gt.imaged_sides:
            truth = gt.hips.get(side)
            if truth is None or truth.cup is None:
                continue
            visible += 1
            design = by_design.setdefault(str(getattr(truth, "design", None) or "hemispherical"),
                                          {"visible": 0, "measured": 0, "inc": [], "ant": []})
            design["visible"] += 1
            hip = by_side.get(side)
            cup = hip.cup if hip is not None else None
            if cup is not None and cup.inclination_deg is not None and cup.anteversion_deg is None:
                e_inc_only.append(cup.inclination_deg - truth.cup.inclination_deg)
                design["inclination_only"] = design.get("inclination_only", 0) + 1
            if cup is None or cup.inclination_deg is None or cup.anteversion_deg is None:
                why = "no cup box" if cup is None else (
                    cup.refusal_reason or cup.anteversion_refusal or "refused").split(" (")[0]
                if hip is not None and not hip.implant_present:
                    why = "implant not found"
                refusals[why] = refusals.get(why, 0) + 1
                continue
            e_inc.append(cup.inclination_deg - truth.cup.inclination_deg)
            e_ant.append(cup.anteversion_deg - truth.cup.anteversion_deg)
            design["measured"] += 1
            design["inc"].append(e_inc[-1])
            design["ant"].append(e_ant[-1])
    return {
        "visible_cups": visible,
        "cups_measured": len(e_inc),
        "cups_measured_fraction": round(len(e_inc) / visible, 4) if visible else None,
        "inclination_mae_deg": _mae(e_inc),
        "anteversion_mae_deg": _mae(e_ant),
        "inclination_worst_deg": round(max(map(abs, e_inc)), 2) if e_inc else None,
        "anteversion_worst_deg": round(max(map(abs, e_ant)), 2) if e_ant else None,
        "not_measured": refusals,
        # "measured" above means both angles; a cup whose head hides the rim's width may still get
        # its inclination, scored here on its own
        "inclination_only": len(e_inc_only),
        "inclination_only_mae_deg": _mae(e_inc_only),
        "inclination_only_worst_deg": round(max(map(abs, e_inc_only)), 2) if e_inc_only else None,
        "cups_with_inclination_fraction": round((len(e_inc) + len(e_inc_only)) / visible, 4) if visible else None,
        # per implant design: some refuse by principle (a head filling the shell hides the rim,
        # an arc marker wire does not mark the opening), so "all designs" mixes two questions
        "per_design": {
            k: {"visible": v["visible"], "measured": v["measured"], "inclination_mae_deg": _mae(v["inc"]),
                "anteversion_mae_deg": _mae(v["ant"]), "inclination_only": v.get("inclination_only", 0)}
            for k, v in sorted(by_design.items())
        },
    }


def _nearest_box(boxes: Sequence[Box], x: float, y: float) -> Box | None:
    return min(boxes, key=lambda b: math.hypot(b.centre.x - x, b.centre.y - y), default=None)


def evaluate_styles(
    triage: TriageModel,
    detector: DetectorModel,
    styles: Sequence[str] = EVAL_STYLES,
    *,
    mixed: int = 120,
    cups: int = 40,
    seed: int = 910_001,
    rows: int = 768,
    workers: int = 1,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Both sets in every style, scored with the node's analysis; one dict per style."""
    out: dict[str, Any] = {"seed": seed, "rows": rows, "styles": {}}
    for style in styles:
        t0 = time.perf_counter()
        mixed_set = render_set("mixed", style, mixed, seed, rows, workers)
        cup_set = render_set("cups", style, cups, seed + 1, rows, workers)
        progress(f"{style}: rendered {mixed} + {cups} phantoms in {time.perf_counter() - t0:.0f} s")
        figures = score_mixed(analyse(mixed_set, triage, detector))
        figures["lateral_side_from_pixels"], _ = lateral_side_from_pixels(mixed_set, triage)
        figures.update(score_cups(analyse(cup_set, triage, detector)))
        out["styles"][style] = figures
    return out


def trained_on_styles(*models: TriageModel | DetectorModel) -> list[str]:
    """The phantom styles any of ``models`` trained on, from their manifests' ``trained_on_styles``
    (a manifest without the key predates style mixing: ``analytic``; an empty list, a model
    trained on site data only, saw none). A style is held out for a model pair only when neither
    model saw it."""
    out: list[str] = []
    sessions = [s for m in models for s in (m.sessions if isinstance(m, TriageModel) else [m.model])]
    for session in sessions:  # an ensemble's members each
        styles = session.manifest.extra.get("trained_on_styles", ["analytic"])
        for style in [styles] if isinstance(styles, str) else styles or []:
            if style not in out:
                out.append(str(style))
    return out


TABLE_ROWS = (
    ("view accuracy", "view_accuracy", "{:.1%}"),
    ("laterals recognised", "lateral_accuracy", "{:.1%}"),
    ("lateral side from pixels (header used)", "lateral_side_from_pixels", "{:.1%}"),
    ("implant per side", "implant_per_side_accuracy", "{:.1%}"),
    ("cup recall (IoU 0.5)", "cup_recall_iou50", "{:.1%}"),
    ("visible cups measured", "cups_measured_fraction", "{:.1%}"),
    ("visible cups with an inclination", "cups_with_inclination_fraction", "{:.1%}"),
    ("inclination-only MAE (deg)", "inclination_only_mae_deg", "{:.2f}"),
    ("inclination MAE (deg)", "inclination_mae_deg", "{:.2f}"),
    ("anteversion MAE (deg)", "anteversion_mae_deg", "{:.2f}"),
)


def table(result: dict[str, Any], trained_on: Sequence[str] = ("analytic",)) -> str:
    """The figures as a text table, styles side by side, each marked in-style or held out."""
    styles = list(result["styles"])
    head = ["", *[f"{s} ({'in-style' if s in trained_on else 'held out'})" for s in styles]]
    rows = [head]
    for label, key, fmt in TABLE_ROWS:
        cells = [label]
        for s in styles:
            v = result["styles"][s].get(key)
            cells.append("n/a" if v is None else fmt.format(v))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def find_real_films() -> Path:
    """The folder of the real paediatric films: ``$HIPNODE_REAL_FILMS``, else ``shared/real/…``
    beside the repository (the workplace layout) or inside it. Returned even when absent, so the
    caller's error names where it looked."""
    import os

    env = os.environ.get("HIPNODE_REAL_FILMS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    candidates = [base / "shared" / "real" / "ap_pelvis_paediatric" for base in (repo.parent, repo)]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REAL_FILMS = find_real_films()


def film_landmarks(path: Path) -> dict[Side, list[tuple[float, float]]]:
    """The publisher's six points as two per-hip triples, assigned by image side (the files'
    own right/left naming is inconsistent; the patient's right hip is on the image's left)."""
    marks = json.loads(path.with_suffix(".landmarks.json").read_text())["landmark_list"][0]
    pairs = [
        [tuple(marks[f"pel_{s}_o"]), tuple(marks[f"pel_{s}_i"]), tuple(marks[f"fem_{s}"])] for s in ("r", "l")
    ]
    pairs.sort(key=lambda pts: sum(p[0] for p in pts))
    return {Side.RIGHT: pairs[0], Side.LEFT: pairs[1]}  # type: ignore[dict-item]


# the outer acetabular edge lies on the rim: a joint box's edge may touch it
LANDMARK_TOLERANCE_PX = 2.0


def box_contains(box: Sequence[float], points: Sequence[tuple[float, float]]) -> bool:
    """Every point inside ``(x0, y0, x1, y1)`` (within ``LANDMARK_TOLERANCE_PX``)."""
    x0, y0, x1, y1 = box
    t = LANDMARK_TOLERANCE_PX
    return all(x0 - t <= x <= x1 + t and y0 - t <= y <= y1 + t for x, y in points)


def real_films(triage: TriageModel, detector: DetectorModel, folder: Path = REAL_FILMS) -> dict[str, Any]:
    """What the node's analysis says on the real paediatric films (evaluation only).

    Read exactly as the worker reads them (``node.pixels.load_radiograph``: RGB-encoded grey,
    JPEG 2000); per film the view, and per hip whether a joint box was found and contains the
    publisher's landmarks (2 px tolerance), and whether an implant was (wrongly) reported.
    """
    from node.config import ScreeningConfig
    from node.pipeline import analyse_hips
    from node.pixels import load_radiograph

    films: dict[str, Any] = {}
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        rad, verdict = load_radiograph(path, ScreeningConfig())
        if rad is None:
            films[path.name] = {"screened_out": f"{verdict.reason}: {verdict.detail}"}
            continue
        t = triage.predict([rad.image01])[0]
        boxes, candidates = detector.detect_with_candidates([rad.image01])[0]
        t, _ = confirm_uncertain_view(t, boxes)
        entry: dict[str, Any] = {"view": t.view.value, "view_p": round(t.view_probability, 3), "hips": {}}
        if t.view is not View.OTHER:
            hips, _ = analyse_hips(rad.image01, t, boxes, morphology=None, detector_ran=True,
                                   joint_candidates=candidates)
            marks = film_landmarks(path)
            for hip in hips:
                jb = hip.joint_box
                contains = jb is not None and box_contains((jb.x0, jb.y0, jb.x1, jb.y1), marks[hip.side])
                entry["hips"][hip.side.value] = {
                    "joint_box": None if jb is None else [round(v, 1) for v in (jb.x0, jb.y0, jb.x1, jb.y1)],
                    "joint_box_contains_landmarks": contains,
                    "implant": hip.implant_present,
                }
        films[path.name] = entry
    hips = [h for f in films.values() for h in f.get("hips", {}).values()]
    return {
        "films": films,
        "n": len(files),
        "ap_pelvis": sum(1 for f in films.values() if f.get("view") == "ap_pelvis"),
        "hips_located": sum(1 for h in hips if h["joint_box_contains_landmarks"]),
        "hips_total": 2 * len(files),
        "implant_reported": sum(1 for h in hips if h["implant"]),
        "source": "Fraiwan et al. 2022, A dataset of DDH x-ray images, Mendeley Data V2, "
        "doi:10.17632/jf3pv98m9g.2, CC BY 4.0 (evaluation only)",
    }
