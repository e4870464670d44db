"""In-memory API: render a spec, or generate a reproducible stream of phantoms."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from node.domain import View
from node.phantom import materials as m
from node.phantom.anatomy import CupSpec
from node.phantom.geometry import Camera, Renderer, line_integral, mask
from node.phantom.render import build_scene, expose, make_camera, trabecular_texture
from node.phantom.spec import PhantomSpec, sample_spec
from node.phantom.truth import GroundTruth, compute_truth
from node.phantom.voxel import STYLES

ImplantArg = str | Sequence[str] | dict  # type: ignore[type-arg]


@dataclass
class PhantomImage:
    """One rendered phantom: stored pixel values, exact ground truth, and the spec behind them."""

    pixels: NDArray[np.uint16]
    truth: GroundTruth
    spec: PhantomSpec
    style: str = "analytic"  # how the pixels were formed (``STYLES``); the truth does not depend on it

    def normalized(self) -> NDArray[np.float32]:
        """Float32 in [0, 1] with bone bright, whatever the photometric interpretation."""
        x = self.pixels.astype(np.float32) / np.float32((1 << self.truth.bits_stored) - 1)
        if self.truth.photometric == "MONOCHROME1":
            x = np.float32(1.0) - x
        return x

    def to_uint8(self) -> NDArray[np.uint8]:
        return np.round(self.normalized() * 255.0).astype(np.uint8)


def neutral_ap_camera(spec: PhantomSpec) -> Camera:
    """Parallel AP projection of the unposed pelvis (reference for measures on non-AP views)."""
    s = replace(spec, view=View.AP_PELVIS, side=None,
                geometry=replace(spec.geometry, projection="parallel", pelvic_tilt_deg=0.0,
                                 pelvic_rotation_deg=0.0, pelvic_obliquity_deg=0.0, centre_offset_mm=(0.0, 0.0)))
    from node.phantom.anatomy import Landmarks

    return make_camera(s, Landmarks())


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return style


def render(spec: PhantomSpec, style: str = "analytic") -> PhantomImage:
    """Render one spec (deterministic: the same spec and style give the same bytes).

    ``style`` chooses how pixels are formed from the one scene and camera: ``"analytic"`` (exact
    ray sums, ``render.expose``) or ``"voxel"`` (voxelised scene with its own materials and
    textures, ray-marched, its own detector and presentation: ``node.phantom.voxel``). The
    ground truth is computed from the scene and camera either way, so it is identical."""
    _check_style(style)
    scene = build_scene(spec)
    cam = make_camera(spec, scene.marks)
    if style == "voxel":
        from node.phantom.voxel import render_voxel

        vx = render_voxel(spec, scene, cam)
        pixels, exposed, marker = vx.pixels, vx.exposed, vx.marker
    else:
        scale_cls = m.kvp_scale(spec.imaging.kvp)
        mu_scale = {tag: scale_cls[cls] for tag, cls in m.CLASS_OF_TAG.items()}
        prims = [p for p in scene.prims if p.mu != 0.0]
        bone = [p for p in prims if p.tag.startswith("bone")]
        rest = [p for p in prims if not p.tag.startswith("bone")]
        r = Renderer(cam)
        L = line_integral(cam, rest, coarse=4, mu_scale=mu_scale, renderer=r)
        L_bone = line_integral(cam, bone, coarse=4, mu_scale=mu_scale, renderer=r)
        L += L_bone * (np.float32(1.0) + trabecular_texture(spec, cam.pixel_mm))
        ex = expose(spec, L, cam.pixel_mm)
        pixels, exposed, marker = ex.pixels, ex.exposed, ex.marker
    neutral = neutral_ap_camera(spec) if spec.view in (View.LATERAL_HIP,) else None
    truth = compute_truth(spec, cam, scene.marks, scene.prims, exposed, marker, neutral)
    return PhantomImage(pixels, truth, spec, style)


def render_mask(spec: PhantomSpec, tag_prefix: str) -> NDArray[np.bool_]:
    """Boolean mask of the pixels whose rays cross primitives tagged ``tag_prefix`` (e.g.
    ``"mask:cup_rim:R"`` for the disc of the right cup's opening, ``"metal"`` for all metal)."""
    scene = build_scene(spec)
    cam = make_camera(spec, scene.marks)
    return mask(cam, scene.prims, tag_prefix)


def render_index(seed: int, index: int, views: Sequence[View | str] | None = None, implants: ImplantArg = "random",
                 size: int | tuple[int, int] = 512, unreliable_fraction: float = 0.0,
                 other_kinds: Sequence[str] | None = None, style: str = "analytic",
                 variety: str = "classic", child_share: float | None = None) -> PhantomImage:
    """Image number ``index`` of the stream ``seed`` (independent of every other index).

    ``style`` changes only how the pixels are formed: the spec (anatomy, pose, acquisition) and
    the ground truth of ``(seed, index)`` are the same in every style. ``variety`` is the
    sampler's range (``classic``: today's stream, bit for bit; ``broad``: implant designs,
    fixation hardware, children, wider patients — see ``node.phantom.spec.sample_spec``);
    ``child_share`` (broad only) the probability that an AP pelvis / AP hip draw is a child."""
    _check_style(style)
    rng = np.random.default_rng([int(seed), int(index)])
    rows, cols = (size, size) if isinstance(size, int) else size
    vs = [View(v) for v in views] if views else None
    kind = None
    if other_kinds:
        kind = list(other_kinds)[int(rng.integers(len(other_kinds)))]
    spec = sample_spec(rng, views=vs, implants=implants, rows=rows, cols=cols, other_kind=kind,
                       unreliable_fraction=unreliable_fraction, variety=variety, child_share=child_share)
    img = render(spec, style)
    img.truth.seed = int(seed)
    img.truth.index = int(index)
    return img


def generate(count: int, seed: int = 0, views: Sequence[View | str] | None = None, implants: ImplantArg = "random",
             size: int | tuple[int, int] = 512, unreliable_fraction: float = 0.0, start: int = 0,
             style: str = "analytic") -> Iterator[PhantomImage]:
    """Yield ``count`` phantoms (indices ``start`` … ``start + count - 1``) of stream ``seed``,
    pixels formed in ``style`` (``"analytic"`` or ``"voxel"``)."""
    _check_style(style)
    for i in range(start, start + count):
        yield render_index(seed, i, views, implants, size, unreliable_fraction, style=style)


__all__ = ["STYLES", "CupSpec", "PhantomImage", "generate", "render", "render_index", "render_mask"]
