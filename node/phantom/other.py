"""Non-hip radiographs (negatives for triage): chest PA, knee AP, hand PA, abdomen AP."""

from __future__ import annotations

import math

import numpy as np

from node.phantom import materials as m
from node.phantom.anatomy import Scene, bone_ellipsoid, bone_tube
from node.phantom.geometry import Camera, Primitive, cylinder, ellipsoid, frame_from_z, tube, unit
from node.phantom.spec import PhantomSpec


def _rng(spec: PhantomSpec) -> np.random.Generator:
    return np.random.default_rng(spec.noise_seed ^ 0x5EED)


def _vertebra(z: float, y: float, w: float, h: float, tag: str = "bone:spine") -> list[Primitive]:
    prims = bone_tube(np.array([0.0, y, z - h / 2]), np.array([0.0, y, z + h / 2]), (w, w * 0.72), tag, 1.8)
    for s in (-1.0, 1.0):
        prims += bone_ellipsoid(np.array([s * w * 0.6, y + w * 0.9, z + h * 0.15]), (4.5, 7.0, 6.5), None, tag, 1.5)
        prims += bone_ellipsoid(np.array([s * w * 1.6, y + w * 1.1, z]), (w * 0.9, 5.0, 5.0), None, tag, 1.3)
    prims += bone_ellipsoid(np.array([0.0, y + w * 2.0, z - h * 0.2]), (4.0, 12.0, 8.0), None, tag, 1.3)
    return prims


def chest(rng: np.random.Generator) -> list[Primitive]:
    prims: list[Primitive] = []
    W, D = rng.uniform(150, 190), rng.uniform(100, 130)
    c = np.array([0.0, 0.0, 0.0])
    prims.append(ellipsoid(c, (W, D, 330.0), m.SOFT, None, "soft:trunk", smooth=True))
    for s in (-1.0, 1.0):
        lung_c = np.array([s * W * 0.45, 5.0, 20.0])
        prims.append(ellipsoid(lung_c, (W * 0.36, D * 0.72, 130.0), m.LUNG, None, "lung", smooth=True))
        # shoulders / arms soft tissue
        prims.append(cylinder(np.array([s * (W + 30), 0, 200]), np.array([s * (W + 60), 0, -100]), 48.0, m.SOFT,
                              tag="soft:arm", smooth=True))
    # heart
    prims.append(ellipsoid(np.array([25.0, -25.0, -45.0]), (75.0, 55.0, 65.0), m.MUSCLE + 0.004, None, "soft:heart",
                           smooth=True))
    # diaphragm domes (abdomen below)
    for s in (-1.0, 1.0):
        prims.append(ellipsoid(np.array([s * W * 0.45, 5.0, -190.0]), (W * 0.45, D * 0.8, 90.0), m.MUSCLE * 2, None,
                               "soft:liver", smooth=True))
    # spine
    for k in range(12):
        prims += _vertebra(150.0 - 28.0 * k, 60.0, 17.0 + 0.6 * k, 20.0)
    # ribs: posterior arcs sweeping down laterally, anterior parts fainter
    for k in range(10):
        z0 = 140.0 - 27.0 * k
        for s in (-1.0, 1.0):
            t = np.radians(np.linspace(0, 180, 16))
            rx, ry = W * (0.5 + 0.04 * min(k, 5)), D * 0.85
            pts = np.stack([s * (18 + rx * np.sin(t)), 60 - ry * (1 - np.cos(t)), z0 - 45 * np.sin(t / 2) ** 1.5], axis=1)
            prims += tube(pts, (4.5, 3.0), m.CORTICAL * 0.55, hint=(0, 0, 1), tag="bone:rib")
    # clavicles
    for s in (-1.0, 1.0):
        pts = np.array([[s * 15, -60, 170], [s * 60, -55, 178], [s * 110, -30, 172], [s * 150, 0, 185]])
        prims += tube(pts, 7.0, m.CORTICAL * 0.8, tag="bone:clavicle")
        # scapula
        prims += bone_ellipsoid(np.array([s * 115.0, 70.0, 110.0]), (45.0, 8.0, 75.0), frame_from_z([s * 0.3, 1, 0.2]),
                                "bone:scapula", 1.5)
        # humeral heads
        prims += bone_ellipsoid(np.array([s * (W + 10), 20.0, 165.0]), (24.0, 24.0, 24.0), None, "bone:humerus", 2.0)
        prims += bone_tube(np.array([s * (W + 20), 20.0, 150.0]), np.array([s * (W + 40), 20.0, -150.0]), (13.0, 13.0),
                           "bone:humerus", 4.0)
    return prims


