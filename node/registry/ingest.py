"""Record a received instance: patient / study / series upsert, versioning, series state.

Runs inside the caller's transaction (``Database.session()``), so the instance row, the series
state change and their audit events commit together or not at all. The receiver calls this only
after the file is durably on disk, and answers the C-STORE only after the commit.

Series state machine maintained here (``node.series`` closes series and queues jobs):

* first instance of a series → ``open``;
* a new or changed instance on a ``complete`` series → ``reopened`` (a late arrival; the series
  completes again after the quiet period and gets a new job generation);
* every new instance or version pushes ``last_received_at`` and ``complete_after`` forward.

An identical re-send (same SOP Instance UID, same SHA-256) changes nothing but the audit trail:
no new row, no state change, hence no new job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.domain import InstanceState, SeriesState
from node.registry.events import record_event
from node.registry.models import Instance, Patient, Series, Study, utcnow

log = logging.getLogger(__name__)


class IngestKind(StrEnum):
    NEW = "new"  # first version of this SOP instance
    DUPLICATE = "duplicate"  # identical bytes already recorded
    NEW_VERSION = "new_version"  # same SOP Instance UID, different bytes


@dataclass(frozen=True)
class IngestOutcome:
    kind: IngestKind
    instance_pk: int
    series_pk: int
    version: int
    series_state: str
    series_transition: str | None  # "opened" | "reopened" | None

    @property
    def is_duplicate(self) -> bool:
        return self.kind is IngestKind.DUPLICATE


def _text(header: Dataset, keyword: str, max_len: int) -> str:
    """A header value as text cut to the column width (PostgreSQL enforces widths)."""
    if keyword not in header:
        return ""
    try:
        value = header.get(keyword)
        text = "" if value is None else str(value)
    except Exception:
        # A malformed value must not cost the instance: keep its bytes as Latin-1 text.
        raw = getattr(header.get_item(keyword), "value", b"")
        text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    return text.strip().strip("\x00")[:max_len]


def _get_patient(session: Session, header: Dataset) -> Patient:
    patient_id = _text(header, "PatientID", 64)
    issuer = _text(header, "IssuerOfPatientID", 64)
    patient = session.scalars(
        select(Patient).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    ).first()
    if patient is None:
        patient = Patient(
            patient_id=patient_id,
            issuer=issuer,
            name=_text(header, "PatientName", 324),
            birth_date=_text(header, "PatientBirthDate", 8),
            sex=_text(header, "PatientSex", 16),
        )
        session.add(patient)
        session.flush()
    return patient


def _get_study(session: Session, header: Dataset, study_uid: str) -> Study:
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None:
        study = Study(
            study_uid=study_uid,
            patient_pk=_get_patient(session, header).id,
            study_date=_text(header, "StudyDate", 8),
            study_time=_text(header, "StudyTime", 16),
            accession_number=_text(header, "AccessionNumber", 16),
            study_id=_text(header, "StudyID", 16),
            referring_physician=_text(header, "ReferringPhysicianName", 324),
            description=_text(header, "StudyDescription", 64),
        )
        session.add(study)
        session.flush()
    return study


def _touch_series(
    session: Session,
    header: Dataset,
    *,
    study_uid: str,
    series_uid: str,
    calling_ae: str,
    now: datetime,
    complete_after: datetime,
) -> tuple[Series, str | None]:
    """Get or create the series and move it along the state machine for one new instance."""
    series = session.scalars(select(Series).where(Series.series_uid == series_uid)).first()
    if series is None:
        series = Series(
            series_uid=series_uid,
            study_pk=_get_study(session, header, study_uid).id,
            modality=_text(header, "Modality", 16),
            body_part=_text(header, "BodyPartExamined", 64),
            description=_text(header, "SeriesDescription", 64),
            series_number=_text(header, "SeriesNumber", 12),
            calling_ae=calling_ae[:16],
            state=SeriesState.OPEN.value,
            first_received_at=now,
            last_received_at=now,
            complete_after=complete_after,
        )
        session.add(series)
        session.flush()
        record_event(session, "series", series.id, "opened", calling_ae=calling_ae)
        return series, "opened"

    transition: str | None = None
    if series.state == SeriesState.COMPLETE.value:
        series.state = SeriesState.REOPENED.value
        transition = "reopened"
        record_event(
            session, "series", series.id, "reopened", generation=series.generation, calling_ae=calling_ae
        )
    series.last_received_at = now
    series.complete_after = complete_after
    return series, transition


def record_instance(
    session: Session,
    *,
    header: Dataset,
    path: Path | str,
    size: int,
    sha256: str,
    transfer_syntax: str,
    calling_ae: str,
    peer_host: str,
    quiet_period_s: float,
    now: datetime | None = None,
) -> IngestOutcome:
    """Record one received instance whose file is already durably at ``path`` (relative to the
    storage root). ``sha256`` identifies the content for de-duplication (the receiver hashes the
    dataset bytes as received, so the same object sent by two modalities is one object).

    Raises whatever the database raises (the caller rolls back, removes the file and answers a
    failure status), and ``ValueError`` if the header lacks a required UID.
    """
    now = now or utcnow()
    study_uid = str(header.get("StudyInstanceUID", "") or "").strip()
    series_uid = str(header.get("SeriesInstanceUID", "") or "").strip()
    sop_uid = str(header.get("SOPInstanceUID", "") or "").strip()
    sop_class = str(header.get("SOPClassUID", "") or "").strip()
    for name, value in (
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
        ("SOPInstanceUID", sop_uid),
        ("SOPClassUID", sop_class),
    ):
        if not value:
            raise ValueError(f"header: {name} is required")

    latest = session.scalars(
        select(Instance)
        .where(Instance.sop_instance_uid == sop_uid)
        .order_by(Instance.version.desc())
        .limit(1)
    ).first()

    if latest is not None and latest.sha256 == sha256:
        record_event(
            session,
            "instance",
            latest.id,
            "duplicate_received",
            version=latest.version,
            calling_ae=calling_ae,
            peer_host=peer_host,
        )
        series = session.get(Series, latest.series_pk)
        return IngestOutcome(
            kind=IngestKind.DUPLICATE,
            instance_pk=latest.id,
            series_pk=latest.series_pk,
            version=latest.version,
            series_state=series.state if series is not None else "",
            series_transition=None,
        )

    complete_after = now + timedelta(seconds=quiet_period_s)
    series, transition = _touch_series(
        session,
        header,
        study_uid=study_uid,
        series_uid=series_uid,
        calling_ae=calling_ae,
        now=now,
        complete_after=complete_after,
    )

    version = 1
    kind = IngestKind.NEW
    if latest is not None:
        latest.superseded = True
        version = latest.version + 1
        kind = IngestKind.NEW_VERSION

    instance = Instance(
        sop_instance_uid=sop_uid,
        version=version,
        sop_class_uid=sop_class,
        series_pk=series.id,
        transfer_syntax=str(transfer_syntax),
        path=str(path),
        size=size,
        sha256=sha256,
        calling_ae=calling_ae[:16],
        peer_host=peer_host[:64],
        instance_number=_text(header, "InstanceNumber", 12),
        received_at=now,
        state=InstanceState.RECEIVED.value,
        superseded=False,
    )
    session.add(instance)
    session.flush()
    if latest is None:
        record_event(session, "instance", instance.id, "received", version=1, calling_ae=calling_ae)
    else:
        record_event(
            session,
            "instance",
            instance.id,
            "new_version",
            version=version,
            supersedes=latest.id,
            previous_sha256=latest.sha256,
            calling_ae=calling_ae,
        )
        record_event(session, "instance", latest.id, "superseded", by=instance.id)
    return IngestOutcome(
        kind=kind,
        instance_pk=instance.id,
        series_pk=series.id,
        version=version,
        series_state=series.state,
        series_transition=transition,
    )
