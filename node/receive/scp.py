"""The receiver's Application Entity: contexts, limits, TLS, handlers, start and stop.

The receiver never decodes pixel data and never runs models: it accepts every storage SOP class
in every common transfer syntax and stores the bytes as they came, so a modality is never
refused because of what a worker might later be unable to decode (the worker screens and
records a reason instead).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom._handlers import standard_dimse_recv_handler, standard_pdu_recv_handler
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.config import Config
from node.receive.handlers import (
    AssociationCounts,
    AssociationGate,
    StoreHandler,
    file_meta_bytes,
    guard_requests,
    handle_echo,
)
from node.receive.storage import InstanceStore, StagedFile
from node.registry.db import Database

log = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

#: Transfer syntaxes accepted for every storage SOP class, in preference order: when a sender
#: proposes several in one context we take its first match in this order, so uncompressed and
#: lossless encodings win over lossy ones.
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
    JPEG2000MC,
    HTJ2K,
)


_NOT_INSTANCE_STORAGE = ("Commitment", "Media Storage Directory", "Stored Print", "Hardcopy")
_registered_lock = threading.Lock()


def _register_retired_storage_classes() -> list[str]:
    """Storage SOP classes pydicom's dictionary knows but pynetdicom does not (retired and
    trial ones such as the old Ultrasound Image Storage that modalities still send), registered
    with pynetdicom's storage service so their C-STOREs reach our handler. Idempotent."""
    from pydicom._uid_dict import UID_dictionary
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import _STORAGE_CLASSES, register_uid

    known = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    added: list[str] = []
    with _registered_lock:
        for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
            if kind != "SOP Class" or "Storage" not in name or any(x in name for x in _NOT_INSTANCE_STORAGE):
                continue
            if uid in known:
                continue
            if uid not in _STORAGE_CLASSES.values():
                register_uid(uid, f"HipnodeExtra{keyword}", StorageServiceClass)
            added.append(uid)
    return added


def storage_sop_classes() -> list[str]:
    """Every storage SOP class: pynetdicom's (``pynetdicom.sop_class``) plus the retired and
    trial storage classes in pydicom's UID dictionary."""
    return [
        str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
    ] + _register_retired_storage_classes()


def build_ae(cfg: Config, db: Database | None = None) -> Any:
    """An AE configured from ``cfg.node``: contexts, PDU size, association limit, timeouts.

    ``db`` is accepted for symmetry with :func:`serve` (handlers are bound at start); the AE
    itself holds no database state.
    """
    node = cfg.node
    ae = AE(ae_title=node.ae_title)
    # Never 0 ("unlimited"): what we offer is also what _BoundedDUL accepts (config maps 0 to
    # the default), so a sender that honours it is never refused.
    ae.maximum_pdu_size = node.max_pdu
    ae.maximum_associations = node.max_associations
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.require_called_aet = node.require_called_ae
    ae.add_supported_context(VERIFICATION_SOP_CLASS, ALL_TRANSFER_SYNTAXES)
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, list(STORAGE_TRANSFER_SYNTAXES))
    return ae


def build_ssl_context(cfg: Config) -> ssl.SSLContext | None:
    """Server-side TLS from ``cfg.node.tls`` (None when disabled). TLS 1.2 at least; with
    ``verify_peer`` a client certificate signed by ``ca_file`` is required."""
    tls = cfg.node.tls
    if not tls.enabled:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("node.tls: cert_file and key_file are required when TLS is enabled")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_peer else ssl.CERT_NONE
    return ctx


def build_handlers(cfg: Config, db: Database, store: InstanceStore) -> tuple[list[Any], StoreHandler]:
    """Event handlers for the server and the C-STORE handler (exposed for its counters)."""
    store_handler = StoreHandler(
        store=store,
        db=db,
        quiet_period_for=cfg.quiet_period_for,
        max_inflated=int(cfg.node.max_inflated_mb * 2**20),
    )
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, AssociationGate(cfg)),
        (evt.EVT_DIMSE_RECV, guard_requests),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, store_handler),
    ]
    return handlers, store_handler


# --------------------------------------------------------------------------------------------
# Bounds on what a peer can make us hold
#
# Data from the network is hostile until bounded. Every PDU length is compared with what we
# accept before a byte of its body is read or a buffer allocated (a 6-byte header announcing
# 2 GiB is refused at once); every blocking read has a deadline (the whole A-ASSOCIATE-RQ within
# acse_timeout_s of the connect, then each PDU whole within network_timeout_s of the previous
# complete PDU, received or sent), so a peer that sends half a header and goes quiet, or keeps
# the connection alive with a byte every few seconds and never completes a PDU, is closed and
# its association slot freed; a command set and a dataset kept in memory have caps, and a
# streamed dataset has node.max_dataset_mb.
# --------------------------------------------------------------------------------------------

