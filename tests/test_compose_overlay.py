"""The Secondary Capture overlay: valid DICOM in every compression, the right patient and
series, and the findings visibly drawn where they belong."""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from node.compose.overlay import (
    BANNER,
    EncoderUnavailable,
    available_compressions,
    build_sc,
    render_overlay,
    to_uint8,
)
from node.domain import ImageFindings, ScreenReason, Side
from tests.test_compose_data import (
    MODELS,
    ROWS,
    bilateral_tha_image,
    dcentvfy,
    dciodvfy,
    make_source,
    native_lateral_image,
    roundtrip,
    screened_image,
    synthetic_pixels,
    write,
)

ALLOWED_ENTITY_WARNING = re.compile(r"Different information entities for attribute - Element=<AccessionNumber>")


def _display() -> np.ndarray:
    return synthetic_pixels().astype(np.float32) / 4095.0


@pytest.mark.parametrize(
    ("compression", "syntax", "photometric"),
    [
        ("jpeg2000-lossless", JPEG2000Lossless, "YBR_RCT"),
        ("jpeg-baseline", JPEGBaseline8Bit, "YBR_FULL_422"),
        ("none", ExplicitVRLittleEndian, "RGB"),
    ],
)
def test_sc_is_valid_in_every_compression(
    tmp_path: Path, compression: str, syntax: str, photometric: str
) -> None:
    source = make_source(1)
    sc = build_sc(bilateral_tha_image(), source, _display(), models=MODELS, compression=compression)  # type: ignore[arg-type]
    path = write(sc, tmp_path / "sc.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert warnings == []
    entity = dcentvfy([path, write(source, tmp_path / "src.dcm")])
    assert [ln for ln in entity if not ALLOWED_ENTITY_WARNING.search(ln)] == []

    ds = roundtrip(sc)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.PhotometricInterpretation == photometric
    pixels = ds.pixel_array  # decodes with the installed plugins
    assert pixels.shape == (ROWS, 512, 3)
    if compression == "none":
        assert np.array_equal(pixels, render_overlay(bilateral_tha_image(), _display(), models=MODELS))
    # Patient / study from the source, own series, derived image.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
                    "StudyDescription"):
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.InstanceNumber == source.InstanceNumber
    assert ds.BodyPartExamined == "PELVIS" and "Laterality" not in ds
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription
    assert ds.BurnedInAnnotation == "NO"


def test_highdicom_reads_sc_back() -> None:
    sc = build_sc(bilateral_tha_image(), make_source(1), _display(), models=MODELS)
    parsed = hd.Image.from_dataset(roundtrip(sc))
    assert parsed.SOPInstanceUID == sc.SOPInstanceUID
    assert parsed.get_frame(1).shape == (ROWS, 512, 3)


def test_jpeg2000_is_lossless() -> None:
    rendered = render_overlay(bilateral_tha_image(), _display(), source_shape=(ROWS, 512), models=MODELS)
    sc = build_sc(bilateral_tha_image(), make_source(1), _display(), models=MODELS, compression="jpeg2000-lossless")
    decoded = roundtrip(sc).pixel_array  # pydicom converts YBR_RCT back to RGB on decode
    assert np.array_equal(decoded, rendered)


def test_uids_are_deterministic_and_series_is_shared() -> None:
    a = build_sc(bilateral_tha_image(), make_source(1), _display(), models=MODELS, compression="none")
    b = build_sc(bilateral_tha_image(), make_source(1), _display(), models=MODELS, compression="none")
    c = build_sc(native_lateral_image(), make_source(2), _display(), models=MODELS, compression="none")
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a.SeriesInstanceUID == c.SeriesInstanceUID
    assert a.SOPInstanceUID != c.SOPInstanceUID
    assert c.Laterality == "R" and c.BodyPartExamined == "PELVIS"  # one imaged side


def _colour_mask(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(rgb.astype(int) - np.array(colour)) < tol, axis=2)


