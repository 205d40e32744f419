"""Federated survival analyses equal lifelines / statsmodels on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import survdiff

from tests.conftest import federate, pooled

TIGHT = {"step_size": 1.0, "precision": 1e-12, "r_precision": 0.0}


def _lifelines_cox(data: pd.DataFrame, **kwargs) -> CoxPHFitter:
    return CoxPHFitter(**{k: v for k, v in kwargs.items() if k != "strata"}).fit(
        data, "time", "event", strata=kwargs.get("strata"), fit_options=TIGHT
    )


@pytest.mark.parametrize("group", [None, "sex", "ph.ecog"])
def test_kaplan_meier_equals_lifelines(lung, group):
    result = federate(lung, km={"type": "kaplan_meier", "duration": "time", "event": "status", "group": group})["km"]
    data = pooled(lung).dropna(subset=[c for c in ("time", "status", group) if c])
    groups = data.groupby(group) if group else [("all", data)]
    assert set(result["groups"]) == {str(int(k)) if group else k for k, _ in groups}
    for key, rows in groups:
        curve = result["groups"][str(int(key)) if group else key]
        km = KaplanMeierFitter().fit(rows["time"], rows["status"])
        np.testing.assert_array_equal(curve["time"], km.timeline)
        np.testing.assert_allclose(curve["survival"], km.survival_function_.iloc[:, 0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(curve["ci_lower"], km.confidence_interval_.iloc[:, 0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(curve["ci_upper"], km.confidence_interval_.iloc[:, 1], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(curve["at_risk"], km.event_table["at_risk"])
        np.testing.assert_array_equal(curve["events"], km.event_table["observed"])
        median = km.median_survival_time_
        assert curve["median"] == (None if np.isinf(median) else median)


def test_kaplan_meier_gbsg2_by_text_group(gbsg):
    result = federate(gbsg, km={"type": "kaplan_meier", "duration": "time", "event": "cens", "group": "tgrade"})["km"]
    data = pooled(gbsg)
    assert list(result["groups"]) == ["I", "II", "III"]
    for level, rows in data.groupby("tgrade"):
        km = KaplanMeierFitter().fit(rows["time"], rows["cens"])
        np.testing.assert_allclose(result["groups"][level]["survival"], km.survival_function_.iloc[:, 0], atol=1e-12)


def test_logrank_two_groups_equals_lifelines(lung):
    result = federate(lung, lr={"type": "logrank", "duration": "time", "event": "status", "group": "sex"})["lr"]
    data = pooled(lung)
    male, female = data[data.sex == 1], data[data.sex == 2]
    ref = logrank_test(male.time, female.time, male.status, female.status)
    assert result["df"] == 1
    assert result["statistic"] == pytest.approx(ref.test_statistic, abs=1e-10)
    assert result["p"] == pytest.approx(ref.p_value, abs=1e-12)


@pytest.mark.parametrize(
    "options", [{}, {"weightings": "wilcoxon"}, {"weightings": "tarone-ware"}, {"weightings": "peto"},
                {"weightings": "fleming-harrington", "p": 1.0, "q": 0.5}],
)  # fmt: skip
def test_multigroup_logrank_equals_lifelines(lung, options):
    block = {"type": "logrank", "duration": "time", "event": "status", "group": "ph.ecog", **options}
    result = federate(lung, lr=block)["lr"]
    data = pooled(lung).dropna(subset=["ph.ecog"])
    ref = multivariate_logrank_test(data.time, data["ph.ecog"], data.status, **options)
    assert result["df"] == 3
    assert result["statistic"] == pytest.approx(ref.test_statistic, abs=1e-9)
    assert result["p"] == pytest.approx(ref.p_value, abs=1e-12)


@pytest.mark.parametrize("strata", [["site"], ["ph.ecog"], ["site", "ph.ecog"]])
@pytest.mark.parametrize("weightings, weight_type", [(None, None), ("wilcoxon", "gb"), ("tarone-ware", "tw")])
def test_stratified_logrank_equals_statsmodels(lung, strata, weightings, weight_type):
    block = {"type": "logrank", "duration": "time", "event": "status", "group": "sex", "strata": strata}
    result = federate(lung, lr={**block, "weightings": weightings})["lr"]
    data = pooled(lung).dropna(subset=["ph.ecog"] if "ph.ecog" in strata else [])
    stratum = data[strata].astype(str).agg("/".join, axis=1)
    statistic, p = survdiff(data.time, data.status, data.sex, strata=stratum, weight_type=weight_type)
    assert result["statistic"] == pytest.approx(statistic, abs=1e-10)
    assert result["p"] == pytest.approx(p, abs=1e-12)


LIFELINES_COLUMNS = {"coef": "coef", "exp_coef": "exp(coef)", "se": "se(coef)", "z": "z", "p": "p",
                     "ci_lower": "coef lower 95%", "ci_upper": "coef upper 95%"}  # fmt: skip
COX_LUNG = {"type": "cox", "duration": "time", "event": "status", "covariates": ["age", "sex", "ph.ecog"]}


def _lung_cox_data(lung, extra=()):
    data = pooled(lung)[["time", "status", "age", "sex", "ph.ecog", "site", *extra]].dropna()
    return data.rename(columns={"status": "event"})


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_equals_statsmodels_phreg(lung, ties):
    result = federate(lung, cox={**COX_LUNG, "ties": ties})["cox"]
    data = _lung_cox_data(lung)
    ref = PHReg(data.time, data[["age", "sex", "ph.ecog"]], status=data.event, ties=ties).fit(tol=1e-12)
    coef = [result["params"][k]["coef"] for k in ("age", "sex", "ph.ecog")]
    se = [result["params"][k]["se"] for k in ("age", "sex", "ph.ecog")]
    np.testing.assert_allclose(coef, ref.params, rtol=0, atol=1e-10)
    np.testing.assert_allclose(se, ref.bse, rtol=0, atol=1e-10)
    assert result["log_likelihood"] == pytest.approx(ref.llf, abs=1e-9)
    assert result["n"] == len(data) and result["events"] == int(data.event.sum())


@pytest.mark.parametrize(
    "options",
    [{}, {"penalizer": 0.1}, {"strata": ["site"]}, {"strata": ["ph.karno"]}, {"strata": ["site"], "penalizer": 0.05}],
)
def test_cox_equals_lifelines(lung, options):
    result = federate(lung, cox={**COX_LUNG, **options})["cox"]
    data = _lung_cox_data(lung, extra=["ph.karno"] if "ph.karno" in options.get("strata", []) else [])
    columns = ["time", "event", "age", "sex", "ph.ecog", *options.get("strata", [])]
    ref = _lifelines_cox(data[columns], **options)
    summary = ref.summary
    for name in ("age", "sex", "ph.ecog"):
        got = result["params"][name]
        for key, column in LIFELINES_COLUMNS.items():
            assert got[key] == pytest.approx(summary.loc[name, column], abs=1e-7), (name, key)
    assert result["log_likelihood"] == pytest.approx(ref.log_likelihood_, abs=1e-7)
    lr = ref.log_likelihood_ratio_test()
    if not options.get("penalizer"):
        assert result["likelihood_ratio_test"]["statistic"] == pytest.approx(lr.test_statistic, abs=1e-7)


def test_cox_with_text_covariates_on_gbsg2(gbsg):
    block = {"type": "cox", "duration": "time", "event": "cens",
             "covariates": ["horTh", "age", "menostat", "tsize", "tgrade", "pnodes", "progrec", "estrec"]}  # fmt: skip
    result = federate(gbsg, cox=block)["cox"]
    data = pooled(gbsg)
    design = pd.get_dummies(data[block["covariates"]], drop_first=True, dtype=float)
    design.columns = [c if "_" not in c else "{}[T.{}]".format(*c.split("_", 1)) for c in design.columns]
    ref = PHReg(data.time, design, status=data.cens, ties="efron").fit(tol=1e-12)
    assert sorted(result["params"]) == sorted(design.columns)
    for name, coef, se in zip(design.columns, ref.params, ref.bse, strict=True):
        assert result["params"][name]["coef"] == pytest.approx(coef, abs=1e-10)
        assert result["params"][name]["se"] == pytest.approx(se, abs=1e-10)


@pytest.mark.parametrize("strata", [["site"], ["ph.karno"], ["site", "ph.karno"]])
def test_stratified_cox_equals_statsmodels(lung, strata):
    result = federate(lung, cox={**COX_LUNG, "strata": strata})["cox"]
    data = _lung_cox_data(lung, extra=[s for s in strata if s != "site"])
    stratum = data[strata].astype(str).agg("/".join, axis=1)
    ref = PHReg(data.time, data[["age", "sex", "ph.ecog"]], status=data.event, strata=stratum, ties="efron").fit(
        tol=1e-12
    )
    np.testing.assert_allclose([result["params"][k]["coef"] for k in ("age", "sex", "ph.ecog")], ref.params, atol=1e-10)
    np.testing.assert_allclose([result["params"][k]["se"] for k in ("age", "sex", "ph.ecog")], ref.bse, atol=1e-10)
    assert result["log_likelihood"] == pytest.approx(ref.llf, abs=1e-9)


def _rmst_reference(rows: pd.DataFrame, duration: str, event: str, tau: float) -> tuple[float, float]:
    """lifelines' RMST and, independently, its Greenwood-type standard error from lifelines' event table."""
    from lifelines.utils import restricted_mean_survival_time

    km = KaplanMeierFitter().fit(rows[duration], rows[event])
    table = km.event_table.loc[km.event_table.index <= tau]
    times = np.append(table.index.to_numpy(dtype=float), tau)
    survival = km.survival_function_.iloc[:, 0].loc[table.index].to_numpy()
    area_after = np.cumsum((survival * np.diff(times))[::-1])[::-1]  # ∫ from each time to τ
    n, d = table["at_risk"].to_numpy(dtype=float), table["observed"].to_numpy(dtype=float)
    used = (d > 0) & (n > d)
    variance = np.sum(area_after[used] ** 2 * d[used] / (n[used] * (n[used] - d[used])))
    return restricted_mean_survival_time(km, t=tau), float(np.sqrt(variance))


@pytest.mark.parametrize(("data", "duration", "event", "group", "tau"), [
    ("lung", "time", "status", "sex", 365.0),
    ("lung", "time", "status", None, 730.0),
    ("gbsg", "time", "cens", "horTh", 1825.0),
])  # fmt: skip
def test_rmst_equals_lifelines(lung, gbsg, data, duration, event, group, tau):
    frames = {"lung": lung, "gbsg": gbsg}[data]
    block = {"type": "rmst", "duration": duration, "event": event, "tau": tau, **({"group": group} if group else {})}
    result = federate(frames, r=block)["r"]
    rows = pooled(frames).dropna(subset=[c for c in (duration, event, group) if c])
    groups = rows.groupby(group) if group else [("all", rows)]
    estimates = {}
    for key, part in groups:
        name = str(int(key)) if isinstance(key, float | int) and group else str(key)
        rmst, se = _rmst_reference(part, duration, event, tau)
        got = result["groups"][name]
        assert got["rmst"] == pytest.approx(rmst, abs=1e-10)
        assert got["se"] == pytest.approx(se, abs=1e-10)
        estimates[name] = (rmst, se)
    if group:
        (first, (m1, s1)), (_, (m2, s2)) = estimates.items()
        assert result["difference"]["groups"][0] == first
        assert result["difference"]["estimate"] == pytest.approx(m1 - m2, abs=1e-10)
        assert result["difference"]["se"] == pytest.approx(np.hypot(s1, s2), abs=1e-10)


def test_rmst_beyond_the_last_follow_up_is_refused(lung):
    with pytest.raises(AssertionError, match="beyond the group's last follow-up time"):
        federate(lung, r={"type": "rmst", "duration": "time", "event": "status", "tau": 5000.0})
