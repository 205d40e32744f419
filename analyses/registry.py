"""Every built-in analysis: its parameter schema, its coordinator plan and its site function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union

import numpy as np
import pandas as pd
from pydantic import Field

from analyses import columns as col
from analyses import crosstab, describe, discovery, glm, ttest
from analyses.contract import Contribution, Plan, Query
from analyses.disclosure import Item
from analyses.spec import Spec
from analyses.survival import cox, kaplan_meier, logrank


@dataclass(frozen=True)
class AnalysisType:
    spec: type[Spec]
    plan: Callable[[Any, discovery.Declared], Plan]
    local: Callable[[Any, pd.DataFrame, Query], Contribution]
    manifest: tuple[Item, ...]
    """Everything a site may return for this analysis, per phase."""


_MODULES = (describe, crosstab, ttest, glm, kaplan_meier, logrank, cox)
_SPECS = (
    describe.DescribeSpec,
    crosstab.CrosstabSpec,
    ttest.TTestSpec,
    glm.GlmSpec,
    kaplan_meier.KaplanMeierSpec,
    logrank.LogrankSpec,
    cox.CoxSpec,
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


def local(spec: Spec, cohort: pd.DataFrame, query: Query, population: Sequence[str] | None = None) -> Contribution:
    """A site's answer to one query of one analysis.

    The analysis sees the cohort's rows with a value in every `population` column (default: its own
    columns); rows dropped that way are added to the `n_dropped` it reports.
    """
    rows = col.complete_cases(cohort, spec.drops() if population is None else population)
    if query.phase == discovery.PHASE:
        return discovery.local(col.complete_cases(rows, spec.drops()), query.params)
    out = TYPES[spec.type].local(spec, rows, query)  # type: ignore[attr-defined]
    if "n_dropped" in out:
        out["n_dropped"] = out["n_dropped"] + np.int64(len(cohort) - len(rows))
    return out


def manifest(spec: Spec) -> tuple[Item, ...]:
    """Everything a site may return for this analysis."""
    return TYPES[spec.type].manifest  # type: ignore[attr-defined]
