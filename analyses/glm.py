"""Generalized linear models (linear, logistic, Poisson) by coordinator-driven Newton/IRLS.

Rounds: discover (kinds, levels in use) → moments (n, Σy: the null model) → Newton steps.
Per step a site returns XᵀWX, the score Xᵀ(y − μ), deviance, log-likelihood
and n at the broadcast β. Canonical links only, so Newton equals IRLS.
Standard errors use the information at the final β (statsmodels reports the
previous iterate's unless fitted with a tight `tol`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from analyses import columns as col
from analyses import discovery, distributions
from analyses.contract import AnalysisError, Contribution, DataError, Plan, Query
from analyses.disclosure import DISCOVERY, MODEL_MOMENTS, Control, Item
from analyses.newton import maximize
from analyses.spec import Confidence, Spec

MANIFEST = (
    *DISCOVERY,
    *MODEL_MOMENTS,
    Item("moments", "sum_y", "(1,)", "sum of the outcome (for the null model)"),
    Item("moments", "sum_exposure", "(1,)", "sum of the exposure (Poisson)"),
    Item("newton", "n", "(1,)", "rows used", Control.MINIMUM),
    Item("newton", "information", "(p, p)", "XᵀWX at the broadcast coefficients"),
    Item("newton", "score", "(p,)", "Xᵀ(y − μ) at the broadcast coefficients"),
    Item("newton", "deviance", "(1,)", "deviance at the broadcast coefficients"),
    Item("newton", "log_likelihood", "(1,)", "log-likelihood at the broadcast coefficients"),
)  # fmt: skip


class GlmSpec(Spec, Confidence):
    """`linear` (gaussian), `logistic` (binomial) or `poisson` regression with an intercept."""

    type: Literal["linear", "logistic", "poisson"]
    outcome: str
    covariates: list[str]
    exposure: str | None = None

    @model_validator(mode="after")
    def _exposure_only_for_poisson(self) -> GlmSpec:
        if self.exposure is not None and self.type != "poisson":
            raise ValueError("'exposure' applies only to type = \"poisson\"")
        return self

    def columns(self) -> list[str]:
        return [self.outcome, *self.covariates, *([self.exposure] if self.exposure else [])]


def plan(spec: GlmSpec, declared: discovery.Declared) -> Plan:
    ask = discovery.query(declared, numeric=spec.columns()[:1], covariates=spec.covariates)
    return (yield from fit(spec, discovery.read((yield ask), ask)))


def fit(spec: GlmSpec, schema: discovery.Schema) -> Plan:
    """The model's rounds after discovery (another analysis may run them inside its own, e.g. a propensity score)."""
    base = {**schema.params(), "covariates": spec.covariates}
    moments = yield Query("moments", base)
    n = int(moments["n"][0])
    names = ["Intercept", *col.design_names(spec.covariates, schema.kinds, schema.levels)]
    if n <= len(names):
        raise AnalysisError(f"{n} complete rows cannot fit {len(names)} parameters")
    beta = np.zeros(len(names))
    beta[0] = _null_intercept(spec.type, moments)

    def evaluate(total: Contribution, _: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        return -float(total["deviance"][0]) / 2, total["score"], -total["information"]

    fit = yield from maximize(beta, lambda b: Query("newton", {**base, "beta": b.tolist()}), evaluate)
    null_deviance = -2 * fit.initial_objective
    return _result(spec, names, fit.beta, fit.totals, null_deviance, int(moments["n_dropped"][0]))


def _null_intercept(family: str, moments: Contribution) -> float:
    """The intercept-only MLE, so the first Newton round also yields the null deviance."""
    n, total = float(moments["n"][0]), float(moments["sum_y"][0])
    if family == "linear":
        return total / n
    if family == "logistic":
        if not 0 < total < n:
            raise AnalysisError(
                "the outcome takes a single value in every complete row; logistic regression needs both 0 and 1"
            )
        return float(np.log(total / (n - total)))
    if total <= 0:
        raise AnalysisError("the outcome is zero in every complete row; Poisson regression needs some counts")
    return float(np.log(total / float(moments["sum_exposure"][0])))


def _result(
    spec: GlmSpec, names: list[str], beta: np.ndarray, totals: Contribution, null_deviance: float, n_dropped: int
) -> dict[str, Any]:
    n, p = int(totals["n"][0]), len(names)
    deviance = float(totals["deviance"][0])
    df_resid = n - p
    if spec.type == "linear":  # t with the residual degrees of freedom, as statsmodels does
        scale = deviance / df_resid
        log_likelihood = -n / 2 * (np.log(2 * np.pi * deviance / n) + 1)
        ppf, sf = (lambda q: distributions.t_ppf(q, df_resid)), (lambda x: distributions.t_sf(x, df_resid))
    else:
        scale, log_likelihood = 1.0, float(totals["log_likelihood"][0])
        ppf, sf = distributions.norm_ppf, distributions.norm_sf
    with np.errstate(invalid="ignore", over="ignore"):
        se = np.sqrt(np.diag(np.linalg.inv(totals["information"])) * scale)
    if not np.all(np.isfinite(se)):
        raise AnalysisError(
            "the standard errors are infinite at the fit (perfect separation, or a covariate that predicts the "
            "outcome exactly?)"
        )
    z = beta / se
    q = ppf(1 - spec.alpha / 2)
    params = {
        name: {
            "coef": float(b),
            "se": float(s),
            "z": float(t),
            "p": float(2 * sf(abs(t))),
            "ci_lower": float(b - q * s),
            "ci_upper": float(b + q * s),
        }
        for name, b, s, t in zip(names, beta, se, z, strict=True)
    }
    return {
        "type": spec.type,
        "n": n,
        "n_dropped": n_dropped,
        "outcome": spec.outcome,
        "params": params,
        "statistic": "t" if spec.type == "linear" else "z",
        "df_resid": df_resid,
        "scale": scale,
        "deviance": deviance,
        "null_deviance": null_deviance,
        "log_likelihood": float(log_likelihood),
        "aic": float(-2 * log_likelihood + 2 * p),
    }


def local(spec: GlmSpec, rows: pd.DataFrame, query: Query) -> Contribution:
    params = query.params
    y = _outcome(spec, rows)
    exposure = col.numeric(rows, spec.exposure) if spec.exposure else np.ones(len(rows))
    if spec.exposure and (exposure <= 0).any():
        raise DataError(f"exposure column '{spec.exposure}' must be positive")
    design = col.design_matrix(rows, spec.covariates, params["kinds"], params["levels"])
    x = np.hstack([np.ones((len(rows), 1)), design])
    if query.phase == "moments":
        return {
            "n": np.array([len(rows)]),
            "sum_y": np.array([y.sum()]),
            "sum_exposure": np.array([exposure.sum()]),
            "guard:categories": col.category_counts(
                rows, spec.covariates, params["kinds"], params["levels"], [y] if spec.type == "logistic" else []
            ),
            "guard:saturation": np.array([len(rows), x.shape[1]]),
        }
    eta = x @ np.asarray(params["beta"], dtype=float) + np.log(exposure)
    mu, weight, deviance, log_likelihood = _family(spec.type, y, eta)
    return {
        "n": np.array([len(rows)]),
        "information": x.T @ (x * weight[:, None]),
        "score": x.T @ (y - mu),
        "deviance": np.array([deviance]),
        "log_likelihood": np.array([log_likelihood]),
    }


def _outcome(spec: GlmSpec, rows: pd.DataFrame) -> np.ndarray:
    if spec.type == "logistic":
        return col.events(rows, spec.outcome)
    y = col.numeric(rows, spec.outcome)
    if spec.type == "poisson" and (y < 0).any():
        raise DataError(f"outcome '{spec.outcome}' of a Poisson model must be a count (found {y[y < 0][0]:g})")
    return y


def _family(family: str, y: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Mean, IRLS weight, deviance and log-likelihood (0 for gaussian: it needs the global scale)."""
    from scipy import special  # at the node, for GLM rounds only

    if family == "linear":
        return eta, np.ones_like(eta), float(np.sum((y - eta) ** 2)), 0.0
    if family == "logistic":
        mu = special.expit(eta)
        log_likelihood = float(np.sum(y * eta - np.logaddexp(0, eta)))
        return mu, mu * (1 - mu), -2 * log_likelihood, log_likelihood
    mu = np.exp(eta)
    deviance = 2 * float(np.sum(special.xlogy(y, y) - special.xlogy(y, mu) - (y - mu)))
    return mu, mu, deviance, float(np.sum(special.xlogy(y, mu) - mu - special.gammaln(y + 1)))
