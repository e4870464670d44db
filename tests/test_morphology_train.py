"""``hipnode train morphology`` smoke test: 1 epoch on a tiny archive → ONNX → node runtime.

The archive is a folder of real DICOM files (one MONOCHROME1) plus ``labels.csv`` in the
documented layout, so the site-data path (CSV parsing, hardware rows skipped, blank labels
masked, pixel normalisation) is what is exercised.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.config import ModelsConfig
from node.domain import MORPHOLOGY_FLAGS
from node.infer.morphology import MorphologyEnsemble, crop_joint
from node.train import morphology as tm

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.onnx"),
]


def write_dicom(path: Path, pixels: np.ndarray, monochrome1: bool = False) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    stored = (4095 - pixels) if monochrome1 else pixels
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def joint_image(rng: np.random.Generator, flags: list[int]) -> np.ndarray:
    """256×256 12-bit image with two disc-shaped 'femoral heads'; flag 0 adds a bright dot."""
    yy, xx = np.mgrid[0:256, 0:256]
    img = 800.0 + rng.normal(0, 30, (256, 256))
    for cx in (64, 192):
        img[(xx - cx) ** 2 + (yy - 128) ** 2 < 30**2] += 1500.0
        if flags[0]:
            img[(xx - cx - 20) ** 2 + (yy - 150) ** 2 < 6**2] += 1500.0
    return np.clip(img, 0, 4095)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    folder = tmp_path / "archive"
    folder.mkdir()
    rows = []
    for i in range(10):
        flags = [i % 2, (i // 2) % 2, int(i % 3 == 0), int(i % 4 != 0)]
        write_dicom(folder / f"img{i}.dcm", joint_image(rng, flags), monochrome1=(i == 3))
        for side, cx in (("R", 64), ("L", 192)):
            row = {"file": f"img{i}.dcm", "side": side, "x0": cx - 40, "y0": 88, "x1": cx + 40, "y1": 168}
            row.update({f: str(v) for f, v in zip(MORPHOLOGY_FLAGS, flags, strict=True)})
            row["sex"] = "F" if i % 2 else "M"
            row["hardware"] = "1" if (i == 9 and side == "L") else "0"
            row["patient_id"] = f"p{i // 2}"
            rows.append(row)
    rows[0]["dysplasia"] = ""  # not annotated: masked out of the loss
    rows[1]["sex"] = ""
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def test_one_epoch_export_and_runtime_reproduce_torch(archive: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    tm.add_arguments(parser)
    out = tmp_path / "models" / "morphology" / "0.0.1"
    argv = [
        "--data", str(archive), "--arch", "convnext_atto", "--size", "64", "--epochs", "1",
        "--batch-size", "8", "--val-fraction", "0.3", "--seed", "7", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    args = parser.parse_args(argv)
    spec = tm.input_spec(args.size)
    samples, text = tm.load_samples(args, spec)
    assert len(samples) == 19  # 20 joints, one with hardware skipped
    assert np.isnan(samples[0].labels[2]) and np.isnan(samples[1].sex_female)
    assert "19 hardware-free joint crops" in text

    out_dir, model = tm.fit_and_export(samples, args, text, ["hipnode", "train", "morphology", *argv])
    assert out_dir == out and (out / "model.onnx").stat().st_size < 20e6

    manifest = yaml.safe_load((out / "model.yaml").read_text())
    assert manifest["task"] == "morphology" and manifest["command"].startswith("hipnode train morphology")
    assert set(manifest["thresholds"]) == set(MORPHOLOGY_FLAGS)
    assert all(0.0 < t < 1.0 for t in manifest["thresholds"].values())
    assert set(manifest["metrics"]["validation"]).issuperset(MORPHOLOGY_FLAGS)
    assert manifest["metrics"]["onnx_vs_torch_max_abs_diff"] <= 1e-4
    assert len(manifest["cam"]["weight"]) == 5 and len(manifest["cam"]["bias"]) == 5

    # the node's runtime (onnxruntime, our preprocessing) reproduces torch on the same crops
    ens = MorphologyEnsemble.load(ModelsConfig(root=tmp_path / "models", morphology=["morphology"]))
    from node.train.morphology import read_dicom01

    image = read_dicom01(archive / "img3.dcm")  # the MONOCHROME1 one
    from node.domain import Box

    crops = [crop_joint(image, Box(24, 88, 104, 168), 0.15), crop_joint(image, Box(152, 88, 232, 168), 0.15)]
    onnx_probs = ens.probabilities(crops)
    torch_probs = tm.predict_torch(model, ens.models[0].prepare(crops))
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    preds = ens.predict_with_heatmaps(crops)
    assert preds[0].heatmaps["dysplasia"].shape == crops[0].shape
    # inversion honoured: the MONOCHROME1 file reads bone-bright like the others
    assert image[128, 64] > image[10, 10]


def test_labels_csv_errors_name_row_and_column(tmp_path: Path, archive: Path) -> None:
    text = (archive / "labels.csv").read_text().splitlines()
    bad = text[0] + "\n" + text[1].replace(",R,", ",X,") + "\n"
    (archive / "bad.csv").write_text(bad)
    with pytest.raises(ValueError, match="row 2: side must be R or L"):
        tm.folder_samples(archive, archive / "bad.csv", tm.input_spec(32), 0.15)
    (archive / "short.csv").write_text("file,side\nimg0.dcm,R\n")
    with pytest.raises(ValueError, match="missing columns"):
        tm.folder_samples(archive, archive / "short.csv", tm.input_spec(32), 0.15)


def test_phantom_one_epoch_smoke_and_hardware_exclusion(tmp_path: Path) -> None:
    """Tiny phantom set straight from the generator → 1 epoch → export → the node's runtime."""
    spec = tm.input_spec(64)
    joints = list(tm.phantom_joints(3, seed=11, size=256, implants="bilateral"))
    assert len(joints) == 6 and all(tm.has_hardware(j, 0.15) for j in joints)
    assert tm.phantom_samples(3, 11, spec, 0.15, size=256, implants="bilateral") == []

    samples = tm.phantom_samples(4, 12, spec, 0.15, size=256, implants="none")
    assert len(samples) == 8
    assert {s.side for s in samples} == {"R", "L"} and len({s.group for s in samples}) == 4
    assert all(set(np.unique(s.labels)) <= {0.0, 1.0} and s.sex_female in (0.0, 1.0) for s in samples)

    parser = argparse.ArgumentParser()
    tm.add_arguments(parser)
    out = tmp_path / "models" / "morphology" / "0.0.2"
    args = parser.parse_args(
        ["--arch", "convnext_atto", "--size", "64", "--epochs", "1", "--batch-size", "4",
         "--val-fraction", "0.5", "--threads", "1", "--out", str(out)]
    )  # fmt: skip
    _, model = tm.fit_and_export(samples, args, "4 phantoms", ["hipnode", "train", "morphology"])
    ens = MorphologyEnsemble.load(ModelsConfig(root=tmp_path / "models", morphology=["morphology"]))
    batch = np.stack([s.exact for s in samples])
    onnx_probs, _ = ens.models[0].infer(batch)
    assert np.abs(onnx_probs - tm.predict_torch(model, batch)).max() < 1e-4
