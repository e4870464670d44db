"""pynetdicom event handlers: association admission, C-ECHO, C-STORE, malformed-request guard.

The C-STORE handler is the one place where "acknowledged" is decided, so its order is fixed:
validate the header (never the pixels) → check free space → hash → write durably → record in
the registry → answer 0x0000. Every failure answers a precise non-success status and logs why;
nothing is acknowledged that is not both on disk and in the registry.

Statuses (PS3.4 Annex B): 0xA700 out of resources (watermark, full disk, full database, a
dataset over ``node.max_dataset_mb``, a deflated dataset inflating beyond ``node.max_inflated_mb``);
0xC0xx "cannot understand" with the low byte saying which check failed, and an Error Comment
(0000,0902) in the response so an operator can read the reason in the sender's log too.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import RE_VALID_UID, UID, DeflatedExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from node import observe
from node.config import Config
from node.receive.storage import (
    InstanceStore,
    OutOfResources,
    StagedFile,
    StoredFile,
    relative_path,
    uid_digest,
)
from node.registry.db import Database
from node.registry.ingest import IngestOutcome, record_instance

log = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC000
    UNPARSEABLE = 0xC001
    MISSING_UID = 0xC002
    SOP_CLASS_MISMATCH = 0xC003
    SOP_INSTANCE_MISMATCH = 0xC004
    INCONSISTENT_LENGTH = 0xC005
    STORAGE_FAILURE = 0xC010
    REGISTRY_FAILURE = 0xC011


class InvalidDataset(Exception):
    """The dataset cannot be understood; ``status`` says which check failed."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Structural check: do the declared lengths add up to the bytes received?
# --------------------------------------------------------------------------------------------

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_MAX_DEPTH = 32


def _tag_str(group: int, elem: int) -> str:
    return f"({group:04X},{elem:04X})"


def check_lengths(buf: bytes | memoryview, *, implicit: bool, little: bool) -> list[str]:
    """Walk every top-level element by its declared length and require that the walk ends
    exactly at the end of ``buf``. Undefined-length sequences and encapsulated pixel data are
    walked item by item. Values are never read, so this costs microseconds even for 100 MB.

    Returns notes on tolerated defects (a missing final pixel-data sequence delimiter); raises
    :class:`InvalidDataset` (``INCONSISTENT_LENGTH``) naming the element and offset otherwise.
    """
    notes: list[str] = []
    end = _walk(memoryview(buf), 0, len(buf), implicit, little, depth=0, in_item=False, notes=notes)
    if end != len(buf):  # pragma: no cover - _walk raises before this can happen
        raise InvalidDataset(StoreStatus.INCONSISTENT_LENGTH, f"walk ended at {end} of {len(buf)} bytes")
    return notes


