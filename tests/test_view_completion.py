"""View-aware series completion (issue 15 item 6): header view hints, a study that closes as
soon as its expected views are in, and the adaptive quiet period. Registry tests run on SQLite
and on a real PostgreSQL server."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from node.bulk import import_file, ingest_file
from node.config import Config, ConfigError, parse_config
from node.domain import SeriesState
from node.phantom import render_index
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.receive.storage import InstanceStore
from node.registry import Database, Event, Series, utcnow
from node.registry.ingest import record_instance
from node.series import _adaptive_due, _complete_one, adaptive_quiet_period, complete_due_series
from node.viewhint import ViewFields, classify, compile_patterns
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401 - fixtures

# --- header view hints ------------------------------------------------------------------------


def fields(**kw: str) -> ViewFields:
    header = Dataset()
    for keyword, value in kw.items():
        setattr(header, keyword, value)
    return ViewFields.from_header(header)


@pytest.mark.parametrize(
    ("header", "view"),
    [
        ({"ViewPosition": "AP", "BodyPartExamined": "PELVIS", "SeriesDescription": "AP PELVIS"}, "ap_pelvis"),
        ({"SeriesDescription": "ap pelvis"}, "ap_pelvis"),  # words alone, any case
        ({"ViewPosition": "AP", "ImageLaterality": "B", "BodyPartExamined": "HIP"}, "ap_pelvis"),
        ({"ViewPosition": "AP", "BodyPartExamined": "HIP", "ImageLaterality": "R"}, "ap_hip"),
        ({"SeriesDescription": "AP HIP LEFT"}, "ap_hip"),
        ({"ViewPosition": "LL", "BodyPartExamined": "HIP", "SeriesDescription": "CROSS-TABLE LAT HIP L"}, "lateral_hip"),
        ({"ViewPosition": "XTABLE", "BodyPartExamined": "HIP"}, "lateral_hip"),
        ({"ViewPosition": "RL", "StudyDescription": "XR PELVIS AND HIP"}, "lateral_hip"),  # study words: context
        ({"ProtocolName": "Hip lateral", "Laterality": "R"}, "lateral_hip"),
        ({"SeriesDescription": "CROSS TABLE", "BodyPartExamined": "PELVIS"}, "lateral_hip"),
        ({"ViewPosition": "AP", "BodyPartExamined": "HIP", "SeriesDescription": "FROG LEG HIP L"}, "oblique_hip"),
        # not a hip view, or not said
        ({"ViewPosition": "AP", "BodyPartExamined": "CHEST", "SeriesDescription": "AP PELVIS"}, None),
        ({"ViewPosition": "LL", "SeriesDescription": "KNEE LAT"}, None),
        ({"ViewPosition": "PA", "SeriesDescription": "PA CHEST"}, None),
        ({"StudyDescription": "AP PELVIS"}, None),  # describes every series of the study: no view
        ({"BodyPartExamined": "PELVIS"}, None),
        ({}, None),
    ],
)
def test_header_view_hints(header: dict[str, str], view: str | None) -> None:
    assert classify(fields(**header)) == view


def test_view_hints_of_the_phantom_writer_match_its_truth() -> None:
    """The phantom's headers (as a modality writes them) give the view it rendered."""
    rng = np.random.default_rng(3)
    info = make_study_info(3, 1, "F", rng, modality="CR")
    for i, view in enumerate(["ap_pelvis", "ap_hip", "lateral_hip", "oblique_hip"]):
        img = render_index(3, i, views=[view], size=64)
        assert img.truth.view.value == view
        assert classify(ViewFields.from_header(build_dataset(img, info, i + 1, 1, rng))) == view


def test_per_ae_patterns_come_first_and_may_name_views_of_their_own() -> None:
    frog = fields(ViewPosition="AP", BodyPartExamined="HIP", SeriesDescription="FROG LEG HIP L")
    assert classify(frog, compile_patterns({"lateral_hip": r"frog"})) == "lateral_hip"
    knee = fields(SeriesDescription="Knie a.p. stehend")
    assert classify(knee) is None
    assert classify(knee, compile_patterns({"ap_knee": r"knie\s+a\.?p"})) == "ap_knee"


def test_expected_views_are_checked_in_the_config() -> None:
    with pytest.raises(ConfigError, match="unknown view"):
        parse_config({"calling_aes": [{"ae_title": "CR1", "expected_views": ["ap_pelvis", "lat"]}]})
    with pytest.raises(ConfigError, match="view_patterns"):
        parse_config({"calling_aes": [{"ae_title": "CR1", "view_patterns": {"lateral_hip": "("}}]})
    ae = parse_config(
        {"calling_aes": [{"ae_title": "CR1", "expected_views": ["ap_knee"], "view_patterns": {"ap_knee": "knie"}}]}
    ).calling_aes[0]
    assert ae.expected_views == ["ap_knee"]


