"""The SR: valid DICOM (dciodvfy, dcentvfy), readable (dsr2html), and lossless (highdicom).

Every assertion on a value compares with the hand-written findings in ``test_compose_data``;
the SR must carry each of them, and a reader must get each of them back.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as hd_codes

from node.compose import codes
from node.compose.sr import (
    PIXEL_ORIGIN_SHIFT,
    RIM_POLYLINE_POINTS,
    SR_SOP_CLASS_UID,
    ReportReference,
    box_polyline_data,
    build_sr,
    ellipse_from_graphic_data,
    ellipse_graphic_data,
    ellipse_polyline_data,
    predecessor_uids,
    read_report,
)
from node.compose.uids import derive_uid, sc_uids, sr_uids
from node.domain import Box, Ellipse, ModelInfo, SeriesFindings, Side, View
from tests.test_compose_data import (
    MODELS,
    PRIORS,
    SERIES_UID,
    bilateral_tha_image,
    dcentvfy,
    dciodvfy,
    full_series,
    make_non_image,
    make_source,
    roundtrip,
    write,
)

# dciodvfy does not know private coding schemes, even when declared in the Coding Scheme
# Identification Sequence; that (and only that) warning is expected. See docs/dciodvfy-warnings.md.
ALLOWED_SR_WARNING = re.compile(r"Unrecognized defined term = <99HIPNODE>")
# dcentvfy assigns Accession Number to the Study IE for SR but to the Series IE for CR
# (its own IOD tables disagree); the value is the same, only this note is emitted.
ALLOWED_ENTITY_WARNING = re.compile(r"Different information entities for attribute - Element=<AccessionNumber>")


@pytest.fixture
def report() -> tuple[Dataset, SeriesFindings, list[Dataset]]:
    findings, sources = full_series()
    sr = build_sr(findings, sources, models=MODELS, priors=PRIORS)
    return sr, findings, sources


def _unexpected(lines: list[str], allowed: re.Pattern[str]) -> list[str]:
    return [ln for ln in lines if not allowed.search(ln)]


def test_sr_passes_dciodvfy_and_dcentvfy(tmp_path: Path, report: tuple[Dataset, SeriesFindings, list[Dataset]]) -> None:
    sr, _, sources = report
    sr_path = write(sr, tmp_path / "sr.dcm")
    errors, warnings = dciodvfy(sr_path)
    assert errors == []
    assert _unexpected(warnings, ALLOWED_SR_WARNING) == []
    src_paths = [write(make_source(int(str(s.InstanceNumber))), tmp_path / f"src{i}.dcm") for i, s in enumerate(sources)]
    entity = dcentvfy([sr_path, *src_paths])
    assert [ln for ln in entity if ln.startswith("Error")] == []
    assert _unexpected(entity, ALLOWED_ENTITY_WARNING) == []


def test_sr_header_copies_patient_and_study_and_names_the_algorithm(
    report: tuple[Dataset, SeriesFindings, list[Dataset]],
) -> None:
    sr, findings, sources = report
    ds = roundtrip(sr)
    src = sources[0]
    assert ds.SOPClassUID == SR_SOP_CLASS_UID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        assert ds[keyword].value == src[keyword].value, keyword
    assert ds.SeriesInstanceUID != SERIES_UID  # the SR is its own series
    assert ds.Modality == "SR"
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert str(ds.PatientName) == "Müller^Anna"
    # IHE AIR: equipment names the algorithm, contributing equipment lists every model.
    assert ds.ManufacturerModelName == "hipnode hip radiograph analysis"
    contributing = {(e.ManufacturerModelName, e.SoftwareVersions) for e in ds.ContributingEquipmentSequence
                    if "ManufacturerModelName" in e and e.Manufacturer == "hipnode"}
    assert {(m.name, m.version) for m in MODELS} <= contributing
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.PRIVATE_SCHEME
    assert ds.PreliminaryFlag == "PRELIMINARY" and ds.VerificationFlag == "UNVERIFIED"
    evidence = {str(s.ReferencedSOPInstanceUID)
                for st in ds.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for s in se.ReferencedSOPSequence}
    assert evidence == {str(s.SOPInstanceUID) for s in sources}
    assert "PredecessorDocumentsSequence" not in ds
    assert len(findings.images) == 4


def test_highdicom_reads_back_every_value(report: tuple[Dataset, SeriesFindings, list[Dataset]]) -> None:
    sr, findings, _ = report
    groups = read_report(roundtrip(sr))
    labels = [g.label for g in groups]
    assert labels == ["Image 1", "Image 1 right hip", "Image 1 left hip", "Image 2", "Image 2 right hip",
                      "Image 3", "Image 3 left hip", "Image 4"]
    by_label = {g.label: g for g in groups}
    for number, image in enumerate(findings.images, start=1):
        g = by_label[f"Image {number}"]
        assert g.source_sop_instance_uid == image.sop_instance_uid
        assert g.side is None
        assert g.view == image.view
        assert g.view_probability == image.view_probability
        assert g.analysed is (image.screened_out is None)
        assert g.metadata_mismatches == image.metadata_mismatches
        assert g.algorithm_name == "hipnode hip radiograph analysis"
        assert g.algorithm_version == "0.1.0"
        for hip in image.hips:
            h = by_label[f"Image {number} {'right' if hip.side is Side.RIGHT else 'left'} hip"]
            assert h.side is hip.side
            assert h.source_sop_instance_uid == image.sop_instance_uid
            assert h.view == image.view
            assert h.implant_present == hip.implant_present
            assert h.implant_probability == hip.implant_probability
            assert h.morphology == {f.name: (f.present, f.probability) for f in hip.morphology}
            assert h.lateral_centre_edge_deg == hip.lateral_centre_edge_deg
            assert h.tonnis_deg == hip.tonnis_deg
            if hip.femoral_head is None:
                assert h.femoral_head is None
            else:
                assert h.femoral_head is not None
                assert (h.femoral_head[0].x, h.femoral_head[0].y, h.femoral_head[1]) == pytest.approx(
                    (hip.femoral_head[0].x, hip.femoral_head[0].y, hip.femoral_head[1]), abs=1e-3)
            assert h.sourcil == hip.sourcil
            cup = hip.cup
            if cup is None or cup.inclination_deg is None:
                assert h.inclination_deg is None
                continue
            assert h.inclination_deg == pytest.approx(cup.inclination_deg, abs=0.005)
            assert h.anteversion_deg == pytest.approx(cup.anteversion_deg, abs=0.005)
            assert h.inclination[0].method == codes.inclination_method(cup.inclination_reference).meaning
            assert h.anteversion[0].method == codes.anteversion_method(cup.anteversion_method).meaning
            assert h.fit_quality == pytest.approx(cup.quality)
            assert cup.ellipse is not None and h.cup_rim is not None
            for attr in ("cx", "cy", "semi_major", "semi_minor", "angle_deg"):
                assert getattr(h.cup_rim, attr) == pytest.approx(getattr(cup.ellipse, attr), abs=1e-3), attr
            assert cup.reference_line is not None and h.reference_line is not None
            for got, want in zip(h.reference_line, cup.reference_line, strict=True):
                assert (got.x, got.y) == pytest.approx((want.x, want.y), abs=1e-3)

    right = by_label["Image 1 right hip"]
    assert [a.value_deg for a in right.anteversion] == [17.81, 19.05]  # Lewinnek, then Liaw
    assert right.anteversion[1].method == codes.METHOD_ANTEVERSION_LIAW.meaning
    assert right.comments == ["Morphology not assessed: hardware in joint region"]
    # Longitudinal: the newest prior of each side, current minus prior.
    assert right.change_in_inclination_deg == pytest.approx(42.37 - 40.0)
    assert right.change_in_anteversion_deg == pytest.approx(17.81 - 15.5)
    assert right.prior_study_date == "20210114"
    assert right.prior_study_instance_uid == "1.2.826.0.1.3680043.8.498.900"
    left = by_label["Image 1 left hip"]
    assert left.change_in_inclination_deg == pytest.approx(38.12 - 39.0)
    assert left.change_in_anteversion_deg is None  # the prior had no anteversion
    refused = by_label["Image 3 left hip"]
    assert refused.comments == ["Cup angles not reported: cup rim not visible (ellipse fit quality 0.21)"]
    screened = by_label["Image 4"]
    assert screened.analysed is False
    assert screened.screen_reason == "Not a hip or pelvis radiograph"
    assert screened.comments == ["Not analysed: not a hip or pelvis radiograph (chest radiograph)"]


def test_highdicom_finds_groups_by_finding_site_and_source(report: tuple[Dataset, SeriesFindings, list[Dataset]]) -> None:
    sr, findings, _ = report
    parsed = hd.sr.ComprehensiveSR.from_dataset(roundtrip(sr))
    content = parsed.content
    assert isinstance(content, hd.sr.MeasurementReport)
    hips = content.get_image_measurement_groups(finding_site=codes.HIP_JOINT)
    # the labelled groups: image 1 R + L cup rim and cup ellipse fit, image 2 R femoral head; the
    # joint boxes beside them are unlabelled (side as a group modifier); image 3 L is code-only
    assert len(hips) == 5
    on_image_1 = content.get_image_measurement_groups(referenced_sop_instance_uid=findings.images[0].sop_instance_uid)
    # two cups (rim + ellipse fit each), two joints, one reference line shared by both cups
    assert len(on_image_1) == 7
    cups = [g for g in on_image_1 if g.get_measurements(name=codes.CUP_INCLINATION)]
    assert len(cups) == 2
    for group in cups:
        sites = group.finding_sites
        assert len(sites) == 2
        # first the hip as viewers label it ("Right hip"), then the standard site + laterality
        assert sites[1].value == codes.HIP_JOINT
        assert sites[1].laterality in (codes.RIGHT, codes.LEFT)
        side = Side.RIGHT if sites[1].laterality == codes.RIGHT else Side.LEFT
        assert sites[0].value == codes.HIP_SITES[side]
        assert sites[0].laterality is None
        word = "right" if side == Side.RIGHT else "left"
        assert str(group.tracking_identifier) == f"Image 1 {word} hip: acetabular cup"
        inclination = group.get_measurements(name=codes.CUP_INCLINATION)
        assert len(inclination) == 1 and inclination[0].unit == codes.DEGREE
        assert inclination[0].referenced_coordinates == []  # the outline is the group's, drawn once


def _scoords(item: Dataset) -> list[Dataset]:
    out = []
    for child in item.get("ContentSequence", []):
        if child.get("ValueType") == "SCOORD":
            out.append(child)
        out.extend(_scoords(child))
    return out


def test_every_measurement_group_draws_and_each_outline_once(
    report: tuple[Dataset, SeriesFindings, list[Dataset]],
) -> None:
    """What a TID 1500 consumer such as OHIF needs (issue 14): every group under Imaging
    Measurements has a SCOORD of its own, the first one a POLYLINE (OHIF draws the first SCOORD
    of a group and no oblique ELLIPSE); outlines sit at group level, never under each NUM; coded
    and text findings are in Qualitative Evaluations, not in the groups."""
    sr, _, _ = report
    ds = roundtrip(sr)
    containers = {c.ConceptNameCodeSequence[0].CodeValue: c for c in ds.ContentSequence if c.ValueType == "CONTAINER"}
    assert set(containers) == {"126010", codes.QUALITATIVE_EVALUATIONS.value}
    drawn = []
    for group in containers["126010"].ContentSequence:
        items = group.ContentSequence
        regions = [i for i in items if i.ValueType == "SCOORD"]
        assert regions, group
        nums = {i.ConceptNameCodeSequence[0].CodeValue for i in items if i.ValueType == "NUM"}
        if regions[0].GraphicType == "ELLIPSE":
            # the cup's exact ellipse fit: OHIF does not draw it (tilted), so it holds only what
            # the rim's label need not show — never the inclination or the anteversion
            assert regions[0].ConceptNameCodeSequence[0].CodeValue == codes.CUP_RIM.value
            assert nums and nums <= {codes.CUP_ANTEVERSION_LIAW.value, codes.ELLIPSE_FIT_QUALITY.value}, nums
        else:
            assert regions[0].GraphicType == "POLYLINE"
        # OHIF shows five label lines: the NUMs, then the first finding site (the side)
        assert len([i for i in items if i.ValueType == "NUM"]) <= 4
        assert [i.ValueType for i in items if i.RelationshipType == "CONTAINS" and i.ValueType in ("CODE", "TEXT")] == []
        for num in (i for i in items if i.ValueType == "NUM"):
            assert _scoords(num) == []
        for region in regions:
            (image,) = region.ContentSequence
            assert image.RelationshipType == "SELECTED FROM" and image.ValueType == "IMAGE"
            drawn.append((region.ConceptNameCodeSequence[0].CodeValue, region.GraphicType,
                          tuple(round(float(v), 3) for v in region.GraphicData),
                          image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
    assert len(drawn) == len(set(drawn)), "an outline is drawn more than once"
    kinds = sorted((code, graphic) for code, graphic, _, _ in drawn)
    assert kinds == sorted([(codes.CUP_RIM.value, "POLYLINE"), (codes.CUP_RIM.value, "ELLIPSE")] * 2
                           + [(codes.HIP_JOINT_REGION.value, "POLYLINE")] * 3
                           + [(codes.FEMORAL_HEAD_OUTLINE.value, "POLYLINE"), (codes.SOURCIL.value, "POLYLINE")]
                           + [(codes.INCLINATION_REFERENCE_LINE.value, "POLYLINE")])
    for item in containers[codes.QUALITATIVE_EVALUATIONS.value].ContentSequence:
        assert item.RelationshipType == "CONTAINS" and item.ValueType in ("CODE", "TEXT"), item
    # the procedure comes from CID 100 (Quantitative Diagnostic Imaging Procedures)
    (procedure,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert (procedure.ConceptCodeSequence[0].CodingSchemeDesignator, procedure.ConceptCodeSequence[0].CodeValue) in {
        (c.scheme_designator, c.value) for c in (getattr(hd_codes.cid100, n) for n in hd_codes.cid100.dir())
    }


def test_cup_rim_polyline_is_closed_and_lies_on_the_ellipse() -> None:
    e = Ellipse(cx=138.0, cy=211.0, semi_major=37.5, semi_minor=11.5, angle_deg=137.6)
    data = ellipse_polyline_data(e)
    assert data.shape == (RIM_POLYLINE_POINTS + 1, 2)
    assert data[0].tolist() == data[-1].tolist()  # closed: the first point repeated last
    a = math.radians(e.angle_deg)
    for x, y in data - PIXEL_ORIGIN_SHIFT:
        dx, dy = x - e.cx, y - e.cy
        u = dx * math.cos(a) + dy * math.sin(a)
        v = -dx * math.sin(a) + dy * math.cos(a)
        assert (u / e.semi_major) ** 2 + (v / e.semi_minor) ** 2 == pytest.approx(1.0, abs=1e-9)
    box = box_polyline_data(Box(10, 20, 30, 60))
    assert box.tolist() == [[10.5, 20.5], [30.5, 20.5], [30.5, 60.5], [10.5, 60.5], [10.5, 20.5]]


def test_femoral_head_group_carries_lce_tonnis_and_draws_the_head_first(
    report: tuple[Dataset, SeriesFindings, list[Dataset]],
) -> None:
    """LCE and Tonnis sit with the femoral head circle and sourcil they were measured on (issue
    14: each outline tied to the value it supports), in a group of its own so that a viewer
    drawing one SCOORD per group (OHIF) draws both the joint box and the head; the circle is
    closed and lies on the head."""
    sr, findings, _ = report
    ds = roundtrip(sr)
    (measurements,) = [c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]

    def tracking(group: Dataset) -> str:
        return next(str(i.TextValue) for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112039")

    groups = {tracking(g): g for g in measurements.ContentSequence}
    head = groups["Image 2 right hip: femoral head"]
    nums = [i.ConceptNameCodeSequence[0].CodeValue for i in head.ContentSequence if i.ValueType == "NUM"]
    assert nums == [codes.LATERAL_CENTRE_EDGE_ANGLE.value, codes.TONNIS_ANGLE.value]
    circle, sourcil = [i for i in head.ContentSequence if i.ValueType == "SCOORD"]
    assert circle.ConceptNameCodeSequence[0].CodeValue == codes.FEMORAL_HEAD_OUTLINE.value
    assert sourcil.ConceptNameCodeSequence[0].CodeValue == codes.SOURCIL.value
    hip = findings.images[1].hips[0]
    assert hip.femoral_head is not None and hip.sourcil is not None
    (cx, cy), r = (hip.femoral_head[0].x, hip.femoral_head[0].y), hip.femoral_head[1]
    pts = np.asarray(circle.GraphicData, dtype=float).reshape(-1, 2) - PIXEL_ORIGIN_SHIFT
    assert pts[0].tolist() == pts[-1].tolist()
    assert np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) == pytest.approx(np.full(len(pts), r), abs=1e-3)  # FL: float32
    ends = np.asarray(sourcil.GraphicData, dtype=float).reshape(-1, 2) - PIXEL_ORIGIN_SHIFT
    assert ends.tolist() == [[p.x, p.y] for p in hip.sourcil]
    joint = groups["Image 2 right hip: hip joint"]
    assert [i for i in joint.ContentSequence if i.ValueType == "NUM"] == []


def test_lce_without_a_head_stays_with_the_joint_box() -> None:
    """Findings without the head geometry (made before it was carried) keep LCE / Tonnis in the
    joint group, so no value is ever without an outline."""
    findings, sources = full_series()
    hip = findings.images[1].hips[0]
    findings.images[1].hips[0] = dataclasses.replace(hip, femoral_head=None, sourcil=None)
    groups = read_report(roundtrip(build_sr(findings, sources, models=MODELS)))
    h = next(g for g in groups if g.label == "Image 2 right hip")
    assert h.lateral_centre_edge_deg == hip.lateral_centre_edge_deg and h.femoral_head is None


def _html_text(path: Path) -> str:
    raw = subprocess.run(["/usr/bin/dsr2html", "+U8", str(path)], capture_output=True, timeout=60, check=True).stdout
    text = re.sub(r"<[^>]+>", " ", raw.decode("utf-8"))
    return re.sub(r"\s+", " ", html.unescape(text))


def test_dsr2html_renders_every_finding(tmp_path: Path, report: tuple[Dataset, SeriesFindings, list[Dataset]]) -> None:
    sr, _, _ = report
    text = _html_text(write(sr, tmp_path / "sr.dcm"))
    expected = [
        "Imaging Measurement Report",
        "Anna Müller",
        "Image View: AP pelvis",
        "Image View: Lateral hip",
        "Image View: Oblique hip",
        "Probability = 0.991",
        "Hip arthroplasty: Yes",
        "Hip arthroplasty: No",
        "Probability = 0.987",
        "Acetabular cup inclination: 42.37 deg",
        "Acetabular cup anteversion: 17.81 deg",
        "Acetabular cup anteversion (Liaw): 19.05 deg",
        "Acetabular cup inclination: 38.12 deg",
        "Acetabular cup anteversion: 22.46 deg",
        "Measurement Method = Inclination: cup ellipse long axis to inter-teardrop line",
        "Measurement Method = Anteversion, Lewinnek",
        "Measurement Method = Anteversion, Liaw",
        "Acetabular cup rim",
        "Inclination reference line",
        "Ischial spine sign: Present",
        "Probability = 0.71",
        "Cam deformity: Present",
        "Probability = 0.83",
        "Hip dysplasia: Absent",
        "Other hip abnormality: Absent",
        "Lateral centre-edge angle (Wiberg): 31.4 deg",
        "Tonnis angle: 6.2 deg",
        "Change in acetabular cup inclination since prior: 2.37 deg",
        "Change in acetabular cup anteversion since prior: 2.31 deg",
        "Change in acetabular cup inclination since prior: -0.88 deg",
        "Prior acetabular cup inclination = 40.0 deg",
        "Study Date = 2021-01-14",
        "Image analysed: No",
        "Reason image not analysed: Not a hip or pelvis radiograph",
        "Not analysed: not a hip or pelvis radiograph (chest radiograph)",
        "Metadata mismatch: ViewPosition says LL but the image is an AP pelvis",
        "Cup angles not reported: cup rim not visible",
        "Morphology not assessed: hardware in joint region",
        "Algorithm Name = \"hipnode hip radiograph analysis\"",
        "model detector 1.2.0",
        "Image 1 right hip",
        "Image 1 left hip",
    ]
    missing = [e for e in expected if e not in text]
    assert missing == [], missing
    # Laterality of each finding site (rendered in an annex by default).
    assert "Laterality = Right" in text and "Laterality = Left" in text


def test_same_inputs_give_identical_uids() -> None:
    f1, s1 = full_series()
    f2, s2 = full_series()
    a = build_sr(f1, s1, models=MODELS)
    b = build_sr(f2, list(reversed(s2)), models=list(reversed(MODELS)))
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert [g.tracking_uid for g in read_report(a)] == [g.tracking_uid for g in read_report(b)]
    assert len(a.SOPInstanceUID) <= 64 and a.SOPInstanceUID.startswith("2.25.")


def test_late_image_gives_amended_sr_that_names_its_predecessor(tmp_path: Path) -> None:
    findings, sources = full_series()
    first = build_sr(SeriesFindings(findings.series_instance_uid, findings.study_instance_uid,
                                    findings.images[:2], findings.models), sources[:2], models=MODELS)
    amended = build_sr(findings, sources, models=MODELS, predecessor=first)
    assert amended.SOPInstanceUID != first.SOPInstanceUID
    assert amended.SeriesInstanceUID == first.SeriesInstanceUID  # same SR series, new instance
    assert predecessor_uids(roundtrip(amended)) == [first.SOPInstanceUID]
    item = amended.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == first.StudyInstanceUID
    assert item.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    ref = ReportReference.from_dataset(first)
    again = build_sr(findings, sources, models=MODELS, predecessor=ref)
    assert again.SOPInstanceUID == amended.SOPInstanceUID
    assert predecessor_uids(again) == [first.SOPInstanceUID]
    errors, _ = dciodvfy(write(amended, tmp_path / "amended.dcm"))
    assert errors == []
    # Tracking UIDs follow the image and side across versions of the report.
    first_tracking = {g.label: g.tracking_uid for g in read_report(first)}
    amended_tracking = {g.label: g.tracking_uid for g in read_report(amended)}
    assert all(amended_tracking[k] == v for k, v in first_tracking.items())


def test_new_model_version_or_salt_gives_new_sr() -> None:
    findings, sources = full_series()
    base = build_sr(findings, sources, models=MODELS).SOPInstanceUID
    bumped = [*MODELS[:-1], ModelInfo("morphology", "0.9.2")]
    assert build_sr(findings, sources, models=bumped).SOPInstanceUID != base
    assert build_sr(findings, sources, models=MODELS, salt="re-read 1").SOPInstanceUID != base


def test_uid_derivation_is_canonical() -> None:
    assert derive_uid("sr", "a", "bc") != derive_uid("sr", "ab", "c")
    assert derive_uid("sr", "x") != derive_uid("sc", "x")
    one = sr_uids(SERIES_UID, ["1.2.3", "1.2.4"], MODELS)
    assert one == sr_uids(SERIES_UID, ["1.2.4", "1.2.3", "1.2.3"], MODELS)
    assert sc_uids(SERIES_UID, "1.2.3", MODELS).series_instance_uid == sc_uids(SERIES_UID, "1.2.4", MODELS).series_instance_uid
    assert sc_uids(SERIES_UID, "1.2.3", MODELS).sop_instance_uid != one.sop_instance_uid
    with pytest.raises(ValueError, match="source_sop_uids"):
        sr_uids(SERIES_UID, [], MODELS)


def test_screened_non_image_is_referenced_as_composite(tmp_path: Path) -> None:
    pdf = make_non_image(7)
    findings = SeriesFindings(pdf.SeriesInstanceUID, pdf.StudyInstanceUID, models=list(MODELS))
    from node.domain import ImageFindings, ScreenReason

    findings.images.append(ImageFindings(str(pdf.SOPInstanceUID), str(pdf.SOPClassUID),
                                         screened_out=ScreenReason.NOT_IMAGE))
    sr = build_sr(findings, [pdf], models=MODELS)
    errors, _ = dciodvfy(write(sr, tmp_path / "sr.dcm"))
    assert errors == []
    (group,) = read_report(roundtrip(sr))
    assert group.source_sop_instance_uid == pdf.SOPInstanceUID
    assert group.screen_reason == "Not an image storage object"
    assert group.view is None


def test_sources_missing_type2_attributes_and_odd_sex(tmp_path: Path) -> None:
    findings, sources = full_series()
    for s in sources:
        for keyword in ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
            delattr(s, keyword)
        s.PatientSex = "U"  # not M/F/O, but it is what the modality sent
    sr = build_sr(findings, sources, models=MODELS)
    assert sr.PatientSex == "U"
    assert sr.PatientBirthDate in (None, "")
    errors, _ = dciodvfy(write(sr, tmp_path / "sr.dcm"))
    # PatientSex "U" is outside the enumerated values; that error belongs to the source.
    assert [e for e in errors if "PatientSex" not in e] == []


def test_malformed_birth_date_is_left_empty_not_fatal(tmp_path: Path) -> None:
    """highdicom raises on a birth date that is not a DA; the result must not be lost over it,
    and the malformed value is not repeated."""
    findings, sources = full_series()
    with warnings.catch_warnings():  # pydicom warns about the value (the node logs it redacted)
        warnings.filterwarnings("ignore", message="Invalid value for VR DA")
        for s in sources:
            s.PatientBirthDate = "1950-02-31"  # as a modality might send it
        sr = build_sr(findings, sources, models=MODELS)
    assert sr.PatientBirthDate in (None, "")
    errors, _ = dciodvfy(write(sr, tmp_path / "sr.dcm"))
    assert errors == []


def test_rejects_inconsistent_inputs() -> None:
    findings, sources = full_series()
    with pytest.raises(ValueError, match="no source header"):
        build_sr(findings, sources[:1], models=MODELS)
    with pytest.raises(ValueError, match="at least one model"):
        build_sr(SeriesFindings(findings.series_instance_uid, findings.study_instance_uid, findings.images),
                 sources, models=[])
    image = bilateral_tha_image()
    assert image.hips[0].cup is not None
    image.hips[0].cup = dataclasses.replace(image.hips[0].cup, inclination_reference="sacral line")
    bad = SeriesFindings(findings.series_instance_uid, findings.study_instance_uid, [image])
    with pytest.raises(ValueError, match="Unknown inclination reference"):
        build_sr(bad, sources, models=MODELS)


def test_ellipse_coordinates_round_trip_and_follow_the_dicom_origin() -> None:
    e = Ellipse(cx=100.0, cy=50.0, semi_major=20.0, semi_minor=5.0, angle_deg=0.0)
    data = ellipse_graphic_data(e)
    # Pixel centre (100, 50) in domain coordinates is (100.5, 50.5) in SCOORD space.
    assert data.tolist() == [[80.5, 50.5], [120.5, 50.5], [100.5, 45.5], [100.5, 55.5]]
    for angle in (0.0, 30.0, 90.0, 137.6, 179.0):
        back = ellipse_from_graphic_data(ellipse_graphic_data(dataclasses.replace(e, angle_deg=angle)))
        assert back.angle_deg == pytest.approx(angle, abs=1e-9)
        assert (back.cx, back.cy, back.semi_major, back.semi_minor) == pytest.approx((100.0, 50.0, 20.0, 5.0))


def test_codes_are_valid_and_documented() -> None:
    all_codes = codes.all_codes()
    keys = [(c.scheme_designator, c.value) for c in all_codes]
    assert len(keys) == len(set(keys))
    meanings = {}
    for c in all_codes:
        assert len(c.meaning) <= 64, c  # CodeMeaning is LO
        assert c.meaning.isascii(), c
        assert c.scheme_designator in {"SCT", "DCM", "UCUM", "UMLS", codes.PRIVATE_SCHEME}, c
        if c.scheme_designator == codes.PRIVATE_SCHEME:
            assert c.meaning not in meanings, c
            meanings[c.meaning] = c
    assert set(codes.VIEWS) == set(View)
    from node.domain import MORPHOLOGY_FLAGS, ScreenReason

    assert set(codes.MORPHOLOGY) == set(MORPHOLOGY_FLAGS)
    assert set(codes.SCREEN_REASONS) == set(ScreenReason)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "results.md").read_text(encoding="utf-8")
    undocumented = [c for c in all_codes if f"`{c.value}`" not in doc]
    assert undocumented == []
