"""Runtime units: NMS, letterbox, manifest validation, provider check, triage/detector decoding.

The ONNX models here are built with the ``onnx`` helper API (no torch): tiny graphs whose
output is a known function of the input, so the runtime path can be checked exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper
from pydicom.dataset import Dataset

from node.config import ModelsConfig
from node.domain import DETECTOR_CLASSES, Side, View
from node.infer import session as session_mod
from node.infer.detector import DetectorSettings, decode_predictions
from node.infer.manifest import (
    InputSpec,
    Manifest,
    ManifestError,
    OutputSpec,
    load_manifest,
    resolve_model_dir,
    write_manifest,
)
from node.infer.nms import batched_nms, box_iou, nms
from node.infer.preprocess import apply_clahe, batched, letterbox, make_batch, prepare
from node.infer.session import ProviderError, create_session, load_model, provider_chain
from node.infer.triage import decode_triage

# --- NMS ------------------------------------------------------------------------------------


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 8]])
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0, 0.0])


def test_nms_suppresses_overlaps_keeps_separate() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [3, 2]


def test_nms_threshold_is_respected() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]])  # IoU 1/3
    assert nms(boxes, np.array([0.9, 0.8]), 0.3).tolist() == [0]
    assert nms(boxes, np.array([0.9, 0.8]), 0.4).tolist() == [0, 1]


def test_batched_nms_is_classwise() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = np.array([0.9, 0.8, 0.7])
    classes = np.array([0, 1, 0])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


def test_batched_nms_max_per_class() -> None:
    boxes = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]])
    keep = batched_nms(boxes, np.array([0.5, 0.9, 0.7]), np.zeros(3), 0.5, max_per_class=2)
    assert keep.tolist() == [1, 2]


# --- letterbox ------------------------------------------------------------------------------


def test_letterbox_keeps_aspect_and_maps_boxes_back() -> None:
    img = np.zeros((400, 200), np.float32)
    img[100:300, 50:150] = 1.0
    out, tr = letterbox(img, 128, 128, pad_value=0.25)
    assert out.shape == (128, 128)
    assert tr.scale_x == pytest.approx(64 / 200) and tr.scale_y == pytest.approx(128 / 400)
    assert tr.pad_x == 32 and tr.pad_y == 0
    assert out[64, 5] == pytest.approx(0.25)  # padding
    # the bright block in network pixels, mapped back, is where it was
    ys, xs = np.nonzero(out > 0.5)
    net = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    np.testing.assert_allclose(tr.to_source(net)[0], [50, 100, 150, 300], atol=4)
    src = np.array([[10.0, 20.0, 110.0, 220.0]])
    np.testing.assert_allclose(tr.to_source(tr.to_network(src)), src, atol=1e-9)


def test_letterbox_clips_to_image() -> None:
    _, tr = letterbox(np.zeros((100, 300), np.float32), 64, 64)
    back = tr.to_source(np.array([[-10.0, -10.0, 100.0, 100.0]]))
    assert back[0, 0] == 0 and back[0, 1] == 0 and back[0, 2] == 300 and back[0, 3] == 100


def test_prepare_standardises_replicates_channels_and_batches() -> None:
    spec = InputSpec(channels=3, height=32, width=32, mean=(0.5,), std=(0.25,))
    x, _ = prepare(np.full((64, 64), 0.75, np.float32), spec)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0)
    batch, transforms = make_batch([np.zeros((50, 80), np.float32)] * 3, spec)
    assert batch.shape == (3, 3, 32, 32) and len(transforms) == 3
    assert [len(c) for c in batched(range(7), 3)] == [3, 3, 1]


def test_clahe_raises_local_contrast() -> None:
    rng = np.random.default_rng(0)
    img = (0.45 + 0.05 * rng.random((128, 128))).astype(np.float32)
    out = apply_clahe(img)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 2 * img.std()


# --- tiny ONNX models and manifests ---------------------------------------------------------


def _identity_pool_model(path: Path, channels: int = 1, size: int = 16, fixed_batch: bool = False) -> None:
    """view/side/implant outputs from global-average-pooled input (deterministic, no torch)."""
    batch: int | str = 1 if fixed_batch else "batch"
    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, size, size])
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "w5"], ["view_logits"]),
        helper.make_node("Softmax", ["view_logits"], ["view"], axis=1),
        helper.make_node("Mul", ["mean", "w2"], ["side_logits"]),
        helper.make_node("Softmax", ["side_logits"], ["side"], axis=1),
        helper.make_node("Mul", ["mean", "w2"], ["implant_logits"]),
        helper.make_node("Sigmoid", ["implant_logits"], ["implant"]),
    ]
    inits = [
        helper.make_tensor("w5", TensorProto.FLOAT, [1, 5], [1.0, 2.0, 3.0, 4.0, 5.0]),
        helper.make_tensor("w2", TensorProto.FLOAT, [1, 2], [1.0, -1.0]),
    ]
    outs = [
        helper.make_tensor_value_info("view", TensorProto.FLOAT, [batch, 5]),
        helper.make_tensor_value_info("side", TensorProto.FLOAT, [batch, 2]),
        helper.make_tensor_value_info("implant", TensorProto.FLOAT, [batch, 2]),
    ]
    graph = helper.make_graph(nodes, "tiny", [inp], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _manifest(size: int = 16, version: str = "1.0.0") -> Manifest:
    return Manifest(
        name="triage",
        version=version,
        task="triage",
        architecture="tiny",
        input=InputSpec(height=size, width=size, mean=(0.5,), std=(0.25,)),
        outputs=(
            OutputSpec("view", tuple(v.value for v in View), "softmax"),
            OutputSpec("side", ("R", "L"), "softmax"),
            OutputSpec("implant", ("R", "L"), "sigmoid"),
        ),
        training_data="none (unit test)",
        command="pytest",
    )


def _install(root: Path, version: str = "1.0.0", size: int = 16, fixed_batch: bool = False) -> Path:
    d = root / "triage" / version
    _identity_pool_model(d / "model.onnx", size=size, fixed_batch=fixed_batch)
    write_manifest(_manifest(size, version), d)
    return d


def test_manifest_roundtrip_and_newest_version(tmp_path: Path) -> None:
    _install(tmp_path, "1.2.0")
    _install(tmp_path, "1.10.0")
    _install(tmp_path, "1.9.3")
    d = resolve_model_dir(tmp_path, "triage")
    assert d.name == "1.10.0"
    m = load_manifest(d)
    assert m.input.shape == (-1, 1, 16, 16) and m.output("view").classes[0] == "ap_pelvis"
    assert resolve_model_dir(tmp_path, "triage/1.2.0").name == "1.2.0"
    with pytest.raises(ManifestError, match=r"no model\.yaml"):
        resolve_model_dir(tmp_path, "detector")


def test_manifest_refuses_tampered_model(tmp_path: Path) -> None:
    d = _install(tmp_path)
    with open(d / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(d)


def test_manifest_refuses_missing_checksum_and_bad_fields(tmp_path: Path) -> None:
    d = _install(tmp_path)
    data = yaml.safe_load((d / "model.yaml").read_text())
    data["sha256"] = ""
    (d / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError, match="no sha256"):
        load_manifest(d)
    data["task"] = "segmentation"
    (d / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError, match="task"):
        load_manifest(d)
    data["task"] = "triage"
    data["input"]["shape"] = [-1, 3, 16, 16]
    (d / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError, match="disagrees"):
        load_manifest(d)


def test_session_refuses_declared_input_mismatch(tmp_path: Path) -> None:
    d = _install(tmp_path, size=16)
    data = yaml.safe_load((d / "model.yaml").read_text())
    data["input"].update(height=32, width=32, shape=[-1, 1, 32, 32])
    (d / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError, match="does not match declared"):
        load_model("triage", ModelsConfig(root=tmp_path))


def test_session_refuses_fixed_batch_when_dynamic_declared(tmp_path: Path) -> None:
    _install(tmp_path, fixed_batch=True)
    with pytest.raises(ManifestError, match="dynamic batch"):
        load_model("triage", ModelsConfig(root=tmp_path))


def test_session_runs_and_decodes_triage(tmp_path: Path) -> None:
    _install(tmp_path)
    cfg = ModelsConfig(root=tmp_path, intra_op_threads=1, batch_size=2)
    from node.infer.triage import TriageModel

    model = TriageModel.load("triage", cfg)
    bright = np.ones((40, 30), np.float32)  # mean after standardisation > 0 → last view class wins
    results = model.predict([bright, bright, bright])
    assert len(results) == 3
    r = results[0]
    assert r.view is View.OTHER and r.imaged_sides == () and r.implant_probability == {}
    assert model.model.provider == "CPUExecutionProvider"


# --- providers ------------------------------------------------------------------------------


def test_provider_chain() -> None:
    assert provider_chain("cpu") == ["CPUExecutionProvider"]
    assert provider_chain("tensorrt")[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


def test_unavailable_gpu_provider_fails_loudly(tmp_path: Path) -> None:
    d = _install(tmp_path)
    if "CUDAExecutionProvider" in ort.get_available_providers():  # pragma: no cover - GPU build
        pytest.fail("this test expects the CPU-only onnxruntime wheel of the test environment")
    with pytest.raises(ProviderError, match="offers only"):
        create_session(load_manifest(d), ModelsConfig(provider="cuda"))


def test_silent_fallback_to_cpu_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime claims CUDA is available but the session ends up on the CPU: must fail."""
    d = _install(tmp_path)
    real = ort.get_available_providers()
    monkeypatch.setattr(
        session_mod.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real]
    )  # the only mock: a GPU provider that cannot really exist here
    with pytest.raises(ProviderError, match="fell back silently"):
        create_session(load_manifest(d), ModelsConfig(provider="cuda"))


