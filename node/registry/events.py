"""The append-only audit trail. Every state transition calls ``record_event`` in the same
transaction as the change itself, so the trail can never disagree with the state.

A delivery event also names the object it is about (the result's SOP Class and Instance UID and
kind) unless the caller gave them: "what was sent where" must be answerable from the event row
alone (``hipnode audit``), even once retention has removed the result it points to.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.registry.models import Delivery, Event, Result


def _delivery_context(session: Session, delivery_pk: int) -> dict[str, Any]:
    row = session.execute(
        select(Result.sop_instance_uid, Result.sop_class_uid, Result.kind)
        .join(Delivery, Delivery.result_pk == Result.id)
        .where(Delivery.id == delivery_pk)
    ).first()
    if row is None:
        return {}
    return {"sop_instance_uid": row[0], "sop_class_uid": row[1], "result_kind": row[2]}


def record_event(session: Session, entity: str, entity_pk: int | None, kind: str, **detail: Any) -> None:
    if entity == "delivery" and entity_pk is not None and "sop_instance_uid" not in detail:
        detail = {**detail, **_delivery_context(session, entity_pk)}
    session.add(Event(entity=entity, entity_pk=entity_pk, kind=kind, detail=detail or None))
