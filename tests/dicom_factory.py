"""Small helpers that make DICOM files for tests and benchmarks.

Everything here is synthetic (no patient data) and deterministic for a given seed, so a failing
test can be re-run on the same bytes. Other test modules may import these helpers.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

_PREFIX = "1.2.826.0.1.3680043.10.1137."  # test UIDs; derived from seeds below


def uid_for(*parts: object) -> UID:
    """A valid, deterministic UID for ``parts`` (so repeated runs produce the same objects)."""
    return generate_uid(prefix=_PREFIX, entropy_srcs=[str(p) for p in parts])


def make_image(
    *,
    rows: int = 64,
    cols: int = 64,
    bits: int = 16,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class: str = DigitalXRayImageStorageForPresentation,
    modality: str = "DX",
    patient_id: str = "HIPTEST0001",
    instance_number: int = 1,
    pixels: bytes | None = None,
) -> Dataset:
    """A minimal but valid single-frame MONOCHROME2 image (Explicit VR Little Endian).

    ``pixels`` lets a caller reuse one large pixel buffer for many instances (benchmarks).
    """
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    study_uid = study_uid or uid_for("study", seed)
    series_uid = series_uid or uid_for("series", seed)
    sop_uid = sop_uid or uid_for("sop", seed, instance_number)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.PatientName = "Phantom^Hip"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "HIPNODE-TEST"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{seed:06d}"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.BodyPartExamined = "PELVIS"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if pixels is None:
        rng = np.random.default_rng(seed * 100_003 + instance_number)
        dtype = np.uint16 if bits == 16 else np.uint8
        arr = rng.integers(0, 2**ds.BitsStored, size=(rows, cols), dtype=dtype)
        pixels = arr.tobytes()
    expected = rows * cols * bits // 8
    if len(pixels) != expected:
        raise ValueError(f"pixels must be {expected} bytes, got {len(pixels)}")
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return ds


def make_result_stub() -> Dataset:
    """The least a result object needs to be written by ``Pipeline._write``: an SR SOP class,
    fresh instance and series UIDs and a file meta header (no content)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble + file meta) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_series(
    directory: Path,
    count: int,
    *,
    seed: int = 0,
    rows: int = 64,
    cols: int = 64,
    bits: int = 16,
    pixels: bytes | None = None,
) -> list[Path]:
    """``count`` instances of one series written as ``directory/img#####.dcm``."""
    return [
        write(
            make_image(rows=rows, cols=cols, bits=bits, seed=seed, instance_number=i + 1, pixels=pixels),
            directory / f"img{i:05d}.dcm",
        )
        for i in range(count)
    ]


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """Split Part 10 bytes into (preamble + file meta, dataset) using the group length."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    pos = 132
    # (0002,0000) UL group length, explicit VR LE: tag(4) VR(2) len(2) value(4)
    tag_group, tag_elem = struct.unpack("<HH", data[pos : pos + 4])
    if (tag_group, tag_elem) != (2, 0) or data[pos + 4 : pos + 6] != b"UL":
        raise ValueError("file meta does not start with (0002,0000) UL")
    (group_length,) = struct.unpack("<I", data[pos + 8 : pos + 12])
    end = pos + 12 + group_length
    return data[:end], data[end:]


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: what travels in a C-STORE."""
    return split_part10(path.read_bytes())[1]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_files(directory: Path) -> Iterator[Path]:
    """Every regular file under ``directory`` (sorted, for stable test output)."""
    yield from sorted(p for p in directory.rglob("*") if p.is_file())
