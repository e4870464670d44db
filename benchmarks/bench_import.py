"""Bulk import throughput (issue 16): ``hipnode import`` against decode-only, in the same run.

Archives: the tests' phantom archive layout (``tests.test_import.write_archive``: AP pelvis,
AP hip, lateral and non-hip images, corrupt / truncated / text / CT files, duplicates), 2,000
files (100 with ``quick``) at 256 px, written once per transfer syntax — explicit VR little
endian (uncompressed) and JPEG 2000 lossless — and cached under ``benchmarks/work/import/``.

Per archive, one after the other on this machine:

* **decode-only**: every file through ``node.pixels.load_radiograph`` (read, decode, screen,
  normalise) on one thread — the floor any analysis pays;
* **import**: ``node.importer.run_import`` into a fresh SQLite registry with the configuration's
  defaults (SR + JPEG 2000 SC composed), ``--workers`` = 1 on the first 200 files and = the
  number of CPUs on the whole archive.

Reported: files/s and images/s (files that reached the registry) for each, the ratio import /
decode-only, and the projected time for the registry abstract's 846,987 DICOMs on this machine
at 1 worker and per added worker (linear in the measured gain of the second worker, capped at
the CPU count: beyond it workers only share cores), with that gain in files/s per added worker.
The import runs with the configuration's defaults, inference batching across series included
(``batching``, recorded in the results).

``BENCH_IMPORT_FILES=N`` sets the archive size (default 2,000; 100 with ``BENCH_QUICK=1``): on
a 2-core machine 2,000 files take well over half an hour for both archives, 400 about ten
minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from node.bulk import walk_files  # noqa: E402
from node.config import parse_config  # noqa: E402
from node.importer import ImportOptions, run_import  # noqa: E402
from node.pixels import load_radiograph  # noqa: E402
from node.registry import Database  # noqa: E402
from tests.test_import import write_archive  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "import"
ABSTRACT_FILES = 846_987
FILES, FILES_QUICK = 2000, 100
SUBSET = 200  # files imported with one worker, for the per-worker gain
SYNTAXES = ("explicit", "j2k")


def _studies_for(files: int) -> int:
    # write_archive: 8 junk / duplicate files plus, per 5 studies, 8 images
    return max((files - 8) * 5 // 8, 5)


def archive(files: int, syntax: str) -> Path:
    root = WORK / f"archive-{syntax}-{files}"
    marker = WORK / f"{root.name}.complete"  # beside the archive: a file inside it would be imported
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        write_archive(root, _studies_for(files), seed=1616, syntax=syntax)
        marker.write_text("")
    return root


def _files(root: Path, limit: int | None = None) -> list[Path]:
    out = []
    for _, entries in walk_files(root):
        out += [Path(e.path) for e in entries]
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def decode_only(files: list[Path]) -> dict[str, Any]:
    cfg = parse_config({})
    t0 = time.perf_counter()
    decoded = 0
    for path in files:
        try:
            radiograph, _ = load_radiograph(path, cfg.screening)
        except Exception:
            radiograph = None
        decoded += radiograph is not None
    wall = time.perf_counter() - t0
    return {"files": len(files), "decoded": decoded, "wall_s": round(wall, 2),
            "files_per_s": round(len(files) / wall, 2)}


def import_run(source: Path, workers: int, name: str) -> dict[str, Any]:
    run_dir = WORK / f"run-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = parse_config({
        "storage": {"root": str(run_dir / "storage"), "min_free_mb": 1},
        "database": {"url": f"sqlite:///{run_dir / 'db.sqlite'}"},
        "outputs": {"root": str(run_dir / "results")},
        "models": {"root": str(ROOT / "models")},
        "log_level": "WARNING",
    })
    db = Database(cfg.database.url)
    db.migrate()
    t0 = time.perf_counter()
    try:
        summary = run_import(cfg, db, source, ImportOptions(workers=workers, progress=False))
    finally:
        db.dispose()
    wall = time.perf_counter() - t0
    files = sum(summary["files"].values())
    images = sum(summary["images"].values())
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"workers": workers, "files": files, "images": images, "wall_s": round(wall, 2),
            "files_per_s": round(files / wall, 2), "images_per_s": round(images / wall, 2), "summary": summary}


def _subset(source: Path, count: int) -> Path:
    """The first ``count`` files of ``source`` (walk order) as their own archive (hard links)."""
    target = WORK / f"{source.name}-first{count}"
    marker = WORK / f"{target.name}.complete"
    if not marker.exists():
        shutil.rmtree(target, ignore_errors=True)
        for path in _files(source, count):
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)
        marker.write_text("")
    return target


def project(rate_1: float, rate_n: float, n: int, cpus: int) -> dict[str, float]:
    """Hours for the abstract's archive at 1..cpus workers (linear in the measured gain)."""
    gain = (rate_n - rate_1) / (n - 1) if n > 1 else 0.0
    return {str(w): round(ABSTRACT_FILES / max(rate_1 + (w - 1) * gain, 1e-9) / 3600, 2) for w in range(1, cpus + 1)}


def gain_per_worker(rate_1: float, rate_n: float, n: int) -> float:
    """Files/s each added worker brought, from the measured 1- and n-worker rates."""
    return round((rate_n - rate_1) / (n - 1), 2) if n > 1 else 0.0


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    files = int(os.environ.get("BENCH_IMPORT_FILES", "0")) or (FILES_QUICK if quick else FILES)
    cpus = os.cpu_count() or 1
    out: dict[str, Any] = {"files": files, "cpus": cpus, "abstract_files": ABSTRACT_FILES,
                           "batching": parse_config({}).batching.model_dump(), "archives": {}}
    for syntax in SYNTAXES:
        source = archive(files, syntax)
        listed = _files(source)
        decode = decode_only(listed)
        full = import_run(source, cpus, f"{syntax}-{cpus}w")
        entry: dict[str, Any] = {"decode_only": decode, "import": full,
                                 "import_over_decode": round(full["files_per_s"] / decode["files_per_s"], 3)}
        if cpus > 1:
            one = import_run(_subset(source, min(SUBSET, len(listed))), 1, f"{syntax}-1w")
            entry["import_1_worker"] = one
            entry["projected_hours_by_workers"] = project(one["files_per_s"], full["files_per_s"], cpus, cpus)
            entry["files_per_s_gain_per_added_worker"] = gain_per_worker(one["files_per_s"], full["files_per_s"], cpus)
        else:
            entry["projected_hours_by_workers"] = project(full["files_per_s"], full["files_per_s"], 1, 1)
        out["archives"][syntax] = entry
        print(f"{syntax}: decode-only {decode['files_per_s']} files/s, import ({cpus} workers) "
              f"{full['files_per_s']} files/s ({full['images_per_s']} images/s), ratio "
              f"{entry['import_over_decode']}, 846,987 files: {entry['projected_hours_by_workers']} h by workers")
    (results_dir / "import.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(exist_ok=True)
    run(res_dir, quick=os.environ.get("BENCH_QUICK", "") == "1")
