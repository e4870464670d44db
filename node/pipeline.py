"""The one place that wires the stages together: instances of a series → results.

Workers call ``Pipeline.process(job_pk)``; it raises on a failure worth retrying and returns a
``JobOutcome`` otherwise. It is idempotent: a job re-run after a worker crash derives the same
output UIDs, rewrites the same files, and reuses its Result and Delivery rows.

Stages (each a module that knows nothing of the others):
``pixels`` (decode, screen) → ``infer`` (triage, detector, morphology) → ``analyse`` (cup angles,
reference lines, dysplasia angles) → ``compose`` (SR, SC) → ``dispatch`` (routing, deliveries).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from node import __version__, wake
from node.analyse.cup import (
    OUTLINE_BOX_REFUSAL,
    RIM_BEYOND_BOX_REFUSAL,
    ProjectionGeometry,
    WireFit,
    cup_box_from_marker_wire,
    cup_box_from_wire_round_ball,
    find_marker_wire,
    measure_cup,
    measure_cup_from_outline,
    same_rim,
)
from node.analyse.dysplasia import measure_dysplasia
from node.analyse.metal import (
    arthroplasty_evidence,
    arthroplasty_objects,
    find_metal,
    fixation_bars,
    near_joint,
)
from node.analyse.notes import CHILD_AGE_YEARS, child_note, dysplasia_consistency, gap_notes
from node.analyse.reference import reference_from_boxes
from node.compose import ReportReference, build_gsps, build_sc, build_sr, sr_uids
from node.config import Config
from node.dispatch import destination_outputs, enqueue_deliveries, outputs_to_compose, route
from node.domain import (
    Box,
    CupMeasurement,
    HipFindings,
    ImageFindings,
    InstanceState,
    JobState,
    ModelInfo,
    ModelUnavailable,
    PriorMeasurement,
    ResultKind,
    ScreenReason,
    SeriesFindings,
    Side,
    View,
)
from node.infer.batcher import LIVE_PRIORITY, BatchingGroup
from node.infer.detector import DetectorModel
from node.infer.familiarity import low_confidence_reason
from node.infer.fusion import (
    IMPLANT_THRESHOLD,
    METAL_NONE,
    ImplantDecision,
    SideAssigner,
    decide_implant_on_side,
    hardware_score,
    joint_candidates_for_ap_pelvis,
)
from node.infer.morphology import MorphologyEnsemble, select_joint_crops
from node.infer.nms import pair_iou
from node.infer.triage import TriageModel, TriageResult, confirm_uncertain_view, side_from_header
from node.pixels import (
    Radiograph,
    float_tag,
    header_side,
    load_radiograph,
    metadata_mismatches,
    patient_age_years,
    pixel_spacing,
)
from node.receive.storage import uid_digest
from node.registry import Database, Instance, Job, Measurement, Result, Series, Study, record_event
from node.sanitise import sanitise_for_output

log = logging.getLogger(__name__)

CUP_GEOMETRY = ModelInfo(name="hipnode-cup-geometry", version=__version__)
AP_VIEWS = (View.AP_PELVIS, View.AP_HIP)


@dataclass
class JobOutcome:
    state: JobState  # DONE or SKIPPED
    reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class _NewerGeneration(Exception):
    """A newer generation of the series was completed while this job ran."""

    def __init__(self, generation: int) -> None:
        super().__init__(f"generation {generation} is newer")
        self.generation = generation


@dataclass
class _Source:
    instance_pk: int
    sop_instance_uid: str
    path: Path
    sha256: str = ""
    header: Dataset | None = None
    radiograph: Radiograph | None = None
    findings: ImageFindings | None = None
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Context:
    job_pk: int
    series_pk: int
    generation: int
    series_uid: str
    study_uid: str
    study_date: str
    patient_pk: int
    calling_ae: str
    modality: str
    body_part: str
    sources: list[_Source]
    priority: int = LIVE_PRIORITY  # the job's: its images' place in shared inference batches


class Models:
    """The configured models, loaded once per worker process (start-up fails loudly).

    With ``batching.enabled`` every session runs through a per-model batcher
    (``node.infer.batcher``), so that the jobs in flight in this process — worker threads sharing
    these models — share inference batches across series. The model objects keep their
    interface: only their sessions' ``run`` is routed through the batcher."""

    def __init__(self, cfg: Config) -> None:
        m = cfg.models
        try:
            self.triage = TriageModel.load(m.triage, m) if m.triage else None
            self.detector = DetectorModel.load(m.detector, m) if m.detector else None
            self.morphology = MorphologyEnsemble.load(m, m.morphology) if m.morphology else None
        except Exception as exc:
            raise ModelUnavailable(f"cannot load the configured models from {m.root}: {exc}") from exc
        b = cfg.batching
        self.batching = BatchingGroup(b.max_batch, b.max_wait_ms, b.instances) if b.enabled else None
        if self.batching is not None:
            group = self.batching
            if self.triage is not None:
                self.triage.wrap_sessions(group.wrap)
            if self.detector is not None:
                self.detector.model = group.wrap(self.detector.model)
            for member in self.morphology.models if self.morphology is not None else []:
                member.model = group.wrap(member.model)

    def inference(self, priority: int = LIVE_PRIORITY) -> AbstractContextManager[None]:
        """The block in which a job runs the models: its thread is a client of the batchers
        (batches wait for it, up to the latency budget, only while it is in here) and its
        images carry the job's priority."""
        return self.batching.client(priority) if self.batching is not None else nullcontext()

    def close(self) -> None:
        """Stop the batchers (their idle threads would also end by themselves)."""
        if self.batching is not None:
            self.batching.close()

    def infos(self) -> list[ModelInfo]:
        """Every contributing model and algorithm (IHE AIR); they also enter the output UIDs."""
        sessions = (self.triage.sessions if self.triage is not None else []) + (
            [self.detector.model] if self.detector is not None else []
        )
        if self.morphology is not None:
            sessions += [member.model for member in self.morphology.models]
        return [CUP_GEOMETRY] + [
            ModelInfo(f"hipnode-{s.manifest.name}", s.manifest.version) for s in sessions
        ]


