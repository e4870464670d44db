"""Shared training plumbing: offline setup, seeding, timm backbones, ONNX export and checks.

Everything a ``hipnode train <task>`` command needs besides its own data and loss:

* ``offline_environment`` — no hub, no font or weight downloads (sites are often air-gapped);
* ``seed_everything`` — same seed + same data + same command → same weights (on one machine);
* ``build_backbone`` / ``MultiHead`` — a timm feature extractor with named heads whose
  activations are *inside* the graph, so the ONNX outputs are probabilities;
* ``export_onnx`` (legacy TorchScript exporter, opset 17, dynamic batch) and ``compare_onnx``
  (onnxruntime vs torch on the same batch) — a model is only written if both agree;
* ``write_model`` — ``model.onnx`` + ``model.yaml`` (see ``node.infer.manifest``).

Images reach the network through ``node.infer.preprocess.prepare`` here exactly as in the node.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from node.infer.manifest import Manifest, write_manifest

ONNX_OPSET = 17


def offline_environment(config_dir: Path | None = None) -> Path:
    """Make timm / huggingface / ultralytics strictly offline. Call before importing them.

    ultralytics downloads ``Arial.ttf`` for plots unless one is already in its config
    directory, so a system TrueType font is copied there under the names it looks for.
    Returns the ultralytics config directory.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["YOLO_OFFLINE"] = "1"
    cfg = config_dir or Path(
        os.environ.get("YOLO_CONFIG_DIR") or Path(tempfile.gettempdir()) / "hipnode-yolo"
    )
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    fonts = [
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        *sorted(Path("/usr/share/fonts").rglob("*.ttf")),
    ]
    font = next((f for f in fonts if f.is_file()), None)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if font is not None and not (cfg / name).exists():
            shutil.copyfile(font, cfg / name)
    return cfg


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch and ask torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command that is running, shell-quoted, for the manifest."""
    args = list(sys.argv if argv is None else argv)
    prog = Path(args[0]).name if args else "hipnode"
    rest = args[1:]
    if prog == "cli.py" and "train" in Path(args[0]).parts:  # python -m node.train.cli
        prog, rest = "hipnode", ["train", *rest]
    elif prog in ("__main__.py", "cli.py", "-m", "-c") or prog.startswith("python") or not args:
        prog = "hipnode"
    return shlex.join([prog, *rest])


def build_backbone(arch: str, in_chans: int = 1) -> tuple[Any, int]:
    """A randomly initialised timm feature extractor (no classifier) and its feature width.

    Never downloads: bundled weights are trained from scratch on phantoms, and a site that
    wants ImageNet initialisation can put the timm cache in place and pass ``--pretrained``
    (not wired up by default because an air-gapped node must not try the network).
    """
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)
    # ``num_features`` is not the pooled width for every family (mobilenetv3 has a conv head
    # after it), so ask the network itself.
    was_training = model.training
    model.eval()
    with torch.no_grad():
        width = int(model(torch.zeros(1, in_chans, 64, 64)).shape[1])
    model.train(was_training)
    return model, width


def _multihead_class() -> type:
    """Build ``MultiHead`` on first use so importing this module does not import torch (3 s)."""
    import torch
    from torch import nn

    class MultiHead(nn.Module):  # type: ignore[misc]
        """Backbone + one linear head per named output, activation applied in the graph.

        ``heads`` maps output name → (number of classes, activation) with activation one of
        ``softmax``, ``sigmoid`` or ``none``. ``forward`` returns the outputs in ``heads`` order;
        ``logits`` returns the pre-activation values for the loss.
        """

        def __init__(
            self, arch: str, in_chans: int, heads: Mapping[str, tuple[int, str]], dropout: float = 0.1
        ):
            super().__init__()
            self.backbone, width = build_backbone(arch, in_chans)
            self.arch = arch
            self.head_specs = dict(heads)
            self.dropout = nn.Dropout(dropout)
            self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, (n, _) in heads.items()})

        def logits(self, x: Any) -> dict[str, Any]:
            feats = self.dropout(self.backbone(x))
            return {name: head(feats) for name, head in self.heads.items()}

        def forward(self, x: Any) -> tuple[Any, ...]:
            outs = []
            for name, value in self.logits(x).items():
                act = self.head_specs[name][1]
                if act == "softmax":
                    value = torch.softmax(value, dim=1)
                elif act == "sigmoid":
                    value = torch.sigmoid(value)
                outs.append(value)
            return tuple(outs)

    return MultiHead


_LAZY: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "MultiHead":
        if name not in _LAZY:
            _LAZY[name] = _multihead_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def export_onnx(
    model: Any,
    path: Path,
    input_name: str,
    output_names: Sequence[str],
    sample_shape: tuple[int, int, int, int],
) -> Path:
    """Export ``model`` (eval mode) with the legacy exporter, opset 17, dynamic batch axis."""
    import torch

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.zeros(sample_shape, dtype=torch.float32)
    axes = {input_name: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy TorchScript exporter is chosen on purpose (the issue asks for it: stable
        # opset-17 graphs with dynamic_axes); its deprecation notice and tracer warnings about
        # shape-dependent Python branches (fixed at the export size) are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))
    return path


class ExportMismatch(RuntimeError):
    """onnxruntime and torch disagree about the same input."""


def torch_outputs(model: Any, batch: np.ndarray) -> list[np.ndarray]:
    """The model's outputs on ``batch`` as NumPy arrays (eval mode, no gradients)."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    if not isinstance(out, list | tuple):
        out = (out,)
    return [o.detach().cpu().numpy() for o in out]


def compare_onnx(
    model: Any, onnx_path: Path, batch: np.ndarray, output_names: Sequence[str], atol: float = 1e-4
) -> float:
    """Max |onnx - torch| over all outputs on ``batch``; raises ``ExportMismatch`` above ``atol``."""
    import onnxruntime as ort

    expected = torch_outputs(model, batch)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(list(output_names), {sess.get_inputs()[0].name: batch.astype(np.float32)})
    worst = 0.0
    for name, e, g in zip(output_names, expected, got, strict=True):
        if e.shape != g.shape:
            raise ExportMismatch(f"output {name}: torch shape {e.shape}, onnx shape {g.shape}")
        worst = max(worst, float(np.max(np.abs(e - g))) if e.size else 0.0)
    if worst > atol:
        raise ExportMismatch(f"onnxruntime differs from torch by {worst:.3g} (> {atol:g})")
    return worst


def write_model(manifest: Manifest, out_dir: Path) -> Path:
    """Write ``out_dir/model.yaml`` for an already exported ``out_dir/model.onnx`` (sha256 filled in)."""
    manifest = replace(manifest, directory=out_dir)
    return write_manifest(manifest, out_dir)


def model_size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6