# --- decoding -------------------------------------------------------------------------------


def test_decode_triage_views_sides_implants() -> None:
    view = np.array([[0.9, 0.05, 0.02, 0.02, 0.01], [0.0, 0.1, 0.8, 0.1, 0.0], [0, 0, 0, 0, 1.0]])
    side = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
    implant = np.array([[0.9, 0.1], [0.7, 0.3], [0.9, 0.9]])
    pelvis, lateral, other = decode_triage(view, side, implant)
    assert pelvis.view is View.AP_PELVIS and pelvis.imaged_sides == (Side.RIGHT, Side.LEFT)
    assert pelvis.implant_present(Side.RIGHT) is True and pelvis.implant_present(Side.LEFT) is False
    assert lateral.view is View.LATERAL_HIP and lateral.imaged_sides == (Side.LEFT,)
    assert lateral.side_probability == pytest.approx(0.8)
    assert lateral.implant_present(Side.LEFT) is False and lateral.implant_present(Side.RIGHT) is None
    assert other.imaged_sides == () and other.implant_probability == {}


def test_decode_triage_rejects_an_uncertain_view_as_other() -> None:
    view = np.array([[0.1, 0.1, 0.05, 0.45, 0.3], [0.05, 0.05, 0.0, 0.9, 0.0], [0.01, 0.02, 0.01, 0.01, 0.95]])
    side = np.array([[0.5, 0.5], [0.2, 0.8], [0.5, 0.5]])
    implant = np.zeros((3, 2))
    unsure, sure, other = decode_triage(view, side, implant, min_view_probability=0.6)
    assert unsure.view is View.OTHER and unsure.uncertain_view is View.OBLIQUE_HIP
    assert unsure.imaged_sides == () and unsure.view_probability == pytest.approx(0.45)
    assert sure.view is View.OBLIQUE_HIP and sure.uncertain_view is None
    assert other.view is View.OTHER and other.uncertain_view is None  # "other" is never "uncertain"
    assert decode_triage(view, side, implant)[0].view is View.OBLIQUE_HIP  # default: no rejection


