"""The federated random-intercept linear mixed model equals statsmodels' MixedLM (REML) on the pooled rows."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from pydantic import ValidationError
from scipy import stats
from statsmodels.regression.mixed_linear_model import MixedLM

from analyses.contract import DataError
from analyses.driver import run_in_memory
from tests.conftest import SPEC, federate, make_site, pooled, protocol_text, study
from workbench.datasets import lung_hospitals

TOLERANCE = 1e-6


def _reml(model: MixedLM):
    """statsmodels' REML fit, converged fully: Nelder–Mead first (BFGS from the default start stalls on these
    data), then BFGS with a tight gradient tolerance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # boundary and singular-covariance warnings
        rough = model.fit(reml=True, method="nm", maxiter=5000)
        fit = model.fit(reml=True, start_params=rough.params_object, method="bfgs", gtol=1e-8, maxiter=1000)
    assert fit.converged or float(np.asarray(fit.cov_re_unscaled)[0, 0]) < 1e-8  # or stalled at the boundary γ = 0
    return fit


def _reference(data: pd.DataFrame, outcome: str, covariates: list[str], group: str):
    rows = data.dropna(subset=[outcome, *covariates, group])
    x = sm.add_constant(rows[covariates].astype(float)).rename(columns={"const": "Intercept"})
    return _reml(MixedLM(rows[outcome].astype(float), x, groups=rows[group])), rows


def _check(result, ref, rows, group: str, se=None, alpha: float = 0.05) -> dict[str, float]:
    """Compare with the reference (SEs with `se` if given) by name; return the largest differences found."""
    names = list(ref.fe_params.index)
    assert sorted(result["params"]) == sorted(names)
    got = pd.DataFrame(result["params"]).T.loc[names]
    bse = ref.bse_fe if se is None else pd.Series(np.asarray(se), index=names)
    quantile = stats.norm.ppf(1 - alpha / 2)
    diffs = {
        "coef": float(np.abs(got["coef"] - ref.fe_params).max()),
        "se": float(np.abs(got["se"] - bse).max()),
        "group_variance": abs(result["group_variance"] - float(np.asarray(ref.cov_re)[0, 0])) / ref.scale,
        "residual_variance": abs(result["residual_variance"] - ref.scale) / ref.scale,
        "log_likelihood": abs(result["log_likelihood"] - ref.llf),
        "ci_lower": float(np.abs(got["ci_lower"] - (ref.fe_params - quantile * bse)).max()),
    }
    if se is None:
        diffs["z"] = float(np.abs(got["z"] - ref.tvalues[names]).max())
        diffs["p"] = float(np.abs(got["p"] - ref.pvalues[names]).max())
        diffs["ci_upper"] = float(np.abs(got["ci_upper"] - ref.conf_int(alpha=alpha)[1][names]).max())
    assert all(value < TOLERANCE for value in diffs.values()), diffs
    assert np.allclose(got["ci_upper"] - got["coef"], got["coef"] - got["ci_lower"], rtol=1e-12)
    icc = result["group_variance"] / (result["group_variance"] + result["residual_variance"])
    assert result["icc"] == pytest.approx(icc, rel=1e-12)
    assert result["n"] == len(rows) and result["n_groups"] == rows[group].nunique()
    assert result["method"] == "REML" and result["converged"]
    return diffs


def test_random_intercept_per_site_equals_statsmodels_reml(lung):
    block = {"type": "mixed_linear", "outcome": "age", "covariates": ["sex", "ph.ecog"]}
    result = federate(lung, mixed=block)["mixed"]
    ref, rows = _reference(pooled(lung), "age", ["sex", "ph.ecog"], "site")
    _check(result, ref, rows, "site")
    assert not result["boundary"] and result["group_variance"] > 0
    assert result["n_groups"] == 18 and result["n_dropped"] == len(pooled(lung)) - len(rows)
    assert result["rounds"] <= 15


def test_a_group_variance_at_the_boundary_is_zero_with_the_ols_standard_errors(lung):
    covariates = ["age", "sex", "ph.ecog"]
    result = federate(lung, mixed={"type": "mixed_linear", "outcome": "wt.loss", "covariates": covariates})["mixed"]
    ref, rows = _reference(pooled(lung), "wt.loss", covariates, "site")
    assert result["boundary"] and result["group_variance"] == 0 and result["icc"] == 0
    assert result["evaluations"] == 1  # ℓ'(0) < 0: no Newton step
    ols = sm.OLS(rows["wt.loss"], sm.add_constant(rows[covariates])).fit()  # statsmodels' Hessian is not definite here
    _check(result, ref, rows, "site", se=ols.bse)
    assert result["residual_variance"] == pytest.approx(ols.scale, rel=1e-12)


def test_grouping_by_a_column_whose_levels_span_sites_equals_statsmodels(lung):
    result = federate(lung, mixed={"type": "mixed_linear", "outcome": "wt.loss", "covariates": ["age", "sex"],
                                   "group": "ph.ecog"})["mixed"]  # fmt: skip
    ref, rows = _reference(pooled(lung), "wt.loss", ["age", "sex"], "ph.ecog")
    _check(result, ref, rows, "ph.ecog")
    assert not result["boundary"] and result["n_groups"] == 4 and result["rounds"] == 2


