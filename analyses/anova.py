"""One-way analysis of variance, equal to scipy's `f_oneway`.

Rounds: discover (group levels in use) → per group n and Σx → per group Σ(x − x̄_g)².
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.spec import Spec

MANIFEST = (
    *DISCOVERY,
    Item("moments", "n", "(groups,)", "values per compared group", Control.MINIMUM),
    Item("moments", "sum", "(groups,)", "sum of the variable per group"),
    Item("moments", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("spread", "ss", "(groups,)", "sum of squared deviations from each group's pooled mean"),
)


class AnovaSpec(Spec):
    """Compare the mean of `variable` across the levels of `group` (all levels in use, or those in `groups`)."""

    type: Literal["anova"]
    variable: str
    group: str
    groups: list[str | float] | None = Field(None, min_length=2)

    def columns(self) -> list[str]:
        return [self.variable, self.group]

    def grouping(self) -> list[str]:
        return [self.group]


def plan(spec: AnovaSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, numeric=[spec.variable], grouping=[spec.group])
    schema = discovery.read((yield ask), ask)
    levels = _chosen(spec, schema.levels[spec.group])
    base = {**schema.params(), "chosen": levels}
    first = yield Query("moments", base)
    n, sums = first["n"].astype(float), first["sum"]
    if np.any(n < 1) or n.sum() <= len(levels):
        raise AnalysisError("every compared group needs a value, and the groups more values than there are groups")
    means = sums / n
    second = yield Query("spread", {**base, "means": means.tolist()})
    within, total_n, k = float(second["ss"].sum()), float(n.sum()), len(levels)
    between = float(np.sum(n * (means - sums.sum() / total_n) ** 2))
    df_between, df_within = k - 1, total_n - k
    statistic = (between / df_between) / (within / df_within)
    return {
        "type": "anova",
        "n": int(total_n),
        "n_dropped": int(first["n_dropped"][0]),
        "variable": spec.variable,
        "group": spec.group,
        "groups": {
            col.label(level): {"n": int(m), "mean": float(mean), "sd": float(np.sqrt(ss / (m - 1))) if m > 1 else None}
            for level, m, mean, ss in zip(levels, n, means, second["ss"], strict=True)
        },
        "between": {"ss": between, "df": df_between, "ms": between / df_between},
        "within": {"ss": within, "df": df_within, "ms": within / df_within},
        "statistic": float(statistic),
        "df": [df_between, df_within],
        "p": distributions.f_sf(statistic, df_between, df_within),
    }


def _chosen(spec: AnovaSpec, levels: list[col.Level]) -> list[col.Level]:
    """The compared levels: those named in `groups`, or every level in use."""
    if spec.groups is None:
        if len(levels) < 2:
            raise AnalysisError(f"'{spec.group}' has {len(levels)} level in use; ANOVA compares at least two")
        return levels
    labels = {col.label(level): level for level in levels}
    missing = [col.label(g) for g in spec.groups if col.label(g) not in labels]
    if missing:
        raise AnalysisError(f"group level {missing[0]!r} of '{spec.group}' not found (levels: {', '.join(labels)})")
    return [labels[col.label(g)] for g in spec.groups]


def local(spec: AnovaSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    return group_moments(rows, spec.variable, spec.group, query)


def group_moments(rows: pd.DataFrame, variable: str, group: str, query: Query) -> Contribution:
    """Per chosen level of `group`: n and Σx ("moments"), or Σ(x − x̄_g)² about the given means ("spread")."""
    levels = query.params["levels"][group]
    index = col.codes(rows, group, levels)
    x = col.numeric(rows, variable)
    groups = [x[index == levels.index(level)] for level in query.params["chosen"]]
    if query.phase == "moments":
        return {"n": np.array([len(g) for g in groups]), "sum": np.array([g.sum() for g in groups])}
    means = query.params["means"]
    return {"ss": np.array([np.sum((g - m) ** 2) for g, m in zip(groups, means, strict=True)])}
