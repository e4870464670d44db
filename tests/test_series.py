"""Series completion: quiet period, late instances (next generation), concurrent completers,
and the APScheduler wiring. On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from node.config import Config, parse_config
from node.domain import JobState, SeriesState
from node.jobs import JobEvent, claim_job, enqueue_job, finish_job
from node.registry import Database, Event, Job, Series, utcnow
from node.series import COMPLETION_JOB_ID, SWEEPER_JOB_ID, complete_due_series, start_series_scheduler
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401 - fixtures
from tests.test_jobs import add_series, job_events, job_row

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(any_db: Database) -> Database:  # noqa: F811 - the imported fixture, by name
    """A migrated registry, once on SQLite and once on PostgreSQL."""
    return any_db


@pytest.fixture
def cfg() -> Config:
    return parse_config(
        {
            "calling_aes": [{"ae_title": "URGENT_CR", "priority": 7}, {"ae_title": "ROUTINE_DX"}],
            "jobs": {"max_attempts": 5},
        }
    )


def series_row(db: Database, series_pk: int) -> Series:
    with db.session() as s:
        row = s.get(Series, series_pk)
        assert row is not None
        return row


def series_jobs(db: Database, series_pk: int) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).where(Job.series_pk == series_pk).order_by(Job.generation)).all())


def series_events(db: Database, series_pk: int) -> list[Event]:
    with db.session() as s:
        query = select(Event).where(Event.entity == "series", Event.entity_pk == series_pk).order_by(Event.id)
        return list(s.scalars(query).all())


def test_series_completes_only_after_the_quiet_period(db: Database, cfg: Config) -> None:
    t0 = utcnow()
    pk = add_series(db, calling_ae="URGENT_CR", complete_after=t0 + timedelta(seconds=10))

    assert complete_due_series(db, cfg, now=t0 + timedelta(seconds=9.9)) == []
    assert series_row(db, pk).state == SeriesState.OPEN.value
    assert series_jobs(db, pk) == []

    done_at = t0 + timedelta(seconds=10)
    queued = complete_due_series(db, cfg, now=done_at)
    assert len(queued) == 1
    row = series_row(db, pk)
    assert row.state == SeriesState.COMPLETE.value and row.generation == 1 and row.completed_at == done_at
    (job,) = series_jobs(db, pk)
    assert job.id == queued[0] and job.generation == 1 and job.state == JobState.QUEUED.value
    assert job.priority == 7, "priority comes from the calling AE's settings"
    assert job.max_attempts == 5, "max_attempts comes from cfg.jobs"
    assert job_events(db, job.id) == [JobEvent.QUEUED.value]
    (event,) = series_events(db, pk)
    assert event.kind == "complete" and event.detail is not None
    assert event.detail["generation"] == 1 and event.detail["job"] == job.id
    assert event.detail["previous_state"] == "open"

    assert complete_due_series(db, cfg, now=done_at + timedelta(hours=1)) == [], "completes once"
    assert len(series_jobs(db, pk)) == 1


def test_priority_defaults_to_zero_for_aes_without_settings(db: Database, cfg: Config) -> None:
    t0 = utcnow()
    routine = add_series(db, calling_ae="ROUTINE_DX", complete_after=t0)
    unknown = add_series(db, calling_ae="SOMEONE", complete_after=t0)
    blank = add_series(db, calling_ae="", complete_after=t0)
    assert len(complete_due_series(db, cfg, now=t0)) == 3
    for pk in (routine, unknown, blank):
        (job,) = series_jobs(db, pk)
        assert job.priority == 0


def test_late_instance_queues_the_next_generation(db: Database, cfg: Config) -> None:
    t0 = utcnow()
    pk = add_series(db, calling_ae="URGENT_CR", complete_after=t0)
    (gen1,) = complete_due_series(db, cfg, now=t0)
    claimed = claim_job(db, "w", 60, now=t0)
    assert claimed is not None and claimed.job_pk == gen1
    assert finish_job(db, gen1, "w", JobState.DONE, summary={"sr": 1}, attempt=claimed.attempt)

    # The receiver re-opens the series on a late instance and restarts the quiet period.
    t1 = t0 + timedelta(minutes=5)
    with db.session() as s:
        row = s.get(Series, pk)
        assert row is not None
        row.state = SeriesState.REOPENED.value
        row.last_received_at = t1
        row.complete_after = t1 + timedelta(seconds=10)

    assert complete_due_series(db, cfg, now=t1 + timedelta(seconds=5)) == []
    (gen2,) = complete_due_series(db, cfg, now=t1 + timedelta(seconds=10))
    first, second = series_jobs(db, pk)
    assert (first.id, first.generation, first.state) == (gen1, 1, JobState.DONE.value)
    assert first.summary == {"sr": 1}, "the finished generation is left alone"
    assert (second.id, second.generation, second.state) == (gen2, 2, JobState.QUEUED.value)
    row = series_row(db, pk)
    assert row.state == SeriesState.COMPLETE.value and row.generation == 2
    details = [e.detail or {} for e in series_events(db, pk)]
    assert [(d["generation"], d["previous_state"]) for d in details] == [(1, "open"), (2, "reopened")]


def test_unstarted_older_generation_is_skipped_as_superseded(db: Database, cfg: Config) -> None:
    t0 = utcnow()
    pk = add_series(db, complete_after=t0)
    (gen1,) = complete_due_series(db, cfg, now=t0)
    with db.session() as s:
        row = s.get(Series, pk)
        assert row is not None
        row.state = SeriesState.REOPENED.value
        row.complete_after = t0 + timedelta(seconds=10)
    (gen2,) = complete_due_series(db, cfg, now=t0 + timedelta(seconds=10))
    old = job_row(db, gen1)
    assert old.state == JobState.SKIPPED.value and old.reason is not None and "generation 2" in old.reason
    assert job_events(db, gen1) == [JobEvent.QUEUED.value, JobEvent.SUPERSEDED.value]
    assert job_row(db, gen2).state == JobState.QUEUED.value
    claimed = claim_job(db, "w", 60, now=t0 + timedelta(seconds=11))
    assert claimed is not None and claimed.job_pk == gen2, "only the newest generation runs"
    assert claim_job(db, "w", 60, now=t0 + timedelta(seconds=11)) is None


def test_existing_job_for_the_generation_is_not_duplicated(db: Database, cfg: Config) -> None:
    """A registry whose generation counter was rewound by hand must not wedge completion."""
    t0 = utcnow()
    pk = add_series(db, complete_after=t0)
    with db.session() as s:
        existing = enqueue_job(s, pk, 1, now=t0).id
    assert complete_due_series(db, cfg, now=t0) == []
    assert [j.id for j in series_jobs(db, pk)] == [existing]
    assert series_row(db, pk).state == SeriesState.COMPLETE.value


_COMPLETER = r"""
import json, os, sys, time
from node.config import Config
from node.registry import Database
from node.series import complete_due_series
url, gate = sys.argv[1:3]
db = Database(url)
print("ready", flush=True)
while not os.path.exists(gate):
    time.sleep(0.002)
