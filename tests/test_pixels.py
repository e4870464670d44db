"""node.pixels: decode in every transfer syntax, screen with reasons, normalise, metadata hints.

Real files come from the ``pydicom-data`` package (CR chest RG1 and tibia RG3, MONOCHROME1,
native and JPEG 2000 lossless / lossy); synthetic DX images are written in further transfer
syntaxes (RLE, deflate, JPEG 2000 lossless, JPEG-LS) with pydicom's encoders.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from node.config import ScreeningConfig
from node.domain import ScreenReason, Side, View
from node.pixels import (
    decode,
    load_radiograph,
    metadata_mismatches,
    normalise,
    pixel_spacing,
    read_dataset,
    screen_metadata,
)
from node.train.generalise import find_real_films

CFG = ScreeningConfig()


def _real(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data file {name} missing (pip install pydicom-data)"
    return Path(str(path))


@pytest.mark.parametrize("stem", ["RG1", "RG3"])
def test_real_cr_decodes_identically_in_every_syntax(stem: str) -> None:
    """J2KR is lossless of UNCR; J2KI is lossy and UNCI is its decoded copy: both pairs equal."""
    raw = {}
    for kind in ("UNCR", "J2KR", "UNCI", "J2KI"):
        rad, verdict = load_radiograph(_real(f"{stem}_{kind}.dcm"), CFG)
        assert verdict.accepted, verdict
        assert rad is not None and rad.image01.dtype == np.float32
        assert float(rad.image01.min()) >= 0.0 and float(rad.image01.max()) <= 1.0
        raw[kind] = rad.raw
    np.testing.assert_array_equal(raw["UNCR"], raw["J2KR"])
    np.testing.assert_array_equal(raw["UNCI"], raw["J2KI"])


def test_monochrome1_is_inverted() -> None:
    ds = read_dataset(_real("RG3_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = decode(ds)
    inverted = normalise(ds, raw)
    ds.PhotometricInterpretation = "MONOCHROME2"
    plain = normalise(ds, raw)
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)
    # MONOCHROME1: high stored values are dark; after normalisation the brightest stored pixel is dark.
    assert inverted.flat[int(np.argmax(raw))] == pytest.approx(0.0, abs=1e-6)


def _dx(rows: int = 320, cols: int = 300, bits: int = 12, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = 500 + 2000 * np.exp(-((yy - rows / 2) ** 2 + (xx - cols / 3) ** 2) / (2 * 60.0**2))
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 2**bits - 1).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = img.tobytes()
    return ds


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian]
)
def test_synthetic_dx_in_compressed_syntaxes(syntax: pydicom.uid.UID) -> None:
    ds = _dx()
    expected = decode(_roundtrip(ds))
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax)
    stored = _roundtrip(ds)
    assert stored.file_meta.TransferSyntaxUID == syntax
    rad, verdict = load_radiograph(stored, CFG)
    assert verdict.accepted and rad is not None
    np.testing.assert_array_equal(rad.raw, expected)


def test_modality_lut_applied() -> None:
    ds = _dx()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    raw = decode(_roundtrip(ds))
    base = np.frombuffer(ds.PixelData, np.uint16).reshape(ds.Rows, ds.Columns)
    np.testing.assert_array_equal(raw, base.astype(np.float32) * 2 - 100)


def test_voi_window_and_percentile_window() -> None:
    ds = _dx()
    raw = decode(ds)
    ds.WindowCenter, ds.WindowWidth = 1000, 400
    voi = normalise(ds, raw, window="voi")
    pct = normalise(ds, raw, window="percentile")
    assert voi.min() == 0.0 and voi.max() == 1.0
    assert not np.allclose(voi, pct)
    below = raw < 800  # under the window: black
    assert float(voi[below].max()) == 0.0


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", ScreenReason.MODALITY),
        ("MR_small.dcm", ScreenReason.MODALITY),
        ("SC_rgb.dcm", ScreenReason.IMAGE_TYPE),
    ],
)
def test_real_non_radiographs_screened_out(name: str, reason: ScreenReason) -> None:
    rad, verdict = load_radiograph(_real(name), CFG)
    assert rad is None and verdict.reason is reason and verdict.detail


def test_screening_reasons_on_synthetic_images() -> None:
    small = _dx(rows=100, cols=300)
    assert screen_metadata(small, CFG).reason is ScreenReason.SIZE
    ds = _dx()
    ds.BitsStored = 4
    assert screen_metadata(ds, CFG).reason is ScreenReason.BIT_DEPTH
    ds = _dx()
    ds.ImageType = ["DERIVED", "PRIMARY", "LOCALIZER"]
    assert screen_metadata(ds, CFG).reason is ScreenReason.IMAGE_TYPE
    ds = _dx()
    ds.PhotometricInterpretation = "RGB"
    assert screen_metadata(ds, CFG).reason is ScreenReason.NOT_RADIOGRAPH
    ds = _dx()
    del ds.PixelData
    assert screen_metadata(ds, CFG).reason is ScreenReason.NOT_IMAGE
    assert screen_metadata(_dx(), CFG).accepted


def test_corrupt_pixel_data_is_undecodable() -> None:
    truncated = _dx()
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 2]
    rad, verdict = load_radiograph(_roundtrip(truncated), CFG)
    assert rad is None and verdict.reason is ScreenReason.UNDECODABLE

    j2k = _dx()
    j2k.compress(JPEG2000Lossless)
    frame = next(generate_frames(j2k.PixelData, number_of_frames=1))
    j2k.PixelData = encapsulate([frame[: len(frame) // 2]])  # transfer cut short mid-codestream
    rad, verdict = load_radiograph(_roundtrip(j2k), CFG)
    assert rad is None and verdict.reason is ScreenReason.UNDECODABLE, verdict
    assert "JPEG 2000" in verdict.detail and "\n" not in verdict.detail


def test_blank_image_and_garbage_bytes() -> None:
    ds = _dx()
    ds.PixelData = np.full((ds.Rows, ds.Columns), 777, np.uint16).tobytes()
    rad, verdict = load_radiograph(ds, CFG)
    assert rad is None and verdict.reason is ScreenReason.BLANK
    rad, verdict = load_radiograph(b"this is not DICOM at all", CFG)
    assert rad is None and verdict.reason is ScreenReason.NOT_IMAGE


def test_metadata_mismatches_are_hints() -> None:
    ds = _dx()
    assert metadata_mismatches(ds, View.AP_HIP, (Side.RIGHT,)) == []  # absent tags say nothing
    ds.ViewPosition = "LL"
    ds.ImageLaterality = "L"
    ds.BodyPartExamined = "CHEST"
    found = metadata_mismatches(ds, View.AP_HIP, (Side.RIGHT,))
    assert any("ViewPosition is LL" in m for m in found)
    assert any("Laterality is L" in m for m in found)
    assert any("BodyPartExamined is CHEST" in m for m in found)
    ds.ViewPosition, ds.ImageLaterality, ds.BodyPartExamined = "AP", "R", "HIP"
    assert metadata_mismatches(ds, View.AP_HIP, (Side.RIGHT,)) == []
    assert metadata_mismatches(ds, View.OTHER, ()) == [
        "BodyPartExamined is HIP but the image was classified as not a hip radiograph"
    ]


# --- colour-encoded grey and untrusted pixel spacing (issue 12) -------------------------------

REAL_DIR = find_real_films()


def _colour(grey: np.ndarray, photometric: str, tint: tuple[int, int, int] = (0, 0, 0)) -> Dataset:
    """An 8-bit 3-sample DX dataset holding ``grey`` in every channel (+ ``tint`` per channel)."""
    ds = _dx(rows=grey.shape[0], cols=grey.shape[1])
    rgb = np.stack([np.clip(grey.astype(np.int16) + t, 0, 255) for t in tint], axis=-1).astype(np.uint8)
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    return ds


def _grey8(rows: int = 320, cols: int = 300) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return (40 + 180 * np.exp(-((yy - rows / 2) ** 2 + (xx - cols / 3) ** 2) / (2 * 60.0**2))).astype(np.uint8)


def test_published_real_radiographs_rgb_jpeg2000_are_read_as_grey() -> None:
    """The real paediatric films (RGB-encoded grey, JPEG 2000, placeholder spacing) as published."""
    files = sorted(REAL_DIR.glob("*.dcm"))
    assert len(files) == 5, f"expected the 5 real radiographs under {REAL_DIR}"
    for path in files:
        ds = read_dataset(path)
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
        rad, verdict = load_radiograph(path, CFG)
        assert verdict.accepted, (path.name, verdict)
        assert rad is not None and rad.raw.shape == (331, 331) and rad.raw.ndim == 2
        np.testing.assert_array_equal(rad.raw, ds.pixel_array[..., 0].astype(np.float32))
        assert any("analysed as grey" in n for n in rad.notes)
        spacing, note = pixel_spacing(ds)
        assert spacing is None and note is not None and "placeholder" in note


def test_colour_encodings_of_grey_are_accepted_and_true_colour_is_not() -> None:
    grey = _grey8()
    rad, verdict = load_radiograph(_roundtrip(_colour(grey, "RGB")), CFG)
    assert verdict.accepted and rad is not None and rad.raw.shape == grey.shape
    np.testing.assert_array_equal(rad.raw, grey.astype(np.float32))
    # grey in YBR: luminance plus both chroma channels at mid-range
    ybr = _colour(grey, "YBR_FULL")
    planes = np.frombuffer(ybr.PixelData, np.uint8).reshape(*grey.shape, 3).copy()
    planes[..., 1:] = 128
    ybr.PixelData = planes.tobytes()
    rad, verdict = load_radiograph(_roundtrip(ybr), CFG)
    assert verdict.accepted, verdict
    assert rad is not None and float(np.abs(rad.raw - grey).max()) <= 1.0
    # a nearly-grey digitisation (one grey level of channel jitter) is still grey
    rad, verdict = load_radiograph(_roundtrip(_colour(grey, "RGB", (0, 1, -1))), CFG)
    assert verdict.accepted
    # a colour photograph / coloured heat map: channels differ by tens of percent
    rad, verdict = load_radiograph(_roundtrip(_colour(grey, "RGB", (60, 0, -40))), CFG)
    assert rad is None and verdict.reason is ScreenReason.NOT_RADIOGRAPH
    assert "true colour" in verdict.detail and "%" in verdict.detail
    # a photometric that is neither grey nor a colour encoding of grey
    palette = _dx()
    palette.PhotometricInterpretation = "PALETTE COLOR"
    assert screen_metadata(palette, CFG).reason is ScreenReason.NOT_RADIOGRAPH


def test_pixel_spacing_placeholders_are_stated_not_trusted() -> None:
    ds = _dx()
    assert pixel_spacing(ds) == (None, None)  # nothing stated: nothing to say
    ds.PixelSpacing = [1.0, 1.0]
    spacing, note = pixel_spacing(ds)
    assert spacing is None and note and "placeholder" in note
    ds.PixelSpacingCalibrationType = "GEOMETRY"  # someone calibrated it: implausible all the same
    spacing, note = pixel_spacing(ds)
    assert spacing is None and note and "outside" in note
    ds = _dx()
    ds.PixelSpacing = [0.148, 0.148]
    assert pixel_spacing(ds) == (0.148, None)
    ds.ImagerPixelSpacing = [0.16, 0.16]  # the detector's own spacing wins
    assert pixel_spacing(ds) == (0.16, None)
    ds.ImagerPixelSpacing = [0.0, 0.0]  # zero is no value: falls back to Pixel Spacing
    assert pixel_spacing(ds) == (0.148, None)
    ds.ImagerPixelSpacing = [2.5, 2.5]
    spacing, note = pixel_spacing(ds)
    assert spacing is None and note and "Imager Pixel Spacing" in note


def test_a_many_frame_object_is_read_one_frame_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the first frame of a multi-frame object is decoded (memory bounded by one frame),
    and it is the first frame that is analysed."""
    import numpy as np
    from pydicom.data import get_testdata_file

    import node.pixels as px

    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # 10 frames of 64 x 64, MR
    first = np.asarray(ds.pixel_array[0], dtype=np.float32)
    seen: list[object] = []
    original = px.pixel_array

    def spy(src: pydicom.Dataset, **kwargs: object) -> np.ndarray:
        seen.append(kwargs.get("index"))
        return original(src, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(px, "pixel_array", spy)
    out = px.decode(ds)
    assert seen == [0]
    assert out.shape == (64, 64) and np.array_equal(out, first)
