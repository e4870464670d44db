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

Each receipt event (``received``, ``new_version``, ``duplicate_received``) names who sent what —
calling AE, peer host, SOP Class and Instance UID — so ``hipnode audit`` reads it from the
event alone, even after retention has removed the instance row. Never a patient attribute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from node.domain import InstanceState, SeriesState
from node.registry.models import Event, Instance, Patient, Series, Study, utcnow

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


# Core statements built once (SQLAlchemy caches their compiled form): one ingest is a handful
# of indexed statements on one connection, without the ORM unit of work. No ORM objects are
# loaded, so nothing in the caller's session can go stale.
_P = cast(Table, Patient.__table__)
_ST = cast(Table, Study.__table__)
_SE = cast(Table, Series.__table__)
_I = cast(Table, Instance.__table__)
_E = cast(Table, Event.__table__)
_LATEST_INSTANCE = (
    select(_I.c.id, _I.c.version, _I.c.sha256, _I.c.series_pk)
    .where(_I.c.sop_instance_uid == bindparam("sop_uid"))
    .order_by(_I.c.version.desc())
    .limit(1)
)
_SERIES_BY_UID = select(_SE.c.id, _SE.c.state, _SE.c.generation).where(_SE.c.series_uid == bindparam("uid"))
_SERIES_BY_UID_LOCKED = _SERIES_BY_UID.with_for_update()
_LATEST_IN_SERIES = (
    select(_I.c.id, _I.c.version, _I.c.sha256, _I.c.series_pk)
    .where(_I.c.sop_instance_uid == bindparam("sop_uid"), _I.c.series_pk == bindparam("series_pk"))
    .order_by(_I.c.version.desc())
    .limit(1)
)
_SERIES_STATE = select(_SE.c.state).where(_SE.c.id == bindparam("pk"))
_STUDY_BY_UID = select(_ST.c.id).where(_ST.c.study_uid == bindparam("uid"))
_PATIENT_BY_ID = select(_P.c.id).where(
    _P.c.patient_id == bindparam("pid"), _P.c.issuer == bindparam("issuer")
)
_TOUCH_SERIES = (
    update(_SE)
    .where(_SE.c.id == bindparam("pk"))
    .values(last_received_at=bindparam("now"), complete_after=bindparam("complete_after"))
)
_REOPEN_SERIES = (
    update(_SE)
    .where(_SE.c.id == bindparam("pk"))
    .values(
        state=SeriesState.REOPENED.value,
        last_received_at=bindparam("now"),
        complete_after=bindparam("complete_after"),
    )
)
_SUPERSEDE = update(_I).where(_I.c.id == bindparam("pk")).values(superseded=True)
_INSERT_EVENT = insert(_E)


def _insert(conn: Connection, table: Table, values: dict[str, Any]) -> int:
    pk = conn.execute(insert(table), values).inserted_primary_key
    assert pk is not None
    return int(pk[0])


def _event(conn: Connection, entity: str, entity_pk: int, kind: str, **detail: Any) -> None:
    """Same row as :func:`node.registry.events.record_event`, on the Core path."""
    conn.execute(
        _INSERT_EVENT,
        {"at": utcnow(), "entity": entity, "entity_pk": entity_pk, "kind": kind, "detail": detail or None},
    )


def _get_patient(conn: Connection, header: Dataset) -> int:
    patient_id = _text(header, "PatientID", 64)
    issuer = _text(header, "IssuerOfPatientID", 64)
    pk = conn.execute(_PATIENT_BY_ID, {"pid": patient_id, "issuer": issuer}).scalar()
    if pk is not None:
        return int(pk)
    return _insert(
        conn,
        _P,
        {
            "patient_id": patient_id,
            "issuer": issuer,
            "name": _text(header, "PatientName", 324),
            "birth_date": _text(header, "PatientBirthDate", 8),
            "sex": _text(header, "PatientSex", 16),
        },
    )


def _get_study(conn: Connection, header: Dataset, study_uid: str) -> int:
    pk = conn.execute(_STUDY_BY_UID, {"uid": study_uid}).scalar()
    if pk is not None:
        return int(pk)
    return _insert(
        conn,
        _ST,
        {
            "study_uid": study_uid,
            "patient_pk": _get_patient(conn, header),
            "study_date": _text(header, "StudyDate", 8),
            "study_time": _text(header, "StudyTime", 16),
            "accession_number": _text(header, "AccessionNumber", 16),
            "study_id": _text(header, "StudyID", 16),
            "referring_physician": _text(header, "ReferringPhysicianName", 324),
            "description": _text(header, "StudyDescription", 64),
        },
    )


