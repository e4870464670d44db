"""Model manifests: ``models/<name>/<version>/model.yaml`` next to ``model.onnx``.

A manifest is the contract between whoever trained a model and the node that runs it: what the
network expects (shape, channels, resolution, normalisation, resize mode), what it answers
(output names and class order), where it came from (training data, the exact command) and how
good it was (validation metrics). The node refuses to run a model whose file does not hash to
the declared sha256 or whose graph input disagrees with the declared input: a silently swapped
or mis-preprocessed model gives plausible-looking nonsense, which is worse than no answer.

Example (abridged)::

    name: triage
    version: 1.0.0
    task: triage
    architecture: mobilenetv3_small_050
    input:
      name: image
      shape: [-1, 1, 224, 224]     # -1 = dynamic batch
      channels: 1
      height: 224
      width: 224
      normalisation: {window: percentile, low_pct: 0.5, high_pct: 99.5, mean: [0.5], std: [0.25]}
      resize: letterbox
      pad_value: 0.0
      clahe: false
    outputs:
      - {name: view, classes: [ap_pelvis, ap_hip, lateral_hip, oblique_hip, other], activation: softmax}
    sha256: 3f2a…
    training_data: "phantoms: 4000 images, seed 11, realism knobs on"
    command: "hipnode train triage --phantoms 4000 …"
    metrics: {view_accuracy: 0.998}
    thresholds: {implant: 0.5}
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

MANIFEST_FILE = "model.yaml"
MODEL_FILE = "model.onnx"

ResizeMode = Literal["letterbox", "stretch"]
WindowMode = Literal["percentile", "voi"]
_TASKS = ("triage", "detector", "morphology")


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match its model file."""


