"""Mantel–Haenszel pooled odds ratio of exposure × outcome across strata, equal to statsmodels' `StratifiedTable`.

Each stratum's table is [[a, b], [c, d]]: rows exposed (the second of `exposures`) and reference, columns
outcome 1 and 0; n = a + b + c + d. Only strata with both exposure levels and both outcome values count (the
others add 0 to every sum; statsmodels turns Breslow–Day into NaN for them).
- OR = R/S with R = Σ ad/n, S = Σ bc/n; RR = Σ a(c+d)/n / Σ c(a+b)/n.
- Var log OR (Robins–Breslow–Greenland), P = (a+d)/n, Q = (b+c)/n:
  ½ (Σ PR/R² + (Σ PS + Σ QR)/(RS) + Σ QS/S²).
- CMH χ² (1 df) = (|Σ a − Σ E[a]| − h)² / Σ Var[a], E[a] = (a+b)(a+c)/n,
  Var[a] = (a+b)(c+d)(a+c)(b+d) / (n²(n − 1)); h = ½ with `correction` when |Σ a − Σ E[a]| ≥ ½, else 0
  (R's rule; statsmodels subtracts ½ even below, turning a difference of 0 into a positive statistic).
- Breslow–Day χ² (K − 1 df) = Σ (a − E_ψ[a])² / Var_ψ[a] at the pooled ψ, E_ψ[a] the root of the
  stratum's quadratic, 1/Var_ψ[a] = 1/E + 1/(a+c−E) + 1/(a+b−E) + 1/(d−a+E).

Rounds: discover (levels in use) → column strata: 2×2 counts per stratum, summed over sites (the
coordinator computes everything from the pooled tables; small cells are published as ranges, and then
nothing else is); with "site" among the strata, each site's strata are its own: it sends the sums above
over them ("terms"), then Breslow–Day's sum at the broadcast pooled ψ ("homogeneity"). These sums can give a
site's own tables back (with few sites even from the totals), so each site holds every cell of its own strata to
its minimum count, also under secure aggregation.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item, bounds, reported
from analyses.spec import Confidence, Spec

SITE = "site"
"""Special stratum: each site's rows are strata of their own."""

TERMS = ("R", "S", "PR", "PS", "QR", "QS", "risk_exposed", "risk_reference", "a", "expected", "variance")
"""The additive sums over strata, in the order sites send them."""

