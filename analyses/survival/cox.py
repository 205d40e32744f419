"""Cox proportional hazards, equal to lifelines' `CoxPHFitter` and statsmodels' `PHReg`.

Rounds: discover (kinds, levels in use, axis length) → moments (n, Σx, Σx² for lifelines'
standardization, events per time cell: their totals give the pooled event times) → Newton steps
on standardized covariates.
Pooled baseline: per Newton step sites send risk-set sums per pooled event time.
Stratified by `"site"`: each site sends only its log-likelihood, gradient and
Hessian over its own risk sets (it never learns other sites' event times).
An L2 `penalizer` λ subtracts N·λ·½·Σβ_s² on the standardized scale, as lifelines does.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import Field

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, MODEL_MOMENTS, Control, Item, time_guard
from analyses.newton import maximize
from analyses.spec import Confidence, Spec
from analyses.survival import counts, risk_sets
from analyses.survival.follow_up import FollowUp, TimeGrid

SITE = "site"


RISK_SET_ITEMS = (
    Item("newton", "S0", "(strata, event times)", "risk-set sum of exp(xβ) per event time"),
    Item("newton", "S1", "(strata, event times, p)", "risk-set sum of exp(xβ)·x per event time"),
    Item("newton", "S2", "(strata, event times, p, p)", "risk-set sum of exp(xβ)·xxᵀ per event time"),
    Item("newton", "D0", "(strata, event times)", "sum of exp(xβ) over the deaths at each event time"),
    Item("newton", "D1", "(strata, event times, p)", "sum of exp(xβ)·x over the deaths at each event time"),
    Item("newton", "D2", "(strata, event times, p, p)", "sum of exp(xβ)·xxᵀ over the deaths at each event time"),
    Item("newton", "d", "(strata, event times)", "deaths per event time", Control.MINIMUM, per_time=True),
    Item("newton", "z", "(p,)", "sum of the covariates of all deaths"),
)  # fmt: skip
"""Per Newton step, the pooled-baseline reply: risk-set and tied-death sums per pooled event time."""

SITE_ITEMS = (
    Item("newton", "loglik", "(1,)", "stratified by site: the site's log partial likelihood"),
    Item("newton", "gradient", "(p,)", "stratified by site: its gradient"),
    Item("newton", "hessian", "(p, p)", "stratified by site: its Hessian"),
)  # fmt: skip
"""Per Newton step, stratified by site: the site's own partial likelihood and its derivatives."""

MANIFEST = (
    *DISCOVERY,
    *MODEL_MOMENTS,
    Item("moments", "events", "(1,)", "number of events", Control.MINIMUM),
    Item("moments", "deaths", "(strata, time cells)", "events per stratum and time cell (their totals give the "
         "pooled event times)", Control.MINIMUM, per_time=True),
    Item("moments", "sum_x", "(p,)", "sum of each covariate (for standardization)"),
    Item("moments", "sum_x2", "(p,)", "sum of squares of each covariate (for standardization)"),
    *RISK_SET_ITEMS,
    Item("newton", "guard:removals", "(strata, event times + 1)", "patients leaving the risk set between event "
         "times", Control.GUARD, per_time=True),
    *SITE_ITEMS,
)  # fmt: skip


class CoxSpec(Spec, FollowUp, Confidence):
    """Hazard ratios of `covariates` for `duration`/`event`."""

    type: Literal["cox"]
    covariates: list[str] = Field(min_length=1)
    ties: Literal["efron", "breslow"] = "efron"
    penalizer: float = Field(0.0, ge=0)
    strata: list[str] = Field(default_factory=list)

    @property
    def strata_columns(self) -> list[str]:
        return [name for name in self.strata if name != SITE]

    def columns(self) -> list[str]:
        return [self.duration, self.event, *self.covariates, *self.strata_columns]

    def grouping(self) -> list[str]:
        return self.strata_columns


def plan(spec: CoxSpec, declared: discovery.Declared) -> Plan:
    by_site = SITE in spec.strata
    found = discovery.query(declared, numeric=[spec.duration, spec.event], covariates=spec.covariates,
                            grouping=spec.grouping(), survival=None if by_site else spec)  # fmt: skip
    schema = discovery.read((yield found), found)
    moments = yield Query("moments", schema.params())
    times = [] if by_site else np.flatnonzero(moments["deaths"].sum(axis=0)).tolist()
    base = {**schema.params(), "times": times}
    n, events = int(moments["n"][0]), int(moments["events"][0])
    if events == 0:
        raise AnalysisError("no events among the complete rows")
    fit = yield from newton(spec, spec.ties, schema, moments, n, base)
    return {"type": "cox", "n": n, "n_dropped": int(moments["n_dropped"][0]), "events": events, **fit}


