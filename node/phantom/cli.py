"""``hipnode phantom``: write synthetic hip radiographs (DICOM) plus a ground-truth sidecar.

    hipnode phantom --count 200 --out var/phantoms --seed 7 \\
        [--views ap_pelvis ap_hip lateral_hip oblique_hip other] [--implants random] \\
        [--size 1024 | 1024x1280 | native] [--transfer-syntax explicit|implicit|deflate|rle|jpegls|jpegls-near|j2k|j2k-lossy] \\
        [--modality mixed|CR|DX] [--unreliable-fraction 0.1] [--workers 2] [--style analytic|voxel]

Images are grouped in studies (one synthetic patient each, 1–3 views) and series (one per
view), as a modality sends them. ``DIR/ground_truth.jsonl`` has one JSON object per image: the
file path (relative to ``DIR``), its UIDs, modality and transfer syntax, and the full ground
truth (``GroundTruth.to_dict()``) plus ``style``: how the pixels were formed (``analytic`` exact
ray sums, or ``voxel``: a voxelised, ray-marched rendering with its own materials, detector and
processing, for judging models on a style they never trained on; the same arguments give the
same patients, views and ground truth in either style). The same arguments give the same bytes,
whatever ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from node.domain import Side, View
from node.phantom.anatomy import CupSpec
from node.phantom.api import STYLES, PhantomImage, render
from node.phantom.dicom import TRANSFER_SYNTAXES, build_dataset, encode, make_study_info, to_bytes
from node.phantom.spec import (
    IMPLANT_MODES,
    OTHER_KINDS,
    implant_sides,
    sample_cup,
    sample_patient,
    sample_spec,
)

log = logging.getLogger(__name__)

HIP_VIEWS = (View.AP_PELVIS, View.AP_HIP, View.LATERAL_HIP, View.OBLIQUE_HIP)


@dataclass(frozen=True)
class ImageJob:
    """One image of the plan: where it sits (study/series/instance) and what it shows."""

    index: int
    seed: int
    study: int
    series_number: int
    instance_number: int
    view: View
    side: Side | None
    other_kind: str | None
    implants: str
    rows: int
    cols: int
    unreliable: bool
    modality: str | None
    transfer_syntax: str
    style: str = "analytic"


def parse_size(text: str) -> tuple[int, int]:
    if text == "native":
        return 0, 0
    if "x" in text:
        r, c = text.lower().split("x", 1)
        return int(r), int(c)
    n = int(text)
    return n, n


def plan(count: int, seed: int, views: list[View], implants: str, size: tuple[int, int],
         unreliable_fraction: float, modality: str | None, transfer_syntax: str,
         style: str = "analytic") -> list[ImageJob]:
    """Deterministic study/series layout for ``count`` images (independent of ``style``)."""
    jobs: list[ImageJob] = []
    study = 0
    hip_views = [v for v in views if v is not View.OTHER]
    while len(jobs) < count:
        rng = np.random.default_rng([seed, study, 1])
        want_other = View.OTHER in views and (not hip_views or rng.random() < 0.16)
        series: list[tuple[View, Side | None, str | None]]
        if want_other:
            kind = OTHER_KINDS[int(rng.integers(len(OTHER_KINDS)))]
            series = [(View.OTHER, None, kind)]
        else:
            side = Side.RIGHT if rng.random() < 0.5 else Side.LEFT
            first: View = hip_views[int(rng.integers(len(hip_views)))]
            series = [(first, side if first is not View.AP_PELVIS else None, None)]
            n_extra = int(rng.choice([0, 0, 1, 1, 2]))
            for _ in range(n_extra):
                v = hip_views[int(rng.integers(len(hip_views)))]
                item = (v, side if v is not View.AP_PELVIS else None, None)
                if item not in series:
                    series.append(item)
        for sn, (sv, sd, skind) in enumerate(series, start=1):
            n_inst = 1 if rng.random() < 0.85 else 2
            for inst in range(1, n_inst + 1):
                if len(jobs) >= count:
                    break
                jobs.append(ImageJob(len(jobs), seed, study, sn, inst, sv, sd, skind, implants, size[0], size[1],
                                     bool(rng.random() < unreliable_fraction), modality, transfer_syntax,
                                     style))
        study += 1
    return jobs


def render_job(job: ImageJob) -> PhantomImage:
    """The image of ``job``: patient from the study's generator, the rest from the image's."""
    srng = np.random.default_rng([job.seed, job.study, 2])
    patient = sample_patient(srng)
    sides = implant_sides(srng, job.implants)
    imp: dict[Side, CupSpec | None] = {s: (sample_cup(srng, patient, s) if s in sides else None)
                                       for s in (Side.RIGHT, Side.LEFT)}
    irng = np.random.default_rng([job.seed, job.study, job.series_number, job.instance_number, 3])
    spec = sample_spec(irng, view=job.view, side=job.side, implants=imp, rows=job.rows, cols=job.cols or None,
                       other_kind=job.other_kind, patient=patient)
    img = render(spec, job.style)
    img.truth.seed = job.seed
    img.truth.index = job.index
    return img


def write_job(job: ImageJob, out: Path) -> dict[str, Any]:
    img = render_job(job)
    srng = np.random.default_rng([job.seed, job.study, 4])
    info = make_study_info(job.seed, job.study, img.spec.patient.sex, srng, job.modality)
    mrng = np.random.default_rng([job.seed, job.study, job.series_number, job.instance_number, 5])
    ds = build_dataset(img, info, job.series_number, job.instance_number, mrng, job.unreliable)
    ds = encode(ds, job.transfer_syntax)
    rel = Path(f"study{job.study:06d}") / f"series{job.series_number:02d}" / f"{job.instance_number:04d}.dcm"
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(to_bytes(ds))
    os.replace(tmp, path)
    row: dict[str, Any] = {
        "file": rel.as_posix(),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "patient_id": info.patient_id,
        "modality": info.modality,
        "sop_class_uid": str(ds.SOPClassUID),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
    }
    row.update(img.truth.to_dict())
    row["style"] = img.style
    return row


def _write_star(args: tuple[ImageJob, Path]) -> dict[str, Any]:
    return write_job(*args)


def run(jobs: list[ImageJob], out: Path, workers: int, progress: bool = True) -> Iterator[dict[str, Any]]:
    items = [(j, out) for j in jobs]
    bar = tqdm(total=len(jobs), unit="img", desc="phantoms", disable=not progress)
    try:
        if workers <= 1:
            for it in items:
                yield _write_star(it)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for row in pool.map(_write_star, items, chunksize=1):
                    yield row
                    bar.update(1)
    finally:
        bar.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", "-n", type=int, required=True, help="number of images")
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder (DICOM + ground_truth.jsonl)")
    parser.add_argument("--views", nargs="+", default=[v.value for v in View], choices=[v.value for v in View],
                        help="views to draw from (default: all)")
    parser.add_argument("--implants", default="random", choices=IMPLANT_MODES,
                        help="total hip arthroplasty: random | none | right | left | unilateral | bilateral")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same bytes")
    parser.add_argument("--size", default="1024", type=str,
                        help="image matrix: N, ROWSxCOLS, or 'native' (detector pixels of 0.14-0.2 mm)")
    parser.add_argument("--transfer-syntax", default="explicit", choices=list(TRANSFER_SYNTAXES),
                        help="pixel data encoding")
    parser.add_argument("--modality", default="mixed", choices=["mixed", "CR", "DX"],
                        help="CR, DX (for presentation) or a per-study mix")
    parser.add_argument("--unreliable-fraction", type=float, default=0.1,
                        help="fraction of images with wrong or missing view/body-part/laterality metadata")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--style", default="analytic", choices=list(STYLES),
                        help="how pixels are formed: analytic ray sums, or a voxelised, ray-marched rendering "
                             "with its own detector and processing (same patients and ground truth)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        size = parse_size(args.size)
    except ValueError:
        print(f"hipnode phantom: bad --size {args.size!r} (N, ROWSxCOLS or native)")
        return 2
    views = [View(v) for v in args.views]
    modality = None if args.modality == "mixed" else args.modality
    jobs = plan(args.count, args.seed, views, args.implants, size, args.unreliable_fraction, modality,
                args.transfer_syntax, style=getattr(args, "style", "analytic"))
    sidecar = out / "ground_truth.jsonl"
    tmp = sidecar.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in run(jobs, out, args.workers, progress=not args.no_progress):
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)
    print(f"wrote {len(jobs)} images in {len({j.study for j in jobs})} studies to {out} (ground truth: {sidecar})")
    return 0
