"""Cox regression with time-varying covariates equals lifelines' `CoxTimeVaryingFitter` on the pooled rows.

Data: Stanford heart transplants (103 patients, 172 (start, stop] rows; transplant changes during follow-up) and
Rossi recidivism turned into two-week episodes with lifelines' `to_episodic_format`, plus the time-varying
covariate age × time of lifelines' own example. Neither has centres: patients go to 4 sites by id, all rows of a
patient at one site.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxTimeVaryingFitter
from lifelines.datasets import load_rossi, load_stanford_heart_transplants
from lifelines.utils import to_episodic_format
from pydantic import ValidationError

from analyses.contract import DataError
from analyses.driver import run_in_memory
from analyses.survival.time_varying import changes
from tests.conftest import SPEC, federate, make_site, pooled, protocol_text, study

TIGHT = {"step_size": 1.0, "precision": 1e-20, "r_precision": 0.0, "max_steps": 100}
"""lifelines' Newton run to the optimum (its default stops ~1e-6 short; its SEs use the last-but-one iterate)."""
COLUMNS = {"coef": "coef", "exp_coef": "exp(coef)", "se": "se(coef)", "z": "z", "p": "p",
           "ci_lower": "coef lower 95%", "ci_upper": "coef upper 95%"}  # fmt: skip
STANFORD = {"type": "cox_time_varying", "patient": "id", "start": "start", "stop": "stop", "event": "event",
            "covariates": ["age", "year", "surgery", "transplant"], "time_grid": 0.5}  # fmt: skip
"""Patient 38 is transplanted at day 4.5: a half-day grid keeps every time exact."""


