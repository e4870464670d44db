"""The SR a radiologist reads: a TID 1500 Measurement Report per analysed series.

Shape of the document (``docs/results.md`` describes it for radiologists and PACS admins)::

    Imaging Measurement Report (TID 1500)
      language, observer = the hipnode device, procedure = Imaging procedure (CID 100)
      Imaging Measurements                       only groups with something to draw
        Measurement Group "Image 1 right hip: acetabular cup"
          Finding Site = Hip joint, Laterality = Right; Source = the image
          Acetabular cup inclination / anteversion  NUM deg (method), Liaw anteversion,
          fit quality, change since prior (prior value, its study date and study UID)
          SCOORD POLYLINE (closed) + SCOORD ELLIPSE "Acetabular cup rim"
        Measurement Group "Image 1 right hip: hip joint"
          SCOORD POLYLINE "Hip joint region" (the detector's box, where the head was looked for)
        Measurement Group "Image 1 right hip: femoral head"     when LCE / Tonnis were measured
          LCE, Tonnis  NUM deg; SCOORD POLYLINE (closed circle) "Femoral head outline",
          SCOORD POLYLINE "Acetabular sourcil" (medial end, lateral end)
        Measurement Group "Image 1: inter-teardrop line (inclination reference, …)"
          SCOORD POLYLINE "Inclination reference line"     once per image and line
      Qualitative Evaluations                    every finding without geometry
        Image View = AP pelvis (+ Probability), Image analysed = Yes | No,
        Reason image not analysed, Comment, Metadata mismatch      (+ Source = the image)
        Hip arthroplasty = Yes | No, Ischial spine sign / Cam deformity / Hip dysplasia /
        Other hip abnormality = Present | Absent (+ Probability), Comment
                                                   (+ Laterality, + Source = the image)

Why this shape (issue 14): a TID 1500 consumer such as OHIF turns every measurement group into
one drawn annotation — it draws the group's first SCOORD, labels it with the group's NUMs and
fails on a group without a SCOORD — and TID 1501 has no row for coded or text findings, which
TID 1500 puts in Qualitative Evaluations. PixelMed's template validator checks the result
(``tests/test_sr_template.py``, ``docs/sr-validator-warnings.md``).

Why Comprehensive SR (not Comprehensive 3D / Enhanced): it carries 2D SCOORDs on the source
image (polylines and an ellipse — what a viewer needs to draw the cup rim, joint and reference
line), validates with dciodvfy, and is the SR class PACS viewers most widely render.

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
    Box,
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
    evaluations: list[hd.sr.ContentItem] = []
    for number, image in enumerate(_ordered_images(findings.images, by_uid), start=1):
        source = by_uid[image.sop_instance_uid]
        hips = sorted(image.hips, key=lambda h: 0 if h.side is Side.RIGHT else 1)
        for hip in hips:
            side_priors = [p for p in priors if p.side is hip.side]
            groups.extend(_hip_groups(number, hip, source, algorithm, side_priors))
        groups.extend(_reference_line_groups(number, image, hips, source, algorithm))
        evaluations.extend(_image_evaluations(image, source))
        for hip in hips:
            evaluations.extend(_hip_evaluations(image, hip, source))

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
    # highdicom insists on at least one measurement group; a report with nothing to draw (all
    # images screened out, code-only hips) gets none: TID 1500 needs Imaging Measurements or
    # Qualitative Evaluations, and an empty group would be one OHIF cannot draw
    placeholder = [hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=_tracking("none", "none"))]
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups or placeholder,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    root = report[0]
    if not groups:
        root.ContentSequence = hd.sr.ContentSequence(
            [i for i in root.ContentSequence if _concept(i) != _IMAGING_MEASUREMENTS]
        )
    root.ContentSequence.append(_qualitative_evaluations(evaluations))

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
    """Tracking UID derived from the source image, side and what the group draws: stable across
    amended SRs, so a viewer can follow "Image 1 right hip: acetabular cup" from one version of
    the report to the next."""
    return hd.sr.TrackingIdentifier(uid=derive_uid("tracking", *parts), identifier=label)


def _side_label(number: int, side: Side) -> str:
    return f"Image {number} {_SIDE_WORD[side]} hip"


_SIDE_WORD = {Side.RIGHT: "right", Side.LEFT: "left"}


def _source_reference(source: Dataset) -> hd.sr.ContentItem:
    """INFERRED FROM the source: IMAGE where it is an image, COMPOSITE otherwise (a screened-out
    non-image object must still be named so the radiologist knows what was rejected)."""
    sop_class = str(source.SOPClassUID)
    kind = hd.sr.ImageContentItem if _is_image_storage(sop_class) else hd.sr.CompositeContentItem
    return kind(
        name=codes.SOURCE,
        referenced_sop_class_uid=sop_class,
        referenced_sop_instance_uid=str(source.SOPInstanceUID),
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )


def _is_image_storage(sop_class_uid: str) -> bool:
    """True for image storage SOP classes: their standard names all contain "Image Storage"
    (CR, DX, CT, Secondary Capture…), which SR, PDF, presentation states… do not."""
    return "Image Storage" in UID(sop_class_uid).name


# --- Qualitative Evaluations (TID 1500 rows 12-14): findings without geometry -----------------


def _qualitative_evaluations(items: Sequence[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    """The report-level Qualitative Evaluations container (TID 1500 row 12) with every coded and
    text finding. Why not inside measurement groups: TID 1501 has no row for them, and a TID 1500
    consumer (OHIF) treats every group under Imaging Measurements as something to draw and fails
    on a group without a SCOORD. Why no TID 4019 here (row 12 allows it): PixelMed 20220618
    matches its TEXT items against row 14 and reports an error on their relationship; the
    algorithm of these findings is the document's device observer (model name = algorithm name),
    with every model and version in Contributing Equipment and Software Versions."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(list(items))
    return container


