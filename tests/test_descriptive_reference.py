"""Federated descriptives and tests equal pandas / scipy on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analyses import distributions, order_statistics
from analyses.disclosure import reached
from tests.conftest import SPEC, federate, pooled


def test_describe_numeric_and_text(gbsg, lung):
    result = federate(gbsg, d={"type": "describe", "variables": ["age", "tsize", "tgrade", "horTh"]})["d"]
    data = pooled(gbsg)
    for name in ("age", "tsize"):
        got = result["variables"][name]
        assert got["n"] == data[name].count() and got["missing"] == 0
        assert got["mean"] == pytest.approx(data[name].mean(), abs=1e-12)
        assert got["sd"] == pytest.approx(data[name].std(ddof=1), abs=1e-12)
    assert result["variables"]["tgrade"]["counts"] == data["tgrade"].value_counts().sort_index().to_dict()
    lung_result = federate(lung, d={"type": "describe", "variables": ["wt.loss", "meal.cal"]})["d"]
    lung_data = pooled(lung)
    for name in ("wt.loss", "meal.cal"):
        got = lung_result["variables"][name]
        assert got["missing"] == lung_data[name].isna().sum() and got["n"] == lung_data[name].count()
        assert got["mean"] == pytest.approx(lung_data[name].mean(), abs=1e-10)
        assert got["sd"] == pytest.approx(lung_data[name].std(), abs=1e-10)


@pytest.mark.parametrize(
    "row, column, correction", [("sex", "ph.ecog", True), ("sex", "status", True), ("sex", "status", False)]
)
def test_crosstab_equals_scipy(lung, row, column, correction):
    result = federate(lung, x={"type": "crosstab", "row": row, "column": column, "correction": correction})["x"]
    data = pooled(lung).dropna(subset=[row, column])
    table = pd.crosstab(data[row], data[column]).to_numpy()
    np.testing.assert_array_equal(result["table"], table)
    ref = stats.chi2_contingency(table, correction=correction)
    assert result["chi2"]["statistic"] == pytest.approx(ref.statistic, abs=1e-10)
    assert result["chi2"]["p"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert result["chi2"]["df"] == ref.dof
    if table.shape == (2, 2):
        fisher = stats.fisher_exact(table)
        assert result["fisher"]["p"] == pytest.approx(fisher.pvalue, abs=1e-12)
        assert result["fisher"]["odds_ratio"] == pytest.approx(fisher.statistic, abs=1e-12)
    else:
        assert "fisher" not in result


def test_ttest_equals_scipy(lung, gbsg):
    result = federate(lung, t={"type": "ttest", "variable": "age", "group": "sex"})["t"]
    data = pooled(lung)
    a, b = data.age[data.sex == 1], data.age[data.sex == 2]
    for name, equal_var in (("pooled", True), ("welch", False)):
        ref = stats.ttest_ind(a, b, equal_var=equal_var)
        ci = ref.confidence_interval()
        assert result[name]["statistic"] == pytest.approx(ref.statistic, abs=1e-10)
        assert result[name]["p"] == pytest.approx(ref.pvalue, abs=1e-12)
        assert result[name]["df"] == pytest.approx(ref.df, abs=1e-9)
        assert result[name]["ci_lower"] == pytest.approx(ci.low, abs=1e-10)
        assert result[name]["ci_upper"] == pytest.approx(ci.high, abs=1e-10)
    chosen = federate(gbsg, t={"type": "ttest", "variable": "pnodes", "group": "tgrade", "groups": ["III", "I"]})["t"]
    g = pooled(gbsg)
    ref = stats.ttest_ind(g.pnodes[g.tgrade == "III"], g.pnodes[g.tgrade == "I"], equal_var=False)
    assert list(chosen["groups"]) == ["III", "I"]
    assert chosen["welch"]["statistic"] == pytest.approx(ref.statistic, abs=1e-10)


def test_distributions_equal_scipy_stats():
    """The p-value and quantile functions give scipy.stats' values to the bit (edges included)."""
    rng = np.random.default_rng(0)
    qs = np.concatenate([rng.random(500), [1e-300, 1e-12, 0.5, 0.975, 1 - 1e-16]])
    xs = np.concatenate([rng.normal(0, 5, 500), rng.exponential(50, 200), [0.0, 1e-300, 40, -40, np.inf, -np.inf]])
    for df in [1, 3.5, 57, 1e6]:
        assert [distributions.t_ppf(q, df) for q in qs] == [float(stats.t.ppf(q, df)) for q in qs]
        assert np.array_equal(distributions.t_sf(xs, df), stats.t.sf(xs, df))
        assert [distributions.chi2_sf(x, df) for x in xs] == [float(stats.chi2.sf(x, df)) for x in xs]
    assert [distributions.norm_ppf(q) for q in qs] == [float(stats.norm.ppf(q)) for q in qs]
    assert np.array_equal(distributions.norm_sf(xs), stats.norm.sf(xs))
    assert distributions.norm_sf(1.5) == stats.norm.sf(1.5)


