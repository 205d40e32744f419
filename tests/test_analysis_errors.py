"""Analyses refuse clearly when the data cannot support them; a failure stays with its analysis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyses import discovery
from analyses.contract import AnalysisError, DataError, reduce_contributions
from analyses.driver import run_in_memory
from tests.conftest import SPEC, pooled


def _run(frames, **blocks):
    specs = {key: SPEC.validate_python({"id": key, **block}) for key, block in blocks.items()}
    return run_in_memory(specs, frames)


def test_site_order_gives_identical_bits():
    rng = np.random.default_rng(0)
    replies = [(f"site-{k}", {"x": rng.normal(size=50) * 10.0 ** rng.integers(-8, 8, size=50)}) for k in range(20)]
    forward = reduce_contributions(replies)["x"]
    for seed in range(5):
        shuffled = [replies[i] for i in np.random.default_rng(seed).permutation(len(replies))]
        assert reduce_contributions(shuffled)["x"].tobytes() == forward.tobytes()


def test_a_column_numeric_at_one_site_and_text_at_another_is_named():
    kinds = reduce_contributions(
        [("a", {"kind:sex": np.array(["numeric"])}), ("b", {"kind:sex": np.array(["categorical"])})]
    )
    with pytest.raises(AnalysisError, match="column 'sex' is numeric at some sites and text at others"):
        discovery.read(kinds, discovery.query({}, covariates=["sex"]))


def test_failed_analysis_does_not_stop_the_others(lung):
    results = _run(
        lung,
        three_levels={"type": "ttest", "variable": "age", "group": "ph.ecog"},
        fine={"type": "ttest", "variable": "age", "group": "sex"},
    )
    assert results["three_levels"] == {"error": "'ph.ecog' has 4 levels (0, 1, 2, 3); name two with groups = [..]"}
    assert "error" not in results["fine"]


def test_perfect_separation_is_reported_not_looped_forever(lung):
    frames = {site: rows.assign(dead=(rows.time > 400).astype(int)) for site, rows in lung.items()}
    result = _run(frames, sep={"type": "logistic", "outcome": "dead", "covariates": ["time"]})["sep"]
    assert "separat" in result["error"]


def test_constant_or_collinear_covariates_and_single_levels_are_named(lung):
    frames = {site: rows.assign(one=1.0, same="x", months=rows.age * 12 + 3) for site, rows in lung.items()}
    results = _run(
        frames,
        cox={"type": "cox", "duration": "time", "event": "status", "covariates": ["age", "one"]},
        collinear={"type": "cox", "duration": "time", "event": "status", "covariates": ["age", "months"]},
        xt={"type": "crosstab", "row": "sex", "column": "same"},
        lr={"type": "logrank", "duration": "time", "event": "status", "group": "same"},
    )
    assert results["cox"]["error"] == "covariate 'one' is constant in every complete row"
    assert results["collinear"]["error"].startswith("the information matrix is singular")
    assert results["xt"]["error"].startswith("'same' has a single level")
    assert results["lr"]["error"].startswith("'same' has a single level (x)")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(status=f.status * 2), "event column 'status' must be 0 (censored) or 1 (event); found 2"),
        (lambda f: f.assign(time=-f.time), "duration column 'time' has a negative time"),
        (lambda f: f.assign(sex=f.sex.map({1: "m", 2: 3}).astype(object)), "column 'sex' mixes numbers and text"),
        (lambda f: f.drop(columns="sex"), "column 'sex' is not in the cohort table (did you mean 'sex'"),
    ],
)
def test_bad_site_data_raises_a_data_error_naming_the_column(lung, change, message):
    frames = dict(lung)
    frames["inst-01"] = change(frames["inst-01"])
    with pytest.raises(DataError) as error:
        _run(frames, km={"type": "kaplan_meier", "duration": "time", "event": "status", "group": "sex"})
    assert message.split(" (did")[0] in str(error.value)


def test_text_column_at_one_site_and_numbers_at_another_is_refused(lung):
    frames = dict(lung)
    frames["inst-01"] = frames["inst-01"].assign(sex=frames["inst-01"].sex.map({1: "male", 2: "female"}))
    with pytest.raises(DataError, match=r"column 'sex' holds (numbers|text)"):
        _run(frames, cox={"type": "cox", "duration": "time", "event": "status", "covariates": ["age", "sex"]})


def test_missing_values_are_dropped_per_analysis_and_counted(lung):
    data = pooled(lung)
    results = _run(
        lung,
        cox={"type": "cox", "duration": "time", "event": "status", "covariates": ["age", "meal.cal"]},
        km={"type": "kaplan_meier", "duration": "time", "event": "status"},
    )
    assert results["cox"]["n_dropped"] == int(data["meal.cal"].isna().sum())
    assert results["cox"]["n"] == len(data) - results["cox"]["n_dropped"]
    assert results["km"]["n_dropped"] == 0 and results["km"]["n"] == len(data)


def test_a_level_missing_at_some_sites_is_still_coded_consistently(gbsg):
    frames = {site: rows[rows.tgrade != "I"] if site == "gbsg-1" else rows for site, rows in gbsg.items()}
    result = _run(frames, d={"type": "describe", "variables": ["tgrade"]})["d"]
    data = pd.concat(frames.values())
    assert result["variables"]["tgrade"]["counts"] == data.tgrade.value_counts().sort_index().to_dict()
