"""Every built-in analysis: its parameter schema, its coordinator plan and its site function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

import numpy as np
import pandas as pd
from pydantic import Field

from analyses import anova, correlation, crosstab, describe, discovery, glm, mantel_haenszel, mixed, ttest
from analyses import columns as col
from analyses.contract import Contribution, Plan, Query
from analyses.disclosure import Item
from analyses.spec import Spec
from analyses.survival import cox, cumulative_incidence, ipw_cox, kaplan_meier, logrank, rmst, time_varying


@dataclass(frozen=True)
class AnalysisType:
    spec: type[Spec]
    plan: Callable[[Any, discovery.Declared], Plan]
    local: Callable[[Any, pd.DataFrame, Query], Contribution]
    manifest: tuple[Item, ...]
    """Everything a site may return for this analysis, per phase."""


_MODULES = (
    describe,
    crosstab,
    ttest,
    anova,
    correlation,
    glm,
    kaplan_meier,
    rmst,
    logrank,
    cox,
    mantel_haenszel,
    cumulative_incidence,
    time_varying,
    mixed,
    ipw_cox,
)
_SPECS = (
    describe.DescribeSpec,
    crosstab.CrosstabSpec,
    ttest.TTestSpec,
    anova.AnovaSpec,
    correlation.PearsonSpec,
    glm.GlmSpec,
    kaplan_meier.KaplanMeierSpec,
    rmst.RmstSpec,
    logrank.LogrankSpec,
    cox.CoxSpec,
    mantel_haenszel.MantelHaenszelSpec,
    cumulative_incidence.CumulativeIncidenceSpec,
    time_varying.TimeVaryingCoxSpec,
    mixed.MixedSpec,
    ipw_cox.IpwCoxSpec,
)

TYPES: dict[str, AnalysisType] = {
    name: AnalysisType(spec, module.plan, module.local, module.MANIFEST)
    for module, spec in zip(_MODULES, _SPECS, strict=True)
    for name in spec.model_fields["type"].annotation.__args__  # the Literal's values
}
"""Analysis type name (as written in a protocol) → its implementation."""

AnySpec = Annotated[Union[_SPECS], Field(discriminator="type")]  # noqa: UP007
"""Any analysis block of a protocol, told apart by its `type`."""


def plan(spec: Spec, declared: discovery.Declared) -> Plan:
    """The coordinator's plan for one analysis; `declared` holds the protocol's values per column."""
    return TYPES[spec.type].plan(spec, declared)  # type: ignore[attr-defined]


def local(spec: Spec, rows: pd.DataFrame, query: Query, dropped: int = 0) -> Contribution:
    """A site's answer to one query of one analysis, from the cohort rows it uses (each with a value in every
    column the analysis needs); `dropped` cohort rows were left out for a missing value (`n_dropped`).
    """
    if query.phase == discovery.PHASE:
        return discovery.local(col.complete_cases(rows, spec.drops()), query.params)
    out = TYPES[spec.type].local(spec, rows, query)  # type: ignore[attr-defined]
    if any(item.matches(query.phase, "n_dropped") for item in manifest(spec)):
        out["n_dropped"] = np.array([dropped])
    return out


def manifest(spec: Spec) -> tuple[Item, ...]:
    """Everything a site may return for this analysis."""
    return TYPES[spec.type].manifest  # type: ignore[attr-defined]
