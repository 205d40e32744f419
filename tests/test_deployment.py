"""The deployment engine with real processes on localhost: TLS, node authentication, failures.

A SuperLink and three SuperNodes run as separate processes, started by `workbench coordinator
start` and `workbench node start`; every process is stopped when the tests end, pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hospital_node import approvals
from hospital_node.audit import AuditLog
from hospital_node.site import open_site
from tests.conftest import roster
from workbench import demo
from workbench.protocol import parse

SITES = ["hospital-1", "hospital-2", "hospital-3"]
PROTOCOL = """
[study]
id = "deployed"
title = "Lung survival on the deployment engine"

[cohort]
table = "patients"

[variables]
sex = { levels = [1, 2] }

[[analysis]]
id = "baseline"
type = "describe"
variables = ["age"]

[[analysis]]
id = "km_sex"
type = "kaplan_meier"
duration = "time"
event = "status"
group = "sex"

[[analysis]]
id = "cox"
type = "cox"
duration = "time"
event = "status"
covariates = ["age", "sex", "ph.ecog"]

[[analysis]]
id = "cox_within_hospital"
type = "cox"
duration = "time"
event = "status"
covariates = ["age", "sex", "ph.ecog"]
strata = ["site"]
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _workbench(*args: str | Path, **options) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", *map(str, args)]


class Processes:
    """Processes started by the tests, each in its own session so its children stop with it."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.running = logs, {}

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.running[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=15)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    certs, logs = root / "certs", root / "logs"
    logs.mkdir()
    subprocess.run(_workbench("certs", "init", "--out", certs, "--sites", ",".join(SITES)), check=True)
    subprocess.run(_workbench("certs", "init", "--out", root / "other", "--sites", "intruder"), check=True)
    folders = demo.build_sites(root / "sites")[:3]
    text = PROTOCOL + roster(folders)
    (root / "protocol.toml").write_text(text)
    for folder in folders:
        approvals.approve(open_site(folder), parse(text), by="steward")
    port = _free_port()
    processes = Processes(logs)
    try:
        processes.start("coordinator", _workbench("coordinator", "start", "--certs", certs, "--host", "127.0.0.1",
                                                  "--port", port, "--state", root / "coordinator"))  # fmt: skip
        _wait_for(lambda: "registered: hospital-1, hospital-2, hospital-3" in processes.log("coordinator"), 90)
        for site, folder in zip(SITES, folders, strict=True):
            _start_node(processes, site, folder, port, certs)
        yield {"root": root, "certs": certs, "port": port, "folders": folders, "processes": processes}
    finally:
        processes.stop_all()


def _start_node(processes: Processes, site: str, folder: Path, port: int, certs: Path) -> None:
    processes.start(site, _workbench("node", "start", "--site", folder, "--superlink", f"127.0.0.1:{port}",
                                     "--root-cert", certs / "ca.crt", "--key", certs / "nodes" / site,
                                     "--port", _free_port()))  # fmt: skip
    _wait_for(lambda: "SuperNode ID" in processes.log(site), 60)
    assert "node: quick runtime (Flower 1.42.0 internals)" in processes.log(site)


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the federation")
        time.sleep(0.5)


def test_a_node_with_an_unregistered_key_is_refused(federation):
    processes, port = federation["processes"], federation["port"]
    intruder = processes.start("intruder", _workbench(
        "node", "start", "--site", federation["folders"][0], "--superlink", f"127.0.0.1:{port}",
        "--root-cert", federation["certs"] / "ca.crt", "--key", federation["root"] / "other" / "nodes" / "intruder",
        "--port", _free_port()))  # fmt: skip
    assert intruder.wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in processes.log("intruder")
    assert "SuperNode ID" not in processes.log("intruder")
    processes.running.pop("intruder")


def test_a_connection_without_tls_is_refused(federation):
    processes, port = federation["processes"], federation["port"]
    bin_dir = str(Path(sys.executable).parent)
    processes.start("plaintext", [str(Path(bin_dir) / "flower-supernode"), "--insecure", "--superlink",
                                  f"127.0.0.1:{port}", "--port", str(_free_port())],
                    env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})  # fmt: skip
    _wait_for(lambda: processes.log("plaintext").count("Connection attempt failed") >= 2, 60)
    assert "SuperNode ID" not in processes.log("plaintext")
    processes.stop("plaintext")


def test_a_dry_run_over_the_deployment_answers_per_analysis_and_releases_nothing(federation):
    command = _workbench("check", federation["root"] / "protocol.toml", "--superlink", f"127.0.0.1:{federation['port']}",
                         "--root-cert", federation["certs"] / "ca.crt", "--nodes", "3", "--timeout", 60)  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "at 3 site(s); secure aggregation" in done.stdout
    for analysis in ("baseline", "km_sex", "cox", "cox_within_hospital"):
        assert f"{analysis}" in done.stdout and "would refuse" not in done.stdout
    for folder in federation["folders"]:
        events = [entry["event"] for entry in AuditLog(open_site(folder).state).entries()]
        assert "check" in events and "release" not in events


def _run(federation, out: Path, timeout: int) -> subprocess.Popen:
    command = _workbench("run", federation["root"] / "protocol.toml", "--superlink", f"127.0.0.1:{federation['port']}",
                         "--root-cert", federation["certs"] / "ca.crt", "--nodes", "3", "--timeout", timeout,
                         "--out", out)  # fmt: skip
    return subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )


def test_a_node_killed_mid_cox_fails_only_what_it_must_and_a_rerun_equals_the_simulation(federation):
    root, processes = federation["root"], federation["processes"]
    study = _run(federation, root / "killed", timeout=30)
    lines = []
    for line in study.stderr:  # the ServerApp's log, streamed
        lines.append(line)
        if line.startswith("round 4:"):
            processes.stop("hospital-3")  # in the middle of the Cox fits' Newton steps
    assert study.wait(timeout=300) == 1, "".join(lines[-20:])
    killed = json.loads((root / "killed" / "results.json").read_text())
    for analysis in ("cox", "cox_within_hospital"):
        assert killed["analyses"][analysis]["error"].startswith("site hospital-3 stopped answering")
    assert killed["analyses"]["baseline"]["variables"]["age"]["n"] > 0  # finished before: kept
    assert "error" not in killed["analyses"]["km_sex"]
    for folder in federation["folders"]:
        assert AuditLog(open_site(folder).state).verify().ok
    _start_node(processes, "hospital-3", federation["folders"][2], federation["port"], federation["certs"])
    rerun = _run(federation, root / "rerun", timeout=120)
    assert rerun.wait(timeout=400) == 0, rerun.stderr.read()[-2000:]
    deployed = json.loads((root / "rerun" / "results.json").read_text())
    assert deployed["engine"] == "flower-deployment" and deployed["secure_aggregation"]["mode"] == "masked"
    simulated = subprocess.run(_workbench("run", root / "protocol.toml", *[a for f in federation["folders"] for a in ("--site", f)],
                                          "--out", root / "simulated", "--quiet"), capture_output=True, text=True)  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr
    assert json.loads((root / "simulated" / "results.json").read_text())["analyses"] == deployed["analyses"]