def _touch_series(
    conn: Connection,
    header: Dataset,
    *,
    study_uid: str,
    series_uid: str,
    calling_ae: str,
    now: datetime,
    complete_after: datetime,
) -> tuple[int, str, str | None]:
    """Get or create the series and move it along the state machine for one new instance.
    Returns its primary key, its state afterwards and the transition (if any).

    The row is read ``FOR UPDATE`` (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
    writers): a completer holding it must commit first, so an instance arriving while its series
    is being completed sees the series complete and re-opens it. Read without the lock it saw
    "open", only moved the quiet period, and the instance could miss every generation's job."""
    row = conn.execute(_SERIES_BY_UID_LOCKED, {"uid": series_uid}).first()
    if row is None:
        pk = _insert(
            conn,
            _SE,
            {
                "series_uid": series_uid,
                "study_pk": _get_study(conn, header, study_uid),
                "modality": _text(header, "Modality", 16),
                "body_part": _text(header, "BodyPartExamined", 64),
                "description": _text(header, "SeriesDescription", 64),
                "series_number": _text(header, "SeriesNumber", 12),
                "calling_ae": calling_ae[:16],
                "state": SeriesState.OPEN.value,
                "first_received_at": now,
                "last_received_at": now,
                "complete_after": complete_after,
                "generation": 0,
            },
        )
        _event(conn, "series", pk, "opened", calling_ae=calling_ae)
        return pk, SeriesState.OPEN.value, "opened"

    pk, state, generation = int(row.id), str(row.state), row.generation
    params = {"pk": pk, "now": now, "complete_after": complete_after}
    if state == SeriesState.COMPLETE.value:
        conn.execute(_REOPEN_SERIES, params)
        _event(conn, "series", pk, "reopened", generation=generation, calling_ae=calling_ae)
        return pk, SeriesState.REOPENED.value, "reopened"
    conn.execute(_TOUCH_SERIES, params)
    return pk, state, None


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

    conn = session.connection()
    # Versions of an instance are chained within its series only: the same SOP Instance UID in
    # another series (another study, another patient: a modality or archive that reuses UIDs)
    # is a different object, kept apart and flagged, never a correction of the first one.
    anywhere = conn.execute(_LATEST_INSTANCE, {"sop_uid": sop_uid}).first()
    known_series = conn.execute(_SERIES_BY_UID, {"uid": series_uid}).first()
    latest = None
    if anywhere is not None and known_series is not None:
        latest = (anywhere if int(anywhere.series_pk) == int(known_series.id)
                  else conn.execute(_LATEST_IN_SERIES, {"sop_uid": sop_uid, "series_pk": known_series.id}).first())

    if latest is not None and latest.sha256 == sha256:
        _event(
            conn,
            "instance",
            latest.id,
            "duplicate_received",
            version=latest.version,
            calling_ae=calling_ae,
            peer_host=peer_host,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_uid,
        )
        state = conn.execute(_SERIES_STATE, {"pk": latest.series_pk}).scalar()
        return IngestOutcome(
            kind=IngestKind.DUPLICATE,
            instance_pk=int(latest.id),
            series_pk=int(latest.series_pk),
            version=int(latest.version),
            series_state=str(state) if state is not None else "",
            series_transition=None,
        )

    complete_after = now + timedelta(seconds=quiet_period_s)
    series_pk, series_state, transition = _touch_series(
        conn,
        header,
        study_uid=study_uid,
        series_uid=series_uid,
        calling_ae=calling_ae,
        now=now,
        complete_after=complete_after,
    )

    version = 1
    kind = IngestKind.NEW
    if anywhere is not None:
        # numbered after the latest version anywhere: (UID, version) stays unique even when
        # another series holds a newer one
        version = int(anywhere.version) + 1
    if latest is not None:
        conn.execute(_SUPERSEDE, {"pk": latest.id})
        kind = IngestKind.NEW_VERSION
    elif anywhere is not None:
        log.warning(
            "SOP Instance UID %s already filed in another series (instance %d): kept apart, not superseded",
            sop_uid[-24:], int(anywhere.id),
        )

    instance_pk = _insert(
        conn,
        _I,
        {
            "sop_instance_uid": sop_uid,
            "version": version,
            "sop_class_uid": sop_class,
            "series_pk": series_pk,
            "transfer_syntax": str(transfer_syntax),
            "path": str(path),
            "size": size,
            "sha256": sha256,
            "calling_ae": calling_ae[:16],
            "peer_host": peer_host[:64],
            "instance_number": _text(header, "InstanceNumber", 12),
            "received_at": now,
            "state": InstanceState.RECEIVED.value,
            "screen_reason": None,
            "superseded": False,
        },
    )
    if latest is None:
        if anywhere is not None:
            _event(conn, "instance", instance_pk, "uid_reused", other_instance=int(anywhere.id),
                   other_series=int(anywhere.series_pk), sop_instance_uid=sop_uid)
        _event(
            conn,
            "instance",
            instance_pk,
            "received",
            version=version,
            calling_ae=calling_ae,
            peer_host=peer_host,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_uid,
        )
    else:
        _event(
            conn,
            "instance",
            instance_pk,
            "new_version",
            version=version,
            supersedes=latest.id,
            previous_sha256=latest.sha256,
            calling_ae=calling_ae,
            peer_host=peer_host,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_uid,
        )
        _event(conn, "instance", latest.id, "superseded", by=instance_pk)
    return IngestOutcome(
        kind=kind,
        instance_pk=instance_pk,
        series_pk=series_pk,
        version=version,
        series_state=series_state,
        series_transition=transition,
    )
