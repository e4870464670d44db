"""SQLAlchemy 2 models: the registry both processes (receiver, workers) share.

State columns hold the ``str`` values of the enums in ``node.domain``; every state change also
writes an ``Event`` row (append-only audit trail).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no zone, so both back-ends store naive UTC consistently."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patient"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # (issuer, patient_id) identify a patient; name kept for the SR, never logged.
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient"),)


class Study(Base):
    __tablename__ = "study"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    patient: Mapped[Patient] = relationship()


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"))
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[str] = mapped_column(String(12), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    first_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    # When the quiet period ends; recomputed on every instance (per calling AE setting).
    complete_after: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Bumped each time the series completes; a job analyses one generation.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    study: Mapped[Study] = relationship()


class Instance(Base):
    __tablename__ = "instance"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to storage.root
    size: Mapped[int] = mapped_column(BigInteger)
    # SHA-256 of the dataset bytes as received (after the file meta), so the same object sent
    # by two AEs (whose file meta differ) de-duplicates.
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[str] = mapped_column(String(12), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="received")
    screen_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)  # a newer version exists
    series: Mapped[Series] = relationship()
    __table_args__ = (UniqueConstraint("sop_instance_uid", "version", name="uq_instance_version"),)


class Job(Base):
    __tablename__ = "job"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    series: Mapped[Series] = relationship()
    __table_args__ = (
        UniqueConstraint("series_pk", "generation", name="uq_job_generation"),
        Index("ix_job_claim", "state", "not_before", "priority"),
    )


class Result(Base):
    """One DICOM object we produced (SR or SC)."""

    __tablename__ = "result"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    source_sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    supersedes_pk: Mapped[int | None] = mapped_column(ForeignKey("result.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # measured values
    # Set when retention removed the file (``node.retention``); the row stays, because its
    # deliveries, measurements (priors) and the SR chain (``supersedes_pk``) still point to it.
    purged_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Measurement(Base):
    """Cup angles per patient and side, for longitudinal comparison in later SRs."""

    __tablename__ = "measurement"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    result_pk: Mapped[int] = mapped_column(ForeignKey("result.id"))
    side: Mapped[str] = mapped_column(String(1))
    view: Mapped[str] = mapped_column(String(16))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_uid: Mapped[str] = mapped_column(String(64))
    inclination_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    anteversion_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Delivery(Base):
    __tablename__ = "delivery"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_pk: Mapped[int] = mapped_column(ForeignKey("result.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    result: Mapped[Result] = relationship()
    __table_args__ = (
        UniqueConstraint("result_pk", "destination", name="uq_delivery"),
        Index("ix_delivery_due", "state", "next_attempt_at"),
    )


class DestinationState(Base):
    """Operator state of a destination (``hipnode pause`` / ``resume``): kept in the registry,
    not the config, so a pause reaches every dispatcher process at once and survives restarts.
    A destination without a row is active."""

    __tablename__ = "destination_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    changed_by: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Event(Base):
    """Append-only audit trail: one row per state transition."""

    __tablename__ = "event"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    entity: Mapped[str] = mapped_column(String(16))  # instance | series | job | result | delivery | association
    entity_pk: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    __table_args__ = (Index("ix_event_entity", "entity", "entity_pk"),)
