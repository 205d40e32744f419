"""The demo studies: real NCCTG lung cancer data split by its institutions into hospital sites,
Eunomia's OMOP CDM split by person into hospital databases, and synthetic CT series from five
scanners for lesion contouring."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pandas as pd

from hospital_node import approvals
from hospital_node.gate import identity_line
from hospital_node.site import open_site
from workbench import synthetic_imaging, synthetic_series
from workbench.datasets import lung_hospitals
from workbench.protocol import Protocol

EXAMPLES = {"lung": "ncctg-lung.toml", "eunomia": "eunomia-celecoxib.toml", "segmentation": "lesion-segmentation.toml"}


def protocol_text(study: str = "lung") -> str:
    """A bundled demo protocol without its site roster: "lung" (every built-in analysis on the lung data),
    "eunomia" (celecoxib vs diclofenac on OMOP CDM databases) or "segmentation" (lesion contours on CT series)."""
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


ARCHIVE = 150
"""Synthetic MR studies in each hospital's imaging archive: one per trial patient, the rest other patients."""

LESION = 0.8
"""The demo lesions' peak brightness over the anatomy's 0.3–0.7: conspicuous, so a small archive trains in seconds."""


def build_sites(folder: Path) -> list[Path]:
    """One fresh site folder per hospital under `folder`: site.toml with a policy, patients.csv
    (with a pseudonymous patient_id), and an imaging archive of synthetic MR slices, one per trial patient
    and more (images/, images.csv)."""
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
        archive = pd.Series([*rows["patient_id"], *(f"H{number + 1}-S{k:04d}" for k in range(ARCHIVE - len(rows)))])
        synthetic_imaging.write_site(site, site_id, archive, synthetic_imaging.SCANNERS[number], lesion=LESION)
        if number == 1:  # one damaged file, as real archives have: it is skipped and counted
            _truncate(site / "images" / f"{rows['patient_id'].iloc[0]}.dcm")
        sites.append(site)
    return sites


SERIES = 100
"""CT series (one per patient) in each hospital of the segmentation demo: DP-SGD needs about this many per site."""


def build_series_sites(folder: Path, patients: int = SERIES) -> list[Path]:
    """One fresh site folder per synthetic CT scanner: site.toml (the default policy), patients.csv (pseudonyms),
    series/ (one DICOM series per patient, shuffled file names) and masks/ (its lesion's NIfTI mask); one
    series at the second hospital lacks a slice, as real archives have: it is skipped and counted."""
    sites = []
    for number, scanner in enumerate(synthetic_series.SERIES_SCANNERS):
        site = folder / f"ct-{number + 1}"
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir(parents=True)
        (site / "site.toml").write_text(
            f'[site]\nid = "{site.name}"\nname = "Hospital {number + 1} ({scanner.manufacturer} CT)"\n',
            encoding="utf-8",
        )
        patients_ids = pd.Series([f"C{number + 1}-{k:04d}" for k in range(patients)])
        pd.DataFrame({"patient_id": patients_ids}).to_csv(site / "patients.csv", index=False)
        synthetic_series.write_site(site, site.name, patients_ids, scanner)
        sites.append(site)
    drop_a_middle_slice(sites[1] / "series")
    return sites


def drop_a_middle_slice(folder: Path) -> None:
    """Delete the middle slice (by InstanceNumber) of the first series in `folder`: a gap its node must catch."""
    import pydicom

    headers = [(pydicom.dcmread(p, stop_before_pixels=True), p) for p in sorted(folder.iterdir())]
    first = headers[0][0].SeriesInstanceUID
    series = sorted((h for h in headers if h[0].SeriesInstanceUID == first), key=lambda h: int(h[0].InstanceNumber))
    series[len(series) // 2][1].unlink()


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


def non_private_reference(sites: list[Path], protocol: Protocol, training_id: str) -> dict[str, float]:
    """The same federated training without DP noise (plain SGD, FedAvg), run in this process on the demo's own
    synthetic sites: its last round's held-out metrics averaged over the sites weighted by their held-out rows,
    as a study reports them, to print beside DP's."""
    import torch

    from hospital_node import training
    from workbench import models

    spec = next(t for t in protocol.model.training if t.id == training_id)
    data = [training.local_data(open_site(folder), protocol, spec, [], []) for folder in sites]
    model = models.build(spec.architecture)
    torch.manual_seed(spec.seed)
    criterion = training.loss_function(spec)
    rate = training.plain_rate(spec)
    for _ in range(spec.rounds):
        states, rows = [], []
        for local in data:
            copy = models.build(spec.architecture)
            copy.load_state_dict(model.state_dict())
            training.plain_epochs(copy, local.x_train, local.y_train, spec.batch_size, rate, spec.local_epochs,
                                  criterion)  # fmt: skip
            states.append(copy.state_dict())
            rows.append(len(local.y_train))
        model.load_state_dict(training.averaged(states, rows))
    found = [(training.scores(model, d.x_val, d.y_val, spec), len(d.y_val)) for d in data]
    return {key: sum(m[key] * n for m, n in found) / sum(n for _, n in found) for key in found[0][0]}


def learning_line(out: Path, sites: list[Path], protocol: Protocol, training_id: str = "lesion") -> str:
    """The DP model's held-out AUC (segmentation: pooled Dice) per round, and the non-private federated figure
    beside its last one."""
    rounds = json.loads((out / "results.json").read_text(encoding="utf-8"))["training"][training_id]["rounds"]
    spec = next(t for t in protocol.model.training if t.id == training_id)
    metric, model = ("dice", "segmentation") if spec.task == "image_segmentation" else ("auc", "classifier")
    scores = " → ".join(f"{r['evaluate']['weighted'][metric]:.3f}" for r in rounds)
    reference = non_private_reference(sites, protocol, training_id)[metric]
    return (
        f"demo: {training_id} {model}, held-out {metric.upper() if metric == 'auc' else 'Dice'} per round at "
        f"ε = {spec.privacy.target_epsilon:g} per site: {scores}; the same federated training without DP noise "
        f"(run here on the synthetic images): {reference:.3f}"
    )


def approve(sites: list[Path], protocol: Protocol) -> None:
    """Approve `protocol` at every demo site, as its data steward would."""
    for folder in sites:
        approvals.approve(open_site(folder), protocol, by="demo data steward")