def test_decode_detector_maps_to_source_pixels() -> None:
    nc = len(DETECTOR_CLASSES)
    pred = np.zeros((4 + nc, 4), np.float32)
    # anchor 0: cup centred at network (64, 40) 20x20 ; anchor 1: duplicate, lower score
    pred[:4, 0] = [64, 40, 20, 20]
    pred[4 + 2, 0] = 0.9
    pred[:4, 1] = [65, 41, 20, 20]
    pred[4 + 2, 1] = 0.8
    # anchor 1 is also a hip joint (multi-label) ; anchor 3 below threshold
    pred[4 + 0, 1] = 0.6
    pred[:4, 3] = [10, 10, 5, 5]
    pred[4 + 4, 3] = 0.1
    _, tr = letterbox(np.zeros((256, 512), np.float32), 128, 128)  # scale 0.25, pad_y 32
    boxes = decode_predictions(pred, tr, DETECTOR_CLASSES, DetectorSettings(score_threshold=0.25))
    assert [b.label for b in boxes] == ["cup", "hip_joint_right"]
    cup = boxes[0]
    assert cup.score == pytest.approx(0.9)
    # network (54, 30, 74, 50) → source: x / 0.25, (y - 32) / 0.25, clipped at the top edge
    np.testing.assert_allclose([cup.x0, cup.y0, cup.x1, cup.y1], [216, 0, 296, 72])


