"""The SR a radiologist reads: a TID 1500 Measurement Report per analysed series.

Shape of the document (``docs/results.md`` describes it for radiologists and PACS admins)::

    Imaging Measurement Report (TID 1500)
      language, observer = the hipnode device, procedure = Plain radiography
      Imaging Measurements
        Measurement Group "Image 1"                 one per source image
          Image View = AP pelvis (+ Probability)
          Image analysed = Yes | No, Reason image not analysed = …, Comment = …
          Metadata mismatch = …                      (TEXT, one per mismatch)
        Measurement Group "Image 1 right hip"       one per image × hip side
          Finding Site = Hip joint, Laterality = Right
          Image View, Hip arthroplasty = Yes | No (+ Probability)
          Acetabular cup inclination  NUM deg  (method, SCOORD ellipse + reference POLYLINE)
          Acetabular cup anteversion  NUM deg  (method, SCOORD ellipse)
          Ischial spine sign / Cam deformity / Hip dysplasia / Other hip abnormality
                                     = Present | Absent (+ Probability)
          Lateral centre-edge angle, Tonnis angle  NUM deg        (when measured)
          Change in cup inclination / anteversion since prior  NUM deg
                                     (prior value, its study date and study UID)
          Comment = why a value is missing or flagged

Why Comprehensive SR (not Comprehensive 3D / Enhanced): it carries 2D SCOORDs on the source
image (an ellipse and a polyline — what a viewer needs to draw the cup rim and reference line),
validates with dciodvfy, and is the SR class PACS viewers most widely render.

Image coordinates: ``node.domain`` puts the origin at the *centre* of the top-left pixel; DICOM
SCOORD puts it at the top-left *corner* of that pixel (PS3.3 C.18.6.1.2), so points are shifted
by +0.5 on the way out and -0.5 on the way back in (:func:`read_report`).
"""

from __future__ import annotations

import copy
import datetime
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, ComprehensiveSRStorage

from node.compose import codes
from node.compose.uids import OutputUIDs, derive_uid, sr_uids
from node.domain import (
    CupMeasurement,
    Ellipse,
    HipFindings,
    ImageFindings,
    ModelInfo,
    Point,
    PriorMeasurement,
    SeriesFindings,
    Side,
    View,
)

SR_SOP_CLASS_UID = str(ComprehensiveSRStorage)
ANGLE_DECIMALS = 2
PROBABILITY_DECIMALS = 3
PIXEL_ORIGIN_SHIFT = 0.5  # domain pixel centre (0, 0) == DICOM SCOORD (0.5, 0.5)
ALGORITHM_NAME = "hipnode hip radiograph analysis"
SERIES_DESCRIPTION = "AI hip measurements (hipnode)"

_SOURCE = Code("260753009", "SCT", "Source")
_PATIENT_SEX_VALUES = {"M", "F", "O"}
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_PIXEL_DATA_GROUP = 0x7FE0


