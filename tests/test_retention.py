"""Retention (issue 15 part 4): on a registry with pending, retrying and paused deliveries, a
running job and a series still receiving, the dry-run lists exactly what the policy says, the
run removes exactly that (files and rows / purged marks, one event each), and nothing in flight
is touched. SQLite and PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from node import retention
from node.config import Config, OutputsConfig, RetentionConfig, StorageConfig
from node.registry import Database, Delivery, Event, Instance, Job, Patient, Result, Series, Study, utcnow
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401

NOW = datetime(2026, 6, 1, 12, 0, 0)
DAY = timedelta(days=1)


@dataclass
class Registry:
    """Builds series with instances, results and deliveries, with files under two roots."""

    db: Database
    storage: Path
    results: Path
    files: dict[tuple[str, int], Path] = field(default_factory=dict)

    def series(self, name: str, *, age: timedelta, state: str = "complete", job: str = "done") -> int:
        with self.db.session() as s:
            p = Patient(patient_id=f"P-{name}")
            s.add(p)
            s.flush()
            st = Study(study_uid=generate_uid(), patient_pk=p.id)
            s.add(st)
            s.flush()
            se = Series(series_uid=generate_uid(), study_pk=st.id, state=state, generation=1,
                        first_received_at=NOW - age, last_received_at=NOW - age)
            s.add(se)
            s.flush()
            s.add(Job(series_pk=se.id, generation=1, state=job, created_at=NOW - age))
            return se.id

    def instance(self, series_pk: int, *, age: timedelta, size: int = 1000, superseded: bool = False) -> int:
        with self.db.session() as s:
            uid = generate_uid()
            rel = f"{uid}.dcm"
            inst = Instance(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1", series_pk=series_pk,
                            transfer_syntax="1.2.840.10008.1.2.1", path=rel, size=size, sha256="0" * 64,
                            received_at=NOW - age, superseded=superseded)
            s.add(inst)
            s.flush()
            (self.storage / rel).write_bytes(b"\0" * size)
            self.files[("instance", inst.id)] = self.storage / rel
            return inst.id

    def result(self, series_pk: int, *, age: timedelta, deliveries: tuple[str, ...] = ("sent",),
               supersedes: int | None = None, kind: str = "sr") -> int:
        with self.db.session() as s:
            job_pk = s.scalar(select(Job.id).where(Job.series_pk == series_pk))
            assert job_pk is not None
            uid = generate_uid()
            r = Result(job_pk=job_pk, series_pk=series_pk, kind=kind, sop_instance_uid=uid,
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", path=f"{uid}.dcm",
                       created_at=NOW - age, supersedes_pk=supersedes)
            s.add(r)
            s.flush()
            for i, state in enumerate(deliveries):
                s.add(Delivery(result_pk=r.id, destination=f"d{i}", state=state))
            (self.results / r.path).write_bytes(b"\1" * 500)
            self.files[("result", r.id)] = self.results / r.path
            return r.id

    def state(self) -> tuple[set[int], set[int]]:
        """Instance rows left, results not purged."""
        with self.db.session() as s:
            return (set(s.scalars(select(Instance.id))),
                    set(s.scalars(select(Result.id).where(Result.purged_at.is_(None)))))


@pytest.fixture
def reg(any_db: Database, tmp_path: Path) -> Registry:  # noqa: F811 - the imported fixture, by name
    (tmp_path / "storage").mkdir()
    (tmp_path / "results").mkdir()
    return Registry(any_db, tmp_path / "storage", tmp_path / "results")


def _cfg(reg: Registry, **policy: float | None) -> Config:
    return Config(storage=StorageConfig(root=reg.storage), outputs=OutputsConfig(root=reg.results),
                  retention=RetentionConfig(**policy))


def test_dry_run_and_run_remove_exactly_the_policy_and_nothing_in_flight(reg: Registry) -> None:
    old, recent = 40 * DAY, 2 * DAY
    # A: old, all delivered → its images go (instances_days 30) and its results (results_days 30)
    a = reg.series("a", age=old)
    a_inst = {reg.instance(a, age=old), reg.instance(a, age=old)}
    a_sr = reg.result(a, age=old, deliveries=("sent", "visible", "failed"))
    # B: old, an SC still pending to a paused destination → nothing of B goes
    b = reg.series("b", age=old)
    b_inst = reg.instance(b, age=old)
    b_sr = reg.result(b, age=old, deliveries=("sent",))
    b_sc = reg.result(b, age=old, deliveries=("sent", "pending"), kind="sc")
    # C: old, a delivery retrying → kept
    c = reg.series("c", age=old)
    c_inst = reg.instance(c, age=old)
    c_sr = reg.result(c, age=old, deliveries=("retrying",))
    # D: old, re-processed (job queued) / E: old, job running / F: old, still receiving
    d = reg.series("d", age=old, job="queued")
    e = reg.series("e", age=old, job="running")
    f = reg.series("f", age=old, state="reopened")
    busy_inst = {reg.instance(x, age=old) for x in (d, e, f)}
    # G: recent; an old superseded version of one of its images and an old superseded SR
    g = reg.series("g", age=recent)
    g_old_version = reg.instance(g, age=10 * DAY, superseded=True)
    g_inst = reg.instance(g, age=recent)
    g_sr_old = reg.result(g, age=10 * DAY)
    g_sr_new = reg.result(g, age=recent, supersedes=g_sr_old)
    instances0, results0 = reg.state()

    cfg = _cfg(reg, instances_days=30, superseded_days=7, results_days=30)
    planned = retention.plan(cfg, reg.db, now=NOW)
    expected = {("instance", i) for i in a_inst | {g_old_version}} | {("result", a_sr), ("result", g_sr_old)}
    assert {(p.entity, p.pk) for p in planned} == expected
    rules = {(p.entity, p.pk): p.rule for p in planned}
    assert rules[("instance", g_old_version)] is retention.Rule.SUPERSEDED_INSTANCE
    assert rules[("result", g_sr_old)] is retention.Rule.SUPERSEDED_RESULT
    assert rules[("result", a_sr)] is retention.Rule.RESULT_AGE
    # a dry run changes nothing
    assert reg.state() == (instances0, results0)
    assert all(p.exists() for p in reg.files.values())

    report = retention.apply(reg.db, planned, "cli:tester", now=NOW)
    assert {(d.entity, d.pk) for d in report.removed} == expected and not report.kept_busy
    instances, results = reg.state()
    assert instances == instances0 - a_inst - {g_old_version}
    assert results == results0 - {a_sr, g_sr_old}
    for key, path in reg.files.items():
        assert path.exists() == (key not in expected), key
    kept = {b_inst, c_inst, g_inst, *busy_inst}
    assert kept <= instances and {b_sr, b_sc, c_sr, g_sr_new} <= results
    with reg.db.session() as s:
        events = s.scalars(select(Event).where(Event.kind == "purged")).all()
        assert {(ev.entity, ev.entity_pk) for ev in events} == expected
        assert all(ev.detail and ev.detail["actor"] == "cli:tester" for ev in events)
        # the purged SR keeps its row, deliveries and chain
        assert s.scalar(select(func.count()).select_from(Delivery).where(Delivery.result_pk == a_sr)) == 3
    # nothing left for the same policy
    assert retention.plan(cfg, reg.db, now=NOW) == []


def test_free_space_target_removes_oldest_idle_images_first(reg: Registry) -> None:
    s1 = reg.series("s1", age=5 * DAY)
    oldest, older, newer = (reg.instance(s1, age=a * DAY, size=1000) for a in (5, 4, 3))
    busy = reg.series("busy", age=9 * DAY, job="running")
    reg.instance(busy, age=9 * DAY, size=1000)  # oldest of all, but its job is running
    cfg = _cfg(reg, min_free_mb=1.0)
    target = 1024 * 1024
    planned = retention.plan(cfg, reg.db, now=NOW, free_bytes=lambda: target - 1500)
    assert [(p.entity, p.pk, p.rule) for p in planned] == [
        ("instance", oldest, retention.Rule.FREE_SPACE), ("instance", older, retention.Rule.FREE_SPACE)]
    assert retention.plan(cfg, reg.db, now=NOW, free_bytes=lambda: target) == []
    assert newer


def test_item_that_became_busy_after_the_plan_is_kept(reg: Registry) -> None:
    a = reg.series("a", age=40 * DAY)
    inst = reg.instance(a, age=40 * DAY)
    sr = reg.result(a, age=40 * DAY)
    planned = retention.plan(_cfg(reg, instances_days=30, results_days=30), reg.db, now=NOW)
    assert len(planned) == 2
    with reg.db.session() as s:  # an operator re-sends the SR between plan and run
        s.execute(Delivery.__table__.update().where(Delivery.result_pk == sr).values(state="pending"))
    report = retention.apply(reg.db, planned, "cli:tester", now=NOW)
    assert report.removed == [] and len(report.kept_busy) == 2
    assert reg.state() == ({inst}, {sr}) and all(p.exists() for p in reg.files.values())


def test_cli_dry_run_then_run(tmp_path: Path) -> None:
    storage, results = tmp_path / "storage", tmp_path / "results"
    storage.mkdir()
    results.mkdir()
    url = f"sqlite:///{tmp_path / 'hipnode.db'}"
    db = Database(url)
    db.migrate()
    reg = Registry(db, storage, results)
    now = utcnow()
    a = reg.series("a", age=timedelta(0))
    with db.session() as s:  # ages relative to the real clock: the CLI uses it
        s.get_one(Series, a).first_received_at = now - 40 * DAY
    old_inst = reg.instance(a, age=NOW - now + 40 * DAY)
    pending_series = reg.series("p", age=timedelta(0))
    reg.instance(pending_series, age=NOW - now + 40 * DAY)
    reg.result(pending_series, age=NOW - now + 40 * DAY, deliveries=("pending",))
    db.dispose()
    cfg = {"database": {"url": url}, "storage": {"root": str(storage)}, "outputs": {"root": str(results)},
           "retention": {"instances_days": 30}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli", "--config", str(path), "retention", *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    dry = cli("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0].startswith(f"would remove instance {old_inst} (series {a}, 40.0 days old")
    assert dry.stdout.splitlines()[-1] == "dry run: 1 item(s), 0.0 MB would be removed"
    assert reg.files[("instance", old_inst)].exists()
    run = cli()
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "1 item(s) removed, 0.0 MB; 0 kept because busy"
    assert not reg.files[("instance", old_inst)].exists()
    assert cli("--dry-run").stdout.strip() == "dry run: 0 item(s), 0.0 MB would be removed"
