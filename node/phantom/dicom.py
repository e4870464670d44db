"""Phantom → DICOM: CR Image and Digital X-Ray Image (For Presentation) objects.

Objects are grouped as a modality sends them: one patient and study per ``StudyPlan``, one
series per view (and per modality), instances numbered within their series. Every UID derives
deterministically from the generator seed and the image's place in the plan, so a run repeated
with the same arguments writes the same bytes.

A configurable fraction of images gets *unreliable metadata*, as found in real archives: wrong
or emptied BodyPartExamined, ViewPosition, (Image)Laterality and Series/Study descriptions. The
keywords touched are listed in ``GroundTruth.corrupted_tags``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from node.domain import Side, View
from node.phantom.api import PhantomImage

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpegls-near": JPEGLSNearLossless,
    "j2k": JPEG2000Lossless,
    "j2k-lossy": JPEG2000,
}
LOSSY = {"jpegls-near", "j2k-lossy"}
UNPAIRED_BODY_PARTS = {"PELVIS", "CHEST", "ABDOMEN", "LSPINE"}

MANUFACTURER = "hipnode"
MODEL = "hipnode phantom"

# (code value, scheme, meaning) for AnatomicRegionSequence (CID 4031)
_REGION = {
    "PELVIS": ("12921003", "SCT", "Pelvis"),
    "HIP": ("24136001", "SCT", "Hip joint"),
    "CHEST": ("51185008", "SCT", "Thorax"),
    "KNEE": ("72696002", "SCT", "Knee"),
    "HAND": ("85562004", "SCT", "Hand"),
    "ABDOMEN": ("818981001", "SCT", "Abdomen"),
}


_VIEW_CODES = {
    "AP": ("399348003", "SCT", "antero-posterior"),
    "PA": ("399300004", "SCT", "postero-anterior"),
    "LL": ("399173006", "SCT", "left lateral"),
    "RL": ("399198007", "SCT", "right lateral"),
}


def uid(seed: int, *parts: object) -> UID:
    """Deterministic UID under 2.25 (a UUID-derived root) from the seed and the image's place."""
    text = "|".join(["hipnode-phantom", str(seed), *map(str, parts)])
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    return UID(f"2.25.{value}")


@dataclass(frozen=True)
class StudyInfo:
    seed: int
    study: int  # study number within the run
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    study_description: str
    modality: str  # CR | DX
    institution: str

    @property
    def study_uid(self) -> UID:
        return uid(self.seed, "study", self.study)


def make_study_info(seed: int, study: int, sex: str, rng: np.random.Generator, modality: str | None = None) -> StudyInfo:
    base = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    age = int(rng.integers(35, 92))
    birth = base.replace(year=base.year - age) if not (base.month == 2 and base.day == 29) else base.replace(
        year=base.year - age, day=28)
    hh, mm, ss = int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    return StudyInfo(
        seed=seed,
        study=study,
        patient_id=f"PH{seed % 100000:05d}{study:06d}",
        patient_name=f"PHANTOM^{'F' if sex == 'F' else 'M'}{study:06d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        study_date=base.strftime("%Y%m%d"),
        study_time=f"{hh:02d}{mm:02d}{ss:02d}",
        accession=f"A{seed % 1000:03d}{study:07d}",
        study_description=str(rng.choice(["XR PELVIS AND HIP", "XR HIP", "RÖ BECKEN", "HIP FOLLOW-UP", "XR"])),
        modality=modality or ("CR" if rng.random() < 0.4 else "DX"),
        institution="Phantom General Hospital",
    )


def _view_attrs(img: PhantomImage) -> tuple[str, str, str, str]:
    """(BodyPartExamined, ViewPosition, laterality, SeriesDescription) that are *correct*."""
    gt = img.truth
    side = gt.imaged_sides[0].value if len(gt.imaged_sides) == 1 else ""
    if gt.view is View.AP_PELVIS:
        return "PELVIS", "AP", "B", "AP PELVIS"
    if gt.view is View.AP_HIP:
        return "HIP", "AP", side, f"AP HIP {'RIGHT' if side == 'R' else 'LEFT'}"
    if gt.view is View.LATERAL_HIP:
        return "HIP", "LL" if side == "L" else "RL", side, f"CROSS-TABLE LAT HIP {side}"
    if gt.view is View.OBLIQUE_HIP:
        return "HIP", "AP", side, f"FROG LEG HIP {side}"
    kind = (gt.other_kind or "chest").upper()
    vp = "PA" if kind in ("CHEST", "HAND") else "AP"
    return kind, vp, "U", f"{vp} {kind}"


