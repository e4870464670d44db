"""Stored DICOM → screened, decoded, normalised pixels for the models.

Three steps, each with a reason when it says no (``ScreenReason`` + a one-line detail that ends
up in the registry and in the SR):

1. ``screen_metadata`` — header only, no pixel decode: is it an image at all, an accepted
   modality and image type, a plausible size and bit depth, and does decoding it fit
   ``screening.max_decoded_mb``? Cheap, so it runs first. A stored file is read up to its pixel
   data only (``read_header``), so a 2 GB multi-frame object costs its header, not 2 GB.
2. ``decode`` — pixel data in any transfer syntax the receiver accepts (native, deflate, RLE,
   JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000) via pydicom's handlers (pylibjpeg,
   openjpeg, gdcm), the first frame only, read from the file alone. A compressed frame whose
   own header declares a larger image than the DICOM header is refused before any decoder runs
   (``node.codestream``: decoders allocate what the codestream says). Any failure (truncated,
   corrupt codestream) becomes ``UNDECODABLE``; a constant image becomes ``BLANK``.
   Colour-encoded grey (RGB or YBR whose channels are equal or nearly so, as digitised films
   and some exports are) is reduced to one grey channel here; a true colour image is
   ``NOT_RADIOGRAPH`` with the channel difference in the detail (``colour_to_grey``).
3. ``normalise`` — Modality LUT (rescale), window (the percentile window the models were
   trained with, or the stored VOI LUT / window for display), MONOCHROME1 inversion → float32
   0..1 where bone is bright.

Header values are hints, never decisions: the models decide the view and side, and
``metadata_mismatches`` records where the header disagrees (seed 004: such metadata is wrong
often enough that trusting it would mis-file measurements).
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from node.codestream import FrameGeometry, first_fragment, read_geometry
from node.config import ScreeningConfig
from node.domain import ScreenReason, Side, View

log = logging.getLogger(__name__)

WindowMode = Literal["percentile", "voi"]


class PixelError(Exception):
    """An image cannot be used; carries the screening reason and a detail line."""

    def __init__(self, reason: ScreenReason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ScreenResult:
    """``reason is None`` means accepted."""

    reason: ScreenReason | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.reason is None


ACCEPTED = ScreenResult()


@dataclass
class Radiograph:
    """A decoded, accepted image: the dataset (header), stored-value pixels and 0..1 pixels."""

    dataset: Dataset
    raw: np.ndarray  # stored values after the Modality LUT, float32 (rows, columns)
    image01: np.ndarray  # float32 0..1, bone bright, windowed for the models
    notes: tuple[str, ...] = ()  # what was done to read it (e.g. colour-encoded grey), for the SR

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.raw.shape[0]), int(self.raw.shape[1]))


def read_dataset(source: Path | str | bytes | Dataset) -> Dataset:
    """Read a stored instance (path or bytes); raises ``PixelError(NOT_IMAGE)`` if not DICOM."""
    if isinstance(source, Dataset):
        return source
    try:
        if isinstance(source, bytes):
            return pydicom.dcmread(io.BytesIO(source), force=True)
        return pydicom.dcmread(str(source), force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise PixelError(ScreenReason.NOT_IMAGE, f"cannot parse DICOM: {exc}") from None


#: Pixel data elements, by tag; ``read_header`` stops in front of the first of them.
_PIXEL_ELEMENTS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
#: Frames decoded per image: the models look at the first frame of a multi-frame object only.
FRAMES_DECODED = 1


@dataclass(frozen=True)
class PixelElement:
    """Where a stored file's pixel data is, without having read it."""

    keyword: str
    encapsulated: bool
    geometry: FrameGeometry | None = None  # what the first compressed frame declares, if readable


