"""Propensity-weighted Cox regression equals lifelines' weighted CoxPHFitter on the pooled rows (robust variance:
lifelines where no event time is tied, an independent pooled computation everywhere), balance equals pandas."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter

from analyses.contract import DataError
from tests.conftest import federate, make_site, pooled, protocol_text, study
from workbench.datasets import lung_hospitals

TIGHT = {"step_size": 1.0, "precision": 1e-20, "r_precision": 0.0}
LUNG = {"duration": "time", "event": "status", "treatment": "sex", "arms": [1, 2],
        "confounders": ["age", "ph.ecog", "wt.loss"]}  # fmt: skip
GBSG = {"duration": "time", "event": "cens", "treatment": "horTh", "arms": ["no", "yes"],
        "confounders": ["age", "menostat", "tsize", "tgrade", "pnodes", "progrec", "estrec"]}  # fmt: skip


def _reference(rows: pd.DataFrame, block: dict, robust: bool) -> tuple[pd.DataFrame, CoxPHFitter, pd.Series]:
    """Pooled rows with their weights, lifelines' fit and statsmodels' propensity coefficients."""
    data = rows.dropna(subset=[block["duration"], block["event"], block["treatment"], *block["confounders"]]).copy()
    data["treated"] = (data[block["treatment"]] == block["arms"][1]).astype(float)
    x = sm.add_constant(pd.get_dummies(data[block["confounders"]], drop_first=True, dtype=float))
    propensity = sm.GLM(data.treated, x, family=sm.families.Binomial()).fit(tol=1e-14)
    e, t = propensity.predict(x), data.treated
    kind = block.get("weights", "ate")
    if kind == "ate":
        share = t.mean() if block.get("stabilized") else 1.0
        data["w"] = np.where(t == 1, share / e, (1 - share if block.get("stabilized") else 1.0) / (1 - e))
    elif kind == "att":
        data["w"] = np.where(t == 1, 1.0, e / (1 - e))
    else:
        data["w"] = np.where(t == 1, 1 - e, e)
    fitter = CoxPHFitter().fit(data[[block["duration"], block["event"], "treated", "w"]], block["duration"],
                               block["event"], weights_col="w", robust=robust, fit_options=TIGHT)  # fmt: skip
    return data, fitter, propensity.params


def _sandwich(data: pd.DataFrame, block: dict, beta: float, bread: float) -> float:
    """Robust SE from Lin–Wei score residuals with every row still at risk in each risk set (ties included)."""
    time, event, x, w = (data[block["duration"]].to_numpy(), data[block["event"]].to_numpy(),
                         data.treated.to_numpy(), data.w.to_numpy())  # fmt: skip
    risk = w * np.exp(beta * x)
    residuals = np.zeros(len(data))
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        s0, s1 = risk[at_risk].sum(), (risk * x)[at_risk].sum()
        deaths = (time == t) & (event == 1)
        residuals += np.where(deaths, x - s1 / s0, 0.0)
        residuals -= np.where(at_risk, np.exp(beta * x) * w[deaths].sum() / s0 * (x - s1 / s0), 0.0)
    meat = np.sum((w * residuals) ** 2)
    return float(np.sqrt(bread * meat * bread))


def _check(result: dict, data: pd.DataFrame, fitter: CoxPHFitter, block: dict, propensity: pd.Series) -> None:
    got = result["params"][block["treatment"]]
    assert got["coef"] == pytest.approx(fitter.params_["treated"], abs=1e-8)
    bread = float(fitter.variance_matrix_.iloc[0, 0])
    assert got["se_model"] == pytest.approx(np.sqrt(bread), abs=1e-8)
    assert got["se"] == pytest.approx(_sandwich(data, block, fitter.params_["treated"], bread), abs=1e-10)
    assert result["n"] == len(data) and result["events"] == data[block["event"]].sum()
    ours = {re.sub(r"(.+)\[T\.(.+)\]", r"\1_\2", name).replace("Intercept", "const"): p["coef"]
            for name, p in result["propensity"]["params"].items()}  # fmt: skip
    np.testing.assert_allclose([ours[name] for name in propensity.index], propensity.to_numpy(), atol=1e-8, rtol=0)
    assert result["arms"]["treated"]["sum_weights"] == pytest.approx(data.w[data.treated == 1].sum(), rel=1e-10)


@pytest.mark.parametrize("options", [{}, {"weights": "att"}, {"weights": "overlap"}, {"stabilized": True}])
def test_weighted_cox_equals_lifelines_on_lung_by_institution(lung, options):
    block = {"type": "ipw_cox", **LUNG, **options}
    result = federate(lung, c=block)["c"]
    data, fitter, propensity = _reference(pooled(lung), block, robust=False)
    _check(result, data, fitter, block, propensity)


def test_robust_variance_equals_lifelines_where_no_event_time_is_tied(lung):
    """lifelines' risk sets at tied times follow row order; on the patients with a follow-up time of their own
    the two sandwiches are the same number."""
    rows = pooled(lung).dropna(subset=LUNG["confounders"]).drop_duplicates("time", keep=False)
    sites = {site: part.drop(columns="site") for site, part in rows.groupby("site")}
    for weights in ("ate", "overlap"):
        block = {"type": "ipw_cox", **LUNG, "weights": weights}
        result = federate(sites, c=block)["c"]
        _, fitter, _ = _reference(rows, block, robust=True)
        assert result["params"]["sex"]["se"] == pytest.approx(fitter.standard_errors_["treated"], abs=1e-8)
        assert result["params"]["sex"]["coef"] == pytest.approx(fitter.params_["treated"], abs=1e-8)


def test_hormone_therapy_in_gbsg2_with_text_confounders_and_balance(gbsg):
    """GBSG2's real treatment (hormone therapy), text confounders dummy-coded; SMDs as pandas computes them."""
    block = {"type": "ipw_cox", **GBSG}
    result = federate(gbsg, c=block)["c"]
    data, fitter, propensity = _reference(pooled(gbsg), block, robust=False)
    _check(result, data, fitter, block, propensity)
    dummies = pd.get_dummies(data[GBSG["confounders"]], drop_first=True, dtype=float)
    treated, control = dummies[data.treated == 1], dummies[data.treated == 0]
    scale = np.sqrt((treated.var() + control.var()) / 2)
    after = (treated.mul(data.w[data.treated == 1], axis=0).sum() / data.w[data.treated == 1].sum()
             - control.mul(data.w[data.treated == 0], axis=0).sum() / data.w[data.treated == 0].sum())  # fmt: skip
    names = {"menostat_Pre": "menostat[T.Pre]", "tgrade_II": "tgrade[T.II]", "tgrade_III": "tgrade[T.III]"}
    for column in dummies.columns:
        got = result["balance"][names.get(column, column)]
        assert got["smd_before"] == pytest.approx((treated[column].mean() - control[column].mean()) / scale[column],
                                                  abs=1e-10)  # fmt: skip
        assert got["smd_after"] == pytest.approx(after[column] / scale[column], abs=1e-10)
    assert max(abs(b["smd_after"]) for b in result["balance"].values()) < 0.05  # weighting balanced every one
    assert max(abs(b["smd_before"]) for b in result["balance"].values()) > 0.5  # … that was far apart


def test_masked_under_the_default_policy(tmp_path):
    folders = [make_site(tmp_path / site, rows, "") for site, (_, rows) in lung_hospitals().items()]
    block = 'id = "c"\ntype = "ipw_cox"\nduration = "time"\nevent = "status"\ntreatment = "sex"\narms = [1, 2]\n'
    results, exchange = study(folders, protocol_text(block + 'confounders = ["age", "ph.ecog"]'))
    assert exchange.summary()["mode"] == "masked" and not exchange.refusals, results
    rows = pd.concat([rows for _, rows in lung_hospitals().values()], ignore_index=True)
    spec = {**LUNG, "confounders": ["age", "ph.ecog"]}
    data, fitter, propensity = _reference(rows, spec, robust=False)
    _check(results["c"], data, fitter, spec, propensity)


def test_a_value_outside_both_arms_is_a_clear_error(lung):
    with pytest.raises(DataError, match=r"treatment column 'sex' holds a value that is neither arm \(0 = control"):
        federate(lung, c={"type": "ipw_cox", **LUNG, "arms": [0, 1]})
    with pytest.raises(DataError, match="holds numbers; write its arms as it holds them"):
        federate(lung, c={"type": "ipw_cox", **LUNG, "arms": ["m", "f"]})