def _walk(
    buf: memoryview,
    pos: int,
    end: int,
    implicit: bool,
    little: bool,
    *,
    depth: int,
    in_item: bool,
    notes: list[str] | None = None,
) -> int:
    if depth > _MAX_DEPTH:
        raise InvalidDataset(StoreStatus.INCONSISTENT_LENGTH, "sequences nested too deeply")
    bo = "<" if little else ">"
    while pos < end:
        if end - pos < 8:
            raise InvalidDataset(
                StoreStatus.INCONSISTENT_LENGTH,
                f"{end - pos} trailing byte(s) at offset {pos}: not an element",
            )
        group, elem = struct.unpack_from(bo + "HH", buf, pos)
        if group == 0xFFFE:
            (length,) = struct.unpack_from(bo + "L", buf, pos + 4)
            if elem == _ITEM_END and in_item:
                return pos + 8
            raise InvalidDataset(
                StoreStatus.INCONSISTENT_LENGTH,
                f"unexpected delimiter {_tag_str(group, elem)} at offset {pos}",
            )
        if implicit:
            (length,) = struct.unpack_from(bo + "L", buf, pos + 4)
            vr = b""
            header = 8
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if end - pos < 12:
                    raise InvalidDataset(
                        StoreStatus.INCONSISTENT_LENGTH, f"truncated element header at offset {pos}"
                    )
                (length,) = struct.unpack_from(bo + "L", buf, pos + 8)
                header = 12
            else:
                if not (0x41 <= vr[0] <= 0x5A and 0x41 <= vr[1] <= 0x5A):
                    raise InvalidDataset(
                        StoreStatus.INCONSISTENT_LENGTH,
                        f"element {_tag_str(group, elem)} at offset {pos} has no valid VR (implicit data "
                        "sent under an explicit transfer syntax?)",
                    )
                (length,) = struct.unpack_from(bo + "H", buf, pos + 6)
                header = 8
        value_at = pos + header
        if length == _UNDEFINED:
            # UN with undefined length carries Implicit VR Little Endian content (PS3.5 6.2.2).
            items_implicit, items_little = (True, True) if vr == b"UN" else (implicit, little)
            encapsulated = (group << 16 | elem) in _PIXEL_TAGS
            pos = _walk_items(
                buf,
                value_at,
                end,
                items_implicit,
                items_little,
                depth=depth + 1,
                encapsulated=encapsulated,
                notes=notes,
            )
            continue
        if value_at + length > end:
            raise InvalidDataset(
                StoreStatus.INCONSISTENT_LENGTH,
                f"element {_tag_str(group, elem)} at offset {pos} declares {length} bytes but only "
                f"{end - value_at} remain",
            )
        pos = value_at + length
    if in_item:
        raise InvalidDataset(StoreStatus.INCONSISTENT_LENGTH, "item without an item delimiter")
    return pos


def _walk_items(
    buf: memoryview,
    pos: int,
    end: int,
    implicit: bool,
    little: bool,
    *,
    depth: int,
    encapsulated: bool,
    notes: list[str] | None = None,
) -> int:
    bo = "<" if little else ">"
    while True:
        if pos == end and encapsulated and depth == 1 and notes is not None:
            # The sequence delimiter of top-level encapsulated pixel data is missing but every
            # fragment is complete: a known benign defect of some writers. Store as received.
            notes.append("encapsulated pixel data lacks its sequence delimiter")
            return pos
        if end - pos < 8:
            raise InvalidDataset(
                StoreStatus.INCONSISTENT_LENGTH, f"undefined-length value not terminated (offset {pos})"
            )
        group, elem, length = struct.unpack_from(bo + "HHL", buf, pos)
        if group != 0xFFFE or elem not in (_ITEM, _SEQ_END):
            raise InvalidDataset(
                StoreStatus.INCONSISTENT_LENGTH,
                f"expected an item or sequence delimiter at offset {pos}, found {_tag_str(group, elem)}",
            )
        pos += 8
        if elem == _SEQ_END:
            return pos
        if length == _UNDEFINED:
            if encapsulated:
                raise InvalidDataset(
                    StoreStatus.INCONSISTENT_LENGTH,
                    f"pixel data fragment with undefined length at offset {pos - 8}",
                )
            pos = _walk(buf, pos, end, implicit, little, depth=depth, in_item=True)
            continue
        if pos + length > end:
            raise InvalidDataset(
                StoreStatus.INCONSISTENT_LENGTH,
                f"item at offset {pos - 8} declares {length} bytes but only {end - pos} remain",
            )
        pos += length


# --------------------------------------------------------------------------------------------
# Bounded inflation of Deflated Explicit VR Little Endian datasets
# --------------------------------------------------------------------------------------------

#: Default cap on an inflated dataset (``node.max_inflated_mb``).
DEFAULT_MAX_INFLATED = 256 * 1024 * 1024
_INFLATE_STEP = 1024 * 1024
#: Inflated datasets are held in memory while their header is checked; at most this many at
#: once, so the worst case is this many times the cap whatever the number of associations.
_inflation_slots = threading.BoundedSemaphore(2)


