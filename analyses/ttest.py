"""Two-sample t-test (Welch and pooled variance), equal to scipy's `ttest_ind`.

Rounds: discover (group levels in use) → per group n and Σx → per group Σ(x − x̄_g)².
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from analyses import anova, discovery, distributions
from analyses import columns as col
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.spec import Confidence, Spec

MANIFEST = (
    *DISCOVERY,
    Item("moments", "n", "(2,)", "values per compared group", Control.MINIMUM),
    Item("moments", "sum", "(2,)", "sum of the variable per group"),
    Item("moments", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("spread", "ss", "(2,)", "sum of squared deviations from each group's pooled mean"),
)


class TTestSpec(Spec, Confidence):
    """Compare the mean of `variable` between two levels of `group` (first minus second)."""

    type: Literal["ttest"]
    variable: str
    group: str
    groups: list[str | float] | None = Field(None, min_length=2, max_length=2)

    def columns(self) -> list[str]:
        return [self.variable, self.group]

    def grouping(self) -> list[str]:
        return [self.group]


def plan(spec: TTestSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, numeric=[spec.variable], grouping=[spec.group])
    schema = discovery.read((yield ask), ask)
    levels = _chosen(spec, schema.levels[spec.group])
    base = {**schema.params(), "chosen": levels}
    first = yield Query("moments", base)
    n, sums = first["n"], first["sum"]
    if np.any(n < 2):
        raise AnalysisError("each group needs at least two values")
    means = sums / n
    second = yield Query("spread", {**base, "means": means.tolist()})
    var = second["ss"] / (n - 1)
    diff = float(means[0] - means[1])
    pooled_var = float(((n - 1) * var).sum() / (n.sum() - 2))
    tests = {
        "pooled": (np.sqrt(pooled_var * (1 / n).sum()), float(n.sum() - 2)),
        "welch": _welch(var, n),
    }
    return {
        "type": "ttest",
        "n": int(n.sum()),
        "n_dropped": int(first["n_dropped"][0]),
        "variable": spec.variable,
        "group": spec.group,
        "groups": {
            col.label(level): {"n": int(k), "mean": float(m), "sd": float(np.sqrt(v))}
            for level, k, m, v in zip(levels, n, means, var, strict=True)
        },
        "difference": diff,
        **{name: _test(diff, se, df, spec.alpha) for name, (se, df) in tests.items()},
    }


def _chosen(spec: TTestSpec, levels: list[col.Level]) -> list[col.Level]:
    """The two compared levels: those named in `groups`, or the only two there are."""
    labels = {col.label(level): level for level in levels}
    if spec.groups is None:
        if len(levels) != 2:
            shown = ", ".join(labels)
            raise AnalysisError(f"'{spec.group}' has {len(levels)} levels ({shown}); name two with groups = [..]")
        return levels
    wanted = [col.label(g) for g in spec.groups]
    missing = [g for g in wanted if g not in labels]
    if missing:
        raise AnalysisError(f"group level {missing[0]!r} of '{spec.group}' not found (levels: {', '.join(labels)})")
    return [labels[g] for g in wanted]


def _welch(var: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    parts = var / n
    return float(np.sqrt(parts.sum())), float(parts.sum() ** 2 / (parts**2 / (n - 1)).sum())


def _test(diff: float, se: float, df: float, alpha: float) -> dict[str, Any]:
    t = diff / se
    q = distributions.t_ppf(1 - alpha / 2, df)
    return {
        "statistic": float(t),
        "df": df,
        "p": float(2 * distributions.t_sf(abs(t), df)),
        "ci_lower": diff - q * se,
        "ci_upper": diff + q * se,
    }


def local(spec: TTestSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    return anova.group_moments(rows, spec.variable, spec.group, query)
