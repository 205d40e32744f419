"""The rows a study uses at a site: its cohort, each analysis' population, and what the guard remembers of them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses.spec import Spec
from hospital_node.cohort import row_keys, select
from hospital_node.site import Site, load_table
from workbench.protocol import Protocol


def cohort(site: Site, protocol: Protocol) -> tuple[pd.DataFrame, pd.Series]:
    """The protocol's cohort at this site (its filters applied), and a 64-bit key per table row."""
    table = load_table(site, protocol.model.cohort.table)
    return select(table, protocol.model.cohort.filters), row_keys(table, site.policy.row_id)


def row_sets(protocol: Protocol, spec: Spec, rows: pd.DataFrame, keys: pd.Series) -> list[tuple[np.ndarray, list[str]]]:
    """Each row set an analysis releases something about, as row keys, with the columns it is about.

    The cohort filters' columns count for every row set: which rows pass them is part of every release.
    """
    used = col.complete_cases(rows, protocol.population(spec))
    return [
        (keys[index].to_numpy(), list(dict.fromkeys([*columns, *protocol.cohort_columns])))
        for index, columns in spec.row_sets(used)
    ]
