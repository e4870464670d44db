"""Durable, content-addressed instance files under the storage root.

A C-STORE is acknowledged only after the bytes are on stable storage, so every file goes through
the same sequence: write a temp file *in the destination directory* (same filesystem, so the
rename is atomic), ``fsync`` it, rename it into place, ``fsync`` the directory (the rename itself
must survive a power cut), and only then does the caller record it in the registry. A crash at
any point leaves either no file, an ignorable ``*.part`` temp file, or a complete file that a
re-send will land on again, never a half-written file under a final name.

Paths never contain a UID as received: a UID is attacker-controlled text (``../``, 64 characters,
odd characters on some filesystems), so directory and file names are SHA-256 digests of the UIDs,
and the file name also carries the digest of the content, so two versions of one SOP instance
never overwrite each other and an identical re-send lands on the identical file.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import mmap
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node import tempfiles

log = logging.getLogger(__name__)

_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TMP_SUFFIX = ".part"
#: Staging folder under the root for every temp file (``node.tempfiles``).
STAGING_DIR = tempfiles.STAGING_DIR
#: Start writeback of a streamed file every this many bytes, so the fsync before the answer
#: finds most pages already on their way to the disk.
WRITEBACK_STEP = 512 * 1024
#: While a dataset streams in, free space is checked again every this many bytes (a statvfs costs
#: microseconds; a multi-gigabyte dataset must not fill the disk before anyone looks).
FREE_SPACE_STEP = 4 * 1024 * 1024
#: Default bound on dataset bytes received but not yet written and hashed, per staged file
#: (``node.max_buffered_mb``). Beyond it :meth:`StagedFile.feed` waits, so the association's
#: reader stops reading and TCP slows the sender, instead of queueing in memory without limit
#: when the disk is slower than the network.
DEFAULT_MAX_BACKLOG = 64 * 1024 * 1024
#: How long ``feed`` waits for the disk before giving the dataset up (a stalled filesystem).
BACKLOG_WAIT_S = 60.0
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc ``sync_file_range`` (Linux), or None. Only ever used as a hint: durability comes
    from the fsync before the answer, never from this."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return,unused-ignore]


_sync_file_range = _load_sync_file_range()


class OutOfResources(OSError):
    """Not enough free space (below the watermark, or the filesystem said ENOSPC/EDQUOT)."""


def uid_digest(uid: str) -> str:
    """Hex digest used in place of a UID in paths (32 hex = 128 bits: collisions are moot)."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:32]


def relative_path(study_uid: str, series_uid: str, sop_uid: str, content_sha256: str) -> Path:
    """``ab/<study>/<series>/<sop>-<content>.dcm``; the first level fans out directories."""
    study = uid_digest(study_uid)
    return Path(study[:2], study, uid_digest(series_uid), f"{uid_digest(sop_uid)}-{content_sha256[:16]}.dcm")


@dataclass(frozen=True)
class StoredFile:
    """A file that is durably in place under the storage root."""

    relative: Path
    absolute: Path
    size: int
    existed: bool  # the same content was already there (identical re-send)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        view.release()


