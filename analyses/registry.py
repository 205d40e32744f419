"""Every built-in analysis: its parameter schema, its coordinator plan and its site function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

import pandas as pd
from pydantic import Field

from analyses import crosstab, describe, discovery, glm, ttest
from analyses.contract import Contribution, Plan, Query
from analyses.disclosure import Item
from analyses.spec import Spec
from analyses.survival import cox, kaplan_meier, logrank


@dataclass(frozen=True)
class AnalysisType:
    spec: type[Spec]
    plan: Callable[[Any], Plan]
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


def plan(spec: Spec) -> Plan:
    """The coordinator's plan for one analysis."""
    return TYPES[spec.type].plan(spec)  # type: ignore[attr-defined]


def local(spec: Spec, frame: pd.DataFrame, query: Query) -> Contribution:
    """A site's answer to one query of one analysis, from its cohort rows."""
    if query.phase == discovery.PHASE:
        return discovery.local(frame, query.params)
    return TYPES[spec.type].local(spec, frame, query)  # type: ignore[attr-defined]


def manifest(spec: Spec) -> tuple[Item, ...]:
    """Everything a site may return for this analysis."""
    return TYPES[spec.type].manifest  # type: ignore[attr-defined]
