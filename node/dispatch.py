"""Dispatch: deliver our results (SR, SC) to the destinations routing picks, and prove it.

Why it looks the way it does:

* **One row per result × destination** (``Delivery``), claimed atomically (``claimed_by`` /
  ``claimed_until`` set by a conditional UPDATE inside one transaction — ``BEGIN IMMEDIATE`` on
  SQLite, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so any number of dispatcher processes can
  run against one database without two of them sending the same delivery at the same time. A
  crashed dispatcher's claims simply expire (``lease_s``) and are picked up again.
* **One association per destination per pass**: setting one up costs round trips, and on many
  PACS authentication and an audit entry, so everything due for a destination goes over one.
* **The file's own bytes go on the wire** when the PACS accepts its transfer syntax (no decode,
  no re-encode: what the PACS stores is what we wrote). Explicit/implicit little endian are
  proposed as a fallback; a compressed result is decompressed only when the PACS accepts no
  compressed syntax for it.
* **Nothing blocks the queue**: a result refused for good is marked ``failed`` with the status
  and reason and the next one is sent on the same association (or a fresh one if the PACS
  dropped it). Transient trouble (network, association rejected, out of resources, processing
  failure) retries with exponential backoff up to a cap, and gives up ``give_up_after_s`` after
  the result was queued (7 days by default; by time, not by count: an outage's length is what
  matters). Each destination has its own sender thread, so a slow PACS holds up only itself; a
  PACS that stops reading mid-transfer is given up after the destination's ``timeout_s`` (the
  DIMSE timeout aborts the association, which also frees pynetdicom's blocked sender thread:
  ``tests/test_dispatch_bounds.py``).
* Every state change is written with its event in one short transaction, never held open
  across network I/O (on SQLite a transaction is the database-wide write lock).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node import observe, wake
from node.config import Config, Destination, RouteMatch
from node.domain import DeliveryState, ResultKind
from node.registry import Database, Delivery, DestinationState, Event, Result, record_event, utcnow
from node.registry.db import is_sqlite

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# pynetdicom generates its SOP class constants at import time (invisible to mypy); spelled out.
Verification = UID("1.2.840.10008.1.1")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_DUE_STATES = (DeliveryState.PENDING.value, DeliveryState.RETRYING.value)
# One association carries at most 128 presentation contexts; one is kept for the C-FIND read-back.
_MAX_CONTEXTS = 127


# --------------------------------------------------------------------------- routing


@functools.lru_cache(maxsize=256)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    """DICOM-style wildcards only (``*`` any run, ``?`` one character); everything else literal,
    unlike ``fnmatch`` which would also treat ``[`` as a character class."""
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern.strip())
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def matches(pattern: str, value: str | None) -> bool:
    """Case-insensitive wildcard match; DICOM padding is ignored, a missing value is ``""``."""
    return _wildcard_regex(pattern).fullmatch((value or "").strip()) is not None


def _rule_matches(match: RouteMatch, values: dict[str, str | None]) -> bool:
    for field_name, value in values.items():
        pattern = getattr(match, field_name)
        if pattern is not None and not matches(pattern, value):
            return False
    return True


def route(
    cfg: Config,
    *,
    calling_ae: str | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    view: str | Enum | None = None,
) -> list[str]:
    """Destination names for a result, in order, without duplicates.

    A calling AE with its own ``destinations`` list overrides the routing rules (an empty list
    means "send this AE's results nowhere"). Otherwise rules are tried in order; a rule matches
    when every field it gives matches (a field the rule gives but the caller does not know only
    matches a pattern that accepts the empty string, e.g. ``*``); the first matching rule wins
    unless it says ``stop: false``. No match → no destinations.
    """
    if calling_ae:
        ae = cfg.calling_ae(calling_ae)
        if ae is not None and ae.destinations is not None:
            return list(dict.fromkeys(ae.destinations))
    view_value = view.value if isinstance(view, Enum) else view
    values: dict[str, str | None] = {
        "calling_ae": calling_ae,
        "modality": modality,
        "body_part": body_part,
        "view": str(view_value) if view_value is not None else None,
    }
    out: list[str] = []
    for rule in cfg.routing:
        if _rule_matches(rule.match, values):
            out.extend(d for d in rule.destinations if d not in out)
            if rule.stop:
                break
    return out


def destination_outputs(cfg: Config, name: str) -> frozenset[ResultKind]:
    """The kinds of result destination ``name`` receives: its own ``outputs`` list, else the
    kinds switched on under ``outputs`` (issue 14: a PACS whose viewer shows presentation states
    can take the GSPS instead of the SC copy, a registry the SR alone). An unknown name gets the
    defaults (the dispatcher fails its deliveries with the reason)."""
    defaults = frozenset(k for k in ResultKind if getattr(cfg.outputs, k.value))
    try:
        own = cfg.destination(name).outputs
    except KeyError:
        return defaults
    return defaults if own is None else frozenset(ResultKind(k) for k in own)


def outputs_to_compose(cfg: Config, destinations: Iterable[str]) -> frozenset[ResultKind]:
    """What to compose for a series: the kinds switched on under ``outputs`` (written under the
    results root even when no destination takes them) plus any kind a routed destination asks
    for on its own."""
    wanted = {k for k in ResultKind if getattr(cfg.outputs, k.value)}
    for name in destinations:
        wanted |= destination_outputs(cfg, name)
    return frozenset(wanted)


# --------------------------------------------------------------------------- queue


def enqueue_deliveries(
    session: Session, result_pk: int, destinations: Iterable[str], *, now: datetime | None = None
) -> list[int]:
    """Queue ``result_pk`` for each destination; returns the delivery pks in the given order.

    Idempotent: a (result, destination) pair that already has a row keeps it (whatever its
    state) — a re-run job must not send a result twice. A concurrent insert of the same pair is
    caught by the unique constraint inside a savepoint, so the caller's transaction survives.
    """
    now = now or utcnow()
    pks: list[int] = []
    for name in dict.fromkeys(destinations):
        existing = _delivery_pk(session, result_pk, name)
        if existing is not None:
            pks.append(existing)
            continue
        delivery = Delivery(
            result_pk=result_pk,
            destination=name,
            state=DeliveryState.PENDING.value,
            attempts=0,
            next_attempt_at=now,
        )
        try:
            with session.begin_nested():
                session.add(delivery)
                session.flush()
        except IntegrityError:
            existing = _delivery_pk(session, result_pk, name)
            if existing is None:
                raise
            pks.append(existing)
            continue
        record_event(session, "delivery", delivery.id, "enqueued", destination=name, result_pk=result_pk)
        pks.append(delivery.id)
    return pks


def _delivery_pk(session: Session, result_pk: int, destination: str) -> int | None:
    return session.scalar(
        select(Delivery.id).where(Delivery.result_pk == result_pk, Delivery.destination == destination)
    )


# --------------------------------------------------------------------------- status handling


class Verdict(StrEnum):
    """What a C-STORE outcome means for the delivery."""

    SENT = "sent"  # success or warning: the PACS has it
    RETRY = "retry"  # transient: try again later
    FAIL = "fail"  # the PACS (or we) will never accept this object as it is


# Failures that no retry can fix: the PACS says the object itself is unacceptable.
_PERMANENT_STATUSES = frozenset({0x0117, 0x0122})  # invalid SOP instance, SOP class not supported


def classify_status(status: int | None) -> Verdict:
    """Map a C-STORE response status to a verdict (PS3.4 B.2.3, PS3.7 C).

    Unknown failure codes retry (and end ``failed`` after ``give_up_after_s``): giving up early on
    a code we do not understand would lose a result a PACS may accept tomorrow.
    """
    if status is None:
        return Verdict.RETRY  # no response: aborted, timed out, connection lost
    if status == 0x0000 or status == 0x0001 or 0xB000 <= status <= 0xBFFF:
        return Verdict.SENT
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or status in _PERMANENT_STATUSES:
        return Verdict.FAIL
    return Verdict.RETRY  # 0xA7xx out of resources, 0x0110 processing failure, 0x0213, …


@dataclass(frozen=True)
class StoreOutcome:
    status: int | None
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    sop_class: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str


def _read_info(path: Path) -> _FileInfo:
    """The header fields dispatch needs, without reading pixel data."""
    ds = dcmread(
        path,
        stop_before_pixels=True,
        specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"],
    )
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "") or "")
    sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or ds.get("SOPInstanceUID", "") or "")
    if not (ts and sop_class and sop_uid):
        raise InvalidDicomError("file meta lacks Transfer Syntax / SOP Class / SOP Instance UID")
    return _FileInfo(
        path=path,
        sop_class=sop_class,
        transfer_syntax=ts,
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_instance_uid=sop_uid,
    )


# --------------------------------------------------------------------------- association


_raw_send_lock = threading.Lock()


def _enable_raw_send() -> None:
    """Let ``send_c_store(path)`` stream the file's encoded dataset as it is.

    This is a process-wide pynetdicom switch. With it, sending a *path* requires an accepted
    context with exactly the file's transfer syntax — which is the only case in which this
    module passes a path; every conversion path passes a decoded ``Dataset`` instead.
    """
    with _raw_send_lock:
        _config.STORE_SEND_CHUNKED_DATASET = True


_UNVERIFIED_WARNED: set[str] = set()  # destinations whose unverified TLS was logged in this process


def _tls_args(dest: Destination) -> tuple[ssl.SSLContext, str] | None:
    tls = dest.tls
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    if tls.verify_peer is False:
        # Many hospital PACS run self-signed certificates; encryption without verification is
        # then the site's explicit choice (verify_peer: false); the default verifies, against
        # ca_file or the system's CAs.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if dest.name not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(dest.name)
            log.warning("TLS to destination %s does not verify the PACS's certificate (verify_peer: false)",
                        dest.name)
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx, dest.host


def _new_ae(dest: Destination, calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = dest.timeout_s
    ae.dimse_timeout = dest.timeout_s
    ae.network_timeout = dest.timeout_s
    ae.connection_timeout = dest.timeout_s
    return ae


def _associate(ae: AE, dest: Destination) -> tuple[Association | None, str | None]:
    """Associate with ``dest``; returns the association, or ``None`` and why not in words an
    operator can act on (unreachable vs. TLS/peer abort vs. rejected with its reason)."""
    connected = threading.Event()
    try:
        assoc = ae.associate(
            dest.host,
            dest.port,
            ae_title=dest.ae_title,
            max_pdu=0,
            tls_args=_tls_args(dest),
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.set())],
        )
    except (OSError, ssl.SSLError, ValueError, RuntimeError) as exc:
        return None, f"association failed: {exc}"
    if assoc.is_established:
        return assoc, None
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        if rsp is not None:
            return None, (
                f"association rejected by {where} "
                f"(result {rsp.result}, source {rsp.result_source}, reason {rsp.diagnostic})"
            )
        return None, f"association rejected by {where}"
    if not connected.is_set():
        return None, f"connection failed: {where} not reachable"
    return None, f"association aborted by {where} (TLS handshake failure or peer dropped the connection)"


class _Link:
    """One association to a destination for a known set of files; re-opened on demand.

    The presentation contexts come from the files themselves: for each SOP class one context
    per transfer syntax its files are in (so the bytes go out untouched), plus explicit and
    implicit little endian (so a PACS that refuses a compressed syntax still gets the object).
    One syntax per context, so the PACS accepts or refuses each on its own.
    """

    def __init__(
        self, dest: Destination, calling_ae: str, files: Sequence[_FileInfo], read_back: bool
    ) -> None:
        self.dest = dest
        self.calling_ae = calling_ae
        self.read_back = read_back
        self.contexts = _contexts(files)
        self.assoc: Association | None = None
        self._msg_id = 0

    @property
    def is_established(self) -> bool:
        return self.assoc is not None and bool(self.assoc.is_established)

    def open(self) -> str | None:
        """Associate; returns ``None`` on success, else why not."""
        self.close()
        ae = _new_ae(self.dest, self.calling_ae)
        for sop_class, syntaxes in self.contexts.items():
            for ts in syntaxes:
                ae.add_requested_context(sop_class, [ts])
        if self.read_back:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.assoc, err = _associate(ae, self.dest)
        return err

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
                else:
                    self.assoc.abort()
            except Exception:  # pragma: no cover - best effort on a dying association
                log.debug("closing association to %s failed", self.dest.name, exc_info=True)
            self.assoc = None

    def _next_msg_id(self) -> int:
        self._msg_id = self._msg_id % 65535 + 1
        return self._msg_id

    def store(self, info: _FileInfo) -> StoreOutcome:
        assoc = self.assoc
        if assoc is None or not assoc.is_established:
            return StoreOutcome(None, Verdict.RETRY, "association not established")
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == info.sop_class]
        if not accepted:
            return StoreOutcome(None, Verdict.FAIL, f"destination does not accept SOP class {info.sop_class}")
        accepted_syntaxes = {str(cx.transfer_syntax[0]) for cx in accepted}
        payload: Path | Dataset
        try:
            if info.transfer_syntax in accepted_syntaxes:
                _enable_raw_send()
                payload = info.path
            else:
                payload = self._converted(info, accepted_syntaxes)
        except Exception as exc:
            return StoreOutcome(None, Verdict.FAIL, f"cannot convert to an accepted transfer syntax: {exc}")
        try:
            rsp = assoc.send_c_store(payload, msg_id=self._next_msg_id())
        except OSError as exc:
            return StoreOutcome(None, Verdict.RETRY, f"cannot read result file: {exc}")
        except (RuntimeError, ValueError, AttributeError) as exc:
            if not assoc.is_established:
                return StoreOutcome(None, Verdict.RETRY, f"association lost: {exc}")
            return StoreOutcome(None, Verdict.FAIL, f"cannot send: {exc}")
        if "Status" not in rsp:
            return StoreOutcome(None, Verdict.RETRY, "no C-STORE response (aborted, timed out or lost)")
        status = int(rsp.Status)
        verdict = classify_status(status)
        comment = str(rsp.get("ErrorComment", "") or "")
        reason = f"status 0x{status:04X}" + (f": {comment}" if comment else "")
        return StoreOutcome(status, verdict, "" if status == 0 else reason)

    @staticmethod
    def _converted(info: _FileInfo, accepted: set[str]) -> Dataset:
        """Decode for a PACS that does not take the file's syntax (pynetdicom re-encodes
        uncompressed datasets to the accepted uncompressed syntax itself)."""
        ds = dcmread(info.path)
        ts = UID(info.transfer_syntax)
        if ts.is_compressed:
            if not accepted & set(_UNCOMPRESSED):
                raise ValueError("no uncompressed transfer syntax accepted either")
            # Same pixels, same object: the SOP Instance UID must not change (pydicom would).
            ds.decompress(generate_instance_uid=False)  # → explicit VR little endian
        elif ts == ExplicitVRBigEndian and not accepted & set(_UNCOMPRESSED):
            raise ValueError("no little endian transfer syntax accepted")
        return ds

    def find_instance(self, info: _FileInfo) -> tuple[bool | None, str]:
        """C-FIND (Study Root, IMAGE level) for the instance: ``(True, "")`` when the PACS
        lists it, ``(False, why)`` when it answers without it, ``(None, why)`` when it cannot
        be asked. The higher-level unique keys are given so strictly hierarchical PACS accept
        the query."""
        assoc = self.assoc
        if assoc is None or not assoc.is_established:
            return None, "association not established"
        if not any(
            cx.abstract_syntax == StudyRootQueryRetrieveInformationModelFind for cx in assoc.accepted_contexts
        ):
            return None, "destination does not accept Study Root C-FIND"
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = info.study_uid
        query.SeriesInstanceUID = info.series_uid
        query.SOPInstanceUID = info.sop_instance_uid
        found = False
        try:
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind, msg_id=self._next_msg_id()
            ):
                if "Status" not in status:
                    return None, "no C-FIND response"
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    if (
                        identifier is not None
                        and str(identifier.get("SOPInstanceUID", "")) == info.sop_instance_uid
                    ):
                        found = True
                elif code != 0x0000:
                    return None, f"C-FIND status 0x{code:04X}"
        except (RuntimeError, ValueError) as exc:
            return None, f"C-FIND failed: {exc}"
        return (True, "") if found else (False, "not found by C-FIND read-back")


# --------------------------------------------------------------------------- dispatcher


@dataclass(frozen=True)
class _Claimed:
    delivery_pk: int
    result_pk: int
    destination: str
    path: str


def _backoff_s(cfg: Config, attempts: int) -> float:
    d = cfg.dispatch
    return float(min(d.backoff_s * 2 ** max(attempts - 1, 0), d.backoff_max_s))


class Dispatcher:
    """Claims due deliveries and sends them; run one per worker process (or several)."""

    def __init__(
        self,
        cfg: Config,
        db: Database,
        worker_id: str | None = None,
        *,
        results_root: Path | None = None,
        batch_size: int = 100,
        lease_s: float | None = None,
        read_back_tries: int = 3,
        read_back_wait_s: float = 0.5,
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:dispatch:{uuid.uuid4().hex[:8]}"
        # Result.path is relative to the outputs root unless absolute.
        self.results_root = results_root if results_root is not None else cfg.outputs.root
        self.batch_size = batch_size
        # The lease must outlast sending one delivery (it is renewed after each); a crashed
        # dispatcher's claims come back after it.
        longest_timeout = max((d.timeout_s for d in cfg.destinations), default=30.0)
        self.lease_s = lease_s if lease_s is not None else max(120.0, 4 * longest_timeout)
        self.read_back_tries = read_back_tries
        self.read_back_wait_s = read_back_wait_s
        self.calling_ae = cfg.dispatch.calling_ae_title or cfg.node.ae_title

    # ---------------------------------------------------------------- public

    def run_once(self, now: datetime | None = None) -> int:
        """One pass: claim what is due at ``now``, send it per destination; returns how many
        deliveries were attempted (0 → nothing was due)."""
        now = now or utcnow()
        claimed = self._claim(now)
        if not claimed:
            return 0
        by_dest: dict[str, list[_Claimed]] = {}
        for c in claimed:
            by_dest.setdefault(c.destination, []).append(c)
        senders: list[tuple[Destination, list[_Claimed]]] = []
        for name, items in by_dest.items():
            try:
                senders.append((self.cfg.destination(name), items))
            except KeyError:
                # Config validation ties routes to configured destinations, so this only
                # happens when an operator removed the destination: they no longer want it.
                for c in items:
                    self._record(
                        c, StoreOutcome(None, Verdict.FAIL, f"destination {name!r} is not configured"), now
                    )
        if len(senders) == 1:
            self._deliver(*senders[0], now)
        elif senders:
            # One sender per destination, side by side: a slow or stalled PACS delays only its
            # own results (each send is bounded by the destination's timeout_s).
            with ThreadPoolExecutor(max_workers=len(senders), thread_name_prefix="dispatch") as pool:
                for f in [pool.submit(self._deliver, dest, items, now) for dest, items in senders]:
                    f.result()
        return len(claimed)

    def run_forever(self, stop_event: threading.Event) -> None:
        """Loop until ``stop_event`` is set; sleeps ``dispatch.interval_s`` when idle. A failing
        pass (database away, bug) is logged and retried, never kills the thread."""
        log.info("dispatcher %s started (calling AE %s)", self.worker_id, self.calling_ae)
        while not stop_event.is_set():
            try:
                n = self.run_once()
            except Exception:
                log.exception("dispatch pass failed")
                n = 0
            if n == 0 and not stop_event.is_set():
                wake.wait(wake.DELIVERIES, self.cfg.dispatch.interval_s)
        log.info("dispatcher %s stopped", self.worker_id)

    # ---------------------------------------------------------------- claim

    def _claim(self, now: datetime) -> list[_Claimed]:
        # Due-ness follows the caller's ``now``; leases follow the real clock so that a pass
        # run "in the future" (tests, catch-up) cannot steal another dispatcher's live claim.
        clock = utcnow()
        free = or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < clock)
        # A paused destination (``hipnode pause``) is left alone: its deliveries stay due and go
        # out on resume; one already claimed when the pause came finishes its send.
        paused = select(DestinationState.name).where(DestinationState.paused.is_(True))
        due = (
            Delivery.state.in_(_DUE_STATES) & (Delivery.next_attempt_at <= now) & free
            & Delivery.destination.not_in(paused)
        )
        with self.db.session() as s:
            q = (
                select(Delivery.id)
                .where(due)
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(self.batch_size)
            )
            if not is_sqlite(self.db.engine):
                q = q.with_for_update(skip_locked=True)
            ids = list(s.scalars(q))
            if not ids:
                return []
            # Conditional UPDATE: even without row locks only one claimer can win a row.
            won = set(
                s.scalars(
                    update(Delivery)
                    .where(Delivery.id.in_(ids), due)
                    .values(claimed_by=self.worker_id, claimed_until=clock + timedelta(seconds=self.lease_s))
                    .returning(Delivery.id)
                    .execution_options(synchronize_session=False)
                )
            )
            rows = s.execute(
                select(Delivery.id, Delivery.result_pk, Delivery.destination, Result.path)
                .join(Result, Result.id == Delivery.result_pk)
                .where(Delivery.id.in_(won))
                .order_by(Delivery.result_pk, Delivery.id)
            ).all()
        return [_Claimed(r[0], r[1], r[2], r[3]) for r in rows]

    def _path(self, c: _Claimed) -> Path:
        p = Path(c.path)
        return p if p.is_absolute() else Path(self.results_root) / p

    # ---------------------------------------------------------------- send

    def _deliver(self, dest: Destination, items: list[_Claimed], now: datetime) -> None:
        ready: list[tuple[_Claimed, _FileInfo]] = []
        for c in items:
            try:
                ready.append((c, _read_info(self._path(c))))
            except (OSError, InvalidDicomError, AttributeError, KeyError) as exc:
                # Our own output is missing or unreadable: no retry fixes that.
                self._record(c, StoreOutcome(None, Verdict.FAIL, f"result file unreadable: {exc}"), now)
        for chunk in _chunks(ready):
            self._deliver_chunk(dest, chunk, now)

    def _deliver_chunk(
        self, dest: Destination, chunk: list[tuple[_Claimed, _FileInfo]], now: datetime
    ) -> None:
        link = _Link(dest, self.calling_ae, [f for _, f in chunk], read_back=dest.verify_with_cfind)
        remaining = [c.delivery_pk for c, _ in chunk]
        try:
            for i, (c, info) in enumerate(chunk):
                if not link.is_established:
                    err = link.open()
                    if err is not None:
                        log.warning("destination %s: %s", dest.name, err)
                        for rest, _ in chunk[i:]:
                            self._record(rest, StoreOutcome(None, Verdict.RETRY, err), now)
                        return
                started = time.monotonic()
                outcome = link.store(info)
                remaining.remove(c.delivery_pk)
                state = self._record(c, outcome, now, renew=remaining)
                try:
                    observe.delivery_recorded(self.db, c.result_pk, dest.name, state, time.monotonic() - started)
                except Exception:  # a metric must never cost the rest of the batch its send
                    log.debug("delivery metrics not recorded", exc_info=True)
                if state is DeliveryState.SENT and dest.verify_with_cfind:
                    self._read_back(link, c, info)
        finally:
            link.close()

    def _read_back(self, link: _Link, c: _Claimed, info: _FileInfo) -> None:
        """Ask the PACS for what we just sent; a PACS that indexes asynchronously gets a few
        short tries. Not finding it leaves the delivery ``sent`` (the PACS did accept it)."""
        found: bool | None = False
        why = ""
        for attempt in range(max(self.read_back_tries, 1)):
            found, why = link.find_instance(info)
            if found is not False:
                break
            if attempt + 1 < self.read_back_tries:
                time.sleep(self.read_back_wait_s)
        with self.db.session() as s:
            d = s.get(Delivery, c.delivery_pk)
            if d is None:  # pragma: no cover - deliveries are never deleted
                return
            if found:
                d.state = DeliveryState.VISIBLE.value
                record_event(s, "delivery", d.id, DeliveryState.VISIBLE.value, destination=c.destination)
            else:
                d.last_error = why
                record_event(s, "delivery", d.id, "not_visible", destination=c.destination, reason=why)
        if not found:
            log.warning("delivery %d to %s: sent but %s", c.delivery_pk, c.destination, why)

    def _queued_since(self, s: Session, d: Delivery) -> datetime | None:
        """When the delivery was queued, or last re-sent by an operator (its events)."""
        return s.scalar(
            select(func.max(Event.at)).where(
                Event.entity == "delivery", Event.entity_pk == d.id, Event.kind.in_(("enqueued", "resend"))
            )
        )

    def _out_of_time(self, s: Session, d: Delivery, clock: datetime) -> bool:
        """Retries end by elapsed time (``dispatch.give_up_after_s``, on the dispatcher's clock
        ``now``), and by count only where ``dispatch.max_attempts`` is set."""
        cfg = self.cfg.dispatch
        if cfg.max_attempts is not None and d.attempts >= cfg.max_attempts:
            return True
        since = self._queued_since(s, d)
        return since is not None and (clock - since).total_seconds() >= cfg.give_up_after_s

    def _queued_for(self, s: Session, d: Delivery, clock: datetime) -> str:
        since = self._queued_since(s, d)
        if since is None:
            return "an unknown time"
        hours = (clock - since).total_seconds() / 3600.0
        return f"{hours:.1f} h" if hours < 48 else f"{hours / 24.0:.1f} days"

    def _record(
        self, c: _Claimed, outcome: StoreOutcome, now: datetime, renew: Sequence[int] = ()
    ) -> DeliveryState | None:
        """Write the outcome + event; renew the lease on the batch's unsent rest."""
        clock = utcnow()
        with self.db.session() as s:
            d = s.get(Delivery, c.delivery_pk)
            if d is None:  # pragma: no cover - deliveries are never deleted
                return None
            if d.claimed_by != self.worker_id:
                # Our lease ran out mid-send; what we did still happened, so record it.
                log.warning(
                    "delivery %d: lease lost to %s before the outcome was recorded", d.id, d.claimed_by
                )
            d.attempts += 1
            d.last_status = outcome.status
            d.claimed_by = None
            d.claimed_until = None
            detail: dict[str, Any] = {
                "destination": c.destination,
                "attempt": d.attempts,
                "dispatcher": self.worker_id,
            }
            if outcome.status is not None:
                detail["status"] = outcome.status
            if outcome.reason:
                detail["reason"] = outcome.reason
            if outcome.verdict is Verdict.SENT:
                state = DeliveryState.SENT
                d.sent_at = now
                d.last_error = outcome.reason or None  # a warning status is kept as the note
            elif outcome.verdict is Verdict.RETRY and not self._out_of_time(s, d, now):
                state = DeliveryState.RETRYING
                d.next_attempt_at = now + timedelta(seconds=_backoff_s(self.cfg, d.attempts))
                d.last_error = outcome.reason
                detail["next_attempt_at"] = d.next_attempt_at.isoformat()
            else:
                state = DeliveryState.FAILED
                reason = outcome.reason
                if outcome.verdict is Verdict.RETRY:
                    reason = f"gave up after {d.attempts} attempts over {self._queued_for(s, d, now)}: {reason}"
                    detail["reason"] = reason
                d.last_error = reason
            d.state = state.value
            record_event(s, "delivery", d.id, state.value, **detail)
            if renew:
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(list(renew)), Delivery.claimed_by == self.worker_id)
                    .values(claimed_until=clock + timedelta(seconds=self.lease_s))
                    .execution_options(synchronize_session=False)
                )
        level = logging.INFO if state is DeliveryState.SENT else logging.WARNING
        log.log(
            level,
            "delivery %d result %d → %s: %s %s",
            c.delivery_pk,
            c.result_pk,
            c.destination,
            state.value,
            outcome.reason,
        )
        return state