def test_decode_detector_rejects_wrong_shape() -> None:
    _, tr = letterbox(np.zeros((10, 10), np.float32), 16, 16)
    with pytest.raises(ValueError, match="anchors"):
        decode_predictions(np.zeros((5, 3), np.float32), tr)


def test_the_zoomed_out_look_maps_hip_boxes_back_and_drops_the_padding() -> None:
    import numpy as np

    from node.domain import Box
    from node.infer.detector import _pad, _unpad

    image = np.zeros((100, 200), dtype=np.float32)
    image[40:60, 50:70] = 1.0
    padded = _pad(image, 0.25)
    assert padded.shape == (150, 300) and padded[65, 105] == 1.0 and padded[0, 0] == 0.0
    found = [
        Box(100.0, 60.0, 130.0, 90.0, "hip_joint_right", 0.4),  # -> (50, 35, 80, 65)
        Box(0.0, 0.0, 40.0, 20.0, "hip_joint_left", 0.3),  # in the padding
        Box(100.0, 60.0, 130.0, 90.0, "cup", 0.9),  # not a joint: the first look's job
        Box(0.0, 0.0, 20.0, 20.0, "hip_joint_right", 0.5),  # a corner of the padding: negative size
    ]
    out = _unpad(found, image.shape, 0.25)
    assert [(b.label, b.x0, b.y0, b.x1, b.y1) for b in out] == [("hip_joint_right", 50.0, 35.0, 80.0, 65.0)]


def test_an_uncertain_hip_view_is_confirmed_only_by_a_confident_hip_joint() -> None:
    import numpy as np

    from node.domain import Box, Side, View
    from node.infer.triage import confirm_uncertain_view, decode_triage

    view = np.array([[0.01, 0.56, 0.0, 0.01, 0.42], [0.01, 0.9, 0.0, 0.04, 0.05]])
    side = np.array([[0.2, 0.8], [0.7, 0.3]])
    implant = np.array([[0.1, 0.9], [0.1, 0.1]])
    unsure, sure = decode_triage(view, side, implant, min_view_probability=0.6)
    assert unsure.view is View.OTHER and unsure.uncertain_view is View.AP_HIP and unsure.imaged_sides == ()
    assert unsure.leaned is not None and unsure.leaned.imaged_sides == (Side.LEFT,)
    weak = [Box(0, 0, 10, 10, "hip_joint_left", 0.3), Box(0, 0, 10, 10, "cup", 0.9)]
    strong = [Box(0, 0, 10, 10, "hip_joint_left", 0.77)]
    assert confirm_uncertain_view(unsure, weak) == (unsure, None)
    confirmed, note = confirm_uncertain_view(unsure, strong)
    assert confirmed.view is View.AP_HIP and confirmed.imaged_sides == (Side.LEFT,)
    assert confirmed.implant_probability == {Side.LEFT: 0.9}
    assert note is not None and "p=0.56" in note and "0.77" in note
    assert confirm_uncertain_view(sure, strong) == (sure, None)  # a sure view is left as it is


