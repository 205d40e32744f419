"""Descriptive statistics per variable: n, missing, mean, sd and quantiles; counts per level for text columns.

Rounds: discover (kinds, levels in use) → n, missing, Σx and level counts → Σ(x − x̄)² around the pooled mean
(two passes, so the sd is numerically stable) with the first cut points of the quantile search → counts at cut
points until every order statistic a quantile reads is found exactly (8 rounds; `analyses.order_statistics`).
A quantile is released only with at least the minimum count of values below and above each value it reads, so
never a minimum or maximum.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from analyses import columns as col
from analyses import discovery, order_statistics
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
    Item("spread", "below:*", "(ranks, 256)", "quantile search: values at or below each of 255 cut points, and the "
         "values in all", Control.RANK),
    Item("rank", "rows", "(1,)", "rows in the cohort", Control.MINIMUM),
    Item("rank", "below:*", "(ranks, 256)", "quantile search: values at or below each of 255 cut points, and the "
         "values in all", Control.RANK),
)  # fmt: skip


class DescribeSpec(Spec):
    """Summaries of each of `variables`, each over its own non-missing values."""

    type: Literal["describe"]
    variables: list[str] = Field(min_length=1)
    quantiles: list[float] = Field(
        [0.25, 0.5, 0.75], description="quantiles of each numeric variable, as pandas computes them ([] for none)"
    )

    @field_validator("quantiles")
    @classmethod
    def _inside(cls, value: list[float]) -> list[float]:
        if any(not 0 < q < 1 for q in value):
            raise ValueError("quantiles lie strictly between 0 and 1 (a minimum or maximum is never released)")
        return sorted(set(value))

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
    sizes = {name: int(first[f"n:{name}"][0]) for name in means}
    searches = {name: _search(sizes[name], spec.quantiles) for name in means}
    searches = {name: search for name, search in searches.items() if search.ranks}
    second = {}
    if means:
        second = yield from _searched(Query("spread", {**base, "means": means}), searches)
        while searches and not all(search.done for search in searches.values()):
            yield from _searched(Query("rank", base), searches)
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
        variables[name] = {"kind": col.NUMERIC, "n": n, "missing": missing, "mean": means.get(name), "sd": sd,
                           **_quantiles(spec.quantiles, n, searches.get(name))}  # fmt: skip
    return {"type": "describe", "n": int(first["rows"][0]), "n_dropped": int(first["n_dropped"][0]),
            "variables": variables}  # fmt: skip


def _search(n: int, quantiles: list[float]) -> order_statistics.Search:
    """The search for every rank the quantiles read, but the smallest and largest value (never released)."""
    ranks = sorted({rank for q in quantiles for rank in order_statistics.positions(n, q)})
    return order_statistics.Search(ranks, withheld={rank for rank in ranks if rank in (0, n - 1)})


def _searched(query: Query, searches: dict[str, order_statistics.Search]) -> Plan:
    """Ask `query` with each unfinished search's next cut points; narrow the searches from the reply."""
    cuts = {name: search.cuts() for name, search in searches.items()}
    ranks = {name: search.counts_needed for name, search in searches.items()}
    total = yield Query(query.phase, {**query.params, "cuts": cuts, "ranks": ranks})
    for name, search in searches.items():
        search.update(cuts[name], total[f"below:{name}"])
    return total


def _quantiles(quantiles: list[float], n: int, search: order_statistics.Search | None) -> dict[str, Any]:
    """Each quantile (None where a value it reads is withheld) and, if any is, why."""
    if not quantiles:
        return {}
    found = search.values() if search else {}
    out = {
        str(q): order_statistics.quantile(n, q, found)
        if all(rank in found for rank in order_statistics.positions(n, q))
        else None
        for q in quantiles
    }
    result: dict[str, Any] = {"quantiles": out}
    if None in out.values():
        result["quantiles_withheld"] = (
            "a quantile is released only under secure aggregation, and with at least the minimum count of values below "
            "and above each value it reads (never a minimum or maximum)"
        )
    return result


def local(spec: DescribeSpec, frame: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    out: Contribution = {"rows": np.array([len(frame)])}
    for name in spec.variables:
        values = col.require(frame, name).dropna()
        if query.phase in ("spread", "rank"):
            if name in params.get("cuts", {}) or name in params.get("means", {}):
                x = col.numeric(frame, name)
                x = x[~np.isnan(x)]
            if name in params.get("cuts", {}):
                out[f"below:{name}"] = order_statistics.at_or_below(x, params["cuts"][name])
            if name in params.get("means", {}):
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
