"""Dispatch against real peers on 127.0.0.1: Orthanc (checked through its REST API) and small
pynetdicom SCPs that count what they receive and answer chosen statuses per SOP Instance UID."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select

from node.config import (
    CallingAE,
    Config,
    ConfigError,
    Destination,
    DispatchConfig,
    OutputsConfig,
    RouteMatch,
    RouteRule,
    TLSConfig,
    parse_config,
)
from node.dispatch import (
    Dispatcher,
    StudyRootQueryRetrieveInformationModelFind,
    Verdict,
    Verification,
    _chunks,
    _contexts,
    _FileInfo,
    classify_status,
    destination_health,
    destination_outputs,
    echo,
    enqueue_deliveries,
    matches,
    outputs_to_compose,
    route,
    send_files,
)
from node.domain import DeliveryState, ResultKind, View
from node.registry import Database, Delivery, Event, Job, Patient, Result, Series, Study, utcnow
from tests.conftest import OrthancServer, free_port, tool

# --------------------------------------------------------------------------- helpers


def make_sc(
    path: Path, study_uid: str, series_uid: str, seed: int, *, ts: str = ExplicitVRLittleEndian
) -> str:
    """A small Secondary Capture with pixel content unique to ``seed``; returns its SOP UID."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "TEST^DISPATCH"
    ds.PatientID = "DISPATCH-1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 99
    ds.InstanceNumber = seed + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if ts == RLELossless:
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    elif ts != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


def dataset_bytes(data: bytes, tmp: Path) -> bytes:
    """The encoded dataset after the file meta (the meta is rewritten by every store)."""
    tmp.write_bytes(data)
    _, offset = split_dataset(tmp)
    return data[offset:]


@dataclass
class Store:
    """A registry with one patient/study/series/job and result files under ``root``."""

    db: Database
    root: Path
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    series_pk: int = 0
    job_pk: int = 0
    made: int = 0

    def __post_init__(self) -> None:
        with self.db.session() as s:
            p = Patient(patient_id="DISPATCH-1")
            s.add(p)
            s.flush()
            st = Study(study_uid=self.study_uid, patient_pk=p.id)
            s.add(st)
            s.flush()
            se = Series(series_uid=generate_uid(), study_pk=st.id, modality="CR")
            s.add(se)
            s.flush()
            job = Job(series_pk=se.id, generation=1, state="done")
            s.add(job)
            s.flush()
            self.series_pk, self.job_pk = se.id, job.id

    def add_results(
        self,
        n: int,
        destinations: list[str],
        *,
        ts: str = ExplicitVRLittleEndian,
        mutate: Callable[[Dataset], None] | None = None,
    ) -> list[str]:
        """``n`` result files + rows, queued for ``destinations``; returns their SOP UIDs.
        ``mutate`` edits the dataset (never the file meta) to make a file a PACS refuses."""
        uids = []
        with self.db.session() as s:
            for _ in range(n):
                seed = self.made
                self.made += 1
                name = f"sc_{seed}.dcm"
                uid = make_sc(self.root / name, self.study_uid, self.series_uid, seed, ts=ts)
                if mutate is not None:
                    ds = dcmread(self.root / name)
                    mutate(ds)
                    ds.save_as(self.root / name)
                r = Result(
                    job_pk=self.job_pk,
                    series_pk=self.series_pk,
                    kind="sc",
                    sop_instance_uid=uid,
                    sop_class_uid=SecondaryCaptureImageStorage,
                    path=name,  # relative to outputs.root
                )
                s.add(r)
                s.flush()
                enqueue_deliveries(s, r.id, destinations)
                uids.append(uid)
        return uids

    def deliveries(self) -> dict[str, Delivery]:
        with self.db.session() as s:
            rows = s.execute(select(Result.sop_instance_uid, Delivery).join(Delivery.result)).all()
            return {uid: d for uid, d in rows}

    def events(self, kind: str | None = None) -> list[Event]:
        with self.db.session() as s:
            q = select(Event).where(Event.entity == "delivery").order_by(Event.id)
            if kind:
                q = q.where(Event.kind == kind)
            return list(s.scalars(q))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'hipnode.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database, tmp_path: Path) -> Store:
    root = tmp_path / "results"
    root.mkdir()
    return Store(db, root)