class StagedFile:
    """A temp file in the staging folder, filled and hashed fragment by fragment while the
    instance is still arriving (so writing and hashing overlap with the network instead of
    delaying the answer). It starts with the File Meta Information; the dataset follows.

    The association's DUL thread calls :meth:`feed` with each fragment (an immutable buffer);
    with ``background`` one helper thread writes (and hints writeback) and another hashes, so
    receiving, writing and hashing a fragment overlap (all three release the GIL). The reactor thread calls :meth:`finish` (waits for every fed fragment to be
    stored), then commits or discards. A lock keeps a late write from touching a descriptor
    that ``discard`` closed (and the kernel may have handed to another file). A write error is
    kept in :attr:`error` and the file removed; the handler answers it as a storage failure.
    """

    def __init__(
        self,
        directory: Path,
        prefix: bytes,
        *,
        writeback: bool,
        background: bool = True,
        room: Callable[[], None] | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        self.path = directory / tempfiles.temp_name(uuid.uuid4().hex[:16], _TMP_SUFFIX)
        # Raises OutOfResources when the storage is below its watermark; called before the
        # first byte and every FREE_SPACE_STEP bytes after it.
        self._room = room
        self._next_room_check = 0
        # Read access too: the handler validates the header through a read-only map.
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self._writeback = writeback and _sync_file_range is not None
        self.size = 0  # dataset bytes (the prefix excluded), as hashed
        self.error: OSError | None = None
        self.done = False
        self._offset = 0
        self._flushed = 0
        self._feeding = True
        self._queue: queue.SimpleQueue[bytes | memoryview | None] | None = None
        self._worker: threading.Thread | None = None
        self._hash_queue: queue.SimpleQueue[bytes | memoryview | None] | None = None
        self._hasher: threading.Thread | None = None
        # Bytes fed but not yet written / not yet hashed: a fragment is freed when both are.
        self._unwritten = 0
        self._unhashed = 0
        self._max_backlog = max_backlog
        self._backlog_cv = threading.Condition()
        self._backlog_waiting = False  # feed is waiting: only then is a notify worth its cost
        try:
            _write_all(self._fd, prefix)
        except OSError:
            self.discard()
            raise
        self._offset = len(prefix)
        self.prefix_size = len(prefix)
        if background:
            self._queue = queue.SimpleQueue()
            self._hash_queue = queue.SimpleQueue()
            self._worker = threading.Thread(target=self._drain, name="hipnode-stage", daemon=True)
            self._hasher = threading.Thread(target=self._drain_hash, name="hipnode-hash", daemon=True)
            self._worker.start()
            self._hasher.start()

    @property
    def file_size(self) -> int:
        """Bytes in the file: File Meta Information plus the dataset fed so far."""
        return self._offset

    @property
    def ok(self) -> bool:
        return self.error is None and self._fd is not None and not self.done

    def feed(self, data: bytes | memoryview) -> None:
        """Append dataset bytes (called once per received fragment; ``data`` must not change
        afterwards). Ignored once :meth:`finish` or :meth:`discard` was called."""
        if not self._feeding:
            return
        if self._queue is not None and self._hash_queue is not None:
            if not self._reserve(len(data)):
                return
            self._queue.put(data)
            self._hash_queue.put(data)
        else:
            self._append(data)
            self._hash.update(data)

    def _drain(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            self._append(item)
            with self._backlog_cv:
                self._unwritten -= len(item)
                if self._backlog_waiting:
                    self._backlog_cv.notify()

    def _drain_hash(self) -> None:
        assert self._hash_queue is not None
        while (item := self._hash_queue.get()) is not None:
            self._hash.update(item)  # releases the GIL: runs beside the writer and the receiver
            with self._backlog_cv:
                self._unhashed -= len(item)
                if self._backlog_waiting:
                    self._backlog_cv.notify()

    def _reserve(self, n: int) -> bool:
        """Wait until ``n`` more bytes fit in the backlog; False (and the dataset given up, as a
        write error) if the disk made no room for BACKLOG_WAIT_S."""
        with self._backlog_cv:
            if self._over_backlog(n):
                deadline = time.monotonic() + BACKLOG_WAIT_S
                while self._over_backlog(n):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        # Not under self._lock: the stalled writer holds it. Later appends
                        # see the error and stop; discard() removes the file.
                        if self.error is None:
                            self.error = OSError(
                                errno.ETIMEDOUT, f"storage made no progress for {BACKLOG_WAIT_S:g} s"
                            )
                        self._feeding = False
                        return False
                    self._backlog_waiting = True
                    self._backlog_cv.wait(remaining)
                    self._backlog_waiting = False
            self._unwritten += n
            self._unhashed += n
        return True

    def _over_backlog(self, n: int) -> bool:
        pending = max(self._unwritten, self._unhashed)
        return pending > 0 and pending + n > self._max_backlog  # one fragment always fits

    def finish(self) -> None:
        """Stop feeding and wait until every fed fragment is written and hashed. Idempotent."""
        self._feeding = False
        worker, self._worker = self._worker, None
        hasher, self._hasher = self._hasher, None
        if worker is not None and hasher is not None:
            assert self._queue is not None and self._hash_queue is not None
            self._queue.put(None)
            self._hash_queue.put(None)
            worker.join()
            hasher.join()

    def _append(self, data: bytes | memoryview) -> None:
        with self._lock:
            fd = self._fd
            if fd is None or self.error is not None:
                return
            try:
                if self._room is not None and self._offset >= self._next_room_check:
                    self._next_room_check = self._offset + FREE_SPACE_STEP
                    self._room()
                _write_all(fd, data)
            except OSError as exc:
                self.error = exc
                self._close_and_unlink()
                return
            n = len(data)
            self.size += n
            self._offset += n
            if self._writeback and self._offset - self._flushed >= WRITEBACK_STEP:
                assert _sync_file_range is not None
                _sync_file_range(fd, self._flushed, self._offset - self._flushed, _SYNC_FILE_RANGE_WRITE)
                self._flushed = self._offset

    def hexdigest(self) -> str:
        self.finish()
        return self._hash.hexdigest()

    def map_dataset(self) -> mmap.mmap:
        """A read-only map of the whole file (the dataset starts at :attr:`prefix_size`):
        the page-cache pages themselves, so validating the header copies nothing."""
        self.finish()
        with self._lock:
            if self._fd is None:
                raise self.error or OSError(errno.EBADF, "staged file already closed")
            return mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)

    def sync_and_close(self, *, fsync: bool) -> None:
        """fdatasync (the size is metadata needed to read the data back, so it is included)
        and close; raises ``OSError`` (the file is then removed)."""
        self.finish()
        with self._lock:
            fd = self._fd
            if fd is None:
                raise self.error or OSError(errno.EBADF, "staged file already closed")
            try:
                if fsync:
                    os.fdatasync(fd)
            except OSError:
                self._close_and_unlink()
                raise
            self._fd = None
            os.close(fd)

    def _close_and_unlink(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            log.exception("could not remove staged file %s", self.path)

    def discard(self) -> None:
        """Remove the temp file (no-op once committed or discarded). Idempotent."""
        self.finish()
        with self._lock:
            if self.done:
                return
            self.done = True
            self._close_and_unlink()


class InstanceStore:
    """Writes received instances durably; one per process, shared by every association thread."""

    def __init__(
        self,
        root: Path,
        *,
        min_free_mb: float = 512.0,
        fsync: bool = True,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        self.max_backlog = max_backlog
        self.root = Path(root).resolve()
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = self.root / STAGING_DIR
        self.staging.mkdir(exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    def stage(self, prefix: bytes) -> StagedFile:
        """A new streamed temp file on the storage filesystem (so the final rename is atomic),
        which checks the free-space watermark while the dataset streams in: a dataset that
        would fill the disk fails (0xA700) when the watermark is crossed, not after arriving."""
        return StagedFile(
            self.staging,
            prefix,
            writeback=self.fsync,
            room=self._check_streaming_room,
            max_backlog=self.max_backlog,
        )

    def _check_streaming_room(self) -> None:
        free = self.free_bytes()
        if free < self.min_free_bytes:
            raise OutOfResources(
                errno.ENOSPC,
                f"free space {free // 2**20} MiB fell below the {self.min_free_bytes // 2**20} MiB "
                "watermark while the dataset was arriving",
            )

    def commit_staged(self, staged: StagedFile, relative: Path) -> StoredFile:
        """Durably move a completely fed :class:`StagedFile` to ``relative``: fdatasync, rename,
        fsync the directory. Same errors and clean-up as :meth:`write`."""
        final = self.root / relative
        size = staged.file_size
        try:
            staged.sync_and_close(fsync=self.fsync)
            self._ensure_dir(final.parent)
            existed = final.exists()
            os.replace(staged.path, final)
            staged.done = True
            if self.fsync:
                self._fsync_dir(final.parent)
        except OSError as exc:
            staged.discard()
            if exc.errno in _OUT_OF_SPACE:
                raise OutOfResources(exc.errno, f"filesystem full while writing: {exc.strerror}") from exc
            raise
        return StoredFile(relative=relative, absolute=final, size=size, existed=existed)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_room(self, incoming: int) -> None:
        """Raise :class:`OutOfResources` if storing ``incoming`` bytes would cross the watermark."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise OutOfResources(
                errno.ENOSPC,
                f"free space {free // 2**20} MiB minus {incoming // 2**20} MiB incoming is below "
                f"the {self.min_free_bytes // 2**20} MiB watermark",
            )

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` (and parents) and fsync each parent whose entries changed."""
        if directory in self._known_dirs:
            return
        with self._dirs_lock:
            missing: list[Path] = []
            d = directory
            while d != self.root and not d.is_dir():
                missing.append(d)
                d = d.parent
            for d in reversed(missing):
                try:
                    d.mkdir()
                except FileExistsError:
                    continue
                if self.fsync:
                    self._fsync_dir(d.parent)
            self._known_dirs.add(directory)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, relative: Path, parts: tuple[bytes | memoryview, ...]) -> StoredFile:
        """Durably place the concatenation of ``parts`` at ``relative``.

        Raises :class:`OutOfResources` for a full disk, ``OSError`` for anything else; in both
        cases the temp file is gone.
        """
        final = self.root / relative
        size = sum(len(p) for p in parts)
        self._ensure_dir(final.parent)
        existed = final.exists()
        # in the staging folder (same filesystem: the rename stays atomic), so that start-up
        # clears crash leftovers there without walking the whole archive
        tmp = self.staging / tempfiles.temp_name(final.name, _TMP_SUFFIX)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                for part in parts:
                    _write_all(fd, part)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            if self.fsync:
                self._fsync_dir(final.parent)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                log.exception("could not remove temp file %s", tmp)
            if exc.errno in _OUT_OF_SPACE:
                raise OutOfResources(exc.errno, f"filesystem full while writing: {exc.strerror}") from exc
            raise
        return StoredFile(relative=relative, absolute=final, size=size, existed=existed)

    def discard(self, stored: StoredFile) -> None:
        """Remove a file the registry never accepted (unless it was already there before)."""
        if stored.existed:
            return
        try:
            stored.absolute.unlink(missing_ok=True)
            if self.fsync:
                self._fsync_dir(stored.absolute.parent)
        except OSError:
            log.exception("could not remove orphan file %s", stored.relative)

    def remove_stale_temp_files(self) -> int:
        """Delete ``*.part`` files left by a crash (called once at start-up); returns the count.

        Every temp file is written in the staging folder, so only that folder is read: walking
        an archive of millions of files at every start would delay the node by minutes. Only
        files whose writer is gone are removed (``node.tempfiles``): another process writing
        into the same storage (``hipnode import``, a second receiver) keeps its files. An
        earlier version's leftovers elsewhere in the tree go in one background walk, once."""
        return tempfiles.sweep_at_start(self.root, _TMP_SUFFIX, "receive")
