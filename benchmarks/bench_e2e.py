"""End to end: last image acknowledged → SR stored in Orthanc, with the time split per stage.

Issue 6 bar: p50 / p95 over 50 studies with the quiet period set to 1 s; target p95 ≤ 2 s
beyond the quiet period (on 2 cores).

Set-up, all on 127.0.0.1: a real Orthanc (``TCP_NODELAY=1``) as the PACS and a whole node
(``python -m node.cli --config … run``: receiver + one worker + dispatcher) configured by
``tests.node_proc.node_config`` with the quiet period at 1 s and every poll interval at 0.1 s
(:data:`SETTINGS`, recorded in the JSON). 50 phantom studies (8 with ``quick``) — one 1024 px
AP pelvis with a THA (bilateral or unilateral, varied seeds) each — are rendered up front and
cached under ``benchmarks/work/e2e/``. One extra warm-up study goes first and is not counted
(first inference pays onnxruntime's lazy initialisation; a running node is warm).

Each study is sent with DCMTK ``storescu`` (``TCP_NODELAY=1``), one at a time: the next is
sent only when the previous one is entirely finished (job final, every delivery of its SR and
SC sent *and* read back), so each figure is that of an idle node.

Clocks (all the same host clock):

* ``t_ack``: ``storescu`` has returned (the modality holds its last acknowledgement);
* registry events (SQLite, read-only): instance ``received``, series ``complete`` (and the
  series' ``complete_after``, the end of its quiet period), job ``claimed``, instance
  ``accepted`` (decode + screen + inference + analysis done), SR result ``created`` (SR + SC
  composed, written, deliveries queued), SR delivery ``sent`` (Orthanc's C-STORE response:
  Orthanc has stored it) and ``visible`` (C-FIND read-back);
* ``t_orthanc``: a watcher polls Orthanc's ``/changes`` every 50 ms; the SR's ``t_orthanc`` is
  the end of the first poll that lists it (an upper bound; ``orthanc_window_s`` is the width
  of the window it was stored in).

Stages, consecutive, so they add up to ``t_orthanc − t_ack`` exactly:
``quiet_wait`` (ack → end of quiet period), ``completion_lag`` (→ series completed, job
queued), ``claim_lag`` (→ worker claims the job), ``analyse`` (→ images decoded, screened,
inferred, measured), ``compose`` (→ SR + SC written, deliveries queued), ``dispatch`` (→ Orthanc
answered the SR's C-STORE), ``observe`` (→ the watcher saw it; the benchmark's own resolution).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python benchmarks/bench_e2e.py`` as well as ``-m``
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402  (tests' helpers report a missing tool with pytest.fail)
import requests  # noqa: E402
import yaml  # noqa: E402

from tests.conftest import OrthancServer, free_port, make_orthanc, tool  # noqa: E402
from tests.node_proc import NodeProcess, node_config  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "e2e"
QUIET_PERIOD_S = 1.0
SETTINGS: dict[str, dict[str, Any]] = {
    "series": {"quiet_period_s": QUIET_PERIOD_S, "check_interval_s": 0.1},
    "jobs": {"poll_interval_s": 0.1, "sweep_interval_s": 2},
    "dispatch": {"interval_s": 0.1, "backoff_s": 1, "backoff_max_s": 5},
}
STUDIES = 50
STUDIES_QUICK = 8
ROWS = 1024
SEED = 6006  # studies use SEED + index; the warm-up study uses SEED - 1
TARGET_P95_BEYOND_QUIET_S = 2.0
STUDY_TIMEOUT_S = 180.0
WATCH_INTERVAL_S = 0.05
STAGES = ("quiet_wait", "completion_lag", "claim_lag", "analyse", "compose", "dispatch", "observe")
NODE_STAGES = ("completion_lag", "claim_lag", "analyse", "compose", "dispatch")


def _tool(name: str) -> str:
    try:
        return tool(name)
    except pytest.fail.Exception as exc:  # BaseException: would slip past run_all's handler
        raise RuntimeError(str(exc)) from None


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class StudyFile:
    index: int
    path: Path
    sop_uid: str
    study_uid: str


def _render_study(index: int, path: Path) -> None:
    from node.domain import View
    from node.phantom import render, sample_spec
    from node.phantom.dicom import build_dataset, make_study_info, to_bytes

    seed = SEED + index
    rng = np.random.default_rng(seed)
    sex = "F" if index % 2 == 0 else "M"
    implants = "bilateral" if index % 3 == 0 else "unilateral"
    spec = sample_spec(rng, view=View.AP_PELVIS, implants=implants, rows=ROWS, sex=sex)
    image = render(spec)
    info = make_study_info(SEED, index + 2, sex, rng, modality="DX")
    ds = build_dataset(image, info, 1, 1, rng)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(to_bytes(ds))
    tmp.replace(path)


def make_studies(count: int, first: int = 0) -> list[StudyFile]:
    """Studies ``first … first+count-1`` (rendered once, cached per phantom version)."""
    import pydicom

    from node.phantom import PHANTOM_VERSION

    folder = WORK / f"studies-p{PHANTOM_VERSION}-{ROWS}"
    folder.mkdir(parents=True, exist_ok=True)
    out: list[StudyFile] = []
    made = 0
    t0 = time.perf_counter()
    for index in range(first, first + count):
        path = folder / f"study-{index + 1:03d}.dcm"
        if not path.exists():
            _render_study(index, path)
            made += 1
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(StudyFile(index, path, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)))
    if made:
        print(f"   rendered {made} phantom studies in {time.perf_counter() - t0:.0f} s")
    return out


# --------------------------------------------------------------------------- peers


def start_orthanc(workdir: Path) -> OrthancServer:
    """Orthanc as the tests' fixture starts it (``OrthancServer`` sets ``TCP_NODELAY=1``)."""
    server = make_orthanc(workdir, name="hipnode-bench-pacs")
    _tool("Orthanc")
    server.start()
    return server