def test_grouping_by_the_institution_column_equals_grouping_by_site(lung):
    frames = {site: rows.assign(inst=int(site.removeprefix("inst-"))) for site, rows in lung.items()}
    block = {"type": "mixed_linear", "outcome": "ph.karno", "covariates": ["age", "sex"]}
    results = federate(frames, by_site=block, by_column={**block, "group": "inst"})
    by_site, by_column = results["by_site"], results["by_column"]
    ref, rows = _reference(pooled(frames), "ph.karno", ["age", "sex"], "inst")
    _check(by_site, ref, rows, "inst")
    _check(by_column, ref, rows, "inst")
    for name, estimate in by_site["params"].items():
        assert by_column["params"][name]["coef"] == pytest.approx(estimate["coef"], abs=1e-9)
        assert by_column["params"][name]["se"] == pytest.approx(estimate["se"], abs=1e-9)
    assert by_column["log_likelihood"] == pytest.approx(by_site["log_likelihood"], abs=1e-9)


def test_text_covariates_and_a_text_grouping_column_on_gbsg2(gbsg):
    block = {"type": "mixed_linear", "outcome": "tsize", "covariates": ["horTh", "age", "menostat", "pnodes"],
             "group": "tgrade", "alpha": 0.1}  # fmt: skip
    result = federate(gbsg, mixed=block)["mixed"]
    data = pooled(gbsg)
    ref = _reml(smf.mixedlm("tsize ~ horTh + age + menostat + pnodes", data, groups=data["tgrade"]))
    _check(result, ref, data, "tgrade", alpha=0.1)
    assert list(result["params"]) == ["Intercept", "horTh[T.yes]", "age", "menostat[T.Pre]", "pnodes"]


def test_gbsg2_per_site_intercept_only_and_at_the_boundary(gbsg):
    """GBSG2's sites are a random split: most outcomes have no site effect (γ = 0), oestrogen receptors a small one."""
    empty = federate(gbsg, mixed={"type": "mixed_linear", "outcome": "estrec"})["mixed"]
    ref, rows = _reference(pooled(gbsg), "estrec", [], "site")
    _check(empty, ref, rows, "site")
    assert list(empty["params"]) == ["Intercept"] and not empty["boundary"] and 0 < empty["icc"] < 0.01
    result = federate(gbsg, mixed={"type": "mixed_linear", "outcome": "age", "covariates": ["tsize"]})["mixed"]
    ref, rows = _reference(pooled(gbsg), "age", ["tsize"], "site")
    ols = sm.OLS(rows["age"], sm.add_constant(rows[["tsize"]])).fit()
    assert result["boundary"]
    _check(result, ref, rows, "site", se=ols.bse)


def test_masked_at_hospital_size_with_the_default_policy(tmp_path):
    folders = [make_site(tmp_path / site, rows, "") for site, (_, rows) in lung_hospitals().items()]
    blocks = [
        'id = "by_site"\ntype = "mixed_linear"\noutcome = "age"\ncovariates = ["sex", "ph.ecog"]',
        'id = "by_ecog"\ntype = "mixed_linear"\noutcome = "wt.loss"\ncovariates = ["age", "sex"]\ngroup = "ph.ecog"',
    ]
    results, exchange = study(folders, protocol_text(*blocks))
    assert exchange.summary()["mode"] == "masked" and exchange.summary()["min_count"] == 5
    data = pd.concat([rows.assign(site=site) for site, (_, rows) in lung_hospitals().items()], ignore_index=True)
    data = data.dropna(subset=["age", "sex", "ph.ecog", "wt.loss"])  # the study's one population
    ref, rows = _reference(data, "age", ["sex", "ph.ecog"], "site")
    _check(results["by_site"], ref, rows, "site")
    assert results["by_ecog"]["error"].startswith(
        "not published: rows per level of the grouping column: a cross-site total between 1 and 4"
    )  # one patient with ECOG 3 in the whole study


def test_bad_input_is_refused_with_a_clear_message(lung):
    with pytest.raises(ValidationError, match=r"'group' \(sex\) must differ from the outcome and the covariates"):
        SPEC.validate_python({"id": "m", "type": "mixed_linear", "outcome": "age", "covariates": ["sex"],
                              "group": "sex"})  # fmt: skip
    frames = dict(lung)
    frames["inst-01"] = frames["inst-01"].assign(age=frames["inst-01"].age.astype(str) + " years")
    spec = SPEC.validate_python({"id": "m", "type": "mixed_linear", "outcome": "age", "covariates": ["sex"]})
    with pytest.raises(DataError, match="column 'age' must be numeric but holds text"):
        run_in_memory({"m": spec}, frames)
    one = {"inst-01": lung["inst-01"]}
    assert run_in_memory({"m": spec}, one)["m"] == {
        "error": "a random intercept needs at least two groups with complete rows; found 1"
    }
    twice = SPEC.validate_python({"id": "m", "type": "mixed_linear", "outcome": "age", "covariates": ["sex", "sex2"]})
    doubled = {site: rows.assign(sex2=rows.sex * 2) for site, rows in lung.items()}
    assert run_in_memory({"m": twice}, doubled)["m"]["error"].startswith("the design is singular")