def series_key(img: PhantomImage) -> str:
    """Images of one study that share this key go in one series."""
    gt = img.truth
    return f"{gt.view.value}:{gt.other_kind or ''}:{''.join(s.value for s in gt.imaged_sides)}"


def build_dataset(
    img: PhantomImage,
    info: StudyInfo,
    series_number: int,
    instance_number: int,
    rng: np.random.Generator,
    unreliable: bool = False,
) -> Dataset:
    """A complete CR or DX For Presentation dataset (native pixel data, not yet encoded)."""
    gt = img.truth
    modality = info.modality
    sop_class = ComputedRadiographyImageStorage if modality == "CR" else DigitalXRayImageStorageForPresentation
    series_uid = uid(info.seed, "series", info.study, series_number)
    sop_uid = uid(info.seed, "sop", info.study, series_number, instance_number)
    body, view_pos, lat, series_desc = _view_attrs(img)
    corrupted: list[str] = []
    study_desc = info.study_description
    if unreliable:
        choices = ["BodyPartExamined", "ViewPosition", "Laterality", "SeriesDescription", "StudyDescription"]
        k = int(rng.integers(1, 4))
        for name in rng.choice(choices, size=k, replace=False):
            name = str(name)
            corrupted.append(name)
            if name == "BodyPartExamined":
                body = str(rng.choice(["", "CHEST", "ABDOMEN", "LSPINE", "KNEE", "EXTREMITY", "PELVIS" if body != "PELVIS" else "HIP"]))
            elif name == "ViewPosition":
                view_pos = str(rng.choice(["", "PA", "LL", "RL", "AP" if view_pos != "AP" else "LAT"]))
                if view_pos == "LAT":
                    view_pos = "LL"
            elif name == "Laterality":
                lat = str(rng.choice([v for v in ("R", "L", "B", "U") if v != lat]))
            elif name == "SeriesDescription":
                series_desc = str(rng.choice(["", "CHEST PA", "UNKNOWN", "SCOUT", "KNEE AP", "Series 1"]))
            elif name == "StudyDescription":
                study_desc = str(rng.choice(["", "CT ABDOMEN", "MISC", "XR CHEST"]))
    gt.corrupted_tags = sorted(corrupted)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HIPNODE_PHANTOM"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    img_type = ["ORIGINAL", "PRIMARY"] if modality == "DX" else ["ORIGINAL", "PRIMARY", ""]
    ds.ImageType = img_type
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = info.study_date
    ds.SeriesDate = info.study_date
    ds.ContentDate = info.study_date
    ds.AcquisitionDate = info.study_date
    t = dt.datetime.strptime(info.study_time, "%H%M%S") + dt.timedelta(minutes=series_number, seconds=instance_number)
    ds.StudyTime = info.study_time
    ds.SeriesTime = t.strftime("%H%M%S")
    ds.ContentTime = t.strftime("%H%M%S")
    ds.AcquisitionTime = t.strftime("%H%M%S")
    ds.AccessionNumber = info.accession
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = info.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM1"
    ds.StudyDescription = study_desc
    ds.SeriesDescription = series_desc
    ds.ManufacturerModelName = MODEL
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    ds.BodyPartExamined = body
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "hipnode-phantom 1"
    ds.PatientPosition = ""
    ds.ViewPosition = view_pos
    ds.KVP = f"{img.spec.imaging.kvp:.1f}"
    ds.DistanceSourceToDetector = f"{img.spec.geometry.sid_mm:.1f}"
    ds.ExposureTime = "40"
    ds.XRayTubeCurrent = "250"
    ds.Exposure = "10"
    ds.ImagerPixelSpacing = [f"{gt.imager_pixel_spacing_mm:.6f}"] * 2
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{info.study % 100000}"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = _patient_orientation(img)
    if modality == "CR":
        # General Series Laterality is only allowed for paired body parts
        if body not in UNPAIRED_BODY_PARTS:
            ds.Laterality = lat if lat in ("R", "L") else ""
        elif "Laterality" in corrupted:
            corrupted.remove("Laterality")
            gt.corrupted_tags = sorted(corrupted)
    else:
        ds.ImageLaterality = lat if lat in ("R", "L", "B", "U") else "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = gt.photometric
    ds.Rows = gt.rows
    ds.Columns = gt.cols
    ds.BitsAllocated = 16
    ds.BitsStored = gt.bits_stored
    ds.HighBit = gt.bits_stored - 1
    ds.PixelRepresentation = 0
    vmax = (1 << gt.bits_stored) - 1
    ds.WindowCenter = f"{(vmax + 1) / 2:.1f}"
    ds.WindowWidth = f"{vmax + 1}"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if gt.photometric == "MONOCHROME2" else 1
        ds.PresentationLUTShape = "IDENTITY" if gt.photometric == "MONOCHROME2" else "INVERSE"
        ds.BurnedInAnnotation = "NO"
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorConfiguration = "AREA"
        ds.DetectorID = "PH-DET-1"
        ds.PixelSpacing = [f"{gt.imager_pixel_spacing_mm / gt.magnification:.6f}"] * 2
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "magnification at the hip centre"
        ds.EstimatedRadiographicMagnificationFactor = f"{gt.magnification:.4f}"
        ds.DistanceSourceToPatient = f"{img.spec.geometry.sid_mm / gt.magnification:.4f}"[:16]
        ds.FieldOfViewShape = "RECTANGLE"
        ds.FieldOfViewDimensions = [round(gt.rows * gt.imager_pixel_spacing_mm),
                                    round(gt.cols * gt.imager_pixel_spacing_mm)]
        region = _REGION.get(_view_attrs(img)[0], _REGION["PELVIS"])
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = region
        ds.AnatomicRegionSequence = DicomSequence([code])
        ds.AcquisitionContextSequence = DicomSequence([])
        vcode = _VIEW_CODES.get(view_pos)
        if vcode is not None:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = vcode
            item.ViewModifierCodeSequence = DicomSequence([])
            ds.ViewCodeSequence = DicomSequence([item])
        ds.PositionerType = ""
    else:
        ds.PlateID = "PLATE1"
        ds.CassetteOrientation = "LANDSCAPE" if gt.cols >= gt.rows else "PORTRAIT"
        ds.CassetteSize = "35CMX43CM"
    ds.PixelData = np.ascontiguousarray(img.pixels, dtype="<u2").tobytes()
    return ds


