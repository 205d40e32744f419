"""An independent pandas reference for `[cohort] source = "omop"` (workbench.omop_cohort).

It reads whole CDM tables (`SELECT * FROM table`, nothing else) and does every step of the cohort definition
in pandas, straight from the semantics in workbench/omop_cohort.py's docstring, so the node's SQL can be
checked against it. It is deliberately plain rather than fast.

Choices where the semantics leave room (the tests rely on them; keep them in step with the product):
- a record with a missing person_id or date never counts (it cannot be placed in time);
- several observation periods may hold the index date with enough prior observation (only in a malformed
  CDM, as periods do not overlap): the one ending last gives `obs_end`;
- a person in the exposure table but not in `person` is dropped (as OHDSI's CohortMethod joins `person`);
  a missing year of birth gives a missing age (dropped only if an age limit is set);
- `measurement`: the value of the latest record in the window even when that record's value is missing
  (no fall-back to an earlier record with a value); text that is not a number is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from workbench.omop_cohort import DOMAINS, ConceptSet, OmopCohort

Tables = Callable[[str], pd.DataFrame]


def duckdb_tables(path: Path) -> Tables:
    """A reader of whole CDM tables from a DuckDB file (read-only), column names in lower case, memoised."""
    cache: dict[str, pd.DataFrame] = {}

    def read(name: str) -> pd.DataFrame:
        if name not in cache:
            with duckdb.connect(str(path), read_only=True) as con:
                frame = con.execute(f"SELECT * FROM {name}").df()
            frame.columns = [str(c).lower() for c in frame.columns]
            cache[name] = frame
        return cache[name].copy()

    return read


def _ids(values: pd.Series) -> pd.Series:
    """Concept or person ids as int64 (Eunomia stores some as DOUBLE); missing ones dropped."""
    return pd.to_numeric(values, errors="coerce").dropna().astype("int64")


def _dates(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, errors="coerce").dt.normalize().astype("datetime64[ns]")


def expand(concept_set: ConceptSet, ancestor: Callable[[], pd.DataFrame]) -> set[int]:
    """The concept ids of a concept set: concepts (+ descendants) minus exclude (+ its descendants)."""

    def with_descendants(concepts: list[int]) -> set[int]:
        found = set(concepts)
        if concept_set.descendants and concepts:
            rows = ancestor()
            anc = pd.to_numeric(rows["ancestor_concept_id"], errors="coerce")
            hit = rows.loc[anc.isin([float(c) for c in concepts]) & anc.notna()]
            found |= set(_ids(hit["descendant_concept_id"]).tolist())
        return found

    return with_descendants(concept_set.concepts) - with_descendants(concept_set.exclude)


def reference_cohort(tables: Tables, cohort: OmopCohort) -> pd.DataFrame:
    """One row per person: person_id, then cohort.columns, sorted by person_id."""
    cache: dict[str, pd.DataFrame] = {}

    def table(name: str) -> pd.DataFrame:
        if name not in cache:
            cache[name] = tables(name)
        return cache[name]

    concepts = {name: expand(cs, lambda: table("concept_ancestor")) for name, cs in cohort.concept_sets.items()}

    def records(domain: str, concept_set: str | None, extra: tuple[str, ...] = ()) -> pd.DataFrame:
        """person_id, date (datetime64) and `extra` columns of a domain's records in a concept set."""
        name, concept_col, date_col = DOMAINS[domain]
        rows = table(name)
        if concept_col is not None and concept_set is not None:
            concept = pd.to_numeric(rows[concept_col], errors="coerce")
            rows = rows.loc[concept.isin([float(c) for c in concepts[concept_set]]) & concept.notna()]
        out = pd.DataFrame(
            {
                "person_id": pd.to_numeric(rows["person_id"], errors="coerce"),
                "date": _dates(rows[date_col]),
                **{c: rows[c] for c in extra},
            }
        )
        out = out.dropna(subset=["person_id", "date"])
        out["person_id"] = out["person_id"].astype("int64")
        return out.reset_index(drop=True)

    # --- exposure groups and index date -------------------------------------------------------------------
    exposure = cohort.exposure
    firsts = []
    for group in exposure.groups:
        rows = records(exposure.domain, group)
        first = rows.groupby("person_id", as_index=False)["date"].min()
        first["group"] = group
        firsts.append(first)
    first = pd.concat(firsts, ignore_index=True)
    n_groups = first.groupby("person_id")["group"].transform("size")
    if exposure.in_both == "exclude":
        chosen = first.loc[n_groups == 1]
    else:
        earliest = first.groupby("person_id")["date"].transform("min")
        at_earliest = first.loc[first["date"] == earliest]
        ties = at_earliest.groupby("person_id")["group"].transform("size")
        chosen = at_earliest.loc[ties == 1]
    people = chosen.rename(columns={"date": "index_date"})[["person_id", "group", "index_date"]]
    people = people.sort_values("person_id").reset_index(drop=True)

    # --- observation period -------------------------------------------------------------------------------
    periods = table("observation_period")
    periods = pd.DataFrame(
        {
            "person_id": pd.to_numeric(periods["person_id"], errors="coerce"),
            "start": _dates(periods["observation_period_start_date"]),
            "end": _dates(periods["observation_period_end_date"]),
        }
    ).dropna()
    periods["person_id"] = periods["person_id"].astype("int64")
    joined = people.merge(periods, on="person_id", how="inner")
    prior = pd.Timedelta(days=cohort.entry.prior_observation_days)
    holds = (joined["start"] <= joined["index_date"] - prior) & (joined["start"] <= joined["index_date"])
    holds &= joined["end"] >= joined["index_date"]
    obs_end = joined.loc[holds].groupby("person_id", as_index=False)["end"].max().rename(columns={"end": "obs_end"})
    people = people.merge(obs_end, on="person_id", how="inner")

    # --- person: age and sex -------------------------------------------------------------------------------
    person = table("person")
    person = pd.DataFrame(
        {
            "person_id": pd.to_numeric(person["person_id"], errors="coerce"),
            "year_of_birth": pd.to_numeric(person["year_of_birth"], errors="coerce"),
            "gender_concept_id": pd.to_numeric(person["gender_concept_id"], errors="coerce")
            if "gender_concept_id" in person
            else np.nan,
        }
    ).dropna(subset=["person_id"])
    person["person_id"] = person["person_id"].astype("int64")
    people = people.merge(person, on="person_id", how="inner")
    people["age"] = people["index_date"].dt.year - people["year_of_birth"]
    entry = cohort.entry
    if entry.min_age is not None:
        people = people.loc[people["age"].notna() & (people["age"] >= entry.min_age)]
    if entry.max_age is not None:
        people = people.loc[people["age"].notna() & (people["age"] <= entry.max_age)]
    people = people.reset_index(drop=True)

    def days_after_index(rows: pd.DataFrame) -> pd.DataFrame:
        """The records of cohort persons, with `day` = days from that person's index date."""
        rows = rows.merge(people[["person_id", "index_date"]], on="person_id", how="inner")
        rows["day"] = (rows["date"] - rows["index_date"]).dt.days.astype("int64")
        return rows

    # --- outcome and time at risk ---------------------------------------------------------------------------
    outcome = cohort.outcome
    if outcome is not None:
        tar_start, tar_end = outcome.time_at_risk.start, outcome.time_at_risk.end
        people["at_risk_end"] = np.minimum(tar_end, (people["obs_end"] - people["index_date"]).dt.days)
        people = people.loc[people["at_risk_end"] >= tar_start].reset_index(drop=True)
        hits = days_after_index(records(outcome.domain, outcome.concept_set))
        if entry.no_prior_outcome:
            before = set(hits.loc[hits["day"] < tar_start, "person_id"])
            people = people.loc[~people["person_id"].isin(before)].reset_index(drop=True)
        hits = hits.merge(people[["person_id", "at_risk_end"]], on="person_id", how="inner")
        inside = hits.loc[(hits["day"] >= tar_start) & (hits["day"] <= hits["at_risk_end"])]
        first_day = inside.groupby("person_id")["day"].min()
        day = people["person_id"].map(first_day)
        event = day.notna()
        people[outcome.event] = event.astype("int64")
        people[outcome.duration] = (day.where(event, people["at_risk_end"]) - tar_start + 1).astype("int64")

    # --- covariates -----------------------------------------------------------------------------------------
    people[exposure.column] = people["group"].astype(object)
    for cov in cohort.covariates:
        if cov.kind == "age":
            age = people["age"]
            people[cov.column] = age.astype("float64") if age.isna().any() else age.astype("int64")
        elif cov.kind == "sex":
            gender = people["gender_concept_id"]
            people[cov.column] = ["female" if g == 8532 else "male" if g == 8507 else None for g in gender.tolist()]
            people[cov.column] = people[cov.column].astype(object)
        elif cov.kind == "history":
            rows = days_after_index(records(cov.table_domain, cov.concept_set))
            inside = rows.loc[(rows["day"] >= cov.window.start) & (rows["day"] <= cov.window.end)]
            people[cov.column] = people["person_id"].isin(set(inside["person_id"])).astype("int64")
        else:  # measurement
            rows = days_after_index(records("measurement", cov.concept_set, ("measurement_id", "value_as_number")))
            inside = rows.loc[(rows["day"] >= cov.window.start) & (rows["day"] <= cov.window.end)].copy()
            inside["measurement_id"] = pd.to_numeric(inside["measurement_id"], errors="coerce")
            inside = inside.sort_values(["person_id", "date", "measurement_id"], na_position="first")
            latest = inside.groupby("person_id").tail(1).set_index("person_id")
            value = pd.to_numeric(latest["value_as_number"], errors="coerce").astype("float64")
            people[cov.column] = people["person_id"].map(value).astype("float64")

    out = people[["person_id", *cohort.columns]].sort_values("person_id").reset_index(drop=True)
    out["person_id"] = out["person_id"].astype("int64")
    return out


