"""Receive throughput: our SCP vs DCMTK storescp vs pynetdicom's stock storescp.

500 synthetic DX instances of 2048×2048 16-bit (~8 MB each; 50 with ``quick``) are sent by
DCMTK ``storescu`` (``TCP_NODELAY=1``, one association, ``+sd`` directory scan) to each receiver
in turn, on the same disk, in one run. Each receiver writes to its own folder under
``benchmarks/work/`` which is emptied and ``sync``-ed before the next one, so no receiver pays
for another's dirty pages.

Ours runs in its production configuration: fsync of every file and its directory, SQLite
registry with ``synchronous=FULL``, acknowledgement only after commit. DCMTK and pynetdicom's
storescp do not fsync. A second run of ours with ``storage.fsync: false`` is reported for
reference only (the ratio uses the production configuration).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
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
        elapsed = _send(port, inputs, called_ae)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    files, _ = _dir_bytes(out)
    n, sent_bytes = _dir_bytes(inputs)
    result = {
        "receiver": name,
        "instances": n,
        "seconds": round(elapsed, 3),
        "img_per_s": round(n / elapsed, 2),
        "mb_per_s": round(sent_bytes / elapsed / 1e6, 1),
        "files_written": files,
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def _ours_cmd(port: int, out: Path, fsync: bool) -> list[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = out.parent / f"ours-{'fsync' if fsync else 'nofsync'}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "node": {"host": "127.0.0.1", "port": port, "max_pdu": 0},
                "storage": {"root": str(out / "storage"), "min_free_mb": 100, "fsync": fsync},
                "database": {"url": f"sqlite:///{out / 'hipnode.db'}"},
                "log_level": "WARNING",
            }
        )
    )
    return [sys.executable, "-m", "node.receive", "--config", str(cfg)]


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    count = 50 if quick else 500
    inputs = make_inputs(count)
    runs: list[dict[str, Any]] = []
    receivers: list[tuple[str, Any, str]] = [
        ("hipnode", lambda p, o: _ours_cmd(p, o, fsync=True), "HIPNODE"),
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
        ("hipnode-nofsync", lambda p, o: _ours_cmd(p, o, fsync=False), "HIPNODE"),
    ]
    for name, make_cmd, called_ae in receivers:
        port = _free_port()
        out = WORK / "out" / name
        result = _run_receiver(name, make_cmd(port, out), port, out, inputs, called_ae)
        runs.append(result)
        print(
            f"{name:22s} {result['instances']:4d} img in {result['seconds']:7.2f} s  "
            f"{result['img_per_s']:7.2f} img/s  {result['mb_per_s']:7.1f} MB/s",
            flush=True,
        )
    by_name = {r["receiver"]: r for r in runs}
    ratio = by_name["hipnode"]["img_per_s"] / by_name["dcmtk-storescp"]["img_per_s"]
    summary = {
        "benchmark": "receive",
        "quick": quick,
        "instance_bytes": (inputs / "img00000.dcm").stat().st_size,
        "shape": [ROWS, COLS],
        "runs": runs,
        "ratio_ours_vs_dcmtk": round(ratio, 3),
        "target_ratio": 1.0,
        "cpu_count": os.cpu_count(),
    }
    print(f"ours / DCMTK storescp = {ratio:.2f}x (target >= 1.0x)")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "receive.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    run(ROOT / "benchmarks" / "results", quick="--quick" in sys.argv)
