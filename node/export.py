"""``hipnode export``: the registry as one row per image, for research and surveillance.

Where each value comes from (the registry is the record; nothing is recomputed):

* identifiers, study date, calling AE, the image's state and screening reason: the patient /
  study / series / instance rows (``Instance.screen_reason`` is "<reason>: <detail>");
* view, low confidence, implant per side, cup angles and the refusal reason: the SR result's
  ``payload`` (``node.pipeline._payload``) of the series' latest job;
* what the payload does not keep — view probability, measurement methods, ellipse fit
  quality, Tönnis angle, morphology flags as reported (present / absent with probability),
  model versions — from the SR itself (``node.compose.sr.read_report``, ``SoftwareVersions``):
  the SR is what was sent, so the export can never claim a value the report did not.

A series whose latest job analysed nothing (skipped) has no SR: its images still get a row
with their screening reason. Rows are sorted by study, series and SOP Instance UID, so two
registries with the same contents export the same bytes.

``--pseudonymise KEYFILE`` replaces identifiers by keyed hashes (HMAC-SHA256 with the file's
bytes as key; UIDs stay UID-shaped, ``2.25.<integer>``) and shifts every date of a patient by
the same keyed number of days (±365, never 0), so intervals within a patient survive while the
key holder alone can re-identify. Filters apply to the real dates, before the shift.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pydicom
from sqlalchemy import select

from node.domain import MORPHOLOGY_FLAGS, ResultKind, Side
from node.registry import Database, Instance, Job, Patient, Result, Series, Study

if TYPE_CHECKING:
    from node.compose.sr import ReportedGroup

log = logging.getLogger(__name__)

SIDES = (Side.RIGHT.value, Side.LEFT.value)
SIDE_FIELDS: tuple[str, ...] = (
    "implant",
    "implant_probability",
    "inclination_deg",
    "inclination_method",
    "anteversion_deg",
    "anteversion_method",
    "cup_fit_quality",
    "cup_refusal",
    "lce_deg",
    "tonnis_deg",
    *(name for flag in MORPHOLOGY_FLAGS for name in (flag, f"{flag}_prob")),
)
COLUMNS: tuple[str, ...] = (
    "patient_id",
    "issuer_of_patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "study_date",
    "calling_ae",
    "modality",
    "state",
    "screen_reason",
    "view",
    "view_probability",
    "sides",
    "low_confidence",
    *(f"{name}_{side}" for side in SIDES for name in SIDE_FIELDS),
    "sr_sop_instance_uid",
    "software_version",
    "model_versions",
)
_UID_COLUMNS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "sr_sop_instance_uid")


@dataclass(frozen=True)
class ExportFilter:
    """Which images to export; ``None`` means any. Dates are DICOM DA (``YYYYMMDD``)."""

    since: str | None = None
    until: str | None = None
    view: str | None = None
    implant: bool | None = None  # True: an implant on either side; False: analysed, none
    calling_ae: str | None = None


def parse_da(text: str) -> str:
    """``2024-03-01`` or ``20240301`` → ``20240301``; raises ``ValueError`` otherwise."""
    digits = text.strip().replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError(f"expected a date as YYYY-MM-DD or YYYYMMDD, got {text!r}")
    date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))  # a real day
    return digits


def _bool(value: bool | None) -> str | None:
    return None if value is None else ("1" if value else "0")


def _latest_sr(s: Any, series_pk: int) -> Result | None:
    """The SR of the series' latest job (an older generation's SR no longer speaks for it)."""
    job_pk = s.scalar(select(Job.id).where(Job.series_pk == series_pk).order_by(Job.generation.desc()).limit(1))
    if job_pk is None:
        return None
    result: Result | None = s.scalar(
        select(Result).where(Result.job_pk == job_pk, Result.kind == ResultKind.SR.value).order_by(Result.id)
    )
    return result


def _read_sr(path: Path) -> tuple[list[ReportedGroup], list[str]]:
    """The SR's groups and its ``SoftwareVersions`` (ours, then one ``name version`` per model)."""
    from node.compose.sr import read_report  # highdicom: not needed to build the command line

    try:
        ds = pydicom.dcmread(path)
        groups = read_report(ds)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError) as exc:
        log.warning("export: an SR file could not be read (%s); its values come from the payload only",
                    type(exc).__name__)
        return [], []
    versions = ds.get("SoftwareVersions")
    listed = [] if versions is None else [str(versions)] if isinstance(versions, str) else [str(v) for v in versions]
    return groups, listed


