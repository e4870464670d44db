"""Operator actions: re-queue a job, re-send a delivery, re-process a series or a date range,
pause / resume a destination.

One module for both doors (``hipnode requeue|resend|reprocess|pause|resume`` and the status
page's forms), so the page can never do something the CLI would refuse, and every action is
written the same way: the change and its event (``entity`` of the thing acted on, ``actor`` =
who asked, ``cli:<user>`` or ``web:<login>``) in one transaction. Each function checks the state
it changes under the row it changes, so an action that raced a worker is refused with a reason
rather than overwriting the worker's outcome.

A refused action raises :class:`ActionRefused` with a sentence an operator can act on; the CLI
prints it and exits 1, the page shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, func, select

from node import wake
from node.config import Config
from node.domain import DeliveryState, JobState, SeriesState
from node.jobs import enqueue_job, naive_utc, supersede_queued
from node.registry import Database, Delivery, DestinationState, Job, Result, Series, record_event
from node.registry.db import is_sqlite

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Delivery states a re-send is meaningful for (pending / retrying ones are already on their way).
RESENDABLE = frozenset({DeliveryState.SENT.value, DeliveryState.VISIBLE.value, DeliveryState.FAILED.value})
#: Job states nothing is happening to any more; a re-queue of queued or running would race.
REQUEUEABLE = frozenset({JobState.FAILED.value, JobState.SKIPPED.value})


class ActionRefused(Exception):
    """The action cannot be done as asked; the message says why, for the operator."""


@dataclass
class ActionOutcome:
    """What an action did: one line per thing changed, and what it left alone (with why)."""

    done: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.done + [f"not done: {r}" for r in self.refused]


def _locked(db: Database, stmt: Select[_T]) -> Select[_T]:
    """The row the action changes, locked on PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` already
    serialises writers), so a worker or dispatcher changing it at the same moment waits."""
    return stmt if is_sqlite(db.engine) else stmt.with_for_update()


# --------------------------------------------------------------------------- jobs


def requeue_job(db: Database, job_pk: int, actor: str, *, now: datetime | None = None) -> str:
    """Queue a failed (or skipped) job again with a fresh set of attempts.

    Only the newest generation of its series: an older one would be overtaken by the newer
    generation's result and end skipped again (``hipnode reprocess`` makes a new generation).
    """
    now = naive_utc(now)
    with db.session() as s:
        job = s.execute(_locked(db, select(Job).where(Job.id == job_pk))).scalar_one_or_none()
        if job is None:
            raise ActionRefused(f"job {job_pk}: no such job")
        if job.state not in REQUEUEABLE:
            raise ActionRefused(f"job {job_pk} is {job.state}: only a failed or skipped job can be re-queued")
        newest = s.scalar(select(func.max(Job.generation)).where(Job.series_pk == job.series_pk))
        if newest is not None and newest > job.generation:
            raise ActionRefused(
                f"job {job_pk} analysed generation {job.generation} of its series, generation {newest} "
                "is newer: re-process the series instead"
            )
        previous = job.state
        job.state = JobState.QUEUED.value
        job.attempts = 0
        job.not_before = now
        job.worker_id = None
        job.lease_until = None
        job.finished_at = None
        job.reason = None
        record_event(s, "job", job.id, "requeued", actor=actor, previous_state=previous)
    wake.notify(wake.JOBS)
    log.info("job %d re-queued by %s (was %s)", job_pk, actor, previous)
    return f"job {job_pk} re-queued (was {previous})"


def requeue_failed(db: Database, actor: str, *, now: datetime | None = None) -> ActionOutcome:
    """Re-queue every failed job that is the newest generation of its series."""
    with db.session() as s:
        pks = list(s.scalars(select(Job.id).where(Job.state == JobState.FAILED.value).order_by(Job.id)))
    out = ActionOutcome()
    for pk in pks:
        try:
            out.done.append(requeue_job(db, pk, actor, now=now))
        except ActionRefused as exc:
            out.refused.append(str(exc))
    return out


# --------------------------------------------------------------------------- deliveries


def resend_delivery(db: Database, delivery_pk: int, actor: str, *, now: datetime | None = None) -> str:
    """Send a result to its destination again (a PACS lost it, or a failure was fixed).

    The delivery goes back to ``pending`` with its attempts reset; the dispatcher sends the
    same file (same SOP Instance UID), which a PACS treats as the same object. A result whose
    file retention has removed cannot be re-sent.
    """
    now = naive_utc(now)
    with db.session() as s:
        d = s.execute(_locked(db, select(Delivery).where(Delivery.id == delivery_pk))).scalar_one_or_none()
        if d is None:
            raise ActionRefused(f"delivery {delivery_pk}: no such delivery")
        if d.state not in RESENDABLE:
            raise ActionRefused(f"delivery {delivery_pk} is {d.state}: it is already on its way")
        purged = s.scalar(select(Result.purged_at).where(Result.id == d.result_pk))
        if purged is not None:
            raise ActionRefused(f"delivery {delivery_pk}: its result file was removed by retention on {purged:%Y-%m-%d}")
        previous = d.state
        d.state = DeliveryState.PENDING.value
        d.attempts = 0
        d.next_attempt_at = now
        d.claimed_by = None
        d.claimed_until = None
        d.last_error = None
        destination = d.destination
        record_event(
            s, "delivery", d.id, "resend", actor=actor, previous_state=previous, destination=destination
        )
    wake.notify(wake.DELIVERIES)
    log.info("delivery %d to %s queued again by %s (was %s)", delivery_pk, destination, actor, previous)
    return f"delivery {delivery_pk} to {destination} queued again (was {previous})"


def resend_failed(
    db: Database, actor: str, *, destination: str | None = None, now: datetime | None = None
) -> ActionOutcome:
    """Re-send every failed delivery (of one destination when given)."""
    q = select(Delivery.id).where(Delivery.state == DeliveryState.FAILED.value).order_by(Delivery.id)
    if destination is not None:
        q = q.where(Delivery.destination == destination)
    with db.session() as s:
        pks = list(s.scalars(q))
    out = ActionOutcome()
    for pk in pks:
        try:
            out.done.append(resend_delivery(db, pk, actor, now=now))
        except ActionRefused as exc:
            out.refused.append(str(exc))
    return out


# --------------------------------------------------------------------------- series


def reprocess_series(db: Database, cfg: Config, series_uid: str, actor: str, *, now: datetime | None = None) -> str:
    """Analyse a complete series again as a new generation (after a model upgrade, say).

    The new generation's SR references the previous one as its predecessor; its UIDs derive
    from the sources and the model versions, so with the same models and images it is the same
    SR again (nothing new is sent), and after an upgrade it is an amended SR. A queued older
    generation is skipped as superseded; a running one is overtaken (``node.pipeline``). A
    series still receiving (open, reopened) completes on its own and is refused.
    """
    now = naive_utc(now)
    with db.session() as s:
        series = s.execute(_locked(db, select(Series).where(Series.series_uid == series_uid))).scalar_one_or_none()
        if series is None:
            raise ActionRefused(f"series {series_uid}: not in the registry")
        if series.state != SeriesState.COMPLETE.value:
            raise ActionRefused(
                f"series {series.id} is {series.state}: it will be analysed when its quiet period ends"
            )
        series.generation += 1
        generation = series.generation
        ae = cfg.calling_ae(series.calling_ae) if series.calling_ae.strip() else None
        job = enqueue_job(
            s,
            series.id,
            generation,
            priority=ae.priority if ae is not None else 0,
            max_attempts=cfg.jobs.max_attempts,
            now=now,
        )
        superseded = supersede_queued(s, series.id, generation, now)
        record_event(
            s, "series", series.id, "reprocess",
            actor=actor, generation=generation, job=job.id, superseded_jobs=superseded or None,
        )  # fmt: skip
        series_pk, job_pk = series.id, job.id
    wake.notify(wake.JOBS)
    log.info("series %d: re-process as generation %d (job %d) by %s", series_pk, generation, job_pk, actor)
    return f"series {series_pk} queued as generation {generation} (job {job_pk})"


def reprocess_range(
    db: Database, cfg: Config, since: datetime, until: datetime | None, actor: str, *, now: datetime | None = None
) -> ActionOutcome:
    """Re-process every complete series whose first image arrived in ``[since, until)``.

    By arrival, not by study date: after a model upgrade an operator re-runs "what we analysed
    since the old model went in", which is a time on this node's clock.
    """
    q = select(Series.series_uid).where(Series.first_received_at >= naive_utc(since)).order_by(Series.id)
    if until is not None:
        q = q.where(Series.first_received_at < naive_utc(until))
    with db.session() as s:
        uids = list(s.scalars(q))
    out = ActionOutcome()
    for uid in uids:
        try:
            out.done.append(reprocess_series(db, cfg, uid, actor, now=now))
        except ActionRefused as exc:
            out.refused.append(str(exc))
    return out


# --------------------------------------------------------------------------- destinations


def _check_destination(cfg: Config, name: str) -> None:
    if name not in {d.name for d in cfg.destinations}:
        known = ", ".join(d.name for d in cfg.destinations) or "none"
        raise ActionRefused(f"destination {name!r} is not configured (configured: {known})")


def set_paused(
    db: Database, cfg: Config, name: str, paused: bool, actor: str, *, reason: str | None = None,
    now: datetime | None = None,
) -> str:
    """Pause (or resume) sending to a destination, for a PACS in maintenance.

    Results keep being composed and queued for it; the dispatcher leaves its deliveries due
    (``node.dispatch.Dispatcher._claim``) until it is resumed, and retention keeps them.
    """
    _check_destination(cfg, name)
    now = naive_utc(now)
    with db.session() as s:
        row = s.execute(_locked(db, select(DestinationState).where(DestinationState.name == name))).scalar_one_or_none()
        if row is None:
            row = DestinationState(name=name, paused=False, changed_at=now, changed_by=actor)
            s.add(row)
        if row.paused == paused:
            return f"destination {name} is already {'paused' if paused else 'active'}"
        row.paused = paused
        row.changed_at = now
        row.changed_by = actor
        row.reason = reason if paused else None
        record_event(
            s, "destination", None, "paused" if paused else "resumed",
            destination=name, actor=actor, reason=reason,
        )  # fmt: skip
    if not paused:
        wake.notify(wake.DELIVERIES)
    log.info("destination %s %s by %s", name, "paused" if paused else "resumed", actor)
    return f"destination {name} {'paused' if paused else 'resumed'}"


def paused_destinations(db: Database) -> dict[str, DestinationState]:
    """Paused destinations by name (with who paused them, when and why)."""
    with db.sessionmaker() as s:
        rows: Sequence[DestinationState] = s.scalars(
            select(DestinationState).where(DestinationState.paused.is_(True))
        ).all()
        s.expunge_all()
    return {r.name: r for r in rows}
