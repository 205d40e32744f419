"""The remaining analyses on GBSG2 (text covariates, 5 unequal sites) against pooled references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from lifelines import CoxPHFitter
from lifelines.statistics import multivariate_logrank_test
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import survdiff

from tests.conftest import federate, pooled

SURV = {"duration": "time", "event": "cens"}


@pytest.fixture(scope="module")
def results(gbsg):
    return federate(
        gbsg,
        lr3={"type": "logrank", **SURV, "group": "tgrade"},
        lr_site={"type": "logrank", **SURV, "group": "horTh", "strata": ["site"]},
        xt={"type": "crosstab", "row": "horTh", "column": "tgrade"},
        ols={"type": "linear", "outcome": "tsize", "covariates": ["age", "tgrade", "menostat"]},
        pois={"type": "poisson", "outcome": "pnodes", "covariates": ["age", "horTh", "tgrade"]},
        cox_site={"type": "cox", **SURV, "covariates": ["horTh", "age", "tgrade", "pnodes"], "strata": ["site"]},
        cox_strata={"type": "cox", **SURV, "covariates": ["horTh", "age", "pnodes"], "strata": ["tgrade"]},
        ridge={"type": "cox", **SURV, "covariates": ["horTh", "age", "tgrade", "pnodes"], "penalizer": 0.05},
    )


@pytest.fixture(scope="module")
def data(gbsg):
    return pooled(gbsg)


def _dummies(data: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    design = pd.get_dummies(data[columns], drop_first=True, dtype=float)
    design.columns = [c if "_" not in c else "{}[T.{}]".format(*c.split("_", 1)) for c in design.columns]
    return design


def test_logrank_three_text_groups_and_by_site(results, data):
    ref = multivariate_logrank_test(data.time, data.tgrade, data.cens)
    assert results["lr3"]["statistic"] == pytest.approx(ref.test_statistic, abs=1e-10)
    statistic, p = survdiff(data.time, data.cens, data.horTh, strata=data.site)
    assert results["lr_site"]["statistic"] == pytest.approx(statistic, abs=1e-10)
    assert results["lr_site"]["p"] == pytest.approx(p, abs=1e-12)


def test_crosstab_of_text_columns(results, data):
    table = pd.crosstab(data.horTh, data.tgrade)
    assert results["xt"]["row_levels"] == list(table.index) and results["xt"]["column_levels"] == list(table.columns)
    np.testing.assert_array_equal(results["xt"]["table"], table.to_numpy())
    assert results["xt"]["chi2"]["statistic"] == pytest.approx(stats.chi2_contingency(table).statistic, abs=1e-10)


@pytest.mark.parametrize(
    "key, formula, family",
    [
        ("ols", "tsize ~ age + tgrade + menostat", None),
        ("pois", "pnodes ~ age + horTh + tgrade", sm.families.Poisson()),
    ],
)
def test_glms_with_text_covariates(results, data, key, formula, family):
    if family is None:
        ref = smf.ols(formula, data).fit()
    else:
        ref = smf.glm(formula, data, family=family).fit(tol=1e-14)
    got = results[key]["params"]
    assert sorted(got) == sorted(ref.params.index)
    for name in ref.params.index:
        assert got[name]["coef"] == pytest.approx(ref.params[name], abs=1e-10)
        assert got[name]["se"] == pytest.approx(ref.bse[name], abs=1e-10)
    assert results[key]["log_likelihood"] == pytest.approx(ref.llf, abs=1e-8)


@pytest.mark.parametrize("key, strata", [("cox_site", "site"), ("cox_strata", "tgrade")])
def test_stratified_cox_with_text_covariates(results, data, key, strata):
    covariates = ["horTh", "age", "tgrade", "pnodes"] if key == "cox_site" else ["horTh", "age", "pnodes"]
    design = _dummies(data, covariates)
    ref = PHReg(data.time, design, status=data.cens, strata=data[strata], ties="efron").fit(tol=1e-12)
    for name, coef, se in zip(design.columns, ref.params, ref.bse, strict=True):
        assert results[key]["params"][name]["coef"] == pytest.approx(coef, abs=1e-10)
        assert results[key]["params"][name]["se"] == pytest.approx(se, abs=1e-10)


def test_penalized_cox_with_text_covariates(results, data):
    design = _dummies(data, ["horTh", "age", "tgrade", "pnodes"])
    ref = CoxPHFitter(penalizer=0.05).fit(
        pd.concat([data[["time", "cens"]], design], axis=1), "time", "cens",
        fit_options={"step_size": 1.0, "precision": 1e-12, "r_precision": 0.0},
    )  # fmt: skip
    for name in design.columns:
        assert results["ridge"]["params"][name]["coef"] == pytest.approx(ref.params_[name], abs=1e-7)
        assert results["ridge"]["params"][name]["se"] == pytest.approx(ref.standard_errors_[name], abs=1e-7)
    assert results["ridge"]["log_likelihood"] == pytest.approx(ref.log_likelihood_, abs=1e-7)
