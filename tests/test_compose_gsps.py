"""The Grayscale Softcopy Presentation State (issue 14, third output): valid for dciodvfy and
DCMTK's ``dcmpschk`` with no errors, and applied by ``dcmp2pgm -p`` to the image it references,
with every drawing of the SR (cup rim, reference line, joint box, femoral head, sourcil) and the
values with the side as text."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.compose import codes
from node.compose.gsps import GSPS_SOP_CLASS_UID, LAYER_CUP, LAYER_JOINT, LAYER_TEXT, build_gsps, hip_text
from node.compose.sr import PIXEL_ORIGIN_SHIFT, ellipse_polyline_data
from node.domain import ScreenReason
from tests.conftest import tool
from tests.test_compose_data import (
    MODELS,
    bilateral_tha_image,
    dcentvfy,
    dciodvfy,
    full_series,
    make_source,
    native_lateral_image,
    write,
)


def _objects(gsps: Dataset, layer: str) -> list[Dataset]:
    return [o for a in gsps.GraphicAnnotationSequence if a.GraphicLayer == layer
            for o in a.get("GraphicObjectSequence", [])]


def _texts(gsps: Dataset) -> list[str]:
    return [str(t.UnformattedTextValue) for a in gsps.GraphicAnnotationSequence
            for t in a.get("TextObjectSequence", [])]


def test_gsps_draws_what_the_sr_draws_over_the_original() -> None:
    image = bilateral_tha_image()
    gsps = build_gsps(image, make_source(1), models=MODELS)
    assert gsps.SOPClassUID == GSPS_SOP_CLASS_UID
    (ref,) = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence
    assert ref.ReferencedSOPInstanceUID == image.sop_instance_uid
    assert {str(layer.GraphicLayer) for layer in gsps.GraphicLayerSequence} == {LAYER_CUP, LAYER_JOINT, LAYER_TEXT}
    cup = _objects(gsps, LAYER_CUP)
    # two rims (closed, the SR's 72 points) and the one inter-teardrop line both cups share
    assert sorted(int(o.NumberOfGraphicPoints) for o in cup) == [2, 73, 73]
    right = next(h for h in image.hips if h.cup is not None and h.cup.ellipse is not None)
    assert right.cup is not None and right.cup.ellipse is not None
    want = ellipse_polyline_data(right.cup.ellipse).ravel()
    assert any(np.allclose(np.asarray(o.GraphicData, dtype=float), want, atol=1e-3) for o in cup)
    for o in _objects(gsps, LAYER_JOINT) + cup:
        assert o.GraphicAnnotationUnits == "PIXEL" and o.GraphicType == "POLYLINE"
    texts = _texts(gsps)
    assert any(t.startswith("AI RESULT - NOT FOR DIAGNOSIS - AP pelvis") for t in texts)
    for hip in image.hips:
        assert hip_text(hip) in texts
    assert any(t.startswith("R arthroplasty; INC 42.4 deg (inter-teardrop line); AV 17.8 deg") for t in texts), texts
    assert any(t.startswith("L arthroplasty; INC 38.1 deg") for t in texts), texts


def test_gsps_draws_femoral_head_and_sourcil() -> None:
    image = native_lateral_image()
    gsps = build_gsps(image, make_source(2, view_position="LL"), models=MODELS)
    joint = _objects(gsps, LAYER_JOINT)
    assert sorted(int(o.NumberOfGraphicPoints) for o in joint) == [2, 5, 73]  # sourcil, box, head
    (hip,) = image.hips
    assert hip.femoral_head is not None
    (centre, radius) = hip.femoral_head
    (head,) = [o for o in joint if int(o.NumberOfGraphicPoints) == 73]
    pts = np.asarray(head.GraphicData, dtype=float).reshape(-1, 2) - PIXEL_ORIGIN_SHIFT
    assert np.hypot(pts[:, 0] - centre.x, pts[:, 1] - centre.y) == pytest.approx(np.full(73, radius), abs=1e-3)
    assert any("LCE 31.4 deg; Tonnis 6.2 deg" in t for t in _texts(gsps))


def test_gsps_refuses_a_screened_out_image() -> None:
    findings, sources = full_series()
    screened = next(i for i in findings.images if i.screened_out is ScreenReason.NOT_HIP)
    source = next(s for s in sources if str(s.SOPInstanceUID) == screened.sop_instance_uid)
    with pytest.raises(ValueError, match="not analysed"):
        build_gsps(screened, source, models=MODELS)


def _dcmp2pgm(image: Path, pstate: Path | None, out: Path) -> subprocess.CompletedProcess[str]:
    args = [tool("dcmp2pgm"), "-v"] + (["-p", str(pstate)] if pstate is not None else []) + [str(image), str(out)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _pgm(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    fields = raw.split(maxsplit=4)
    assert fields[0] == b"P5", fields[:4]
    width, height, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    dtype = np.uint8 if maxval < 256 else np.dtype(">u2")
    pixels = np.frombuffer(fields[4][: width * height * np.dtype(dtype).itemsize], dtype=dtype)
    return pixels.reshape(height, width)


def test_gsps_passes_dciodvfy_dcmpschk_and_dcmp2pgm_applies_it(tmp_path: Path) -> None:
    source = make_source(1)
    image_path = write(source, tmp_path / "image.dcm")
    gsps_path = write(build_gsps(bilateral_tha_image(), source, models=MODELS), tmp_path / "gsps.dcm")

    errors, _ = dciodvfy(gsps_path)
    assert errors == []
    assert dcentvfy([image_path, gsps_path]) == []

    check = subprocess.run([tool("dcmpschk"), str(gsps_path)], capture_output=True, text=True, timeout=120)
    out = check.stdout + check.stderr
    assert check.returncode == 0, out
    assert "Error" not in out and "ERROR" not in out and "E: " not in out, out

    plain = _dcmp2pgm(image_path, None, tmp_path / "plain.pgm")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    applied = _dcmp2pgm(image_path, gsps_path, tmp_path / "applied.pgm")
    log = applied.stdout + applied.stderr
    assert applied.returncode == 0, log
    assert "E: " not in log, log
    assert _pgm(tmp_path / "applied.pgm").shape == (int(source.Rows), int(source.Columns))
    # dcmp2pgm attached the image to the presentation state and found our annotations applying
    # to it (for an image the GSPS does not reference it finds none: below)
    assert _applied_counts(log) == APPLIED_TO_BILATERAL_THA, log


APPLIED_TO_BILATERAL_THA = {
    LAYER_CUP: ("0", "3"),  # text objects, graphic objects: two rims and the shared reference line
    LAYER_JOINT: ("0", "2"),  # two joint boxes
    LAYER_TEXT: ("3", "0"),  # the right hip, the left hip, the banner
}


def _applied_counts(log: str) -> dict[str, tuple[str, str]]:
    """Per graphic layer, the text and graphic objects dcmp2pgm's dump says apply to the image."""
    out = {}
    for block in re.split(r"Graphic Layer #\d+ ", log)[1:]:
        name = re.match(r"\[([^\]]+)\]", block)
        texts = re.search(r"Number of text objects: (\d+)", block)
        graphics = re.search(r"Number of graphic objects: (\d+)", block)
        assert name and texts and graphics, block[:400]
        out[name.group(1)] = (texts.group(1), graphics.group(1))
    return out


def test_dcmp2pgm_check_can_fail(tmp_path: Path) -> None:
    """The check above must be able to fail: on an image the GSPS does not reference, dcmp2pgm
    applies none of its annotations."""
    source = make_source(1)
    other = make_source(2)
    image_path = write(other, tmp_path / "other.dcm")
    gsps_path = write(build_gsps(bilateral_tha_image(), source, models=MODELS), tmp_path / "gsps.dcm")
    run = _dcmp2pgm(image_path, gsps_path, tmp_path / "x.pgm")
    counts = _applied_counts(run.stdout + run.stderr)
    assert counts != APPLIED_TO_BILATERAL_THA
    assert counts == dict.fromkeys(APPLIED_TO_BILATERAL_THA, ("0", "0"))


def test_gsps_roundtrip_keeps_patient_and_study(tmp_path: Path) -> None:
    source = make_source(1)
    ds = pydicom.dcmread(write(build_gsps(bilateral_tha_image(), source, models=MODELS), tmp_path / "g.dcm"))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "AccessionNumber"):
        assert ds.get(keyword) == source.get(keyword), keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.ContentLabel == "HIPNODE_AI"
    assert codes.PRIVATE_SCHEME not in str(ds)  # a GSPS carries no codes of ours