def _geometry(ds: Dataset) -> tuple[float | None, ProjectionGeometry | None, str | None]:
    """Detector pixel spacing (mm) and the point-source geometry when the header states them
    credibly; the third item says why a stated spacing was not trusted (``node.pixels``)."""
    spacing, note = pixel_spacing(ds)
    sid = float_tag(ds, "DistanceSourceToDetector")
    if spacing and sid:
        return spacing, ProjectionGeometry(source_image_distance_mm=sid), note
    return spacing, None, note


class Pipeline:
    """Stateless between jobs apart from the models (loaded once, at construction)."""

    def __init__(self, cfg: Config, db: Database, models: Models | None = None) -> None:
        self.cfg = cfg
        self.db = db
        self.models = models if models is not None else Models(cfg)
        self.storage_root = Path(cfg.storage.root)
        self.results_root = Path(cfg.outputs.root)

    # ------------------------------------------------------------------ job

    def process(self, job_pk: int) -> JobOutcome:
        """Analyse the job's series generation; raise to ask for a retry."""
        ctx = self._load_context(job_pk)
        for src in ctx.sources:
            self._screen(src)
        hips = [s for s in ctx.sources if s.radiograph is not None]
        self._infer(hips, ctx.priority)
        analysed = [s for s in ctx.sources if s.findings is not None and s.findings.screened_out is None]
        self._record_instance_states(ctx)
        summary: dict[str, Any] = {
            "images": len(ctx.sources),
            "analysed": len(analysed),
            "screened_out": {
                s.sop_instance_uid[-12:]: s.findings.screened_out.value
                for s in ctx.sources
                if s.findings is not None and s.findings.screened_out is not None
            },
        }
        if not analysed:
            reasons = sorted({v for v in summary["screened_out"].values()})
            return JobOutcome(JobState.SKIPPED, "no hip radiograph analysed: " + "; ".join(reasons), summary)
        try:
            results = self._compose_and_store(ctx)
        except _NewerGeneration as newer:
            summary["superseded_by_generation"] = newer.generation
            return JobOutcome(
                JobState.SKIPPED,
                f"superseded while running: generation {newer.generation} of the series is queued "
                "(a late image arrived); it will report",
                summary,
            )
        summary["results"] = results
        return JobOutcome(JobState.DONE, None, summary)

    # ------------------------------------------------------------------ stages

    def _load_context(self, job_pk: int) -> _Context:
        with self.db.session() as s:
            job = s.get(Job, job_pk)
            if job is None:
                raise LookupError(f"job {job_pk} does not exist")
            series = s.get(Series, job.series_pk)
            assert series is not None
            study = s.get(Study, series.study_pk)
            assert study is not None
            rows = s.scalars(
                select(Instance)
                .where(Instance.series_pk == series.id, Instance.superseded.is_(False))
                .order_by(Instance.instance_number, Instance.id)
            ).all()
            return _Context(
                job_pk=job_pk,
                series_pk=series.id,
                generation=job.generation,
                series_uid=series.series_uid,
                study_uid=study.study_uid,
                study_date=study.study_date,
                patient_pk=study.patient_pk,
                calling_ae=series.calling_ae,
                modality=series.modality,
                body_part=series.body_part,
                sources=[
                    _Source(r.id, r.sop_instance_uid, self.storage_root / r.path, r.sha256) for r in rows
                ],
                priority=job.priority,
            )

    def _screen(self, src: _Source) -> None:
        radiograph, verdict = load_radiograph(src.path, self.cfg.screening)
        if radiograph is None:
            try:  # the header still lets the SR say plainly why this image was not analysed
                src.header = pydicom.dcmread(src.path, stop_before_pixels=True)
            except Exception:
                src.header = None
            src.findings = ImageFindings(
                sop_instance_uid=src.sop_instance_uid,
                sop_class_uid=str(src.header.get("SOPClassUID", "")) if src.header is not None else "",
                screened_out=verdict.reason or ScreenReason.UNDECODABLE,
                screen_detail=verdict.detail,
            )
            # per image: the job's summary and the instance's row say it (quiet logs, issue 13)
            log.debug("instance %s screened out: %s", uid_digest(src.sop_instance_uid)[:12], verdict.reason)
            return
        src.radiograph = radiograph
        src.header = radiograph.dataset

    def _infer(self, sources: list[_Source], priority: int = LIVE_PRIORITY) -> None:
        """Models and per-image analysis. Registered with the batchers for its duration only:
        a job decoding images or composing its SR is not worth holding a batch for."""
        if not sources:
            return
        with self.models.inference(priority):
            self._infer_images(sources)

    def _infer_images(self, sources: list[_Source]) -> None:
        images = [s.radiograph.image01 for s in sources if s.radiograph is not None]
        triage: list[TriageResult | None] = (
            list(self.models.triage.predict(images)) if self.models.triage else [None] * len(images)
        )
        # an image whose view the triage head was unsure of is looked at too: a confident hip
        # joint confirms the view it leaned to (``confirm_uncertain_view``)
        hip_idx = [i for i, t in enumerate(triage) if t is None or t.view is not View.OTHER or t.leaned is not None]
        detections: dict[int, tuple[list[Box], list[Box]]] = {}
        if self.models.detector is not None and hip_idx:
            found = self.models.detector.detect_with_candidates([images[i] for i in hip_idx])
            detections = dict(zip(hip_idx, found, strict=True))
        for i, src in enumerate(sources):
            assert src.radiograph is not None
            t = triage[i]
            boxes, candidates = detections.get(i, ([], []))
            view_note = None
            if t is not None:
                t, view_note = confirm_uncertain_view(t, boxes)
                if t.view is View.OTHER:
                    boxes, candidates = [], []
            src.findings = self._analyse_image(src, src.radiograph, t, boxes, candidates)
            if view_note:
                src.findings.notes.append(view_note)

    def _analyse_image(
        self,
        src: _Source,
        radiograph: Radiograph,
        triage: TriageResult | None,
        boxes: list[Box],
        joint_candidates: list[Box] | None = None,
    ) -> ImageFindings:
        ds = radiograph.dataset
        findings = ImageFindings(
            sop_instance_uid=src.sop_instance_uid, sop_class_uid=str(ds.get("SOPClassUID", ""))
        )
        findings.notes.extend(radiograph.notes)
        if triage is None:
            findings.screen_detail = "no triage model configured"
            return findings
        findings.metadata_mismatches = metadata_mismatches(ds, triage.view, triage.imaged_sides)
        triage, side_note = side_from_header(triage, header_side(ds))
        if side_note:
            findings.notes.append(side_note)
        findings.view = triage.view
        findings.view_probability = triage.view_probability
        findings.imaged_sides = triage.imaged_sides
        if triage.view is View.OTHER:
            findings.screened_out = ScreenReason.NOT_HIP
            findings.screen_detail = (
                f"view uncertain ({triage.uncertain_view.value} at p={triage.view_probability:.3f}, "
                f"below the minimum {self.cfg.models.min_view_probability:g}): treated as not a hip radiograph"
                if triage.uncertain_view is not None
                else f"classified as other (p={triage.view_probability:.3f})"
            )
            return findings
        findings.boxes = boxes
        spacing, geometry, spacing_note = _geometry(ds)
        if spacing_note:
            findings.notes.append(spacing_note)
        findings.hips, heatmaps = analyse_hips(
            radiograph.image01,
            triage,
            boxes,
            morphology=self.models.morphology,
            detector_ran=self.models.detector is not None,
            pixel_spacing_mm=spacing,
            geometry=geometry,
            patient_age_years=patient_age_years(ds),
            joint_candidates=joint_candidates or (),
        )
        findings.low_confidence = low_confidence_reason(
            triage.view, triage.view_probability, boxes, detector_ran=self.models.detector is not None
        )
        src.heatmaps.update(heatmaps)
        return findings

    def _record_instance_states(self, ctx: _Context) -> None:
        with self.db.session() as s:
            for src in ctx.sources:
                inst = s.get(Instance, src.instance_pk)
                if inst is None or src.findings is None:
                    continue
                if src.findings.screened_out is None:
                    state, reason = InstanceState.ACCEPTED.value, None
                else:
                    state = InstanceState.SCREENED_OUT.value
                    reason = f"{src.findings.screened_out.value}: {src.findings.screen_detail}".rstrip(": ")
                if inst.state != state or inst.screen_reason != reason:
                    inst.state, inst.screen_reason = state, reason
                    record_event(s, "instance", inst.id, state, reason=reason, job=ctx.job_pk)

    # ------------------------------------------------------------------ outputs

    def _compose_and_store(self, ctx: _Context) -> dict[str, int]:
        models = self.models.infos()
        with_pixels = [s for s in ctx.sources if s.header is not None and s.findings is not None]
        # what the outputs copy from each source, made fit to copy (a malformed date or an
        # over-long accession number must not cost the report); every change is noted
        clean: dict[int, Dataset] = {}
        for src in with_pixels:
            assert src.header is not None and src.findings is not None
            clean[id(src)], changes = sanitise_for_output(src.header)
            for change in changes:
                note = f"Source header: {change}"
                if note not in src.findings.notes:
                    src.findings.notes.append(note)
        findings = SeriesFindings(
            series_instance_uid=ctx.series_uid,
            study_instance_uid=ctx.study_uid,
            images=[s.findings for s in with_pixels if s.findings is not None],
            models=models,
        )
        priors, predecessor = self._priors_and_predecessor(ctx)
        # The content digests enter the output UIDs: identical re-sends give identical UIDs,
        # while a changed instance (same SOP Instance UID, new bytes) gives a new, amended SR.
        salt = hashlib.sha256(
            "|".join(sorted(f"{s.sop_instance_uid}:{s.sha256}" for s in ctx.sources)).encode()
        ).hexdigest()
        view = _series_view(findings)
        destinations = route(
            self.cfg, calling_ae=ctx.calling_ae, modality=ctx.modality, body_part=ctx.body_part, view=view
        )
        counts = {"sr": 0, "sc": 0, "gsps": 0, "deliveries": 0}
        compose = outputs_to_compose(self.cfg, destinations)
        receivers = {kind: [d for d in destinations if kind in destination_outputs(self.cfg, d)] for kind in compose}

        def store(ds: Dataset, kind: ResultKind, source: str | None, payload: dict[str, Any]) -> None:
            """Write one result and queue its deliveries (to the destinations that take this
            kind) in its own transaction, so the SR is on its way to the PACS while the (slower,
            JPEG 2000) overlays are still encoding."""
            rel = self._write(ds)
            with self.db.session() as s:
                # A late image re-completed the series while this job ran: generation N+1 reports
                # for it (the row lock orders this check against that completion).
                current = s.scalar(select(Series.generation).where(Series.id == ctx.series_pk).with_for_update())
                if current is not None and current > ctx.generation:
                    # the file is left: a newer job may have written the same path (an unchanged
                    # image's SC / GSPS) and not recorded it yet
                    raise _NewerGeneration(int(current))
                result = self._upsert_result(s, ctx, rel, ds, kind, source, payload, predecessor)
                if kind is ResultKind.SR:
                    self._record_measurements(s, ctx, result, findings)
                counts["deliveries"] += len(enqueue_deliveries(s, result.id, receivers[kind]))
            counts[kind.value] += 1
            wake.notify(wake.DELIVERIES)

        if ResultKind.SR in compose:
            headers = [clean[id(s)] for s in with_pixels]
            uids = sr_uids(ctx.series_uid, [str(h.SOPInstanceUID) for h in headers], models, salt=salt)
            if predecessor is not None and predecessor.sop_instance_uid == uids.sop_instance_uid:
                predecessor = None
            sr = build_sr(
                findings,
                headers,
                models=models,
                priors=priors,
                predecessor=predecessor,
                manufacturer=self.cfg.outputs.manufacturer,
                software_version=__version__,
                uids=uids,
            )
            store(sr, ResultKind.SR, None, _payload(findings))
        # images that were analysed: each gets its own GSPS and SC
        analysed = [
            (src, src.findings, src.radiograph)
            for src in with_pixels
            if src.findings is not None and src.findings.screened_out is None and src.radiograph is not None
        ]
        if ResultKind.GSPS in compose:  # before the SCs: no pixels to encode, quick to send
            for src, image_findings, _ in analysed:
                gsps = build_gsps(
                    image_findings,
                    clean[id(src)],
                    models=models,
                    manufacturer=self.cfg.outputs.manufacturer,
                    software_version=__version__,
                    salt=src.sha256,
                )
                store(gsps, ResultKind.GSPS, src.sop_instance_uid, {})
        if ResultKind.SC in compose:
            for src, image_findings, radiograph in analysed:
                sc = build_sc(
                    image_findings,
                    clean[id(src)],
                    radiograph.image01,
                    models=models,
                    heatmaps=src.heatmaps,
                    compression=self.cfg.outputs.sc_compression,
                    manufacturer=self.cfg.outputs.manufacturer,
                    software_version=__version__,
                    salt=src.sha256,
                )
                store(sc, ResultKind.SC, src.sop_instance_uid, {})
        return counts

    def _write(self, ds: Dataset) -> str:
        """Write a result durably (temp file, fsync, rename); returns its path under the results root."""
        rel = Path(
            uid_digest(str(ds.SeriesInstanceUID))[:2],
            uid_digest(str(ds.SeriesInstanceUID)),
            f"{ds.SOPInstanceUID}.dcm",
        )
        from node import tempfiles

        final = self.results_root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        # unique per writer: two worker threads (or processes) may write the same result (the
        # same content gives the same SOP Instance UID) at the same moment. In the results'
        # staging folder, named by its writer, so start-up finds crash leftovers without
        # walking the results (``node.tempfiles``); removed here on any failure, the per-job
        # time limit (an asynchronous exception) included.
        staging = self.results_root / tempfiles.STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / tempfiles.temp_name(final.name, ".tmp")
        try:
            ds.save_as(tmp, enforce_file_format=True)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return str(rel)

    def _upsert_result(
        self,
        s: Session,
        ctx: _Context,
        rel: str,
        ds: Dataset,
        kind: ResultKind,
        source: str | None,
        payload: dict[str, Any],
        predecessor: ReportReference | None,
    ) -> Result:
        uid = str(ds.SOPInstanceUID)
        existing = s.scalar(select(Result).where(Result.sop_instance_uid == uid))
        if existing is not None:
            return existing
        supersedes = None
        if kind is ResultKind.SR and predecessor is not None:
            supersedes = s.scalar(
                select(Result.id).where(Result.sop_instance_uid == predecessor.sop_instance_uid)
            )
        result = Result(
            job_pk=ctx.job_pk,
            series_pk=ctx.series_pk,
            kind=kind.value,
            sop_instance_uid=uid,
            sop_class_uid=str(ds.SOPClassUID),
            source_sop_instance_uid=source,
            path=rel,
            supersedes_pk=supersedes,
            payload=payload or None,
        )
        s.add(result)
        s.flush()
        record_event(
            s, "result", result.id, "created", result_kind=kind.value, job=ctx.job_pk, supersedes=supersedes
        )
        return result

    def _priors_and_predecessor(self, ctx: _Context) -> tuple[list[PriorMeasurement], ReportReference | None]:
        # reads only (and reads files): no write lock held meanwhile
        with self.db.read_session() as s:
            prev = s.scalars(
                select(Result)
                .join(Job, Job.id == Result.job_pk)
                .where(Result.series_pk == ctx.series_pk, Result.kind == ResultKind.SR.value)
                .where(Job.generation < ctx.generation)
                .order_by(Job.generation.desc(), Result.id.desc())
                .limit(1)
            ).first()
            predecessor = None
            if prev is not None:
                series_uid = None
                try:
                    series_uid = str(
                        pydicom.dcmread(
                            self.results_root / prev.path, stop_before_pixels=True
                        ).SeriesInstanceUID
                    )
                except (OSError, AttributeError, ValueError):
                    log.warning(
                        "predecessor SR file of result %d unreadable; amending without a reference", prev.id
                    )
                if series_uid is not None:
                    predecessor = ReportReference(
                        ctx.study_uid, series_uid, prev.sop_instance_uid, prev.sop_class_uid
                    )
            rows = s.scalars(
                select(Measurement)
                .where(Measurement.patient_pk == ctx.patient_pk, Measurement.study_uid != ctx.study_uid)
                .order_by(Measurement.study_date.desc(), Measurement.id.desc())
            ).all()
            priors: list[PriorMeasurement] = []
            current = next((PatientIdentity.of(src.header) for src in ctx.sources if src.header is not None), None)
            if rows and (current is None or not current.trustworthy_id):
                log.info("series %d: priors not linked: the patient ID is empty or a placeholder", ctx.series_pk)
                rows = []
            same: dict[str, bool] = {}
            seen: set[str] = set()
            for m in rows:
                if m.side in seen or (ctx.study_date and m.study_date and m.study_date > ctx.study_date):
                    continue
                if m.study_uid not in same:
                    assert current is not None
                    other = self._study_identity(s, m.study_uid)
                    same[m.study_uid] = other is not None and current.same_patient(other)
                    if not same[m.study_uid]:
                        log.info(
                            "series %d: a study filed under the same patient ID is not linked as a prior "
                            "(no issuer of the ID, and birth date or sex differ or are missing)", ctx.series_pk
                        )
                if not same[m.study_uid]:
                    continue
                if m.inclination_deg is None and m.anteversion_deg is None:
                    continue
                seen.add(m.side)
                priors.append(
                    PriorMeasurement(
                        Side(m.side), m.study_uid, m.study_date, m.inclination_deg, m.anteversion_deg
                    )
                )
            return priors, predecessor

    def _study_identity(self, s: Session, study_uid: str) -> PatientIdentity | None:
        """The patient identity one instance of a stored study declared (header only)."""
        path = s.scalar(
            select(Instance.path)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_uid == study_uid)
            .limit(1)
        )
        if path is None:
            return None
        try:
            ds = pydicom.dcmread(self.storage_root / path, stop_before_pixels=True,
                                 specific_tags=list(PatientIdentity.KEYWORDS))
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            return None
        return PatientIdentity.of(ds)

    def _record_measurements(
        self, s: Session, ctx: _Context, result: Result, findings: SeriesFindings
    ) -> None:
        if s.scalar(select(Measurement.id).where(Measurement.result_pk == result.id)) is not None:
            return
        for image in findings.images:
            if image.view not in AP_VIEWS:
                continue
            for hip in image.hips:
                cup = hip.cup
                if cup is None or cup.inclination_deg is None:
                    continue
                s.add(
                    Measurement(
                        patient_pk=ctx.patient_pk,
                        result_pk=result.id,
                        side=hip.side.value,
                        view=image.view.value if image.view else "",
                        study_date=ctx.study_date,
                        study_uid=ctx.study_uid,
                        inclination_deg=cup.inclination_deg,
                        anteversion_deg=cup.anteversion_deg,
                    )
                )