def config(store: Store, *dests: Destination, **dispatch: Any) -> Config:
    return Config(
        destinations=list(dests),
        dispatch=DispatchConfig(**{"backoff_s": 5.0, "backoff_max_s": 60.0, **dispatch}),
        outputs=OutputsConfig(root=store.root),
    )


def orthanc_dest(orthanc: OrthancServer, **kw: Any) -> Destination:
    return Destination(
        name="pacs", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, timeout_s=10, **kw
    )


class FakePacs:
    """A pynetdicom Storage + Study Root FIND SCP that counts every C-STORE per SOP Instance UID
    and answers ``statuses[uid]`` (default 0x0000)."""

    def __init__(
        self,
        statuses: dict[str, int] | None = None,
        abort_on: set[str] | None = None,
        syntaxes: list[str] | None = None,
        findable: bool = True,
        delay_s: float = 0.0,
        ssl_context: Any = None,
    ) -> None:
        self.statuses = statuses or {}
        self.abort_on = abort_on or set()
        self.findable = findable
        self.delay_s = delay_s
        self.received: Counter[str] = Counter()
        self.datasets: dict[str, Dataset] = {}
        self.syntaxes_used: list[str] = []
        self.associations = 0
        self.lock = threading.Lock()
        self.port = free_port()
        ae = AE("FAKEPACS")
        ae.add_supported_context(
            SecondaryCaptureImageStorage, syntaxes or [ExplicitVRLittleEndian, RLELossless]
        )
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(Verification)
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=ssl_context,
            evt_handlers=[
                (evt.EVT_C_STORE, self._store),
                (evt.EVT_C_FIND, self._find),
                (evt.EVT_ESTABLISHED, self._established),
            ],
        )
        assert server is not None
        self.server = server

    def dest(self, **kw: Any) -> Destination:
        return Destination(
            name="fake", ae_title="FAKEPACS", host="127.0.0.1", port=self.port, timeout_s=10, **kw
        )

    def _established(self, event: Any) -> None:
        with self.lock:
            self.associations += 1

    def _store(self, event: Any) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        with self.lock:
            self.received[uid] += 1
            self.syntaxes_used.append(str(event.context.transfer_syntax))
            status = self.statuses.get(uid, 0x0000)
            if uid in self.abort_on:
                self.abort_on.discard(uid)  # only the first time: a PACS that crashed once
                event.assoc.abort()
                return 0xC000
            if status == 0x0000:
                self.datasets[uid] = ds
        return status

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        uid = str(event.identifier.SOPInstanceUID)
        if self.findable and uid in self.datasets:
            ident = Dataset()
            ident.QueryRetrieveLevel = "IMAGE"
            ident.SOPInstanceUID = uid
            yield 0xFF00, ident
        yield 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def fake_pacs() -> Iterator[FakePacs]:
    pacs = FakePacs()
    yield pacs
    pacs.stop()


# --------------------------------------------------------------------------- routing


def _routing_config() -> Config:
    dests = [
        Destination(name=n, ae_title=n.upper(), host="127.0.0.1", port=104) for n in ("a", "b", "c", "d")
    ]
    return Config(
        destinations=dests,
        calling_aes=[
            CallingAE(ae_title="ER_CR", destinations=["d"]),
            CallingAE(ae_title="SILENT", destinations=[]),
        ],
        routing=[
            RouteRule(match=RouteMatch(modality="c?", body_part="*hip*"), destinations=["a"], stop=False),
            RouteRule(match=RouteMatch(calling_ae="ORTHO_*", view="lateral_hip"), destinations=["b"]),
            RouteRule(match=RouteMatch(modality="CR"), destinations=["c", "a"]),
            RouteRule(match=RouteMatch(modality="*"), destinations=["d"]),
        ],
    )


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        # rule 1 matches (case-insensitive, ? and * wildcards) and does not stop; rule 3 then wins
        ({"modality": "cr", "body_part": "LEFT HIP"}, ["a", "c"]),
        # all given fields must match: body part differs → rule 1 skipped
        ({"modality": "CR", "body_part": "PELVIS"}, ["c", "a"]),
        # first matching stop rule wins (rule 2 before rule 3); the View enum is accepted
        ({"calling_ae": "ORTHO_1", "modality": "DX", "view": View.LATERAL_HIP}, ["b"]),
        ({"calling_ae": "ortho_1", "modality": "DX", "view": "AP_PELVIS"}, ["d"]),
        # a rule field the caller does not know only matches patterns accepting "" (here "*")
        ({"calling_ae": "ORTHO_1"}, ["d"]),
        ({"body_part": "HIP"}, ["d"]),
        # a calling AE with its own destinations overrides rules; an empty list means none
        ({"calling_ae": "ER_CR", "modality": "CR"}, ["d"]),
        ({"calling_ae": "SILENT", "modality": "CR"}, []),
        # DICOM padding is ignored
        ({"modality": "CR ", "body_part": " HIP "}, ["a", "c"]),
    ],
)
def test_route(kw: dict[str, Any], expected: list[str]) -> None:
    assert route(_routing_config(), **kw) == expected


