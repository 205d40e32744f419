"""Log-rank test for two or more groups, plain or stratified.

Unstratified or stratified by columns: sites send events and removals per time
and (stratum, group); the coordinator forms observed, expected and the
hypergeometric covariance (equal to lifelines' `multivariate_logrank_test` and
statsmodels' `survdiff`). Stratified by `"site"`: each site computes its own
observed − expected and covariance over its own risk sets and only those leave.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.spec import Spec
from analyses.survival import counts
from analyses.survival.follow_up import FollowUp

SITE = "site"
"""Special stratum: each site is its own stratum."""


MANIFEST = (
    *DISCOVERY,
    Item("counts", "events", "(strata × groups, time cells)", "events per stratum, group and time cell",
         Control.MINIMUM, per_time=True),
    Item("counts", "removed", "(strata × groups, time cells)", "events + censorings per stratum, group and time cell",
         Control.MINIMUM, per_time=True),
    Item("counts", "n", "(1,)", "rows used", Control.MINIMUM),
    Item("counts", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("counts", "observed", "(groups,)", "stratified by site: (weighted) events per group at the site"),
    Item("counts", "expected", "(groups,)", "stratified by site: expected events per group at the site"),
    Item("counts", "variance", "(groups, groups)", "stratified by site: covariance of observed − expected"),
    Item("counts", "guard:group_sizes", "(groups,)", "patients per group", Control.GUARD),
)  # fmt: skip


class LogrankSpec(Spec, FollowUp):
    """Compare survival of `group`'s levels, optionally within strata (columns and/or `"site"`)."""

    type: Literal["logrank"]
    group: str
    strata: list[str] = Field(default_factory=list)
    weightings: Literal["wilcoxon", "tarone-ware", "peto", "fleming-harrington"] | None = None
    p: float = Field(0.0, ge=0, description="Fleming–Harrington exponent of S(t)")
    q: float = Field(0.0, ge=0, description="Fleming–Harrington exponent of 1 − S(t)")

    @model_validator(mode="after")
    def _check(self) -> LogrankSpec:
        if self.strata and self.weightings in ("peto", "fleming-harrington"):
            raise ValueError("stratified tests support weightings 'wilcoxon' and 'tarone-ware' only")
        if self.group in self.strata:
            raise ValueError("the group cannot also be a stratum")
        return self

    @property
    def strata_columns(self) -> list[str]:
        return [name for name in self.strata if name != SITE]

    def columns(self) -> list[str]:
        return [self.duration, self.event, self.group, *self.strata_columns]

    def grouping(self) -> list[str]:
        return [*self.strata_columns, self.group]


def plan(spec: LogrankSpec, declared: discovery.Declared) -> Plan:
    by_site = SITE in spec.strata
    ask = discovery.query(declared, numeric=[spec.duration, spec.event], grouping=spec.grouping(),
                          survival=None if by_site else spec)  # fmt: skip
    schema = discovery.read((yield ask), ask)
    groups = schema.levels[spec.group]
    if len(groups) < 2:
        shown = col.label(groups[0]) if groups else "none"
        raise AnalysisError(f"'{spec.group}' has a single level ({shown}); the test needs two or more")
    total = yield Query("counts", schema.params())
    if by_site:
        observed, expected, variance = total["observed"], total["expected"], total["variance"]
    else:
        shape = (-1, len(groups), schema.cells)
        observed, expected, variance = compare(total["events"].reshape(shape), total["removed"].reshape(shape), spec)
    z = (observed - expected)[:-1]
    statistic = float(z @ np.linalg.pinv(variance[:-1, :-1]) @ z)
    df = len(groups) - 1
    return {
        "type": "logrank",
        "n": int(total["n"][0]),
        "n_dropped": int(total["n_dropped"][0]),
        "group": spec.group,
        "strata": spec.strata,
        "weightings": spec.weightings,
        "time_grid": spec.time_grid,
        "time_resolution": spec.grid_width,
        "statistic": statistic,
        "df": df,
        "p": distributions.chi2_sf(statistic, df),
        "groups": {
            col.label(level): {"observed": float(o), "expected": float(e)}
            for level, o, e in zip(groups, observed, expected, strict=True)
        },
    }


def compare(events: np.ndarray, removed: np.ndarray, spec: LogrankSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed, expected and covariance summed over strata; arrays are (strata, groups, times)."""
    groups = events.shape[1]
    observed, expected, variance = np.zeros(groups), np.zeros(groups), np.zeros((groups, groups))
    for stratum_events, stratum_removed in zip(events, removed, strict=True):
        n_g = counts.at_risk(stratum_removed).astype(float)
        d_g = stratum_events.astype(float)
        n, d = n_g.sum(axis=0), d_g.sum(axis=0)
        rows = n > 0
        n_g, d_g, n, d = n_g[:, rows], d_g[:, rows], n[rows], d[rows]
        w = _weights(n, d, spec)
        with np.errstate(divide="ignore", invalid="ignore"):
            correction = np.where(n > 1, (n - d) / (n - 1), 1.0)
            factor = w**2 * correction * d / n**2
        observed += (w * d_g).sum(axis=1)
        expected += (w * n_g * d / n).sum(axis=1)
        variance += np.diag((factor * n * n_g).sum(axis=1)) - (factor * n_g) @ n_g.T
    return observed, expected, variance


def _weights(n: np.ndarray, d: np.ndarray, spec: LogrankSpec) -> np.ndarray:
    """lifelines' weights per time: 1, n, √n, Peto's S̃, or Fleming–Harrington Ŝ(t−)^p (1 − Ŝ(t−))^q."""
    if spec.weightings is None:
        return np.ones_like(n)
    if spec.weightings == "wilcoxon":
        return n
    if spec.weightings == "tarone-ware":
        return np.sqrt(n)
    if spec.weightings == "peto":
        return np.cumprod(1.0 - d / (n + 1))
    survival = np.concatenate([[1.0], np.cumprod(1.0 - d / n)[:-1]])
    return survival**spec.p * (1.0 - survival) ** spec.q


def local(spec: LogrankSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    levels = query.params["levels"]
    groups = len(levels[spec.group])
    cell, cells = col.cell_codes(rows, spec.grouping(), levels)
    time, event = spec.follow_up(rows)
    by_site = SITE in spec.strata
    # Stratified by site, a site works on its own times and never learns the others'.
    if by_site:
        time = np.unique(time, return_inverse=True)[1]
    length = int(time.max(initial=0)) + 1 if by_site else query.params["cells"]
    table = counts.local(time, event, cell, cells, length)
    out: Contribution = {
        "n": np.array([len(rows)]),
        "guard:group_sizes": np.bincount(col.codes(rows, spec.group, levels[spec.group]), minlength=groups),
    }
    if not by_site:
        return {**out, **table}
    shape = (-1, groups, length)
    observed, expected, variance = compare(table["events"].reshape(shape), table["removed"].reshape(shape), spec)
    return {**out, "observed": observed, "expected": expected, "variance": variance}
