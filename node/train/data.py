"""Training data: a site's labelled DICOM archive (folder + CSV) or the phantom generator.

Both sources yield ``Sample`` objects: a 0..1 image normalised exactly as the node does it
(``node.pixels``) plus its labels, so training and inference never diverge in preprocessing.

Labels CSV (one row per image; a header row is required; extra columns are ignored)::

    file,view,side,implant_right,implant_left,boxes
    2019/0001.dcm,ap_pelvis,,1,0,"hip_joint_right 410 880 900 1350; cup 520 930 760 1170; …"
    2019/0002.dcm,lateral_hip,L,,0,
    2019/0003.dcm,other,,,,

* ``file`` — path of the DICOM file, relative to the CSV's folder (or absolute);
* ``view`` — ``ap_pelvis`` | ``ap_hip`` | ``lateral_hip`` | ``oblique_hip`` | ``other``;
* ``side`` — ``R`` | ``L``: the imaged hip of a single-hip view (patient side); empty otherwise;
* ``implant_right`` / ``implant_left`` — ``1`` / ``0`` (also yes/no/true/false): hip
  arthroplasty on that side; empty when that side is not imaged or unknown (not trained on);
* ``boxes`` — optional, for the detector: ``label x0 y0 x1 y1`` entries separated by ``;``, in
  stored-image pixels, ``label`` one of ``node.domain.DETECTOR_CLASSES``. An image with an empty
  ``boxes`` cell is a detector negative only if the column is present.

Images the node would screen out (wrong modality, undecodable…) are skipped with a warning,
so the training set is what the node would actually see.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from node.config import ScreeningConfig
from node.domain import DETECTOR_CLASSES, Box, Side, View
from node.pixels import load_radiograph

if TYPE_CHECKING:
    from node.phantom.api import PhantomImage

log = logging.getLogger(__name__)

CSV_COLUMNS = ("file", "view", "side", "implant_right", "implant_left", "boxes")
SINGLE_HIP = (View.AP_HIP, View.LATERAL_HIP, View.OBLIQUE_HIP)


@dataclass
class Sample:
    """One labelled image. ``implant`` holds only sides whose status is known."""

    image01: np.ndarray
    view: View
    side: Side | None = None
    implant: dict[Side, bool] = field(default_factory=dict)
    boxes: list[Box] | None = None  # None = no detector labels for this image
    source: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def imaged_sides(self) -> tuple[Side, ...]:
        if self.view is View.AP_PELVIS:
            return (Side.RIGHT, Side.LEFT)
        if self.view in SINGLE_HIP and self.side is not None:
            return (self.side,)
        return ()


class LabelError(ValueError):
    """A labels CSV row is malformed; the message names the row and column."""


_TRUE = {"1", "yes", "y", "true", "t"}
_FALSE = {"0", "no", "n", "false", "f"}


def _flag(value: str, where: str) -> bool | None:
    v = value.strip().lower()
    if not v:
        return None
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise LabelError(f"{where}: expected 1/0/yes/no, got {value!r}")


def parse_boxes(text: str, where: str = "boxes") -> list[Box]:
    """``label x0 y0 x1 y1; …`` → boxes (labels checked against DETECTOR_CLASSES)."""
    out = []
    for part in text.split(";"):
        fields = part.split()
        if not fields:
            continue
        if len(fields) != 5 or fields[0] not in DETECTOR_CLASSES:
            raise LabelError(
                f"{where}: bad box {part.strip()!r} (want 'label x0 y0 x1 y1', label in DETECTOR_CLASSES)"
            )
        try:
            x0, y0, x1, y1 = (float(f) for f in fields[1:])
        except ValueError:
            raise LabelError(f"{where}: non-numeric coordinate in {part.strip()!r}") from None
        if not (x1 > x0 and y1 > y0):
            raise LabelError(f"{where}: empty box {part.strip()!r}")
        out.append(Box(x0, y0, x1, y1, fields[0]))
    return out


@dataclass(frozen=True)
class LabelRow:
    path: Path
    view: View
    side: Side | None
    implant: dict[Side, bool]
    boxes: list[Box] | None


def read_labels(csv_path: Path) -> list[LabelRow]:
    """Parse and validate the labels CSV (see module docstring)."""
    rows: list[LabelRow] = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"file", "view"} <= set(reader.fieldnames):
            raise LabelError(f"{csv_path}: header must include at least 'file' and 'view'")
        has_boxes = "boxes" in reader.fieldnames
        for n, rec in enumerate(reader, start=2):
            where = f"{csv_path}:{n}"
            try:
                view = View(rec["view"].strip().lower())
            except ValueError:
                raise LabelError(
                    f"{where}: view {rec['view']!r} not one of {[v.value for v in View]}"
                ) from None
            side_txt = (rec.get("side") or "").strip().upper()
            side = Side(side_txt) if side_txt in ("R", "L") else None
            if side_txt and side is None:
                raise LabelError(f"{where}: side must be R or L, got {side_txt!r}")
            if view in SINGLE_HIP and side is None:
                raise LabelError(f"{where}: a {view.value} needs side R or L")
            implant: dict[Side, bool] = {}
            for s, col in ((Side.RIGHT, "implant_right"), (Side.LEFT, "implant_left")):
                flag = _flag(rec.get(col) or "", f"{where} {col}")
                if flag is not None:
                    implant[s] = flag
            boxes = parse_boxes(rec.get("boxes") or "", f"{where} boxes") if has_boxes else None
            p = Path(rec["file"].strip())
            rows.append(LabelRow(p if p.is_absolute() else csv_path.parent / p, view, side, implant, boxes))
    return rows


def folder_samples(csv_path: Path, screening: ScreeningConfig | None = None) -> Iterator[Sample]:
    """Samples from a site archive: every CSV row whose DICOM passes screening."""
    cfg = screening or ScreeningConfig()
    for row in read_labels(csv_path):
        rad, verdict = load_radiograph(row.path, cfg)
        if rad is None:
            log.warning(
                "skipping %s: %s (%s)",
                row.path,
                verdict.reason.value if verdict.reason else "",
                verdict.detail,
            )
            continue
        yield Sample(rad.image01, row.view, row.side, dict(row.implant), row.boxes, str(row.path))


def write_labels(samples_and_files: list[tuple[Sample, str]], csv_path: Path) -> None:
    """Write a labels CSV for ``(sample, file)`` pairs (used to export phantom sets for sites)."""
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for s, f in samples_and_files:
            boxes = "; ".join(f"{b.label} {b.x0:.1f} {b.y0:.1f} {b.x1:.1f} {b.y1:.1f}" for b in s.boxes or [])
            imp = {k: ("1" if v else "0") for k, v in s.implant.items()}
            w.writerow(
                [
                    f,
                    s.view.value,
                    s.side.value if s.side else "",
                    imp.get(Side.RIGHT, ""),
                    imp.get(Side.LEFT, ""),
                    boxes,
                ]
            )


def negative_samples(folder: Path, screening: ScreeningConfig | None = None) -> Iterator[Sample]:
    """Every accepted DICOM under ``folder`` as a view-"other" sample with no detector objects."""
    cfg = screening or ScreeningConfig()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rad, _ = load_radiograph(path, cfg)
        if rad is not None:
            yield Sample(rad.image01, View.OTHER, None, {}, [], str(path))


PHANTOM_SIZE = 384


def phantom_image01(img: PhantomImage) -> np.ndarray:
    """A phantom's stored values normalised by ``node.pixels.normalise`` — the node's own path,
    not the generator's convenience method — so training and evaluation see what inference sees."""
    from pydicom.dataset import Dataset

    from node.pixels import normalise

    header = Dataset()
    header.PhotometricInterpretation = img.truth.photometric
    return normalise(header, img.pixels.astype(np.float32))


