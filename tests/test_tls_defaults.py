"""Secure defaults (issue 13): TLS to a PACS verifies it unless the site opts out, explicitly
and logged; check-config finds missing certificate files before the node needs them."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.config import Destination, TLSConfig
from node.dispatch import _tls_args


def test_tls_to_a_destination_verifies_by_default(caplog: pytest.LogCaptureFixture) -> None:
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104, tls=TLSConfig(enabled=True))
    args = _tls_args(dest)
    assert args is not None
    ctx, host = args
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname and host == "127.0.0.1"

    optout = Destination(name="self-signed", ae_title="PACS", host="127.0.0.1", port=104,
                         tls=TLSConfig(enabled=True, verify_peer=False))
    with caplog.at_level(logging.WARNING, logger="node.dispatch"):
        for _ in range(3):
            args = _tls_args(optout)
            assert args is not None and args[0].verify_mode is ssl.CERT_NONE
    warned = [r for r in caplog.records if "does not verify" in r.getMessage()]
    assert len(warned) == 1 and "self-signed" in warned[0].getMessage()


def test_the_receiver_asks_no_client_certificate_by_default() -> None:
    assert TLSConfig(enabled=True).verify_peer is None  # the SCP reads None as "no"
    with pytest.raises(ValueError, match="ca_file is required"):
        TLSConfig(enabled=True, verify_peer=True)


def test_check_config_names_missing_certificate_files(tmp_path: Path) -> None:
    cert = tmp_path / "present.pem"
    cert.write_text("not checked for content here")
    cfg = {
        "node": {"tls": {"enabled": True, "cert_file": str(cert), "key_file": str(tmp_path / "gone.key")}},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                          "tls": {"enabled": True, "ca_file": str(tmp_path / "ca.pem")}}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "node.cli", "--config", str(path), "check-config"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "node.tls.key_file" in out.stdout and "destinations[0].tls.ca_file" in out.stdout
    assert "node.tls.cert_file" not in out.stdout
