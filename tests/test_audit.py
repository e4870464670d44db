"""``hipnode audit`` (issue 15 part 5): who sent what (calling AE, peer host, SOP UIDs, time) and
what was sent where, from the event table, as CSV and JSON — and never a patient attribute."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian

from node.cli import main
from node.dispatch import enqueue_deliveries
from node.registry import Database, Event, Job, Result, record_event, utcnow
from node.registry.audit import COLUMNS, parse_when
from node.registry.ingest import record_instance
from tests.dicom_factory import make_image

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
PHI = ("AUDITPID123", "Auditjane", "19570412")


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Database, dict[str, Any]]:
    """A registry with: a receipt from CR_ROOM1, an identical re-send from PACS2, an event in
    the old shape (no peer host / UIDs in its detail), a result enqueued, sent and failed for
    'pacs', and one event ten days old."""
    url = f"sqlite:///{tmp_path / 'hipnode.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": url}}))
    db = Database(url)
    db.migrate()
    ds = make_image(patient_id="AUDITPID123")
    ds.PatientName = "Doe^Auditjane"
    ds.PatientBirthDate = "19570412"
    other = make_image(seed=7, patient_id="AUDITPID123")
    other.PatientName = "Doe^Auditjane"
    common = {"path": "a.dcm", "size": 100, "transfer_syntax": ExplicitVRLittleEndian, "quiet_period_s": 10}
    with db.session() as s:
        first = record_instance(s, header=ds, sha256="a" * 64, calling_ae="CR_ROOM1", peer_host="10.1.2.3", **common)
        record_instance(s, header=ds, sha256="a" * 64, calling_ae="PACS2", peer_host="10.9.9.9", **common)
        legacy = record_instance(s, header=other, sha256="b" * 64, calling_ae="OLDCR", peer_host="10.4.4.4", **common)
    with db.session() as s:
        # The event as written before issue 15: calling AE only.
        old = s.query(Event).filter_by(entity="instance", entity_pk=legacy.instance_pk, kind="received").one()
        old.detail = {"version": 1, "calling_ae": "OLDCR"}
        job = Job(series_pk=first.series_pk, generation=1, state="done")
        s.add(job)
        s.flush()
        result = Result(
            job_pk=job.id, series_pk=first.series_pk, kind="sr", sop_instance_uid="2.25.4242",
            sop_class_uid=SR_CLASS, path="r.dcm",
        )
        s.add(result)
        s.flush()
        (delivery_pk,) = enqueue_deliveries(s, result.id, ["pacs"])
        # As the dispatcher records outcomes (node.dispatch.Dispatcher._record).
        record_event(s, "delivery", delivery_pk, "retrying", destination="pacs", attempt=1, status=0xA700,
                     reason="status 0xA700: cannot store 'Doe^Auditjane'")
        record_event(s, "delivery", delivery_pk, "sent", destination="pacs", attempt=2, status=0)
        s.add(Event(at=utcnow() - timedelta(days=10), entity="delivery", entity_pk=delivery_pk, kind="sent",
                    detail={"destination": "archive", "status": 0}))
    return config, db, {"sop": str(ds.SOPInstanceUID), "sop_class": str(ds.SOPClassUID),
                        "legacy_sop": str(other.SOPInstanceUID)}


def run_audit(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    assert main(["--config", str(config), "audit", *args]) == 0
    return capsys.readouterr().out


def test_audit_names_senders_objects_and_destinations(
    node: tuple[Path, Database, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, _db, ids = node
    out = tmp_path / "audit.json"
    run_audit(capsys, config, "--since", "1h", "--format", "json", "--out", str(out))
    text = out.read_text()
    rows = json.loads(text)
    assert all(set(r) == set(COLUMNS) for r in rows)
    receipts = [r for r in rows if r["entity"] == "instance"]
    assert [(r["event"], r["calling_ae"], r["peer_host"]) for r in receipts] == [
        ("received", "CR_ROOM1", "10.1.2.3"),
        ("duplicate_received", "PACS2", "10.9.9.9"),
        ("received", "OLDCR", "10.4.4.4"),  # peer host from the instance row: the old event lacked it
    ]
    assert [r["sop_instance_uid"] for r in receipts] == [ids["sop"], ids["sop"], ids["legacy_sop"]]
    assert {r["sop_class_uid"] for r in receipts} == {ids["sop_class"]}
    assert all(r["at"].endswith("Z") for r in rows)

    sent = [r for r in rows if r["entity"] == "delivery"]
    assert [(r["event"], r["destination"], r["status"], r["attempt"]) for r in sent] == [
        ("enqueued", "pacs", None, None),
        ("retrying", "pacs", "0xA700", 1),
        ("sent", "pacs", "0x0000", 2),
    ], "the ten-day-old event is outside --since 1h"
    assert {(r["sop_instance_uid"], r["sop_class_uid"], r["result_kind"]) for r in sent} == {
        ("2.25.4242", SR_CLASS, "sr")
    }
    assert "cannot store" in sent[1]["reason"]
    for value in PHI:
        assert value not in text, value


def test_audit_csv_window_and_no_patient_data(
    node: tuple[Path, Database, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _db, _ids = node
    text = run_audit(capsys, config, "--since", "30d", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 3 + 3 + 1  # three receipts, three recent delivery events, the old one
    for value in PHI:
        assert value not in text, value
    old = run_audit(capsys, config, "--since", "30d", "--until", "5d", "--format", "csv")
    old_rows = list(csv.DictReader(io.StringIO(old)))
    assert [(r["event"], r["destination"]) for r in old_rows] == [("sent", "archive")]


def test_audit_refuses_a_time_it_cannot_read(
    node: tuple[Path, Database, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _db, _ids = node
    assert main(["--config", str(config), "audit", "--since", "last tuesday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_parse_when_forms() -> None:
    now = utcnow()
    assert parse_when("24h", now) == now - timedelta(hours=24)
    assert parse_when("2026-03-01T08:00+01:00").isoformat() == "2026-03-01T07:00:00"
    assert parse_when("2026-03-01T08:00Z").isoformat() == "2026-03-01T08:00:00"
    assert parse_when("2026-03-01").isoformat() == "2026-03-01T00:00:00"
