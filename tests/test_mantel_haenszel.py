"""Mantel–Haenszel pooled odds ratio, CMH and Breslow–Day tests equal statsmodels' `StratifiedTable` on the pooled
rows: column strata, "site" strata, both combined, and masked runs under the default site policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from statsmodels.stats.contingency_tables import StratifiedTable

from analyses import mantel_haenszel
from analyses.contract import DataError
from analyses.driver import run_in_memory
from tests.conftest import SPEC, federate, make_site, pooled, protocol_text, study
from workbench.datasets import gbsg2_sites, lung_hospitals

TOLERANCE = 1e-10
LUNG = {"type": "mantel_haenszel", "exposure": "sex", "outcome": "status"}
GBSG = {"type": "mantel_haenszel", "exposure": "horTh", "outcome": "cens"}


def _reference(data: pd.DataFrame, block: dict, exposed: object, reference: object) -> StratifiedTable:
    """statsmodels on the pooled rows: per stratum [[exposed & 1, exposed & 0], [reference & 1, reference & 0]],
    strata with both exposure levels and both outcome values."""
    data = data.dropna(subset=[block["exposure"], block["outcome"], *block["strata"]])
    tables = []
    for _, rows in data.groupby(block["strata"]):
        table = np.array([[np.sum((rows[block["exposure"]] == level) & (rows[block["outcome"]] == event))
                           for event in (1, 0)] for level in (exposed, reference)])  # fmt: skip
        if np.all(table.sum(axis=0) > 0) and np.all(table.sum(axis=1) > 0):
            tables.append(table)
    return StratifiedTable(tables)


def _assert_equal(result: dict, reference: StratifiedTable, alpha: float = 0.05, correction: bool = False) -> float:
    """Every statistic within TOLERANCE of statsmodels; returns the largest difference."""
    lower, upper = reference.oddsratio_pooled_confint(alpha)
    null, equal = reference.test_null_odds(correction=correction), reference.test_equal_odds()
    pairs = [
        (result["odds_ratio"], reference.oddsratio_pooled),
        (result["log_odds_se"], reference.logodds_pooled_se),
        (result["ci_lower"], lower),
        (result["ci_upper"], upper),
        (result["risk_ratio"], reference.riskratio_pooled),
        (result["test_null"]["statistic"], null.statistic),
        (result["test_null"]["p"], null.pvalue),
        (result["test_equal_odds"]["statistic"], equal.statistic),
        (result["test_equal_odds"]["p"], equal.pvalue),
    ]
    assert result["n_strata"] == reference.table.shape[2]
    assert result["test_equal_odds"]["df"] == reference.table.shape[2] - 1
    largest = max(abs(ours - theirs) for ours, theirs in pairs)
    assert largest < TOLERANCE, pairs
    return largest


def test_column_strata_equal_statsmodels_and_publish_the_pooled_tables(lung):
    block = {**LUNG, "strata": ["ph.ecog"]}
    result = federate(lung, mh=block)["mh"]
    data = pooled(lung)
    _assert_equal(result, _reference(data, block, 2, 1))
    assert (result["reference"], result["exposed"], result["n"], result["n_dropped"]) == ("1", "2", 226, 1)
    for entry in result["tables"]:
        rows = data[data["ph.ecog"] == float(entry["stratum"]["ph.ecog"])]
        expected = pd.crosstab(rows.sex, rows.status).reindex(index=[2, 1], columns=[1, 0], fill_value=0)
        assert entry["table"] == expected.to_numpy().tolist()


def test_site_strata_equal_statsmodels_by_institution(lung):
    block = {**LUNG, "strata": ["site"]}
    result = federate(lung, mh=block)["mh"]
    _assert_equal(result, _reference(pooled(lung), block, 2, 1))
    assert "tables" not in result  # no site's table is ever seen


def test_site_and_column_strata_combined_with_correction_and_alpha(lung):
    block = {**LUNG, "strata": ["site", "ph.ecog"], "correction": True, "alpha": 0.1}
    result = federate(lung, mh=block)["mh"]
    _assert_equal(result, _reference(pooled(lung), block, 2, 1), alpha=0.1, correction=True)


def test_chosen_exposure_levels_in_the_given_order(lung, gbsg):
    block = {"type": "mantel_haenszel", "exposure": "ph.ecog", "exposures": [2, 0], "outcome": "status",
             "strata": ["sex"]}  # fmt: skip
    result = federate(lung, mh=block)["mh"]
    assert (result["reference"], result["exposed"]) == ("2", "0")
    _assert_equal(result, _reference(pooled(lung), block, 0.0, 2.0))
    block = {"type": "mantel_haenszel", "exposure": "tgrade", "exposures": ["III", "I"], "outcome": "cens",
             "strata": ["site", "menostat"]}  # fmt: skip
    _assert_equal(federate(gbsg, mh=block)["mh"], _reference(pooled(gbsg), block, "I", "III"))


def test_gbsg_two_column_strata(gbsg):
    block = {**GBSG, "strata": ["tgrade", "menostat"]}
    _assert_equal(federate(gbsg, mh=block)["mh"], _reference(pooled(gbsg), block, "yes", "no"))


def _block(analysis_id: str, block: dict) -> str:
    return f'id = "{analysis_id}"\n' + "\n".join(f"{key} = {value!r}".replace("'", '"') for key, value in block.items())


def test_masked_default_policy_site_and_column_strata(tmp_path):
    """Five lung hospitals (43–47 patients) and five GBSG2 sites, default policy (minimum count 5), masked."""
    hospitals = lung_hospitals()
    folders = [make_site(tmp_path / "lung" / site, rows, "") for site, (_, rows) in hospitals.items()]
    blocks = {"by_site": {**LUNG, "strata": ["site"]}, "by_ecog": {**LUNG, "strata": ["ph.ecog"]}}
    results, exchange = study(folders, protocol_text(*(_block(key, block) for key, block in blocks.items())))
    assert exchange.summary()["mode"] == "masked" and exchange.summary()["min_count"] == 5
    data = pd.concat([rows.assign(site=site) for site, (_, rows) in hospitals.items()], ignore_index=True)
    data = data.dropna(subset=["ph.ecog"])  # the study's one population: rows with every column its analyses use
    # the site-stratified sums could give a hospital's own table back: a hospital with 3 men alive refuses
    assert "hospital-2" in results["by_site"]["refused_by"]
    assert "patients per own stratum" in results["by_site"]["refused_by"]["hospital-2"]
    by_ecog = results["by_ecog"]  # a pooled cell of 1 patient: published as a range, so nothing is computed
    assert "odds_ratio" not in by_ecog and by_ecog["not_computed"].startswith("small cells")
    assert any(isinstance(c, str) for entry in by_ecog["tables"] for row in entry["table"] for c in row)

    sites = gbsg2_sites()
    folders = [make_site(tmp_path / "gbsg" / site, rows, "") for site, rows in sites.items()]
    block, by_site = {**GBSG, "strata": ["tgrade"]}, {**GBSG, "strata": ["site"]}
    results, _ = study(folders, protocol_text(_block("mh", block), _block("by_site", by_site)))
    _assert_equal(results["mh"], _reference(pooled(sites), block, "yes", "no"))
    assert all(isinstance(c, int) for entry in results["mh"]["tables"] for row in entry["table"] for c in row)
    _assert_equal(results["by_site"], _reference(pooled(sites), by_site, "yes", "no"))  # every own cell ≥ 5


def _run(frames, **blocks):
    return run_in_memory({key: SPEC.validate_python({"id": key, **block}) for key, block in blocks.items()}, frames)


def test_bad_input_is_named(lung):
    with pytest.raises(DataError, match="event column 'age' must be 0 \\(censored\\) or 1 \\(event\\); found"):
        _run(lung, mh={**LUNG, "outcome": "age", "strata": ["site"]})
    results = _run(
        lung,
        levels={**LUNG, "exposure": "ph.ecog", "strata": ["sex"]},
        unknown={**LUNG, "exposure": "ph.ecog", "exposures": [0, 5], "strata": ["sex"]},
    )
    assert results["levels"]["error"] == (
        "'ph.ecog' has 4 levels in use (0, 1, 2, 3); choose two with exposures = [reference, exposed]"
    )
    assert results["unknown"]["error"].startswith("exposure level '5' of 'ph.ecog' not found")
    with pytest.raises(ValidationError, match="must be different columns"):
        SPEC.validate_python({"id": "x", **LUNG, "strata": ["sex"]})
    with pytest.raises(ValidationError, match="at least 1 item"):
        SPEC.validate_python({"id": "x", **LUNG, "strata": []})


def test_continuity_correction_never_overshoots_a_difference_below_one_half():
    """R's `mantelhaen.test` rule: no correction when |Σ a − Σ E[a]| < ½, where statsmodels reports (|Σ a − Σ E[a]| −
    ½)² / Σ Var[a] > 0 (observed equal to expected would look like evidence)."""
    tables = np.array([[[5, 5], [5, 5]]])
    spec = SPEC.validate_python({"id": "x", **LUNG, "strata": ["site"], "correction": True})
    ours = mantel_haenszel.statistics(mantel_haenszel.sums(tables), 1, 0.0, spec)["test_null"]
    assert ours["statistic"] == 0 and ours["p"] == 1
    assert StratifiedTable(np.moveaxis(tables, 0, 2)).test_null_odds(correction=True).statistic > 0