def read_header(path: Path | str) -> tuple[Dataset, PixelElement | None] | None:
    """A stored file's dataset up to its pixel data, and that element located (``None``: the
    file has none), reading no pixel bytes but the first compressed frame's own header.
    ``None`` for a Deflated Explicit VR file, which cannot be positioned in without inflating
    it, and for a file without File Meta: the caller reads those whole, as before (the receiver
    bounds inflation, ``node.max_inflated_mb``, and always writes File Meta).
    Raises ``PixelError(NOT_IMAGE)`` if it is not DICOM."""
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            meta = getattr(ds, "file_meta", None)
            if meta is None or not meta.get("TransferSyntaxUID"):
                return None  # no File Meta (an archive's raw dataset): read whole, as before
            syntax = UID(str(meta.TransferSyntaxUID))
            if syntax == DeflatedExplicitVRLittleEndian or not syntax.is_transfer_syntax:
                return None
            order = "<" if syntax.is_little_endian else ">"
            head = fp.read(8)  # pydicom stopped in front of the pixel data element, if any
            if len(head) != 8:
                return ds, None
            group, element = struct.unpack(order + "HH", head[:4])
            keyword = _PIXEL_ELEMENTS.get(group << 16 | element)
            if keyword is None:
                return ds, None
            if syntax.is_implicit_VR:
                (length,) = struct.unpack(order + "L", head[4:])
            else:
                tail = fp.read(4)
                if len(tail) != 4:
                    return ds, None
                (length,) = struct.unpack(order + "L", tail)
            if length != 0xFFFFFFFF:
                return ds, PixelElement(keyword, False)
            fragment = first_fragment(fp)
            geometry = read_geometry(fp, fragment) if fragment else None
            return ds, PixelElement(keyword, True, geometry)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, struct.error) as exc:
        raise PixelError(ScreenReason.NOT_IMAGE, f"cannot parse DICOM: {exc}") from None


def decoded_frame_bytes(ds: Dataset) -> int:
    """Bytes the decoder's output for the frames we decode takes, from the header alone."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    return rows * cols * samples * ((bits + 7) // 8) * FRAMES_DECODED


def check_frame_geometry(ds: Dataset, geometry: FrameGeometry | None) -> None:
    """Refuse a compressed frame that declares a larger image than the header (before any
    decoder allocates it): ``PixelError(UNDECODABLE)`` naming both sizes."""
    if geometry is None:
        return
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if (
        geometry.rows > rows
        or geometry.columns > cols
        or geometry.components > samples
        or geometry.decoded_bytes > decoded_frame_bytes(ds)
    ):
        raise PixelError(
            ScreenReason.UNDECODABLE,
            f"the compressed frame declares {geometry.rows}x{geometry.columns}, {geometry.components} "
            f"component(s) of {geometry.precision} bits, the header {rows}x{cols}, {samples} of {bits}: "
            "not decoded (a decoder allocates what the frame declares)",
        )


def frame_geometry_in_memory(ds: Dataset) -> FrameGeometry | None:
    """``FrameGeometry`` of the first frame of a dataset whose (encapsulated) pixel data is
    already in memory; ``None`` for native pixel data or a codestream that cannot be sized."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not UID(str(syntax)).is_encapsulated:
        return None
    value = ds.get("PixelData")
    if not isinstance(value, bytes | bytearray):
        return None
    fp = io.BytesIO(value)
    fragment = first_fragment(fp)
    return read_geometry(fp, fragment) if fragment else None


