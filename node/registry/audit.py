"""``hipnode audit``: who sent us what, and what we sent where, from the event table.

Two kinds of row, one shape (fixed columns, so a CSV opens the same in any spreadsheet):

* **receipts** — ``instance`` events ``received``, ``new_version``, ``duplicate_received``:
  calling AE, peer host, SOP Class / Instance UID, time;
* **deliveries** — every ``delivery`` event (``enqueued``, ``sent``, ``visible``, ``retrying``,
  ``failed``, ``not_visible``): destination, the result's SOP Class / Instance UID and kind,
  DIMSE status, attempt, reason.

Events written before their detail named these fields are completed from the instance, delivery
and result rows they point to. Nothing here ever reads the patient or study tables: the trail
names objects by UID and senders by AE title and address, never a patient name, ID or birth
date. Free-text reasons (a PACS's error comment) have quoted values redacted as in the logs.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from sqlalchemy import select

from node.logsafe import redact
from node.registry.db import Database
from node.registry.models import Delivery, Event, Instance, Result, utcnow

RECEIPT_KINDS = ("received", "new_version", "duplicate_received")
COLUMNS = (
    "at",
    "event_id",
    "entity",
    "entity_pk",
    "event",
    "calling_ae",
    "peer_host",
    "sop_class_uid",
    "sop_instance_uid",
    "destination",
    "result_kind",
    "status",
    "attempt",
    "reason",
)
_REASON_MAX = 300
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time as the registry stores it (naive UTC).

    Accepts ISO 8601 (``2026-03-01``, ``2026-03-01T08:00``, with ``Z`` or an offset; without
    one it is UTC) or a span back from now (``90m``, ``24h``, ``7d``, ``2w``). Raises
    ``ValueError`` naming the accepted forms.
    """
    value = text.strip()
    rel = _RELATIVE.match(value)
    if rel:
        return (now or utcnow()) - timedelta(**{_UNITS[rel.group(2)]: float(rel.group(1))})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r}: expected ISO 8601 (2026-03-01, 2026-03-01T08:00Z) or a span such as 24h or 7d"
        ) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _iso(at: datetime) -> str:
    return at.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _reason(detail: dict[str, Any]) -> str:
    text = str(detail.get("reason") or "")
    text = redact(text)
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


def audit_rows(db: Database, since: datetime, until: datetime | None = None) -> list[dict[str, Any]]:
    """Receipt and delivery events with ``since <= at < until``, oldest first."""
    where = [Event.at >= since]
    if until is not None:
        where.append(Event.at < until)
    is_receipt = (Event.entity == "instance") & Event.kind.in_(RECEIPT_KINDS)
    is_delivery = Event.entity == "delivery"
    with db.sessionmaker() as s:
        events = s.execute(
            select(Event.id, Event.at, Event.entity, Event.entity_pk, Event.kind, Event.detail)
            .where(*where, is_receipt | is_delivery)
            .order_by(Event.at, Event.id)
        ).all()
        instance_pks = {e.entity_pk for e in events if e.entity == "instance" and e.entity_pk is not None}
        delivery_pks = {e.entity_pk for e in events if e.entity == "delivery" and e.entity_pk is not None}
        instances = {
            r.id: r
            for r in s.execute(
                select(
                    Instance.id, Instance.calling_ae, Instance.peer_host, Instance.sop_class_uid,
                    Instance.sop_instance_uid,
                ).where(Instance.id.in_(instance_pks))
            )
        } if instance_pks else {}
        deliveries = {
            r.id: r
            for r in s.execute(
                select(
                    Delivery.id, Delivery.destination, Result.sop_class_uid, Result.sop_instance_uid, Result.kind
                )
                .join(Result, Result.id == Delivery.result_pk)
                .where(Delivery.id.in_(delivery_pks))
            )
        } if delivery_pks else {}
    rows = []
    for e in events:
        detail: dict[str, Any] = dict(e.detail or {})
        row: dict[str, Any] = dict.fromkeys(COLUMNS, None)
        row.update(at=_iso(e.at), event_id=e.id, entity=e.entity, entity_pk=e.entity_pk, event=e.kind)
        if e.entity == "instance":
            inst = instances.get(e.entity_pk)
            row["calling_ae"] = detail.get("calling_ae") or (inst.calling_ae if inst else None)
            row["peer_host"] = detail.get("peer_host") or (inst.peer_host if inst else None)
            row["sop_class_uid"] = detail.get("sop_class_uid") or (inst.sop_class_uid if inst else None)
            row["sop_instance_uid"] = detail.get("sop_instance_uid") or (inst.sop_instance_uid if inst else None)
        else:
            d = deliveries.get(e.entity_pk)
            row["destination"] = detail.get("destination") or (d.destination if d else None)
            row["sop_class_uid"] = detail.get("sop_class_uid") or (d.sop_class_uid if d else None)
            row["sop_instance_uid"] = detail.get("sop_instance_uid") or (d.sop_instance_uid if d else None)
            row["result_kind"] = detail.get("result_kind") or (d.kind if d else None)
            row["status"] = f"0x{int(detail['status']):04X}" if detail.get("status") is not None else None
            row["attempt"] = detail.get("attempt")
            row["reason"] = _reason(detail) or None
        rows.append(row)
    return rows


def write_csv(rows: Iterable[dict[str, Any]], out: IO[str]) -> None:
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})


def write_json(rows: Iterable[dict[str, Any]], out: IO[str]) -> None:
    json.dump(list(rows), out, indent=1)
    out.write("\n")
