"""The demo studies: real NCCTG lung cancer data split by its institutions into hospital sites, and
Eunomia's OMOP CDM split by person into hospital databases."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from hospital_node import approvals
from hospital_node.gate import identity_line
from hospital_node.site import open_site
from workbench import synthetic_imaging
from workbench.datasets import lung_hospitals
from workbench.protocol import Protocol

EXAMPLES = {"lung": "ncctg-lung.toml", "eunomia": "eunomia-celecoxib.toml"}


def protocol_text(study: str = "lung") -> str:
    """A bundled demo protocol without its site roster: "lung" (every built-in analysis on the lung data) or
    "eunomia" (celecoxib vs diclofenac on OMOP CDM databases)."""
    return resources.files("workbench").joinpath(f"examples/{EXAMPLES[study]}").read_text(encoding="utf-8")


def roster(sites: list[Path]) -> str:
    """The `[federation.sites]` section pinning each site's identity key, as a researcher collects them."""
    lines = [f'{open_site(folder).id} = "{identity_line(open_site(folder))}"' for folder in sites]
    return "\n[federation.sites]\n" + "\n".join(lines) + "\n"


POLICY = """
[policy]
# The default policy (minimum count 5; under secure aggregation the minimums apply to the
# published cross-site totals), with the table's patient identifier for the differencing guard.
row_id = "patient_id"
"""


def build_sites(folder: Path) -> list[Path]:
    """One fresh site folder per hospital under `folder`: site.toml with a policy, patients.csv
    (with a pseudonymous patient_id), and a synthetic MR slice per patient (images/, images.csv)."""
    sites = []
    for number, (site_id, (institutions, rows)) in enumerate(lung_hospitals().items()):
        site = folder / site_id
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir(parents=True)
        members = ", ".join(map(str, institutions))
        (site / "site.toml").write_text(
            f'[site]\nid = "{site_id}"\nname = "Hospital {number + 1} (NCCTG institutions {members})"\n{POLICY}',
            encoding="utf-8",
        )
        rows = rows.assign(patient_id=[f"H{number + 1}-{k:04d}" for k in range(len(rows))])
        rows.to_csv(site / "patients.csv", index=False)
        synthetic_imaging.write_site(site, site_id, rows["patient_id"], synthetic_imaging.SCANNERS[number])
        if number == 1:  # one damaged file, as real archives have: it is skipped and counted
            _truncate(site / "images" / f"{rows['patient_id'].iloc[0]}.dcm")
        sites.append(site)
    return sites


def build_omop_sites(folder: Path, source: Path | None = None) -> list[Path]:
    """One fresh site folder per hospital: site.toml pointing at its own OMOP CDM DuckDB file (Eunomia's persons,
    or those of the CDM file `source`, dealt 40/30/20/10 %, workbench.eunomia), with the default policy."""
    from workbench import eunomia

    sites = [folder / f"omop-{number + 1}" for number in range(len(eunomia.SHARES))]
    for number, site in enumerate(sites):
        shutil.rmtree(site, ignore_errors=True)
        omop_site(site, 'url = "duckdb://cdm.duckdb"', f"Hospital {number + 1} (Eunomia persons, OMOP CDM 5.3)")
    eunomia.split([site / "cdm.duckdb" for site in sites], source)
    return sites


def omop_site(folder: Path, data: str, name: str | None = None) -> Path:
    """A site folder (id = its name) whose site.toml reads an OMOP CDM: `data` holds the [data] lines after
    `source = "omop"` (url, schemas, password_env)."""
    folder.mkdir(parents=True, exist_ok=True)
    title = f'name = "{name}"\n' if name else ""
    (folder / "site.toml").write_text(
        f'[site]\nid = "{folder.name}"\n{title}\n[data]\nsource = "omop"\n{data}\n', encoding="utf-8"
    )
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def approve(sites: list[Path], protocol: Protocol) -> None:
    """Approve `protocol` at every demo site, as its data steward would."""
    for folder in sites:
        approvals.approve(open_site(folder), protocol, by="demo data steward")