def _sites(data: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {f"site-{k + 1}": rows.reset_index(drop=True) for k, rows in data.groupby(data["id"] % 4)}


@pytest.fixture(scope="module")
def stanford() -> dict[str, pd.DataFrame]:
    return _sites(load_stanford_heart_transplants())


@pytest.fixture(scope="module")
def rossi() -> dict[str, pd.DataFrame]:
    episodes = to_episodic_format(load_rossi(), "week", "arrest", time_gaps=2.0)
    return _sites(episodes.assign(age_time=episodes["age"] * episodes["stop"]))


def _reference(frames, block, strata=None) -> CoxTimeVaryingFitter:
    data = pooled(frames)
    columns = [block["patient"], block["start"], block["stop"], block["event"], *block["covariates"], *(strata or [])]
    return CoxTimeVaryingFitter(penalizer=block.get("penalizer", 0.0)).fit(
        data[columns], event_col=block["event"], start_col=block["start"], stop_col=block["stop"],
        id_col=block["patient"], strata=strata, fit_options=TIGHT,
    )  # fmt: skip


def _assert_equal(result, ref, names, tolerance=1e-8) -> float:
    """Every reported column, the log-likelihood and (unpenalized) the LR test within `tolerance`; the largest gap."""
    summary = ref.summary
    gaps = [abs(result["params"][name][key] - summary.loc[name, column]) for name in names
            for key, column in COLUMNS.items()]  # fmt: skip
    gaps.append(abs(result["log_likelihood"] - ref.log_likelihood_))
    if not ref.penalizer:
        gaps.append(abs(result["likelihood_ratio_test"]["statistic"] - ref.log_likelihood_ratio_test().test_statistic))
    assert max(gaps) < tolerance, gaps
    return max(gaps)


@pytest.mark.parametrize(
    "options",
    [{}, {"penalizer": 0.1}, {"strata": ["site"]}, {"strata": ["surgery"]}, {"strata": ["site"], "penalizer": 0.05}],
)
def test_stanford_equals_lifelines(stanford, options):
    strata = options.get("strata", [])
    block = {**STANFORD, **options, "covariates": [c for c in STANFORD["covariates"] if c not in strata]}
    result = federate(stanford, tv=block)["tv"]
    _assert_equal(result, _reference(stanford, block, strata or None), block["covariates"])
    assert (result["n"], result["n_rows"], result["events"], result["n_dropped"]) == (103, 172, 75, 0)


def test_rossi_episodes_with_age_by_time_equal_lifelines(rossi):
    block = {"type": "cox_time_varying", "patient": "id", "start": "start", "stop": "stop", "event": "arrest",
             "covariates": ["fin", "age", "prio", "age_time"]}  # fmt: skip
    result = federate(rossi, tv=block)["tv"]
    _assert_equal(result, _reference(rossi, block), block["covariates"])
    assert (result["n"], result["events"]) == (432, 114) and result["n_rows"] == len(pooled(rossi))


def test_episodes_split_at_fixed_times_change_the_risk_set_no_more_than_one_row_per_patient():
    flat = load_rossi().assign(id=lambda d: np.arange(len(d)), start=0.0, stop=lambda d: d["week"].astype(float))
    episodes = to_episodic_format(load_rossi(), "week", "arrest", time_gaps=2.0)
    times = np.unique(flat["week"][flat["arrest"] == 1]).astype(np.int64)

    def guard(rows: pd.DataFrame) -> np.ndarray:
        x = rows[["fin", "age", "prio"]].to_numpy(dtype=float)
        start, stop = rows["start"].to_numpy().astype(np.int64), rows["stop"].to_numpy().astype(np.int64)
        return changes(rows["id"].to_numpy(), start, stop, x, np.zeros(len(rows), dtype=np.int64), 1, times)

    np.testing.assert_array_equal(guard(episodes), guard(flat))
    assert guard(flat).sum() == 2 * 432  # each patient enters once and leaves once


@pytest.mark.parametrize("policy", ["", 'row_id = "id"'])  # with row_id a patient's rows share one guard key
def test_masked_with_the_default_policy_equals_lifelines(tmp_path, stanford, policy):
    folders = [make_site(tmp_path / site, rows, policy) for site, rows in stanford.items()]
    block = "\n".join(f"{key} = {value!r}".replace("'", '"') for key, value in STANFORD.items() if key != "type")
    text = protocol_text(f'id = "tv"\ntype = "cox_time_varying"\n{block}')
    results, exchange = study(folders, text.replace("[variables]", "[variables]\ntransplant = { levels = [0, 1] }"))
    assert exchange.summary()["mode"] == "masked" and exchange.summary()["min_count"] == 5
    assert not exchange.refusals and "error" not in results["tv"], results
    _assert_equal(results["tv"], _reference(stanford, STANFORD), STANFORD["covariates"])
    if policy:
        index = folders[0] / "state" / "rowsets" / "index.jsonl"
        recorded = {json.loads(line)["rows"] for line in index.read_text().splitlines()}
        assert recorded == {stanford["site-1"].id.nunique()}  # patients, not their rows


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(start=np.where(f.index == 1, f.stop, f.start)),
         "column 'stop': rows end at or before their 'start'; each row is an interval (start, stop] with start < "
         "stop"),
        (lambda f: f.assign(start=np.where(f.start > 0, f.start - 1, f.start)),
         "column 'id': patients have overlapping ('start', 'stop'] rows; a patient's rows must not overlap"),
        (lambda f: f.assign(start=-f.start - 1), "duration column 'start' has a negative time"),
    ],
)  # fmt: skip
def test_bad_intervals_raise_a_data_error_naming_the_column_not_the_patients(stanford, change, message):
    frames = {**stanford, "site-1": change(stanford["site-1"])}
    with pytest.raises(DataError) as error:
        federate(frames, tv=STANFORD)
    assert str(error.value).startswith(message)


def test_an_event_row_shorter_than_the_grid_asks_for_a_finer_grid(stanford):
    with pytest.raises(DataError, match=r"column 'stop': event rows start and end in the same time_grid cell "
                       r"\(width 1\); declare a finer time_grid"):  # fmt: skip
        federate(stanford, tv={**STANFORD, "time_grid": None})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"time_grid": -1.0}, "a time_grid width must be positive"),
        ({"duration": "stop"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_protocol_fields_are_named(change, message):
    with pytest.raises(ValidationError, match=message):
        SPEC.validate_python({"id": "tv", **STANFORD, **change})


def test_no_events_is_an_analysis_error(stanford):
    frames = {site: rows.assign(event=0) for site, rows in stanford.items()}
    result = run_in_memory({"tv": SPEC.validate_python({"id": "tv", **STANFORD})}, frames)["tv"]
    assert result == {"error": "no events among the complete rows"}
