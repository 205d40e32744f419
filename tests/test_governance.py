"""Node governance: approval, policy, disclosure control, differencing guard, usage — enforced in the node."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from statsmodels.duration.hazard_regression import PHReg

from analyses.contract import Query
from hospital_node import approvals
from hospital_node.audit import AuditLog
from hospital_node.handler import answer
from hospital_node.policy import Policy
from hospital_node.site import SiteError, open_site
from tests.conftest import DictKeys, make_site, protocol_text, roster, study
from workbench.datasets import actg175, lung_hospitals, partition
from workbench.errors import StudyError
from workbench.messages import Request
from workbench.protocol import parse

DESCRIBE_AGE = 'id = "ages"\ntype = "describe"\nvariables = ["age"]\nquantiles = []'  # 3 rounds
KM = 'id = "km"\ntype = "kaplan_meier"\nduration = "time"\nevent = "status"'
COX = 'id = "cox"\ntype = "cox"\nduration = "time"\nevent = "status"\ncovariates = ["age", "sex", "ph.ecog"]'
COX_BY_SITE = COX + '\nstrata = ["site"]'  # sends no per-time data


@pytest.fixture
def hospitals(tmp_path):
    """The five demo hospitals as site folders with the default policy (minimum count 5)."""
    return [make_site(tmp_path / site, rows) for site, (_, rows) in lung_hospitals().items()]


def test_policy_defaults_and_policy_errors(tmp_path):
    site = open_site(make_site(tmp_path / "a", pd.DataFrame({"x": [1]}), policy=""))
    assert site.policy == Policy() and not site.policy.clear_aggregation
    assert (site.policy.min_cell_count, site.policy.min_time_cell_count) == (5, 5)
    assert (site.policy.max_epsilon, site.policy.delta) == (8.0, 1e-5)
    assert site.policy.allowed_analyses == [] and site.policy.allowed_variables == []
    (tmp_path / "a" / "site.toml").write_text('[site]\nid = "a"\n[policy]\nmin_cel_count = 3\n')
    with pytest.raises(SiteError, match=r"\[policy\] min_cel_count: Extra inputs are not permitted"):
        open_site(tmp_path / "a")
    (tmp_path / "a" / "site.toml").write_text('[policy]\nallowed_analyses = ["kaplan-meier"]\n')
    with pytest.raises(SiteError, match="unknown analysis type 'kaplan-meier'"):
        open_site(tmp_path / "a")


def test_only_an_approved_protocol_is_answered_and_a_revocation_stops_it(hospitals):
    text = protocol_text(DESCRIBE_AGE)
    with pytest.raises(
        StudyError, match=r"site hospital-1, .*hospital-5: protocol \w{12} \(study 'test'\) is not approved"
    ):
        study(hospitals, text, approve=False)
    results, runner = study(hospitals, text)
    assert results["ages"]["variables"]["age"]["n"] == 227
    site = open_site(hospitals[0])
    assert approvals.revoke(site, runner.protocol.sha256, by="steward") is not None
    with pytest.raises(StudyError, match="site hospital-1: protocol .* is not approved"):
        study(hospitals, text, approve=False)
    events = [entry["event"] for entry in AuditLog(site.state).entries()]
    assert events[:3] == ["request", "refusal", "approve"] and events[-3:] == ["revoke", "request", "refusal"]


def test_the_node_answers_only_the_approved_protocols_analyses_and_phases(hospitals):
    protocol = parse(protocol_text(DESCRIBE_AGE) + roster(hospitals))
    approvals.approve(open_site(hospitals[0]), protocol, by="steward")

    def ask(queries):
        return answer(
            hospitals[0], Request(protocol.text, protocol.sha256, 1, queries, {"count": 1}), "test", DictKeys()
        )

    reply = ask({"other": Query("moments"), "ages": Query("newton", {})})
    assert reply.refusals == {
        "other": "analysis 'other' is not in the approved protocol",
        "ages": "phase 'newton' is not part of a describe analysis",
    }
    tampered = answer(hospitals[0], Request(protocol.text.replace("age", "sex"), protocol.sha256, 1, {}), "test", {})
    assert tampered.error == "the protocol text does not match its SHA-256; refusing"


def test_policy_refuses_analyses_and_variables_per_site_and_the_result_names_them(hospitals):
    (hospitals[0] / "site.toml").write_text('[site]\nid = "hospital-1"\n[policy]\nallowed_analyses = ["describe"]\n')
    (hospitals[1] / "site.toml").write_text(
        '[site]\nid = "hospital-2"\n[policy]\nallowed_variables = ["time", "status", "age", "ph.ecog"]\n'
    )
    complete = '[{column = "ph.ecog", op = "not missing"}]'
    results, exchange = study(hospitals, protocol_text(DESCRIBE_AGE, COX_BY_SITE, filters=complete))
    assert results["ages"]["variables"]["age"]["n"] == 226
    assert results["cox"]["refused_by"] == {
        "hospital-1": "the site's policy does not allow 'cox' analyses",
        "hospital-2": "the site's policy does not allow the variable(s) sex",
    }
    assert results["cox"]["error"].startswith("refused by hospital-1 (the site's policy does not allow 'cox'")
    assert {(r["site"], r["analysis"]) for r in exchange.refusals} == {("hospital-1", "cox"), ("hospital-2", "cox")}


def test_in_the_clear_per_time_counts_below_the_minimum_are_refused_without_revealing_them(hospitals):
    clear = protocol_text(KM, COX) + "[privacy]\nsecure_aggregation = false\n"
    results, exchange = study(hospitals[:2], clear)
    assert exchange.summary()["mode"] == "clear" and exchange.summary()["thresholds"] == "each site's reply"
    assert results["km"]["refused_by"] == {
        f"hospital-{k}": "events per group and time cell: a count between 1 and 4 (the site's minimum is 5)"
        for k in (1, 2)
    }
    assert set(results["cox"]["refused_by"]) == {"hospital-1", "hospital-2"}


def test_in_the_clear_a_time_grid_makes_survival_releasable_and_equal_to_the_reference_on_that_grid(tmp_path):
    data = actg175()
    folders = [make_site(tmp_path / site, rows) for site, rows in partition(data, 3).items()]
    blocks = [
        'id = "exact"\ntype = "kaplan_meier"\nduration = "days"\nevent = "cens"',
        'id = "quarterly"\ntype = "kaplan_meier"\nduration = "days"\nevent = "cens"\ntime_grid = "quarter"',
        'id = "km"\ntype = "kaplan_meier"\nduration = "days"\nevent = "cens"\ntime_grid = 182.625',
        'id = "cox"\ntype = "cox"\nduration = "days"\nevent = "cens"\ncovariates = ["age", "karnof", "cd40"]\n'
        "time_grid = 182.625",
    ]
    results, _ = study(folders, protocol_text(*blocks) + "[privacy]\nsecure_aggregation = false\n")
    assert "refused_by" in results["exact"] and "refused_by" in results["quarterly"]
    coarse = data.assign(days=np.ceil(data.days / 182.625) * 182.625)
    km = KaplanMeierFitter().fit(coarse.days, coarse.cens)
    np.testing.assert_allclose(results["km"]["groups"]["all"]["time"], km.timeline)
    np.testing.assert_allclose(results["km"]["groups"]["all"]["survival"], km.survival_function_.iloc[:, 0], atol=1e-12)
    ref = PHReg(coarse.days, coarse[["age", "karnof", "cd40"]], status=coarse.cens, ties="efron").fit(tol=1e-12)
    got = [results["cox"]["params"][name]["coef"] for name in ("age", "karnof", "cd40")]
    np.testing.assert_allclose(got, ref.params, atol=1e-10)


def test_small_table_cells_leave_as_honest_ranges(hospitals):
    xt = 'id = "xt"\ntype = "crosstab"\nrow = "sex"\ncolumn = "ph.ecog"'
    result = study(hospitals, protocol_text(xt))[0]["xt"]
    data = pd.concat(rows for _, rows in lung_hospitals().values()).dropna(subset=["ph.ecog"])
    truth = pd.crosstab(data.sex, data["ph.ecog"]).to_numpy()
    cells = [cell for row in result["table"] for cell in row]
    for cell, value in zip(cells, truth.ravel(), strict=True):
        low, high = map(int, cell.split("-")) if isinstance(cell, str) else (cell, cell)
        assert low <= value <= high
    assert any(isinstance(cell, str) for cell in cells)
    assert "chi2" not in result and result["tests"].startswith("not computed")
    assert result["n"] == len(data)


def test_regression_guards_refuse_rare_categories_and_too_many_parameters(tmp_path):
    rows = lung_hospitals()["hospital-1"][1]
    rare = rows.assign(rare=(rows.index == rows.index[0]).astype(int))  # one patient with rare = 1
    site = make_site(tmp_path / "h1", rare)
    logit = 'id = "logit"\ntype = "logistic"\noutcome = "status"\ncovariates = ["age", "rare"]'
    wide = 'id = "wide"\ntype = "linear"\noutcome = "age"\n' \
           'covariates = ["time", "ph.karno", "pat.karno", "meal.cal", "wt.loss", "ph.ecog"]'  # fmt: skip
    small = make_site(tmp_path / "small", rows.dropna().head(18))
    results, _ = study([site], protocol_text(logit).replace("[variables]", "[variables]\nrare = { levels = [0, 1] }"))
    assert results["logit"]["refused_by"]["h1"].startswith("rows per covariate category")  # a declared binary covariate
    results, _ = study([small], protocol_text(wide))
    assert results["wide"]["refused_by"]["small"] == "7 parameters need at least 21 rows at each site (3 per parameter)"


def test_differencing_attack_same_statistic_on_s_and_s_minus_one_patient_is_refused(tmp_path):
    rows = lung_hospitals()["hospital-1"][1]
    assert (rows.age == 65).sum() == 1
    folder = make_site(tmp_path / "h1", rows)
    first, _ = study([folder], protocol_text(DESCRIBE_AGE, filters='[{column = "age", op = ">=", value = 65}]'))
    mean_s = first["ages"]["variables"]["age"]["mean"]
    assert mean_s == pytest.approx(rows.age[rows.age >= 65].mean())
    attack, _ = study([folder], protocol_text(DESCRIBE_AGE, filters='[{column = "age", op = ">", value = 65}]'))
    assert attack["ages"]["refused_by"]["h1"] == (
        "its rows differ from an earlier query's by fewer than 5 patients, so comparing the two would reveal them "
        "(differencing guard)"
    )
    far, _ = study([folder], protocol_text(DESCRIBE_AGE, filters='[{column = "age", op = ">", value = 70}]'))
    assert "error" not in far["ages"]  # differs by many patients: allowed
    again, _ = study([folder], protocol_text(DESCRIBE_AGE, filters='[{column = "age", op = ">=", value = 65}]'))
    assert again["ages"]["variables"]["age"]["mean"] == mean_s  # the same rows again: allowed


def test_one_population_per_study_and_per_analysis_deletion_is_guarded(hospitals, tmp_path):
    results, _ = study(hospitals, protocol_text(DESCRIBE_AGE, COX_BY_SITE))
    assert "error" not in results["ages"] and "error" not in results["cox"]
    assert results["ages"]["n"] == results["cox"]["n"] == 226 and results["ages"]["n_dropped"] == 1
    fresh = [make_site(tmp_path / "fresh" / site, rows) for site, (_, rows) in lung_hospitals().items()]
    results, _ = study(fresh, protocol_text(DESCRIBE_AGE, COX_BY_SITE, cohort='missing = "per_analysis"\n'))
    assert results["ages"]["n"] == 227 and results["ages"]["n_dropped"] == 0
    assert list(results["cox"]["refused_by"]) == ["hospital-2"]  # its one patient without ph.ecog


def test_cohort_filters_select_exactly_and_bad_filters_are_named(hospitals):
    filters = '[{column = "ph.ecog", op = "in", value = [0, 1]}, {column = "wt.loss", op = "not missing"}]'
    results, _ = study(hospitals, protocol_text(DESCRIBE_AGE, filters=filters))
    data = pd.concat(rows for _, rows in lung_hospitals().values())
    chosen = data[data["ph.ecog"].isin([0, 1]) & data["wt.loss"].notna()]
    assert results["ages"]["variables"]["age"]["mean"] == pytest.approx(chosen.age.mean(), abs=1e-12)
    with pytest.raises(
        StudyError, match=r"cohort filter #1: column 'agee' is not in the cohort table \(did you mean 'age'\?\)"
    ):
        study(hospitals, protocol_text(DESCRIBE_AGE, filters='[{column = "agee", op = ">", value = 1}]'))
    with pytest.raises(StudyError, match="column 'age' is numeric but the filter compares it with 'old'"):
        study(hospitals, protocol_text(DESCRIBE_AGE, filters='[{column = "age", op = "==", value = "old"}]'))


def test_usage_is_metered_from_the_audit_log_and_reported_with_the_results(hospitals):
    results, exchange = study(hospitals, protocol_text(DESCRIBE_AGE, KM))
    for site, reply in exchange.replies.items():
        assert reply.usage["queries"] == exchange.rounds + 1 == 4  # the key round, then 3 data rounds
        assert reply.usage["releases"] == 5 and reply.usage["refusals"] == 0  # describe 3 rounds, KM 2
        assert reply.rows is None and "rows" not in reply.usage  # masked: a site's cohort size stays at the site
        assert reply.audit_head == AuditLog(open_site(hospitals[int(site[-1]) - 1]).state).entries()[-1]["hash"]
    entries = AuditLog(open_site(hospitals[0]).state).entries()
    request = next(e for e in entries if e["event"] == "request" and e["queries"])
    assert request["requested_by"] == "test coordinator" and request["queries"] == {
        "ages": "discover",
        "km": "discover",
    }
    release = next(e for e in entries if e["event"] == "release")
    assert release["items"] == [{"name": "kind:age", "shape": [1], "dtype": "<U7"}]
    assert len(release["digest"]) == 64 and release["analysis"] == "ages" and release["round"] == 1
