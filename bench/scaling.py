"""Scaling: a survival suite (Kaplan–Meier + log-rank + Cox) against the number of sites.

ACTG 175 (2,139 real patients) is dealt at random into 5, 20, 67 and 200 site folders;
`workbench run` executes the suite on the Flower simulation engine. Printed per
site count: wall time of the whole command (Python and Ray start included), time of
the study itself (first round to last), rounds, and the peak resident memory of the
command's whole process tree (Ray workers included, sampled every 250 ms: walking the process table
every 50 ms cost the measured command ~1 s on 2 cores); then the
same suite in this process without Flower; pooled lifelines on the same rows, measured right
before each run, and the median over the runs of the command's time as a multiple of it. Sites use the
default policy (minimum count 5; under secure aggregation it applies to the published totals).

With `--baseline REV`, the same site counts are then run by revision REV's own copy of this
benchmark (checked out into a temporary git worktree, same Python environment), so a change is
measured side by side with what it replaced.

    python bench/scaling.py [--sites 5 20 67 200] [--repeat N] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from actg_sites import COVARIATES, SUITE, approved, site_folders
from baseline import run_own_copy
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

from analyses.driver import run_in_memory
from workbench import protocol as protocols
from workbench.datasets import actg175, partition

PROTOCOL = '[study]\nid = "actg175-scaling"\ntitle = "Survival suite on ACTG 175"\n' + SUITE


def peak_tree_rss(process: subprocess.Popen[bytes], every: float = 0.25) -> list[int]:
    """Sample the process tree's total RSS until it exits; returns [peak bytes]."""
    peak = [0]

    def sample() -> None:
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    process.wait()
    thread.join()
    return peak


def flower(rows, count: int, folder: Path) -> dict[str, float]:
    sites = site_folders(rows, count, folder)
    study = approved(PROTOCOL, sites, folder / "protocol.toml")
    paths = [arg for site in sites for arg in ("--site", str(site))]
    command = [sys.executable, "-m", "workbench.cli", "run", str(folder / "protocol.toml"), *paths,
               "--out", str(folder / "out"), "--quiet"]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = peak_tree_rss(process)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{count} sites failed: {process.stderr.read().decode() if process.stderr else ''}")
    results = json.loads((folder / "out" / "results.json").read_text())
    failed = {key: value["error"] for key, value in results["analyses"].items() if "error" in value}
    if failed:
        raise SystemExit(f"{count} sites: {failed}")
    return {"wall": wall, "study": results["seconds"], "rounds": results["rounds"], "peak_mb": peak[0] / 2**20,
            "in_memory": in_memory(rows, count, study)}  # fmt: skip


def in_memory(rows, sites: int, study: protocols.Protocol) -> float:
    frames = partition(rows, sites)
    started = time.perf_counter()
    run_in_memory(study.analyses, frames, study.levels)
    return time.perf_counter() - started


def pooled(rows) -> float:
    """Median of 5 timed runs of the suite in lifelines on the pooled rows (after one untimed run)."""
    seconds = []
    for _ in range(6):
        started = time.perf_counter()
        for _, group in rows.groupby("arms"):
            KaplanMeierFitter().fit(group.days, group.cens)
        multivariate_logrank_test(rows.days, rows.arms, rows.cens)
        CoxPHFitter().fit(rows[["days", "cens", *COVARIATES]], "days", "cens")
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[5, 20, 67, 200])
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per site count; the median run (by wall time) is shown"
    )
    parser.add_argument("--baseline", metavar="REV", help="also run this git revision's benchmark, side by side")
    args = parser.parse_args()
    rows = actg175()
    print(
        f"# scaling benchmark - {len(rows)} ACTG 175 patients, KM + log-rank (4 arms) + Cox ({len(COVARIATES)} covariates)"
    )
    print(f"# Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Flower simulation (Ray backend, 1 CPU per node); "
          "secure aggregation; nodes enforce the default policy, differencing guard and fsynced audit log")  # fmt: skip
    references = [pooled(rows)]
    print(f"pooled lifelines (KM per arm + log-rank + CoxPHFitter) on the same rows: {references[0]:.3f} s", flush=True)
    print(f"{'sites':>6} {'rows/site':>9} {'rounds':>6} {'command s':>9} {'× pooled':>8} {'study s':>8} {'peak MiB':>9} "
          f"{'no-Flower s':>11}")  # fmt: skip
    for sites in args.sites:
        runs = []
        for _ in range(args.repeat):
            reference = pooled(rows)  # measured next to each run: the machine's speed drifts between runs
            references.append(reference)
            with tempfile.TemporaryDirectory() as folder:
                runs.append({**flower(rows, sites, Path(folder)), "reference": reference})
        f = sorted(runs, key=lambda run: run["wall"])[len(runs) // 2]
        ratio = statistics.median(run["wall"] / run["reference"] for run in runs)
        print(f"{sites:>6} {len(rows) / sites:>9.1f} {f['rounds']:>6} {f['wall']:>9.1f} {ratio:>8.0f} "
              f"{f['study']:>8.1f} {f['peak_mb']:>9.0f} {f['in_memory']:>11.2f}", flush=True)  # fmt: skip
    print(f"pooled lifelines, every measurement: {', '.join(f'{value:.3f}' for value in references)} s")
    if args.baseline:
        run_own_copy(args.baseline, "scaling.py", ["--sites", *map(str, args.sites)])


if __name__ == "__main__":
    main()
