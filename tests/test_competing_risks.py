"""Cumulative incidence with competing risks equals lifelines' `AalenJohansenFitter` (estimate, variance, interval)
on real data split by centres, in memory and masked under the default site policy; bad input is named.

Data: GBSG2 as lifelines ships it with both follow-ups (`load_lymph_node`, 686 patients; no centre column, split
as `gbsg2_sites` splits GBSG2): `rectime`/`censrec` is recurrence-free survival (recurrence or death), so cause 1 =
recurrence, cause 2 = death without recurrence (an event on the day of death: `censdead` = 1, `survtime` =
`rectime`), 0 = censored; five sites of 56 to 246 patients. The Canadian senators (`load_canadian_senators`, 933
terms), a real competing-risks set split by its real provinces: death, resignation, retirement and an appointment
declined (at duration 0); serving = censored.

lifelines jitters durations apart, at random, whenever two causes share a time; our estimator takes tied counts,
which is lifelines' own formula without the jitter. The reference for data with such ties is therefore lifelines
with its tie check switched off (`no_jitter`); where there is none, plain lifelines (and no warning).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import AalenJohansenFitter
from lifelines.datasets import load_canadian_senators, load_lymph_node
from pydantic import ValidationError
from streamlit.testing.v1 import AppTest

from analyses.contract import DataError
from tests.conftest import SPEC, federate, make_site, study
from workbench import report

TOLERANCE = 1e-10
CIF = {"type": "cumulative_incidence", "duration": "rectime", "event": "cause", "causes": [1, 2]}


def _gbsg() -> pd.DataFrame:
    rows = load_lymph_node()
    death_first = (rows.censdead == 1) & (rows.rectime == rows.survtime)
    return rows.assign(cause=np.where(rows.censrec == 0, 0, np.where(death_first, 2, 1)))


def _gbsg_sites() -> dict[str, pd.DataFrame]:
    rows = _gbsg()
    site = np.random.default_rng(2).choice(5, size=len(rows), p=[0.35, 0.25, 0.2, 0.12, 0.08])
    return {f"gbsg-{k + 1}": rows[site == k] for k in range(5)}


def _senators() -> dict[str, pd.DataFrame]:
    senators = load_canadian_senators()
    codes = {"Death": 1, "Resignation": 2, "Retirement": 3, "Appointment declined": 4}
    rows = pd.DataFrame({"days": senators.diff_days, "cause": senators.reason.map(codes).fillna(0).astype(int)})
    provinces = rows.groupby(senators["Province / Territory"])
    return {name.lower().replace(" ", "-").replace("/", ""): part for name, part in provinces}


@pytest.fixture
def no_jitter(monkeypatch):
    """lifelines without its random jitter of tied times (its estimator on the data as they are)."""
    monkeypatch.setattr(AalenJohansenFitter, "_check_for_duplicates", staticmethod(lambda durations, events: False))


def _compare(curve: dict, durations: pd.Series, causes: pd.Series, cause: int, alpha: float = 0.05) -> float:
    """Largest difference from lifelines; where lifelines has no number (CIF = 0; all at risk fail) ours is finite."""
    fit = AalenJohansenFitter(alpha=alpha).fit(durations, causes, event_of_interest=cause)
    np.testing.assert_array_equal(curve["time"], fit.timeline)
    np.testing.assert_array_equal(curve["at_risk"], fit.event_table["at_risk"])
    np.testing.assert_array_equal(curve["events"], fit.event_table[f"observed_{cause}"])
    ours = np.array([curve[key] for key in ("cif", "variance", "ci_lower", "ci_upper")])
    theirs = np.vstack([fit.cumulative_density_.iloc[:, 0], fit.variance_, fit.confidence_interval_.T.to_numpy()])
    assert np.isfinite(ours).all()
    assert np.all((ours[2] <= ours[0]) & (ours[0] <= ours[3]))
    undefined = np.isnan(theirs[2]) & (ours[0] == 0)  # lifelines: log(−log 0); the interval is [0, 0]
    assert np.all(ours[2:, undefined] == 0)
    known = np.isfinite(theirs)
    difference = float(np.abs(ours - theirs)[known].max())
    assert difference < TOLERANCE
    return difference


def test_gbsg2_recurrence_and_death_per_hormone_therapy_equal_lifelines(monkeypatch):
    sites = _gbsg_sites()
    result = federate(sites, ci={**CIF, "group": "hormone", "cause_names": ["recurrence", "death"]})["ci"]
    data = _gbsg()
    assert result["n"] == 686 and result["n_dropped"] == 0
    assert result["events"] == {"recurrence": 278, "death": 21} and result["causes"] == ["recurrence", "death"]
    untied = data[data.hormone == 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tie between causes: plain lifelines, no jitter
        for code, name in ((1, "recurrence"), (2, "death")):
            _compare(result["groups"]["1"][name], untied.rectime, untied.cause, code)
    tied = data[data.hormone == 2]
    with pytest.warns(Warning, match="Tied event times"):
        AalenJohansenFitter().fit(tied.rectime, tied.cause, event_of_interest=1)
    monkeypatch.setattr(AalenJohansenFitter, "_check_for_duplicates", staticmethod(lambda durations, events: False))
    for code, name in ((1, "recurrence"), (2, "death")):
        _compare(result["groups"]["2"][name], tied.rectime, tied.cause, code)


def test_senators_by_province_four_causes_on_a_yearly_grid_equal_lifelines_without_jitter(no_jitter):
    sites = _senators()
    assert len(sites) == 17
    block = {"type": "cumulative_incidence", "duration": "days", "event": "cause", "causes": [1, 2, 3, 4],
             "time_grid": "year", "alpha": 0.1}  # fmt: skip
    result = federate(sites, ci=block)["ci"]
    data = pd.concat(sites.values())
    years = np.ceil(data.days / 365.25) * 365.25  # a duration stands for the end of its cell
    assert result["n"] == 933 and result["events"] == {"1": 494, "2": 201, "3": 136, "4": 3}
    for code in (1, 2, 3):
        _compare(result["groups"]["all"][str(code)], years, data.cause, code, alpha=0.1)
    # Appointments declined at duration 0: lifelines sets F(0) = 0 (they count in S and the variance only);
    # we count them, F(t) = 3/933 from t = 0 on; the variance is lifelines' (differences of F do not move).
    declined = result["groups"]["all"]["4"]
    fit = AalenJohansenFitter().fit(years, data.cause, event_of_interest=4)
    assert fit.cumulative_density_.iloc[:, 0].max() == 0
    np.testing.assert_allclose(declined["cif"], 3 / 933, rtol=0, atol=1e-15)
    known = np.isfinite(fit.variance_.to_numpy())  # the last year: everyone still serving leaves with an event
    assert not known.all() and np.isfinite(declined["variance"]).all()
    np.testing.assert_allclose(np.array(declined["variance"])[known], fit.variance_[known], rtol=0, atol=TOLERANCE)


def test_masked_under_the_default_policy_equals_lifelines(tmp_path, no_jitter):
    folders = [make_site(tmp_path / site, rows, "") for site, rows in _gbsg_sites().items()]
    text = ('[study]\nid = "cr"\ntitle = "Competing risks"\n[cohort]\ntable = "patients"\n'
            '[variables]\nhormone = { levels = [1, 2] }\n[[analysis]]\nid = "ci"\ntype = "cumulative_incidence"\n'
            'duration = "rectime"\nevent = "cause"\ncauses = [1, 2]\ncause_names = ["recurrence", "death"]\n'
            'group = "hormone"\n')  # fmt: skip
    results, exchange = study(folders, text)
    assert exchange.summary()["mode"] == "masked" and exchange.summary()["min_count"] == 5
    assert not exchange.refusals and "error" not in results["ci"], results
    data = _gbsg()
    for level, rows in data.groupby("hormone"):
        for code, name in ((1, "recurrence"), (2, "death")):
            _compare(results["ci"]["groups"][str(level)][name], rows.rectime, rows.cause, code)


def test_a_cause_the_analysis_does_not_declare_is_a_data_error_naming_the_column():
    sites = _gbsg_sites()
    sites["gbsg-3"] = sites["gbsg-3"].assign(cause=sites["gbsg-3"].cause.replace(2, 3))
    with pytest.raises(DataError, match="event column 'cause' holds a code the analysis does not declare") as error:
        federate(sites, ci=CIF)
    assert error.value.private == "column 'cause': undeclared code(s) 3"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"causes": [0, 1]}, "causes are the event column's codes 1, 2, …; 0 means censored"),
        ({"causes": [1, 1]}, "each cause may be listed once in causes"),
        ({"cause_names": ["recurrence"]}, "cause_names has 1 names for 2 causes"),
        ({"causes": []}, "List should have at least 1 item"),
    ],
)
def test_bad_causes_are_refused_with_a_clear_message(change, message):
    with pytest.raises(ValidationError, match=message):
        SPEC.validate_python({"id": "ci", **CIF, **change})


def _dashboard(path: str) -> None:
    import json
    import pathlib

    from ui import views
    from ui.roles import Role

    result = json.loads(pathlib.Path(path).read_text())
    for role in ("researcher", "viewer"):
        views.analysis(f"ci-{role}", result, Role(role), 5)


def test_the_report_and_the_dashboard_show_every_group_and_cause(tmp_path):
    names = ["death", "resignation", "retirement", "declined"]
    block = {"type": "cumulative_incidence", "duration": "days", "event": "cause", "causes": [1, 2, 3, 4],
             "cause_names": names}  # fmt: skip
    result = federate(_senators(), ci=block)["ci"]
    text = report._RENDERERS["cumulative_incidence"](result)
    assert all(f"\n{name} " in text for name in names)
    (tmp_path / "result.json").write_text(json.dumps(result, allow_nan=False))
    app = AppTest.from_function(_dashboard, args=(str(tmp_path / "result.json"),), default_timeout=60).run()
    assert not app.exception and len(app.get("image")) == 2
    researcher, viewer = (frame.value for frame in app.dataframe)
    assert researcher["cause"].tolist() == names and researcher["events"].tolist() == [494, 201, 136, 3]
    assert viewer["events"].astype(str).tolist() == ["494", "201", "136", "<5"]
