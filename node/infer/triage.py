"""Triage: view, imaged side and implant-per-side for a batch of radiographs.

The triage model is one network with three heads (outputs of the ONNX graph, probabilities):

* ``view``    ``(n, 5)`` softmax over ``TRIAGE_VIEWS`` (AP pelvis, AP hip, lateral hip, oblique
  hip, other);
* ``side``    ``(n, 2)`` softmax over (R, L): which hip a single-hip view shows (meaningless for
  AP pelvis and other, where it is ignored);
* ``implant`` ``(n, 2)`` independent sigmoids (R, L): arthroplasty present on that side. Only the
  imaged side(s) are reported.

Sides are patient sides. The header's Laterality is consulted only on lateral views
(``side_from_header``); elsewhere ``node.pixels`` records disagreements, as seed 004 found such
metadata too unreliable to route on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from node.config import ModelsConfig, TestTimeViews
from node.domain import JOINT_LABELS, Box, Side, View
from node.infer.manifest import InputSpec, ManifestError
from node.infer.preprocess import batched, make_batch
from node.infer.session import ModelSession, load_model

TRIAGE_VIEWS: tuple[View, ...] = (View.AP_PELVIS, View.AP_HIP, View.LATERAL_HIP, View.OBLIQUE_HIP, View.OTHER)
TRIAGE_SIDES: tuple[Side, ...] = (Side.RIGHT, Side.LEFT)
SINGLE_HIP_VIEWS = frozenset({View.AP_HIP, View.LATERAL_HIP, View.OBLIQUE_HIP})
OUTPUTS = ("view", "side", "implant")


@dataclass(frozen=True)
class TriageResult:
    view: View
    view_probability: float
    view_probabilities: Mapping[View, float]
    imaged_sides: tuple[Side, ...]  # (R, L) for AP pelvis, one side for single-hip views, () for other
    side_probability: float | None  # confidence in the single imaged side; None when not applicable
    implant_probability: Mapping[Side, float]  # imaged sides only
    implant_threshold: float = 0.5
    # set when the most likely view was below the minimum view probability and the image is
    # therefore treated as "other" (open-set rejection): the view the model leaned to
    uncertain_view: View | None = None
    # with ``uncertain_view``: the result as it would read had that view been accepted (sides,
    # implant probabilities), for ``confirm_uncertain_view``
    leaned: TriageResult | None = None
    # the view is the uncertain lean, accepted because the detector found a hip joint
    # (``confirm_uncertain_view``): the model was not sure what it saw, so its single-hip side
    # does not stand against the header's (``side_from_header``)
    view_confirmed_by_detector: bool = False

    def implant_present(self, side: Side) -> bool | None:
        p = self.implant_probability.get(side)
        return None if p is None else p >= self.implant_threshold


# "Other" is trusted only when the triage head is sure of it (this probability or more; or
# ``min_view_probability`` where a site sets that higher). A less sure "other" is treated like an
# unsure hip view, leaning to the most likely hip view: screened out unless the detector confirms a
# hip joint (``confirm_uncertain_view``, a box of ``VIEW_CONFIRM_JOINT_SCORE``). Why the detector
# decides there and not the runner-up's probability: on an independently written renderer's films
# (``node.phantom.sketch``, dev seeds 424240-424330) hip films came out "other" at 0.49-0.65 with
# their hip view at 0.23-0.48 and a hip joint boxed at 0.53-0.85, while true "other" images (375 on
# dev mixed sets of three styles, seeds 424240-424370) reached "other" as low as 0.60 with a hip
# view up to 0.31, but none had a hip-joint box above 0.34. The real CR chest and tibia films of
# ``pydicom-data`` come out "other" at 0.97-0.98.
OTHER_SURE = 0.9
_HIP_VIEW_INDICES = tuple(j for j, v in enumerate(TRIAGE_VIEWS) if v is not View.OTHER)


def decode_triage(
    view: np.ndarray,
    side: np.ndarray,
    implant: np.ndarray,
    implant_threshold: float = 0.5,
    min_view_probability: float = 0.0,
) -> list[TriageResult]:
    """Turn the three probability arrays of a batch into results (pure, unit-testable).

    A radiograph whose most likely view is below ``min_view_probability`` is treated as
    "other" (``uncertain_view`` keeps the view it leaned to); so is one whose "other" is below
    ``OTHER_SURE`` (the lean is its most likely hip view). Without a minimum (0) the argmax stands.
    The softmax has to pick one of its five classes even for a radiograph unlike anything it was
    trained on; a low maximum is the usual sign of such an input, and reporting hip findings on it
    would be worse than reporting none.
    """
    n = view.shape[0]
    if view.shape != (n, len(TRIAGE_VIEWS)) or side.shape != (n, 2) or implant.shape != (n, 2):
        raise ValueError(f"unexpected triage output shapes {view.shape}, {side.shape}, {implant.shape}")
    results = []
    for i in range(n):
        k = int(np.argmax(view[i]))
        v = TRIAGE_VIEWS[k]
        uncertain: View | None = None
        other_bar = max(OTHER_SURE, min_view_probability)
        if v is View.OTHER and min_view_probability > 0 and float(view[i, k]) < other_bar:
            # an "other" the head is not sure of: its most likely hip view is the uncertain lean
            k = max(_HIP_VIEW_INDICES, key=lambda j: float(view[i, j]))
            v = uncertain = TRIAGE_VIEWS[k]
        if v is not View.OTHER and float(view[i, k]) < min_view_probability:
            uncertain = v
        side_p: float | None = None
        if v is View.AP_PELVIS:
            sides: tuple[Side, ...] = TRIAGE_SIDES
        elif v in SINGLE_HIP_VIEWS:
            j = int(np.argmax(side[i]))
            sides = (TRIAGE_SIDES[j],)
            side_p = float(side[i, j])
        else:
            sides = ()
        result = TriageResult(
            view=v,
            view_probability=float(view[i, k]),
            view_probabilities={tv: float(view[i, t]) for t, tv in enumerate(TRIAGE_VIEWS)},
            imaged_sides=sides,
            side_probability=side_p,
            implant_probability={s: float(implant[i, TRIAGE_SIDES.index(s)]) for s in sides},
            implant_threshold=implant_threshold,
        )
        if uncertain is not None:
            result = replace(result, view=View.OTHER, imaged_sides=(), side_probability=None,
                             implant_probability={}, uncertain_view=uncertain, leaned=result)
        results.append(result)
    return results


#: A hip-joint box at least this confident confirms a hip view the triage head was unsure of.
#: On phantoms where no hip is in view the best hip-joint box stayed below 0.2 (see
#: ``node.infer.detector.JOINT_CANDIDATE_FLOOR``).
VIEW_CONFIRM_JOINT_SCORE = 0.5


def confirm_uncertain_view(triage: TriageResult, boxes: Sequence[Box]) -> tuple[TriageResult, str | None]:
    """The view the triage head leaned to, when the detector confirms a hip is in the image.

    Open-set rejection (``min_view_probability``) screens out a radiograph whose view the
    softmax is unsure of: right for a chest or a knee, wrong for a hip radiograph that merely
    looks unlike the training images (a child, an unusual projection), which then gets no report
    at all. A second model that finds a hip joint with confidence is independent evidence that
    the image is a hip radiograph; the leaned-to view is then analysed, with a note that says
    so (and the image-level low-confidence flag, which the low view probability raises anyway).
    """
    if triage.view is not View.OTHER or triage.leaned is None:
        return triage, None
    joint = max((b for b in boxes if b.label in JOINT_LABELS), key=lambda b: b.score, default=None)
    if joint is None or joint.score < VIEW_CONFIRM_JOINT_SCORE:
        return triage, None
    leaned = replace(triage.leaned, view_confirmed_by_detector=True)
    note = (f"View uncertain ({leaned.view.value.replace('_', ' ')} at p={leaned.view_probability:.2f}): "
            f"analysed as such because the detector found a hip joint (score {joint.score:.2f})")
    return leaned, note


# An AP hip view's side is taken from the header where the triage side head is below this: the
# pixels do show which hip it is (the pelvis lies to one side), but where the model is unsure the
# radiographer's laterality is the better source. On an independently written renderer's AP hips
# (``node.phantom.sketch``, dev seeds 424240 / 424250 / 424260, 168 films read as AP hips) every
# side named at p >= 0.85 was right, and 2 of the 3 wrong ones came at p 0.54 and 0.58; on the
# training styles every AP hip side is named at p >= 0.99.
AP_HIP_HEADER_SIDE_BELOW = 0.8


def side_from_header(triage: TriageResult, tagged: Side | None) -> tuple[TriageResult, str | None]:
    """On a lateral hip view, and on an AP hip view whose side the model is unsure of
    (``AP_HIP_HEADER_SIDE_BELOW``), the hip the header names (``tagged``:
    ``node.pixels.header_side``, ImageLaterality / Laterality R or L) where the triage head chose
    the other one; the note says so.

    Why laterals: an AP view shows which hip it is (the pelvis lies to one side of it), but a
    cross-table lateral shows one hip from the side and departments display it either way round,
    so from pixels alone the side is a guess (an independently written renderer's laterals,
    ``node.phantom.sketch``, drawn either way round: the triage head named the other hip on about
    half). The radiographer's laterality is then the better source; a disagreement is stated, as
    every header disagreement is. On an AP hip the pixels decide unless the model is unsure of
    them. On any single-hip view the model was unsure of (``view_confirmed_by_detector``) the
    header decides too: that renderer's laterals read as oblique or AP hips (view p 0.42-0.57)
    were given the other hip on 7 dev sides (seeds 424240-424330; the 4 inspected at side p
    0.86-1.00). Elsewhere the header is not routed on (seed 004 found such metadata too
    unreliable), and the implant probability stays the one the model gave the hip it saw.
    """
    if tagged is None or triage.imaged_sides == (tagged,):
        return triage, None
    unsure_ap = (triage.view is View.AP_HIP and triage.side_probability is not None
                 and triage.side_probability < AP_HIP_HEADER_SIDE_BELOW)
    unsure_view = triage.view in SINGLE_HIP_VIEWS and triage.view_confirmed_by_detector
    if triage.view is not View.LATERAL_HIP and not unsure_ap and not unsure_view:
        return triage, None
    seen = triage.imaged_sides[0] if triage.imaged_sides else None
    p = triage.implant_probability.get(seen) if seen is not None else None
    moved = replace(triage, imaged_sides=(tagged,), side_probability=None,
                    implant_probability={} if p is None else {tagged: p})
    leaned = "" if seen is None else (f"; the model leaned to the {seen.name.lower()} hip"
                                      + ("" if triage.side_probability is None
                                         else f" (p={triage.side_probability:.2f})"))
    why = ("a lateral view does not show which hip it is" if triage.view is View.LATERAL_HIP
           else "the model was unsure which view this is" if unsure_view
           else "the model was unsure which hip this AP view shows")
    note = f"Side taken from the header (laterality {tagged.value}): {why}{leaned}"
    return moved, note


#: Share of the rows (and of the columns) cut off each border for the cropped view.
TEST_TIME_CROP = 0.06


def views_batch(images: Sequence[np.ndarray], spec: InputSpec, views: TestTimeViews) -> np.ndarray:
    """The network batch of ``images`` followed by the extra views of them, in blocks of
    ``len(images)``: the images, [their mirrors, their crops, the crops' mirrors].

    A mirror is the prepared input flipped left to right (the letterbox is centred, so this is
    the mirrored image's input to within a pixel of padding), which costs no copy of a full-size
    image; a crop is a view of the image, prepared like any other.
    """
    batch, _ = make_batch(images, spec)
    if views == "none":
        return batch
    blocks = [batch, batch[..., ::-1]]
    if views == "flip_crop":
        cropped = []
        for im in images:
            dy, dx = int(im.shape[0] * TEST_TIME_CROP), int(im.shape[1] * TEST_TIME_CROP)
            cropped.append(im[dy : im.shape[0] - dy, dx : im.shape[1] - dx])
        crops, _ = make_batch(cropped, spec)
        blocks += [crops, crops[..., ::-1]]
    return np.ascontiguousarray(np.concatenate(blocks))


def merge_views(out: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Average the heads over the blocks of ``views_batch`` (``n`` images each). The view is
    the same in a mirror; which hip a single-hip view shows and each side's implant swap, so a
    mirror's (R, L) columns are read as (L, R)."""
    k = out["view"].shape[0] // n if n else 1
    merged: dict[str, np.ndarray] = {}
    for name in OUTPUTS:
        blocks = [out[name][b * n : (b + 1) * n] for b in range(k)]
        if name != "view":
            blocks = [blk[:, ::-1] if b % 2 else blk for b, blk in enumerate(blocks)]
        merged[name] = np.mean(blocks, axis=0)
    return merged


class TriageModel:
    """A loaded triage model; ``predict`` batches any number of 0..1 images.

    ``test_time`` (default in the config: ``flip_crop``) averages the outputs over the image, its
    mirror and a slightly cropped copy of each. Why: a hip radiograph mirrored is another
    plausible hip radiograph with the sides swapped, and a 6 % crop another collimation, so a
    model's answer should not change with either; where it does, the image is in a region its
    training did not pin down, and the mean is steadier than any one reading. On phantoms of a
    style no model saw (``node.phantom.sketch``), triage alone at 0.5 erred on 247 of 10,336 AP
    sides of the cached dev sets 424240-424690 without it and on 131 with it (view accuracy
    98.84 -> 99.18 %); through the node's whole analysis, implant per side on the design sets
    (10,198 sides) 57 -> 42 errors and on sketch sets no rule was designed on (424620-424690,
    2,172 sides) 24 -> 13; on 424700-424730, rendered after the choice, 14 -> 11 of 1,104. In-style
    and voxel figures were unchanged or better. The cost is four runs of each small triage network
    per image instead of one.
    """

    def __init__(
        self,
        model: ModelSession,
        batch_size: int = 8,
        min_view_probability: float = 0.0,
        test_time: TestTimeViews = "none",
    ) -> None:
        m = model.manifest
        if m.task != "triage":
            raise ManifestError(f"{m.label}: task is {m.task!r}, not 'triage'")
        classes = m.output("view").classes
        if tuple(classes) != tuple(v.value for v in TRIAGE_VIEWS):
            raise ManifestError(
                f"{m.label}: view classes {list(classes)} != {[v.value for v in TRIAGE_VIEWS]}"
            )
        for name in ("side", "implant"):
            if tuple(m.output(name).classes) != tuple(s.value for s in TRIAGE_SIDES):
                raise ManifestError(f"{m.label}: {name} classes must be ['R', 'L']")
        self.model = model
        self.batch_size = batch_size
        self.implant_threshold = m.threshold("implant", 0.5)
        self.min_view_probability = min_view_probability
        self.test_time: TestTimeViews = test_time

    @classmethod
    def load(cls, name: str | Path | Sequence[str | Path], cfg: ModelsConfig) -> TriageModel:
        """One model, or (a list of two or more names) a ``TriageEnsemble`` of them."""
        if not isinstance(name, str | Path):
            names = list(name)
            if len(names) > 1:
                return TriageEnsemble([cls.load(n, cfg) for n in names])
            if not names:
                raise ManifestError("triage: an empty list of models")
            name = names[0]
        return cls(
            load_model(name, cfg, task="triage"),
            batch_size=cfg.batch_size,
            min_view_probability=cfg.min_view_probability,
            test_time=cfg.triage_test_time,
        )

    @property
    def label(self) -> str:
        return self.model.manifest.label

    @property
    def sessions(self) -> list[ModelSession]:
        """Every ONNX session behind this model (one; an ensemble's members)."""
        return [self.model]

    def wrap_sessions(self, wrap: Callable[[ModelSession], ModelSession]) -> None:
        """Route every session's runs through ``wrap`` (the per-model batchers)."""
        self.model = wrap(self.model)

    def probabilities(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Raw output arrays for all images, concatenated over batches."""
        parts: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUTS}
        for chunk in batched(images, self.batch_size):
            out = merge_views(self._run_chunk(chunk, {}), len(chunk))
            for n in OUTPUTS:
                parts[n].append(out[n])
        if not images:
            return {"view": np.zeros((0, 5)), "side": np.zeros((0, 2)), "implant": np.zeros((0, 2))}
        return {n: np.concatenate(v) for n, v in parts.items()}

    def _run_chunk(self, chunk: Sequence[np.ndarray], prepared: dict[InputSpec, np.ndarray]) -> dict[str, np.ndarray]:
        """The heads' outputs for one batch and its test-time views (``views_batch``);
        ``prepared`` caches the network batch per input spec, so that ensemble members with the
        same input share one preprocessing."""
        spec = self.model.manifest.input
        if spec not in prepared:
            prepared[spec] = views_batch(chunk, spec, self.test_time)
        return self.model.run(prepared[spec])

    def predict(self, images: Sequence[np.ndarray]) -> list[TriageResult]:
        p = self.probabilities(images)
        return decode_triage(
            p["view"], p["side"], p["implant"], self.implant_threshold, self.min_view_probability
        )


class TriageEnsemble(TriageModel):
    """Several triage models whose probabilities are averaged, head by head.

    Why: triage 2.3.0 trained on two image-forming styles (analytic and voxel phantoms) and 2.2.0
    on one; on phantoms of a third style neither saw (``sketch``, fresh dev seeds 424270-424300,
    800 films) the average named the view right more often than either (99.1 % against 97.4 / 99.0
    %) and erred on fewer implant sides (24 of 1054 against 29 / 31): the members err on different
    films (2.3.0 is stored as ``models/triage-styles/2.3.0``). Members with the same input spec
    share one preprocessed batch (sizes may differ); members must share the heads' classes
    (each is checked at load) and the implant threshold.
    """

    def __init__(self, members: Sequence[TriageModel]) -> None:
        if len(members) < 2:
            raise ManifestError("a triage ensemble needs at least two models")
        thresholds = {m.implant_threshold for m in members}
        if len(thresholds) > 1:
            raise ManifestError(f"triage ensemble members disagree on the implant threshold: {sorted(thresholds)}")
        first = members[0]
        super().__init__(first.model, first.batch_size, first.min_view_probability, first.test_time)
        self.members = list(members)

    @property
    def label(self) -> str:
        return "triage " + "+".join(m.model.manifest.version for m in self.members)

    @property
    def sessions(self) -> list[ModelSession]:
        return [s for m in self.members for s in m.sessions]

    def wrap_sessions(self, wrap: Callable[[ModelSession], ModelSession]) -> None:
        for m in self.members:
            m.wrap_sessions(wrap)
        self.model = self.members[0].model

    def _run_chunk(self, chunk: Sequence[np.ndarray], prepared: dict[InputSpec, np.ndarray]) -> dict[str, np.ndarray]:
        outs = [m._run_chunk(chunk, prepared) for m in self.members]  # one preprocessing per input spec
        return {n: np.mean([o[n] for o in outs], axis=0) for n in OUTPUTS}
