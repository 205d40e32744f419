"""How long the light commands take: a data steward's `workbench node …` and a researcher's `validate`.

Each command runs 5 times in a fresh process on one demo hospital (wall time, median), as a user
types it; approving covers a protocol with a DP training (whose review lists the model's
weights). With `--baseline REV`, the same commands of git revision REV run right after, from a
temporary worktree with this Python environment.

    python bench/commands.py [--baseline REV]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import checkout, environment

from workbench import demo

REPEATS = 5
PROTOCOL = """[study]
id = "latency"
title = "Command latency"

[[analysis]]
id = "baseline"
type = "describe"
variables = ["age", "wt.loss"]

[[training]]
id = "death"
task = "tabular_classification"
outcome = "status"
features = ["age", "sex", "ph.ecog"]
model = "logistic"
[training.privacy]
target_epsilon = 3.0
"""
"""Valid for this checkout and earlier revisions alike, with a DP training, as studies have."""


def measure(site: Path, protocol: Path, env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Median wall seconds of each command (approve on a fresh copy of the site each time)."""
    commands = {
        "node identity": ["node", "identity", "--site", str(site)],
        "validate": ["validate", str(protocol)],
        "node approve --yes": ["node", "approve", str(protocol), "--site", "{copy}", "--yes"],
        "node audit verify": ["node", "audit", "verify", "--site", str(site)],
    }
    timings = {}
    for name, arguments in commands.items():
        seconds = []
        for attempt in range(REPEATS):
            copy = site.parent / f"copy-{attempt}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(site, copy)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "workbench.cli", *[a.replace("{copy}", str(copy)) for a in arguments]],
                                  capture_output=True, text=True, env=env, cwd=cwd)  # fmt: skip
            seconds.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr[-500:]}")
        timings[name] = statistics.median(seconds)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="also time this git revision's commands, side by side")
    args = parser.parse_args()
    print(f"# command latency - Python {platform.python_version()}, {os.cpu_count()} CPUs, median of {REPEATS} runs")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        site = demo.build_sites(folder / "sites")[0]
        protocol = folder / "protocol.toml"
        protocol.write_text(PROTOCOL + demo.roster([site]), encoding="utf-8")
        rows = {"this checkout": measure(site, protocol, dict(os.environ), Path.cwd())}
        if args.baseline:
            with checkout(args.baseline) as tree:
                rows[args.baseline] = measure(site, protocol, environment(tree), tree)
    names = list(next(iter(rows.values())))
    print(f"{'revision':<16}" + "".join(f"{name:>22}" for name in names))
    for revision, timings in rows.items():
        print(f"{revision:<16}" + "".join(f"{timings[name]:>21.2f}s" for name in names))


if __name__ == "__main__":
    main()