#: Any PDU but P-DATA-TF (and every PDU before the A-ASSOCIATE-RQ has been read): an
#: A-ASSOCIATE-RQ carries at most 128 presentation contexts, ~20-40 KiB with a few transfer
#: syntaxes each; release and abort PDUs are 10 bytes.
MAX_OTHER_PDU = 64 * 1024
#: Senders that count the 6-byte PDU header (or a PDV item header) inside the maximum we offered
#: are tolerated by this much.
PDU_SLACK = 6
#: A DIMSE command set is a few hundred bytes.
MAX_COMMAND_SET = 64 * 1024
#: A dataset kept in memory (one that is not a C-STORE dataset streamed to a staged file).
MAX_IN_MEMORY_DATASET = 64 * 1024 * 1024

_PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
# A-ABORT reasons (PS3.8 9.3.8), source 2 = service provider.
_ABORT_UNRECOGNIZED_PDU = 0x01
_ABORT_INVALID_PARAMETER = 0x06


@dataclass(frozen=True)
class ReceiveLimits:
    """What one connection may make the receiver hold or wait for (from ``cfg.node``)."""

    max_pdu: int
    acse_timeout_s: float
    network_timeout_s: float
    max_dataset: int
    tls_handshake_timeout_s: float

    @classmethod
    def from_config(cls, cfg: Config) -> ReceiveLimits:
        node = cfg.node
        return cls(
            max_pdu=node.max_pdu,
            acse_timeout_s=node.acse_timeout_s,
            network_timeout_s=node.network_timeout_s,
            max_dataset=int(node.max_dataset_mb * 2**20),
            tls_handshake_timeout_s=node.tls.handshake_timeout_s,
        )