def knee(rng: np.random.Generator) -> list[Primitive]:
    prims: list[Primitive] = []
    r = rng.uniform(55, 75)
    prims.append(cylinder([0, 0, 300], [0, 0, -300], (r, r * 0.95), m.SOFT, tag="soft:leg", smooth=True))
    # femur shaft + condyles
    prims += bone_tube(np.array([0.0, 0.0, 300.0]), np.array([0.0, 0.0, 60.0]), (14.0, 14.0), "bone:femur", 4.5)
    prims += bone_ellipsoid(np.array([0.0, 5.0, 45.0]), (38.0, 30.0, 30.0), None, "bone:femur", 2.0)
    for s in (-1.0, 1.0):
        prims += bone_ellipsoid(np.array([s * 21.0, 10.0, 18.0]), (19.0, 28.0, 20.0), None, "bone:condyle", 2.0)
    # patella
    prims += bone_ellipsoid(np.array([0.0, -38.0, 45.0]), (21.0, 10.0, 23.0), None, "bone:patella", 2.0)
    # tibia plateau + shaft, fibula
    prims += bone_ellipsoid(np.array([0.0, 5.0, -22.0]), (40.0, 28.0, 17.0), None, "bone:tibia", 2.0,
                            clip=[(np.array([0.0, 0.0, -10.0]), np.array([0.0, 0.0, 1.0]))])
    prims += bone_ellipsoid(np.array([0.0, 5.0, -55.0]), (30.0, 24.0, 40.0), None, "bone:tibia", 2.0)
    prims += bone_tube(np.array([2.0, 5.0, -70.0]), np.array([5.0, 5.0, -320.0]), (15.0, 13.0), "bone:tibia", 4.0)
    prims += bone_ellipsoid(np.array([36.0, 22.0, -42.0]), (10.0, 10.0, 12.0), None, "bone:fibula", 1.8)
    prims += bone_tube(np.array([37.0, 24.0, -50.0]), np.array([30.0, 24.0, -320.0]), (6.5, 6.5), "bone:fibula", 2.5)
    return prims


def hand(rng: np.random.Generator) -> list[Primitive]:
    prims: list[Primitive] = []
    # palm and forearm soft tissue
    prims.append(ellipsoid([0.0, 0.0, 10.0], (48.0, 16.0, 60.0), m.SOFT, None, "soft:hand", smooth=True))
    prims.append(cylinder([0.0, 0.0, -40.0], [0.0, 0.0, -260.0], (36.0, 24.0), m.SOFT, tag="soft:arm", smooth=True))
    # radius and ulna
    prims += bone_tube(np.array([12.0, 0.0, -45.0]), np.array([14.0, 0.0, -260.0]), (11.0, 8.0), "bone:radius", 2.5)
    prims += bone_tube(np.array([-18.0, 2.0, -40.0]), np.array([-16.0, 2.0, -260.0]), (7.0, 7.0), "bone:ulna", 2.2)
    # carpals
    for k, (x, z) in enumerate([(-15, -25), (-2, -27), (12, -26), (24, -22), (-18, -10), (-5, -8), (8, -9), (22, -5)]):
        prims += bone_ellipsoid(np.array([float(x), 0.0, float(z)]), (7.0, 6.0, 6.5), None, f"bone:carpal{k}", 1.2)
    # metacarpals and phalanges, spread a little
    spread = rng.uniform(4, 12)
    lengths = [(48, 30, 22, 18), (62, 38, 24, 18), (60, 42, 27, 19), (55, 40, 25, 18), (50, 32, 20, 16)]
    for f, (mc, p1, p2, p3) in enumerate(lengths):
        ang = math.radians((f - 2) * spread)
        base = np.array([(f - 2) * 14.0, 0.0, 2.0])
        d = unit([math.sin(ang), 0.0, math.cos(ang)])
        if f == 4:  # thumb
            base = np.array([32.0, -5.0, -15.0])
            d = unit([0.8, -0.2, 0.6])
            mc, p1, p2, p3 = 40, 30, 22, 0
        pos = base
        for k, (L, rr) in enumerate(((mc, 5.0), (p1, 4.2), (p2, 3.6), (p3, 3.2))):
            if L <= 0:
                continue
            end = pos + d * L
            prims += bone_tube(pos, end, (rr, rr * 0.85), f"bone:finger{f}", 1.3)
            prims += bone_ellipsoid(end, (rr * 1.25, rr, rr * 1.0), frame_from_z(d), f"bone:finger{f}", 1.0)
            # soft tissue of the finger
            prims.append(cylinder(pos, end + d * 4.0, (rr * 2.2, rr * 2.0), m.SOFT, tag="soft:finger",
                                  smooth=True) if k > 0 else cylinder(pos, end, (rr * 2.6, rr * 2.3), 0.0, tag="soft:none"))
            pos = end + d * 2.5
    return [p for p in prims if p.mu != 0.0]


