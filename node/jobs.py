"""Jobs: one row per (series, generation) to analyse, claimed by workers under a lease.

Life of a job (``node.domain.JobState``)::

    queued ──claim──▶ running ──finish──▶ done | skipped | failed
      ▲                  │
      └── fail (attempts left, after a backoff) / lease expired (sweeper) / released (shutdown)

Why it is built this way:

* **Claims are atomic in the database**, never in Python: two workers (threads or processes,
  on one host or several) must never run the same job. On PostgreSQL the candidate row is picked
  with ``SELECT … FOR UPDATE SKIP LOCKED`` inside the claiming ``UPDATE`` so concurrent claimers
  take different rows without waiting on each other; on SQLite the same single conditional
  ``UPDATE … RETURNING`` runs under the ``BEGIN IMMEDIATE`` that ``node.registry.db`` issues,
  which serialises writers.
* **Ownership is the row, not the clock.** A job belongs to the worker named in ``worker_id``
  for the attempt number in ``attempts`` while it is ``running``. The lease (``lease_until``)
  only says when the sweeper may take it away; every later write by the worker (heartbeat,
  finish, fail, release) is a conditional update on (state, worker, attempt), so a worker that
  lost its lease can never overwrite the result of the worker that took over.
* **Every transition writes an ``Event`` in the same transaction** (the audit trail can never
  disagree with the state).
* Times are naive UTC (see ``node.registry.models.utcnow``) computed in Python, so both
  back-ends compare like with like; ``now`` parameters exist so tests can move the clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from node.config import JobsConfig
from node.domain import JobState
from node.registry import Database, Job, record_event, utcnow
from node.registry.db import is_sqlite

log = logging.getLogger(__name__)

ENTITY = "job"
REASON_MAX_CHARS = 2000  # a traceback-sized reason is noise in the registry and in `status`

_FINAL_STATES = frozenset({JobState.DONE, JobState.SKIPPED, JobState.FAILED})


class JobEvent(StrEnum):
    """``Event.kind`` values written for jobs (the audit trail's vocabulary)."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    RETRY = "retry"  # attempt failed, queued again after a backoff
    LEASE_EXPIRED = "lease_expired"  # sweeper took it from a silent worker, queued again
    RELEASED = "released"  # worker shut down before finishing; attempt not counted
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    LEASE_LOST = "lease_lost"  # a worker tried to write to a job it no longer owns (ignored)
    SUPERSEDED = "superseded"  # a newer generation was queued before this one ran


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts: ``min(backoff_s * 2**(attempt-1), backoff_max_s)``."""

    backoff_s: float = 10.0
    backoff_max_s: float = 600.0

    @classmethod
    def from_config(cls, jobs: JobsConfig) -> RetryPolicy:
        return cls(backoff_s=jobs.retry_backoff_s, backoff_max_s=jobs.retry_backoff_max_s)

    def delay_s(self, attempts: int) -> float:
        """Delay before the next attempt after ``attempts`` (≥ 1) failed ones."""
        if attempts < 1:
            return 0.0
        # Cap the exponent: 2**1000 is a valid int but a float overflow.
        return min(self.backoff_s * 2.0 ** min(attempts - 1, 60), self.backoff_max_s)


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker holds after a successful claim; pass ``attempt`` back on every write."""

    job_pk: int
    series_pk: int
    generation: int
    attempt: int  # 1-based number of this attempt (the job's ``attempts`` after the claim)
    max_attempts: int
    priority: int
    worker_id: str
    lease_until: datetime


def naive_utc(now: datetime | None) -> datetime:
    """``now`` as naive UTC (the registry's convention); the current time when ``None``."""
    if now is None:
        return utcnow()
    if now.tzinfo is not None:
        return now.astimezone(UTC).replace(tzinfo=None)
    return now


def _clip(reason: str | None) -> str | None:
    if reason is None:
        return None
    return reason if len(reason) <= REASON_MAX_CHARS else reason[: REASON_MAX_CHARS - 1] + "…"


def enqueue_job(
    session: Session,
    series_pk: int,
    generation: int,
    *,
    priority: int = 0,
    max_attempts: int = 3,
    now: datetime | None = None,
) -> Job:
    """Add a queued job inside the caller's transaction (so it commits with the series change).

    The ``uq_job_generation`` constraint makes a second job for the same generation an
    ``IntegrityError``; callers that may race decide what that means for them.
    """
    now = naive_utc(now)
    job = Job(
        series_pk=series_pk,
        generation=generation,
        state=JobState.QUEUED.value,
        priority=priority,
        attempts=0,
        max_attempts=max_attempts,
        not_before=now,
        created_at=now,
    )
    session.add(job)
    session.flush()  # assigns job.id for the event
    record_event(
        session,
        ENTITY,
        job.id,
        JobEvent.QUEUED.value,
        series=series_pk,
        generation=generation,
        priority=priority,
    )
    return job


def claim_job(db: Database, worker_id: str, lease_s: float, now: datetime | None = None) -> ClaimedJob | None:
    """Atomically take the most urgent runnable job, or return ``None`` when there is none.

    Runnable: ``queued`` and ``not_before <= now``. Order: priority (high first), then age.
    """
    now = naive_utc(now)
    lease_until = now + timedelta(seconds=lease_s)
    candidate = (
        select(Job.id)
        .where(Job.state == JobState.QUEUED.value, Job.not_before <= now)
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
    )
    if not is_sqlite(db.engine):
        # Locked rows belong to another claimer's transaction: skip, don't queue behind them.
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(Job)
        # The state test is repeated outside the sub-select: belt and braces should a future
        # dialect evaluate the sub-select without the lock.
        .where(Job.id == candidate.scalar_subquery(), Job.state == JobState.QUEUED.value)
        .values(
            state=JobState.RUNNING.value,
            worker_id=worker_id,
            attempts=Job.attempts + 1,
            lease_until=lease_until,
            heartbeat_at=now,
            started_at=now,
        )
        .returning(Job.id, Job.series_pk, Job.generation, Job.attempts, Job.max_attempts, Job.priority)
        .execution_options(synchronize_session=False)
    )
    with db.session() as s:
        row = s.execute(stmt).one_or_none()
        if row is None:
            return None
        record_event(s, ENTITY, row.id, JobEvent.CLAIMED.value, worker=worker_id, attempt=row.attempts)
    # a first attempt is routine (the job's one INFO line is its outcome); a retry is news
    log.log(
        logging.INFO if row.attempts > 1 else logging.DEBUG,
        "job %d claimed by %s (attempt %d/%d)", row.id, worker_id, row.attempts, row.max_attempts,
    )
    return ClaimedJob(
        job_pk=row.id,
        series_pk=row.series_pk,
        generation=row.generation,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        priority=row.priority,
        worker_id=worker_id,
        lease_until=lease_until,
    )