def test_a_laterals_side_comes_from_the_header_and_the_disagreement_is_stated() -> None:
    from dataclasses import replace

    import numpy as np

    from node.domain import Side, View
    from node.infer.triage import decode_triage, side_from_header
    from node.pixels import header_side

    # rows: a lateral the model places on the left, an AP hip on the left, an AP pelvis
    view = np.array([[0.0, 0.05, 0.9, 0.05, 0.0], [0.0, 0.9, 0.05, 0.05, 0.0], [0.9, 0.05, 0.0, 0.05, 0.0]])
    side = np.array([[0.3, 0.7], [0.3, 0.7], [0.5, 0.5]])
    implant = np.array([[0.1, 0.95], [0.1, 0.95], [0.2, 0.3]])
    lateral, ap_hip, pelvis = decode_triage(view, side, implant)
    moved, note = side_from_header(lateral, header_side(_laterality(image="R ")))
    assert moved.view is View.LATERAL_HIP and moved.imaged_sides == (Side.RIGHT,)
    assert moved.implant_probability == {Side.RIGHT: 0.95}  # the hip the model saw is the one named
    assert note is not None and "laterality R" in note and "left hip (p=0.70)" in note
    assert side_from_header(lateral, header_side(_laterality(series="L"))) == (lateral, None)  # agreement
    for blank in ("", "B", "U", "X"):
        # the header does not name one hip
        assert side_from_header(lateral, header_side(_laterality(image=blank))) == (lateral, None)
    sure = replace(ap_hip, side_probability=0.95)
    assert side_from_header(sure, Side.RIGHT) == (sure, None)  # an AP shows its side: pixels decide
    # ... unless the model is unsure of it (p 0.7 < AP_HIP_HEADER_SIDE_BELOW): then the header's hip
    moved, note = side_from_header(ap_hip, Side.RIGHT)
    assert moved.imaged_sides == (Side.RIGHT,) and moved.implant_probability == {Side.RIGHT: 0.95}
    assert note is not None and "unsure which hip this AP view shows" in note and "left hip (p=0.70)" in note
    assert side_from_header(replace(ap_hip, side_probability=0.85), Side.RIGHT)[1] is None
    assert side_from_header(pelvis, Side.RIGHT) == (pelvis, None)
    # ImageLaterality wins over the series' Laterality, as in metadata_mismatches
    assert header_side(_laterality(image="L", series="R")) is Side.LEFT


def test_a_single_hip_view_the_model_was_unsure_of_takes_its_side_from_the_header() -> None:
    """A view accepted only because the detector found a hip joint (``confirm_uncertain_view``):
    the model was unsure what it saw, so its side - however confident - gives way to the header's
    laterality (an unseen renderer's laterals read as oblique hips named the other hip at p 0.99).
    The same view read with confidence keeps the side its pixels show."""
    import numpy as np

    from node.domain import Box, Side, View
    from node.infer.triage import confirm_uncertain_view, decode_triage, side_from_header

    # an oblique hip at p 0.56 (below the 0.6 bar), then the same read at p 0.9; both place it on the left
    view = np.array([[0.01, 0.0, 0.01, 0.56, 0.42], [0.0, 0.05, 0.0, 0.9, 0.05]])
    side = np.array([[0.01, 0.99], [0.01, 0.99]])
    implant = np.array([[0.1, 0.3], [0.1, 0.3]])
    unsure, sure = decode_triage(view, side, implant, min_view_probability=0.6)
    confirmed, _ = confirm_uncertain_view(unsure, [Box(0, 0, 10, 10, "hip_joint_left", 0.64)])
    assert confirmed.view is View.OBLIQUE_HIP and confirmed.view_confirmed_by_detector
    moved, note = side_from_header(confirmed, Side.RIGHT)
    assert moved.imaged_sides == (Side.RIGHT,) and moved.implant_probability == {Side.RIGHT: 0.3}
    assert note is not None and "unsure which view this is" in note and "left hip (p=0.99)" in note
    assert not sure.view_confirmed_by_detector
    assert side_from_header(sure, Side.RIGHT) == (sure, None)
    assert side_from_header(confirmed, Side.LEFT) == (confirmed, None)  # agreement
    assert side_from_header(confirmed, None) == (confirmed, None)  # no laterality in the header


def _laterality(image: str | None = None, series: str | None = None) -> Dataset:
    ds = Dataset()
    if image is not None:
        ds.ImageLaterality = image
    if series is not None:
        ds.Laterality = series
    return ds


