"""Several worker processes on one PostgreSQL (issue 16 bar): 4 processes, 1,000 jobs, one
worker SIGKILLed mid-job; every job is done exactly once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.jobs import RetryPolicy, sweep_stale
from node.registry import Database, Job
from tests.postgres import postgres_server, postgres_url  # noqa: F401 - fixtures
from tests.test_jobs import add_jobs
from tests.test_worker import start_worker, wait_for

JOBS = 1000
WORKERS = 4


@pytest.fixture
def pg(postgres_url: str) -> Database:  # noqa: F811 - the imported fixture, by name
    db = Database(postgres_url)
    db.migrate()
    return db


@pytest.mark.slow
def test_four_worker_processes_do_a_thousand_jobs_exactly_once_despite_a_kill(pg: Database, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    pks = add_jobs(pg, JOBS)
    lease_s = 2.0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(WORKERS):  # w0, the one to be killed, takes longer per job: it dies mid-job
            sleep_s = 0.3 if i == 0 else 0.02
            procs.append(start_worker(pg, markers, f"w{i}", sleep_s=sleep_s, lease_s=lease_s, heartbeat_s=0.5))
        victim = procs[0]

        def started_by_victim() -> list[str]:
            return [p.name.split(".")[1] for p in markers.glob("started.*.w0")]

        def victim_busy() -> bool:
            done = started_by_victim()
            return len(done) >= 5 and any(not (markers / f"finished.{pk}.w0").exists() for pk in done)

        wait_for(victim_busy, "w0 to be in the middle of its fifth job", timeout_s=120, proc=victim)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        orphans = [pk for pk in started_by_victim() if not (markers / f"finished.{pk}.w0").exists()]
        assert orphans, "w0 was not killed mid-job"

        policy = RetryPolicy(0, 0)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            sweep_stale(pg, policy=policy)  # what the scheduler does in a node
            with pg.session() as s:
                left = s.scalar(select(func.count()).select_from(Job).where(Job.state != "done"))
            if left == 0:
                break
            for p in procs[1:]:
                assert p.poll() is None, f"a worker exited with {p.returncode}"
            time.sleep(0.5)
        assert left == 0, f"{left} jobs not done"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        pg.dispose()

    finished = Counter(p.name.split(".")[1] for p in markers.glob("finished.*"))
    assert sorted(int(k) for k in finished) == sorted(pks), "a job was never finished"
    assert set(finished.values()) == {1}, "a job was finished twice"
    by_worker = Counter(p.name.split(".")[2] for p in markers.glob("finished.*"))
    assert len([w for w in by_worker if w != "w0"]) == WORKERS - 1, by_worker
    with Database(pg.url).session() as s:
        for pk in orphans:
            job = s.get(Job, int(pk))
            assert job is not None and job.state == "done" and job.attempts == 2 and job.worker_id != "w0"