def test_route_no_match_gives_nothing() -> None:
    cfg = Config(
        destinations=[Destination(name="a", ae_title="A", host="127.0.0.1", port=104)],
        routing=[RouteRule(match=RouteMatch(modality="CR"), destinations=["a"])],
    )
    assert route(cfg, modality="MR") == []
    assert route(cfg) == []
    assert route(Config(), modality="CR") == []


def _outputs_config(**outputs: bool) -> Config:
    return Config(
        destinations=[
            Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104, outputs=["sr", "gsps"]),
            Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=104),
            Destination(name="registry", ae_title="REG", host="127.0.0.1", port=104, outputs=["sr"]),
            Destination(name="muted", ae_title="MUTED", host="127.0.0.1", port=104, outputs=[]),
        ],
        outputs=OutputsConfig(**outputs),
    )


def test_outputs_are_chosen_per_destination() -> None:
    """Issue 14: each destination takes the kinds it lists; one without a list takes those
    switched on under ``outputs`` (SR and SC by default; GSPS off)."""
    cfg = _outputs_config()
    assert destination_outputs(cfg, "pacs") == {ResultKind.SR, ResultKind.GSPS}
    assert destination_outputs(cfg, "archive") == {ResultKind.SR, ResultKind.SC}
    assert destination_outputs(cfg, "registry") == {ResultKind.SR}
    assert destination_outputs(cfg, "muted") == frozenset()
    # composed: the defaults, plus a kind only a routed destination asks for
    assert outputs_to_compose(cfg, []) == {ResultKind.SR, ResultKind.SC}
    assert outputs_to_compose(cfg, ["registry"]) == {ResultKind.SR, ResultKind.SC}
    assert outputs_to_compose(cfg, ["pacs", "registry"]) == set(ResultKind)
    # defaults switched: SC off for everybody without a list, GSPS on
    cfg = _outputs_config(sc=False, gsps=True)
    assert destination_outputs(cfg, "archive") == {ResultKind.SR, ResultKind.GSPS}
    assert destination_outputs(cfg, "pacs") == {ResultKind.SR, ResultKind.GSPS}
    assert outputs_to_compose(cfg, ["archive"]) == {ResultKind.SR, ResultKind.GSPS}
    cfg = _outputs_config(sr=False, sc=False)
    assert outputs_to_compose(cfg, []) == frozenset()
    assert outputs_to_compose(cfg, ["registry", "muted"]) == {ResultKind.SR}


def test_destination_outputs_are_validated() -> None:
    base = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    with pytest.raises(ConfigError) as bad_kind:
        parse_config({"destinations": [{**base, "outputs": ["sr", "pdf"]}]})
    assert any(e.startswith("destinations[0].outputs[1]") for e in bad_kind.value.errors), bad_kind.value.errors
    with pytest.raises(ConfigError) as twice:
        parse_config({"destinations": [{**base, "outputs": ["sr", "sr"]}]})
    assert any("must not name an output twice" in e for e in twice.value.errors), twice.value.errors
    assert parse_config({"destinations": [{**base, "outputs": ["gsps"]}]}).destinations[0].outputs == ["gsps"]