def abdomen(rng: np.random.Generator) -> list[Primitive]:
    prims: list[Primitive] = []
    W, D = rng.uniform(150, 200), rng.uniform(100, 140)
    prims.append(ellipsoid([0.0, 0.0, 0.0], (W, D, 380.0), m.SOFT, None, "soft:trunk", smooth=True))
    for k in range(6):
        prims += _vertebra(180.0 - 36.0 * k, 45.0, 22.0 + k, 26.0)
    # psoas and kidneys, liver
    for s in (-1.0, 1.0):
        prims.append(ellipsoid(np.array([s * 45.0, 40.0, 20.0]), (22.0, 25.0, 170.0), m.MUSCLE * 3, None,
                               "soft:psoas", smooth=True))
        prims.append(ellipsoid(np.array([s * 70.0, 55.0, 140.0]), (30.0, 22.0, 55.0), m.MUSCLE * 3, None,
                               "soft:kidney", smooth=True))
        # lower ribs
        for k in range(3):
            z0 = 230.0 - 28.0 * k
            t = np.radians(np.linspace(0, 150, 12))
            pts = np.stack([s * (20 + W * 0.8 * np.sin(t)), 50 - D * 0.8 * (1 - np.cos(t)), z0 - 50 * np.sin(t / 2)], 1)
            prims += tube(pts, (4.0, 2.8), m.CORTICAL * 0.5, hint=(0, 0, 1), tag="bone:rib")
    # bowel gas: lots of it
    for k in range(int(rng.integers(10, 25))):
        c = np.array([rng.uniform(-W * 0.7, W * 0.7), rng.uniform(-D * 0.5, D * 0.2), rng.uniform(-120, 170)])
        ax = (rng.uniform(8, 30), rng.uniform(6, 20), rng.uniform(8, 30))
        prims.append(ellipsoid(c, ax, m.AIR, None, f"gas:{k}"))
    return prims


BUILDERS = {"chest": chest, "knee": knee, "hand": hand, "abdomen": abdomen}
FIELD_CENTRE = {"chest": (0.0, 20.0), "knee": (0.0, 0.0), "hand": (0.0, 10.0), "abdomen": (0.0, 60.0)}
FOV = {"chest": 420.0, "knee": 260.0, "hand": 240.0, "abdomen": 400.0}


def build_other(spec: PhantomSpec) -> Scene:
    assert spec.other_kind is not None
    scene = Scene()
    scene.prims = BUILDERS[spec.other_kind](_rng(spec))
    return scene


def other_camera(spec: PhantomSpec) -> Camera:
    from node.phantom.render import _camera_from

    kind = spec.other_kind or "chest"
    g = spec.geometry
    x0, z0 = FIELD_CENTRE[kind]
    dx, dz = g.centre_offset_mm
    target = np.array([x0 + dx * 0.5, 0.0, z0 + dz * 0.5])
    d = np.array([0.0, 1.0, 0.0]) if kind != "chest" else np.array([0.0, -1.0, 0.0])
    right = np.array([1.0, 0.0, 0.0])
    down = np.array([0.0, 0.0, -1.0])
    # fixed field of view per body part (the sampled one is scaled)
    from dataclasses import replace

    s2 = replace(spec, geometry=replace(g, fov_mm=FOV[kind] * g.fov_mm / 335.0))
    return _camera_from(target, d, right, down, s2, 200.0 if kind in ("chest", "abdomen") else 60.0)
