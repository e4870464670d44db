"""``make bench``: run every benchmark in one process, one after another (never concurrently:
these machines are noisy and each benchmark compares against its baseline side by side).

Results: ``benchmarks/results/<area>.json`` per benchmark and ``benchmarks/results/summary.json``.
``BENCH_QUICK=1`` runs reduced sizes (for a smoke check of the harness).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

AREAS = ("receive", "phantom", "infer", "analyse", "generalise", "e2e", "import", "import_resume")


def main() -> int:
    results_dir = Path(__file__).with_name("results")
    results_dir.mkdir(exist_ok=True)
    quick = os.environ.get("BENCH_QUICK", "") == "1"
    only = set(sys.argv[1:])
    summary: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "quick": quick,
        "areas": {},
    }
    failed = 0
    for area in AREAS:
        if only and area not in only:
            continue
        name = f"benchmarks.bench_{area}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"== {area}: no benchmark module")
                continue
            raise
        print(f"== {area}")
        t0 = time.perf_counter()
        try:
            summary["areas"][area] = {"result": module.run(results_dir, quick=quick)}
        except Exception:  # one failing benchmark must not hide the others' figures
            failed += 1
            summary["areas"][area] = {"error": traceback.format_exc()}
            traceback.print_exc()
        summary["areas"][area]["wall_s"] = round(time.perf_counter() - t0, 1)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"results in {results_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
