"""Small image operations shared by the analysis and the models, sized for full-resolution images.

Pure numpy/OpenCV, no DICOM: ``node.analyse`` stays testable on plain arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# Percentiles of an image region are taken on a regular subsample of at most this many pixels.
# A joint crop or a cup box of a full-resolution detector image has 10⁵–10⁶ pixels and a full
# percentile of it costs more than the rest of the work on it; regions up to 256 × 256 use every
# pixel.
PERCENTILE_SAMPLE_PIXELS = 256 * 256

# cv2.remap refuses maps of 32767 rows or columns or more.
_REMAP_WIDTH = 1024
_REMAP_MAX_ROWS = 16384


def subsampled_percentile(a: NDArray[Any], q: float | Sequence[float]) -> NDArray[np.float64]:
    """``np.percentile(a, q)`` of a 2-D array, on every ``step``-th row and column, where ``step``
    keeps the sample at most ``PERCENTILE_SAMPLE_PIXELS`` (1 for smaller arrays: exact there)."""
    step = max(1, math.ceil(math.sqrt(a.size / PERCENTILE_SAMPLE_PIXELS)))
    return np.asarray(np.percentile(a[::step, ::step], q), dtype=np.float64)


def sample_bilinear(img: NDArray[np.float32], x: NDArray[Any], y: NDArray[Any]) -> FloatArray:
    """Bilinear samples of ``img`` at (``x``, ``y``) (same shape, any shape), replicating the
    border, as float64 of that shape.

    One ``cv2.remap`` over points laid out in rows of 1024 (in blocks of rows): remap refuses
    maps of ≥ 32767 rows, and a cup box on a full-resolution image has more edge profiles than
    that. Each value depends only on its own coordinates, so the layout does not change it.
    """
    shape = np.shape(x)
    xs = np.asarray(x, dtype=np.float32).ravel()
    ys = np.asarray(y, dtype=np.float32).ravel()
    n = len(xs)
    if n == 0:
        return np.zeros(shape, dtype=np.float64)
    pad = (-n) % _REMAP_WIDTH
    mx = np.concatenate([xs, np.zeros(pad, np.float32)]).reshape(-1, _REMAP_WIDTH)
    my = np.concatenate([ys, np.zeros(pad, np.float32)]).reshape(-1, _REMAP_WIDTH)
    parts = [
        cv2.remap(
            img, mx[i : i + _REMAP_MAX_ROWS], my[i : i + _REMAP_MAX_ROWS], cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        for i in range(0, len(mx), _REMAP_MAX_ROWS)
    ]
    return np.asarray(np.concatenate(parts, axis=0), dtype=np.float64).ravel()[:n].reshape(shape)