def _series_rows(
    instances: list[tuple[Instance, Series, Study, Patient]], sr: Result | None, results_root: Path
) -> Iterator[dict[str, Any]]:
    payload_images: dict[str, dict[str, Any]] = {}
    groups: list[ReportedGroup] = []
    versions: list[str] = []
    if sr is not None:
        payload_images = {str(i.get("sop")): i for i in (sr.payload or {}).get("images", [])}
        groups, versions = _read_sr(results_root / sr.path)
    image_groups = {g.source_sop_instance_uid: g for g in groups if g.side is None}
    hip_groups = {(g.source_sop_instance_uid, g.side.value): g for g in groups if g.side is not None}
    for inst, series, study, patient in instances:
        uid = inst.sop_instance_uid
        image = payload_images.get(uid, {})
        group = image_groups.get(uid)
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(
            patient_id=patient.patient_id,
            issuer_of_patient_id=patient.issuer,
            study_instance_uid=study.study_uid,
            series_instance_uid=series.series_uid,
            sop_instance_uid=uid,
            study_date=study.study_date,
            calling_ae=series.calling_ae,
            modality=series.modality,
            state=inst.state,
            screen_reason=inst.screen_reason,
            view=image.get("view"),
            view_probability=group.view_probability if group is not None else None,
            low_confidence=image.get("low_confidence"),
            sr_sop_instance_uid=sr.sop_instance_uid if sr is not None and image else None,
            software_version=versions[0] if versions and image else None,
            model_versions=";".join(versions[1:]) if versions and image else None,
        )
        sides = []
        for hip in image.get("hips", []):
            side = str(hip.get("side"))
            if side not in SIDES:
                continue
            sides.append(side)
            hg = hip_groups.get((uid, side))
            values: dict[str, Any] = {
                "implant": _bool(hip.get("implant")),
                "implant_probability": hip.get("implant_probability"),
                "inclination_deg": hip.get("inclination_deg"),
                "anteversion_deg": hip.get("anteversion_deg"),
                "cup_refusal": hip.get("refusal"),
                "lce_deg": hip.get("lce_deg"),
            }
            if hg is not None:
                values.update(
                    inclination_method=hg.inclination[0].method if hg.inclination else None,
                    anteversion_method=hg.anteversion[0].method if hg.anteversion else None,
                    cup_fit_quality=hg.fit_quality,
                    tonnis_deg=hg.tonnis_deg,
                )
                for flag, (present, probability) in hg.morphology.items():
                    values[flag] = _bool(present)
                    values[f"{flag}_prob"] = probability
            for flag, probability in (hip.get("morphology") or {}).items():
                if values.get(f"{flag}_prob") is None:
                    values[f"{flag}_prob"] = probability
            for name, value in values.items():
                row[f"{name}_{side}"] = value
        row["sides"] = "".join(sorted(sides, key=SIDES.index)) or None
        yield row


def image_rows(db: Database, results_root: Path, flt: ExportFilter = ExportFilter()) -> Iterator[dict[str, Any]]:
    """One row per current (not superseded) image, sorted by study, series and SOP Instance UID."""
    query = (
        select(Series.id)
        .join(Study, Study.id == Series.study_pk)
        .order_by(Study.study_uid, Series.series_uid)
    )
    if flt.calling_ae is not None:
        query = query.where(Series.calling_ae == flt.calling_ae)
    if flt.since is not None:
        query = query.where(Study.study_date >= flt.since)
    if flt.until is not None:
        query = query.where(Study.study_date <= flt.until)
    with db.session() as s:
        series_pks = list(s.scalars(query))
    for series_pk in series_pks:
        with db.session() as s:
            instances = [
                (r[0], r[1], r[2], r[3])
                for r in s.execute(
                    select(Instance, Series, Study, Patient)
                    .join(Series, Series.id == Instance.series_pk)
                    .join(Study, Study.id == Series.study_pk)
                    .join(Patient, Patient.id == Study.patient_pk)
                    .where(Instance.series_pk == series_pk, Instance.superseded.is_(False))
                    .order_by(Instance.sop_instance_uid, Instance.version)
                ).all()
            ]
            sr = _latest_sr(s, series_pk)
            s.expunge_all()
        for row in _series_rows(instances, sr, results_root):
            if _keep(row, flt):
                yield row


def _keep(row: dict[str, Any], flt: ExportFilter) -> bool:
    if flt.view is not None and row["view"] != flt.view:
        return False
    if flt.implant is not None:
        implants = [row[f"implant_{side}"] for side in SIDES]
        if flt.implant and "1" not in implants:
            return False
        if not flt.implant and ("1" in implants or row["view"] is None):
            return False
    return True