def inflate_bounded(data: bytes | memoryview, limit: int) -> bytes:
    """Inflate a raw-deflate stream (PS3.5 A.5), never producing more than ``limit`` bytes.

    A deflate bomb (a few megabytes inflating to gigabytes) is refused as soon as the output
    passes ``limit``: the input is fed 1 MiB at a time and each step may produce at most what is
    left under the cap, so memory never exceeds the cap plus one step. Raises
    :class:`InvalidDataset`: 0xA700 over the cap, 0xC001 for a stream that does not inflate.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    view = memoryview(data)
    try:
        for start in range(0, len(view), _INFLATE_STEP):
            pending: bytes | memoryview = view[start : start + _INFLATE_STEP]
            while pending and not inflater.eof:
                # max_length >= 1 here (0 would mean "no limit" to zlib).
                out += inflater.decompress(pending, limit + 1 - len(out))
                if len(out) > limit:
                    raise InvalidDataset(
                        StoreStatus.OUT_OF_RESOURCES,
                        f"deflated dataset inflates beyond the {limit // 2**20} MiB cap",
                    )
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        out += inflater.flush()
    except zlib.error as exc:
        raise InvalidDataset(StoreStatus.UNPARSEABLE, f"deflated dataset does not inflate: {exc}") from None
    finally:
        view.release()
    if len(out) > limit:
        raise InvalidDataset(
            StoreStatus.OUT_OF_RESOURCES, f"deflated dataset inflates beyond the {limit // 2**20} MiB cap"
        )
    if not inflater.eof:
        raise InvalidDataset(StoreStatus.UNPARSEABLE, "deflated dataset does not inflate: truncated stream")
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Header parsing and validation
# --------------------------------------------------------------------------------------------


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _raw_uid(header: Dataset, keyword: str) -> str:
    """A UI value straight from its bytes: pydicom's value conversion would warn (or, where
    warnings are errors, raise) on a malformed UID before we could say which check failed."""
    if keyword not in header:
        return ""
    elem = header.get_item(keyword)
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").rstrip("\x00 ").strip()
    return str(value or "").strip()


def _unsafe_uid(value: str) -> str | None:
    """Why a UID cannot be kept at all, or None. Only what is unsafe to store or reference is
    refused: real modalities send UIDs the standard forbids (a letter, a leading zero in a
    component, a trailing dot) and a refusal loses the study to the sender; such a UID is kept
    as it came and flagged (``_nonconformant_uid``)."""
    if len(value) > 64:
        return "is longer than 64 characters"
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        return "contains control or non-ASCII characters"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    return None


def _nonconformant_uid(value: str) -> bool:
    # the pattern, not UID(value): constructing one warns (or, where warnings are errors,
    # raises) on exactly the values this check is for
    return RE_VALID_UID.match(value) is None


def read_header(
    dataset: bytes | memoryview,
    transfer_syntax: str,
    *,
    command_sop_class: str | None = None,
    command_sop_instance: str | None = None,
    max_inflated: int = DEFAULT_MAX_INFLATED,
) -> Dataset:
    """Parse the header of a received dataset (never the pixel data) and validate it.

    Checks, in order: a deflated dataset inflates within ``max_inflated`` bytes; declared
    lengths add up; the header parses; Study/Series/SOP Instance and SOP Class UIDs are present
    and well-formed; SOP Class and Instance agree with the C-STORE command. Raises
    :class:`InvalidDataset` with the failing check.
    """
    if UID(transfer_syntax) == DeflatedExplicitVRLittleEndian:
        with _inflation_slots:
            inflated = inflate_bounded(dataset, max_inflated)
            return _read_header(inflated, transfer_syntax, command_sop_class, command_sop_instance)
    return _read_header(dataset, transfer_syntax, command_sop_class, command_sop_instance)


def _read_header(
    data: bytes | memoryview,
    transfer_syntax: str,
    command_sop_class: str | None,
    command_sop_instance: str | None,
) -> Dataset:
    ts = UID(transfer_syntax)
    implicit, little = ts.is_implicit_VR, ts.is_little_endian
    if len(data) == 0:
        raise InvalidDataset(StoreStatus.UNPARSEABLE, "empty dataset")
    notes = check_lengths(data, implicit=implicit, little=little)
    try:
        fp = BytesIO(
            data if isinstance(data, bytes) else bytes(data[: _header_extent(data, implicit, little)])
        )
        header = read_dataset(fp, implicit, little, stop_when=_stop_at_pixels, defer_size="256 KB")
        uids = {kw: _raw_uid(header, kw) for kw in _REQUIRED_UIDS}
    except InvalidDataset:
        raise
    except Exception as exc:
        raise InvalidDataset(
            StoreStatus.UNPARSEABLE, f"header does not parse: {type(exc).__name__}: {exc}"
        ) from None
    for kw, value in uids.items():
        if not value:
            raise InvalidDataset(StoreStatus.MISSING_UID, f"{kw} is missing or empty")
        why = _unsafe_uid(value)
        if why is not None:
            raise InvalidDataset(StoreStatus.MISSING_UID, f"{kw} {why}")
        if _nonconformant_uid(value):
            notes.append(f"{kw} is not a conformant UID (kept as received)")
    if command_sop_class is not None and uids["SOPClassUID"] != str(command_sop_class).strip():
        raise InvalidDataset(
            StoreStatus.SOP_CLASS_MISMATCH,
            f"dataset SOP Class {uids['SOPClassUID']} differs from the C-STORE command's {command_sop_class}",
        )
    if command_sop_instance is not None and uids["SOPInstanceUID"] != str(command_sop_instance).strip():
        raise InvalidDataset(
            StoreStatus.SOP_INSTANCE_MISMATCH, "dataset SOP Instance UID differs from the C-STORE command's"
        )
    for note in notes:
        log.warning(
            "instance %s accepted as received despite: %s", uid_digest(uids["SOPInstanceUID"])[:12], note
        )
    return header


def _header_extent(buf: memoryview, implicit: bool, little: bool) -> int:
    """Offset of the pixel data element (or the end): only this prefix is copied for parsing,
    so an 8 MB image costs a copy of a few kilobytes, not of its pixels."""
    bo = "<" if little else ">"
    pos, end = 0, len(buf)
    while pos + 8 <= end:
        group, elem = struct.unpack_from(bo + "HH", buf, pos)
        if (group << 16 | elem) in _PIXEL_TAGS:
            return pos
        if implicit:
            (length,) = struct.unpack_from(bo + "L", buf, pos + 4)
            header = 8
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from(bo + "L", buf, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from(bo + "H", buf, pos + 6)
                header = 8
        if length == _UNDEFINED:
            return end  # an undefined-length sequence before the pixels: parse the whole thing
        pos += header + length
    return end


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, calling_ae: str) -> bytes:
    """Preamble + 'DICM' + File Meta Information for a received dataset (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(PYNETDICOM_IMPLEMENTATION_UID)
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae[:16]
    fp = BytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)  # type: ignore[arg-type]
    return fp.getvalue()


