"""The systemd units verify cleanly (with ExecStart pointed at this checkout's venv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (Debian package systemd)"
    hipnode = Path(sys.executable).with_name("hipnode")
    assert hipnode.exists()
    units = []
    for unit in sorted((ROOT / "systemd").glob("*.service")):
        text = unit.read_text().replace("/opt/hipnode/.venv/bin/hipnode", str(hipnode))
        assert "Restart=on-failure" in text and "User=hipnode" in text and "NoNewPrivileges=yes" in text
        out = tmp_path / unit.name
        out.write_text(text)
        units.append(str(out))
    assert len(units) == 2
    run = subprocess.run([analyze, "verify", *units], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "", run.stderr
