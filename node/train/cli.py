"""``hipnode train triage|detector|morphology …`` — argument parsing and data selection.

``node.cli`` calls ``add_arguments(parser)`` to register the sub-commands and ``main(args)``
to run one. Heavy imports (torch, timm, ultralytics) happen only inside the chosen command, so
``hipnode --help`` works without the ``train`` extra.

Data come from a site archive (``--data labels.csv``, see ``node.train.data``) or from the
phantom generator (``--phantoms N --phantom-seed S``); ``--negatives DIR`` adds every accepted
DICOM under DIR as view "other" (real non-hip radiographs are the best negatives a site has).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import random
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TASKS = ("triage", "detector", "morphology")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data")
    src.add_argument("--data", type=Path, help="labels CSV of a DICOM archive (columns: see node.train.data)")
    src.add_argument("--val-data", type=Path, help="separate labels CSV for validation (else --val-fraction)")
    src.add_argument("--val-fraction", type=float, default=0.15, help="validation share when no --val-data")
    src.add_argument(
        "--phantoms", type=int, default=0, help="number of phantom images to generate for training"
    )
    src.add_argument("--phantom-seed", type=int, default=1, help="seed of the training phantoms")
    src.add_argument("--val-phantoms", type=int, default=200, help="phantom images for validation")
    src.add_argument("--val-phantom-seed", type=int, default=1001, help="seed of the validation phantoms")
    src.add_argument("--phantom-size", type=int, default=384, help="rendered phantom size in pixels")
    src.add_argument(
        "--val-phantom-size", type=int, help="rendered size of validation phantoms (default: --phantom-size)"
    )
    src.add_argument(
        "--phantom-variety",
        choices=("classic", "broad"),
        default="classic",
        help="phantom sampler range: broad adds implant designs, fixation hardware, children (training)",
    )
    src.add_argument(
        "--phantom-style",
        choices=("analytic", "voxel"),
        default="analytic",
        help="how phantom pixels are formed; keep one style out of training to evaluate on it",
    )
    src.add_argument(
        "--extra-phantoms",
        action="append",
        default=[],
        metavar="STYLE:N:SEED",
        help="add N training phantoms of another STYLE (own SEED, same size, variety and child share); "
        "repeatable. Training on several image-forming styles is what SyntheX found to carry over to "
        "images of a style never seen; keep at least one style out to evaluate on",
    )
    src.add_argument(
        "--extra-val-phantoms",
        action="append",
        default=[],
        metavar="STYLE:N:SEED",
        help="add N validation phantoms of STYLE (rendered at --val-phantom-size); repeatable",
    )
    src.add_argument(
        "--phantom-child-share",
        type=float,
        help="broad variety: probability that an AP pelvis / AP hip phantom is a child (default 0.1)",
    )
    src.add_argument("--workers", type=int, default=1, help="processes rendering phantoms")
    src.add_argument(
        "--cache", type=Path, help="folder to cache rendered phantom sets in (reused by later runs)"
    )
    src.add_argument(
        "--negatives", type=Path, action="append", default=[], help="folder of non-hip DICOM (view other)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and augmentation")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def add_randomise_arguments(p: argparse.ArgumentParser) -> None:
    """Domain randomisation flags shared by ``train detector`` and ``train triage``."""
    g = p.add_argument_group("domain randomisation (node.train.augment)")
    g.add_argument(
        "--randomise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="randomise training images' appearance and geometry (SyntheX-style); validation stays clean",
    )
    g.add_argument(
        "--copies",
        type=int,
        default=2,
        help="detector: copies of each training image in the dataset (each randomised afresh, the first "
        "clean with --clean-first); triage: images are randomised afresh every epoch and 1 in COPIES "
        "draws is clean with --clean-first",
    )
    g.add_argument(
        "--randomise-strength",
        type=float,
        default=1.0,
        help="scales transform probabilities (capped at 1) and amplitudes (up to 1); 0 = off",
    )
    g.add_argument(
        "--clean-first",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep one clean copy per sample (detector) / a clean share of 1/COPIES (triage)",
    )


def randomisation_of(args: argparse.Namespace) -> dict[str, Any]:
    """The randomisation settings of a parsed command (defaults for namespaces built elsewhere)."""
    from node.train.augment import settings

    enabled = bool(getattr(args, "randomise", False)) and float(getattr(args, "randomise_strength", 1.0)) > 0
    copies = int(getattr(args, "copies", 1))
    if copies < 1:
        raise SystemExit("--copies must be at least 1")
    return settings(
        enabled,
        float(getattr(args, "randomise_strength", 1.0)),
        copies,
        bool(getattr(args, "clean_first", True)),
    )


def describe_randomisation(rs: dict[str, Any], task: str = "detector") -> str:
    """One phrase for the manifest's training_data (the settings themselves go in its extra)."""
    if not rs["enabled"]:
        return "no domain randomisation"
    head = f"domain randomisation node.train.augment v{rs['version']} (strength {rs['strength']:g}, "
    if task == "triage":
        clean = f", 1 in {rs['copies']} draws clean" if rs["clean_first"] else ""
        return head + f"drawn afresh every epoch{clean}; validation clean)"
    clean = ", first copy clean" if rs["clean_first"] else ""
    return head + f"{rs['copies']} copies per image{clean}; validation clean)"


