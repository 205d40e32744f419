"""Linear mixed model with a random intercept per group, fitted by REML; equal to statsmodels' `MixedLM`.

Model y = Xβ + u_group + ε with u ~ N(0, γσ²), ε ~ N(0, σ²). A group with n rows, column sums s = Xᵀ1 and
outcome sum t has V = I + γ11ᵀ, V⁻¹ = I − w11ᵀ with w = γ/(1 + nγ), and log|V| = log(1 + nγ), so
XᵀV⁻¹X = Σ(XᵀX − w·ssᵀ), XᵀV⁻¹y = Σ(Xᵀy − w·st), yᵀV⁻¹y = Σ(yᵀy − w·t²) are sums over groups, as are their
γ-derivatives (w' = 1/(1 + nγ)², w'' = −2n/(1 + nγ)³). With β and σ² profiled out (m = N − p,
Q = yᵀV⁻¹y − β̂ᵀXᵀV⁻¹y, σ̂² = Q/m) the REML log-likelihood is
ℓ(γ) = −½Σlog(1 + nγ) − ½log|XᵀV⁻¹X| − (m/2)(log Q + log 2π − log m + 1).
The coordinator maximizes it by safeguarded Newton on log γ after evaluating γ = 0: if ℓ'(0) ≤ 0 the
maximum is the boundary γ = 0 (where statsmodels ends near 0 and warns).

Rounds grouped by `"site"` (each site is one group and sends only totals for the broadcast γ):
discover → moments (n, guards) → per γ: XᵀV⁻¹X, XᵀV⁻¹y, yᵀV⁻¹y, log|V| and their first two γ-derivatives
(γ = 0, then a few Newton steps); the totals over γ can give each site's rows and column sums back, so a site
holds its rows and rows per covariate category to its minimum count also under secure aggregation. Grouped by
a column (a level may span sites): discover → moments (per level n, Σx, Σy; XᵀX, Xᵀy, yᵀy); the coordinator
then evaluates ℓ(γ) alone.
Standard errors as statsmodels': the inverse Hessian in (β, γ) of the REML log-likelihood with σ²
profiled out; at the boundary γ = 0 they are conditional on γ (the OLS ones), where statsmodels'
Hessian is not negative definite.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, Plan, Query
from analyses.disclosure import DISCOVERY, MODEL_MOMENTS, Control, Item
from analyses.newton import MAX_CONDITION
from analyses.spec import Confidence, Spec

SITE = "site"
MAX_EVALUATIONS = 40
STEP = 3.0
"""Largest change of log γ in one Newton step."""
TOLERANCE = 1e-10
"""Stop when the Newton step in log γ is below this."""
LARGEST = 1e12
"""A variance ratio γ beyond this means no residual variance within groups."""

MANIFEST = (
    *DISCOVERY,
    *MODEL_MOMENTS,
    Item("moments", "groups", "(1,)", "1 if the site has rows, else 0 (grouping by site: each site is one group)"),
    Item("moments", "guard:own", "(k + 1,)", "grouping by site: the site's rows and rows per covariate category "
         "(the γ rounds' totals can give them back, so checked at the site also under secure aggregation)",
         Control.GUARD, at_site=True),
    Item("moments", "xtx", "(p, p)", "XᵀX of the intercept and covariates (grouping by a column)"),
    Item("moments", "xty", "(p,)", "Xᵀy (grouping by a column)"),
    Item("moments", "yty", "(1,)", "sum of the squared outcome (grouping by a column)"),
    Item("moments", "level_n", "(levels,)", "rows per level of the grouping column", Control.MINIMUM),
    Item("moments", "level_sum_x", "(levels, p − 1)", "sum of each covariate per level of the grouping column"),
    Item("moments", "level_sum_y", "(levels,)", "sum of the outcome per level of the grouping column"),
    Item("newton", "xvx", "(3, p, p)", "XᵀV⁻¹X and its first two derivatives in γ at the broadcast variance ratio γ "
         "(grouping by site)"),
    Item("newton", "xvy", "(3, p)", "XᵀV⁻¹y and its first two derivatives in γ (grouping by site)"),
    Item("newton", "yvy", "(3,)", "yᵀV⁻¹y and its first two derivatives in γ (grouping by site)"),
    Item("newton", "logdet", "(3,)", "log|V| = log(1 + nγ) and its first two derivatives in γ (grouping by site)"),
)  # fmt: skip


class MixedSpec(Spec, Confidence):
    """Linear model of `outcome` on `covariates` with a random intercept per level of `group` (or per site)."""

    type: Literal["mixed_linear"]
    outcome: str
    covariates: list[str] = Field(default_factory=list)
    group: str = SITE

    @model_validator(mode="after")
    def _group_is_not_a_variable(self) -> MixedSpec:
        if self.group in (self.outcome, *self.covariates):
            raise ValueError(f"'group' ({self.group}) must differ from the outcome and the covariates")
        return self

    def columns(self) -> list[str]:
        return [self.outcome, *self.covariates, *self.grouping()]

    def grouping(self) -> list[str]:
        return [] if self.group == SITE else [self.group]


@dataclass(frozen=True)
class Profile:
    """The REML log-likelihood at one γ with β and σ² profiled out, and what the results need."""

    value: float
    slope: float
    curvature: float
    """First and second derivatives of `value` in γ."""
    beta: np.ndarray
    scale: float
    hessian: np.ndarray
    """In (β, γ), σ² profiled out (statsmodels' parameterization)."""


def plan(spec: MixedSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, numeric=[spec.outcome], covariates=spec.covariates, grouping=spec.grouping())
    schema = discovery.read((yield ask), ask)
    base = schema.params()
    moments = yield Query("moments", base)
    names = ["Intercept", *col.design_names(spec.covariates, schema.kinds, schema.levels)]
    n, p = int(moments["n"][0]), len(names)
    by_site = spec.group == SITE
    groups = int(moments["groups"][0]) if by_site else int(np.count_nonzero(moments["level_n"]))
    if groups < 2:
        raise AnalysisError(f"a random intercept needs at least two groups with complete rows; found {groups}")
    if n <= p:
        raise AnalysisError(f"{n} complete rows cannot fit {p} fixed effects")
    search = _maximize(lambda total: _profile(total, n - p))
    gamma = next(search)
    while True:
        total = (yield Query("newton", {**base, "gamma": gamma})) if by_site else _level_terms(gamma, moments)
        try:
            gamma = search.send(total)
        except StopIteration as done:
            gamma, fit, evaluations = done.value
            break
    return _result(spec, names, gamma, fit, moments, groups, evaluations, 2 + (evaluations if by_site else 0))


def _level_terms(gamma: float, moments: Contribution) -> Contribution:
    """The REML terms from per-level sums (grouping by a column)."""
    sums = np.column_stack([moments["level_n"], moments["level_sum_x"]])
    return terms(gamma, moments["level_n"], sums, moments["level_sum_y"],
                 moments["xtx"], moments["xty"], float(moments["yty"][0]))  # fmt: skip


def terms(
    gamma: float,
    n: np.ndarray,
    sums: np.ndarray,
    sum_y: np.ndarray,
    xtx: np.ndarray,
    xty: np.ndarray,
    yty: float,
) -> Contribution:
    """XᵀV⁻¹X, XᵀV⁻¹y, yᵀV⁻¹y and log|V| with their first two γ-derivatives (stacked first), from per-group
    rows `n`, column sums `sums` (groups, p; intercept first) and outcome sums, and the totals XᵀX, Xᵀy, yᵀy."""
    n = np.asarray(n, dtype=float)
    one = 1 + n * gamma
    w = np.stack([gamma / one, 1 / one**2, -2 * n / one**3])
    first = np.array([1.0, 0.0, 0.0])
    return {
        "xvx": first[:, None, None] * xtx - np.einsum("kg,gi,gj->kij", w, sums, sums),
        "xvy": first[:, None] * xty - np.einsum("kg,gi,g->ki", w, sums, sum_y),
        "yvy": first * yty - w @ sum_y**2,
        "logdet": np.array([np.log1p(n * gamma).sum(), (n / one).sum(), -(n**2 / one**2).sum()]),
    }


def _profile(total: Contribution, m: int) -> Profile:
    """ℓ(γ), its γ-derivatives and the (β, γ) Hessian from the summed terms; m = N − p."""
    a, b, c, logdet = total["xvx"], total["xvy"], total["yvy"], total["logdet"]
    scale = np.sqrt(np.diag(a[0]))
    if np.any(scale <= 0) or np.linalg.cond(a[0] / np.outer(scale, scale)) > MAX_CONDITION:
        raise AnalysisError("the design is singular: a covariate is constant or collinear with others")
    inverse = np.linalg.inv(a[0])
    beta = inverse @ b[0]
    q = float(c[0] - b[0] @ beta)
    if not q > 0:
        raise AnalysisError("the covariates fit the outcome exactly: there is no residual variance")
    q1 = float(c[1] - 2 * beta @ b[1] + beta @ a[1] @ beta) / q
    q2 = float(c[2] - 2 * beta @ b[2] + beta @ a[2] @ beta) / q
    da = inverse @ a[1]
    value = -logdet[0] / 2 - np.linalg.slogdet(a[0])[1] / 2 - m / 2 * (np.log(q) + np.log(2 * np.pi) - np.log(m) + 1)
    slope = -logdet[1] / 2 - np.trace(da) / 2 - m / 2 * q1
    second = -logdet[2] / 2 - (np.trace(inverse @ a[2]) - np.trace(da @ da)) / 2 - m / 2 * (q2 - q1**2)
    cross = -m * (a[1] @ beta - b[1]) / q
    hessian = np.block([[-m * a[0] / q, cross[:, None]], [cross[None, :], np.array([[second]])]])
    curvature = second + float(cross @ inverse @ cross) * q / m
    return Profile(float(value), float(slope), curvature, beta, q / m, hessian)


def _maximize(
    evaluate: Callable[[Contribution], Profile],
) -> Generator[float, Contribution, tuple[float, Profile, int]]:
    """Yield each γ to evaluate (γ = 0 first), receive its terms; return γ̂, its profile and the evaluations.

    Newton on θ = log γ, steps capped at `STEP` and kept inside the bracket of signs of ℓ'.
    """
    fit = evaluate((yield 0.0))
    if fit.slope <= 0:
        return 0.0, fit, 1
    low, high = -np.inf, np.inf
    theta = float(np.log(-fit.slope / fit.curvature)) if fit.curvature < 0 else 0.0
    for evaluations in range(2, MAX_EVALUATIONS + 1):
        gamma = float(np.exp(theta))
        fit = evaluate((yield gamma))
        gradient = gamma * fit.slope
        curvature = gamma**2 * fit.curvature + gradient
        low, high = (theta, high) if gradient > 0 else (low, theta)
        step = -gradient / curvature if curvature < 0 else np.copysign(STEP, gradient)
        if abs(step) < TOLERANCE:
            return gamma, fit, evaluations
        theta += float(np.clip(step, -STEP, STEP))
        if not low < theta < high:
            theta = (low + high) / 2
        if theta > np.log(LARGEST):
            raise AnalysisError("the group variance grows without bound: the outcome barely varies within groups")
    raise AnalysisError(f"the REML fit did not converge in {MAX_EVALUATIONS} evaluations")


def _result(
    spec: MixedSpec,
    names: list[str],
    gamma: float,
    fit: Profile,
    moments: Contribution,
    groups: int,
    evaluations: int,
    rounds: int,
) -> dict[str, Any]:
    p = len(names)
    information = -fit.hessian if gamma > 0 else -fit.hessian[:p, :p]
    se = np.sqrt(np.diag(np.linalg.inv(information))[:p])
    z = fit.beta / se
    q = distributions.norm_ppf(1 - spec.alpha / 2)
    group_variance = gamma * fit.scale
    return {
        "type": "mixed_linear",
        "n": int(moments["n"][0]),
        "n_dropped": int(moments["n_dropped"][0]),
        "n_groups": groups,
        "outcome": spec.outcome,
        "group": spec.group,
        "method": "REML",
        "statistic": "z",
        "params": {
            name: {
                "coef": float(b),
                "se": float(s),
                "z": float(t),
                "p": float(2 * distributions.norm_sf(abs(t))),
                "ci_lower": float(b - q * s),
                "ci_upper": float(b + q * s),
            }
            for name, b, s, t in zip(names, fit.beta, se, z, strict=True)
        },
        "group_variance": group_variance,
        "residual_variance": fit.scale,
        "icc": group_variance / (group_variance + fit.scale),
        "log_likelihood": fit.value,
        "boundary": gamma == 0,
        "converged": True,
        "evaluations": evaluations,
        "rounds": rounds,
    }


def local(spec: MixedSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    y = col.numeric(rows, spec.outcome)
    design = col.design_matrix(rows, spec.covariates, params["kinds"], params["levels"])
    x = np.hstack([np.ones((len(rows), 1)), design])
    if query.phase == "newton":
        return terms(float(params["gamma"]), np.array([len(rows)]), x.sum(axis=0)[None, :], np.array([y.sum()]),
                     x.T @ x, x.T @ y, float(y @ y))  # fmt: skip
    out: Contribution = {
        "n": np.array([len(rows)]),
        "guard:categories": col.category_counts(rows, spec.covariates, params["kinds"], params["levels"]),
        "guard:saturation": np.array([len(rows), x.shape[1]]),
    }
    if spec.group == SITE:
        return {**out, "groups": np.array([int(len(rows) > 0)]),
                "guard:own": np.append(len(rows), out["guard:categories"])}  # fmt: skip
    levels = params["levels"][spec.group]
    index = col.codes(rows, spec.group, levels)
    sum_x = np.zeros((len(levels), x.shape[1] - 1))
    np.add.at(sum_x, index, x[:, 1:])
    return {
        **out,
        "xtx": x.T @ x,
        "xty": x.T @ y,
        "yty": np.array([y @ y]),
        "level_n": np.bincount(index, minlength=len(levels)),
        "level_sum_x": sum_x,
        "level_sum_y": np.bincount(index, y, len(levels)).astype(float),
    }
