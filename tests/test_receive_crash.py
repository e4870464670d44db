"""Crash test: SIGKILL the receiver mid-stream; every acknowledged instance must survive.

The receiver runs as a subprocess (``python -m node.receive``). A pynetdicom SCU sends 200
small images in one association and records each status; after 60 acknowledgements a timer
SIGKILLs the receiver while the stream continues. After a restart: every instance answered
0x0000 is on disk with the sha256 of the bytes sent and in the registry; re-sending the rest
(and, harmlessly, anything whose answer was lost) ends with exactly 200 instances.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from sqlalchemy import func, select

from node.config import load_config
from node.registry.db import Database
from node.registry.models import Instance, Job, Series, utcnow
from node.series import complete_due_series
from tests.conftest import free_port, wait_port
from tests.dicom_factory import make_image, split_part10
from tests.test_receive_support import scu_ae, send_raw

ROOT = Path(__file__).resolve().parent.parent
COUNT = 200
KILL_AFTER_ACKS = 60


def _start(cfg_path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.receive", "--config", str(cfg_path)],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    wait_port(port, 60, proc)
    return proc


def _dataset(i: int) -> tuple[str, bytes]:
    from io import BytesIO

    ds = make_image(rows=32, cols=32, seed=404, instance_number=i + 1)
    fp = BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    return str(ds.SOPInstanceUID), split_part10(fp.getvalue())[1]


def _send_all(
    port: int, items: list[tuple[str, bytes]], on_ack: threading.Event | None
) -> dict[str, int | None]:
    """Send ``items`` in one association; status per SOP Instance UID (None: no answer)."""
    statuses: dict[str, int | None] = {}
    ae = scu_ae((DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian]), ae_title="CRASHSCU")
    assoc = ae.associate("127.0.0.1", port, ae_title="HIPNODE")
    assert assoc.is_established
    acks = 0
    for n, (sop, data) in enumerate(items, start=1):
        status = send_raw(
            assoc, DigitalXRayImageStorageForPresentation, sop, data, message_id=n, timeout_s=15
        )
        statuses[sop] = status
        if status is None:
            break  # the receiver died: nothing else in this association was answered
        acks += status == 0
        if on_ack is not None and acks == KILL_AFTER_ACKS:
            on_ack.set()
    if assoc.is_established:
        assoc.release()
    else:
        assoc.abort()
    return statuses


def test_sigkill_mid_stream_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    port = free_port()
    storage = tmp_path / "storage"
    db_url = f"sqlite:///{tmp_path / 'hipnode.db'}"
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        json.dumps(
            {
                "node": {"host": "127.0.0.1", "port": port},
                "storage": {"root": str(storage), "min_free_mb": 1},
                "database": {"url": db_url},
                "log_level": "WARNING",
            }
        )
    )
    log = tmp_path / "receiver.log"
    items = [_dataset(i) for i in range(COUNT)]
    sent_sha = {sop: hashlib.sha256(data).hexdigest() for sop, data in items}

    proc = _start(cfg_path, port, log)
    reached = threading.Event()

    def killer() -> None:
        reached.wait(120)
        os.kill(proc.pid, signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        statuses = _send_all(port, items, reached)
    finally:
        t.join(30)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    acked = [sop for sop, st in statuses.items() if st == 0]
    assert KILL_AFTER_ACKS <= len(acked) < COUNT, f"kill did not land mid-stream ({len(acked)} acks)"
    assert all(st in (0, None) for st in statuses.values()), statuses

    proc = _start(cfg_path, port, log)
    try:
        db = Database(db_url)
        with db.session() as s:
            rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
        for sop in acked:
            row = rows.get(sop)
            assert row is not None, "acknowledged instance missing from the registry"
            assert row.sha256 == sent_sha[sop]
            on_disk = split_part10((storage / row.path).read_bytes())[1]
            assert hashlib.sha256(on_disk).hexdigest() == sent_sha[sop], "acknowledged file not intact"
        assert not list(storage.rglob("*.part")), "stale temp files not cleaned at start-up"

        rest = [(sop, data) for sop, data in items if statuses.get(sop) != 0]
        again = _send_all(port, rest, None)
        assert all(st == 0 for st in again.values()), again
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == COUNT
            assert s.scalar(select(func.count(func.distinct(Instance.sop_instance_uid)))) == COUNT
            assert s.scalar(select(func.count()).select_from(Instance).where(Instance.version > 1)) == 0
            n_series = s.scalar(select(func.count()).select_from(Series))
        # Each completed series yields exactly one job, however often completion runs.
        later = utcnow() + timedelta(hours=1)
        first = complete_due_series(db, load_config(cfg_path), now=later)
        assert complete_due_series(db, load_config(cfg_path), now=later) == []
        with db.session() as s:
            assert len(first) == n_series == s.scalar(select(func.count()).select_from(Job))
        db.dispose()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
