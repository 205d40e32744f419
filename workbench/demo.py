"""The demo study: real NCCTG lung cancer data split by its institutions into hospital sites."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from hospital_node import approvals
from hospital_node.handler import identity_line
from hospital_node.site import open_site
from workbench.datasets import lung_hospitals
from workbench.protocol import Protocol


def protocol_text() -> str:
    """The bundled demo protocol (every built-in analysis on the lung data), without its site roster."""
    return resources.files("workbench").joinpath("examples/ncctg-lung.toml").read_text(encoding="utf-8")


def roster(sites: list[Path]) -> str:
    """The `[federation.sites]` section pinning each site's identity key, as a researcher collects them."""
    lines = [f'{open_site(folder).id} = "{identity_line(open_site(folder))}"' for folder in sites]
    return "\n[federation.sites]\n" + "\n".join(lines) + "\n"


POLICY = """
[policy]
min_cell_count = 5
# Kaplan-Meier, log-rank and Cox send counts per time cell of the protocol's time grid.
# With about 45 patients per hospital, a minimum of 5 per time cell would refuse every
# survival curve, so this demo hospital accepts single patients per time cell (weekly grid).
# That is a data steward's decision, shown at approval; the default is min_cell_count.
min_time_cell_count = 1
"""


def build_sites(folder: Path) -> list[Path]:
    """One fresh site folder per hospital (site.toml with a policy, patients.csv) under `folder`."""
    sites = []
    for site_id, (institutions, rows) in lung_hospitals().items():
        site = folder / site_id
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir(parents=True)
        number = site_id.rsplit("-", 1)[1]
        members = ", ".join(map(str, institutions))
        (site / "site.toml").write_text(
            f'[site]\nid = "{site_id}"\nname = "Hospital {number} (NCCTG institutions {members})"\n{POLICY}',
            encoding="utf-8",
        )
        rows.to_csv(site / "patients.csv", index=False)
        sites.append(site)
    return sites


def approve(sites: list[Path], protocol: Protocol) -> None:
    """Approve `protocol` at every demo site, as its data steward would."""
    for folder in sites:
        approvals.approve(open_site(folder), protocol, by="demo data steward")
