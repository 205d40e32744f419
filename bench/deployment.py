"""Round trips on the deployment engine vs the embedded simulation, 3 and 10 hospitals on localhost.

ACTG 175 is dealt into N site folders that approve a protocol with one describe and one Cox model
(3 covariates); it runs once on the simulation (`workbench run --site`) and once over a SuperLink
and N SuperNodes started as real processes (TLS, node authentication, secure aggregation). Printed:
the median wall time of a query round (after the first), the Cox fit (all its rounds) and the
whole command, from the coordinator's transcript.

    python bench/deployment.py [--sites 3 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from actg_sites import approved, site_folders
from baseline import run_own_copy

from workbench.datasets import actg175

PROTOCOL = """
[study]
id = "actg175-deployment"
title = "Round trips"

[[analysis]]
id = "describe"
type = "describe"
variables = ["age"]

[[analysis]]
id = "cox"
type = "cox"
duration = "days"
event = "cens"
covariates = ["age", "karnof", "cd40"]
"""


def workbench(*args: object) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", *map(str, args)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timings(out: Path, wall: float) -> dict[str, float]:
    attempts = [a for a in json.loads((out / "transcript" / "index.json").read_text()) if a["mode"] != "keys"]
    return {"rounds": len(attempts), "round": float(np.median([a["seconds"] for a in attempts[1:]])),
            "cox": sum(a["seconds"] for a in attempts), "wall": wall}  # fmt: skip


def measure(count: int, folder: Path) -> dict[str, dict[str, float]]:
    sites = site_folders(actg175(), count, folder)
    approved(PROTOCOL, sites, folder / "protocol.toml")
    started = time.perf_counter()
    subprocess.run(workbench("run", folder / "protocol.toml", *[a for s in sites for a in ("--site", s)],
                             "--out", folder / "simulated", "--quiet"), check=True)  # fmt: skip
    result = {"simulation": timings(folder / "simulated", time.perf_counter() - started)}
    certs, port, running = folder / "certs", free_port(), []
    subprocess.run(workbench("certs", "init", "--out", certs, "--sites", ",".join(s.name for s in sites)), check=True,
                   capture_output=True)  # fmt: skip
    researcher = _researcher_key(certs)

    def start(command: list[str], log: Path) -> Path:
        running.append(
            subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        )
        return log

    def wait_for(log: Path, text: str) -> None:
        deadline = time.monotonic() + 120
        while text not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{log.name}: '{text}' did not appear")
            time.sleep(0.5)

    try:
        wait_for(start(workbench("coordinator", "start", "--certs", certs, "--host", "127.0.0.1", "--port", port,
                                 "--state", folder / "coordinator"), folder / "coordinator.log"), "registered:")  # fmt: skip
        for site in sites:
            log = start(workbench("node", "start", "--site", site, "--superlink", f"127.0.0.1:{port}", "--root-cert",
                                  certs / "ca.crt", "--key", certs / "nodes" / site.name, "--port", free_port()),
                        folder / f"{site.name}.log")  # fmt: skip
            wait_for(log, "SuperNode ID")
        started = time.perf_counter()
        subprocess.run(workbench("run", folder / "protocol.toml", "--superlink", f"127.0.0.1:{port}", "--root-cert",
                                 certs / "ca.crt", *researcher, "--nodes", count, "--out", folder / "deployed", "--quiet"),
                       check=True)  # fmt: skip
        result["deployment"] = timings(folder / "deployed", time.perf_counter() - started)
    finally:
        for process in running:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--baseline", metavar="REV", help="also run this git revision's benchmark, side by side")
    args = parser.parse_args()
    print(f"# deployment benchmark - ACTG 175, describe + Cox (3 covariates), Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, localhost, TLS + node authentication + secure aggregation")  # fmt: skip
    print(f"{'sites':>5} {'engine':<11} {'rounds':>6} {'round s':>8} {'Cox fit s':>9} {'command s':>9}")
    for count in args.sites:
        with tempfile.TemporaryDirectory() as name:
            for engine, t in measure(count, Path(name)).items():
                print(f"{count:>5} {engine:<11} {t['rounds']:>6} {t['round']:>8.2f} {t['cox']:>9.1f} {t['wall']:>9.1f}")

    if args.baseline:
        run_own_copy(args.baseline, "deployment.py", ["--sites", *map(str, args.sites)])


if __name__ == "__main__":
    main()


def _researcher_key(certs: Path) -> list[str | Path]:
    """`--key FILE` for a researcher registered at the coordinator (revisions before researcher keys: nothing)."""
    made = subprocess.run(workbench("certs", "researcher", "bench", "--out", certs / "researchers"),
                          capture_output=True, check=False)  # fmt: skip
    return ["--key", certs / "researchers" / "bench"] if made.returncode == 0 else []