# Patient IDs that name nobody: archives fill the field with these when the real one is unknown.
PLACEHOLDER_PATIENT_IDS = frozenset({
    "UNKNOWN", "UNK", "ANONYMOUS", "ANON", "ANONYMIZED", "ANONYMISED", "NONE", "NULL", "NA", "N/A",
    "NOID", "NO ID", "NOTAVAILABLE", "NOT AVAILABLE", "TEST", "TEMP", "DEFAULT", "PATIENT", "X", "XX",
    "XXX", "-", "--", "?", ".",
})


@dataclass(frozen=True)
class PatientIdentity:
    """What a study says about whose it is, for linking priors (issue 13: identity that cannot
    cross patients).

    The registry files studies by (PatientID, IssuerOfPatientID). That links two people when the
    ID is a placeholder ("", "UNKNOWN", all zeros) or when two sites use the same MRN without an
    issuer, and one patient's cup angles would then be reported as another's prior. The rule:
    a placeholder ID never links; an ID qualified by its issuer links; an ID without an issuer
    links only where both studies also give the same birth date (and no conflicting sex).
    """

    patient_id: str
    issuer: str
    birth_date: str
    sex: str

    KEYWORDS = ("PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")

    @classmethod
    def of(cls, ds: Dataset) -> PatientIdentity:
        def text(keyword: str) -> str:
            return str(ds.get(keyword, "") or "").strip()

        return cls(text("PatientID"), text("IssuerOfPatientID"), text("PatientBirthDate"), text("PatientSex").upper())

    @property
    def trustworthy_id(self) -> bool:
        pid = self.patient_id.upper()
        if len(pid) < 2 or pid in PLACEHOLDER_PATIENT_IDS:
            return False
        return len(set(pid.replace("-", "").replace(" ", ""))) > 1  # "0000000", "9999", "--0--"

    def same_patient(self, other: PatientIdentity) -> bool:
        if not (self.trustworthy_id and other.trustworthy_id):
            return False
        if self.patient_id != other.patient_id or self.issuer != other.issuer:
            return False
        if self.issuer:
            return True
        if not self.birth_date or self.birth_date != other.birth_date:
            return False
        return not (self.sex in ("M", "F") and other.sex in ("M", "F") and self.sex != other.sex)


