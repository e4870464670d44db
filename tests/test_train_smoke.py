"""Training smoke test: 1 epoch on a tiny phantom set on the CPU → ONNX → the node's runtime.

For each task the exported model is loaded the way the node loads it (manifest, sha256, graph
check, provider check) and must reproduce torch's outputs on the same images within 1e-4.
Tiny sizes keep this to well under two minutes on two cores; it says nothing about accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from node.config import ModelsConfig
from node.domain import DETECTOR_CLASSES, View
from node.infer.detector import OUTPUT, DetectorModel
from node.infer.manifest import load_manifest
from node.infer.preprocess import make_batch
from node.infer.triage import TriageModel
from node.train import detector as det_train
from node.train import triage as tri_train
from node.train.common import offline_environment, torch_outputs
from node.train.data import phantom_samples

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def phantoms() -> list:
    return list(phantom_samples(10, seed=4242, size=160))


def test_phantom_samples_are_labelled(phantoms: list) -> None:
    assert {s.view for s in phantoms} - {View.OTHER}, "need hip views in the smoke set"
    for s in phantoms:
        assert s.image01.dtype == np.float32 and s.image01.min() >= 0.0 and s.image01.max() <= 1.0
        assert s.boxes is not None and all(b.label in DETECTOR_CLASSES for b in s.boxes)


def test_triage_one_epoch_exports_and_runtime_matches_torch(phantoms: list, tmp_path: Path) -> None:
    size = 64
    tensors = tri_train.to_tensors(phantoms, size)
    model, _ = tri_train.train(
        tensors, tensors, "mobilenetv3_small_050", epochs=1, batch_size=5, lr=1e-3, seed=3
    )
    out_dir = tmp_path / "triage" / "0.0.1"
    diff = tri_train.export(model, size, out_dir, tensors.x[:4])
    assert diff <= 1e-4
    manifest = tri_train.build_manifest(
        "mobilenetv3_small_050", size, "0.0.1", "smoke", "pytest", {"onnx_max_abs_diff": diff}, {}
    )
    from node.train.common import write_model

    write_model(manifest, out_dir)
    # the image alone, as torch computes it below (the node's default also reads mirrors and crops)
    runtime = TriageModel.load("triage", ModelsConfig(root=tmp_path, batch_size=3, triage_test_time="none"))
    images = [s.image01 for s in phantoms]
    got = runtime.probabilities(images)
    batch, _ = make_batch(images, runtime.model.manifest.input)  # the runtime's own input
    want = dict(zip(("view", "side", "implant"), torch_outputs(model, batch), strict=True))
    for name in ("view", "side", "implant"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)
    assert len(runtime.predict(images)) == len(images)
    # --init: the saved trainable weights (batch norms intact) restore the same network
    import torch

    torch.save(model.state_dict(), tmp_path / "weights.pt")
    again, _ = tri_train.train(
        tensors, tensors, "mobilenetv3_small_050", epochs=0, batch_size=5, lr=1e-3, seed=4,
        init=tmp_path / "weights.pt",
    )
    for a, b in zip(torch_outputs(again, batch), torch_outputs(model, batch), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_detector_one_epoch_exports_and_runtime_matches_torch(phantoms: list, tmp_path: Path) -> None:
    offline_environment(tmp_path / "yolo-config")
    size = 96
    parser = argparse.ArgumentParser()
    det_train.add_arguments(parser)
    args = parser.parse_args(
        ["--epochs", "1", "--size", str(size), "--batch", "4", "--out", str(tmp_path / "detector"),
         "--workdir", str(tmp_path / "work"), "--version", "0.0.1", "--seed", "5"]
    )  # fmt: skip
    module, out_dir, metrics = det_train.train_and_export(args, phantoms[:7], phantoms[7:], "smoke")
    assert metrics["onnx_max_abs_diff_scores"] <= 1e-4
    manifest = load_manifest(out_dir)
    assert manifest.task == "detector" and manifest.input.height == size
    assert json.loads(json.dumps(dict(manifest.metrics)))  # plain YAML types
    runtime = DetectorModel.load(str(out_dir), ModelsConfig(root=tmp_path))
    images = [s.image01 for s in phantoms[:3]]
    batch, _ = make_batch(images, manifest.input)
    got = runtime.model.run(batch)[OUTPUT]
    (want,) = torch_outputs(module, batch)
    assert got.shape == (3, 4 + len(DETECTOR_CLASSES), want.shape[2])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    boxes = runtime.detect(images)
    assert len(boxes) == 3
    # ultralytics' checkpoint is kept beside the ONNX (for --init) and is the exported network
    (again,) = torch_outputs(det_train._export_module(det_train.load_weights_file(out_dir / "weights.pt")), batch)
    np.testing.assert_allclose(again, want, atol=1e-5, rtol=0)


def test_labels_csv_parsing_and_site_folder(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from node.train.data import LabelError, folder_samples, read_labels

    chest = get_testdata_file("RG1_UNCR.dcm")
    ct = get_testdata_file("CT_small.dcm")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "file,view,side,implant_right,implant_left,boxes\n"
        f"{chest},other,,,,\n"
        f"{ct},other,,,,\n"
        "a.dcm,ap_pelvis,,1,no,hip_joint_right 1 2 30 40; cup 5 6 20 25\n"
        "b.dcm,lateral_hip,L,,0,\n"
    )
    rows = read_labels(csv_path)
    assert rows[2].view is View.AP_PELVIS and rows[2].path == tmp_path / "a.dcm"
    assert rows[2].boxes is not None and [b.label for b in rows[2].boxes] == ["hip_joint_right", "cup"]
    from node.domain import Side

    assert rows[2].implant == {Side.RIGHT: True, Side.LEFT: False}
    assert rows[3].side is Side.LEFT and rows[3].implant == {Side.LEFT: False}
    # only the CR chest passes the node's screening (CT is screened out, a.dcm/b.dcm do not exist)
    csv_path.write_text(f"file,view\n{chest},other\n{ct},other\n")
    samples = list(folder_samples(csv_path))
    assert len(samples) == 1 and samples[0].view is View.OTHER and samples[0].boxes is None
    bad = tmp_path / "bad.csv"
    bad.write_text("file,view,side\nx.dcm,ap_hip,\n")
    with pytest.raises(LabelError, match="needs side"):
        read_labels(bad)
    bad.write_text("file,view,boxes\nx.dcm,other,femur 1 2 3 4\n")
    with pytest.raises(LabelError, match="bad box"):
        read_labels(bad)


def test_extra_phantom_styles_join_training_and_validation_and_are_named(tmp_path: Path) -> None:
    """``--extra-phantoms STYLE:N:SEED`` adds another image-forming style to training (and
    ``--extra-val-phantoms`` to validation); the manifest's ``trained_on_styles`` names every style
    used, and the evaluation-only ``sketch`` renderer is refused so it stays a held-out style."""
    from node.train.cli import build_parser, load_training_data, parse_style_set, trained_styles

    argv = [
        "triage", "--phantoms", "3", "--phantom-seed", "77", "--phantom-size", "96", "--val-phantoms", "2",
        "--val-phantom-seed", "78", "--phantom-variety", "broad",
        "--extra-phantoms", "voxel:2:79", "--extra-val-phantoms", "voxel:1:80",
    ]
    args = build_parser().parse_args(argv)
    train, val, description = load_training_data(args, task="triage")
    assert len(train) == 5 and len(val) == 3
    assert trained_styles(args) == ["analytic", "voxel"]
    assert "training also: 2 phantoms, style voxel, seed 79" in description
    assert "validation also: 1 phantoms, style voxel, seed 80" in description
    # the voxel images are their own renderings, not copies of the analytic stream
    voxel = list(phantom_samples(2, 79, 96, variety="broad", style="voxel"))
    np.testing.assert_array_equal(train[3].image01, voxel[0].image01)
    analytic = next(iter(phantom_samples(1, 79, 96, variety="broad")))
    assert not np.array_equal(train[3].image01, analytic.image01)
    assert trained_styles(build_parser().parse_args(argv[:5])) == ["analytic"]
    for bad in ("sketch:10:1", "voxel:ten:1", "voxel:0:1", "voxel:10"):
        with pytest.raises(SystemExit, match="extra-phantoms"):
            parse_style_set(bad)