def _response(status: StoreStatus, comment: str | None = None) -> Dataset:
    rsp = Dataset()
    rsp.Status = int(status)
    if comment:
        # LO: 64 characters, no backslash or control characters.
        rsp.ErrorComment = "".join(c if 0x20 <= ord(c) < 0x7F and c != "\\" else "?" for c in comment)[:64]
    return rsp


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, DBAPIError):
        text = str(exc.orig).lower()
        code = getattr(exc.orig, "pgcode", None)
        return "disk is full" in text or "no space" in text or code == "53100"
    return False


@dataclass
class StoreStats:
    """Counters for logs and benchmarks (read without a lock; approximate is fine)."""

    stored: int = 0
    duplicates: int = 0
    versions: int = 0
    rejected: int = 0
    failed: int = 0
    bytes: int = 0


@dataclass
class AssociationCounts(StoreStats):
    """What one association did, for its one log line when it ends (``scp._RequestHandler``):
    the steady state at INFO is one line per association, not one per instance."""

    echoes: int = 0
    accepted: bool = False  # an A-ASSOCIATE-AC was sent


#: The association whose C-STORE the current thread is handling (its reactor thread).
_current = threading.local()


def association_counts(assoc: Any) -> AssociationCounts | None:
    counts = getattr(assoc, "hipnode_counts", None)
    return counts if isinstance(counts, AssociationCounts) else None


