"""``hipnode export`` (issue 16 part 2): one row per image from the registry, filters, the
pseudonymised mode, Parquet, and ``hipnode evaluate`` reading the export as it is."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from node import cli
from node.config import parse_config
from node.evaluate import evaluate, read_csv
from node.export import COLUMNS, Pseudonymiser
from node.importer import ImportOptions, run_import
from node.registry import Database
from tests.test_import import REPO, write_archive


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small analysed registry: 6 studies (AP pelvis, AP hip, lateral, non-hip), one worker."""
    tmp = tmp_path_factory.mktemp("export")
    archive = tmp / "archive"
    write_archive(archive, 6, seed=161, junk=False)
    raw = {
        "storage": {"root": str(tmp / "storage"), "min_free_mb": 1},
        "database": {"url": f"sqlite:///{tmp / 'db.sqlite'}"},
        "outputs": {"root": str(tmp / "results"), "sc": False},
        "models": {"root": str(REPO / "models")},
        "log_level": "WARNING",
    }
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    db = Database(cfg.database.url)
    db.migrate()
    try:
        summary = run_import(cfg, db, archive, ImportOptions(workers=1, progress=False))
    finally:
        db.dispose()
    assert summary["jobs"].get("done", 0) >= 3, summary
    return config


def _export(config: Path, *args: str) -> list[dict[str, str]]:
    """``hipnode export`` in this process (the command line as a user types it, without a
    Python start per call)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--config", str(config), "export", *args]) == 0
    reader = csv.DictReader(io.StringIO(out.getvalue()))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    return list(reader)


def _bundled(name: str) -> str:
    """The version ``models/<name>/`` serves: its newest version folder."""
    folder = Path(__file__).resolve().parents[1] / "models" / name
    return max((p.name for p in folder.iterdir() if p.is_dir()), key=lambda v: tuple(int(x) for x in v.split(".")))


def test_rows_carry_identifiers_findings_and_model_versions(imported: Path) -> None:
    rows = _export(imported)
    assert len(rows) == 10  # 6 studies of the plan: 2 + 1 + 1 + 2 + 1 + 2 images
    keys = [(r["study_instance_uid"], r["series_instance_uid"], r["sop_instance_uid"]) for r in rows]
    assert keys == sorted(keys)  # a stable order: equal registries export equal bytes
    analysed = [r for r in rows if r["state"] == "accepted"]
    assert analysed and all(r["patient_id"].startswith("PH") and len(r["study_date"]) == 8 for r in rows)
    for r in analysed:
        assert r["view"] in ("ap_pelvis", "ap_hip", "lateral_hip", "oblique_hip")
        assert r["sides"] in ("R", "L", "RL")
        assert f"hipnode-triage {_bundled('triage')}" in r["model_versions"]
        assert r["sr_sop_instance_uid"].startswith("2.25.")
        for side in r["sides"]:
            assert r[f"implant_{side}"] in ("0", "1")
    pelvis = [r for r in analysed if r["view"] == "ap_pelvis"]
    assert pelvis and all(r["sides"] == "RL" for r in pelvis)
    measured = [(r, s) for r in analysed for s in r["sides"] if r[f"inclination_deg_{s}"]]
    for r, s in measured:  # a measured cup carries its method and fit quality
        assert 0.0 < float(r[f"inclination_deg_{s}"]) < 90.0
        assert r[f"inclination_method_{s}"] and 0.0 <= float(r[f"cup_fit_quality_{s}"]) <= 1.0
    native_ap = [(r, s) for r in analysed for s in r["sides"] if r[f"implant_{s}"] == "0" and r["view"] == "ap_pelvis"]
    assert native_ap and all(r[f"dysplasia_{s}"] in ("0", "1") and r[f"dysplasia_prob_{s}"] for r, s in native_ap)
    screened = [r for r in rows if r["state"] == "screened_out"]
    assert screened and all(r["screen_reason"].startswith("not a hip or pelvis radiograph") for r in screened)


def test_filters(imported: Path) -> None:
    rows = _export(imported)
    dates = sorted({r["study_date"] for r in rows})
    assert len(dates) >= 3
    middle = dates[len(dates) // 2]
    since = _export(imported, "--since", f"{middle[:4]}-{middle[4:6]}-{middle[6:]}")
    assert since and {r["study_date"] for r in since} == {d for d in dates if d >= middle}
    until = _export(imported, "--until", middle)
    assert len(since) + len(until) == len(rows) + sum(r["study_date"] == middle for r in rows)
    hips = _export(imported, "--view", "ap_hip")
    assert hips and {r["view"] for r in hips} == {"ap_hip"}
    with_implant = _export(imported, "--implant", "yes")
    without = _export(imported, "--implant", "no")
    assert all("1" in (r["implant_R"], r["implant_L"]) for r in with_implant)
    assert all("1" not in (r["implant_R"], r["implant_L"]) and r["view"] for r in without)
    assert len(with_implant) + len(without) == sum(1 for r in rows if r["view"])
    assert _export(imported, "--calling-ae", "NOBODY") == []
    assert len(_export(imported, "--calling-ae", "IMPORT")) == len(rows)


def test_pseudonymised_export(imported: Path, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    plain = _export(imported)
    pseudo = _export(imported, "--pseudonymise", str(key))
    assert len(pseudo) == len(plain)
    text = "\n".join(",".join(r.values()) for r in pseudo)
    for r in plain:  # no identifier or real date survives
        for col in ("patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid"):
            assert r[col] not in text
    by_patient: dict[str, set[int]] = {}
    for real, fake in zip(plain, pseudo, strict=True):
        assert re.fullmatch(r"2\.25\.\d+", fake["sop_instance_uid"]) and len(fake["sop_instance_uid"]) <= 64
        assert re.fullmatch(r"[0-9a-f]{32}", fake["patient_id"])
        shift = _days(fake["study_date"]) - _days(real["study_date"])
        assert shift != 0 and abs(shift) <= 365
        by_patient.setdefault(fake["patient_id"], set()).add(shift)
        assert {k: v for k, v in fake.items() if k not in _PSEUDO} == {k: v for k, v in real.items() if k not in _PSEUDO}
    assert all(len(shifts) == 1 for shifts in by_patient.values())  # one shift per patient
    assert _export(imported, "--pseudonymise", str(key)) == pseudo  # keyed: repeatable
    other = tmp_path / "other"
    other.write_bytes(os.urandom(32))
    assert _export(imported, "--pseudonymise", str(other))[0]["patient_id"] != pseudo[0]["patient_id"]
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymiser(b"short")


_PSEUDO = {"patient_id", "issuer_of_patient_id", "study_instance_uid", "series_instance_uid",
           "sop_instance_uid", "sr_sop_instance_uid", "study_date"}


def _days(da: str) -> int:
    from datetime import date

    return date(int(da[:4]), int(da[4:6]), int(da[6:])).toordinal()


def test_parquet_export_matches_csv(imported: Path, tmp_path: Path) -> None:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("pyarrow is missing: make test installs it (extra 'parquet' in the test extra)")
        pytest.skip("pyarrow not installed (extra 'parquet')")
    out = tmp_path / "export.parquet"
    done = subprocess.run([sys.executable, "-m", "node.cli", "--config", str(imported), "export", "--format",
                           "parquet", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table: Any = pq.read_table(out)
    rows = _export(imported)
    assert table.num_rows == len(rows) and tuple(table.column_names) == COLUMNS
    got = table.to_pylist()
    for a, b in zip(got, rows, strict=True):
        assert a["sop_instance_uid"] == b["sop_instance_uid"]
        for col in ("inclination_deg_R", "dysplasia_prob_L", "view_probability"):
            assert (a[col] is None and b[col] == "") or float(b[col]) == a[col]


def test_evaluate_reads_the_export(imported: Path, tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    done = subprocess.run([sys.executable, "-m", "node.cli", "--config", str(imported), "export", "--out",
                           str(export)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pred = read_csv(export)
    assert pred and {p["side"] for p in pred} <= {"R", "L"} and all("dysplasia_prob" in p for p in pred)
    # labels keyed by SOP Instance UID and side: here the node's own flags with one flipped
    truth_rows = [p for p in pred if p.get("dysplasia_prob")]
    assert len(truth_rows) >= 2
    truth = tmp_path / "truth.csv"
    with truth.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "side", "dysplasia", "inclination_deg"])
        for i, p in enumerate(truth_rows):
            label = int(float(p["dysplasia_prob"]) >= 0.5)
            w.writerow([p["image_id"], p["side"], 1 - label if i == 0 else label, ""])
    summary = evaluate(read_csv(truth), pred, tmp_path / "eval", n_boot=0, plots=False)
    assert summary["n_matched"] == len(truth_rows) and summary["only_in_truth"] == 0
    assert summary["flags"]["dysplasia"]["n"] == len(truth_rows)