def test_other_by_a_narrow_margin_over_a_hip_view_is_an_uncertain_hip_view() -> None:
    import numpy as np

    from node.domain import Box, Side, View
    from node.infer.triage import confirm_uncertain_view, decode_triage

    # "other" narrowly over AP pelvis; "other" above the minimum but unsure, over a faint AP pelvis
    # (a dev sketch film: other 0.69, AP pelvis 0.29, both joints boxed at 0.82-0.84); "other" sure
    view = np.array([[0.48, 0.01, 0.01, 0.01, 0.49], [0.29, 0.01, 0.01, 0.0, 0.69], [0.03, 0.0, 0.0, 0.0, 0.97]])
    side, implant = np.full((3, 2), 0.5), np.full((3, 2), 0.1)
    narrow, unsure, sure = decode_triage(view, side, implant, min_view_probability=0.6)
    assert narrow.view is View.OTHER and narrow.uncertain_view is View.AP_PELVIS
    assert narrow.view_probability == pytest.approx(0.48)
    assert unsure.view is View.OTHER and unsure.uncertain_view is View.AP_PELVIS
    assert sure.uncertain_view is None and sure.leaned is None
    joints = [Box(0, 0, 10, 10, "hip_joint_right", 0.8), Box(50, 0, 60, 10, "hip_joint_left", 0.7)]
    for lean, p in ((narrow, "p=0.48"), (unsure, "p=0.29")):
        confirmed, note = confirm_uncertain_view(lean, joints)
        assert confirmed.view is View.AP_PELVIS and confirmed.imaged_sides == (Side.RIGHT, Side.LEFT)
        assert note is not None and p in note
    # a joint box below VIEW_CONFIRM_JOINT_SCORE (true "other" dev images reached 0.34) confirms nothing
    assert confirm_uncertain_view(unsure, [Box(0, 0, 10, 10, "hip_joint_right", 0.34)]) == (unsure, None)
    assert confirm_uncertain_view(sure, joints) == (sure, None)  # a sure "other" stays other
    assert decode_triage(view, side, implant)[0].view is View.OTHER  # no minimum: the argmax stands
    # a site's lower minimum does not let an unsure "other" through as its hip view unconfirmed
    low = decode_triage(view, side, implant, min_view_probability=0.2)
    assert low[1].view is View.OTHER and low[1].uncertain_view is View.AP_PELVIS and low[2].leaned is None


def test_triage_ensemble_averages_its_members_and_exposes_every_session() -> None:
    """The bundled default triage is an ensemble (node.config): its probabilities are the mean of
    its members' on the same images, decoded as one model's; every member's session is listed
    (SR model list, metrics) and routed through the batcher wrap; a lone name stays one model."""
    from node.infer.triage import TriageEnsemble, TriageModel

    cfg = ModelsConfig(root=Path("models"), batch_size=2)
    assert isinstance(cfg.triage, list) and len(cfg.triage) == 2
    ens = TriageModel.load(cfg.triage, cfg)
    assert isinstance(ens, TriageEnsemble)
    members = [TriageModel.load(name, cfg) for name in cfg.triage]
    rng = np.random.default_rng(5)
    images = [rng.random((90, 70)).astype(np.float32), np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)]
    got = ens.probabilities(images)
    parts = [m.probabilities(images) for m in members]
    for head in ("view", "side", "implant"):
        np.testing.assert_allclose(got[head], (parts[0][head] + parts[1][head]) / 2, atol=1e-6)
        assert not np.allclose(parts[0][head], parts[1][head]), head  # the members do differ
    assert ens.label == "triage " + "+".join(m.model.manifest.version for m in members)
    assert [s.manifest.version for s in ens.sessions] == [m.model.manifest.version for m in members]
    wrapped: list[str] = []

    def wrap(session: Any) -> Any:
        wrapped.append(session.manifest.version)
        return session

    ens.wrap_sessions(wrap)
    assert wrapped == [m.model.manifest.version for m in members]
    assert len(ens.predict(images)) == 2
    # a style is held out only when no member trained on it (the bench marks its columns so)
    from node.train.generalise import trained_on_styles

    assert trained_on_styles(members[0]) == ["analytic"]
    assert trained_on_styles(ens) == ["analytic", "voxel"]
    single = TriageModel.load(cfg.triage[:1], cfg)
    assert not isinstance(single, TriageEnsemble) and single.label == members[0].label
    with pytest.raises(ManifestError, match="empty"):
        TriageModel.load([], cfg)