def _phantom_sample(
    seed: int, index: int, size: int, variety: str = "classic", style: str = "analytic",
    child_share: float | None = None,
) -> Sample:
    from node.phantom import render_index

    img = render_index(seed, index, size=size, variety=variety, style=style, child_share=child_share)
    gt = img.truth
    image01 = phantom_image01(img)
    side = gt.imaged_sides[0] if gt.view in SINGLE_HIP and gt.imaged_sides else None
    implant = {s: bool(gt.hips[s].implant) for s in gt.imaged_sides if s in gt.hips}
    return Sample(
        image01, gt.view, side, implant, list(gt.boxes), f"phantom seed {seed} #{index}", {"truth": gt}
    )


def _phantom_job(job: tuple[int, int, int, str, str, float | None]) -> Sample:
    return _phantom_sample(*job)


def phantom_samples(
    n: int,
    seed: int,
    size: int = PHANTOM_SIZE,
    workers: int = 1,
    cache_dir: Path | None = None,
    variety: str = "classic",
    style: str = "analytic",
    child_share: float | None = None,
) -> Iterator[Sample]:
    """``n`` phantom images with exact labels from the phantom generator (``node.phantom``).

    All views, both sides, random implants and the generator's realism knobs (noise, scatter,
    collimation, markers, MONOCHROME1, tilt/rotation) as it samples them. Stored values are
    normalised by ``node.pixels.normalise`` — the node's own path — not by the generator's
    convenience method, so training sees what inference will see. Image *i* depends only on
    ``(seed, i)``, so ``workers`` processes give the same set; ``cache_dir`` keeps a rendered
    set (images as float16) for the next command with the same ``(n, seed, size)``.
    """
    import pickle

    from node.phantom import PHANTOM_VERSION

    # the sampler's range and the image style are part of a set's identity (classic analytic
    # keeps the old file names, so existing caches still serve)
    tag = "" if (variety, style) == ("classic", "analytic") else f"-{variety}-{style}-v{PHANTOM_VERSION}"
    if child_share is not None:
        tag += f"-children{child_share:g}"
    cache = cache_dir / f"phantoms-n{n}-seed{seed}-size{size}{tag}.pkl" if cache_dir is not None else None
    if cache is not None and cache_dir is not None:
        # Image i depends only on (seed, i): a cached larger set of the same stream serves too.
        found = [
            (int(m.group(1)), p)
            for p in cache_dir.glob(f"phantoms-n*-seed{seed}-size{size}{tag}.pkl")
            if (m := re.fullmatch(rf"phantoms-n(\d+)-seed{seed}-size{size}{re.escape(tag)}\.pkl", p.name))
            and int(m.group(1)) >= n
        ]
        if found:
            with open(min(found)[1], "rb") as fh:
                for s in pickle.load(fh)[:n]:
                    s.image01 = s.image01.astype(np.float32)
                    yield s
            return
    jobs = [(seed, i, size, variety, style, child_share) for i in range(n)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            samples = list(pool.imap(_phantom_job, jobs, chunksize=4))
    else:
        samples = [_phantom_job(j) for j in jobs]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        small = [
            Sample(s.image01.astype(np.float16), s.view, s.side, s.implant, s.boxes, s.source, s.extra)
            for s in samples
        ]
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(small, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cache)
    yield from samples
