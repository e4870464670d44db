"""Secondary Capture overlays: the radiograph with what the AI saw, burned in.

Why a burned-in SC next to the SR: every PACS viewer displays an SC, few draw SR SCOORDs. The
overlay shows the detector boxes, the fitted cup ellipse, the inclination reference line, the
angle values, morphology heatmaps where given, and a banner "AI RESULT - NOT FOR DIAGNOSIS" on
every image, so it can never be mistaken for the original radiograph.

Text is drawn with the font built into OpenCV (``FONT_HERSHEY_SIMPLEX``: the Hershey vector font
in OpenCV 4, a bundled sans font in OpenCV 5 — no font files, nothing downloaded). Only printable
ASCII is used so both render it, hence "-" instead of an en dash and "deg" instead of "°".

Geometry: findings are in the source's stored-pixel coordinates (``node.domain``); ``display``
may have another size (it is scaled to at most ``max_size_px``), so every coordinate is scaled
by display/source before drawing. Nothing patient-identifying is burned in.

The SC is of modality OT with Image Type DERIVED\\SECONDARY: our own screening rejects that
image type, so an overlay routed back to the node is never analysed again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Literal

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from node.compose import codes
from node.compose.sr import fill_patient_study, header_without_pixels
from node.compose.uids import OutputUIDs, sc_uids
from node.domain import Box, CupMeasurement, HipFindings, ImageFindings, ModelInfo, Point, Side

Compression = Literal["jpeg2000-lossless", "jpeg-baseline", "none"]
BANNER = "AI RESULT - NOT FOR DIAGNOSIS"
SERIES_DESCRIPTION = "AI overlays (hipnode) - NOT FOR DIAGNOSIS"
DEFAULT_MAX_SIZE_PX = 2048
#: One JPEG 2000 encode at a time per process: pylibjpeg-openjpeg 2.6's ``encode`` run from two
#: threads at once corrupts the heap (segfaults in unrelated code moments later; reproduced with
#: two threads encoding a 512 x 512 image in a loop, and in ``hipnode import --workers 2``),
#: and worker threads compose SCs concurrently. Decoding was not affected in the same test.
_OPENJPEG_ENCODE = threading.Lock()

# RGB colours.
_YELLOW = (255, 221, 0)
_RED = (255, 64, 64)
_GREEN = (64, 255, 96)
_CYAN = (0, 220, 255)
_ORANGE = (255, 150, 0)
_MAGENTA = (255, 64, 255)
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX

VIEW_TEXT = {
    "ap_pelvis": "AP pelvis",
    "ap_hip": "AP hip",
    "lateral_hip": "lateral hip",
    "oblique_hip": "oblique hip",
    "other": "other view",
}
_BODY_PART_BY_VIEW = {
    "ap_pelvis": "PELVIS",
    "ap_hip": "HIP",
    "lateral_hip": "HIP",
    "oblique_hip": "HIP",
}
_FLAG_TEXT = {
    "ischial_spine_sign": "ischial spine sign",
    "cam_deformity": "cam deformity",
    "dysplasia": "dysplasia",
    "other_abnormality": "other abnormality",
}


class EncoderUnavailable(RuntimeError):
    """The configured SC compression cannot be encoded in this installation."""


def _check_encoder(compression: Compression) -> None:
    if compression == "jpeg2000-lossless":
        try:
            import openjpeg  # noqa: F401
        except ImportError as exc:
            raise EncoderUnavailable(
                'SC compression "jpeg2000-lossless" needs the pylibjpeg-openjpeg package '
                '(pip install pylibjpeg-openjpeg), or set outputs.sc_compression to "jpeg-baseline" or "none".'
            ) from exc
    elif compression == "jpeg-baseline":
        from PIL import features

        if not features.check("jpg"):
            raise EncoderUnavailable(
                'SC compression "jpeg-baseline" needs Pillow built with libjpeg, or set '
                'outputs.sc_compression to "jpeg2000-lossless" or "none".'
            )
    elif compression != "none":
        raise ValueError(
            f'Unknown compression "{compression}"; expected "jpeg2000-lossless", "jpeg-baseline" or "none".'
        )


def available_compressions() -> list[Compression]:
    """The SC compressions this installation can encode (for ``check-config``)."""
    out: list[Compression] = []
    candidates: tuple[Compression, ...] = ("jpeg2000-lossless", "jpeg-baseline", "none")
    for c in candidates:
        try:
            _check_encoder(c)
        except EncoderUnavailable:
            continue
        out.append(c)
    return out


# --------------------------------------------------------------------------------------------
# Rendering (pure: arrays in, array out)
# --------------------------------------------------------------------------------------------


def to_uint8(display: np.ndarray) -> np.ndarray:
    """Grey display image as uint8: float input is taken as 0..1 (clipped)."""
    if display.ndim != 2:
        raise ValueError(f'Argument "display" must be a 2D grey image, got shape {display.shape}.')
    if display.dtype == np.uint8:
        return display
    if not np.issubdtype(display.dtype, np.floating):
        raise TypeError(f'Argument "display" must be float (0..1) or uint8, got {display.dtype}.')
    return np.asarray(np.round(np.clip(np.nan_to_num(display), 0.0, 1.0) * 255.0), dtype=np.uint8)


class _Canvas:
    """An RGB image plus the source→canvas scale and a text size fitted to the image."""

    def __init__(self, grey: np.ndarray, scale_x: float, scale_y: float) -> None:
        self.rgb = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        self.sx = scale_x
        self.sy = scale_y
        h, w = grey.shape
        self.font_scale = max(0.35, min(h, w) / 1100.0)
        self.thickness = max(1, round(self.font_scale * 2))
        (_, th), base = cv2.getTextSize("Ag", _FONT, self.font_scale, self.thickness)
        self.line_h = th + base + max(3, th // 2)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def pt(self, p: Point) -> tuple[int, int]:
        return round(p.x * self.sx), round(p.y * self.sy)

    def text(self, s: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float = 1.0) -> None:
        """Outlined text, clamped inside the image so a label near the edge stays readable."""
        fs = self.font_scale * scale
        th = max(1, round(self.thickness * scale))
        (tw, t_h), _ = cv2.getTextSize(s, _FONT, fs, th)
        x = min(max(2, org[0]), max(2, self.width - tw - 2))
        y = min(max(t_h + 2, org[1]), self.height - 3)
        # Outline by offset copies: a thicker stroke would also widen Hershey's glyph advance,
        # so the black copy would run ahead of the coloured text.
        r = max(1, th // 2 + 1)
        for dx, dy in ((-r, 0), (r, 0), (0, -r), (0, r), (-r, -r), (r, r), (-r, r), (r, -r)):
            cv2.putText(self.rgb, s, (x + dx, y + dy), _FONT, fs, _BLACK, th, cv2.LINE_AA)
        cv2.putText(self.rgb, s, (x, y), _FONT, fs, colour, th, cv2.LINE_AA)

    def lines(self, items: Sequence[tuple[str, tuple[int, int, int]]], org: tuple[int, int]) -> None:
        for i, (s, colour) in enumerate(items):
            self.text(s, (org[0], org[1] + i * self.line_h), colour)

    def shade(self, y0: int, y1: int, alpha: float = 0.65) -> None:
        """Darken a full-width band so banner text is legible on any background."""
        y0, y1 = max(0, y0), min(self.height, y1)
        band = self.rgb[y0:y1].astype(np.float32)
        self.rgb[y0:y1] = np.asarray(band * (1.0 - alpha), dtype=np.uint8)


def _blend_heatmap(canvas: _Canvas, heat: np.ndarray) -> None:
    """Jet-coloured heatmap, transparent where the model paid no attention."""
    if heat.ndim != 2:
        raise ValueError(f"A heatmap must be 2D, got shape {heat.shape}.")
    h: np.ndarray = np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0)
    if h.shape != (canvas.height, canvas.width):
        h = np.asarray(cv2.resize(h, (canvas.width, canvas.height), interpolation=cv2.INTER_LINEAR))
    coloured = cv2.applyColorMap(np.asarray(h * 255.0, dtype=np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    alpha = (np.clip((h - 0.2) / 0.8, 0.0, 1.0) * 0.5)[:, :, None]
    mixed = canvas.rgb.astype(np.float32) * (1.0 - alpha) + coloured.astype(np.float32) * alpha
    canvas.rgb = np.ascontiguousarray(np.asarray(np.round(mixed), dtype=np.uint8))


def _box(canvas: _Canvas, box: Box, colour: tuple[int, int, int], caption: str | None = None) -> None:
    p0 = canvas.pt(Point(box.x0, box.y0))
    p1 = canvas.pt(Point(box.x1, box.y1))
    cv2.rectangle(canvas.rgb, p0, p1, colour, canvas.thickness, cv2.LINE_AA)
    if caption:
        canvas.text(caption, (p0[0], p0[1] - 4), colour, scale=0.8)


def _box_colour(label: str) -> tuple[int, int, int]:
    if label.startswith("hip_joint"):
        return _YELLOW
    if label == "cup":
        return _CYAN
    if label == "stem":
        return _ORANGE
    return _WHITE


def _cup(canvas: _Canvas, cup: CupMeasurement) -> None:
    colour = _MAGENTA if cup.flagged else _GREEN
    if cup.ellipse is not None:
        e = cup.ellipse
        centre = canvas.pt(Point(e.cx, e.cy))
        # Axes are scaled along the ellipse's own directions (exact when sx == sy, which holds
        # for every resize we do: the aspect ratio is preserved).
        axes = (max(1, round(e.semi_major * canvas.sx)), max(1, round(e.semi_minor * canvas.sy)))
        cv2.ellipse(canvas.rgb, centre, axes, e.angle_deg, 0, 360, colour, canvas.thickness, cv2.LINE_AA)
        a, b = e.major_axis_endpoints()
        cv2.line(canvas.rgb, canvas.pt(a), canvas.pt(b), colour, max(1, canvas.thickness - 1), cv2.LINE_AA)
    elif cup.opening_line is not None:  # inclination only: the opening's long axis
        a, b = cup.opening_line
        cv2.line(canvas.rgb, canvas.pt(a), canvas.pt(b), colour, canvas.thickness, cv2.LINE_AA)
    if cup.reference_line is not None:
        p, q = cup.reference_line
        cv2.line(canvas.rgb, canvas.pt(p), canvas.pt(q), _ORANGE, canvas.thickness, cv2.LINE_AA)
        for end in (p, q):
            cv2.circle(canvas.rgb, canvas.pt(end), canvas.thickness + 2, _ORANGE, -1, cv2.LINE_AA)


def _side_name(side: Side) -> str:
    return "R" if side is Side.RIGHT else "L"


def _hip_lines(hip: HipFindings) -> list[tuple[str, tuple[int, int, int]]]:
    lines: list[tuple[str, tuple[int, int, int]]] = []
    head = _side_name(hip.side)
    if hip.implant_present is not None:
        what = "arthroplasty" if hip.implant_present else "no arthroplasty"
        p = f" ({hip.implant_probability:.2f})" if hip.implant_probability is not None else ""
        head += f" {what}{p}"
    lines.append((head, _WHITE))
    cup = hip.cup
    if cup is not None:
        colour = _MAGENTA if cup.flagged else _GREEN
        if cup.inclination_deg is not None:
            lines.append((f"INC {cup.inclination_deg:.1f} deg ({cup.inclination_reference})", colour))
        if cup.anteversion_deg is not None:
            lines.append((f"AV {cup.anteversion_deg:.1f} deg ({cup.anteversion_method})", colour))
        if cup.refusal_reason:
            lines.append((_clip(f"cup not measured: {cup.refusal_reason}"), _MAGENTA))
        if cup.anteversion_refusal:
            lines.append((_clip(f"AV not measured: {cup.anteversion_refusal}"), _MAGENTA))
    if hip.lateral_centre_edge_deg is not None:
        lines.append((f"LCE {hip.lateral_centre_edge_deg:.1f} deg", _WHITE))
    if hip.tonnis_deg is not None:
        lines.append((f"Tonnis {hip.tonnis_deg:.1f} deg", _WHITE))
    for flag in hip.morphology:
        if flag.present:
            lines.append((f"{_FLAG_TEXT.get(flag.name, flag.name)} {flag.probability:.2f}", _RED))
    if hip.morphology_refusal:
        lines.append((_clip(f"morphology not assessed: {hip.morphology_refusal}"), _WHITE))
    return lines


def _clip(s: str, n: int = 48) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _anchor(canvas: _Canvas, hip: HipFindings, n_lines: int) -> tuple[int, int]:
    """Where a hip's label goes: above its cup ellipse, else above its joint box, else at the
    side of the image where that hip is displayed (patient right on the image left for AP)."""
    top_y: float | None = None
    left_x: float | None = None
    if hip.cup is not None and hip.cup.ellipse is not None:
        e = hip.cup.ellipse
        top_y, left_x = e.cy - e.semi_major * 1.6, e.cx - e.semi_major * 1.2
    elif hip.joint_box is not None:
        top_y, left_x = hip.joint_box.y0, hip.joint_box.x0
    elif hip.cup_box is not None:
        top_y, left_x = hip.cup_box.y0, hip.cup_box.x0
    if top_y is None or left_x is None:
        x = 10 if hip.side is Side.RIGHT else canvas.width // 2 + 10
        return x, canvas.height // 2
    x, y = canvas.pt(Point(left_x, top_y))
    y -= n_lines * canvas.line_h
    if y < 3 * canvas.line_h:  # would collide with the banner: put the label below instead
        y = canvas.pt(Point(left_x, top_y))[1] + 4 * canvas.line_h
    return x, y


def render_overlay(
    image: ImageFindings,
    display: np.ndarray,
    *,
    source_shape: tuple[int, int] | None = None,
    heatmaps: Mapping[str, np.ndarray] | None = None,
    models: Sequence[ModelInfo] = (),
    max_size_px: int | None = DEFAULT_MAX_SIZE_PX,
) -> np.ndarray:
    """RGB uint8 overlay of ``image``'s findings on ``display``.

    ``source_shape`` (rows, columns) is the geometry the findings' coordinates refer to; it
    defaults to ``display.shape``. Each heatmap (any size, values 0..1, in image geometry) is
    resized to the display and blended; its key is shown as the legend.
    """
    grey = to_uint8(display)
    rows, cols = source_shape if source_shape is not None else grey.shape
    if max_size_px is not None and max(grey.shape) > max_size_px:
        f = max_size_px / max(grey.shape)
        size = (max(1, round(grey.shape[1] * f)), max(1, round(grey.shape[0] * f)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    canvas = _Canvas(grey, grey.shape[1] / cols, grey.shape[0] / rows)

    legend: list[tuple[str, tuple[int, int, int]]] = []
    for caption, heat in (heatmaps or {}).items():
        _blend_heatmap(canvas, heat)
        legend.append((_clip(f"heatmap: {caption}"), _ORANGE))

    drawn: set[Box] = set()
    for hip in image.hips:
        for b in (hip.joint_box, hip.cup_box):
            if b is not None and b not in drawn:
                drawn.add(b)
                _box(canvas, b, _box_colour(b.label))
    for b in image.boxes:
        if b not in drawn:
            drawn.add(b)
            _box(canvas, b, _box_colour(b.label), f"{b.label} {b.score:.2f}" if b.label else None)
    for hip in image.hips:
        if hip.cup is not None:
            _cup(canvas, hip.cup)
    for hip in image.hips:
        lines = _hip_lines(hip)
        canvas.lines(lines, _anchor(canvas, hip, len(lines)))

    # Banner: always, on top, over a darkened band.
    header: list[tuple[str, tuple[int, int, int]]] = [(BANNER, _YELLOW)]
    status = "hipnode"
    if image.view is not None:
        p = f" {image.view_probability:.2f}" if image.view_probability is not None else ""
        status += f" | view: {VIEW_TEXT.get(image.view.value, image.view.value)}{p}"
    if models:
        status += " | " + ", ".join(f"{m.name} {m.version}" for m in models)
    header.append((_clip(status, 96), _WHITE))
    if image.screened_out is not None:
        header.append((_clip(f"NOT ANALYSED: {image.screened_out.value}", 96), _RED))
    elif not image.hips:
        header.append(("analysed: no hip joint found", _WHITE))
    canvas.shade(0, (len(header) + 1) * canvas.line_h)
    canvas.text(BANNER, (8, int(canvas.line_h * 1.3)), _YELLOW, scale=1.3)
    canvas.lines(header[1:], (8, int(canvas.line_h * 2.5)))

    footer = legend + [(_clip(f"metadata: {m}", 96), _ORANGE) for m in image.metadata_mismatches]
    if footer:
        y0 = canvas.height - (len(footer) + 0.5) * canvas.line_h
        canvas.shade(int(y0 - canvas.line_h), canvas.height)
        canvas.lines(footer, (8, int(y0)))
    return canvas.rgb


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def build_sc(
    image: ImageFindings,
    source: Dataset,
    display: np.ndarray,
    *,
    models: Sequence[ModelInfo] = (),
    heatmaps: Mapping[str, np.ndarray] | None = None,
    compression: Compression = "jpeg2000-lossless",
    manufacturer: str = "hipnode",
    software_version: str = "0.1.0",
    series_number: int = 991,
    instance_number: int | None = None,
    uids: OutputUIDs | None = None,
    salt: str = "",
    max_size_px: int | None = DEFAULT_MAX_SIZE_PX,
) -> hd.sc.SCImage:
    """Secondary Capture of one source image with the AI findings burned in.

    Patient and study attributes come from ``source``; all overlays of a source series share
    one SC series (:func:`node.compose.uids.sc_uids`). ``display`` is the normalised radiograph
    as shown to the models (float 0..1 or uint8, in the source's orientation).
    ``EncoderUnavailable`` is raised when ``compression`` cannot be encoded here.
    """
    if image.sop_instance_uid != str(source.SOPInstanceUID):
        raise ValueError(
            f'Findings are for "{image.sop_instance_uid}" but the source is "{source.SOPInstanceUID}".'
        )
    _check_encoder(compression)
    source_shape = (int(source.Rows), int(source.Columns)) if "Rows" in source and "Columns" in source else None
    rgb = render_overlay(
        image, display, source_shape=source_shape, heatmaps=heatmaps, models=models, max_size_px=max_size_px
    )
    if uids is None:
        uids = sc_uids(str(source.SeriesInstanceUID), str(source.SOPInstanceUID), models, salt=salt)
    if instance_number is None:
        instance_number = source_instance_number(source)

    header = header_without_pixels(source)
    original_sex = fill_patient_study(header)
    orientation = _orientation(source)
    transfer_syntax, photometric = {
        "jpeg2000-lossless": (JPEG2000Lossless, "YBR_RCT"),
        "jpeg-baseline": (JPEGBaseline8Bit, "YBR_FULL_422"),
        "none": (ExplicitVRLittleEndian, "RGB"),
    }[compression]
    equipment = [
        hd.ContributingEquipment(
            manufacturer=m.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=m.name,
            software_versions=m.version,
            contribution_description="AI model whose result is drawn on this image",
        )
        for m in models
    ]
    with _OPENJPEG_ENCODE if compression == "jpeg2000-lossless" else nullcontext():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=rgb,
            photometric_interpretation=photometric,
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=uids.series_instance_uid,
            series_number=series_number,
            sop_instance_uid=uids.sop_instance_uid,
            instance_number=instance_number,
            manufacturer=manufacturer,
            patient_orientation=orientation if orientation is not None else ("L", "F"),
            transfer_syntax_uid=transfer_syntax,
            contributing_equipment=equipment,
            series_description=SERIES_DESCRIPTION,
        )
    sc.copy_patient_and_study_information(header)
    if orientation is None:
        sc["PatientOrientation"].value = None  # type 2: unknown, not guessed
    set_body_part_and_laterality(sc, image, source)
    if original_sex is not None:
        sc.PatientSex = original_sex
    sc.ManufacturerModelName = "hipnode overlay"
    setattr(sc, "SoftwareVersions", [software_version, *(f"{m.name} {m.version}" for m in models)])  # noqa: B010
    sc.BurnedInAnnotation = str(source.get("BurnedInAnnotation") or "NO")  # we burn in no identity
    sc.DerivationDescription = "AI findings (hipnode) drawn on the source radiograph; not for diagnosis"
    ref = Dataset()
    ref.ReferencedSOPClassUID = str(source.SOPClassUID)
    ref.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    purpose = Dataset()
    purpose.CodeValue = codes.SOURCE_IMAGE_FOR_PROCESSING.value
    purpose.CodingSchemeDesignator = codes.SOURCE_IMAGE_FOR_PROCESSING.scheme_designator
    purpose.CodeMeaning = codes.SOURCE_IMAGE_FOR_PROCESSING.meaning
    ref.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [ref]
    return sc


def set_body_part_and_laterality(ds: Dataset, image: ImageFindings, source: Dataset) -> None:
    """General Series Laterality is 2C on a paired body part. Body Part Examined comes from the
    source, else from the view the triage model saw; Laterality is the one imaged side when
    there is exactly one, absent for a pelvis, and empty (unknown) when nothing is known.
    Shared by the SC and the presentation state, which describe the same image."""
    body_part = str(source.get("BodyPartExamined") or "") or _BODY_PART_BY_VIEW.get(
        image.view.value if image.view is not None else "", ""
    )
    if body_part:
        ds.BodyPartExamined = body_part
    sides = set(image.imaged_sides)
    if len(sides) == 1:
        ds.Laterality = _side_name(next(iter(sides)))
    elif not body_part:
        ds.add_new(0x00200060, "CS", None)  # Laterality, empty


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is a valid biped pair of single letters, else
    None (unknown).

    A resized overlay keeps the orientation: scaling does not flip or rotate. Oblique values
    such as ``HL`` (valid in the source) are dropped: highdicom's SC accepts one letter per
    direction, and a wrong single letter would be worse than none."""
    value = source.get("PatientOrientation")
    if not value or len(value) != 2:
        return None
    row, col = str(value[0]), str(value[1])
    allowed = set("AFHLPR")
    if len(row) != 1 or len(col) != 1 or not {row, col} <= allowed:
        return None
    return row, col


__all__ = [
    "BANNER",
    "Compression",
    "EncoderUnavailable",
    "available_compressions",
    "build_sc",
    "render_overlay",
    "to_uint8",
]


def source_instance_number(source: Dataset) -> int:
    """The source image's Instance Number for the result that draws on it (1 when absent or
    not a number: archives send "", "01a", None)."""
    try:
        return int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