def analyse_hips(
    image: np.ndarray,
    triage: TriageResult,
    boxes: list[Box],
    *,
    morphology: MorphologyEnsemble | None,
    detector_ran: bool,
    pixel_spacing_mm: float | None = None,
    geometry: ProjectionGeometry | None = None,
    patient_age_years: float | None = None,
    use_metal: bool = True,
    joint_candidates: Sequence[Box] = (),
) -> tuple[list[HipFindings], dict[str, np.ndarray]]:
    """Everything measured per imaged hip once view, side and boxes are known.

    Implant (union of detector + triage and the metal finder, ``node.infer.fusion``), cup
    angles on implanted hips (from the detector's cup box, else the metal finder's cup), LCE /
    Tönnis and the morphology flags (with heatmaps, placed on the whole image) on native hips of
    AP views.
    A module function rather than a method so that ``benchmarks/bench_analyse.py`` times exactly
    the node's analysis, not a copy of it.
    """
    width = int(image.shape[1])
    candidate_notes: dict[Side, str] = {}
    if triage.view is View.AP_PELVIS and joint_candidates:
        # both hips are in an AP pelvis: a side without a confident box takes its best candidate
        boxes, candidate_notes = joint_candidates_for_ap_pelvis(boxes, joint_candidates, width)
    side_of = SideAssigner(boxes, triage.imaged_sides, width)
    joints = side_of.joints
    ap_view = triage.view in AP_VIEWS
    cups: dict[Side, Box] = {}
    for b in sorted((b for b in boxes if b.label == "cup"), key=lambda b: -b.score):
        cups.setdefault(side_of(b), b)
    stems = [b for b in boxes if b.label == "stem"]
    reference = reference_from_boxes(boxes, image_width=width) if ap_view else None
    # Implant per side first: morphology must not read a joint that holds a prosthesis, whoever
    # found it (the detector's hardware boxes refuse crops below; metal-only finds here).
    metal = find_metal(image, pixel_spacing_mm) if use_metal else None
    decisions: dict[Side, ImplantDecision] = {}
    metal_evidence: dict[Side, float | None] = {}
    metal_cups: dict[Side, Box] = {}
    for side in triage.imaged_sides:
        evidence: float | None = None
        metal_boxes: list[Box] = []
        bars: list[Box] = []
        metal_free = False
        if metal is not None and metal.reliable:
            metal_free = not any(side_of(o.box) is side for o in metal.objects)
            evidence = arthroplasty_evidence(metal, side_of, side, joints.get(side), ap_view=ap_view)
            metal_boxes = [o.box for o in arthroplasty_objects(metal, side_of, side, joints.get(side), ap_view=ap_view)]
            bars = [o.box for o in fixation_bars(metal, side_of, side, joints.get(side), ap_view=ap_view)]
        metal_evidence[side] = evidence
        decisions[side] = decide_implant_on_side(
            triage.implant_probability.get(side), boxes if detector_ran else None, side, side_of, evidence,
            ap_view=ap_view, metal_boxes=metal_boxes, bars=bars, metal_free=metal_free,
        )
    # the metal ball (head, or cup with its head) by the joint: a marker ring is centred on it
    metal_balls: dict[Side, Box] = {}
    if metal is not None:
        for obj in sorted(metal.objects, key=lambda o: -o.box.score):
            side_obj = side_of(obj.box)
            if obj.box.label == "cup":
                metal_cups.setdefault(side_obj, obj.box)
            joint = joints.get(side_obj)
            if obj.kind in ("cup", "head") and (joint is None or near_joint(obj.box, joint)):
                metal_balls.setdefault(side_obj, obj.box)
    marker_rings: dict[Side, tuple[Box, WireFit]] = {}
    if ap_view:
        for side in triage.imaged_sides:
            ring = _marker_ring(image, decisions[side], triage.implant_probability.get(side),
                                hardware_score(boxes, side, side_of) if detector_ran else 0.0,
                                metal_evidence.get(side), cups.get(side), joints.get(side), side,
                                metal_balls.get(side))
            if ring is not None:
                marker_rings[side], decisions[side] = ring
    # Morphology only on AP views (the paper's setting); crops with the model's own margin.
    crops = (
        {c.side: c for c in select_joint_crops(image, boxes, morphology.margin)}
        if morphology is not None and ap_view
        else {}
    )
    child = patient_age_years is not None and patient_age_years < CHILD_AGE_YEARS
    morph_input = [
        c
        for c in crops.values()
        if c.crop is not None and c.side in triage.imaged_sides and not child and not decisions[c.side].present
    ]
    morph = (
        morphology.predict_with_heatmaps([c.crop for c in morph_input if c.crop is not None])
        if morphology is not None and morph_input
        else []
    )
    morph_by_side = {c.side: (c, p) for c, p in zip(morph_input, morph, strict=True)}
    heatmaps: dict[str, np.ndarray] = {}
    hips: list[HipFindings] = []
    for side in triage.imaged_sides:
        hip = HipFindings(side=side, joint_box=joints.get(side))
        if side in candidate_notes:
            hip.notes.append(candidate_notes[side])
        decision = decisions[side]
        hip.implant_probability = decision.probability
        hip.implant_present = decision.present
        if decision.uncertainty:
            hip.notes.append(f"Hip arthroplasty uncertain: {decision.uncertainty}")
        hip.cup_box = cups.get(side)
        if hip.implant_present and hip.cup_box is None and side in metal_cups:
            hip.cup_box = metal_cups[side]
            hip.notes.append("Cup located by the metal finder (the detector gave no cup box)")
        wire = None
        if hip.implant_present and hip.cup_box is None and side in marker_rings:
            hip.cup_box, wire = marker_rings[side]
            hip.notes.append("Cup located by its marker wire in the hip joint (no cup box from the detector "
                             "or the metal finder)")
        if hip.implant_present and hip.cup_box is None and ap_view and hip.joint_box is not None:
            found = _wire_in_joint(image, hip.joint_box, side, metal_balls.get(side))
            if found is not None:
                hip.cup_box, wire = found
                hip.notes.append("Cup located by its marker wire in the hip joint (no cup box from the detector "
                                 "or the metal finder)")
        if hip.implant_present and hip.cup_box is not None:
            hip.cup = measure_cup(
                image,
                hip.cup_box,
                side,
                triage.view,
                reference=reference,
                pixel_spacing_mm=pixel_spacing_mm,
                stem_boxes=stems,
                geometry=geometry,
                wire=wire,
            )
            alt = metal_cups.get(side)
            if (hip.cup.refusal_reason is not None and hip.cup.refusal_reason.startswith(BOX_REFUSALS)
                    and wire is None and alt is not None and pair_iou(alt, hip.cup_box) < METAL_CUP_RETRY_MAX_IOU):
                retry = measure_cup(image, alt, side, triage.view, reference=reference,
                                    pixel_spacing_mm=pixel_spacing_mm, stem_boxes=stems, geometry=geometry)
                if retry.refusal_reason is None:
                    hip.notes.append(f"Cup measured in the metal finder's cup outline (in the detector's cup box: "
                                     f"{hip.cup.refusal_reason})")
                    hip.cup_box, hip.cup = alt, retry
                elif _same_outline(hip.cup, retry):
                    # Two different boxes - the detector's and the metal finder's - each led to the
                    # same rim ellipse, which neither box fits: the boxes are loose, the outline is
                    # not (see _same_outline). The cup is read without the box check, and kept only
                    # when that reading finds the same ellipse again.
                    again = measure_cup(image, hip.cup_box, side, triage.view, reference=reference,
                                        pixel_spacing_mm=pixel_spacing_mm, stem_boxes=stems, geometry=geometry,
                                        min_box_iou=0.0)
                    if again.refusal_reason is None and _same_outline(hip.cup, again, refused=False):
                        hip.notes.append(f"Cup measured although neither the detector's nor the metal finder's cup box "
                                         f"fits its outline ({hip.cup.refusal_reason}; {retry.refusal_reason}): both "
                                         "boxes led to the same rim ellipse")
                        hip.cup = again
        if (hip.implant_present and ap_view and wire is None and hip.joint_box is not None and hip.cup is not None
                and hip.cup.refusal_reason is not None):
            # A cemented all-polyethylene cup the detector boxed by its head alone (the metal it
            # sees) is refused by the shell fit: its marker wire, looked for where the cup sits in
            # the hip joint, still gives the opening. Only a sharp wire counts here - the shell
            # was already seen and refused, and a metal-backed cup's outline or the bone round it
            # can pass for a ring in a box placed by proportion (WIRE_RETRY_MAX_RMS_SHARE).
            found = _wire_in_joint(image, hip.joint_box, side, metal_balls.get(side))
            if found is not None and _retry_wire(found):
                by_wire = measure_cup(image, found[0], side, triage.view, reference=reference,
                                      pixel_spacing_mm=pixel_spacing_mm, stem_boxes=stems, geometry=geometry,
                                      wire=found[1])
                if by_wire.refusal_reason is None:
                    hip.notes.append(f"Cup measured from its marker wire in the hip joint (in the cup box: "
                                     f"{hip.cup.refusal_reason})")
                    hip.cup_box, hip.cup = found[0], by_wire
        if (hip.implant_present and ap_view and wire is None and hip.cup_box is not None and hip.cup is not None
                and (hip.cup.refusal_reason is not None or hip.cup.anteversion_deg is None)):
            # last: a cup whose metal the film clips to one plateau, read from its outline
            by_outline = measure_cup_from_outline(image, hip.cup_box, side, triage.view, hip.cup, reference=reference,
                                                  pixel_spacing_mm=pixel_spacing_mm, geometry=geometry)
            if by_outline is not None and by_outline.note:
                hip.notes.append(by_outline.note)
                hip.cup = by_outline
        if not hip.implant_present and hip.joint_box is not None and ap_view:
            # Evidence for a dysplasia flag: LCE and Tönnis angles where landmarks are found.
            dys = measure_dysplasia(image, hip.joint_box, side, reference=reference)
            hip.lateral_centre_edge_deg = dys.lce_deg
            hip.tonnis_deg = dys.tonnis_deg
            if dys.head_centre is not None and dys.head_radius_px is not None:
                hip.femoral_head = (dys.head_centre, float(dys.head_radius_px))
            if dys.sourcil_medial is not None and dys.sourcil_lateral is not None:
                hip.sourcil = (dys.sourcil_medial, dys.sourcil_lateral)
        if side in morph_by_side:
            crop, pred = morph_by_side[side]
            hip.morphology = pred.flags
            for flag in pred.flags:
                if flag.present and flag.name in pred.heatmaps:
                    heatmaps[f"{flag.name.replace('_', ' ')} {side.value}"] = _place_heatmap(
                        pred.heatmaps[flag.name], crop.region, image.shape
                    )
        elif side in crops and crops[side].refusal_reason:
            hip.morphology_refusal = crops[side].refusal_reason
        elif child and patient_age_years is not None and side in crops:
            hip.morphology_refusal = child_note(patient_age_years)
        elif decision.present and side in crops:
            hip.morphology_refusal = "hardware in joint region (metal finder)"
        hip.notes.extend(
            gap_notes(hip, triage.view, detector_ran=detector_ran, morphology_configured=morphology is not None)
        )
        contradiction = dysplasia_consistency(hip)
        if contradiction:
            hip.notes.append(contradiction)
        hips.append(hip)
    return hips, heatmaps


