"""Series completion: a series is complete once no instance has arrived for a quiet period.

DICOM has no "end of series" message, so, like mercure, we call a series complete when the
sender has been silent for ``quiet_period_s`` (per calling AE). The receiver keeps
``Series.complete_after`` up to date on every instance and re-opens (``reopened``) a complete
series when a late instance arrives; this module does the other half:

* ``complete_due_series`` moves due ``open``/``reopened`` series to ``complete``, bumps their
  ``generation`` and queues exactly one job for that generation, all in one transaction per
  series. A late instance therefore just produces the next generation; the pipeline marks the
  older result superseded, and an older generation that has not even started is skipped.
* Two ways to close a series before its quiet period ends, both opt-in per calling AE:

  - ``expected_views``: once every view the AE's studies are expected to contain (e.g. AP
    pelvis + lateral hip) has arrived in a study, across its series, the study's open series
    from that AE complete on this tick. Views are hints from each instance's header
    (``node.viewhint``), read from the stored file once per instance and cached in memory,
    because the receiver never runs a model and the registry keeps no view column.
  - ``adaptive_quiet``: the quiet period becomes clamp(3 x typical gap, ``series.adaptive_min_s``,
    the configured quiet period), the typical gap being an EWMA of the gaps between consecutive
    instances of one series over the AE's recent series. It is measured from the registry's
    ``instance.received_at`` on each tick, so the receiver and the workers agree, a restart
    forgets nothing, and no extra table or process state is needed. An AE whose series are
    single images shows no gaps and keeps its configured quiet period.

  A series held open longer than its AE's quiet period on purpose (the importer records with a
  week) is never closed early. An instance that arrives after an early close re-opens the series
  exactly as a late one does after the quiet period: it gets the next generation.
* ``start_series_scheduler`` runs completion and the stale-job sweeper on an APScheduler
  background thread.

Both the receiver and the workers may run completion at the same time: on PostgreSQL each
series row is locked ``FOR UPDATE SKIP LOCKED`` and re-checked before it changes, on SQLite
the ``BEGIN IMMEDIATE`` of ``node.registry.db`` serialises the callers; the ``uq_job_generation``
constraint is the last line of defence against a second job for one generation.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import ColumnElement, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node import wake
from node.config import CallingAE, Config
from node.domain import SeriesState
from node.jobs import RetryPolicy, enqueue_job, naive_utc, supersede_queued, sweep_stale
from node.registry import Database, Instance, Job, Series, record_event
from node.registry.db import is_sqlite
from node.viewhint import ViewFields, classify, compile_patterns, read_fields

log = logging.getLogger(__name__)

ENTITY = "series"
COMPLETION_JOB_ID = "series-completion"
SWEEPER_JOB_ID = "job-sweeper"

_COMPLETABLE = (SeriesState.OPEN.value, SeriesState.REOPENED.value)

#: adaptive quiet period = this many typical gaps between instances of one series ...
ADAPTIVE_GAP_FACTOR = 3.0
#: ... once at least this many gaps have been seen (fewer: the configured quiet period) ...
ADAPTIVE_MIN_GAPS = 5
#: ... among the instances of the AE's most recent series (bounded: one indexed query a tick)
ADAPTIVE_RECENT_SERIES = 100
#: weight of the newest gap in the running estimate (EWMA): follows a change of pace in a few
#: series, while one long pause does not swing it far
ADAPTIVE_EWMA_ALPHA = 0.2
#: slack when telling a series held open on purpose (importer) from an ordinary quiet wait
_HELD_SLACK = timedelta(seconds=1)

_FIELDS_CACHE_SIZE = 20_000
_fields_cache: OrderedDict[str, ViewFields] = OrderedDict()
_fields_lock = threading.Lock()


@dataclass(frozen=True)
class _Early:
    """A series to close before its ``complete_after``, and why (kept in its event)."""

    series_pk: int
    closed_by: str  # "expected_views" | "adaptive_quiet"
    received_before: datetime | None = None  # adaptive: still due only if nothing came since
    detail: dict[str, Any] = field(default_factory=dict)


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
    early = _early_series(db, cfg, now, skip=set(due))
    queued: list[int] = []
    for series_pk, why in [(pk, None) for pk in due] + [(e.series_pk, e) for e in early]:
        job_pk = _complete_one(db, cfg, series_pk, now, why)
        if job_pk is not None:
            queued.append(job_pk)
            wake.notify(wake.JOBS)
    return queued


def _complete_one(db: Database, cfg: Config, series_pk: int, now: datetime, early: _Early | None = None) -> int | None:
    """Complete one series if it is still due; ``None`` if somebody else did, or it was
    re-opened in between.

    "Due" is re-checked under the row lock: the quiet period ended, or (``early``) the study's
    views are in, or no instance arrived since the adaptive cut-off. An instance committed
    after this lock is taken finds the series complete and re-opens it (next generation)."""
    due: ColumnElement[bool]
    if early is None:
        due = Series.complete_after <= now
    elif early.received_before is not None:
        due = Series.last_received_at <= early.received_before
    else:
        due = true()  # the views were in when the study was looked at
    query = select(Series).where(Series.id == series_pk, Series.state.in_(_COMPLETABLE), due)
    if not is_sqlite(db.engine):
        # Another completer holds it: it will finish the job; the receiver holds it: an
        # instance is arriving and the quiet period is about to move. Either way, not ours now.
        query = query.with_for_update(skip_locked=True)
    with db.session() as s:
        series = s.execute(query).scalar_one_or_none()
        if series is None:
            return None
        ae = cfg.calling_ae(series.calling_ae) if series.calling_ae.strip() else None
        detail = {"closed_by": early.closed_by, **early.detail} if early is not None else {}
        generation, job_pk = _transition(s, cfg, series, now, ae.priority if ae is not None else 0, detail)
    log.info(
        "series %d complete (generation %d%s), job %s queued",
        series_pk, generation, f", {early.closed_by}" if early is not None else "", job_pk,
    )
    return job_pk


def complete_now(db: Database, cfg: Config, series_pk: int, *, priority: int, by: str) -> int | None:
    """Complete an open series at once, with its job at ``priority`` (an archive import: no
    quiet period to wait for); ``None`` when it is not open. The transition is the one
    ``complete_due_series`` makes; the event says ``by`` whom."""
    now = naive_utc(None)
    query = select(Series).where(Series.id == series_pk, Series.state.in_(_COMPLETABLE))
    if not is_sqlite(db.engine):
        query = query.with_for_update()
    with db.session() as s:
        series = s.execute(query).scalar_one_or_none()
        if series is None:
            return None
        _, job_pk = _transition(s, cfg, series, now, priority, {"by": by})
    wake.notify(wake.JOBS)
    return job_pk


def _transition(
    s: Session, cfg: Config, series: Series, now: datetime, priority: int, detail: dict[str, Any]
) -> tuple[int, int | None]:
    """Series → complete: next generation, its one job, older queued generations superseded,
    the event (with ``detail``). Inside the caller's transaction, the row already locked."""
    series_pk = series.id
    previous = series.state
    series.state = SeriesState.COMPLETE.value
    series.generation += 1
    series.completed_at = now
    generation = series.generation
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
        **detail,
    )
    return generation, job_pk


