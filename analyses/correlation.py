"""Pearson's correlation with its t-test and Fisher-z confidence interval, equal to scipy's `pearsonr`.

Rounds: discover (kinds) → n, Σx, Σy → Σ(x − x̄)², Σ(y − ȳ)², Σ(x − x̄)(y − ȳ).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.spec import Confidence, Spec

MANIFEST = (
    *DISCOVERY,
    Item("moments", "n", "(1,)", "rows with both values", Control.MINIMUM),
    Item("moments", "sum", "(2,)", "sums of x and y"),
    Item("moments", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("spread", "ss", "(3,)", "Σ(x − x̄)², Σ(y − ȳ)², Σ(x − x̄)(y − ȳ) about the pooled means"),
)


class PearsonSpec(Spec, Confidence):
    """Pearson's correlation between the numeric columns `x` and `y`."""

    type: Literal["pearson"]
    x: str
    y: str

    def columns(self) -> list[str]:
        return [self.x, self.y]


def plan(spec: PearsonSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, numeric=[spec.x, spec.y])
    schema = discovery.read((yield ask), ask)
    first = yield Query("moments", schema.params())
    n = float(first["n"][0])
    if n < 3:
        raise AnalysisError("a correlation needs at least three rows with both values")
    means = (first["sum"] / n).tolist()
    sxx, syy, sxy = (float(v) for v in (yield Query("spread", {**schema.params(), "means": means}))["ss"])
    if sxx == 0 or syy == 0:
        raise AnalysisError(f"'{spec.x if sxx == 0 else spec.y}' is constant: the correlation is undefined")
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    df = n - 2
    t = r * math.sqrt(df / (1 - r * r)) if abs(r) < 1 else math.copysign(math.inf, r)
    q = distributions.norm_ppf(1 - spec.alpha / 2)
    z, se = math.atanh(r) if abs(r) < 1 else math.copysign(math.inf, r), 1 / math.sqrt(n - 3) if n > 3 else math.inf
    return {
        "type": "pearson",
        "n": int(n),
        "n_dropped": int(first["n_dropped"][0]),
        "x": spec.x,
        "y": spec.y,
        "r": r,
        "statistic": t,
        "df": df,
        "p": distributions.pearson_p(r, n),
        "ci_lower": math.tanh(z - q * se),
        "ci_upper": math.tanh(z + q * se),
    }


def local(spec: PearsonSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    x, y = col.numeric(rows, spec.x), col.numeric(rows, spec.y)
    if query.phase == "moments":
        return {"n": np.array([len(x)]), "sum": np.array([x.sum(), y.sum()])}
    mx, my = query.params["means"]
    dx, dy = x - mx, y - my
    return {"ss": np.array([np.sum(dx * dx), np.sum(dy * dy), np.sum(dx * dy)])}
