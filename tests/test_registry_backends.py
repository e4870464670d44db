"""The receiver's ingest path and the status page on both registries (SQLite and a real
PostgreSQL server): what we claim to support is exercised on both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from node.bulk import import_file
from node.config import parse_config
from node.phantom import render_index
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.receive.storage import InstanceStore
from node.registry import Database, Event, Instance, Patient, Series, Study
from node.series import complete_due_series
from node.status import collect_status
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401


def _files(folder: Path) -> list[Path]:
    rng = np.random.default_rng(9)
    info = make_study_info(9, 1, "F", rng, modality="DX")
    out = []
    for i in range(2):
        ds = build_dataset(render_index(9, i, views=["ap_hip"], size=256), info, 1, i + 1, rng)
        path = folder / f"{i}.dcm"
        path.write_bytes(to_bytes(ds))
        out.append(path)
    return out


def test_ingest_versions_completion_and_status(any_db: Database, tmp_path: Path) -> None:  # noqa: F811
    cfg = parse_config(
        {"storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1}, "series": {"quiet_period_s": 0.01}}
    )
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    files = _files(tmp_path)
    assert [import_file(cfg, any_db, store, f, "CR1") for f in files] == ["new", "new"]
    assert import_file(cfg, any_db, store, files[0], "CR1") == "duplicate"

    import time

    time.sleep(0.05)
    assert len(complete_due_series(any_db, cfg)) == 1
    # A changed re-send of the same SOP instance: a new version, the series re-opens.
    changed = tmp_path / "changed.dcm"
    data = bytearray(files[1].read_bytes())
    data[-100] ^= 0xFF  # one pixel byte differs
    changed.write_bytes(bytes(data))
    assert import_file(cfg, any_db, store, changed, "CR1") == "new_version"
    with any_db.session() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 1
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        series = s.scalars(select(Series)).one()
        assert series.state == "reopened" and series.generation == 1
        versions = sorted((i.version, i.superseded) for i in s.scalars(select(Instance)).all())
        assert versions == [(1, False), (1, True), (2, False)]
        assert s.scalar(select(func.count()).select_from(Event).where(Event.entity == "instance")) >= 3
    time.sleep(0.05)
    assert len(complete_due_series(any_db, cfg)) == 1
    status = collect_status(cfg, any_db)
    assert status["instances"] == {"received": 3}
    assert status["series"] == {"complete": 1}
    assert status["queue_depth"] == 2 or status["jobs"].get("queued", 0) + status["jobs"].get("skipped", 0) == 2


def test_a_sop_instance_uid_reused_in_another_study_is_kept_apart(any_db: Database, tmp_path: Path) -> None:  # noqa: F811
    """The same SOP Instance UID arriving in another patient's study (a modality or archive that
    reuses UIDs) is a second object: the first is not superseded, both series keep their image,
    and the reuse is an event."""
    import pydicom
    from pydicom.uid import generate_uid

    cfg = parse_config({"storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1}})
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    first = _files(tmp_path)[0]
    other = pydicom.dcmread(first)
    other.PatientID = "OTHER-PATIENT"
    other.StudyInstanceUID = generate_uid()
    other.SeriesInstanceUID = generate_uid()
    reused = tmp_path / "reused.dcm"
    other.save_as(reused)
    assert import_file(cfg, any_db, store, first, "CR1") == "new"
    assert import_file(cfg, any_db, store, reused, "CR2") == "new"
    assert import_file(cfg, any_db, store, reused, "CR2") == "duplicate"
    with any_db.session() as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [(r.version, r.superseded) for r in rows] == [(1, False), (2, False)]
        assert rows[0].series_pk != rows[1].series_pk
        kinds = s.scalars(select(Event.kind).where(Event.entity == "instance", Event.entity_pk == rows[1].id)).all()
        assert "uid_reused" in kinds
    # a corrected re-send in the first series: numbered after the other series' version
    changed = tmp_path / "changed.dcm"
    data = bytearray(first.read_bytes())
    data[-100] ^= 0xFF
    changed.write_bytes(bytes(data))
    assert import_file(cfg, any_db, store, changed, "CR1") == "new_version"
    with any_db.session() as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [(r.version, r.superseded) for r in rows] == [(1, True), (2, False), (3, False)]


def test_an_instance_arriving_while_its_series_completes_reopens_it(any_db: Database, tmp_path: Path) -> None:  # noqa: F811
    """The completion race (issue 13): a completer holds the series row (marking it complete)
    while an instance of that series arrives. The receiver must wait for it and re-open the
    series, so the instance gets the next generation; had it read the row without a lock it
    would have seen "open", only moved the quiet period, and left the instance out."""
    import threading
    import time

    from sqlalchemy import update

    cfg = parse_config({"storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1}})
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    first, second = _files(tmp_path)
    assert import_file(cfg, any_db, store, first, "CR1") == "new"
    with any_db.session() as s:
        series_pk = s.scalars(select(Series.id)).one()

    locked, done = threading.Event(), threading.Event()

    def completer() -> None:
        with any_db.session() as s:
            s.execute(select(Series).where(Series.id == series_pk).with_for_update()).scalar_one()
            s.execute(update(Series).where(Series.id == series_pk).values(state="complete", generation=1))
            locked.set()
            time.sleep(1.0)  # the instance arrives while the completion is not yet committed
            s.commit()
        done.set()

    t = threading.Thread(target=completer)
    t.start()
    assert locked.wait(10)
    assert import_file(cfg, any_db, store, second, "CR1") == "new"
    t.join(10)
    assert done.is_set()
    with any_db.session() as s:
        series = s.get(Series, series_pk)
        assert series is not None and series.state == "reopened", series.state
        kinds = s.scalars(select(Event.kind).where(Event.entity == "series", Event.entity_pk == series_pk)).all()
        assert "reopened" in kinds