def _held_on_purpose(ae: CallingAE, cfg: Config, complete_after: datetime, last_received_at: datetime) -> bool:
    """Recorded with a longer quiet period than the AE's own (the importer's week keeps a
    running node's completer off its series): not ours to close early."""
    configured = ae.quiet_period_s or cfg.series.quiet_period_s
    return complete_after - last_received_at > timedelta(seconds=configured) + _HELD_SLACK


def _early_series(db: Database, cfg: Config, now: datetime, skip: set[int]) -> list[_Early]:
    """Series of AEs with ``expected_views`` or ``adaptive_quiet`` that may close now."""
    out: list[_Early] = []
    for finder in (_views_in, _adaptive_due):
        for e in finder(db, cfg, now):
            if e.series_pk not in skip:
                skip.add(e.series_pk)
                out.append(e)
    return out


def _views_in(db: Database, cfg: Config, now: datetime) -> list[_Early]:
    """Open series whose study holds every view their AE expects.

    Views are counted over every current (not superseded) instance of the study, whichever
    series or AE it came in by: the AP pelvis and the lateral are usually two series."""
    aes = {ae.ae_title: ae for ae in cfg.calling_aes if ae.expected_views}
    if not aes:
        return []
    with db.session() as s:
        waiting = s.execute(
            select(Series.id, Series.study_pk, Series.calling_ae, Series.complete_after, Series.last_received_at)
            .where(Series.state.in_(_COMPLETABLE), Series.calling_ae.in_(list(aes)), Series.complete_after > now)
            .order_by(Series.id)
        ).all()
        waiting = [
            r for r in waiting if not _held_on_purpose(aes[r.calling_ae], cfg, r.complete_after, r.last_received_at)
        ]
        if not waiting:
            return []
        instances = s.execute(
            select(Series.study_pk, Instance.path)
            .join(Series, Series.id == Instance.series_pk)
            .where(Series.study_pk.in_({r.study_pk for r in waiting}), Instance.superseded.is_(False))
        ).all()
    root = Path(cfg.storage.root)
    fields: dict[int, list[ViewFields]] = {}
    for study_pk, path in instances:
        f = _view_fields(root / path)
        if f is not None:
            fields.setdefault(study_pk, []).append(f)
    out = []
    for r in waiting:
        ae = aes[r.calling_ae]
        patterns = _patterns(tuple(sorted(ae.view_patterns.items())))
        views = {classify(f, patterns) for f in fields.get(r.study_pk, [])}
        if set(ae.expected_views) <= views:
            out.append(_Early(r.id, "expected_views", detail={"views": sorted(v for v in views if v)}))
    return out