@pytest.mark.parametrize(
    ("pattern", "value", "ok"),
    [
        ("c?", "CR", True),
        ("c?", "CRX", False),
        ("*HIP*", "hip", True),
        ("[CR]", "C", False),
        ("[CR]", "[cr]", True),
    ],
)
def test_wildcards_are_dicom_style(pattern: str, value: str, ok: bool) -> None:
    assert matches(pattern, value) is ok


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (0x0000, Verdict.SENT),
        (0xB000, Verdict.SENT),
        (0xB007, Verdict.SENT),
        (None, Verdict.RETRY),
        (0xA700, Verdict.RETRY),
        (0xA7FF, Verdict.RETRY),
        (0x0110, Verdict.RETRY),
        (0x0213, Verdict.RETRY),
        (0xA900, Verdict.FAIL),
        (0xC000, Verdict.FAIL),
        (0xCFFF, Verdict.FAIL),
        (0x0122, Verdict.FAIL),
    ],
)
def test_classify_status(status: int | None, verdict: Verdict) -> None:
    assert classify_status(status) is verdict


# --------------------------------------------------------------------------- queue


def test_enqueue_is_idempotent(store: Store) -> None:
    uids = store.add_results(1, ["a", "b"])
    with store.db.session() as s:
        r = s.scalars(select(Result).where(Result.sop_instance_uid == uids[0])).one()
        first = list(s.scalars(select(Delivery.id).where(Delivery.result_pk == r.id).order_by(Delivery.id)))
        again = enqueue_deliveries(s, r.id, ["b", "a", "b", "c"])
    assert len(first) == 2
    assert again[:2] == [first[1], first[0]] and again[2] not in first
    with store.db.session() as s:
        rows = s.execute(select(Delivery.destination, Delivery.state).where(Delivery.result_pk == r.id)).all()
    assert sorted(rows) == [("a", "pending"), ("b", "pending"), ("c", "pending")]
    assert len(store.events("enqueued")) == 3


# --------------------------------------------------------------------------- Orthanc


def test_results_reach_orthanc_byte_for_byte_and_read_back(
    store: Store, orthanc: OrthancServer, tmp_path: Path
) -> None:
    cfg = config(store, orthanc_dest(orthanc, verify_with_cfind=True))
    uids = store.add_results(3, ["pacs"])
    rle_uid = store.add_results(1, ["pacs"], ts=RLELossless)[0]
    uids += store.add_results(1, ["pacs"], ts=ImplicitVRLittleEndian)

    assert Dispatcher(cfg, store.db).run_once() == 5

    deliveries = store.deliveries()
    assert {d.state for d in deliveries.values()} == {DeliveryState.VISIBLE.value}
    assert all(d.attempts == 1 and d.last_status == 0 and d.sent_at is not None for d in deliveries.values())
    ids = orthanc.instances()
    assert len(ids) == 5
    by_uid = {str(orthanc.instance_tags(i)["SOPInstanceUID"]): i for i in ids}
    assert set(by_uid) == {*uids, rle_uid}
    with store.db.session() as s:
        paths = dict(s.execute(select(Result.sop_instance_uid, Result.path)).all())
    for uid, oid in by_uid.items():
        ours = (store.root / paths[uid]).read_bytes()
        theirs = orthanc.instance_file(oid)
        assert dataset_bytes(theirs, tmp_path / "t.dcm") == dataset_bytes(ours, tmp_path / "o.dcm")
    # the compressed one went in its own transfer syntax
    rle_meta, _ = split_dataset(_write(tmp_path / "rle.dcm", orthanc.instance_file(by_uid[rle_uid])))
    assert rle_meta.TransferSyntaxUID == RLELossless
    kinds = Counter(e.kind for e in store.events())
    assert kinds == {"enqueued": 5, "sent": 5, "visible": 5}

    health = destination_health(store.db, ["pacs", "unused"])
    assert health["pacs"]["visible"] == 5 and health["pacs"]["failed"] == 0
    assert health["pacs"]["last_success_at"] is not None and health["pacs"]["last_error"] is None
    assert health["unused"]["pending"] == 0 and health["unused"]["last_success_at"] is None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_orthanc_refusal_fails_only_that_result(store: Store, orthanc: OrthancServer) -> None:
    """Orthanc answers 0xA900 when the dataset's SOP Class UID contradicts the C-STORE's (taken
    from the file meta) and 0xC000 when the dataset has no SOP Instance UID."""

    def wrong_class(ds: Dataset) -> None:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR; meta says SC

    def no_instance_uid(ds: Dataset) -> None:
        del ds.SOPInstanceUID

    uids = store.add_results(1, ["pacs"])
    uids += store.add_results(1, ["pacs"], mutate=wrong_class)
    uids += store.add_results(1, ["pacs"])
    uids += store.add_results(1, ["pacs"], mutate=no_instance_uid)
    uids += store.add_results(1, ["pacs"])
    assert Dispatcher(config(store, orthanc_dest(orthanc)), store.db).run_once() == 5
    d = store.deliveries()
    assert [d[u].state for u in uids] == ["sent", "failed", "sent", "failed", "sent"]
    assert [d[u].last_status for u in uids] == [0, 0xA900, 0, 0xC000, 0]
    assert all(d[u].last_error for u in (uids[1], uids[3]))
    stored = sorted(str(orthanc.instance_tags(i)["SOPInstanceUID"]) for i in orthanc.instances())
    assert stored == sorted([uids[0], uids[2], uids[4]])
    assert (
        Dispatcher(config(store, orthanc_dest(orthanc)), store.db).run_once(utcnow() + timedelta(days=1)) == 0
    )