@dataclass(frozen=True)
class ReportReference:
    """Identity of an SR this one supersedes (written to Predecessor Documents Sequence)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = SR_SOP_CLASS_UID

    @classmethod
    def from_dataset(cls, ds: Dataset) -> ReportReference:
        return cls(
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
        )

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def build_sr(
    findings: SeriesFindings,
    sources: Sequence[Dataset],
    *,
    models: Sequence[ModelInfo] = (),
    priors: Sequence[PriorMeasurement] = (),
    predecessor: Dataset | ReportReference | None = None,
    manufacturer: str = "hipnode",
    software_version: str = "0.1.0",
    series_number: int = 990,
    instance_number: int = 1,
    uids: OutputUIDs | None = None,
    salt: str = "",
    content_datetime: datetime.datetime | None = None,
    institution_name: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """Build the Measurement Report for one analysed series.

    ``sources`` are the headers of the series' images (pixel data is neither needed nor
    copied); every image in ``findings.images`` must be among them. Patient and study
    attributes are copied from the first source. ``models`` defaults to ``findings.models``;
    it names the algorithm (TID 4019, Contributing Equipment) and enters the UIDs, so a new
    model version yields a new SR. ``uids`` overrides the derived identity (see
    :mod:`node.compose.uids`); ``predecessor`` is the SR this one amends.
    """
    if not sources:
        raise ValueError('Argument "sources" must contain at least one source image header.')
    models = list(models) or list(findings.models)
    if not models:
        raise ValueError('Argument "models" must name at least one model (IHE AIR requires it).')
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    for image in findings.images:
        if image.sop_instance_uid not in by_uid:
            raise ValueError(f'Image "{image.sop_instance_uid}" has findings but no source header.')
    if not findings.images:
        raise ValueError('Argument "findings" must contain at least one image.')

    if uids is None:
        uids = sr_uids(findings.series_instance_uid, by_uid.keys(), models, salt=salt)
    algorithm = _algorithm_id(models, software_version)
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for number, image in enumerate(_ordered_images(findings.images, by_uid), start=1):
        source = by_uid[image.sop_instance_uid]
        groups.append(_image_group(number, image, source, algorithm))
        for hip in sorted(image.hips, key=lambda h: 0 if h.side is Side.RIGHT else 1):
            side_priors = [p for p in priors if p.side is hip.side]
            groups.append(_side_group(number, image, hip, source, algorithm, side_priors))

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derive_uid("device", manufacturer, ALGORITHM_NAME),
        name="hipnode",
        manufacturer_name=manufacturer,
        model_name=ALGORITHM_NAME,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(Code("121007", "DCM", "Device")),
            observer_identifying_attributes=device,
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.PLAIN_RADIOGRAPHY,
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )

    _separate_containers(report[0])
    evidence, original_sex = _evidence_headers(sources)
    when = content_datetime or datetime.datetime.now()
    previous = [_predecessor_dataset(predecessor)] if predecessor is not None else None
    equipment = [
        hd.ContributingEquipment(
            manufacturer=m.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=m.name,
            software_versions=m.version,
            contribution_description="AI model that contributed to this result",
        )
        for m in models
    ]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,  # PRELIMINARY: an AI result awaiting a radiologist's reading
        is_verified=False,
        institution_name=institution_name,
        previous_versions=previous,
        record_evidence=True,
        contributing_equipment=equipment,
        series_description=SERIES_DESCRIPTION,
        content_date=when.date(),
        content_time=when.time(),
    )
    # IHE AIR: the General Equipment module names the algorithm and its versions.
    sr.ManufacturerModelName = ALGORITHM_NAME
    # setattr: pydicom's stub types SoftwareVersions as a 1-tuple, but it is LO with VM 1-n.
    setattr(sr, "SoftwareVersions", [software_version, *(f"{m.name} {m.version}" for m in models)])  # noqa: B010
    if original_sex is not None:
        sr.PatientSex = original_sex
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_item()]
    return sr


def _separate_containers(item: Dataset) -> None:
    """Mark every CONTAINER as SEPARATE items: highdicom writes CONTINUOUS (running text),
    which makes viewers and dsr2html print the values without their concept names ("42.37
    deg" instead of "Acetabular cup inclination = 42.37 deg")."""
    if item.ValueType == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate_containers(child)


def _ordered_images(images: Iterable[ImageFindings], by_uid: dict[str, Dataset]) -> list[ImageFindings]:
    """Images in acquisition order (Instance Number, then UID) so numbering is stable."""

    def key(image: ImageFindings) -> tuple[int, str]:
        number = by_uid[image.sop_instance_uid].get("InstanceNumber")
        try:
            n = int(number) if number not in (None, "") else 2**31
        except (TypeError, ValueError):
            n = 2**31
        return n, image.sop_instance_uid

    return sorted(images, key=key)


def header_without_pixels(source: Dataset) -> Dataset:
    """Deep copy of ``source`` without group 7FE0 (pixel data is never needed for a header and
    can be hundreds of megabytes)."""
    header = Dataset()
    for elem in source:
        if elem.tag.group != _PIXEL_DATA_GROUP:
            header.add(copy.deepcopy(elem))
    if hasattr(source, "file_meta"):
        header.file_meta = copy.deepcopy(source.file_meta)
    return header


def fill_patient_study(header: Dataset) -> str | None:
    """Make ``header`` acceptable to highdicom as the patient/study source, in place.

    highdicom reads the type 2 patient/study attributes from it and raises on a missing one; a
    modality that omits one must not stop the result. An out-of-vocabulary Patient's Sex is
    blanked for highdicom; the original is returned so the caller restores it on the output and
    the output agrees with its sources (dcentvfy checks that).
    """
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "" if keyword != "ReferringPhysicianName" else None)
    if not _valid_da(header.get("PatientBirthDate")):
        # highdicom converts it to a DA and raises on a malformed one (seen: "1950-02-31"); a
        # wrong birth date is not repeated, and the result is not lost over it
        header.PatientBirthDate = ""
    sex = str(header.get("PatientSex") or "")
    if sex and sex not in _PATIENT_SEX_VALUES:
        header.PatientSex = ""
        return sex
    return None


