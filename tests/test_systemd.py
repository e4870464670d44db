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


def _unit(name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def test_units_match_the_container_layout() -> None:
    """The units and deploy/ describe one install: same config path and state directory, the
    example config's storage and results writable, its models readable, the same stop grace."""
    from pathlib import PurePosixPath

    import yaml

    from node.cli import build_parser
    from node.config import load_config
    from tests.test_deploy import DEPLOY, read_dockerfile

    image = read_dockerfile(DEPLOY / "Dockerfile")
    cfg = load_config(DEPLOY / "config.example.yaml")
    config_path = image.entrypoint[image.entrypoint.index("--config") + 1]
    grace = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["work"]["stop_grace_period"]
    for name, command in (("hipnode-receive.service", "receive"), ("hipnode-work.service", "work")):
        unit = _unit(name)
        argv = unit["ExecStart"].split()
        assert argv[argv.index("--config") + 1] == config_path and argv[-1] == command
        assert build_parser().parse_args(argv[1:]).command == command
        assert PurePosixPath(unit["WorkingDirectory"]) == image.workdir
        writable = [PurePosixPath(p) for p in unit["ReadWritePaths"].split()]
        readable = [PurePosixPath(p) for p in unit["ReadOnlyPaths"].split()]
        for path in (cfg.storage.root, cfg.outputs.root):
            assert any(PurePosixPath(path).is_relative_to(w) for w in writable), (name, path)
        assert any(PurePosixPath(cfg.models.root).is_relative_to(r) for r in readable), name
        assert f"{unit['TimeoutStopSec']}s" == grace