# Two cup fits are "the same outline" when their rim ellipses agree within
# ``node.analyse.cup.SAME_RIM_DEG`` / ``SAME_RIM_SHARE`` (``same_rim``): long-axis angle and
# arcsin(minor/major) within 0.5°, centres within 2 % of the semi-major axis (at least 1 px),
# semi-major axes within that share. On an independently written renderer's films
# (``node.phantom.sketch``, dev seed 424242, 80 images), three cups were refused in both the
# detector's and the metal finder's box with IoU 0.61-0.68 and ellipses agreeing within 0.04° /
# 0.17° / 0.2 px, all three within 0.6° of the truth; every pair that disagreed (by 1.2° or more)
# was a wrong fit. Only a refusal for the outline-to-box overlap counts (``OUTLINE_BOX_REFUSAL``):
# on an analytic hemiarthroplasty the head's outline was refused in one box for that and in the
# other for reaching beyond the box.


def _same_outline(a: CupMeasurement, b: CupMeasurement, *, refused: bool = True) -> bool:
    """Whether two cup readings rest on the same rim ellipse (and, with ``refused``, were both
    refused for the outline-to-box overlap alone)."""
    if refused and not all(m.refusal_reason is not None and m.refusal_reason.startswith(OUTLINE_BOX_REFUSAL)
                           for m in (a, b)):
        return False
    return a.ellipse is not None and b.ellipse is not None and same_rim(a.ellipse, b.ellipse)