class OrthancWatch(threading.Thread):
    """Polls Orthanc's ``/changes``; records, per SOP Instance UID, the window in which it was
    stored: (start of the last poll that did not list it, end of the first poll that did)."""

    def __init__(self, url: str, interval_s: float = WATCH_INTERVAL_S) -> None:
        super().__init__(name="orthanc-watch", daemon=True)
        self.url = url
        self.interval_s = interval_s
        self.seen: dict[str, tuple[float, float]] = {}
        self.polls = 0
        self.errors = 0
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._http = requests.Session()
        self._since = int(self._get("/changes?last")["Last"])

    def _get(self, path: str) -> Any:
        r = self._http.get(f"{self.url}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def run(self) -> None:
        previous_start = time.time()
        while not self._stop_event.is_set():
            start = time.time()
            try:
                page = self._get(f"/changes?since={self._since}&limit=100")
                end = time.time()
                self.polls += 1
                for change in page["Changes"]:
                    if change["ChangeType"] == "NewInstance":
                        tags = self._get(f"/instances/{change['ID']}")["MainDicomTags"]
                        with self._lock:
                            self.seen.setdefault(str(tags["SOPInstanceUID"]), (previous_start, end))
                self._since = int(page["Last"])
                if not page["Done"]:
                    continue
            except (requests.RequestException, KeyError, ValueError):
                self.errors += 1
            previous_start = start
            self._stop_event.wait(self.interval_s)

    def window(self, sop_uid: str) -> tuple[float, float] | None:
        with self._lock:
            return self.seen.get(sop_uid)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self._http.close()


# --------------------------------------------------------------------------- registry


def _epoch(text: str | None) -> float | None:
    """A registry timestamp (naive UTC, as SQLAlchemy writes it on SQLite) as epoch seconds."""
    if text is None:
        return None
    return datetime.fromisoformat(str(text)).replace(tzinfo=UTC).timestamp()


class Registry:
    """Read-only view of the node's SQLite registry (WAL: reads never block the node)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self.conn.close()

    def one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, args).fetchone()
        return row

    def all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, args).fetchall())

    def event_at(self, entity: str, pk: int, kind: str) -> float | None:
        row = self.one(
            "SELECT at FROM event WHERE entity=? AND entity_pk=? AND kind=? ORDER BY id LIMIT 1",
            entity,
            pk,
            kind,
        )
        return _epoch(row["at"]) if row is not None else None


@dataclass
class Progress:
    """Where one study is, read from the registry."""

    instance_pk: int | None = None
    series_pk: int | None = None
    job_pk: int | None = None
    job_state: str | None = None
    sr_result_pk: int | None = None
    sr_uid: str | None = None
    sr_delivery_pk: int | None = None
    deliveries: dict[int, str] = field(default_factory=dict)  # pk → state (after read-back)

    @property
    def job_final(self) -> bool:
        return self.job_state in ("done", "skipped", "failed")


_FINAL_DELIVERY = ("visible", "failed")


def progress(reg: Registry, sop_uid: str) -> Progress:
    p = Progress()
    inst = reg.one(
        "SELECT id, series_pk FROM instance WHERE sop_instance_uid=? ORDER BY version DESC", sop_uid
    )
    if inst is None:
        return p
    p.instance_pk, p.series_pk = int(inst["id"]), int(inst["series_pk"])
    job = reg.one("SELECT id, state FROM job WHERE series_pk=? ORDER BY generation DESC LIMIT 1", p.series_pk)
    if job is None:
        return p
    p.job_pk, p.job_state = int(job["id"]), str(job["state"])
    for r in reg.all("SELECT id, kind, sop_instance_uid FROM result WHERE job_pk=? ORDER BY id", p.job_pk):
        if r["kind"] == "sr" and p.sr_result_pk is None:
            p.sr_result_pk, p.sr_uid = int(r["id"]), str(r["sop_instance_uid"])
        for d in reg.all("SELECT id, state FROM delivery WHERE result_pk=?", r["id"]):
            state = str(d["state"])
            # A delivery sent but not found by read-back stays "sent" with a "not_visible" event.
            if state == "sent" and reg.one(
                "SELECT 1 FROM event WHERE entity='delivery' AND entity_pk=? AND kind='not_visible'", d["id"]
            ):
                state = "not_visible"
            p.deliveries[int(d["id"])] = state
            if r["kind"] == "sr" and p.sr_delivery_pk is None:
                p.sr_delivery_pk = int(d["id"])
    return p


def _settled(p: Progress) -> bool:
    return p.job_final and all(s in (*_FINAL_DELIVERY, "not_visible") for s in p.deliveries.values())


# --------------------------------------------------------------------------- one study


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_study(node: NodeProcess, reg: Registry, watch: OrthancWatch, study: StudyFile) -> dict[str, Any]:
    assert node.proc is not None
    pid = node.proc.pid
    load_before = os.getloadavg()[0]
    cpu0 = _cpu_s(pid)
    t_send = time.time()
    sent = node.storescu(study.path)
    t_ack = time.time()
    row: dict[str, Any] = {"study": study.index + 1, "sop_uid": study.sop_uid, "load1_before": load_before}
    if sent.returncode != 0:
        row["error"] = f"storescu rc={sent.returncode}: {sent.stderr[-500:]}"
        return row
    deadline = t_ack + STUDY_TIMEOUT_S
    p = Progress()
    while time.time() < deadline:
        p = progress(reg, study.sop_uid)
        sr_seen = p.sr_uid is not None and watch.window(p.sr_uid) is not None
        if _settled(p) and (sr_seen or p.sr_uid is None or "failed" in p.deliveries.values()):
            break
        if node.proc.poll() is not None:
            row["error"] = f"node exited with {node.proc.returncode}"
            return row
        time.sleep(0.05)
    else:
        row["error"] = f"not settled after {STUDY_TIMEOUT_S:.0f} s: {p}"
        return row
    row["node_cpu_s"] = round(_cpu_s(pid) - cpu0, 3)
    row["job_state"] = p.job_state
    if p.sr_uid is None or p.sr_result_pk is None or p.sr_delivery_pk is None:
        row["error"] = f"no SR (job {p.job_state})"
        return row
    window = watch.window(p.sr_uid)
    if window is None:
        row["error"] = f"SR not in Orthanc (delivery {p.deliveries.get(p.sr_delivery_pk)})"
        return row
    assert p.instance_pk is not None and p.series_pk is not None and p.job_pk is not None
    series = reg.one("SELECT complete_after FROM series WHERE id=?", p.series_pk)
    assert series is not None
    t = {
        "send": t_send,
        "received": reg.event_at("instance", p.instance_pk, "received"),
        "ack": t_ack,
        "quiet_end": _epoch(series["complete_after"]),
        "complete": reg.event_at("series", p.series_pk, "complete"),
        "claimed": reg.event_at("job", p.job_pk, "claimed"),
        "analysed": reg.event_at("instance", p.instance_pk, "accepted"),
        "sr_created": reg.event_at("result", p.sr_result_pk, "created"),
        "sr_sent": reg.event_at("delivery", p.sr_delivery_pk, "sent"),
        "orthanc": window[1],
        "sr_visible": reg.event_at("delivery", p.sr_delivery_pk, "visible"),
        "job_done": reg.event_at("job", p.job_pk, str(p.job_state)),
    }
    missing = [k for k, v in t.items() if v is None]
    if missing:
        row["error"] = f"registry events missing: {missing}"
        return row
    ts: dict[str, float] = {k: float(v) for k, v in t.items() if v is not None}
    chain = ("ack", "quiet_end", "complete", "claimed", "analysed", "sr_created", "sr_sent", "orthanc")
    for stage, (a, b) in zip(STAGES, itertools.pairwise(chain), strict=True):
        row[stage] = round(ts[b] - ts[a], 4)
    row["e2e_s"] = round(ts["orthanc"] - ts["ack"], 4)
    row["beyond_quiet_s"] = round(row["e2e_s"] - QUIET_PERIOD_S, 4)
    # The node's own view: last image received → Orthanc's C-STORE response for the SR.
    row["node_received_to_sr_stored_s"] = round(ts["sr_sent"] - ts["received"], 4)
    row["send_s"] = round(ts["ack"] - ts["send"], 4)
    row["ack_after_received_s"] = round(ts["ack"] - ts["received"], 4)
    row["orthanc_window_s"] = round(window[1] - window[0], 4)
    row["read_back_s"] = round(ts["sr_visible"] - ts["sr_sent"], 4)
    row["job_done_after_claim_s"] = round(ts["job_done"] - ts["claimed"], 4)
    row["load1_after"] = os.getloadavg()[0]
    return row


# --------------------------------------------------------------------------- stats + report


def _stats(values: list[float]) -> dict[str, float | int]:
    a = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
        "min": round(float(a.min()), 3),
        "mean": round(float(a.mean()), 3),
    }


def _models() -> list[dict[str, Any]]:
    out = []
    for manifest in sorted((ROOT / "models").glob("*/*/model.yaml")):
        try:
            data = yaml.safe_load(manifest.read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        out.append(
            {
                "path": str(manifest.parent.relative_to(ROOT)),
                "name": data.get("name"),
                "version": data.get("version"),
                "architecture": data.get("architecture"),
            }
        )
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return {}
    out: dict[str, Any] = {
        "e2e_s": _stats([r["e2e_s"] for r in ok]),
        "beyond_quiet_s": _stats([r["beyond_quiet_s"] for r in ok]),
        "node_received_to_sr_stored_s": _stats([r["node_received_to_sr_stored_s"] for r in ok]),
        "stages_s": {s: _stats([r[s] for r in ok]) for s in STAGES},
        "other_s": {
            k: _stats([r[k] for r in ok])
            for k in ("send_s", "ack_after_received_s", "orthanc_window_s", "read_back_s", "node_cpu_s")
        },
    }
    means = {s: out["stages_s"][s]["mean"] for s in NODE_STAGES}
    beyond = out["beyond_quiet_s"]["mean"]
    out["dominant_stage"] = max(means, key=lambda s: means[s])
    out["share_of_beyond_quiet_mean"] = {
        s: round(v / beyond, 3) if beyond > 0 else None for s, v in means.items()
    }
    return out


def _print(result: dict[str, Any]) -> None:
    s = result.get("summary") or {}
    m = result["machine"]
    print(
        f"   {result['n_ok']}/{result['n']} studies, quiet period {QUIET_PERIOD_S:g} s, "
        f"{m['cpus']} CPUs, load {m['loadavg_start'][0]:.1f} → {m['loadavg_end'][0]:.1f}"
    )
    if not s:
        print("   no successful study")
        return
    for key, label in (
        ("e2e_s", "last ack → SR in Orthanc"),
        ("beyond_quiet_s", "  … minus the quiet period"),
        ("node_received_to_sr_stored_s", "node: received → SR stored (C-STORE rsp)"),
    ):
        st = s[key]
        print(f"   {label:<42} p50 {st['p50']:6.3f}  p95 {st['p95']:6.3f}  max {st['max']:6.3f} s")
    print("   stage                  p50     p95     max    mean s")
    for stage in STAGES:
        st = s["stages_s"][stage]
        print(f"   {stage:<18} {st['p50']:7.3f} {st['p95']:7.3f} {st['max']:7.3f} {st['mean']:7.3f}")
    cpu = s["other_s"]["node_cpu_s"]
    print(f"   node CPU per study: p50 {cpu['p50']:.2f} s; dominant stage: {s['dominant_stage']}")
    verdict = "met" if result["target"]["met"] else "NOT met"
    print(f"   target p95 beyond quiet ≤ {TARGET_P95_BEYOND_QUIET_S:g} s: {verdict}")


# --------------------------------------------------------------------------- run


def run(results_dir: Path, quick: bool = False, *, no_models: bool = False) -> dict[str, Any]:
    """Run the benchmark; write ``results_dir/e2e.json``; return its content.

    ``no_models`` (harness smoke test only) starts the node with no model configured; its
    figures are not the bar's and the JSON says so.
    """
    count = STUDIES_QUICK if quick else STUDIES
    storescu = _tool("storescu")
    models = _models()
    if not no_models and len(models) < 3:
        raise RuntimeError(f"bundled models missing: found {[m['path'] for m in models]} under models/")
    warmup = make_studies(1, first=-1)
    studies = make_studies(count)

    run_dir = WORK / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "node").mkdir(parents=True)
    overrides: dict[str, Any] = {k: dict(v) for k, v in SETTINGS.items()}
    if no_models:
        overrides["models"] = {"triage": None, "detector": None, "morphology": []}
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    orthanc = start_orthanc(run_dir / "orthanc")
    node: NodeProcess | None = None
    reg: Registry | None = None
    watch: OrthancWatch | None = None
    rows: list[dict[str, Any]] = []
    warm_row: dict[str, Any] = {}
    try:
        var = run_dir / "node"
        port = free_port()
        cfg = node_config(var, port, orthanc, **overrides)
        config_path = var / "config.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        node = NodeProcess(config_path, port, var, var / "node.log")
        t0 = time.perf_counter()
        node.start("run")
        node_start_s = time.perf_counter() - t0
        reg = Registry(var / "hipnode.db")
        watch = OrthancWatch(orthanc.url)
        watch.start()
        warm_row = measure_study(node, reg, watch, warmup[0])
        failures = 0
        for i, study in enumerate(studies):
            row = measure_study(node, reg, watch, study)
            rows.append(row)
            if "error" in row:
                failures += 1
                print(f"   study {study.index + 1}: {row['error']}")
                if failures >= 3 and failures == i + 1:
                    raise RuntimeError(f"the first {failures} studies failed; node log:\n{node.log()}")
            elif (i + 1) % 10 == 0 or i + 1 == len(studies):
                done = [r["e2e_s"] for r in rows if "error" not in r]
                print(f"   {i + 1}/{len(studies)}: median so far {statistics.median(done):.3f} s")
            time.sleep(0.2)  # let the read-back's association close
        node_rc = node.stop()
        node_log_tail = node.log()[-3000:] if any("error" in r for r in rows) else ""
    finally:
        if watch is not None:
            watch.stop()
        if reg is not None:
            reg.close()
        if node is not None:
            node.stop()
        orthanc.stop()
    load_end = os.getloadavg()

    summary = _summary(rows)
    p95 = summary["beyond_quiet_s"]["p95"] if summary else None
    result: dict[str, Any] = {
        "what": "last image acknowledged (storescu returns) → SR stored in Orthanc (first /changes poll listing it)",
        "started": started,
        "quick": quick,
        "no_models": no_models,
        "n": len(rows),
        "n_ok": sum("error" not in r for r in rows),
        "quiet_period_s": QUIET_PERIOD_S,
        "settings": {
            **overrides,
            "workers": 1,
            "destination": {"verify_with_cfind": True},
            "storescu": storescu,
            "storescu_env": {"TCP_NODELAY": "1"},
            "orthanc_env": {"TCP_NODELAY": "1"},
            "watch_interval_s": WATCH_INTERVAL_S,
            "study": {
                "view": "AP pelvis",
                "implants": "THA (bilateral every 3rd, else unilateral)",
                "rows": ROWS,
            },
            "sequential": "next study sent only after the previous job, SR and SC deliveries and read-backs finished",
            "warmup_studies_not_counted": 1,
        },
        "models": models,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in load_end],
        },
        "node_start_s": round(node_start_s, 2),
        "node_exit_code": node_rc,
        "orthanc_watch": {"polls": watch.polls if watch else 0, "errors": watch.errors if watch else 0},
        "target": {
            "p95_beyond_quiet_s": TARGET_P95_BEYOND_QUIET_S,
            "measured_p95_beyond_quiet_s": p95,
            "met": p95 is not None and p95 <= TARGET_P95_BEYOND_QUIET_S,
        },
        "summary": summary,
        "warmup": warm_row,
        "studies": rows,
    }
    if node_log_tail:
        result["node_log_tail"] = node_log_tail
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "e2e.json").write_text(json.dumps(result, indent=2, default=str))
    _print(result)
    return result


def main(argv: list[str]) -> int:
    quick = os.environ.get("BENCH_QUICK", "") == "1" or "--quick" in argv
    result = run(ROOT / "benchmarks" / "results", quick=quick, no_models="--no-models" in argv)
    return 0 if result["n_ok"] == result["n"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
