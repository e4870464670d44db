"""Retention: remove received images, superseded versions and result files by the policy in
``retention:`` (``hipnode retention [--dry-run]``).

Why it works this way:

* **One plan, two uses.** :func:`plan` decides what goes; ``--dry-run`` prints it, a real run
  executes the same list, so what the dry-run said is what a run does (minus anything that
  became busy in between, which is re-checked and left alone).
* **Never what is still in flight.** A series that is still receiving (open / reopened), has a
  job queued or running, or has any result with a delivery ``pending`` or ``retrying`` (paused
  destinations included) keeps all its images and results: the worker and the dispatcher still
  need the files, and one rule per series is one an operator can predict. The check is repeated
  inside the transaction that removes each item.
* **Images go, rows go; results go, rows stay.** A received instance's row is deleted with its
  file (the receipt event keeps the audit trail; a re-send of the same image is then simply a
  new receipt). A result row stays, marked ``purged_at``, because its deliveries, the
  measurements later studies compare against (priors) and the SR chain still point to it.
* **Row first, then the file.** The registry change commits first; a file that then cannot
  be removed is an orphan that wastes space (logged), never a row pointing at nothing.
* Each removal is an event (``purged``) with the rule that removed it, its size and the actor.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import exists, literal, or_, select
from sqlalchemy.orm import Session, aliased

from node.config import Config
from node.domain import DeliveryState, JobState, SeriesState
from node.registry import Database, Delivery, Instance, Job, Result, Series, record_event, utcnow
from node.registry.db import is_sqlite

log = logging.getLogger(__name__)

_BUSY_DELIVERY = (DeliveryState.PENDING.value, DeliveryState.RETRYING.value)
_BUSY_JOB = (JobState.QUEUED.value, JobState.RUNNING.value)
_RECEIVING = (SeriesState.OPEN.value, SeriesState.REOPENED.value)


class Rule(StrEnum):
    """Why an item goes (``retention:`` key that selected it)."""

    INSTANCE_AGE = "instances_days"
    SUPERSEDED_INSTANCE = "superseded_days"
    SUPERSEDED_RESULT = "superseded_days (SR)"
    RESULT_AGE = "results_days"
    FREE_SPACE = "min_free_mb"


@dataclass(frozen=True)
class Doomed:
    """One thing the policy removes: an instance (row + file) or a result (file, row marked)."""

    entity: str  # "instance" | "result"
    pk: int
    series_pk: int
    path: Path
    size: int
    at: datetime  # received / created
    rule: Rule

    def line(self, now: datetime) -> str:
        age_d = (now - self.at).total_seconds() / 86400.0
        return (
            f"{self.entity} {self.pk} (series {self.series_pk}, {age_d:.1f} days old, "
            f"{self.size / 1e6:.2f} MB): {self.rule.value}"
        )


@dataclass
class Report:
    """What a run (or dry-run) removed, and what it left because it became busy meanwhile."""

    removed: list[Doomed] = field(default_factory=list)
    kept_busy: list[Doomed] = field(default_factory=list)
    orphaned_files: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(d.size for d in self.removed)


def _series_busy(series_pk: Any) -> Any:
    """True for a series whose files are still needed: receiving, a job to run, or a result
    with a delivery still to make (``series_pk`` is a column or a value)."""
    other = aliased(Result)  # not correlated with an outer query's Result row
    return or_(
        exists().where(Series.id == series_pk, Series.state.in_(_RECEIVING)),
        exists().where(Job.series_pk == series_pk, Job.state.in_(_BUSY_JOB)),
        exists().where(
            other.series_pk == series_pk, Delivery.result_pk == other.id, Delivery.state.in_(_BUSY_DELIVERY)
        ),
    )


def plan(
    cfg: Config,
    db: Database,
    *,
    now: datetime | None = None,
    free_bytes: Callable[[], int] | None = None,
) -> list[Doomed]:
    """Everything the policy removes now, oldest first within each rule; nothing busy."""
    now = now or utcnow()
    policy = cfg.retention
    storage_root, results_root = Path(cfg.storage.root), Path(cfg.outputs.root)
    out: list[Doomed] = []
    seen: set[tuple[str, int]] = set()

    def add(rows: Iterable[Any], entity: str, root: Path, rule: Rule) -> None:
        for pk, series_pk, path, size, at in rows:
            if (entity, pk) in seen:
                continue
            seen.add((entity, pk))
            out.append(Doomed(entity, pk, series_pk, root / path, int(size or 0), at, rule))

    inst_cols = (Instance.id, Instance.series_pk, Instance.path, Instance.size, Instance.received_at)
    idle_instance = ~_series_busy(Instance.series_pk)
    idle_result = ~_series_busy(Result.series_pk)
    with db.sessionmaker() as s:
        if policy.superseded_days is not None:
            cutoff = now - timedelta(days=policy.superseded_days)
            add(s.execute(select(*inst_cols).where(Instance.superseded.is_(True), Instance.received_at <= cutoff,
                                                  idle_instance).order_by(Instance.received_at, Instance.id)),
                "instance", storage_root, Rule.SUPERSEDED_INSTANCE)  # fmt: skip
            newer = aliased(Result)
            add(s.execute(
                select(Result.id, Result.series_pk, Result.path, _size_zero(), Result.created_at)
                .where(Result.purged_at.is_(None), Result.created_at <= cutoff, idle_result,
                       exists().where(newer.supersedes_pk == Result.id))
                .order_by(Result.created_at, Result.id)
            ), "result", results_root, Rule.SUPERSEDED_RESULT)  # fmt: skip
        if policy.instances_days is not None:
            cutoff = now - timedelta(days=policy.instances_days)
            add(s.execute(select(*inst_cols).where(Instance.received_at <= cutoff, idle_instance)
                          .order_by(Instance.received_at, Instance.id)),
                "instance", storage_root, Rule.INSTANCE_AGE)  # fmt: skip
        if policy.results_days is not None:
            cutoff = now - timedelta(days=policy.results_days)
            add(s.execute(
                select(Result.id, Result.series_pk, Result.path, _size_zero(), Result.created_at)
                .where(Result.purged_at.is_(None), Result.created_at <= cutoff, idle_result)
                .order_by(Result.created_at, Result.id)
            ), "result", results_root, Rule.RESULT_AGE)  # fmt: skip
        if policy.min_free_mb is not None:
            free = free_bytes() if free_bytes is not None else _free_bytes(storage_root)
            planned = sum(d.size for d in out if d.entity == "instance")
            need = int(policy.min_free_mb * 1024 * 1024) - free - planned
            if need > 0:
                extra = []
                for row in s.execute(select(*inst_cols).where(idle_instance)
                                     .order_by(Instance.received_at, Instance.id)):  # fmt: skip
                    if ("instance", row[0]) in seen:
                        continue
                    extra.append(row)
                    need -= int(row[3] or 0)
                    if need <= 0:
                        break
                add(extra, "instance", storage_root, Rule.FREE_SPACE)
    # A result's size is its file's: the registry does not keep it.
    return [d if d.entity == "instance" else _with_file_size(d) for d in out]


def _size_zero() -> Any:
    return literal(0)


def _with_file_size(d: Doomed) -> Doomed:
    try:
        size = d.path.stat().st_size
    except OSError:
        size = 0
    return Doomed(d.entity, d.pk, d.series_pk, d.path, size, d.at, d.rule)


def _free_bytes(root: Path) -> int:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _still_removable(s: Session, db: Database, d: Doomed) -> bool:
    """Re-check under the series row lock (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
    serialises writers): the receiver, a completer or an operator action may have made it
    busy since the plan was made."""
    lock = select(Series.id).where(Series.id == d.series_pk)
    if not is_sqlite(db.engine):
        lock = lock.with_for_update()
    s.execute(lock)
    return not s.scalar(select(_series_busy(d.series_pk)))


def apply(db: Database, items: Iterable[Doomed], actor: str, *, now: datetime | None = None) -> Report:
    """Remove ``items`` (from :func:`plan`): one transaction each, row before file."""
    now = now or utcnow()
    report = Report()
    for d in items:
        with db.session() as s:
            if not _still_removable(s, db, d):
                report.kept_busy.append(d)
                continue
            if d.entity == "instance":
                inst = s.get(Instance, d.pk)
                if inst is None:
                    continue
                detail = {"sop_instance_uid_digest": _digest(inst.sop_instance_uid), "version": inst.version}
                s.delete(inst)
            else:
                result = s.get(Result, d.pk)
                if result is None or result.purged_at is not None:
                    continue
                result.purged_at = now
                detail = {"sop_instance_uid": result.sop_instance_uid, "result_kind": result.kind}
            record_event(
                s, d.entity, d.pk, "purged",
                rule=d.rule.value, bytes=d.size, series=d.series_pk, actor=actor, **detail,
            )  # fmt: skip
        report.removed.append(d)
        try:
            d.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s %d: registry updated but the file stays: %s", d.entity, d.pk, exc.strerror)
            report.orphaned_files.append(str(d.path))
    if report.removed:
        log.info(
            "retention by %s: %d removed (%.1f MB), %d left because busy",
            actor, len(report.removed), report.bytes / 1e6, len(report.kept_busy),
        )  # fmt: skip
    return report


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:16]