def _image_type_matches(image_type: list[str], pattern: str) -> bool:
    """``pattern`` (values joined by backslash) occurs as a contiguous run in ``image_type``."""
    want = [p.strip().upper() for p in pattern.split("\\") if p.strip()]
    have = [v.strip().upper() for v in image_type]
    if not want:
        return False
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def screen_metadata(ds: Dataset, cfg: ScreeningConfig, *, has_pixels: bool | None = None) -> ScreenResult:
    """Header-only checks, in the order an operator would want them reported. ``has_pixels``
    for a header read without its pixel data (``read_header``)."""
    if has_pixels is None:
        has_pixels = any(k in ds for k in _PIXEL_ELEMENTS.values())
    if not has_pixels:
        return ScreenResult(ScreenReason.NOT_IMAGE, f"no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality not in {m.upper() for m in cfg.modalities}:
        return ScreenResult(
            ScreenReason.MODALITY, f"modality {modality or '(empty)'} not in {cfg.modalities}"
        )
    raw_type = ds.get("ImageType")
    image_type = [str(v) for v in raw_type] if raw_type is not None and not isinstance(raw_type, str) else []
    if isinstance(raw_type, str):
        image_type = raw_type.split("\\")
    for pattern in cfg.reject_image_types:
        if _image_type_matches(image_type, pattern):
            shown = "\\".join(image_type)
            return ScreenResult(ScreenReason.IMAGE_TYPE, f"image type {shown} matches {pattern}")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not (cfg.min_size_px <= rows <= cfg.max_size_px and cfg.min_size_px <= cols <= cfg.max_size_px):
        return ScreenResult(
            ScreenReason.SIZE, f"{rows}x{cols} outside {cfg.min_size_px}..{cfg.max_size_px} px per side"
        )
    bits_stored = int(ds.get("BitsStored", 0) or 0)
    bits_alloc = int(ds.get("BitsAllocated", 0) or 0)
    if not cfg.min_bits <= bits_stored <= cfg.max_bits or bits_alloc < bits_stored:
        return ScreenResult(
            ScreenReason.BIT_DEPTH,
            f"BitsStored {bits_stored} (allocated {bits_alloc}) outside {cfg.min_bits}..{cfg.max_bits}",
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    grey = samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2")
    colour = samples == 3 and photometric in COLOUR_PHOTOMETRICS  # grey or not: decided on the pixels
    if not (grey or colour):
        return ScreenResult(
            ScreenReason.NOT_RADIOGRAPH,
            f"{photometric or 'no photometric interpretation'}, {samples} samples/pixel",
        )
    need, cap = decoded_frame_bytes(ds), int(cfg.max_decoded_mb * 2**20)
    if need > cap:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return ScreenResult(
            ScreenReason.SIZE,
            f"decoding needs {need / 2**20:.1f} MiB ({rows}x{cols}, {samples} sample(s) of {bits_alloc} bits, "
            f"{FRAMES_DECODED} of {frames} frame(s)), over screening.max_decoded_mb ({cfg.max_decoded_mb:g} MiB)",
        )
    return ACCEPTED


# Colour encodings a grey radiograph arrives in (digitised films, some exports, RGB JPEG 2000).
COLOUR_PHOTOMETRICS = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT"}
)
# Largest channel disagreement still called grey, as a fraction of the channel range: lossy
# chroma subsampling and JPEG ringing leave a few grey levels between equal channels; a colour
# photograph, a coloured overlay or a heat map disagree by tens of percent.
GREY_TOLERANCE = 0.03


def colour_to_grey(arr: np.ndarray, photometric: str) -> tuple[np.ndarray, str]:
    """A 3-channel frame ``(rows, cols, 3)`` → ``(grey, note)`` when its channels carry one grey
    value; ``PixelError(NOT_RADIOGRAPH)`` naming the disagreement when it is true colour.

    Why not simply reject every colour image: digitised films and some archive exports store a
    grey radiograph as RGB (or YBR) with equal channels, and the issue is their pixels, not the
    encoding. YBR arrives either converted to RGB by the decoder (equal channels) or as
    luminance plus two chroma channels at mid-range (chroma flat): both are grey.
    """
    a = arr.astype(np.float32, copy=False)
    step = max(1, max(a.shape[0], a.shape[1]) // 512)
    sub = a[::step, ::step]
    span = float(sub.max() - sub.min()) or 1.0
    channel_spread = sub.max(axis=2) - sub.min(axis=2)
    spread = float(np.percentile(channel_spread, 99.0)) / span
    if spread <= GREY_TOLERANCE:
        grey = np.asarray(a.mean(axis=2), dtype=np.float32)
        return grey, f"{photometric} with equal channels, analysed as grey"
    if photometric.startswith("YBR"):
        chroma = sub[..., 1:]
        chroma_spread = float(np.percentile(np.abs(chroma - np.median(chroma)), 99.0)) / span
        if chroma_spread <= GREY_TOLERANCE:
            return np.ascontiguousarray(a[..., 0]), f"{photometric} with flat chroma, analysed as luminance"
    raise PixelError(
        ScreenReason.NOT_RADIOGRAPH,
        f"true colour image ({photometric}): channels differ by {100.0 * spread:.0f} % of the range "
        f"at the 99th percentile (grey tolerance {100.0 * GREY_TOLERANCE:g} %)",
    )


def decode(ds: Dataset) -> np.ndarray:
    """Stored values of the first frame after the Modality LUT, float32 ``(rows, columns)``.

    Raises ``PixelError(UNDECODABLE)`` with the decoder's message on any failure, and
    ``PixelError(NOT_RADIOGRAPH)`` for a true colour image (see ``decode_with_notes``).
    """
    return decode_with_notes(ds)[0]


def decode_with_notes(ds: Dataset, path: Path | str | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """``decode`` plus what was done to read the pixels (colour-encoded grey), for the SR.

    With ``path`` (the file ``ds`` is the header of, ``read_header``) the first frame is read
    from the file alone; the rest of the pixel data is never loaded."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        # only the first frame is read: a many-frame object must not cost a worker the memory
        # of all its frames (the size screen bounds one frame, not their number)
        if path is not None:
            arr = pixel_array(os.fspath(path), index=0)
        else:
            check_frame_geometry(ds, frame_geometry_in_memory(ds))
            arr = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except PixelError:
        raise
    except MemoryError:
        raise PixelError(
            ScreenReason.SIZE,
            f"out of memory decoding {ds.get('Rows', '?')}x{ds.get('Columns', '?')} "
            "(the worker's address space, jobs.max_address_space_mb, or the host's memory)",
        ) from None
    except Exception as exc:  # every decoder failure means the same thing here
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        message = " ".join(str(exc).split())[:400]  # one line for the registry and the SR
        raise PixelError(
            ScreenReason.UNDECODABLE, f"{type(exc).__name__} decoding {name}: {message}"
        ) from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1 and arr.ndim == (4 if samples == 3 else 3):
        arr = arr[0]
    notes: tuple[str, ...] = ()
    if samples == 3 and arr.ndim == 3 and arr.shape[2] == 3:
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        arr, note = colour_to_grey(arr, photometric)
        notes = (note,)
    if arr.ndim != 2:
        raise PixelError(ScreenReason.NOT_RADIOGRAPH, f"pixel array has shape {arr.shape}, expected 2-D")
    rows, cols = int(ds.get("Rows", arr.shape[0])), int(ds.get("Columns", arr.shape[1]))
    if arr.shape != (rows, cols):
        raise PixelError(ScreenReason.UNDECODABLE, f"decoded {arr.shape}, header says {rows}x{cols}")
    try:
        out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    except Exception as exc:  # a broken Modality LUT is as unusable as broken pixels
        raise PixelError(ScreenReason.UNDECODABLE, f"Modality LUT: {exc}") from None
    if not np.isfinite(out).all():
        raise PixelError(ScreenReason.UNDECODABLE, "non-finite values after the Modality LUT")
    return out, notes


def screen_pixels(raw: np.ndarray) -> ScreenResult:
    """Reject constant (blank) images. Padding is allowed; the central part must vary."""
    lo, hi = np.percentile(raw[:: max(1, raw.shape[0] // 512), :: max(1, raw.shape[1] // 512)], (1, 99))
    if not hi > lo:
        return ScreenResult(ScreenReason.BLANK, f"1st and 99th percentile both {float(lo):g}")
    return ACCEPTED


def percentile_window(raw: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map ``[p_low, p_high]`` of the image to 0..1 (clipped); robust to burned-in labels."""
    sub = raw[:: max(1, raw.shape[0] // 1024), :: max(1, raw.shape[1] // 1024)]
    lo, hi = np.percentile(sub, (low_pct, high_pct))
    if not hi > lo:
        return np.zeros(raw.shape, np.float32)
    out = (raw - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def _voi_window(ds: Dataset, raw: np.ndarray) -> np.ndarray | None:
    """The stored VOI LUT or first window as 0..1, or ``None`` if the header has neither."""
    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return None
    try:
        out = np.asarray(apply_voi_lut(raw, ds, index=0), dtype=np.float32)
    except Exception:  # a malformed VOI falls back to the percentile window
        log.debug("ignoring unusable VOI LUT / window")
        return None
    lo, hi = float(out.min()), float(out.max())
    if not hi > lo:
        return None
    return (out - lo) / (hi - lo)


def normalise(
    ds: Dataset,
    raw: np.ndarray,
    window: WindowMode = "percentile",
    low_pct: float = 0.5,
    high_pct: float = 99.5,
) -> np.ndarray:
    """Stored values → float32 0..1 with bone bright (MONOCHROME1 inverted).

    ``percentile`` is what the models use: it does not depend on the modality's window presets,
    which differ between vendors. ``voi`` honours the stored VOI LUT / window (for display) and
    falls back to the percentile window when there is none.
    """
    out = _voi_window(ds, raw) if window == "voi" else None
    if out is None:
        out = percentile_window(raw, low_pct, high_pct)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def load_radiograph(
    source: Path | str | bytes | Dataset,
    cfg: ScreeningConfig,
    window: WindowMode = "percentile",
    low_pct: float = 0.5,
    high_pct: float = 99.5,
) -> tuple[Radiograph | None, ScreenResult]:
    """Read, screen, decode and normalise; ``(None, reason)`` for an excluded image.

    A file is read up to its pixel data first and screened on that header (size, bit depth,
    ``max_decoded_mb``, a compressed frame's own declared size) before its first frame alone is
    decoded; bytes or a dataset are already in memory and are decoded from there."""
    ds: Dataset | None = None
    try:
        path = source if isinstance(source, str | Path) else None
        header = read_header(path) if path is not None else None
        if header is not None:
            ds, pixel = header
            verdict = screen_metadata(ds, cfg, has_pixels=pixel is not None)
            if not verdict.accepted:
                return None, verdict
            assert pixel is not None
            check_frame_geometry(ds, pixel.geometry)
        else:
            path = None
            ds = read_dataset(source)
            verdict = screen_metadata(ds, cfg)
            if not verdict.accepted:
                return None, verdict
        raw, notes = decode_with_notes(ds, path)
        verdict = screen_pixels(raw)
        if not verdict.accepted:
            return None, verdict
        image01 = normalise(ds, raw, window, low_pct, high_pct)
    except PixelError as exc:
        return None, ScreenResult(exc.reason, exc.detail)
    except MemoryError:
        rows, cols = (ds.get("Rows", "?"), ds.get("Columns", "?")) if ds is not None else ("?", "?")
        return None, ScreenResult(
            ScreenReason.SIZE,
            f"out of memory preparing {rows}x{cols} for the models "
            "(the worker's address space, jobs.max_address_space_mb, or the host's memory)",
        )
    return Radiograph(ds, raw, image01, notes), ACCEPTED


# --- pixel spacing --------------------------------------------------------------------------

# Detector pixels of projection radiography (CR / DX, digitised film) lie in this range; a value
# outside it is not a calibration anybody measured.
PLAUSIBLE_SPACING_MM = (0.025, 0.6)


def float_tag(ds: Dataset, keyword: str) -> float | None:
    """First value of a numeric header length (spacing, distance), ``None`` if absent or unusable."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, MultiValue | list | tuple):  # (row, column)
            value = value[0]
        out = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return out if np.isfinite(out) and out > 0 else None  # a length: zero or negative is no value


def pixel_spacing(ds: Dataset) -> tuple[float | None, str | None]:
    """Pixel spacing in mm to use for millimetre-based corrections, or ``(None, why not)``.

    Why be suspicious: exports and film digitisers often write ``PixelSpacing = 1\\1`` (or
    another round number) as a placeholder, and millimetres derived from it would be wrong by
    a factor of five or more without any sign. Imager Pixel Spacing (the detector's own) is
    preferred; a Pixel Spacing of exactly 1 mm with no calibration type and no Imager Pixel
    Spacing, or any value outside the range of real detectors, is reported, not used.
    """
    lo, hi = PLAUSIBLE_SPACING_MM
    imager = float_tag(ds, "ImagerPixelSpacing")
    if imager is not None:
        if lo <= imager <= hi:
            return imager, None
        return None, f"Imager Pixel Spacing {imager:g} mm is outside {lo:g}-{hi:g} mm: not used for millimetres"
    spacing = float_tag(ds, "PixelSpacing")
    if spacing is None:
        return None, None
    calibrated = bool(str(ds.get("PixelSpacingCalibrationType", "") or "").strip())
    if abs(spacing - 1.0) < 1e-6 and not calibrated:
        return None, "Pixel Spacing 1 mm without calibration looks like a placeholder: not used for millimetres"
    if not lo <= spacing <= hi:
        return None, f"Pixel Spacing {spacing:g} mm is outside {lo:g}-{hi:g} mm: not used for millimetres"
    return spacing, None


# --- metadata hints -------------------------------------------------------------------------

_VIEW_POSITION_HINTS: dict[str, set[View]] = {
    "AP": {View.AP_PELVIS, View.AP_HIP},
    "PA": {View.AP_PELVIS, View.AP_HIP},
    "LL": {View.LATERAL_HIP},
    "RL": {View.LATERAL_HIP},
    "LAT": {View.LATERAL_HIP},
    "LATERAL": {View.LATERAL_HIP},
    "RLD": {View.LATERAL_HIP},
    "LLD": {View.LATERAL_HIP},
    "XCL": {View.LATERAL_HIP},  # cross-table lateral
    "OBL": {View.OBLIQUE_HIP},
    "LAO": {View.OBLIQUE_HIP},
    "RAO": {View.OBLIQUE_HIP},
    "LPO": {View.OBLIQUE_HIP},
    "RPO": {View.OBLIQUE_HIP},
}
_HIP_BODY_PARTS = {"HIP", "PELVIS", "FEMUR", "HIPS", "HIPJOINT", "PELVIS HIP", "LOWER LIMB", "LEG"}
_SIDE_CODES = {"R": Side.RIGHT, "L": Side.LEFT}


def _text(ds: Dataset, keyword: str) -> str:
    value: Any = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def header_laterality(ds: Dataset) -> str:
    """The header's laterality code, upper case: ImageLaterality, else the series' Laterality
    ("" when neither says)."""
    return _text(ds, "ImageLaterality") or _text(ds, "Laterality")


def header_side(ds: Dataset) -> Side | None:
    """The one hip the header names (laterality R or L); None for B, U, blank or anything else."""
    return _SIDE_CODES.get(header_laterality(ds))


def metadata_mismatches(ds: Dataset, view: View, imaged_sides: tuple[Side, ...]) -> list[str]:
    """Human-readable disagreements between the models' decision and the DICOM header.

    Empty or unknown tag values are not mismatches (absent metadata says nothing).
    """
    out: list[str] = []
    position = _text(ds, "ViewPosition")
    hinted = _VIEW_POSITION_HINTS.get(position)
    if hinted is not None and view is not View.OTHER and view not in hinted:
        out.append(f"ViewPosition is {position} but the image was classified as {view.value}")
    body = _text(ds, "BodyPartExamined")
    if body:
        hip_like = body in _HIP_BODY_PARTS or "HIP" in body or "PELV" in body
        if view is View.OTHER and hip_like:
            out.append(f"BodyPartExamined is {body} but the image was classified as not a hip radiograph")
        elif view is not View.OTHER and not hip_like:
            out.append(f"BodyPartExamined is {body} but the image was classified as {view.value}")
    laterality = header_laterality(ds)
    tagged = _SIDE_CODES.get(laterality)
    if view in (View.AP_HIP, View.LATERAL_HIP, View.OBLIQUE_HIP) and len(imaged_sides) == 1:
        if tagged is not None and tagged is not imaged_sides[0]:
            out.append(
                f"Laterality is {laterality} but the imaged hip was classified as {imaged_sides[0].value}"
            )
        elif laterality == "B":
            out.append(
                f"Laterality is B (both) but the image was classified as a single {imaged_sides[0].value} hip"
            )
    elif view is View.AP_PELVIS and tagged is not None:
        out.append(f"Laterality is {laterality} but the image was classified as an AP pelvis (both hips)")
    return out


_AGE_UNITS = {"D": 1.0 / 365.25, "W": 7.0 / 365.25, "M": 1.0 / 12.0, "Y": 1.0}


def _da(ds: Dataset, keyword: str) -> tuple[int, int, int] | None:
    """A DICOM DA as (year, month, day); ``None`` for anything malformed (archives hold
    ``19500000``, ``2024-01-05`` and worse: a hint, never a reason to fail).

    Read from the raw element bytes: letting pydicom convert a malformed date makes it log a
    validation warning that quotes the value, and a birth date must never reach a log."""
    elem = ds.get_item(keyword)
    value = elem.value if elem is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value or "").strip().replace("-", "").replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    y, m, d = int(text[:4]), int(text[4:6]), int(text[6:])
    if not (1850 <= y <= 2200 and 1 <= m <= 12 and 1 <= d <= 31):
        return None
    return y, m, d


def patient_age_years(ds: Dataset) -> float | None:
    """Age at the study from Patient's Age (``006Y``, ``018M``…) or else birth and study dates;
    ``None`` when the header does not say it credibly. Used only to decide whether adult
    thresholds apply; the value is never logged."""
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in _AGE_UNITS:
        return int(age[:3]) * _AGE_UNITS[age[3]]
    born = _da(ds, "PatientBirthDate")
    studied = _da(ds, "StudyDate") or _da(ds, "AcquisitionDate") or _da(ds, "ContentDate")
    if born is None or studied is None:
        return None
    years = (studied[0] - born[0]) + (studied[1] - born[1]) / 12.0 + (studied[2] - born[2]) / 365.25
    return years if 0.0 <= years <= 130.0 else None