def _valid_da(value: object) -> bool:
    """Empty, or a real calendar date written YYYYMMDD (what highdicom accepts for a DA; the
    length check because ``strptime`` also takes one-digit months and days)."""
    text = "" if value is None else str(value).strip()
    return not text or (len(text) == 8 and text.isdigit() and _parse_da(text) is not None)


def _evidence_headers(sources: Sequence[Dataset]) -> tuple[list[Dataset], str | None]:
    """Pixel-free copies of the sources; the first one prepared by :func:`fill_patient_study`."""
    headers = [header_without_pixels(src) for src in sources]
    return headers, fill_patient_study(headers[0])


def _predecessor_dataset(predecessor: Dataset | ReportReference) -> Dataset:
    if isinstance(predecessor, ReportReference):
        return predecessor.as_dataset()
    return ReportReference.from_dataset(predecessor).as_dataset()


def _algorithm_id(models: Sequence[ModelInfo], software_version: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for every group: the pipeline plus each model's name and version."""
    return hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME,
        version=software_version,
        parameters=[f"model {m.name} {m.version} ({m.manufacturer})" for m in models],
    )


def _tracking(label: str, *parts: str) -> hd.sr.TrackingIdentifier:
    """Tracking UID derived from the source image (and side): stable across amended SRs, so a
    viewer can follow "Image 1 right hip" from one version of the report to the next."""
    return hd.sr.TrackingIdentifier(uid=derive_uid("tracking", *parts), identifier=label)


def _image_label(number: int) -> str:
    return f"Image {number}"


def _side_label(number: int, side: Side) -> str:
    return f"Image {number} {'right' if side is Side.RIGHT else 'left'} hip"


