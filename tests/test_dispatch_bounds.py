"""Dispatch that survives a bad PACS (issue 13): retries end by elapsed time, not by count; each
destination has its own sender; a PACS that accepts and then stops reading cannot hold the
dispatcher."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select

from node.config import Destination
from node.dispatch import Dispatcher, enqueue_deliveries
from node.domain import DeliveryState
from node.registry import Result, utcnow
from tests.conftest import free_port
from tests.test_dispatch import FakePacs, Store, config, db, store  # noqa: F401 - fixtures


def test_retries_end_by_elapsed_time_not_by_count(store: Store) -> None:  # noqa: F811
    """A PACS down for an hour is retried for as long as ``give_up_after_s`` says (here one
    hour), however many attempts that takes, and then failed with how long it was tried."""
    closed = Destination(name="gone", ae_title="GONE", host="127.0.0.1", port=free_port(), timeout_s=2)
    cfg = config(store, closed, backoff_s=5.0, backoff_max_s=60.0, give_up_after_s=3600.0)
    store.add_results(1, ["gone"])
    dispatcher = Dispatcher(cfg, store.db)
    start = utcnow()
    attempts = 0
    for minutes in range(0, 60, 5):  # twelve attempts within the hour: all retried
        assert dispatcher.run_once(start + timedelta(minutes=minutes, seconds=1)) == 1
        attempts += 1
        (delivery,) = store.deliveries().values()
        assert delivery.state == DeliveryState.RETRYING.value, minutes
    assert dispatcher.run_once(start + timedelta(minutes=61)) == 1
    (delivery,) = store.deliveries().values()
    assert delivery.state == DeliveryState.FAILED.value and delivery.attempts == attempts + 1
    assert delivery.last_error is not None and "attempts over 1.0 h" in delivery.last_error


class TimedPacs(FakePacs):
    """A FakePacs that notes when each instance arrived."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrived: list[float] = []

    def _store(self, event: Any) -> int:
        status = super()._store(event)
        self.arrived.append(time.monotonic())
        return status


def test_a_slow_pacs_does_not_hold_up_another_destination(store: Store) -> None:  # noqa: F811
    slow, fast = TimedPacs(delay_s=2.0), TimedPacs()
    try:
        slow_dest = slow.dest().model_copy(update={"name": "slow"})
        fast_dest = fast.dest().model_copy(update={"name": "fast"})
        store.add_results(3, ["slow"])  # claimed first
        store.add_results(1, ["fast"])
        start = time.monotonic()
        assert Dispatcher(config(store, slow_dest, fast_dest), store.db).run_once() == 4
        took = time.monotonic() - start
    finally:
        slow.stop()
        fast.stop()
    assert len(slow.arrived) == 3 and len(fast.arrived) == 1
    assert fast.arrived[0] - start < 2.0, "the fast PACS waited for the slow one"
    assert took >= 6.0  # the slow one really was slow


def _big_result(results: Store, mb: int = 48) -> None:
    """One Secondary Capture of ``mb`` MiB: more than the loopback socket buffers hold."""
    side = int((mb * 1024 * 1024 / 2) ** 0.5)
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = results.study_uid
    ds.SeriesInstanceUID = results.series_uid
    ds.PatientID = "DISPATCH-1"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(1).integers(0, 4096, (side, side), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(results.root / "big.dcm", enforce_file_format=True)
    with results.db.session() as s:
        r = Result(job_pk=results.job_pk, series_pk=results.series_pk, kind="sc", sop_instance_uid=str(ds.SOPInstanceUID),
                   sop_class_uid=SecondaryCaptureImageStorage, path="big.dcm")
        s.add(r)
        s.flush()
        enqueue_deliveries(s, r.id, ["stalled"])


def _requestor_transports() -> list[threading.Thread]:
    """Live pynetdicom transport threads of associations we requested."""
    return [t for t in threading.enumerate()
            if type(t).__name__ == "DULServiceProvider" and t.is_alive()
            and getattr(getattr(t, "assoc", None), "is_requestor", False)]


def test_a_pacs_that_stops_reading_cannot_hold_the_dispatcher(store: Store) -> None:  # noqa: F811
    """The PACS accepts the association, then stops reading (its reader is stuck for a minute):
    the send is abandoned after the destination's timeout and the delivery retried."""
    stuck, release = threading.Event(), threading.Event()

    def stop_reading(event: Any) -> None:
        stuck.set()
        release.wait(60)  # the association's reader thread: nothing more is read from the socket

    port = free_port()
    ae = AE("STALLED")
    ae.add_supported_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_DATA_RECV, stop_reading)])
    try:
        _big_result(store)
        dest = Destination(name="stalled", ae_title="STALLED", host="127.0.0.1", port=port, timeout_s=3)
        start = time.monotonic()
        assert Dispatcher(config(store, dest), store.db).run_once() == 1
        took = time.monotonic() - start
    finally:
        release.set()
        server.shutdown()  # stops its accept loop too (server_close alone left it spinning)
    assert stuck.is_set()
    assert took < 30.0, f"the dispatcher was held {took:.0f} s by a PACS that stopped reading"
    # pynetdicom sends from the association's own transport thread: it must not stay blocked in
    # send() after the association was given up (the abort closes the socket under it)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and _requestor_transports():
        time.sleep(0.2)
    assert not _requestor_transports(), "a sender thread is still blocked on the stalled socket"
    (delivery,) = store.deliveries().values()
    assert delivery.state == DeliveryState.RETRYING.value
    with store.db.session() as s:
        assert s.scalars(select(Result)).one().path == "big.dcm"
