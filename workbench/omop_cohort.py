"""A cohort defined the way observational research defines it, on an OMOP CDM: structured data, never SQL.

`[cohort] source = "omop"` turns the protocol's cohort into concept sets, exposure groups whose first
exposure is each person's index date, entry requirements, an outcome inside a time-at-risk window and
covariates. A node materialises one row per person with exactly the columns named here
(hospital_node.omop); every analysis then reads that table as it reads a site's file.

Semantics (the README's "OMOP cohorts" states them for users):
- concept set: its concepts, with their descendants (`concept_ancestor`) when `descendants`, minus the
  `exclude` concepts (expanded the same way);
- index date: a person's first record of the group's concept set in the exposure domain; a person with
  records of several groups is dropped (`in_both = "exclude"`) or kept in the group first exposed to
  (`"first"`; the same first day for two groups drops the person);
- entry: an observation period holding the index date that began ≥ `prior_observation_days` before it;
  age at index (year of index − year of birth) within [min_age, max_age]; with `no_prior_outcome`, no
  outcome record before the time at risk starts (OHDSI CohortMethod's removeSubjectsWithPriorOutcome);
- time at risk: days [start, end] after index, cut at the end of the observation period; a person with no
  day at risk is dropped. `event` = 1 if the outcome's first record in that window exists; `duration` =
  days from the window's start to the outcome or to the window's (cut) end, counting the first day as 1;
- covariates: `age`; `sex` ("female", "male"; other concepts missing); `history`: 1 if any record of the
  concept set in the domain within [index + window start, index + window end], else 0; `measurement`: the
  value of the latest measurement in that window (the highest measurement_id among one day's).
"""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Domain = Literal["drug", "condition", "procedure", "measurement", "observation", "death"]
NAME = r"^[A-Za-z][A-Za-z0-9_]*$"

DOMAINS: dict[str, tuple[str, str | None, str]] = {
    # domain: (CDM table, concept column, date column)
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
    "observation": ("observation", "observation_concept_id", "observation_date"),
    "death": ("death", None, "death_date"),
}


class ConceptSet(BaseModel):
    """Concept ids, with their descendants unless `descendants = false`, minus `exclude`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concepts: list[int] = Field(min_length=1)
    descendants: bool = True
    exclude: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _positive(self) -> ConceptSet:
        for concept in [*self.concepts, *self.exclude]:
            if concept <= 0:
                raise ValueError(f"concept id {concept} is not an OMOP concept id (they are positive integers)")
        both = sorted(set(self.concepts) & set(self.exclude))
        if both:
            raise ValueError(f"concept {both[0]} is both included and excluded")
        return self


class Exposure(BaseModel):
    """The groups compared; the first exposure to a group's concept set is the person's index date."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field("exposure", pattern=NAME, description="the column holding each person's group")
    groups: list[str] = Field(min_length=1, description="concept set names; each is a group's label")
    domain: Domain = "drug"
    in_both: Literal["exclude", "first"] = "exclude"


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prior_observation_days: int = Field(0, ge=0)
    no_prior_outcome: bool = False
    min_age: int | None = Field(None, ge=0)
    max_age: int | None = Field(None, ge=0)