class _NoDecodeTracebacks(logging.Filter):
    """Drops pynetdicom's traceback for each non-ASCII text field it meets while decoding a PDU
    (``pynetdicom.utils.decode_bytes`` logs one at ERROR, then tries other codecs): a hostile
    or merely odd peer would fill the log with them. What we refuse is logged by us."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UnicodeError)


_no_decode_tracebacks = _NoDecodeTracebacks()


class _ReadFailed(Exception):
    """A PDU read that ended early: the peer closed, went silent, or the socket failed."""

    def __init__(self, why: str, *, quiet: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.quiet = quiet  # an orderly close between PDUs: not worth a warning


class _WakingStateMachine(StateMachine):
    """The upper-layer state machine, plus: when the transport closes before an A-ASSOCIATE-RQ
    arrived (ARTIM expiry, a refused PDU, a peer that hung up), the association thread waiting
    for that request is woken at once (a ``None`` on its queue: pynetdicom's "timed out" path)
    instead of holding its association slot until acse_timeout_s runs out."""

    _hipnode_rq_seen = False

    def do_action(self, event: str) -> None:
        if event == "Evt6":
            self._hipnode_rq_seen = True
        elif event == "Evt18" and self.current_state == "Sta2":  # ARTIM expired: AA-2 closes
            dul: Any = self.dul
            log.warning(
                "closing connection from %s: no A-ASSOCIATE-RQ within %g s (acse_timeout_s)",
                dul.assoc.requestor.address,
                dul.assoc.acse_timeout,
            )
        super().do_action(event)

    def transition(self, state: str) -> None:
        super().transition(state)
        if state == "Sta1" and not self._hipnode_rq_seen:
            self._hipnode_rq_seen = True  # wake once
            self.dul.to_user_queue.put(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Transport tuning
#
# pynetdicom's DUL thread polls: when nothing is pending it sleeps 1 ms, then checks the socket
# with a zero-timeout select, and it reads a PDU 4 KiB per Python-level recv(). DCMTK storescu
# sends 128 KiB PDUs, so an 8 MB image is 64 PDUs, and each PDU that is not already buffered
# when the DUL looks costs a 1 ms nap: measured here, the stock reactor spent most of its time
# asleep. The two classes below keep pynetdicom's state machine untouched and change only how
# the DUL *waits* and *reads*: it blocks in select() on the socket and on a wake-up pipe that
# is poked whenever a primitive is queued for sending (so a C-STORE response is not delayed),
# and reads a whole PDU with recv_into() into one buffer.
# --------------------------------------------------------------------------------------------

_IDLE_WAIT_S = 0.05  # upper bound on a DUL wait: ARTIM/idle timers and kill flags stay prompt
#: A read deadline is re-armed on the socket (a syscall) only when it moved by more than this,
#: so a PDU's reads cost no syscall and a deadline is kept to within this much.
_DEADLINE_STEP_S = 0.25


class _WakingQueue(queue.Queue[Any]):
    """The DUL's outgoing-primitive queue; ``put`` wakes the DUL's select()."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        # OSError: the association is closing; the DUL polls at least every _IDLE_WAIT_S.
        with contextlib.suppress(OSError):
            self._wake.send(b"\x00")


class _FastAssociationSocket(AssociationSocket):
    """AssociationSocket whose ``ready`` blocks until data or a wake-up (PDUs themselves are
    read by :class:`_BoundedDUL`)."""

    _wake_r: socket.socket | None = None

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        waitables: list[Any] = [sock]
        if self._wake_r is not None and not self.assoc.dul.to_provider_queue.qsize():
            waitables.append(self._wake_r)
            timeout = _IDLE_WAIT_S
        else:
            timeout = 0.0
        try:
            readable, _, _ = select.select(waitables, [], [], timeout)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            self.close()
            return False
        if self._wake_r is not None and self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        return sock in readable

    def close(self) -> None:
        super().close()
        if self._wake_r is not None:
            self._wake_r.close()


# --------------------------------------------------------------------------------------------
# Streaming C-STORE datasets to disk while they arrive
#
# pynetdicom collects a dataset's fragments in a BytesIO (in the DUL thread) and hands it to
# the C-STORE handler only when complete; the handler then hashed it and wrote it, while the
# sender waited for the answer. Here the BytesIO is replaced by one that also appends every
# fragment to a temp file on the storage filesystem and feeds a SHA-256, so by the time the
# handler runs the bytes are already written (and their writeback started); the handler still
# validates the header first (through a read-only map of the staged file: no copy) and only
# then fsyncs, renames, records and answers. A streamed dataset is not kept in memory, so a
# write error while streaming is answered as a storage failure (0xA700 for a full disk).
# --------------------------------------------------------------------------------------------


class _TeeBuffer(BytesIO):
    """A DIMSE message's dataset buffer that also streams a C-STORE dataset to a
    :class:`StagedFile`, opened at the first dataset fragment (the command is decoded by then).

    A dataset passing ``max_dataset`` bytes (``MAX_IN_MEMORY_DATASET`` when kept in memory) is
    dropped from then on: the staged file is removed, later fragments are read and discarded,
    and :attr:`over_limit` tells the C-STORE handler to answer 0xA700 once the sender is done.
    """

    def __init__(
        self,
        open_staged: Callable[[DIMSEMessage], StagedFile | None],
        message: DIMSEMessage,
        max_dataset: int,
    ) -> None:
        super().__init__()
        self._open_staged = open_staged
        self._message: DIMSEMessage | None = message
        self._max_dataset = max_dataset
        self.received = 0
        self.over_limit: int | None = None  # the cap that was passed
        self.staged: StagedFile | None = None

    def write(self, data: Any, /) -> int:
        message = self._message
        if message is not None:
            self._message = None
            try:
                self.staged = self._open_staged(message)
            except Exception:
                log.exception("cannot stage the incoming dataset; it will be kept in memory")
        n = len(data)
        self.received += n
        if self.over_limit is not None:
            return n
        limit = (
            self._max_dataset if self.staged is not None else min(self._max_dataset, MAX_IN_MEMORY_DATASET)
        )
        if self.received > limit:
            self.over_limit = limit
            if self.staged is not None:
                self.staged.discard()
                self.staged = None
            self.seek(0)
            self.truncate()
            return n
        if self.staged is None:
            return super().write(data)
        # Streamed datasets are not also kept in memory: the handler maps the staged file.
        self.staged.feed(data)
        return n


class _StreamingDIMSE(DIMSEServiceProvider):
    """DIMSE provider whose incoming messages collect datasets in a :class:`_TeeBuffer` and
    whose command sets are capped at ``MAX_COMMAND_SET`` (pynetdicom appends command fragments
    to a buffer for as long as the sender sends them)."""

    _hipnode_open_staged: Callable[[DIMSEMessage], StagedFile | None]
    _hipnode_max_dataset: int
    _hipnode_refused = False

    def get_msg(self, block: bool = False) -> Any:
        """The association reactor polls ``get_msg(block=False)`` after a 1 ms nap, so a
        finished C-STORE waited up to a nap (longer on a busy machine) and an idle association
        woke 1000 times a second; here that poll waits on the queue itself, for at most
        ``_IDLE_WAIT_S`` so the reactor's release/abort/timeout checks stay prompt."""
        if block:
            return super().get_msg(block=True)
        try:
            return self.msg_queue.get(block=True, timeout=_IDLE_WAIT_S)
        except queue.Empty:
            return None, None

    def _refuse(self, why: str) -> None:
        """Abort through the state machine (Evt19: A-ABORT, then close) and drop what else
        arrives; from the DUL thread, where raising would kill the DUL mid-association."""
        self._hipnode_refused = True
        log.warning("aborting association from %s: %s", self.assoc.requestor.address, why)
        self.dul.event_queue.put("Evt19")

    def receive_primitive(self, primitive: Any) -> None:
        """pynetdicom's ``receive_primitive`` with hostile input answered by one abort and one
        log line: it let a command set without a known Command Field raise out of the DUL
        thread (killing it with a traceback), appended command fragments without limit, and
        started a thread per N-EVENT-REPORT-RQ."""
        if self._hipnode_refused:
            return  # the abort is under way; what still arrives is dropped
        if self.message is None:
            message = DIMSEMessage()
            message.data_set = _TeeBuffer(self._hipnode_open_staged, message, self._hipnode_max_dataset)
            self.message = message
        message = self.message
        command_bytes = message.encoded_command_set.tell()
        for _context_id, data in primitive.presentation_data_value_list:
            if len(data) and data[0] & 1:
                command_bytes += len(data) - 1
        if command_bytes > MAX_COMMAND_SET:
            self._refuse(f"command set over {MAX_COMMAND_SET} bytes")
            return
        try:
            if not message.decode_msg(primitive, self.assoc):
                return
            context_id = int(message.context_id)  # type: ignore[arg-type]
            evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
            request = message.message_to_primitive()
        except Exception as exc:
            self._refuse(f"DIMSE message does not decode ({type(exc).__name__})")
            return
        if isinstance(request, C_CANCEL):
            if len(self.cancel_req) < 10:
                self.cancel_req[int(request.MessageIDBeingRespondedTo)] = request  # type: ignore[arg-type]
        else:
            self.msg_queue.put((context_id, request))
        # As pynetdicom does (its issue #41): drop the message's buffers for the next one.
        message.encoded_command_set = BytesIO()
        message.data_set = BytesIO()
        self.message = None


class _Stager:
    """Opens a :class:`StagedFile` for each C-STORE-RQ dataset of one association and removes
    those never committed when the association ends (abort, kill, unanswered requests)."""

    def __init__(self, store: InstanceStore, assoc: Any) -> None:
        self.store = store
        self.assoc = assoc
        self.live: list[StagedFile] = []

    def __call__(self, message: DIMSEMessage) -> StagedFile | None:
        command = message.command_set
        if command is None or command.get("CommandField") != 0x0001:  # C-STORE-RQ only
            return None
        sop_class = str(command.get("AffectedSOPClassUID") or "").strip()
        sop_instance = str(command.get("AffectedSOPInstanceUID") or "").strip()
        cx = self.assoc._accepted_cx.get(message.context_id)
        if not sop_class or not sop_instance or cx is None:
            return None  # the handler / request guard answers these from memory
        calling_ae = str(self.assoc.requestor.ae_title).strip()
        meta = file_meta_bytes(sop_class, sop_instance, str(cx.transfer_syntax[0]), calling_ae)
        self.live = [s for s in self.live if not s.done]
        staged = self.store.stage(meta)
        self.live.append(staged)
        return staged

    def discard_all(self) -> None:
        for staged in self.live:
            staged.discard()
        self.live.clear()


class _PDataPDU:
    """A received P-DATA-TF PDU reduced to what the state machine uses (``to_primitive``):
    its PDVs are memoryviews into the one buffer the PDU was read into, so a fragment is not
    copied again until it is appended to the message (pynetdicom's own decoding copies each
    fragment four times: bytes(), PDU slice, PDV slice, and ``data[1:]``)."""

    __slots__ = ("pdvs",)

    def __init__(self, pdvs: list[tuple[int, memoryview]]) -> None:
        self.pdvs = pdvs

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive._presentation_data_value_list = self.pdvs  # type: ignore[assignment]
        return primitive


def _split_pdvs(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """PDV items of a P-DATA-TF body (after the 6-byte PDU header), or None if malformed."""
    pdvs: list[tuple[int, memoryview]] = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        length = int.from_bytes(body[offset : offset + 4], "big")
        if length < 2 or offset + 4 + length > end:
            return None
        pdvs.append((body[offset + 4], body[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return pdvs or None


def _set_deadline(sock: socket.socket, timeout_s: float) -> None:
    """Bound every recv and send on ``sock`` to ``timeout_s`` (a stalled reader must not hold
    our response either). A plain socket stays in blocking mode with kernel timeouts
    (SO_RCVTIMEO / SO_SNDTIMEO: a timed-out call fails with EAGAIN), because Python's own
    socket timeout polls before every call and drops the GIL twice per read, measurably slower
    on the receive path; a TLS socket needs Python's timeout (the SSL layer retries reads)."""
    if type(sock) is socket.socket:
        seconds = max(timeout_s, 0.001)
        timeval = struct.pack("@ll", int(seconds), int((seconds % 1) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    else:
        sock.settimeout(timeout_s)


class _BoundedDUL(DULServiceProvider):
    """DUL that reads every PDU within the bounds of :class:`ReceiveLimits`: the announced
    length is checked against what we accept before the body is read (a PDU over it aborts the
    association unread), and every read has a deadline. pynetdicom reads a PDU with a blocking
    ``recv(length)`` on a socket without a timeout, so half a PDU header held the DUL (and the
    association's slot) until the peer closed; and a deadline per ``recv`` alone let a peer
    that sends a byte every few seconds hold it for ever. So each PDU must be complete within
    ``network_timeout_s`` of the previous complete PDU (received, or sent by us: a peer waiting
    for our answer is not idle), the bound pynetdicom's idle timer checks between PDUs, which
    this DUL restarts when it sends as well.

    With ``_hipnode_fast_pdata`` a P-DATA-TF PDU is read with one ``recv_into`` and split
    without copies (see :class:`_PDataPDU`); every other PDU, and every PDU when someone listens
    to EVT_DATA_RECV or (beyond pynetdicom's no-op standard logger) EVT_PDU_RECV, is decoded by
    pynetdicom."""

    _hipnode_limits: ReceiveLimits
    _hipnode_fast_pdata = False
    _hipnode_deadline = 0.0  # monotonic: the A-ASSOCIATE-RQ must be complete by then
    _hipnode_negotiating = True  # no complete A-ASSOCIATE-RQ read yet
    _hipnode_timeout: float | None = None  # the timeout currently set on the socket
    _hipnode_idle_from = 0.0  # monotonic: the last complete PDU received or sent
    _hipnode_close_reason: str | None = None  # why we closed an accepted association
    _hipnode_idle_expired = False  # pynetdicom's idle timer ran out (it then aborts)

    def _pdata_fast_path(self) -> bool:
        if not self._hipnode_fast_pdata:
            return False
        assoc = self.assoc
        if assoc.get_handlers(evt.EVT_DATA_RECV):
            return False
        handlers: Any = assoc.get_handlers(evt.EVT_PDU_RECV)
        return all(h[0] is standard_pdu_recv_handler for h in handlers)

    def _peer(self) -> str:
        return str(self.assoc.requestor.address)

    def _read_timeout(self) -> float:
        """Seconds the next recv may wait (called per recv: kept cheap)."""
        network = self._hipnode_limits.network_timeout_s
        # Not the FSM state: the first PDU may be read before the FSM has processed the
        # connection event (Sta1, not yet Sta2).
        if self._hipnode_negotiating:
            return min(network, self._hipnode_deadline - time.monotonic())
        return min(network, self._hipnode_idle_from + network - time.monotonic())

    def _timeout_reason(self, got: int, n: int, last_byte: float) -> str:
        limits = self._hipnode_limits
        now = time.monotonic()
        if self._hipnode_negotiating and self._hipnode_deadline - now < limits.network_timeout_s:
            return f"no complete A-ASSOCIATE-RQ within {limits.acse_timeout_s:g} s (acse_timeout_s)"
        if now - last_byte >= limits.network_timeout_s - 2 * _DEADLINE_STEP_S:
            return f"nothing received for {limits.network_timeout_s:g} s (network_timeout_s)"
        part = "header" if n == 6 else "body"
        return (
            f"no complete PDU within {limits.network_timeout_s:g} s (network_timeout_s): bytes trickle in "
            f"({got} of {n} of a PDU {part}, the last {now - last_byte:.1f} s ago)"
        )

    def _send(self, pdu: Any) -> None:
        """Send, and count it as activity: a peer that waits for our answer is not idle (the
        read deadline and pynetdicom's idle timer both restart)."""
        if self._idle_timer.expired:  # pynetdicom's reactor aborts an idle association
            self._hipnode_idle_expired = True
        super()._send(pdu)
        self._hipnode_idle_from = time.monotonic()
        self._idle_timer.restart()

    def _recv_exact(self, sock: socket.socket, n: int) -> bytearray:
        """Exactly ``n`` bytes (``n`` already bounded by the caller), or :class:`_ReadFailed`."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        last_byte = time.monotonic()
        try:
            while got < n:
                timeout = self._read_timeout()
                if timeout <= 0:
                    raise _ReadFailed(self._timeout_reason(got, n, last_byte))
                current = self._hipnode_timeout
                if current is None or abs(timeout - current) > _DEADLINE_STEP_S:  # a syscall
                    _set_deadline(sock, timeout)
                    self._hipnode_timeout = timeout
                try:
                    k = sock.recv_into(view[got:], n - got)
                except (TimeoutError, BlockingIOError):
                    raise _ReadFailed(self._timeout_reason(got, n, last_byte)) from None
                except OSError as exc:
                    raise _ReadFailed(f"connection failed: {exc.strerror or type(exc).__name__}") from None
                if k == 0:
                    raise _ReadFailed(
                        f"connection closed after {got} of {n} bytes", quiet=got == 0 and n == 6
                    )
                got += k
                last_byte = time.monotonic()
        finally:
            view.release()
        return buf

    def _close_transport(self) -> None:
        """Close the connection; AssociationSocket.close() queues Evt17 (transport closed), and
        with the socket gone nothing more is read from a stream that may be out of step."""
        if self.socket is not None:
            self.socket.close()

    def _refuse(self, reason: int, why: str) -> None:
        """Abort without reading further: an A-ABORT (source: service provider) straight on the
        socket, as pynetdicom does when its reactor fails, then close the connection."""
        log.warning("aborting association from %s: %s", self._peer(), why)
        sock: Any = self.socket.socket if self.socket is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(1.0)
                sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02" + bytes([reason]))
        self._close_transport()

    def _read_pdu_data(self) -> None:
        sock: Any = self.socket.socket if self.socket is not None else None
        if sock is None:
            self.event_queue.put("Evt17")
            return
        try:
            header = self._recv_exact(sock, 6)
            pdu_type, pdu_length = header[0], int.from_bytes(header[2:6], "big")
            name = _PDU_NAMES.get(pdu_type)
            if name is None:
                self._refuse(_ABORT_UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}")
                return
            cap = (
                self._hipnode_limits.max_pdu + PDU_SLACK
                if pdu_type == 0x04 and not self._hipnode_negotiating
                else MAX_OTHER_PDU
            )
            if pdu_length > cap:
                self._refuse(
                    _ABORT_INVALID_PARAMETER,
                    f"{name} PDU announces {pdu_length} bytes, over the {cap} accepted; not read",
                )
                return
            body = self._recv_exact(sock, pdu_length)
            self._hipnode_idle_from = time.monotonic()  # a complete PDU: the next has its full time
            if pdu_type == 0x01:
                self._hipnode_negotiating = False
        except _ReadFailed as exc:
            counts = getattr(self.assoc, "hipnode_counts", None)
            if exc.quiet:
                log.debug("connection from %s closed", self._peer())
            elif isinstance(counts, AssociationCounts) and counts.accepted:
                self._hipnode_close_reason = exc.why  # the association's one line says it
                log.debug("closing connection from %s: %s", self._peer(), exc.why)
            else:
                log.warning("closing connection from %s: %s", self._peer(), exc.why)
            self._close_transport()
            return
        if pdu_type == 0x04 and self._pdata_fast_path():
            pdvs = _split_pdvs(memoryview(body))
            if pdvs is None:
                self._refuse(_ABORT_INVALID_PARAMETER, f"malformed P-DATA-TF PDU ({pdu_length} bytes)")
                return
            # Through the state machine's queue as usual: dispatching straight to DIMSE here
            # leaves the DUL's event queue empty, and its loop then yields the CPU (sleep(0))
            # once per PDU, which on a busy machine cost more than the queue round trip.
            self.event_queue.put("Evt10")
            self._recv_pdu.put(_PDataPDU(pdvs))  # type: ignore[arg-type]
            return
        if pdu_type in (0x01, 0x02) and (len(body) < 36 or not body[4:36].isascii()):
            # pynetdicom logs a traceback at ERROR for AE titles that are not ASCII.
            self._refuse(_ABORT_INVALID_PARAMETER, f"{name} PDU with a malformed AE title field")
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as exc:
            self._refuse(
                _ABORT_INVALID_PARAMETER,
                f"{name} PDU ({pdu_length} bytes) does not decode: {type(exc).__name__}",
            )
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)


def _accepted(event: Any) -> None:
    counts = getattr(event.assoc, "hipnode_counts", None)
    if isinstance(counts, AssociationCounts):
        counts.accepted = True


def log_association(assoc: Any, counts: AssociationCounts, seconds: float, network_timeout_s: float) -> None:
    """The one log line of an accepted association, when it ends (issue 13, quiet logs): who,
    how it ended and what it did. INFO when it ended normally; WARNING when the node closed or
    aborted it (the reason is in the line). Associations never accepted are not logged here:
    a rejection is logged by ``AssociationGate``, a connection that never negotiated by the DUL
    (and a health check's bare connect not at all)."""
    if not counts.accepted:
        return
    did = [
        f"{n} {what}"
        for n, what in (
            (counts.stored, "stored"),
            (counts.duplicates, "duplicate(s) acknowledged"),
            (counts.versions, "new version(s)"),
            (counts.rejected + counts.failed, "refused"),
            (counts.echoes, "C-ECHO"),
        )
        if n
    ]
    if counts.bytes:
        did.append(f"{counts.bytes / 2**20:.1f} MiB")
    reason = getattr(assoc.dul, "_hipnode_close_reason", None)
    level = logging.INFO
    if reason:
        how, level = f"closed by the node: {reason}", logging.WARNING
    elif assoc.is_released:
        how = "released"
    elif assoc.is_aborted and (getattr(assoc.dul, "_hipnode_idle_expired", False) or assoc.dul.idle_timer_expired()):
        how = f"aborted by the node: nothing received for {network_timeout_s:g} s (network_timeout_s)"
        level = logging.WARNING
    elif assoc.is_aborted:
        how = "aborted"
    else:
        how = "ended without release (connection closed)"
    log.log(
        level,
        "association from %s@%s, %.1f s: %s; %s",
        str(assoc.requestor.ae_title).strip(),
        assoc.requestor.address,
        seconds,
        ", ".join(did) or "nothing sent",
        how,
    )


class _RequestHandler(RequestHandler):
    """Runs in the connection's own thread: the TLS handshake (with a timeout: pynetdicom does
    it in the accept loop, where one idle TCP connect blocked every new association), then the
    acceptor association with bounded reads (:class:`_BoundedDUL`), the wake-up on an early
    close (:class:`_WakingStateMachine`), datasets streamed to disk (:class:`_StreamingDIMSE`),
    the tuned transport when enabled, and our request guard ahead of pynetdicom's DIMSE debug
    logger: that logger raises on a C-STORE lacking Affected SOP Instance UID, and an exception
    in one notification handler skips the handlers bound after it."""

    def _tls_handshake(self, ctx: ssl.SSLContext, timeout_s: float) -> bool:
        raw: socket.socket = self.request
        raw.settimeout(timeout_s)
        try:
            self.request = ctx.wrap_socket(raw, server_side=True)
        except OSError as exc:  # ssl.SSLError, TimeoutError and resets are all OSErrors
            log.warning(
                "TLS handshake with %s failed: %s",
                self.client_address[0],
                f"no handshake within {timeout_s:g} s (tls.handshake_timeout_s)"
                if isinstance(exc, TimeoutError)
                else str(exc)[:200] or type(exc).__name__,
            )
            with contextlib.suppress(OSError):
                raw.close()  # wrap_socket detached it: this only covers a failure before that
            return False
        return True

    def handle(self) -> None:
        server: Any = self.server
        limits: ReceiveLimits = server.hipnode_limits
        ssl_context: ssl.SSLContext | None = getattr(server, "hipnode_ssl_context", None)
        if ssl_context is not None and not self._tls_handshake(ssl_context, limits.tls_handshake_timeout_s):
            return
        started = time.monotonic()
        assoc: Any = self._create_association()
        counts = AssociationCounts()
        assoc.hipnode_counts = counts  # filled by the C-STORE / C-ECHO handlers
        assoc.bind(evt.EVT_ACCEPTED, _accepted)
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            # pynetdicom's standard PDU/DIMSE handlers only format debug lines, and raise (one
            # ERROR traceback each) on many malformed PDUs and commands.
            assoc.unbind(evt.EVT_PDU_RECV, standard_pdu_recv_handler)
            assoc.unbind(evt.EVT_DIMSE_RECV, standard_dimse_recv_handler)
        guard: list[Any] = list(assoc.get_handlers(evt.EVT_DIMSE_RECV))
        standard = [h for h in guard if h[0] is standard_dimse_recv_handler]
        for h in standard:
            assoc.unbind(evt.EVT_DIMSE_RECV, h[0])
            assoc.bind(evt.EVT_DIMSE_RECV, h[0], h[1])  # re-bound last, after guard_requests
        tuned = bool(getattr(server, "hipnode_tuned_transport", False))
        dul: Any = assoc.dul
        dul.__class__ = _BoundedDUL
        dul._hipnode_limits = limits
        dul._hipnode_fast_pdata = tuned
        dul._hipnode_deadline = time.monotonic() + limits.acse_timeout_s
        dul.state_machine.__class__ = _WakingStateMachine
        stager: _Stager | None = None
        store = getattr(server, "hipnode_store", None)
        if isinstance(store, InstanceStore):
            stager = _Stager(store, assoc)
            dimse: Any = assoc.dimse
            dimse.__class__ = _StreamingDIMSE
            dimse._hipnode_open_staged = stager
            dimse._hipnode_max_dataset = limits.max_dataset
        wake_w: socket.socket | None = None
        if tuned:
            wake_r, wake_w = socket.socketpair()
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            sock: Any = dul.socket
            sock.__class__ = _FastAssociationSocket
            sock._wake_r = wake_r
            dul.to_provider_queue = _WakingQueue(wake_w)
            dul._run_loop_delay = 0  # waiting happens in select(), not in sleep()
            if isinstance(sock.socket, socket.socket):
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        try:
            assoc.start()
            assoc.join()
        finally:
            if wake_w is not None:
                wake_w.close()
            if stager is not None:
                stager.discard_all()
            try:
                log_association(assoc, counts, time.monotonic() - started, limits.network_timeout_s)
            except Exception:  # a log line must never cost the connection's clean-up
                log.debug("association summary not logged", exc_info=True)


class _BoundedServer(ThreadedAssociationServer):
    """The association server with a cap on connections open at once. pynetdicom starts a
    thread (and an association with its own DUL thread) per accepted connection and only
    counts them against maximum_associations once an A-ASSOCIATE-RQ has arrived; a flood of
    connections that never get that far would each hold threads until acse_timeout_s. Beyond
    ``hipnode_max_connections`` a new connection is closed on accept, in the accept loop (no
    thread); the warning is logged once per burst."""

    hipnode_max_connections = 64
    _hipnode_open = 0
    _hipnode_refused = 0
    _hipnode_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._hipnode_lock:
            full = self._hipnode_open >= self.hipnode_max_connections
            if full:
                self._hipnode_refused += 1
                first = self._hipnode_refused == 1
            else:
                self._hipnode_open += 1
                refused, self._hipnode_refused = self._hipnode_refused, 0
        if full:
            if first:
                log.warning(
                    "%d connections open (max_connections): closing new connections until one ends",
                    self.hipnode_max_connections,
                )
            self.shutdown_request(request)
            return
        if refused:
            log.warning("%d connection(s) were closed on accept: max_connections was reached", refused)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._hipnode_done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._hipnode_done()

    def _hipnode_done(self) -> None:
        with self._hipnode_lock:
            self._hipnode_open -= 1


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_freed_pdu_buffers() -> bool:
    """Ask glibc to keep freed memory for reuse (Linux/glibc only; process-wide).

    Every PDU is read into a fresh ~128 KiB buffer (8 MB per DX image). With glibc's default
    thresholds those buffers come from mmap or are trimmed off the heap when freed, so each
    image faulted in (and the kernel zeroed) new pages: measured over 500 images, 300-1000
    minor faults per image and receiver CPU per image doubling once the page cache was under
    pressure. With buffers up to 4 MiB served from the heap and up to 256 MiB of free heap
    kept, the same pages are reused."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    )


class Receiver:
    """A running (or ready) receiver: the AE, its server, its store and counters."""

    def __init__(
        self,
        cfg: Config,
        db: Database,
        *,
        store: InstanceStore | None = None,
        tuned_transport: bool = True,
    ) -> None:
        self.cfg = cfg
        self.tuned_transport = tuned_transport
        self.db = db
        self.store = store or InstanceStore(
            cfg.storage.root,
            min_free_mb=cfg.storage.min_free_mb,
            fsync=cfg.storage.fsync,
            max_backlog=int(cfg.node.max_buffered_mb * 2**20),
        )
        self.ae = build_ae(cfg, db)
        self.handlers, self.store_handler = build_handlers(cfg, db, self.store)
        self.server: Any = None
        self._stopped = threading.Event()

    def start(self, *, block: bool = False) -> Any:
        """Listen on ``cfg.node.host:port``. Blocks until :meth:`stop` when ``block``."""
        if self.tuned_transport:
            _keep_freed_pdu_buffers()
        logging.getLogger("pynetdicom.utils").addFilter(_no_decode_tracebacks)  # idempotent
        self.store.remove_stale_temp_files()
        node = self.cfg.node
        log.info(
            "receiver %s listening on %s:%d (max PDU %s, max %d associations, %d connections, TLS %s)",
            node.ae_title,
            node.host,
            node.port,
            node.max_pdu,
            node.max_associations,
            node.connection_limit,
            "on" if node.tls.enabled else "off",
        )
        # The TLS context is kept from pynetdicom, which would wrap (and so handshake) each
        # socket in the accept loop: _RequestHandler does it in the connection's thread.
        ssl_context = build_ssl_context(self.cfg)
        server = self.ae.make_server(
            (node.host, node.port),
            ssl_context=None,
            evt_handlers=self.handlers,
            server_class=_BoundedServer,
            request_handler=_RequestHandler,
        )
        server.hipnode_max_connections = node.connection_limit
        server.hipnode_ssl_context = ssl_context
        server.hipnode_limits = ReceiveLimits.from_config(self.cfg)
        server.hipnode_tuned_transport = self.tuned_transport
        server.hipnode_store = self.store
        thread = threading.Thread(target=server.serve_forever, name="hipnode-receive-accept", daemon=True)
        thread.start()
        self.ae._servers.append(server)  # so AE.shutdown() stops it, as with AE.start_server()
        self.server = server
        if block:
            self._stopped.wait()
            return None
        return self.server

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return int(self.server.server_address[1]) if self.server is not None else self.cfg.node.port

    def stop(self) -> None:
        """Stop accepting, abort associations still open, close the socket. Idempotent."""
        if self.server is not None:
            self.server.shutdown()  # also aborts active associations of this server
            self.server = None
            log.info("receiver stopped")
        self.ae.shutdown()
        self._stopped.set()


def serve(cfg: Config, db: Database, *, block: bool = True) -> Any:
    """Run the receiver. With ``block`` runs until interrupted and returns None; otherwise
    returns the running ``ThreadedAssociationServer`` (stop it with :func:`shutdown`)."""
    receiver = Receiver(cfg, db)
    server = receiver.start(block=False)
    server.hipnode_receiver = receiver
    if not block:
        return server
    try:
        receiver._stopped.wait()
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        receiver.stop()
    return None


def shutdown(server: Any) -> None:
    """Cleanly stop a server returned by ``serve(..., block=False)``."""
    receiver = getattr(server, "hipnode_receiver", None)
    if isinstance(receiver, Receiver):
        receiver.stop()
    else:
        server.shutdown()
