"""Synthetic inputs for the compose tests: CR source images and the findings about them.

The sources are small, real CR images (valid for dciodvfy) so that the outputs can be checked
with dcentvfy against them. The findings are hand-written with known values so every number
the SR carries can be asserted exactly. The first test here checks the sources themselves: an
invalid source would make every downstream check meaningless.
"""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid

from node.domain import (
    Box,
    CupMeasurement,
    Ellipse,
    HipFindings,
    ImageFindings,
    ModelInfo,
    MorphologyFlag,
    Point,
    PriorMeasurement,
    ScreenReason,
    SeriesFindings,
    Side,
    View,
)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1002"
ROWS, COLS = 384, 512

MODELS = [
    ModelInfo("triage", "1.0.0"),
    ModelInfo("detector", "1.2.0"),
    ModelInfo("morphology", "0.9.1"),
]


def sop_uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.2{n:03d}"


def synthetic_pixels(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A 12-bit 'radiograph': soft tissue gradient, two bright cups, a pelvic ring."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    img = 600 + 900 * np.exp(-(((xx - cols / 2) / (cols / 2.5)) ** 2))
    for cx in (cols * 0.27, cols * 0.73):
        r = np.hypot(xx - cx, yy - rows * 0.55)
        img += 2500 * ((r > 34) & (r < 40))
    ring = np.hypot((xx - cols / 2) / 1.6, yy - rows * 0.45)
    img += 700 * ((ring > 90) & (ring < 100))
    return np.asarray(np.clip(img, 0, 4095), dtype=np.uint16)


def make_source(
    n: int,
    *,
    series_uid: str = SERIES_UID,
    study_uid: str = STUDY_UID,
    with_pixels: bool = True,
    view_position: str = "AP",
) -> Dataset:
    """A CR image of the hip study, as a modality would send it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CR_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid(n))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid(n)
    ds.StudyDate = "20240305"
    ds.StudyTime = "101500"
    ds.ContentDate = "20240305"
    ds.ContentTime = "101700"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "CR"
    ds.Manufacturer = "Phantom Imaging"
    ds.InstitutionName = "Test Hospital"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "XR PELVIS AND HIP"
    ds.SeriesDescription = "PELVIS AP"
    ds.PatientName = "Müller^Anna"
    ds.PatientID = "PID0001"
    ds.PatientBirthDate = "19570412"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "PELVIS"
    ds.ViewPosition = view_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "S1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = n
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.LossyImageCompression = "00"
    if with_pixels:
        ds.PixelData = synthetic_pixels().tobytes()
    return ds


def make_non_image(n: int) -> Dataset:
    """Header of an Encapsulated PDF that reached the node (screened out as NOT_IMAGE)."""
    ds = make_source(n, with_pixels=False, series_uid=SERIES_UID + ".9")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation", "ImagerPixelSpacing", "WindowCenter",
                    "WindowWidth", "PatientOrientation", "ViewPosition"):
        delattr(ds, keyword)
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.Modality = "DOC"
    return ds


def bilateral_tha_image() -> ImageFindings:
    """AP pelvis, THA both sides, cup angles known to two decimals."""
    right_cup = CupMeasurement(
        side=Side.RIGHT,
        inclination_deg=42.37,
        anteversion_deg=17.81,
        inclination_reference="inter-teardrop line",
        anteversion_method="Lewinnek",
        anteversion_liaw_deg=19.05,
        ellipse=Ellipse(cx=138.0, cy=211.0, semi_major=37.5, semi_minor=11.5, angle_deg=137.6),
        reference_line=(Point(180.0, 250.0), Point(332.0, 251.5)),
        quality=0.93,
    )
    left_cup = CupMeasurement(
        side=Side.LEFT,
        inclination_deg=38.12,
        anteversion_deg=22.46,
        inclination_reference="inter-teardrop line",
        anteversion_method="Lewinnek",
        ellipse=Ellipse(cx=374.0, cy=211.0, semi_major=37.0, semi_minor=14.2, angle_deg=38.1),
        reference_line=(Point(180.0, 250.0), Point(332.0, 251.5)),
        quality=0.88,
    )
    hips = [
        HipFindings(
            side=Side.RIGHT,
            implant_present=True,
            implant_probability=0.987,
            joint_box=Box(90, 160, 190, 270, "hip_joint_right", 0.95),
            cup_box=Box(98, 172, 178, 250, "cup", 0.97),
            cup=right_cup,
            morphology=[
                MorphologyFlag("ischial_spine_sign", 0.71, 0.5),
                MorphologyFlag("other_abnormality", 0.12, 0.5),
            ],
            morphology_refusal="hardware in joint region",
        ),
        HipFindings(
            side=Side.LEFT,
            implant_present=True,
            implant_probability=0.954,
            joint_box=Box(322, 160, 422, 270, "hip_joint_left", 0.94),
            cup_box=Box(334, 172, 414, 250, "cup", 0.96),
            cup=left_cup,
            morphology=[MorphologyFlag("ischial_spine_sign", 0.22, 0.5)],
        ),
    ]
    return ImageFindings(
        sop_instance_uid=sop_uid(1),
        sop_class_uid=CR_IMAGE_STORAGE,
        view=View.AP_PELVIS,
        view_probability=0.991,
        imaged_sides=(Side.RIGHT, Side.LEFT),
        hips=hips,
        metadata_mismatches=["ViewPosition says LL but the image is an AP pelvis"],
        boxes=[h.joint_box for h in hips if h.joint_box is not None],
    )


def native_lateral_image() -> ImageFindings:
    """Lateral right hip, no implant, morphology measured."""
    hip = HipFindings(
        side=Side.RIGHT,
        implant_present=False,
        implant_probability=0.031,
        joint_box=Box(180, 120, 330, 280, "hip_joint_right", 0.9),
        morphology=[
            MorphologyFlag("cam_deformity", 0.83, 0.5),
            MorphologyFlag("dysplasia", 0.07, 0.5),
            MorphologyFlag("ischial_spine_sign", 0.31, 0.5),
            MorphologyFlag("other_abnormality", 0.04, 0.5),
        ],
        lateral_centre_edge_deg=31.4,
        tonnis_deg=6.2,
        femoral_head=(Point(262.0, 210.0), 38.5),
        sourcil=(Point(236.0, 168.0), Point(292.0, 160.0)),
    )
    return ImageFindings(
        sop_instance_uid=sop_uid(2),
        sop_class_uid=CR_IMAGE_STORAGE,
        view=View.LATERAL_HIP,
        view_probability=0.88,
        imaged_sides=(Side.RIGHT,),
        hips=[hip],
        boxes=[hip.joint_box] if hip.joint_box else [],
    )


def refused_cup_image() -> ImageFindings:
    """Oblique left hip whose cup could not be measured, plus horizontal-reference fallback."""
    hip = HipFindings(
        side=Side.LEFT,
        implant_present=True,
        implant_probability=0.9,
        cup=CupMeasurement(
            side=Side.LEFT,
            inclination_deg=None,
            anteversion_deg=None,
            inclination_reference="image horizontal",
            anteversion_method="Lewinnek",
            refusal_reason="cup rim not visible (ellipse fit quality 0.21)",
            quality=0.21,
        ),
    )
    return ImageFindings(
        sop_instance_uid=sop_uid(3),
        sop_class_uid=CR_IMAGE_STORAGE,
        view=View.OBLIQUE_HIP,
        view_probability=0.6,
        imaged_sides=(Side.LEFT,),
        hips=[hip],
    )


def screened_image() -> ImageFindings:
    """A chest radiograph sent with the hip study."""
    return ImageFindings(
        sop_instance_uid=sop_uid(4),
        sop_class_uid=CR_IMAGE_STORAGE,
        screened_out=ScreenReason.NOT_HIP,
        screen_detail="chest radiograph",
    )


def full_series() -> tuple[SeriesFindings, list[Dataset]]:
    """Four images: bilateral THA AP pelvis, native lateral, refused oblique, screened chest."""
    findings = SeriesFindings(
        series_instance_uid=SERIES_UID,
        study_instance_uid=STUDY_UID,
        images=[bilateral_tha_image(), native_lateral_image(), refused_cup_image(), screened_image()],
        models=list(MODELS),
    )
    sources = [
        make_source(1, with_pixels=False),
        make_source(2, with_pixels=False, view_position="LL"),
        make_source(3, with_pixels=False),
        make_source(4, with_pixels=False),
    ]
    return findings, sources


PRIORS = [
    PriorMeasurement(Side.RIGHT, "1.2.826.0.1.3680043.8.498.900", "20210114", 40.0, 15.5),
    PriorMeasurement(Side.RIGHT, "1.2.826.0.1.3680043.8.498.899", "20190601", 30.0, 10.0),  # older
    PriorMeasurement(Side.LEFT, "1.2.826.0.1.3680043.8.498.900", "20210114", 39.0, None),
]


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def roundtrip(ds: Dataset) -> Dataset:
    from pydicom import dcmread

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by dicom3tools' dciodvfy."""
    proc = subprocess.run(["/usr/bin/dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


def dcentvfy(paths: list[Path]) -> list[str]:
    """Entity-consistency errors/warnings across ``paths`` (dicom3tools' dcentvfy)."""
    proc = subprocess.run(
        ["/usr/bin/dcentvfy", *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]


def test_synthetic_sources_are_valid_cr(tmp_path: Path) -> None:
    path = write(make_source(1), tmp_path / "src.dcm")
    errors, _ = dciodvfy(path)
    assert errors == []
    assert generate_uid()  # pydicom works in this environment