def _coded(name: Code, value: Code, probability: float | None = None) -> hd.sr.QualitativeEvaluation:
    """CODE item; the model probability, when known, is a NUM property of it."""
    evaluation = hd.sr.QualitativeEvaluation(name=name, value=value)
    if probability is not None:
        evaluation[0].ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    name=codes.PROBABILITY,
                    value=round(float(probability), PROBABILITY_DECIMALS),
                    unit=codes.NO_UNITS,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                )
            ]
        )
    return evaluation


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _source_item(source: Dataset) -> hd.sr.ContentItem:
    """Reference to the source: IMAGE where it is an image, COMPOSITE otherwise (a screened-out
    non-image object must still be named so the radiologist knows what was rejected)."""
    sop_class = str(source.SOPClassUID)
    if _is_image_storage(sop_class):
        return hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=sop_class, referenced_sop_instance_uid=str(source.SOPInstanceUID)
        )
    return hd.sr.CompositeContentItem(
        name=_SOURCE,
        referenced_sop_class_uid=sop_class,
        referenced_sop_instance_uid=str(source.SOPInstanceUID),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _is_image_storage(sop_class_uid: str) -> bool:
    """True for image storage SOP classes: their standard names all contain "Image Storage"
    (CR, DX, CT, Secondary Capture…), which SR, PDF, presentation states… do not."""
    return "Image Storage" in UID(sop_class_uid).name


def _image_group(
    number: int, image: ImageFindings, source: Dataset, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    if image.view is not None:
        evaluations.append(_coded(codes.IMAGE_VIEW, codes.VIEWS[image.view], image.view_probability))
    analysed = image.screened_out is None
    evaluations.append(_coded(codes.IMAGE_ANALYSED, codes.YES if analysed else codes.NO))
    if image.screened_out is not None:
        evaluations.append(_coded(codes.REASON_NOT_ANALYSED, codes.SCREEN_REASONS[image.screened_out]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(_image_label(number), image.sop_instance_uid),
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
    )
    content = group[0].ContentSequence
    if image.screened_out is not None:
        detail = f"Not analysed: {image.screened_out.value}"
        if image.screen_detail:
            detail += f" ({image.screen_detail})"
        content.append(_text(codes.COMMENT, detail))
    elif not image.hips:
        content.append(_text(codes.COMMENT, "Analysed; no hip joint found on this image"))
    if image.low_confidence:
        content.append(_text(codes.COMMENT, f"Low confidence: {image.low_confidence}"))
    for note in image.notes:
        content.append(_text(codes.COMMENT, note))
    for mismatch in image.metadata_mismatches:
        content.append(_text(codes.METADATA_MISMATCH, mismatch))
    content.append(_source_item(source))
    return group


def _side_group(
    number: int,
    image: ImageFindings,
    hip: HipFindings,
    source: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    priors: Sequence[PriorMeasurement],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    if image.view is not None:
        evaluations.append(_coded(codes.IMAGE_VIEW, codes.VIEWS[image.view]))
    if hip.implant_present is not None:
        evaluations.append(
            _coded(
                codes.HIP_ARTHROPLASTY,
                codes.YES if hip.implant_present else codes.NO,
                hip.implant_probability,
            )
        )
    for flag in hip.morphology:
        concept = codes.MORPHOLOGY.get(flag.name)
        if concept is None:
            raise ValueError(f'Unknown morphology flag "{flag.name}"; expected one of {sorted(codes.MORPHOLOGY)}.')
        evaluations.append(_coded(concept, codes.PRESENT if flag.present else codes.ABSENT, flag.probability))

    comments: list[str] = []
    measurements: list[hd.sr.Measurement] = []
    if hip.cup is not None:
        measurements.extend(_cup_measurements(hip.cup, source, priors, comments))
    if hip.lateral_centre_edge_deg is not None:
        measurements.append(_angle(codes.LATERAL_CENTRE_EDGE_ANGLE, hip.lateral_centre_edge_deg))
    if hip.tonnis_deg is not None:
        measurements.append(_angle(codes.TONNIS_ANGLE, hip.tonnis_deg))
    if hip.morphology_refusal:
        comments.append(f"Morphology not assessed: {hip.morphology_refusal}")
    if image.low_confidence:
        comments.append(f"Low confidence: {image.low_confidence}")
    comments.extend(hip.notes)

    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(_side_label(number, hip.side), image.sop_instance_uid, hip.side.value),
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.HIP_JOINT, laterality=codes.LATERALITY[hip.side])],
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
            )
        ],
    )
    content = group[0].ContentSequence
    for comment in comments:
        content.append(_text(codes.COMMENT, comment))
    return group


def _angle(name: Code, value_deg: float, method: Code | None = None) -> hd.sr.Measurement:
    if not math.isfinite(value_deg):
        raise ValueError(f'Angle "{name.meaning}" is not a finite number: {value_deg!r}.')
    return hd.sr.Measurement(name=name, value=round(float(value_deg), ANGLE_DECIMALS), unit=codes.DEGREE, method=method)