class StoreHandler:
    """EVT_C_STORE handler bound once per server; shared by every association thread."""

    def __init__(
        self,
        *,
        store: InstanceStore,
        db: Database,
        quiet_period_for: Callable[[str], float],
        db_attempts: int = 3,
        max_inflated: int = DEFAULT_MAX_INFLATED,
    ) -> None:
        self.max_inflated = max_inflated
        self.store = store
        self.db = db
        self.quiet_period_for = quiet_period_for
        self.db_attempts = db_attempts
        self.stats = StoreStats()
        # Serialises write+record per SOP instance so two concurrent identical sends cannot
        # remove each other's file on a failure path (striped: bounded memory).
        self._locks = [threading.Lock() for _ in range(64)]

    def _count(self, name: str, n: int = 1) -> None:
        setattr(self.stats, name, getattr(self.stats, name) + n)
        counts: AssociationCounts | None = getattr(_current, "counts", None)
        if counts is not None:
            setattr(counts, name, getattr(counts, name) + n)

    def __call__(self, event: Any) -> Dataset:
        _current.counts = association_counts(event.assoc)
        try:
            return self._handle(event)
        finally:
            _current.counts = None

    def _handle(self, event: Any) -> Dataset:
        req = event.request
        assoc = event.assoc
        calling_ae = str(assoc.requestor.ae_title).strip()
        peer_host = str(assoc.requestor.address)
        transfer_syntax = str(event.context.transfer_syntax)
        raw: BytesIO | None = req.DataSet
        if raw is None:
            self._count("rejected")
            log.warning("C-STORE from %s@%s without a dataset", calling_ae, peer_host)
            return _response(StoreStatus.CANNOT_UNDERSTAND, "no dataset")
        over_limit: int | None = getattr(raw, "over_limit", None)
        if over_limit is not None:
            # Streamed and discarded as it arrived (see scp._TeeBuffer): nothing to store.
            self._count("failed")
            log.error(
                "C-STORE refused (0xA700) from %s@%s, instance %s: dataset larger than the %d MiB cap "
                "(node.max_dataset_mb); discarded as it arrived",
                calling_ae,
                peer_host,
                uid_digest(str(req.AffectedSOPInstanceUID))[:12],
                over_limit // 2**20,
            )
            return _response(
                StoreStatus.OUT_OF_RESOURCES, f"dataset exceeds the {over_limit // 2**20} MiB limit"
            )
        staged: StagedFile | None = getattr(raw, "staged", None)
        if staged is not None:
            try:
                return self._store_staged(staged, req, calling_ae, peer_host, transfer_syntax)
            finally:
                staged.discard()  # no-op once committed; removes it on every other path
        buf = raw.getbuffer()
        try:
            return self._store(buf, req, calling_ae, peer_host, transfer_syntax)
        finally:
            buf.release()

    def _store_staged(
        self, staged: StagedFile, req: Any, calling_ae: str, peer_host: str, transfer_syntax: str
    ) -> Dataset:
        """A dataset streamed to a staged file while it arrived (see ``scp._TeeBuffer``): it is
        validated through a read-only map of that file, then committed like any other."""
        sop_hash = uid_digest(str(req.AffectedSOPInstanceUID))[:12]
        try:
            staged.finish()
            if staged.error is not None:
                raise staged.error
            mapped = staged.map_dataset()
        except OSError as exc:
            self._count("failed")
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                log.error("C-STORE failed (0xA700), instance %s: %s", sop_hash, exc.strerror)
                if isinstance(exc, OutOfResources):  # the watermark, watched while streaming
                    return _response(StoreStatus.OUT_OF_RESOURCES, "storage below free-space watermark")
                return _response(StoreStatus.OUT_OF_RESOURCES, "storage full")
            log.error("C-STORE failed (0xC010), instance %s: cannot write file: %s", sop_hash, exc)
            return _response(StoreStatus.STORAGE_FAILURE, "cannot write file")
        try:
            view = memoryview(mapped)
            try:
                data = view[staged.prefix_size :]
                try:
                    return self._store(data, req, calling_ae, peer_host, transfer_syntax, staged)
                finally:
                    data.release()
            finally:
                view.release()
        finally:
            try:
                mapped.close()
            except BufferError:  # a view still referenced (e.g. by a traceback): GC closes it
                log.debug("staged map of instance %s closed later", sop_hash)

    def _store(
        self,
        buf: memoryview,
        req: Any,
        calling_ae: str,
        peer_host: str,
        transfer_syntax: str,
        staged: StagedFile | None = None,
    ) -> Dataset:
        sop_hash = uid_digest(str(req.AffectedSOPInstanceUID))[:12]
        try:
            header = read_header(
                buf,
                transfer_syntax,
                command_sop_class=req.AffectedSOPClassUID,
                command_sop_instance=req.AffectedSOPInstanceUID,
                max_inflated=self.max_inflated,
            )
        except InvalidDataset as exc:
            self._count("rejected")
            log.warning(
                "C-STORE rejected (0x%04X) from %s@%s, instance %s, %s: %s",
                exc.status,
                calling_ae,
                peer_host,
                sop_hash,
                transfer_syntax,
                exc.reason,
            )
            return _response(exc.status, exc.reason)

        size = len(buf)
        try:
            self.store.check_room(size)
        except OutOfResources as exc:
            self._count("failed")
            log.error(
                "C-STORE refused (0xA700) from %s@%s, instance %s: %s",
                calling_ae,
                peer_host,
                sop_hash,
                exc.strerror,
            )
            return _response(StoreStatus.OUT_OF_RESOURCES, "storage below free-space watermark")

        study, series, sop = (
            str(header.StudyInstanceUID),
            str(header.SeriesInstanceUID),
            str(header.SOPInstanceUID),
        )
        if staged is not None and not (staged.ok and staged.size == size):
            raise AssertionError("staged file and dataset differ")  # pragma: no cover
        # Streamed: written and hashed while it arrived (its File Meta came from the C-STORE
        # command, whose SOP Class/Instance read_header just proved equal to the dataset's).
        sha256 = staged.hexdigest() if staged is not None else hashlib.sha256(buf).hexdigest()
        rel = relative_path(study, series, sop, sha256)
        lock = self._locks[hash(sop) % len(self._locks)]
        with lock:
            try:
                if staged is not None:
                    stored = self.store.commit_staged(staged, rel)
                else:
                    meta = file_meta_bytes(str(header.SOPClassUID), sop, transfer_syntax, calling_ae)
                    stored = self.store.write(rel, (meta, buf))
            except OutOfResources as exc:
                self._count("failed")
                log.error("C-STORE failed (0xA700), instance %s: %s", sop_hash, exc.strerror)
                return _response(StoreStatus.OUT_OF_RESOURCES, "storage full")
            except OSError as exc:
                self._count("failed")
                log.error("C-STORE failed (0xC010), instance %s: cannot write file: %s", sop_hash, exc)
                return _response(StoreStatus.STORAGE_FAILURE, "cannot write file")
            try:
                outcome = self._record(header, stored, sha256, transfer_syntax, calling_ae, peer_host)
            except Exception as exc:
                self.store.discard(stored)
                self._count("failed")
                if _is_disk_full(exc):
                    log.error(
                        "C-STORE failed (0xA700), instance %s: registry out of space: %s", sop_hash, exc
                    )
                    return _response(StoreStatus.OUT_OF_RESOURCES, "registry out of space")
                log.exception("C-STORE failed (0xC011), instance %s: registry error", sop_hash)
                return _response(StoreStatus.REGISTRY_FAILURE, "registry error")

        self._count("bytes", size)
        observe.instance_received(calling_ae, str(header.SOPClassUID), size)
        if outcome.is_duplicate:
            self._count("duplicates")
            log.debug(  # per instance: the association's line counts them
                "duplicate of instance %s v%d from %s@%s (identical bytes): acknowledged, not re-recorded",
                sop_hash,
                outcome.version,
                calling_ae,
                peer_host,
            )
        elif outcome.version > 1:
            self._count("versions")
            log.warning(
                "instance %s re-sent with different content by %s@%s: stored as version %d",
                sop_hash,
                calling_ae,
                peer_host,
                outcome.version,
            )
        else:
            self._count("stored")
            log.debug(
                "stored instance %s (%d bytes, %s) from %s", sop_hash, size, transfer_syntax, calling_ae
            )
        if outcome.series_transition == "reopened":
            log.info("series %d re-opened by a late instance from %s", outcome.series_pk, calling_ae)
        return _response(StoreStatus.SUCCESS)

    def _record(
        self,
        header: Dataset,
        stored: StoredFile,
        sha256: str,
        transfer_syntax: str,
        calling_ae: str,
        peer_host: str,
    ) -> IngestOutcome:
        """Commit the instance; retry races (two associations creating one study on PostgreSQL)
        and transient lock errors a couple of times before giving up."""
        quiet = self.quiet_period_for(calling_ae)
        for attempt in range(1, self.db_attempts + 1):
            try:
                with self.db.session() as session:
                    return record_instance(
                        session,
                        header=header,
                        path=stored.relative.as_posix(),
                        size=stored.size,
                        sha256=sha256,
                        transfer_syntax=transfer_syntax,
                        calling_ae=calling_ae,
                        peer_host=peer_host,
                        quiet_period_s=quiet,
                    )
            except (IntegrityError, OperationalError) as exc:
                if attempt == self.db_attempts or _is_disk_full(exc):
                    raise
                log.warning(
                    "registry write attempt %d failed (%s); retrying", attempt, type(exc.orig).__name__
                )
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def handle_echo(event: Any) -> int:
    """C-ECHO: the association was admitted, so we are up and willing."""
    counts = association_counts(event.assoc)
    if counts is not None:
        counts.echoes += 1
    return 0x0000