class Window(BaseModel):
    """Days relative to the index date, both ends included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end < self.start:
            raise ValueError(f"the window ends (day {self.end}) before it starts (day {self.start})")
        return self


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concept_set: str | None = Field(None, description="not needed for domain = 'death'")
    domain: Domain = "condition"
    time_at_risk: Window = Window(start=1, end=365)
    duration: str = Field("days", pattern=NAME)
    event: str = Field("event", pattern=NAME)


class Covariate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(pattern=NAME)
    kind: Literal["age", "sex", "history", "measurement"]
    concept_set: str | None = None
    domain: Domain = "condition"
    window: Window = Window(start=-365, end=-1)

    @model_validator(mode="after")
    def _needs_concepts(self) -> Covariate:
        if self.kind in ("history", "measurement") and self.concept_set is None:
            raise ValueError(f"covariate '{self.column}' ({self.kind}) needs a concept_set")
        return self

    @property
    def table_domain(self) -> str:
        return "measurement" if self.kind == "measurement" else self.domain


class OmopCohort(BaseModel):
    """The OMOP part of `[cohort]`: `concept_sets`, `exposure`, `entry`, `outcome`, `covariates`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concept_sets: dict[str, ConceptSet] = Field(default_factory=dict)
    exposure: Exposure
    entry: Entry = Entry()
    outcome: Outcome | None = None
    covariates: list[Covariate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> OmopCohort:
        known = sorted(self.concept_sets)
        named = [(f"exposure group '{g}'", g) for g in self.exposure.groups]
        if self.outcome and self.outcome.concept_set is not None:
            named.append(("the outcome", self.outcome.concept_set))
        named += [(f"covariate '{c.column}'", c.concept_set) for c in self.covariates if c.concept_set]
        for where, name in named:
            if name not in self.concept_sets:
                hint = difflib.get_close_matches(str(name), known, n=1)
                raise ValueError(f"{where} names concept set '{name}', which [cohort.concept_sets] does not define"
                                 + (f" (did you mean '{hint[0]}'?)" if hint else f" (defined: {', '.join(known) or 'none'})"))  # fmt: skip
        if self.outcome and self.outcome.concept_set is None and self.outcome.domain != "death":
            raise ValueError("the outcome needs a concept_set (only domain = 'death' goes without)")
        if len(set(self.exposure.groups)) != len(self.exposure.groups):
            raise ValueError("an exposure group is listed twice")
        entry = self.entry
        if entry.min_age is not None and entry.max_age is not None and entry.max_age < entry.min_age:
            raise ValueError("[cohort.entry] max_age is below min_age")
        if entry.no_prior_outcome and self.outcome is None:
            raise ValueError("[cohort.entry] no_prior_outcome needs an [cohort.outcome]")
        repeated = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if repeated:
            raise ValueError(f"column '{repeated[0]}' is produced twice; give each cohort column its own name")
        return self

    @property
    def columns(self) -> list[str]:
        """The per-person table's columns, in order."""
        outcome = [self.outcome.duration, self.outcome.event] if self.outcome else []
        return [self.exposure.column, *outcome, *(c.column for c in self.covariates)]

    def reads(self) -> dict[str, list[str]]:
        """CDM table → the columns the node reads from it (for the steward's review and the ethics export)."""
        wanted: dict[str, list[str]] = {
            "person": ["person_id", "year_of_birth"] + (["gender_concept_id"] if self._has("sex") else []),
            "observation_period": ["person_id", "observation_period_start_date", "observation_period_end_date"],
        }
        domains = [self.exposure.domain]
        domains += [self.outcome.domain] if self.outcome else []
        domains += [c.table_domain for c in self.covariates if c.concept_set]
        for domain in domains:
            table, concept, date = DOMAINS[domain]
            extra = (
                ["measurement_id", "value_as_number"] if domain == "measurement" and self._has("measurement") else []
            )
            columns = wanted.setdefault(table, ["person_id"])
            columns += [c for c in (concept, date, *extra) if c and c not in columns]
        if self.concept_sets:
            wanted["concept"] = ["concept_id"]
            if any(s.descendants for s in self.concept_sets.values()):
                wanted["concept_ancestor"] = ["ancestor_concept_id", "descendant_concept_id"]
        wanted["cdm_source"] = ["cdm_version"]
        return wanted

    def _has(self, kind: str) -> bool:
        return any(c.kind == kind for c in self.covariates)

    def in_words(self) -> list[str]:
        """The cohort definition as sentences, for the steward's review and the ethics export."""
        sets = self.concept_sets

        def concept_set(name: str) -> str:
            chosen = sets[name]
            ids = ", ".join(map(str, chosen.concepts))
            text = f"'{name}' (concepts {ids}{' and their descendants' if chosen.descendants else ''}"
            return text + (f", except {', '.join(map(str, chosen.exclude))})" if chosen.exclude else ")")

        exposure = self.exposure
        lines = [
            f"Index date: a person's first {exposure.domain} record of "
            + " or ".join(concept_set(g) for g in exposure.groups)
            + f"; the group is column '{exposure.column}'.",
        ]
        if len(exposure.groups) > 1:
            lines.append("Persons exposed to more than one group are "
                         + ("excluded." if exposure.in_both == "exclude" else
                            "kept in the group they were exposed to first (dropped if on the same day)."))  # fmt: skip
        entry = self.entry
        lines.append(f"Entry: ≥ {entry.prior_observation_days} days of continuous observation before the index date"
                     + (f"; age at index ≥ {entry.min_age}" if entry.min_age is not None else "")
                     + (f"; age at index ≤ {entry.max_age}" if entry.max_age is not None else "")
                     + ("; no outcome before the time at risk starts" if entry.no_prior_outcome else "") + ".")  # fmt: skip
        if self.outcome:
            out, tar = self.outcome, self.outcome.time_at_risk
            what = (
                "death" if out.concept_set is None else f"first {out.domain} record of {concept_set(out.concept_set)}"
            )
            lines.append(f"Outcome: {what} from day {tar.start} to day {tar.end} after the index date, censored at the "
                         f"end of observation → '{out.duration}' (days at risk), '{out.event}' (1 = outcome).")  # fmt: skip
        for cov in self.covariates:
            if cov.kind == "age":
                lines.append(f"'{cov.column}': age at the index date (years).")
            elif cov.kind == "sex":
                lines.append(f"'{cov.column}': sex (female, male).")
            else:
                span = f"days {cov.window.start} to {cov.window.end} around the index date"
                what = "1 if any record of" if cov.kind == "history" else "the latest value of"
                lines.append(
                    f"'{cov.column}': {what} {concept_set(cov.concept_set or '')} in {cov.table_domain}, {span}."
                )
        return lines
