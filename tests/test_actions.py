"""Operator actions (issue 15 part 3): re-queue, re-send, re-process, pause / resume, each
recorded as an event with who asked; a paused destination is not sent to by the dispatcher.

Run on SQLite and PostgreSQL (the dispatcher's claim and the actions' row locks differ), with
real pynetdicom SCPs on 127.0.0.1 as the PACS (``tests.test_dispatch.FakePacs``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import select

from node import actions
from node.actions import ActionRefused
from node.config import Config, DispatchConfig, OutputsConfig
from node.dispatch import Dispatcher
from node.domain import DeliveryState, JobState
from node.registry import Database, Delivery, Event, Job, Result, Series, utcnow
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401
from tests.test_dispatch import FakePacs, Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(any_db: Database, tmp_path: Path) -> Store:  # noqa: F811 - the imported fixture, by name
    root = tmp_path / "results"
    root.mkdir()
    return Store(any_db, root)


@pytest.fixture
def two_pacs() -> Iterator[tuple[FakePacs, FakePacs]]:
    a, b = FakePacs(), FakePacs()
    yield a, b
    a.stop()
    b.stop()


def _config(store: Store, *pacs: FakePacs) -> Config:
    dests = [p.dest().model_copy(update={"name": f"pacs{i}"}) for i, p in enumerate(pacs)]
    return Config(
        destinations=dests,
        dispatch=DispatchConfig(backoff_s=5.0, backoff_max_s=60.0),
        outputs=OutputsConfig(root=store.root),
    )


def _events(db: Database, kind: str) -> list[Event]:
    with db.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def test_paused_destination_is_not_sent_to_until_resumed(store: Store, two_pacs: tuple[FakePacs, FakePacs]) -> None:
    a, b = two_pacs
    cfg = _config(store, a, b)
    uids = store.add_results(2, ["pacs0", "pacs1"])
    assert actions.set_paused(store.db, cfg, "pacs1", True, "cli:tester", reason="PACS upgrade") == "destination pacs1 paused"
    assert "already paused" in actions.set_paused(store.db, cfg, "pacs1", True, "cli:tester")
    with pytest.raises(ActionRefused, match="not configured"):
        actions.set_paused(store.db, cfg, "nowhere", True, "cli:tester")

    dispatcher = Dispatcher(cfg, store.db, read_back_tries=1)
    assert dispatcher.run_once() == 2  # pacs0's two; pacs1's are not even claimed
    assert sorted(a.received) == sorted(uids) and not b.received
    assert dispatcher.run_once(now=utcnow() + timedelta(hours=1)) == 0
    with store.db.session() as s:
        paused = s.scalars(select(Delivery).where(Delivery.destination == "pacs1")).all()
        assert {(d.state, d.attempts, d.claimed_by) for d in paused} == {(DeliveryState.PENDING.value, 0, None)}

    actions.set_paused(store.db, cfg, "pacs1", False, "web:admin")
    assert dispatcher.run_once() == 2
    assert sorted(b.received) == sorted(uids) and all(n == 1 for n in a.received.values())
    (p,) = _events(store.db, "paused")
    (r,) = _events(store.db, "resumed")
    assert p.entity == "destination" and p.detail == {"destination": "pacs1", "actor": "cli:tester", "reason": "PACS upgrade"}
    assert r.detail is not None and r.detail["actor"] == "web:admin"


def test_resend_sends_the_same_object_again(store: Store, two_pacs: tuple[FakePacs, FakePacs]) -> None:
    a, _ = two_pacs
    cfg = _config(store, a)
    (uid,) = store.add_results(1, ["pacs0"])
    dispatcher = Dispatcher(cfg, store.db, read_back_tries=1)
    pending = store.deliveries()[uid]
    with pytest.raises(ActionRefused, match="already on its way"):
        actions.resend_delivery(store.db, pending.id, "cli:tester")
    assert dispatcher.run_once() == 1
    assert store.deliveries()[uid].state == DeliveryState.SENT.value

    assert "queued again (was sent)" in actions.resend_delivery(store.db, pending.id, "cli:tester")
    d = store.deliveries()[uid]
    assert (d.state, d.attempts) == (DeliveryState.PENDING.value, 0)
    assert dispatcher.run_once() == 1
    assert a.received[uid] == 2
    (ev,) = _events(store.db, "resend")
    assert ev.entity_pk == pending.id and ev.detail is not None
    assert (ev.detail["actor"], ev.detail["previous_state"], ev.detail["sop_instance_uid"]) == ("cli:tester", "sent", uid)

    with store.db.session() as s:  # retention removed the file: nothing left to send
        s.get_one(Result, d.result_pk).purged_at = utcnow()
    with pytest.raises(ActionRefused, match="removed by retention"):
        actions.resend_delivery(store.db, pending.id, "cli:tester")
    with pytest.raises(ActionRefused, match="no such delivery"):
        actions.resend_delivery(store.db, 99999, "cli:tester")


def test_resend_failed_only_touches_failed_ones_of_that_destination(store: Store) -> None:
    store.add_results(3, ["x", "y"])
    with store.db.session() as s:
        rows = s.scalars(select(Delivery).order_by(Delivery.id)).all()
        for d in rows[:4]:
            d.state = DeliveryState.FAILED.value
            d.attempts = 50
    out = actions.resend_failed(store.db, "cli:tester", destination="x")
    assert len(out.done) == 2 and not out.refused
    with store.db.session() as s:
        by = [(d.destination, d.state) for d in s.scalars(select(Delivery).order_by(Delivery.id))]
    assert by == [("x", "pending"), ("y", "failed"), ("x", "pending"), ("y", "failed"), ("x", "pending"), ("y", "pending")]


def _failed_job(store: Store, generation: int = 1, state: str = JobState.FAILED.value) -> int:
    with store.db.session() as s:
        job = Job(series_pk=store.series_pk, generation=generation, state=state, attempts=3, max_attempts=3,
                  reason="boom", worker_id="w1", finished_at=utcnow())
        s.add(job)
        s.flush()
        return job.id


def test_requeue_failed_job(store: Store) -> None:
    with store.db.session() as s:  # the Store's own job (generation 1, done) out of the way
        s.get_one(Job, store.job_pk).generation = 0
    job_pk = _failed_job(store)
    with pytest.raises(ActionRefused, match="only a failed or skipped job"):
        actions.requeue_job(store.db, store.job_pk, "cli:tester")
    assert actions.requeue_job(store.db, job_pk, "web:admin") == f"job {job_pk} re-queued (was failed)"
    with store.db.session() as s:
        job = s.get_one(Job, job_pk)
        assert (job.state, job.attempts, job.reason, job.worker_id) == ("queued", 0, None, None)
        assert job.not_before <= utcnow()
    (ev,) = _events(store.db, "requeued")
    assert ev.entity == "job" and ev.detail == {"actor": "web:admin", "previous_state": "failed"}

    newer = _failed_job(store, generation=2)
    with store.db.session() as s:
        s.get_one(Job, job_pk).state = JobState.FAILED.value
    out = actions.requeue_failed(store.db, "cli:tester")
    assert out.done == [f"job {newer} re-queued (was failed)"]
    assert len(out.refused) == 1 and "re-process the series instead" in out.refused[0]


def test_reprocess_series_makes_a_new_generation(store: Store) -> None:
    cfg = Config(outputs=OutputsConfig(root=store.root))
    with store.db.session() as s:
        series = s.get_one(Series, store.series_pk)
        series.state, series.generation = "open", 1
        uid = series.series_uid
    with pytest.raises(ActionRefused, match="is open"):
        actions.reprocess_series(store.db, cfg, uid, "cli:tester")
    with store.db.session() as s:
        s.get_one(Series, store.series_pk).state = "complete"
    assert "generation 2" in actions.reprocess_series(store.db, cfg, uid, "cli:tester")
    # a second request before the worker ran: generation 3, and the queued 2 is skipped
    assert "generation 3" in actions.reprocess_series(store.db, cfg, uid, "cli:tester")
    with store.db.session() as s:
        jobs = [(j.generation, j.state) for j in s.scalars(select(Job).where(Job.series_pk == store.series_pk).order_by(Job.generation))]
    assert jobs == [(1, "done"), (2, "skipped"), (3, "queued")]
    evs = _events(store.db, "reprocess")
    assert [e.detail["generation"] for e in evs if e.detail] == [2, 3]
    assert evs[1].detail is not None and evs[1].detail["superseded_jobs"] and evs[1].detail["actor"] == "cli:tester"
    with pytest.raises(ActionRefused, match="not in the registry"):
        actions.reprocess_series(store.db, cfg, generate_uid(), "cli:tester")


def test_reprocess_range_takes_series_first_received_in_it(store: Store) -> None:
    cfg = Config(outputs=OutputsConfig(root=store.root))
    now = utcnow()
    with store.db.session() as s:
        first = s.get_one(Series, store.series_pk)
        first.state, first.generation, first.first_received_at = "complete", 1, now - timedelta(days=10)
        study_pk = first.study_pk
        for days, state in ((3, "complete"), (2, "open"), (0.1, "complete")):
            s.add(Series(series_uid=generate_uid(), study_pk=study_pk, state=state,
                         first_received_at=now - timedelta(days=days)))
    out = actions.reprocess_range(store.db, cfg, now - timedelta(days=5), now - timedelta(days=1), "cli:tester")
    assert len(out.done) == 1 and len(out.refused) == 1 and "is open" in out.refused[0]
    out = actions.reprocess_range(store.db, cfg, now - timedelta(days=30), None, "cli:tester")
    assert len(out.done) == 3


def test_cli_actions_print_and_record(tmp_path: Path) -> None:
    """The commands as an operator types them: exit codes, messages, the event's actor."""
    db_url = f"sqlite:///{tmp_path / 'hipnode.db'}"
    cfg = {
        "database": {"url": db_url},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli", "--config", str(path), *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    run = cli("pause", "pacs", "--reason", "maintenance")
    assert (run.returncode, run.stdout.strip()) == (0, "destination pacs paused"), run.stderr
    run = cli("status")
    assert "destination pacs (PACS@127.0.0.1:104): PAUSED by cli:" in run.stdout, run.stdout
    run = cli("requeue", "42")
    assert run.returncode == 1 and "refused: job 42: no such job" in run.stderr
    run = cli("requeue", "--failed")
    assert (run.returncode, run.stdout.strip()) == (0, "nothing to do")
    run = cli("resume", "pacs")
    assert (run.returncode, run.stdout.strip()) == (0, "destination pacs resumed"), run.stderr
    run = cli("pause", "elsewhere")
    assert run.returncode == 1 and "not configured" in run.stderr
    run = cli("reprocess", "--since", "7d")
    assert (run.returncode, run.stdout.strip()) == (0, "nothing to do"), run.stderr
    db = Database(db_url)
    try:
        kinds = [(e.kind, (e.detail or {}).get("actor", "")[:4]) for e in _events(db, "paused") + _events(db, "resumed")]
    finally:
        db.dispose()
    assert kinds == [("paused", "cli:"), ("resumed", "cli:")]
