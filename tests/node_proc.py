"""A whole hipnode started as the operator starts it (``hipnode … run``), for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OrthancServer, free_port, tool, wait_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class NodeProcess:
    config_path: Path
    port: int
    var: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, command: str = "run") -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "--config", str(self.config_path), command],
            stdout=log,
            stderr=log,
            cwd=self.var,
            env=env,
        )
        try:
            wait_port(self.port, 90, self.proc)
        except Exception:
            raise AssertionError(f"node did not start:\n{self.log()}") from None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node.cli", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            cwd=self.var,
            timeout=120,
        )

    def status(self) -> dict[str, Any]:
        run = self.cli("status", "--json")
        assert run.returncode == 0, run.stderr
        data: dict[str, Any] = json.loads(run.stdout)
        return data

    def storescu(self, *files: Path, calling_ae: str = "MODALITY") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("storescu"), "-aet", calling_ae, "-aec", "HIPNODE", "127.0.0.1", str(self.port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, TCP_NODELAY="1"),
        )


def node_config(var: Path, port: int, orthanc: OrthancServer | None, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node": {"ae_title": "HIPNODE", "host": "127.0.0.1", "port": port},
        "storage": {"root": str(var / "storage"), "min_free_mb": 1},
        "database": {"url": f"sqlite:///{var / 'hipnode.db'}"},
        "series": {"quiet_period_s": 1, "check_interval_s": 0.2},
        "jobs": {"poll_interval_s": 0.2, "sweep_interval_s": 2},
        "dispatch": {"interval_s": 0.2, "backoff_s": 1, "backoff_max_s": 5},
        "models": {"root": str(ROOT / "models")},
        "outputs": {"root": str(var / "results")},
    }
    if orthanc is not None:
        cfg["destinations"] = [
            {
                "name": "pacs",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "verify_with_cfind": True,
            }
        ]
        cfg["routing"] = [{"destinations": ["pacs"]}]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: ``make_node(orthanc=None, **config_overrides)`` → a started NodeProcess."""
    started: list[NodeProcess] = []

    def factory(orthanc: OrthancServer | None = None, command: str = "run", **overrides: Any) -> NodeProcess:
        var = tmp_path / f"node{len(started)}"
        var.mkdir()
        port = free_port()
        config_path = var / "config.yaml"
        config_path.write_text(yaml.safe_dump(node_config(var, port, orthanc, **overrides)))
        node = NodeProcess(config_path, port, var, var / "node.log")
        node.start(command)
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