@dataclass(frozen=True)
class InputSpec:
    """What the network expects. ``height``/``width`` are the network input size in pixels.

    ``window`` says how stored pixel values become 0..1 (see ``node.pixels.normalise``); then
    the image is resized (``letterbox`` keeps the aspect ratio and pads with ``pad_value``,
    ``stretch`` does not), optionally CLAHE-equalised, replicated to ``channels`` and finally
    standardised per channel as ``(x - mean) / std``.
    """

    name: str = "image"
    channels: int = 1
    height: int = 224
    width: int = 224
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    window: WindowMode = "percentile"
    low_pct: float = 0.5
    high_pct: float = 99.5
    resize: ResizeMode = "letterbox"
    pad_value: float = 0.0
    clahe: bool = False
    dynamic_batch: bool = True

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Declared NCHW shape, ``-1`` for a dynamic batch axis."""
        return (-1 if self.dynamic_batch else 1, self.channels, self.height, self.width)

    def __post_init__(self) -> None:
        if self.channels < 1 or self.height < 8 or self.width < 8:
            raise ManifestError(f"input: implausible size {self.channels}x{self.height}x{self.width}")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ManifestError("input.normalisation: mean/std need 1 or `channels` values")
        if any(s <= 0 for s in self.std):
            raise ManifestError("input.normalisation.std: must be > 0")
        if self.resize not in ("letterbox", "stretch"):
            raise ManifestError(f"input.resize: unknown mode {self.resize!r}")
        if self.window not in ("percentile", "voi"):
            raise ManifestError(f"input.normalisation.window: unknown mode {self.window!r}")
        if not 0.0 <= self.low_pct < self.high_pct <= 100.0:
            raise ManifestError("input.normalisation: need 0 <= low_pct < high_pct <= 100")


@dataclass(frozen=True)
class OutputSpec:
    """One named graph output. ``classes`` gives the meaning of the last axis (may be empty)."""

    name: str
    classes: tuple[str, ...] = ()
    activation: str = "none"  # softmax | sigmoid | none | yolo (raw detector head)


@dataclass(frozen=True)
class Manifest:
    """A validated ``model.yaml``; ``directory`` is where it was found (``None`` if in memory)."""

    name: str
    version: str
    task: str
    architecture: str
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    sha256: str = ""
    training_data: str = ""
    command: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    directory: Path | None = None

    @property
    def model_path(self) -> Path:
        if self.directory is None:
            raise ManifestError(f"{self.name}: manifest has no directory, so no model file")
        return self.directory / MODEL_FILE

    def output(self, name: str) -> OutputSpec:
        for out in self.outputs:
            if out.name == name:
                return out
        raise ManifestError(f"{self.name} {self.version}: no output named {name!r}")

    def threshold(self, key: str, default: float) -> float:
        return float(self.thresholds.get(key, default))

    @property
    def label(self) -> str:
        """``name version``, used for IHE AIR contributing-equipment and logs."""
        return f"{self.name} {self.version}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _floats(value: Any, key: str) -> tuple[float, ...]:
    if isinstance(value, int | float):
        return (float(value),)
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            pass
    raise ManifestError(f"{key}: must be a number or a list of numbers")


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data or data[key] in (None, ""):
        raise ManifestError(f"{where}{key}: required")
    return data[key]


def _parse_input(data: Any) -> InputSpec:
    if not isinstance(data, Mapping):
        raise ManifestError("input: must be a mapping")
    norm = data.get("normalisation") or {}
    if not isinstance(norm, Mapping):
        raise ManifestError("input.normalisation: must be a mapping")
    try:
        channels = int(_require(data, "channels", "input."))
        height = int(_require(data, "height", "input."))
        width = int(_require(data, "width", "input."))
    except (TypeError, ValueError):
        raise ManifestError("input: channels/height/width must be integers") from None
    shape = data.get("shape")
    dynamic = True
    if shape is not None:
        if not isinstance(shape, Sequence) or len(shape) != 4:
            raise ManifestError("input.shape: must be [batch, channels, height, width]")
        batch = shape[0]
        dynamic = not (isinstance(batch, int) and batch > 0)
        if [int(s) for s in shape[1:]] != [channels, height, width]:
            raise ManifestError(f"input.shape {list(shape)} disagrees with channels/height/width")
    return InputSpec(
        name=str(data.get("name", "image")),
        channels=channels,
        height=height,
        width=width,
        mean=_floats(norm.get("mean", 0.0), "input.normalisation.mean"),
        std=_floats(norm.get("std", 1.0), "input.normalisation.std"),
        window=cast(WindowMode, str(norm.get("window", "percentile"))),
        low_pct=float(norm.get("low_pct", 0.5)),
        high_pct=float(norm.get("high_pct", 99.5)),
        resize=cast(ResizeMode, str(data.get("resize", "letterbox"))),
        pad_value=float(data.get("pad_value", 0.0)),
        clahe=bool(data.get("clahe", False)),
        dynamic_batch=dynamic,
    )


def _parse_outputs(data: Any) -> tuple[OutputSpec, ...]:
    if not isinstance(data, Sequence) or isinstance(data, str) or not data:
        raise ManifestError("outputs: must be a non-empty list")
    outs = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ManifestError(f"outputs[{i}]: must be a mapping")
        classes = item.get("classes") or []
        if not isinstance(classes, Sequence) or isinstance(classes, str):
            raise ManifestError(f"outputs[{i}].classes: must be a list")
        outs.append(
            OutputSpec(
                name=str(_require(item, "name", f"outputs[{i}].")),
                classes=tuple(str(c) for c in classes),
                activation=str(item.get("activation", "none")),
            )
        )
    names = [o.name for o in outs]
    if len(set(names)) != len(names):
        raise ManifestError(f"outputs: duplicate names {names}")
    return tuple(outs)


_KNOWN = {
    "name", "version", "task", "architecture", "input", "outputs", "sha256",
    "training_data", "command", "metrics", "thresholds",
}  # fmt: skip


def parse_manifest(data: Any, directory: Path | None = None) -> Manifest:
    """Validate a manifest mapping (as read from YAML). Unknown keys are kept in ``extra``."""
    if not isinstance(data, Mapping):
        raise ManifestError("manifest: must be a mapping")
    task = str(_require(data, "task", ""))
    if task not in _TASKS:
        raise ManifestError(f"task: must be one of {', '.join(_TASKS)}, not {task!r}")
    metrics = data.get("metrics") or {}
    thresholds = data.get("thresholds") or {}
    if not isinstance(metrics, Mapping) or not isinstance(thresholds, Mapping):
        raise ManifestError("metrics/thresholds: must be mappings")
    try:
        thr = {str(k): float(v) for k, v in thresholds.items()}
    except (TypeError, ValueError):
        raise ManifestError("thresholds: values must be numbers") from None
    sha = str(data.get("sha256") or "").lower()
    if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ManifestError("sha256: must be 64 hex digits")
    return Manifest(
        name=str(_require(data, "name", "")),
        version=str(_require(data, "version", "")),
        task=task,
        architecture=str(_require(data, "architecture", "")),
        input=_parse_input(_require(data, "input", "")),
        outputs=_parse_outputs(_require(data, "outputs", "")),
        sha256=sha,
        training_data=str(data.get("training_data", "")),
        command=str(data.get("command", "")),
        metrics=dict(metrics),
        thresholds=thr,
        extra={k: v for k, v in data.items() if k not in _KNOWN},
        directory=directory,
    )


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    """The YAML form of ``m`` (inverse of ``parse_manifest``)."""
    spec = m.input
    out: dict[str, Any] = {
        "name": m.name,
        "version": m.version,
        "task": m.task,
        "architecture": m.architecture,
        "input": {
            "name": spec.name,
            "shape": list(spec.shape),
            "channels": spec.channels,
            "height": spec.height,
            "width": spec.width,
            "normalisation": {
                "window": spec.window,
                "low_pct": spec.low_pct,
                "high_pct": spec.high_pct,
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
            "resize": spec.resize,
            "pad_value": spec.pad_value,
            "clahe": spec.clahe,
        },
        "outputs": [
            {"name": o.name, "classes": list(o.classes), "activation": o.activation} for o in m.outputs
        ],
        "sha256": m.sha256,
        "training_data": m.training_data,
        "command": m.command,
        "metrics": dict(m.metrics),
        "thresholds": dict(m.thresholds),
    }
    out.update(dict(m.extra))
    return out


def write_manifest(m: Manifest, directory: Path) -> Path:
    """Write ``directory/model.yaml`` for ``m``; the sha256 is computed from ``model.onnx`` there."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / MODEL_FILE
    if not model.is_file():
        raise ManifestError(f"{model}: model file missing; export the model before the manifest")
    data = manifest_to_dict(m)
    data["sha256"] = sha256_file(model)
    path = directory / MANIFEST_FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: ``1.10.0`` after ``1.9.2``; numbers before text at the same position."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def resolve_model_dir(root: Path, name: str | Path) -> Path:
    """Find the version directory for ``name``.

    ``name`` may be a model name under ``root`` (``triage`` → the newest ``root/triage/<v>/``),
    ``name/version``, or a path to a version directory or to its ``model.yaml``.
    """
    candidates = [Path(name)] if Path(name).is_absolute() else [root / name, Path(name)]
    for cand in candidates:
        if cand.is_file() and cand.name == MANIFEST_FILE:
            return cand.parent
        if (cand / MANIFEST_FILE).is_file():
            return cand
        if cand.is_dir():
            versions = [d for d in cand.iterdir() if (d / MANIFEST_FILE).is_file()]
            if versions:
                return max(versions, key=lambda d: _version_key(d.name))
    raise ManifestError(f"model {str(name)!r}: no {MANIFEST_FILE} under {root / name} (or {name})")


