"""Temporary files named by their writer, and swept at start-up without walking the archive.

Every durable write goes through a temporary file that is renamed into place (``node.receive.
storage``: received instances; ``node.pipeline``: results). A crash leaves the temporary file
behind. Where they live and how start-up finds them is bounded by design:

* **one folder per tree.** Temporary files are created in the tree's staging folder
  (``.incoming`` under the storage root and under the results root; same filesystem, so the
  rename stays atomic), never next to their final file. Start-up reads that one folder: an
  archive of millions of files is never walked at every start.
* **safe to sweep while others write.** The receiver, ``hipnode work`` and ``hipnode import``
  may share a tree, and any of them may start while another is writing. A temporary file's
  name carries its writer (``~<host>-<pid>-<process start>~``): one written on this host by a
  process that no longer runs (a crash; a reused pid has another start time) is removed at
  once; one of a live process is never touched; one of another host (shared storage), or with
  no writer in its name, goes only when unmodified for ``STALE_AGE_S`` (an hour: a live writer
  touches its file at least every ``network_timeout_s`` while receiving, and results are
  written in seconds).

Leftovers of earlier versions that wrote temporary files next to their final file (the receiver
before its staging folder, results until this version) are not looked for: finding them needs a
walk of the whole tree, which start-up never does. They are hidden files that nothing reads;
removing them is a one-off ``find``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

#: The staging folder of a tree (storage root, results root).
STAGING_DIR = ".incoming"
#: A temporary file whose writer cannot be checked goes when unmodified for this long.
STALE_AGE_S = 3600.0

_OWNER = re.compile(r"~([0-9a-f]{8})-(\d+)-(\d+)~")
_tag: tuple[int, str] | None = None


def _host_id() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/PID/stat``); None if it
    does not run or this system has no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, after "(comm)"
    except (ValueError, IndexError):
        return None


def owner_tag() -> str:
    """``<host>-<pid>-<start>`` of this process (recomputed after a fork)."""
    global _tag
    pid = os.getpid()
    if _tag is None or _tag[0] != pid:
        _tag = (pid, f"{_host_id()}-{pid}-{_start_ticks(pid) or 0}")
    return _tag[1]


def temp_name(stem: str, suffix: str) -> str:
    """A hidden temporary file name for ``stem``, unique per writer and call, with its writer."""
    return f".{stem}~{owner_tag()}~{uuid.uuid4().hex[:8]}{suffix}"


def _writer_gone(pid: int, start: int) -> bool | None:
    """Whether the writer ``pid`` (started at ``start``) no longer runs; None: cannot tell."""
    if pid == os.getpid():
        return start != (_start_ticks(pid) or 0)
    now = _start_ticks(pid)
    if now is not None:
        return now != start
    if Path("/proc/self/stat").exists():
        return True  # /proc works and has no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, not ours to signal
    return None  # alive, or reused: the age decides


def is_stale(path: Path, min_age_s: float = STALE_AGE_S, now: float | None = None) -> bool:
    """Whether the temporary file ``path`` was left by a writer that is gone (see above)."""
    m = _OWNER.search(path.name)
    if m is not None and m.group(1) == _host_id():
        gone = _writer_gone(int(m.group(2)), int(m.group(3)))
        if gone is not None:
            return gone
    try:
        modified = path.stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - modified >= min_age_s


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False  # its writer renamed or removed it meanwhile
    except OSError:
        log.exception("could not remove stale temp file %s", path)
        return False
    return True


def sweep(staging: Path, suffix: str, min_age_s: float = STALE_AGE_S) -> int:
    """Remove the stale temporary files (``.*<suffix>``) in the folder ``staging`` (one folder
    read, not a tree); returns how many."""
    try:
        entries = list(os.scandir(staging))
    except FileNotFoundError:
        return 0
    now = time.time()
    count = 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(suffix)):
            continue
        path = Path(entry.path)
        if entry.is_file(follow_symlinks=False) and is_stale(path, min_age_s, now) and _remove(path):
            count += 1
    return count


def sweep_at_start(root: Path, suffix: str, what: str) -> int:
    """Start-up: sweep ``root``'s staging folder (one folder, never the tree)."""
    count = sweep(Path(root) / STAGING_DIR, suffix)
    if count:
        log.info("removed %d stale temp file(s) left by an interrupted %s", count, what)
    return count
