"""ACTG 175 dealt into benchmark site folders, and the survival suite the benchmarks run on them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hospital_node import approvals
from hospital_node.gate import identity_line
from hospital_node.site import open_site
from workbench.datasets import partition
from workbench.protocol import Protocol, parse

COVARIATES = ["age", "karnof", "cd40"]
"""Three regression parameters."""
DEFAULT_POLICY = ""
"""The default site policy (minimum count 5; under secure aggregation it applies to the published totals)."""
CLEAR_POLICY = "[policy]\nmin_cell_count = 1\nclear_aggregation = true\n"
"""For comparing clear with masked rounds: in the clear each site's own counts face the minimum, and sites of
~10–30 patients would release nothing under a real one; this measures the machinery, not the policy."""
SUITE = f"""
[variables]
arms = {{ levels = [0, 1, 2, 3] }}

[[analysis]]
id = "km"
type = "kaplan_meier"
duration = "days"
event = "cens"
group = "arms"

[[analysis]]
id = "logrank"
type = "logrank"
duration = "days"
event = "cens"
group = "arms"

[[analysis]]
id = "cox"
type = "cox"
duration = "days"
event = "cens"
covariates = {json.dumps(COVARIATES)}
"""
"""Kaplan–Meier and log-rank by arm, and a Cox model."""


def site_folders(rows: pd.DataFrame, count: int, folder: Path, policy: str = DEFAULT_POLICY) -> list[Path]:
    """`count` site folders under `folder`, the rows dealt at random, each with `policy`."""
    sites = []
    for site_id, site_rows in partition(rows, count).items():
        (folder / site_id).mkdir(parents=True)
        (folder / site_id / "site.toml").write_text(f'[site]\nid = "{site_id}"\n{policy}')
        site_rows.to_csv(folder / site_id / "patients.csv", index=False)
        sites.append(folder / site_id)
    return sites


def approved(text: str, sites: list[Path], path: Path) -> Protocol:
    """The protocol `text` with the sites' identity keys pinned, written to `path` and approved at every site."""
    pinned = "".join(f'{open_site(site).id} = "{identity_line(open_site(site))}"\n' for site in sites)
    path.write_text(f"{text}\n[federation.sites]\n{pinned}")
    study = parse(path.read_text())
    for site in sites:
        approvals.approve(open_site(site), study, by="benchmark")
    return study
