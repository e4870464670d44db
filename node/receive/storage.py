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

import errno
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TMP_SUFFIX = ".part"


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


class InstanceStore:
    """Writes received instances durably; one per process, shared by every association thread."""

    def __init__(self, root: Path, *, min_free_mb: float = 512.0, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

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
        tmp = final.with_name(f".{final.name}.{threading.get_ident()}{_TMP_SUFFIX}")
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
        """Delete ``*.part`` files left by a crash (called once at start-up); returns the count."""
        count = 0
        for p in self.root.rglob(f".*{_TMP_SUFFIX}"):
            try:
                p.unlink()
                count += 1
            except OSError:
                log.exception("could not remove stale temp file %s", p)
        if count:
            log.info("removed %d stale temp file(s) left by an interrupted receive", count)
        return count
