"""node.analyse.notes and node.pixels.patient_age_years: no silent gaps in a hip group."""

from __future__ import annotations

import io
import logging

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.analyse.notes import dysplasia_consistency, gap_notes
from node.domain import Box, CupMeasurement, HipFindings, MorphologyFlag, Side, View
from node.pixels import patient_age_years

JOINT = Box(10, 10, 60, 60, "hip_joint_right", 0.9)


def _flags(dysplasia: float) -> list[MorphologyFlag]:
    return [MorphologyFlag("dysplasia", dysplasia, 0.5), MorphologyFlag("cam_deformity", 0.1, 0.5)]


def test_a_hip_without_a_joint_box_says_so() -> None:
    hip = HipFindings(side=Side.RIGHT, implant_present=False, implant_probability=0.01)
    notes = gap_notes(hip, View.AP_PELVIS, detector_ran=True, morphology_configured=True)
    assert any("No hip joint found" in n for n in notes)
    # with no detector at all, it is not the detector's miss
    notes = gap_notes(hip, View.AP_PELVIS, detector_ran=False, morphology_configured=True)
    assert not any("No hip joint found" in n for n in notes)


def test_arthroplasty_without_cup_and_morphology_reasons() -> None:
    hip = HipFindings(side=Side.LEFT, implant_present=True, implant_probability=0.99, joint_box=JOINT)
    notes = gap_notes(hip, View.AP_PELVIS, detector_ran=True, morphology_configured=True)
    assert any("Cup angles not measured" in n for n in notes)
    assert any("hip arthroplasty on this side" in n for n in notes)
    hip.cup = CupMeasurement(Side.LEFT, 40.0, 15.0, "inter-teardrop line", "Lewinnek")
    notes = gap_notes(hip, View.AP_PELVIS, detector_ran=True, morphology_configured=True)
    assert not any("Cup angles not measured" in n for n in notes)


def test_lateral_view_and_missing_model_reasons() -> None:
    hip = HipFindings(side=Side.LEFT, implant_present=False, implant_probability=0.0, joint_box=JOINT)
    notes = gap_notes(hip, View.LATERAL_HIP, detector_ran=True, morphology_configured=True)
    assert notes == ["Morphology not assessed: the models read AP views, this is lateral hip"]
    notes = gap_notes(hip, View.AP_PELVIS, detector_ran=True, morphology_configured=False)
    assert "Morphology not assessed: no morphology model configured" in notes
    assert any("Lateral centre-edge angle not measured" in n for n in notes)
    hip.morphology = _flags(0.1)
    hip.lateral_centre_edge_deg = 30.0
    assert gap_notes(hip, View.AP_PELVIS, detector_ran=True, morphology_configured=True) == []


def test_dysplasia_flag_contradicting_lce_is_stated() -> None:
    hip = HipFindings(side=Side.RIGHT, joint_box=JOINT, morphology=_flags(0.8), lateral_centre_edge_deg=38.0)
    text = dysplasia_consistency(hip)
    assert text is not None and "38 deg" in text and "uncertain" in text
    hip.lateral_centre_edge_deg = 14.0  # flag and angle agree
    assert dysplasia_consistency(hip) is None
    hip.morphology = _flags(0.1)  # absent flag, dysplastic angle
    text = dysplasia_consistency(hip)
    assert text is not None and "14 deg" in text
    hip.lateral_centre_edge_deg = 22.0  # borderline: no contradiction either way
    assert dysplasia_consistency(hip) is None


def _as_received(**attrs: str) -> Dataset:
    """A dataset written with the given raw values and read back, as the worker reads files
    (pydicom would refuse to *assign* a malformed DA; archives are full of them all the same)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in attrs.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None
        ds.add_new(tag, pydicom.datadict.dictionary_VR(tag), None)
        ds[tag]._value = value  # bypass assignment validation: the bytes are what a modality sent
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()), force=True)


def test_patient_age_from_header_and_bad_dates(caplog: pytest.LogCaptureFixture) -> None:
    assert patient_age_years(_as_received()) is None
    assert patient_age_years(_as_received(PatientAge="006Y")) == 6.0
    assert patient_age_years(_as_received(PatientAge="018M")) == 1.5
    age = patient_age_years(_as_received(PatientBirthDate="20180615", StudyDate="20240614"))
    assert age is not None and 5.9 < age < 6.1
    caplog.set_level(logging.DEBUG)
    for born, studied in (("19500000", "20240105"), ("19500101", "2024-01-05x"), ("", "20240105")):
        assert patient_age_years(_as_received(PatientBirthDate=born, StudyDate=studied)) is None
    age = patient_age_years(_as_received(PatientBirthDate="19500101", StudyDate="2024-01-05"))
    assert age is not None and 73.9 < age < 74.1  # dashes: read, not failed
    assert "1950" not in caplog.text  # a birth date never reaches a log
