"""Inference benchmark: per-radiograph latency (decode, preprocess, triage, detect) on the CPU.

A 2048 x 2048 16-bit DX (synthetic, stored both uncompressed and JPEG 2000 lossless — the two
syntaxes a site most often sends) goes through exactly the node's path: ``node.pixels``
decode/screen/normalise, ``node.infer.preprocess`` letterbox, the bundled triage and detector
ONNX models through ``node.infer`` at batch 1; then batched throughput at the configured batch
size. Reported: median / p90 per stage, triage + detect per radiograph against the 100 ms
target, and inference time / decode time measured in the same run.

Run: ``python -m benchmarks.bench_infer`` (writes ``benchmarks/results/infer.json``);
``BENCH_THREADS`` (default 2) sets onnxruntime intra-op threads, ``BENCH_MODELS_ROOT`` the models
folder (default ``models``).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from node.config import ModelsConfig, ScreeningConfig
from node.infer.detector import DetectorModel
from node.infer.preprocess import make_batch
from node.infer.triage import TriageModel
from node.pixels import load_radiograph

TARGET_MS = 100.0


def synthetic_dx(size: int = 2048, seed: int = 0) -> Dataset:
    """A smooth pelvis-like 12-bit DX with noise (compresses like a real one, decodes like one)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 800 + 1800 * np.exp(-((yy - 0.55) ** 2 / 0.08 + (xx - 0.5) ** 2 / 0.2))
    for cx in (0.3, 0.7):
        img += 900 * np.exp(-((yy - 0.6) ** 2 + (xx - cx) ** 2) / 0.004)
    img = np.clip(img + rng.normal(0, 25, img.shape), 0, 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = img.tobytes()
    return ds


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _time(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    out = fn()  # warm-up (allocations, onnxruntime kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times, out


def _stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 2),
        "min_ms": round(ms[0], 2),
        "n": len(ms),
    }


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    repeats = 5 if quick else 20
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    root = Path(os.environ.get("BENCH_MODELS_ROOT", "models"))
    cfg = ModelsConfig(root=root, intra_op_threads=threads, inter_op_threads=1)
    triage = TriageModel.load(cfg.triage or "triage", cfg)
    detector = DetectorModel.load(cfg.detector or "detector", cfg)
    screening = ScreeningConfig()

    ds = synthetic_dx()
    stored = {"explicit_vr_le": _bytes(ds)}
    ds.compress(JPEG2000Lossless)
    stored["jpeg2000_lossless"] = _bytes(ds)

    result: dict[str, Any] = {
        "image": "2048x2048 DX, 12 bits stored",
        "threads": threads,
        "triage_model": triage.label,
        "detector_model": detector.label,
        "decode": {},
    }
    image01 = None
    for name, data in stored.items():
        times, (rad, verdict) = _time(lambda data=data: load_radiograph(data, screening), repeats)
        assert rad is not None, verdict
        image01 = rad.image01
        result["decode"][name] = {**_stats(times), "file_mb": round(len(data) / 1e6, 2)}
    assert image01 is not None

    t_spec, d_spec = triage.model.manifest.input, detector.model.manifest.input
    pre_t, (tb, _) = _time(lambda: make_batch([image01], t_spec), repeats)
    pre_d, (db, _) = _time(lambda: make_batch([image01], d_spec), repeats)
    run_t, _ = _time(lambda: triage.model.run(tb), repeats)
    run_d, _ = _time(lambda: detector.model.run(db), repeats)
    full_t, _ = _time(lambda: triage.predict([image01]), repeats)
    full_d, _ = _time(lambda: detector.detect([image01]), repeats)
    result["batch1"] = {
        "preprocess_triage": _stats(pre_t),
        "preprocess_detector": _stats(pre_d),
        "triage_onnx": _stats(run_t),
        "detector_onnx": _stats(run_d),
        "triage_end_to_end": _stats(full_t),  # preprocess + onnx + decoding
        "detector_end_to_end": _stats(full_d),  # preprocess + onnx + decoding + NMS
    }
    per_image = statistics.median(full_t) + statistics.median(full_d)
    result["triage_plus_detect_ms"] = round(per_image, 2)
    result["target_ms"] = TARGET_MS
    result["meets_target"] = per_image <= TARGET_MS
    for name, d in result["decode"].items():
        result[f"inference_over_decode_{name}"] = round(per_image / d["median_ms"], 3)

    batch = cfg.batch_size
    images = [image01] * batch
    rounds = 2 if quick else 5
    t_b, _ = _time(lambda: triage.predict(images), rounds)
    d_b, _ = _time(lambda: detector.detect(images), rounds)
    per = (statistics.median(t_b) + statistics.median(d_b)) / batch
    result["batched"] = {
        "batch_size": batch,
        "triage_per_image_ms": round(statistics.median(t_b) / batch, 2),
        "detector_per_image_ms": round(statistics.median(d_b) / batch, 2),
        "triage_plus_detect_per_image_ms": round(per, 2),
        "images_per_s": round(1000.0 / per, 1),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "infer.json").write_text(json.dumps(result, indent=2))
    print(
        f"decode {result['decode']['explicit_vr_le']['median_ms']} ms (native), "
        f"{result['decode']['jpeg2000_lossless']['median_ms']} ms (J2K lossless); "
        f"preprocess {result['batch1']['preprocess_triage']['median_ms']} + "
        f"{result['batch1']['preprocess_detector']['median_ms']} ms; "
        f"triage {result['batch1']['triage_onnx']['median_ms']} ms; detect {result['batch1']['detector_onnx']['median_ms']} ms; "
        f"triage+detect {per_image:.1f} ms/radiograph (target {TARGET_MS:.0f}); "
        f"batched {result['batched']['triage_plus_detect_per_image_ms']} ms/image"
    )
    return result


if __name__ == "__main__":
    out = run(Path(__file__).with_name("results"), quick="--quick" in sys.argv)
    print(json.dumps(out, indent=2))