def test_pacs_down_then_back_delivers_each_result_exactly_once(store: Store, orthanc: OrthancServer) -> None:
    cfg = config(store, orthanc_dest(orthanc), backoff_s=5.0, backoff_max_s=15.0)
    dispatcher = Dispatcher(cfg, store.db)
    orthanc.stop()
    uids = store.add_results(5, ["pacs"])

    now = utcnow()
    gaps = []
    for attempt in (1, 2, 3, 4):
        assert dispatcher.run_once(now) == 5
        deliveries = store.deliveries()
        assert {d.state for d in deliveries.values()} == {DeliveryState.RETRYING.value}
        assert {d.attempts for d in deliveries.values()} == {attempt}
        assert all(d.last_error and d.last_status is None for d in deliveries.values())
        next_at = {d.next_attempt_at for d in deliveries.values()}
        assert len(next_at) == 1
        nxt = next_at.pop()
        gaps.append((nxt - now).total_seconds())
        assert dispatcher.run_once(nxt - timedelta(seconds=0.5)) == 0  # not due yet
        now = nxt
    assert gaps == [5.0, 10.0, 15.0, 15.0]  # exponential, capped at backoff_max_s

    health = destination_health(store.db)["pacs"]
    assert health["retrying"] == 5 and health["last_error"] and health["last_success_at"] is None

    orthanc.start()  # same ports, same storage
    assert dispatcher.run_once(now) == 5
    assert dispatcher.run_once(now + timedelta(hours=1)) == 0  # nothing left to send
    deliveries = store.deliveries()
    assert {d.state for d in deliveries.values()} == {DeliveryState.SENT.value}
    assert {d.attempts for d in deliveries.values()} == {5}
    stored = [str(orthanc.instance_tags(i)["SOPInstanceUID"]) for i in orthanc.instances()]
    assert sorted(stored) == sorted(uids)
    assert len(store.events("retrying")) == 20 and len(store.events("sent")) == 5


def test_gives_up_after_max_attempts(store: Store) -> None:
    closed = Destination(name="gone", ae_title="GONE", host="127.0.0.1", port=free_port(), timeout_s=2)
    cfg = config(store, closed, max_attempts=2)
    store.add_results(1, ["gone"])
    d = Dispatcher(cfg, store.db)
    assert d.run_once() == 1
    assert d.run_once(utcnow() + timedelta(minutes=1)) == 1
    (delivery,) = store.deliveries().values()
    assert delivery.state == DeliveryState.FAILED.value and delivery.attempts == 2
    assert delivery.last_error is not None and delivery.last_error.startswith("gave up after 2 attempts")
    assert d.run_once(utcnow() + timedelta(hours=1)) == 0


