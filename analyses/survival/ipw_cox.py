"""Propensity-score-weighted Cox regression of a 0/1 treatment, with robust (sandwich) variance and balance.

Rounds: discover → the propensity score e(x), a logistic regression of the treatment on the confounders
(`analyses.glm`'s rounds) → with e(x) broadcast, each site weights its own rows and sends per arm the weight
sums and the confounders' plain and weighted sums (balance), and the deaths per time cell → Newton steps of
the weighted Efron partial likelihood (as lifelines' `CoxPHFitter(weights_col=…)`) → one round for the robust
variance: with the pooled weighted risk-set means at the event times broadcast, each site sends Σ UᵢUᵢᵀ of its
rows' score residuals Uᵢ = wᵢ[δᵢ(xᵢ − x̄(Tᵢ)) − exp(xᵢβ) Σ_{tⱼ ≤ Tᵢ} (dwⱼ / S0ⱼ)(xᵢ − x̄(tⱼ))] (Lin & Wei, the
sandwich lifelines computes with `robust=True`; its risk sets at tied times follow row order, ours hold every
row still at risk, so the two agree exactly where no event time is tied).

Weights: `ate` 1/e (treated), 1/(1 − e) (control), `stabilized` multiplies them by the arm's share;
`att` 1 and e/(1 − e); `overlap` 1 − e and e. Balance: standardized mean differences of every confounder
(dummy-coded), (m₁ − m₀)/√((s₁² + s₀²)/2) with the unweighted arms' variances as denominator before and
after weighting (cobalt's default), means weighted after.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from analyses import columns as col
from analyses import discovery, distributions, glm
from analyses.contract import AnalysisError, Contribution, DataError, Plan, Query
from analyses.disclosure import DISCOVERY, Control, Item
from analyses.newton import maximize
from analyses.spec import Confidence, Spec
from analyses.survival import counts, risk_sets
from analyses.survival.follow_up import FollowUp

SCORE = "score:"
"""Prefix of the propensity model's phases (its rounds are `analyses.glm`'s)."""

MANIFEST = (
    *DISCOVERY,
    *(Item(SCORE + item.phase, item.key, item.shape, f"propensity model: {item.meaning}", item.control)
      for item in glm.MANIFEST if item.phase != discovery.PHASE),
    Item("weights", "n", "(2,)", "rows per arm (control, treated)", Control.MINIMUM),
    Item("weights", "n_dropped", "(1,)", "rows left out for a missing value"),
    Item("weights", "events", "(2,)", "events per arm", Control.MINIMUM),
    Item("weights", "deaths", "(time cells,)", "events per time cell (their totals give the pooled event times)",
         Control.MINIMUM, per_time=True),
    Item("weights", "weight", "(2, 2)", "per arm: sum of the weights and of their squares"),
    Item("weights", "sum_x", "(2, p)", "per arm: sum of each confounder"),
    Item("weights", "sum_x2", "(2, p)", "per arm: sum of squares of each confounder"),
    Item("weights", "sum_wx", "(2, p)", "per arm: weighted sum of each confounder"),
    Item("weights", "guard:categories", "(2, k)", "per arm: rows per category of each text confounder (the balance "
         "table's means give them back)", Control.GUARD),
    Item("newton", "S0", "(1, event times)", "risk-set sum of w·exp(xβ) per event time"),
    Item("newton", "S1", "(1, event times, 1)", "risk-set sum of w·exp(xβ)·x per event time"),
    Item("newton", "S2", "(1, event times, 1, 1)", "risk-set sum of w·exp(xβ)·x² per event time"),
    Item("newton", "D0", "(1, event times)", "sum of w·exp(xβ) over the deaths at each event time"),
    Item("newton", "D1", "(1, event times, 1)", "sum of w·exp(xβ)·x over the deaths at each event time"),
    Item("newton", "D2", "(1, event times, 1, 1)", "sum of w·exp(xβ)·x² over the deaths at each event time"),
    Item("newton", "d", "(1, event times)", "deaths per event time", Control.MINIMUM, per_time=True),
    Item("newton", "dw", "(1, event times)", "sum of the deaths' weights per event time"),
    Item("newton", "z", "(1,)", "weighted sum of the treatment over all deaths"),
    Item("robust", "meat", "(1, 1)", "sum of the squared score residuals (the sandwich's middle)"),
)  # fmt: skip

WEIGHTS = Literal["ate", "att", "overlap"]


class IpwCoxSpec(Spec, FollowUp, Confidence):
    """Hazard ratio of the treated arm of `treatment` against its control arm for `duration`/`event`, weighted by
    a propensity score on `confounders`."""

    type: Literal["ipw_cox"]
    treatment: str
    arms: list[str | float] = Field([0, 1], min_length=2, max_length=2, description="[control, treated] values")
    confounders: list[str] = Field(min_length=1)
    weights: WEIGHTS = "ate"
    stabilized: bool = False

    @model_validator(mode="after")
    def _stabilized_ate_only(self) -> IpwCoxSpec:
        if self.stabilized and self.weights != "ate":
            raise ValueError('stabilized applies to weights = "ate" only (ATT and overlap weights need none)')
        return self

    def columns(self) -> list[str]:
        return [self.duration, self.event, self.treatment, *self.confounders]

    def score(self) -> glm.GlmSpec:
        """The propensity model: logistic regression of the treatment on the confounders."""
        return glm.GlmSpec(id=self.id, type="logistic", outcome=self.treatment, covariates=self.confounders)


def plan(spec: IpwCoxSpec, declared: discovery.Declared) -> Plan:
    found = discovery.query(declared, numeric=[spec.duration, spec.event], covariates=spec.confounders, survival=spec)
    schema = discovery.read((yield found), found)
    score = yield from _prefixed(glm.fit(spec.score(), schema))
    coefficients = [score["params"][name]["coef"] for name in score["params"]]
    base = {**schema.params(), "score": coefficients}
    first = yield Query("weights", base)
    n = first["n"].astype(float)
    if np.any(n < 2):
        raise AnalysisError(
            f"'{spec.treatment}' needs at least two rows in each arm ({', '.join(map(col.label, spec.arms))})"
        )
    base["share"] = (n / n.sum()).tolist()
    if spec.stabilized:  # the weights depend on the arms' shares: ask again with them
        first = yield Query("weights", base)
    times = np.flatnonzero(first["deaths"]).tolist()
    if not times:
        raise AnalysisError("no events among the complete rows")
    total = n.sum()
    mean, sd = n[1] / total, float(np.sqrt(n[0] * n[1] / (total * (total - 1))))
    base = {**base, "times": times, "mean": mean, "sd": sd}

    def evaluate(sums: Contribution, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        return risk_sets.partial_likelihood(sums, beta, "efron")

    fit = yield from maximize(np.zeros(1), lambda b: Query("newton", {**base, "beta": b.tolist()}), evaluate)
    s0 = fit.totals["S0"].ravel()
    means = fit.totals["S1"].ravel() / s0
    hazard = fit.totals["dw"].ravel() / s0  # Σ weights of the deaths / S0 per event time
    meat = (yield Query("robust", {**base, "beta": fit.beta.tolist(), "means": means.tolist(),
                                   "hazard": hazard.tolist()}))["meat"]  # fmt: skip
    bread = np.linalg.inv(-fit.hessian)
    se = float(np.sqrt((bread @ meat @ bread)[0, 0])) / sd
    naive = float(np.sqrt(bread[0, 0])) / sd
    beta = float(fit.beta[0]) / sd
    q = distributions.norm_ppf(1 - spec.alpha / 2)
    return {
        "type": "ipw_cox",
        "n": int(total),
        "n_dropped": int(first["n_dropped"][0]),
        "events": int(first["events"].sum()),
        "treatment": spec.treatment,
        "weights": spec.weights,
        "stabilized": spec.stabilized,
        "time_grid": spec.time_grid,
        "time_resolution": spec.grid_width,
        "propensity": {key: score[key] for key in ("params", "n", "deviance", "null_deviance", "aic")},
        "arms": _arms(first),
        "balance": _balance(first, col.design_names(spec.confounders, schema.kinds, schema.levels)),
        "params": {
            spec.treatment: {
                "coef": beta,
                "exp_coef": float(np.exp(beta)),
                "se": se,
                "se_model": naive,
                "z": beta / se,
                "p": float(2 * distributions.norm_sf(abs(beta / se))),
                "ci_lower": beta - q * se,
                "ci_upper": beta + q * se,
                "exp_ci_lower": float(np.exp(beta - q * se)),
                "exp_ci_upper": float(np.exp(beta + q * se)),
            }
        },  # fmt: skip
        "log_likelihood": fit.objective,
        "newton_steps": fit.evaluations,
    }


def _prefixed(inner: Plan) -> Plan:
    """Run another analysis' rounds under this one, its phases prefixed with SCORE."""
    query = next(inner)
    while True:
        total = yield Query(SCORE + query.phase, query.params)
        try:
            query = inner.send(total)
        except StopIteration as done:
            return done.value


