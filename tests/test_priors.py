"""Priors are linked only when the patient's identity can be trusted (issue 13).

The registry files studies by (PatientID, IssuerOfPatientID). A placeholder ID, or one MRN used
by two sites without an issuer, would otherwise report one patient's cup angles as another's
prior. Run on SQLite (and PostgreSQL where the session has one) against the pipeline's own
prior lookup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.config import parse_config
from node.pipeline import PatientIdentity, Pipeline, _Context, _Source
from node.registry import Database, Instance, Job, Measurement, Result, Series, Study
from node.registry.models import Patient
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401 - fixtures


def _header(pid: str, issuer: str, birth: str, sex: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientID = pid
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _file_prior_study(db: Database, storage: Path, header: pydicom.Dataset, patient_pk: int) -> None:
    """A stored earlier study with one instance and measured cup angles on the right."""
    study_uid = generate_uid()
    rel = f"{study_uid}.dcm"
    header.save_as(storage / rel, enforce_file_format=True)
    with db.session() as s:
        study = Study(study_uid=study_uid, patient_pk=patient_pk, study_date="20240105")
        s.add(study)
        s.flush()
        series = Series(series_uid=generate_uid(), study_pk=study.id)
        s.add(series)
        s.flush()
        s.add(Instance(sop_instance_uid=str(header.SOPInstanceUID), sop_class_uid=str(header.SOPClassUID),
                       series_pk=series.id, transfer_syntax=ExplicitVRLittleEndian, path=rel, size=1, sha256="x"))
        job = Job(series_pk=series.id)
        s.add(job)
        s.flush()
        result = Result(job_pk=job.id, series_pk=series.id, kind="sr", sop_instance_uid=generate_uid(),
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", path="none.dcm")
        s.add(result)
        s.flush()
        s.add(Measurement(patient_pk=patient_pk, result_pk=result.id, side="R", view="ap_pelvis",
                          study_date="20240105", study_uid=study_uid, inclination_deg=41.0, anteversion_deg=15.0))
        s.commit()


def _patient(db: Database, pid: str, issuer: str) -> int:
    with db.session() as s:
        p = Patient(patient_id=pid, issuer=issuer)
        s.add(p)
        s.commit()
        return int(p.id)


@pytest.mark.parametrize(
    ("before", "now", "linked"),
    [
        (("MRN123", "", "19500101", "F"), ("MRN123", "", "19500101", "F"), True),  # same ID and demographics
        (("MRN123", "SITE-A", "19500101", "F"), ("MRN123", "SITE-A", "", ""), True),  # issuer-qualified ID
        (("MRN123", "", "19500101", "F"), ("MRN123", "", "19620704", "F"), False),  # another site's MRN
        (("MRN123", "", "19500101", "F"), ("MRN123", "", "19500101", "M"), False),  # sex contradicts
        (("MRN123", "", "", "F"), ("MRN123", "", "", "F"), False),  # no issuer, no birth date: unknown
        (("UNKNOWN", "", "19500101", "F"), ("UNKNOWN", "", "19500101", "F"), False),  # placeholder
        (("", "", "19500101", "F"), ("", "", "19500101", "F"), False),
        (("0000000", "", "19500101", "F"), ("0000000", "", "19500101", "F"), False),
    ],
)
def test_priors_link_only_trustworthy_identities(
    any_db: Database, tmp_path: Path, before: tuple[str, ...], now: tuple[str, ...], linked: bool,  # noqa: F811
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    cfg = parse_config({"storage": {"root": str(storage)}, "outputs": {"root": str(tmp_path / "out")}})
    patient_pk = _patient(any_db, before[0], before[1])
    _file_prior_study(any_db, storage, _header(*before), patient_pk)
    models: Any = object()  # the prior lookup needs no model
    pipeline = Pipeline(cfg, any_db, models=models)
    current = _header(*now)
    ctx = _Context(job_pk=0, series_pk=0, generation=1, series_uid=generate_uid(), study_uid=generate_uid(),
                   study_date="20250310", patient_pk=patient_pk, calling_ae="MODALITY", modality="CR",
                   body_part="HIP", sources=[_Source(0, str(current.SOPInstanceUID), Path("x"), header=current)])
    priors, _ = pipeline._priors_and_predecessor(ctx)
    assert bool(priors) is linked
    if linked:
        assert priors[0].inclination_deg == 41.0


def test_identity_rules() -> None:
    def ident(pid: str, issuer: str = "", birth: str = "19500101", sex: str = "F") -> PatientIdentity:
        return PatientIdentity(pid, issuer, birth, sex)

    assert ident("A1234").trustworthy_id
    for placeholder in ("", "X", "UNKNOWN", "anonymous", "N/A", "000000", "99999", "--"):
        assert not ident(placeholder).trustworthy_id, placeholder
    assert ident("A1234", "H1").same_patient(ident("A1234", "H1", "", ""))
    assert not ident("A1234", "H1").same_patient(ident("A1234", "H2"))
    assert ident("A1234", sex="").same_patient(ident("A1234", sex="M"))  # an unknown sex conflicts with nothing
