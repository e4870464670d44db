"""``hipnode phantom`` DICOM output: dciodvfy-clean CR / DX objects, encodings, sidecar, bytes."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.phantom import cli
from node.phantom.dicom import TRANSFER_SYNTAXES
from tests.conftest import tool


def run_cli(out: Path, *extra: str) -> list[dict[str, object]]:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--out", str(out), "--no-progress", *extra])
    assert cli.main(args) == 0
    return [json.loads(line) for line in (out / "ground_truth.jsonl").read_text().splitlines()]


def dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if "Error" in ln]


def test_dicom_objects_pass_dciodvfy_in_both_iods(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = []
    for modality in ("CR", "DX"):
        rows += [dict(r, _dir=modality) for r in run_cli(tmp_path / modality, "--count", "8", "--size", "48",
                                                         "--seed", "3", "--modality", modality,
                                                         "--unreliable-fraction", "0.6", "--workers", "1")]
    assert {r["modality"] for r in rows} == {"CR", "DX"}
    assert any(r["corrupted_tags"] for r in rows)
    for r in rows:
        path = tmp_path / str(r["_dir"]) / str(r["file"])
        assert dciodvfy_errors(path) == [], path
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == r["sop_instance_uid"] and ds.Modality == r["modality"]
        assert ds.PhotometricInterpretation == r["photometric"] and ds.BitsStored == r["bits_stored"]
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(float(r["imager_pixel_spacing_mm"]), rel=1e-5)  # type: ignore[arg-type]
        # the corrupted tags really are not what the ground truth says
        if "ViewPosition" in r["corrupted_tags"]:  # type: ignore[operator]
            assert ds.ViewPosition != ("AP" if r["view"] != "lateral_hip" else ds.ViewPosition + "x")


def test_encodings_decode_to_the_rendered_pixels_and_validate(tmp_path: Path) -> None:
    from node.phantom.dicom import build_dataset, encode, make_study_info, to_bytes

    jobs = cli.plan(2, 9, list(cli.HIP_VIEWS), "random", (48, 64), 0.0, None, "explicit")
    for job in jobs:
        img = cli.render_job(job)
        rng = np.random.default_rng(0)
        info = make_study_info(9, job.study, img.spec.patient.sex, rng)
        for syntax in TRANSFER_SYNTAXES:
            ds = encode(build_dataset(img, info, job.series_number, job.instance_number, rng), syntax)
            path = tmp_path / f"{job.index}-{syntax}.dcm"
            path.write_bytes(to_bytes(ds))
            back = pydicom.dcmread(path)
            assert back.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
            a, b = img.pixels.astype(np.int64), back.pixel_array.astype(np.int64)
            if syntax in ("jpegls-near", "j2k-lossy"):
                assert back.LossyImageCompression == "01"
                assert np.abs(a - b).mean() < 0.01 * (1 << int(back.BitsStored))
            else:
                assert np.array_equal(a, b), syntax
            if syntax != "deflate":  # dicom3tools cannot read deflated files; pydicom did above
                assert dciodvfy_errors(path) == [], syntax


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    args = ("--count", "6", "--size", "48", "--seed", "17", "--unreliable-fraction", "0.5")
    run_cli(tmp_path / "a", *args, "--workers", "1")
    run_cli(tmp_path / "b", *args, "--workers", "2")
    run_cli(tmp_path / "c", "--count", "6", "--size", "48", "--seed", "18")
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert da["ground_truth.jsonl"] != dc["ground_truth.jsonl"]


def test_studies_and_series_are_grouped_like_a_modality_sends_them(tmp_path: Path) -> None:
    rows = run_cli(tmp_path, "--count", "14", "--size", "32", "--seed", "5", "--views", "ap_pelvis", "ap_hip",
                   "lateral_hip", "--implants", "right")
    studies: dict[str, set[str]] = {}
    for r in rows:
        ds = pydicom.dcmread(tmp_path / str(r["file"]), stop_before_pixels=True)
        assert ds.StudyInstanceUID == r["study_instance_uid"]
        studies.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.PatientID))
        assert r["view"] in ("ap_pelvis", "ap_hip", "lateral_hip")
        assert r["hips"]["R"]["implant"] is True and r["hips"]["L"]["implant"] is False  # type: ignore[index]
    assert all(len(p) == 1 for p in studies.values())  # one patient per study
    assert len(studies) < len(rows)  # some studies hold several images
    series = {(r["study_instance_uid"], r["series_instance_uid"]) for r in rows}
    assert len({s for s, _ in series}) < len(series)  # some studies hold several series
    # one patient: the same sex in every image of a study
    by_study: dict[object, set[object]] = {}
    for r in rows:
        by_study.setdefault(r["study_instance_uid"], set()).add(r["sex"])
    assert all(len(v) == 1 for v in by_study.values())


def test_hipnode_cli_entry_point(tmp_path: Path) -> None:
    from node.cli import main

    assert main(["phantom", "--count", "1", "--out", str(tmp_path), "--size", "32", "--no-progress"]) == 0
    assert len(list(tmp_path.rglob("*.dcm"))) == 1
