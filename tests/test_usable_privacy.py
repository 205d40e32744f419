"""Usable and private at hospital sizes: default policies, masked, every analysis computes and equals the pooled
reference; nothing per site in the clear; thresholds on published totals; a guard that blocks attacks, not studies."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from lifelines.utils import restricted_mean_survival_time
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg

from analyses.disclosure import Refused, protect
from hospital_node.audit import AuditLog
from hospital_node.site import open_site
from tests.conftest import NodeFolders, make_site, protocol_text, roster, study
from workbench.datasets import lung_hospitals
from workbench.errors import StudyError
from workbench.protocol import parse

SURV = 'duration = "time"\nevent = "status"'
SUITE = [
    'id = "baseline"\ntype = "describe"\nvariables = ["age", "wt.loss"]',
    f'id = "km"\ntype = "kaplan_meier"\n{SURV}\ngroup = "sex"',
    f'id = "lr"\ntype = "logrank"\n{SURV}\ngroup = "sex"',
    f'id = "cox"\ntype = "cox"\n{SURV}\ncovariates = ["age", "sex", "ph.ecog"]',
    f'id = "cox_site"\ntype = "cox"\n{SURV}\ncovariates = ["age", "sex", "ph.ecog"]\nstrata = ["site"]',
    'id = "logit"\ntype = "logistic"\noutcome = "status"\ncovariates = ["age", "sex"]',
    'id = "ols"\ntype = "linear"\noutcome = "wt.loss"\ncovariates = ["age", "sex", "ph.ecog"]',
    'id = "t"\ntype = "ttest"\nvariable = "age"\ngroup = "sex"',
    'id = "xt"\ntype = "crosstab"\nrow = "sex"\ncolumn = "ph.ecog"',
    'id = "a"\ntype = "anova"\nvariable = "age"\ngroup = "ph.ecog"\ngroups = [0, 1, 2]',
    'id = "r"\ntype = "pearson"\nx = "age"\ny = "wt.loss"',
    f'id = "rmst"\ntype = "rmst"\n{SURV}\ngroup = "sex"\ntau = 365',
]
USED = ["age", "wt.loss", "time", "status", "sex", "ph.ecog"]


def _hospitals(folder, policy: str = "") -> list:
    """The five lung hospitals (43–47 patients) with `policy` (default: the default policy, minimum count 5)."""
    return [make_site(folder / site, rows, policy) for site, (_, rows) in lung_hospitals().items()]


def _pooled() -> pd.DataFrame:
    rows = pd.concat([rows.assign(site=site) for site, (_, rows) in lung_hospitals().items()], ignore_index=True)
    return rows.dropna(subset=USED)  # the study's one population


def test_default_policies_masked_every_analysis_computes_and_equals_the_pooled_reference(tmp_path):
    results, exchange = study(_hospitals(tmp_path), protocol_text(*SUITE))
    assert exchange.summary()["mode"] == "masked" and exchange.summary()["min_count"] == 5
    assert not exchange.refusals and all("error" not in r for r in results.values()), results
    data = _pooled()
    assert {r["n"] for name, r in results.items() if name != "a"} == {len(data)} == {212}
    baseline = results["baseline"]["variables"]
    for name in ("age", "wt.loss"):
        assert abs(baseline[name]["mean"] - data[name].mean()) < 1e-10
        assert abs(baseline[name]["sd"] - data[name].std()) < 1e-10
        assert baseline[name]["quantiles"] == {str(q): data[name].quantile(q) for q in (0.25, 0.5, 0.75)}  # exact
    for sex in (1, 2):
        group = data[data.sex == sex]
        km = KaplanMeierFitter().fit(group.time, group.status)
        curve = results["km"]["groups"][str(sex)]
        np.testing.assert_array_equal(curve["time"], km.timeline)  # exact days: no grid moved anything
        np.testing.assert_allclose(curve["survival"], km.survival_function_.iloc[:, 0], atol=1e-10, rtol=0)
        np.testing.assert_allclose(curve["ci_lower"], km.confidence_interval_.iloc[:, 0], atol=1e-10, rtol=0)
    men, women = data[data.sex == 1], data[data.sex == 2]
    assert (
        abs(results["lr"]["statistic"] - logrank_test(men.time, women.time, men.status, women.status).test_statistic)
        < 1e-10
    )
    x = data[["age", "sex", "ph.ecog"]]
    cox = PHReg(data.time, x, status=data.status, ties="efron").fit(tol=1e-12)
    _close(results["cox"]["params"], x.columns, cox.params, cox.bse)
    by_site = PHReg(data.time, x, status=data.status, ties="efron", strata=data.site).fit(tol=1e-12)
    _close(results["cox_site"]["params"], x.columns, by_site.params, by_site.bse)
    logit = sm.GLM(data.status, sm.add_constant(data[["age", "sex"]]), family=sm.families.Binomial()).fit(tol=1e-14)
    _close(results["logit"]["params"], ["Intercept", "age", "sex"], logit.params, logit.bse)
    ols = sm.OLS(data["wt.loss"], sm.add_constant(x)).fit()
    _close(results["ols"]["params"], ["Intercept", "age", "sex", "ph.ecog"], ols.params, ols.bse)
    welch = stats.ttest_ind(men.age, women.age, equal_var=False)
    assert abs(results["t"]["welch"]["statistic"] - welch.statistic) < 1e-10
    anova = stats.f_oneway(*(data.age[data["ph.ecog"] == level] for level in (0, 1, 2)))  # ECOG 3: one patient
    assert results["a"]["n"] == 211 and abs(results["a"]["statistic"] - anova.statistic) < 1e-10
    assert abs(results["a"]["p"] - anova.pvalue) < 1e-12
    for sex in (1, 2):
        first_year = restricted_mean_survival_time(KaplanMeierFitter().fit(data.time[data.sex == sex],
                                                                            data.status[data.sex == sex]), t=365)  # fmt: skip
        assert abs(results["rmst"]["groups"][str(sex)]["rmst"] - first_year) < 1e-10
    pearson = stats.pearsonr(data.age, data["wt.loss"])
    assert abs(results["r"]["r"] - pearson.statistic) < 1e-12 and abs(results["r"]["p"] - pearson.pvalue) < 1e-12


def _close(params, names, coef, se) -> None:
    got = np.array([[params[name]["coef"], params[name]["se"]] for name in names])
    np.testing.assert_allclose(got, np.column_stack([coef, se]), atol=1e-10, rtol=0)


def test_small_cross_site_totals_are_published_as_ranges_that_the_total_cannot_undo(tmp_path):
    results, _ = study(_hospitals(tmp_path), protocol_text(*SUITE))
    table = results["xt"]
    truth = pd.crosstab(_pooled().sex, _pooled()["ph.ecog"]).reindex(columns=[0, 1, 2, 3], fill_value=0).to_numpy()
    assert truth[0, 3] == 1  # one man with ECOG 3 in the whole study
    cells = [cell for row in table["table"] for cell in row]
    bounds = [tuple(map(int, c.split("-"))) if isinstance(c, str) else (c, c) for c in cells]
    assert all(low <= value <= high for (low, high), value in zip(bounds, truth.ravel(), strict=True))
    assert bounds[3] == (1, 4) and table["table"][1][3] == 0
    widened = [b for b, value in zip(bounds, truth.ravel(), strict=True) if b[0] < b[1] and value >= 5]
    assert len(widened) == 1 and widened[0][1] - widened[0][0] == 3  # the largest cell absorbs the small one
    assert "chi2" not in table and table["tests"].startswith("not computed")


def test_the_coordinator_holds_nothing_per_site_but_masked_limbs_column_kinds_and_key_offers(tmp_path):
    frames = {site: rows.assign(gender=rows.sex.map({1: "male", 2: "female"})) for site, (_, rows) in
              lung_hospitals().items()}  # fmt: skip
    folders = [make_site(tmp_path / site, rows, "") for site, rows in frames.items()]
    every_type = [
        *SUITE,
        'id = "pois"\ntype = "poisson"\noutcome = "status"\ncovariates = ["age", "gender"]\nexposure = "time"',
        f'id = "lr_site"\ntype = "logrank"\n{SURV}\ngroup = "gender"\nstrata = ["site"]',
        'id = "genders"\ntype = "describe"\nvariables = ["gender"]',
    ]
    text = protocol_text(*every_type).replace("[variables]", '[variables]\ngender = { levels = ["female", "male"] }')
    results, exchange = study(folders, text)
    assert all("error" not in result for result in results.values()), results
    clear_values = set()
    for attempt in exchange.transcript:
        for site, arrays in attempt.received.items():
            for name, value in arrays.items():
                if name.split("/", 1)[1].startswith("kind:"):
                    clear_values.update(value.tolist())
                else:
                    assert value.dtype == np.uint64, (attempt.tag, site, name)  # masked words (counts) or limbs
        for offer in attempt.offers.values():
            assert set(offer) == {"key", "signature"}
    assert clear_values == {"numeric", "categorical"}  # no site's times, levels or counts: only column kinds
    for reply in exchange.replies.values():
        assert reply.rows is None and "rows" not in reply.usage and not reply.checks
    assert results["genders"]["variables"]["gender"]["counts"] == {"female": 86, "male": 126}


def test_the_same_protocol_with_two_hospitals_in_the_clear_gets_per_site_refusals(tmp_path):
    folders = _hospitals(tmp_path, "clear_aggregation = true")[:2]
    text = protocol_text(*SUITE) + "[privacy]\nsecure_aggregation = false\n"
    results, exchange = study(folders, text)
    assert exchange.summary()["mode"] == "clear"
    reason = "events per group and time cell: a count between 1 and 4 (the site's minimum is 5)"
    assert results["km"]["refused_by"] == {"hospital-1": reason, "hospital-2": reason}
    for refused in ("lr", "cox"):
        assert set(results[refused]["refused_by"]) == {"hospital-1", "hospital-2"}
    assert "error" not in results["baseline"] and "error" not in results["cox_site"]
    assert any(isinstance(cell, str) for row in results["xt"]["table"] for cell in row)  # each site's small cells


def test_a_baseline_table_and_a_complete_case_cox_pass_but_s_versus_s_minus_one_across_studies_is_refused(tmp_path):
    folders = _hospitals(tmp_path)
    describe = 'id = "ages"\ntype = "describe"\nvariables = ["age", "meal.cal"]'
    cox = f'id = "cox"\ntype = "cox"\n{SURV}\ncovariates = ["age", "sex", "ph.ecog"]'
    results, _ = study(folders, protocol_text(describe, cox))
    assert "error" not in results["ages"] and "error" not in results["cox"]  # meal.cal is missing for 47 patients
    assert results["ages"]["n_dropped"] == 48
    again, _ = study(folders, protocol_text(describe, cox))
    assert again == results  # the same rows again: allowed, and the same bits
    ages = 'id = "ages"\ntype = "describe"\nvariables = ["age"]'
    first, _ = study(folders, protocol_text(ages, filters='[{column = "age", op = ">=", value = 65}]'))
    assert "error" not in first["ages"]
    attack, _ = study(folders, protocol_text(ages, filters='[{column = "age", op = ">", value = 65}]'))
    assert attack["ages"]["refused_by"]["hospital-1"] == (
        "its rows differ from an earlier query's by fewer than 5 patients, so comparing the two would reveal them "
        "(differencing guard)"
    )


def test_a_value_the_protocol_does_not_declare_is_named_by_column_and_kept_in_the_site_log(tmp_path):
    folders = _hospitals(tmp_path)
    rows = pd.read_csv(folders[1] / "patients.csv")
    rows.loc[rows.index[0], "sex"] = 7
    rows.to_csv(folders[1] / "patients.csv", index=False)
    with pytest.raises(StudyError) as error:
        study(folders, protocol_text(SUITE[1]))
    message = str(error.value)
    assert message.startswith("site hospital-2: patients.csv: analysis 'km': column 'sex' holds a value the protocol "
                              "does not declare in its [variables] 'sex' levels")  # fmt: skip
    assert "7" not in message
    refusal = [e for e in AuditLog(open_site(folders[1]).state).entries() if e["event"] == "refusal"][-1]
    assert refusal["detail"] == "column 'sex': undeclared value(s) 7"


def test_totals_below_the_minimum_are_not_published(tmp_path):
    folders = _hospitals(tmp_path)
    rare = 'id = "rare"\ntype = "ttest"\nvariable = "age"\ngroup = "ph.ecog"\ngroups = [2, 3]'
    km = f'id = "km_ecog"\ntype = "kaplan_meier"\n{SURV}\ngroup = "ph.ecog"'
    lr = f'id = "lr_ecog"\ntype = "logrank"\n{SURV}\ngroup = "ph.ecog"'
    results, _ = study(folders, protocol_text(rare, km, lr, SUITE[0]))
    assert results["rare"]["error"] == (
        "not published: values per compared group: a cross-site total between 1 and 4 "
        "(the sites' largest minimum count is 5)"
    )
    for curve in ("km_ecog", "lr_ecog"):  # one patient with ECOG 3: no curve or test of a single patient
        assert results[curve]["error"].startswith(
            "not published: patients per group: a cross-site total between 1 and 4"
        )
    assert "error" not in results["baseline"]


def test_a_steward_can_keep_minimums_on_the_own_masked_share_and_require_more_sites(tmp_path):
    folders = _hospitals(tmp_path)
    strict = folders[0] / "site.toml"
    strict.write_text(strict.read_text() + "[policy]\nown_share_minimums = true\n")
    results, _ = study(folders, protocol_text(SUITE[1], SUITE[0]))
    assert list(results["km"]["refused_by"]) == ["hospital-1"] and "error" not in results["baseline"]
    strict.write_text(strict.read_text().replace("own_share_minimums = true", "min_sites = 6"))
    with pytest.raises(StudyError, match=r"site hospital-1: this site's policy sends masked contributions only among "
                       r"at least 6 sites \(min_sites\); this round has 5"):  # fmt: skip
        study(folders, protocol_text(SUITE[0]))


def test_the_dry_run_releases_nothing_and_tells_which_site_would_refuse_by_which_rule(tmp_path):
    folders = _hospitals(tmp_path)
    text = protocol_text(*SUITE) + roster(folders)
    protocol = parse(text)
    from hospital_node import approvals

    for folder in folders[1:]:
        approvals.approve(open_site(folder), protocol, by="steward")
    verdicts = NodeFolders(protocol, folders).check()
    assert verdicts["hospital-1"] == {"*": f"protocol {protocol.sha256[:12]} (study 'test') is not approved at this "
                                           "site; its data steward can review and approve it with: workbench node "
                                           "approve PROTOCOL --site SITE_FOLDER"}  # fmt: skip
    assert all(v == "" for site in folders[1:] for v in verdicts[open_site(site).id].values())
    for folder in folders:
        events = [e["event"] for e in AuditLog(open_site(folder).state).entries()]
        assert "release" not in events and not (folder / "state" / "rowsets").exists()
    clear = protocol_text(*SUITE) + "[privacy]\nsecure_aggregation = false\n"
    two = _hospitals(tmp_path / "clear", "clear_aggregation = true")[:2]
    clear_protocol = parse(clear + roster(two))
    for folder in two:
        approvals.approve(open_site(folder), clear_protocol, by="steward")
    predicted = NodeFolders(clear_protocol, two).check()
    results, _ = study(two, clear + roster(two), approve=False)
    for site in ("hospital-1", "hospital-2"):
        refused = {key for key, reason in predicted[site].items() if reason}
        assert refused == {key for key, result in results.items() if site in result.get("refused_by", {})}
        assert predicted[site]["km"] == results["km"]["refused_by"][site]


def test_protect_hides_every_small_count_from_the_published_total():
    k = 5
    for counts in ([60, 1, 0, 40], [3, 2, 50, 7], [9, 4, 4, 4, 30]):
        lower, upper = protect(np.array(counts), k)
        assert np.all(lower <= counts) and np.all(np.array(counts) <= upper)
        total = sum(counts)
        small = [i for i, c in enumerate(counts) if 0 < c < k]
        ranged = [i for i in range(len(counts)) if lower[i] < upper[i]]
        assert set(small) < set(ranged)
        # every combination of small values in [1, k−1] stays consistent with the total and the published ranges
        for values in itertools.product(range(1, k), repeat=len(small)):
            rest = total - sum(values) - sum(c for i, c in enumerate(counts) if i not in ranged)
            others = [i for i in ranged if i not in small]
            assert sum(lower[i] for i in others) <= rest <= sum(upper[i] for i in others)
    with pytest.raises(Refused, match="too many counts between 1 and 4"):
        protect(np.array([2, 3, 1]), k)
    assert [a.tolist() for a in protect(np.array([[5, 0], [7, 9]]), k)] == [[[5, 0], [7, 9]], [[5, 0], [7, 9]]]


def test_masked_quantiles_need_the_minimum_count_of_values_on_each_side(tmp_path):
    block = 'id = "d"\ntype = "describe"\nvariables = ["age"]\nquantiles = [0.01, 0.5, 0.97]'
    results, exchange = study(_hospitals(tmp_path), protocol_text(block))
    got = results["d"]["variables"]["age"]
    data = _pooled()  # 212 ages: 0.01 reads the 3rd and 4th smallest, 0.97 the 7th and 8th largest
    assert got["quantiles"] == {"0.01": None, "0.5": data.age.quantile(0.5), "0.97": data.age.quantile(0.97)}
    assert "at least the minimum count of values below and above" in got["quantiles_withheld"]
    assert not exchange.refusals


def test_in_the_clear_no_site_sends_its_counts_at_cut_points(tmp_path):
    """Each site's counts at fine cut points would place its patients: in the clear every quantile is withheld,
    the means and SDs computed, nothing refused."""
    block = 'id = "d"\ntype = "describe"\nvariables = ["age"]'
    two = _hospitals(tmp_path, "clear_aggregation = true")[:2]
    results, exchange = study(two, protocol_text(block))
    assert exchange.summary()["mode"] == "clear" and not exchange.refusals
    rows = pd.concat([rows for _, rows in list(lung_hospitals().values())[:2]]).dropna(subset=["age"])
    got = results["d"]["variables"]["age"]
    assert got["mean"] == pytest.approx(rows.age.mean(), abs=1e-12)
    assert got["quantiles"] == {"0.25": None, "0.5": None, "0.75": None}
    assert "only under secure aggregation" in got["quantiles_withheld"]
