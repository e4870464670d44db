"""Every coded concept the node writes into DICOM, in one place.

Why one module: a PACS admin or a radiologist asking "what does code HN012 mean?" must find the
answer in one file (and in ``docs/results.md``, which is generated from the same table by hand
and checked against it in the tests), and the readers of our SR (acceptance tests, the
longitudinal registry) must use exactly the codes the writer used.

Standard terminologies come first: SNOMED CT (``SCT``), DICOM (``DCM``), UCUM. A concept is
given a private code only where no standard code with the right meaning exists in the DICOM
content-mapping resource (PS3.16) that ships with pydicom — we do not guess SNOMED CT
identifiers we cannot verify offline, because a wrong standard code is worse than an honest
private one. Private codes use the scheme designator ``99HIPNODE``; every SR that carries one
declares the scheme in its Coding Scheme Identification Sequence (:func:`coding_scheme_item`).

Private code values are stable identifiers: never renumber or reuse one; add new values at the
end of their block.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from node.domain import ScreenReason, Side, View

PRIVATE_SCHEME = "99HIPNODE"
PRIVATE_SCHEME_NAME = "hipnode private codes"
PRIVATE_SCHEME_ORGANISATION = "hipnode project"
PRIVATE_SCHEME_VERSION = "1"


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# --------------------------------------------------------------------------------------------
# Standard codes (SCT, DCM, UCUM)
# --------------------------------------------------------------------------------------------

# Document title and procedure (TID 1500). "Procedure reported" must come from CID 100
# (Quantitative Diagnostic Imaging Procedures); plain radiography (SCT 168537006) is not in it.
# The current standard's CID 100 has one X-ray member, LN 43468-8 "XR unspecified body region",
# but validators built on older tables (PixelMed 20220618, Debian 12) do not know it and report
# an error; SCT 363679005 "Imaging procedure" is in CID 100 in every edition. That the images
# are radiographs is stated by the referenced images' Modality and the Image View findings.
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")

# Containers and modifiers of TID 1500 / 1501 that highdicom does not write for us.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
LATERALITY_CONCEPT = Code("272741003", "SCT", "Laterality")
SOURCE = Code("260753009", "SCT", "Source")

# Anatomy and laterality (finding site of every per-side measurement group).
HIP_JOINT = Code("24136001", "SCT", "Hip joint")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")

# Coded answers.
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")

# Concept names with a standard code.
IMAGE_VIEW = Code("111031", "DCM", "Image View")
PROBABILITY = Code("122157", "DCM", "Probability")
COMMENT = Code("121106", "DCM", "Comment")
STUDY_DATE = Code("111060", "DCM", "Study Date")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")

# Purpose of reference for the algorithm in the Contributing Equipment Sequence (IHE AIR).
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")

# Purpose of reference of the source image in a Secondary Capture's Source Image Sequence.
SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")

# Units.
DEGREE = Code("deg", "UCUM", "degree")
NO_UNITS = Code("1", "UCUM", "no units")

# --------------------------------------------------------------------------------------------
# Private codes (99HIPNODE) — no standard code with this meaning in PS3.16
# --------------------------------------------------------------------------------------------

# Radiograph view (value of IMAGE_VIEW): a projection *and* the imaged region, which no single
# standard code expresses ("antero-posterior" alone does not say pelvis or hip).
VIEW_AP_PELVIS = _private("HN001", "AP pelvis")
VIEW_AP_HIP = _private("HN002", "AP hip")
VIEW_LATERAL_HIP = _private("HN003", "Lateral hip")
VIEW_OBLIQUE_HIP = _private("HN004", "Oblique hip")
VIEW_OTHER = _private("HN005", "Other view")

# Implant and cup angles.
HIP_ARTHROPLASTY = _private("HN010", "Hip arthroplasty")
CUP_INCLINATION = _private("HN011", "Acetabular cup inclination")
CUP_ANTEVERSION = _private("HN012", "Acetabular cup anteversion")
CUP_RIM = _private("HN013", "Acetabular cup rim")
INCLINATION_REFERENCE_LINE = _private("HN014", "Inclination reference line")
ELLIPSE_FIT_QUALITY = _private("HN015", "Cup ellipse fit quality")
# Outline of the detector's hip joint box (SCOORD POLYLINE). DCM 111030 "Image Region" would say
# the same, but it is TID 1410's row: validators (PixelMed) then check the group as a planar ROI.
HIP_JOINT_REGION = _private("HN016", "Hip joint region")
# The geometry LCE and Tonnis are measured on: the femoral head circle (closed SCOORD POLYLINE)
# and the sourcil from its medial to its lateral end (SCOORD POLYLINE, 2 points).
FEMORAL_HEAD_OUTLINE = _private("HN017", "Femoral head outline")
SOURCIL = _private("HN018", "Acetabular sourcil (medial to lateral end)")
# The second anteversion of an AP cup, by Liaw's method, under a name of its own: viewers label a
# value with its concept name only (OHIF 3.13.2 shows no method), and two lines reading
# "Acetabular cup anteversion" with different values would be ambiguous. The Measurement Method
# modifier (HN024) stays on it. SRs before this code wrote HN012 with method HN024; readers take both.
CUP_ANTEVERSION_LIAW = _private("HN026", "Acetabular cup anteversion (Liaw)")
# The hip as a pre-coordinated finding site, written as the FIRST finding site of a measurement
# group, before the standard SCT "Hip joint" + Laterality: OHIF 3.13.2 labels a group with the
# first finding site's code meaning and never shows the Laterality modifier, so this is how the
# side reaches a viewer's label. SNOMED CT has lateralized hip structures, but their identifiers
# cannot be verified offline (see docs/results.md, code table).
RIGHT_HIP = _private("HN070", "Right hip")
LEFT_HIP = _private("HN071", "Left hip")

# Measurement methods (value of SCT 370129005 "Measurement Method").
METHOD_INCLINATION_INTER_TEARDROP = _private("HN020", "Inclination: cup ellipse long axis to inter-teardrop line")
METHOD_INCLINATION_BI_ISCHIAL = _private("HN021", "Inclination: cup ellipse long axis to bi-ischial line")
METHOD_INCLINATION_HORIZONTAL = _private("HN022", "Inclination: cup ellipse long axis to image horizontal")
METHOD_ANTEVERSION_LEWINNEK = _private("HN023", "Anteversion, Lewinnek: arcsin(minor/major axis)")
METHOD_ANTEVERSION_LIAW = _private("HN024", "Anteversion, Liaw")
METHOD_ANTEVERSION_WOO_MORREY = _private("HN025", "Anteversion on cross-table lateral, Woo-Morrey")

# Morphology (qualitative evaluations with the model probability as a property).
ISCHIAL_SPINE_SIGN = _private("HN030", "Ischial spine sign")
CAM_DEFORMITY = _private("HN031", "Cam deformity")
HIP_DYSPLASIA = _private("HN032", "Hip dysplasia")
OTHER_HIP_ABNORMALITY = _private("HN033", "Other hip abnormality")
LATERAL_CENTRE_EDGE_ANGLE = _private("HN034", "Lateral centre-edge angle (Wiberg)")
TONNIS_ANGLE = _private("HN035", "Tonnis angle")

# Longitudinal comparison with a prior study of the same patient and side.
CHANGE_IN_INCLINATION = _private("HN040", "Change in acetabular cup inclination since prior")
CHANGE_IN_ANTEVERSION = _private("HN041", "Change in acetabular cup anteversion since prior")
PRIOR_CUP_INCLINATION = _private("HN042", "Prior acetabular cup inclination")
PRIOR_CUP_ANTEVERSION = _private("HN043", "Prior acetabular cup anteversion")

# Screening and metadata (image-level groups).
IMAGE_ANALYSED = _private("HN050", "Image analysed")
REASON_NOT_ANALYSED = _private("HN051", "Reason image not analysed")
METADATA_MISMATCH = _private("HN052", "Metadata mismatch")

# Reasons an image was not analysed (value of REASON_NOT_ANALYSED), one per ScreenReason.
SCREEN_REASONS: dict[ScreenReason, Code] = {
    ScreenReason.UNDECODABLE: _private("HN060", "Undecodable pixel data"),
    ScreenReason.NOT_IMAGE: _private("HN061", "Not an image storage object"),
    ScreenReason.MODALITY: _private("HN062", "Modality not accepted"),
    ScreenReason.IMAGE_TYPE: _private("HN063", "Image type not accepted"),
    ScreenReason.SIZE: _private("HN064", "Image size out of range"),
    ScreenReason.BIT_DEPTH: _private("HN065", "Bit depth out of range"),
    ScreenReason.BLANK: _private("HN066", "Blank or constant image"),
    ScreenReason.NOT_RADIOGRAPH: _private("HN067", "Not a radiograph"),
    ScreenReason.NOT_HIP: _private("HN068", "Not a hip or pelvis radiograph"),
}

# --------------------------------------------------------------------------------------------
# Lookups from domain values
# --------------------------------------------------------------------------------------------

VIEWS: dict[View, Code] = {
    View.AP_PELVIS: VIEW_AP_PELVIS,
    View.AP_HIP: VIEW_AP_HIP,
    View.LATERAL_HIP: VIEW_LATERAL_HIP,
    View.OBLIQUE_HIP: VIEW_OBLIQUE_HIP,
    View.OTHER: VIEW_OTHER,
}

LATERALITY: dict[Side, Code] = {Side.RIGHT: RIGHT, Side.LEFT: LEFT}

# Side → the hip as a finding site (HN070 / HN071), for viewers' labels.
HIP_SITES: dict[Side, Code] = {Side.RIGHT: RIGHT_HIP, Side.LEFT: LEFT_HIP}

# MorphologyFlag.name (domain.MORPHOLOGY_FLAGS) → concept.
MORPHOLOGY: dict[str, Code] = {
    "ischial_spine_sign": ISCHIAL_SPINE_SIGN,
    "cam_deformity": CAM_DEFORMITY,
    "dysplasia": HIP_DYSPLASIA,
    "other_abnormality": OTHER_HIP_ABNORMALITY,
}

# CupMeasurement.inclination_reference → method. Matching is case-insensitive.
INCLINATION_METHODS: dict[str, Code] = {
    "inter-teardrop line": METHOD_INCLINATION_INTER_TEARDROP,
    "bi-ischial line": METHOD_INCLINATION_BI_ISCHIAL,
    "image horizontal": METHOD_INCLINATION_HORIZONTAL,
}

# CupMeasurement.anteversion_method → method.
ANTEVERSION_METHODS: dict[str, Code] = {
    "lewinnek": METHOD_ANTEVERSION_LEWINNEK,
    "liaw": METHOD_ANTEVERSION_LIAW,
    "woo-morrey": METHOD_ANTEVERSION_WOO_MORREY,
}


def inclination_method(reference: str) -> Code:
    """Method code for an inclination reference line name; unknown names are an error (a
    silently wrong method would misstate how the angle was measured)."""
    try:
        return INCLINATION_METHODS[reference.strip().lower()]
    except KeyError:
        raise ValueError(
            f'Unknown inclination reference "{reference}"; expected one of {sorted(INCLINATION_METHODS)}.'
        ) from None


def anteversion_method(method: str) -> Code:
    """Method code for an anteversion method name (Lewinnek, Liaw, Woo-Morrey)."""
    try:
        return ANTEVERSION_METHODS[method.strip().lower()]
    except KeyError:
        raise ValueError(
            f'Unknown anteversion method "{method}"; expected one of {sorted(ANTEVERSION_METHODS)}.'
        ) from None


def all_codes() -> list[Code]:
    """Every code defined here (used by the docs test and for scheme declarations)."""
    found: list[Code] = [v for v in globals().values() if isinstance(v, Code)]
    for table in (SCREEN_REASONS, VIEWS, LATERALITY, HIP_SITES, MORPHOLOGY, INCLINATION_METHODS, ANTEVERSION_METHODS):
        found.extend(table.values())
    unique: dict[tuple[str, str], Code] = {}
    for code in found:
        unique.setdefault((code.scheme_designator, code.value), code)
    return list(unique.values())


def uses_private_scheme(codes_used: Iterable[Code]) -> bool:
    return any(c.scheme_designator == PRIVATE_SCHEME for c in codes_used)


def coding_scheme_item() -> Dataset:
    """Coding Scheme Identification Sequence item declaring ``99HIPNODE`` (PS3.3 C.12.1)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeVersion = PRIVATE_SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANISATION
    return item
