"""Grayscale Softcopy Presentation State: our annotations over the original radiograph.

Why a third output next to the SR and the SC (issue 14): the SC is a *copy* of the image with the
findings burned in, and the SR is drawn only by viewers that read TID 1500. Most PACS viewers
show presentation states: a GSPS lays vector graphics and text over the *original* image, which
the radiologist can switch on and off, zoom without blur, and window as usual.

What it draws, one GSPS per analysed source image, in three graphic layers a viewer can toggle:

* ``HIPNODE CUP`` — each cup rim as a closed POLYLINE (the same 72 points as the SR's rim; a
  GSPS ELLIPSE would do, but oblique ellipses are the shape viewers most often get wrong) and
  each inclination reference line once;
* ``HIPNODE JOINT`` — each detector hip joint box, and where LCE / Tönnis were measured the
  femoral head circle and the sourcil they were measured on;
* ``HIPNODE TEXT`` — per hip the side (R / L), arthroplasty yes / no, inclination and
  anteversion with method, LCE / Tönnis, present morphology flags; and the banner
  ``AI RESULT - NOT FOR DIAGNOSIS`` with the view, in display units so it stays on screen.

Coordinates are PIXEL units of the source image, origin at the top-left *corner* of the
top-left pixel (PS3.3 C.10.5.1.2): the same shift from ``node.domain``'s pixel centres as the
SR's SCOORDs. Text is ASCII (no degree sign) because viewers' presentation-state text fonts vary.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage

from node.compose.overlay import VIEW_TEXT, set_body_part_and_laterality, source_instance_number
from node.compose.sr import (
    PIXEL_ORIGIN_SHIFT,
    box_polyline_data,
    circle_polyline_data,
    ellipse_polyline_data,
    fill_patient_study,
    header_without_pixels,
)
from node.compose.uids import OutputUIDs, derive_uid, gsps_uids
from node.domain import HipFindings, ImageFindings, ModelInfo, Point, Side

GSPS_SOP_CLASS_UID = str(GrayscaleSoftcopyPresentationStateStorage)
SERIES_DESCRIPTION = "AI annotations (hipnode) - NOT FOR DIAGNOSIS"
CONTENT_LABEL = "HIPNODE_AI"  # CS: what a viewer lists as the presentation state's name
BANNER = "AI RESULT - NOT FOR DIAGNOSIS"
LAYER_CUP = "HIPNODE CUP"
LAYER_JOINT = "HIPNODE JOINT"
LAYER_TEXT = "HIPNODE TEXT"
# Recommended display colours (CIE L*a*b*), as on the SC: green cup, yellow joint, white text.
_GREEN = hd.color.CIELabColor(88.0, -76.0, 61.0)
_YELLOW = hd.color.CIELabColor(90.0, -5.0, 88.0)
_WHITE = hd.color.CIELabColor(100.0, 0.0, 0.0)
_TEXT_CHARS_PER_LINE = 40
_FLAG_TEXT = {
    "ischial_spine_sign": "ischial spine sign",
    "cam_deformity": "cam deformity",
    "dysplasia": "dysplasia",
    "other_abnormality": "other abnormality",
}


def hip_text(hip: HipFindings) -> str:
    """One hip's label, side first: what the radiologist needs to read next to the drawing."""
    words = ["R" if hip.side is Side.RIGHT else "L"]
    if hip.implant_present is not None:
        words.append("arthroplasty" if hip.implant_present else "no arthroplasty")
    parts = [" ".join(words)]
    cup = hip.cup
    if cup is not None:
        if cup.inclination_deg is not None:
            parts.append(f"INC {cup.inclination_deg:.1f} deg ({cup.inclination_reference})")
        if cup.anteversion_deg is not None:
            parts.append(f"AV {cup.anteversion_deg:.1f} deg ({cup.anteversion_method})")
        if cup.refusal_reason:
            parts.append("cup not measured")
        if cup.anteversion_refusal:
            parts.append("AV not measured")
    if hip.lateral_centre_edge_deg is not None:
        parts.append(f"LCE {hip.lateral_centre_edge_deg:.1f} deg")
    if hip.tonnis_deg is not None:
        parts.append(f"Tonnis {hip.tonnis_deg:.1f} deg")
    parts.extend(f"{_FLAG_TEXT.get(f.name, f.name)} {f.probability:.2f}" for f in hip.morphology if f.present)
    return "; ".join(parts)


