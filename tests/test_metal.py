"""The classical metal finder (``node.analyse.metal``) on phantoms, perturbed phantoms, real
paediatric films (no metal) and synthetic distractors.

What is measured, per imaged side: does ``arthroplasty_evidence >= 0.5`` say "arthroplasty"
where the phantom has one (recall) and not where it has none (false positives)? The figures are
printed (``pytest -s``) and asserted against floors set from the measurement with a margin: the
brief asked for 98 % / 2 %, which this finder meets on neither the lateral view nor every
perturbation (see the module docstring and the report), so the floors say what it does do and
catch a regression. The phantom set is a seed never used while developing the finder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.analyse.metal import MetalEvidence, MetalObject, arthroplasty_evidence, find_metal, is_straight_bar
from node.domain import Box, Side
from node.infer.fusion import SideAssigner
from node.phantom import render_index
from node.phantom.truth import GroundTruth
from node.pixels import normalise, percentile_window
from node.train.generalise import find_real_films

VIEWS = ("ap_pelvis", "ap_hip", "lateral_hip")
SEED = 90817  # not one of the development seeds
N_PER_VIEW = 36  # images per view (AP pelvis: two sides each)
N_PERTURBED = 6  # per view, the first images with and the first without an imaged implant
REAL_DIR = find_real_films()

Sample = tuple[np.ndarray, GroundTruth]


def _phantom(seed: int, index: int, size: int = 512, implants: str = "random",
             views: Sequence[str] = VIEWS) -> Sample:
    img = render_index(seed, index, views=list(views), implants=implants, size=size)
    header = Dataset()
    header.PhotometricInterpretation = img.truth.photometric
    return normalise(header, img.pixels.astype(np.float32)), img.truth


@pytest.fixture(scope="module")
def phantoms() -> list[Sample]:
    """N_PER_VIEW phantoms of each view, random implants (about 40 % of patients have none)."""
    return [_phantom(SEED, i, views=[v]) for v in VIEWS for i in range(N_PER_VIEW)]


def _perturbation_subset(phantoms: Sequence[Sample]) -> list[int]:
    """Indices of the images run through every perturbation: per view the first N_PERTURBED
    with an implant on an imaged side and the first N_PERTURBED without (random implants
    leave too few implanted sides in a plain prefix)."""
    out: list[int] = []
    for k in range(len(VIEWS)):
        block = range(k * N_PER_VIEW, (k + 1) * N_PER_VIEW)
        for want in (True, False):
            hits = [i for i in block if any(phantoms[i][1].hips[s].implant for s in phantoms[i][1].imaged_sides) is want]
            out += hits[:N_PERTURBED]
    return out


# ----------------------------------------------------------------------------------------------
# perturbations a different renderer or vendor might apply


def _unsharp(x: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(x, (0, 0), max(2.0, x.shape[1] / 128.0))
    return np.clip(x + 1.5 * (x - blurred), 0.0, 1.0)


def _noise(x: np.ndarray, sd: float, seed: int) -> np.ndarray:
    return np.clip(x + np.random.default_rng(seed).normal(0.0, sd, x.shape).astype(np.float32), 0.0, 1.0)


def _jpeg(x: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.round(x * 255.0).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), dtype=np.float32) / np.float32(255.0)


PERTURBATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "gamma 0.5": lambda x, i: np.power(x, 0.5),
    "gamma 2": lambda x, i: np.power(x, 2.0),
    "unsharp 1.5": lambda x, i: _unsharp(x),
    "blur": lambda x, i: cv2.GaussianBlur(x, (0, 0), max(1.0, x.shape[1] / 400.0)),
    "noise 0.02": lambda x, i: _noise(x, 0.02, i),
    "noise 0.03": lambda x, i: _noise(x, 0.03, i),
    "contrast 0.3-0.8": lambda x, i: np.float32(0.3) + np.float32(0.5) * x,
    "jpeg 30": lambda x, i: _jpeg(x),
}


# ----------------------------------------------------------------------------------------------
# per-side bookkeeping

Row = tuple[str, bool, float]  # view, implanted, evidence


def _rows(x: np.ndarray, truth: GroundTruth) -> tuple[list[Row], MetalEvidence, SideAssigner]:
    ev = find_metal(x)
    assign = SideAssigner(truth.boxes, truth.imaged_sides, x.shape[1])
    rows = [(truth.view.value, bool(truth.hips[s].implant), arthroplasty_evidence(ev, assign, s))
            for s in truth.imaged_sides]
    return rows, ev, assign


def _rates(rows: Sequence[Row], view: str | None = None) -> tuple[float, int, float, int]:
    r = [q for q in rows if view is None or q[0] == view]
    imp = [q[2] >= 0.5 for q in r if q[1]]
    nat = [q[2] >= 0.5 for q in r if not q[1]]
    return (float(np.mean(imp)) if imp else math.nan, len(imp), float(np.mean(nat)) if nat else math.nan, len(nat))


def _report(title: str, rows: Sequence[Row]) -> str:
    parts = []
    for v in (*VIEWS, None):
        rec, ni, fp, nn = _rates(rows, v)
        parts.append(f"{v or 'all'}: recall {rec:.3f} ({ni}) FP {fp:.3f} ({nn})")
    return f"{title}: " + "; ".join(parts)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def clean(phantoms: list[Sample]) -> list[tuple[list[Row], MetalEvidence, SideAssigner]]:
    return [_rows(x, t) for x, t in phantoms]


# ----------------------------------------------------------------------------------------------
# phantoms


def test_phantom_recall_and_false_positives(clean: list[tuple[list[Row], MetalEvidence, SideAssigner]]) -> None:
    rows = [r for rs, _, _ in clean for r in rs]
    print("\n" + _report("clean", rows))
    rec_all, n_imp, fp_all, n_nat = _rates(rows)
    assert n_imp >= 40 and n_nat >= 80, "the set should hold enough sides of both kinds"
    # measured on this set (seed 90817, 36 per view): recall 0.957 of 46 (0.978 before the
    # ball-like split rule of 2026-12-05, one AP hip stem lost), false positives 0.041
    # of 98; on 200 per view of the same seed: recall 0.895, false positives 0.021
    assert rec_all >= 0.9, f"recall {rec_all:.3f} over {n_imp} implanted sides"
    assert fp_all <= 0.06, f"false positives {fp_all:.3f} over {n_nat} native sides"
    for view, floor in (("ap_pelvis", 0.9), ("ap_hip", 0.8), ("lateral_hip", 0.75)):
        rec, n, fp, nn = _rates(rows, view)
        assert rec >= floor, f"{view}: recall {rec:.3f} over {n} implanted sides"
        assert fp <= 0.1, f"{view}: false positives {fp:.3f} over {nn} native sides"


def test_phantom_perturbed(phantoms: list[Sample], clean: list[tuple[list[Row], MetalEvidence, SideAssigner]]) -> None:
    subset = _perturbation_subset(phantoms)
    base = [r for i in subset for r in clean[i][0]]
    rec0, _, fp0, _ = _rates(base)
    lines = ["\n" + _report("clean (perturbation subset)", base)]
    results: dict[str, tuple[float, float]] = {}
    for name, f in PERTURBATIONS.items():
        rows = [r for i in subset
                for r in _rows(np.asarray(f(phantoms[i][0], i), dtype=np.float32), phantoms[i][1])[0]]
        lines.append(_report(name, rows))
        rec, _, fp, _ = _rates(rows)
        results[name] = (rec, fp)
    print("\n".join(lines))
    # measured (19 implanted, 29 native sides): recall 0.84-0.95 under gamma, blur and contrast,
    # 0.79 noise 0.02, 0.68 JPEG 30, 0.53 strong unsharp masking and noise 0.03; false
    # positives at most 0.07 (clean 0.03)
    floors = {"unsharp 1.5": 0.45, "noise 0.03": 0.45, "jpeg 30": 0.6}
    for name, (rec, fp) in results.items():
        assert fp <= 0.1, f"{name}: false positives {fp:.3f} (clean {fp0:.3f})"
        assert rec >= floors.get(name, 0.7), f"{name}: recall {rec:.3f} (clean {rec0:.3f})"


def test_boxes_overlap_truth(phantoms: list[Sample], clean: list[tuple[list[Row], MetalEvidence, SideAssigner]]) -> None:
    found: dict[str, list[float]] = {"cup": [], "stem": []}
    wrong = 0
    reported = 0
    for (_, truth), (_, ev, assign) in zip(phantoms, clean, strict=True):
        truths = [b for b in truth.boxes if b.label in found and assign(b) in truth.imaged_sides]
        for tb in truths:
            found[tb.label].append(max([_iou(tb, o.box) for o in ev.objects if o.box.label == tb.label] or [0.0]))
            implants = [b for b in truth.boxes if b.label in ("cup", "stem")]
        for o in ev.objects:
            if o.box.label in found:
                reported += 1
                # every cup/stem box lies on an implant (its centre inside a truth cup or stem box;
                # a cup and its stem split at another place than the truth's still count)
                c = o.box.centre
                wrong += not any(b.x0 <= c.x <= b.x1 and b.y0 <= c.y <= b.y1 for b in implants)
    cup, stem = np.asarray(found["cup"]), np.asarray(found["stem"])
    print(f"\ncup boxes IoU>=0.5: {np.mean(cup >= 0.5):.3f} of {cup.size}; stem boxes IoU>=0.5: "
          f"{np.mean(stem >= 0.5):.3f} of {stem.size}; cup/stem boxes on no implant: {wrong} of {reported}")
    assert cup.size >= 40 and stem.size >= 40
    # measured: cups 0.76 of 46, stems 0.53 of 45, 7 of 83 boxes on no implant
    assert np.mean(cup >= 0.5) >= 0.65
    assert np.mean(stem >= 0.5) >= 0.45
    assert wrong <= 0.12 * reported


def test_native_resolution_maps_back() -> None:
    """Full-resolution phantoms (1400-2900 px): the work is done on a 512 px copy and boxes
    must land on the implants in full-resolution pixels."""
    for i in range(2):
        x, truth = _phantom(SEED + 1, i, size=0, implants="bilateral", views=("ap_pelvis",))
        assert max(x.shape) >= 1400
        ev = find_metal(x)
        assign = SideAssigner(truth.boxes, truth.imaged_sides, x.shape[1])
        evidence = [arthroplasty_evidence(ev, assign, s) for s in truth.imaged_sides]
        print(f"\nnative {x.shape}: {ev.note}; evidence {evidence}")
        assert max(evidence) >= 0.5, ev.note
        cups = [b for b in truth.boxes if b.label == "cup"]
        best = [max([_iou(c, o.box) for o in ev.objects] or [0.0]) for c in cups]
        assert max(best) >= 0.5, (best, ev.note)
        for o in ev.objects:
            xs, ys = o.outline[:, 0], o.outline[:, 1]
            assert o.box.x0 - 1 <= xs.min() and xs.max() <= o.box.x1 + 1
            assert o.box.y0 - 1 <= ys.min() and ys.max() <= o.box.y1 + 1
            assert 0 <= o.box.x0 < o.box.x1 <= x.shape[1] and 0 <= o.box.y0 < o.box.y1 <= x.shape[0]


def test_resolution_does_not_matter() -> None:
    """The same image at 512 px and enlarged threefold gives the same boxes, scaled."""
    x, _ = _phantom(SEED + 2, 0, implants="bilateral")
    big = cv2.resize(x, (x.shape[1] * 3, x.shape[0] * 3), interpolation=cv2.INTER_CUBIC)
    small_ev, big_ev = find_metal(x), find_metal(np.clip(big, 0.0, 1.0))
    assert small_ev.objects, small_ev.note
    for o in small_ev.objects:
        scaled = Box((o.box.x0 + 0.5) * 3 - 0.5, (o.box.y0 + 0.5) * 3 - 0.5, (o.box.x1 + 0.5) * 3 - 0.5,
                     (o.box.y1 + 0.5) * 3 - 0.5)
        assert max(_iou(scaled, p.box) for p in big_ev.objects) >= 0.8, (o, big_ev.note)


# ----------------------------------------------------------------------------------------------
# what must not look like metal


def _real_images() -> list[np.ndarray]:
    import pydicom

    out = []
    for f in sorted(REAL_DIR.glob("*.dcm")):
        a = pydicom.dcmread(f).pixel_array
        grey = a[..., 0] if a.ndim == 3 else a  # RGB-encoded grey: one channel
        out.append(percentile_window(grey.astype(np.float32)))
    return out


def test_real_paediatric_films_have_no_arthroplasty() -> None:
    images = _real_images()
    assert len(images) == 5
    for x in images:
        ev = find_metal(x)
        assert ev.reliable, ev.note
        w = x.shape[1]

        def half(b: Box, w: int = w) -> Side:
            return Side.RIGHT if b.centre.x < w / 2.0 else Side.LEFT

        for s in Side:
            assert arthroplasty_evidence(ev, half, s) < 0.5, (s, ev.note)


def _synthetic(with_implant: bool, seed: int = 0) -> np.ndarray:
    """A pelvis-like drawing: textured bones, a white shutter band, a lead "R", a ruler bar
    with ticks; optionally a cup with a stem on the image's right (the patient's left)."""
    rng = np.random.default_rng(seed)
    h, w = 800, 1000
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = 0.3 + 0.15 * np.exp(-((xx - 500) ** 2 / (2 * 320**2) + (yy - 420) ** 2 / (2 * 260**2)))
    texture = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 2.0) * 0.08
    bone = np.zeros((h, w), np.uint8)
    cv2.ellipse(bone, (500, 280), (320, 140), 0, 0, 360, 1, 14)
    for cx in (250, 750):
        cv2.circle(bone, (cx, 400), 60, 1, -1)
        cv2.rectangle(bone, (cx - 38, 430), (cx + 38, h), 1, -1)
    img = img + bone * (0.3 + texture)
    if with_implant:
        imp = np.zeros((h, w), np.uint8)
        cv2.ellipse(imp, (750, 395), (62, 62), 0, 180, 360, 1, -1)  # dome
        cv2.ellipse(imp, (750, 395), (62, 22), 0, 0, 180, 1, -1)  # open side of the rim
        cv2.line(imp, (750, 400), (760, 470), 1, 14)  # neck
        cv2.fillConvexPoly(imp, np.array([[735, 460], [790, 460], [770, 760], [752, 760]], np.int32), 1)
        img = np.where(imp > 0, 0.97, img)
    marks = np.zeros((h, w), np.uint8)
    cv2.putText(marks, "R", (70, 190), cv2.FONT_HERSHEY_SIMPLEX, 2.5, 1, 9, cv2.LINE_AA)
    cv2.rectangle(marks, (880, 150), (905, 700), 1, -1)  # ruler
    for y in range(160, 700, 25):
        cv2.line(marks, (866, y), (880, y), 1, 2)
    img = np.where(marks > 0, 1.0, img)
    img[:70, :] = 1.0  # white shutter band
    img = img + rng.normal(0.0, 0.01, (h, w)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0), 0.0, 1.0).astype(np.float32)


def _image_half(w: int) -> Callable[[Box], Side]:
    return lambda b: Side.RIGHT if b.centre.x < w / 2.0 else Side.LEFT


def test_marker_ruler_and_shutter_are_not_metal() -> None:
    x = _synthetic(with_implant=False)
    ev = find_metal(x)
    assert ev.reliable, ev.note
    for s in Side:
        assert arthroplasty_evidence(ev, _image_half(x.shape[1]), s) < 0.5, ev.note
    assert not [o for o in ev.objects if o.box.y0 < 80], "nothing in or along the shutter band"


def test_drawn_implant_is_found_next_to_the_distractors() -> None:
    """Control for the test above: the same drawing with a cup and stem."""
    x = _synthetic(with_implant=True)
    ev = find_metal(x)
    half = _image_half(x.shape[1])
    assert arthroplasty_evidence(ev, half, Side.LEFT) >= 0.9, ev.note
    assert arthroplasty_evidence(ev, half, Side.RIGHT) < 0.5, ev.note
    cup = Box(688, 333, 812, 417)
    assert max(_iou(cup, o.box) for o in ev.objects if o.kind == "cup") >= 0.5, ev.note


# ----------------------------------------------------------------------------------------------
# contract


def test_unusable_images_are_flagged() -> None:
    flat = np.full((300, 400), 0.5, dtype=np.float32)
    ev = find_metal(flat)
    assert not ev.reliable and not ev.objects and ev.note
    noise = np.random.default_rng(1).uniform(0.0, 1.0, (300, 400)).astype(np.float32)
    ev = find_metal(noise)
    assert not [o for o in ev.objects if o.kind in ("cup", "stem", "head")], ev.note
    with pytest.raises(ValueError):
        find_metal(np.zeros((10, 10, 3), dtype=np.float32))


def test_spacing_is_only_a_cross_check() -> None:
    """The 1.0 placeholder (and an absurd value) change nothing; a plausible spacing that
    makes the cup absurdly small stops it from being called a cup."""
    x, _ = _phantom(SEED + 2, 0, implants="bilateral")
    kinds = [o.kind for o in find_metal(x).objects]
    assert "cup" in kinds
    for spacing in (1.0, 5.0, None):
        assert [o.kind for o in find_metal(x, spacing).objects] == kinds
    tiny = [o.kind for o in find_metal(x, 0.06).objects]  # 0.06 mm/px: a "cup" of ~4 mm
    assert "cup" not in tiny


def _ev(*objects: MetalObject) -> MetalEvidence:
    return MetalEvidence(tuple(objects), 0.3, 0.7, 0.42, True, "test")


def _obj(kind: str, label: str, x: float, score: float = 0.9) -> MetalObject:
    return MetalObject(Box(x, 100, x + 50, 150, label, score), kind, 2500, np.zeros((0, 2)), 1.0)


def test_evidence_rules() -> None:
    half = _image_half(1000)
    assert arthroplasty_evidence(_ev(), half, Side.RIGHT) == 0.0
    for kind, label in (("cup", "cup"), ("stem", "stem"), ("head", "head")):
        ev = _ev(_obj(kind, label, 100))
        assert arthroplasty_evidence(ev, half, Side.RIGHT) >= 0.9
        assert arthroplasty_evidence(ev, half, Side.LEFT) == 0.0
    for kind in ("screw", "wire", "nail", "plate"):
        assert arthroplasty_evidence(_ev(_obj(kind, "other_hardware", 100)), half, Side.RIGHT) == 0.0
    other = arthroplasty_evidence(_ev(_obj("other", "other_hardware", 100, 1.0)), half, Side.RIGHT)
    assert 0.0 < other < 0.5
    both = _ev(_obj("screw", "other_hardware", 100), _obj("cup", "cup", 200, 0.5))
    assert arthroplasty_evidence(both, half, Side.RIGHT) == pytest.approx(0.9)


def test_dataclasses_are_frozen() -> None:
    ev = _ev(_obj("cup", "cup", 1))
    with pytest.raises(AttributeError):
        ev.reliable = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ev.objects[0].kind = "stem"  # type: ignore[misc]
    assert replace(ev, note="x").note == "x"


def test_arthroplasty_parts_must_reach_their_joint() -> None:
    """A cup or stem far from the side's hip joint (a vertebra with bowel gas on a phantom) is not
    an arthroplasty of that hip, and neither is metal of no recognised shape there (a vertebral
    body drawn white, a marker): it counts nothing for the hip. At the joint a cup counts in full
    and unshaped metal as doubt (0.25-0.45); without a joint box the rule cannot apply."""
    half = _image_half(1000)
    joint = Box(90, 90, 170, 170, "hip_joint_right", 0.9)  # cup box 100-150 x 100-150 inside
    at_joint = _ev(_obj("cup", "cup", 100))
    far = _ev(_obj("cup", "cup", 400))  # 230 px from a joint of 80 px: beyond 0.75 x 80
    assert arthroplasty_evidence(at_joint, half, Side.RIGHT, joint) >= 0.9
    assert arthroplasty_evidence(far, half, Side.RIGHT, joint) == 0.0
    assert arthroplasty_evidence(far, half, Side.RIGHT) >= 0.9
    other_at_joint = _ev(_obj("other", "other_hardware", 100, 1.0))
    other_far = _ev(_obj("other", "other_hardware", 400, 1.0))
    assert 0.0 < arthroplasty_evidence(other_at_joint, half, Side.RIGHT, joint) < 0.5
    assert arthroplasty_evidence(other_far, half, Side.RIGHT, joint) == 0.0
    assert 0.0 < arthroplasty_evidence(other_far, half, Side.RIGHT) < 0.5


def test_on_an_ap_view_a_stem_above_its_joint_is_not_an_arthroplasty() -> None:
    """A stem goes down the femur: on an AP a "stem" whose centre lies well above the hip joint's
    centre (the sacrum on a phantom) is metal of no recognised shape; below the joint, or on a
    lateral view (where the femur may lie across the film), it counts in full."""
    half = _image_half(1000)
    stem = _ev(_obj("stem", "stem", 100))  # box 100-150 x 100-150, centre y 125
    below = Box(90, 40, 170, 120, "hip_joint_right", 0.9)  # centre y 80: the stem is below it
    above = Box(90, 130, 170, 210, "hip_joint_right", 0.9)  # centre y 170: the stem 45 px above
    assert arthroplasty_evidence(stem, half, Side.RIGHT, below, ap_view=True) >= 0.9
    assert 0.0 < arthroplasty_evidence(stem, half, Side.RIGHT, above, ap_view=True) < 0.5
    assert arthroplasty_evidence(stem, half, Side.RIGHT, above, ap_view=False) >= 0.9
    cup = _ev(_obj("cup", "cup", 100))  # a cup sits in the joint: the rule is for stems only
    assert arthroplasty_evidence(cup, half, Side.RIGHT, above, ap_view=True) >= 0.9


def test_on_an_ap_view_a_stem_medial_of_its_joint_or_a_ball_far_from_it_is_not_an_arthroplasty() -> None:
    """The femoral shaft runs down and out from the head: on an AP a "stem" whose centre lies
    medial of the hip joint's centre by more than ``STEM_MAX_MEDIAL`` of its width (a pubic ramus)
    is metal of no recognised shape, for either hip; a cup or head whose centre lies more than
    ``BALL_MAX_DROP`` of the joint's height above or below the joint's centre (a vertebral body)
    too. Lateral of the joint, within reach, or on a lateral view, they count in full."""
    half = _image_half(1000)
    right = Box(90, 40, 170, 120, "hip_joint_right", 0.9)  # centre x 130, width 80
    lateral_stem = _ev(_obj("stem", "stem", 100))  # centre x 125: 0.06 lateral
    medial_stem = _ev(_obj("stem", "stem", 140))  # centre x 165: 0.44 medial
    assert arthroplasty_evidence(lateral_stem, half, Side.RIGHT, right, ap_view=True) >= 0.9
    assert 0.0 < arthroplasty_evidence(medial_stem, half, Side.RIGHT, right, ap_view=True) < 0.5
    assert arthroplasty_evidence(medial_stem, half, Side.RIGHT, right, ap_view=False) >= 0.9
    left = Box(830, 40, 910, 120, "hip_joint_left", 0.9)  # centre x 870: medial is towards smaller x
    assert arthroplasty_evidence(_ev(_obj("stem", "stem", 850)), half, Side.LEFT, left, ap_view=True) >= 0.9
    assert 0.0 < arthroplasty_evidence(_ev(_obj("stem", "stem", 785)), half, Side.LEFT, left, ap_view=True) < 0.5
    high = Box(90, 10, 170, 90, "hip_joint_right", 0.9)  # centre y 50: a ball centred at 125 is 0.94 below
    for kind in ("cup", "head"):
        ball = _ev(_obj(kind, kind, 100))
        assert arthroplasty_evidence(ball, half, Side.RIGHT, right, ap_view=True) >= 0.9  # 0.56 below
        assert 0.0 < arthroplasty_evidence(ball, half, Side.RIGHT, high, ap_view=True) < 0.5
        assert arthroplasty_evidence(ball, half, Side.RIGHT, high, ap_view=False) >= 0.9


@pytest.mark.parametrize(("kind", "seed", "index", "side"), [("mixed", 424310, 130, Side.RIGHT),
                                                             ("cups", 424280, 6, Side.LEFT)])
def test_a_clipped_cemented_stem_and_head_are_found(kind: str, seed: int, index: int, side: Side,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Cemented prostheses on an independently written renderer's films (``node.phantom.sketch``,
    dev seeds): head and stem clipped to white, the stem's flat core narrowed by the bright cement
    round it (7-8 working pixels thick) and the 28 mm head under ``MIN_ZONE_PX`` once its edge band
    is off. Both were missed, and triage (p 0.34 / 0.11) with the detector's stem box (0.64-0.68)
    left the prosthesis unreported. As clipped plateaus far above bone (``_clipped``) they are
    found; with that cue off they are not (what the finder did before)."""
    import node.analyse.metal as metal_module
    from node.train.generalise import _render_job

    r = _render_job((kind, "sketch", seed, index, 768))
    assert r.truth.hips[side].implant
    half = _image_half(r.image01.shape[1])
    ev = find_metal(r.image01)
    assert arthroplasty_evidence(ev, half, side) >= 0.9, ev.note
    monkeypatch.setattr(metal_module, "CLIPPED_LEV", (99.0, 100.0))
    monkeypatch.setattr(metal_module, "CLIPPED_STEM_LEV", (99.0, 100.0))  # its lower band for stems too
    assert arthroplasty_evidence(find_metal(r.image01), half, side) < 0.5


