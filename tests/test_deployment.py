"""The deployment engine with real processes on localhost: TLS, node authentication, failures.

A SuperLink and three SuperNodes run as separate processes, started by `workbench coordinator
start` and `workbench node start`; every process is stopped when the tests end, pass or fail.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hospital_node import approvals
from hospital_node.audit import AuditLog
from hospital_node.site import open_site
from tests.conftest import roster
from tests.federation import PROTOCOL, Processes, free_port, start_coordinator, start_node, wait_for, workbench
from workbench import demo
from workbench.protocol import parse

SITES = ["hospital-1", "hospital-2", "hospital-3"]

SECOND = """
[study]
id = "deployed-second"
title = "Weight loss and calories, submitted by a second researcher"

[cohort]
table = "patients"

[[analysis]]
id = "nutrition"
type = "describe"
variables = ["wt.loss", "meal.cal"]

[[analysis]]
id = "weight_loss"
type = "linear"
outcome = "wt.loss"
covariates = ["meal.cal"]
"""


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    certs, logs, scratch = root / "certs", root / "logs", root / "coordinator-tmp"
    logs.mkdir()
    scratch.mkdir()
    subprocess.run(workbench("certs", "init", "--out", certs, "--sites", ",".join(SITES)), check=True)
    subprocess.run(workbench("certs", "init", "--out", root / "other", "--sites", "intruder"), check=True)
    for name in ("alice", "bob"):
        subprocess.run(workbench("certs", "researcher", name, "--out", certs / "researchers"), check=True)
    subprocess.run(workbench("certs", "researcher", "mallory", "--out", root / "other" / "researchers"), check=True)
    folders = demo.build_sites(root / "sites")[:3]
    text = PROTOCOL + roster(folders)
    (root / "protocol.toml").write_text(text)
    second = SECOND + roster(folders)
    for folder in folders:
        approvals.approve(open_site(folder), parse(text), by="steward")
        approvals.approve(open_site(folder), parse(second), by="steward")
    # The researchers' laptop: its own folder, outside the coordinator's; with `unshare`, the command
    # there cannot even see the coordinator's folders (see _researcher).
    laptop = tmp_path_factory.mktemp("laptop")
    shutil.copy(certs / "ca.crt", laptop / "ca.crt")
    for name, folder in (("alice", certs / "researchers"), ("bob", certs / "researchers"),
                         ("mallory", root / "other" / "researchers")):  # fmt: skip
        shutil.copy(folder / name, laptop / name)
    (laptop / "protocol.toml").write_text(text)
    (laptop / "second.toml").write_text(second)
    port = free_port()
    processes = Processes(logs)
    try:
        start_coordinator(processes, certs, port, root / "coordinator", scratch)
        wait_for(lambda: "researchers: alice, bob" in processes.log("coordinator"), 30)
        for site, folder in zip(SITES, folders, strict=True):
            start_node(processes, site, folder, port, certs)
        yield {"root": root, "certs": certs, "port": port, "folders": folders, "processes": processes,
               "laptop": laptop}  # fmt: skip
    finally:
        processes.stop_all()


def _hiding_works() -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def _researcher(federation, *args: str | Path) -> tuple[list[str], dict[str, str]]:
    """`workbench ARGS` as run on the researcher's laptop: its own working folder, home and temporary
    files, and (where `unshare` may mount) with the coordinator's whole folder hidden behind an empty
    file system, so that nothing can pass through a shared disk."""
    laptop = federation["laptop"]
    (laptop / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(laptop), "FLWR_HOME": str(laptop / "flwr"), "TMPDIR": str(laptop / "tmp")}
    command = workbench(*args, "--superlink", f"127.0.0.1:{federation['port']}", "--root-cert", laptop / "ca.crt")
    if _hiding_works():
        hide = f'mount -t tmpfs tmpfs "{federation["root"]}" && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh", *command]
    return command, env


def test_a_node_with_an_unregistered_key_is_refused(federation):
    processes, port = federation["processes"], federation["port"]
    intruder = processes.start("intruder", workbench(
        "node", "start", "--site", federation["folders"][0], "--superlink", f"127.0.0.1:{port}",
        "--root-cert", federation["certs"] / "ca.crt", "--key", federation["root"] / "other" / "nodes" / "intruder",
        "--port", free_port()))  # fmt: skip
    assert intruder.wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in processes.log("intruder")
    assert "SuperNode ID" not in processes.log("intruder")
    processes.running.pop("intruder")


def test_a_connection_without_tls_is_refused(federation):
    processes, port = federation["processes"], federation["port"]
    bin_dir = str(Path(sys.executable).parent)
    processes.start("plaintext", [str(Path(bin_dir) / "flower-supernode"), "--insecure", "--superlink",
                                  f"127.0.0.1:{port}", "--port", str(free_port())],
                    env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})  # fmt: skip
    wait_for(lambda: processes.log("plaintext").count("Connection attempt failed") >= 2, 60)
    assert "SuperNode ID" not in processes.log("plaintext")
    processes.stop("plaintext")


def test_a_dry_run_over_the_deployment_answers_per_analysis_and_releases_nothing(federation):
    laptop = federation["laptop"]
    command, env = _researcher(federation, "check", "protocol.toml", "--key", "alice", "--nodes", "3", "--timeout", 60)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=laptop, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "at 3 site(s); secure aggregation" in done.stdout
    for analysis in ("baseline", "km_sex", "cox", "cox_within_hospital"):
        assert f"{analysis}" in done.stdout and "would refuse" not in done.stdout
    for folder in federation["folders"]:
        events = [entry["event"] for entry in AuditLog(open_site(folder).state).entries()]
        assert "check" in events and "release" not in events


def _run(federation, out: str, timeout: int, protocol: str = "protocol.toml", key: str = "alice") -> subprocess.Popen:
    """The researcher's `workbench run` on the laptop, results to the laptop's folder `out`."""
    command, env = _researcher(federation, "run", protocol, "--key", key, "--nodes", "3", "--timeout", timeout,
                               "--out", out)  # fmt: skip
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True, cwd=federation["laptop"], env=env)  # fmt: skip


def test_an_unregistered_researcher_is_refused_and_no_site_is_asked(federation):
    before = [len(AuditLog(open_site(folder).state).entries()) for folder in federation["folders"]]
    study = _run(federation, "mallory-out", timeout=30, key="mallory")
    assert study.wait(timeout=300) == 2
    last = study.stderr.read().strip().splitlines()[-1]
    assert last.startswith("error: the coordinator refused the request:") and "is not registered" in last
    assert not (federation["laptop"] / "mallory-out").exists()
    assert [len(AuditLog(open_site(folder).state).entries()) for folder in federation["folders"]] == before


def test_a_node_killed_mid_cox_fails_only_what_it_must_and_a_rerun_equals_the_simulation(federation):
    root, processes = federation["root"], federation["processes"]
    laptop = federation["laptop"]
    study = _run(federation, "killed", timeout=30)
    lines = []
    for line in study.stderr:  # the ServerApp's log, streamed
        lines.append(line)
        if line.startswith("round 4:"):
            processes.stop("hospital-3")  # in the middle of the Cox fits' Newton steps
    assert study.wait(timeout=300) == 1, "".join(lines[-20:])
    killed = json.loads((laptop / "killed" / "results.json").read_text())
    for analysis in ("cox", "cox_within_hospital"):
        assert killed["analyses"][analysis]["error"].startswith("site hospital-3 stopped answering")
    assert killed["analyses"]["baseline"]["variables"]["age"]["n"] > 0  # finished before: kept
    assert "error" not in killed["analyses"]["km_sex"]
    for folder in federation["folders"]:
        assert AuditLog(open_site(folder).state).verify().ok
    start_node(processes, "hospital-3", federation["folders"][2], federation["port"], federation["certs"])
    rerun = _run(federation, "rerun", timeout=120)
    assert rerun.wait(timeout=400) == 0, rerun.stderr.read()[-2000:]
    deployed = json.loads((laptop / "rerun" / "results.json").read_text())
    assert deployed["engine"] == "flower-deployment" and deployed["secure_aggregation"]["mode"] == "masked"
    assert deployed["requested_by"] == "alice"
    assert (laptop / "rerun" / "transcript" / "received.npz").is_file() and not (
        laptop / "rerun" / "status.json"
    ).exists()
    requests = [e for e in AuditLog(open_site(federation["folders"][0]).state).entries() if e["event"] == "request"]
    assert requests[-1]["requested_by"].startswith("alice (Flower run ")
    simulated = subprocess.run(workbench("run", root / "protocol.toml", *[a for f in federation["folders"] for a in ("--site", f)],
                                          "--out", root / "simulated", "--quiet"), capture_output=True, text=True)  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr
    assert json.loads((root / "simulated" / "results.json").read_text())["analyses"] == deployed["analyses"]


def test_two_researchers_studies_at_once_equal_each_study_run_alone(federation):
    root, laptop, folders = federation["root"], federation["laptop"], federation["folders"]
    first = _run(federation, "together-1", timeout=120)
    second = _run(federation, "together-2", timeout=120, protocol="second.toml", key="bob")
    assert first.wait(timeout=400) == 0, first.stderr.read()[-2000:]
    assert second.wait(timeout=400) == 0, second.stderr.read()[-2000:]
    sites = [a for f in folders for a in ("--site", f)]
    for out, protocol, who in (("together-1", "protocol.toml", "alice"), ("together-2", "second.toml", "bob")):
        together = json.loads((laptop / out / "results.json").read_text())
        assert together["requested_by"] == who
        alone = subprocess.run(workbench("run", laptop / protocol, *sites, "--out", root / f"alone-{out}", "--quiet"),
                               capture_output=True, text=True, check=False)  # fmt: skip
        assert alone.returncode == 0, alone.stderr
        assert json.loads((root / f"alone-{out}" / "results.json").read_text())["analyses"] == together["analyses"]
        # Each transcript holds its own study's rounds only: as many as the study run alone.
        rounds = [len(json.loads((folder / "transcript" / "index.json").read_text()))
                  for folder in (laptop / out, root / f"alone-{out}")]  # fmt: skip
        assert rounds[0] == rounds[1]
    interleaved = 0
    for folder in folders:
        log = AuditLog(open_site(folder).state)
        assert log.verify().ok
        requests = [e["study"] for e in log.entries() if e["event"] == "request"][-40:]
        changes = sum(1 for a, b in itertools.pairwise(requests) if a != b)
        interleaved += changes > 1  # A … B … A: the two studies' rounds alternated at this node
        assert {"deployed", "deployed-second"} <= {e["study"] for e in log.entries() if e["event"] == "release"}
    assert interleaved, "the two studies did not run at the same time"
