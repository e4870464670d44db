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
import threading
from collections.abc import Callable
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
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.config import Config
from node.receive.handlers import (
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
    # Unlimited (0) lets the sender use one PDU per fragment it likes: fewer, larger reads.
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
    store_handler = StoreHandler(store=store, db=db, quiet_period_for=cfg.quiet_period_for)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, AssociationGate(cfg)),
        (evt.EVT_DIMSE_RECV, guard_requests),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, store_handler),
    ]
    return handlers, store_handler


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
    """AssociationSocket whose ``ready`` blocks until data or a wake-up, and whose ``recv``
    fills one pre-sized buffer."""

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

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        try:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                if n == 0:
                    break  # peer closed: return what we have, as pynetdicom expects
                got += n
        finally:
            view.release()
        if got < nr_bytes:
            del buf[got:]
        return buf

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
    :class:`StagedFile`, opened at the first dataset fragment (the command is decoded by then)."""

    def __init__(
        self, open_staged: Callable[[DIMSEMessage], StagedFile | None], message: DIMSEMessage
    ) -> None:
        super().__init__()
        self._open_staged = open_staged
        self._message: DIMSEMessage | None = message
        self.staged: StagedFile | None = None

    def write(self, data: Any, /) -> int:
        message = self._message
        if message is not None:
            self._message = None
            try:
                self.staged = self._open_staged(message)
            except Exception:
                log.exception("cannot stage the incoming dataset; it will be kept in memory")
        if self.staged is None:
            return super().write(data)
        # Streamed datasets are not also kept in memory: the handler maps the staged file.
        self.staged.feed(data)
        return len(data)


class _StreamingDIMSE(DIMSEServiceProvider):
    """DIMSE provider whose incoming messages collect datasets in a :class:`_TeeBuffer`."""

    _hipnode_open_staged: Callable[[DIMSEMessage], StagedFile | None]

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

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            message = DIMSEMessage()
            message.data_set = _TeeBuffer(self._hipnode_open_staged, message)
            self.message = message
        super().receive_primitive(primitive)


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


class _FastDUL(DULServiceProvider):
    """DUL whose P-DATA-TF PDUs are read with one ``recv_into`` and split without copies (see
    :class:`_PDataPDU`). Every other PDU, and every PDU when someone listens to EVT_DATA_RECV
    or (beyond pynetdicom's no-op standard logger) EVT_PDU_RECV, takes pynetdicom's own path."""

    def _pdata_fast_path(self) -> bool:
        assoc = self.assoc
        if assoc.get_handlers(evt.EVT_DATA_RECV):
            return False
        handlers: Any = assoc.get_handlers(evt.EVT_PDU_RECV)
        return all(h[0] is standard_pdu_recv_handler for h in handlers)

    def _read_pdu_data(self) -> None:
        sock: Any = self.socket
        try:
            header = bytes(sock.recv(6))
        except (OSError, TimeoutError):
            log.error("connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(header) != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, pdu_length = header[0], int.from_bytes(header[2:6], "big")
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            log.error("unknown PDU type received 0x%02X", pdu_type)
            self.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(pdu_length)
        except (OSError, TimeoutError):
            log.error("connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            log.error("the received PDU is shorter than expected (%d of %d bytes)", len(body), pdu_length)
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self._pdata_fast_path():
            pdvs = _split_pdvs(memoryview(body))
            if pdvs is None:
                log.error("malformed P-DATA-TF PDU (%d bytes)", pdu_length)
                self.event_queue.put("Evt19")
                return
            # Through the state machine's queue as usual: dispatching straight to DIMSE here
            # leaves the DUL's event queue empty, and its loop then yields the CPU (sleep(0))
            # once per PDU, which on a busy machine cost more than the queue round trip.
            self.event_queue.put("Evt10")
            self._recv_pdu.put(_PDataPDU(pdvs))  # type: ignore[arg-type]
            return
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        except Exception:
            log.exception("unable to decode the received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)


class _RequestHandler(RequestHandler):
    """Creates each acceptor association with the tuned transport (see above) and with our
    request guard ahead of pynetdicom's DIMSE debug logger: that logger raises on a C-STORE
    lacking Affected SOP Instance UID, and an exception in one notification handler skips the
    handlers bound after it."""

    def handle(self) -> None:
        assoc = self._create_association()
        guard: list[Any] = list(assoc.get_handlers(evt.EVT_DIMSE_RECV))
        standard = [h for h in guard if h[0] is standard_dimse_recv_handler]
        for h in standard:
            assoc.unbind(evt.EVT_DIMSE_RECV, h[0])
            assoc.bind(evt.EVT_DIMSE_RECV, h[0], h[1])  # re-bound last, after guard_requests
        wake_w: socket.socket | None = None
        stager: _Stager | None = None
        store = getattr(self.server, "hipnode_store", None)
        if getattr(self.server, "hipnode_tuned_transport", False) and isinstance(store, InstanceStore):
            stager = _Stager(store, assoc)
            dimse: Any = assoc.dimse
            dimse.__class__ = _StreamingDIMSE
            dimse._hipnode_open_staged = stager
        if getattr(self.server, "hipnode_tuned_transport", False):
            dul = assoc.dul
            dul.__class__ = _FastDUL
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
            cfg.storage.root, min_free_mb=cfg.storage.min_free_mb, fsync=cfg.storage.fsync
        )
        self.ae = build_ae(cfg, db)
        self.handlers, self.store_handler = build_handlers(cfg, db, self.store)
        self.server: Any = None
        self._stopped = threading.Event()

    def start(self, *, block: bool = False) -> Any:
        """Listen on ``cfg.node.host:port``. Blocks until :meth:`stop` when ``block``."""
        if self.tuned_transport:
            _keep_freed_pdu_buffers()
        self.store.remove_stale_temp_files()
        node = self.cfg.node
        log.info(
            "receiver %s listening on %s:%d (max PDU %s, max %d associations, TLS %s)",
            node.ae_title,
            node.host,
            node.port,
            node.max_pdu or "unlimited",
            node.max_associations,
            "on" if node.tls.enabled else "off",
        )
        server = self.ae.make_server(
            (node.host, node.port),
            ssl_context=build_ssl_context(self.cfg),
            evt_handlers=self.handlers,
            server_class=ThreadedAssociationServer,
            request_handler=_RequestHandler,
        )
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
