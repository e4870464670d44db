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
    src.add_argument(
        "--negatives", type=Path, action="append", default=[], help="folder of non-hip DICOM (view other)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and augmentation")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def _split(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_val = round(len(items) * fraction)
    val = set(idx[:n_val])
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


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
        train += list(phantom_samples(args.phantoms, args.phantom_seed))
        parts.append(
            f"{args.phantoms} phantoms (hipnode phantom generator, seed {args.phantom_seed}, realism on)"
        )
    if args.phantoms and args.val_phantoms and (args.data is None or args.val_data is None):
        val += list(phantom_samples(args.val_phantoms, args.val_phantom_seed))
        parts.append(f"validation: {args.val_phantoms} phantoms, seed {args.val_phantom_seed}")
    for folder in args.negatives:
        neg = list(negative_samples(folder))
        train += neg
        parts.append(f"{len(neg)} non-hip DICOM images from {folder} as view 'other'")
    if not train:
        raise SystemExit("no training data: give --data CSV and/or --phantoms N")
    return train, val, "; ".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="train_task", required=True, metavar="{triage,detector,morphology}")
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


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = getattr(args, "train_missing", None)
    if missing:
        log.error("the train extra is not installed (%s): pip install 'hipnode[train]'", missing)
        return 2
    module = importlib.import_module(f"node.train.{args.train_task}")
    return int(module.main(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hipnode train", description=__doc__.splitlines()[0] if __doc__ else None
    )
    add_arguments(p)
    return p


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args()))