def load_manifest(path: Path, verify_checksum: bool = True) -> Manifest:
    """Load ``path`` (a ``model.yaml`` or its directory) and check the model file's sha256."""
    directory = path.parent if path.name == MANIFEST_FILE else path
    mfile = directory / MANIFEST_FILE
    try:
        data = yaml.safe_load(mfile.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{mfile}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{mfile}: not valid YAML: {exc}") from None
    try:
        manifest = parse_manifest(data, directory)
    except ManifestError as exc:
        raise ManifestError(f"{mfile}: {exc}") from None
    if verify_checksum:
        verify_checksum_of(manifest)
    return manifest


def verify_checksum_of(manifest: Manifest) -> None:
    model = manifest.model_path
    if not manifest.sha256:
        raise ManifestError(f"{manifest.label}: manifest declares no sha256; refusing to load {model}")
    if not model.is_file():
        raise ManifestError(f"{manifest.label}: model file {model} is missing")
    actual = sha256_file(model)
    if actual != manifest.sha256:
        raise ManifestError(
            f"{manifest.label}: sha256 of {model} is {actual}, manifest declares {manifest.sha256}; "
            "refusing to load a model that is not the one described"
        )


GraphShape = Sequence[int | str | None]


def check_graph_io(
    manifest: Manifest,
    inputs: Sequence[tuple[str, GraphShape]],
    outputs: Sequence[str],
) -> None:
    """Compare the declared input/outputs with the graph's (name, shape) metadata.

    Symbolic or missing dimensions in the graph count as dynamic. A fixed graph batch of 1 is
    accepted only if the manifest does not promise a dynamic batch.
    """
    if len(inputs) != 1:
        raise ManifestError(f"{manifest.label}: graph has {len(inputs)} inputs, expected exactly 1")
    name, shape = inputs[0]
    spec = manifest.input
    if name != spec.name:
        raise ManifestError(f"{manifest.label}: graph input is {name!r}, manifest declares {spec.name!r}")
    if len(shape) != 4:
        raise ManifestError(f"{manifest.label}: graph input rank {len(shape)}, manifest declares NCHW")

    def fixed(d: int | str | None) -> int | None:
        return d if isinstance(d, int) and d > 0 else None

    got = [fixed(d) for d in shape]
    want = [None if spec.dynamic_batch else 1, spec.channels, spec.height, spec.width]
    for axis, (g, w) in enumerate(zip(got, want, strict=True)):
        if axis == 0:
            if spec.dynamic_batch and g is not None:
                raise ManifestError(
                    f"{manifest.label}: manifest declares a dynamic batch, graph fixes it to {g}"
                )
            continue
        if g is not None and g != w:
            raise ManifestError(
                f"{manifest.label}: graph input shape {list(shape)} does not match declared {list(spec.shape)}"
            )
    missing = [o.name for o in manifest.outputs if o.name not in outputs]
    if missing:
        raise ManifestError(f"{manifest.label}: graph lacks declared outputs {missing} (has {list(outputs)})")
