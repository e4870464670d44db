"""Header values made fit to copy into our outputs (issue 13: metadata as it really is).

Real archives send dates as ``2024-01-05``, times as ``10:30:00``, an impossible birth date
(``19500000``), accession numbers longer than their VR allows, a character set nobody defined.
The SR, SC and GSPS copy the patient and study attributes from the source image; the libraries
that build them (highdicom, pydicom) refuse such values and the whole report was lost. What
the outputs get instead:

* a DA / TM / DT written with separators is rewritten in DICOM form when it is a real date or
  time (``2024-01-05`` → ``20240105``); one that cannot be read is left empty;
* text longer than its VR allows is cut to the maximum; control characters other than the
  ones a text VR allows are removed;
* a Specific Character Set that is not a defined term is replaced by ISO_IR 192 (UTF-8): the
  values were already decoded by pydicom's fallback, UTF-8 can encode whatever they are;
* an element whose value cannot be read at all is dropped.

Every change is returned as a note without the value (the SR prints it as a comment; no
patient data in it), so the result says what it did not copy faithfully. UIDs are never
changed: the outputs must reference the sources by the UIDs they carry (the receiver flags
non-conformant UIDs).
"""

from __future__ import annotations

import datetime
import re
import warnings
from copy import deepcopy

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

# the longest value a VR allows (PS3.5 table 6.2-1); PN per component group
# (numbers - DS, IS - are left alone: pydicom keeps their original text, and a cut number is a
# wrong number)
MAX_LENGTH: dict[str, int] = {
    "AE": 16, "CS": 16, "LO": 64, "LT": 10240, "PN": 64 * 3, "SH": 16, "ST": 1024, "UC": 10_000_000,
    "UT": 10_000_000,
}
_AGE = re.compile(r"^\d{3}[DWMY]$")
_MULTI_LINE = frozenset({"LT", "ST", "UT"})  # may carry CR, LF, FF, TAB
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_SINGLE_LINE = re.compile(r"[\x00-\x1f\x7f]")
_SEPARATED_DATE = re.compile(r"^\s*(\d{4})[-./](\d{1,2})[-./](\d{1,2})\s*$")
_SEPARATED_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?\s*$")


