"""The Docker deployment kit (no Docker engine runs here, so the files are checked, not run)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from workbench.cli import _parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _compose(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _command(service: dict) -> list[str]:
    """The service's command with `${VAR:?…}` placeholders filled in."""
    return [re.sub(r"\$\{[^}]+\}", "value", part) for part in service["command"]]


def test_the_coordinator_publishes_one_port_and_reads_certificates_read_only():
    service = _compose("docker-compose.coordinator.yml")["services"]["superlink"]
    assert service["ports"] == ["9092:9092"]
    certs = next(v for v in service["volumes"] if v["target"] == "/certs")
    assert certs["read_only"] is True
    arguments = _parser().parse_args(["coordinator", "start", *_command(service)])
    assert (arguments.port, arguments.host, str(arguments.certs)) == (9092, "0.0.0.0", "/certs")
    assert "flwr/superlink:1.42.0" in (DEPLOY / "coordinator.Dockerfile").read_text()


def test_a_node_only_dials_out_with_its_data_and_keys_read_only():
    service = _compose("docker-compose.node.yml")["services"]["node"]
    assert "ports" not in service  # nothing listens outside the hospital
    mounts = {v["target"]: v for v in service["volumes"]}
    assert (
        mounts["/site"]["read_only"] and mounts["/certs/ca.crt"]["read_only"] and mounts["/certs/node_key"]["read_only"]
    )
    assert not mounts["/site/state"].get("read_only")  # the audit log and ledgers are the node's to write
    arguments = _parser().parse_args(["node", "start", *_command(service)])
    assert (str(arguments.site), str(arguments.root_cert), str(arguments.key)) == (
        "/site",
        "/certs/ca.crt",
        "/certs/node_key",
    )
    assert "flwr/supernode:1.42.0" in (DEPLOY / "node.Dockerfile").read_text()
