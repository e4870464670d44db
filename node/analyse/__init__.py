"""Analysis: cup geometry (rim ellipse → inclination / anteversion / version), pelvic reference
lines, and dysplasia angles (lateral centre-edge, Tönnis). Pure numpy/OpenCV, no DICOM.

Entry points: ``measure_cup`` (one cup box → ``CupMeasurement``), ``reference_from_boxes`` /
``reference_from_points`` (inter-teardrop → bi-ischial → flagged horizontal) and
``measure_dysplasia`` (one native hip-joint box → LCE and Tönnis, or a reason).
"""

from node.analyse.cup import CupFit, ProjectionGeometry, cup_diameter_mm, fit_cup_ellipse, measure_cup
from node.analyse.dysplasia import DysplasiaMeasurement, measure_dysplasia
from node.analyse.reference import ReferenceLine, reference_from_boxes, reference_from_points

__all__ = [
    "CupFit",
    "DysplasiaMeasurement",
    "ProjectionGeometry",
    "ReferenceLine",
    "cup_diameter_mm",
    "fit_cup_ellipse",
    "measure_cup",
    "measure_dysplasia",
    "reference_from_boxes",
    "reference_from_points",
]
