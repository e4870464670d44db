"""Stale temporary files (issue 13 review): start-up removes what a crashed writer left, never
what a live process is still writing, and never walks the whole archive to find them.

Temporary files live in each tree's staging folder and carry their writer in their name
(``node.tempfiles``): a file of a process of this host that no longer runs goes at once, one
of a live process stays, one of another host (or of an earlier version, without a writer)
goes after an hour unmodified. Only the staging folders are read at start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node import tempfiles
from node.config import parse_config
from node.receive.storage import InstanceStore
from tests.dicom_factory import make_result_stub

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600.0

_WRITER = r"""
import sys, time
from pathlib import Path
from node.receive.storage import InstanceStore
staged = InstanceStore(Path(sys.argv[1]), min_free_mb=0).stage(b"prefix")
staged.feed(b"a dataset still arriving")
print(staged.path.name, flush=True)
if sys.argv[2] == "stay":
    time.sleep(60)
"""


def _writer(root: Path, stay: bool) -> tuple[subprocess.Popen[str], str]:
    """A process that stages a file under ``root`` (and keeps running when ``stay``)."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), "stay" if stay else "exit"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    assert name.endswith(".part"), name
    if not stay:
        proc.wait(30)
    return proc, name


def _aged(path: Path, seconds: float) -> Path:
    path.write_bytes(b"x")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_start_up_keeps_a_live_writers_files_and_removes_a_crashed_ones(tmp_path: Path) -> None:
    """The receiver starting while ``hipnode import`` (or another receiver) streams into the
    same storage must not delete its staged files; a killed writer's are removed at once."""
    root = tmp_path / "storage"
    live, live_name = _writer(root, stay=True)
    try:
        _dead, dead_name = _writer(root, stay=False)
        staging = root / tempfiles.STAGING_DIR
        other_host = staging / ".abc~00000000-1-1~deadbeef.part"  # another host, just written
        other_host.write_bytes(b"x")
        old_other_host = _aged(staging / ".abd~00000000-1-1~deadbeef.part", 2 * HOUR)
        legacy = staging / ".0123456789abcdef.part"  # an earlier version's name: no writer in it
        legacy.write_bytes(b"x")
        old_legacy = _aged(staging / ".fedcba9876543210.part", 2 * HOUR)
        unrelated = staging / "notes.txt"
        unrelated.write_bytes(b"x")

        removed = InstanceStore(root, min_free_mb=0).remove_stale_temp_files()

        left = {p.name for p in staging.iterdir()}
        assert live_name in left, "a live writer's staged file was deleted"
        assert dead_name not in left, "a crashed writer's staged file was kept"
        assert {other_host.name, legacy.name, unrelated.name} <= left
        assert old_other_host.name not in left and old_legacy.name not in left
        assert removed == 3
    finally:
        live.kill()
        live.wait(10)


def test_a_reused_pid_does_not_keep_a_dead_writers_file(tmp_path: Path) -> None:
    """Same host and pid, another process start: the writer is gone."""
    tag = tempfiles.owner_tag()
    host, pid, start = tag.split("-")
    mine = tmp_path / tempfiles.temp_name("x", ".tmp")
    mine.write_bytes(b"x")
    reused = tmp_path / f".y~{host}-{pid}-{int(start) + 1}~00000000.tmp"
    reused.write_bytes(b"x")
    assert not tempfiles.is_stale(mine) and tempfiles.is_stale(reused)


def test_a_result_write_interrupted_leaves_no_temp_file_and_temps_live_in_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.pipeline as pl
    from node.worker import JobTimeLimit

    cfg = parse_config({"outputs": {"root": str(tmp_path / "results")}})
    pipeline = pl.Pipeline(cfg, db=None, models=object())  # type: ignore[arg-type]
    seen: list[Path] = []
    real_replace = os.replace

    def interrupted(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        seen.append(Path(src))
        raise JobTimeLimit  # the per-job limit striking between write and rename

    monkeypatch.setattr(pl.os, "replace", interrupted)
    with pytest.raises(JobTimeLimit):
        pipeline._write(make_result_stub())
    (tmp,) = seen
    assert tmp.parent == tmp_path / "results" / tempfiles.STAGING_DIR
    assert not tmp.exists(), "the interrupted write left its temp file"
    monkeypatch.setattr(pl.os, "replace", real_replace)
    rel = pipeline._write(make_result_stub())
    assert (tmp_path / "results" / rel).is_file()
    assert [p.name for p in (tmp_path / "results" / tempfiles.STAGING_DIR).iterdir()] == []


def test_a_worker_start_sweeps_the_results_staging_folder(tmp_path: Path) -> None:
    import threading

    from node.registry import Database
    from node.worker import Worker

    results = tmp_path / "results"
    staging = results / tempfiles.STAGING_DIR
    staging.mkdir(parents=True)
    _dead, dead_name = _writer(tmp_path / "elsewhere", stay=False)  # a gone writer's tag
    crashed = staging / dead_name.replace(".part", ".tmp")
    crashed.write_bytes(b"half a result")
    mine = staging / tempfiles.temp_name("1.2.3.dcm", ".tmp")  # this process's: being written
    mine.write_bytes(b"a result being written")
    db = Database(f"sqlite:///{tmp_path / 'hipnode.db'}")
    db.migrate()
    cfg = parse_config({"outputs": {"root": str(results)}, "database": {"url": db.url}})
    worker = Worker(cfg, db, pipeline_factory=lambda _c, _d: object(), worker_id="w1")  # type: ignore[arg-type,return-value]
    stop = threading.Event()
    stop.set()  # start, sweep, stop
    worker.run_forever(stop)
    assert not crashed.exists() and mine.exists()
    db.dispose()
