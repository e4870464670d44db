"""Import killed halfway and restarted, at archive scale (issue 16's bar).

"Import of a 2,000-file phantom archive (corrupt files, non-hip images, duplicates), killed
halfway and restarted, ends with the same registry and the same export as an uninterrupted run;
the Ray engine produces the same export as the local one."

``tests/test_import.py`` checks this on 56 files; this runs the same checks, with the tests' own
helpers (``write_archive``, ``_config``, ``_hipnode``, ``registry_contents``, ``export_csv``),
on an archive of ``BENCH_IMPORT_RESUME_FILES`` files (default 2,000; 60 with ``quick``), written
once (explicit VR little endian) and cached under ``benchmarks/work/import_resume/``.

Three ``hipnode import ARCHIVE --workers 2 --out OUT`` subprocesses, each with a fresh
configuration (SQLite registry, storage, outputs), one after the other:

* **A**: uninterrupted, the reference;
* **B**: SIGKILLed once the ``job`` table (one job per series) has at least half of A's jobs done
  or skipped and some not yet done, then started again and run to the end. The files the
  manifest recorded before the kill must not be read again: during the restart each is replaced
  by a stand-in of the same size and mtime, zero-filled and mode 0 (so a re-read fails with
  ``Permission denied`` or is refused as corrupt even when running as root, where mode 0 alone
  would not stop it), the originals restored in a ``finally``; their manifest outcomes must be
  unchanged after the restart;
* **C**: ``--engine ray --workers 2`` (skipped, with the reason, where ray is not importable).

Compared with A: registry contents, ``hipnode export --format csv`` and the ``files: ...``
summary line of B's restart and of C; exit codes (1: the corrupt files are refused). Results in
``benchmarks/results/import_resume.json``, ``bar_met`` false (exit code still 0) when any check
fails, with the first differences described. On a 2-core machine the full archive takes hours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_import import _studies_for  # noqa: E402
from tests.test_import import (  # noqa: E402
    _config,
    _hipnode,
    export_csv,
    registry_contents,
    stand_ins,
    write_archive,
)

WORK = ROOT / "benchmarks" / "work" / "import_resume"
FILES, FILES_QUICK = 2000, 60
WORKERS = 2
SEED = 16  # the tests' archive seed
POLL_S = 0.2
TAIL = 1500  # characters of a failed run's output kept in the results


def _timeout_s(files: int) -> float:
    """Per subprocess: generous (a 2-core machine imports about 2 files/s with 2 workers)."""
    return 600.0 + 3.0 * files


def archive(files: int) -> tuple[Path, int]:
    """The cached phantom archive and the number of files in it."""
    root = WORK / f"archive-{files}"
    marker = WORK / f"{root.name}.complete"  # beside the archive: a file inside it would be imported
    if marker.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return root, int(json.loads(marker.read_text())["files"])
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    written = write_archive(root, _studies_for(files), seed=SEED)
    marker.write_text(json.dumps({"files": written}))
    return root, written


def _shown(cmd: list[str]) -> str:
    return shlex.join(cmd).replace(str(ROOT) + "/", "")


def _summary_line(stdout: str) -> str | None:
    return stdout.split("files: ", 1)[1].splitlines()[0] if "files: " in stdout else None


def _tail(text: str) -> str:
    return text[-TAIL:]


def _fresh(name: str) -> Path:
    tmp = WORK / f"run-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _import_cmd(config: Path, source: Path, *extra: str) -> list[str]:
    # --out beside the configuration: export_csv reads the results from config.parent / "out"
    return _hipnode(config, "import", str(source), "--workers", str(WORKERS), *extra, "--out",
                    str(config.parent / "out"))


def _run(cmd: list[str], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc: int | None = done.returncode
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        rc = None
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"timed out after {timeout:.0f} s"
    return {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "stdout": stdout, "stderr": stderr}


def _job_counts(db_path: Path) -> tuple[int, int] | None:
    """(done or skipped, all) jobs in a registry another process is writing; None if unreadable yet."""
    if not db_path.exists():
        return None
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db_path, timeout=1)) as con:
        finished = con.execute("SELECT count(*) FROM job WHERE state IN ('done','skipped')").fetchone()[0]
        total = con.execute("SELECT count(*) FROM job").fetchone()[0]
        return int(finished), int(total)
    return None


def _manifest_rows(storage: Path) -> dict[str, str]:
    """path -> outcome, from the import manifest under ``storage`` (one per archive; none before
    the first file is recorded)."""
    rows: dict[str, str] = {}
    for manifest in sorted((storage / ".import").glob("*.sqlite")):
        with contextlib.closing(sqlite3.connect(manifest)) as con:
            rows.update((str(p), str(o)) for p, o in con.execute("SELECT path, outcome FROM file"))
    return rows


@contextlib.contextmanager
def _stand_ins(paths: list[str], marker: Path) -> Iterator[None]:
    """``tests.test_import.stand_ins`` on the archive's files, the originals held under
    ``WORK``. The archive's cache marker is removed meanwhile: a benchmark killed here rewrites
    the archive."""
    marker_text = marker.read_text() if marker.exists() else None
    marker.unlink(missing_ok=True)
    with stand_ins(paths, WORK / "held-back"):
        yield
    if marker_text is not None:
        marker.write_text(marker_text)


def run_killed(source: Path, marker: Path, expected_jobs: int, timeout: float) -> tuple[Path, dict[str, Any]]:
    """Run B: killed once half of the expected jobs are finished, then run to the end."""
    tmp = _fresh("b")
    config = _config(tmp, "b")
    cmd = _import_cmd(config, source)
    db_path = tmp / "b" / "db.sqlite"
    half = max(1, (expected_jobs + 1) // 2)
    out: dict[str, Any] = {"command": _shown(cmd), "kill_when_jobs_finished": half, "expected_jobs": expected_jobs}
    t0 = time.perf_counter()
    with open(tmp / "first.stdout", "w") as so, open(tmp / "first.stderr", "w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        deadline = time.monotonic() + timeout
        counts: tuple[int, int] | None = None
        halfway = False
        while time.monotonic() < deadline and proc.poll() is None:
            counts = _job_counts(db_path)
            if counts is not None and counts[0] >= half and counts[1] > counts[0]:
                halfway = True
                break
            time.sleep(POLL_S)
        ended_by_itself = proc.poll() is not None
        if not ended_by_itself:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
    out["first_wall_s"] = round(time.perf_counter() - t0, 1)
    out["first_rc"] = proc.returncode
    out["killed_halfway"] = halfway
    if not halfway:
        out["not_halfway_reason"] = ("the import ended before half of its jobs were finished with some left"
                                     if ended_by_itself else f"no halfway point within {timeout:.0f} s")
        out["first_stderr_tail"] = _tail((tmp / "first.stderr").read_text(errors="replace"))
    if counts is not None:
        out["jobs_finished_at_kill"], out["jobs_created_at_kill"] = counts
        out["kill_fraction"] = round(counts[0] / max(expected_jobs, 1), 3)
    before = _manifest_rows(tmp / "b" / "storage")
    out["files_recorded_before_kill"] = len(before)

    with _stand_ins(sorted(before), marker):
        second = _run(cmd, timeout)
    out["restart_wall_s"] = second["wall_s"]
    out["restart_rc"] = second["rc"]
    out["total_wall_s"] = round(out["first_wall_s"] + second["wall_s"], 1)
    after = _manifest_rows(tmp / "b" / "storage")
    changed = sorted(p for p, outcome in before.items() if after.get(p) != outcome)
    permission = "Permission denied" in second["stdout"] + second["stderr"]
    out["not_reread"] = bool(before) and not changed and not permission
    if changed:
        out["reread_files"] = {"count": len(changed), "first": Path(changed[0]).relative_to(source).as_posix(),
                               "outcome_before": before[changed[0]], "outcome_after": after.get(changed[0])}
    if permission:
        out["permission_denied_in_output"] = True
    out["stdout"], out["stderr"] = second["stdout"], second["stderr"]
    return config, out


# --------------------------------------------------------------------------- comparison


def diff_registry(ref: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Per table: row counts and a first row only in each side (rows are sorted tuples)."""
    notes = []
    for key in sorted(ref.keys() | other.keys()):
        a, b = Counter(ref.get(key, [])), Counter(other.get(key, []))
        if a == b:
            continue
        only_a, only_b = sorted(a - b), sorted(b - a)
        note = f"{key}: {sum(a.values())} rows in A, {sum(b.values())} here"
        if only_a:
            note += f"; {sum((a - b).values())} only in A, first {only_a[0]!r:.300}"
        if only_b:
            note += f"; {sum((b - a).values())} only here, first {only_b[0]!r:.300}"
        notes.append(note)
    return notes


