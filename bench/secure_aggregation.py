"""Cost of exact secure aggregation: round time and bytes per site, masked vs in the clear.

ACTG 175 (2,139 patients) is dealt into 3, 10, 20 and 67 site folders that approve a survival
suite (Kaplan–Meier + log-rank + Cox, 3 covariates); `workbench run` executes it on the Flower
simulation engine twice: with secure aggregation, and with `secure_aggregation = false`.
Printed per site count and mode: the median wall time of a data round after the first (the
first absorbs Ray starting the node actors), the key rounds, the arrays a site sends per data
round (mean bytes), and the total; read from the coordinator's transcript.

    python bench/secure_aggregation.py [--sites 3 10 20 67]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from actg_sites import CLEAR_POLICY, SUITE, approved, site_folders
from baseline import run_own_copy

from workbench.datasets import actg175

HEADER = '[study]\nid = "actg175-secure-aggregation"\ntitle = "Survival suite on ACTG 175"\n'


def run(folder: Path, sites: list[Path], secure: bool) -> dict[str, float]:
    path = folder / f"protocol-{secure}.toml"
    approved(HEADER + ("" if secure else "[privacy]\nsecure_aggregation = false\n") + SUITE, sites, path)
    out = folder / f"out-{secure}"
    arguments = [arg for site in sites for arg in ("--site", str(site))]
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "run", str(path), *arguments, "--out", str(out), "--quiet"],
                          check=False, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    attempts = json.loads((out / "transcript" / "index.json").read_text())
    data = [a for a in attempts if a["mode"] != "keys"]
    keys = [a for a in attempts if a["mode"] == "keys"]
    results = json.loads((out / "results.json").read_text())
    return {
        "round": float(np.median([a["seconds"] for a in data[1:]])),
        "keys": sum(a["seconds"] for a in keys),
        "rounds": len(data),
        "bytes": float(np.mean([a["bytes_per_site"] for a in data])),
        "study": results["seconds"],
        "mode": results["secure_aggregation"]["mode"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 20, 67])
    parser.add_argument("--baseline", metavar="REV", help="also run this git revision's benchmark, side by side")
    args = parser.parse_args()
    rows = actg175()
    print(f"# secure aggregation benchmark - {len(rows)} ACTG 175 patients, KM + log-rank + Cox (3 covariates)")
    print(f"# Python {platform.python_version()}, {os.cpu_count()} CPUs, Flower simulation (Ray, 1 CPU per node)")
    print(f"{'sites':>5} {'mode':>7} {'rounds':>6} {'round s':>8} {'key rounds s':>12} {'KiB/site/round':>14} "
          f"{'study s':>8} {'round ratio':>11}")  # fmt: skip
    for count in args.sites:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            sites = site_folders(rows, count, folder, CLEAR_POLICY)
            clear = run(folder, sites, secure=False)
            masked = run(folder, sites, secure=True)
        for label, r in (("clear", clear), ("masked", masked)):
            ratio = r["round"] / clear["round"]
            print(f"{count:>5} {label:>7} {r['rounds']:>6} {r['round']:>8.3f} {r['keys']:>12.3f} "
                  f"{r['bytes'] / 1024:>14.1f} {r['study']:>8.2f} {ratio:>11.2f}")  # fmt: skip

    if args.baseline:
        run_own_copy(args.baseline, "secure_aggregation.py", ["--sites", *map(str, args.sites)])


if __name__ == "__main__":
    main()
