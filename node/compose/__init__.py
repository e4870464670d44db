"""Compose: the DICOM objects a radiologist reads — the TID 1500 SR, the SC overlays and the
presentation states.

* :func:`build_sr` — one Comprehensive SR (TID 1500 Measurement Report) per analysed series;
  :func:`read_report` decodes it again (tests, longitudinal priors, PACS read-back checks).
* :func:`build_sc` — one Secondary Capture per source image, findings burned in.
* :func:`build_gsps` — one Grayscale Softcopy Presentation State per analysed source image: the
  same drawings and values as vector graphics over the original, for PACS viewers.
* :mod:`node.compose.uids` — deterministic output UIDs (same sources + models → same objects).
* :mod:`node.compose.codes` — every coded concept, in one place.

This stage imports ``node.domain`` only (plus highdicom / pydicom / OpenCV); the pipeline hands
it findings and source headers and gets datasets back, ready for dispatch.
"""

from node.compose.gsps import GSPS_SOP_CLASS_UID, build_gsps
from node.compose.overlay import (
    Compression,
    EncoderUnavailable,
    available_compressions,
    build_sc,
    render_overlay,
)
from node.compose.sr import (
    SR_SOP_CLASS_UID,
    ReportedAngle,
    ReportedGroup,
    ReportReference,
    build_sr,
    predecessor_uids,
    read_report,
)
from node.compose.uids import OutputUIDs, derive_uid, gsps_uids, sc_uids, sr_uids

__all__ = [
    "GSPS_SOP_CLASS_UID",
    "SR_SOP_CLASS_UID",
    "Compression",
    "EncoderUnavailable",
    "OutputUIDs",
    "ReportReference",
    "ReportedAngle",
    "ReportedGroup",
    "available_compressions",
    "build_gsps",
    "build_sc",
    "build_sr",
    "derive_uid",
    "gsps_uids",
    "predecessor_uids",
    "read_report",
    "render_overlay",
    "sc_uids",
    "sr_uids",
]