def test_echo_and_send(orthanc: OrthancServer, store: Store, tmp_path: Path) -> None:
    dest = orthanc_dest(orthanc)
    ok, message = echo(dest, "HIPNODE")
    assert ok, message
    ok, message = echo(
        Destination(name="x", ae_title="X", host="127.0.0.1", port=free_port(), timeout_s=2), "HIPNODE"
    )
    assert not ok and "connection failed" in message

    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    uids = [make_sc(f, store.study_uid, store.series_uid, i) for i, f in enumerate(files)]
    junk = tmp_path / "junk.txt"
    junk.write_text("not dicom")
    out = send_files([files[0], junk, files[1]], dest, "HIPNODE")
    assert out == [(files[0], 0), (junk, None), (files[1], 0)]
    stored = sorted(str(orthanc.instance_tags(i)["SOPInstanceUID"]) for i in orthanc.instances())
    assert stored == sorted(uids)


# --------------------------------------------------------------------------- status handling


def test_refused_result_does_not_hold_up_the_queue(store: Store) -> None:
    uids = store.add_results(6, ["fake"])
    pacs = FakePacs(statuses={uids[1]: 0xA900, uids[2]: 0xA700, uids[3]: 0xC001, uids[4]: 0xB000})
    try:
        cfg = config(store, pacs.dest())
        assert Dispatcher(cfg, store.db).run_once() == 6
    finally:
        pacs.stop()
    d = store.deliveries()
    assert pacs.associations == 1  # every result over one association
    assert all(pacs.received[u] == 1 for u in uids)
    assert [d[u].state for u in uids] == ["sent", "failed", "retrying", "failed", "sent", "sent"]
    assert [d[u].last_status for u in uids] == [0x0000, 0xA900, 0xA700, 0xC001, 0xB000, 0x0000]
    assert d[uids[1]].last_error == "status 0xA900"
    assert d[uids[2]].next_attempt_at > utcnow()
    health = destination_health(store.db)["fake"]
    assert (health["sent"], health["failed"], health["retrying"]) == (3, 2, 1)
    assert health["last_error"] in ("status 0xA900", "status 0xC001", "status 0xA700")


def test_association_lost_mid_batch_continues_on_a_new_one(store: Store) -> None:
    uids = store.add_results(4, ["fake"])
    pacs = FakePacs(abort_on={uids[1]})
    try:
        cfg = config(store, pacs.dest())
        assert Dispatcher(cfg, store.db).run_once() == 4
    finally:
        pacs.stop()
    d = store.deliveries()
    assert [d[u].state for u in uids] == ["sent", "retrying", "sent", "sent"]
    assert d[uids[1]].last_status is None and d[uids[1]].last_error
    assert pacs.associations == 2
    assert [pacs.received[u] for u in uids] == [1, 1, 1, 1]


def test_compressed_result_is_decompressed_for_a_pacs_without_that_syntax(store: Store) -> None:
    uid = store.add_results(1, ["fake"], ts=RLELossless)[0]
    pacs = FakePacs(syntaxes=[ImplicitVRLittleEndian])
    try:
        assert Dispatcher(config(store, pacs.dest()), store.db).run_once() == 1
    finally:
        pacs.stop()
    assert store.deliveries()[uid].state == "sent"
    assert pacs.syntaxes_used == [ImplicitVRLittleEndian]
    original = dcmread(next(store.root.iterdir()))
    assert np.array_equal(pacs.datasets[uid].pixel_array, original.pixel_array)


def test_read_back_not_found_stays_sent(store: Store) -> None:
    uid = store.add_results(1, ["fake"])[0]
    pacs = FakePacs(findable=False)
    try:
        cfg = config(store, pacs.dest(verify_with_cfind=True))
        Dispatcher(cfg, store.db, read_back_tries=2, read_back_wait_s=0.05).run_once()
    finally:
        pacs.stop()
    delivery = store.deliveries()[uid]
    assert delivery.state == "sent" and delivery.last_error == "not found by C-FIND read-back"
    assert [e.kind for e in store.events()] == ["enqueued", "sent", "not_visible"]


