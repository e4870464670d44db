"""Archive files → the receiver's own ingest path: walk, header screen, store, record, remember.

The same header validation, storage (bytes as they are, fsync) and registry calls as a C-STORE,
so imported series complete, queue jobs and produce results exactly like received ones — only
without the network. ``node.importer`` drives this module for ``hipnode import`` (analysis,
progress, summary); this one knows files:

* :func:`walk_files` walks an archive tree lazily (``os.scandir``, one directory's listing in
  memory at a time, never the whole tree), in a stable order (names sorted per directory) so a
  resumed run meets files in the order the first run did;
* :func:`ingest_file` reads one file once: Part 10 check, header validation, header screening
  (a file the node would never analyse — no pixel data, another modality, a localizer — is not
  stored), SHA-256, storage, registry row; de-duplication by SOP Instance UID + content is the
  registry's (``node.registry.ingest``);
* :class:`ImportManifest` remembers every file's outcome by path, size and mtime in a small
  SQLite file beside the storage, so an interrupted import started again skips what it has done
  without opening those files again (no re-read, no re-hash), and counts each file once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from node.config import Config
from node.pixels import screen_metadata
from node.receive.handlers import InvalidDataset, read_header
from node.receive.storage import InstanceStore, OutOfResources, relative_path
from node.registry import Database, Instance
from node.registry.ingest import IngestKind, record_instance
from node.registry.models import utcnow

log = logging.getLogger(__name__)

_PREAMBLE_AND_MAGIC = 132
_GROUP_LENGTH_ELEMENT = 12  # (0002,0000) UL element, explicit VR
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little / big endian

# Outcomes of one file that are not registry ingest kinds
SCREENED = "screened"  # valid DICOM the node would not analyse (header screening): not stored
REFUSED = "refused"  # not DICOM, corrupt header, missing UIDs: not stored
# A manifest row written before a file is ingested and replaced by its outcome after: a row still
# pending on a later run marks the file that was in flight when the import was killed
PENDING = "pending"


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


@dataclass(frozen=True)
class FileOutcome:
    """What became of one file: an ingest kind (``new``, ``duplicate``, ``new_version``),
    ``screened`` or ``refused`` with the reason; the series it went to, if any."""

    kind: str
    series_pk: int | None = None
    detail: str = ""
    instance_pk: int | None = None  # the registry instance version it is, or duplicates
    version: int = 0


def _screen_header(header: pydicom.Dataset, data: bytes, offset: int, cfg: Config) -> str | None:
    """The header-only part of the pipeline's screening (``node.pixels.screen_metadata``), so
    the archive's CT slices, reports and localizers never reach storage; ``None`` to keep.

    The header was parsed up to the pixel data, so its presence is read from the bytes."""
    has_pixels = any(data.find(tag, offset) >= 0 for tag in _PIXEL_DATA_TAGS)
    if has_pixels:
        header.add_new(0x7FE00010, "OB", b"")
    try:
        verdict = screen_metadata(header, cfg.screening)
    finally:
        if has_pixels:
            del header[0x7FE00010]
    return None if verdict.accepted else (verdict.reason.value if verdict.reason else "screened")


def ingest_file(
    cfg: Config,
    db: Database,
    store: InstanceStore,
    path: Path,
    calling_ae: str,
    *,
    quiet_period_s: float | None = None,
    screen: bool = False,
) -> FileOutcome:
    """Read, check, store and record one file. Raises :class:`InvalidDataset` / ``ValueError`` /
    ``OSError`` for a file that cannot be imported and :class:`OutOfResources` for a full disk.

    ``quiet_period_s`` overrides the calling AE's (the importer completes its series itself and
    keeps a running node's scheduler off them); ``screen`` refuses, before storing, files the
    pipeline would screen out on their header alone."""
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
    if screen:
        reason = _screen_header(header, data, offset, cfg)
        if reason is not None:
            return FileOutcome(SCREENED, None, reason)
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
                quiet_period_s=quiet_period_s if quiet_period_s is not None else cfg.quiet_period_for(calling_ae),
            )
    except Exception:
        if not stored.existed:
            store.discard(stored)
        raise
    return FileOutcome(outcome.kind.value, outcome.series_pk, instance_pk=outcome.instance_pk,
                       version=outcome.version)


def resumed_outcome(db: Database, outcome: FileOutcome, attempt_started: datetime) -> FileOutcome:
    """The outcome of a file whose ingest was interrupted after the registry commit and before
    its manifest row (a kill between the two): read again, it meets the copy its own first
    attempt stored and the registry calls it a duplicate. That copy is recognised by being an
    import's and received after the attempt began (one walker: nothing else was ingested in
    that window), and the file is counted as what the first attempt found — ``new``, or
    ``new_version`` for a later version — as an uninterrupted import would count it. A true
    duplicate (the same bytes stored earlier, from another file or over the network) stays one."""
    if outcome.kind != IngestKind.DUPLICATE.value or outcome.instance_pk is None:
        return outcome
    with db.session() as s:
        row = s.execute(
            select(Instance.received_at, Instance.peer_host).where(Instance.id == outcome.instance_pk)
        ).first()
    if row is None or row.peer_host != "import" or row.received_at < attempt_started:
        return outcome
    kind = IngestKind.NEW if outcome.version <= 1 else IngestKind.NEW_VERSION
    return FileOutcome(kind.value, outcome.series_pk, outcome.detail, outcome.instance_pk, outcome.version)


def import_file(cfg: Config, db: Database, store: InstanceStore, path: Path, calling_ae: str) -> str:
    """Import one file; returns the outcome name (``new``, ``duplicate``, ``new_version``)."""
    return ingest_file(cfg, db, store, path, calling_ae).kind


def walk_files(root: Path) -> Iterator[tuple[Path, list[os.DirEntry[str]]]]:
    """Each directory below ``root`` (depth first) with its regular files, names sorted.

    Only the directory being read and the paths of those not yet visited are in memory, so an
    archive of millions of files costs one directory's listing. Symbolic links are not
    followed (a link loop would never end; a linked file is the target's business)."""
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            log.warning("import: cannot list a folder: %s", exc.strerror)
            continue
        files = [e for e in entries if e.is_file(follow_symlinks=False)]
        stack.extend(Path(e.path) for e in reversed(entries) if e.is_dir(follow_symlinks=False))
        yield folder, files


def count_files(root: Path) -> int:
    """How many files :func:`walk_files` will yield (a metadata-only walk, for the ETA)."""
    return sum(len(files) for _, files in walk_files(root))


@dataclass(frozen=True)
class FileClaim:
    """``ImportManifest.begin``'s answer for one file: done already (skip it), or to ingest,
    with the start of an earlier attempt that was interrupted, if there was one."""

    done: bool
    interrupted: datetime | None = None


class ImportManifest:
    """Which files of an archive are done, keyed by path with their size and mtime.

    A file whose size and mtime (ns) still match is skipped on a later run without being opened;
    a changed file is imported again (the registry then sees a new version or a duplicate).
    Each file gets a ``pending`` row with the time its ingest began before it is read, replaced
    by its outcome right after the registry commit (WAL, no fsync per row). A file still pending
    on a later run was in flight when the import was killed: it is read again, and if the registry
    already holds the copy that attempt stored it is counted as that attempt's outcome
    (:func:`resumed_outcome`), not as a duplicate of itself — so a killed and restarted import
    counts every file as an uninterrupted one does, once (counts come from this table, one row
    per path; pending rows are not counted). A crash that loses the last rows of the WAL loses
    their pending rows too and those files then count as duplicates of themselves.

    SQLite through the standard library, one connection per importer thread that walks."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS file (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
            "mtime_ns INTEGER NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', started TEXT)"
        )
        columns = {str(r[1]) for r in self._conn.execute("PRAGMA table_info(file)")}
        if "started" not in columns:  # a manifest from before pending rows
            self._conn.execute("ALTER TABLE file ADD COLUMN started TEXT")

    @staticmethod
    def default_path(cfg: Config, root: Path) -> Path:
        """Beside the storage, one file per archive root (so two archives never mix)."""
        digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
        return Path(cfg.storage.root) / ".import" / f"{digest}.sqlite"

    def begin(self, path: str, size: int, mtime_ns: int) -> FileClaim:
        """Whether ``path`` is done (size and mtime unchanged: skip it without opening it);
        otherwise mark it in flight, and say when an earlier, interrupted attempt on the same
        file began (kept, so a file interrupted twice is still matched to the copy its first
        attempt stored). One read of the row per file, one write only for files to ingest."""
        row = self._conn.execute(
            "SELECT size, mtime_ns, outcome, started FROM file WHERE path = ?", (path,)).fetchone()
        same = row is not None and row[0] == size and row[1] == mtime_ns
        if same and row[2] != PENDING:
            return FileClaim(done=True)
        if same and row[3]:
            return FileClaim(done=False, interrupted=datetime.fromisoformat(str(row[3])))
        self._conn.execute(
            "INSERT INTO file (path, size, mtime_ns, outcome, detail, started) VALUES (?, ?, ?, ?, '', ?) "
            "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "outcome = excluded.outcome, detail = '', started = excluded.started",
            (path, size, mtime_ns, PENDING, utcnow().isoformat()),
        )
        return FileClaim(done=False)

    def record(self, path: str, size: int, mtime_ns: int, outcome: FileOutcome) -> None:
        self._conn.execute(
            "INSERT INTO file (path, size, mtime_ns, outcome, detail) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "outcome = excluded.outcome, detail = excluded.detail, started = NULL",
            (path, size, mtime_ns, outcome.kind, outcome.detail[:200]),
        )

    def counts(self) -> dict[str, int]:
        """Files per outcome (``new``, ``duplicate``, ``new_version``, ``screened``, ``refused``);
        a file still pending (in flight when a run was killed, not seen since) is not counted."""
        return {str(k): int(n) for k, n in self._conn.execute(
            "SELECT outcome, count(*) FROM file WHERE outcome != ? GROUP BY outcome ORDER BY outcome", (PENDING,))}

    def exclusions(self) -> dict[str, int]:
        """Files kept out of the registry, by reason: screened ones by their screening reason
        (a short fixed list); refused ones in one bucket, their varied details stay here."""
        out: dict[str, int] = {}
        for kind, detail, n in self._conn.execute(
            "SELECT outcome, detail, count(*) FROM file WHERE outcome IN (?, ?) GROUP BY outcome, detail",
            (SCREENED, REFUSED),
        ):
            key = f"screened at import: {detail}" if kind == SCREENED else "refused at import: not DICOM or corrupt"
            out[key] = out.get(key, 0) + int(n)
        return out

    def close(self) -> None:
        self._conn.close()


def refusal_reason(exc: Exception) -> str:
    """A short, patient-free reason for a refused file (the manifest and the log keep it)."""
    if isinstance(exc, InvalidDataset):
        return str(exc.reason)[:200]
    if isinstance(exc, OSError):
        return (exc.strerror or type(exc).__name__)[:200]
    return str(exc)[:200]


def import_folder(cfg: Config, db: Database, folder: Path, *, calling_ae: str = "IMPORT") -> dict[str, int]:
    """Record every file below ``folder`` without analysing (``hipnode import --workers 0``):
    a running node completes the series after its quiet period and analyses them. A bad file is
    counted and logged, never fatal."""
    store = InstanceStore(cfg.storage.root, min_free_mb=cfg.storage.min_free_mb, fsync=cfg.storage.fsync)
    counts = {kind.value: 0 for kind in IngestKind} | {"failed": 0}
    files = 0
    for _, entries in walk_files(folder):
        for entry in entries:
            files += 1
            path = Path(entry.path)
            try:
                counts[ingest_file(cfg, db, store, path, calling_ae).kind] += 1
            except OutOfResources as exc:
                counts["failed"] += 1
                log.error("import: storage below watermark, stopping: %s", exc.strerror)
                return counts
            except (InvalidDataset, ValueError, OSError) as exc:
                counts["failed"] += 1
                log.warning("import: %s refused: %s", path.name, refusal_reason(exc))
    log.info("import of %d file(s): %s", files, counts)
    return counts