# A cemented all-polyethylene cup is plastic in bone cement: only its marker wire, a thin steel
# ring round the opening, shows it (with the head and stem, which a model may miss and the metal
# finder may not read as metal on a style it never saw). On AP views, a side no source reported but
# where one of them saw something (triage or a cup / stem box at IMPLANT_THRESHOLD, or metal at
# METAL_NONE) is reported implanted where a sharp wire ring shows where the cup sits: a ring (not an
# arc), its ellipse fitting the wire's centre line to within MARKER_RING_MAX_RMS_SHARE of its
# semi-major axis, seen on both sides of its centre (symmetry >= MARKER_RING_MIN_SYMMETRY: the head
# hides a ring's two halves alike). On dev films of three styles (mixed seeds 424240-424330: 2,399
# sketch sides, and 982 analytic / voxel sides of seeds 424270 / 424310; cup films sketch
# 424270-424330, analytic / voxel 424270) this held on 8 cemented prostheses no source reported
# (rings at 0.26-0.46 %, symmetry 0.75-0.98) and on no side without one. Sides without a
# prosthesis gave rings as sharp as 0.40 % (cannulated screws, symmetry 0.87) and 0.51 % (a native
# hip, 0.82), both where no other source saw anything, and 0.48 % (a nail, 0.59) with a detector
# box at 0.67: hence both the ring's own bars and the need for another source's hint.
MARKER_RING_MAX_RMS_SHARE = 0.005
MARKER_RING_MIN_SYMMETRY = 0.75


