"""Workers bounded in memory (issue 13, must have 6): a huge or many-frame image fails fast with
a reason and never blocks the rest of its series.

* ``screening.max_decoded_mb``: what decoding one image needs is estimated from its header
  (Rows x Columns x SamplesPerPixel x BitsAllocated x frames decoded) before any decoder runs;
* a stored file is read up to its pixel data, and only its first frame is read after that:
  a 128 MiB many-frame object costs one frame of memory, not 128 MiB;
* a compressed frame whose own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ) declares more
  than the DICOM header is refused before the decoder allocates what it declares;
* ``jobs.max_address_space_mb``: ``hipnode work``'s address space, so that what no screening
  foresaw fails its job with MemoryError instead of waking the OOM killer.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless
from sqlalchemy import select

import node.pixels as px
from node.bulk import import_file
from node.codestream import FrameGeometry, read_geometry
from node.config import ScreeningConfig, parse_config
from node.domain import JobState, ScreenReason
from node.phantom import render_index
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.pipeline import Pipeline
from node.receive.storage import InstanceStore
from node.registry import Database, Instance
from node.series import complete_due_series
from tests.test_pixels import _dx

REPO = Path(__file__).resolve().parents[1]


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _no_decoder(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the decoder was called")


def test_an_image_over_max_decoded_mb_is_excluded_before_any_decoder_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(_dx(1024, 1024), tmp_path / "big.dcm")  # 2 MiB decoded, 16 bits allocated
    monkeypatch.setattr(px, "pixel_array", _no_decoder)
    rad, verdict = px.load_radiograph(path, ScreeningConfig(max_decoded_mb=1))
    assert rad is None and verdict.reason is ScreenReason.SIZE
    assert verdict.detail == (
        "decoding needs 2.0 MiB (1024x1024, 1 sample(s) of 16 bits, 1 of 1 frame(s)), "
        "over screening.max_decoded_mb (1 MiB)"
    )
    # the same check on a header in memory, and on the header-only screen the importer uses
    assert px.screen_metadata(_dx(1024, 1024), ScreeningConfig(max_decoded_mb=1)).reason is ScreenReason.SIZE
    monkeypatch.undo()
    rad, verdict = px.load_radiograph(path, ScreeningConfig(max_decoded_mb=2))  # exactly fits
    assert verdict.accepted and rad is not None and rad.shape == (1024, 1024)


def _many_frames(path: Path, frames: int, rows: int, cols: int) -> np.ndarray:
    """A native multi-frame DX, frame k filled with a pattern offset by k; returns frame 0."""
    ds = _dx(rows, cols)
    first = np.frombuffer(ds.PixelData, np.uint16).reshape(rows, cols)
    ds.NumberOfFrames = frames
    block = bytearray(first.tobytes()) * frames
    ds.PixelData = bytes(block)
    del block
    _save(ds, path)
    return first


def test_a_many_frame_image_costs_one_frame_of_memory(tmp_path: Path) -> None:
    """64 frames of 1024 x 1024 (128 MiB on disk): the worker reads the header and frame 0."""
    path = tmp_path / "frames.dcm"
    first = _many_frames(path, 64, 1024, 1024)
    assert path.stat().st_size > 128 * 2**20
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        rad, verdict = px.load_radiograph(path, ScreeningConfig())
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.accepted and rad is not None
    np.testing.assert_array_equal(rad.raw, first.astype(np.float32))
    # one frame is 2 MiB; its float32 copies (raw, the window, image01) about 12 MiB more
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB for one frame of a 128 MiB object"
    assert elapsed < 10


def _lying_j2k(rows: int = 512, claimed: int = 20000) -> Dataset:
    """A JPEG 2000 DX of ``rows`` x ``rows`` whose codestream's SIZ claims ``claimed``^2 pixels
    (a decoder allocated 2.4 GB for 20000^2 before pydicom saw the mismatch)."""
    ds = _dx(rows, rows)
    ds.compress(JPEG2000Lossless)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    siz = frame.index(b"\xff\x51")
    struct.pack_into(">II", frame, siz + 6, claimed, claimed)  # Xsiz, Ysiz
    struct.pack_into(">II", frame, siz + 22, claimed, claimed)  # XTsiz, YTsiz
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def _lying_jpeg_ls(rows: int = 300, claimed: int = 60000) -> Dataset:
    ds = _dx(rows, rows)
    ds.compress(JPEGLSLossless)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    sof = frame.index(b"\xff\xf7")
    struct.pack_into(">HH", frame, sof + 5, claimed, claimed)  # Y, X
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


@pytest.mark.parametrize("make", [_lying_j2k, _lying_jpeg_ls], ids=["jpeg2000", "jpeg-ls"])
def test_a_frame_declaring_more_than_its_header_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any
) -> None:
    ds = make()
    path = _save(ds, tmp_path / "lying.dcm")
    monkeypatch.setattr(px, "pixel_array", _no_decoder)
    for source in (path, pydicom.dcmread(path)):  # from the file, and from a dataset in memory
        rad, verdict = px.load_radiograph(source, ScreeningConfig())
        assert rad is None and verdict.reason is ScreenReason.UNDECODABLE, verdict
        assert "the compressed frame declares" in verdict.detail and "not decoded" in verdict.detail
    monkeypatch.undo()
    # the honest original decodes as before
    honest = _dx(300, 300)
    honest.compress(JPEGLSLossless)
    rad, verdict = px.load_radiograph(_save(honest, tmp_path / "honest.dcm"), ScreeningConfig())
    assert verdict.accepted and rad is not None


def test_codestream_geometry_of_each_family() -> None:
    j2k = _dx(320, 300)
    j2k.compress(JPEG2000Lossless)
    frame = next(generate_frames(j2k.PixelData, number_of_frames=1))
    assert read_geometry(io.BytesIO(frame), len(frame)) == FrameGeometry(320, 300, 1, 12)
    # the same codestream inside a JP2 file (signature, file type, then the codestream box)
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 "
           + struct.pack(">L", 8 + len(frame)) + b"jp2c" + frame)
    assert read_geometry(io.BytesIO(jp2), len(jp2)) == FrameGeometry(320, 300, 1, 12)
    ls = _dx(320, 300)
    ls.compress(JPEGLSLossless)
    frame = next(generate_frames(ls.PixelData, number_of_frames=1))
    assert read_geometry(io.BytesIO(frame), len(frame)) == FrameGeometry(320, 300, 1, 12)
    # a JPEG with a large APP segment before its frame header: skipped, not read
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 480, 640, 1) + b"\x01\x11\x00"
    jpeg = b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", 65000) + bytes(64998) + sof + b"\xff\xda"
    assert read_geometry(io.BytesIO(jpeg), len(jpeg)) == FrameGeometry(480, 640, 1, 8)
    assert read_geometry(io.BytesIO(jpeg), 1000) is None  # the frame header lies beyond the limit
    assert read_geometry(io.BytesIO(b"\x00" * 100), 100) is None


def test_an_oversize_image_is_excluded_and_the_rest_of_its_series_analysed(tmp_path: Path) -> None:
    """One series: an AP pelvis of 256 px and one of 1024 px; with a 1 MiB cap the large one is
    excluded with its reason (recorded on the instance) and the small one is analysed."""
    cfg = parse_config({
        "storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1},
        "outputs": {"root": str(tmp_path / "results")},
        "database": {"url": f"sqlite:///{tmp_path / 'hipnode.db'}"},
        "series": {"quiet_period_s": 0.01},
        "screening": {"max_decoded_mb": 1},
        "models": {"root": str(REPO / "models")},
    })
    db = Database(cfg.database.url)
    db.migrate()
    rng = np.random.default_rng(13)
    info = make_study_info(13, 1, "F", rng, modality="DX")
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    sizes = {1: 256, 2: 1024}
    uids = {}
    for number, size in sizes.items():
        ds = build_dataset(render_index(13, number, views=["ap_pelvis"], size=size), info, 1, number, rng)
        uids[number] = str(ds.SOPInstanceUID)
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(to_bytes(ds))
        assert import_file(cfg, db, store, path, "CR1") == "new"
    time.sleep(0.05)
    (job_pk,) = complete_due_series(db, cfg)
    outcome = Pipeline(cfg, db).process(job_pk)
    assert outcome.state is JobState.DONE, outcome
    assert outcome.summary["images"] == 2 and outcome.summary["analysed"] == 1, outcome.summary
    with db.session() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
    big, small = rows[uids[2]], rows[uids[1]]
    assert big.state == "screened_out" and big.screen_reason is not None
    assert big.screen_reason.startswith("image size out of range: decoding needs")
    assert "over screening.max_decoded_mb (1 MiB)" in big.screen_reason
    assert small.state == "accepted"
    db.dispose()


_LIMITED = r"""
import sys
import numpy as np
from node.config import parse_config
from node.worker import apply_address_space_limit

