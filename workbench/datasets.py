"""Real data sets split by their real (or plausible) centres, for the demo, tests and benchmarks."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
from lifelines.datasets import load_gbsg2, load_lung


def lung_institutions() -> dict[str, pd.DataFrame]:
    """NCCTG lung cancer: one site per real institution (`inst`); the patient without one is left out."""
    lung = load_lung().dropna(subset=["inst"])
    return {f"inst-{int(inst):02d}": rows.drop(columns="inst") for inst, rows in lung.groupby("inst")}


def lung_hospitals(count: int = 5) -> dict[str, tuple[list[int], pd.DataFrame]]:
    """NCCTG lung cancer with its 18 institutions grouped into `count` hospitals of similar size.

    Institutions go, largest first, to the hospital with the fewest patients so far.
    Returns hospital id → (institution numbers, rows).
    """
    lung = load_lung().dropna(subset=["inst"])
    sizes = lung["inst"].value_counts()
    members: list[list[int]] = [[] for _ in range(count)]
    totals = [0] * count
    for inst, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        smallest = totals.index(min(totals))
        members[smallest].append(int(inst))
        totals[smallest] += int(size)
    return {
        f"hospital-{i + 1}": (sorted(insts), lung[lung["inst"].isin(insts)].drop(columns="inst"))
        for i, insts in enumerate(members)
    }


def gbsg2_sites() -> dict[str, pd.DataFrame]:
    """German Breast Cancer Study Group 2 (no centre column): five sites of unequal size, fixed seed."""
    gbsg2 = load_gbsg2()
    site = np.random.default_rng(2).choice(5, size=len(gbsg2), p=[0.35, 0.25, 0.2, 0.12, 0.08])
    return {f"gbsg-{k + 1}": gbsg2[site == k] for k in range(5)}


def actg175() -> pd.DataFrame:
    """ACTG 175 HIV trial (2,139 patients; `days`, `cens`, treatment `arms` 0-3), shipped with lifelines."""
    with resources.files("lifelines.datasets").joinpath("ACTG175.csv").open() as stream:
        return pd.read_csv(stream, index_col=0)


def partition(rows: pd.DataFrame, sites: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Rows dealt at random (fixed seed) to `sites` sites of equal expected size, none empty."""
    order = np.random.default_rng(seed).permutation(len(rows))
    return {f"site-{k + 1:03d}": rows.iloc[np.sort(order[k::sites])] for k in range(sites)}