def _marker_ring(
    image: np.ndarray,
    decision: ImplantDecision,
    triage_p: float | None,
    hardware: float,
    metal: float | None,
    cup_box: Box | None,
    joint: Box | None,
    side: Side,
    ball: Box | None = None,
) -> tuple[tuple[Box, WireFit], ImplantDecision] | None:
    """The cup box and marker wire of a cemented cup no source reported, and the decision that
    reports it (see ``MARKER_RING_MAX_RMS_SHARE``), or ``None``. ``ball``: the metal finder's head
    (or head-and-cup) box on that side (``cup_box_from_marker_wire``)."""
    if decision.present is not False:
        return None
    t = 0.0 if triage_p is None else triage_p
    m = 0.0 if metal is None else metal
    if t < IMPLANT_THRESHOLD and hardware < IMPLANT_THRESHOLD and m < METAL_NONE:
        return None
    found: tuple[Box, WireFit] | None = None
    if cup_box is not None:
        w = find_marker_wire(image, cup_box)
        if w is not None:
            found = (cup_box, w)
    if (found is None or not _sharp_ring(found[1])) and joint is not None:
        found = cup_box_from_marker_wire(image, joint, side, ball)
    if found is None or not _sharp_ring(found[1]):
        return None
    said = (f"triage p={t:.2f}, detector {hardware:.2f}, metal finder "
            f"{'not read' if metal is None else f'{metal:.2f}'}")
    note = (f"found by its marker wire (a sharp wire ring where the cup sits: a cemented all-polyethylene cup); "
            f"no other source reported it ({said})")
    if decision.uncertainty:
        note = f"{note}; before that: {decision.uncertainty}"
    # no probability: none of the scores behind it says "implant", and the wire is no score
    return found, ImplantDecision(True, None, note, False)