cfg = parse_config({"jobs": {"max_address_space_mb": int(sys.argv[1])}})
print("applied", apply_address_space_limit(cfg))
try:
    np.ones(int(sys.argv[2]) * 2**20, dtype=np.uint8)
except MemoryError:
    print("MemoryError")
else:
    print("allocated")
"""


def test_max_address_space_makes_a_runaway_allocation_a_memory_error() -> None:
    """Run in a child process: the limit is process-wide and cannot be raised again."""
    run = subprocess.run([sys.executable, "-c", _LIMITED, "4096", "8192"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["applied", "True", "MemoryError"], run.stdout + run.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", _LIMITED, "4096", "64"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["applied", "True", "allocated"], run.stdout + run.stderr[-2000:]


def test_max_address_space_is_not_applied_with_a_gpu_provider_or_when_unset() -> None:
    from node.worker import apply_address_space_limit

    assert apply_address_space_limit(parse_config({})) is False
    gpu = parse_config({"jobs": {"max_address_space_mb": 8192}, "models": {"provider": "cuda"}})
    assert apply_address_space_limit(gpu) is False


def test_hipnode_work_runs_under_its_address_space_limit(tmp_path: Path) -> None:
    """``hipnode work`` applies the limit before its models load, and works under it (an idle
    worker with two job threads takes about 2 GiB of address space, 300 MB resident)."""
    import yaml

    from tests.conftest import free_port

    cfg = {
        "database": {"url": f"sqlite:///{tmp_path / 'hipnode.db'}"},
        "storage": {"root": str(tmp_path / "storage")},
        "outputs": {"root": str(tmp_path / "results")},
        "models": {"root": str(REPO / "models")},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "work_port": free_port()},
        "jobs": {"max_address_space_mb": 6144},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "work.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "node.cli", "--config", str(tmp_path / "config.yaml"), "work"],
                                cwd=tmp_path, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 90
        while "hipnode running" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        (line,) = [x for x in limits.splitlines() if x.startswith("Max address space")]
        assert line.split()[3] == str(6144 * 2**20), line
        assert "address space of this worker process limited to 6144 MiB" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
