"""The status page in a real headless Chromium against running node processes (issue 15 bar).

DCMTK storescu (the modality) → ``hipnode receive`` (receiver, series completion, the status
page with a login) → a job that fails: the test plays a worker that crashed on it (claims it
through ``node.jobs`` and fails it, ``jobs.max_attempts: 1``) → in the browser the operator logs
in, re-queues the job and pauses the ``archive`` destination → ``hipnode work`` analyses the
series and sends to ``pacs`` (Orthanc) but not to the paused ``archive`` → the page shows the
study with its findings and SC thumbnail, the paused destination with its pending deliveries and
the re-queue among the operator actions. The screenshot goes to ``docs/status_page.png``.

Debian's Chromium is driven by Playwright through ``executable_path`` (no browser download).
Every request the page makes is recorded; one that leaves 127.0.0.1 fails the test. A missing
tool (chromium, Playwright, DCMTK, Orthanc) fails the test: ``make test`` installs them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.domain import Side, View
from node.jobs import claim_job, fail_job
from node.phantom import CupSpec, render, sample_spec
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.registry import Database
from node.web.auth import hash_password
from tests.conftest import OrthancServer, free_port, tool
from tests.node_proc import NodeProcess, make_node, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "status_page.png"
PASSWORD = "operator-pass-1"


def _require() -> tuple[str, Any]:
    chromium = tool("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed (make test installs the test extra)", pytrace=False)
    return chromium, sync_playwright


def _ap_pelvis(out: Path) -> Path:
    """One AP pelvis with cups on both sides (no tilt: the film shows the cup angles)."""
    rng = np.random.default_rng(1515)
    cups = {Side.RIGHT: CupSpec(43.0, 17.0), Side.LEFT: CupSpec(49.0, 22.0)}
    spec = sample_spec(rng, view=View.AP_PELVIS, implants=cups, rows=1024, sex="M")
    spec = dataclasses.replace(spec, geometry=dataclasses.replace(spec.geometry, pelvic_tilt_deg=0.0,
                                                                  pelvic_rotation_deg=0.0))
    ds = build_dataset(render(spec), make_study_info(1515, 1, "M", rng, modality="DX"), 1, 1, rng)
    path = out / "ap.dcm"
    path.write_bytes(to_bytes(ds))
    return path


@pytest.mark.slow
def test_status_page_in_chromium(tmp_path: Path, orthanc: OrthancServer, make_node: Any) -> None:  # noqa: F811
    chromium, sync_playwright = _require()
    web_port = free_port()
    dest = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    node: NodeProcess = make_node(
        orthanc,
        command="receive",
        destinations=[{"name": "pacs", **dest}, {"name": "archive", **dest, "outputs": ["sr"]}],
        routing=[{"destinations": ["pacs", "archive"]}],
        jobs={"max_attempts": 1},
        metrics={"port": free_port(), "work_port": free_port()},
        web={"port": web_port, "users": [{"name": "admin", "password_hash": hash_password(PASSWORD, iterations=100_000)}]},
    )
    image = _ap_pelvis(tmp_path)
    sent = node.storescu(image)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: node.status()["jobs"].get("queued") == 1, 60, "the series' job queued")

    # the worker that crashed on it: claimed, then failed for good (max_attempts 1)
    db = Database(f"sqlite:///{node.var / 'hipnode.db'}")
    try:
        claimed = claim_job(db, "test:crashed-worker", 60)
        assert claimed is not None
        assert fail_job(db, claimed.job_pk, "test:crashed-worker", "worker process killed (simulated)",
                        attempt=claimed.attempt) is not None
    finally:
        db.dispose()
    assert node.status()["jobs"].get("failed") == 1

    base = f"http://127.0.0.1:{web_port}"
    foreign: list[str] = []
    worker = NodeProcess(node.config_path, node.port, node.var, node.var / "work.log")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(base) else None)
            page.goto(f"{base}/")
            assert page.url == f"{base}/login"
            page.fill("input[name=name]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button:has-text(\"Log in\")")
            page.wait_for_selector("#queue")
            job_row = page.locator("#queue tr", has_text="worker process killed (simulated)")
            assert job_row.locator(".state").inner_text() == "failed"
            job_row.locator("button", has_text="Re-queue").click()
            page.wait_for_selector(".msg")
            assert f"job {claimed.job_pk} re-queued (was failed)" in page.locator(".msg").inner_text()
            archive = page.locator("#destinations tr", has_text="archive")
            archive.locator("button", has_text="Pause").click()
            page.wait_for_selector(".msg")
            assert "destination archive paused" in page.locator(".msg").inner_text()

            worker.start("work")  # waits for the (receiver's) DICOM port, then the worker runs
            wait_for(lambda: node.status()["destinations"]["pacs"].get("sent", 0) >= 2, 300,
                     "the SR and the SC sent to pacs", interval_s=2)
            page.goto(f"{base}/")
            study = page.locator("#studies article.study").first
            text = study.inner_text()
            assert "ap pelvis" in text and "implant" in text and "inclination" in text, text
            thumb = study.locator("img.thumb").first
            thumb.wait_for()
            assert page.evaluate("img => img.complete && img.naturalWidth > 0", thumb.element_handle())
            archive = page.locator("#destinations tr", has_text="archive")
            assert archive.locator(".state").inner_text() == "paused"
            assert "pending 1" in archive.inner_text() and "sent 0" in archive.inner_text()
            assert "by web:admin" in archive.inner_text()
            actions = page.locator("#actions").inner_text()
            assert "requeued" in actions and "paused" in actions and "web:admin" in actions
            assert page.locator("#queue").inner_text().count("worker process killed") == 0
            assert "check-config:" in page.locator("#configuration").inner_text()
            for secret in ("PatientName", "^"):
                assert secret not in study.inner_text()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
            worker.stop()
    assert not foreign, f"the page requested something beyond 127.0.0.1:{web_port}: {foreign}"
    assert node.status()["destinations"]["archive"].get("pending") == 1  # still held by the pause
