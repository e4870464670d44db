"""Image → network input: aspect-preserving resize + pad, optional CLAHE, standardisation, batches.

Training (``node.train``) calls exactly these functions, so a model sees the same pixels at
training time and in the node. Inputs are float32 images already normalised to 0..1 by
``node.pixels.normalise`` (MONOCHROME1 inverted, windowed), 2-D ``(rows, columns)``.

``Letterbox`` records the resize so detector boxes map back to *stored-image* pixels: a box
reported in network coordinates is useless to the measurement stage working on the original.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import cv2
import numpy as np

from node.infer.manifest import InputSpec

T = TypeVar("T")


@dataclass(frozen=True)
class Letterbox:
    """Source image → network input mapping: ``dst = src * scale + pad`` (per axis)."""

    src_height: int
    src_width: int
    dst_height: int
    dst_width: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(n, 4)`` x0,y0,x1,y1 boxes from network to source pixels, clipped to the image."""
        out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0.0, self.src_width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0.0, self.src_height)
        return out

    def to_network(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(n, 4)`` boxes from source to network pixels (used to build training targets)."""
        out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale_x + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale_y + self.pad_y
        return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # INTER_AREA averages when shrinking (a 2k image to 256 px): no aliasing of fine trabecular
    # texture or wire; INTER_LINEAR when enlarging a small image.
    shrink = width < image.shape[1] or height < image.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, (width, height), interpolation=interp), dtype=np.float32)


def letterbox(
    image: np.ndarray, height: int, width: int, pad_value: float = 0.0
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` to fit ``height x width`` keeping its aspect ratio, centred, padded."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    src_h, src_w = image.shape
    scale = min(height / src_h, width / src_w)
    new_w = max(1, min(width, round(src_w * scale)))
    new_h = max(1, min(height, round(src_h * scale)))
    resized = _resize(image.astype(np.float32, copy=False), new_w, new_h)
    pad_x = (width - new_w) // 2
    pad_y = (height - new_h) // 2
    out = np.full((height, width), pad_value, dtype=np.float32)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    # Effective per-axis scale (rounding of the new size makes it differ slightly from `scale`).
    return out, Letterbox(
        src_h, src_w, height, width, new_w / src_w, new_h / src_h, float(pad_x), float(pad_y)
    )


def stretch(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Letterbox]:
    """Resize to exactly ``height x width`` ignoring the aspect ratio."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    src_h, src_w = image.shape
    out = _resize(image.astype(np.float32, copy=False), width, height)
    return out, Letterbox(src_h, src_w, height, width, width / src_w, height / src_h, 0.0, 0.0)


def apply_clahe(image01: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on a 0..1 image (16-bit internally).

    OpenCV equalises 16-bit input over the full 0..65535 range and returns that range, so the
    image is scaled to it and back (8-bit would throw away the detector's dynamic range).
    """
    img = np.clip(image01, 0.0, 1.0)
    as16 = np.round(img * 65535.0).astype(np.uint16)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    return np.asarray(clahe.apply(as16), dtype=np.float32) / 65535.0


def prepare(image01: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Letterbox]:
    """One 0..1 image → ``(channels, height, width)`` float32 network input and its transform."""
    if spec.resize == "letterbox":
        img, box = letterbox(image01, spec.height, spec.width, spec.pad_value)
    else:
        img, box = stretch(image01, spec.height, spec.width)
    if spec.clahe:
        img = apply_clahe(img)
    chw = np.repeat(img[None, :, :], spec.channels, axis=0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((chw - mean) / std, dtype=np.float32), box


def make_batch(images: Sequence[np.ndarray], spec: InputSpec) -> tuple[np.ndarray, list[Letterbox]]:
    """Stack prepared images into one NCHW float32 batch."""
    if not images:
        return np.zeros((0, spec.channels, spec.height, spec.width), np.float32), []
    prepared = [prepare(im, spec) for im in images]
    return np.stack([p[0] for p in prepared]), [p[1] for p in prepared]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive chunks of at most ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ValueError("batch size must be >= 1")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