class CoxModel(Protocol):
    """What the Newton steps read of a Cox analysis (proportional hazards, or with time-varying covariates)."""

    covariates: list[str]
    strata: list[str]
    penalizer: float
    alpha: float
    time_grid: TimeGrid

    @property
    def grid_width(self) -> float: ...


def newton(
    spec: CoxModel, ties: str, schema: discovery.Schema, moments: Contribution, rows: int, base: dict[str, Any]
) -> Plan:
    """Newton steps on covariates standardized over `rows` rows (lifelines' scaling, its penalty N·λ·½·Σβ²);
    returns the fit's part of the result."""
    names = col.design_names(spec.covariates, schema.kinds, schema.levels)
    mean = moments["sum_x"] / rows
    sd = np.sqrt(np.maximum(moments["sum_x2"] - rows * mean**2, 0) / max(rows - 1, 1))
    if not np.all(sd > 0):
        raise AnalysisError(f"covariate '{names[int(np.argmin(sd))]}' is constant in every complete row")
    penalty = rows * spec.penalizer

    def ask(beta: np.ndarray) -> Query:
        return Query("newton", {**base, "mean": mean.tolist(), "sd": sd.tolist(), "beta": beta.tolist()})

    def evaluate(total: Contribution, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if SITE in spec.strata:
            loglik, gradient, hessian = float(total["loglik"][0]), total["gradient"], total["hessian"]
        else:
            loglik, gradient, hessian = risk_sets.partial_likelihood(total, beta, ties)
        return (
            loglik - penalty / 2 * float(beta @ beta),
            gradient - penalty * beta,
            hessian - penalty * np.eye(len(beta)),
        )

    fit = yield from maximize(np.zeros(len(names)), ask, evaluate)
    beta = fit.beta / sd
    se = np.sqrt(np.diag(np.linalg.inv(-fit.hessian))) / sd
    z = beta / se
    q = distributions.norm_ppf(1 - spec.alpha / 2)
    lr = 2 * (fit.objective - fit.initial_objective)
    return {
        "ties": ties,
        "penalizer": spec.penalizer,
        "strata": spec.strata,
        "time_grid": spec.time_grid,
        "time_resolution": spec.grid_width,
        "params": {
            name: {
                "coef": float(b),
                "exp_coef": float(np.exp(b)),
                "se": float(s),
                "z": float(t),
                "p": float(2 * distributions.norm_sf(abs(t))),
                "ci_lower": float(b - q * s),
                "ci_upper": float(b + q * s),
            }
            for name, b, s, t in zip(names, beta, se, z, strict=True)
        },
        "log_likelihood": fit.objective,
        "log_likelihood_null": fit.initial_objective,
        "likelihood_ratio_test": {"statistic": lr, "df": len(names), "p": distributions.chi2_sf(lr, len(names))},
        "newton_steps": fit.evaluations,
    }


def local(spec: CoxSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    x = col.design_matrix(rows, spec.covariates, params["kinds"], params["levels"])
    time, event = spec.follow_up(rows)
    stratum, strata = col.cell_codes(rows, spec.strata_columns, params["levels"])
    if query.phase == "moments":
        out = {
            "n": np.array([len(rows)]),
            "events": np.array([int(event.sum())]),
            "sum_x": x.sum(axis=0),
            "sum_x2": (x**2).sum(axis=0),
            "guard:categories": col.category_counts(rows, spec.covariates, params["kinds"], params["levels"]),
            "guard:saturation": np.array([len(rows), x.shape[1]]),
        }
        if SITE not in spec.strata:
            out["deaths"] = counts.local(time, event, stratum, strata, params["cells"])["events"]
        return out
    standardized = (x - np.asarray(params["mean"])) / np.asarray(params["sd"])
    beta = np.asarray(params["beta"], dtype=float)
    if SITE not in spec.strata:
        times = np.asarray(params["times"], dtype=np.int64)
        sums = risk_sets.sums(time, event, standardized, beta, stratum, strata, times)
        return {**sums, "guard:removals": time_guard(time, stratum, times)}
    own_times = np.unique(time[event == 1])
    loglik, gradient, hessian = risk_sets.partial_likelihood(
        risk_sets.sums(time, event, standardized, beta, stratum, strata, own_times), beta, spec.ties
    )
    return {"loglik": np.array([loglik]), "gradient": gradient, "hessian": hessian}
