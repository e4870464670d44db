"""Regenerate ``docs/example_sc.png`` and ``docs/example_sr.html`` from a real pipeline run.

A phantom study (AP pelvis with bilateral THA + a cross-table lateral) goes through the node's
own path — ``hipnode import`` ingest, series completion, the worker pipeline with the bundled
models — and the SR is rendered with DCMTK's ``dsr2html``. Run from the repository root:

    .venv/bin/python docs/make_examples.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.bulk import import_folder  # noqa: E402
from node.compose import read_report  # noqa: E402
from node.config import parse_config  # noqa: E402
from node.domain import View  # noqa: E402
from node.pipeline import Pipeline  # noqa: E402
from node.registry import Database  # noqa: E402
from node.series import complete_due_series  # noqa: E402
from tests.test_e2e import phantom_study  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        study = work / "study"
        study.mkdir()
        _, truth = phantom_study(study)
        cfg = parse_config(
            {
                "storage": {"root": str(work / "storage"), "min_free_mb": 1},
                "database": {"url": f"sqlite:///{work / 'db.sqlite'}"},
                "series": {"quiet_period_s": 0.01},
                "models": {"root": str(ROOT / "models")},
                "outputs": {"root": str(work / "results")},
            }
        )
        db = Database(cfg.database.url)
        db.migrate()
        import_folder(cfg, db, study, calling_ae="DOCS")
        time.sleep(0.05)
        pipeline = Pipeline(cfg, db)
        for job in complete_due_series(db, cfg):
            pipeline.process(job)
        ap = {uid for uid, img in truth.items() if img.truth.view is View.AP_PELVIS}
        for path in sorted((work / "results").rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            if ds.Modality == "SR" and {g.source_sop_instance_uid for g in read_report(ds)} & ap:
                html = subprocess.run(["/usr/bin/dsr2html", "+U8", str(path)], capture_output=True, check=True)
                (ROOT / "docs" / "example_sr.html").write_bytes(html.stdout)
            elif ds.Modality != "SR" and str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) in ap:
                Image.fromarray(ds.pixel_array).save(ROOT / "docs" / "example_sc.png")
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