class AssociationGate:
    """EVT_REQUESTED handler: admits only allowed calling AEs (optionally from a fixed host).

    pynetdicom's own ``require_calling_aet`` cannot bind an AE title to a host, so the check is
    done here and the rejection sent the way pynetdicom documents for this event: A-ASSOCIATE-RJ
    rejected-permanent, service-user, "calling AE title not recognised" (0x01, 0x01, 0x03).
    """

    def __init__(self, cfg: Config) -> None:
        self.allow_any = cfg.allow_any_calling_ae
        self.cfg = cfg

    def allowed(self, calling_ae: str, host: str) -> tuple[bool, str]:
        entry = self.cfg.calling_ae(calling_ae)
        if entry is None:
            return (True, "") if self.allow_any else (False, "calling AE title not in calling_aes")
        if entry.host is None or _host_matches(entry.host, host):
            return True, ""
        return False, "calling AE title not allowed from this host"

    def __call__(self, event: Any) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling_ae = str(primitive.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        ok, why = self.allowed(calling_ae, host)
        if ok:
            return
        log.warning("association from %r at %s rejected: %s", calling_ae, host, why)
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()


def _host_matches(configured: str, peer: str) -> bool:
    if configured == peer:
        return True
    try:
        ipaddress.ip_address(configured)
        return False  # a literal address that differs
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(configured, None)
    except OSError:
        log.warning("cannot resolve configured calling AE host %r", configured)
        return False
    return any(info[4][0] == peer for info in infos)


_REQUIRED_COMMAND_ELEMENTS: dict[int, tuple[str, ...]] = {
    0x0001: ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority"),  # C-STORE-RQ
    0x0030: ("MessageID", "AffectedSOPClassUID"),  # C-ECHO-RQ
}


def guard_requests(event: Any) -> None:
    """EVT_DIMSE_RECV: abort on a request pynetdicom would otherwise drop silently.

    pynetdicom discards a request lacking a required command element (e.g. a C-STORE without
    Affected SOP Instance UID) with neither a response nor an abort, so the sender waits until
    its own timeout. Aborting tells it at once that the message was not processed.
    """
    message = event.message
    command = message.command_set
    field = command.get("CommandField")
    if field is None or field & 0x8000:
        return  # responses are not ours to police
    required = _REQUIRED_COMMAND_ELEMENTS.get(int(field))
    if required is not None:
        missing = [k for k in required if command.get(k) in (None, "")]
    else:
        try:
            primitive = message.message_to_primitive()
            valid = bool(primitive.is_valid_request)
        except Exception:
            valid = False
        missing = [] if valid else ["required elements"]
    if missing:
        log.error(
            "aborting association from %s: request 0x%04X lacks %s",
            event.assoc.requestor.ae_title,
            int(field),
            ", ".join(missing),
        )
        event.assoc.abort()
