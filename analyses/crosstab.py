"""Contingency table of two columns with Pearson's χ² test (and Fisher's exact test for 2×2).

Rounds: discover (levels in use) → cell counts. The tests run on the pooled table with
scipy, so they equal scipy on the pooled rows whenever the table does.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item, bounds, reported
from analyses.spec import Spec

MANIFEST = (
    *DISCOVERY,
    Item("counts", "table", "(row levels, column levels)", "patients per cell", Control.RANGE),
    Item("counts", "n", "(1,)", "rows used", Control.MINIMUM),
    Item("counts", "n_dropped", "(1,)", "rows left out for a missing value"),
)


class CrosstabSpec(Spec):
    """Counts of `row` × `column` over rows where both are present."""

    type: Literal["crosstab"]
    row: str
    column: str
    correction: bool = True
    """Yates' continuity correction for 2×2 tables (scipy's default)."""

    def columns(self) -> list[str]:
        return [self.row, self.column]

    def grouping(self) -> list[str]:
        return self.columns()


def plan(spec: CrosstabSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, grouping=spec.columns())
    schema = discovery.read((yield ask), ask)
    rows, cols = schema.levels[spec.row], schema.levels[spec.column]
    for name, levels in ((spec.row, rows), (spec.column, cols)):
        if len(levels) < 2:
            raise AnalysisError(f"'{name}' has a single level among complete rows; a crosstab needs two or more")
    total = yield Query("counts", schema.params())
    lower, upper = bounds(total, "table")
    result: dict[str, Any] = {
        "type": "crosstab",
        "n": int(total["n"][0]),
        "n_dropped": int(total["n_dropped"][0]),
        "row": spec.row,
        "column": spec.column,
        "row_levels": [col.label(level) for level in rows],
        "column_levels": [col.label(level) for level in cols],
        "table": reported(lower.tolist(), upper.tolist()),
    }
    if np.any(lower != upper):
        result["tests"] = "not computed: small cells are published as ranges (minimum cell count)"
        return result
    table = lower
    chi2 = distributions.chi2_contingency(table, spec.correction)
    result["expected"] = chi2.expected_freq.tolist()
    result["chi2"] = {"statistic": float(chi2.statistic), "df": int(chi2.dof), "p": float(chi2.pvalue)}
    if table.shape == (2, 2):
        fisher = distributions.fisher_exact(table)
        result["fisher"] = {"odds_ratio": float(fisher.statistic), "p": float(fisher.pvalue)}
    return result


def local(spec: CrosstabSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    levels = query.params["levels"]
    r = col.codes(rows, spec.row, levels[spec.row])
    c = col.codes(rows, spec.column, levels[spec.column])
    table = np.zeros((len(levels[spec.row]), len(levels[spec.column])), dtype=np.int64)
    np.add.at(table, (r, c), 1)
    return {"table": table, "n": np.array([len(rows)])}