def _cup_measurements(
    cup: CupMeasurement, source: Dataset, priors: Sequence[PriorMeasurement], comments: list[str]
) -> list[hd.sr.Measurement]:
    region = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(source.SOPClassUID), referenced_sop_instance_uid=str(source.SOPInstanceUID)
    )
    rim = (
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.ELLIPSE,
            graphic_data=ellipse_graphic_data(cup.ellipse),
            source_image=region,
            purpose=codes.CUP_RIM,
        )
        if cup.ellipse is not None
        else None
    )
    line = (
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_points([cup.reference_line[0], cup.reference_line[1]]),
            source_image=region,
            purpose=codes.INCLINATION_REFERENCE_LINE,
        )
        if cup.reference_line is not None
        else None
    )
    out: list[hd.sr.Measurement] = []
    if cup.refusal_reason:
        comments.append(f"Cup angles not reported: {cup.refusal_reason}")
    if cup.inclination_deg is not None:
        m = _angle(codes.CUP_INCLINATION, cup.inclination_deg, codes.inclination_method(cup.inclination_reference))
        _add_coordinates(m, [c for c in (rim, line) if c is not None])
        out.append(m)
    if cup.anteversion_deg is not None:
        m = _angle(codes.CUP_ANTEVERSION, cup.anteversion_deg, codes.anteversion_method(cup.anteversion_method))
        _add_coordinates(m, [c for c in (rim,) if c is not None])
        out.append(m)
    if cup.anteversion_liaw_deg is not None and cup.anteversion_method.strip().lower() != "liaw":
        m = _angle(codes.CUP_ANTEVERSION, cup.anteversion_liaw_deg, codes.METHOD_ANTEVERSION_LIAW)
        _add_coordinates(m, [c for c in (rim,) if c is not None])
        out.append(m)
    if cup.ellipse is not None and (cup.inclination_deg is not None or cup.anteversion_deg is not None):
        out.append(
            hd.sr.Measurement(
                name=codes.ELLIPSE_FIT_QUALITY,
                value=round(float(cup.quality), PROBABILITY_DECIMALS),
                unit=codes.NO_UNITS,
            )
        )
    if cup.flagged:
        comments.append(
            f"Inclination measured against the {cup.inclination_reference}: pelvic landmarks were not "
            "found, treat with caution"
            if cup.inclination_reference.strip().lower() == "image horizontal"
            else "Cup measurement flagged for review"
        )
    prior = _latest(priors)
    if prior is not None:
        out.extend(_changes(cup, prior))
    return out


def _add_coordinates(measurement: hd.sr.Measurement, coords: Sequence[hd.sr.CoordinatesForMeasurement]) -> None:
    """Attach copies of the SCOORDs (INFERRED FROM) to a NUM: every angle names the geometry it
    was measured on, and each content item must be its own object in the tree."""
    if not coords:
        return
    item = measurement[0]
    if "ContentSequence" not in item:
        item.ContentSequence = hd.sr.ContentSequence()
    for c in coords:
        item.ContentSequence.append(copy.deepcopy(c))


def _latest(priors: Sequence[PriorMeasurement]) -> PriorMeasurement | None:
    if not priors:
        return None
    return max(priors, key=lambda p: (p.study_date or "", p.study_instance_uid))


