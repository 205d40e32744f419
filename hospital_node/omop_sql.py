"""The node's own queries for a protocol's OMOP cohort: one SQL text for DuckDB and PostgreSQL.

First the concept sets are expanded in the site's vocabulary (`expansion_query`); the cohort query
(`cohort_query`) then names each set's concept ids as constants, so both engines' planners see how
many records they select (PostgreSQL then scans the concept indexes). Every value (concept ids, days,
ages, names) is a bound parameter; schema names come from the steward's `site.toml` (validated
identifiers). The semantics are workbench.omop_cohort's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.omop_cohort import DOMAINS, OmopCohort


@dataclass
class Query:
    """SQL text with `?` placeholders and the values bound to them, in order."""

    parts: list[str] = field(default_factory=list)
    params: list[object] = field(default_factory=list)

    def add(self, text: str, *values: object) -> None:
        self.parts.append(text)
        self.params.extend(values)

    @property
    def sql(self) -> str:
        return "\n".join(self.parts)


Sets = dict[str, list[int]]
"""Concept set name → its concept ids at this site (after descendants and exclusions)."""


def cohort_query(cohort: OmopCohort, cdm: str, sets: Sets) -> Query:
    """One row per person: person_id, then `cohort.columns` in order, sorted by person_id."""
    q = Query()
    _entries(q, cohort, cdm, sets)
    outcome = cohort.outcome
    if outcome is not None:
        q.add(",\noutcome_records AS (")
        _records(q, outcome.domain, outcome.concept_set, cdm, sets)
        q.add("),\noutcomes AS (\n  SELECT b.person_id,"
              "\n    MIN(CASE WHEN r.day_date - b.index_date BETWEEN CAST(? AS INTEGER) AND b.risk_end"
              "\n             THEN r.day_date - b.index_date END) AS first_day,"
              "\n    MAX(CASE WHEN r.day_date - b.index_date < CAST(? AS INTEGER) THEN 1 ELSE 0 END) AS prior"
              "\n  FROM base b JOIN outcome_records r ON r.person_id = b.person_id GROUP BY b.person_id\n)",
              outcome.time_at_risk.start, outcome.time_at_risk.start)  # fmt: skip
    for number, covariate in enumerate(cohort.covariates):
        if covariate.kind not in ("history", "measurement"):
            continue
        domain = covariate.table_domain
        q.add(f",\ncovariate_{number}_records AS (")
        _records(q, domain, covariate.concept_set, cdm, sets, values=covariate.kind == "measurement")
        window = "r.day_date BETWEEN b.index_date + CAST(? AS INTEGER) AND b.index_date + CAST(? AS INTEGER)"
        start, end = covariate.window.start, covariate.window.end
        if covariate.kind == "history":
            q.add(f"),\ncovariate_{number} AS (\n  SELECT DISTINCT b.person_id, 1 AS value FROM base b"
                  f"\n  JOIN covariate_{number}_records r ON r.person_id = b.person_id WHERE {window}\n)", start, end)  # fmt: skip
        else:
            q.add(f"),\ncovariate_{number} AS (\n  SELECT person_id, value FROM (\n    SELECT b.person_id, r.value,"
                  "\n      ROW_NUMBER() OVER (PARTITION BY b.person_id ORDER BY r.day_date DESC, r.record_id DESC NULLS LAST) AS k"
                  f"\n    FROM base b JOIN covariate_{number}_records r ON r.person_id = b.person_id WHERE {window}"
                  "\n  ) latest WHERE k = 1\n)", start, end)  # fmt: skip
    _select(q, cohort)
    return q


def expansion_query(cohort: OmopCohort, vocabulary: str) -> Query:
    """Rows (set name, concept id): each set's concepts, their descendants, minus its exclusions."""
    items = [(name, concept, chosen.descendants, excluded)
             for name, chosen in cohort.concept_sets.items()
             for excluded, ids in ((False, chosen.concepts), (True, chosen.exclude)) for concept in ids]  # fmt: skip
    values = ",\n    ".join(
        ["(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BOOLEAN), CAST(? AS BOOLEAN))"] * len(items)
    )
    q = Query()
    q.add(f"WITH items (set_name, concept_id, descendants, excluded) AS (\n  VALUES {values}\n),",
          *(value for item in items for value in item))  # fmt: skip
    q.add("expanded AS (\n  SELECT set_name, excluded, concept_id FROM items")
    if any(chosen.descendants for chosen in cohort.concept_sets.values()):
        q.add("  UNION\n  SELECT i.set_name, i.excluded, CAST(a.descendant_concept_id AS BIGINT)"
              f"\n  FROM items i JOIN {vocabulary}.concept_ancestor a ON a.ancestor_concept_id = i.concept_id"
              "\n  WHERE i.descendants")  # fmt: skip
    q.add(")\nSELECT set_name, concept_id FROM expanded WHERE NOT excluded"
          "\nEXCEPT\nSELECT set_name, concept_id FROM expanded WHERE excluded\nORDER BY 1, 2")  # fmt: skip
    return q


def _in(column: str, ids: list[int]) -> tuple[str, list[int]]:
    """`column IN (…)` for constant concept ids (never true for an empty set)."""
    if not ids:
        return "1 = 0", []
    return f"{column} IN ({', '.join(['CAST(? AS BIGINT)'] * len(ids))})", ids


