"""Configuration validation and the check-config command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_equals_embedded_defaults() -> None:
    """config.yaml documents the defaults: loading it must give exactly the embedded ones."""
    assert load_config(ROOT / "config.yaml") == Config()


def test_every_error_is_reported_with_its_key_path() -> None:
    data = {
        "node": {"port": 0, "max_pdu": 100, "ae_title": "X" * 17},
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            {"name": "bad", "ae_title": "B", "host": "127.0.0.1", "port": 70000},
        ],
        "routing": [{"destinations": ["nowhere"]}],
        "jobs": {"lease_s": 10, "heartbeat_s": 20},
        "unknown_key": 1,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    errors = info.value.errors
    assert "node.port: must be 1-65535" in errors
    assert "node.max_pdu: must be 0 (the default, 1048576) or 4096-16777216" in errors
    assert "node.ae_title: must be 1-16 printable characters without backslash" in errors
    assert "destinations[1].port: must be 1-65535" in errors
    assert "routing[0].destinations: unknown destination 'nowhere'" in errors
    assert any(e.startswith("jobs: heartbeat_s must be shorter") for e in errors)
    assert any(e.startswith("unknown_key:") for e in errors)


def test_receive_limits_are_finite_by_default() -> None:
    """Every bound on what a peer can make the receiver hold has a finite default; the old
    "0 = unlimited PDU" still loads, as the default, because PDUs are never unlimited now."""
    node = Config().node
    assert node.max_pdu == 1048576
    assert (node.max_dataset_mb, node.max_inflated_mb, node.tls.handshake_timeout_s) == (2048, 256, 10)
    assert parse_config({"node": {"max_pdu": 0}}).node.max_pdu == 1048576
    assert parse_config({"node": {"max_pdu": 65536}}).node.max_pdu == 65536
    with pytest.raises(ConfigError) as info:
        parse_config({"node": {"max_pdu": 2**31, "max_dataset_mb": 0, "tls": {"handshake_timeout_s": -1}}})
    errors = "\n".join(info.value.errors)
    assert "node.max_pdu: must be 0 (the default, 1048576) or 4096-16777216" in errors
    assert "node.max_dataset_mb:" in errors and "node.tls.handshake_timeout_s:" in errors
    assert node.connection_limit == 4 * node.max_associations
    assert parse_config({"node": {"max_connections": 20}}).node.connection_limit == 20
    with pytest.raises(ConfigError) as small:
        parse_config({"node": {"max_associations": 10, "max_connections": 5}})
    assert small.value.errors == ["node: max_connections must be at least max_associations"]


def test_per_ae_quiet_period_and_lookup() -> None:
    cfg = parse_config(
        {"calling_aes": [{"ae_title": "CR1", "quiet_period_s": 2}], "series": {"quiet_period_s": 9}}
    )
    assert cfg.quiet_period_for("CR1") == 2
    assert cfg.quiet_period_for("OTHER") == 9
    assert cfg.quiet_period_for(None) == 9


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"destinations": [{"name": "a", "ae_title": "A", "host": "h", "port": 99999}]})
    )
    run = subprocess.run(
        [sys.executable, "-m", "node.cli", "--config", str(bad), "check-config"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "destinations[0].port: must be 1-65535" in run.stdout
    good = subprocess.run(
        [sys.executable, "-m", "node.cli", "check-config", "--config", str(ROOT / "config.yaml")],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK" in good.stdout


def test_deploy_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "deploy" / "config.example.yaml")
    assert cfg.database.url.startswith("postgresql://")
    assert not cfg.allow_any_calling_ae and cfg.destination("pacs").verify_with_cfind
