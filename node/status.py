"""``hipnode status``: what an IT admin checks first — counts by state, queue, destinations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from node.config import Config
from node.registry import Database, Delivery, Instance, Job, Result, Series, utcnow


def _counts(db: Database, column: Any) -> dict[str, int]:
    with db.read_session() as s:
        return {str(k): int(v) for k, v in s.execute(select(column, func.count()).group_by(column)).all()}


def collect_status(cfg: Config, db: Database) -> dict[str, Any]:
    now = utcnow()
    with db.read_session() as s:
        queue_depth = s.scalar(
            select(func.count()).select_from(Job).where(Job.state == "queued", Job.not_before <= now)
        )
        waiting_retry = s.scalar(
            select(func.count()).select_from(Job).where(Job.state == "queued", Job.not_before > now)
        )
        results = s.scalar(select(func.count()).select_from(Result))
        last_received = s.scalar(select(func.max(Instance.received_at)))
    destinations: dict[str, Any] = {}
    try:
        from node.dispatch import destination_health

        destinations = destination_health(db)
    except ImportError:  # pragma: no cover - dispatch is part of the package
        pass
    from node.actions import paused_destinations

    paused = paused_destinations(db)
    for d in cfg.destinations:
        destinations.setdefault(d.name, {})
        destinations[d.name]["address"] = f"{d.ae_title}@{d.host}:{d.port}"
    for name, entry in destinations.items():
        row = paused.get(name)
        entry["paused"] = row is not None
        if row is not None:
            entry["paused_at"] = row.changed_at
            entry["paused_by"] = row.changed_by
    return {
        "node": f"{cfg.node.ae_title}@{cfg.node.host}:{cfg.node.port}",
        "instances": _counts(db, Instance.state),
        "series": _counts(db, Series.state),
        "jobs": _counts(db, Job.state),
        "queue_depth": int(queue_depth or 0),
        "jobs_waiting_retry": int(waiting_retry or 0),
        "results": int(results or 0),
        "deliveries": _counts(db, Delivery.state),
        "destinations": destinations,
        "last_instance_received_at": last_received,
    }


def format_status(status: dict[str, Any]) -> str:
    lines = [f"node {status['node']}"]
    for key in ("instances", "series", "jobs", "deliveries"):
        counts = status[key]
        text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        lines.append(f"{key:<11} {text}")
    lines.append(f"queue       {status['queue_depth']} ready, {status['jobs_waiting_retry']} waiting to retry")
    lines.append(f"results     {status['results']}")
    lines.append(f"last image  {status['last_instance_received_at'] or 'never'}")
    for name, health in sorted(status["destinations"].items()):
        detail = ", ".join(
            f"{k} {v}" for k, v in sorted(health.items()) if k not in ("address", "paused", "paused_at", "paused_by")
        )
        state = f"PAUSED by {health.get('paused_by')} since {health.get('paused_at')}; " if health.get("paused") else ""
        lines.append(f"destination {name} ({health.get('address', '?')}): {state}{detail or 'no deliveries yet'}")
    return "\n".join(lines)
