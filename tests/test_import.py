"""``hipnode import DIR`` (issue 16): an archive walked, recorded and analysed in process.

The bar: a phantom archive with corrupt files, non-hip images and duplicates, imported by a
subprocess that is SIGKILLed halfway and started again, ends with the same registry contents
and the same export as an uninterrupted import; files done before the kill are not read again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sqlalchemy import select

from node.config import parse_config
from node.phantom import render_index
from node.phantom.dicom import build_dataset, encode, make_study_info, to_bytes
from node.registry import Database, Instance, Job, Measurement, Result, Series

REPO = Path(__file__).resolve().parents[1]
STUDIES = 30  # 48 images + 8 junk / duplicate files: small enough for 2 shared cores

# per study: the views of its one series (a "other" image is a non-hip radiograph: chest, knee…)
_PLAN = (
    ("ap_pelvis", "ap_pelvis"),
    ("ap_hip",),
    ("other",),
    ("ap_pelvis", "lateral_hip"),
    ("ap_hip", "other"),
)


def write_archive(root: Path, studies: int, *, seed: int = 16, size: int = 256, syntax: str = "explicit",
                  junk: bool = True) -> int:
    """A phantom archive as PACS exports look: ``P<k>/<study>/<series>/IMG<n>.dcm``; with
    ``junk``, a corrupt and a truncated file, a text file, a CT image (screened on its header),
    and duplicates (the same bytes under another name and in another folder). Returns the
    number of files written."""
    rng = np.random.default_rng(seed)
    written = 0
    first_files: list[Path] = []
    for study in range(studies):
        views = _PLAN[study % len(_PLAN)]
        info = make_study_info(seed, study + 1, "F" if study % 2 else "M", rng, modality="DX" if study % 3 else "CR")
        folder = root / f"P{study // 4:03d}" / f"ST{study:04d}" / "SE1"
        folder.mkdir(parents=True, exist_ok=True)
        for n, view in enumerate(views):
            index = study * 4 + n
            img = render_index(seed, index, views=[view], size=size,
                               other_kinds=["chest", "knee", "hand", "abdomen"] if view == "other" else None)
            ds = build_dataset(img, info, 1, n + 1, rng)
            if syntax != "explicit":
                encode(ds, syntax)
            path = folder / f"IMG{n + 1:03d}.dcm"
            path.write_bytes(to_bytes(ds))
            written += 1
            if n == 0:
                first_files.append(path)
    if junk:
        bad = root / "misc"
        bad.mkdir(parents=True, exist_ok=True)
        (bad / "README.txt").write_text("exported by a PACS\n")
        (bad / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
        good = first_files[0].read_bytes()
        (bad / "truncated.dcm").write_bytes(good[:400])
        ct = build_dataset(render_index(seed, 9999, views=["ap_pelvis"], size=size),
                           make_study_info(seed, 9999, "M", rng, modality="CR"), 1, 1, rng)
        ct.Modality = "CT"
        (bad / "ct.dcm").write_bytes(to_bytes(ct))
        dup = root / "ZZ_duplicates"
        dup.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(first_files[:3]):
            shutil.copyfile(f, dup / f"copy{i}.dcm")
        shutil.copyfile(first_files[1], first_files[1].with_name("IMG001-again.dcm"))
        written += 4 + 3 + 1
    return written


def _config(tmp: Path, name: str, **extra: Any) -> Path:
    var = tmp / name
    cfg = {
        "storage": {"root": str(var / "storage"), "min_free_mb": 1},
        "database": {"url": f"sqlite:///{var / 'db.sqlite'}"},
        "outputs": {"root": str(var / "results"), "sc_compression": "none"},
        "models": {"root": str(REPO / "models")},
        "jobs": {"lease_s": 30, "heartbeat_s": 5},
        "log_level": "WARNING",
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _hipnode(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli", "--config", str(config), *args]


def registry_contents(config: Path) -> dict[str, Any]:
    """What must not depend on how the import got there: no times, worker ids or attempts."""
    cfg = parse_config(yaml.safe_load(config.read_text()))
    db = Database(cfg.database.url)
    try:
        with db.session() as s:
            series = {r.id: r.series_uid for r in s.scalars(select(Series))}
            out = {
                "instances": sorted(
                    (i.sop_instance_uid, i.version, i.sha256, i.state, i.screen_reason or "", i.superseded)
                    for i in s.scalars(select(Instance))
                ),
                "series": sorted((r.series_uid, r.state, r.generation, r.calling_ae) for r in s.scalars(select(Series))),
                "jobs": sorted((series[j.series_pk], j.generation, j.state, j.priority) for j in s.scalars(select(Job))),
                "results": sorted(
                    (r.sop_instance_uid, r.kind, series[r.series_pk], repr(r.payload)) for r in s.scalars(select(Result))
                ),
                "measurements": sorted(
                    (m.study_uid, m.side, m.view, m.inclination_deg, m.anteversion_deg)
                    for m in s.scalars(select(Measurement))
                ),
            }
    finally:
        db.dispose()
    return out


def export_csv(config: Path) -> str:
    results = config.parent / "out"  # the --out of the import
    done = subprocess.run(_hipnode(config, "export", "--format", "csv", "--results", str(results)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_archive(root, STUDIES)
    return root


@pytest.fixture(scope="module")
def reference(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One uninterrupted import with two worker threads."""
    tmp = tmp_path_factory.mktemp("reference")
    config = _config(tmp, "ref")
    done = subprocess.run(
        _hipnode(config, "import", str(archive), "--workers", "2", "--out", str(tmp / "out")),
        capture_output=True, text=True, timeout=600,
    )
    return config, done


