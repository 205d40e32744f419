"""A real local federation for tests: processes started by the CLI, each in its own session and stopped by
process group, pass or fail."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
quantiles = []   # means and SDs: done before the Cox fits' Newton steps (a node is killed during them)

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
"""Lung survival: describe, Kaplan–Meier by sex, Cox pooled and within hospital (all lung demo sites compute it)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def workbench(*args: str | Path, **options) -> list[str]:
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


def start_coordinator(processes: Processes, certs: Path, port: int, state: Path, scratch: Path) -> None:
    """`workbench coordinator start` on localhost, its temporary files in `scratch`; returns once every node key
    in `certs/nodes` is registered."""
    processes.start("coordinator", workbench("coordinator", "start", "--certs", certs, "--host", "127.0.0.1",
                                             "--port", port, "--state", state),
                    env={**os.environ, "TMPDIR": str(scratch)})  # fmt: skip
    sites = ", ".join(sorted(key.stem for key in (certs / "nodes").glob("*.pub")))
    wait_for(lambda: f"registered: {sites};" in processes.log("coordinator"), 90)


def start_node(processes: Processes, site: str, folder: Path, port: int, certs: Path) -> None:
    processes.start(site, workbench("node", "start", "--site", folder, "--superlink", f"127.0.0.1:{port}",
                                     "--root-cert", certs / "ca.crt", "--key", certs / "nodes" / site,
                                     "--port", free_port()))  # fmt: skip
    wait_for(lambda: "SuperNode ID" in processes.log(site), 60)
    assert "node: quick runtime (Flower 1.42.0 internals)" in processes.log(site)


def wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the federation")
        time.sleep(0.5)
