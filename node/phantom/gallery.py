"""Gallery of phantoms (``docs/phantoms.png``): every view, with and without implants, and the
morphology variants, as a viewer would display them (bone bright).

    python -m node.phantom.gallery docs/phantoms.png
    python -m node.phantom.gallery --variety /tmp/variety.png   # what variety="broad" adds
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from node.domain import Side, View
from node.phantom.anatomy import CupSpec, HardwareSpec
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


def _hw(kind: str, **kw: object) -> dict[Side, HardwareSpec | None]:
    side = Side(str(kw.pop("side", "R")))
    return {side: HardwareSpec(kind, **kw)}  # type: ignore[arg-type]


def variety_tiles() -> list[list[tuple[str, PhantomSpec]]]:
    """What ``sample_spec(variety="broad")`` adds: implant designs, hardware, habitus, children."""
    n = TILE
    ap, hip = View.AP_PELVIS, View.AP_HIP
    R, L = Side.RIGHT, Side.LEFT

    def b(seed: int, view: View = hip, side: str | None = "R", **kw: object) -> PhantomSpec:
        return sample_spec(seed, view=view, side=side if view is not ap else None, rows=n, variety="broad",
                           **kw)  # type: ignore[arg-type]

    return [
        [
            ("THA, 3 screws + 2 holes, Ti", b(501, implants={R: _cup(n_screws=3, screw_holes=2)})),
            ("flanged cup, wedge stem", b(502, side="L", implants={L: _cup(design="flanged", flange_mm=6.0,
                                                                          stem_shape="wedge")})),
            ("hooded cup, collared stem", b(503, implants={R: _cup(design="flanged", flange_mm=6.0,
                                                                   flange_arc_deg=180.0, stem_shape="collared")})),
            ("dual mobility, anatomic", b(504, implants={R: _cup(design="dual_mobility", shell_mm=2.5,
                                                                 shell_material="cocr", head_radius_mm=14.0,
                                                                 n_screws=0, stem_shape="anatomic")})),
            ("large head MoM, CoCr", b(505, side="L", implants={L: _cup(design="large_head", liner="none",
                                                                        head_radius_mm=22.3, shell_material="cocr",
                                                                        n_screws=0, stem_material="cocr")})),
            ("resurfacing", b(506, implants={R: _cup(design="resurfacing", outer_radius_mm=29.0, head_radius_mm=25.3,
                                                     liner="none", shell_material="cocr", n_screws=0)})),
        ],
        [
            ("all-PE cemented, ring wire", b(507, implants={R: _cup(design="cemented_pe", outer_radius_mm=25.0,
                                                                    head_radius_mm=11.0, n_screws=0, cemented=True,
                                                                    stem_material="steel")})),
            ("all-PE cemented, arc wire", b(508, side="L", implants={L: _cup(
                design="cemented_pe", outer_radius_mm=25.0, head_radius_mm=14.0, n_screws=0, cemented=True,
                marker_wire="arc", stem_material="cocr")})),
            ("hemi unipolar, cemented", b(509, implants={R: _cup(design="hemiarthroplasty", outer_radius_mm=24.0,
                                                                 n_screws=0, cemented=True, stem_material="cocr")})),
            ("hemi bipolar", b(510, side="L", implants={L: _cup(design="hemiarthroplasty", outer_radius_mm=24.0,
                                                                bipolar=True, head_radius_mm=14.0, n_screws=0)})),
            ("revision stem 230 mm, 3 wires", b(511, ap, implants={L: _cup(stem_shape="cylindrical", cerclage=3,
                                                                           stem_length_mm=230.0, n_screws=2)})),
            ("short stem 90 mm", b(512, implants={R: _cup(stem_length_mm=90.0, n_screws=0)})),
        ],
        [
            ("DHS", b(513, implants="none", hardware=_hw("dhs", count=4, length_mm=110.0))),
            ("cannulated screws", b(514, side="L", implants="none",
                                    hardware=_hw("cannulated_screws", side="L", count=3, material="titanium"))),
            ("nail + lag screw", b(515, ap, implants="none", hardware=_hw("nail", count=2, length_mm=230.0,
                                                                          material="titanium"))),
            ("brim plate", b(516, ap, implants="none", hardware=_hw("pelvic_plate", side="L", count=5,
                                                                    length_mm=110.0, variant="brim"))),
            ("posterior wall plate", b(517, implants="none", hardware=_hw("pelvic_plate", count=4, length_mm=100.0,
                                                                          variant="posterior"))),
            ("cerclage wires", b(518, side="L", implants="none", hardware=_hw("cerclage", side="L", count=3))),
        ],
        [
            ("hemi R + DHS L", b(519, ap, implants={R: _cup(design="hemiarthroplasty", outer_radius_mm=24.0,
                                                            n_screws=0)}, hardware=_hw("dhs", side="L", count=3))),
            ("frog-leg, nail", b(520, View.OBLIQUE_HIP, implants="none", hardware=_hw("nail", count=1,
                                                                                       length_mm=200.0))),
            ("child (pinned age ~3)", _child(521, 3.0)),
            ("child (pinned age ~10)", _child(522, 10.0)),
            ("child AP hip", b(523, implants="none", paediatric=True)),
            ("broad random draws", b(524, ap)),
        ],
    ]


def _child(seed: int, age: float) -> PhantomSpec:
    """A child AP pelvis of about ``age`` years (a draw, re-scaled to that age)."""
    spec = sample_spec(seed, view=View.AP_PELVIS, implants="none", paediatric=True, rows=TILE, variety="broad")
    p = spec.patient
    s = float(np.clip(0.45 + 0.035 * (age - 2.0), 0.45, 0.8))
    child = replace(p.unscaled(), age_years=age).scaled(s)
    g = replace(spec.geometry, fov_mm=spec.geometry.fov_mm / min(1.0, p.scale * 1.1 + 0.05) * min(1.0, s * 1.1 + 0.05))
    return replace(spec, patient=child, geometry=g)


def build_variety(path: Path) -> None:
    """Gallery of the broad variety (one tile per new design, device or patient kind)."""
    grid = np.concatenate([np.concatenate([_tile(label, spec) for label, spec in row], axis=1)
                           for row in variety_tiles()], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def build(path: Path) -> None:
    rows = []
    for row in tiles():
        rows.append(np.concatenate([_tile(label, spec) for label, spec in row], axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--variety":
        build_variety(Path(sys.argv[2] if len(sys.argv) > 2 else "docs/phantoms_variety.png"))
    else:
        build(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/phantoms.png"))