# --- a study of AP pelvis + lateral -------------------------------------------------------------


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One study, two series: an AP pelvis and a cross-table lateral, as the phantom writer
    sets their headers (ViewPosition AP / LL, SeriesDescription "AP PELVIS" / "CROSS-TABLE LAT
    HIP …"). Rendered once: both back-ends import the same files into their own registry."""
    folder = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(21)
    out = {}
    for study, prefix in ((1, ""), (2, "second-")):
        info = make_study_info(21, study, "F", rng, modality="DX")
        for number, view in enumerate(["ap_pelvis", "lateral_hip"], start=1):
            ds = build_dataset(render_index(21, 10 * study + number, views=[view], size=256), info, number, 1, rng)
            out[prefix + view] = folder / f"{prefix}{view}.dcm"
            out[prefix + view].write_bytes(to_bytes(ds))
    return out


def view_cfg(tmp_path: Path, **ae: object) -> Config:
    return parse_config(
        {
            "storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1},
            "series": {"quiet_period_s": 60},
            "calling_aes": [
                {"ae_title": "CR1", "quiet_period_s": 60, "expected_views": ["ap_pelvis", "lateral_hip"], **ae},
                {"ae_title": "CR2", "quiet_period_s": 60},
            ],
        }
    )


def all_series(db: Database) -> list[Series]:
    with db.session() as s:
        return list(s.scalars(select(Series).order_by(Series.id)).all())


def test_ap_pelvis_and_lateral_close_the_study_before_the_quiet_period(
    any_db: Database, tmp_path: Path, study_files: dict[str, Path]  # noqa: F811
) -> None:
    cfg = view_cfg(tmp_path)
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    start = time.monotonic()
    assert import_file(cfg, any_db, store, study_files["ap_pelvis"], "CR1") == "new"
    assert complete_due_series(any_db, cfg) == [], "the lateral is still missing"
    assert import_file(cfg, any_db, store, study_files["lateral_hip"], "CR1") == "new"

    queued = complete_due_series(any_db, cfg)
    elapsed = time.monotonic() - start
    assert len(queued) == 2 and elapsed < 1.0, elapsed
    rows = all_series(any_db)
    assert [(r.state, r.generation) for r in rows] == [(SeriesState.COMPLETE.value, 1)] * 2
    assert all(r.completed_at is not None and r.completed_at < r.complete_after - timedelta(seconds=55) for r in rows)
    with any_db.session() as s:
        details = [e.detail for e in s.scalars(select(Event).where(Event.entity == "series", Event.kind == "complete"))]
    assert [(d or {}).get("closed_by") for d in details] == ["expected_views"] * 2
    assert all((d or {})["views"] == ["ap_pelvis", "lateral_hip"] for d in details)
    assert complete_due_series(any_db, cfg) == [], "one job per generation, not one per tick"


def test_only_the_ap_in_nothing_completes_early(
    any_db: Database, tmp_path: Path, study_files: dict[str, Path]  # noqa: F811
) -> None:
    cfg = view_cfg(tmp_path)
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    assert import_file(cfg, any_db, store, study_files["ap_pelvis"], "CR1") == "new"
    assert complete_due_series(any_db, cfg) == []
    assert complete_due_series(any_db, cfg, now=utcnow() + timedelta(seconds=50)) == []
    assert [r.state for r in all_series(any_db)] == [SeriesState.OPEN.value]
    # ... and the quiet period still closes it in the end
    assert len(complete_due_series(any_db, cfg, now=utcnow() + timedelta(seconds=61))) == 1


def test_views_close_early_only_for_an_ae_that_expects_them(
    any_db: Database, tmp_path: Path, study_files: dict[str, Path]  # noqa: F811
) -> None:
    """CR2 has no expected_views; and a series recorded with a longer wait than its AE's own
    (the importer's week) is not the completer's to close early."""
    cfg = view_cfg(tmp_path)
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    for view in ("ap_pelvis", "lateral_hip"):
        assert import_file(cfg, any_db, store, study_files[view], "CR2") == "new"
    assert complete_due_series(any_db, cfg) == []

    before = {r.id for r in all_series(any_db)}
    # a second study, under CR1, recorded the way the importer records (a week's wait)
    for view in ("ap_pelvis", "lateral_hip"):
        ingest_file(cfg, any_db, store, study_files["second-" + view], "CR1", quiet_period_s=7 * 24 * 3600.0)
    held = [r for r in all_series(any_db) if r.id not in before]
    assert len(held) == 2 and all(r.calling_ae == "CR1" for r in held)
    assert complete_due_series(any_db, cfg) == []
    assert {r.state for r in all_series(any_db)} == {SeriesState.OPEN.value}


# --- adaptive quiet period ----------------------------------------------------------------------


def record(db: Database, ae: str, series_uid: str, at: datetime) -> None:
    header = Dataset()
    header.StudyInstanceUID = "2.25.1" + series_uid[-10:]
    header.SeriesInstanceUID = series_uid
    header.SOPInstanceUID = f"2.25.{uuid.uuid4().int}"
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    header.Modality = "DX"
    with db.session() as s:
        record_instance(
            s, header=header, path="none.dcm", size=1, sha256=uuid.uuid4().hex + uuid.uuid4().hex,
            transfer_syntax="1.2.840.10008.1.2.1", calling_ae=ae, peer_host="h", quiet_period_s=60, now=at,
        )


def test_the_quiet_period_adapts_to_the_modality_pace(any_db: Database, tmp_path: Path) -> None:  # noqa: F811
    """FAST and SLOW send at the same pace (an image every 0.5 s); only FAST has adaptive_quiet.
    Its quiet period becomes 3 x 0.5 s = 1.5 s: a series silent for 2 s closes, one silent for
    1 s does not, and SLOW's wait the full 60 s."""
    cfg = parse_config(
        {
            "storage": {"root": str(tmp_path / "storage")},
            "series": {"quiet_period_s": 60, "adaptive_min_s": 1.0},
            "calling_aes": [{"ae_title": "FAST", "adaptive_quiet": True}, {"ae_title": "SLOW"}],
        }
    )
    fast = cfg.calling_aes[0]
    t0 = utcnow() - timedelta(seconds=30)
    for ae in ("FAST", "SLOW"):
        for n in range(2):
            uid = f"2.25.{uuid.uuid4().int}"
            for i in range(3):
                record(any_db, ae, uid, t0 + timedelta(seconds=n * 10 + i * 0.5))
    assert adaptive_quiet_period(any_db, cfg, fast) is None, "4 gaps: too little evidence yet"
    uid = f"2.25.{uuid.uuid4().int}"
    for i in range(2):
        record(any_db, "FAST", uid, t0 + timedelta(seconds=19 + i * 0.5))
    assert adaptive_quiet_period(any_db, cfg, fast) == pytest.approx(1.5)
    recent = f"2.25.{uuid.uuid4().int}"
    record(any_db, "FAST", recent, t0 + timedelta(seconds=21))

    queued = complete_due_series(any_db, cfg, now=t0 + timedelta(seconds=22))
    by_ae = {(r.calling_ae, r.series_uid): r.state for r in all_series(any_db)}
    assert by_ae[("FAST", recent)] == SeriesState.OPEN.value, "silent 1 s < 1.5 s"
    assert sorted(st for (ae, _), st in by_ae.items() if ae == "FAST") == ["complete"] * 3 + ["open"]
    assert all(st == "open" for (ae, _), st in by_ae.items() if ae == "SLOW")
    assert len(queued) == 3


def test_an_instance_arriving_after_the_adaptive_check_keeps_its_series_open(
    any_db: Database, tmp_path: Path  # noqa: F811
) -> None:
    """The cut-off is re-checked under the row lock: an instance committed between the look-up
    and the completion moves ``last_received_at`` past it, so the series stays open."""
    cfg = parse_config(
        {"series": {"quiet_period_s": 60, "adaptive_min_s": 1.0}, "calling_aes": [{"ae_title": "FAST", "adaptive_quiet": True}]}
    )
    t0 = utcnow() - timedelta(seconds=30)
    uids = [f"2.25.{uuid.uuid4().int}" for _ in range(3)]
    for n, uid in enumerate(uids):
        for i in range(3):
            record(any_db, "FAST", uid, t0 + timedelta(seconds=n * 5 + i * 0.5))
    now = t0 + timedelta(seconds=20)
    found = _adaptive_due(any_db, cfg, now)
    assert len(found) == 3
    record(any_db, "FAST", uids[0], now - timedelta(seconds=0.1))  # arrives in between
    assert _complete_one(any_db, cfg, found[0].series_pk, now, found[0]) is None
    assert [_complete_one(any_db, cfg, e.series_pk, now, e) is not None for e in found[1:]] == [True, True]
    states = {r.series_uid: r.state for r in all_series(any_db)}
    assert states[uids[0]] == SeriesState.OPEN.value