def _changes(cup: CupMeasurement, prior: PriorMeasurement) -> list[hd.sr.Measurement]:
    """Change since the prior study: current minus prior, with the prior value, its study date
    and study UID attached so the number can be checked against the prior report."""
    out = []
    pairs = (
        (cup.inclination_deg, prior.inclination_deg, codes.CHANGE_IN_INCLINATION, codes.PRIOR_CUP_INCLINATION),
        (cup.anteversion_deg, prior.anteversion_deg, codes.CHANGE_IN_ANTEVERSION, codes.PRIOR_CUP_ANTEVERSION),
    )
    for current, before, change_code, prior_code in pairs:
        if current is None or before is None:
            continue
        delta = round(float(current), ANGLE_DECIMALS) - round(float(before), ANGLE_DECIMALS)
        m = _angle(change_code, delta)
        children = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    name=prior_code,
                    value=round(float(before), ANGLE_DECIMALS),
                    unit=codes.DEGREE,
                    relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
                ),
                hd.sr.UIDRefContentItem(
                    name=codes.STUDY_INSTANCE_UID,
                    value=prior.study_instance_uid,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                ),
            ]
        )
        date = _parse_da(prior.study_date)
        if date is not None:
            children.append(
                hd.sr.DateContentItem(
                    name=codes.STUDY_DATE, value=date, relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES
                )
            )
        m[0].ContentSequence = children
        out.append(m)
    return out


