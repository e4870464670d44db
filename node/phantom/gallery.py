"""Gallery of phantoms (``docs/phantoms.png``): every view, with and without implants, and the
morphology variants, as a viewer would display them (bone bright).

    python -m node.phantom.gallery docs/phantoms.png
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from node.domain import Side, View
from node.phantom.anatomy import CupSpec
from node.phantom.api import render
from node.phantom.spec import PhantomSpec, sample_spec

TILE = 320
NONE = {"dysplasia": False, "cam_deformity": False, "ischial_spine_sign": False, "other_abnormality": False}


def _morph(**flags: bool) -> dict[Side, dict[str, bool]]:
    return {Side.RIGHT: dict(NONE, **flags), Side.LEFT: dict(NONE, **flags)}


def _cup(**kw: object) -> CupSpec:
    return replace(CupSpec(), **kw)  # type: ignore[arg-type]


def tiles() -> list[list[tuple[str, PhantomSpec]]]:
    n = TILE
    ap = View.AP_PELVIS
    return [
        [
            ("AP pelvis, male", sample_spec(101, view=ap, implants="none", sex="M", rows=n, morphology=_morph())),
            ("AP pelvis, female", sample_spec(102, view=ap, implants="none", sex="F", rows=n, morphology=_morph())),
            ("bilateral THA", sample_spec(103, view=ap, implants="bilateral", rows=n)),
            ("R THA 55°/30°, screws, cemented", sample_spec(
                104, view=ap, rows=n, implants={Side.RIGHT: _cup(inclination_deg=55.0, anteversion_deg=30.0,
                                                                 n_screws=3, cemented=True, cerclage=2)})),
            ("dysplasia (both)", sample_spec(105, view=ap, implants="none", rows=n, morphology=_morph(dysplasia=True))),
            ("ischial spine sign + OA", sample_spec(106, view=ap, implants="none", rows=n,
                                                   morphology=_morph(ischial_spine_sign=True, other_abnormality=True))),
        ],
        [
            ("AP hip R", sample_spec(201, view=View.AP_HIP, side="R", implants="none", rows=n, morphology=_morph())),
            ("AP hip L, THA", sample_spec(202, view=View.AP_HIP, side="L", implants="left", rows=n)),
            ("AP hip R, cam", sample_spec(203, view=View.AP_HIP, side="R", implants="none", rows=n,
                                          morphology=_morph(cam_deformity=True))),
            ("AP hip L, OA", sample_spec(204, view=View.AP_HIP, side="L", implants="none", rows=n,
                                         morphology=_morph(other_abnormality=True))),
            ("AP hip R, dysplasia", sample_spec(205, view=View.AP_HIP, side="R", implants="none", rows=n,
                                                morphology=_morph(dysplasia=True))),
            ("AP hip R, THA, MONO1 stored", sample_spec(206, view=View.AP_HIP, side="R", implants="right", rows=n)),
        ],
        [
            ("cross-table lateral R", sample_spec(301, view=View.LATERAL_HIP, side="R", implants="none", rows=n,
                                                  morphology=_morph())),
            ("cross-table lateral L", sample_spec(302, view=View.LATERAL_HIP, side="L", implants="none", rows=n,
                                                  morphology=_morph())),
            ("lateral R, THA", sample_spec(303, view=View.LATERAL_HIP, side="R", implants="right", rows=n)),
            ("lateral L, cam", sample_spec(304, view=View.LATERAL_HIP, side="L", implants="none", rows=n,
                                           morphology=_morph(cam_deformity=True))),
            ("frog-leg R", sample_spec(305, view=View.OBLIQUE_HIP, side="R", implants="none", rows=n,
                                       morphology=_morph())),
            ("frog-leg L, THA", sample_spec(306, view=View.OBLIQUE_HIP, side="L", implants="left", rows=n)),
        ],
        [
            ("other: chest", sample_spec(401, view=View.OTHER, other_kind="chest", rows=n)),
            ("other: knee", sample_spec(402, view=View.OTHER, other_kind="knee", rows=n)),
            ("other: hand", sample_spec(403, view=View.OTHER, other_kind="hand", rows=n)),
            ("other: abdomen", sample_spec(404, view=View.OTHER, other_kind="abdomen", rows=n)),
            ("frog-leg R, cam", sample_spec(405, view=View.OBLIQUE_HIP, side="R", implants="none", rows=n,
                                            morphology=_morph(cam_deformity=True))),
            ("2048² AP pelvis: 1:1 crop", sample_spec(406, view=ap, implants="right", rows=2048)),
        ],
    ]


def _tile(label: str, spec: PhantomSpec) -> NDArray[np.uint8]:
    img = render(spec)
    if "MONO1 stored" in label:
        spec = replace(spec, imaging=replace(spec.imaging, photometric="MONOCHROME1"))
        img = render(spec)
        x = img.pixels.astype(np.float32) / float((1 << img.truth.bits_stored) - 1)
        u8 = np.round(x * 255).astype(np.uint8)
    else:
        u8 = img.to_uint8()
    if u8.shape[0] > TILE:  # 1:1 crop around the implanted hip
        cup = img.truth.hips[Side.RIGHT].cup
        cx, cy = (int(cup.ellipse.cx), int(cup.ellipse.cy)) if cup else (u8.shape[1] // 2, u8.shape[0] // 2)
        y0 = min(max(cy - TILE // 2, 0), u8.shape[0] - TILE)
        x0 = min(max(cx - TILE // 2, 0), u8.shape[1] - TILE)
        u8 = u8[y0:y0 + TILE, x0:x0 + TILE]
    u8 = np.asarray(cv2.resize(u8, (TILE, TILE), interpolation=cv2.INTER_AREA), dtype=np.uint8)
    bar = np.full((22, TILE), 30, np.uint8)
    cv2.putText(bar, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, 235, 1, cv2.LINE_AA)
    return np.concatenate([u8, bar], axis=0)


def build(path: Path) -> None:
    rows = []
    for row in tiles():
        rows.append(np.concatenate([_tile(label, spec) for label, spec in row], axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/phantoms.png"))