def _records(q: Query, domain: str, concept_set: str | None, cdm: str, sets: Sets, values: bool = False) -> None:
    """person_id, day_date (with `values`: a measurement's value and record_id) of the domain's records of a set."""
    table, concept, date = DOMAINS[domain]
    extra = ", CAST(t.value_as_number AS FLOAT8) AS value, t.measurement_id AS record_id" if values else ""
    q.add(f"  SELECT t.person_id, t.{date} AS day_date{extra} FROM {cdm}.{table} t")
    if concept_set is not None and concept is not None:
        condition, ids = _in(f"t.{concept}", sets[concept_set])
        q.add(f"  WHERE {condition}", *ids)


def _entries(q: Query, cohort: OmopCohort, cdm: str, sets: Sets) -> None:
    """CTEs up to `base`: each person's group and index date, observation end, age, sex and last day at risk."""
    exposure = cohort.exposure
    table, concept, date = DOMAINS[exposure.domain]
    firsts = []
    for group in exposure.groups:
        condition, ids = _in(f"t.{concept}", sets[group])
        firsts.append((f"  SELECT t.person_id, CAST(? AS TEXT) AS grp, MIN(t.{date}) AS first_date FROM {cdm}.{table} t"
                       f"\n  WHERE {condition} GROUP BY t.person_id", [group, *ids]))  # fmt: skip
    q.add("WITH exposures AS (\n" + "\n  UNION ALL\n".join(text for text, _ in firsts) + "\n),",
          *(value for _, params in firsts for value in params))  # fmt: skip
    if exposure.in_both == "exclude":  # persons with records of one group only
        windows = "COUNT(*) OVER (PARTITION BY person_id) AS groups"
        keep = "groups = 1"
    else:  # the group first exposed to; a tie on that day drops the person
        windows = ("MIN(first_date) OVER (PARTITION BY person_id) AS earliest,"
                   "\n    COUNT(*) OVER (PARTITION BY person_id, first_date) AS same_day")  # fmt: skip
        keep = "first_date = earliest AND same_day = 1"
    q.add(f"ranked AS (\n  SELECT person_id, grp, first_date, {windows}\n  FROM exposures\n),"
          f"\nentries AS (\n  SELECT person_id, grp, first_date AS index_date FROM ranked WHERE {keep}\n),")  # fmt: skip
    q.add("observed AS (\n  SELECT e.person_id, e.grp, e.index_date, MAX(o.observation_period_end_date) AS obs_end"
          f"\n  FROM entries e JOIN {cdm}.observation_period o ON o.person_id = e.person_id"
          "\n  WHERE o.observation_period_start_date <= e.index_date - CAST(? AS INTEGER)"
          "\n    AND o.observation_period_end_date >= e.index_date"
          "\n  GROUP BY e.person_id, e.grp, e.index_date\n),", cohort.entry.prior_observation_days)  # fmt: skip
    sex = ", p.gender_concept_id" if any(c.kind == "sex" for c in cohort.covariates) else ""
    risk_end = ""
    params: list[object] = []
    if cohort.outcome is not None:
        risk_end = ", LEAST(CAST(? AS INTEGER), o.obs_end - o.index_date) AS risk_end"
        params.append(cohort.outcome.time_at_risk.end)
    q.add("base AS (\n  SELECT o.person_id, o.grp, o.index_date,"
          f"\n    CAST(EXTRACT(YEAR FROM o.index_date) AS BIGINT) - p.year_of_birth AS age{sex}{risk_end}"
          f"\n  FROM observed o JOIN {cdm}.person p ON p.person_id = o.person_id\n)", *params)  # fmt: skip


def _select(q: Query, cohort: OmopCohort) -> None:
    columns = ["b.grp"]
    joins: list[str] = []
    where: list[str] = []
    params: list[object] = []
    outcome = cohort.outcome
    if outcome is not None:
        start = outcome.time_at_risk.start
        columns.append("COALESCE(o.first_day, b.risk_end) - CAST(? AS INTEGER) + 1")
        columns.append("CASE WHEN o.first_day IS NULL THEN 0 ELSE 1 END")
        params.append(start)
        joins.append("LEFT JOIN outcomes o ON o.person_id = b.person_id")
    for number, covariate in enumerate(cohort.covariates):
        if covariate.kind == "age":
            columns.append("b.age")
        elif covariate.kind == "sex":
            columns.append("CASE b.gender_concept_id WHEN 8532 THEN 'female' WHEN 8507 THEN 'male' END")
        else:
            value = f"c{number}.value" if covariate.kind == "measurement" else f"COALESCE(c{number}.value, 0)"
            columns.append(value)
            joins.append(f"LEFT JOIN covariate_{number} c{number} ON c{number}.person_id = b.person_id")
    if outcome is not None:
        where.append("b.risk_end >= CAST(? AS INTEGER)")
        params.append(outcome.time_at_risk.start)
        if cohort.entry.no_prior_outcome:
            where.append("COALESCE(o.prior, 0) = 0")
    if cohort.entry.min_age is not None:
        where.append("b.age >= CAST(? AS INTEGER)")
        params.append(cohort.entry.min_age)
    if cohort.entry.max_age is not None:
        where.append("b.age <= CAST(? AS INTEGER)")
        params.append(cohort.entry.max_age)
    selected = ",\n  ".join(["b.person_id", *columns])
    q.add(f"SELECT {selected}\nFROM base b " + " ".join(joins)
          + (f"\nWHERE {' AND '.join(where)}" if where else "") + "\nORDER BY b.person_id", *params)  # fmt: skip