def heartbeat(
    db: Database,
    job_pk: int,
    worker_id: str,
    lease_s: float,
    *,
    attempt: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Extend the lease; ``False`` means the job is no longer ours (swept, or finished).

    A lease that has expired but not yet been swept is still renewed: nobody else can hold the
    job until the sweeper re-queues it, so the work done so far is not thrown away.
    """
    now = naive_utc(now)
    conditions = [Job.id == job_pk, Job.state == JobState.RUNNING.value, Job.worker_id == worker_id]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    stmt = (
        update(Job)
        .where(*conditions)
        .values(lease_until=now + timedelta(seconds=lease_s), heartbeat_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    with db.session() as s:
        renewed = s.execute(stmt).scalar_one_or_none() is not None
    if not renewed:
        log.warning("job %d: heartbeat refused, %s no longer holds the lease", job_pk, worker_id)
    return renewed


def _lock_owned(
    s: Session, job_pk: int, worker_id: str, attempt: int | None, action: str, now: datetime
) -> Job | None:
    """The job row, locked, if ``worker_id`` (at ``attempt``) still owns it; else log + audit."""
    job = s.execute(select(Job).where(Job.id == job_pk).with_for_update()).scalar_one_or_none()
    if job is None:
        raise LookupError(f"job_pk: no job with id {job_pk}")
    owned = (
        job.state == JobState.RUNNING.value
        and job.worker_id == worker_id
        and (attempt is None or job.attempts == attempt)
    )
    if owned:
        return job
    log.warning(
        "job %d: %s by %s ignored, lease lost (job is %s, held by %s)",
        job_pk, action, worker_id, job.state, job.worker_id,
    )  # fmt: skip
    record_event(
        s, ENTITY, job_pk, JobEvent.LEASE_LOST.value,
        worker=worker_id, attempt=attempt, action=action, state=job.state, at=now.isoformat(),
    )  # fmt: skip
    return None


def finish_job(
    db: Database,
    job_pk: int,
    worker_id: str,
    state: JobState | str,
    reason: str | None = None,
    summary: dict[str, Any] | None = None,
    *,
    attempt: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Record the job's final state (done, skipped, or failed for good); ``False`` if not ours."""
    try:
        final = JobState(state)
    except ValueError:
        raise ValueError(f"state: {state!r} is not a job state") from None
    if final not in _FINAL_STATES:
        raise ValueError(f"state: must be done, skipped or failed, not {final.value!r}")
    now = naive_utc(now)
    with db.session() as s:
        job = _lock_owned(s, job_pk, worker_id, attempt, f"finish({final.value})", now)
        if job is None:
            return False
        job.state = final.value
        job.reason = _clip(reason)
        job.summary = summary
        job.finished_at = now
        job.lease_until = None
        record_event(
            s, ENTITY, job_pk, final.value, worker=worker_id, attempt=job.attempts, reason=job.reason
        )
    log.info("job %d %s by %s", job_pk, final.value, worker_id)
    return True


def _retry_or_fail(
    s: Session, job: Job, reason: str, policy: RetryPolicy, now: datetime, retry_kind: JobEvent
) -> JobState:
    """Queue ``job`` again after the backoff while attempts remain, else fail it for good."""
    previous_worker = job.worker_id
    job.reason = _clip(reason)
    job.lease_until = None
    if job.attempts < job.max_attempts:
        delay_s = policy.delay_s(job.attempts)
        job.state = JobState.QUEUED.value
        job.worker_id = None
        job.not_before = now + timedelta(seconds=delay_s)
        record_event(
            s, ENTITY, job.id, retry_kind.value,
            worker=previous_worker, attempt=job.attempts, reason=job.reason, delay_s=delay_s,
        )  # fmt: skip
        return JobState.QUEUED
    job.state = JobState.FAILED.value
    job.finished_at = now
    record_event(
        s,
        ENTITY,
        job.id,
        JobEvent.FAILED.value,
        worker=previous_worker,
        attempt=job.attempts,
        reason=job.reason,
    )
    return JobState.FAILED


def fail_job(
    db: Database,
    job_pk: int,
    worker_id: str,
    reason: str,
    *,
    attempt: int | None = None,
    policy: RetryPolicy | None = None,
    now: datetime | None = None,
) -> JobState | None:
    """An attempt failed: back to ``queued`` after a backoff while attempts remain, else ``failed``.

    Returns the new state, or ``None`` if the job was no longer ours (nothing written but an
    audit event).
    """
    now = naive_utc(now)
    policy = policy or RetryPolicy()
    with db.session() as s:
        job = _lock_owned(s, job_pk, worker_id, attempt, "fail", now)
        if job is None:
            return None
        new_state = _retry_or_fail(s, job, reason, policy, now, JobEvent.RETRY)
        attempts, max_attempts = job.attempts, job.max_attempts
    log.warning("job %d attempt %d/%d failed, now %s", job_pk, attempts, max_attempts, new_state.value)
    return new_state


def release_job(
    db: Database,
    job_pk: int,
    worker_id: str,
    reason: str = "worker shutting down",
    *,
    attempt: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Hand an unfinished job back at once (graceful shutdown); the attempt does not count.

    The pipeline is idempotent, so whatever the interrupted attempt wrote is simply redone.
    """
    now = naive_utc(now)
    with db.session() as s:
        job = _lock_owned(s, job_pk, worker_id, attempt, "release", now)
        if job is None:
            return False
        job.state = JobState.QUEUED.value
        job.attempts = max(job.attempts - 1, 0)
        job.worker_id = None
        job.lease_until = None
        job.not_before = now
        record_event(s, ENTITY, job_pk, JobEvent.RELEASED.value, worker=worker_id, reason=_clip(reason))
    log.info("job %d released by %s", job_pk, worker_id)
    return True


def sweep_stale(db: Database, now: datetime | None = None, *, policy: RetryPolicy | None = None) -> int:
    """Take ``running`` jobs whose lease has passed away from their (crashed or hung) workers.

    Each counts as a failed attempt: queued again after the backoff, or ``failed`` when no
    attempts remain (a job that kills every worker that touches it must not loop forever).
    Returns how many jobs were swept. Safe to run from several processes at once.
    """
    now = naive_utc(now)
    policy = policy or RetryPolicy()
    query = select(Job).where(Job.state == JobState.RUNNING.value, Job.lease_until < now).order_by(Job.id)
    if not is_sqlite(db.engine):
        # A row locked by a heartbeat or another sweeper is being dealt with: leave it.
        query = query.with_for_update(skip_locked=True)
    swept: list[tuple[int, JobState]] = []
    with db.session() as s:
        for job in s.scalars(query).all():
            reason = (
                f"lease expired at {job.lease_until:%Y-%m-%dT%H:%M:%S}Z (worker {job.worker_id} went silent)"
            )
            swept.append((job.id, _retry_or_fail(s, job, reason, policy, now, JobEvent.LEASE_EXPIRED)))
    for job_pk, state in swept:
        log.warning("job %d: lease expired, now %s", job_pk, state.value)
    return len(swept)


def supersede_queued(
    session: Session, series_pk: int, generation: int, now: datetime | None = None
) -> list[int]:
    """Skip older generations of a series that have not started yet (inside the caller's
    transaction): their result would be superseded by ``generation`` before anyone reads it."""
    now = naive_utc(now)
    query = select(Job).where(
        Job.series_pk == series_pk, Job.generation < generation, Job.state == JobState.QUEUED.value
    )
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    skipped = []
    for job in session.scalars(query).all():
        job.state = JobState.SKIPPED.value
        job.reason = f"superseded by generation {generation} before it ran"
        job.finished_at = now
        record_event(session, ENTITY, job.id, JobEvent.SUPERSEDED.value, generation=generation)
        skipped.append(job.id)
    return skipped


def job_counts(db: Database) -> dict[str, int]:
    """Jobs per state (every state present, zero included) for ``hipnode status``."""
    counts = {state.value: 0 for state in JobState}
    with db.session() as s:
        for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state)).all():
            counts[str(state)] = int(n)
    return counts


def queue_depth(db: Database, now: datetime | None = None, *, runnable_only: bool = False) -> int:
    """Queued jobs (``runnable_only``: only those whose backoff has passed)."""
    query = select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED.value)
    if runnable_only:
        query = query.where(Job.not_before <= naive_utc(now))
    with db.session() as s:
        return int(s.execute(query).scalar_one())
