"""Receive throughput: our SCP vs DCMTK storescp vs pynetdicom's stock storescp.

500 synthetic DX instances of 2048×2048 16-bit (~8 MB each; 50 with ``quick``) are sent by
DCMTK ``storescu`` (``TCP_NODELAY=1``, one association, ``+sd`` directory scan) to each receiver
in turn, on the same disk, in one run. Each receiver writes to its own folder under
``benchmarks/work/`` which is emptied and ``sync``-ed before the next one, so no receiver pays
for another's dirty pages.

The machine is shared and noisy, so the receivers run in several repetitions (3 by default,
``BENCH_RECEIVE_REPS`` to change), each repetition in a rotated order; the figures are medians,
and the ratio ours / DCMTK is also given per repetition (side by side, same minute).

Ours runs in its production configuration (row ``hipnode``), with the default bounds on what a
peer can make it hold (1 MiB PDUs, dataset, inflation and buffer caps, read deadlines): every file and its directory
fsynced, SQLite registry with ``synchronous=FULL``, acknowledgement only after commit. DCMTK's
and pynetdicom's storescp do **not** fsync: their files may still be in the page cache when they
answer. Row ``hipnode-nofsync`` (``storage.fsync: false``; the registry commit still syncs) is
the like-for-like comparison with them; the headline ratio uses the production row. Each run
also records how long a ``sync`` took right after it (``sync_after_s``): the writeback a
receiver that does not fsync left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
ROWS = COLS = 2048


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"receiver not listening on {port}")


def make_inputs(count: int) -> Path:
    """``count`` DX files in ``work/dx-<count>`` (made once; re-used while complete)."""
    sys.path.insert(0, str(ROOT))
    from tests.dicom_factory import make_image, write

    folder = WORK / f"dx-{count}"
    existing = sorted(folder.glob("*.dcm")) if folder.exists() else []
    if len(existing) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2024)
    # Smooth-ish synthetic radiograph so the bytes look like an image, not noise.
    y, x = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    base = 1500 + 900 * np.sin(x / 200.0) * np.cos(y / 260.0)
    pixels = (base + rng.normal(0, 40, size=base.shape)).clip(0, 4095).astype(np.uint16).tobytes()
    for i in range(count):
        ds = make_image(rows=ROWS, cols=COLS, seed=77, instance_number=i + 1, pixels=pixels)
        write(ds, folder / f"img{i:05d}.dcm")
    return folder


def _dir_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _send(port: int, inputs: Path, called_ae: str) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = [
        "/usr/bin/storescu",
        "+sd",
        "-R",
        "-xe",
        "-aet",
        "BENCH",
        "-aec",
        called_ae,
        "127.0.0.1",
        str(port),
        str(inputs),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def _run_receiver(
    name: str, cmd: list[str], port: int, out: Path, inputs: Path, called_ae: str
) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    env = dict(os.environ, TCP_NODELAY="1")
    log = open(out.parent / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        _wait_port(port, proc)
        cpu0 = _cpu_s(proc.pid)
        elapsed = _send(port, inputs, called_ae)
        cpu1 = _cpu_s(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    t0 = time.perf_counter()
    os.sync()
    sync_after = time.perf_counter() - t0
    files = _count_instance_files(out)
    n, sent_bytes = _dir_bytes(inputs)
    if files != n:
        raise RuntimeError(f"{name}: {files} instance files written for {n} sent")
    result = {
        "receiver": name,
        "instances": n,
        "seconds": round(elapsed, 3),
        "img_per_s": round(n / elapsed, 2),
        "mb_per_s": round(sent_bytes / elapsed / 1e6, 1),
        "sync_after_s": round(sync_after, 3),
        # CPU the receiver used while receiving: steadier than wall time on a busy machine.
        "receiver_cpu_ms_per_img": round((cpu1 - cpu0) * 1000 / n, 1)
        if cpu0 is not None and cpu1 is not None
        else None,
        "files_written": files,
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def _count_instance_files(folder: Path) -> int:
    """Instance files a receiver left (not its registry, logs or temp files)."""
    return sum(
        1
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and not p.name.startswith("hipnode.db")
    )


def _ours_cmd(port: int, out: Path, fsync: bool) -> list[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = out.parent / f"ours-{'fsync' if fsync else 'nofsync'}.yaml"
    cfg.write_text(
        json.dumps(
            {
                # The node's default limits (max PDU 1 MiB, dataset/inflation/buffer caps,
                # timeouts): the figure is what a site gets out of the box.
                "node": {"host": "127.0.0.1", "port": port},
                "storage": {"root": str(out / "storage"), "min_free_mb": 100, "fsync": fsync},
                "database": {"url": f"sqlite:///{out / 'hipnode.db'}"},
                "log_level": "WARNING",
            }
        )
    )
    return [sys.executable, "-m", "node.receive", "--config", str(cfg)]


Receiver = tuple[str, Callable[[int, Path], list[str]], str]

RECEIVERS: list[Receiver] = [
    ("hipnode", lambda p, o: _ours_cmd(p, o, fsync=True), "HIPNODE"),
    ("hipnode-nofsync", lambda p, o: _ours_cmd(p, o, fsync=False), "HIPNODE"),
    (
        "dcmtk-storescp",
        lambda p, o: ["/usr/bin/storescp", "-od", str(o), "-pdu", "131072", str(p)],
        "ANY-SCP",
    ),
    (
        "pynetdicom-storescp",
        lambda p, o: [sys.executable, "-m", "pynetdicom", "storescp", "-od", str(o), "-pdu", "0", str(p)],
        "ANY-SCP",
    ),
]


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run(results_dir: Path, quick: bool = False, reps: int | None = None) -> dict[str, Any]:
    count = 50 if quick else 500
    reps = reps or int(os.environ.get("BENCH_RECEIVE_REPS", "3"))
    inputs = make_inputs(count)
    n, sent_bytes = _dir_bytes(inputs)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for rep in range(reps):
        order = RECEIVERS[rep % len(RECEIVERS) :] + RECEIVERS[: rep % len(RECEIVERS)]
        for name, make_cmd, called_ae in order:
            port = _free_port()
            out = WORK / "out" / name
            load = os.getloadavg()[0]
            result = _run_receiver(name, make_cmd(port, out), port, out, inputs, called_ae)
            result["rep"] = rep + 1
            result["load_1min"] = round(load, 2)
            runs.append(result)
            print(
                f"rep {rep + 1}/{reps} {name:20s} {result['instances']:4d} img in {result['seconds']:7.2f} s  "
                f"{result['img_per_s']:7.2f} img/s  {result['mb_per_s']:7.1f} MB/s  "
                f"cpu {result['receiver_cpu_ms_per_img']} ms/img  "
                f"(sync after {result['sync_after_s']:.2f} s, load {load:.1f})",
                flush=True,
            )
    medians: dict[str, dict[str, float]] = {}
    for name, _, _ in RECEIVERS:
        secs = [r["seconds"] for r in runs if r["receiver"] == name]
        med = _median(secs)
        medians[name] = {
            "seconds": round(med, 3),
            "img_per_s": round(n / med, 2),
            "mb_per_s": round(sent_bytes / med / 1e6, 1),
            "sync_after_s": round(_median([r["sync_after_s"] for r in runs if r["receiver"] == name]), 3),
            "receiver_cpu_ms_per_img": round(
                _median([r["receiver_cpu_ms_per_img"] or 0.0 for r in runs if r["receiver"] == name]), 1
            ),
        }

    def paired(ours: str) -> list[float]:
        by_rep = {(r["rep"], r["receiver"]): r["img_per_s"] for r in runs}
        return [round(by_rep[(k, ours)] / by_rep[(k, "dcmtk-storescp")], 3) for k in range(1, reps + 1)]

    ratio = medians["hipnode"]["img_per_s"] / medians["dcmtk-storescp"]["img_per_s"]
    ratio_nofsync = medians["hipnode-nofsync"]["img_per_s"] / medians["dcmtk-storescp"]["img_per_s"]
    summary: dict[str, Any] = {
        "benchmark": "receive",
        "quick": quick,
        "instances": n,
        "instance_bytes": (inputs / "img00000.dcm").stat().st_size,
        "shape": [ROWS, COLS],
        "repetitions": reps,
        "medians": medians,
        "ratio_ours_vs_dcmtk": round(ratio, 3),
        "ratio_ours_nofsync_vs_dcmtk": round(ratio_nofsync, 3),
        "ratio_per_rep": paired("hipnode"),
        "ratio_nofsync_per_rep": paired("hipnode-nofsync"),
        "target_ratio": 1.0,
        "note": "hipnode fsyncs file + directory and commits the registry (synchronous=FULL) before "
        "answering; DCMTK and pynetdicom storescp do not fsync (see sync_after_s)",
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"medians over {reps} repetition(s), {n} instances of {summary['instance_bytes'] / 1e6:.1f} MB:")
    for name, row in medians.items():
        print(
            f"  {name:20s} {row['img_per_s']:7.2f} img/s  {row['mb_per_s']:7.1f} MB/s  "
            f"cpu {row['receiver_cpu_ms_per_img']:6.1f} ms/img  (sync after {row['sync_after_s']:.2f} s)"
        )
    print(
        f"ours / DCMTK storescp = {ratio:.2f}x with fsync (per rep {summary['ratio_per_rep']}), "
        f"{ratio_nofsync:.2f}x without (per rep {summary['ratio_nofsync_per_rep']}); target >= 1.0x. "
        "DCMTK storescp does not fsync."
    )
    print(f"load average before {summary['load_avg_before']}, after {summary['load_avg_after']}")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "receive.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    args = sys.argv[1:]
    reps_arg = next((int(a.split("=", 1)[1]) for a in args if a.startswith("--reps=")), None)
    run(ROOT / "benchmarks" / "results", quick="--quick" in args, reps=reps_arg)