def _parse_da(value: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _points(points: Sequence[Point]) -> np.ndarray:
    return np.array([[p.x + PIXEL_ORIGIN_SHIFT, p.y + PIXEL_ORIGIN_SHIFT] for p in points], dtype=np.float64)


def ellipse_graphic_data(ellipse: Ellipse) -> np.ndarray:
    """SCOORD ELLIPSE data: the major axis end points, then the minor axis end points
    (PS3.3 C.18.6.1.2), in DICOM image coordinates."""
    a = math.radians(ellipse.angle_deg)
    ux, uy = math.cos(a), math.sin(a)
    vx, vy = -uy, ux
    major = (
        Point(ellipse.cx - ellipse.semi_major * ux, ellipse.cy - ellipse.semi_major * uy),
        Point(ellipse.cx + ellipse.semi_major * ux, ellipse.cy + ellipse.semi_major * uy),
    )
    minor = (
        Point(ellipse.cx - ellipse.semi_minor * vx, ellipse.cy - ellipse.semi_minor * vy),
        Point(ellipse.cx + ellipse.semi_minor * vx, ellipse.cy + ellipse.semi_minor * vy),
    )
    return _points([*major, *minor])


def ellipse_from_graphic_data(data: np.ndarray) -> Ellipse:
    """Inverse of :func:`ellipse_graphic_data` (back to domain pixel-centre coordinates)."""
    pts = np.asarray(data, dtype=np.float64).reshape(4, 2) - PIXEL_ORIGIN_SHIFT
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = pts
    semi_major = math.hypot(x1 - x0, y1 - y0) / 2.0
    semi_minor = math.hypot(x3 - x2, y3 - y2) / 2.0
    angle = math.degrees(math.atan2(y1 - y0, x1 - x0)) % 180.0
    return Ellipse(
        cx=float(x0 + x1) / 2.0,
        cy=float(y0 + y1) / 2.0,
        semi_major=semi_major,
        semi_minor=semi_minor,
        angle_deg=angle,
    )


# --------------------------------------------------------------------------------------------
# Reading back (tests, longitudinal priors, acceptance checks against a PACS)
# --------------------------------------------------------------------------------------------


@dataclass
class ReportedAngle:
    value_deg: float
    method: str | None = None  # code meaning of the measurement method


@dataclass
class ReportedGroup:
    """One measurement group of our SR, decoded with highdicom."""

    label: str
    tracking_uid: str
    source_sop_instance_uid: str | None
    side: Side | None
    view: View | None = None
    view_probability: float | None = None
    analysed: bool | None = None
    screen_reason: str | None = None
    implant_present: bool | None = None
    implant_probability: float | None = None
    inclination: list[ReportedAngle] = field(default_factory=list)
    anteversion: list[ReportedAngle] = field(default_factory=list)
    morphology: dict[str, tuple[bool, float | None]] = field(default_factory=dict)
    lateral_centre_edge_deg: float | None = None
    tonnis_deg: float | None = None
    change_in_inclination_deg: float | None = None
    change_in_anteversion_deg: float | None = None
    prior_study_date: str | None = None
    prior_study_instance_uid: str | None = None
    fit_quality: float | None = None
    cup_rim: Ellipse | None = None
    reference_line: tuple[Point, Point] | None = None
    comments: list[str] = field(default_factory=list)
    metadata_mismatches: list[str] = field(default_factory=list)
    algorithm_name: str | None = None
    algorithm_version: str | None = None

    @property
    def inclination_deg(self) -> float | None:
        """The primary inclination (first reported)."""
        return self.inclination[0].value_deg if self.inclination else None

    @property
    def anteversion_deg(self) -> float | None:
        """The primary anteversion (first reported; a Liaw alternative follows it)."""
        return self.anteversion[0].value_deg if self.anteversion else None


_VIEW_BY_CODE = {(c.scheme_designator, c.value): v for v, c in codes.VIEWS.items()}
_MORPHOLOGY_BY_CODE = {(c.scheme_designator, c.value): name for name, c in codes.MORPHOLOGY.items()}
_ALGORITHM_NAME = ("DCM", "111001")  # TID 4019 rows, written by highdicom
_ALGORITHM_VERSION = ("DCM", "111003")
_SIDE_BY_CODE = {(c.scheme_designator, c.value): s for s, c in codes.LATERALITY.items()}


def _key(concept: Code | hd.sr.CodedConcept) -> tuple[str, str]:
    return (str(concept.scheme_designator), str(concept.value))


def _concept(item: Dataset) -> tuple[str, str]:
    seq = item.ConceptNameCodeSequence[0]
    return (str(seq.CodingSchemeDesignator), str(seq.CodeValue))


def _num_value(item: Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def _code_value(item: Dataset) -> tuple[str, str]:
    seq = item.ConceptCodeSequence[0]
    return (str(seq.CodingSchemeDesignator), str(seq.CodeValue))


def _child_probability(item: Dataset) -> float | None:
    for child in item.get("ContentSequence", []):
        if child.ValueType == "NUM" and _concept(child) == _key(codes.PROBABILITY):
            return _num_value(child)
    return None


def read_report(ds: Dataset) -> list[ReportedGroup]:
    """Decode every measurement group of one of our SRs (parsed by highdicom).

    Raises ``ValueError`` when ``ds`` is not a TID 1500 Measurement Report.
    """
    sr = hd.sr.ComprehensiveSR.from_dataset(ds, copy=True)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("Dataset is not a TID 1500 Measurement Report.")
    out = []
    for group in report.get_image_measurement_groups():
        out.append(_read_group(group))
    return out


def _read_group(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> ReportedGroup:
    sources = group.source_images
    side: Side | None = None
    for site in group.finding_sites:
        if site.laterality is not None:
            side = _SIDE_BY_CODE.get(_key(site.laterality))
    composite = [
        c
        for c in group[0].ContentSequence
        if c.ValueType == "COMPOSITE" and c.RelationshipType == "CONTAINS"
    ]
    source_uid = (
        str(sources[0].referenced_sop_instance_uid)
        if sources
        else (str(composite[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) if composite else None)
    )
    result = ReportedGroup(
        label=str(group.tracking_identifier or ""),
        tracking_uid=str(group.tracking_uid or ""),
        source_sop_instance_uid=source_uid,
        side=side,
    )
    for item in group[0].ContentSequence:
        value_type = item.ValueType
        concept = _concept(item)
        if value_type == "CODE" and item.RelationshipType == "CONTAINS":
            _read_code(result, concept, item)
        elif value_type == "NUM":
            _read_num(result, concept, item)
        elif value_type == "TEXT":
            if concept == _key(codes.COMMENT):
                result.comments.append(str(item.TextValue))
            elif concept == _key(codes.METADATA_MISMATCH):
                result.metadata_mismatches.append(str(item.TextValue))
            elif concept == _ALGORITHM_NAME:
                result.algorithm_name = str(item.TextValue)
            elif concept == _ALGORITHM_VERSION:
                result.algorithm_version = str(item.TextValue)
    return result


def _read_code(result: ReportedGroup, concept: tuple[str, str], item: Dataset) -> None:
    value = _code_value(item)
    probability = _child_probability(item)
    if concept == _key(codes.IMAGE_VIEW):
        result.view = _VIEW_BY_CODE.get(value)
        if probability is not None:
            result.view_probability = probability
    elif concept == _key(codes.IMAGE_ANALYSED):
        result.analysed = value == _key(codes.YES)
    elif concept == _key(codes.REASON_NOT_ANALYSED):
        result.screen_reason = str(item.ConceptCodeSequence[0].CodeMeaning)
    elif concept == _key(codes.HIP_ARTHROPLASTY):
        result.implant_present = value == _key(codes.YES)
        result.implant_probability = probability
    elif concept in _MORPHOLOGY_BY_CODE:
        result.morphology[_MORPHOLOGY_BY_CODE[concept]] = (value == _key(codes.PRESENT), probability)


def _read_num(result: ReportedGroup, concept: tuple[str, str], item: Dataset) -> None:
    measurement = hd.sr.Measurement.from_sequence([item])
    value = float(measurement.value)
    method = measurement.method
    method_meaning = str(method.meaning) if method is not None else None
    if concept == _key(codes.CUP_INCLINATION):
        result.inclination.append(ReportedAngle(value, method_meaning))
        for coords in measurement.referenced_coordinates:
            data = np.asarray(coords.value, dtype=np.float64)
            if _key(coords.name) == _key(codes.CUP_RIM):
                result.cup_rim = ellipse_from_graphic_data(data)
            elif _key(coords.name) == _key(codes.INCLINATION_REFERENCE_LINE):
                (x0, y0), (x1, y1) = data[:2] - PIXEL_ORIGIN_SHIFT
                result.reference_line = (Point(float(x0), float(y0)), Point(float(x1), float(y1)))
    elif concept == _key(codes.CUP_ANTEVERSION):
        result.anteversion.append(ReportedAngle(value, method_meaning))
        if result.cup_rim is None:
            for coords in measurement.referenced_coordinates:
                if _key(coords.name) == _key(codes.CUP_RIM):
                    result.cup_rim = ellipse_from_graphic_data(np.asarray(coords.value, dtype=np.float64))
    elif concept == _key(codes.LATERAL_CENTRE_EDGE_ANGLE):
        result.lateral_centre_edge_deg = value
    elif concept == _key(codes.TONNIS_ANGLE):
        result.tonnis_deg = value
    elif concept == _key(codes.ELLIPSE_FIT_QUALITY):
        result.fit_quality = value
    elif concept in (_key(codes.CHANGE_IN_INCLINATION), _key(codes.CHANGE_IN_ANTEVERSION)):
        if concept == _key(codes.CHANGE_IN_INCLINATION):
            result.change_in_inclination_deg = value
        else:
            result.change_in_anteversion_deg = value
        for child in item.get("ContentSequence", []):
            if _concept(child) == _key(codes.STUDY_DATE):
                result.prior_study_date = str(child.Date)
            elif _concept(child) == _key(codes.STUDY_INSTANCE_UID):
                result.prior_study_instance_uid = str(child.UID)


def predecessor_uids(ds: Dataset) -> list[str]:
    """SOP Instance UIDs this SR names as its predecessors (empty for a first report)."""
    out = []
    for study in ds.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for sop in series.get("ReferencedSOPSequence", []):
                out.append(str(sop.ReferencedSOPInstanceUID))
    return out


__all__ = [
    "SR_SOP_CLASS_UID",
    "ReportReference",
    "ReportedAngle",
    "ReportedGroup",
    "build_sr",
    "ellipse_from_graphic_data",
    "ellipse_graphic_data",
    "fill_patient_study",
    "header_without_pixels",
    "predecessor_uids",
    "read_report",
]
