"""Prometheus metrics (issue 15): a real ``hipnode run`` is sent a study by DCMTK storescu and
delivers to a real Orthanc; its ``/metrics`` must move by exactly what happened — instances and
bytes for that calling AE and SOP class, one accepted and one rejected association, one analysis,
composition and quiet wait per series, one send and one round trip per delivered result."""

from __future__ import annotations

import socket
import struct
import subprocess
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node import observe
from node.config import parse_config
from tests.conftest import OrthancServer, free_port, tool
from tests.node_proc import NodeProcess, make_node, wait_for  # noqa: F401
from tests.test_e2e import phantom_study

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (n, labels), v in samples.items():
        if n == name:
            out[dict(labels).get(label, "")] += v
    return out


def dataset_bytes(path: Path) -> int:
    """Bytes of the dataset after the file meta: what storescu puts on the wire unchanged."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    # (0002,0000) UL, explicit VR little endian: tag 4 + VR 2 + length 2 + value 4
    (group_length,) = struct.unpack_from("<I", raw, 132 + 8)
    return len(raw) - (132 + 12 + group_length)


@pytest.mark.slow
def test_metrics_move_by_what_was_sent(tmp_path: Path, orthanc: OrthancServer, make_node: Any) -> None:  # noqa: F811
    mport = free_port()
    node: NodeProcess = make_node(
        orthanc,
        metrics={"enabled": True, "host": "127.0.0.1", "port": mport, "work_port": free_port()},
        allow_any_calling_ae=False,
        calling_aes=[{"ae_title": "MODALITY"}],
    )
    before = scrape(mport)
    assert value(before, "hipnode_registry_up") == 1
    assert value(before, "hipnode_disk_min_free_bytes") == 2**20  # storage.min_free_mb: 1
    assert value(before, "hipnode_disk_free_bytes", area="storage") > 0
    models = {dict(labels)["model"]: dict(labels) for (n, labels) in before if n == "hipnode_model_info"}
    assert {"triage", "detector"} <= set(models), models
    assert models["triage"]["provider"] == "CPUExecutionProvider"

    study = tmp_path / "study"
    study.mkdir()
    files, _truth = phantom_study(study)
    sop_class = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)
    assert all(str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID) == sop_class for f in files)
    sent = node.storescu(*files, calling_ae="MODALITY")
    assert sent.returncode == 0, sent.stderr
    intruder = subprocess.run(
        [tool("echoscu"), "-aet", "INTRUDER", "-aec", "HIPNODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        timeout=60,
    )
    assert intruder.returncode != 0, "an AE outside calling_aes must be rejected"

    # Two series (AP pelvis, lateral): one SR each + one SC per image → four deliveries.
    def delivered() -> Samples | None:
        now = scrape(mport)
        states = by_label({k: v for k, v in now.items() if dict(k[1]).get("destination") == "pacs"},
                          "hipnode_deliveries", "state")
        done = states.get("sent", 0) + states.get("visible", 0)
        return now if done >= 4 and sum(states.values()) == done else None

    after: Samples = wait_for(delivered, 300, "four deliveries sent to Orthanc", interval_s=2)
    after = scrape(mport)  # the histograms are observed just after the state is written

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    n, total_bytes = len(files), sum(dataset_bytes(f) for f in files)
    ae = {"calling_ae": "MODALITY", "sop_class": sop_class}
    assert delta("hipnode_instances_received_total", **ae) == n
    assert delta("hipnode_received_bytes_total", **ae) == total_bytes
    assert delta("hipnode_store_outcomes_total", outcome="stored") == n
    assert delta("hipnode_associations_accepted_total", calling_ae="MODALITY") == 1
    assert delta("hipnode_associations_rejected_total", reason="calling_ae_not_recognised") == 1
    assert value(after, "hipnode_jobs", state="done") == 2

    assert delta("hipnode_series_quiet_wait_seconds_count") == 2
    assert delta("hipnode_series_quiet_wait_seconds_sum") >= 2 * 1.0  # series.quiet_period_s: 1
    assert delta("hipnode_job_queue_wait_seconds_count") == 2
    assert delta("hipnode_analysis_seconds_count", outcome="done") == 2
    assert delta("hipnode_analysis_seconds_sum", outcome="done") > 0
    assert delta("hipnode_composition_seconds_count") == 2
    assert delta("hipnode_send_seconds_count", destination="pacs") == 4
    assert delta("hipnode_delivery_outcomes_total", destination="pacs", state="sent") == 4
    assert delta("hipnode_received_to_stored_seconds_count", destination="pacs") == 4
    # Each round trip includes its series' quiet period and analysis.
    assert delta("hipnode_received_to_stored_seconds_sum", destination="pacs") >= 4 * 1.0
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    for f in files:  # no patient attribute, no instance / study UID in any label
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "SOPInstanceUID", "StudyInstanceUID"):
            assert str(ds.get(keyword, "")) and str(ds.get(keyword)) not in text, keyword


def test_calling_ae_labels_are_bounded() -> None:
    """A sender choosing arbitrary AE titles cannot grow the exposition without bound."""
    observe.configure(parse_config({"calling_aes": [{"ae_title": "CR_ROOM1"}]}))
    seen = {observe.ae_label(f"RANDOM{i}") for i in range(observe.MAX_DYNAMIC_AES * 3)}
    assert len(seen) <= observe.MAX_DYNAMIC_AES + 1 and observe.OTHER in seen
    assert observe.ae_label("CR_ROOM1") == "CR_ROOM1"  # configured AEs always keep their label


def test_metrics_port_in_use_does_not_stop_the_node(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = parse_config({"metrics": {"port": port}})
        assert observe.serve(cfg, port=port) is None
    assert any("metrics endpoint not started" in r.getMessage() for r in caplog.records)
    assert observe.serve(parse_config({"metrics": {"enabled": False}}), port=free_port()) is None


def test_metrics_served_on_loopback_by_default() -> None:
    cfg = parse_config({})
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port != cfg.metrics.work_port
    port = free_port()
    server = observe.serve(cfg, port=port)
    try:
        assert server is not None
        assert server.server_address[0] == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "hipnode_build_info" in body
    finally:
        observe.stop(server)