@pytest.mark.parametrize(("data", "variable", "group", "groups"), [
    ("lung", "age", "ph.ecog", None),  # four levels in use, one of them with a single patient
    ("lung", "wt.loss", "ph.ecog", [0, 1, 2]),
    ("gbsg", "pnodes", "tgrade", None),  # text levels
])  # fmt: skip
def test_one_way_anova_equals_scipy(lung, gbsg, data, variable, group, groups):
    frames = {"lung": lung, "gbsg": gbsg}[data]
    block = {"type": "anova", "variable": variable, "group": group, **({"groups": groups} if groups else {})}
    result = federate(frames, a=block)["a"]
    rows = pooled(frames).dropna(subset=[variable, group])
    levels = groups or sorted(rows[group].unique())
    samples = [rows.loc[rows[group] == level, variable] for level in levels]
    ref = stats.f_oneway(*samples)
    assert result["statistic"] == pytest.approx(ref.statistic, abs=1e-10)
    assert result["p"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert result["df"] == [len(levels) - 1, sum(map(len, samples)) - len(levels)]
    for level, sample in zip(levels, samples, strict=True):
        summary = result["groups"][str(int(level)) if isinstance(level, float) else str(level)]
        assert summary["n"] == len(sample) and summary["mean"] == pytest.approx(sample.mean(), abs=1e-10)


@pytest.mark.parametrize(("data", "x", "y"), [("lung", "age", "wt.loss"), ("lung", "ph.karno", "pat.karno"),
                                             ("gbsg", "age", "estrec")])  # fmt: skip
def test_pearson_correlation_equals_scipy(lung, gbsg, data, x, y):
    frames = {"lung": lung, "gbsg": gbsg}[data]
    result = federate(frames, r={"type": "pearson", "x": x, "y": y})["r"]
    rows = pooled(frames).dropna(subset=[x, y])
    ref = stats.pearsonr(rows[x], rows[y])
    interval = ref.confidence_interval(confidence_level=0.95)
    assert result["n"] == len(rows)
    assert result["r"] == pytest.approx(ref.statistic, abs=1e-12)
    assert result["p"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert result["ci_lower"] == pytest.approx(interval.low, abs=1e-12)
    assert result["ci_upper"] == pytest.approx(interval.high, abs=1e-12)


QUANTILES = [0.01, 0.1, 0.25, 0.33, 0.5, 0.75, 0.9, 0.99]


@pytest.mark.parametrize("data, variables", [("lung", ["age", "wt.loss", "meal.cal", "time"]),
                                             ("gbsg", ["age", "tsize", "pnodes", "progrec", "time"])])  # fmt: skip
def test_describe_quantiles_equal_pandas_to_the_bit(lung, gbsg, data, variables):
    """Missing values, ties, negative values, skewed counts: every quantile equals pandas' (0 difference)."""
    frames = {"lung": lung, "gbsg": gbsg}[data]
    result = federate(frames, d={"type": "describe", "variables": variables, "quantiles": QUANTILES})["d"]
    rows = pooled(frames)
    for name in variables:
        assert result["variables"][name]["quantiles"] == {str(q): rows[name].quantile(q) for q in QUANTILES}
        assert "quantiles_withheld" not in result["variables"][name]


def test_order_statistic_keys_keep_the_order_of_floats():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1e3, 2000), rng.exponential(1e-300, 50), [-np.inf, np.inf, 0.0, -0.0,
                             5e-324, -5e-324, np.finfo(float).max, -np.finfo(float).max]])  # fmt: skip
    keys = order_statistics.keys(values)
    assert np.array_equal(np.argsort(keys, kind="stable"), np.argsort(values + 0.0, kind="stable"))
    assert [order_statistics.value(int(k)) for k in keys] == list(values + 0.0)
    assert order_statistics.LOWEST == order_statistics.keys(np.array([-np.inf]))[0]
    assert order_statistics.HIGHEST == order_statistics.keys(np.array([np.inf]))[0]


def test_quantiles_never_release_a_minimum_or_maximum():
    frames = {"a": pd.DataFrame({"x": [3.0, 9.0]}), "b": pd.DataFrame({"x": [4.0, np.nan]})}
    result = federate(frames, d={"type": "describe", "variables": ["x"], "quantiles": [0.25, 0.5, 0.99]})["d"]
    got = result["variables"]["x"]
    assert got["quantiles"] == {"0.25": None, "0.5": 4.0, "0.99": None}  # 0.25 reads the minimum, 0.99 the maximum
    assert "never a minimum or maximum" in got["quantiles_withheld"]
    assert "quantiles" not in federate(frames, d={"type": "describe", "variables": ["x"], "quantiles": []})["d"][
        "variables"]["x"]  # fmt: skip


@pytest.mark.parametrize("quantiles", [[0.0, 0.5], [0.5, 1.0], [1.5]])
def test_quantiles_outside_zero_one_are_refused(quantiles):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        SPEC.validate_python({"id": "d", "type": "describe", "variables": ["x"], "quantiles": quantiles})


def test_published_quantile_counts_are_only_comparisons_with_the_rank():
    """Under secure aggregation a cut point's cross-site count is published only as reached (the rank) or not (0);
    a rank with fewer than k values on one side is withheld (−1) whatever the counts."""
    counts = np.array([[0, 3, 40, 41, 100, 100], [0, 3, 40, 41, 100, 100], [0, 3, 40, 41, 100, 100]])
    published = reached(counts, [41, 4, 97], 5)
    np.testing.assert_array_equal(published[0], [0, 0, 0, 41, 41, 100])
    assert (published[1:] == -1).all()
