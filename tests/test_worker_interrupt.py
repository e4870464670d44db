"""The per-job time limit and the database (issue 13 review): ``JobTimeLimit`` is an
asynchronous exception, raised in the job's thread at whatever it runs next. Landing inside
SQLAlchemy's connection check-in left the pool one connection short for good: after enough
timed-out jobs every session of the worker would wait for a connection that never comes back.

Each case makes the limit strike while the job's thread is inside SQLAlchemy (an event hook
that spins past ``max_job_s`` at that point: commit, rollback, BEGIN, connection check-out,
reset and check-in). Afterwards the pool has every connection back, no transaction holds the
SQLite write lock, the job is failed with its reason, and the worker's next job runs."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

import node.worker as worker_mod
from node.domain import JobState
from node.pipeline import JobOutcome
from node.registry import Database, Event, record_event
from node.worker import Worker
from tests.test_jobs import add_jobs, job_row
from tests.test_worker import ScriptedPipeline, make_cfg

MAX_JOB_S = 0.3
SPIN_S = 0.8  # the limit strikes while SQLAlchemy runs the hook


def _spin() -> None:
    until = time.monotonic() + SPIN_S
    while time.monotonic() < until:  # Python bytecode: where an asynchronous exception lands
        pass


def _write_lock_free(path: Path) -> bool:
    other = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("COMMIT")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


@pytest.mark.parametrize(
    "where",
    ["pool:checkin", "pool:reset", "pool:checkout", "engine:commit", "engine:rollback", "engine:begin", "body"],
)
def test_a_job_stopped_by_the_time_limit_inside_sqlalchemy_leaves_the_database_usable(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / "hipnode.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    hung, following = add_jobs(db, 2, max_attempts=1)
    armed = [False]

    def hook(*_args: object, **_kwargs: object) -> None:
        if armed[0]:
            armed[0] = False
            _spin()

    kind, _, name = where.partition(":")
    if kind == "pool":
        event.listen(db.engine.pool, name, hook)
    elif kind == "engine":
        event.listen(db.engine, name, hook)

    def script(job_pk: int, _n: int) -> JobOutcome:
        if job_pk == hung:
            armed[0] = kind != "engine" or name != "rollback"
            with db.session() as s:
                record_event(s, "job", job_pk, "working")
                s.flush()
                if where == "body":
                    _spin()  # inside the session, in the job's own code
                if name == "rollback":
                    armed[0] = True
                    raise RuntimeError("the job fails; its session rolls back")
            for _ in range(100):  # outside any session: the limit lands here (10 s unless stopped)
                time.sleep(0.1)
        with db.session() as s:
            s.scalar(select(func.count(Event.id)))
        return JobOutcome(JobState.DONE)

    cfg = make_cfg(db.url, max_job_s=MAX_JOB_S, heartbeat_s=0.1, lease_s=5.0)
    worker = Worker(cfg, db, pipeline_factory=lambda _c, _d: ScriptedPipeline(script), worker_id="w1")
    started = time.monotonic()
    assert worker.run_once()
    assert time.monotonic() - started < SPIN_S + 3, "the limit waited for the session, not for the job"
    armed[0] = False
    assert db.engine.pool.checkedout() == 0, "a connection never came back to the pool"
    assert _write_lock_free(path), "a transaction still holds the write lock"
    row = job_row(db, hung)
    assert row.state == "failed" and row.reason is not None and "per-job time limit of 0.3 s" in row.reason
    assert worker.run_once()
    assert job_row(db, following).state == "done"
    assert db.engine.pool.checkedout() == 0
    db.dispose()


def test_a_job_that_holds_one_session_past_the_grace_is_interrupted_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit waits for a session's end, but not for ever: past the grace it lands inside,
    and the worker renews its pool; the database stays usable."""
    monkeypatch.setattr(worker_mod, "SESSION_GRACE_S", 0.5)
    path = tmp_path / "hipnode.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    (hung,) = add_jobs(db, 1, max_attempts=1)

    def script(job_pk: int, _n: int) -> JobOutcome:
        with db.session() as s:
            record_event(s, "job", job_pk, "working")
            s.flush()  # holds the write lock from here
            for _ in range(300):  # 30 s unless interrupted
                time.sleep(0.1)
        return JobOutcome(JobState.DONE)

    cfg = make_cfg(db.url, max_job_s=MAX_JOB_S, heartbeat_s=0.1, lease_s=5.0)
    worker = Worker(cfg, db, pipeline_factory=lambda _c, _d: ScriptedPipeline(script), worker_id="w1")
    started = time.monotonic()
    assert worker.run_once()
    assert time.monotonic() - started < MAX_JOB_S + 0.5 + 3
    assert db.engine.pool.checkedout() == 0
    assert _write_lock_free(path)
    assert job_row(db, hung).state == "failed"
    db.dispose()
