"""Series completion: a series is complete once no instance has arrived for a quiet period.

DICOM has no "end of series" message, so, like mercure, we call a series complete when the
sender has been silent for ``quiet_period_s`` (per calling AE). The receiver keeps
``Series.complete_after`` up to date on every instance and re-opens (``reopened``) a complete
series when a late instance arrives; this module does the other half:

* ``complete_due_series`` moves due ``open``/``reopened`` series to ``complete``, bumps their
  ``generation`` and queues exactly one job for that generation, all in one transaction per
  series. A late instance therefore just produces the next generation; the pipeline marks the
  older result superseded, and an older generation that has not even started is skipped.
* ``start_series_scheduler`` runs completion and the stale-job sweeper on an APScheduler
  background thread.

Both the receiver and the workers may run completion at the same time: on PostgreSQL each
series row is locked ``FOR UPDATE SKIP LOCKED`` and re-checked before it changes, on SQLite
the ``BEGIN IMMEDIATE`` of ``node.registry.db`` serialises the callers; the ``uq_job_generation``
constraint is the last line of defence against a second job for one generation.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from node import wake
from node.config import Config
from node.domain import SeriesState
from node.jobs import RetryPolicy, enqueue_job, naive_utc, supersede_queued, sweep_stale
from node.registry import Database, Job, Series, record_event
from node.registry.db import is_sqlite

log = logging.getLogger(__name__)

ENTITY = "series"
COMPLETION_JOB_ID = "series-completion"
SWEEPER_JOB_ID = "job-sweeper"

_COMPLETABLE = (SeriesState.OPEN.value, SeriesState.REOPENED.value)


def complete_due_series(db: Database, cfg: Config, now: datetime | None = None) -> list[int]:
    """Complete every series whose quiet period has ended; return the ids of the jobs queued.

    One transaction per series keeps each lock short (the receiver waits on the same rows and
    a modality waits on the receiver), and one bad row cannot hold the others back.
    """
    now = naive_utc(now)
    with db.session() as s:
        due = (
            s.execute(
                select(Series.id)
                .where(Series.state.in_(_COMPLETABLE), Series.complete_after <= now)
                .order_by(Series.complete_after, Series.id)
            )
            .scalars()
            .all()
        )
    queued: list[int] = []
    for series_pk in due:
        job_pk = _complete_one(db, cfg, series_pk, now)
        if job_pk is not None:
            queued.append(job_pk)
            wake.notify(wake.JOBS)
    return queued


def _complete_one(db: Database, cfg: Config, series_pk: int, now: datetime) -> int | None:
    """Complete one series if it is still due; ``None`` if somebody else did, or it was
    re-opened in between."""
    query = select(Series).where(
        Series.id == series_pk, Series.state.in_(_COMPLETABLE), Series.complete_after <= now
    )
    if not is_sqlite(db.engine):
        # Another completer holds it: it will finish the job; the receiver holds it: an
        # instance is arriving and the quiet period is about to move. Either way, not ours now.
        query = query.with_for_update(skip_locked=True)
    with db.session() as s:
        series = s.execute(query).scalar_one_or_none()
        if series is None:
            return None
        previous = series.state
        series.state = SeriesState.COMPLETE.value
        series.generation += 1
        series.completed_at = now
        generation = series.generation
        ae = cfg.calling_ae(series.calling_ae) if series.calling_ae.strip() else None
        priority = ae.priority if ae is not None else 0
        try:
            with s.begin_nested():
                job_pk: int | None = enqueue_job(
                    s, series_pk, generation, priority=priority, max_attempts=cfg.jobs.max_attempts, now=now
                ).id
        except IntegrityError:
            # Only possible if the registry was edited by hand (generation rewound): the job for
            # this generation exists already, which is exactly the state we want.
            existing = s.execute(
                select(Job.id).where(Job.series_pk == series_pk, Job.generation == generation)
            ).scalar_one_or_none()
            log.warning("series %d generation %d already had job %s", series_pk, generation, existing)
            job_pk = None
        superseded = supersede_queued(s, series_pk, generation, now) if generation > 1 else []
        record_event(
            s,
            ENTITY,
            series_pk,
            SeriesState.COMPLETE.value,
            previous_state=previous,
            generation=generation,
            job=job_pk,
            superseded_jobs=superseded or None,
        )
    log.info("series %d complete (generation %d), job %s queued", series_pk, generation, job_pk)
    return job_pk


def _completion_tick(db: Database, cfg: Config) -> None:
    try:
        complete_due_series(db, cfg)
    except Exception:
        # Logged and retried on the next tick: a database hiccup must not kill the scheduler.
        log.exception("series completion run failed")


def _sweep_tick(db: Database, policy: RetryPolicy) -> None:
    try:
        sweep_stale(db, policy=policy)
    except Exception:
        log.exception("stale job sweep failed")


def start_series_scheduler(
    db: Database, cfg: Config, *, complete: bool = True, sweep: bool = True
) -> BackgroundScheduler:
    """Start (and return) a background scheduler running completion and the sweeper.

    The ``job_defaults`` are spelled out because APScheduler's own (1 s misfire grace) silently
    drop a run that starts late, e.g. after the host was busy:

    * ``misfire_grace_time=None``: a late run still runs (late is better than never);
    * ``coalesce=True``: runs missed while busy collapse into one, no catch-up storm;
    * ``max_instances=1``: a slow run is never overlapped by the next one.

    Call ``shutdown(wait=True)`` on the result to stop it.
    """
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=2)},
        job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        timezone=UTC,
    )
    start = datetime.now(UTC)
    if complete:
        scheduler.add_job(
            _completion_tick,
            "interval",
            args=(db, cfg),
            seconds=cfg.series.check_interval_s,
            id=COMPLETION_JOB_ID,
            name="series completion",
            next_run_time=start,
        )
    if sweep:
        scheduler.add_job(
            _sweep_tick,
            "interval",
            args=(db, RetryPolicy.from_config(cfg.jobs)),
            seconds=cfg.jobs.sweep_interval_s,
            id=SWEEPER_JOB_ID,
            name="stale job sweeper",
            next_run_time=start,
        )
    scheduler.start()
    log.info(
        "scheduler started: completion every %.1fs, sweeper every %.1fs",
        cfg.series.check_interval_s,
        cfg.jobs.sweep_interval_s,
    )
    return scheduler