@pytest.mark.parametrize(("seed", "index", "side"), [(424280, 7, Side.LEFT), (424320, 197, Side.LEFT)])
def test_a_head_smaller_than_its_stems_shoulder_is_found(seed: int, index: int, side: Side,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Cemented prostheses (no metal cup) on an independently written renderer's AP pelvis films
    (``node.phantom.sketch``, dev seeds), clipped to white: the 28 mm head is narrower than the
    stem's shoulder, so the usual cut at the thickest part found no ball, and the band-pass's
    ringing inside the head's edge left it too small a flat core to be a zone at all. The stem
    then had no ball and was "other", and with triage at p 0.11 / 0.90 and no cup or stem box on
    that side the prosthesis went unreported. Offered as a clipped zone (``_Maps.clipped``) and cut
    off at its neck (``_small_ball``), head and stem are found; without the cut they are not."""
    from node.train.generalise import _render_job

    r = _render_job(("mixed", "sketch", seed, index, 768))
    assert r.truth.hips[side].implant
    ev = find_metal(r.image01)
    assign = SideAssigner(r.truth.boxes, r.truth.imaged_sides, r.image01.shape[1])
    assert arthroplasty_evidence(ev, assign, side) >= 0.9, ev.note
    assert "stem" in {o.kind for o in ev.objects if assign(o.box) is side}, ev.note
    import node.analyse.metal as metal_module

    monkeypatch.setattr(metal_module, "SMALL_BALL_OPENINGS", ())  # no head cut off below the thickest part
    assert arthroplasty_evidence(find_metal(r.image01), assign, side) < 0.5


@pytest.mark.parametrize(("seed", "index", "side", "what"), [
    (424270, 56, Side.RIGHT, "intramedullary_nail"),  # the nail's end beyond its lag screw: no neck
    (424270, 61, Side.LEFT, "intramedullary_nail"),  # at 0.23 of the gap above bone: not clearly metal
    (424290, 25, Side.RIGHT, None),  # bone at the bone level: a "head" and "stem" cut from the ischium
    (424280, 134, Side.RIGHT, None),
])
def test_no_head_is_cut_from_fixation_or_bone(seed: int, index: int, side: Side, what: str | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits of ``_small_ball`` (metal well above bone, a neck, nothing left but the stem):
    without them (a first version) these sides of sketch films got a "head" and a "stem" and were
    reported as arthroplasties; the nail's end is kept out by the neck alone."""
    import node.analyse.metal as metal_module
    from node.train.generalise import _render_job

    r = _render_job(("mixed", "sketch", seed, index, 768))
    assert not r.truth.hips[side].implant and r.truth.hips[side].hardware == what
    assign = SideAssigner(r.truth.boxes, r.truth.imaged_sides, r.image01.shape[1])
    ev = find_metal(r.image01)
    assert arthroplasty_evidence(ev, assign, side) < 0.5, ev.note
    monkeypatch.setattr(metal_module, "SMALL_BALL_MAX_NECK", 99.0)
    if index == 56:
        assert arthroplasty_evidence(find_metal(r.image01), assign, side) >= 0.5
    monkeypatch.setattr(metal_module, "SMALL_BALL_MIN_LEV", -99.0)
    monkeypatch.setattr(metal_module, "SMALL_BALL_MAX_SPARE", 99.0)
    assert arthroplasty_evidence(find_metal(r.image01), assign, side) >= 0.5


@pytest.mark.parametrize(("seed", "index", "side", "control"), [
    (424270, 2, Side.LEFT, "openings"),  # the head is the thickest part; its neck survives the usual cut
    (424330, 0, Side.LEFT, "openings"),
    (424310, 44, Side.RIGHT, "plateau"),  # the marker wire samples into the clipped zone
    (424330, 33, Side.RIGHT, "border"),  # the stem runs along the collimator's edge
    (424300, 51, Side.RIGHT, "bright"),  # the wire's edges sample into the clipped zone from outside
])
def test_a_clipped_head_on_a_wide_neck_is_found(seed: int, index: int, side: Side, control: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Cemented prostheses (sketch cup films, dev seeds) clipped to white whose head and stem the
    finder missed. Four causes, each with its control: the head is the object's thickest part
    but its neck (0.52 of the head's radius) outlasts the usual opening, so the deeper openings of
    ``_small_ball`` now try the thickest part too; the clipped zone scored by the cues of a flat
    zone (``_score``) failed them where the marker wire's edges sample into it, and is now scored
    as a plateau (``_plateau_score``); a stem along the collimator's edge put 29 % of the zone's
    outline on the shutter (``CLIPPED_PASS_MAX_BORDER`` now 0.3, as for every zone). The same
    wire edges sampling into a clipped zone from its dark side failed the cheap bright-side gate
    (``CLIPPED_MIN_BRIGHT_FRAC``); without it a zone grows to take in more of the neck, which may be
    0.61 of the head's radius (``SMALL_BALL_MAX_NECK`` 0.7). (424330:0 had a control for that too;
    since 2026-12-07 the first pass cuts its head off the flat zone's narrower neck as well, so the
    0.7 no longer decides that film.)"""
    import node.analyse.metal as metal_module
    from node.train.generalise import _render_job

    r = _render_job(("cups", "sketch", seed, index, 768))
    assert r.truth.hips[side].implant and r.truth.hips[side].design == "cemented"
    assign = SideAssigner(r.truth.boxes, r.truth.imaged_sides, r.image01.shape[1])
    ev = find_metal(r.image01)
    assert arthroplasty_evidence(ev, assign, side) >= 0.9, ev.note
    assert {"head", "stem"} <= {o.kind for o in ev.objects if assign(o.box) is side}, ev.note
    if control == "openings":
        monkeypatch.setattr(metal_module, "SMALL_BALL_OPENINGS", ())
    elif control == "plateau":
        monkeypatch.setattr(metal_module, "_plateau_score", lambda c, lev_ramp=None: 0.0)
    elif control == "bright":
        monkeypatch.setattr(metal_module, "CLIPPED_MIN_BRIGHT_FRAC", metal_module.MIN_BRIGHT_FRAC)
    else:
        monkeypatch.setattr(metal_module, "CLIPPED_PASS_MAX_BORDER", 0.1)
    assert arthroplasty_evidence(find_metal(r.image01), assign, side) < 0.5


def test_a_sliding_hip_screw_clipped_white_is_no_prosthesis(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clipped zone scored as a plateau took in a whole sliding hip screw (dev sketch film): one
    object, a "stem" by its bulge at the barrel, reported as an arthroplasty at evidence 1.00 when
    clipped zones could add a stem on its own. They add a stem only with the ball cut from it
    (``_a_stem_and_its_ball``; the control lets a stem alone through again)."""
    import node.analyse.metal as metal_module
    from node.train.generalise import _render_job

    r = _render_job(("mixed", "sketch", 424290, 46, 768))
    assert not r.truth.hips[Side.RIGHT].implant and r.truth.hips[Side.RIGHT].hardware == "sliding_hip_screw"
    assign = SideAssigner(r.truth.boxes, r.truth.imaged_sides, r.image01.shape[1])
    ev = find_metal(r.image01)
    assert arthroplasty_evidence(ev, assign, Side.RIGHT) < 0.5, ev.note
    monkeypatch.setattr(metal_module, "_a_stem_and_its_ball", lambda pieces: any(p.kind == "stem" for p in pieces))
    assert arthroplasty_evidence(find_metal(r.image01), assign, Side.RIGHT) >= 0.5


@pytest.mark.parametrize(("seed", "index", "side", "kinds"), [
    (424450, 1, Side.RIGHT, {"cup", "stem"}),  # lateral, flanged cup: bone level 0.98, metal 1.05 gaps up
    (424430, 170, Side.RIGHT, {"cup", "stem"}),  # AP hip, hemispherical cup
    (424480, 191, Side.LEFT, {"cup"}),  # lateral: only cup and head clipped, the stem a shade darker
])
def test_a_prosthesis_as_white_as_bright_bone_is_found_by_its_outline(seed: int, index: int, side: Side,
                                                                      kinds: set[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Prostheses plain to the eye on an independently written renderer's films (sketch, dev
    seeds) that render bone nearly as white as metal: the clipped plateau lies only 1.0-1.1
    bone-soft-tissue gaps above soft tissue and its edges against bright bone and cement are weak,
    so the level and edge cues dropped it and the finder saw no metal at all. By its outline alone
    (``_clipped_silhouettes``: a stem with its ball cut at a thin neck, or a lone round ball) it is
    found; without that step it is not."""
    import node.analyse.metal as metal_module
    from node.train.generalise import _render_job

    r = _render_job(("mixed", "sketch", seed, index, 768))
    assert r.truth.hips[side].implant
    assign = SideAssigner(r.truth.boxes, r.truth.imaged_sides, r.image01.shape[1])
    ev = find_metal(r.image01)
    assert arthroplasty_evidence(ev, assign, side) >= 0.9, ev.note
    assert kinds <= {o.kind for o in ev.objects if assign(o.box) is side}, ev.note
    monkeypatch.setattr(metal_module, "_clipped_silhouettes", lambda parts, *a: parts)
    assert arthroplasty_evidence(find_metal(r.image01), assign, side) < 0.5


@pytest.mark.parametrize(("seed", "index", "side", "what"), [
    (424420, 151, Side.RIGHT, "cannulated_screws"),  # AP hip: the screws' ends a clipped block, "stem"
    (424420, 153, Side.LEFT, "sliding_hip_screw"),  # lateral: barrel and plate, no recognised shape
    (424480, 77, Side.RIGHT, "intramedullary_nail"),  # lateral
])
def test_fixation_clipped_white_is_not_found_by_its_outline(seed: int, index: int, side: Side, what: str) -> None:
    """Fracture fixation clipped to white offers ``_clipped_silhouettes`` a clean plateau (the
    precondition checked here) but no outline of a prosthesis: no ball cut from a stem at a thin
    neck, no lone round ball (sketch, dev seeds; on 5,800 dev sketch films the step added a cup,
    head or stem to no film without an arthroplasty)."""
    import node.analyse.metal as metal_module
    from node.train.generalise import _render_job

    r = _render_job(("mixed", "sketch", seed, index, 768))
    assert not r.truth.hips[side].implant and r.truth.hips[side].hardware == what
    ev, _, cands = metal_module._analyse(r.image01)
    assert any(c.clipped_pass and c.score < metal_module.ACCEPT_SCORE
               and metal_module._silhouette_score(c) >= metal_module.ACCEPT_SCORE for c in cands)
    assign = SideAssigner(r.truth.boxes, r.truth.imaged_sides, r.image01.shape[1])
    assert arthroplasty_evidence(ev, assign, side) < 0.5, ev.note


def _outlined(points: list[tuple[float, float]], kind: str = "other") -> MetalObject:
    xy = np.array(points, dtype=np.float64)
    box = Box(float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()),
              "other_hardware", 1.0)
    return MetalObject(box, kind, 0, xy, 1.0)


def test_a_straight_bar_is_told_from_a_tapered_stem_a_ball_and_a_stub() -> None:
    """``is_straight_bar``: a parallel-sided bar five times as long as wide, at any angle, is one;
    a stem tapering from 30 to 8 px (fill 0.63 of its rectangle), a disc, and a bar only 2.5 times
    as long as wide are not."""
    def rotated(pts: list[tuple[float, float]], deg: float) -> list[tuple[float, float]]:
        a = math.radians(deg)
        return [(x * math.cos(a) - y * math.sin(a) + 400, x * math.sin(a) + y * math.cos(a) + 400) for x, y in pts]

    bar = [(0.0, 0.0), (100.0, 0.0), (100.0, 20.0), (0.0, 20.0)]
    assert is_straight_bar(_outlined(bar))
    assert is_straight_bar(_outlined(rotated(bar, 37.0)))
    wedge = [(0.0, 0.0), (150.0, 11.0), (150.0, 19.0), (0.0, 30.0)]
    assert not is_straight_bar(_outlined(wedge))
    disc = [(50 + 40 * math.cos(t), 50 + 40 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 60, endpoint=False)]
    assert not is_straight_bar(_outlined(disc))
    stub = [(0.0, 0.0), (50.0, 0.0), (50.0, 20.0), (0.0, 20.0)]
    assert not is_straight_bar(_outlined(stub))
