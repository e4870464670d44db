"""Analysis: cup geometry (rim ellipse → inclination / anteversion / version), pelvic reference
lines, and dysplasia angles (lateral centre-edge, Tönnis). Pure numpy/OpenCV, no DICOM."""

from node.analyse.cup import CupFit, ProjectionGeometry, fit_cup_ellipse, measure_cup
from node.analyse.reference import ReferenceLine, reference_from_boxes, reference_from_points

__all__ = [
    "CupFit",
    "ProjectionGeometry",
    "ReferenceLine",
    "fit_cup_ellipse",
    "measure_cup",
    "reference_from_boxes",
    "reference_from_points",
]
