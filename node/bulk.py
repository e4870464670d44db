"""``hipnode import FOLDER``: bring an archive folder in through the receiver's own ingest path.

The same header validation, storage (bytes as they are, fsync) and registry calls as a C-STORE,
so imported series complete, queue jobs and produce results exactly like received ones — only
without the network.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node.config import Config
from node.receive.handlers import InvalidDataset, read_header
from node.receive.storage import InstanceStore, OutOfResources, relative_path
from node.registry import Database
from node.registry.ingest import IngestKind, record_instance

log = logging.getLogger(__name__)

_PREAMBLE_AND_MAGIC = 132
_GROUP_LENGTH_ELEMENT = 12  # (0002,0000) UL element, explicit VR


def _dataset_offset(data: bytes) -> tuple[int, pydicom.Dataset]:
    """Offset of the dataset after the Part 10 file meta, and the file meta itself."""
    if len(data) < _PREAMBLE_AND_MAGIC or data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM preamble)")
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True, specific_tags=[])
    meta = ds.file_meta
    group_length = meta.get("FileMetaInformationGroupLength")
    if group_length is None:
        raise ValueError("file meta lacks its group length")
    return _PREAMBLE_AND_MAGIC + _GROUP_LENGTH_ELEMENT + int(group_length), meta


def import_file(cfg: Config, db: Database, store: InstanceStore, path: Path, calling_ae: str) -> str:
    """Import one file; returns the outcome name (``new``, ``duplicate``, ``new_version``)."""
    data = path.read_bytes()
    try:
        offset, meta = _dataset_offset(data)
    except (ValueError, InvalidDicomError, OSError, EOFError, KeyError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
    body = memoryview(data)[offset:]
    header = read_header(
        body,
        transfer_syntax,
        command_sop_class=str(meta.get("MediaStorageSOPClassUID", "")) or None,
        command_sop_instance=str(meta.get("MediaStorageSOPInstanceUID", "")) or None,
    )
    sha256 = hashlib.sha256(body).hexdigest()
    store.check_room(len(data))
    rel = relative_path(
        str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID), sha256
    )
    stored = store.write(rel, (data,))
    try:
        with db.session() as s:
            outcome = record_instance(
                s,
                header=header,
                path=str(stored.relative),
                size=len(data),
                sha256=sha256,
                transfer_syntax=transfer_syntax,
                calling_ae=calling_ae,
                peer_host="import",
                quiet_period_s=cfg.quiet_period_for(calling_ae),
            )
    except Exception:
        if not stored.existed:
            store.discard(stored)
        raise
    return outcome.kind.value


def import_folder(cfg: Config, db: Database, folder: Path, *, calling_ae: str = "IMPORT") -> dict[str, int]:
    """Import every file below ``folder``; a bad file is counted and logged, never fatal."""
    store = InstanceStore(cfg.storage.root, min_free_mb=cfg.storage.min_free_mb, fsync=cfg.storage.fsync)
    counts = {kind.value: 0 for kind in IngestKind} | {"failed": 0}
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    for path in files:
        try:
            counts[import_file(cfg, db, store, path, calling_ae)] += 1
        except InvalidDataset as exc:
            counts["failed"] += 1
            log.warning("import: %s refused: %s", path.name, exc.reason)
        except OutOfResources as exc:
            counts["failed"] += 1
            log.error("import: storage below watermark, stopping: %s", exc.strerror)
            break
        except (ValueError, OSError) as exc:
            counts["failed"] += 1
            log.warning("import: %s refused: %s", path.name, exc)
    log.info("import of %d file(s): %s", len(files), counts)
    return counts