def sanitise_for_output(header: Dataset) -> tuple[Dataset, list[str]]:
    """A copy of ``header`` (top-level elements, no pixel data) whose values the output
    builders accept, and one note per change (keywords only, never values).

    pydicom warns on every malformed value it reads; here such values are expected and each
    one is accounted for in the notes, so those warnings are not repeated into the log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _sanitise(header)


def _sanitise(header: Dataset) -> tuple[Dataset, list[str]]:
    out = Dataset()
    if hasattr(header, "file_meta"):
        out.file_meta = deepcopy(header.file_meta)
    notes: list[str] = []
    for tag in header.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
        if tag.group == 0x7FE0:
            continue  # pixel data: not ours to copy here
        try:
            elem = deepcopy(header[tag])
            value = elem.value
        except Exception:
            notes.append(f"{_name(header, tag)} could not be read; left out of the results")
            continue
        if elem.VR == "SQ" or value is None or value == "":
            out[tag] = elem
            continue
        fixed, why = _clean(elem.VR, value)
        if why is not None:
            notes.append(f"{elem.keyword or tag} {why}")
        if fixed is _DROP:
            continue
        if fixed is not value:
            elem.value = fixed
        out[tag] = elem
    charset = out.get("SpecificCharacterSet")
    if charset is not None and not _known_charset(charset):
        out.SpecificCharacterSet = "ISO_IR 192"
        notes.append("SpecificCharacterSet is not a defined term; the results are written in UTF-8")
    return out, notes


_DROP = object()


def _name(ds: Dataset, tag: BaseTag) -> str:
    try:
        return str(ds[tag].keyword or tag)
    except Exception:
        return str(tag)


def _known_charset(value: object) -> bool:
    terms = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return all(not str(t).strip() or python_encoding.get(str(t).strip()) is not None for t in terms)


def _clean(vr: str, value: object) -> tuple[object, str | None]:
    """(value to write, or ``_DROP``; what was done, or None when nothing was)."""
    if vr in ("DA", "TM", "DT"):
        values = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        out, changed = [], False
        for v in values:
            text = str(v)
            fixed = {"DA": _da, "TM": _tm, "DT": _dt}[vr](text)
            changed |= fixed != text
            out.append(fixed)
        if not changed:
            return value, None
        if all(not f for f in out):
            return "", "is not a valid " + {"DA": "date", "TM": "time", "DT": "date-time"}[vr] + "; left empty in the results"
        return (out[0] if isinstance(value, str) else out), "rewritten in DICOM form"
    if vr == "AS":
        return (value, None) if _AGE.match(str(value)) else ("", "is not a valid age; left empty in the results")
    limit = MAX_LENGTH.get(vr)
    if limit is None:
        return value, None
    if isinstance(value, str) or (vr == "PN" and not isinstance(value, MultiValue)):
        text = str(value)
        return _clean_text(vr, text, limit, value)
    try:  # several values (a multi-valued PN too): each cleaned on its own
        items = [str(v) for v in value]  # type: ignore[attr-defined]
    except TypeError:
        return value, None
    cleaned = [_clean_text(vr, t, limit, t)[0] for t in items]
    if cleaned == items:
        return value, None
    return cleaned, "cleaned (too long, or control characters)"


def _clean_text(vr: str, text: str, limit: int, original: object) -> tuple[object, str | None]:
    pattern = _CONTROL if vr in _MULTI_LINE else _CONTROL_SINGLE_LINE
    fixed = pattern.sub("", text)
    if vr == "PN":
        groups = fixed.split("=")[:3]
        fixed = "=".join("^".join(c[:64] for c in g.split("^")[:5]) for g in groups)
    elif len(fixed) > limit:
        fixed = fixed[:limit]
    if fixed == text:
        return original, None
    return fixed, "cleaned (too long, or control characters)"


def _da(text: str) -> str:
    t = text.strip()
    if not t:
        return t
    m = _SEPARATED_DATE.match(t)
    if m:
        t = f"{m.group(1)}{int(m.group(2)):02d}{int(m.group(3)):02d}"
    if len(t) == 8 and t.isdigit():
        try:
            datetime.date(int(t[:4]), int(t[4:6]), int(t[6:]))
            return t
        except ValueError:
            return ""
    return ""


def _tm(text: str) -> str:
    t = text.strip()
    if not t:
        return t
    m = _SEPARATED_TIME.match(t)
    if m:
        t = f"{int(m.group(1)):02d}{m.group(2)}{m.group(3) or '00'}" + (f".{m.group(4)}" if m.group(4) else "")
    head, _, frac = t.partition(".")
    if not head.isdigit() or len(head) not in (2, 4, 6) or (frac and not frac.isdigit()) or len(frac) > 6:
        return ""
    hh, mm, ss = int(head[:2]), int(head[2:4] or 0), int(head[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return ""
    return t


_SEPARATED_DT = re.compile(r"^(\d{4})[-./](\d{2})[-./](\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?(.*)$")
# what may follow the time of a separated date-time: fractional seconds, a UTC offset (ISO 8601)
_DT_TAIL = re.compile(r"^(?:[.,](\d{1,6}))?\s*(Z|[+-]\d{2}(?::?\d{2})?)?$")
_DT_DICOM = re.compile(r"^(\d{4,14})(\.\d{1,6})?([+-]\d{4}|Z)?$")


def _utc_offset(text: str) -> str | None:
    """``Z``, ``+01``, ``+01:00``, ``-0500`` → DICOM's ``&ZZXX``; None outside -1200..+1400."""
    if text == "Z":
        return "+0000"
    sign, digits = text[0], text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if minutes > 59 or hours * 60 + minutes > (14 * 60 if sign == "+" else 12 * 60):
        return None
    return f"{sign}{hours:02d}{minutes:02d}"


def _dt(text: str) -> str:
    """A DT in DICOM form (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``, trailing parts optional), or ""
    when it is not a real date-time. Fractional seconds and the UTC offset are kept when
    valid (fractions only after the seconds; offsets -1200..+1400)."""
    t = text.strip()
    if not t:
        return t
    m = _SEPARATED_DT.match(t)
    if m:
        tail = _DT_TAIL.match(m.group(7).strip())
        if tail is None or (tail.group(1) and m.group(6) is None):
            return ""
        t = f"{m.group(1)}{m.group(2)}{m.group(3)}{m.group(4)}{m.group(5)}{m.group(6) or '00'}"
        t += f".{tail.group(1)}" if tail.group(1) else ""
        if tail.group(2):
            offset = _utc_offset(tail.group(2))
            if offset is None:
                return ""
            t += offset
    core = _DT_DICOM.match(t)
    if not core or len(core.group(1)) % 2:
        return ""
    digits, fraction, offset = core.group(1), core.group(2) or "", core.group(3) or ""
    if fraction and len(digits) != 14:
        return ""
    if len(digits) >= 8 and not _da(digits[:8]):
        return ""
    if len(digits) > 8 and not _tm(digits[8:]):
        return ""
    if offset:
        fixed = _utc_offset(offset)
        if fixed is None:
            return ""
        offset = fixed
    return digits + fraction + offset
