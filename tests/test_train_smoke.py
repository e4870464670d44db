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
    runtime = TriageModel.load("triage", ModelsConfig(root=tmp_path, batch_size=3))
    images = [s.image01 for s in phantoms]
    got = runtime.probabilities(images)
    batch, _ = make_batch(images, runtime.model.manifest.input)  # the runtime's own input
    want = dict(zip(("view", "side", "implant"), torch_outputs(model, batch), strict=True))
    for name in ("view", "side", "implant"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)
    assert len(runtime.predict(images)) == len(images)


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
    assert metrics["onnx_max_abs_diff"] <= 1e-4
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