# --- a hand-made CDM: every rule ----------------------------------------------------------------------------

A, B = "a", "b"


def _frame(columns: list[str], rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def tiny_cdm() -> dict[str, pd.DataFrame]:
    """A hand-made CDM of 12 persons exercising every rule (expected rows worked out by hand in the tests)."""
    d = pd.Timestamp
    drug = _frame(["person_id", "drug_concept_id", "drug_exposure_start_date"], [
        (1, 11, d("2020-01-10")), (1, 11, d("2020-04-01")),
        (2, 12, d("2020-01-01")), (2, 13, d("2020-01-01")), (2, 21, d("2020-01-01")),  # excluded / not descendants
        (3, 10, d("2020-03-01")), (3, 20, d("2020-02-01")),  # both: B first
        (4, 10, d("2020-03-01")), (4, 20, d("2020-03-01")), (4, 10, d("2020-05-01")),  # both, same first day
        (5, 20, d("2020-01-01")),  # too little prior observation
        (6, 20, d("2020-06-01")),  # observation ends day 9; not in `person`
        (7, 10, d("2020-01-01")),  # observation ends on the index day: no day at risk
        (8, 10, d("2020-01-01")),  # outcome on the index day (day 0 < start 1): prior outcome
        (9, 10, d("2020-01-01")),  # outcome on day 30 exactly
        (10, 10, d("2020-01-01")),  # the period holding the index began < 365 days before
        (11, 20, d("2020-01-01")),  # aged 70
        (12, 10, None),  # no date: never counts
    ])  # fmt: skip
    long = (d("2010-01-01"), d("2030-01-01"))
    periods = _frame(["person_id", "observation_period_start_date", "observation_period_end_date"], [
        (1, *long), (2, *long), (3, *long), (4, *long), (5, d("2019-06-01"), d("2030-01-01")),
        (6, d("2010-01-01"), d("2020-06-10")), (7, d("2010-01-01"), d("2020-01-01")), (8, *long), (9, *long),
        (10, d("2015-01-01"), d("2019-06-01")), (10, d("2019-06-02"), d("2030-01-01")), (11, *long), (12, *long),
    ])  # fmt: skip
    person = _frame(["person_id", "gender_concept_id", "year_of_birth"], [
        (1, 8532, 1980), (3, 8507, 1980), (5, 8507, 1980), (7, 8507, 1980), (8, 0, 1980), (9, 8507, 1980),
        (10, 8507, 1980), (11, 8532, 1950), (6, 0, None),
    ])  # fmt: skip
    condition = _frame(["person_id", "condition_concept_id", "condition_start_date"], [
        (1, 31, d("2020-01-15")),  # outcome (descendant of 30) on day 5
        (1, 40, d("2019-06-01")),  # ulcer on day −223
        (8, 30, d("2020-01-01")),  # outcome on day 0
        (9, 30, d("2020-01-31")), (9, 30, d("2020-02-01")),  # outcome on days 30 and 31
        (9, 40, d("2018-12-31")),  # ulcer on day −366: outside
        (11, 40, d("2019-12-31")),  # ulcer on day −1: inside
        (3, 30, d("2020-02-11")),  # outcome on day 10 after B's index (in_both = "first")
    ])  # fmt: skip
    measurement = _frame(["measurement_id", "person_id", "measurement_concept_id", "measurement_date", "value_as_number"], [
        (5.0, 1, 50, d("2019-12-01"), "7.5"), (9.0, 1, 50, d("2019-12-01"), "8.25"), (20.0, 1, 50, d("2019-11-01"), "1"),
        (1.0, 9, 50, d("2020-01-01"), "4"),  # day 0: outside [−365, −1]
        (2.0, 11, 50, d("2019-10-01"), "3"), (3.0, 11, 50, d("2019-12-01"), None),  # latest has no value
        (4.0, 11, 51, d("2019-12-02"), "6"),  # another concept
    ])  # fmt: skip
    death = _frame(["person_id", "death_date"], [(1, d("2020-02-20")), (11, d("2020-01-11"))])
    ancestor = _frame(["ancestor_concept_id", "descendant_concept_id"], [
        (10.0, 10), (10.0, 11), (10.0, 12), (10.0, 13), (12.0, 12), (12.0, 13), (20.0, 20), (20.0, 21),
        (30.0, 30), (30.0, 31), (40.0, 40), (50.0, 50),
    ])  # fmt: skip
    frames = {"drug_exposure": drug, "observation_period": periods, "person": person, "condition_occurrence": condition,
              "measurement": measurement, "death": death, "concept_ancestor": ancestor}  # fmt: skip
    return frames


def tiny_cohort(**changes) -> OmopCohort:
    spec = {
        "concept_sets": {
            A: {"concepts": [10], "exclude": [12]},
            B: {"concepts": [20], "descendants": False},
            "bleed": {"concepts": [30]},
            "ulcer": {"concepts": [40]},
            "lab": {"concepts": [50]},
        },
        "exposure": {"column": "group", "groups": [A, B]},
        "entry": {"prior_observation_days": 365, "no_prior_outcome": True},
        "outcome": {
            "concept_set": "bleed",
            "time_at_risk": {"start": 1, "end": 30},
            "duration": "days",
            "event": "event",
        },
        "covariates": [
            {"column": "age", "kind": "age"},
            {"column": "sex", "kind": "sex"},
            {"column": "ulcer", "kind": "history", "concept_set": "ulcer"},
            {"column": "lab", "kind": "measurement", "concept_set": "lab"},
        ],
    }
    for key, value in changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return OmopCohort.model_validate(spec)
