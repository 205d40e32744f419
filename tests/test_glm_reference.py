"""Federated GLMs equal statsmodels on the pooled rows (information at the final β)."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from tests.conftest import federate, pooled


def _check(result, ref, names, stat_atol=1e-8):
    for name, coef, se, z, p, (low, high) in zip(
        names, ref.params, ref.bse, ref.tvalues, ref.pvalues, np.asarray(ref.conf_int()), strict=True
    ):
        got = result["params"][name]
        assert got["coef"] == pytest.approx(coef, abs=1e-10), name
        assert got["se"] == pytest.approx(se, abs=1e-10), name
        assert got["z"] == pytest.approx(z, abs=stat_atol), name
        assert got["p"] == pytest.approx(p, abs=1e-10), name
        assert got["ci_lower"] == pytest.approx(low, abs=1e-10), name
        assert got["ci_upper"] == pytest.approx(high, abs=1e-10), name
    assert result["log_likelihood"] == pytest.approx(ref.llf, abs=1e-8)
    assert result["n"] == ref.nobs


def test_logistic_equals_statsmodels_glm(lung):
    result = federate(lung, logit={"type": "logistic", "outcome": "status", "covariates": ["age", "sex", "ph.ecog"]})
    data = pooled(lung)[["status", "age", "sex", "ph.ecog"]].dropna()
    ref = smf.glm("status ~ age + sex + Q('ph.ecog')", data, family=sm.families.Binomial()).fit(tol=1e-14)
    _check(result["logit"], ref, ["Intercept", "age", "sex", "ph.ecog"])
    assert result["logit"]["deviance"] == pytest.approx(ref.deviance, abs=1e-8)
    assert result["logit"]["null_deviance"] == pytest.approx(ref.null_deviance, abs=1e-8)
    assert result["logit"]["aic"] == pytest.approx(ref.aic, abs=1e-8)
    assert result["logit"]["n_dropped"] == len(pooled(lung)) - len(data)


def test_linear_equals_statsmodels_ols(lung):
    result = federate(lung, ols={"type": "linear", "outcome": "wt.loss", "covariates": ["age", "sex", "ph.ecog"]})[
        "ols"
    ]
    data = pooled(lung)[["wt.loss", "age", "sex", "ph.ecog"]].dropna()
    ref = smf.ols("Q('wt.loss') ~ age + sex + Q('ph.ecog')", data).fit()
    _check(result, ref, ["Intercept", "age", "sex", "ph.ecog"])
    assert result["statistic"] == "t" and result["df_resid"] == ref.df_resid
    assert result["scale"] == pytest.approx(ref.scale, rel=1e-12)
    glm = smf.glm("Q('wt.loss') ~ age + sex + Q('ph.ecog')", data).fit(tol=1e-14)
    assert result["deviance"] == pytest.approx(glm.deviance, rel=1e-12)
    assert result["log_likelihood"] == pytest.approx(glm.llf, abs=1e-8)


def test_poisson_with_exposure_equals_statsmodels(lung):
    block = {"type": "poisson", "outcome": "status", "covariates": ["age", "sex"], "exposure": "time"}
    result = federate(lung, pois=block)["pois"]
    data = pooled(lung)[["status", "age", "sex", "time"]].dropna()
    ref = smf.glm("status ~ age + sex", data, family=sm.families.Poisson(), exposure=data["time"]).fit(tol=1e-14)
    _check(result, ref, ["Intercept", "age", "sex"])
    assert result["deviance"] == pytest.approx(ref.deviance, abs=1e-8)
    assert result["null_deviance"] == pytest.approx(ref.null_deviance, abs=1e-8)


def test_logistic_with_text_covariates_on_gbsg2(gbsg):
    block = {"type": "logistic", "outcome": "cens", "covariates": ["horTh", "age", "menostat", "tgrade", "pnodes"]}
    result = federate(gbsg, logit=block)["logit"]
    ref = smf.glm("cens ~ horTh + age + menostat + tgrade + pnodes", pooled(gbsg), family=sm.families.Binomial()).fit(
        tol=1e-14
    )
    assert sorted(result["params"]) == sorted(ref.params.index)
    _check(result, ref, list(ref.params.index))
