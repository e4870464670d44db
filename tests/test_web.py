"""The status page over real HTTP on 127.0.0.1 (no browser; tests/test_web_browser.py has one):
read-only without users, login + CSRF-guarded actions with users, no patient data, thumbnails,
and the check-config errors of the file on disk."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from node.config import Config, parse_config
from node.registry import Database, DestinationState, Event, Job, Patient, Result, Series, Study
from node.web import server as web
from node.web.auth import hash_password, verify_password
from tests.conftest import free_port
from tests.test_dispatch import make_sc

PASSWORD = "correct horse battery"
PHI = ("SECRET^PATIENTNAME", "PID-SECRET-4711", "19610203", "ACC-SECRET-99")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'hipnode.db'}")
    database.migrate()
    yield database
    database.dispose()


def _registry(db: Database, results: Path) -> dict[str, int | str]:
    """A study with a patient's identity in the registry, an SR with findings, an SC, a failed job."""
    with db.session() as s:
        p = Patient(patient_id=PHI[1], name=PHI[0], birth_date=PHI[2])
        s.add(p)
        s.flush()
        st = Study(study_uid=generate_uid(), patient_pk=p.id, study_date="20260314", accession_number=PHI[3])
        s.add(st)
        s.flush()
        se = Series(series_uid=generate_uid(), study_pk=st.id, modality="DX", calling_ae="MODALITY",
                    state="complete", generation=1)
        s.add(se)
        s.flush()
        job = Job(series_pk=se.id, generation=1, state="failed", attempts=3, reason="worker lost")
        s.add(job)
        s.flush()
        payload = {"images": [{"view": "ap_pelvis", "low_confidence": False, "screened_out": None, "hips": [
            {"side": "R", "implant": True, "inclination_deg": 41.25, "anteversion_deg": 17.5, "lce_deg": None,
             "morphology": {"dysplasia": 0.1}},
            {"side": "L", "implant": False, "lce_deg": 31.0, "morphology": {"dysplasia": 0.8}}]}]}
        s.add(Result(job_pk=job.id, series_pk=se.id, kind="sr", sop_instance_uid=generate_uid(),
                     sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", path="sr.dcm", payload=payload))
        uid = make_sc(results / "sc.dcm", st.study_uid, se.series_uid, 3)
        sc = Result(job_pk=job.id, series_pk=se.id, kind="sc", sop_instance_uid=uid,
                     sop_class_uid=SecondaryCaptureImageStorage, path="sc.dcm")
        s.add(sc)
        s.flush()
        return {"job": job.id, "sc": sc.id, "series_uid": se.series_uid}


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""

    def request(self, method: str, path: str, form: dict[str, object] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        rsp = conn.getresponse()
        data = rsp.read()
        hdrs = {k.lower(): v for k, v in rsp.getheaders()}
        conn.close()
        if "set-cookie" in hdrs:
            self.cookie = hdrs["set-cookie"].split(";", 1)[0]
        return rsp.status, hdrs, data


def _start(db: Database, tmp_path: Path, users: list[dict[str, str]] | None = None) -> tuple[web.WebHandle, Config, Path]:
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    raw = {
        "database": {"url": db.url},
        "outputs": {"root": str(results)},
        "storage": {"root": str(tmp_path / "storage")},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "calling_aes": [{"ae_title": "MODALITY", "priority": 5}],
        "routing": [{"match": {"modality": "DX"}, "destinations": ["pacs"]}],
        "web": {"port": free_port(), "users": users or []},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    handle = web.serve(cfg, db, path)
    assert handle is not None
    return handle, cfg, path


def test_password_hash_round_trip() -> None:
    h = hash_password("s3cret-pass", iterations=100_000)
    assert h.startswith("pbkdf2_sha256$100000$") and verify_password("s3cret-pass", h)
    assert not verify_password("s3cret-pasS", h) and not verify_password("x", "garbage")
    with pytest.raises(Exception, match="pbkdf2_sha256"):
        parse_config({"web": {"users": [{"name": "a", "password_hash": "plain"}]}})


def test_read_only_page_shows_state_without_patient_data(db: Database, tmp_path: Path) -> None:
    handle, _, path = _start(db, tmp_path)
    made = _registry(db, tmp_path / "results")
    try:
        client = Client(handle.port)
        status, headers, body = client.request("GET", "/")
        page = body.decode()
        assert status == 200 and "default-src 'none'" in headers["content-security-policy"]
        for needle in ("Health", "Recent studies", "2026-03-14", "inclination 41.2°", "anteversion 17.5°",
                       "LCE 31.0°", "flags: dysplasia", f'src="/thumb/{made["sc"]}.png"', "worker lost",
                       "PACS@127.0.0.1:104", "check-config:", ": OK", "MODALITY", "modality = DX", "read-only"):
            assert needle in page, needle
        for secret in PHI:
            assert secret not in page
        assert "<form" not in page and "<script" not in page
        status, headers, png = client.request("GET", f"/thumb/{made['sc']}.png")
        assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")
        assert client.request("GET", "/thumb/99999.png")[0] == 404
        status, _, _ = client.request("POST", "/action/pause", {"destination": "pacs"})
        assert status == 403
        with db.session() as s:
            assert s.scalar(select(DestinationState)) is None
        # an edit to the file on disk shows up as check-config would print it
        path.write_text(path.read_text().replace("port: 104", "port: 70000"))
        page = client.request("GET", "/")[2].decode()
        assert "check-config: 1 error(s)" in page and "destinations[0].port: must be 1-65535" in page
    finally:
        web.stop(handle)


def test_login_csrf_and_actions(db: Database, tmp_path: Path) -> None:
    users = [{"name": "admin", "password_hash": hash_password(PASSWORD, iterations=100_000)}]
    handle, _, _ = _start(db, tmp_path, users)
    made = _registry(db, tmp_path / "results")
    try:
        client = Client(handle.port)
        status, headers, _ = client.request("GET", "/")
        assert status == 303 and headers["location"] == "/login"
        assert client.request("GET", f"/thumb/{made['sc']}.png")[0] == 303
        status, _, body = client.request("POST", "/login", {"name": "admin", "password": "wrong"})
        assert status == 401 and b"wrong user or password" in body and not client.cookie
        status, headers, _ = client.request("POST", "/login", {"name": "admin", "password": PASSWORD})
        assert status == 303 and "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        page = client.request("GET", "/")[2].decode()
        assert "logged in as <b>admin</b>" in page and "Re-queue" in page and "Pause" in page
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None

        status, _, _ = client.request("POST", "/action/pause", {"destination": "pacs"})  # no token
        assert status == 403
        status, _, _ = client.request("POST", "/action/pause", {"destination": "pacs", "csrf": "forged"})
        assert status == 403
        forged = Client(handle.port)  # a valid-looking token without the session cookie
        assert forged.request("POST", "/action/pause", {"destination": "pacs", "csrf": token[1]})[0] == 303
        with db.session() as s:
            assert s.scalar(select(DestinationState)) is None

        status, headers, _ = client.request("POST", "/action/pause", {"destination": "pacs", "csrf": token[1]})
        assert status == 303 and "destination+pacs+paused" in headers["location"]
        status, headers, _ = client.request("POST", "/action/requeue", {"job": made["job"], "csrf": token[1]})
        assert "re-queued" in urllib.parse.unquote_plus(headers["location"])
        page = client.request("GET", headers["location"])[2].decode()
        assert f"job {made['job']} re-queued (was failed)" in page
        assert '<span class="state paused">paused</span> by web:admin' in page and "Resume" in page
        status, headers, _ = client.request("POST", "/action/requeue", {"job": made["job"], "csrf": token[1]})
        assert "refused" in urllib.parse.unquote_plus(headers["location"])
        with db.session() as s:
            assert s.get_one(Job, int(made["job"])).state == "queued"
            actors = {(e.kind, (e.detail or {}).get("actor")) for e in s.scalars(select(Event))}
        assert {("paused", "web:admin"), ("requeued", "web:admin")} <= actors

        client.request("POST", "/logout", {"csrf": token[1]})
        assert client.request("GET", "/")[0] == 303
    finally:
        web.stop(handle)


def test_port_in_use_is_logged_and_the_node_runs_on(db: Database, tmp_path: Path) -> None:
    handle, cfg, path = _start(db, tmp_path)
    try:
        assert web.serve(cfg, db, path) is None
    finally:
        web.stop(handle)