def _wire_in_joint(image: np.ndarray, joint: Box, side: Side, ball: Box | None) -> tuple[Box, WireFit] | None:
    """A cemented cup's marker wire in the hip ``joint``: the one found in boxes placed by
    proportion there (``cup_box_from_marker_wire``) where it is sharp (``_retry_wire``), else a
    sharp ring round the metal finder's ``ball`` (``cup_box_from_wire_round_ball``) where there is
    one, else the first again (or ``None``). Through the whole analysis on the dev cup films (sketch seeds
    424270-424410, 1,448 visible cups; analytic and voxel 424270-424290, 470, unchanged) 17
    cemented cups were read so within 2.4° / 0.2° of the truth: 15 refused before, 2 read before
    from a duller ring in the joint (1.0° and 1.9° off in version then, 0.1° now); the one ring
    found round a head there that was not sharp (1.1 % of its semi-major axis) read 16° / 40° off.
    Fresh sketch cup films rendered afterwards (seeds 424420-424450, 381 visible cups): 344 -> 348
    measured, the 4 new within 0.7° / 0.4°."""
    found = cup_box_from_marker_wire(image, joint, side, ball)
    if _retry_wire(found) or ball is None:
        return found
    by_ball = cup_box_from_wire_round_ball(image, side, ball)
    return by_ball if _retry_wire(by_ball) else found


def _retry_wire(found: tuple[Box, WireFit] | None) -> bool:
    """Whether a wire found by proportion in the hip joint, or round the head, is a sharp line
    (``WIRE_RETRY_MAX_RMS_SHARE``): the bar for reading a cup from it after the shell fit refused
    the cup, and for taking a ring round the head over one found in the joint."""
    return found is not None and found[1].rms_px <= WIRE_RETRY_MAX_RMS_SHARE * found[1].ellipse.semi_major


def _sharp_ring(w: WireFit) -> bool:
    return (w.kind == "ring" and w.rms_px <= MARKER_RING_MAX_RMS_SHARE * w.ellipse.semi_major
            and w.symmetry >= MARKER_RING_MIN_SYMMETRY)


# The metal finder's cup box is tried after a refused fit only where it differs from the box
# that was refused (below this IoU); the same box would give the same answer.
METAL_CUP_RETRY_MAX_IOU = 0.9
# ... and only after a refusal that blames the box (the outline found is fine but the box does
# not fit it); after any other refusal a second box finds the same unreadable rim (dev voxel
# phantoms: a resurfacing cup "too little rim visible" in one box was read 32° off in the other)
BOX_REFUSALS = (OUTLINE_BOX_REFUSAL, RIM_BEYOND_BOX_REFUSAL)
# A marker wire read after the shell fit refused the cup must be a thin, sharp line: its ellipse
# fits the wire's centre line to within this share of its semi-major axis. Dev sketch cups (seeds
# 424270-424320, wires found in the hip-joint box after a refusal): 24 rings read within 2.0° /
# 0.3° at 0.20-0.49 % (one more, read 0.3° / 0.4° off, at 0.68 %); 8 outlines of metal shells,
# mantles or bone taken for wires, read 6-51° off, at 0.67-1.35 %.
WIRE_RETRY_MAX_RMS_SHARE = 0.006


def _place_heatmap(heat: np.ndarray, region: Box, shape: tuple[int, ...]) -> np.ndarray:
    """A crop-sized heatmap placed into a full-image map (zeros elsewhere)."""
    import cv2

    rows, cols = int(shape[0]), int(shape[1])
    out = np.zeros((rows, cols), dtype=np.float32)
    x0, y0 = max(0, round(region.x0)), max(0, round(region.y0))
    x1, y1 = min(cols, round(region.x1)), min(rows, round(region.y1))
    if x1 <= x0 or y1 <= y0:
        return out
    out[y0:y1, x0:x1] = cv2.resize(
        heat.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR
    )
    return out


def _series_view(findings: SeriesFindings) -> str | None:
    views = [i.view for i in findings.images if i.view is not None and i.screened_out is None]
    return views[0].value if views else None


def _payload(findings: SeriesFindings) -> dict[str, Any]:
    """Measured values kept with the SR result row (for status pages and audits)."""
    images = []
    for image in findings.images:
        images.append(
            {
                "sop": image.sop_instance_uid,
                "view": image.view.value if image.view else None,
                "screened_out": image.screened_out.value if image.screened_out else None,
                "low_confidence": image.low_confidence,
                "notes": image.notes,
                "hips": [
                    {
                        "side": h.side.value,
                        "implant": h.implant_present,
                        "inclination_deg": h.cup.inclination_deg if h.cup else None,
                        "anteversion_deg": h.cup.anteversion_deg if h.cup else None,
                        "refusal": (h.cup.refusal_reason or h.cup.anteversion_refusal) if h.cup else None,
                        "morphology": {f.name: round(f.probability, 4) for f in h.morphology},
                        "implant_probability": h.implant_probability,
                        "joint_box": None if h.joint_box is None else [
                            round(v, 1) for v in (h.joint_box.x0, h.joint_box.y0, h.joint_box.x1, h.joint_box.y1)
                        ],
                        "lce_deg": h.lateral_centre_edge_deg,
                        "notes": h.notes,
                    }
                    for h in image.hips
                ],
            }
        )
    return {"images": images}