def _arms(first: Contribution) -> dict[str, dict[str, float]]:
    """Rows, events, summed weights and effective sample size per arm."""
    out = {}
    for arm, label in enumerate(("control", "treated")):
        total, squares = first["weight"][arm]
        out[label] = {"n": int(first["n"][arm]), "events": int(first["events"][arm]), "sum_weights": float(total),
                      "effective_n": float(total**2 / squares)}  # fmt: skip
    return out


def _balance(first: Contribution, names: list[str]) -> dict[str, dict[str, float]]:
    """Standardized mean differences of each confounder column before and after weighting."""
    n = first["n"].astype(float)[:, None]
    mean = first["sum_x"] / n
    variance = (first["sum_x2"] - n * mean**2) / (n - 1)
    scale = np.sqrt((variance[0] + variance[1]) / 2)
    weighted = first["sum_wx"] / first["weight"][:, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        before, after = (mean[1] - mean[0]) / scale, (weighted[1] - weighted[0]) / scale
    return {
        name: {"mean_treated": float(mean[1, j]), "mean_control": float(mean[0, j]),
               "weighted_mean_treated": float(weighted[1, j]), "weighted_mean_control": float(weighted[0, j]),
               "smd_before": float(before[j]), "smd_after": float(after[j])}
        for j, name in enumerate(names)
    }  # fmt: skip


def local(spec: IpwCoxSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    treated = _treated(spec, rows)
    if query.phase.startswith(SCORE):
        coded = rows.assign(**{spec.treatment: treated})
        return glm.local(spec.score(), coded, Query(query.phase.removeprefix(SCORE), params))
    time, event = spec.follow_up(rows)
    x = col.design_matrix(rows, spec.confounders, params["kinds"], params["levels"])
    w = _weights(spec, x, treated, params)
    arm = treated.astype(np.int64)
    if query.phase == "weights":
        return {
            "n": np.bincount(arm, minlength=2),
            "events": np.bincount(arm, event, minlength=2).astype(np.int64),
            "deaths": counts.local(time, event, np.zeros(len(rows), dtype=np.int64), 1, params["cells"])["events"][0],
            "weight": np.stack([np.bincount(arm, w, 2), np.bincount(arm, w**2, 2)], axis=1),
            "sum_x": np.stack([x[arm == a].sum(axis=0) for a in (0, 1)]),
            "sum_x2": np.stack([(x[arm == a] ** 2).sum(axis=0) for a in (0, 1)]),
            "sum_wx": np.stack([(w[arm == a, None] * x[arm == a]).sum(axis=0) for a in (0, 1)]),
            "guard:categories": np.stack([col.category_counts(rows[arm == a], spec.confounders, params["kinds"],
                                                              params["levels"]) for a in (0, 1)]),
        }  # fmt: skip
    x = ((treated - params["mean"]) / params["sd"])[:, None]
    beta = np.asarray(params["beta"], dtype=float)
    times = np.asarray(params["times"], dtype=np.int64)
    if query.phase == "newton":
        return risk_sets.sums(time, event, x, beta, np.zeros(len(rows), dtype=np.int64), 1, times, weights=w)
    return {"meat": _meat(time, event, x, beta, w, times, params)}


def _treated(spec: IpwCoxSpec, rows: pd.DataFrame) -> np.ndarray:
    """1 for the treated arm, 0 for the control arm; any other value is an error."""
    values = col.require(rows, spec.treatment)
    numeric = col.kind(rows, spec.treatment) == col.NUMERIC
    if numeric != all(isinstance(arm, float | int) for arm in spec.arms):
        held = "numbers" if numeric else "text"
        raise DataError(f"treatment column '{spec.treatment}' holds {held}; write its arms as it holds them")
    control, treated = (float(arm) if numeric else str(arm) for arm in spec.arms)
    keys = values.to_numpy(dtype=float) if numeric else values.astype(str).to_numpy()
    if not np.isin(keys, [control, treated]).all():
        raise DataError(f"treatment column '{spec.treatment}' holds a value that is neither arm "
                        f"({col.label(control)} = control, {col.label(treated)} = treated); filter the cohort "
                        "to the two arms")  # fmt: skip
    return (keys == treated).astype(float)


def _weights(spec: IpwCoxSpec, x: np.ndarray, treated: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Each row's weight from its confounders `x` and the broadcast propensity coefficients."""
    e = 1 / (1 + np.exp(-(params["score"][0] + x @ np.asarray(params["score"][1:], dtype=float))))
    if np.any((e <= 0) | (e >= 1)):
        raise DataError("a propensity score of exactly 0 or 1 (a confounder predicts the treatment perfectly)")
    if spec.weights == "ate":
        w = np.where(treated == 1, 1 / e, 1 / (1 - e))
        if "share" in params and spec.stabilized:
            w = w * np.where(treated == 1, params["share"][1], params["share"][0])
        return w
    if spec.weights == "att":
        return np.where(treated == 1, 1.0, e / (1 - e))
    return np.where(treated == 1, 1 - e, e)


def _meat(time: np.ndarray, event: np.ndarray, x: np.ndarray, beta: np.ndarray, w: np.ndarray, times: np.ndarray,
          params: dict[str, Any]) -> np.ndarray:  # fmt: skip
    """Σ UᵢUᵢᵀ of this site's rows' weighted score residuals at the broadcast pooled risk-set means."""
    means = np.asarray(params["means"])[:, None]
    hazard = np.asarray(params["hazard"])
    upto = np.searchsorted(times, time, side="right")  # event times tⱼ ≤ Tᵢ
    c0 = np.concatenate([[0.0], np.cumsum(hazard)])[upto]
    c1 = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(hazard[:, None] * means, axis=0)])[upto]
    at = np.clip(np.searchsorted(times, time), 0, len(times) - 1)
    own = np.where((event == 1)[:, None] & np.isin(time, times)[:, None], x - means[at], 0.0)
    residual = w[:, None] * (own - np.exp(x @ beta)[:, None] * (x * c0[:, None] - c1))
    return residual.T @ residual