def _split(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_val = round(len(items) * fraction)
    val = set(idx[:n_val])
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


STYLES = ("analytic", "voxel")


def parse_style_set(spec: str, flag: str = "--extra-phantoms") -> tuple[str, int, int]:
    """``STYLE:N:SEED`` → (style, n, seed); a bad value stops the command with the flag's name.

    ``sketch`` is refused on purpose: it is the evaluation-only renderer (``node.phantom.sketch``),
    and training on it would empty the one held-out figure that no model here has seen.
    """
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in STYLES:
        raise SystemExit(f"{flag} {spec!r}: expected STYLE:N:SEED with STYLE one of {', '.join(STYLES)}")
    try:
        n, seed = int(parts[1]), int(parts[2])
    except ValueError:
        raise SystemExit(f"{flag} {spec!r}: N and SEED must be integers") from None
    if n < 1:
        raise SystemExit(f"{flag} {spec!r}: N must be at least 1")
    return parts[0], n, seed


def trained_styles(args: argparse.Namespace) -> list[str]:
    """The phantom styles a command trains on, in order (for the manifest's ``trained_on_styles``)."""
    out = [args.phantom_style] if getattr(args, "phantoms", 0) else []
    for spec in getattr(args, "extra_phantoms", []):
        style = parse_style_set(spec)[0]
        if style not in out:
            out.append(style)
    return out


def load_training_data(args: argparse.Namespace, task: str) -> tuple[list[Any], list[Any], str]:
    """(train samples, validation samples, human description for the manifest)."""
    from node.train.data import folder_samples, negative_samples, phantom_samples

    train: list[Any] = []
    val: list[Any] = []
    parts: list[str] = []
    if args.data is not None:
        site = list(folder_samples(args.data))
        if args.val_data is not None:
            train += site
            val += list(folder_samples(args.val_data))
            parts.append(f"site archive {args.data} ({len(site)} images), validation {args.val_data}")
        else:
            tr, va = _split(site, args.val_fraction, args.seed)
            train += tr
            val += va
            parts.append(
                f"site archive {args.data}: {len(tr)} train / {len(va)} validation (seed {args.seed})"
            )
    if args.phantoms:
        train += list(
            phantom_samples(
                args.phantoms, args.phantom_seed, args.phantom_size, args.workers, args.cache,
                args.phantom_variety, args.phantom_style, args.phantom_child_share,
            )
        )
        parts.append(
            f"{args.phantoms} phantoms (hipnode phantom generator, seed {args.phantom_seed}, realism on, "
            f"variety {args.phantom_variety}, style {args.phantom_style}"
            + (f", child share {args.phantom_child_share:g}" if args.phantom_child_share is not None else "")
            + ")"
        )
    if args.phantoms and args.val_phantoms and (args.data is None or args.val_data is None):
        val += list(
            phantom_samples(
                args.val_phantoms,
                args.val_phantom_seed,
                args.val_phantom_size or args.phantom_size,
                args.workers,
                args.cache,
                args.phantom_variety,
                args.phantom_style,
                args.phantom_child_share,
            )
        )
        parts.append(
            f"validation: {args.val_phantoms} fresh phantoms, seed {args.val_phantom_seed}, "
            f"variety {args.phantom_variety}, style {args.phantom_style}"
        )
    # like the main phantom validation: a site's own --val-data replaces phantom validation
    phantom_val = args.data is None or args.val_data is None
    for flag, spec in [("--extra-phantoms", x) for x in getattr(args, "extra_phantoms", [])] + [
        ("--extra-val-phantoms", x) for x in getattr(args, "extra_val_phantoms", []) if phantom_val
    ]:
        style, n, seed = parse_style_set(spec, flag)
        is_val = flag == "--extra-val-phantoms"
        size = (args.val_phantom_size or args.phantom_size) if is_val else args.phantom_size
        got = list(
            phantom_samples(
                n, seed, size, args.workers, args.cache, args.phantom_variety, style, args.phantom_child_share
            )
        )
        (val if is_val else train).extend(got)
        parts.append(
            f"{'validation' if is_val else 'training'} also: {n} phantoms, style {style}, seed {seed}, size {size}"
        )
    for folder in args.negatives:
        neg = list(negative_samples(folder))
        train += neg
        parts.append(f"{len(neg)} non-hip DICOM images from {folder} as view 'other'")
    if not train:
        raise SystemExit("no training data: give --data CSV and/or --phantoms N")
    return train, val, "; ".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="train_task", required=True, metavar="{triage,detector,morphology,evaluate}"
    )
    for task in TASKS:
        module = f"node.train.{task}"
        if importlib.util.find_spec(module) is None:
            continue
        p = sub.add_parser(task, help=f"train the {task} model and export it to ONNX + model.yaml")
        # Sub-modules import torch at top level; parse-time registration must not, so each
        # task module's add_arguments is looked up lazily only when it is importable cheaply.
        try:
            importlib.import_module(module).add_arguments(p)
        except ImportError as exc:  # the train extra is missing
            p.set_defaults(train_missing=str(exc))
    ev = sub.add_parser(
        "evaluate", help="check triage + detector on fresh phantoms and real non-hip CR (issue 4 bars)"
    )
    add_evaluate_arguments(ev)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = getattr(args, "train_missing", None)
    if missing:
        log.error("the train extra is not installed (%s): pip install 'hipnode[train]'", missing)
        return 2
    if args.train_task == "evaluate":
        evaluate(args)
        return 0
    module = importlib.import_module(f"node.train.{args.train_task}")
    return int(module.main(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hipnode train", description=__doc__.splitlines()[0] if __doc__ else None
    )
    add_arguments(p)
    return p


# --- evaluation of bundled / trained models through the node runtime --------------------------


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", type=Path, default=Path("models"), help="models root (triage/, detector/ under it)"
    )
    p.add_argument(
        "--triage",
        help="triage model name or path under --models; several, comma-separated, are an ensemble "
        "(default: the configured default, models.triage)",
    )
    p.add_argument("--detector", default="detector", help="detector model name or path under --models")
    p.add_argument("--phantoms", type=int, default=500, help="fresh phantom images to evaluate on")
    p.add_argument("--phantom-seed", type=int, default=900001, help="a seed never used in training")
    p.add_argument("--phantom-size", type=int, default=384, help="rendered phantom size in pixels")
    p.add_argument("--workers", type=int, default=1, help="processes rendering phantoms")
    p.add_argument("--cache", type=Path, help="folder to cache rendered phantom sets in")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument(
        "--styles",
        default="analytic,voxel,sketch",
        help="phantom styles scored side by side with the node's whole analysis (leave-one-style-out: "
        "the models' manifests say which style they trained on); empty to skip",
    )
    p.add_argument(
        "--trained-on",
        help="the style(s) the models trained on, comma-separated (marks the others held out; default: "
        "the union of the models' manifests' trained_on_styles, ensemble members each)",
    )
    p.add_argument("--style-images", type=int, default=120, help="mixed-view phantoms per style")
    p.add_argument("--style-cups", type=int, default=40, help="AP pelvis cup phantoms per style")
    p.add_argument("--style-rows", type=int, default=768, help="rows of the style phantoms")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Bars of issue 4 on fresh phantoms + the real pydicom-data CR radiographs, via node.infer;
    then (``--styles``) the node's analysis on each phantom style side by side, and the real
    paediatric films (``node.train.generalise``)."""
    import json

    from node.config import ModelsConfig, ScreeningConfig
    from node.domain import View
    from node.infer.detector import DetectorModel
    from node.infer.fusion import IMPLANT_THRESHOLD, SideAssigner, hardware_score, implant_score
    from node.infer.triage import TriageModel
    from node.pixels import load_radiograph
    from node.train.data import phantom_samples
    from node.train.detector import detector_metrics

    cfg = ModelsConfig(root=args.models)
    names = [n.strip() for n in args.triage.split(",") if n.strip()] if getattr(args, "triage", None) else None
    triage = TriageModel.load(names or cfg.triage or "triage", cfg)
    detector = DetectorModel.load(args.detector, cfg)
    samples = list(
        phantom_samples(args.phantoms, args.phantom_seed, args.phantom_size, args.workers, args.cache)
    )
    images = [s.image01 for s in samples]
    res = triage.predict(images)
    view_ok = [r.view is s.view for r, s in zip(res, samples, strict=True)]
    side_pairs = [
        (r, s)
        for r, s in zip(res, samples, strict=True)
        if s.side is not None and s.view is not View.AP_PELVIS
    ]
    side_ok = [r.imaged_sides == (s.side,) for r, s in side_pairs]
    boxes = detector.detect(images)
    implant_ok, implant_triage_ok = [], []
    for r, s, bx in zip(res, samples, boxes, strict=True):
        assign = SideAssigner(bx, r.imaged_sides, s.image01.shape[1])
        for side, truth in s.implant.items():
            if side in s.imaged_sides:
                got = r.implant_probability.get(side)
                implant_triage_ok.append(got is not None and (got >= r.implant_threshold) == truth)
                fused = implant_score(got, hardware_score(bx, side, assign))
                implant_ok.append(fused is not None and (fused >= IMPLANT_THRESHOLD) == truth)
    per_view = {}
    for v in View:
        idx = [i for i, s in enumerate(samples) if s.view is v]
        if idx:
            per_view[v.value] = {"n": len(idx), "accuracy": round(sum(view_ok[i] for i in idx) / len(idx), 4)}
    det = detector_metrics(boxes, [s.boxes or [] for s in samples])
    real = {}
    screening = ScreeningConfig()
    from pydicom.data import get_testdata_file

    for name in (
        "RG1_UNCI",
        "RG1_UNCR",
        "RG1_J2KI",
        "RG1_J2KR",
        "RG3_UNCI",
        "RG3_UNCR",
        "RG3_J2KI",
        "RG3_J2KR",
    ):
        path = get_testdata_file(f"{name}.dcm")
        rad, verdict = load_radiograph(path, screening) if path else (None, None)
        if rad is None:
            real[name] = f"not loaded: {verdict}"
            continue
        r = triage.predict([rad.image01])[0]
        real[name] = f"{r.view.value} ({r.view_probability:.3f})"
    out: dict[str, Any] = {
        "triage_model": triage.label,
        "detector_model": detector.label,
        "phantoms": args.phantoms,
        "phantom_seed": args.phantom_seed,
        "view_accuracy": round(sum(view_ok) / len(view_ok), 4),
        "side_accuracy": round(sum(side_ok) / max(1, len(side_ok)), 4),
        "side_n": len(side_ok),
        "implant_accuracy": round(sum(implant_ok) / max(1, len(implant_ok)), 4),
        "implant_n": len(implant_ok),
        "implant_accuracy_triage_alone": round(sum(implant_triage_ok) / max(1, len(implant_triage_ok)), 4),
        "per_view": per_view,
        "cup_recall_iou50": det.get("cup_recall"),
        "cup_n": det.get("cup_n"),
        "detector": det,
        "real_cr_pydicom_data": real,
        "real_cr_all_other": all(v.startswith("other ") for v in real.values()),
    }
    # the style comparison is opt-out on the command line; callers building their own Namespace
    # (tests, scripts) get the quick classic evaluation unless they ask for styles
    styles = [v.strip() for v in (getattr(args, "styles", "") or "").split(",") if v.strip()]
    if styles:
        from node.train.generalise import evaluate_styles, real_films, table, trained_on_styles

        by_style = evaluate_styles(
            triage, detector, styles, mixed=getattr(args, "style_images", 120), cups=getattr(args, "style_cups", 40),
            rows=getattr(args, "style_rows", 768), workers=args.workers,
        )
        given = getattr(args, "trained_on", None)
        trained_on = (
            [v.strip() for v in given.split(",") if v.strip()] if given else trained_on_styles(triage, detector)
        )
        by_style["trained_on_styles"] = trained_on
        out["styles"] = by_style
        out["real_films"] = real_films(triage, detector)
        print(table(by_style, trained_on))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return out


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args()))