def test_import_analyses_and_summarises(archive: Path, reference: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    config, done = reference
    assert done.returncode == 1, done.stdout + done.stderr  # corrupt files are refused: exit 1
    out = done.stdout
    assert "refused 3" in out and "refused at import: not DICOM or corrupt 3" in out, out
    assert "screened at import: modality not accepted 1" in out, out  # the CT: never stored
    assert "views: ap_hip" in out and "ap_pelvis" in out, out
    assert "not a hip or pelvis radiograph" in out, out  # the 'other' images, by the models
    assert "duplicate 4" in out, out
    assert "ETA" in done.stderr and "files/s" in done.stderr, done.stderr  # the progress line
    contents = registry_contents(config)
    assert {state for *_, state, _prio in contents["jobs"]} <= {"done", "skipped"}, contents["jobs"]
    assert all(prio == -10 for *_, prio in contents["jobs"])  # below live traffic's 0
    assert all(series_state == "complete" for _, series_state, _, _ in contents["series"])
    assert not any(state == "received" for *_, state, _, _ in contents["instances"])  # all analysed
    # the corrupt / truncated-header / CT files are not in the registry; duplicates once
    assert len(contents["instances"]) == sum(len(_PLAN[i % len(_PLAN)]) for i in range(STUDIES))
    results = list((config.parent / "out").rglob("*.dcm"))
    assert results and {r[1] for r in contents["results"]} == {"sr", "sc"}
    assert len(results) == len(contents["results"])  # every result written under --out


@contextlib.contextmanager
def stand_ins(paths: list[str], held: Path) -> Iterator[None]:
    """Swap each file for a zero-filled, mode-0 stand-in of the same size and mtime (what the
    import manifest compares), the original inode kept aside under ``held`` (hard link) and put
    back on exit. A file read through its stand-in is refused as corrupt (or denied), also when
    the reader is root, for whom mode 0 alone changes nothing."""
    swapped: list[tuple[Path, Path]] = []
    try:
        for i, name in enumerate(paths):
            path = Path(name)
            st = path.stat()
            keep = held / f"{i:06d}"
            keep.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, keep)
            stand_in = path.with_name(path.name + ".stand-in")
            with open(stand_in, "wb") as f:
                f.truncate(st.st_size)
            os.utime(stand_in, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.chmod(stand_in, 0)
            os.replace(stand_in, path)  # the original inode lives on under `keep`
            swapped.append((path, keep))
        yield
    finally:
        for path, keep in swapped:
            os.replace(keep, path)
        shutil.rmtree(held, ignore_errors=True)


def test_import_killed_halfway_and_restarted_matches_uninterrupted(
    archive: Path, reference: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    ref_config, _ = reference
    config = _config(tmp_path, "killed")
    cmd = _hipnode(config, "import", str(archive), "--workers", "1", "--out", str(tmp_path / "out"))
    manifest_dir = tmp_path / "killed" / "storage" / ".import"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    halfway = False
    # kill once some jobs are done and some files are still to walk or analyse
    while time.monotonic() < deadline and proc.poll() is None:
        db_path = tmp_path / "killed" / "db.sqlite"
        if db_path.exists():
            with sqlite3.connect(db_path) as con, __import__("contextlib").suppress(sqlite3.Error):
                done_jobs = con.execute("SELECT count(*) FROM job WHERE state IN ('done','skipped')").fetchone()[0]
                all_jobs = con.execute("SELECT count(*) FROM job").fetchone()[0]
                if done_jobs >= 2 and all_jobs > done_jobs:
                    halfway = True
                    break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert halfway, "the import ended before it could be killed halfway"
    manifests = list(manifest_dir.glob("*.sqlite"))
    assert len(manifests) == 1
    with sqlite3.connect(manifests[0]) as con:
        # a file in flight at the kill is pending: the restart must read it again
        recorded_before = {p for (p,) in con.execute("SELECT path FROM file WHERE outcome != 'pending'")}
    assert recorded_before, "nothing was recorded before the kill"

    # the restart must not open the files done before: each is swapped for an unreadable,
    # zero-filled stand-in of the same size and mtime (mode 0 alone does not stop root)
    with stand_ins(sorted(recorded_before), tmp_path / "held-back"):
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 1, second.stdout + second.stderr  # the corrupt files, as before
    assert "Permission denied" not in second.stdout + second.stderr
    assert registry_contents(config) == registry_contents(ref_config)
    assert export_csv(config) == export_csv(ref_config)
    # the summary counts every file once, the kill notwithstanding
    _, ref_done = reference
    summary_ref = ref_done.stdout.split("files: ", 1)[1].splitlines()[0]
    summary_second = second.stdout.split("files: ", 1)[1].splitlines()[0]
    assert summary_second == summary_ref


def test_export_of_the_import_has_one_row_per_image(reference: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    config, _ = reference
    rows = list(csv.DictReader(io.StringIO(export_csv(config))))
    assert len(rows) == len(registry_contents(config)["instances"])
    analysed = [r for r in rows if r["state"] == "accepted"]
    assert analysed and all(r["view"] and r["model_versions"] and r["sr_sop_instance_uid"] for r in analysed)
    assert all("hipnode-triage" in r["model_versions"] for r in analysed)
    screened = [r for r in rows if r["state"] == "screened_out"]
    assert screened and all(r["screen_reason"] for r in screened)


def test_ray_engine_gives_the_same_registry_and_export(
    archive: Path, reference: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """``--engine ray``: two actors on a local Ray (``ray.init(num_cpus=2)``), each with its own
    models, claim the jobs from the registry; results identical to the local engine's."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is missing: make test installs it (the test extra)")
        pytest.skip("ray not installed (extra 'ray')")
    ref_config, ref_done = reference
    config = _config(tmp_path, "ray")
    done = subprocess.run(
        _hipnode(config, "import", str(archive), "--engine", "ray", "--workers", "2", "--out", str(tmp_path / "out"),
                 "--no-progress"),
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the corrupt files, as before
    assert registry_contents(config) == registry_contents(ref_config)
    assert export_csv(config) == export_csv(ref_config)
    assert done.stdout == ref_done.stdout  # the same summary
    with sqlite3.connect(tmp_path / "ray" / "db.sqlite") as con:
        claimers = {row[0] for row in con.execute(
            "SELECT json_extract(detail, '$.worker') FROM event WHERE entity = 'job' AND kind = 'claimed'")}
    assert claimers and all(":ray" in w for w in claimers), claimers  # the actors did the work
    assert len({w.rsplit(":", 1)[0] for w in claimers}) == 2, claimers  # both of them


def test_ray_actors_ask_for_a_gpu_with_a_gpu_provider(tmp_path: Path) -> None:
    """No GPU here, so only the request is checked: with models.provider cuda / tensorrt each
    actor asks Ray for one GPU (Ray then places it on a GPU node and hands it that device), or
    what --ray-gpus-per-actor says; on the CPU provider none."""
    from node.importer import ImportOptions, ray_actor_options

    cfg = parse_config({})
    assert ray_actor_options(cfg, ImportOptions(engine="ray")) == {"num_cpus": 1.0}
    for provider in ("cuda", "tensorrt"):
        gpu = parse_config({"models": {"provider": provider}})
        assert ray_actor_options(gpu, ImportOptions(engine="ray")) == {"num_cpus": 1.0, "num_gpus": 1.0}
        assert ray_actor_options(gpu, ImportOptions(engine="ray", ray_gpus_per_actor=0.5))["num_gpus"] == 0.5
        assert ray_actor_options(gpu, ImportOptions(engine="ray", ray_gpus_per_actor=0)) == {"num_cpus": 1.0}
    with pytest.raises(ValueError, match="must be >= 0"):
        ray_actor_options(cfg, ImportOptions(engine="ray", ray_gpus_per_actor=-1))
    config = _config(tmp_path, "gpus")
    done = subprocess.run(_hipnode(config, "import", str(tmp_path), "--engine", "ray", "--ray-gpus-per-actor", "-1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--ray-gpus-per-actor must be >= 0" in done.stderr, done.stdout + done.stderr
