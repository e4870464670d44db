"""Metadata as archives really send it (issue 13): one study per malformed header value, each
through DCMTK storescu → ``hipnode run`` → Orthanc, must get its SR; the SR says what was not
copied faithfully; the whole log of the run holds none of the patient names, IDs or birth dates
that were sent."""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config

from node.compose import read_report
from node.phantom import render_index
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.sanitise import sanitise_for_output
from tests.conftest import OrthancServer, tool
from tests.node_proc import NodeProcess, make_node, wait_for  # noqa: F401
from tests.test_e2e import SR_CLASS, _orthanc_objects

# one malformed value per study, as seen in real archives
CASES: dict[str, tuple[str, str]] = {
    "birth-date": ("PatientBirthDate", "19500000"),
    "study-date": ("StudyDate", "2024-01-05"),
    "study-time": ("StudyTime", "25:99:00"),
    "charset": ("SpecificCharacterSet", "ISO_IR 999"),
    "accession": ("AccessionNumber", "ACC" + "7" * 37),
    "age": ("PatientAge", "45 years"),
}


@contextmanager
def _as_archives_write() -> Iterator[None]:
    """pydicom validates values when set and when written; a test that plays a careless
    modality turns both checks off for the duration."""
    settings = pydicom_config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an undefined character set, on writing
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _write_case(out: Path, n: int, keyword: str, value: str) -> tuple[Path, dict[str, str]]:
    rng = np.random.default_rng(300 + n)
    info = make_study_info(300 + n, 1, "M", rng, modality="DX")
    ds = build_dataset(render_index(300 + n, 0, views=["ap_pelvis"], size=384), info, 1, 1, rng)
    with _as_archives_write():
        # identities that a log line must never show: a one-component name highdicom warns about
        ds.PatientName = f"SMITHJOHN{n:03d}"
        ds.PatientID = f"MRN{n:05d}77"
        ds.PatientBirthDate = f"19{41 + n:02d}0{n % 9 + 1}1{n % 9}"
        if keyword in ds:
            del ds[keyword]  # an element keeps the validation mode it was created under
        setattr(ds, keyword, value)
        path = out / f"{n}.dcm"
        path.write_bytes(to_bytes(ds))
        secrets = {"name": str(ds.PatientName), "id": str(ds.PatientID), "birth": str(ds.PatientBirthDate)}
    return path, secrets


def test_sanitise_rewrites_or_empties_and_says_so_without_values() -> None:
    ds = pydicom.Dataset()
    with _as_archives_write():
        ds.StudyDate = "2024-01-05"
        ds.SeriesDate = "20240230"
        ds.StudyTime = "10:30"
        ds.AcquisitionDateTime = "2024-01-05T10:30:00"
        ds.AccessionNumber = "A" * 40
        ds.PatientAge = "045Y"
        ds.SpecificCharacterSet = "ISO_IR 999"
        ds.PatientBirthDate = "19520417"
        ds.OtherPatientNames = ["DOE^JOHN^A", "DOE^J^B", "SMITH^J^C"]
    clean, notes = sanitise_for_output(ds)
    assert (clean.StudyDate, clean.SeriesDate, clean.StudyTime) == ("20240105", "", "103000")
    assert clean.AcquisitionDateTime == "20240105103000"
    assert clean.AccessionNumber == "A" * 16 and clean.PatientAge == "045Y"
    assert clean.SpecificCharacterSet == "ISO_IR 192" and clean.PatientBirthDate == "19520417"
    assert [str(n) for n in clean.OtherPatientNames] == ["DOE^JOHN^A", "DOE^J^B", "SMITH^J^C"]
    text = " ".join(notes)
    assert "SeriesDate is not a valid date" in text and "StudyDate rewritten" in text
    assert "2024" not in text and "AAAA" not in text  # what was done, never the values


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("2024-01-05T10:30:00.123+01:00", "20240105103000.123+0100"),  # ISO 8601 with both
        ("2024-01-05 10:30:00,25 -05:00", "20240105103000.25-0500"),
        ("2024-01-05T10:30:00.5Z", "20240105103000.5+0000"),
        ("2024-01-05T10:30+02", "20240105103000+0200"),
        ("20240105103000.123456+0100", "20240105103000.123456+0100"),  # DICOM form: unchanged
        ("20240105103000Z", "20240105103000+0000"),
        ("2024-01-05T10:30:00+15:00", ""),  # offsets run from -1200 to +1400
        ("2024-01-05T10:30.5", ""),  # a fraction without seconds
        ("202401051030.5", ""),
        ("2024-01-05T10:30:00 junk", ""),
    ],
)
def test_sanitise_keeps_fractional_seconds_and_utc_offset_of_a_date_time(sent: str, kept: str) -> None:
    ds = pydicom.Dataset()
    with _as_archives_write():
        ds.AcquisitionDateTime = sent
    clean, notes = sanitise_for_output(ds)
    assert clean.AcquisitionDateTime == kept
    if kept == sent:
        assert notes == []
    elif kept:
        assert notes == ["AcquisitionDateTime rewritten in DICOM form"]
    else:
        assert notes == ["AcquisitionDateTime is not a valid date-time; left empty in the results"]


@pytest.mark.slow
def test_each_malformed_header_still_gets_its_sr_and_no_identity_is_logged(
    tmp_path: Path, orthanc: OrthancServer, make_node: Any  # noqa: F811
) -> None:
    node: NodeProcess = make_node(orthanc)
    files, secrets = [], []
    for n, (keyword, value) in enumerate(CASES.values()):
        path, secret = _write_case(tmp_path, n, keyword, value)
        files.append(path)
        secrets.append(secret)
    run = subprocess.run([tool("storescu"), "-aec", "HIPNODE", "127.0.0.1", str(node.port), *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    srs = wait_for(lambda: (lambda s: s if len(s) >= len(CASES) else None)(_orthanc_objects(orthanc, SR_CLASS)),
                   300, f"{len(CASES)} SRs", interval_s=2)
    assert len(srs) == len(CASES)
    notes = [c for sr in srs for g in read_report(sr) for c in g.comments if c.startswith("Source header:")]
    assert any("StudyDate rewritten" in c for c in notes), notes
    assert any("PatientBirthDate is not a valid date" in c for c in notes), notes
    log = node.log_path.read_text(errors="replace")
    for secret in secrets:
        for kind, value in secret.items():
            assert value not in log, f"patient {kind} in the node log"
