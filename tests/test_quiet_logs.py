"""Quiet logs (issue 13, must have 7): at INFO a real ``hipnode run`` under a steady workload
writes one line per association, series completion, job and delivery, each in the node's own
words; library and scheduler chatter (pynetdicom's "Network timeout reached" at ERROR,
openjpeg's "tile number 1 / 1" per SC, APScheduler's runs, Alembic at start) stays at DEBUG.

The workload: a C-ECHO, a two-series study by DCMTK storescu, the same study again (duplicates:
acknowledged, not re-recorded), and an association that idles past ``network_timeout_s`` (the
node aborts it; its line says why), with results delivered to a real Orthanc.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import OrthancServer, tool
from tests.node_proc import NodeProcess, make_node, wait_for  # noqa: F401
from tests.test_e2e import phantom_study
from tests.test_receive_support import scu_ae

# "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<process>\S+) (?P<logger>\S+): (?P<msg>.*)$")
_LEVELS = ("INFO", "WARNING", "ERROR", "CRITICAL")
NETWORK_TIMEOUT_S = 2.0


def _kind(logger: str, msg: str) -> str:
    if not (logger == "node" or logger.startswith("node.")):
        return "library"
    if logger == "node.receive.scp" and msg.startswith("association from "):
        return "association"
    if logger == "node.series" and re.match(r"series \d+ complete", msg):
        return "series"
    if logger == "node.jobs" and re.match(r"job \d+ ", msg):
        return "job"
    if logger == "node.dispatch" and re.match(r"delivery \d+ ", msg):
        return "delivery"
    return "other"


def _lines_from(log: Path, offset: int) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every INFO+ record written after ``offset`` (tracebacks
    and continuation lines are counted with the record they belong to)."""
    out = []
    for line in log.read_bytes()[offset:].decode(errors="replace").splitlines():
        m = _LINE.match(line)
        if m and m["level"] in _LEVELS:
            out.append((m["level"], m["logger"], m["msg"]))
    return out


@pytest.mark.slow
def test_steady_state_writes_one_line_per_association_series_job_and_delivery(
    tmp_path: Path, orthanc: OrthancServer, make_node: Any  # noqa: F811
) -> None:
    node: NodeProcess = make_node(orthanc, node={"network_timeout_s": NETWORK_TIMEOUT_S})
    wait_for(lambda: "hipnode running" in node.log_path.read_text(errors="replace"), 60, "start-up")
    offset = node.log_path.stat().st_size  # the steady state: after start-up

    echo = subprocess.run([tool("echoscu"), "-aec", "HIPNODE", "127.0.0.1", str(node.port)], capture_output=True)
    assert echo.returncode == 0, echo.stderr
    study = tmp_path / "study"
    study.mkdir()
    files, _truth = phantom_study(study)
    assert node.storescu(*files).returncode == 0
    assert node.storescu(*files).returncode == 0  # the same study again: two duplicates
    # an association that says nothing: the node aborts it after network_timeout_s
    idle = scu_ae(("1.2.840.10008.1.1", [ExplicitVRLittleEndian]), ae_title="IDLESCU")
    assoc = idle.associate("127.0.0.1", node.port, ae_title="HIPNODE")
    assert assoc.is_established
    wait_for(lambda: not assoc.is_established, NETWORK_TIMEOUT_S + 10, "the idle association to be aborted", 0.2)
    idle.shutdown()

    def delivered() -> bool:
        return bool(node.status()["deliveries"].get("visible", 0) >= 4)

    wait_for(delivered, 240, "two SRs and two SCs visible in Orthanc", interval_s=1)
    time.sleep(3)  # a few more scheduler ticks (every 0.2 s) and worker polls of a quiet node

    lines = _lines_from(node.log_path, offset)
    kinds = Counter(_kind(logger, msg) for _level, logger, msg in lines)
    shown = "\n".join(f"{lvl} {lg}: {msg}" for lvl, lg, msg in lines)
    library = [(lvl, lg, msg) for lvl, lg, msg in lines if _kind(lg, msg) == "library"]
    assert not library, f"library chatter at INFO or above:\n{shown}"
    assert "Network timeout reached" not in node.log_path.read_text(errors="replace")

    status = node.status()
    jobs = sum(status["jobs"].values())
    assert jobs == 2, status["jobs"]  # the re-sent study queued nothing
    # exactly one line per association: echo, study, study again, the idle one
    assert kinds["association"] == 4, shown
    associations = [msg for _lvl, lg, msg in lines if _kind(lg, msg) == "association"]
    assert sum("released" in m and "2 stored" in m for m in associations) == 1, associations
    assert sum("released" in m and "2 duplicate(s) acknowledged" in m for m in associations) == 1, associations
    assert sum("released" in m and "1 C-ECHO" in m for m in associations) == 1, associations
    (aborted,) = [(lvl, m) for lvl, lg, m in lines if _kind(lg, m) == "association" and "IDLESCU" in m]
    assert aborted[0] == "WARNING" and f"nothing received for {NETWORK_TIMEOUT_S:g} s (network_timeout_s)" in aborted[1]
    assert kinds["series"] <= 2, shown  # two series, each completed once
    assert kinds["job"] <= jobs, shown  # one line per job
    assert kinds["delivery"] <= 4, shown  # one per delivery (2 SR + 2 SC)
    assert kinds["other"] <= 1, shown
