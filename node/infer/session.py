"""onnxruntime sessions built from a manifest and ``ModelsConfig``.

onnxruntime quietly falls back to the CPU when a requested GPU provider cannot be used (wrong
CUDA, missing TensorRT libraries, a CPU-only wheel). A node configured for ``cuda`` that really
runs on the CPU is ten times slower than its operator thinks, so we check twice and fail at
start-up: the provider must be *available* in this build, and it must be *active* in the session
that was actually created (``session.get_providers()``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from node.config import ModelsConfig, ProviderName
from node.infer.manifest import Manifest, ManifestError, check_graph_io, load_manifest, resolve_model_dir

log = logging.getLogger(__name__)

PROVIDERS: Mapping[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class ProviderError(RuntimeError):
    """The configured execution provider is not available or not active."""


def provider_chain(provider: ProviderName) -> list[str]:
    """Providers to request, best first. The CPU is always last so unsupported ops still run."""
    chain = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[provider]
    return [PROVIDERS[p] for p in chain]


def session_options(cfg: ModelsConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = cfg.inter_op_threads
    opts.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
    return opts


@dataclass
class ModelSession:
    """A loaded model: its manifest and a live onnxruntime session."""

    manifest: Manifest
    session: ort.InferenceSession
    provider: str

    @property
    def input_name(self) -> str:
        return self.manifest.input.name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.manifest.outputs]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one NCHW float32 batch; returns the declared outputs by name."""
        if batch.ndim != 4 or batch.dtype != np.float32:
            raise ValueError(f"batch must be float32 NCHW, got {batch.dtype} {batch.shape}")
        names = self.output_names
        results = self.session.run(names, {self.input_name: np.ascontiguousarray(batch)})
        return {n: np.asarray(r) for n, r in zip(names, results, strict=True)}


def create_session(manifest: Manifest, cfg: ModelsConfig) -> ModelSession:
    """Open ``manifest.model_path`` with the configured provider; verify graph I/O and provider.

    Raises ``ProviderError`` if the configured provider is unavailable or inactive and
    ``ManifestError`` if the graph does not match the manifest.
    """
    wanted = PROVIDERS[cfg.provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise ProviderError(
            f"models.provider is {cfg.provider!r} but this onnxruntime build offers only {available}; "
            "install the matching onnxruntime package or set models.provider: cpu"
        )
    with warnings.catch_warnings():
        # onnxruntime warns (and falls back) when a provider fails to initialise; we check the
        # active providers explicitly below and raise instead, so the warning adds nothing.
        warnings.simplefilter("ignore")
        session = ort.InferenceSession(
            str(manifest.model_path),
            sess_options=session_options(cfg),
            providers=provider_chain(cfg.provider),
        )
    active = session.get_providers()
    if not active or active[0] != wanted:
        raise ProviderError(
            f"{manifest.label}: models.provider is {cfg.provider!r} ({wanted}) but the session runs on "
            f"{active}; onnxruntime fell back silently (check the CUDA/cuDNN/TensorRT libraries)"
        )
    check_graph_io(
        manifest,
        [(i.name, list(i.shape)) for i in session.get_inputs()],
        [o.name for o in session.get_outputs()],
    )
    log.info("loaded model %s on %s", manifest.label, active[0])
    return ModelSession(manifest=manifest, session=session, provider=active[0])


def load_model(name: str | Path, cfg: ModelsConfig, task: str | None = None) -> ModelSession:
    """Resolve ``name`` under ``cfg.root`` (newest version), verify and open it."""
    manifest = load_manifest(resolve_model_dir(cfg.root, name))
    if task is not None and manifest.task != task:
        raise ManifestError(f"{manifest.label}: is a {manifest.task!r} model, expected {task!r}")
    return create_session(manifest, cfg)