# --------------------------------------------------------------------------- pseudonymisation


class Pseudonymiser:
    """Keyed hashes of identifiers and a keyed date shift per patient (see module doc)."""

    MAX_SHIFT_DAYS = 365

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonymisation key must be at least 16 bytes (use a random file)")
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> Pseudonymiser:
        return cls(path.read_bytes().strip())

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def token(self, purpose: str, value: str) -> str:
        return self._mac(purpose, value).hex()[:32]

    def uid(self, value: str) -> str:
        """A UID-shaped pseudonym (``2.25.`` and a 128-bit integer), the same for the same UID."""
        return "2.25." + str(int.from_bytes(self._mac("uid", value)[:16], "big"))

    def shift_days(self, patient_key: str) -> int:
        n = int.from_bytes(self._mac("date-shift", patient_key)[:4], "big") % (2 * self.MAX_SHIFT_DAYS)
        return n - self.MAX_SHIFT_DAYS if n < self.MAX_SHIFT_DAYS else n - self.MAX_SHIFT_DAYS + 1

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        patient_key = f"{row['patient_id']}\x00{row['issuer_of_patient_id']}"
        out["patient_id"] = self.token("patient", patient_key)
        out["issuer_of_patient_id"] = None
        for col in _UID_COLUMNS:
            if row.get(col):
                out[col] = self.uid(str(row[col]))
        da = str(row.get("study_date") or "")
        try:
            day = date(int(da[:4]), int(da[4:6]), int(da[6:8])) if len(da) == 8 else None
        except ValueError:
            day = None
        out["study_date"] = (
            (day + timedelta(days=self.shift_days(patient_key))).strftime("%Y%m%d") if day is not None else None
        )
        return out


# --------------------------------------------------------------------------- writers


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = 0
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
        n += 1
    return n


def _parquet_type(column: str) -> str:
    base = column.rsplit("_", 1)[0] if column.endswith(tuple(f"_{s}" for s in SIDES)) else column
    numeric = base.endswith(("_deg", "_probability", "_prob", "_quality"))
    return "float64" if numeric else "string"


def write_parquet(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Parquet needs the ``parquet`` extra (pyarrow); columns typed string or float64."""
    try:
        import pyarrow as pa  # type: ignore[import-not-found,import-untyped,unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise RuntimeError("Parquet export needs pyarrow: pip install 'hipnode[parquet]'") from exc
    data: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for row in rows:
        for c in COLUMNS:
            value = row.get(c)
            if value is not None and _parquet_type(c) == "string":
                value = _cell(value)
            data[c].append(value)
    schema = pa.schema([(c, pa.float64() if _parquet_type(c) == "float64" else pa.string()) for c in COLUMNS])
    pq.write_table(pa.table(data, schema=schema), path)
    return len(data[COLUMNS[0]])


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: CSV to stdout)")
    parser.add_argument("--since", default=None, help="study date from (YYYY-MM-DD or YYYYMMDD)")
    parser.add_argument("--until", default=None, help="study date until, inclusive")
    parser.add_argument("--view", default=None, help="only images of this view (ap_pelvis, ap_hip, …)")
    parser.add_argument("--implant", choices=("yes", "no"), default=None,
                        help="yes: an implant on either side; no: analysed without one")
    parser.add_argument("--calling-ae", default=None, help="only series received from (or imported as) this AE")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the SRs are (default: outputs.root; the --out of an import that used one)")
    parser.add_argument("--pseudonymise", type=Path, default=None, metavar="KEYFILE",
                        help="keyed hashes of identifiers, dates shifted per patient (key: the file's bytes)")


def export(db: Database, results_root: Path, args: argparse.Namespace) -> int:
    """Write the export the arguments describe; returns the number of rows."""
    flt = ExportFilter(
        since=parse_da(args.since) if args.since else None,
        until=parse_da(args.until) if args.until else None,
        view=args.view,
        implant=None if args.implant is None else args.implant == "yes",
        calling_ae=args.calling_ae,
    )
    rows: Iterable[dict[str, Any]] = image_rows(db, results_root, flt)
    if args.pseudonymise is not None:
        rows = map(Pseudonymiser.from_file(args.pseudonymise).row, rows)
    if args.format == "parquet":
        if args.out is None:
            raise ValueError("--format parquet needs --out FILE")
        return write_parquet(rows, args.out)
    if args.out is None:
        return write_csv(rows, sys.stdout)
    with args.out.open("w", encoding="utf-8", newline="") as fh:
        return write_csv(rows, fh)