def diff_text(ref: str, other: str, what: str) -> list[str]:
    a, b = ref.splitlines(), other.splitlines()
    if a == b:
        return []
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    line_a = a[first] if first < len(a) else "<none>"
    line_b = b[first] if first < len(b) else "<none>"
    differing = len(Counter(a) - Counter(b)) + len(Counter(b) - Counter(a))
    return [f"{what}: {len(a)} lines in A, {len(b)} here, {differing} distinct lines differ; first at line "
            f"{first + 1}: A {line_a[:300]!r} / here {line_b[:300]!r}"]


def compare(name: str, ref_config: Path, ref_stdout: str, config: Path, stdout: str) -> dict[str, Any]:
    """The bar's equalities for one run against A, never raising: an error is a difference."""
    out: dict[str, Any] = {}
    diffs: list[str] = []
    try:
        ref_reg, reg = registry_contents(ref_config), registry_contents(config)
        out["registry_equal"] = reg == ref_reg
        diffs += diff_registry(ref_reg, reg)
    except Exception as exc:
        out["registry_equal"] = False
        diffs.append(f"registry: {type(exc).__name__}: {str(exc)[:300]}")
    try:
        ref_csv, csv_text = export_csv(ref_config), export_csv(config)
        out["export_equal"] = csv_text == ref_csv
        diffs += diff_text(ref_csv, csv_text, "export csv")
    except Exception as exc:  # export_csv asserts the export's exit code
        out["export_equal"] = False
        diffs.append(f"export: {type(exc).__name__}: {str(exc)[:300]}")
    ref_line, line = _summary_line(ref_stdout), _summary_line(stdout)
    out["summary_equal"] = line is not None and line == ref_line
    if not out["summary_equal"]:
        diffs.append(f"summary: A 'files: {ref_line}' / here 'files: {line}'")
    out["stdout_equal"] = stdout == ref_stdout  # the whole summary; not part of the bar
    if not out["stdout_equal"]:
        diffs += diff_text(ref_stdout, stdout, "stdout (informational)")
    out["differences"] = diffs
    print(f"  {name} vs A: registry {out['registry_equal']}, export {out['export_equal']}, "
          f"summary {out['summary_equal']}" + (f"; {diffs[0]}" if diffs else ""))
    return out


