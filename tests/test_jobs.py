"""Jobs: atomic claims under concurrency, leases, the sweeper, retries with backoff.

Every test runs on SQLite and on a real PostgreSQL server (``db``); the concurrency tests
use real threads and real processes, because the claim is only as atomic as the database makes
it and a mock would prove nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from node.domain import JobState, SeriesState
from node.jobs import (
    JobEvent,
    RetryPolicy,
    claim_job,
    enqueue_job,
    fail_job,
    finish_job,
    heartbeat,
    job_counts,
    queue_depth,
    release_job,
    sweep_stale,
)
from node.registry import Database, Event, Job, Patient, Series, Study, utcnow
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(any_db: Database) -> Database:  # noqa: F811 - the imported fixture, by name
    """A migrated registry, once on SQLite and once on PostgreSQL."""
    return any_db


# ---------------------------------------------------------------------------- test data helpers
# (imported by tests/test_series.py and tests/test_worker.py)


def add_series(
    db: Database,
    *,
    calling_ae: str = "",
    state: SeriesState = SeriesState.OPEN,
    complete_after: datetime | None = None,
    generation: int = 0,
) -> int:
    """One patient/study/series row, as the receiver would have left it; returns the series pk."""
    tag = uuid.uuid4().hex
    now = utcnow()
    with db.session() as s:
        patient = Patient(patient_id=f"P{tag[:10]}", issuer="", name="TEST^PATIENT")
        s.add(patient)
        s.flush()
        study = Study(study_uid=f"2.25.{int(tag, 16)}", patient_pk=patient.id)
        s.add(study)
        s.flush()
        series = Series(
            series_uid=f"2.25.{int(tag, 16) + 1}",
            study_pk=study.id,
            modality="DX",
            calling_ae=calling_ae,
            state=state.value,
            first_received_at=now,
            last_received_at=now,
            complete_after=complete_after or now,
            generation=generation,
        )
        s.add(series)
        s.flush()
        return series.id


def add_jobs(
    db: Database,
    n: int,
    *,
    priority: int = 0,
    max_attempts: int = 3,
    now: datetime | None = None,
) -> list[int]:
    """``n`` queued jobs, each for its own series (generation 1); returns the job pks."""
    pks = []
    for _ in range(n):
        series_pk = add_series(db, state=SeriesState.COMPLETE, generation=1)
        with db.session() as s:
            pks.append(enqueue_job(s, series_pk, 1, priority=priority, max_attempts=max_attempts, now=now).id)
    return pks


def job_row(db: Database, job_pk: int) -> Job:
    with db.session() as s:
        job = s.get(Job, job_pk)
        assert job is not None
        return job


def job_events(db: Database, job_pk: int) -> list[str]:
    with db.session() as s:
        return list(
            s.scalars(
                select(Event.kind).where(Event.entity == "job", Event.entity_pk == job_pk).order_by(Event.id)
            ).all()
        )


def all_job_events(db: Database) -> Counter[tuple[int, str]]:
    with db.session() as s:
        rows = s.execute(select(Event.entity_pk, Event.kind).where(Event.entity == "job")).all()
    return Counter((int(pk or 0), str(kind)) for pk, kind in rows)


# ---------------------------------------------------------------------------------------- tests


def test_retry_delay_doubles_and_caps() -> None:
    policy = RetryPolicy(backoff_s=10.0, backoff_max_s=600.0)
    assert [policy.delay_s(a) for a in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]
    assert policy.delay_s(10_000) == 600.0  # no float overflow on absurd attempt counts
    assert RetryPolicy(backoff_s=0.0, backoff_max_s=5.0).delay_s(3) == 0.0


def test_claim_takes_priority_then_age_and_respects_not_before(db: Database) -> None:
    t0 = utcnow()
    old_low = add_jobs(db, 1, priority=0, now=t0 - timedelta(seconds=30))[0]
    new_low = add_jobs(db, 1, priority=0, now=t0 - timedelta(seconds=10))[0]
    urgent = add_jobs(db, 1, priority=5, now=t0 - timedelta(seconds=1))[0]
    future = add_jobs(db, 1, priority=9, now=t0 + timedelta(seconds=60))[0]  # not_before later

    order = []
    while (claimed := claim_job(db, "w1", 30, now=t0)) is not None:
        order.append(claimed.job_pk)
        assert claimed.attempt == 1 and claimed.worker_id == "w1"
    assert order == [urgent, old_low, new_low]

    later = claim_job(db, "w1", 30, now=t0 + timedelta(seconds=61))
    assert later is not None and later.job_pk == future and later.priority == 9
    row = job_row(db, future)
    assert row.state == JobState.RUNNING.value and row.worker_id == "w1" and row.attempts == 1
    assert row.lease_until == t0 + timedelta(seconds=91)
    assert job_events(db, future) == [JobEvent.QUEUED.value, JobEvent.CLAIMED.value]


def test_threads_never_claim_the_same_job(db: Database) -> None:
    pks = add_jobs(db, 40)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def claimer(name: str) -> None:
        got: list[int] = []
        try:
            start.wait()
            while (job := claim_job(db, name, 60)) is not None:
                got.append(job.job_pk)
                # A worker spends time on each job before it asks again; without
                # this pause one thread can drain 40 SQLite claims before the
                # others are scheduled (seen in CI), and nothing is contended.
                time.sleep(0.01)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        claimed[name] = got

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    flat = [pk for got in claimed.values() for pk in got]
    assert sorted(flat) == sorted(pks), "every job claimed exactly once"
    assert sum(1 for got in claimed.values() if got) >= 2, "claims were not actually concurrent"
    events = all_job_events(db)
    assert all(events[(pk, JobEvent.CLAIMED.value)] == 1 for pk in pks)
    owners = {pk: name for name, got in claimed.items() for pk in got}
    with db.session() as s:
        for job in s.scalars(select(Job).where(Job.id.in_(pks))):
            assert job.attempts == 1 and job.worker_id == owners[job.id]


_CLAIMER = r"""
import json, os, sys, time
from node.jobs import claim_job
from node.registry import Database
url, gate, name = sys.argv[1:4]
db = Database(url)
print("ready", flush=True)
while not os.path.exists(gate):
    time.sleep(0.002)
