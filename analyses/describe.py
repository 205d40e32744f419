"""Descriptive statistics per variable: n, missing, mean and sd; counts per level for text columns.

Rounds: discover (kinds, levels in use) → n, missing, Σx and level counts → Σ(x − x̄)²
around the pooled mean (two passes, so the sd is numerically stable).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from analyses import columns as col
from analyses import discovery
from analyses.contract import Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item, bounds, reported
from analyses.spec import RowSet, Spec

MANIFEST = (
    *DISCOVERY,
    Item("moments", "rows", "(1,)", "rows in the cohort", Control.MINIMUM),
    Item("moments", "n_dropped", "(1,)", "rows left out for a missing value in the study's variables"),
    Item("moments", "n:*", "(1,)", "non-missing values of a variable", Control.MINIMUM),
    Item("moments", "missing:*", "(1,)", "missing values of a variable"),
    Item("moments", "sum:*", "(1,)", "sum of a numeric variable"),
    Item("moments", "counts:*", "(levels,)", "patients per level of a text variable", Control.RANGE),
    Item("spread", "rows", "(1,)", "rows in the cohort", Control.MINIMUM),
    Item("spread", "ss:*", "(1,)", "sum of squared deviations from the pooled mean"),
)


class DescribeSpec(Spec):
    """Summaries of each of `variables`, each over its own non-missing values."""

    type: Literal["describe"]
    variables: list[str] = Field(min_length=1)

    def columns(self) -> list[str]:
        return list(self.variables)

    def drops(self) -> list[str]:
        return []  # each variable is summarized over its own values

    def row_sets(self, frame: pd.DataFrame) -> list[RowSet]:
        return [(frame.index, []), *((col.require(frame, name).dropna().index, [name]) for name in self.variables)]


def plan(spec: DescribeSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, covariates=spec.variables)
    schema = discovery.read((yield ask), ask)
    base = schema.params()
    first = yield Query("moments", base)
    numeric = [name for name in spec.variables if schema.kinds[name] == col.NUMERIC]
    means = {name: float(first[f"sum:{name}"][0] / first[f"n:{name}"][0]) for name in numeric if first[f"n:{name}"][0]}
    second = (yield Query("spread", {**base, "means": means})) if means else {}
    variables: dict[str, dict[str, Any]] = {}
    for name in spec.variables:
        n, missing = int(first[f"n:{name}"][0]), int(first[f"missing:{name}"][0])
        if name not in numeric:
            lower, upper = bounds(first, f"counts:{name}")
            values = reported(lower.tolist(), upper.tolist())
            counts = {col.label(level): c for level, c in zip(schema.levels[name], values, strict=True)}
            variables[name] = {"kind": col.CATEGORICAL, "n": n, "missing": missing, "counts": counts}
            continue
        sd = float(np.sqrt(second[f"ss:{name}"][0] / (n - 1))) if n > 1 else None
        variables[name] = {"kind": col.NUMERIC, "n": n, "missing": missing, "mean": means.get(name), "sd": sd}
    return {"type": "describe", "n": int(first["rows"][0]), "n_dropped": int(first["n_dropped"][0]),
            "variables": variables}  # fmt: skip


def local(spec: DescribeSpec, frame: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    out: Contribution = {"rows": np.array([len(frame)])}
    for name in spec.variables:
        values = col.require(frame, name).dropna()
        if query.phase == "spread":
            if name in params["means"]:
                x = col.numeric(frame, name)
                x = x[~np.isnan(x)]
                out[f"ss:{name}"] = np.array([np.sum((x - params["means"][name]) ** 2)])
            continue
        out[f"n:{name}"] = np.array([len(values)])
        out[f"missing:{name}"] = np.array([len(frame) - len(values)])
        if params["kinds"][name] == col.NUMERIC:
            out[f"sum:{name}"] = np.array([col.numeric(frame, name)[frame[name].notna().to_numpy()].sum()])
        else:
            levels = params["levels"][name]
            out[f"counts:{name}"] = np.bincount(col.codes(frame.loc[values.index], name, levels), minlength=len(levels))
    return out