def _info(sop_class: str, ts: str) -> _FileInfo:
    return _FileInfo(Path("x.dcm"), sop_class, ts, "1.2", "1.2.3", generate_uid())


def test_presentation_contexts_own_syntax_first_and_within_the_limit() -> None:
    sc, sr = SecondaryCaptureImageStorage, "1.2.840.10008.5.1.4.1.1.88.22"
    files = [_info(sc, RLELossless), _info(sr, ImplicitVRLittleEndian), _info(sc, ExplicitVRLittleEndian)]
    assert _contexts(files) == {
        sc: [RLELossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        sr: [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
    }
    many = [(i, _info(f"1.2.3.{i}", ExplicitVRLittleEndian)) for i in range(100)]  # 200 contexts
    chunks = _chunks(many)
    assert [i for chunk in chunks for i, _ in chunk] == list(range(100))
    assert [len(c) for c in chunks] == [63, 37]
    assert all(sum(map(len, _contexts(f for _, f in c).values())) <= 127 for c in chunks)


def test_run_forever_delivers_and_stops(store: Store, fake_pacs: FakePacs) -> None:
    cfg = config(store, fake_pacs.dest(), interval_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=Dispatcher(cfg, store.db).run_forever, args=(stop,))
    thread.start()
    try:
        uids = store.add_results(3, ["fake"])  # queued while the dispatcher is idling
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(fake_pacs.received) < 3:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert fake_pacs.received == Counter(dict.fromkeys(uids, 1))


# --------------------------------------------------------------------------- concurrency


def test_claims_are_exclusive_until_the_lease_ends(store: Store, fake_pacs: FakePacs) -> None:
    store.add_results(3, ["fake"])
    cfg = config(store, fake_pacs.dest())
    a, b = Dispatcher(cfg, store.db, "a"), Dispatcher(cfg, store.db, "b")
    assert len(a._claim(utcnow())) == 3
    assert b._claim(utcnow() + timedelta(days=1)) == []  # due, but claimed (lease on real clock)
    with store.db.session() as s:
        for d in s.scalars(select(Delivery)):
            d.claimed_until = utcnow() - timedelta(seconds=1)  # dispatcher "a" crashed long ago
    assert len(b._claim(utcnow())) == 3
    assert fake_pacs.received == Counter()


def test_two_dispatchers_in_parallel_never_double_send(store: Store, tmp_path: Path) -> None:
    uids = store.add_results(40, ["fake"])
    pacs = FakePacs(delay_s=0.01)
    try:
        cfg = config(store, pacs.dest())
        url = store.db.url
        errors: list[BaseException] = []

        def work(worker: str) -> None:
            own = Database(url)  # its own engine, as a separate process would have
            try:
                d = Dispatcher(cfg, own, worker, batch_size=4)
                while d.run_once() > 0:
                    pass
            except BaseException as exc:
                errors.append(exc)
            finally:
                own.dispose()

        threads = [threading.Thread(target=work, args=(w,)) for w in ("one", "two")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        pacs.stop()
    assert not errors
    assert sorted(pacs.received) == sorted(uids)
    assert set(pacs.received.values()) == {1}
    assert {d.state for d in store.deliveries().values()} == {"sent"}
    by_worker = Counter(e.detail["dispatcher"] for e in store.events("sent") if e.detail)
    assert sum(by_worker.values()) == 40 and set(by_worker) == {"one", "two"}


# --------------------------------------------------------------------------- TLS


def test_tls_destination(store: Store, tmp_path: Path) -> None:
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    uid = store.add_results(1, ["fake"])[0]
    pacs = FakePacs(ssl_context=server_ctx)
    try:
        plain = pacs.dest()
        verified = pacs.dest(tls=TLSConfig(enabled=True, ca_file=cert, verify_peer=True))
        assert not echo(plain, "HIPNODE")[0]  # the PACS speaks TLS only
        ok, message = echo(verified, "HIPNODE")
        assert ok, message
        cfg = config(store, verified)
        assert Dispatcher(cfg, store.db).run_once() == 1
    finally:
        pacs.stop()
    assert pacs.received == Counter({uid: 1})
    assert store.deliveries()[uid].state == "sent"
