"""Races inside a job (issue 13, concurrency): a job overtaken by a newer generation of its
series does not report, and two writers of one result never share a temporary file."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from node.bulk import import_file
from node.config import parse_config
from node.domain import JobState
from node.phantom import render_index
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.pipeline import Pipeline
from node.receive.storage import InstanceStore
from node.registry import Database, Job, Result, Series
from node.series import complete_due_series
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401 - fixtures


@pytest.fixture
def db(any_db: Database) -> Database:  # noqa: F811 - the imported fixture, by name
    """A migrated registry, once on SQLite and once on PostgreSQL."""
    return any_db


def test_a_job_overtaken_by_a_newer_generation_does_not_report(db: Database, tmp_path: Path) -> None:
    """Generation N is running when a late image completes the series again (N+1 queued): N's
    results must not be stored or sent, N+1 reports. Here the newer generation is recorded
    just before N stores; the row lock orders the check against a real completion."""
    cfg = parse_config({
        "storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1},
        "outputs": {"root": str(tmp_path / "results")},
        "series": {"quiet_period_s": 0.01},
    })
    rng = np.random.default_rng(5)
    info = make_study_info(5, 1, "F", rng, modality="DX")
    path = tmp_path / "ap.dcm"
    path.write_bytes(to_bytes(build_dataset(render_index(5, 0, views=["ap_pelvis"], size=256), info, 1, 1, rng)))
    assert import_file(cfg, db, InstanceStore(cfg.storage.root, min_free_mb=1), path, "CR1") == "new"
    time.sleep(0.05)
    (job_pk,) = complete_due_series(db, cfg)

    pipeline = Pipeline(cfg, db)
    original = pipeline._compose_and_store

    def late_image_completes_meanwhile(ctx: Any) -> dict[str, int]:
        with db.session() as s:
            s.execute(update(Series).where(Series.id == ctx.series_pk).values(generation=Series.generation + 1))
            s.commit()
        return original(ctx)

    pipeline._compose_and_store = late_image_completes_meanwhile  # type: ignore[method-assign]
    outcome = pipeline.process(job_pk)
    assert outcome.state is JobState.SKIPPED, outcome
    assert outcome.reason is not None and "superseded while running" in outcome.reason
    with db.session() as s:
        assert s.scalars(select(Result)).all() == []
        assert s.get(Job, job_pk) is not None
    # the SR file written before the check may stay (an unchanged image's SC / GSPS path is the
    # newer job's too, so it is never deleted): nothing refers to it, nothing is sent


def test_two_writers_of_one_result_never_share_a_temporary_file(db: Database, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Both writers are held between writing their temporary file and renaming it: with one
    temporary name per process the second rename would find the file gone."""
    import os

    import node.pipeline as pl
    from tests.dicom_factory import make_result_stub

    cfg = parse_config({"outputs": {"root": str(tmp_path / "results")}})
    models: Any = object()
    pipeline = Pipeline(cfg, db, models=models)
    ds = make_result_stub()

    both_written = threading.Barrier(2, timeout=10)
    real_replace = os.replace

    def replace_after_both(src: Any, dst: Any) -> None:
        both_written.wait()
        real_replace(src, dst)

    monkeypatch.setattr(pl.os, "replace", replace_after_both)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            pipeline._write(ds)
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    written = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert [p.name for p in written] == [f"{ds.SOPInstanceUID}.dcm"]