def test_test_time_views_are_merged_with_the_mirror_s_sides_swapped() -> None:
    """merge_views averages the blocks of views_batch; in a mirror (the odd blocks) the
    side and implant columns are (L, R), the view is the same."""
    from node.infer.triage import merge_views

    n = 2
    view = np.arange(4 * n * 5, dtype=np.float64).reshape(4 * n, 5)
    side = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9], [0.5, 0.5], [0.7, 0.3]])
    implant = np.array([[0.9, 0.0], [0.1, 0.2], [0.1, 0.7], [0.3, 0.3], [0.8, 0.1], [0.2, 0.2], [0.0, 1.0], [0.4, 0.0]])
    got = merge_views({"view": view, "side": side, "implant": implant}, n)
    np.testing.assert_allclose(got["view"], (view[0:2] + view[2:4] + view[4:6] + view[6:8]) / 4)
    np.testing.assert_allclose(got["implant"][0], [(0.9 + 0.7 + 0.8 + 1.0) / 4, (0.0 + 0.1 + 0.1 + 0.0) / 4])
    np.testing.assert_allclose(got["side"][1], [(0.2 + 0.4 + 0.1 + 0.3) / 4, (0.8 + 0.6 + 0.9 + 0.7) / 4])
    two = merge_views({"view": view[:4], "side": side[:4], "implant": implant[:4]}, n)  # "flip": 2 blocks
    np.testing.assert_allclose(two["implant"][0], [(0.9 + 0.7) / 2, (0.0 + 0.1) / 2])
    one = merge_views({"view": view[:2], "side": side[:2], "implant": implant[:2]}, n)  # "none"
    np.testing.assert_allclose(one["implant"], implant[:2])


def test_the_bundled_triage_reads_each_image_mirrored_and_cropped_too() -> None:
    """The default (models.triage_test_time: flip_crop) reaches every member of the bundled
    ensemble. With the mirror in the average, a mirrored film gets the same view and its sides'
    implant probabilities swapped; 'none' is the image's own reading, and the two differ."""
    from node.infer.preprocess import make_batch as batch_of
    from node.infer.triage import OUTPUTS, TriageModel, views_batch

    cfg = ModelsConfig(root=Path("models"), batch_size=4)
    assert cfg.triage_test_time == "flip_crop"
    ens = TriageModel.load(cfg.triage, cfg)
    assert ens.test_time == "flip_crop" and all(m.test_time == "flip_crop" for m in ens.members)  # type: ignore[attr-defined]
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:200, 0:240]
    # an asymmetric image whose letterbox pads evenly (240 -> 192 wide, 200 -> 160 rows, 16 + 16)
    image = (0.4 + 0.3 * (xx < 70) * (np.hypot(yy - 120, xx - 40) < 30) + 0.05 * rng.random((200, 240))).astype(np.float32)
    mirror = np.ascontiguousarray(image[:, ::-1])
    spec = ens.model.manifest.input
    assert views_batch([image], spec, "none").shape[0] == 1
    flip = views_batch([image], spec, "flip")
    np.testing.assert_allclose(flip[1], flip[0][..., ::-1])
    np.testing.assert_allclose(flip[0], batch_of([image], spec)[0][0])
    assert views_batch([image, mirror], spec, "flip_crop").shape[0] == 8
    for views in ("flip", "flip_crop"):
        m = TriageModel.load(cfg.triage, cfg.model_copy(update={"triage_test_time": views}))
        a, b = m.probabilities([image]), m.probabilities([mirror])
        np.testing.assert_allclose(a["view"], b["view"], atol=2e-3)
        np.testing.assert_allclose(a["implant"], b["implant"][:, ::-1], atol=2e-3)
        np.testing.assert_allclose(a["side"], b["side"][:, ::-1], atol=2e-3)
    plain = TriageModel.load(cfg.triage, cfg.model_copy(update={"triage_test_time": "none"}))
    alone = plain.probabilities([image])
    flipped_only = TriageModel.load(cfg.triage, cfg.model_copy(update={"triage_test_time": "flip"}))
    mirrored = plain.probabilities([mirror])
    both = flipped_only.probabilities([image])
    for head in OUTPUTS:
        swap = (lambda x: x) if head == "view" else (lambda x: x[:, ::-1])
        np.testing.assert_allclose(both[head], (alone[head] + swap(mirrored[head])) / 2, atol=2e-3)
    assert not np.allclose(alone["implant"], ens.probabilities([image])["implant"], atol=1e-4)