def _context(source: Dataset, side: Side | None, probability: float | None) -> hd.sr.ContentSequence:
    """What ties a finding to its hip and image: Laterality (HAS CONCEPT MOD, TID 1500 row 13b),
    the model probability (HAS PROPERTIES) and the source image (INFERRED FROM)."""
    items: list[hd.sr.ContentItem] = []
    if side is not None:
        items.append(
            hd.sr.CodeContentItem(
                name=codes.LATERALITY_CONCEPT,
                value=codes.LATERALITY[side],
                relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
            )
        )
    if probability is not None:
        items.append(
            hd.sr.NumContentItem(
                name=codes.PROBABILITY,
                value=round(float(probability), PROBABILITY_DECIMALS),
                unit=codes.NO_UNITS,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        )
    items.append(_source_reference(source))
    return hd.sr.ContentSequence(items)


def _finding(
    name: Code, value: Code, source: Dataset, side: Side | None = None, probability: float | None = None
) -> hd.sr.CodeContentItem:
    item = hd.sr.CodeContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    item.ContentSequence = _context(source, side, probability)
    return item


def _note(name: Code, text: str, source: Dataset, side: Side | None = None) -> hd.sr.TextContentItem:
    item = hd.sr.TextContentItem(name=name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    item.ContentSequence = _context(source, side, None)
    return item


def _image_evaluations(image: ImageFindings, source: Dataset) -> list[hd.sr.ContentItem]:
    """View, analysed yes/no, why not, comments and metadata mismatches of one image."""
    out: list[hd.sr.ContentItem] = []
    if image.view is not None:
        out.append(_finding(codes.IMAGE_VIEW, codes.VIEWS[image.view], source, probability=image.view_probability))
    analysed = image.screened_out is None
    out.append(_finding(codes.IMAGE_ANALYSED, codes.YES if analysed else codes.NO, source))
    if image.screened_out is not None:
        out.append(_finding(codes.REASON_NOT_ANALYSED, codes.SCREEN_REASONS[image.screened_out], source))
        detail = f"Not analysed: {image.screened_out.value}"
        if image.screen_detail:
            detail += f" ({image.screen_detail})"
        out.append(_note(codes.COMMENT, detail, source))
    elif not image.hips:
        out.append(_note(codes.COMMENT, "Analysed; no hip joint found on this image", source))
    if image.low_confidence:
        out.append(_note(codes.COMMENT, f"Low confidence: {image.low_confidence}", source))
    for note in image.notes:
        out.append(_note(codes.COMMENT, note, source))
    for mismatch in image.metadata_mismatches:
        out.append(_note(codes.METADATA_MISMATCH, mismatch, source))
    return out


def _hip_evaluations(image: ImageFindings, hip: HipFindings, source: Dataset) -> list[hd.sr.ContentItem]:
    """Arthroplasty yes/no, morphology flags and every comment of one hip, with its laterality."""
    out: list[hd.sr.ContentItem] = []
    if hip.implant_present is not None:
        value = codes.YES if hip.implant_present else codes.NO
        out.append(_finding(codes.HIP_ARTHROPLASTY, value, source, hip.side, hip.implant_probability))
    for flag in hip.morphology:
        concept = codes.MORPHOLOGY.get(flag.name)
        if concept is None:
            raise ValueError(f'Unknown morphology flag "{flag.name}"; expected one of {sorted(codes.MORPHOLOGY)}.')
        value = codes.PRESENT if flag.present else codes.ABSENT
        out.append(_finding(concept, value, source, hip.side, flag.probability))
    comments = _cup_comments(hip.cup) if hip.cup is not None else []
    if hip.morphology_refusal:
        comments.append(f"Morphology not assessed: {hip.morphology_refusal}")
    if image.low_confidence:
        comments.append(f"Low confidence: {image.low_confidence}")
    comments.extend(hip.notes)
    out.extend(_note(codes.COMMENT, c, source, hip.side) for c in comments)
    return out


def _cup_comments(cup: CupMeasurement) -> list[str]:
    comments = []
    if cup.refusal_reason:
        comments.append(f"Cup angles not reported: {cup.refusal_reason}")
    if cup.anteversion_refusal:
        comments.append(f"Cup anteversion not reported (inclination is): {cup.anteversion_refusal}")
    if cup.flagged:
        comments.append(
            f"Inclination measured against the {cup.inclination_reference}: pelvic landmarks were not "
            "found, treat with caution"
            if cup.inclination_reference.strip().lower() == "image horizontal"
            else "Cup measurement flagged for review"
        )
    return comments


# --- Imaging Measurements (TID 1501): one group per drawn outline -----------------------------


def _group(
    label: str,
    identity: Sequence[str],
    algorithm: hd.sr.AlgorithmIdentification,
    source: Dataset,
    *,
    side: Side | None,
    measurements: Sequence[hd.sr.Measurement] = (),
    regions: Sequence[hd.sr.ScoordContentItem] = (),
    labelled: bool = True,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group whose outlines (row 10c SCOORD, SELECTED FROM the image) come after the
    values: OHIF draws the first SCOORD of a group and labels it with the group's NUMs, so a
    group holds exactly one thing to draw plus, where useful, the same thing in a second form.

    The side goes in twice as a finding site: first the hip itself ("Right hip", HN070 / HN071),
    then the standard SCT "Hip joint" with its Laterality modifier. OHIF 3.13.2 labels a drawn
    group with its NUMs and then the *first* finding site's code meaning, and shows neither the
    Tracking Identifier nor the Laterality modifier, so the pre-coordinated site is what puts the
    side on screen; the standard pair is what TID 1501 readers (highdicom, read_report) use.

    ``labelled=False`` is for an outline that sits next to another labelled outline of the same
    hip (the joint box around a cup or a femoral head): OHIF places every group's label at the
    right-hand end of its outline, half-way down, and always prints a finding site, so the box's
    label would be written over the cup's or head's label. Such a group states its side as a
    Laterality modifier of the group (HAS CONCEPT MOD, which OHIF does not print) instead."""
    sites = (
        [
            hd.sr.FindingSite(anatomic_location=codes.HIP_SITES[side]),
            hd.sr.FindingSite(anatomic_location=codes.HIP_JOINT, laterality=codes.LATERALITY[side]),
        ]
        if side is not None and labelled
        else None
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(label, *identity),
        algorithm_id=copy.deepcopy(algorithm),
        finding_sites=sites,
        measurements=list(measurements) or None,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
            )
        ],
    )
    if side is not None and not labelled:
        content = group[0].ContentSequence
        first_contained = next(i for i, item in enumerate(content) if item.RelationshipType == "CONTAINS")
        content.insert(
            first_contained,
            hd.sr.CodeContentItem(
                name=codes.LATERALITY_CONCEPT,
                value=codes.LATERALITY[side],
                relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
            ),
        )
    for region in regions:
        group[0].ContentSequence.append(region)
    return group


def _region(name: Code, graphic_type: hd.sr.GraphicTypeValues, data: np.ndarray, source: Dataset) -> hd.sr.ScoordContentItem:
    item = hd.sr.ScoordContentItem(
        name=name,
        graphic_type=graphic_type,
        graphic_data=data,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    item.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
            )
        ]
    )
    return item


def _hip_groups(
    number: int,
    hip: HipFindings,
    source: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    priors: Sequence[PriorMeasurement],
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The cup rim as a closed POLYLINE with the angles a radiologist reads (inclination,
    anteversion, changes since the prior) and, in a second group, the exact ELLIPSE with what
    the fit says beyond them (Liaw anteversion, fit quality); the hip joint box; the femoral head
    circle and the sourcil with the angles measured on them (LCE, Tonnis). The head has a group
    of its own, not a second SCOORD in the joint's: OHIF merges groups by tracking UID and draws
    only the first SCOORD of each, so one group cannot show both the box and the head. Every
    group has its outline (a group without one is what OHIF fails on), so angles without their
    geometry are an error of the caller; LCE / Tonnis without a head (findings made before the
    head was carried) stay with the box. The box is labelled (finding sites) only when the hip
    has no cup or head label for it to be written over."""
    out = []
    label = _side_label(number, hip.side)
    uid = str(source.SOPInstanceUID)
    cup = hip.cup
    cup_values = _cup_measurements(cup, priors) if cup is not None else []
    if cup is not None and cup_values and cup.ellipse is None and cup.opening_line is not None:
        # inclination only (a head fills the cup): drawn on the opening's long axis it was read on
        axis = _region(codes.CUP_RIM, hd.sr.GraphicTypeValues.POLYLINE, _points(list(cup.opening_line)), source)
        out.append(
            _group(f"{label}: acetabular cup", (uid, hip.side.value, "cup"), algorithm, source,
                   side=hip.side, measurements=cup_values, regions=[axis])
        )
    elif cup is not None and cup_values:
        if cup.ellipse is None:
            raise ValueError(f"{label}: cup angles without the rim they were measured on (CupMeasurement.ellipse).")
        rim = _region(codes.CUP_RIM, hd.sr.GraphicTypeValues.POLYLINE, ellipse_polyline_data(cup.ellipse), source)
        out.append(
            _group(f"{label}: acetabular cup", (uid, hip.side.value, "cup"), algorithm, source,
                   side=hip.side, measurements=cup_values, regions=[rim])
        )
        ellipse = _region(codes.CUP_RIM, hd.sr.GraphicTypeValues.ELLIPSE, ellipse_graphic_data(cup.ellipse), source)
        out.append(
            _group(f"{label}: acetabular cup ellipse fit", (uid, hip.side.value, "cup ellipse"), algorithm, source,
                   side=hip.side, measurements=_ellipse_measurements(cup), regions=[ellipse])
        )
    joint_values = []
    if hip.lateral_centre_edge_deg is not None:
        joint_values.append(_angle(codes.LATERAL_CENTRE_EDGE_ANGLE, hip.lateral_centre_edge_deg))
    if hip.tonnis_deg is not None:
        joint_values.append(_angle(codes.TONNIS_ANGLE, hip.tonnis_deg))
    head_group = None
    if joint_values and hip.femoral_head is not None:
        # LCE and Tonnis go with the head and sourcil they were measured on; the joint box is only
        # where the head was looked for
        centre, radius = hip.femoral_head
        regions = [_region(codes.FEMORAL_HEAD_OUTLINE, hd.sr.GraphicTypeValues.POLYLINE,
                           circle_polyline_data(centre, radius), source)]
        if hip.sourcil is not None:
            regions.append(_region(codes.SOURCIL, hd.sr.GraphicTypeValues.POLYLINE, _points(list(hip.sourcil)), source))
        head_group = _group(f"{label}: femoral head", (uid, hip.side.value, "femoral head"), algorithm, source,
                            side=hip.side, measurements=joint_values, regions=regions)
        joint_values = []
    if hip.joint_box is not None:
        region = _region(codes.HIP_JOINT_REGION, hd.sr.GraphicTypeValues.POLYLINE, box_polyline_data(hip.joint_box), source)
        out.append(
            _group(f"{label}: hip joint", (uid, hip.side.value, "joint"), algorithm, source,
                   side=hip.side, measurements=joint_values, regions=[region],
                   labelled=not out and head_group is None)
        )
    elif joint_values or head_group is not None:
        raise ValueError(f"{label}: LCE / Tonnis angles without the hip joint box they were measured in.")
    if head_group is not None:
        out.append(head_group)
    return out


def _reference_line_groups(
    number: int,
    image: ImageFindings,
    hips: Sequence[HipFindings],
    source: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Each inclination reference line once per image, in its own group so that a viewer draws
    it (OHIF draws one SCOORD per group). The inclinations measured against it name it by their
    Measurement Method; when a line serves one side only, the group's finding site says which."""
    served: dict[tuple[Point, Point], list[tuple[Side, str]]] = {}
    for hip in hips:
        cup = hip.cup
        if cup is not None and cup.inclination_deg is not None and cup.reference_line is not None:
            served.setdefault(cup.reference_line, []).append((hip.side, cup.inclination_reference.strip()))
    out = []
    for line, users in served.items():
        sides = [side for side, _ in users]
        words = " and ".join(_SIDE_WORD[side] for side in sides)
        label = f"Image {number}: {users[0][1]} (inclination reference, {words} cup{'s' if len(sides) > 1 else ''})"
        region = _region(codes.INCLINATION_REFERENCE_LINE, hd.sr.GraphicTypeValues.POLYLINE,
                         _points([line[0], line[1]]), source)
        out.append(
            _group(label, (str(source.SOPInstanceUID), "reference line", *(side.value for side in sides)),
                   algorithm, source, side=sides[0] if len(sides) == 1 else None, regions=[region])
        )
    return out


def _angle(name: Code, value_deg: float, method: Code | None = None) -> hd.sr.Measurement:
    if not math.isfinite(value_deg):
        raise ValueError(f'Angle "{name.meaning}" is not a finite number: {value_deg!r}.')
    return hd.sr.Measurement(name=name, value=round(float(value_deg), ANGLE_DECIMALS), unit=codes.DEGREE, method=method)


def _cup_measurements(cup: CupMeasurement, priors: Sequence[PriorMeasurement]) -> list[hd.sr.Measurement]:
    """What the cup's label shows, drawn on the rim's POLYLINE: inclination and anteversion
    (Lewinnek on an AP view, Woo-Morrey on a cross-table lateral), then the changes since the
    prior study — at most four NUMs, so that OHIF's five-line label still ends with the side
    (the group's first finding site)."""
    out: list[hd.sr.Measurement] = []
    if cup.inclination_deg is not None:
        out.append(_angle(codes.CUP_INCLINATION, cup.inclination_deg, codes.inclination_method(cup.inclination_reference)))
    if cup.anteversion_deg is not None:
        out.append(_angle(codes.CUP_ANTEVERSION, cup.anteversion_deg, codes.anteversion_method(cup.anteversion_method)))
    prior = _latest(priors)
    if out and prior is not None:
        out.extend(_changes(cup, prior))
    return out


def _ellipse_measurements(cup: CupMeasurement) -> list[hd.sr.Measurement]:
    """What the exact ellipse fit says beyond the label's angles: the Liaw anteversion (an
    alternative reading of the same ellipse, under its own concept name so that no viewer shows
    two different "Acetabular cup anteversion" values) and the fit quality. They sit with the
    ELLIPSE SCOORD in a group of their own, which OHIF does not draw (it draws no tilted
    ellipse), so the cup's label in OHIF keeps to the angles a radiologist reads first."""
    out: list[hd.sr.Measurement] = []
    if cup.anteversion_liaw_deg is not None and cup.anteversion_method.strip().lower() != "liaw":
        out.append(_angle(codes.CUP_ANTEVERSION_LIAW, cup.anteversion_liaw_deg, codes.METHOD_ANTEVERSION_LIAW))
    out.append(
        hd.sr.Measurement(
            name=codes.ELLIPSE_FIT_QUALITY,
            value=round(float(cup.quality), PROBABILITY_DECIMALS),
            unit=codes.NO_UNITS,
        )
    )
    return out


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


RIM_POLYLINE_POINTS = 72  # 5 degrees apart: within 0.1 px of the ellipse for rims up to 150 px across


def ellipse_polyline_data(ellipse: Ellipse, points: int = RIM_POLYLINE_POINTS) -> np.ndarray:
    """Closed SCOORD POLYLINE (the first point repeated last, PS3.3 C.18.6.1.2) tracing the
    ellipse, in DICOM image coordinates. Why: viewers draw an ELLIPSE only when its axes are
    parallel to the image axes (OHIF: "oblique ellipse not yet supported"), and a cup rim is
    always tilted; the same rim as a polyline is drawn everywhere."""
    if points < 8:
        raise ValueError(f'Argument "points" must be at least 8, got {points}.')
    a = math.radians(ellipse.angle_deg)
    t = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    u, v = ellipse.semi_major * np.cos(t), ellipse.semi_minor * np.sin(t)
    xs = ellipse.cx + u * math.cos(a) - v * math.sin(a)
    ys = ellipse.cy + u * math.sin(a) + v * math.cos(a)
    outline = [Point(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
    return _points([*outline, outline[0]])


HEAD_POLYLINE_POINTS = 72  # 5 degrees apart: within 0.1 px of the circle for heads up to 75 px in radius


def circle_polyline_data(centre: Point, radius: float, points: int = HEAD_POLYLINE_POINTS) -> np.ndarray:
    """Closed SCOORD POLYLINE tracing a circle (the femoral head), in DICOM image coordinates.
    Why not SCOORD CIRCLE: viewers that draw SR geometry draw polylines everywhere, circles
    rarely (OHIF maps a CIRCLE to nothing it draws from a TID 1500 group)."""
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f'Argument "radius" must be a positive number, got {radius!r}.')
    return ellipse_polyline_data(Ellipse(centre.x, centre.y, radius, radius, 0.0), points)


def circle_from_polyline(outline: Sequence[Point]) -> tuple[Point, float]:
    """Centre and radius of a closed circle POLYLINE (domain coordinates): the mean of its
    distinct points and their mean distance from it."""
    pts = np.array([[p.x, p.y] for p in outline[:-1]], dtype=np.float64)
    centre = pts.mean(axis=0)
    radius = float(np.hypot(*(pts - centre).T).mean())
    return Point(float(centre[0]), float(centre[1])), radius


def box_polyline_data(box: Box) -> np.ndarray:
    """Closed SCOORD POLYLINE around a detector box (clockwise from the top-left corner)."""
    corners = [Point(box.x0, box.y0), Point(box.x1, box.y0), Point(box.x1, box.y1), Point(box.x0, box.y1)]
    return _points([*corners, corners[0]])


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
    """What our SR says about one image ("Image 1") or one hip on it ("Image 1 right hip"),
    gathered from its measurement groups and its qualitative evaluations.

    ``tracking_uid`` is the first tracking UID of the image's or hip's measurement groups
    (``""`` when it has none, e.g. a hip with code-only findings); ``tracking_uids`` lists them
    all (cup, hip joint, reference line)."""

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
    cup_rim_outline: list[Point] | None = None  # the closed POLYLINE viewers draw
    joint_outline: list[Point] | None = None  # hip joint box as a closed POLYLINE
    femoral_head: tuple[Point, float] | None = None  # centre and radius, from its closed POLYLINE
    sourcil: tuple[Point, Point] | None = None  # medial end, lateral end
    reference_line: tuple[Point, Point] | None = None
    comments: list[str] = field(default_factory=list)
    metadata_mismatches: list[str] = field(default_factory=list)
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    tracking_uids: list[str] = field(default_factory=list)
    tracking_identifiers: list[str] = field(default_factory=list)

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
_MEASUREMENT_GROUP = ("DCM", "125007")
_IMAGING_MEASUREMENTS = ("DCM", "126010")
_TRACKING_IDENTIFIER = ("DCM", "112039")
_TRACKING_UID = ("DCM", "112040")
_FINDING_SITE = ("SCT", "363698007")
_DEVICE_MODEL_NAME = ("DCM", "121015")  # TID 1004, observer context of the document
_MEASUREMENT_METHOD = ("SCT", "370129005")
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
        if child.get("ValueType") == "NUM" and _concept(child) == _key(codes.PROBABILITY):
            return _num_value(child)
    return None


def _outline(item: Dataset) -> list[Point]:
    data = np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2) - PIXEL_ORIGIN_SHIFT
    return [Point(float(x), float(y)) for x, y in data]


class _Reader:
    """Collects every item of the SR onto the image / hip it is about, keyed by the source
    SOP Instance UID and the side (``None`` for the image itself)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, Side | None], ReportedGroup] = {}
        self.image_order: list[str] = []
        self.lines: dict[str, list[tuple[Side | None, tuple[Point, Point]]]] = {}

    def record(self, uid: str, side: Side | None) -> ReportedGroup:
        if uid not in self.image_order:
            self.image_order.append(uid)
        self.records.setdefault((uid, None), ReportedGroup("", "", uid, None))
        key = (uid, side)
        if key not in self.records:
            self.records[key] = ReportedGroup("", "", uid, side)
        return self.records[key]

    def groups(self) -> list[ReportedGroup]:
        out = []
        for number, uid in enumerate(self.image_order, start=1):
            image = self.records[(uid, None)]
            image.label = f"Image {number}"
            out.append(image)
            for side in (Side.RIGHT, Side.LEFT):
                hip = self.records.get((uid, side))
                if hip is None:
                    continue
                hip.label = _side_label(number, side)
                hip.view = hip.view or image.view
                hip.algorithm_name = hip.algorithm_name or image.algorithm_name
                hip.algorithm_version = hip.algorithm_version or image.algorithm_version
                if hip.reference_line is None and hip.inclination:
                    hip.reference_line = next(
                        (line for s, line in self.lines.get(uid, []) if s in (None, side)), None
                    )
                out.append(hip)
        return out

    # -- measurement groups ------------------------------------------------------------------

    def read_group(self, group: Dataset) -> None:
        content = list(group.get("ContentSequence", []))
        side = _group_side(content)
        uid = _group_source(content)
        if uid is None:
            return
        result = self.record(uid, side)
        for item in content:
            value_type = item.get("ValueType")
            concept = _concept(item) if value_type else ("", "")
            if value_type == "UIDREF" and concept == _TRACKING_UID:
                result.tracking_uids.append(str(item.UID))
                result.tracking_uid = result.tracking_uid or str(item.UID)
            elif value_type == "TEXT" and concept == _TRACKING_IDENTIFIER:
                result.tracking_identifiers.append(str(item.TextValue))
            elif value_type == "TEXT" and concept == _ALGORITHM_NAME:
                result.algorithm_name = str(item.TextValue)
            elif value_type == "TEXT" and concept == _ALGORITHM_VERSION:
                result.algorithm_version = str(item.TextValue)
            elif value_type == "NUM":
                _read_num(result, concept, item)
            elif value_type == "SCOORD":
                self._read_region(result, uid, side, concept, item)
            elif item.RelationshipType == "CONTAINS" and value_type in ("CODE", "TEXT"):
                _read_finding(result, concept, item)  # SRs written before the evaluations moved

    def _read_region(self, result: ReportedGroup, uid: str, side: Side | None, concept: tuple[str, str],
                     item: Dataset) -> None:
        graphic_type = str(item.GraphicType)
        if concept == _key(codes.CUP_RIM) and graphic_type == "ELLIPSE":
            result.cup_rim = ellipse_from_graphic_data(np.asarray(item.GraphicData, dtype=np.float64))
        elif concept == _key(codes.CUP_RIM) and graphic_type == "POLYLINE":
            result.cup_rim_outline = _outline(item)
        elif concept == _key(codes.HIP_JOINT_REGION):
            result.joint_outline = _outline(item)
        elif concept == _key(codes.FEMORAL_HEAD_OUTLINE):
            result.femoral_head = circle_from_polyline(_outline(item))
        elif concept == _key(codes.SOURCIL):
            medial, lateral = _outline(item)[:2]
            result.sourcil = (medial, lateral)
        elif concept == _key(codes.INCLINATION_REFERENCE_LINE):
            a, b = _outline(item)[:2]
            self.lines.setdefault(uid, []).append((side, (a, b)))

    # -- qualitative evaluations ---------------------------------------------------------------

    def read_evaluations(self, container: Dataset, name: str | None, version: str | None) -> None:
        """``name`` and ``version``: the algorithm of the findings (the document's device)."""
        for item in container.get("ContentSequence", []):
            concept = _concept(item)
            if item.RelationshipType != "CONTAINS":
                continue
            uid, side = _finding_context(item)
            if uid is None:
                continue
            result = self.record(uid, side)
            result.algorithm_name = result.algorithm_name or name
            result.algorithm_version = result.algorithm_version or version
            _read_finding(result, concept, item)


def _group_side(content: Sequence[Dataset]) -> Side | None:
    """The side of a group: the Laterality of its "Hip joint" finding site, or of the group
    itself (an unlabelled joint box, see ``_group``)."""
    for item in content:
        if item.get("ValueType") == "CODE" and _concept(item) == _FINDING_SITE:
            for child in item.get("ContentSequence", []):
                if child.get("ValueType") == "CODE" and _concept(child) == _key(codes.LATERALITY_CONCEPT):
                    return _SIDE_BY_CODE.get(_code_value(child))
        elif (item.get("ValueType") == "CODE" and _concept(item) == _key(codes.LATERALITY_CONCEPT)
              and item.RelationshipType == "HAS CONCEPT MOD"):
            return _SIDE_BY_CODE.get(_code_value(item))
    return None


def _group_source(content: Sequence[Dataset]) -> str | None:
    """The group's source: its IMAGE / COMPOSITE item, else the image an outline is drawn on."""
    for item in content:
        if item.get("ValueType") in ("IMAGE", "COMPOSITE") and item.RelationshipType == "CONTAINS":
            return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    for item in content:
        if item.get("ValueType") == "SCOORD":
            for child in item.get("ContentSequence", []):
                if child.get("ValueType") == "IMAGE":
                    return str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return None


def _finding_context(item: Dataset) -> tuple[str | None, Side | None]:
    uid: str | None = None
    side: Side | None = None
    for child in item.get("ContentSequence", []):
        value_type = child.get("ValueType")
        if value_type in ("IMAGE", "COMPOSITE"):
            uid = str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif value_type == "CODE" and _concept(child) == _key(codes.LATERALITY_CONCEPT):
            side = _SIDE_BY_CODE.get(_code_value(child))
    return uid, side


def read_report(ds: Dataset) -> list[ReportedGroup]:
    """Decode one of our SRs: one :class:`ReportedGroup` per image, then one per hip of it.

    Reads the structure written since issue 14 (outlines in measurement groups, coded and text
    findings in Qualitative Evaluations) and the one before it (everything in per-image and
    per-hip measurement groups). Raises ``ValueError`` when ``ds`` is not a TID 1500
    Measurement Report.
    """
    templates = {str(t.get("TemplateIdentifier", "")) for t in ds.get("ContentTemplateSequence", [])}
    if ds.get("ValueType") != "CONTAINER" or "ConceptNameCodeSequence" not in ds or "1500" not in templates:
        raise ValueError("Dataset is not a TID 1500 Measurement Report.")
    reader = _Reader()
    evaluations = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") != "CONTAINER":
            continue
        concept = _concept(item)
        if concept == _IMAGING_MEASUREMENTS:
            for group in item.get("ContentSequence", []):
                if group.get("ValueType") == "CONTAINER" and _concept(group) == _MEASUREMENT_GROUP:
                    reader.read_group(group)
        elif concept == _key(codes.QUALITATIVE_EVALUATIONS):
            evaluations.append(item)
    # images are numbered in the order the evaluations name them (every image has at least
    # "Image analysed" there), as the writer numbered them
    order_from_groups = list(reader.image_order)
    reader.image_order = []
    name = next(
        (str(i.TextValue) for i in ds.get("ContentSequence", [])
         if i.get("ValueType") == "TEXT" and _concept(i) == _DEVICE_MODEL_NAME),
        None,
    )
    versions = ds.get("SoftwareVersions")
    version = None if not versions else str(versions if isinstance(versions, str) else versions[0])
    for container in evaluations:
        reader.read_evaluations(container, name, version)
    reader.image_order += [u for u in order_from_groups if u not in reader.image_order]
    return reader.groups()


def _read_finding(result: ReportedGroup, concept: tuple[str, str], item: Dataset) -> None:
    if item.ValueType == "TEXT":
        if concept == _key(codes.COMMENT):
            result.comments.append(str(item.TextValue))
        elif concept == _key(codes.METADATA_MISMATCH):
            result.metadata_mismatches.append(str(item.TextValue))
        return
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
    value = _num_value(item)
    children = list(item.get("ContentSequence", []))
    method_meaning = next(
        (str(c.ConceptCodeSequence[0].CodeMeaning) for c in children
         if c.get("ValueType") == "CODE" and _concept(c) == _MEASUREMENT_METHOD),
        None,
    )
    if concept == _key(codes.CUP_INCLINATION):
        result.inclination.append(ReportedAngle(value, method_meaning))
    elif concept in (_key(codes.CUP_ANTEVERSION), _key(codes.CUP_ANTEVERSION_LIAW)):
        result.anteversion.append(ReportedAngle(value, method_meaning))
    elif concept == _key(codes.LATERAL_CENTRE_EDGE_ANGLE):
        result.lateral_centre_edge_deg = value
    elif concept == _key(codes.TONNIS_ANGLE):
        result.tonnis_deg = value
    elif concept == _key(codes.ELLIPSE_FIT_QUALITY):
        result.fit_quality = value
    elif concept == _key(codes.CHANGE_IN_INCLINATION):
        result.change_in_inclination_deg = value
    elif concept == _key(codes.CHANGE_IN_ANTEVERSION):
        result.change_in_anteversion_deg = value
    for child in children:  # SRs before issue 14 hung the outlines under each angle
        child_type = child.get("ValueType")
        child_concept = _concept(child) if child_type else ("", "")
        if child_type == "SCOORD" and child_concept == _key(codes.CUP_RIM) and result.cup_rim is None:
            result.cup_rim = ellipse_from_graphic_data(np.asarray(child.GraphicData, dtype=np.float64))
        elif child_type == "SCOORD" and child_concept == _key(codes.INCLINATION_REFERENCE_LINE):
            a, b = _outline(child)[:2]
            result.reference_line = (a, b)
        elif child_concept == _key(codes.STUDY_DATE):
            result.prior_study_date = str(child.Date)
        elif child_concept == _key(codes.STUDY_INSTANCE_UID):
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
    "circle_from_polyline",
    "circle_polyline_data",
    "ellipse_from_graphic_data",
    "ellipse_graphic_data",
    "fill_patient_study",
    "header_without_pixels",
    "predecessor_uids",
    "read_report",
]