def _patient_orientation(img: PhantomImage) -> list[str]:
    """Direction of the image rows (+x) and columns (+y) in patient terms."""
    gt = img.truth
    if gt.view is View.LATERAL_HIP:
        return ["HL" if gt.imaged_sides[0] is Side.RIGHT else "HR", "P"]
    if gt.view is View.OTHER and gt.other_kind == "chest":
        return ["L", "F"]
    return ["L", "F"]


def encode(ds: Dataset, syntax: str) -> Dataset:
    """Encode pixel data in place in one of ``TRANSFER_SYNTAXES``."""
    ts = TRANSFER_SYNTAXES[syntax]
    if syntax in ("explicit", "implicit", "deflate"):
        ds.file_meta.TransferSyntaxUID = ts
        return ds
    kwargs: dict[str, Any] = {}
    if syntax == "jpegls-near":
        kwargs["jls_error"] = 2
    if syntax == "j2k-lossy":
        kwargs["j2k_psnr"] = [55.0]  # "visually lossless"
    raw = int(ds.Rows) * int(ds.Columns) * 2
    ds.compress(ts, encoding_plugin="", **kwargs)
    if syntax in LOSSY:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{raw / max(len(ds.PixelData), 1):.2f}"
        ds.LossyImageCompressionMethod = "ISO_15444_1" if syntax == "j2k-lossy" else "ISO_14495_1"
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