got = []
while (job := claim_job(db, name, 60)) is not None:
    got.append(job.job_pk)
    time.sleep(0.01)  # a worker works on each job; lets the other processes interleave
db.dispose()
print(json.dumps(got), flush=True)
"""


def test_processes_never_claim_the_same_job(db: Database, tmp_path: Path) -> None:
    pks = add_jobs(db, 90)
    gate = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, db.url, str(gate), f"proc{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for i in range(3)
    ]
    for p in procs:  # all imported and connected before the gate opens
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    gate.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    flat = [pk for got in results for pk in got]
    assert len(flat) == len(set(flat)), "a job was claimed by two processes"
    assert sorted(flat) == sorted(pks)
    assert sum(1 for got in results if got) >= 2, "claims were not actually concurrent"
    events = all_job_events(db)
    assert all(events[(pk, JobEvent.CLAIMED.value)] == 1 for pk in pks)


def test_heartbeat_extends_the_lease(db: Database) -> None:
    t0 = utcnow()
    pk = add_jobs(db, 1, now=t0)[0]
    job = claim_job(db, "w1", 2.0, now=t0)
    assert job is not None
    assert heartbeat(db, pk, "w1", 2.0, attempt=job.attempt, now=t0 + timedelta(seconds=1.5))
    assert job_row(db, pk).lease_until == t0 + timedelta(seconds=3.5)
    assert sweep_stale(db, now=t0 + timedelta(seconds=3)) == 0  # renewed lease still valid
    assert job_row(db, pk).state == JobState.RUNNING.value
    assert not heartbeat(db, pk, "intruder", 2.0), "only the owner may renew"
    assert not heartbeat(db, pk, "w1", 2.0, attempt=job.attempt + 1), "attempt fences the lease"


def test_expired_lease_is_swept_and_the_old_owner_is_fenced_off(db: Database) -> None:
    t0 = utcnow()
    pk = add_jobs(db, 1, now=t0)[0]
    first = claim_job(db, "w1", 2.0, now=t0)
    assert first is not None
    policy = RetryPolicy(backoff_s=0.0, backoff_max_s=0.0)
    assert sweep_stale(db, now=t0 + timedelta(seconds=1), policy=policy) == 0
    assert sweep_stale(db, now=t0 + timedelta(seconds=3), policy=policy) == 1
    row = job_row(db, pk)
    assert row.state == JobState.QUEUED.value and row.attempts == 1 and row.worker_id is None
    assert row.reason is not None and "lease expired" in row.reason and "w1" in row.reason
    assert sweep_stale(db, now=t0 + timedelta(seconds=4), policy=policy) == 0, "swept once only"

    second = claim_job(db, "w2", 2.0, now=t0 + timedelta(seconds=3))
    assert second is not None and second.job_pk == pk and second.attempt == 2
    # The first worker wakes up: none of its writes may touch the new owner's job.
    assert not heartbeat(db, pk, "w1", 2.0, attempt=first.attempt)
    assert not finish_job(db, pk, "w1", JobState.DONE, summary={"by": "w1"}, attempt=first.attempt)
    assert fail_job(db, pk, "w1", "late failure", attempt=first.attempt) is None
    assert finish_job(db, pk, "w2", JobState.DONE, summary={"by": "w2"}, attempt=second.attempt)
    row = job_row(db, pk)
    assert row.state == JobState.DONE.value and row.summary == {"by": "w2"} and row.worker_id == "w2"
    assert job_events(db, pk) == [
        JobEvent.QUEUED.value,
        JobEvent.CLAIMED.value,
        JobEvent.LEASE_EXPIRED.value,
        JobEvent.CLAIMED.value,
        JobEvent.LEASE_LOST.value,  # w1 finish refused
        JobEvent.LEASE_LOST.value,  # w1 fail refused
        JobEvent.DONE.value,
    ]


def test_failures_retry_with_backoff_then_fail_with_reason(db: Database) -> None:
    t0 = utcnow()
    pk = add_jobs(db, 1, max_attempts=3, now=t0)[0]
    policy = RetryPolicy(backoff_s=10.0, backoff_max_s=15.0)

    job = claim_job(db, "w", 60, now=t0)
    assert job is not None and job.attempt == 1
    assert fail_job(db, pk, "w", "boom 1", attempt=1, policy=policy, now=t0) == JobState.QUEUED
    row = job_row(db, pk)
    assert row.not_before == t0 + timedelta(seconds=10) and row.reason == "boom 1"
    assert claim_job(db, "w", 60, now=t0 + timedelta(seconds=9.9)) is None, "backoff respected"

    t1 = t0 + timedelta(seconds=10)
    job = claim_job(db, "w", 60, now=t1)
    assert job is not None and job.attempt == 2
    assert fail_job(db, pk, "w", "boom 2", attempt=2, policy=policy, now=t1) == JobState.QUEUED
    assert job_row(db, pk).not_before == t1 + timedelta(seconds=15), "20 s capped at 15 s"

    t2 = t1 + timedelta(seconds=15)
    job = claim_job(db, "w", 60, now=t2)
    assert job is not None and job.attempt == 3
    assert fail_job(db, pk, "w", "boom 3", attempt=3, policy=policy, now=t2) == JobState.FAILED
    row = job_row(db, pk)
    assert row.state == JobState.FAILED.value and row.reason == "boom 3" and row.attempts == 3
    assert row.finished_at == t2 and row.lease_until is None
    assert claim_job(db, "w", 60, now=t2 + timedelta(days=1)) is None
    kinds = job_events(db, pk)
    assert kinds.count(JobEvent.CLAIMED.value) == 3
    assert kinds.count(JobEvent.RETRY.value) == 2
    assert kinds[-1] == JobEvent.FAILED.value
    with db.session() as s:
        reasons = [
            (e.detail or {}).get("reason")
            for e in s.scalars(select(Event).where(Event.entity == "job", Event.entity_pk == pk)).all()
            if e.kind in (JobEvent.RETRY.value, JobEvent.FAILED.value)
        ]
    assert reasons == ["boom 1", "boom 2", "boom 3"]


def test_sweeper_fails_a_job_whose_attempts_are_exhausted(db: Database) -> None:
    t0 = utcnow()
    pk = add_jobs(db, 1, max_attempts=1, now=t0)[0]
    assert claim_job(db, "crashy", 1.0, now=t0) is not None
    assert sweep_stale(db, now=t0 + timedelta(seconds=2)) == 1
    row = job_row(db, pk)
    assert row.state == JobState.FAILED.value and row.reason is not None and "lease expired" in row.reason
    assert job_events(db, pk)[-1] == JobEvent.FAILED.value


def test_finish_states_release_and_counts(db: Database) -> None:
    t0 = utcnow()
    done, skipped, released, waiting = add_jobs(db, 4, now=t0)
    with pytest.raises(ValueError, match="state"):
        finish_job(db, done, "w", JobState.QUEUED)
    with pytest.raises(ValueError, match="state"):
        finish_job(db, done, "w", "bogus")

    for pk in (done, skipped, released):
        claimed = claim_job(db, "w", 60, now=t0)
        assert claimed is not None and claimed.job_pk == pk
    assert queue_depth(db) == 1
    assert job_counts(db) == {"queued": 1, "running": 3, "done": 0, "failed": 0, "skipped": 0}

    assert finish_job(db, done, "w", JobState.DONE, summary={"images": 2}, attempt=1)
    assert finish_job(db, skipped, "w", "skipped", "not a hip radiograph", attempt=1)
    assert release_job(db, released, "w", attempt=1, now=t0)
    assert not finish_job(db, done, "w", JobState.DONE), "a finished job cannot be finished again"

    row = job_row(db, released)
    assert row.state == JobState.QUEUED.value and row.attempts == 0, "a release is not an attempt"
    assert job_row(db, skipped).reason == "not a hip radiograph"
    assert job_row(db, done).summary == {"images": 2}
    assert job_events(db, released)[-1] == JobEvent.RELEASED.value
    assert job_counts(db) == {"queued": 2, "running": 0, "done": 1, "failed": 0, "skipped": 1}
    with db.session() as s:
        s.execute(select(Job).where(Job.id == waiting)).scalar_one().not_before = t0 + timedelta(hours=1)
    assert queue_depth(db) == 2
    assert queue_depth(db, runnable_only=True) == 1
    with pytest.raises(LookupError, match="job_pk"):
        finish_job(db, 10_000_000, "w", JobState.DONE)
