"""The rows a study uses at a site: its cohort, each analysis' population, and what the guard remembers of them.

A study's rounds ask about the same rows again and again, so the cohort is kept per table (or CDM) version,
protocol and row id, and each analysis' population and row sets per cohort.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analyses import columns as col
from analyses.spec import Spec
from hospital_node import omop
from hospital_node.cohort import row_keys, select
from hospital_node.site import Site, SiteError, load_table
from workbench.protocol import Protocol


@dataclass
class Cohort:
    """The protocol's cohort at a site (its filters applied) and a 64-bit key per table row."""

    rows: pd.DataFrame
    keys: pd.Series
    memo: dict[tuple[str, ...], Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What the site should know about its cohort (e.g. concept ids missing from its vocabulary)."""


log = logging.getLogger(__name__)
_COHORTS: dict[tuple[object, ...], Cohort] = {}


def cohort(site: Site, protocol: Protocol) -> Cohort:
    """The protocol's cohort at this site (remembered while the table file or CDM file is unchanged; a
    PostgreSQL CDM is read again after `OMOP_REREAD_S`)."""
    if _omop(site, protocol):
        return _omop_cohort(site, protocol)
    path = site.table_path(protocol.model.cohort.table)
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size, protocol.sha256, site.policy.row_id)
    if key not in _COHORTS:
        table = load_table(site, protocol.model.cohort.table)
        _remember(key, Cohort(select(table, protocol.model.cohort.filters), row_keys(table, site.policy.row_id)))
    return _COHORTS[key]


def source_name(site: Site, protocol: Protocol) -> str:
    """What the cohort was read from, for messages: the table's file or the OMOP CDM database."""
    if _omop(site, protocol):
        return site.data.label()
    return site.table_path(protocol.model.cohort.table).name


OMOP_REREAD_S = 300


def _omop(site: Site, protocol: Protocol) -> bool:
    """Whether the cohort comes from the site's OMOP CDM; SiteError when the protocol and the site disagree."""
    wanted, held = protocol.model.cohort.source, site.data.source
    if wanted != held:
        if wanted == "omop":
            raise SiteError("the protocol's cohort is defined on an OMOP CDM, but this site's data "
                            'are files; its steward sets [data] source = "omop" and the url in site.toml')  # fmt: skip
        raise SiteError(f"this site's data are an OMOP CDM database; the protocol reads table "
                        f"'{protocol.model.cohort.table}' instead of defining an OMOP cohort ([cohort] source = \"omop\")")  # fmt: skip
    return held == "omop"


def _omop_cohort(site: Site, protocol: Protocol) -> Cohort:
    source = site.data
    if source.engine == "duckdb":
        path = source.duckdb_file(site.path)
        stat = path.stat() if path.is_file() else None
        version: tuple[object, ...] = (stat.st_mtime_ns, stat.st_size) if stat else ()
    else:
        version = (int(time.monotonic() // OMOP_REREAD_S),)
    key = (site.path, source, protocol.sha256, *version)
    if key not in _COHORTS:
        found = omop.materialise(site, protocol.model.cohort.omop)  # type: ignore[arg-type]
        for warning in found.warnings:
            log.warning("site %s, study %s: %s", site.id, protocol.model.study.id, warning)
        keys = pd.Series(pd.util.hash_array(found.person_ids.astype(str)), index=found.rows.index)
        _remember(key, Cohort(select(found.rows, protocol.model.cohort.filters), keys, warnings=found.warnings))
    return _COHORTS[key]


def _remember(key: tuple[object, ...], study: Cohort) -> None:
    _COHORTS[key] = study
    while len(_COHORTS) > 256:
        del _COHORTS[next(iter(_COHORTS))]


def used(protocol: Protocol, spec: Spec, study: Cohort) -> pd.DataFrame:
    """The cohort rows `spec` uses: those with a value in every column of its population."""
    columns = protocol.population(spec)
    key = ("rows", *columns)
    if key not in study.memo:
        study.memo[key] = col.complete_cases(study.rows, columns)
    return study.memo[key]


def row_sets(protocol: Protocol, spec: Spec, study: Cohort) -> list[tuple[np.ndarray, list[str]]]:
    """Each row set an analysis releases something about, as row keys, with the columns it is about.

    The cohort filters' columns count for every row set: which rows pass them is part of every release.
    """
    key = ("row sets", spec.id)
    if key not in study.memo:
        study.memo[key] = [
            (study.keys[index].to_numpy(), list(dict.fromkeys([*columns, *protocol.cohort_columns])))
            for index, columns in spec.row_sets(used(protocol, spec, study))
        ]
    return study.memo[key]
