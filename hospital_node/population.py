"""The rows a study uses at a site: its cohort, each analysis' population, and what the guard remembers of them.

A study's rounds ask about the same rows again and again, so the cohort is kept per table version,
protocol and row id, and each analysis' population and row sets per cohort.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses.spec import Spec
from hospital_node.cohort import row_keys, select
from hospital_node.site import Site, load_table
from workbench.protocol import Protocol


@dataclass
class Cohort:
    """The protocol's cohort at a site (its filters applied) and a 64-bit key per table row."""

    rows: pd.DataFrame
    keys: pd.Series
    memo: dict[tuple[str, ...], Any] = field(default_factory=dict)


_COHORTS: dict[tuple[object, ...], Cohort] = {}


def cohort(site: Site, protocol: Protocol) -> Cohort:
    """The protocol's cohort at this site (remembered while the table file is unchanged)."""
    path = site.table_path(protocol.model.cohort.table)
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size, protocol.sha256, site.policy.row_id)
    if key not in _COHORTS:
        table = load_table(site, protocol.model.cohort.table)
        _COHORTS[key] = Cohort(select(table, protocol.model.cohort.filters), row_keys(table, site.policy.row_id))
        while len(_COHORTS) > 256:
            del _COHORTS[next(iter(_COHORTS))]
    return _COHORTS[key]


def used(protocol: Protocol, spec: Spec, study: Cohort) -> pd.DataFrame:
    """The cohort rows `spec` uses: those with a value in every column of its population."""
    columns = protocol.population(spec)
    key = ("rows", *columns)
    if key not in study.memo:
        study.memo[key] = col.complete_cases(study.rows, columns)
    return study.memo[key]


def row_sets(protocol: Protocol, spec: Spec, study: Cohort) -> list[tuple[np.ndarray, list[str]]]:
    """Each row set an analysis releases something about, as row keys, with the columns it is about.

    The cohort filters' columns count for every row set: which rows pass them is part of every release.
    """
    key = ("row sets", spec.id)
    if key not in study.memo:
        study.memo[key] = [
            (study.keys[index].to_numpy(), list(dict.fromkeys([*columns, *protocol.cohort_columns])))
            for index, columns in spec.row_sets(used(protocol, spec, study))
        ]
    return study.memo[key]