def test_findings_are_drawn_where_they_are() -> None:
    image = bilateral_tha_image()
    rgb = render_overlay(image, _display(), models=MODELS)
    # Banner: yellow text in the top band.
    assert _colour_mask(rgb[:30], (255, 221, 0)).sum() > 100
    # Cup ellipses (green) around each fitted centre, nowhere near the image centre.
    green = _colour_mask(rgb, (64, 255, 96))
    for hip in image.hips:
        assert hip.cup is not None and hip.cup.ellipse is not None
        e = hip.cup.ellipse
        window = green[int(e.cy) - 40 : int(e.cy) + 40, int(e.cx) - 40 : int(e.cx) + 40]
        assert window.sum() > 50, hip.side
    # Reference line (orange) between its end points.
    orange = _colour_mask(rgb, (255, 150, 0))
    assert orange[245:256, 220:300].sum() > 20


def test_display_of_another_size_is_scaled() -> None:
    image = bilateral_tha_image()
    small = _display()[::2, ::2]
    rgb = render_overlay(image, small, source_shape=(ROWS, 512))
    assert rgb.shape == (ROWS // 2, 256, 3)
    green = _colour_mask(rgb, (64, 255, 96))
    e = image.hips[0].cup.ellipse if image.hips[0].cup else None
    assert e is not None
    cx, cy = int(e.cx / 2), int(e.cy / 2)
    assert green[cy - 20 : cy + 20, cx - 20 : cx + 20].sum() > 20
    big = np.zeros((3000, 2400), np.float32)
    assert render_overlay(image, big, source_shape=(3000, 2400), max_size_px=1024).shape == (1024, 819, 3)


def test_heatmap_colours_its_region_only() -> None:
    image = native_lateral_image()
    heat = np.zeros((ROWS, 512), np.float32)
    heat[300:360, 20:120] = 1.0
    plain = render_overlay(image, _display())
    with_heat = render_overlay(image, _display(), heatmaps={"cam deformity (R)": heat})
    diff = np.any(plain != with_heat, axis=2)
    assert diff[300:360, 20:120].mean() > 0.9
    assert diff[100:250, 200:500].sum() == 0


def test_screened_image_says_not_analysed(tmp_path: Path) -> None:
    image = screened_image()
    source = make_source(4)
    sc = build_sc(image, source, _display(), models=MODELS)
    errors, _ = dciodvfy(write(sc, tmp_path / "sc.dcm"))
    assert errors == []
    rgb = roundtrip(sc).pixel_array
    assert _colour_mask(rgb[:60], (255, 64, 64)).sum() > 50  # the red "NOT ANALYSED" line
    assert image.screened_out is ScreenReason.NOT_HIP


def test_missing_orientation_and_body_part_stay_unknown(tmp_path: Path) -> None:
    source = make_source(1)
    del source.PatientOrientation
    del source.BodyPartExamined
    image = ImageFindings(source.SOPInstanceUID, source.SOPClassUID, screened_out=ScreenReason.BLANK)
    sc = build_sc(image, source, _display(), models=MODELS, compression="none")
    ds = roundtrip(sc)
    assert ds.PatientOrientation in (None, "", [])
    assert ds.Laterality in (None, "")
    errors, _ = dciodvfy(write(sc, tmp_path / "sc.dcm"))
    assert errors == []


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="Unknown compression"):
        build_sc(bilateral_tha_image(), make_source(1), _display(), compression="png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Findings are for"):
        build_sc(native_lateral_image(), make_source(1), _display())
    with pytest.raises(ValueError, match="2D grey image"):
        to_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="float"):
        to_uint8(np.zeros((4, 4), np.int32))
    assert to_uint8(np.array([[0.0, 0.5, 2.0, np.nan]], np.float32)).tolist() == [[0, 128, 255, 0]]
    assert set(available_compressions()) == {"jpeg2000-lossless", "jpeg-baseline", "none"}
    assert issubclass(EncoderUnavailable, RuntimeError)
    assert BANNER.isascii()


def test_sides_are_labelled_on_the_correct_half() -> None:
    """AP convention: patient right is displayed on the image left; labels follow the hip."""
    image = bilateral_tha_image()
    right = next(h for h in image.hips if h.side is Side.RIGHT)
    assert right.cup is not None and right.cup.ellipse is not None
    assert right.cup.ellipse.cx < 256  # the fixture follows the convention
    rgb = render_overlay(image, np.zeros((ROWS, 512), np.float32))
    white = _colour_mask(rgb, (255, 255, 255), tol=10)
    # Both hip headers are white text; the right hip's sits on the left half.
    assert white[40:200, :256].sum() > 0 and white[40:200, 256:].sum() > 0