MANIFEST = (
    *DISCOVERY,
    Item("counts", "table", "(strata, 2, 2)", "column strata: patients per stratum, exposure level and outcome value",
         Control.RANGE),
    Item("counts", "n", "(1,)", "rows used", Control.MINIMUM),
    Item("counts", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("terms", "n", "(1,)", "rows used", Control.MINIMUM),
    Item("terms", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("terms", "guard:categories", "(4,)", "rows per compared exposure level and per outcome value",
         Control.GUARD),
    Item("terms", "guard:cells", "(strata, 2, 2)", "stratified by site: patients per own stratum, exposure level "
         "and outcome value (checked at the site also under secure aggregation)", Control.GUARD, at_site=True),
    Item("terms", "sums", "(11,)", "stratified by site, over the site's own strata: Σ ad/n, Σ bc/n, the four "
         "Robins–Breslow–Greenland sums, Σ a(c+d)/n, Σ c(a+b)/n, Σ a, Σ E[a], Σ Var[a]"),
    Item("terms", "strata", "(1,)", "stratified by site: the site's strata with both exposure levels and both "
         "outcome values"),
    Item("homogeneity", "breslow_day", "(1,)", "stratified by site: Σ (a − E[a])² / Var[a] over the site's strata "
         "at the pooled odds ratio"),
)  # fmt: skip


class MantelHaenszelSpec(Spec, Confidence):
    """Odds ratio of `outcome` (0/1) for `exposure`, pooled over `strata` (columns and/or `"site"`).

    `exposures = [reference, exposed]` picks two levels of `exposure` and their roles; without it the
    column must have exactly two levels in use, and the second (in sorted order) is the exposed one.
    """

    type: Literal["mantel_haenszel"]
    exposure: str
    exposures: list[str | float] | None = Field(None, min_length=2, max_length=2)
    outcome: str
    strata: list[str] = Field(min_length=1)
    correction: bool = False
    """Continuity correction of the CMH test."""

    @model_validator(mode="after")
    def _check(self) -> MantelHaenszelSpec:
        if len(set(self.strata)) < len(self.strata):
            raise ValueError("'strata' lists a column twice")
        if self.exposure == self.outcome or {self.exposure, self.outcome} & set(self.strata):
            raise ValueError("'exposure', 'outcome' and the 'strata' must be different columns")
        if self.exposures and col.label(self.exposures[0]) == col.label(self.exposures[1]):
            raise ValueError("'exposures' must name two different levels: [reference, exposed]")
        return self

    @property
    def strata_columns(self) -> list[str]:
        return [name for name in self.strata if name != SITE]

    def columns(self) -> list[str]:
        return [self.exposure, self.outcome, *self.strata_columns]

    def grouping(self) -> list[str]:
        return [self.exposure, *self.strata_columns]


def plan(spec: MantelHaenszelSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, numeric=[spec.outcome], grouping=spec.grouping())
    schema = discovery.read((yield ask), ask)
    levels = schema.levels[spec.exposure]
    pair = _pair(spec, levels)
    base = {**schema.params(), "pair": pair}
    result: dict[str, Any] = {
        "type": "mantel_haenszel",
        "exposure": spec.exposure,
        "reference": col.label(levels[pair[0]]),
        "exposed": col.label(levels[pair[1]]),
        "outcome": spec.outcome,
        "strata": spec.strata,
    }
    by_site = SITE in spec.strata
    first = yield Query("terms" if by_site else "counts", base)
    result.update(n=int(first["n"][0]), n_dropped=int(first["n_dropped"][0]))
    if by_site:
        terms, strata = first["sums"], int(first["strata"][0])
        second = yield Query("homogeneity", {**base, "odds_ratio": _odds_ratio(terms, strata)})
        breslow_day = float(second["breslow_day"][0])
    else:
        lower, upper = bounds(first, "table")
        names = spec.strata_columns
        result["tables"] = [
            {"stratum": dict(zip(names, map(col.label, cell), strict=True)), "table": reported(lo, hi)}
            for cell, lo, hi in zip(itertools.product(*(schema.levels[n] for n in names)), lower.tolist(),
                                    upper.tolist(), strict=True)
            if np.sum(hi) > 0
        ]  # fmt: skip
        if np.any(lower != upper):
            return {**result, "not_computed": "small cells are published as ranges (minimum cell count); stratify "
                    'by "site" or by coarser columns'}  # fmt: skip
        tables = lower[informative(lower)]
        terms, strata = sums(tables), len(tables)
        breslow_day = homogeneity(tables, _odds_ratio(terms, strata))
    return {**result, **statistics(terms, strata, breslow_day, spec)}


def _pair(spec: MantelHaenszelSpec, levels: list[col.Level]) -> list[int]:
    """Indices of the reference and the exposed level among `levels` (those in use)."""
    labels = [col.label(level) for level in levels]
    if spec.exposures is None:
        if len(levels) != 2:
            raise AnalysisError(f"'{spec.exposure}' has {len(levels)} levels in use ({', '.join(labels)}); choose two "
                                "with exposures = [reference, exposed]")  # fmt: skip
        return [0, 1]
    missing = [col.label(e) for e in spec.exposures if col.label(e) not in labels]
    if missing:
        raise AnalysisError(f"exposure level {missing[0]!r} of '{spec.exposure}' not found (levels in use: "
                            f"{', '.join(labels)})")  # fmt: skip
    return [labels.index(col.label(e)) for e in spec.exposures]


def _odds_ratio(terms: np.ndarray, strata: int) -> float:
    if strata == 0:
        raise AnalysisError("no stratum has both exposure levels and both outcome values")
    r, s = terms[0], terms[1]
    if r == 0 or s == 0:
        raise AnalysisError(f"the pooled odds ratio is {'0' if r == 0 else 'infinite'}: in every stratum one "
                            "diagonal of the 2×2 table has an empty cell")  # fmt: skip
    return float(r / s)


def statistics(terms: np.ndarray, strata: int, breslow_day: float, spec: MantelHaenszelSpec) -> dict[str, Any]:
    """The results from the additive sums over `strata` informative strata and Breslow–Day's statistic."""
    t = dict(zip(TERMS, terms, strict=True))
    r, s = t["R"], t["S"]
    odds_ratio = r / s
    se = np.sqrt((t["PR"] / r**2 + (t["PS"] + t["QR"]) / (r * s) + t["QS"] / s**2) / 2)
    z = -distributions.norm_ppf(spec.alpha / 2)
    difference = abs(t["a"] - t["expected"])
    if spec.correction and difference >= 0.5:
        difference -= 0.5
    cmh = float(difference**2 / t["variance"])
    equal = None
    if strata > 1:
        equal = {"statistic": breslow_day, "df": strata - 1, "p": distributions.chi2_sf(breslow_day, strata - 1)}
    return {
        "n_strata": strata,
        "odds_ratio": float(odds_ratio),
        "log_odds_se": float(se),
        "ci_lower": float(np.exp(np.log(odds_ratio) - z * se)),
        "ci_upper": float(np.exp(np.log(odds_ratio) + z * se)),
        "alpha": spec.alpha,
        "risk_ratio": float(t["risk_exposed"] / t["risk_reference"]),
        "test_null": {"statistic": cmh, "df": 1, "p": distributions.chi2_sf(cmh, 1), "correction": spec.correction},
        "test_equal_odds": equal,
    }


def informative(tables: np.ndarray) -> np.ndarray:
    """Which (strata, 2, 2) tables have both exposure levels and both outcome values."""
    return np.all(tables.sum(axis=2) > 0, axis=1) & np.all(tables.sum(axis=1) > 0, axis=1)


def _cells(tables: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(tables[:, i, j].astype(float) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))


def sums(tables: np.ndarray) -> np.ndarray:
    """The additive sums (`TERMS`) over informative (strata, 2, 2) tables."""
    a, b, c, d = _cells(tables)
    n = a + b + c + d
    r, s, p, q = a * d / n, b * c / n, (a + d) / n, (b + c) / n
    expected = (a + b) * (a + c) / n
    variance = (a + b) * (c + d) * (a + c) * (b + d) / (n**2 * (n - 1))
    return np.array([np.sum(v) for v in (r, s, p * r, p * s, q * r, q * s, a * (c + d) / n, c * (a + b) / n, a,
                                         expected, variance)])  # fmt: skip


def homogeneity(tables: np.ndarray, odds_ratio: float) -> float:
    """Breslow–Day's Σ (a − E_ψ[a])² / Var_ψ[a] over informative tables at the pooled odds ratio ψ."""
    a, b, c, d = _cells(tables)
    rows, columns = a + b, a + c
    if odds_ratio == 1:
        expected = rows * columns / (a + b + c + d)
    else:  # statsmodels' root of (1 − ψ)E² + (ψ(a+b+a+c) + d − a)E − ψ(a+b)(a+c) = 0
        square, linear, constant = 1 - odds_ratio, odds_ratio * (rows + columns) + (d - a), -odds_ratio * rows * columns
        expected = (-linear + np.sqrt(linear**2 - 4 * square * constant)) / (2 * square)
    variance = 1 / (1 / expected + 1 / (columns - expected) + 1 / (rows - expected) + 1 / (d - a + expected))
    return float(np.sum((a - expected) ** 2 / variance))


def local(spec: MantelHaenszelSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    levels = params["levels"]
    exposure = col.codes(rows, spec.exposure, levels[spec.exposure])
    reference, exposed = params["pair"]
    keep = (exposure == reference) | (exposure == exposed)
    rows, is_exposed = rows[keep], (exposure[keep] == exposed).astype(np.int64)
    event = col.events(rows, spec.outcome).astype(np.int64)
    stratum, strata = col.cell_codes(rows, spec.strata_columns, levels)
    tables = np.zeros((strata, 2, 2), dtype=np.int64)
    np.add.at(tables, (stratum, 1 - is_exposed, 1 - event), 1)
    if query.phase == "counts":
        return {"table": tables, "n": np.array([len(rows)])}
    own = tables[informative(tables)]
    if query.phase == "homogeneity":
        return {"breslow_day": np.array([homogeneity(own, params["odds_ratio"])])}
    return {
        "n": np.array([len(rows)]),
        "guard:categories": np.concatenate([np.bincount(is_exposed, minlength=2), np.bincount(event, minlength=2)]),
        "guard:cells": own,
        "sums": sums(own),
        "strata": np.array([len(own)]),
    }
