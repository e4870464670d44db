"""``hipnode import``: an archive folder goes through the receiver's own ingest path."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import yaml
from sqlalchemy import func, select

from node.config import parse_config
from node.phantom import render_index
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.registry import Database, Instance, Series


def _write_study(folder: Path, count: int = 3) -> list[Path]:
    rng = np.random.default_rng(5)
    info = make_study_info(5, 1, "M", rng, modality="CR")
    paths = []
    for i in range(count):
        img = render_index(5, i, views=["ap_pelvis"], size=256)
        ds = build_dataset(img, info, 1, i + 1, rng)
        path = folder / f"img{i}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths


def test_import_folder_records_instances_and_dedupes(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "sub").mkdir(parents=True)
    files = _write_study(archive / "sub")
    (archive / "notes.txt").write_text("not DICOM")
    var = tmp_path / "var"
    config = {
        "storage": {"root": str(var / "storage"), "min_free_mb": 1},
        "database": {"url": f"sqlite:///{var / 'db.sqlite'}"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "node.cli", "--config", str(tmp_path / "config.yaml"), "import", str(archive),
           "--workers", "0", "--no-progress"]  # record only: a running node analyses them
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1, first.stdout + first.stderr  # the text file is refused
    assert "files: new 3, refused 1" in first.stdout, first.stdout
    # started again: every file is in the manifest, none is read again, none counted twice
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "files: new 3, refused 1" in second.stdout, second.stdout
    # the same bytes under another name: recorded by the registry as a duplicate
    (archive / "sub" / "copy.dcm").write_bytes(files[0].read_bytes())
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "files: duplicate 1, new 3, refused 1" in third.stdout, third.stdout

    # killed between a registry commit and its manifest row: the row is still pending from an
    # attempt that began before that copy was stored (img1), or from one that began after the
    # copy's original was stored (copy.dcm, a true duplicate). Read again, img1 counts as new,
    # not as a duplicate of itself, and copy.dcm stays a duplicate.
    manifest = next((var / "storage" / ".import").glob("*.sqlite"))
    with sqlite3.connect(manifest) as con:
        con.execute("UPDATE file SET outcome = 'pending', started = '2000-01-01T00:00:00' WHERE path LIKE '%img1.dcm'")
        con.execute("UPDATE file SET outcome = 'pending', started = ? WHERE path LIKE '%copy.dcm'",
                    (datetime.now(UTC).replace(tzinfo=None).isoformat(),))
        assert con.execute("SELECT count(*) FROM file WHERE outcome = 'pending'").fetchone()[0] == 2
    fourth = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "files: duplicate 1, new 3, refused 1" in fourth.stdout, fourth.stdout
    with sqlite3.connect(manifest) as con:
        assert con.execute("SELECT count(*) FROM file WHERE outcome = 'pending'").fetchone()[0] == 0

    cfg = parse_config(config)
    db = Database(cfg.database.url)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 3
        series = s.scalars(select(Series)).all()
        assert len(series) == 1 and series[0].calling_ae == "IMPORT" and series[0].state == "open"
        for inst in s.scalars(select(Instance)).all():
            stored = (var / "storage" / inst.path).read_bytes()
            original = next(f for f in files if pydicom.dcmread(f).SOPInstanceUID == inst.sop_instance_uid)
            assert stored == original.read_bytes()  # the file as it was, byte for byte
    db.dispose()
