"""Shared fixtures: real peers on 127.0.0.1 (DCMTK tools, Orthanc), ports, configs.

A missing external tool is a test *failure*, never a skip: ``make test`` installs them, so a
missing one means the environment is broken and CI must say so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

# DCMTK lives in /usr/bin; pynetdicom installs console scripts with the same names
# (storescu, storescp…) into the venv, so DCMTK tools are always looked up by full path.
DCMTK_DIR = Path("/usr/bin")


def tool(name: str) -> str:
    """Absolute path of a system tool (DCMTK, dicom3tools, Orthanc); fails the test if absent."""
    for d in (DCMTK_DIR, Path("/usr/sbin"), Path("/usr/local/bin")):
        p = d / name
        if p.exists() and os.access(p, os.X_OK):
            return str(p)
    found = shutil.which(name)
    if found and ".venv" not in found:
        return found
    pytest.fail(f"required tool {name!r} is not installed (make test installs it)", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class OrthancServer:
    """A real Orthanc started on loopback for one test (the PACS we send results to)."""

    aet: str
    dicom_port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        env = dict(os.environ, TCP_NODELAY="1")
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [tool("Orthanc"), str(self.workdir / "orthanc.json")], stdout=log, stderr=log, env=env
        )
        wait_port(self.http_port, 60, self.proc)
        wait_port(self.dicom_port, 60, self.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError("Orthanc REST API did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def get(self, path: str) -> object:
        r = requests.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        return [str(i) for i in self.get("/instances")]  # type: ignore[attr-defined]

    def instance_tags(self, orthanc_id: str) -> dict[str, object]:
        tags: dict[str, object] = self.get(f"/instances/{orthanc_id}/simplified-tags")  # type: ignore[assignment]
        return tags

    def instance_file(self, orthanc_id: str) -> bytes:
        r = requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        r.raise_for_status()
        return r.content


def make_orthanc(workdir: Path, name: str = "hipnode-test-pacs") -> OrthancServer:
    """An Orthanc on free loopback ports with its storage and config in ``workdir`` (not started).

    Shared by the tests' fixture and the end-to-end benchmark, so both talk to the same PACS.
    """
    (workdir / "db").mkdir(parents=True)
    server = OrthancServer(aet="ORTHANC", dicom_port=free_port(), http_port=free_port(), workdir=workdir)
    config = {
        "Name": name,
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "HttpServerEnabled": True,
        "HttpPort": server.http_port,
        "DicomPort": server.dicom_port,
        "DicomAet": server.aet,
        "DicomServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
        "StorageCompression": False,
        "OverwriteInstances": False,
    }
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    return server


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """Start Orthanc (storage in a temp dir, AE ORTHANC) and stop it after the test."""
    server = make_orthanc(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop()
