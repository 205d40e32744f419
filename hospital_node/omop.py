"""A protocol's OMOP cohort materialised at the node: one row per person, only the columns the protocol names.

Before the cohort query the node checks the CDM version, that every table and column the cohort reads
exists, and which of the protocol's concept ids the site's vocabulary lacks (a warning: the cohort may be
empty). Person ids never leave this module except as the differencing guard's row keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hospital_node import cdm, omop_sql
from hospital_node.site import Site, SiteError
from workbench.omop_cohort import OmopCohort

SUPPORTED = ("5.3", "5.4")
VOCABULARY_TABLES = ("concept", "concept_ancestor")
MAX_PARAMETERS = 60_000  # PostgreSQL's protocol takes at most 65,535 bound values per query


@dataclass(frozen=True)
class Materialised:
    rows: pd.DataFrame
    """One row per person (index 1…n), the protocol's cohort columns in order."""
    person_ids: np.ndarray
    warnings: list[str]


def materialise(site: Site, cohort: OmopCohort) -> Materialised:
    """The cohort at this site, or SiteError (unreachable database, missing table, unsupported CDM, empty cohort)."""
    with cdm.connect(site) as db:
        tables = db.tables()
        _check_version(db, tables)
        _check_tables(db, cohort, tables)
        warnings = _unknown_concepts(db, cohort)
        expansion = omop_sql.expansion_query(cohort, db.vocabulary)
        sets: omop_sql.Sets = {name: [] for name in cohort.concept_sets}
        for name, concept in db.rows(expansion.sql, expansion.params):
            sets[name].append(int(concept))
        query = omop_sql.cohort_query(cohort, db.cdm, sets)
        if len(query.params) > MAX_PARAMETERS:
            raise SiteError(f"the cohort's concept sets expand to {len(query.params):,} concept ids in {db.label}, "
                            f"more than a query takes ({MAX_PARAMETERS:,}); narrow them (descendants = false, exclude)")  # fmt: skip
        found = db.rows(query.sql, query.params)
    if not found:
        hint = ("; " + "; ".join(warnings)) if warnings else ""
        raise SiteError(f"the OMOP cohort is empty in {db.label} (no person meets the exposure, "
                        f"entry and time-at-risk rules){hint}; check the concept sets against this site's vocabulary")  # fmt: skip
    ids = np.array([row[0] for row in found], dtype=np.int64)
    return Materialised(_typed(found, cohort), ids, warnings)


def vocabulary_warnings(site: Site, cohort: OmopCohort) -> list[str]:
    """For the steward's review: the protocol's concept ids missing from this site's vocabulary."""
    with cdm.connect(site) as db:
        _check_tables(db, cohort, db.tables())
        return _unknown_concepts(db, cohort)


def _check_version(db: cdm.Cdm, tables: dict[str, set[str]]) -> None:
    if f"{db.cdm}.cdm_source" not in tables:
        raise SiteError(f"{db.label} has no table {db.cdm}.cdm_source; is cdm_schema right, "
                        "and is this an OMOP CDM database?")  # fmt: skip
    versions = [str(row[0] or "") for row in db.rows(f"SELECT cdm_version FROM {db.cdm}.cdm_source")]
    version = versions[0] if versions else ""
    if not re.match(r"^v?(5\.3|5\.4)(\.|$)", version.strip()):
        raise SiteError(f"{db.label} is OMOP CDM version {version or '(not recorded in cdm_source)'}; "
                        f"the node reads versions {', '.join(SUPPORTED)}")  # fmt: skip


def _check_tables(db: cdm.Cdm, cohort: OmopCohort, tables: dict[str, set[str]]) -> None:
    for table, columns in cohort.reads().items():
        name = f"{db.vocabulary if table in VOCABULARY_TABLES else db.cdm}.{table}"
        if name not in tables:
            raise SiteError(f"{db.label} has no table {name}, which the cohort reads; "
                            "check cdm_schema / vocabulary_schema in site.toml")  # fmt: skip
        missing = [column for column in columns if column not in tables[name]]
        if missing:
            raise SiteError(f"table {name} in {db.label} has no column {missing[0]}, which the cohort "
                            "reads; the table does not follow the OMOP CDM 5.3/5.4 layout")  # fmt: skip


def _unknown_concepts(db: cdm.Cdm, cohort: OmopCohort) -> list[str]:
    wanted = {concept: name for name, chosen in cohort.concept_sets.items()
              for concept in [*chosen.concepts, *chosen.exclude]}  # fmt: skip
    marks = ", ".join(["CAST(? AS BIGINT)"] * len(wanted))
    known = {int(row[0]) for row in db.rows(
        f"SELECT concept_id FROM {db.vocabulary}.concept WHERE concept_id IN ({marks})", list(wanted))}  # fmt: skip
    return [f"concept {concept} (concept set '{name}') is not in this site's vocabulary: the cohort may be empty"
            for concept, name in sorted(wanted.items()) if concept not in known]  # fmt: skip


def _typed(found: list[tuple[object, ...]], cohort: OmopCohort) -> pd.DataFrame:
    """Rows as a frame with the same dtypes from either engine: text groups/sex, integer flags, float values."""
    names = cohort.columns
    frame = pd.DataFrame.from_records([row[1:] for row in found], columns=names)
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    kinds = {cohort.exposure.column: "text"}
    if cohort.outcome is not None:
        kinds |= {cohort.outcome.duration: "int", cohort.outcome.event: "int"}
    kinds |= {c.column: {"sex": "text", "measurement": "float"}.get(c.kind, "int") for c in cohort.covariates}
    for name in names:
        values = frame[name]
        if kinds[name] == "text":
            frame[name] = values.astype(object).where(values.notna(), None)
        elif kinds[name] == "int" and values.notna().all():
            frame[name] = values.astype(np.int64)
        else:
            frame[name] = pd.to_numeric(values).astype(np.float64)
    return frame