def _contexts(files: Iterable[_FileInfo]) -> dict[str, list[str]]:
    """SOP class → transfer syntaxes to propose, each as its own context, files' own first."""
    out: dict[str, list[str]] = {}
    for f in files:
        syntaxes = out.setdefault(f.sop_class, [])
        if f.transfer_syntax not in syntaxes:
            syntaxes.append(f.transfer_syntax)
    for syntaxes in out.values():
        syntaxes.extend(ts for ts in _UNCOMPRESSED if ts not in syntaxes)
    return out


def _chunks(
    items: list[tuple[_T, _FileInfo]], max_contexts: int = _MAX_CONTEXTS
) -> list[list[tuple[_T, _FileInfo]]]:
    """Split (order kept) so no association needs more presentation contexts than DICOM allows."""
    chunks: list[list[tuple[_T, _FileInfo]]] = []
    needed: set[tuple[str, str]] = set()
    for item in items:
        info = item[1]
        more = {(info.sop_class, ts) for ts in (info.transfer_syntax, *_UNCOMPRESSED)}
        if not chunks or len(needed | more) > max_contexts:
            chunks.append([])
            needed = set()
        chunks[-1].append(item)
        needed |= more
    return chunks


# --------------------------------------------------------------------------- health


def destination_health(db: Database, destinations: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Per destination: delivery counts by state, when the last one succeeded, the latest
    error (with its time, so a reader can tell whether it is older than the last success) and
    when the next retry is due. Configured destinations without deliveries show zeros."""
    empty = {s.value: 0 for s in DeliveryState}
    out: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return out.setdefault(
            name,
            {
                **empty,
                "last_success_at": None,
                "last_error": None,
                "last_error_at": None,
                "next_attempt_at": None,
            },
        )

    for name in destinations:
        entry(name)
    with db.sessionmaker() as s:
        for name, state, n in s.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(
                Delivery.destination, Delivery.state
            )
        ):
            entry(name)[state] = int(n)
        for name, last_sent in s.execute(
            select(Delivery.destination, func.max(Delivery.sent_at)).group_by(Delivery.destination)
        ):
            entry(name)["last_success_at"] = last_sent
        for name, next_at in s.execute(
            select(Delivery.destination, func.min(Delivery.next_attempt_at))
            .where(Delivery.state.in_(_DUE_STATES))
            .group_by(Delivery.destination)
        ):
            entry(name)["next_attempt_at"] = next_at
        latest = (
            select(func.max(Event.id))
            .join(Delivery, (Event.entity == "delivery") & (Event.entity_pk == Delivery.id))
            .where(Event.kind.in_((DeliveryState.RETRYING.value, DeliveryState.FAILED.value, "not_visible")))
            .group_by(Delivery.destination)
        )
        for name, at, detail in s.execute(
            select(Delivery.destination, Event.at, Event.detail)
            .join(Delivery, Event.entity_pk == Delivery.id)
            .where(Event.id.in_(latest))
        ):
            e = entry(name)
            e["last_error"] = (detail or {}).get("reason")
            e["last_error_at"] = at
    return out


# --------------------------------------------------------------------------- CLI helpers


def echo(dest: Destination, calling_ae: str) -> tuple[bool, str]:
    """C-ECHO ``dest``; returns ``(ok, human-readable outcome)`` for ``hipnode echo``."""
    ae = _new_ae(dest, calling_ae)
    ae.add_requested_context(Verification)
    started = time.monotonic()
    assoc, err = _associate(ae, dest)
    if assoc is None:
        return False, err or "association failed"
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    ms = (time.monotonic() - started) * 1000.0
    if "Status" not in rsp:
        return False, "no C-ECHO response"
    status = int(rsp.Status)
    if status != 0x0000:
        return False, f"C-ECHO status 0x{status:04X}"
    return True, f"C-ECHO ok (0x0000) in {ms:.0f} ms"


def send_files(
    paths: Iterable[Path | str], dest: Destination, calling_ae: str
) -> list[tuple[Path, int | None]]:
    """C-STORE files to ``dest`` over one association (``hipnode send``); returns each path with
    the PACS's status, or ``None`` when it was not sent (unreadable, not accepted, no
    association). Files are sent as they are when the PACS takes their transfer syntax."""
    results: dict[Path, int | None] = {}
    order: list[Path] = []
    infos: list[_FileInfo] = []
    for p in map(Path, paths):
        order.append(p)
        results[p] = None
        try:
            infos.append(_read_info(p))
        except (OSError, InvalidDicomError, AttributeError, KeyError) as exc:
            log.warning("%s: not a DICOM file: %s", p, exc)
    for chunk in _chunks([(f.path, f) for f in infos]):
        link = _Link(dest, calling_ae, [f for _, f in chunk], read_back=False)
        try:
            for _, info in chunk:
                if not link.is_established:
                    err = link.open()
                    if err is not None:
                        log.warning("destination %s: %s", dest.name, err)
                        break
                outcome = link.store(info)
                results[info.path] = outcome.status
                if outcome.verdict is not Verdict.SENT:
                    log.warning("%s: %s", info.path, outcome.reason)
        finally:
            link.close()
    return [(p, results[p]) for p in order]
