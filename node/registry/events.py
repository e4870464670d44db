"""The append-only audit trail. Every state transition calls ``record_event`` in the same
transaction as the change itself, so the trail can never disagree with the state."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from node.registry.models import Event


def record_event(session: Session, entity: str, entity_pk: int | None, kind: str, **detail: Any) -> None:
    session.add(Event(entity=entity, entity_pk=entity_pk, kind=kind, detail=detail or None))
