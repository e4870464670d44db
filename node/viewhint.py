"""Which hip view a radiograph is, from its DICOM header alone.

Used by view-aware series completion (``node.series``): a calling AE may say which views a study
is expected to contain (``expected_views: [ap_pelvis, lateral_hip]``), and the study's series
close as soon as they are all in instead of waiting out the quiet period. The completer runs in
the receiver and the workers on every tick, long before (and without) any model, so the answer
must come from a few header fields: ``ViewPosition``, ``ImageLaterality`` / ``Laterality``,
``BodyPartExamined``, ``SeriesDescription`` and ``ProtocolName`` (``StudyDescription`` too, but
only as body-part context — it describes every series of the study, so taken as a view it would
make one image look like all of them).

The answer is a hint, never a verdict: the triage model still decides the view of each image.
It is deliberately conservative: ``None`` (unknown) only costs waiting out the quiet period as
before, while a wrong view could close a study early (a late image then re-opens its series and
produces the next generation, so even that is recoverable). A header that names a body part
other than the hip or pelvis is never a hip view.

The names are those of :class:`node.domain.View` (``ap_pelvis``, ``ap_hip``, ``lateral_hip``,
``oblique_hip``); a site's own wording can be added per calling AE as ``view_patterns``
(view name → regular expression over the series description and protocol name), which are
tried before the built-in rules and may name views of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.domain import View

#: Views the built-in rules can name (``other`` is never a hint: it cannot be "expected").
BUILTIN_VIEWS = frozenset(v.value for v in View if v is not View.OTHER)

#: The header fields the hint reads; nothing else of the file is parsed.
HEADER_KEYWORDS = (
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
)

_HIP_BODY_PARTS = frozenset({"HIP", "HIPS", "PELVIS", "BECKEN", "HUEFTE", "HÜFTE"})
_LATERAL_POSITIONS = frozenset({"LAT", "LATERAL", "LL", "RL", "XTABLE", "CROSSTABLE"})
_FRONTAL_POSITIONS = frozenset({"AP", "PA"})

_FROG = re.compile(r"\bFROG", re.IGNORECASE)
_LATERAL_TEXT = re.compile(
    r"\b(LAT|LATERAL|CROSS[\s_-]?TABLE|X[\s_-]?TABLE|AXIAL|LAUENSTEIN)\b", re.IGNORECASE
)
_FRONTAL_TEXT = re.compile(r"\b(AP|PA|A\.P\.|ANTERIOR[\s_-]?POSTERIOR)(?=\W|$)", re.IGNORECASE)
_PELVIS_TEXT = re.compile(r"\b(PELVIS|BECKEN|BECKENÜBERSICHT|BOTH\s+HIPS|HIPS)\b", re.IGNORECASE)
_HIP_TEXT = re.compile(r"\b(HIP|HÜFTE|HUEFTE)\b", re.IGNORECASE)
_OTHER_PART_TEXT = re.compile(
    r"\b(CHEST|THORAX|KNEE|HAND|SKULL|SPINE|LSPINE|ABDOMEN|SHOULDER|ANKLE|FOOT|WRIST|ELBOW)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class ViewFields:
    """The header fields a view hint is made from, upper-cased and stripped (small enough to
    cache per instance: an instance row's file never changes)."""

    view_position: str = ""
    laterality: str = ""
    body_part: str = ""
    series_text: str = ""  # SeriesDescription and ProtocolName
    study_text: str = ""  # StudyDescription

    @classmethod
    def from_header(cls, header: Dataset) -> ViewFields:
        def text(keyword: str) -> str:
            try:
                value = header.get(keyword)
            except Exception:
                return ""  # a malformed value is no hint, never an error
            return "" if value is None else str(value).strip().strip("\x00").upper()

        return cls(
            view_position=text("ViewPosition").replace(" ", "").replace("-", ""),
            laterality=text("ImageLaterality") or text("Laterality"),
            body_part=text("BodyPartExamined"),
            series_text=" ".join(t for t in (text("SeriesDescription"), text("ProtocolName")) if t),
            study_text=text("StudyDescription"),
        )


def read_fields(path: Path | str) -> ViewFields | None:
    """The view fields of a stored DICOM file; ``None`` if it cannot be read (removed by
    retention, or not DICOM): unknown, so no early completion rests on it."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
    except Exception:
        return None
    return ViewFields.from_header(header)


def compile_patterns(patterns: Mapping[str, str]) -> list[tuple[str, re.Pattern[str]]]:
    """Per-AE ``view_patterns`` (view → regular expression), compiled case-insensitively."""
    return [(view, re.compile(rx, re.IGNORECASE)) for view, rx in patterns.items()]


def classify(fields: ViewFields, patterns: list[tuple[str, re.Pattern[str]]] | None = None) -> str | None:
    """The view these header fields suggest, or ``None`` when they do not say.

    Order: the AE's own patterns; then the series' words (more specific than the coded
    ``ViewPosition``: a frog-leg film is coded ``AP``); then ``ViewPosition`` with the body part
    and laterality deciding pelvis versus one hip."""
    for view, rx in patterns or ():
        if rx.search(fields.series_text):
            return view
    if not _is_hip_region(fields):
        return None
    text = fields.series_text
    if _FROG.search(text):
        return View.OBLIQUE_HIP.value
    if _LATERAL_TEXT.search(text):
        return View.LATERAL_HIP.value
    if _FRONTAL_TEXT.search(text):
        if _PELVIS_TEXT.search(text):
            return View.AP_PELVIS.value
        if _HIP_TEXT.search(text):
            return View.AP_HIP.value
    position = fields.view_position
    if position in _LATERAL_POSITIONS:
        return View.LATERAL_HIP.value
    if position in _FRONTAL_POSITIONS or (not position and _FRONTAL_TEXT.search(text)):
        if fields.body_part == "PELVIS" or fields.laterality == "B" or _PELVIS_TEXT.search(text):
            return View.AP_PELVIS.value
        if fields.body_part in ("HIP", "HUEFTE", "HÜFTE") or fields.laterality in ("R", "L") or _HIP_TEXT.search(text):
            return View.AP_HIP.value
    return None


def _is_hip_region(fields: ViewFields) -> bool:
    """The header places the image at the hip or pelvis: by ``BodyPartExamined`` when it is
    given (another body part there rules it out), else by the series' or study's words."""
    if fields.body_part:
        return fields.body_part in _HIP_BODY_PARTS
    if _OTHER_PART_TEXT.search(fields.series_text):
        return False
    return any(rx.search(t) for rx in (_PELVIS_TEXT, _HIP_TEXT) for t in (fields.series_text, fields.study_text))