def _view_fields(path: Path) -> ViewFields | None:
    """The view fields of a stored instance, read once per file (an instance row's file never
    changes: a changed object is a new row with its own path). Unreadable: not cached, asked
    again next tick."""
    key = str(path)
    with _fields_lock:
        hit = _fields_cache.get(key)
        if hit is not None:
            _fields_cache.move_to_end(key)
            return hit
    fields = read_fields(path)
    if fields is not None:
        with _fields_lock:
            _fields_cache[key] = fields
            while len(_fields_cache) > _FIELDS_CACHE_SIZE:
                _fields_cache.popitem(last=False)
    return fields


@lru_cache(maxsize=64)
def _patterns(items: tuple[tuple[str, str], ...]) -> list[tuple[str, re.Pattern[str]]]:
    return compile_patterns(dict(items))


def adaptive_quiet_period(db: Database, cfg: Config, ae: CallingAE) -> float | None:
    """This AE's adaptive quiet period in seconds, or ``None`` while there is too little
    evidence (its configured quiet period then applies).

    Gaps longer than the configured quiet period are not pace but late arrivals (they re-opened
    a complete series) and are left out, as are the instances of other AEs."""
    configured = ae.quiet_period_s or cfg.series.quiet_period_s
    with db.session() as s:
        recent = (
            s.execute(
                select(Series.id)
                .where(Series.calling_ae == ae.ae_title)
                .order_by(Series.last_received_at.desc())
                .limit(ADAPTIVE_RECENT_SERIES)
            )
            .scalars()
            .all()
        )
        if not recent:
            return None
        rows = s.execute(
            select(Instance.series_pk, Instance.received_at)
            .where(Instance.series_pk.in_(recent), Instance.calling_ae == ae.ae_title)
            .order_by(Instance.series_pk, Instance.received_at)
        ).all()
    gaps: list[tuple[datetime, float]] = []
    for prev, cur in pairwise(rows):
        if prev.series_pk == cur.series_pk:
            gap = (cur.received_at - prev.received_at).total_seconds()
            if 0 <= gap <= configured:
                gaps.append((cur.received_at, gap))
    if len(gaps) < ADAPTIVE_MIN_GAPS:
        return None
    gaps.sort()
    typical = gaps[0][1]
    for _at, gap in gaps[1:]:
        typical += ADAPTIVE_EWMA_ALPHA * (gap - typical)
    return min(max(ADAPTIVE_GAP_FACTOR * typical, cfg.series.adaptive_min_s), configured)


def _adaptive_due(db: Database, cfg: Config, now: datetime) -> list[_Early]:
    """Open series of ``adaptive_quiet`` AEs silent for longer than the AE's adaptive period."""
    out = []
    for ae in cfg.calling_aes:
        if not ae.adaptive_quiet:
            continue
        quiet = adaptive_quiet_period(db, cfg, ae)
        if quiet is None or quiet >= (ae.quiet_period_s or cfg.series.quiet_period_s):
            continue
        cutoff = now - timedelta(seconds=quiet)
        with db.session() as s:
            rows = s.execute(
                select(Series.id, Series.complete_after, Series.last_received_at)
                .where(
                    Series.state.in_(_COMPLETABLE),
                    Series.calling_ae == ae.ae_title,
                    Series.last_received_at <= cutoff,
                    Series.complete_after > now,
                )
                .order_by(Series.id)
            ).all()
        out += [
            _Early(r.id, "adaptive_quiet", received_before=cutoff, detail={"quiet_period_s": round(quiet, 3)})
            for r in rows
            if not _held_on_purpose(ae, cfg, r.complete_after, r.last_received_at)
        ]
    return out


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