def _ray_importable() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        return f"ray is not importable: {exc}"
    return None


def _ray_claimers(db_path: Path) -> list[str]:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db_path)) as con:
        return sorted({str(row[0]) for row in con.execute(
            "SELECT json_extract(detail, '$.worker') FROM event WHERE entity = 'job' AND kind = 'claimed'")})
    return []


# --------------------------------------------------------------------------- the benchmark


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    files_asked = int(os.environ.get("BENCH_IMPORT_RESUME_FILES", "0")) or (FILES_QUICK if quick else FILES)
    WORK.mkdir(parents=True, exist_ok=True)
    source, files = archive(files_asked)
    marker = WORK / f"{source.name}.complete"
    timeout = _timeout_s(files)
    out: dict[str, Any] = {"files": files, "files_asked": files_asked, "studies": _studies_for(files_asked),
                           "workers": WORKERS, "cpus": os.cpu_count(), "seed": SEED,
                           "archive": source.relative_to(ROOT).as_posix(), "runs": {}, "checks": {}}
    print(f"import resume: {files} files in {out['archive']}")
    try:
        # A: uninterrupted
        tmp_a = _fresh("a")
        config_a = _config(tmp_a, "a")
        cmd_a = _import_cmd(config_a, source)
        a = _run(cmd_a, timeout)
        run_a: dict[str, Any] = {"command": _shown(cmd_a), "rc": a["rc"], "wall_s": a["wall_s"],
                                 "summary": _summary_line(a["stdout"])}
        if a["rc"] != 1:
            run_a["stdout_tail"], run_a["stderr_tail"] = _tail(a["stdout"]), _tail(a["stderr"])
        out["runs"]["A"] = run_a
        try:
            ref = registry_contents(config_a)
            out["images_recorded"] = len(ref["instances"])
            out["series"] = len(ref["series"])
            expected_jobs = len(ref["jobs"])
        except Exception as exc:
            run_a["registry_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            out["images_recorded"] = None
            expected_jobs = _studies_for(files_asked)  # one series per study
        out["jobs"] = expected_jobs
        print(f"  A: rc {a['rc']}, {a['wall_s']} s, {out['images_recorded']} images, {expected_jobs} jobs")

        # B: killed halfway, restarted
        config_b, b = run_killed(source, marker, expected_jobs, timeout)
        b_stdout, b_stderr = b.pop("stdout"), b.pop("stderr")
        b["summary"] = _summary_line(b_stdout)
        if b["restart_rc"] != 1:
            b["restart_stdout_tail"], b["restart_stderr_tail"] = _tail(b_stdout), _tail(b_stderr)
        out["runs"]["B"] = b
        print(f"  B: killed at {b.get('kill_fraction')} of the jobs after {b['first_wall_s']} s "
              f"({b['files_recorded_before_kill']} files recorded), restart rc {b['restart_rc']}, "
              f"{b['restart_wall_s']} s; not re-read {b['not_reread']}")
        out["checks"]["B"] = compare("B", config_a, a["stdout"], config_b, b_stdout)

        # C: the Ray engine
        skipped = _ray_importable()
        if skipped is not None:
            out["runs"]["C"] = {"skipped": skipped}
            print(f"  C: skipped, {skipped}")
        else:
            tmp_c = _fresh("c")
            config_c = _config(tmp_c, "c")
            cmd_c = _import_cmd(config_c, source, "--engine", "ray")
            c = _run(cmd_c, timeout)
            claimers = _ray_claimers(tmp_c / "c" / "db.sqlite")
            run_c: dict[str, Any] = {"command": _shown(cmd_c), "rc": c["rc"], "wall_s": c["wall_s"],
                                     "summary": _summary_line(c["stdout"]),
                                     "ray_actors": len({w.rsplit(":", 1)[0] for w in claimers if ":ray" in w}),
                                     "jobs_claimed_outside_ray": sum(":ray" not in w for w in claimers)}
            if c["rc"] != 1:
                run_c["stdout_tail"], run_c["stderr_tail"] = _tail(c["stdout"]), _tail(c["stderr"])
            out["runs"]["C"] = run_c
            print(f"  C (ray): rc {c['rc']}, {c['wall_s']} s, {run_c['ray_actors']} actors")
            out["checks"]["C"] = compare("C", config_a, a["stdout"], config_c, c["stdout"])
    finally:
        for name in ("a", "b", "c"):
            shutil.rmtree(WORK / f"run-{name}", ignore_errors=True)

    runs, checks = out["runs"], out["checks"]
    ran_c = "skipped" not in runs.get("C", {})
    # the archive's corrupt files are refused: every complete import exits 1
    out["exit_codes_as_expected"] = (runs["A"]["rc"] == 1 and runs["B"]["restart_rc"] == 1
                                     and (not ran_c or runs["C"]["rc"] == 1))
    out["equal"] = {f"{run}_{what}": checks[run][what]
                    for run in checks for what in ("registry_equal", "export_equal", "summary_equal")}
    out["differences"] = {run: checks[run]["differences"] for run in checks if checks[run]["differences"]}
    out["bar_met"] = bool(
        ran_c and runs["B"]["killed_halfway"] and runs["B"]["not_reread"] and out["exit_codes_as_expected"]
        and all(out["equal"].values()) and len(out["equal"]) == 6
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "import_resume.json").write_text(json.dumps(out, indent=2))
    print(f"import resume, {files} files: A {runs['A']['wall_s']} s; B killed at {runs['B'].get('kill_fraction')} "
          f"then {runs['B']['restart_wall_s']} s (total {runs['B']['total_wall_s']} s); "
          f"C {runs['C'].get('wall_s', 'skipped')} s; bar {'met' if out['bar_met'] else 'NOT met'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{FILES_QUICK} files (BENCH_IMPORT_RESUME_FILES wins)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    run(args.out, quick=args.quick or os.environ.get("BENCH_QUICK", "") == "1")
    return 0  # a failed comparison is a result (bar_met false in the JSON), not an error


if __name__ == "__main__":
    sys.exit(main())