def _pixel(points: Sequence[Point]) -> np.ndarray:
    return np.array([[p.x + PIXEL_ORIGIN_SHIFT, p.y + PIXEL_ORIGIN_SHIFT] for p in points], dtype=np.float64)


def _polyline(data: np.ndarray, tracking: str, image_uid: str, rows: int, columns: int) -> hd.pr.GraphicObject:
    """A POLYLINE in PIXEL units, kept on the image (PS3.3 allows no negative PIXEL coordinates;
    a reference line fitted through landmarks can reach past the edge). The tracking UID is
    derived from the image and what is drawn, so the same drawing keeps its identity."""
    clipped = np.clip(np.asarray(data, dtype=np.float64), 0.0, [float(columns), float(rows)])
    return hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=clipped,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        tracking_id=tracking,
        tracking_uid=derive_uid("gsps-tracking", image_uid, tracking),
    )


def _label_box(hip: HipFindings, rows: int, columns: int, n_chars: int) -> tuple[float, float, float, float] | None:
    """Bounding box (PIXEL units: left, top, right, bottom) above the hip's cup, else its joint
    box; ``None`` when the hip has no geometry (its text then goes to the display-unit list)."""
    if hip.cup is not None and hip.cup.ellipse is not None:
        e = hip.cup.ellipse
        left, bottom = e.cx - 1.5 * e.semi_major, e.cy - 1.3 * e.semi_major
    elif hip.joint_box is not None:
        left, bottom = hip.joint_box.x0, hip.joint_box.y0
    else:
        return None
    height = max(rows * 0.03, 12.0) * max(1, -(-n_chars // _TEXT_CHARS_PER_LINE))
    width = min(columns * 0.45, max(columns * 0.25, 6.0 * n_chars))
    left = min(max(left, 1.0), columns - width - 1.0)
    top = min(max(bottom - height, 1.0), rows - height - 1.0)
    return (left, top, left + width, top + height)


def build_gsps(
    image: ImageFindings,
    source: Dataset,
    *,
    models: Sequence[ModelInfo] = (),
    manufacturer: str = "hipnode",
    software_version: str = "0.1.0",
    series_number: int = 992,
    instance_number: int | None = None,
    uids: OutputUIDs | None = None,
    salt: str = "",
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The presentation state of one analysed source image (``source``: its header; pixel data
    is neither needed nor copied). Raises ``ValueError`` for a screened-out image: there is
    nothing to draw on something we did not analyse."""
    if image.sop_instance_uid != str(source.SOPInstanceUID):
        raise ValueError(f'Findings are for "{image.sop_instance_uid}" but the source is "{source.SOPInstanceUID}".')
    if image.screened_out is not None:
        raise ValueError(f'Image "{image.sop_instance_uid}" was not analysed ({image.screened_out.value}).')
    rows, columns = int(source.Rows), int(source.Columns)
    header = header_without_pixels(source)
    original_sex = fill_patient_study(header)
    if uids is None:
        uids = gsps_uids(str(source.SeriesInstanceUID), str(source.SOPInstanceUID), models, salt=salt)
    if instance_number is None:
        instance_number = source_instance_number(source)

    def draw(data: np.ndarray, tracking: str) -> hd.pr.GraphicObject:
        return _polyline(data, tracking, image.sop_instance_uid, rows, columns)

    cup_objects: list[hd.pr.GraphicObject] = []
    joint_objects: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    lines_drawn: set[tuple[Point, Point]] = set()
    unplaced: list[str] = []
    for hip in sorted(image.hips, key=lambda h: 0 if h.side is Side.RIGHT else 1):
        side = "right" if hip.side is Side.RIGHT else "left"
        cup = hip.cup
        if cup is not None and cup.ellipse is not None and (cup.inclination_deg is not None or cup.anteversion_deg is not None):
            cup_objects.append(draw(ellipse_polyline_data(cup.ellipse), f"{side} cup rim"))
        elif cup is not None and cup.opening_line is not None and cup.inclination_deg is not None:
            cup_objects.append(draw(_pixel(list(cup.opening_line)), f"{side} cup opening"))
        line = cup.reference_line if cup is not None and cup.inclination_deg is not None else None
        if cup is not None and line is not None and line not in lines_drawn:  # AP pelvis: one line, both cups
            lines_drawn.add(line)
            cup_objects.append(draw(_pixel(list(line)), f"{cup.inclination_reference}"))
        if hip.joint_box is not None:
            joint_objects.append(draw(box_polyline_data(hip.joint_box), f"{side} hip joint"))
        if hip.femoral_head is not None and (hip.lateral_centre_edge_deg is not None or hip.tonnis_deg is not None):
            centre, radius = hip.femoral_head
            joint_objects.append(draw(circle_polyline_data(centre, radius), f"{side} femoral head"))
            if hip.sourcil is not None:
                joint_objects.append(draw(_pixel(list(hip.sourcil)), f"{side} sourcil"))
        text = hip_text(hip)
        box = _label_box(hip, rows, columns, len(text))
        if box is None:
            unplaced.append(text)
        else:
            texts.append(hd.pr.TextObject(text, units=hd.pr.AnnotationUnitsValues.PIXEL, bounding_box=box,
                                          text_justification=hd.pr.TextJustificationValues.LEFT))
    view = VIEW_TEXT.get(image.view.value, image.view.value) if image.view is not None else "view unknown"
    banner = [f"{BANNER} - {view}", *unplaced]
    for i, row in enumerate(banner):
        top = 0.01 + 0.045 * i
        texts.append(hd.pr.TextObject(row, units=hd.pr.AnnotationUnitsValues.DISPLAY,
                                      bounding_box=(0.01, top, 0.99, top + 0.04),
                                      text_justification=hd.pr.TextJustificationValues.LEFT))

    layers = {
        LAYER_CUP: hd.pr.GraphicLayer(LAYER_CUP, 1, "Acetabular cup rims and inclination reference lines", _GREEN),
        LAYER_JOINT: hd.pr.GraphicLayer(LAYER_JOINT, 2, "Hip joint boxes, femoral heads and sourcils", _YELLOW),
        LAYER_TEXT: hd.pr.GraphicLayer(LAYER_TEXT, 3, "Values, side and the AI banner", _WHITE),
    }
    annotations = []
    used = []
    for name, objects, text_objects in (
        (LAYER_CUP, cup_objects, []),
        (LAYER_JOINT, joint_objects, []),
        (LAYER_TEXT, [], texts),
    ):
        if not objects and not text_objects:
            continue
        used.append(layers[name])
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[header],
                graphic_layer=layers[name],
                graphic_objects=objects or None,
                text_objects=text_objects or None,
            )
        )
    equipment = [
        hd.ContributingEquipment(
            manufacturer=m.manufacturer,
            purpose_of_reference=hd.sr.CodedConcept("109102", "DCM", "Processing Equipment"),
            manufacturer_model_name=m.name,
            software_versions=m.version,
            contribution_description="AI model whose result is drawn by this presentation state",
        )
        for m in models
    ]
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[header],
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name="hipnode presentation state",
        software_versions=software_version,
        device_serial_number="",
        content_label=CONTENT_LABEL,
        content_description="AI hip findings (hipnode) - not for diagnosis",
        graphic_annotations=annotations or None,
        graphic_layers=used or None,
        contributing_equipment=equipment or None,
    )
    gsps.SeriesDescription = SERIES_DESCRIPTION
    set_body_part_and_laterality(gsps, image, source)
    for layer in gsps.get("GraphicLayerSequence", []):
        # grayscale displays (and DCMTK) use this instead of the colour: draw in white
        layer.GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
    if original_sex is not None:
        gsps.PatientSex = original_sex
    setattr(gsps, "SoftwareVersions", [software_version, *(f"{m.name} {m.version}" for m in models)])  # noqa: B010
    return gsps


__all__ = ["GSPS_SOP_CLASS_UID", "build_gsps", "hip_text"]
