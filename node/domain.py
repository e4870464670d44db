"""Plain types shared by every stage.

Stages import this module (and ``config`` / ``registry``), never each other, so the contract
between receive → series → jobs → infer → analyse → compose → dispatch is written down here once.

Image coordinates everywhere are pixel coordinates of the *stored* image: ``x`` is the column,
``y`` the row, origin at the top-left pixel centre. Radiographic convention: on an AP image the
patient's right side is displayed on the image's left.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum


class ModelUnavailable(RuntimeError):
    """A model named in the configuration cannot be loaded: the worker refuses to start."""


class View(str, Enum):
    """Radiograph view as decided by the triage model (metadata only hints)."""

    AP_PELVIS = "ap_pelvis"
    AP_HIP = "ap_hip"
    LATERAL_HIP = "lateral_hip"
    OBLIQUE_HIP = "oblique_hip"
    OTHER = "other"


class Side(str, Enum):
    """Patient side (not image side)."""

    RIGHT = "R"
    LEFT = "L"

    @property
    def other(self) -> Side:
        return Side.LEFT if self is Side.RIGHT else Side.RIGHT


class InstanceState(str, Enum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    SCREENED_OUT = "screened_out"


class SeriesState(str, Enum):
    OPEN = "open"
    COMPLETE = "complete"
    REOPENED = "reopened"


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class DeliveryState(str, Enum):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    VISIBLE = "visible"  # sent, and read back from the destination by C-FIND
    FAILED = "failed"


class ResultKind(str, Enum):
    SR = "sr"
    SC = "sc"
    GSPS = "gsps"  # Grayscale Softcopy Presentation State


class ScreenReason(str, Enum):
    """Why an image was not analysed. Stated plainly in the SR and in the registry."""

    UNDECODABLE = "undecodable pixel data"
    NOT_IMAGE = "not an image storage object"
    MODALITY = "modality not accepted"
    IMAGE_TYPE = "image type not accepted"
    SIZE = "image size out of range"
    BIT_DEPTH = "bit depth out of range"
    BLANK = "blank or constant image"
    NOT_RADIOGRAPH = "not a radiograph"
    NOT_HIP = "not a hip or pelvis radiograph"


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in image pixels with a detector label and confidence."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def centre(self) -> Point:
        return Point((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)


@dataclass(frozen=True)
class Ellipse:
    """Ellipse in image pixels; ``angle_deg`` is the direction of the major axis measured from
    the +x (column) axis towards +y (down the image), in [0, 180)."""

    cx: float
    cy: float
    semi_major: float
    semi_minor: float
    angle_deg: float

    def major_axis_endpoints(self) -> tuple[Point, Point]:
        import math

        a = math.radians(self.angle_deg)
        dx, dy = self.semi_major * math.cos(a), self.semi_major * math.sin(a)
        return Point(self.cx - dx, self.cy - dy), Point(self.cx + dx, self.cy + dy)


@dataclass(frozen=True)
class CupMeasurement:
    """Acetabular cup angles for one side of one image.

    A measurement that is not trustworthy carries no numbers and a ``refusal_reason`` instead.
    A partial one - inclination without anteversion, where the film shows the opening's direction
    but not its width (a head filling the cup) - carries ``anteversion_refusal`` saying why.
    """

    side: Side
    inclination_deg: float | None
    anteversion_deg: float | None
    inclination_reference: str  # "inter-teardrop line" | "bi-ischial line" | "image horizontal"
    anteversion_method: str  # "Lewinnek" | "Liaw" | "Woo-Morrey"
    anteversion_liaw_deg: float | None = None
    ellipse: Ellipse | None = None
    reference_line: tuple[Point, Point] | None = None
    quality: float = 0.0  # 0..1, fit quality
    refusal_reason: str | None = None
    flagged: bool = False  # e.g. horizontal reference used as a last resort
    anteversion_refusal: str | None = None  # inclination measured, anteversion not: why
    # inclination only: the opening's long axis (the rim's two ends), what it was measured on
    opening_line: tuple[Point, Point] | None = None
    # how the angles were read where not from the rim's own edge (for the SR's comments)
    note: str | None = None


@dataclass(frozen=True)
class MorphologyFlag:
    """One morphology finding; ``name`` is one of MORPHOLOGY_FLAGS."""

    name: str
    probability: float
    threshold: float

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


MORPHOLOGY_FLAGS: tuple[str, ...] = ("ischial_spine_sign", "cam_deformity", "dysplasia", "other_abnormality")


@dataclass
class HipFindings:
    """Everything known about one hip (side) on one image."""

    side: Side
    implant_present: bool | None = None
    implant_probability: float | None = None
    joint_box: Box | None = None
    cup_box: Box | None = None
    cup: CupMeasurement | None = None
    morphology: list[MorphologyFlag] = field(default_factory=list)
    lateral_centre_edge_deg: float | None = None
    tonnis_deg: float | None = None
    # the geometry LCE / Tönnis were measured on (image pixels), for viewers to draw: the femoral
    # head circle (centre, radius) and the sourcil's medial and lateral ends
    femoral_head: tuple[Point, float] | None = None
    sourcil: tuple[Point, Point] | None = None
    morphology_refusal: str | None = None  # e.g. "hardware in joint region"
    # what the SR must say beside the values: uncertainty and why, what was not assessed and
    # why, a flag that disagrees with a measurement (one line each, in the SR as Comments)
    notes: list[str] = field(default_factory=list)


@dataclass
class ImageFindings:
    """Result of the pipeline for one source image."""

    sop_instance_uid: str
    sop_class_uid: str
    view: View | None = None
    view_probability: float | None = None
    imaged_sides: tuple[Side, ...] = ()
    hips: list[HipFindings] = field(default_factory=list)
    screened_out: ScreenReason | None = None
    screen_detail: str = ""
    metadata_mismatches: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how it was read, untrusted spacing…
    # set when the image looks unlike what the models were trained on: results are marked
    # low confidence in the SR, with this reason
    low_confidence: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """Name and version of a model or algorithm that contributed to a result (IHE AIR)."""

    name: str
    version: str
    manufacturer: str = "hipnode"


@dataclass
class SeriesFindings:
    series_instance_uid: str
    study_instance_uid: str
    images: list[ImageFindings] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)


@dataclass(frozen=True)
class PriorMeasurement:
    """A cup measurement from an earlier study of the same patient and side (longitudinal SR)."""

    side: Side
    study_instance_uid: str
    study_date: str  # DICOM DA, may be ""
    inclination_deg: float | None
    anteversion_deg: float | None


# Detector classes, in output index order. Side of a cup/stem/teardrop is decided by position
# (which hip_joint box contains it, or which side of the pelvic midline).
DETECTOR_CLASSES: tuple[str, ...] = (
    "hip_joint_right",
    "hip_joint_left",
    "cup",
    "stem",
    "other_hardware",
    "teardrop",
    "ischial_tuberosity",
)
# detector labels of the two hip joints, by patient side
JOINT_LABELS: dict[str, Side] = {"hip_joint_right": Side.RIGHT, "hip_joint_left": Side.LEFT}


def best_joint_boxes(boxes: Iterable[Box]) -> dict[Side, Box]:
    """The highest-scoring hip-joint box per side (the first one on a tie)."""
    best: dict[Side, Box] = {}
    for b in boxes:
        side = JOINT_LABELS.get(b.label)
        if side is not None and (side not in best or b.score > best[side].score):
            best[side] = b
    return best
