"""Streaming receive: datasets written and hashed into a staged file while they arrive.

Unit checks of :class:`node.receive.storage.StagedFile` (content, digest, clean-up, write
errors) and one end-to-end check that a write failure while streaming is never acknowledged.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from node.receive import storage
from node.receive.storage import InstanceStore
from tests.dicom_factory import make_image, write
from tests.test_receive import stored_instances, storescu
from tests.test_receive_support import running_receiver


@pytest.mark.parametrize("background", [True, False])
def test_staged_file_content_digest_and_commit(tmp_path: Path, background: bool) -> None:
    store = InstanceStore(tmp_path / "root", min_free_mb=0)
    prefix = b"P" * 300
    data = os.urandom(3 * storage.WRITEBACK_STEP + 12345)
    staged = storage.StagedFile(store.staging, prefix, writeback=True, background=background)
    view = memoryview(data)
    for start in range(0, len(data), 131072):
        staged.feed(view[start : start + 131072])
    assert staged.hexdigest() == hashlib.sha256(data).hexdigest()
    assert staged.size == len(data)
    mapped = staged.map_dataset()
    try:
        assert mapped[staged.prefix_size : staged.prefix_size + 64] == data[:64]
    finally:
        mapped.close()
    rel = Path("ab", "study", "series", "x.dcm")
    stored = store.commit_staged(staged, rel)
    assert stored.size == len(prefix) + len(data)
    assert (store.root / rel).read_bytes() == prefix + data
    assert list(store.staging.iterdir()) == []
    staged.discard()  # no-op after commit
    assert (store.root / rel).exists()


def test_staged_file_write_error_is_kept_and_file_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InstanceStore(tmp_path / "root", min_free_mb=0)
    staged = store.stage(b"meta")
    real = storage._write_all

    def full(fd: int, data: bytes | memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "_write_all", full)
    staged.feed(b"x" * 1000)
    staged.finish()
    monkeypatch.setattr(storage, "_write_all", real)
    assert staged.error is not None and staged.error.errno == errno.ENOSPC
    assert not staged.ok
    assert list(store.staging.iterdir()) == []
    staged.feed(b"late")  # ignored after finish
    staged.discard()
    staged.discard()


_STAGE_AND_EXIT = r"""
import sys
from pathlib import Path
from node.receive.storage import InstanceStore
staged = InstanceStore(Path(sys.argv[1]), min_free_mb=0).stage(b"meta")
staged.feed(b"half an instance")
staged.finish()  # and the process ends here, as if killed: the file stays
"""


def test_stale_staged_files_removed_at_start(tmp_path: Path) -> None:
    """A receiver that died mid-instance (here: a process that staged half an instance and
    ended) leaves its staged file; the next start removes it at once, its writer being gone
    (``node.tempfiles``; a live writer's files are kept, see tests/test_tempfiles.py)."""
    root = tmp_path / "root"
    subprocess.run([sys.executable, "-c", _STAGE_AND_EXIT, str(root)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])
    store = InstanceStore(root, min_free_mb=0)
    assert len(list(store.staging.iterdir())) == 1
    assert store.remove_stale_temp_files() == 1
    assert list(store.staging.iterdir()) == []


def test_write_failure_while_streaming_is_never_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = storage._write_all

    def failing_in_stage_thread(fd: int, data: bytes | memoryview) -> None:
        if threading.current_thread().name == "hipnode-stage":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    f = write(make_image(seed=31), tmp_path / "in" / "a.dcm")
    with running_receiver(tmp_path) as rx:
        monkeypatch.setattr(storage, "_write_all", failing_in_stage_thread)
        out = storescu(rx.port, f)
        assert "Received Store Response (Refused: OutOfResources)" in out, out  # 0xA700
        assert stored_instances(rx) == []
        assert not [p for p in rx.root.rglob("*") if p.is_file()]
        monkeypatch.setattr(storage, "_write_all", real)
        out = storescu(rx.port, f)
        assert "Received Store Response (Success)" in out, out
        [inst] = stored_instances(rx)
        stored = rx.root / inst.path
        sent = pydicom.dcmread(f)
        got = pydicom.dcmread(stored)
        assert got.SOPInstanceUID == sent.SOPInstanceUID
        assert got.file_meta.SourceApplicationEntityTitle == "MODALITY"
        assert inst.sha256 == hashlib.sha256(stored.read_bytes()[len(_meta_prefix(stored)) :]).hexdigest()


def _meta_prefix(path: Path) -> bytes:
    """Preamble + DICM + File Meta group of a Part 10 file."""
    data = path.read_bytes()
    group_len = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return data[: 144 + group_len]


def test_free_space_is_watched_while_a_dataset_streams_in(tmp_path: Path) -> None:
    """The watermark is checked before the first byte and every FREE_SPACE_STEP bytes after
    it, so a dataset that would take the disk below it fails while it arrives (0xA700, with the
    reason in the Error Comment), not after it has filled the disk."""
    from pydicom.uid import DigitalXRayImageStorageForPresentation as DX
    from pydicom.uid import ExplicitVRLittleEndian

    from tests.dicom_factory import split_part10
    from tests.test_receive_support import scu_ae, send_raw_response

    big = make_image(rows=2048, cols=1536, seed=32)  # 6 MiB: two free-space checks
    fp = BytesIO()
    big.save_as(fp, enforce_file_format=True)
    data = split_part10(fp.getvalue())[1]
    with running_receiver(tmp_path) as rx:
        store = rx.receiver.store
        checks: list[int] = []
        room = store.min_free_bytes + 64 * 2**20

        def free_bytes() -> int:  # the disk fills up (another writer) after the first check
            checks.append(1)
            return room if len(checks) == 1 else store.min_free_bytes - 1

        store.free_bytes = free_bytes  # type: ignore[method-assign]
        ae = scu_ae((DX, [ExplicitVRLittleEndian]))
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE")
        rsp = send_raw_response(assoc, DX, str(big.SOPInstanceUID), data)
        assoc.release()
        assert rsp is not None and rsp.Status == 0xA700
        assert rsp.ErrorComment == "storage below free-space watermark"
        assert len(checks) == 2  # the second check, 4 MiB in, refused it: not the handler's
        assert stored_instances(rx) == []
        assert list(store.staging.iterdir()) == []


def test_backlog_bounds_memory_and_pauses_the_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the disk slower than the network, fed fragments must not pile up in memory: once
    ``max_backlog`` bytes wait to be written, ``feed`` (the association's reader) waits too."""
    store = InstanceStore(tmp_path / "root", min_free_mb=0, max_backlog=1 << 20)
    disk = threading.Event()
    real = storage._write_all

    def slow_disk(fd: int, data: bytes | memoryview) -> None:
        disk.wait()
        real(fd, data)

    staged = store.stage(b"meta")
    monkeypatch.setattr(storage, "_write_all", slow_disk)
    fragment = os.urandom(128 * 1024)
    fed: list[int] = []

    def reader() -> None:
        for i in range(32):  # 4 MiB, four times the backlog
            staged.feed(fragment)
            fed.append(i)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        thread.join(1.0)
        assert thread.is_alive() and len(fed) <= 9, len(fed)  # 1 MiB queued, 1 being written
    finally:
        disk.set()
    thread.join(10)
    assert not thread.is_alive() and len(fed) == 32
    assert staged.hexdigest() == hashlib.sha256(fragment * 32).hexdigest()
    staged.discard()


def test_a_stalled_disk_gives_the_dataset_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "BACKLOG_WAIT_S", 0.3)
    store = InstanceStore(tmp_path / "root", min_free_mb=0, max_backlog=1 << 20)
    disk = threading.Event()
    real = storage._write_all

    def stalled(fd: int, data: bytes | memoryview) -> None:
        disk.wait()
        real(fd, data)

    staged = store.stage(b"meta")
    monkeypatch.setattr(storage, "_write_all", stalled)
    try:
        for _ in range(32):
            staged.feed(b"\x00" * 131072)  # returns: after 0.3 s without progress it stops waiting
        assert staged.error is not None and staged.error.errno == errno.ETIMEDOUT
    finally:
        disk.set()
    staged.discard()
    assert list(store.staging.iterdir()) == []


def test_start_up_reads_only_the_staging_folder(tmp_path: Path) -> None:
    """Crash leftovers live in the staging folder only (whole-file writes stage there too), so
    start-up does not walk the archive: a file named like a temp file elsewhere is not even
    looked at, and a write leaves nothing behind in the staging folder."""
    store = InstanceStore(tmp_path / "root", min_free_mb=0)
    deep = store.root / "ab" / "abcdef" / "1.2.3"
    deep.mkdir(parents=True)
    (deep / ".not-ours.part").write_bytes(b"x")
    stored = store.write(Path("ab/abcdef/1.2.3/4.dcm"), (b"meta", b"dataset"))
    assert stored.absolute.read_bytes() == b"metadataset"
    assert list(store.staging.iterdir()) == []
    crashed = store.staging / ".crashed.part"  # an earlier version's name: no writer in it
    crashed.write_bytes(b"half")
    an_hour_ago = time.time() - 3601
    os.utime(crashed, (an_hour_ago, an_hour_ago))  # such a file goes once an hour old
    assert store.remove_stale_temp_files() == 1
    assert (deep / ".not-ours.part").exists()
