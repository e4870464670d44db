"""The worker: outcomes, retries, heartbeats, lost leases, graceful stop, and the crash test.

The real pipeline is not needed here: the worker's contract is with ``process(job_pk)``, so
small test pipelines stand in for it. The crash and signal tests run the worker as a real
process (this module is also its entry point: ``python -m tests.test_worker …``) with a slow
pipeline that leaves marker files, so we can see which worker started and finished what.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from node.config import Config, parse_config
from node.domain import JobState
from node.jobs import JobEvent, RetryPolicy, sweep_stale
from node.pipeline import JobOutcome
from node.registry import Database, Event, Job, utcnow
from node.series import complete_due_series
from node.worker import Worker, install_stop_handlers
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401 - fixtures
from tests.test_jobs import add_jobs, add_series, job_events, job_row

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(any_db: Database) -> Database:  # noqa: F811 - the imported fixture, by name
    """A migrated registry, once on SQLite and once on PostgreSQL."""
    return any_db


def make_cfg(url: str, **jobs: float) -> Config:
    settings: dict[str, float] = {
        "lease_s": 30.0,
        "heartbeat_s": 10.0,
        "retry_backoff_s": 0.0,
        "poll_interval_s": 0.1,
    }
    settings.update(jobs)
    return parse_config({"database": {"url": url}, "jobs": settings})


# ------------------------------------------------------------------------------ test pipelines


class ScriptedPipeline:
    """Returns or raises what ``script(job_pk, call_number)`` says; records every call."""

    def __init__(self, script: object) -> None:
        self.script = script
        self.calls: list[int] = []

    def process(self, job_pk: int) -> JobOutcome:
        self.calls.append(job_pk)
        result = self.script(job_pk, len(self.calls))  # type: ignore[operator]
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, JobOutcome)
        return result


class SlowMarkerPipeline:
    """Writes ``started.<job>.<worker>``, works for ``sleep_s``, writes ``finished.<job>.<worker>``."""

    def __init__(self, markers: Path, worker_id: str, sleep_s: float) -> None:
        self.markers = markers
        self.worker_id = worker_id
        self.sleep_s = sleep_s

    def process(self, job_pk: int) -> JobOutcome:
        (self.markers / f"started.{job_pk}.{self.worker_id}").touch()
        deadline = time.monotonic() + self.sleep_s
        while time.monotonic() < deadline:
            time.sleep(0.02)
        (self.markers / f"finished.{job_pk}.{self.worker_id}").touch()
        return JobOutcome(JobState.DONE, summary={"worker": self.worker_id})


def main(argv: list[str] | None = None) -> int:
    """Worker process for the crash and signal tests."""
    parser = argparse.ArgumentParser(prog="python -m tests.test_worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--markers", type=Path, required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--sleep", type=float, required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = make_cfg(args.db, lease_s=args.lease, heartbeat_s=args.heartbeat)
    db = Database(args.db)
    worker = Worker(
        cfg,
        db,
        pipeline_factory=lambda _cfg, _db: SlowMarkerPipeline(args.markers, args.worker_id, args.sleep),
        worker_id=args.worker_id,
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    (args.markers / f"ready.{args.worker_id}").touch()
    try:
        worker.run_forever(stop)
    finally:
        db.dispose()
    return 0


# ------------------------------------------------------------------------------ process helpers


def start_worker(
    db: Database,
    markers: Path,
    worker_id: str,
    sleep_s: float,
    lease_s: float = 2.0,
    heartbeat_s: float = 0.5,
) -> subprocess.Popen[bytes]:
    log = open(markers / f"{worker_id}.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.test_worker",
            "--db", db.url, "--markers", str(markers), "--worker-id", worker_id,
            "--sleep", str(sleep_s), "--lease", str(lease_s), "--heartbeat", str(heartbeat_s),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return proc


def wait_for(
    predicate: object, what: str, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes started by a test; killed if the test left any running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def job_event_details(db: Database, job_pk: int) -> list[tuple[str, dict[str, object]]]:
    with db.session() as s:
        rows = s.scalars(
            select(Event).where(Event.entity == "job", Event.entity_pk == job_pk).order_by(Event.id)
        )
        return [(e.kind, dict(e.detail or {})) for e in rows]


# --------------------------------------------------------------------------------------- tests


def test_run_once_records_done_and_skipped(db: Database) -> None:
    done_pk, skipped_pk = add_jobs(db, 2)

    def script(job_pk: int, _n: int) -> JobOutcome:
        if job_pk == done_pk:
            return JobOutcome(JobState.DONE, summary={"images": 3})
        return JobOutcome(JobState.SKIPPED, reason="not a hip radiograph")

    pipeline = ScriptedPipeline(script)
    worker = Worker(make_cfg(db.url), db, pipeline_factory=lambda _c, _d: pipeline, worker_id="w1")
    assert worker.run_once() and worker.run_once()
    assert not worker.run_once(), "nothing left to do"
    assert sorted(pipeline.calls) == [done_pk, skipped_pk]
    done = job_row(db, done_pk)
    assert (done.state, done.summary, done.worker_id, done.attempts) == ("done", {"images": 3}, "w1", 1)
    skipped = job_row(db, skipped_pk)
    assert (skipped.state, skipped.reason) == ("skipped", "not a hip radiograph")


def test_pipeline_errors_are_retried_then_failed_with_the_reason(db: Database) -> None:
    (pk,) = add_jobs(db, 1, max_attempts=2)
    pipeline = ScriptedPipeline(lambda _pk, n: ValueError(f"bad pixel data #{n}"))
    worker = Worker(make_cfg(db.url), db, pipeline_factory=lambda _c, _d: pipeline, worker_id="w1")
    assert worker.run_once()
    row = job_row(db, pk)
    assert (row.state, row.attempts, row.reason) == ("queued", 1, "ValueError: bad pixel data #1")
    assert worker.run_once()
    row = job_row(db, pk)
    assert (row.state, row.attempts, row.reason) == ("failed", 2, "ValueError: bad pixel data #2")
    assert not worker.run_once()
    assert job_events(db, pk) == ["queued", "claimed", "retry", "claimed", "failed"]


def test_pipeline_returning_a_non_final_state_is_a_failure(db: Database) -> None:
    (pk,) = add_jobs(db, 1, max_attempts=1)
    pipeline = ScriptedPipeline(lambda _pk, _n: JobOutcome(JobState.RUNNING))
    Worker(make_cfg(db.url), db, pipeline_factory=lambda _c, _d: pipeline, worker_id="w1").run_once()
    row = job_row(db, pk)
    assert row.state == "failed" and row.reason is not None and "expected done or skipped" in row.reason


def test_a_hung_job_is_stopped_at_the_time_limit_and_counts_as_a_failed_attempt(db: Database) -> None:
    """A job past ``jobs.max_job_s`` is interrupted even though the pipeline swallows ordinary
    exceptions (as its per-hip guards do), and fails with the reason; the next job runs."""
    hung_pk, next_pk = add_jobs(db, 2, max_attempts=1)
    swallowed: list[str] = []

    def script(job_pk: int, _n: int) -> JobOutcome:
        if job_pk == hung_pk:
            for _ in range(600):  # 60 s unless interrupted
                try:
                    time.sleep(0.1)
                except Exception as exc:  # a guard like the pipeline's own
                    swallowed.append(type(exc).__name__)
        return JobOutcome(JobState.DONE)

    pipeline = ScriptedPipeline(script)
    cfg = make_cfg(db.url, max_job_s=1.0, heartbeat_s=0.2, lease_s=5.0)
    worker = Worker(cfg, db, pipeline_factory=lambda _c, _d: pipeline, worker_id="w1")
    start = time.monotonic()
    assert worker.run_once()
    assert time.monotonic() - start < 15.0
    row = job_row(db, hung_pk)
    assert row.state == "failed" and row.reason is not None and "time limit of 1 s" in row.reason
    assert swallowed == []
    assert worker.run_once()
    assert job_row(db, next_pk).state == "done"


def test_heartbeats_keep_a_long_job_from_being_swept(db: Database) -> None:
    (pk,) = add_jobs(db, 1)
    cfg = make_cfg(db.url, lease_s=1.0, heartbeat_s=0.2)

    def slow(_pk: int, _n: int) -> JobOutcome:
        time.sleep(2.5)
        return JobOutcome(JobState.DONE)

    pipeline = ScriptedPipeline(slow)
    worker = Worker(cfg, db, pipeline_factory=lambda _c, _d: pipeline, worker_id="w1")
    swept: list[int] = []
    stop = threading.Event()

    def sweeper() -> None:  # an eager sweeper running beside the job, as the scheduler would
        while not stop.wait(0.1):
            swept.append(sweep_stale(db, policy=RetryPolicy(0, 0)))

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        assert worker.run_once()
    finally:
        stop.set()
        thread.join()
    assert len(swept) >= 10 and sum(swept) == 0, "a heart-beating job was swept"
    row = job_row(db, pk)
    assert (row.state, row.attempts) == ("done", 1)
    assert row.heartbeat_at is not None and row.started_at is not None
    assert row.heartbeat_at - row.started_at >= timedelta(seconds=2), "heartbeats stopped early"


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_result(db: Database) -> None:
    (pk,) = add_jobs(db, 1)
    started, release = threading.Event(), threading.Event()

    def slow(_pk: int, _n: int) -> JobOutcome:
        started.set()
        assert release.wait(30)
        return JobOutcome(JobState.DONE, summary={"by": "slow"})

    slow_worker = Worker(
        make_cfg(db.url), db, pipeline_factory=lambda _c, _d: ScriptedPipeline(slow), worker_id="slow"
    )
    thread = threading.Thread(target=slow_worker.run_once)
    thread.start()
    try:
        assert started.wait(30)
        # The slow worker stalls past its lease (its heartbeats did not get through).
        with db.session() as s:
            s.execute(select(Job).where(Job.id == pk)).scalar_one().lease_until = utcnow() - timedelta(
                seconds=1
            )
        assert sweep_stale(db, policy=RetryPolicy(0, 0)) == 1
        fast = ScriptedPipeline(lambda _pk, _n: JobOutcome(JobState.DONE, summary={"by": "fast"}))
        assert Worker(make_cfg(db.url), db, pipeline_factory=lambda _c, _d: fast, worker_id="fast").run_once()
    finally:
        release.set()
        thread.join(30)
    row = job_row(db, pk)
    assert (row.state, row.worker_id, row.summary, row.attempts) == ("done", "fast", {"by": "fast"}, 2)
    events = job_event_details(db, pk)
    assert [k for k, _ in events] == ["queued", "claimed", "lease_expired", "claimed", "done", "lease_lost"]
    assert events[-1][1]["worker"] == "slow"


def test_worker_crash_mid_job_is_recovered_exactly_once(
    db: Database, markers: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """SIGKILL a worker mid-job; after the lease runs out the sweeper re-queues the job and a
    second worker process finishes it: ``done`` once, both attempts and all events recorded."""
    series_pk = add_series(db, complete_after=utcnow())
    (pk,) = complete_due_series(db, make_cfg(db.url))
    lease_s = 2.0

    worker_a = start_worker(db, markers, "worker-a", sleep_s=120, lease_s=lease_s, heartbeat_s=0.5)
    procs.append(worker_a)
    wait_for(
        lambda: (markers / f"started.{pk}.worker-a").exists(), "worker-a to start the job", proc=worker_a
    )
    claimed = job_row(db, pk)
    assert (claimed.state, claimed.worker_id, claimed.attempts) == ("running", "worker-a", 1)
    time.sleep(1.2)  # > 2 heartbeats
    beating = job_row(db, pk)
    assert beating.lease_until is not None and claimed.lease_until is not None
    assert beating.lease_until > claimed.lease_until, "worker-a is not heart-beating"

    worker_a.send_signal(signal.SIGKILL)
    assert worker_a.wait(10) == -signal.SIGKILL
    assert not (markers / f"finished.{pk}.worker-a").exists()
    policy = RetryPolicy(0, 0)
    assert sweep_stale(db, policy=policy) == 0, "lease still valid right after the crash"
    lease_until = job_row(db, pk).lease_until
    assert lease_until is not None
    wait_for(lambda: utcnow() > lease_until, "the lease to expire", timeout_s=lease_s + 5)
    assert sweep_stale(db, policy=policy) == 1
    swept = job_row(db, pk)
    assert (swept.state, swept.attempts, swept.worker_id) == ("queued", 1, None)
    assert swept.reason is not None and "worker-a" in swept.reason

    worker_b = start_worker(db, markers, "worker-b", sleep_s=0.5, lease_s=lease_s, heartbeat_s=0.5)
    procs.append(worker_b)
    wait_for(lambda: job_row(db, pk).state == "done", "worker-b to finish the job", proc=worker_b)
    worker_b.send_signal(signal.SIGTERM)
    assert worker_b.wait(15) == 0, "graceful stop after SIGTERM"

    done = job_row(db, pk)
    assert (done.state, done.worker_id, done.attempts, done.summary) == (
        "done",
        "worker-b",
        2,
        {"worker": "worker-b"},
    )
    assert sorted(p.name for p in markers.glob("*ed.*")) == [
        f"finished.{pk}.worker-b",
        f"started.{pk}.worker-a",
        f"started.{pk}.worker-b",
    ]
    events = job_event_details(db, pk)
    assert [k for k, _ in events] == [
        JobEvent.QUEUED.value,
        JobEvent.CLAIMED.value,
        JobEvent.LEASE_EXPIRED.value,
        JobEvent.CLAIMED.value,
        JobEvent.DONE.value,
    ]
    assert [(d.get("worker"), d.get("attempt")) for k, d in events if k == "claimed"] == [
        ("worker-a", 1),
        ("worker-b", 2),
    ]
    with db.session() as s:
        assert s.scalars(select(Job.id).where(Job.series_pk == series_pk)).all() == [pk], "one job only"


def test_sigterm_finishes_the_current_job_and_claims_no_more(
    db: Database, markers: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    first, second = add_jobs(db, 2)
    worker = start_worker(db, markers, "w", sleep_s=2.0, lease_s=5.0, heartbeat_s=1.0)
    procs.append(worker)
    wait_for(lambda: (markers / f"started.{first}.w").exists(), "the first job to start", proc=worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert (job_row(db, first).state, job_row(db, first).attempts) == ("done", 1)
    assert (job_row(db, second).state, job_row(db, second).attempts) == ("queued", 0)
    assert not (markers / f"started.{second}.w").exists()


def test_second_sigterm_releases_the_current_job(
    db: Database, markers: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    (pk,) = add_jobs(db, 1)
    worker = start_worker(db, markers, "w", sleep_s=60.0, lease_s=5.0, heartbeat_s=1.0)
    procs.append(worker)
    wait_for(lambda: (markers / f"started.{pk}.w").exists(), "the job to start", proc=worker)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 128 + signal.SIGTERM
    row = job_row(db, pk)
    assert (row.state, row.attempts, row.worker_id) == ("queued", 0, None), "released, attempt not counted"
    assert job_events(db, pk)[-1] == JobEvent.RELEASED.value
    assert not (markers / f"finished.{pk}.w").exists()


if __name__ == "__main__":
    sys.exit(main())