got = []
for _ in range(5):
    got += complete_due_series(db, Config())
db.dispose()
print(json.dumps(got), flush=True)
"""


def test_concurrent_completers_queue_exactly_one_job_per_generation(db: Database, tmp_path: Path) -> None:
    t0 = utcnow()
    series = [add_series(db, complete_after=t0 - timedelta(seconds=1)) for _ in range(30)]
    gate = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COMPLETER, db.url, str(gate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"

    returned: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def completer() -> None:
        try:
            barrier.wait()
            got: list[int] = []
            for _ in range(5):
                got += complete_due_series(db, Config())
            returned.append(got)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=completer) for _ in range(4)]
    gate.touch()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        returned.append(json.loads(out.strip().splitlines()[-1]))
    assert not errors, errors

    flat = [pk for got in returned for pk in got]
    assert len(flat) == len(set(flat)) == 30, "each job reported by exactly one completer"
    with db.session() as s:
        jobs = s.scalars(select(Job).where(Job.series_pk.in_(series))).all()
        assert sorted(j.id for j in jobs) == sorted(flat)
        assert Counter(j.series_pk for j in jobs) == Counter(series), "one job per series"
        assert {j.generation for j in jobs} == {1}
        gens = s.scalars(select(Series.generation).where(Series.id.in_(series))).all()
        assert set(gens) == {1}
        kinds = s.execute(
            select(Event.entity_pk).where(Event.entity == "series", Event.kind == "complete")
        ).scalars()
        assert Counter(kinds) == Counter(series), "one completion event per series"


def test_scheduler_completes_due_series_and_sweeps_stale_jobs(db: Database) -> None:
    cfg = parse_config(
        {
            "series": {"check_interval_s": 0.1},
            "jobs": {"sweep_interval_s": 0.2, "lease_s": 1.0, "heartbeat_s": 0.5, "retry_backoff_s": 0},
        }
    )
    now = utcnow()
    quiet_until = now + timedelta(seconds=0.8)
    pk = add_series(db, complete_after=quiet_until)
    stale_series = add_series(db, state=SeriesState.COMPLETE, generation=1)
    with db.session() as s:
        stale = enqueue_job(s, stale_series, 1, now=now).id
    assert claim_job(db, "dead-worker", 0.3, now=now) is not None

    scheduler = start_series_scheduler(db, cfg)
    try:
        for job_id in (COMPLETION_JOB_ID, SWEEPER_JOB_ID):
            sched_job = scheduler.get_job(job_id)
            assert sched_job is not None
            assert sched_job.misfire_grace_time is None
            assert sched_job.coalesce is True
            assert sched_job.max_instances == 1
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if series_row(db, pk).state == SeriesState.COMPLETE.value and (
                job_row(db, stale).state == JobState.QUEUED.value
            ):
                break
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)
    row = series_row(db, pk)
    assert row.state == SeriesState.COMPLETE.value, "scheduler did not complete the series"
    assert row.completed_at is not None and row.completed_at >= quiet_until, (
        "completed before the quiet period"
    )
    assert len(series_jobs(db, pk)) == 1
    assert job_row(db, stale).state == JobState.QUEUED.value, "scheduler did not sweep the stale job"
    assert JobEvent.LEASE_EXPIRED.value in job_events(db, stale)
