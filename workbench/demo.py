"""The demo study: real NCCTG lung cancer data split by its institutions into hospital sites."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from workbench.datasets import lung_hospitals


def protocol_text() -> str:
    """The bundled demo protocol (every built-in analysis on the lung data)."""
    return resources.files("workbench").joinpath("examples/ncctg-lung.toml").read_text(encoding="utf-8")


def build_sites(folder: Path) -> list[Path]:
    """One site folder per hospital (site.toml + patients.csv) under `folder`."""
    sites = []
    for site_id, (institutions, rows) in lung_hospitals().items():
        site = folder / site_id
        site.mkdir(parents=True, exist_ok=True)
        number = site_id.rsplit("-", 1)[1]
        members = ", ".join(map(str, institutions))
        (site / "site.toml").write_text(
            f'[site]\nid = "{site_id}"\nname = "Hospital {number} (NCCTG institutions {members})"\n', encoding="utf-8"
        )
        rows.to_csv(site / "patients.csv", index=False)
        sites.append(site)
    return sites
